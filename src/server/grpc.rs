//! The server API over mutually authenticated TLS (`proto/idmint.proto`). The caller is the
//! SPIFFE ID in its client certificate, which the TLS layer ([`api_tls`]) has already
//! verified against the trust bundle: a cell, the orchestrator, or an admin. Everything else
//! is refused.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::api_tls::{self, ApiTls, Client, Peer};
use super::registry::{self, Registry};
use super::IssuanceService;
use crate::api::{self, Caller};
use crate::ca::{CertificateAuthority, Principal};
use crate::ids::{CellId, Guid, Ttl};
use crate::placement::Placement;
use crate::proto::identity_server::{Identity as IdentityRpc, IdentityServer};
use crate::proto::{self as pb, MAX_SIGN_BATCH, WINDOW};

/// What the API serves from.
#[derive(Clone)]
pub struct IdentityApi {
    issuance: IssuanceService,
    registry: Registry,
    ca: Arc<CertificateAuthority>,
    /// Whether a cell may register and deregister instances on itself.
    cells_register_own: bool,
}

impl IdentityApi {
    /// The API over these parts.
    pub fn new(
        issuance: IssuanceService,
        registry: Registry,
        ca: Arc<CertificateAuthority>,
        cells_register_own: bool,
    ) -> Self {
        IdentityApi {
            issuance,
            registry,
            ca,
            cells_register_own,
        }
    }

    /// Who is calling, from the client certificate the TLS layer verified.
    fn client<T>(req: &Request<T>) -> Result<&Client, Status> {
        req.extensions()
            .get::<Peer>()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?
            .client()
            .map_err(Status::permission_denied)
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        Self::client(req).map(|c| c.principal.clone())
    }

    /// Certifies the CSR of one sign request for `caller`.
    async fn sign_one(
        &self,
        caller: &Principal,
        req: pb::SignRequest,
    ) -> Result<pb::SignResponse, Status> {
        let instance: Guid = parse("instance_guid", &req.instance_guid)?;
        let ttl = match req.ttl_seconds {
            0 => None,
            s => Some(Ttl::from_secs(s.into()).expect("non-zero")),
        };
        let now = OffsetDateTime::now_utc();
        let (who, placement) = match caller {
            // `sign_as` looks the instance up and certifies it as registered; an unregistered
            // one is refused with only its GUID and the cell recorded, so these stand-ins
            // go nowhere.
            Principal::Cell(cell) => (
                Caller::Cell(cell.clone()),
                Placement {
                    instance_guid: instance.clone(),
                    app_guid: instance,
                    space_guid: None,
                    org_guid: None,
                    cell_id: cell.clone(),
                    container_ip: None,
                },
            ),
            Principal::Admin(_) => match self.registry.get(&instance).await {
                Some(p) => (Caller::Operator, p),
                None => {
                    return Err(Status::not_found(format!(
                        "no instance {instance} is registered"
                    )))
                }
            },
            _ => {
                return Err(Status::permission_denied(
                    "only cells and admins get certificates",
                ))
            }
        };
        let signed = self
            .issuance
            .sign_as(
                &who,
                api::SignRequest {
                    placement,
                    csr: req.csr,
                    ttl,
                },
                now,
            )
            .await
            .map_err(status)?;
        Ok(pb::SignResponse {
            spiffe_id: signed.spiffe_id,
            cert_der: signed.cert_der,
            chain_der: signed.chain_der,
            serial_hex: signed.serial_hex,
            not_before: signed.not_before.unix_timestamp(),
            not_after: signed.not_after.unix_timestamp(),
            capped: signed.capped,
            ledger_seq: signed.ledger_seq,
        })
    }

    /// Whether `caller` may change `cell`'s placements.
    fn may_place(&self, caller: &Principal, cell: &CellId) -> Result<(), Status> {
        match caller {
            Principal::Orchestrator | Principal::Admin(_) => Ok(()),
            Principal::Cell(own) if self.cells_register_own && own == cell => Ok(()),
            Principal::Cell(own) => Err(Status::permission_denied(format!(
                "cell {own} may not place instances{}",
                if self.cells_register_own {
                    format!(" on cell {cell}")
                } else {
                    " (cells registering their own instances is off)".into()
                }
            ))),
            Principal::Server { .. } => Err(Status::permission_denied("not a client role")),
        }
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<pb::Bundle, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityRpc for IdentityApi {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let caller = self.caller(&request)?;
        let signed = self.sign_one(&caller, request.into_inner()).await?;
        Ok(Response::new(signed))
    }

    async fn sign_batch(
        &self,
        request: Request<pb::SignBatchRequest>,
    ) -> Result<Response<pb::SignBatchResponse>, Status> {
        let caller = self.caller(&request)?;
        let requests = request.into_inner().requests;
        if requests.len() > MAX_SIGN_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} requests in one batch; at most {MAX_SIGN_BATCH}",
                requests.len()
            )));
        }
        let outcomes =
            futures_util::future::join_all(requests.into_iter().map(|r| self.sign_one(&caller, r)))
                .await;
        let results = outcomes
            .into_iter()
            .map(|outcome| pb::SignResult {
                outcome: Some(match outcome {
                    Ok(signed) => pb::sign_result::Outcome::Signed(signed),
                    Err(s) => pb::sign_result::Outcome::Refused(pb::Refusal {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::SignBatchResponse { results }))
    }

    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        request: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<BundleStream>, Status> {
        self.caller(&request)?;
        let ca = self.ca.clone();
        let changes = ca.watch();
        let bundle = |ca: &CertificateAuthority| pb::Bundle {
            trust_domain: ca.settings().trust_domain.as_str().to_string(),
            roots_pem: ca.roots_pem(),
            generation: ca.generation(),
            signing_ca_sha256: ca.intermediate().fingerprint,
        };
        let first = bundle(&ca);
        // Sent when the roots or the signing intermediate change, not for every generation.
        let stream = futures_util::stream::unfold(
            (ca, changes, Some(first), None),
            move |(ca, mut changes, pending, mut last)| async move {
                let mut next = pending;
                loop {
                    if let Some(b) = next.take() {
                        let seen = Some((b.roots_pem.clone(), b.signing_ca_sha256.clone()));
                        if seen != last {
                            last = seen;
                            return Some((Ok(b), (ca, changes, None, last)));
                        }
                    }
                    changes.changed().await.ok()?;
                    next = Some(bundle(&ca));
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_placement(
        &self,
        request: Request<pb::Placement>,
    ) -> Result<Response<pb::Placement>, Status> {
        let caller = self.caller(&request)?;
        let p = pb::placement_from_wire(request.into_inner()).map_err(Status::invalid_argument)?;
        self.may_place(&caller, &p.cell_id)?;
        self.registry
            .register(p.clone())
            .await
            .map_err(|e| match e {
                registry::Error::Conflict(_) => Status::already_exists(e.to_string()),
                other => Status::unavailable(other.to_string()),
            })?;
        Ok(Response::new(pb::placement_to_wire(&p)))
    }

    async fn deregister_placement(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        let caller = self.caller(&request)?;
        let instance: Guid = parse("instance_guid", &request.get_ref().instance_guid)?;
        let p =
            self.registry.get(&instance).await.ok_or_else(|| {
                Status::not_found(format!("no instance {instance} is registered"))
            })?;
        self.may_place(&caller, &p.cell_id)?;
        let p = self
            .registry
            .deregister(&instance)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::placement_to_wire(&p)))
    }

    async fn renew_credential(
        &self,
        request: Request<pb::RenewCredentialRequest>,
    ) -> Result<Response<pb::RenewedCredential>, Status> {
        let client = Self::client(&request)?.clone();
        let req = request.into_inner();
        // Never longer than the credential presented: renewing cannot extend what enrolment
        // granted.
        let most = client.lifetime.as_secs().max(1);
        let seconds = match u64::from(req.ttl_seconds) {
            0 => most,
            s => s.min(most),
        };
        let ttl = Ttl::from_secs(seconds).expect("non-zero");
        let (issued, ledger_seq) = self
            .issuance
            .certify_principal(&client.principal, &req.csr, ttl, OffsetDateTime::now_utc())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RenewedCredential {
            spiffe_id: issued.spiffe_id,
            cert_der: issued.cert_der,
            chain_der: issued.chain_der,
            serial_hex: issued.serial_hex,
            not_before: issued.validity.not_before.unix_timestamp(),
            not_after: issued.validity.not_after.unix_timestamp(),
            ledger_seq,
        }))
    }

    async fn list_placements(
        &self,
        request: Request<pb::ListPlacementsRequest>,
    ) -> Result<Response<pb::Placements>, Status> {
        let caller = self.caller(&request)?;
        let wanted = request.into_inner().cell_id;
        let only: Option<CellId> = match &caller {
            Principal::Cell(own) => Some(own.clone()),
            _ if wanted.is_empty() => None,
            _ => Some(parse("cell_id", &wanted)?),
        };
        let (all, _) = self.registry.snapshot().await;
        let placements = all
            .iter()
            .filter(|p| only.as_ref().is_none_or(|c| *c == p.cell_id))
            .map(pb::placement_to_wire)
            .collect();
        Ok(Response::new(pb::Placements { placements }))
    }
}

fn status(e: api::Error) -> Status {
    match e {
        api::Error::Refused(m) => Status::invalid_argument(m),
        api::Error::PermissionDenied(m) => Status::permission_denied(m),
        api::Error::Unavailable(m) => Status::unavailable(m),
    }
}

fn parse<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    pb::parse_field(field, value).map_err(Status::invalid_argument)
}

/// Serves the API on `listener` until `cancel`, with TLS that follows the CA.
pub async fn serve(
    listener: TcpListener,
    api: IdentityApi,
    tls: ApiTls,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = api_tls::incoming(listener, tls.configs(), api.ca.settings().clone());
    let keeper = tokio::spawn(tls.keep_current(cancel.clone()));
    let served = tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW * 4)
        .add_service(IdentityServer::new(api))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await;
    keeper.abort();
    Ok(served?)
}
