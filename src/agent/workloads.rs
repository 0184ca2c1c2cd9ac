//! The instances this agent serves: for each, a key made here, its certificate, and an SDS
//! socket that only that instance's sidecar is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;
use super::obtain_svid;
use crate::api::Authority;
use crate::ca::{cert_pem, private_key_pem, sha256_hex};
use crate::clock::Clock;
use crate::ids::{CellId, Guid};
use crate::placement::{Placement, PlacementUpdate};
use crate::renewal::{Attempts, Keeper, Kept, Renewer, Schedule};
use crate::sds::{self, Bundle, Identity, SdsMetrics, Workload};
use crate::spiffe::{IdTemplate, TrustDomain};

impl Kept for Identity {
    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    fn issuer_sha256(&self) -> Option<&str> {
        self.issuer_sha256.as_deref()
    }

    fn serial_hex(&self) -> &str {
        &self.serial_hex
    }
}

/// What `idmint instance list` shows of an instance's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertStatus {
    /// Serial of the certificate served now, if there is one yet.
    pub serial_hex: Option<String>,
    /// Its expiry.
    pub not_after: Option<OffsetDateTime>,
    /// When the next attempt to renew (or first obtain) it is due.
    pub next_attempt: Option<OffsetDateTime>,
    /// The last attempt's error, while attempts are failing.
    pub last_error: Option<String>,
}

/// Agent settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Directory of the per-instance SDS sockets.
    pub sds_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// How app SPIFFE IDs are written.
    pub id_template: IdTemplate,
    /// When certificates are renewed.
    pub renewal: Schedule,
    /// Where each instance's Diego identity files go (`<dir>/<instance>/instance.crt` and
    /// `instance.key`); `None` writes none.
    pub instance_dir: Option<PathBuf>,
    /// The cell whose instances are served; `None` serves every instance followed.
    pub cell: Option<CellId>,
    /// What renewals are scheduled by.
    pub clock: Clock,
    /// How many SDS streams a socket and the agent hold open at once.
    pub streams: crate::sds::SdsLimits,
    /// Permission bits of each instance's SDS socket (`agent.sds_socket_mode`).
    pub socket_mode: u32,
}

struct Served {
    placement: Placement,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    attempts: watch::Receiver<Attempts>,
    cancel: CancellationToken,
    /// Its certificate keeper and SDS server; aborted should `Served` be dropped unstopped.
    tasks: JoinSet<()>,
    socket: PathBuf,
    files: Option<PathBuf>,
}

/// The agent's set of served instances.
pub struct Workloads<A> {
    authority: Arc<A>,
    settings: Settings,
    bundle: watch::Receiver<Arc<Bundle>>,
    metrics: Arc<SdsMetrics>,
    renewals: Arc<AgentMetrics>,
    served: Mutex<HashMap<Guid, Served>>,
    allow_lists: Arc<super::AllowLists>,
    signer: Option<watch::Receiver<String>>,
    revoked: Option<watch::Receiver<crate::renewal::RevokedSerials>>,
    shutdown: CancellationToken,
}

impl<A: Authority + 'static> Workloads<A> {
    /// An agent with no instances yet.
    pub fn new(
        authority: Arc<A>,
        settings: Settings,
        bundle: watch::Receiver<Arc<Bundle>>,
        metrics: Arc<SdsMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        // Sockets are handed to other programs, so their paths must not depend on our cwd.
        let mut settings = settings;
        if let Ok(abs) = std::path::absolute(&settings.sds_dir) {
            settings.sds_dir = abs;
        }
        Workloads {
            authority,
            settings,
            bundle,
            metrics,
            renewals: Arc::new(AgentMetrics::default()),
            served: Mutex::new(HashMap::new()),
            allow_lists: Arc::default(),
            signer: None,
            revoked: None,
            shutdown,
        }
    }

    /// Renews every instance's certificate at once when `signer`, the SHA-256 (hex) of the
    /// intermediate the CA signs with, changes away from the one that issued it.
    pub fn following_signer(mut self, signer: watch::Receiver<String>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Replaces an instance's certificate, with a new key, as soon as `revoked` (the serials
    /// the CA has revoked, lowercase hex) holds its serial.
    pub fn following_revocations(
        mut self,
        revoked: watch::Receiver<crate::renewal::RevokedSerials>,
    ) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// The SDS counters of this agent.
    pub fn metrics(&self) -> Arc<SdsMetrics> {
        self.metrics.clone()
    }

    /// The allow lists of the apps served here, which the server's allow-list stream fills.
    pub fn allow_lists(&self) -> Arc<super::AllowLists> {
        self.allow_lists.clone()
    }

    /// The renewal counters of this agent.
    pub fn renewal_metrics(&self) -> Arc<AgentMetrics> {
        self.renewals.clone()
    }

    /// The certificate state of a served instance; `None` when it is not served here.
    pub async fn cert_status(&self, instance: &Guid) -> Option<CertStatus> {
        let served = self.served.lock().await;
        let s = served.get(instance)?;
        let identity = s.identity.borrow().clone();
        let attempts = s.attempts.borrow().clone();
        Some(CertStatus {
            serial_hex: identity.as_ref().map(|i| i.serial_hex.clone()),
            not_after: identity.as_ref().map(|i| i.not_after),
            next_attempt: attempts.next,
            last_error: attempts.last_error,
        })
    }

    /// Seconds left on every served certificate (negative when expired), for the metrics.
    pub async fn seconds_to_expiry(&self, now: OffsetDateTime) -> Vec<i64> {
        let served = self.served.lock().await;
        served
            .values()
            .filter_map(|s| {
                let i = s.identity.borrow();
                i.as_ref().map(|i| (i.not_after - now).whole_seconds())
            })
            .collect()
    }

    /// This agent's SDS and renewal counters, with the time left on each certificate at `now`,
    /// in the Prometheus text format.
    pub async fn render_metrics(&self, now: OffsetDateTime, out: &mut String) {
        self.metrics.render(out);
        let left = self.seconds_to_expiry(now).await;
        self.renewals.render(&left, out);
    }

    /// The socket path an instance's sidecar connects to.
    pub fn socket_path(&self, instance: &Guid) -> PathBuf {
        socket_path(&self.settings.sds_dir, instance)
    }

    /// Starts serving `placement`: its socket exists when this returns.
    pub async fn add(&self, placement: Placement) -> Result<(), super::Error> {
        let mut served = self.served.lock().await;
        if served.contains_key(&placement.instance_guid) {
            return Ok(());
        }
        let spiffe_id = self
            .settings
            .id_template
            .render(&self.settings.trust_domain, placement.id_values())?
            .to_string();
        let cancel = self.shutdown.child_token();
        let socket = self.socket_path(&placement.instance_guid);
        let listener = sds::bind(&socket, self.settings.socket_mode)?;
        let files = self
            .settings
            .instance_dir
            .as_ref()
            .map(|dir| dir.join(placement.instance_guid.as_str()));
        if let Some(dir) = &files {
            write_endpoint_file(dir, &socket)?;
        }
        let mut keeper = Keeper::new(
            InstanceRenewer {
                authority: self.authority.clone(),
                placement: placement.clone(),
                metrics: self.renewals.clone(),
                files: files.clone(),
            },
            format!("instance {}", placement.instance_guid),
            self.settings.renewal,
            self.settings.clock.clone(),
        );
        if let Some(signer) = &self.signer {
            keeper = keeper.following_signer(signer.clone());
        }
        if let Some(revoked) = &self.revoked {
            keeper = keeper.following_revocations(revoked.clone());
        }
        let workload = Workload {
            placement: placement.clone(),
            spiffe_id,
            identity: keeper.certificates(),
            bundle: self.bundle.clone(),
            allowed: self.allow_lists.of(&placement.app_guid),
            jwt: Some(self.authority.clone()),
        };
        let attempts_rx = keeper.attempts();
        let mut tasks = JoinSet::new();
        tasks.spawn(keeper.run(cancel.clone()));
        tasks.spawn(sds::serve(
            listener,
            workload.clone(),
            self.metrics.clone(),
            self.settings.streams,
            cancel.clone(),
        ));
        tracing::info!(instance = %placement.instance_guid, socket = %socket.display(), "serving SDS");
        served.insert(
            placement.instance_guid.clone(),
            Served {
                placement,
                identity: workload.identity.clone(),
                attempts: attempts_rx,
                cancel,
                tasks,
                socket,
                files,
            },
        );
        Ok(())
    }

    /// How many served instances have a certificate, and how many are served.
    pub async fn issued(&self) -> (usize, usize) {
        let served = self.served.lock().await;
        let issued = served
            .values()
            .filter(|s| s.identity.borrow().is_some())
            .count();
        (issued, served.len())
    }

    /// Stops serving an instance: its streams end and its socket is removed.
    pub async fn remove(&self, instance: &Guid) {
        let Some(s) = self.served.lock().await.remove(instance) else {
            return;
        };
        stop(s).await;
        tracing::info!(%instance, "stopped serving SDS");
    }

    /// Takes one update of the placements: serves what is placed on this cell and was not
    /// served, and stops serving what left (a snapshot stops everything it does not list).
    pub async fn apply(&self, update: PlacementUpdate) {
        match update {
            PlacementUpdate::Registered(p) => self.add_logged(p).await,
            PlacementUpdate::Deregistered(p) => self.remove(&p.instance_guid).await,
            PlacementUpdate::Snapshot(all) => {
                let wanted: HashMap<Guid, Placement> = all
                    .into_iter()
                    .filter(|p| self.serves(p))
                    .map(|p| (p.instance_guid.clone(), p))
                    .collect();
                let gone: Vec<Guid> = self
                    .served
                    .lock()
                    .await
                    .iter()
                    .filter(|(g, s)| wanted.get(*g) != Some(&s.placement))
                    .map(|(g, _)| g.clone())
                    .collect();
                for g in gone {
                    self.remove(&g).await;
                }
                for p in wanted.into_values() {
                    self.add_logged(p).await;
                }
            }
        }
    }

    /// Applies `updates` until they end or shutdown, then stops serving every instance.
    pub async fn follow(self: Arc<Self>, updates: impl Stream<Item = PlacementUpdate>) {
        tokio::pin!(updates);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                update = updates.next() => match update {
                    Some(u) => self.apply(u).await,
                    None => break,
                },
            }
        }
        let all: Vec<Served> = self.served.lock().await.drain().map(|(_, s)| s).collect();
        for s in all {
            stop(s).await;
        }
    }

    /// Whether `p` is on the cell served here.
    pub fn serves(&self, p: &Placement) -> bool {
        self.settings.cell.as_ref().is_none_or(|c| *c == p.cell_id)
    }

    async fn add_logged(&self, p: Placement) {
        if !self.serves(&p) {
            return;
        }
        let instance = p.instance_guid.clone();
        if let Err(e) = self.add(p).await {
            tracing::error!(%instance, error = %e, "cannot serve SDS for instance");
        }
    }
}

/// The SDS socket of `instance` under `dir`.
pub fn socket_path(dir: &Path, instance: &Guid) -> PathBuf {
    dir.join(format!("{instance}.sock"))
}

/// Whether every instance's socket fits under `dir`; if not, why, naming the length allowed.
/// Checked with the configuration so that no registration fails on it later.
pub fn check_sds_dir(dir: &Path) -> Result<(), String> {
    let any_instance: Guid = "00000000-0000-0000-0000-000000000000"
        .parse()
        .expect("a valid GUID");
    let longest = socket_path(dir, &any_instance).as_os_str().len();
    if longest > crate::files::SOCKET_PATH_MAX {
        return Err(format!(
            "{} is too long for SDS sockets: an instance's socket path there has {longest} bytes, \
             a Unix socket path at most {}; choose a directory of at most {} bytes",
            dir.display(),
            crate::files::SOCKET_PATH_MAX,
            crate::files::SOCKET_PATH_MAX - (longest - dir.as_os_str().len())
        ));
    }
    Ok(())
}

async fn stop(mut s: Served) {
    s.cancel.cancel();
    let all_ended = async { while s.tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), all_ended)
        .await
        .is_err()
    {
        tracing::warn!(socket = %s.socket.display(), "SDS task did not stop in time");
    }
    std::fs::remove_file(&s.socket).ok();
    if let Some(files) = &s.files {
        std::fs::remove_dir_all(files).ok();
    }
}

/// Where an instance's certificates come from: a key made here, certified by the authority
/// for the instance's placement, and written to the instance's Diego files when it has them.
struct InstanceRenewer<A> {
    authority: Arc<A>,
    placement: Placement,
    metrics: Arc<AgentMetrics>,
    files: Option<PathBuf>,
}

impl<A: Authority + 'static> Renewer for InstanceRenewer<A> {
    type Cert = Identity;
    type Error = super::Error;

    async fn obtain(&self) -> Result<Identity, super::Error> {
        let svid = obtain_svid(self.authority.as_ref(), self.placement.clone(), None).await?;
        let cert = &svid.cert;
        let identity = Identity {
            spiffe_id: cert.spiffe_id.clone(),
            chain_pem: std::iter::once(&cert.cert_der)
                .chain(&cert.chain_der)
                .map(|d| cert_pem(d))
                .collect(),
            key_pem: private_key_pem(&svid.key_pkcs8),
            serial_hex: cert.serial_hex.clone(),
            not_after: cert.not_after,
            issuer_sha256: cert.chain_der.first().map(|d| sha256_hex(d)),
        };
        if let Some(dir) = &self.files {
            // The files follow the identity served over SDS; failing to write them is logged
            // and does not hold the sidecar's certificate back. Two renames and their syncs
            // block, so they run off the async workers.
            let (to, key_pem, chain_pem) = (
                dir.clone(),
                identity.key_pem.clone(),
                identity.chain_pem.clone(),
            );
            let wrote = tokio::task::spawn_blocking(move || {
                write_instance_files(&to, &key_pem, &chain_pem)
            })
            .await;
            let failed = match wrote {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panicked) => Some(panicked.to_string()),
            };
            if let Some(error) = failed {
                tracing::error!(instance = %self.placement.instance_guid, dir = %dir.display(),
                    %error, "cannot write the instance identity files");
            }
        }
        Ok(identity)
    }

    fn renewed(&self) {
        self.metrics.renewed();
    }

    fn failed(&self) {
        self.metrics.failed();
    }
}

/// The name of the file, beside the instance identity files, that tells an app where its
/// SPIFFE Workload API is, in the form the SPIFFE Workload Endpoint standard gives it.
pub const ENDPOINT_FILE: &str = "spiffe-endpoint.env";

/// Writes [`ENDPOINT_FILE`] into `dir`: `SPIFFE_ENDPOINT_SOCKET=unix://<socket>`.
fn write_endpoint_file(dir: &Path, socket: &Path) -> Result<(), crate::files::Error> {
    crate::files::create_dir_all(dir)?;
    let line = format!("SPIFFE_ENDPOINT_SOCKET=unix://{}\n", socket.display());
    crate::files::write_atomic(&dir.join(ENDPOINT_FILE), line.as_bytes(), 0o644)
}

/// Writes Diego's `instance.crt` (leaf, then chain) and `instance.key` (0600) into `dir`, each
/// replaced whole by a rename, the key first: a reader that finds a new certificate finds its key.
fn write_instance_files(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
) -> Result<(), crate::files::Error> {
    crate::files::create_dir_all(dir)?;
    crate::files::write_atomic(&dir.join("instance.key"), key_pem.as_bytes(), 0o600)?;
    crate::files::write_atomic(&dir.join("instance.crt"), chain_pem.as_bytes(), 0o644)?;
    Ok(())
}
