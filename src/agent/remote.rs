//! The agent's side of the server API: [`Authority`] over gRPC with mutual TLS, for agents on
//! other machines than the server. The agent presents its cell credential; the server decides
//! from it which instances the agent may have certificates for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::api::{self, Authority, Cause, Denial, JwtRequest, SignRequest, SignedCert, SignedJwt};
use crate::proto as pb;
use crate::proto::identity_client::IdentityClient;
use crate::proto::sign_stream_result::Outcome;

/// A connection to one of the idmint servers an agent knows. Clones share it, and see a
/// changed credential or trust bundle (see [`RemoteAuthority::reconnect`]) from their next call
/// on. Sign requests go out on one `SignStream` call, opened when first needed and again after
/// it ends. When the server in use fails, [`RemoteAuthority::fail_over`] moves every clone to
/// the next one; a sign request whose server went away is sent again to the next.
#[derive(Clone)]
pub struct RemoteAuthority {
    servers: Arc<[String]>,
    server_name: Arc<str>,
    tls: Arc<RwLock<TlsPem>>,
    current: Arc<RwLock<Current>>,
    signs: Arc<Mutex<Option<SignStream>>>,
    /// Counts every new connection after a failure (to the same server when there is one).
    switches: Arc<AtomicU64>,
    /// Counts moves to another server.
    moves: Arc<AtomicU64>,
}

/// What this agent presents and trusts, PEM.
struct TlsPem {
    cert_chain_pem: String,
    key_pem: String,
    roots_pem: String,
}

/// The server in use.
struct Current {
    /// Its index in `servers`.
    at: usize,
    client: IdentityClient<Channel>,
}

/// Which server a call went to, so that only its failure moves the agent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerTurn(u64);

/// Why no server took the agent's connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A server address is not one.
    #[error("server address {0:?} is not an https://host:port address")]
    BadAddress(String),
    /// None of the servers answered, or accepted this agent; why, for each.
    #[error("cannot reach any idmint server: {}", .0.join("; "))]
    Unreachable(Vec<String>),
}

/// One open `SignStream`: where requests go, and who waits for which answer.
struct SignStream {
    requests: mpsc::Sender<pb::SignStreamRequest>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: u64,
    /// The task handing answers out; aborted when the stream is dropped (replaced after it
    /// ended, or with the connection).
    _answers: JoinSet<()>,
}

/// The callers waiting for answers on a stream, by request id; `None` once the stream has
/// ended and every caller still waiting has been told.
type Waiting = Option<HashMap<u64, oneshot::Sender<Result<pb::SignResponse, Status>>>>;

/// Sign requests queued for one stream before the server takes them; callers beyond this
/// wait their turn, so a slow server holds back the agent instead of growing a queue.
const QUEUED_SIGNS: usize = 1024;

/// What an agent needs to reach the servers.
pub struct RemoteSettings<'a> {
    /// The servers' API endpoints, `https://host:port` each (several, for failover).
    pub endpoints: Vec<String>,
    /// The name every server's certificate must carry (a DNS name or IP address).
    pub server_name: &'a str,
    /// This agent's certificate and the intermediates after it, PEM.
    pub cert_chain_pem: &'a str,
    /// Its private key, PEM.
    pub key_pem: &'a str,
    /// The roots the server's certificate must chain to, PEM.
    pub roots_pem: &'a str,
}

/// A credential the server renewed: the certificate for the key sent in the CSR.
pub struct Renewed {
    /// The certificate and the intermediates after it, PEM.
    pub chain_pem: String,
    /// Its serial, lowercase hex.
    pub serial_hex: String,
    /// When it expires.
    pub not_after: time::OffsetDateTime,
}

impl RemoteAuthority {
    /// Connects to one of the servers, completing the TLS handshake: a server that does not
    /// accept this agent's credential is tried no further. Agents start at different servers
    /// (by their credential), so a fleet spreads over them.
    pub async fn connect(s: RemoteSettings<'_>) -> Result<RemoteAuthority, ConnectError> {
        let tls = TlsPem {
            cert_chain_pem: s.cert_chain_pem.to_string(),
            key_pem: s.key_pem.to_string(),
            roots_pem: s.roots_pem.to_string(),
        };
        let n = s.endpoints.len();
        if n == 0 {
            return Err(ConnectError::Unreachable(vec![
                "no server is configured".into()
            ]));
        }
        if let Some(bad) = s.endpoints.iter().find(|url| !is_server_address(url)) {
            return Err(ConnectError::BadAddress(bad.clone()));
        }
        let first = spread(s.cert_chain_pem, n);
        let mut failures = Vec::new();
        for at in (0..n).map(|i| (first + i) % n) {
            let url = &s.endpoints[at];
            let connected = match endpoint(url, s.server_name, &tls) {
                Ok(e) => e.connect().await,
                Err(e) => Err(e),
            };
            match connected {
                Ok(channel) => {
                    return Ok(RemoteAuthority {
                        servers: s.endpoints.clone().into(),
                        server_name: s.server_name.into(),
                        tls: Arc::new(RwLock::new(tls)),
                        current: Arc::new(RwLock::new(Current {
                            at,
                            client: IdentityClient::new(channel),
                        })),
                        signs: Arc::default(),
                        switches: Arc::default(),
                        moves: Arc::default(),
                    })
                }
                Err(e) => failures.push(format!("{url}: {}", crate::error_text::with_causes(&e))),
            }
        }
        Err(ConnectError::Unreachable(failures))
    }

    /// From the next call on, connects with this credential and trusts these roots. Calls
    /// in flight finish on the connection they started on.
    pub fn reconnect(
        &self,
        cert_chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
    ) -> Result<(), tonic::transport::Error> {
        *self.tls.write().expect("never poisoned") = TlsPem {
            cert_chain_pem: cert_chain_pem.to_string(),
            key_pem: key_pem.to_string(),
            roots_pem: roots_pem.to_string(),
        };
        let at = self.current.read().expect("never poisoned").at;
        self.use_server(at)
    }

    /// Which server calls go to now; pass it to [`RemoteAuthority::fail_over`] when a call
    /// made there fails for want of a server.
    pub fn turn(&self) -> ServerTurn {
        ServerTurn(self.switches.load(Ordering::SeqCst))
    }

    /// Moves to the next server after the one of `turn` failed; a no-op when another caller
    /// moved on already, so one failure moves the agent once.
    pub fn fail_over(&self, turn: ServerTurn) {
        let mut current = self.current.write().expect("never poisoned");
        if self.switches.load(Ordering::SeqCst) != turn.0 {
            return;
        }
        let from = current.at;
        let to = (from + 1) % self.servers.len();
        match self.channel(to) {
            Ok(channel) => {
                *current = Current {
                    at: to,
                    client: IdentityClient::new(channel),
                };
                self.switches.fetch_add(1, Ordering::SeqCst);
                drop(current);
                *self.signs.lock().expect("never poisoned") = None;
                if to != from {
                    self.moves.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %self.servers[from], to = %self.servers[to], "moving to another idmint server");
                }
            }
            Err(e) => {
                tracing::error!(server = %self.servers[to], error = %e, "cannot set up a connection")
            }
        }
    }

    /// How often the agent moved to another server.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// The endpoint calls go to now.
    pub fn server(&self) -> String {
        let at = self.current.read().expect("never poisoned").at;
        self.servers[at].clone()
    }

    fn use_server(&self, at: usize) -> Result<(), tonic::transport::Error> {
        let channel = self.channel(at)?;
        *self.current.write().expect("never poisoned") = Current {
            at,
            client: IdentityClient::new(channel),
        };
        // The next sign request opens a stream on the new connection; this one finishes the
        // requests it carries and ends.
        *self.signs.lock().expect("never poisoned") = None;
        Ok(())
    }

    /// A connection to server `at`, made when first used.
    fn channel(&self, at: usize) -> Result<Channel, tonic::transport::Error> {
        let tls = self.tls.read().expect("never poisoned");
        Ok(endpoint(&self.servers[at], &self.server_name, &tls)?.connect_lazy())
    }

    /// The server's API, for calls beyond the [`Authority`] interface.
    pub fn client(&self) -> IdentityClient<Channel> {
        self.current.read().expect("never poisoned").client.clone()
    }

    /// Has the server certify the key in `csr` as this agent's next credential.
    pub async fn renew_credential(&self, csr: Vec<u8>) -> Result<Renewed, api::Error> {
        let reply = self
            .client()
            .renew_credential(pb::RenewCredentialRequest {
                csr,
                ttl_seconds: 0,
            })
            .await
            .map_err(error)?
            .into_inner();
        let chain_pem = std::iter::once(&reply.cert_der)
            .chain(&reply.chain_der)
            .map(|der| crate::ca::cert_pem(der))
            .collect();
        Ok(Renewed {
            chain_pem,
            serial_hex: reply.serial_hex,
            not_after: unix_time(reply.not_after)?,
        })
    }

    /// Sends `request` on the open sign stream, opening one if there is none or it has
    /// ended (waiting while its queue is full), and returns where its answer will come.
    async fn submit(
        &self,
        request: pb::SignRequest,
    ) -> oneshot::Receiver<Result<pb::SignResponse, Status>> {
        let (reply, answer) = oneshot::channel();
        let (id, requests) = {
            let mut signs = self.signs.lock().expect("never poisoned");
            if signs.as_ref().is_some_and(SignStream::ended) {
                *signs = None;
            }
            let stream = signs.get_or_insert_with(|| SignStream::open(self.client()));
            let id = stream.next_id;
            stream.next_id += 1;
            // Should the stream have ended just now, `reply` is dropped and the caller told so.
            match stream.waiting.lock().expect("never poisoned").as_mut() {
                Some(waiting) => waiting.insert(id, reply),
                None => return answer,
            };
            (id, stream.requests.clone())
        };
        // If the stream ends while this waits, its end tells the caller (the reply is
        // registered above).
        let _ = requests
            .send(pb::SignStreamRequest {
                id,
                request: Some(request),
            })
            .await;
        answer
    }
}

impl SignStream {
    /// Opens a `SignStream` call and starts the task that hands its answers out.
    fn open(client: IdentityClient<Channel>) -> SignStream {
        let (requests, outgoing) = mpsc::channel(QUEUED_SIGNS);
        let waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let mut answers = JoinSet::new();
        answers.spawn(hand_out_answers(client, outgoing, waiting.clone()));
        SignStream {
            requests,
            waiting,
            next_id: 0,
            _answers: answers,
        }
    }

    fn ended(&self) -> bool {
        self.waiting.lock().expect("never poisoned").is_none()
    }
}

/// Runs one `SignStream` call: gives each answer to the caller waiting for it, and when the
/// stream ends (the server went away, or the agent stopped sending) tells everyone still
/// waiting.
async fn hand_out_answers(
    mut client: IdentityClient<Channel>,
    outgoing: mpsc::Receiver<pb::SignStreamRequest>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let ended = match client.sign_stream(ReceiverStream::new(outgoing)).await {
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = waiting
                            .lock()
                            .expect("never poisoned")
                            .as_mut()
                            .and_then(|w| w.remove(&answer.id));
                        if let Some(caller) = caller {
                            let _ = caller.send(signed_or_refused(answer.outcome));
                        }
                    }
                    Ok(None) => break Status::unavailable("the server ended the sign stream"),
                    Err(status) => break status,
                }
            }
        }
    };
    let left = waiting.lock().expect("never poisoned").take();
    for caller in left.into_iter().flat_map(HashMap::into_values) {
        let _ = caller.send(Err(ended.clone()));
    }
}

/// One answer of a sign stream as the caller takes it.
fn signed_or_refused(outcome: Option<Outcome>) -> Result<pb::SignResponse, Status> {
    match outcome {
        Some(Outcome::Signed(signed)) => Ok(signed),
        Some(Outcome::Refused(r)) => Err(Status::new(Code::from(r.code), r.message)),
        None => Err(Status::internal("the server sent an empty sign result")),
    }
}

/// How often an agent pings the server on an open connection, and how long it waits for the
/// answer before taking the connection for dead: a server whose host vanished without closing
/// the connection is left within about 5 s, as one killed on a live host is at once.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

fn endpoint(
    url: &str,
    server_name: &str,
    pem: &TlsPem,
) -> Result<Endpoint, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.roots_pem))
        .identity(Identity::from_pem(&pem.cert_chain_pem, &pem.key_pem))
        .domain_name(server_name);
    Ok(Channel::from_shared(url.to_string())
        .expect("an https:// endpoint")
        .tls_config(tls)?
        .initial_stream_window_size(pb::WINDOW)
        .initial_connection_window_size(pb::WINDOW * 4)
        // The sign stream stays open between renewals: a server that vanished without
        // closing the connection is noticed by a missed ping, not by a renewal that hangs.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT))
}

/// Whether `url` is `https://host:port` (a path of `/` at most), as a server address must be.
pub fn is_server_address(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.port_u16().is_some()
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
}

/// Where an agent starts among `n` servers: a hash of its credential, so cells spread.
fn spread(cert_chain_pem: &str, n: usize) -> usize {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_chain_pem.as_bytes());
    let head = u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"));
    (head % n as u64) as usize
}

fn unix_time(t: i64) -> Result<time::OffsetDateTime, api::Error> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|_| api::Error::Unavailable(Cause::Unreadable(format!("time {t}"))))
}

impl Authority for RemoteAuthority {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        let wire = pb::SignRequest {
            instance_guid: request.placement.instance_guid.to_string(),
            csr: request.csr,
            ttl_seconds: request
                .ttl
                .map(|t| t.duration().as_secs().min(u32::MAX.into()) as u32)
                .unwrap_or(0),
        };
        // A request whose server went away goes to the next one (a second certificate may
        // come of it; both are in the ledger). Every server is tried, the one in use twice.
        let tries = self.servers.len() + 1;
        let mut tried = 0;
        let reply = loop {
            tried += 1;
            let turn = self.turn();
            let failure = match self.submit(wire.clone()).await.await {
                Ok(Ok(reply)) => break reply,
                Ok(Err(status)) if !server_gone(&status) => return Err(error(status)),
                Ok(Err(status)) => error(status),
                Err(_) => api::Error::Unavailable(Cause::StreamEnded),
            };
            if tried >= tries {
                return Err(failure);
            }
            tracing::debug!(error = %failure, "a sign request failed for want of a server; trying the next");
            self.fail_over(turn);
        };
        Ok(SignedCert {
            spiffe_id: reply.spiffe_id,
            cert_der: reply.cert_der,
            chain_der: reply.chain_der,
            serial_hex: reply.serial_hex,
            not_before: unix_time(reply.not_before)?,
            not_after: unix_time(reply.not_after)?,
            capped: reply.capped,
            ledger_seq: reply.ledger_seq,
        })
    }

    async fn sign_jwt(&self, request: JwtRequest) -> Result<SignedJwt, api::Error> {
        let wire = pb::SignJwtSvidRequest {
            instance_guid: request.placement.instance_guid.to_string(),
            audience: request.audience,
        };
        // As for certificates: a server gone away, the next one.
        let tries = self.servers.len() + 1;
        let mut tried = 0;
        let reply = loop {
            tried += 1;
            let turn = self.turn();
            match self.client().sign_jwt_svid(wire.clone()).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if !server_gone(&status) || tried >= tries => {
                    return Err(error(status))
                }
                Err(status) => {
                    tracing::debug!(error = %status, "a JWT-SVID request failed for want of a server; trying the next");
                    self.fail_over(turn);
                }
            }
        };
        Ok(SignedJwt {
            spiffe_id: reply.spiffe_id,
            token: reply.token,
            expires_at: reply.expires_at,
            ledger_seq: reply.ledger_seq,
        })
    }

    async fn trust_bundle(&self) -> Result<Vec<Vec<u8>>, api::Error> {
        use rustls_pki_types::pem::PemObject;
        let mut stream = self
            .client()
            .watch_bundle(pb::WatchBundleRequest {})
            .await
            .map_err(error)?
            .into_inner();
        let bundle = stream
            .message()
            .await
            .map_err(error)?
            .ok_or_else(|| api::Error::Unavailable(Cause::Unreadable("no bundle".into())))?;
        rustls_pki_types::CertificateDer::pem_slice_iter(bundle.roots_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| api::Error::Unavailable(Cause::Unreadable(format!("the bundle: {e}"))))
    }
}

/// Whether a call failed because its server is gone or cannot serve now, so another may.
fn server_gone(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// The server's status as what the agent half understands: the inverse of the server's
/// conversion in `server::status`.
fn error(s: tonic::Status) -> api::Error {
    let cause = || Cause::Server {
        code: s.code(),
        message: s.message().to_string(),
    };
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            api::Error::PermissionDenied(Denial::Server(s.message().to_string()))
        }
        Code::InvalidArgument | Code::NotFound => api::Error::Refused(cause()),
        _ => api::Error::Unavailable(cause()),
    }
}
