//! Which trust bundles the sidecars of every cell hold, as the cells' agents report them to
//! whichever server they use, kept in the store that all servers share. The CA maintenance
//! of `idmint server` reads from it the lowest bundle generation of its own that every
//! reported sidecar holds, as `idmint dev` reads it from its own sidecars: a new root signs
//! once every sidecar trusts it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::{pem_fingerprints, CertificateAuthority};
use crate::clock::{unix_ms, Clock};
use crate::ids::CellId;
use crate::store::{HeldBundle, Store};

/// The most bundles one report may name: an agent's sidecars hold one or two at a time.
pub const MAX_BUNDLES: usize = 64;
/// The most roots one bundle may name.
pub const MAX_ROOTS: usize = 64;
/// How often the reports are read.
const READ_EVERY: Duration = Duration::from_secs(1);
/// How many of its own bundle generations a server remembers the roots of.
const HISTORY: usize = 64;

/// Why a report was refused; nothing of it was kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The report is not one an agent sends.
    #[error("{0}")]
    Invalid(String),
    /// The store could not keep it.
    #[error("cannot keep the report: {0}")]
    Store(#[from] crate::store::Error),
}

/// The bundles a report names, each as a set of root fingerprints with its sidecars; or why
/// it is not a report an agent sends.
pub(crate) fn check_report(
    held: Vec<(Vec<String>, u64)>,
) -> Result<Vec<(BTreeSet<String>, u64)>, ReportError> {
    if held.len() > MAX_BUNDLES {
        return Err(ReportError::Invalid(format!(
            "a report names at most {MAX_BUNDLES} bundles, not {}",
            held.len()
        )));
    }
    let mut checked = Vec::with_capacity(held.len());
    for (roots, sidecars) in held {
        if roots.len() > MAX_ROOTS {
            return Err(ReportError::Invalid(format!(
                "a bundle has at most {MAX_ROOTS} roots, not {}",
                roots.len()
            )));
        }
        if let Some(bad) = roots.iter().find(|r| !is_fingerprint(r)) {
            return Err(ReportError::Invalid(format!(
                "root {bad:?} is not a SHA-256 fingerprint (64 lowercase hex digits)"
            )));
        }
        checked.push((roots.into_iter().collect::<BTreeSet<_>>(), sidecars));
    }
    Ok(checked)
}

/// Takes in the agents' reports. Cheap to clone.
#[derive(Clone)]
pub struct FleetReports {
    store: Store,
    clock: Clock,
}

impl FleetReports {
    /// Reports kept in `store`.
    pub fn new(store: Store, clock: Clock) -> FleetReports {
        FleetReports { store, clock }
    }

    /// Keeps what `cell`'s sidecars hold now (roots' SHA-256 fingerprints in hex, and how
    /// many sidecars hold each bundle), replacing its last report.
    pub async fn record(
        &self,
        cell: &CellId,
        held: Vec<(Vec<String>, u64)>,
    ) -> Result<(), ReportError> {
        let checked = check_report(held)?;
        let now_ms = unix_ms(self.clock.now());
        self.store
            .replace_held_bundles(cell.as_str(), &checked, now_ms)
            .await?;
        Ok(())
    }

    /// The lowest generation of `ca`'s bundle that every sidecar reported within `grace`
    /// holds (`None`: no sidecar reported), and the task that keeps it current until `stop`.
    pub fn follow(
        self,
        ca: Arc<CertificateAuthority>,
        grace: Duration,
        stop: CancellationToken,
    ) -> (
        watch::Receiver<Option<u64>>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = watch::channel(Some(0));
        let mut lowest = Lowest::default();
        let task = async move {
            let mut every = tokio::time::interval(READ_EVERY);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                lowest.remember(&ca);
                let held = match self.store.held_bundles().await {
                    Ok(held) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("reading the sidecars' acknowledgements again");
                        }
                        held
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "cannot read the sidecars' acknowledgements; new roots wait");
                        }
                        continue;
                    }
                };
                let now_ms = unix_ms(self.clock.now());
                let cutoff = now_ms - grace.as_millis() as i64;
                let value = lowest.of(&held, cutoff);
                tx.send_if_modified(|v| std::mem::replace(v, value) != value);
            }
        };
        (rx, task)
    }
}

/// A server's own bundle generations with their roots, and the cells it stopped counting.
#[derive(Default)]
struct Lowest {
    history: BTreeMap<u64, BTreeSet<String>>,
    silent: BTreeSet<String>,
}

impl Lowest {
    /// Notes the roots of `ca`'s bundle at its current generation.
    fn remember(&mut self, ca: &CertificateAuthority) {
        let published = ca.published();
        if self.history.contains_key(&published.generation) {
            return;
        }
        self.history
            .insert(published.generation, pem_fingerprints(&published.roots_pem));
        while self.history.len() > HISTORY {
            self.history.pop_first();
        }
    }

    /// The lowest generation held by the sidecars reported at or after `cutoff`: for each
    /// reported bundle, the latest generation whose roots it all has (0 if none).
    fn of(&mut self, held: &[HeldBundle], cutoff: i64) -> Option<u64> {
        let mut lowest: Option<u64> = None;
        let mut silent = BTreeSet::new();
        for h in held {
            if h.reported_at_ms < cutoff {
                silent.insert(h.cell.clone());
                continue;
            }
            let generation = self
                .history
                .iter()
                .rev()
                .find(|(_, roots)| roots.is_subset(&h.roots))
                .map_or(0, |(g, _)| *g);
            lowest = Some(lowest.map_or(generation, |l| l.min(generation)));
        }
        for cell in silent.difference(&self.silent) {
            tracing::warn!(%cell, "the agent of this cell stopped reporting its sidecars' trust bundles; they no longer hold back a new root");
        }
        self.silent = silent;
        lowest
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(cell: &str, roots: &[&str], at: i64) -> HeldBundle {
        HeldBundle {
            cell: cell.into(),
            roots: roots.iter().map(|r| r.to_string()).collect(),
            sidecars: 1,
            reported_at_ms: at,
        }
    }

    #[test]
    fn the_lowest_is_the_latest_generation_every_live_report_holds_whole() {
        let mut l = Lowest::default();
        l.history.insert(1, ["a".to_string()].into());
        l.history
            .insert(2, ["a".to_string(), "b".to_string()].into());
        l.history
            .insert(3, ["a".to_string(), "b".to_string()].into());
        // One cell has the new root b, one has only a, one acknowledged nothing yet.
        assert_eq!(l.of(&[held("c1", &["a", "b"], 10)], 0), Some(3));
        assert_eq!(
            l.of(&[held("c1", &["a", "b"], 10), held("c2", &["a"], 10)], 0),
            Some(1)
        );
        assert_eq!(l.of(&[held("c1", &[], 10)], 0), Some(0));
        // A report older than the cutoff does not count; nothing live is None.
        assert_eq!(
            l.of(&[held("c1", &["a", "b"], 10), held("c2", &["a"], 5)], 8),
            Some(3)
        );
        assert!(l.silent.contains("c2"));
        assert_eq!(l.of(&[held("c2", &["a"], 5)], 8), None);
    }

    #[test]
    fn a_fingerprint_is_64_lowercase_hex_digits() {
        assert!(is_fingerprint(&"0a".repeat(32)));
        assert!(!is_fingerprint(&"0A".repeat(32)));
        assert!(!is_fingerprint("abc"));
    }
}
