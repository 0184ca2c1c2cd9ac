//! Takes up the changes that other servers sharing the database make to the placements, the
//! policies, the CA and the revocations (which CA maintenance and the CRLs reload when woken):
//! woken by PostgreSQL's announcements, and reading the change feed by number after every
//! wake, every reconnect and every few seconds, so that a lost announcement or a broken
//! connection delays a change but never loses it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use super::{Policies, Registry};
use crate::clock::{unix_ms, Clock};
use crate::ids::Guid;
use crate::store::{ChangeListener, Heard, Store, Topic};

/// How many changes are read at a time.
const BATCH: i64 = 1000;
/// The feed is read this often even without an announcement.
const SWEEP: Duration = Duration::from_secs(5);
/// How long changes are kept; a server further behind reloads everything.
const KEEP: Duration = Duration::from_secs(3600);
/// How often old changes are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// The wait before listening again after the connection could not be made.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the change feed for one server.
pub struct ChangeFollower {
    store: Store,
    registry: Registry,
    policies: Policies,
    /// Woken when another server changed the CA, for CA maintenance to take it up.
    ca_changed: Arc<Notify>,
    /// Woken when another server revoked something, for the CRLs to be signed again.
    revocations_changed: Arc<Notify>,
    clock: Clock,
    /// The last change taken up.
    last: i64,
    /// Whether the last attempt failed, so a lasting outage is logged once.
    failing: bool,
}

impl ChangeFollower {
    /// A follower for a server that loaded its state after change `last`.
    pub fn new(
        store: Store,
        registry: Registry,
        policies: Policies,
        ca_changed: Arc<Notify>,
        revocations_changed: Arc<Notify>,
        clock: Clock,
        last: i64,
    ) -> ChangeFollower {
        ChangeFollower {
            store,
            registry,
            policies,
            ca_changed,
            revocations_changed,
            clock,
            last,
            failing: false,
        }
    }

    /// Follows until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut listener: Option<ChangeListener> = None;
        let mut sweep = tokio::time::interval(SWEEP);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            if listener.is_none() {
                match self.store.listen_for_changes().await {
                    Ok(l) => listener = Some(l),
                    Err(e) => self.failed("cannot listen for other servers' changes", &e),
                }
            }
            // Read after listening starts, so a change committed in between is not missed.
            self.catch_up().await;
            let heard = async {
                match &mut listener {
                    Some(l) => l.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                heard = heard => match heard {
                    Ok(Heard::Change) => {}
                    Ok(Heard::Reconnecting) => {
                        tracing::info!("the connection listening for changes broke; reading them once it is back");
                    }
                    Err(e) => {
                        self.failed("lost the connection listening for changes", &e);
                        listener = None;
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY) => {}
                        }
                    }
                },
                _ = sweep.tick() => {}
                _ = prune.tick() => self.prune().await,
            }
        }
    }

    /// Takes up every change after the last one taken up.
    async fn catch_up(&mut self) {
        match self.take_up_changes().await {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(last = self.last, "following other servers' changes again");
                }
            }
            Err(e) => self.failed("cannot take up other servers' changes; will retry", &e),
        }
    }

    async fn take_up_changes(&mut self) -> anyhow::Result<()> {
        loop {
            let changes = self.store.changes_after(self.last, BATCH).await?;
            let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
                return Ok(());
            };
            if first.seq != self.last + 1 {
                // Pruned past: the feed no longer says what changed, so take up everything.
                tracing::warn!(
                    behind_from = self.last,
                    oldest_kept = first.seq,
                    "fell behind the change feed; reloading placements and policies"
                );
                let upto = self.store.last_change().await?;
                self.registry.reload().await?;
                self.policies.take_up().await?;
                self.ca_changed.notify_one();
                self.revocations_changed.notify_one();
                self.last = upto;
                continue;
            }
            let mut instances = BTreeSet::new();
            let (mut policies, mut ca, mut revocations) = (false, false, false);
            for c in &changes {
                match c.topic {
                    Topic::Placement => match c.subject.parse::<Guid>() {
                        Ok(g) => {
                            instances.insert(g);
                        }
                        Err(_) => {
                            tracing::warn!(seq = c.seq, subject = %c.subject, "a placement change names no instance; skipped");
                        }
                    },
                    Topic::Policy => policies = true,
                    Topic::Ca => ca = true,
                    Topic::Revocation => revocations = true,
                }
            }
            let instances: Vec<Guid> = instances.into_iter().collect();
            self.registry.take_up(&instances).await?;
            if policies {
                self.policies.take_up().await?;
            }
            if ca {
                self.ca_changed.notify_one();
            }
            if revocations {
                self.revocations_changed.notify_one();
            }
            self.last = last.seq;
            if (changes.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }

    async fn prune(&mut self) {
        let before = self.clock.now() - KEEP;
        let before_ms = unix_ms(before);
        match self.store.prune_changes(before_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "pruned old changes"),
            Err(e) => tracing::debug!(error = %e, "could not prune old changes; will retry"),
        }
    }

    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(error = %e, "{what}");
        }
    }
}
