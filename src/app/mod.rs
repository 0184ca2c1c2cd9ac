//! Start-up, supervision and shutdown of each role: the domain wired from the config (store,
//! CA, ledger, registry) with owned tasks and a bounded shutdown, and the roles built on it.
//! The command line only parses arguments, calls in here and prints.

pub mod agent;
pub mod dev;
pub mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ca::{self, CertificateAuthority, Init};
use crate::clock::Clock;
use crate::config::Config;
use crate::jwt::JwtKeys;
use crate::ledger::{checkpoints, AuditLog, Ledger};
use crate::server::change_feed::ChangeFollower;
use crate::server::federation::Federation;
use crate::server::policy_server::{PolicyServerClient, PollMetrics, Poller};
use crate::server::revocations::Revocations;
use crate::server::{IssuanceService, Policies, Registry};
use crate::store::Store;

/// How long shutdown waits for tasks (the ledger writer's last batch) before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The running domain: everything the adapters and commands use.
pub struct Runtime {
    /// The effective configuration.
    pub config: Config,
    /// The CA in use.
    pub ca: Arc<CertificateAuthority>,
    /// The server half.
    pub issuance: IssuanceService,
    /// Ledger reads.
    pub audit: AuditLog,
    /// Registered instances.
    pub registry: Registry,
    /// Container-to-container policies and enforcement modes.
    pub policies: Policies,
    /// How polling CF's policy server goes, when the policies come from it.
    pub policy_polls: Option<Arc<PollMetrics>>,
    /// What every schedule here reads the time from.
    pub clock: Clock,
    /// How signing the ledger's checkpoints goes.
    pub log: Arc<crate::ledger::checkpoints::LogStatus>,
    /// The keys that sign the ledger's checkpoints.
    pub log_keys: checkpoints::LogKeys,
    /// What is revoked, and the CRLs that say so.
    pub revocations: Revocations,
    /// The keys that sign JWT-SVIDs.
    pub jwt: Arc<JwtKeys>,
    /// The bundles of the foreign trust domains federated with this one.
    pub federation: Arc<Federation>,
    /// Woken when another server sharing the database changed the CA.
    ca_changed: Arc<tokio::sync::Notify>,
    store: Store,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Runtime {
    /// Opens the store and CA (creating them when `init` allows) and starts the ledger writer.
    pub async fn start(config: Config, init: Init) -> Result<Runtime> {
        Self::start_with_clock(config, init, Clock::system()).await
    }

    /// [`Runtime::start`], with every schedule and validity reading the time from `clock`.
    pub async fn start_with_clock(config: Config, init: Init, clock: Clock) -> Result<Runtime> {
        let create = init == Init::CreateIfMissing;
        // The data directory holds the key-encryption key and the trust bundle whatever the
        // database, not only SQLite's file.
        if create {
            ensure_writable_dir(&config.data_dir)?;
        }
        let store = Store::open(&config.store, create).await?;
        let ca = ca::load(config.ca.clone(), &store, init, clock.now()).await?;
        // Read before the state it counts: a change made meanwhile by another server is taken
        // up again, which changes nothing.
        let last_change = store.last_change().await?;
        let registry = Registry::load(store.clone(), clock.clone()).await?;
        let ca = Arc::new(ca);
        // The key-encryption key seals the checkpoint signing key as it does the CA's; a KEK
        // that cannot open it stops the start here, naming the key.
        let origin = checkpoints::origin(&config.ca.trust_domain);
        let kek = checkpoints::kek(&store, &config.ca.kek_file).await?;
        let log_keys = checkpoints::LogKeys::new(store.clone(), kek, origin);
        log_keys.current(crate::clock::unix_ms(clock.now())).await?;
        let shutdown = CancellationToken::new();
        let (ledger, writer) = Ledger::start(store.clone(), shutdown.child_token());
        let writer = spawn_owned(writer);
        let policies = Policies::load(
            store.clone(),
            ledger.clone(),
            clock.clone(),
            crate::server::policies::Settings {
                trust_domain: config.ca.trust_domain.clone(),
                template: config.ca.id_template.clone(),
                default_mode: config.policy.default_mode,
                origin: config.policy.origin(),
            },
        )
        .await;
        let client = config
            .policy
            .server
            .clone()
            .map(PolicyServerClient::new)
            .transpose();
        let (policies, client) = match (policies, client) {
            (Ok(p), Ok(c)) => (p, c),
            (policies, client) => {
                shutdown.cancel();
                let _ = writer.await;
                policies?;
                return Err(client.err().expect("one of the two failed").into());
            }
        };
        // What the issuance path needs besides the CA and the ledger; one failure stops the
        // ledger writer before the start gives up.
        let loaded = async {
            let revocations = Revocations::load(
                store.clone(),
                ca.clone(),
                log_keys.kek(),
                (ledger.clone(), registry.clone()),
                clock.clone(),
            )
            .await
            .context("cannot load the revocations")?;
            let jwt = JwtKeys::load(config.jwt, store.clone(), log_keys.kek(), clock.clone())
                .await
                .context("cannot load the JWT-SVID signing keys")?;
            let federation = Federation::new(config.federation.clone(), clock.clone())
                .map_err(anyhow::Error::msg)?;
            Ok::<_, anyhow::Error>((revocations, jwt, federation))
        };
        let (revocations, jwt, federation) = match loaded.await {
            Ok(loaded) => loaded,
            Err(e) => {
                shutdown.cancel();
                let _ = writer.await;
                return Err(e);
            }
        };
        let mut rt = Runtime {
            issuance: IssuanceService::new(ca.clone(), ledger, registry.clone(), clock.clone())
                .with_limits(config.server.limits)
                .with_revocations(revocations.clone())
                .with_jwt(jwt.clone()),
            revocations,
            jwt,
            federation,
            audit: AuditLog::new(store.clone()),
            registry,
            policies,
            policy_polls: None,
            ca,
            config,
            clock,
            ca_changed: Arc::default(),
            log: Arc::default(),
            log_keys,
            store,
            shutdown,
            tasks: vec![("ledger writer", writer)],
        };
        let issuance = rt.issuance.clone();
        rt.spawn("held-back denials", move |token| async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
                issuance.record_held_back(false).await;
            }
        });
        let (store, clock, status) = (rt.store.clone(), rt.clock.clone(), rt.log.clone());
        let keys = rt.log_keys.clone();
        rt.spawn("ledger checkpoints", move |token| {
            checkpoints::run(store, keys, clock, status, token)
        });
        let revocations = rt.revocations.clone();
        rt.spawn("revocations", move |token| revocations.run(token));
        let jwt = rt.jwt.clone();
        rt.spawn("JWT signing keys", move |token| jwt.run(token));
        // The apps placed before this start are known before any allow list is asked for.
        let mut placements = rt.registry.watch(None);
        rt.policies.learn(placements.next().await);
        let policies = rt.policies.clone();
        rt.spawn("policy placements", move |token| {
            policies.follow_placements(placements, token)
        });
        if rt.store.is_shared() {
            let follower = ChangeFollower::new(
                rt.store.clone(),
                rt.registry.clone(),
                rt.policies.clone(),
                rt.ca_changed.clone(),
                rt.revocations.changed(),
                rt.clock.clone(),
                last_change,
            );
            rt.spawn("change feed", move |token| follower.run(token));
        }
        if let Some(client) = client {
            let poller = Poller::new(
                client,
                rt.policies.clone(),
                rt.registry.clone(),
                rt.store.clone(),
                rt.clock.clone(),
            );
            rt.policy_polls = Some(poller.metrics());
            rt.spawn("policy server", move |token| poller.run(token));
        }
        Ok(rt)
    }

    /// The store, for parts that keep state of their own (CA rotation).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Woken when another server sharing the database changed the CA.
    pub fn ca_changed(&self) -> Arc<tokio::sync::Notify> {
        self.ca_changed.clone()
    }

    /// A token cancelled when shutdown begins, for parts that own tasks of their own.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Adds a task that shutdown cancels and waits for.
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = spawn_owned(task(self.shutdown.child_token()));
        self.tasks.push((name, handle));
    }

    /// Cancels every task, waits (bounded) for them, and closes the store. Queued ledger
    /// records are committed before the writer ends.
    pub async fn shutdown(self) {
        // While the ledger writer still runs: what the limits held back is recorded.
        self.issuance.record_held_back(true).await;
        self.shutdown.cancel();
        drop(self.issuance);
        for (name, handle) in self.tasks {
            match tokio::time::timeout(SHUTDOWN_GRACE, handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "task failed"),
                Err(_) => tracing::error!(task = name, "task did not stop in time"),
            }
        }
        self.store.close().await;
    }
}

/// Spawns a task whose handle the caller keeps, cancels and joins: the runtime's tasks, and
/// those of the roles it starts.
pub(crate) fn spawn_owned<F>(task: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    #[allow(clippy::disallowed_methods)] // the owners' one way to spawn
    tokio::spawn(task)
}

/// Creates `dir` if needed and proves it is writable, so a bad data directory is reported as
/// such rather than as a database error later.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("data directory {} cannot be created", dir.display()))?;
    let probe = dir.join(".idmint-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. The handlers are installed on return.
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
