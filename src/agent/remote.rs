//! The agent's side of the server API: [`Authority`] over gRPC with mutual TLS, for agents on
//! other machines than the server. The agent presents its cell credential; the server decides
//! from it which instances the agent may have certificates for.

use std::sync::{Arc, RwLock};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::api::{self, Authority, SignRequest, SignedCert};
use crate::proto::identity_client::IdentityClient;
use crate::proto::{self as pb};

/// A connection to an idmint server. Clones share it, and see a changed credential or trust
/// bundle (see [`RemoteAuthority::reconnect`]) from their next call on.
#[derive(Clone)]
pub struct RemoteAuthority {
    endpoint: Arc<str>,
    server_name: Arc<str>,
    client: Arc<RwLock<IdentityClient<Channel>>>,
}

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
        Ok(RemoteAuthority {
            endpoint: s.endpoint.into(),
            server_name: s.server_name.into(),
            client: Arc::new(RwLock::new(IdentityClient::new(channel))),
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

fn endpoint(s: &RemoteSettings<'_>) -> Result<Endpoint, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s.roots_pem))
        .identity(Identity::from_pem(s.cert_chain_pem, s.key_pem))
        .domain_name(s.server_name);
    Channel::from_shared(s.endpoint.clone())
        .expect("an https:// endpoint")
        .tls_config(tls)
}

fn unix_time(t: i64) -> Result<time::OffsetDateTime, api::Error> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|_| api::Error::Unavailable(format!("server sent time {t}")))
}

impl Authority for RemoteAuthority {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        let reply = self
            .client()
            .sign(pb::SignRequest {
                instance_guid: request.placement.instance_guid.to_string(),
                csr: request.csr,
                ttl_seconds: request
                    .ttl
                    .map(|t| t.duration().as_secs().min(u32::MAX.into()) as u32)
                    .unwrap_or(0),
            })
            .await
            .map_err(error)?
            .into_inner();
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
