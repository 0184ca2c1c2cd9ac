//! Federation: the bundles of foreign trust domains, fetched from their SPIFFE bundle endpoints
//! (SPIFFE Federation standard) at their refresh hint, kept apart from each other and from our
//! own, and handed to every agent with the trust bundle.
//!
//! A fetch that fails (unreachable, refused TLS, a status other than 200, an unreadable or
//! oversized body, an older sequence, roots naming another trust domain, a redirect to another
//! host) changes nothing: the last good bundle stays, and its age is in the metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, CertificateError, DigitallySignedStruct, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clock::Clock;
use crate::jwt::{jwt_keys_json, BundleDoc, MAX_BUNDLE_BYTES};
use crate::sds::ForeignBundle;
use crate::spiffe::{SpiffeId, TrustDomain};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The refresh interval when a bundle gives no hint (the standard's suggestion).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the interval: no endpoint is hammered, none is left for more than a day.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// How soon a failed fetch is tried again, at most; sooner while no bundle is held at all.
const RETRY: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Redirects followed within the endpoint's host.
const MAX_REDIRECTS: usize = 3;
/// Where the system's web-PKI roots are looked for when `ca_file` is not given.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// One foreign trust domain and how its bundle is fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// The trust domain the bundle is for.
    pub trust_domain: TrustDomain,
    /// The bundle endpoint: `https://host[:port]/path`.
    pub url: http::Uri,
    /// How the endpoint is authenticated.
    pub profile: Profile,
    /// A bundle to start with (SPIFFE bundle JSON, or PEM roots): required for
    /// `https_spiffe`, whose first connection it authenticates.
    pub bundle_file: Option<PathBuf>,
}

/// The endpoint profiles of the SPIFFE Federation standard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Web PKI: the certificate names the URL's host and chains to these roots (PEM; the
    /// system's when not given).
    Web { ca_file: Option<PathBuf> },
    /// SPIFFE authentication: the endpoint presents this SPIFFE ID, certified by the held
    /// bundle of its trust domain.
    Spiffe { endpoint_id: SpiffeId },
}

impl Profile {
    /// The standard's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Web { .. } => "https_web",
            Profile::Spiffe { .. } => "https_spiffe",
        }
    }
}

/// A foreign bundle as held: what it says and where it stands.
#[derive(Clone, Debug)]
pub struct Held {
    pub doc: BundleDoc,
    /// When it was last fetched (or read from its file) successfully.
    pub good_at: OffsetDateTime,
    /// Failed fetches since then.
    pub failures: u64,
}

/// Why a fetch was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    #[error("cannot connect to {0}: {1}")]
    Unreachable(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(u16),
    #[error(
        "the endpoint redirects to another host ({0}); only redirects within its host are followed"
    )]
    OffHost(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
    #[error("the answer is longer than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the answer is not a SPIFFE bundle: {0}")]
    Malformed(String),
    #[error("the bundle's roots name trust domain {found}, not {expected}")]
    OtherTrustDomain { expected: String, found: String },
    #[error("the bundle's sequence {got} is older than the held {held}")]
    Stale { got: u64, held: u64 },
    #[error("no bundle of {0} is held to authenticate its endpoint with")]
    NoBundle(String),
    #[error("{0} took longer than {1:?}")]
    Timeout(String, Duration),
}

/// Every foreign bundle held, published to the agents.
pub struct Federation {
    foreign: Vec<Foreign>,
    held: Mutex<BTreeMap<String, Held>>,
    published: watch::Sender<Arc<Vec<ForeignBundle>>>,
    /// The trust domains whose fetches fail while none of their bundles is held yet, so that
    /// a run of failures is logged once.
    failing_unheld: Mutex<std::collections::BTreeSet<String>>,
    clock: Clock,
    web_roots: Mutex<BTreeMap<String, Arc<RootCertStore>>>,
}

impl Federation {
    /// Federation with `foreign`, starting from each one's bundle file. A file that is
    /// unreadable is an error: the operator named it.
    pub fn new(foreign: Vec<Foreign>, clock: Clock) -> Result<Arc<Federation>, String> {
        let now = clock.now();
        let mut held = BTreeMap::new();
        for f in &foreign {
            if let Some(path) = &f.bundle_file {
                let bytes = std::fs::read(path).map_err(|e| {
                    format!(
                        "federation {}: cannot read {}: {e}",
                        f.trust_domain,
                        path.display()
                    )
                })?;
                let doc = read_bundle_file(&bytes).map_err(|e| {
                    format!("federation {}: {}: {e}", f.trust_domain, path.display())
                })?;
                check_trust_domain(&doc, &f.trust_domain).map_err(|e| {
                    format!("federation {}: {}: {e}", f.trust_domain, path.display())
                })?;
                held.insert(
                    f.trust_domain.to_string(),
                    Held {
                        doc,
                        good_at: now,
                        failures: 0,
                    },
                );
            }
        }
        let federation = Arc::new(Federation {
            foreign,
            held: Mutex::new(held),
            published: watch::Sender::new(Arc::default()),
            failing_unheld: Mutex::default(),
            clock,
            web_roots: Mutex::default(),
        });
        federation.publish();
        Ok(federation)
    }

    /// The foreign bundles as agents get them; changes whenever one does.
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<ForeignBundle>>> {
        self.published.subscribe()
    }

    /// The bundles now.
    pub fn now(&self) -> Arc<Vec<ForeignBundle>> {
        self.published.borrow().clone()
    }

    /// What is held of each foreign trust domain, for the status and the metrics.
    pub fn held(&self) -> BTreeMap<String, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The Prometheus lines: each bundle's age since its last good fetch, and failures.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.foreign.is_empty() {
            return;
        }
        let now = self.clock.now();
        let held = self.held();
        out.push_str("# HELP idmint_federated_bundle_age_seconds Seconds since the foreign trust domain's bundle was last fetched (or read) successfully; -1 while none is held.\n");
        out.push_str("# TYPE idmint_federated_bundle_age_seconds gauge\n");
        for f in &self.foreign {
            let age = held
                .get(f.trust_domain.as_str())
                .map(|h| (now - h.good_at).whole_seconds())
                .unwrap_or(-1);
            let _ = writeln!(
                out,
                "idmint_federated_bundle_age_seconds{{trust_domain=\"{}\"}} {age}",
                f.trust_domain
            );
        }
        out.push_str("# HELP idmint_federated_bundle_failures Failed fetches of the foreign trust domain's bundle since the last good one.\n");
        out.push_str("# TYPE idmint_federated_bundle_failures gauge\n");
        for f in &self.foreign {
            let failures = held.get(f.trust_domain.as_str()).map_or(0, |h| h.failures);
            let _ = writeln!(
                out,
                "idmint_federated_bundle_failures{{trust_domain=\"{}\"}} {failures}",
                f.trust_domain
            );
        }
    }

    /// Keeps every foreign bundle fresh until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for f in self.foreign.clone() {
            tasks.spawn(self.clone().follow(f, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Fetches `f`'s bundle now and then at its refresh hint (sooner after a failure).
    async fn follow(self: Arc<Self>, f: Foreign, stop: CancellationToken) {
        loop {
            let wait = match self.refresh(&f).await {
                Ok(hint) => hint,
                Err(e) => {
                    let first = self.failed(&f);
                    if first {
                        tracing::warn!(trust_domain = %f.trust_domain, error = %e,
                            "federation: cannot refresh the bundle; the last good one stays");
                    }
                    self.retry_after(&f)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One fetch of `f`'s bundle, taken if it is good. Returns when to look again.
    pub async fn refresh(&self, f: &Foreign) -> Result<Duration, FetchError> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(f.trust_domain.as_str())
            .cloned();
        let tls = self.tls_for(f, held.as_ref())?;
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch(&f.url, &tls))
            .await
            .map_err(|_| FetchError::Timeout(f.url.to_string(), FETCH_TIMEOUT))??;
        let doc = BundleDoc::parse(&body).map_err(FetchError::Malformed)?;
        check_trust_domain(&doc, &f.trust_domain)?;
        if let (Some(got), Some(held)) = (doc.sequence, held.as_ref().and_then(|h| h.doc.sequence))
        {
            if got < held {
                return Err(FetchError::Stale { got, held });
            }
        }
        if doc.x509_roots.is_empty() && doc.jwt_keys.is_empty() {
            tracing::warn!(trust_domain = %f.trust_domain,
                "federation: the trust domain's bundle holds no key any more; none of its identities is trusted");
        }
        let changed = held.as_ref().is_none_or(|h| h.doc != doc);
        let hint = clamp_hint(doc.refresh_hint);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(
            f.trust_domain.to_string(),
            Held {
                doc,
                good_at: self.clock.now(),
                failures: 0,
            },
        );
        self.failing_unheld
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(f.trust_domain.as_str());
        if changed {
            tracing::info!(trust_domain = %f.trust_domain, "federation: new bundle taken up");
            self.publish();
        }
        Ok(hint)
    }

    /// Notes a failed fetch; true when it is the first since the last good one.
    fn failed(&self, f: &Foreign) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get_mut(f.trust_domain.as_str()) {
            Some(h) => {
                h.failures += 1;
                h.failures == 1
            }
            None => self
                .failing_unheld
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(f.trust_domain.to_string()),
        }
    }

    /// When to try again after a failure: at the hint (at most [`RETRY`]), or soon while
    /// nothing is held.
    fn retry_after(&self, f: &Foreign) -> Duration {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(f.trust_domain.as_str()) {
            Some(h) => clamp_hint(h.doc.refresh_hint).min(RETRY),
            None => FIRST_RETRY,
        }
    }

    fn publish(&self) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let bundles: Vec<ForeignBundle> = held
            .iter()
            .filter_map(|(td, h)| {
                Some(ForeignBundle {
                    trust_domain: td.parse().ok()?,
                    roots_pem: h
                        .doc
                        .x509_roots
                        .iter()
                        .map(|d| crate::ca::cert_pem(d))
                        .collect(),
                    jwt_keys_json: jwt_keys_json(&h.doc.jwt_keys),
                })
            })
            .collect();
        self.published.send_if_modified(|now| {
            let changed = **now != bundles;
            if changed {
                *now = Arc::new(bundles);
            }
            changed
        });
    }

    /// The TLS client for `f`'s endpoint.
    fn tls_for(&self, f: &Foreign, held: Option<&Held>) -> Result<TlsConnector, FetchError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Tls(f.url.to_string(), e.to_string()))?;
        let config = match &f.profile {
            Profile::Web { ca_file } => {
                let roots = self.web_roots(ca_file.as_ref())?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Profile::Spiffe { endpoint_id } => {
                // Self-serving endpoints only: its trust domain's bundle is the one fetched.
                let roots = held
                    .map(|h| h.doc.x509_roots.clone())
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| FetchError::NoBundle(f.trust_domain.to_string()))?;
                let verifier = SpiffeEndpointVerifier::new(roots, endpoint_id.clone(), provider)
                    .map_err(|e| FetchError::Tls(f.url.to_string(), e))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }

    fn web_roots(&self, ca_file: Option<&PathBuf>) -> Result<Arc<RootCertStore>, FetchError> {
        let path = match ca_file {
            Some(p) => p.clone(),
            None => std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .or_else(|| SYSTEM_ROOTS.iter().map(PathBuf::from).find(|p| p.exists()))
                .ok_or_else(|| {
                    FetchError::Tls(
                        "https_web".into(),
                        "no web-PKI roots found on this system; set ca_file".into(),
                    )
                })?,
        };
        let key = path.display().to_string();
        if let Some(roots) = self
            .web_roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(roots.clone());
        }
        let pem = std::fs::read(&path)
            .map_err(|e| FetchError::Tls("https_web".into(), format!("cannot read {key}: {e}")))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(FetchError::Tls(
                "https_web".into(),
                format!("{key} holds no usable root"),
            ));
        }
        let roots = Arc::new(roots);
        self.web_roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, roots.clone());
        Ok(roots)
    }
}

/// The refresh interval a hint asks for, within bounds.
fn clamp_hint(hint: Option<u64>) -> Duration {
    hint.map(Duration::from_secs)
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// A bundle file: SPIFFE bundle JSON, or PEM certificates (the roots alone).
fn read_bundle_file(bytes: &[u8]) -> Result<BundleDoc, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim_start().starts_with('{') {
        return BundleDoc::parse(bytes);
    }
    let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("neither a SPIFFE bundle nor PEM certificates: {e}"))?;
    if roots.is_empty() {
        return Err("neither a SPIFFE bundle nor PEM certificates".into());
    }
    Ok(BundleDoc {
        x509_roots: roots,
        ..BundleDoc::default()
    })
}

/// Refuses a bundle whose roots say, in a SPIFFE URI SAN, that they belong to another trust
/// domain: such a bundle was served for the wrong name.
fn check_trust_domain(doc: &BundleDoc, expected: &TrustDomain) -> Result<(), FetchError> {
    for der in &doc.x509_roots {
        for id in spiffe_ids(der) {
            if id.trust_domain() != *expected {
                return Err(FetchError::OtherTrustDomain {
                    expected: expected.to_string(),
                    found: id.trust_domain().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The SPIFFE IDs in a certificate's URI SANs.
fn spiffe_ids(der: &[u8]) -> Vec<SpiffeId> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    crate::ca::uri_sans(&cert)
        .into_iter()
        .filter_map(|uri| uri.parse().ok())
        .collect()
}

/// GETs `url` over `tls`, following redirects within its host; the body, at most
/// [`MAX_BUNDLE_BYTES`].
async fn fetch(url: &http::Uri, tls: &TlsConnector) -> Result<Vec<u8>, FetchError> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let (status, location, body) = get_once(&url, tls).await?;
        match status {
            200 => return Ok(body),
            301 | 302 | 303 | 307 | 308 => {
                let location = location.ok_or(FetchError::Status(status))?;
                let next = resolve(&url, &location)?;
                if next.host() != url.host() || next.port_u16() != url.port_u16() {
                    return Err(FetchError::OffHost(location));
                }
                url = next;
            }
            other => return Err(FetchError::Status(other)),
        }
    }
    Err(FetchError::Redirects)
}

/// A redirect's target: an absolute `https` URL, or a path on the same endpoint.
fn resolve(base: &http::Uri, location: &str) -> Result<http::Uri, FetchError> {
    let bad = |why: &str| FetchError::Http(format!("redirect to {location:?}: {why}"));
    if location.starts_with('/') {
        let authority = base.authority().ok_or_else(|| bad("no authority"))?;
        return format!("https://{authority}{location}")
            .parse()
            .map_err(|_| bad("not a URL"));
    }
    let next: http::Uri = location.parse().map_err(|_| bad("not a URL"))?;
    if next.scheme_str() != Some("https") {
        return Err(bad("not https"));
    }
    if next.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("it carries user information"));
    }
    Ok(next)
}

/// One GET: status, `Location`, body.
async fn get_once(
    url: &http::Uri,
    tls: &TlsConnector,
) -> Result<(u16, Option<String>, Vec<u8>), FetchError> {
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_u16().unwrap_or(443);
    let address = format!("{host}:{port}");
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| FetchError::Unreachable(address.clone(), e.to_string()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| FetchError::Tls(address.clone(), e.to_string()))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(address.clone(), e.to_string()))?;
    let http = |e: hyper::Error| FetchError::Http(crate::error_text::with_causes(&e));
    let stream = CloseNotifyOptional(stream);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let drive = async move {
        let _ = connection.await;
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, address.clone())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    // The connection is driven beside the exchange, and ends once the exchange has dropped
    // its sender.
    let exchange = async move {
        let mut sender = sender;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Http(crate::error_text::with_causes(e.as_ref()))
                }
            })?
            .to_bytes()
            .to_vec();
        Ok((status, location, body))
    };
    let (answer, ()) = tokio::join!(exchange, drive);
    answer
}

/// A TLS stream whose peer may close without a `close_notify` alert, as many HTTPS servers
/// do after a response: that end reads as a plain end of stream. HTTP's own framing
/// (`Content-Length`, chunks) still tells a whole body from a cut one.
struct CloseNotifyOptional<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CloseNotifyOptional<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CloseNotifyOptional<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Checks an `https_spiffe` endpoint: its chain against the held roots of its trust domain,
/// and its SPIFFE ID, not its host name.
#[derive(Debug)]
struct SpiffeEndpointVerifier {
    chain: Arc<WebPkiServerVerifier>,
    endpoint_id: SpiffeId,
}

impl SpiffeEndpointVerifier {
    fn new(
        roots: Vec<Vec<u8>>,
        endpoint_id: SpiffeId,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<SpiffeEndpointVerifier, String> {
        let mut store = RootCertStore::empty();
        for der in roots {
            store
                .add(CertificateDer::from(der))
                .map_err(|e| format!("a held root is unusable: {e}"))?;
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SpiffeEndpointVerifier { chain, endpoint_id })
    }
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name; a chain that verifies fails only on the host
        // name, which an https_spiffe endpoint need not carry.
        match self
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let ids = spiffe_ids(end_entity.as_ref());
        if ids != [self.endpoint_id.clone()] {
            return Err(rustls::Error::General(format!(
                "the endpoint presents {:?}, not {}",
                ids.iter().map(SpiffeId::as_str).collect::<Vec<_>>(),
                self.endpoint_id.as_str()
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
