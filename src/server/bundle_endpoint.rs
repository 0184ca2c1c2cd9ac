//! The SPIFFE bundle endpoint: this trust domain's bundle as a JWK set over HTTPS, for the
//! trust domains that federate with it. Two profiles, as the SPIFFE Federation standard names
//! them: `https_web` presents a web-PKI certificate the operator configures; `https_spiffe`
//! presents the server's own SVID (`spiffe://<td>/server`). Neither asks for a client
//! certificate: the bundle is public.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::{CertificateAuthority, Mode};
use crate::clock::{unix_ms, Clock};
use crate::jwt::{BundleDoc, JwtKeys};
use crate::store::Store;

/// A handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most handshakes under way at once.
const MAX_PENDING: usize = 64;
/// How often the web certificate's files are looked at for a renewed certificate.
const WEB_CERT_CHECK: Duration = Duration::from_secs(60);

/// Where the bundle endpoint listens, and with what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `https_web`: the address, and the web-PKI certificate chain and key (PEM files).
    pub web: Option<WebProfile>,
    /// `https_spiffe`: the address; the server's own SVID is presented.
    pub spiffe_listen: Option<SocketAddr>,
    /// `spiffe_refresh_hint`: how often consumers should look again.
    pub refresh_hint: Duration,
}

/// The `https_web` profile's address and certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebProfile {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The bundle, as the endpoint serves it.
#[derive(Clone)]
pub struct BundleSource {
    ca: Arc<CertificateAuthority>,
    jwt: Arc<JwtKeys>,
    store: Store,
    clock: Clock,
    refresh_hint: Duration,
    /// Upstream mode: the roots last served and when they were first seen, since files, not
    /// the store, say when they changed.
    upstream_roots: Arc<Mutex<(Vec<Vec<u8>>, i64)>>,
}

impl BundleSource {
    /// The bundle of `ca`'s roots and `jwt`'s keys.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        jwt: Arc<JwtKeys>,
        store: Store,
        clock: Clock,
        refresh_hint: Duration,
    ) -> BundleSource {
        BundleSource {
            ca,
            jwt,
            store,
            clock,
            refresh_hint,
            upstream_roots: Arc::default(),
        }
    }

    /// The bundle now, as JSON. Its `spiffe_sequence` is the store's (see
    /// [`Store::bundle_sequence`]), so every server sharing the database gives the same
    /// number for the same bundle, and a later bundle a larger one.
    pub async fn document(&self) -> Result<String, String> {
        let roots: Vec<Vec<u8>> = self.ca.roots().into_iter().map(|r| r.der).collect();
        let mut sequence = self
            .store
            .bundle_sequence()
            .await
            .map_err(|e| format!("cannot read when the bundle changed: {e}"))?;
        if matches!(self.ca.settings().mode, Mode::Upstream(_)) {
            let mut seen = self
                .upstream_roots
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if seen.0 != roots {
                *seen = (roots.clone(), unix_ms(self.clock.now()) * 1000);
            }
            sequence = sequence.max(seen.1);
        }
        BundleDoc {
            x509_roots: roots,
            jwt_keys: self.jwt.now().published.clone(),
            sequence: Some(sequence.max(0) as u64),
            refresh_hint: Some(self.refresh_hint.as_secs().max(1)),
        }
        .to_json()
    }
}

/// The endpoint's routes: the bundle at `/`, nothing else.
fn routes(source: BundleSource) -> Router {
    Router::new()
        .route("/", get(serve_bundle))
        .fallback(|| async { (StatusCode::NOT_FOUND, "the SPIFFE bundle is at /\n") })
        .with_state(source)
}

async fn serve_bundle(
    axum::extract::State(source): axum::extract::State<BundleSource>,
) -> Response {
    match source.document().await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the SPIFFE bundle");
            (StatusCode::SERVICE_UNAVAILABLE, e).into_response()
        }
    }
}

/// Serves the bundle on `listener`, over TLS made with the configuration current when each
/// connection arrives, until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    source: BundleSource,
    stop: CancellationToken,
) {
    let incoming = TlsListener {
        tcp: listener,
        tls,
        pending: JoinSet::new(),
    };
    let served = axum::serve(incoming, routes(source))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the SPIFFE bundle endpoint stopped");
    }
}

/// TLS for `https_web`: the certificate chain and key in `web`'s files, no client certificate.
pub fn web_config(web: &WebProfile) -> Result<Arc<ServerConfig>, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let chain_pem = read(&web.cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", web.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", web.cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&web.key_file)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", web.key_file.display()))?;
    public_config(chain, &key).map_err(|e| {
        format!(
            "{} and {} do not make a TLS identity: {e}",
            web.cert_file.display(),
            web.key_file.display()
        )
    })
}

/// TLS 1.2 or 1.3 presenting `chain`, HTTP/1.1, no client certificate.
pub fn public_config(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signer = rustls::crypto::ring::sign::any_supported_type(key)?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads the `https_web` certificate when its files change (a renewed web certificate is
/// taken up without a restart); a broken pair is logged and the one in use stays.
pub async fn follow_web_cert(
    web: WebProfile,
    tx: watch::Sender<Arc<ServerConfig>>,
    stop: CancellationToken,
) {
    let stamp = |web: &WebProfile| {
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&web.cert_file), modified(&web.key_file))
    };
    let mut seen = stamp(&web);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WEB_CERT_CHECK) => {}
        }
        let now = stamp(&web);
        if now == seen {
            continue;
        }
        match web_config(&web) {
            Ok(config) => {
                tracing::info!(cert = %web.cert_file.display(), "bundle endpoint: web certificate reloaded");
                tx.send_replace(config);
                seen = now;
            }
            Err(e) => {
                tracing::error!(error = %e, "bundle endpoint: the new web certificate is unusable; the old one stays")
            }
        }
    }
}

/// TLS connections, each handshaken with the configuration current when it arrived.
struct TlsListener {
    tcp: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    pending: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let room = self.pending.len() < MAX_PENDING;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, peer)) => {
                        let acceptor = TlsAcceptor::from(self.tls.borrow().clone());
                        self.pending.spawn(async move {
                            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                            Some((tls.await.ok()?.ok()?, peer))
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bundle endpoint: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.pending.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
