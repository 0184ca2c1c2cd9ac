//! A stand-in for CF's policy server: its internal API over mutual TLS on 127.0.0.1, answering
//! with whatever the test sets, including every way an answer can go wrong.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore};

/// A policy server answer allowing each `(source, destination)` app pair on tcp 8080, written
/// as CF writes it (with the overlay tags idmint does not use).
pub fn answer_json(pairs: &[(String, String)]) -> String {
    let list: Vec<String> = pairs
        .iter()
        .map(|(s, d)| {
            format!(
                r#"{{"source":{{"id":"{s}","tag":"0001"}},"destination":{{"id":"{d}","tag":"0002","protocol":"tcp","ports":{{"start":8080,"end":8080}}}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"total_policies":{},"policies":[{}]}}"#,
        list.len(),
        list.join(",")
    )
}

/// How the stand-in answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this body.
    Json(String),
    /// This status, with a short body.
    Status(u16),
    /// Headers and the start of a body, then nothing, for ever.
    Stall,
    /// A chunked body that never ends (until the client hangs up).
    Endless,
    /// A `Content-Length` of this many bytes, then as many as the client reads.
    Huge(u64),
}

/// The files idmint is configured with to reach the stand-in.
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running stand-in; it stops with the test process.
pub struct StandIn {
    pub port: u16,
    pub answer: Arc<Mutex<Answer>>,
    /// The path and query of every request, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    /// Sets what the next requests get.
    pub fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last_request(&self) -> Option<String> {
        self.requests.lock().unwrap().last().cloned()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// A CA and what it signed.
struct Ca {
    cert_der: Vec<u8>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for 127.0.0.1 signed by `ca`: (certificate PEM, certificate DER, key PKCS#8 DER).
fn leaf(ca: &Ca, name: &str) -> (String, Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), cert.der().to_vec(), key.serialize_der())
}

/// The files a policy server of another make is started with: its certificate and key, and
/// the CA its clients' certificates must chain to.
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Writes the client's files and a server's into `dir`, both from one new CA.
pub fn write_files(dir: &Path) -> (ClientFiles, ServerFiles) {
    let trusted = ca("policy server test CA");
    let (client, _) = client_files(dir, &trusted);
    let (server_pem, _, server_key) = leaf(&trusted, "localhost");
    let server = ServerFiles {
        cert: dir.join("policy-server.pem"),
        key: dir.join("policy-server.key"),
        client_ca: client.ca.clone(),
    };
    std::fs::write(&server.cert, server_pem).unwrap();
    std::fs::write(
        &server.key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", server_key)),
    )
    .unwrap();
    (client, server)
}

/// The client's files, from `trusted`.
fn client_files(dir: &Path, trusted: &Ca) -> (ClientFiles, ()) {
    let (client_pem, _, client_key) = leaf(trusted, "idmint");
    let files = ClientFiles {
        ca: dir.join("policy-server-ca.pem"),
        cert: dir.join("policy-client.pem"),
        key: dir.join("policy-client.key"),
    };
    std::fs::write(&files.ca, &trusted.cert_pem).unwrap();
    std::fs::write(&files.cert, client_pem).unwrap();
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", client_key));
    std::fs::write(&files.key, key_pem).unwrap();
    (files, ())
}

/// Writes the client's files into `dir`, and starts a stand-in that requires that client
/// certificate. With `wrong_server_cert`, the stand-in presents a certificate from a CA the
/// client does not trust.
pub fn start(dir: &Path, wrong_server_cert: bool) -> (StandIn, ClientFiles) {
    let trusted = ca("policy server test CA");
    let (files, ()) = client_files(dir, &trusted);

    let other = ca("some other CA");
    let (_, server_der, server_key) = leaf(
        if wrong_server_cert { &other } else { &trusted },
        "localhost",
    );
    let mut clients = RootCertStore::empty();
    clients
        .add(CertificateDer::from(trusted.cert_der.clone()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(clients), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(Mutex::new(Answer::Json(
        r#"{"total_policies": 0, "policies": []}"#.into(),
    )));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (a, r) = (answer.clone(), requests.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, a, r) = (acceptor.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    r.lock().unwrap().push(target);
                    let answer = a.lock().unwrap().clone();
                    let _ = respond(&mut tls, answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    (
        StandIn {
            port,
            answer,
            requests,
        },
        files,
    )
}

async fn respond(out: &mut (impl AsyncWriteExt + Unpin), answer: Answer) -> std::io::Result<()> {
    match answer {
        Answer::Json(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes()).await?;
            out.write_all(body.as_bytes()).await
        }
        Answer::Status(code) => {
            let head = format!(
                "HTTP/1.1 {code} Oops\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n"
            );
            out.write_all(head.as_bytes()).await
        }
        Answer::Stall => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"total_policies\": ")
                .await?;
            out.flush().await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Answer::Endless => {
            out.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            loop {
                out.write_all(chunk.as_bytes()).await?;
            }
        }
        Answer::Huge(n) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            out.write_all(head.as_bytes()).await?;
            let spaces = vec![b' '; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(spaces.len() as u64) as usize;
                out.write_all(&spaces[..k]).await?;
                left -= k as u64;
            }
            Ok(())
        }
    }
}
