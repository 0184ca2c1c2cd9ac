//! The server API over mutually authenticated TLS (`proto/idmint.proto`). The caller is the
//! SPIFFE ID in its client certificate, which the TLS layer ([`api_tls`]) has already
//! verified against the trust bundle: a cell, the orchestrator, or an admin. Everything else
//! is refused.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::allow_watch::AllowWatch;
use super::api_tls::{self, ApiTls, Client, Peer};
use super::fleet::{FleetReports, ReportError};
use super::placing;
use super::registry::Registry;
use super::revocations::Revoked;
use super::{IssuanceService, Policies};
use crate::api::{self, Caller};
use crate::ca::{CertificateAuthority, Principal, PrincipalError};
use crate::ids::{CellId, Guid, Ttl};
use crate::message_limit::MessageLimit;
use crate::placement::Placement;
use crate::proto::identity_server::{Identity as IdentityRpc, IdentityServer};
use crate::proto::{self as pb, DEFAULT_MAX_MESSAGE, MAX_STREAM_IN_FLIGHT, WINDOW};

/// What the API serves from.
#[derive(Clone)]
pub struct IdentityApi {
    issuance: IssuanceService,
    registry: Registry,
    policies: Policies,
    ca: Arc<CertificateAuthority>,
    /// Whether a cell may register and deregister instances on itself.
    cells_register_own: bool,
    /// Where cells' reports of their sidecars' bundles go; `None` where only the sidecars of
    /// this process count (`idmint dev`).
    fleet: Option<FleetReports>,
    /// The foreign trust domains' bundles, sent with ours; none unless set.
    federated: Option<watch::Receiver<Arc<Vec<crate::sds::ForeignBundle>>>>,
    /// Cancelled when the server stops: sign streams take no more requests and end, so
    /// that shutdown does not wait for agents to close them.
    stopping: CancellationToken,
    /// The tasks working on sign streams, which the server waits for when it stops.
    tasks: TaskTracker,
}

impl IdentityApi {
    /// The API over these parts.
    pub fn new(
        issuance: IssuanceService,
        registry: Registry,
        policies: Policies,
        ca: Arc<CertificateAuthority>,
        cells_register_own: bool,
    ) -> Self {
        IdentityApi {
            issuance,
            registry,
            policies,
            ca,
            cells_register_own,
            fleet: None,
            federated: None,
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Keeps the cells' reports of their sidecars' trust bundles in `fleet`.
    pub fn with_fleet_reports(mut self, fleet: FleetReports) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Sends the federated bundles `federated` holds with the trust bundle.
    pub fn with_federation(
        mut self,
        federated: watch::Receiver<Arc<Vec<crate::sds::ForeignBundle>>>,
    ) -> Self {
        self.federated = Some(federated);
        self
    }

    /// Who is calling, from the client certificate the TLS layer verified.
    fn client<T>(req: &Request<T>) -> Result<&Client, Status> {
        req.extensions()
            .get::<Peer>()
            .ok_or_else(|| Status::from(&PrincipalError::NoCertificate))?
            .client()
            .map_err(Status::from)
    }

    /// The client, unless its credential, or its cell, is revoked.
    fn unrevoked_client<'r, T>(&self, req: &'r Request<T>) -> Result<&'r Client, Status> {
        let client = Self::client(req)?;
        match self.revoked(client) {
            Some(refusal) => Err(refusal),
            None => Ok(client),
        }
    }

    /// The refusal of `client` when its credential or its cell is revoked. Checked at each
    /// call and at each request on a sign stream, so that a stream opened before the
    /// revocation signs nothing after it.
    fn revoked(&self, client: &Client) -> Option<Status> {
        let cell = match &client.principal {
            Principal::Cell(cell) => Some(cell.as_str()),
            _ => None,
        };
        self.issuance
            .revocations()?
            .now()
            .credential_refusal(&client.serial_hex, cell)
            .map(Status::permission_denied)
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        self.unrevoked_client(req).map(|c| c.principal.clone())
    }

    /// Whose placements `caller` asked for: a cell always gets its own, whatever it names;
    /// others the cell named, or every cell when none is.
    fn cell_scope(&self, caller: &Principal, wanted: &str) -> Result<Option<CellId>, Status> {
        Ok(match caller {
            Principal::Cell(own) => Some(own.clone()),
            _ if wanted.is_empty() => None,
            _ => Some(parse("cell_id", wanted)?),
        })
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
        let now = self.issuance.clock().now();
        let (who, placement) = self.placement_for(caller, instance).await?;
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
            .await?;
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

    /// Who is asking, and for which placement: a cell for an instance by GUID (`sign_as`
    /// looks it up and certifies it as registered; an unregistered one is refused with only
    /// its GUID and the cell recorded, so the stand-ins here go nowhere), an admin for a
    /// registered instance.
    async fn placement_for(
        &self,
        caller: &Principal,
        instance: Guid,
    ) -> Result<(Caller, Placement), Status> {
        match caller {
            Principal::Cell(cell) => Ok((
                Caller::Cell(cell.clone()),
                Placement {
                    instance_guid: instance.clone(),
                    app_guid: instance,
                    space_guid: None,
                    org_guid: None,
                    cell_id: cell.clone(),
                    container_ip: None,
                },
            )),
            Principal::Admin(_) => match self
                .registry
                .find(&instance)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
            {
                Some(p) => Ok((Caller::Operator, p)),
                None => Err(Status::not_found(format!(
                    "no instance {instance} is registered"
                ))),
            },
            _ => Err(Status::permission_denied(
                "only cells and admins get certificates",
            )),
        }
    }

    /// Answers the sign requests of one stream, each in a task of its own so that they are
    /// signed on every core and answered as each one's ledger record is committed. A request
    /// the stream cannot deliver (too large, not decodable) ends the stream with that status.
    async fn answer_stream(
        self,
        caller: Client,
        mut incoming: Streaming<pb::SignStreamRequest>,
        answers: mpsc::Sender<Result<pb::SignStreamResult, Status>>,
    ) {
        let in_flight = Arc::new(Semaphore::new(MAX_STREAM_IN_FLIGHT));
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let next = tokio::select! {
                next = incoming.message() => next,
                // The stream ends once the answers still being worked on are sent.
                _ = self.stopping.cancelled() => return,
            };
            let next = match next {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(status) => {
                    // Every request read before this one is answered before the stream ends.
                    drop(permit);
                    let all = MAX_STREAM_IN_FLIGHT as u32;
                    let _ = in_flight.acquire_many(all).await;
                    let _ = answers.send(Err(status)).await;
                    return;
                }
            };
            let (api, caller, answers) = (self.clone(), caller.clone(), answers.clone());
            self.tasks.spawn(async move {
                let outcome = match (next.request, api.revoked(&caller)) {
                    (_, Some(refusal)) => Err(refusal),
                    (Some(request), None) => api.sign_one(&caller.principal, request).await,
                    (None, None) => Err(Status::invalid_argument("request: missing")),
                };
                // A caller that went away still had its certificate recorded; nothing to undo.
                let _ = answers.send(Ok(stream_result(next.id, outcome))).await;
                drop(permit);
            });
        }
    }

    /// `updates` as a response stream that ends when the server stops, so that shutdown does
    /// not wait for agents to hang up.
    fn until_stopped<T: Send + 'static>(
        &self,
        updates: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
        use futures_util::StreamExt;
        Box::pin(updates.take_until(self.stopping.clone().cancelled_owned()))
    }

    /// Whether a cell registering its own instance stays within `server.cell_instances`, so a
    /// compromised cell cannot grow the registry (and every server's memory) without end.
    fn within_cell_placements(&self, caller: &Principal, p: &Placement) -> Result<(), Status> {
        let (Principal::Cell(cell), Some(limits)) = (caller, self.issuance.limits()) else {
            return Ok(());
        };
        let max = limits.settings().cell_instances as usize;
        if self.registry.get(&p.instance_guid).is_none() && self.registry.count_on(cell) >= max {
            limits.cell_instances_full();
            return Err(Status::resource_exhausted(format!(
                "cell {cell} has {max} instances registered already (server.cell_instances)"
            )));
        }
        Ok(())
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
            Principal::Auditor(_) => Err(Status::permission_denied("auditors only read")),
            Principal::Server { .. } => Err(Status::permission_denied("not a client role")),
        }
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<pb::Bundle, Status>> + Send>>;
type PlacementStream = Pin<Box<dyn Stream<Item = Result<pb::PlacementUpdate, Status>> + Send>>;
type AllowListStream = Pin<Box<dyn Stream<Item = Result<pb::AllowListUpdate, Status>> + Send>>;
type SignResultStream = Pin<Box<dyn Stream<Item = Result<pb::SignStreamResult, Status>> + Send>>;

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

    type SignStreamStream = SignResultStream;

    async fn sign_stream(
        &self,
        request: Request<Streaming<pb::SignStreamRequest>>,
    ) -> Result<Response<SignResultStream>, Status> {
        let caller = self.unrevoked_client(&request)?.clone();
        let incoming = request.into_inner();
        let (answers, out) = mpsc::channel(MAX_STREAM_IN_FLIGHT);
        self.tasks
            .spawn(self.clone().answer_stream(caller, incoming, answers));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn sign_jwt_svid(
        &self,
        request: Request<pb::SignJwtSvidRequest>,
    ) -> Result<Response<pb::SignJwtSvidResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let instance: Guid = parse("instance_guid", &req.instance_guid)?;
        let (who, placement) = self.placement_for(&caller, instance).await?;
        let now = self.issuance.clock().now();
        let signed = self
            .issuance
            .sign_jwt_as(
                &who,
                api::JwtRequest {
                    placement,
                    audience: req.audience,
                },
                now,
            )
            .await?;
        Ok(Response::new(pb::SignJwtSvidResponse {
            spiffe_id: signed.spiffe_id,
            token: signed.token,
            expires_at: signed.expires_at,
            ledger_seq: signed.ledger_seq,
        }))
    }

    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        request: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<BundleStream>, Status> {
        self.caller(&request)?;
        let ca = self.ca.clone();
        let changes = ca.watch();
        let revoked = self.issuance.revocations().map(|r| r.watch());
        let jwt = self.issuance.jwt().cloned();
        let jwt_changes = jwt.as_ref().map(|k| k.watch());
        let federated = self.federated.clone();
        let federation_changes = self.federated.clone();
        let bundle = move |ca: &CertificateAuthority, revoked: &Option<watch::Receiver<_>>| {
            let published = ca.published();
            pb::Bundle {
                trust_domain: ca.settings().trust_domain.as_str().to_string(),
                roots_pem: published.roots_pem,
                generation: published.generation,
                signing_ca_sha256: published.signing_ca_sha256,
                crls_pem: revoked
                    .as_ref()
                    .map(|r: &watch::Receiver<Arc<Revoked>>| r.borrow().crls_pem.clone())
                    .unwrap_or_default(),
                jwt_keys_json: jwt
                    .as_ref()
                    .map(|k| crate::jwt::jwt_keys_json(&k.now().published))
                    .unwrap_or_default(),
                federated: federated
                    .as_ref()
                    .map(|f| f.borrow().iter().map(pb::foreign_to_wire).collect())
                    .unwrap_or_default(),
            }
        };
        // Sent when the roots, the signing intermediate, the CRLs, the JWT keys or a
        // federated bundle change, not for every generation.
        let watches = (changes, revoked, jwt_changes, federation_changes);
        let stream =
            futures_util::stream::unfold((ca, watches, None), move |(ca, mut watches, last)| {
                let bundle = bundle.clone();
                async move {
                    loop {
                        let b = bundle(&ca, &watches.1);
                        // Everything but the generation.
                        let seen = Some(pb::Bundle {
                            generation: 0,
                            ..b.clone()
                        });
                        if seen != last {
                            return Some((Ok(b), (ca, watches, seen)));
                        }
                        let (changes, revoked, jwt_changes, federation_changes) = &mut watches;
                        tokio::select! {
                            changed = changes.changed() => changed.ok()?,
                            changed = next_change(revoked) => changed?,
                            changed = next_change(jwt_changes) => changed?,
                            changed = next_change(federation_changes) => changed?,
                        }
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_placement(
        &self,
        request: Request<pb::Placement>,
    ) -> Result<Response<pb::Placement>, Status> {
        let caller = self.caller(&request)?;
        let p = pb::placement_from_wire(request.into_inner()).map_err(Status::invalid_argument)?;
        self.may_place(&caller, &p.cell_id)?;
        self.within_cell_placements(&caller, &p)?;
        let by = caller.spiffe_id(self.issuance.ca().settings());
        let (ledger, clock) = (self.issuance.ledger(), self.issuance.clock());
        placing::register(&self.registry, ledger, clock, p.clone(), &by).await?;
        Ok(Response::new(pb::placement_to_wire(&p)))
    }

    async fn deregister_placement(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        let caller = self.caller(&request)?;
        let instance: Guid = parse("instance_guid", &request.get_ref().instance_guid)?;
        let p = self
            .registry
            .get(&instance)
            .ok_or_else(|| Status::not_found(format!("no instance {instance} is registered")))?;
        self.may_place(&caller, &p.cell_id)?;
        let by = caller.spiffe_id(self.issuance.ca().settings());
        let (ledger, clock) = (self.issuance.ledger(), self.issuance.clock());
        let p = placing::deregister(&self.registry, ledger, clock, &instance, &by).await?;
        Ok(Response::new(pb::placement_to_wire(&p)))
    }

    async fn renew_credential(
        &self,
        request: Request<pb::RenewCredentialRequest>,
    ) -> Result<Response<pb::RenewedCredential>, Status> {
        let client = self.unrevoked_client(&request)?.clone();
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
            .certify_principal(
                &client.principal,
                &req.csr,
                ttl,
                self.issuance.clock().now(),
            )
            .await?;
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

    type WatchPlacementsStream = PlacementStream;

    async fn watch_placements(
        &self,
        request: Request<pb::WatchPlacementsRequest>,
    ) -> Result<Response<PlacementStream>, Status> {
        let caller = self.caller(&request)?;
        let only = self.cell_scope(&caller, &request.into_inner().cell_id)?;
        let updates = futures_util::stream::unfold(self.registry.watch(only), |mut w| async {
            let update = w.next().await;
            Some((Ok(pb::placement_update_to_wire(&update)), w))
        });
        Ok(Response::new(self.until_stopped(updates)))
    }

    type WatchAllowListsStream = AllowListStream;

    async fn watch_allow_lists(
        &self,
        request: Request<pb::WatchAllowListsRequest>,
    ) -> Result<Response<AllowListStream>, Status> {
        let caller = self.caller(&request)?;
        let only = self.cell_scope(&caller, &request.into_inner().cell_id)?;
        let watch = AllowWatch::new(self.policies.clone(), self.registry.watch(only));
        let updates = futures_util::stream::unfold(watch, |mut w| async {
            let update = w.next().await;
            Some((Ok(pb::allow_update_to_wire(&update)), w))
        });
        Ok(Response::new(self.until_stopped(updates)))
    }

    async fn report_bundle_acks(
        &self,
        request: Request<pb::BundleAckReport>,
    ) -> Result<Response<pb::BundleAckReceipt>, Status> {
        let Principal::Cell(cell) = self.caller(&request)? else {
            return Err(Status::permission_denied(
                "only cells report their sidecars' trust bundles",
            ));
        };
        let Some(fleet) = &self.fleet else {
            // `idmint dev` counts the sidecars it serves itself.
            return Ok(Response::new(pb::BundleAckReceipt {}));
        };
        let held = request
            .into_inner()
            .held
            .into_iter()
            .map(|h| (h.root_sha256, h.sidecars))
            .collect();
        match fleet.record(&cell, held).await {
            Ok(()) => Ok(Response::new(pb::BundleAckReceipt {})),
            Err(ReportError::Invalid(why)) => Err(Status::invalid_argument(why)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn list_placements(
        &self,
        request: Request<pb::ListPlacementsRequest>,
    ) -> Result<Response<pb::Placements>, Status> {
        let caller = self.caller(&request)?;
        let only = self.cell_scope(&caller, &request.into_inner().cell_id)?;
        let (all, _) = self.registry.snapshot();
        let placements = all
            .iter()
            .filter(|p| only.as_ref().is_none_or(|c| *c == p.cell_id))
            .map(pb::placement_to_wire)
            .collect();
        Ok(Response::new(pb::Placements { placements }))
    }
}

/// The answer to request `id` of a `SignStream`.
fn stream_result(id: u64, outcome: Result<pb::SignResponse, Status>) -> pb::SignStreamResult {
    use pb::sign_stream_result::Outcome;
    pb::SignStreamResult {
        id,
        outcome: Some(match outcome {
            Ok(signed) => Outcome::Signed(signed),
            Err(s) => Outcome::Refused(pb::Refusal {
                code: s.code() as i32,
                message: s.message().to_string(),
            }),
        }),
    }
}

fn parse<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    pb::parse_field(field, value).map_err(Status::invalid_argument)
}

/// How long a stopping server waits for the sign requests it is working on.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `cancel`, with TLS that follows the CA.
pub async fn serve(
    listener: TcpListener,
    api: IdentityApi,
    tls: ApiTls,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let api = IdentityApi {
        stopping: cancel.clone(),
        ..api
    };
    let incoming = api_tls::incoming(
        listener,
        tls.configs(),
        api.ca.settings().clone(),
        api.issuance.limits().cloned(),
    );
    let messages = api.issuance.limits().map_or_else(
        || {
            MessageLimit::new(
                DEFAULT_MAX_MESSAGE,
                "server.max_message",
                Default::default(),
            )
        },
        |limits| limits.message_limit(),
    );
    let tasks = api.tasks.clone();
    let service = IdentityServer::new(api).max_decoding_message_size(messages.max());
    let serving = tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW * 4)
        .add_service(messages.service(service))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled());
    // Both end on `cancel`: the certificate keeper runs beside the server, not detached.
    let (served, ()) = tokio::join!(serving, tls.keep_current(cancel.clone()));
    // Sign streams end on `cancel` once the requests they read are answered; a ledger commit
    // that hangs must not hold shutdown for ever.
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            "sign stream tasks still running at shutdown"
        );
    }
    served
}

/// The next change of `rx`: `None` once its sender is gone; never while there is none.
async fn next_change<T>(rx: &mut Option<watch::Receiver<T>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}
