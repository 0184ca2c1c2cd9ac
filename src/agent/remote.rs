//! The agent's side of the server API: [`Authority`] over gRPC with mutual TLS, for agents on
//! other machines than the server. The agent presents its cell credential; the server decides
//! from it which instances the agent may have certificates for.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::api::{self, Authority, SignRequest, SignedCert};
use crate::proto::identity_client::IdentityClient;
use crate::proto::sign_result::Outcome;
use crate::proto::{self as pb, MAX_SIGN_BATCH};

/// A connection to an idmint server. Clones share it, and see a changed credential or trust
/// bundle (see [`RemoteAuthority::reconnect`]) from their next call on. Sign requests made
/// at about the same time travel together in one `SignBatch` call.
#[derive(Clone)]
pub struct RemoteAuthority {
    endpoint: Arc<str>,
    server_name: Arc<str>,
    client: Arc<RwLock<IdentityClient<Channel>>>,
    signs: mpsc::UnboundedSender<PendingSign>,
}

/// A sign request waiting for its batch, and where its answer goes.
type PendingSign = (
    pb::SignRequest,
    oneshot::Sender<Result<pb::SignResponse, Status>>,
);

/// What an agent needs to reach the server.
pub struct RemoteSettings<'a> {
    /// `https://host:port`.
    pub endpoint: String,
    /// The name the server's certificate must carry (a DNS name or IP address).
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
    /// Connects and completes the TLS handshake: a server that does not accept this agent's
    /// credential is an error here.
    pub async fn connect(
        s: RemoteSettings<'_>,
    ) -> Result<RemoteAuthority, tonic::transport::Error> {
        let channel = endpoint(&s)?.connect().await?;
        let client = Arc::new(RwLock::new(IdentityClient::new(channel)));
        let (signs, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_in_batches(client.clone(), waiting));
        Ok(RemoteAuthority {
            endpoint: s.endpoint.into(),
            server_name: s.server_name.into(),
            client,
            signs,
        })
    }

    /// From the next call on, connects with this credential and trusts these roots. Calls
    /// in flight finish on the connection they started on.
    pub fn reconnect(
        &self,
        cert_chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
    ) -> Result<(), tonic::transport::Error> {
        let channel = endpoint(&RemoteSettings {
            endpoint: self.endpoint.to_string(),
            server_name: &self.server_name,
            cert_chain_pem,
            key_pem,
            roots_pem,
        })?
        .connect_lazy();
        *self.client.write().expect("never poisoned") = IdentityClient::new(channel);
        Ok(())
    }

    /// The server's API, for calls beyond the [`Authority`] interface.
    pub fn client(&self) -> IdentityClient<Channel> {
        self.client.read().expect("never poisoned").clone()
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
}

/// Sends the sign requests waiting at each moment as one `SignBatch` call, with several calls
/// in flight at once, until every [`RemoteAuthority`] is gone. Nothing waits to fill a batch:
/// under load requests queue while calls are out, and the next call takes them all.
async fn send_in_batches(
    client: Arc<RwLock<IdentityClient<Channel>>>,
    mut waiting: mpsc::UnboundedReceiver<PendingSign>,
) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_SIGN_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut client = client.read().expect("never poisoned").clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let sent = requests.len();
            let results = match client.sign_batch(pb::SignBatchRequest { requests }).await {
                Ok(r) => r.into_inner().results,
                Err(s) => {
                    for reply in replies {
                        let _ = reply.send(Err(s.clone()));
                    }
                    return;
                }
            };
            if results.len() != sent {
                let s = Status::internal(format!(
                    "the server answered {} of {sent} sign requests",
                    results.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(s.clone()));
                }
                return;
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(match result.outcome {
                    Some(Outcome::Signed(signed)) => Ok(signed),
                    Some(Outcome::Refused(r)) => Err(Status::new(Code::from(r.code), r.message)),
                    None => Err(Status::internal("the server sent an empty sign result")),
                });
            }
        });
    }
}

fn endpoint(s: &RemoteSettings<'_>) -> Result<Endpoint, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s.roots_pem))
        .identity(Identity::from_pem(s.cert_chain_pem, s.key_pem))
        .domain_name(s.server_name);
    Ok(Channel::from_shared(s.endpoint.clone())
        .expect("an https:// endpoint")
        .tls_config(tls)?
        .initial_stream_window_size(pb::WINDOW)
        .initial_connection_window_size(pb::WINDOW * 4))
}

fn unix_time(t: i64) -> Result<time::OffsetDateTime, api::Error> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|_| api::Error::Unavailable(format!("server sent time {t}")))
}

impl Authority for RemoteAuthority {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let stopped = || api::Error::Unavailable("the connection to the server has stopped".into());
        let wire = pb::SignRequest {
            instance_guid: request.placement.instance_guid.to_string(),
            csr: request.csr,
            ttl_seconds: request
                .ttl
                .map(|t| t.duration().as_secs().min(u32::MAX.into()) as u32)
                .unwrap_or(0),
        };
        self.signs.send((wire, reply_tx)).map_err(|_| stopped())?;
        let reply = reply_rx.await.map_err(|_| stopped())?.map_err(error)?;
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
            .ok_or_else(|| api::Error::Unavailable("the server sent no bundle".into()))?;
        rustls_pki_types::CertificateDer::pem_slice_iter(bundle.roots_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| api::Error::Unavailable(format!("unreadable bundle: {e}")))
    }
}

fn error(s: tonic::Status) -> api::Error {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            api::Error::PermissionDenied(s.message().to_string())
        }
        Code::InvalidArgument | Code::NotFound => api::Error::Refused(s.message().to_string()),
        _ => api::Error::Unavailable(format!("{}: {}", s.code(), s.message())),
    }
}
