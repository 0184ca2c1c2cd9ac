//! The task that rotates the self-signed CA on schedule and on request, records every CA
//! event in the ledger, and holds a new root back until the sidecars have it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::ca::rotate::{CaEvent, Rotator, Target};
use crate::ca::rotation::{self, FleetAck, Policy, State, Step};
use crate::ca::{CertificateAuthority, Error, Role};
use crate::clock::Clock;
use crate::store::{EntryKind, Lead, Leader, LedgerRecord, Store};

/// How often the schedule is checked.
const TICK: Duration = Duration::from_millis(500);

/// Why a rotation asked for did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The maintenance task is not running (the server is stopping, or never started it).
    #[error("CA maintenance is not running")]
    NotRunning,
    /// Another server sharing the database leads CA maintenance.
    #[error(
        "another idmint server runs CA maintenance for this database; \
         run `idmint ca rotate` against that one"
    )]
    NotLeader,
    /// A new root waits for the sidecars; only one root rotation at a time.
    #[error(
        "a root rotation is under way: root {root} signs once every sidecar has acknowledged \
         it, at the latest at {deadline}"
    )]
    RootRotationUnderWay {
        /// The prepared root.
        root: String,
        /// When it signs whether or not every sidecar has it (RFC 3339).
        deadline: String,
    },
    /// The rotation itself failed; nothing was activated.
    #[error(transparent)]
    Ca(#[from] Error),
}

/// What the maintenance task is asked to do now; answered with what happened.
enum Request {
    Rotate {
        target: Target,
        reply: oneshot::Sender<Result<Vec<String>, ControlError>>,
    },
    ApplyDue {
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
}

/// Asks the running maintenance task to act now; cheap to clone.
#[derive(Clone)]
pub struct CaControl {
    tx: mpsc::Sender<Request>,
    leads: Arc<AtomicBool>,
}

impl CaControl {
    /// Whether this process runs CA maintenance for its database now.
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Relaxed)
    }

    /// Rotates `target` now. Returns what happened, or why it could not.
    pub async fn rotate(&self, target: Target) -> Result<Vec<String>, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Request::Rotate { target, reply }, answer).await
    }

    /// Applies every step of the schedule that is due now, without waiting for the next tick.
    pub async fn apply_due(&self) -> Result<(), ControlError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Request::ApplyDue { reply }, answer).await
    }

    async fn ask<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T, ControlError>>,
    ) -> Result<T, ControlError> {
        self.tx
            .send(request)
            .await
            .map_err(|_| ControlError::NotRunning)?;
        answer.await.map_err(|_| ControlError::NotRunning)?
    }
}

/// What the task needs.
pub struct Maintenance {
    rotator: Rotator,
    store: Store,
    /// Held while this process runs CA maintenance for its database.
    leader: Option<Leader>,
    /// Whether `leader` is held, for the metrics.
    leads: Arc<AtomicBool>,
    ca: Arc<CertificateAuthority>,
    policy: Policy,
    /// The lowest bundle generation every connected sidecar has acknowledged (`None`: no
    /// sidecar connected).
    fleet: watch::Receiver<Option<u64>>,
    /// The prepared root and the CA generation whose bundle first contained it.
    published: Option<(String, u64)>,
    /// Woken when another server changed the CA, so this one takes it up at once rather than
    /// at the next tick.
    changed_elsewhere: Arc<Notify>,
    clock: Clock,
}

impl Maintenance {
    /// Maintenance for `ca`, or `None` in upstream mode (its CA comes from files). Its
    /// schedule reads the time from `clock`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        store: Store,
        fleet: watch::Receiver<Option<u64>>,
        clock: Clock,
    ) -> Result<Option<Maintenance>, Error> {
        let Some(rotator) = Rotator::new(ca.clone(), store.clone())? else {
            return Ok(None);
        };
        let s = ca.settings();
        let policy = Policy {
            leaf_ttl: s.leaf_ttl.duration(),
            clock_skew: s.clock_skew.duration(),
            root_rotate_at: s.root_rotate_at,
            // A root published for federation waits at least that long, whatever the setting.
            root_activation_max_wait: s
                .root_activation_max_wait
                .duration()
                .max(s.root_min_publish),
            root_min_publish: s.root_min_publish,
        };
        Ok(Some(Maintenance {
            rotator,
            store,
            leader: None,
            leads: Arc::default(),
            ca,
            policy,
            fleet,
            published: None,
            changed_elsewhere: Arc::default(),
            clock,
        }))
    }

    /// Takes up the CA changes of other servers when `changed` is woken (see
    /// [`crate::server::change_feed`]), besides every tick.
    pub fn woken_by(mut self, changed: Arc<Notify>) -> Self {
        self.changed_elsewhere = changed;
        self
    }

    /// The handle that asks for rotations, and the task to run (until `cancel`) for whoever
    /// owns it. Each change of the fleet's acknowledgements, and each tick, applies what is
    /// due.
    pub fn start(
        self,
        cancel: CancellationToken,
    ) -> (CaControl, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(4);
        let leads = self.leads.clone();
        (CaControl { tx, leads }, self.run(rx, cancel))
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fleet_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed_elsewhere.notified() => {
                    if let Err(e) = self.catch_up().await {
                        tracing::error!(error = %e, "CA rotation step failed; will retry");
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.catch_up().await {
                        tracing::error!(error = %e, "CA rotation step failed; will retry");
                    }
                }
                changed = self.fleet.changed(), if fleet_open => {
                    // Without sidecars (the agent stopped) the tick still drives the schedule.
                    fleet_open = changed.is_ok();
                    if let Err(e) = self.catch_up().await {
                        tracing::error!(error = %e, "CA rotation step failed; will retry");
                    }
                }
                Some(request) = requests.recv() => match request {
                    Request::Rotate { target, reply } => {
                        let _ = reply.send(self.rotate_now(target).await);
                    }
                    Request::ApplyDue { reply } => {
                        let _ = reply.send(self.catch_up().await.map_err(ControlError::from));
                    }
                },
            }
        }
    }

    /// Whether this process runs CA maintenance now: it takes the lead when no other server
    /// has it, and notices when it has lost it.
    async fn leads(&mut self) -> Result<bool, Error> {
        if let Some(leader) = &mut self.leader {
            if leader.still_leads().await {
                return Ok(true);
            }
            tracing::warn!("lost the CA maintenance lead (database connection broken)");
            self.leader = None;
        }
        self.leads.store(false, Ordering::Relaxed);
        self.leader = self.store.try_lead(Lead::CaMaintenance).await?;
        self.leads.store(self.leader.is_some(), Ordering::Relaxed);
        if self.leader.is_some() {
            tracing::info!("this server runs CA maintenance for its database");
            // Start from what is stored: another server may have rotated before.
            self.rotator.reload_if_changed().await?;
        }
        Ok(self.leader.is_some())
    }

    /// Applies every step that is due, or, on a server that does not lead, takes up what the
    /// leader stored.
    async fn catch_up(&mut self) -> Result<(), Error> {
        if !self.leads().await? {
            if self.rotator.reload_if_changed().await? {
                tracing::info!("took up a CA rotation made by another server");
            }
            return Ok(());
        }
        // Bounded: each step changes the state it was chosen from.
        for _ in 0..8 {
            let now = self.clock.now();
            let views = self.rotator.views().await?;
            let acks = self.fleet_ack(&views);
            let Some(step) = rotation::next_step(&views, now, &self.policy, acks) else {
                return Ok(());
            };
            self.apply(&step, now).await?;
        }
        Ok(())
    }

    /// Rotates `target` now; the answer, or the refusal, is for the operator who asked.
    async fn rotate_now(&mut self, target: Target) -> Result<Vec<String>, ControlError> {
        if !self.leads().await? {
            return Err(ControlError::NotLeader);
        }
        let now = self.clock.now();
        let views = self.rotator.views().await?;
        if let Some(root) = views
            .iter()
            .find(|v| v.role == Role::Root && v.state == State::Prepared)
        {
            let deadline = rotation::activation_deadline(
                root.created_at,
                self.policy.root_activation_max_wait,
            );
            return Err(ControlError::RootRotationUnderWay {
                root: root.fingerprint.clone(),
                deadline: deadline
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            });
        }
        let first = match target {
            Target::Root => Step::PrepareRoot,
            Target::Intermediate => Step::PrepareIntermediate,
        };
        let mut said = self.apply(&first, now).await?;
        if target == Target::Intermediate {
            let prepared = self
                .rotator
                .views()
                .await?
                .into_iter()
                .rfind(|v| v.role == Role::Intermediate && v.state == State::Prepared)
                .ok_or_else(|| Error::Inconsistent("the new intermediate is missing".into()))?;
            let step = Step::ActivateIntermediate {
                intermediate: prepared.fingerprint,
            };
            said.extend(self.apply(&step, now).await?);
        }
        Ok(said)
    }

    /// Carries out one step (recorded in the ledger in the same transaction) and returns its
    /// events as sentences.
    async fn apply(&mut self, step: &Step, now: OffsetDateTime) -> Result<Vec<String>, Error> {
        let events = self.rotator.apply(step, now).await?;
        if let Step::PrepareRoot = step {
            let root = events
                .iter()
                .find(|e| e.cert.role == Role::Root)
                .map(|e| e.cert.fingerprint.clone());
            self.published = root.map(|fp| (fp, self.ca.generation()));
        }
        if let Step::ActivateRoot {
            without_every_ack: true,
            root,
            ..
        } = step
        {
            tracing::warn!(%root, waited = ?self.policy.root_activation_max_wait,
                "new root signs before every sidecar acknowledged a bundle containing it");
        }
        let mut said = Vec::with_capacity(events.len());
        for e in &events {
            tracing::info!(role = e.cert.role.as_str(), fingerprint = %e.cert.fingerprint, "{}", e.what);
            said.push(format!(
                "{} {}: {}",
                e.cert.role.as_str(),
                e.cert.fingerprint,
                e.what
            ));
        }
        Ok(said)
    }

    /// Whether the sidecars have acknowledged a bundle containing the prepared root.
    fn fleet_ack(&mut self, views: &[rotation::CaView]) -> FleetAck {
        let Some(root) = views
            .iter()
            .rfind(|v| v.role == Role::Root && v.state == State::Prepared)
        else {
            self.published = None;
            return FleetAck::Waiting;
        };
        // Prepared before this process started: the bundle it serves contains it from the
        // start, so the current generation will do.
        let since = match &self.published {
            Some((fp, generation)) if *fp == root.fingerprint => *generation,
            _ => {
                let generation = self.ca.generation();
                self.published = Some((root.fingerprint.clone(), generation));
                generation
            }
        };
        match *self.fleet.borrow() {
            Some(lowest) if lowest < since => FleetAck::Waiting,
            _ => FleetAck::HasPreparedRoot,
        }
    }
}

/// The ledger record of a CA event.
pub(super) fn ca_record(e: &CaEvent, now: OffsetDateTime) -> LedgerRecord {
    LedgerRecord {
        not_before: Some(e.cert.not_before.unix_timestamp()),
        not_after: Some(e.cert.not_after.unix_timestamp()),
        issuer_fingerprint: Some(e.cert.fingerprint.clone()),
        cert_der: Some(e.cert.der.clone()),
        reason: Some(e.what.clone()),
        ..LedgerRecord::bare(EntryKind::Ca, now)
    }
}
