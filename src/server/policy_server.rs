//! Cloud Foundry's policy server as a source of policy: its internal API
//! (`GET /networking/v1/internal/policies?id=<app guids>`, mutual TLS) asked every few seconds
//! about the apps that have instances placed. An answer replaces the set in force only when it
//! is whole and valid; anything else (unreachable, a TLS failure, an error status, too slow,
//! too large, unreadable) keeps the last good set, is logged once when it starts and once when
//! it ends, and is counted by kind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{Policies, Registry};
use crate::clock::Clock;
use crate::config::PolicyServerSettings;
use crate::ids::Guid;
use crate::policy::{self, parse_policy_server_answer, Policy};
use crate::store::{Lead, Leader, Store};

/// Why the client cannot be set up: idmint does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A configured file cannot be read or holds no usable PEM.
    #[error("{key}: {path}: {detail}")]
    File {
        /// The setting naming it.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The host in `policy.server.url` is not a name TLS can check.
    #[error("policy.server.url: {0}")]
    Url(String),
}

/// Why one poll brought no policy set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    #[error("cannot connect to the policy server: {0}")]
    Unreachable(std::io::Error),
    #[error("TLS with the policy server failed: {0}")]
    Tls(std::io::Error),
    #[error("the policy server did not answer in full within {0:?}")]
    Timeout(Duration),
    #[error("the policy server answered HTTP {0}")]
    Status(u16),
    #[error("the policy server's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("HTTP with the policy server failed: {0}")]
    Http(String),
    #[error("the policy server's answer is not a policy list: {0}")]
    Malformed(policy::Error),
}

impl PollError {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Unreachable(_) => "unreachable",
            PollError::Tls(_) => "tls",
            PollError::Timeout(_) => "timeout",
            PollError::Status(_) => "status",
            PollError::TooLarge(_) => "too_large",
            PollError::Http(_) => "http",
            PollError::Malformed(_) => "malformed",
        }
    }
}

/// Every failure kind, for metrics that show zeros too.
const FAILURE_KINDS: &[&str] = &[
    "unreachable",
    "tls",
    "timeout",
    "status",
    "too_large",
    "http",
    "malformed",
    "not_applied",
];

/// App GUIDs per request: 500 make a request line of about 19 KB.
pub const IDS_PER_REQUEST: usize = 500;

/// A client of the policy server's internal API.
pub struct PolicyServerClient {
    settings: PolicyServerSettings,
    tls: TlsConnector,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl PolicyServerClient {
    /// Reads the CA, certificate and key the settings name.
    pub fn new(settings: PolicyServerSettings) -> Result<PolicyServerClient, SetupError> {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| SetupError::File {
                key,
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
        };
        let bad = |key: &'static str, path: &std::path::Path, detail: String| SetupError::File {
            key,
            path: path.to_path_buf(),
            detail,
        };
        let certs = |key: &'static str, path: &std::path::Path| {
            let pem = read(key, path)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(key, path, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad(key, path, "holds no certificate".into()));
            }
            Ok(certs)
        };
        let (ca, cert, key) = (&settings.ca_file, &settings.cert_file, &settings.key_file);
        let mut roots = RootCertStore::empty();
        for c in certs("policy.server.ca_file", ca)? {
            roots
                .add(c)
                .map_err(|e| bad("policy.server.ca_file", ca, e.to_string()))?;
        }
        let chain = certs("policy.server.cert_file", cert)?;
        let key_der = PrivateKeyDer::from_pem_slice(&read("policy.server.key_file", key)?)
            .map_err(|e| {
                bad(
                    "policy.server.key_file",
                    key,
                    format!("not a PEM private key: {e}"),
                )
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::Url(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| {
                bad(
                    "policy.server.key_file",
                    key,
                    format!("does not go with policy.server.cert_file: {e}"),
                )
            })?;
        let authority = settings.url.trim_start_matches("https://");
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| SetupError::Url(format!("{:?} has no port", settings.url)))?;
        let port: u16 = port
            .parse()
            .map_err(|_| SetupError::Url(format!("{port:?} is not a port")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| SetupError::Url(format!("{host:?}: {e}")))?;
        Ok(PolicyServerClient {
            settings,
            tls: TlsConnector::from(Arc::new(config)),
            host,
            port,
            server_name,
        })
    }

    /// The policies naming any of `apps`, whole and valid, within the configured time (for all
    /// of them) and size (for each answer). Asked [`IDS_PER_REQUEST`] apps at a time, so that
    /// the request line stays well within what HTTP servers take.
    pub async fn fetch(&self, apps: &[Guid]) -> Result<BTreeSet<Policy>, PollError> {
        let limit = self.settings.timeout;
        let all = async {
            let mut all = BTreeSet::new();
            for chunk in apps.chunks(IDS_PER_REQUEST) {
                all.append(&mut self.fetch_one(chunk).await?);
            }
            Ok(all)
        };
        tokio::time::timeout(limit, all)
            .await
            .map_err(|_| PollError::Timeout(limit))?
    }

    async fn fetch_one(&self, apps: &[Guid]) -> Result<BTreeSet<Policy>, PollError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(PollError::Unreachable)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(PollError::Tls)?;
        let http = |e: hyper::Error| PollError::Http(e.to_string());
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        // The connection is driven beside the exchange, and ends once the exchange has dropped
        // its sender.
        let drive = async move {
            let _ = connection.await;
        };
        let ids: Vec<&str> = apps.iter().map(Guid::as_str).collect();
        let request = http::Request::get(format!(
            "/networking/v1/internal/policies?id={}",
            ids.join(",")
        ))
        .header(http::header::HOST, format!("{}:{}", self.host, self.port))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| PollError::Http(e.to_string()))?;
        let exchange = async {
            let mut sender = sender;
            let response = sender.send_request(request).await.map_err(http)?;
            if response.status() != http::StatusCode::OK {
                return Err(PollError::Status(response.status().as_u16()));
            }
            let max = self.settings.max_answer_bytes;
            let said = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if said.is_some_and(|n| n > max as u64) {
                return Err(PollError::TooLarge(max));
            }
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        PollError::TooLarge(max)
                    } else {
                        PollError::Http(e.to_string())
                    }
                })?
                .to_bytes();
            parse_policy_server_answer(&body).map_err(PollError::Malformed)
        };
        let (answer, ()) = tokio::join!(exchange, drive);
        answer
    }
}

/// What polling has done, for `/metrics`.
pub struct PollMetrics {
    good: Mutex<(u64, Option<OffsetDateTime>)>,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    started: OffsetDateTime,
    /// Whether this server polls (one server sharing a database does).
    polling: std::sync::atomic::AtomicBool,
}

impl PollMetrics {
    fn new(started: OffsetDateTime) -> PollMetrics {
        PollMetrics {
            good: Mutex::new((0, None)),
            failures: Mutex::new(BTreeMap::new()),
            started,
            polling: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn good(&self, at: OffsetDateTime) {
        let mut good = self.good.lock().expect("never poisoned");
        good.0 += 1;
        good.1 = Some(at);
    }

    fn failed(&self, kind: &'static str) {
        *self
            .failures
            .lock()
            .expect("never poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    /// The Prometheus text of these counters at `now`.
    pub fn render(&self, now: OffsetDateTime, out: &mut String) {
        let polling = self.polling.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "# HELP idmint_policy_server_polling Whether this server polls CF's policy server (one of the servers sharing a database does; the others take up what it stores, and their poll counters stand still).");
        let _ = writeln!(out, "# TYPE idmint_policy_server_polling gauge");
        let _ = writeln!(out, "idmint_policy_server_polling {}", u8::from(polling));
        let (good, last) = *self.good.lock().expect("never poisoned");
        let age = (now - last.unwrap_or(self.started))
            .as_seconds_f64()
            .max(0.0);
        let _ = writeln!(out, "# HELP idmint_policy_server_good_polls_total Polls of CF's policy server that brought a whole, valid policy set.");
        let _ = writeln!(out, "# TYPE idmint_policy_server_good_polls_total counter");
        let _ = writeln!(out, "idmint_policy_server_good_polls_total {good}");
        let _ = writeln!(out, "# HELP idmint_policy_server_last_good_poll_age_seconds Seconds since the last good poll (since start while there has been none).");
        let _ = writeln!(
            out,
            "# TYPE idmint_policy_server_last_good_poll_age_seconds gauge"
        );
        let _ = writeln!(
            out,
            "idmint_policy_server_last_good_poll_age_seconds {age:.3}"
        );
        let _ = writeln!(out, "# HELP idmint_policy_server_poll_failures_total Polls that kept the last good set, by why.");
        let _ = writeln!(
            out,
            "# TYPE idmint_policy_server_poll_failures_total counter"
        );
        let failures = self.failures.lock().expect("never poisoned");
        for kind in FAILURE_KINDS {
            let n = failures.get(kind).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "idmint_policy_server_poll_failures_total{{kind=\"{kind}\"}} {n}"
            );
        }
    }
}

/// Polls the policy server until `stop`; see the module's description.
pub struct Poller {
    client: PolicyServerClient,
    policies: Policies,
    registry: Registry,
    store: Store,
    clock: Clock,
    metrics: Arc<PollMetrics>,
}

impl Poller {
    /// A poller putting what `client` fetches in force in `policies`, asking about the apps
    /// `registry` has placed; it polls while it holds the polling role in `store`.
    pub fn new(
        client: PolicyServerClient,
        policies: Policies,
        registry: Registry,
        store: Store,
        clock: Clock,
    ) -> Poller {
        let metrics = Arc::new(PollMetrics::new(clock.now()));
        Poller {
            client,
            policies,
            registry,
            store,
            clock,
            metrics,
        }
    }

    /// Its counters.
    pub fn metrics(&self) -> Arc<PollMetrics> {
        self.metrics.clone()
    }

    /// Polls at once, then every `poll_every` (give or take a tenth, so servers started
    /// together do not ask together), until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // The failure kind polls are failing with; `None` while they succeed.
        let mut failing: Option<&'static str> = None;
        let mut leader = None;
        loop {
            if !self.leads(&mut leader).await {
                // Another server polls; the change feed brings what it stores.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.client.settings.poll_every) => continue,
                }
            }
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                o = self.poll_once() => o,
            };
            match outcome {
                Ok(Some((added, removed))) => {
                    if let Some(kind) = failing.take() {
                        tracing::info!(after = kind, "the policy server answers again");
                    }
                    if added + removed > 0 {
                        tracing::info!(
                            added,
                            removed,
                            in_force = self.policies.count(),
                            "policy set from the policy server changed"
                        );
                    }
                }
                Ok(None) => {}
                Err((kind, error)) => {
                    self.metrics.failed(kind);
                    if failing != Some(kind) {
                        tracing::warn!(%error, in_force = self.policies.count(), "keeping the last good policy set");
                        failing = Some(kind);
                    }
                }
            }
            let every = self.client.settings.poll_every;
            let wait = every.mul_f64(0.9 + 0.2 * crate::renewal::schedule::random_draw());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Whether this server polls now: it takes the role when no other server sharing the
    /// database has it, and notices when it lost it.
    async fn leads(&self, leader: &mut Option<Leader>) -> bool {
        if let Some(held) = leader {
            if held.still_leads().await {
                return true;
            }
            tracing::warn!("lost the policy server polling role (database connection broken)");
            *leader = None;
        }
        *leader = match self.store.try_lead(Lead::PolicyPolls).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask for the policy server polling role");
                None
            }
        };
        let leads = leader.is_some();
        let was = self
            .metrics
            .polling
            .swap(leads, std::sync::atomic::Ordering::Relaxed);
        if leads && !was {
            tracing::info!(
                "this server polls CF's policy server for the servers sharing its database"
            );
        }
        leads
    }

    /// One poll: `None` when no app is placed (nothing to ask about), else what changed.
    async fn poll_once(&self) -> Result<Option<(usize, usize)>, (&'static str, String)> {
        let apps: Vec<Guid> = self.registry.apps().into_iter().collect();
        if apps.is_empty() {
            return Ok(None);
        }
        let set = self
            .client
            .fetch(&apps)
            .await
            .map_err(|e| (e.kind(), e.to_string()))?;
        let changed = self
            .policies
            .replace(set)
            .await
            .map_err(|e| ("not_applied", e.to_string()))?;
        self.metrics.good(self.clock.now());
        Ok(Some(changed))
    }
}
