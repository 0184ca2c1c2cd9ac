//! The CLI's side of the admin HTTP API: one HTTP/1.1 request per command, over the admin
//! socket (`admin.socket`) as the service's user, or over mutual TLS to `admin.listen` with a
//! role credential (`admin.credential`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use super::role::{BUNDLE, CHAIN, KEY};
use crate::config::AdminSettings;

/// One request to the admin API; the body of a 2xx answer, else the server's message.
pub async fn request(
    admin: &AdminSettings,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String> {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: idmint\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len(),
    );
    let raw = match (&admin.credential, &admin.socket) {
        (Some(dir), _) => {
            let stream = connect_tls(admin, dir).await?;
            exchange(stream, &head, body).await?
        }
        (None, Some(socket)) => {
            let stream = UnixStream::connect(socket).await.with_context(|| {
                format!(
                    "cannot reach idmint's admin socket {} (admin.socket): is idmint running \
                     here, and are you its user? From elsewhere, set admin.credential to a \
                     role credential",
                    socket.display()
                )
            })?;
            exchange(stream, &head, body).await?
        }
        (None, None) => bail!(
            "admin.socket is off and admin.credential is not set: set admin.credential to a \
             role credential (idmint role enroll) to reach the admin API"
        ),
    };
    answer(&raw)
}

/// Mutual TLS to `admin.listen` with the role credential in `dir`.
async fn connect_tls(
    admin: &AdminSettings,
    dir: &Path,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (admin.credential, made by `idmint role enroll`)",
                path.display()
            )
        })
    };
    let key_path = dir.join(KEY);
    if let Some(mode) = crate::files::readable_by_all(&key_path) {
        bail!(
            "{} is readable by every user (mode {mode:o}); chmod 600 it and try again",
            key_path.display()
        );
    }
    let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>> {
        let all = CertificateDer::pem_slice_iter(&read(name)?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{name} in {} is not PEM certificates", dir.display()))?;
        if all.is_empty() {
            bail!("{name} in {} holds no certificate", dir.display());
        }
        Ok(all)
    };
    let mut roots = RootCertStore::empty();
    for root in certs(BUNDLE)? {
        roots.add(root).context("a root of bundle.pem")?;
    }
    let key = PrivateKeyDer::from_pem_slice(&read(KEY)?)
        .with_context(|| format!("{KEY} in {} is not a PEM private key", dir.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(CHAIN)?, key)
        .with_context(|| format!("{KEY} does not go with {CHAIN} in {}", dir.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(admin.server_name.clone())
        .with_context(|| format!("admin.server_name {:?}", admin.server_name))?;
    let addr = admin.listen;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach idmint's admin API at {addr} (admin.listen)"))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| {
            format!(
                "TLS with the admin API at {addr} failed (is admin.server_name {:?} the name \
                 its certificate carries, and is the credential current?)",
                admin.server_name
            )
        })
}

/// Sends one request and reads the whole answer.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    head: &str,
    body: &str,
) -> Result<Vec<u8>> {
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify still sent the whole answer (Connection:
    // close); what was read is kept.
    if let Err(e) = stream.read_to_end(&mut raw).await {
        if raw.is_empty() {
            return Err(e.into());
        }
    }
    Ok(raw)
}

/// The body of a 2xx answer, else the server's message as the error.
fn answer(raw: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(raw);
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
