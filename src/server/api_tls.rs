//! The server API's TLS, kept current with the CA: client certificates are checked against
//! the trust bundle as it is now, and the server's own certificate is renewed half-way through
//! its life and whenever the signing CA changes, so that a root rotation or a long uptime needs
//! no restart. Handshakes happen here rather than inside tonic so that the configuration can
//! change between connections, and so that who a client is gets worked out once per
//! connection instead of once per request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::limits::Limits;
use super::IssuanceService;
use crate::ca::{CertificateAuthority, Credential, Principal, PrincipalError, Settings};
use crate::clock::Clock;
use crate::ids::Ttl;
use crate::renewal::{Keeper, Kept, Renewer, Schedule};

/// How long the server's own certificate lives; it is renewed on the agents' schedule.
const OWN_TTL: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server's own certificate could not be issued.
    #[error("cannot issue the server's own certificate: {0}")]
    Own(#[from] crate::api::Error),
    /// rustls refused a root, the key or the protocol versions.
    #[error("cannot configure the server API's TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the roots.
    #[error("cannot check client certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server's credential, kept current, and the TLS configuration made from it.
pub struct ApiTls {
    issuance: IssuanceService,
    keeper: Keeper<OwnCertificate>,
    config: watch::Sender<Arc<ServerConfig>>,
    /// The same credential and client check for the admin API, which speaks HTTP/1.1.
    admin_config: watch::Sender<Arc<ServerConfig>>,
    /// The same credential without a client check, for the SPIFFE bundle endpoint's
    /// `https_spiffe` profile.
    bundle_config: watch::Sender<Arc<ServerConfig>>,
}

impl ApiTls {
    /// Issues the server's own credential for `who` (a [`Principal::Server`]), recorded in the
    /// ledger like every other, and renewed on `schedule` by `clock`.
    pub async fn enroll(
        issuance: IssuanceService,
        who: Principal,
        schedule: Schedule,
        clock: Clock,
    ) -> Result<ApiTls, Error> {
        let own = OwnCertificate {
            issuance: issuance.clone(),
            who,
            clock: clock.clone(),
        };
        let ca = issuance.ca();
        let first = own.obtain().await?;
        let config = server_config(ca, &first, API_ALPN)?;
        let admin_config = server_config(ca, &first, ADMIN_ALPN)?;
        let bundle_config = bundle_config(&first)?;
        let since = clock.now();
        let keeper = Keeper::new(own, "server API certificate", schedule, clock)
            .starting_with(first, since)
            .following_signer(ca.signer());
        Ok(ApiTls {
            issuance,
            keeper,
            config: watch::channel(config).0,
            admin_config: watch::channel(admin_config).0,
            bundle_config: watch::channel(bundle_config).0,
        })
    }

    /// The configuration the bundle endpoint's `https_spiffe` connections get, as it changes.
    pub fn bundle_configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.bundle_config.subscribe()
    }

    /// The configuration the admin API's TLS connections get, as it changes.
    pub fn admin_configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.admin_config.subscribe()
    }

    /// The configuration new connections get, as it changes.
    pub(super) fn configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.config.subscribe()
    }

    /// Follows the CA until `cancel`: a new trust bundle is trusted for client certificates
    /// at once, and the server's certificate is renewed on schedule and whenever the CA signs
    /// with another intermediate.
    pub(super) async fn keep_current(self, cancel: CancellationToken) {
        let mut own = self.keeper.certificates();
        let mut bundles = self.issuance.ca().watch();
        let follow = async {
            loop {
                tokio::select! {
                    changed = own.changed() => if changed.is_err() { return },
                    changed = bundles.changed() => if changed.is_err() { return },
                }
                let Some(cred) = own.borrow_and_update().clone() else {
                    continue;
                };
                let ca = self.issuance.ca();
                match (
                    server_config(ca, &cred, API_ALPN),
                    server_config(ca, &cred, ADMIN_ALPN),
                    bundle_config(&cred),
                ) {
                    (Ok(config), Ok(admin), Ok(bundle)) => {
                        self.config.send_replace(config);
                        self.admin_config.send_replace(admin);
                        self.bundle_config.send_replace(bundle);
                    }
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        tracing::error!(error = %e, "cannot update the server API's TLS")
                    }
                }
            }
        };
        tokio::select! {
            _ = self.keeper.run(cancel.clone()) => {}
            _ = follow => {}
        }
    }
}

/// Where the server's own certificates come from: the CA in this process, recorded in the
/// ledger.
struct OwnCertificate {
    issuance: IssuanceService,
    who: Principal,
    clock: Clock,
}

impl Renewer for OwnCertificate {
    type Cert = Credential;
    type Error = crate::api::Error;

    async fn obtain(&self) -> Result<Credential, Self::Error> {
        let ttl = own_ttl(self.issuance.ca());
        self.issuance.enroll(&self.who, ttl, self.clock.now()).await
    }
}

impl Kept for Credential {
    fn not_after(&self) -> OffsetDateTime {
        self.issued.validity.not_after
    }

    fn issuer_sha256(&self) -> Option<&str> {
        Some(&self.issued.issuer_fingerprint)
    }

    fn serial_hex(&self) -> &str {
        &self.issued.serial_hex
    }
}

/// [`OWN_TTL`], or less under intermediates configured to live less.
fn own_ttl(ca: &CertificateAuthority) -> Ttl {
    let own = Ttl::from_secs(OWN_TTL.as_secs()).expect("a non-zero lifetime");
    own.min(ca.settings().intermediate_ttl)
}

/// The server API speaks HTTP/2 (gRPC).
const API_ALPN: &[u8] = b"h2";
/// The admin API speaks HTTP/1.1.
const ADMIN_ALPN: &[u8] = b"http/1.1";

/// TLS 1.2 or 1.3 with `alpn`, presenting `own`, and requiring a client certificate that
/// chains to one of the CA's current roots.
fn server_config(
    ca: &CertificateAuthority,
    own: &Credential,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for root in ca.roots() {
        roots.add(CertificateDer::from(root.der))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = std::iter::once(&own.issued.cert_der)
        .chain(&own.issued.chain_der)
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    // The key is borrowed, not copied: the only copy outside ring's key pair is the
    // credential's, which is wiped when it is dropped.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(own.key_pkcs8.as_slice()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The bundle endpoint's `https_spiffe` TLS: `own`, and no client certificate asked for.
fn bundle_config(own: &Credential) -> Result<Arc<ServerConfig>, Error> {
    let chain = std::iter::once(&own.issued.cert_der)
        .chain(&own.issued.chain_der)
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(own.key_pkcs8.as_slice()));
    Ok(super::bundle_endpoint::public_config(chain, &key)?)
}

/// Connections on `listener` whose handshakes completed with the configuration current when
/// they arrived. Failed and slow handshakes are dropped here. At most [`MAX_HANDSHAKES`] are
/// in progress at once: past that, connections wait in the listener's backlog, so clients that
/// never finish a handshake cannot make the server hold unbounded state. The handshakes are
/// owned by the stream: dropping it ends them.
pub(super) fn incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
    settings: Settings,
    limits: Option<Arc<Limits>>,
) -> impl futures_util::Stream<Item = io::Result<ApiConn>> {
    let accepting = Accepting {
        listener,
        configs,
        settings: Arc::new(settings),
        handshakes: JoinSet::new(),
        max: limits
            .as_ref()
            .map_or(MAX_HANDSHAKES, |l| l.settings().max_handshakes),
        limits,
        full: false,
    };
    futures_util::stream::unfold(accepting, |mut a| async move {
        let conn = a.next().await;
        Some((Ok(conn), a))
    })
}

/// The most server API handshakes in progress at once, before clients are authenticated,
/// unless the limits say otherwise.
pub const MAX_HANDSHAKES: usize = 256;

struct Accepting {
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
    settings: Arc<Settings>,
    handshakes: JoinSet<Option<ApiConn>>,
    max: usize,
    limits: Option<Arc<Limits>>,
    /// Whether `max` handshakes are in progress, so each time it fills is counted once.
    full: bool,
}

impl Accepting {
    /// The next connection whose handshake completed.
    async fn next(&mut self) -> ApiConn {
        loop {
            let room = self.handshakes.len() < self.max;
            if !room && !self.full {
                tracing::warn!(max = self.max, "server API handshakes at their limit (server.max_handshakes); new connections wait");
                if let Some(limits) = &self.limits {
                    limits.handshakes_full();
                }
            }
            self.full = !room;
            tokio::select! {
                accepted = self.listener.accept(), if room => match accepted {
                    Ok((tcp, _)) => self.handshake(tcp),
                    Err(e) => {
                        // Out of descriptors, most likely: let some close before accepting more.
                        tracing::warn!(error = %e, "cannot accept a server API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn handshake(&mut self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(self.configs.borrow().clone());
        let settings = self.settings.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let peer = Peer::of(&tls, &settings);
                    Some(ApiConn { tls, peer })
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "server API handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("server API handshake timed out");
                    None
                }
            }
        });
    }
}

/// A client the TLS layer accepted, by its certificate.
#[derive(Clone, Debug)]
pub struct Client {
    /// Who the certificate says it is.
    pub principal: Principal,
    /// How long the certificate was issued for (not counting its back-dating).
    pub lifetime: Duration,
    /// Its serial, lowercase hex as the ledger has it.
    pub serial_hex: String,
}

/// Who is at the other end of a server API connection: a client, or why its certificate,
/// though it verified, names no one the API serves. Every request on the connection sees it.
#[derive(Clone, Debug)]
pub struct Peer(Arc<Result<Client, PrincipalError>>);

impl Peer {
    fn of(tls: &TlsStream<TcpStream>, settings: &Settings) -> Peer {
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        Peer(Arc::new(match leaf {
            Some(der) => client_of(der, settings),
            None => Err(PrincipalError::NoCertificate),
        }))
    }

    /// The client, or why there is none.
    pub fn client(&self) -> Result<&Client, &PrincipalError> {
        self.0.as_ref().as_ref()
    }
}

/// Who a verified client certificate names, and for how long it was issued.
pub(crate) fn client_of(der: &[u8], settings: &Settings) -> Result<Client, PrincipalError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| PrincipalError::Unreadable)?;
    let principal = Principal::of_certificate(&cert, settings)?;
    let validity = cert.validity();
    let seconds = validity.not_after.timestamp() - validity.not_before.timestamp();
    let issued_for =
        Duration::from_secs(seconds.max(0) as u64).saturating_sub(settings.clock_skew.duration());
    Ok(Client {
        principal,
        lifetime: issued_for,
        serial_hex: crate::ca::encode_hex(cert.raw_serial()),
    })
}

/// A server API connection after its handshake.
pub struct ApiConn {
    tls: TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for ApiConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for ApiConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}
