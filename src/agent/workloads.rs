//! The instances this agent serves: for each, a key made here, its certificate, and an SDS
//! socket that only that instance's sidecar is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::metrics::AgentMetrics;
use super::obtain_svid;
use super::refresh::{random_draw, retry_delay, Schedule};
use crate::api::Authority;
use crate::ca::{cert_pem, private_key_pem};
use crate::ids::{CellId, Guid};
use crate::placement::{Placement, PlacementUpdate};
use crate::sds::{self, SdsMetrics};
use crate::spiffe::{IdTemplate, TrustDomain};

/// What an instance's sidecar is given as its own identity.
pub struct Identity {
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Leaf first, then intermediates, PEM.
    pub chain_pem: String,
    /// The PKCS#8 private key, PEM; wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// Serial, hex.
    pub serial_hex: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
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

/// The roots every sidecar trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain the roots are for.
    pub trust_domain: TrustDomain,
    /// The root certificates, PEM, concatenated.
    pub roots_pem: String,
    /// The CA generation this content was taken at; a sidecar that acknowledged it has every
    /// root published up to then.
    pub generation: u64,
}

/// One served instance, as its SDS server sees it.
#[derive(Clone)]
pub struct Workload {
    /// Where it runs.
    pub placement: Placement,
    /// Its SPIFFE ID (known before its first certificate is).
    pub spiffe_id: String,
    /// Its current identity; `None` until the first certificate arrives.
    pub identity: watch::Receiver<Option<Arc<Identity>>>,
    /// The trust bundle.
    pub bundle: watch::Receiver<Arc<Bundle>>,
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
}

/// When the next attempt is due and why the last one failed, if it did.
#[derive(Clone, Debug, Default)]
struct Attempts {
    next: Option<OffsetDateTime>,
    last_error: Option<String>,
}

struct Served {
    placement: Placement,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    attempts: watch::Receiver<Attempts>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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
            shutdown,
        }
    }

    /// The SDS counters of this agent.
    pub fn metrics(&self) -> Arc<SdsMetrics> {
        self.metrics.clone()
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

    /// The socket path an instance's sidecar connects to.
    pub fn socket_path(&self, instance: &Guid) -> PathBuf {
        socket_path(&self.settings.sds_dir, instance)
    }

    /// Starts serving `placement`: its socket exists when this returns.
    pub async fn add(&self, placement: Placement) -> anyhow::Result<()> {
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
        let (identity_tx, identity_rx) = watch::channel(None);
        let (attempts_tx, attempts_rx) = watch::channel(Attempts::default());
        let socket = self.socket_path(&placement.instance_guid);
        let listener = sds::bind(&socket)?;
        let workload = Workload {
            placement: placement.clone(),
            spiffe_id,
            identity: identity_rx,
            bundle: self.bundle.clone(),
        };
        let files = self
            .settings
            .instance_dir
            .as_ref()
            .map(|dir| dir.join(placement.instance_guid.as_str()));
        let keep = tokio::spawn(keep_identity(
            Keeper {
                authority: self.authority.clone(),
                placement: placement.clone(),
                schedule: self.settings.renewal,
                identity: identity_tx,
                attempts: attempts_tx,
                metrics: self.renewals.clone(),
                files: files.clone(),
            },
            cancel.clone(),
        ));
        let server = tokio::spawn(sds::serve(
            listener,
            workload.clone(),
            self.metrics.clone(),
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
                tasks: vec![keep, server],
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

/// The longest path a Unix socket can be bound at: `sun_path` holds 108 bytes with the NUL.
const SOCKET_PATH_MAX: usize = 107;

/// Whether every instance's socket fits under `dir`; if not, why, naming the length allowed.
/// Checked with the configuration so that no registration fails on it later.
pub fn check_sds_dir(dir: &Path) -> Result<(), String> {
    let any_instance: Guid = "00000000-0000-0000-0000-000000000000"
        .parse()
        .expect("a valid GUID");
    let longest = socket_path(dir, &any_instance).as_os_str().len();
    if longest > SOCKET_PATH_MAX {
        return Err(format!(
            "{} is too long for SDS sockets: an instance's socket path there has {longest} bytes, \
             a Unix socket path at most {SOCKET_PATH_MAX}; choose a directory of at most {} bytes",
            dir.display(),
            SOCKET_PATH_MAX - (longest - dir.as_os_str().len())
        ));
    }
    Ok(())
}

async fn stop(s: Served) {
    s.cancel.cancel();
    for t in s.tasks {
        if tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
        {
            tracing::warn!(socket = %s.socket.display(), "SDS task did not stop in time");
        }
    }
    std::fs::remove_file(&s.socket).ok();
    if let Some(files) = &s.files {
        std::fs::remove_dir_all(files).ok();
    }
}

/// What keeps one instance's certificate fresh.
struct Keeper<A> {
    authority: Arc<A>,
    placement: Placement,
    schedule: Schedule,
    identity: watch::Sender<Option<Arc<Identity>>>,
    attempts: watch::Sender<Attempts>,
    metrics: Arc<AgentMetrics>,
    files: Option<PathBuf>,
}

/// Obtains the instance's certificate, then renews it on schedule until cancelled. Each
/// renewal makes a new key here; the key never leaves. The current certificate is served
/// until its replacement is published, and failures are retried with backoff that shrinks as
/// the current certificate nears expiry, so a passing outage never lets it lapse.
async fn keep_identity<A: Authority>(k: Keeper<A>, cancel: CancellationToken) {
    let instance = &k.placement.instance_guid;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = obtain_svid(k.authority.as_ref(), k.placement.clone(), None) => r,
        };
        let now = OffsetDateTime::now_utc();
        let (next, last_error) = match attempt {
            Ok(svid) => {
                failures = 0;
                let cert = &svid.cert;
                let chain_pem = std::iter::once(&cert.cert_der)
                    .chain(&cert.chain_der)
                    .map(|d| cert_pem(d))
                    .collect();
                let identity = Arc::new(Identity {
                    spiffe_id: cert.spiffe_id.clone(),
                    chain_pem,
                    key_pem: private_key_pem(&svid.key_pkcs8),
                    serial_hex: cert.serial_hex.clone(),
                    not_after: cert.not_after,
                });
                let start = now.max(cert.not_before);
                let renew_at = k.schedule.renew_at(start, cert.not_after, random_draw());
                if let Some(dir) = &k.files {
                    // The files follow the identity served over SDS; failing to write them is
                    // logged and does not hold the sidecar's certificate back. Two renames and
                    // their syncs block, so they run off the async workers.
                    let (to, written) = (dir.clone(), identity.clone());
                    let wrote =
                        tokio::task::spawn_blocking(move || write_instance_files(&to, &written))
                            .await
                            .unwrap_or_else(|e| Err(anyhow::anyhow!("file writer failed: {e}")));
                    if let Err(e) = wrote {
                        tracing::error!(%instance, dir = %dir.display(), error = %e,
                            "cannot write the instance identity files");
                    }
                }
                let previous = k.identity.send_replace(Some(identity));
                if let Some(old) = previous {
                    k.metrics.renewed();
                    tracing::info!(%instance, old_serial = %old.serial_hex, serial = %cert.serial_hex,
                        not_after = %cert.not_after, %renew_at, "certificate renewed");
                }
                (renew_at, None)
            }
            Err(e) => {
                failures += 1;
                k.metrics.failed();
                let current = k.identity.borrow().as_ref().map(|i| i.not_after);
                let delay = retry_delay(failures, now, current);
                tracing::warn!(%instance, error = %e, failures, retry_in = ?delay,
                    still_valid_until = ?current, "could not obtain a certificate; retrying");
                (now + delay, Some(e.to_string()))
            }
        };
        k.attempts.send_replace(Attempts {
            next: Some(next),
            last_error,
        });
        let wait = Duration::try_from(next - now).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Writes Diego's `instance.crt` (leaf, then chain) and `instance.key` (0600) into `dir`, each
/// replaced whole by a rename, the key first: a reader that finds a new certificate finds its key.
fn write_instance_files(dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::files::write_atomic(
        &dir.join("instance.key"),
        identity.key_pem.as_bytes(),
        0o600,
    )?;
    crate::files::write_atomic(
        &dir.join("instance.crt"),
        identity.chain_pem.as_bytes(),
        0o644,
    )?;
    Ok(())
}
