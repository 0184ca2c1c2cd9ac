//! The CLI's side of the admin HTTP API: one request per command, over plain HTTP/1.1 on
//! the loopback address `admin.listen`.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request to the admin API; the body of a 2xx answer, else the server's message.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| {
        format!(
            "cannot reach idmint's admin API at {addr}; is `idmint dev` running (admin.listen)?"
        )
    })?;
    let body = body.unwrap_or("");
    // Who is asking, for the ledger's record of what they change; stated, not proven.
    let user: String = std::env::var("USER")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{}: {user}\r\n\r\n",
        body.len(),
        crate::admin::policies::USER_HEADER,
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed answer from the admin API")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line from the admin API")?;
    // axum answers small bodies without chunking; a chunked body would start with its size.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if !(200..300).contains(&status) {
        bail!("{}", body.trim());
    }
    Ok(body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
