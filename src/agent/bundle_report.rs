//! Tells the server which trust bundles this cell's sidecars hold: after every change of their
//! acknowledgements (gathered for a moment) and every `agent.ack_report_every` (30 s by
//! default, well inside the servers' `server.agent_ack_grace` of 2 minutes), so that the
//! servers know the agent is still there. A report that fails is sent again soon.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::remote::RemoteAuthority;
use crate::ca::pem_fingerprints;
use crate::proto as pb;
use crate::sds::{Bundle, BundleAcks};

/// How long changes are gathered into one report.
const GATHER: Duration = Duration::from_millis(200);
/// The wait before a failed report is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Reports until `stop`, and every `heartbeat` when nothing changed.
pub async fn report_bundle_acks(
    remote: RemoteAuthority,
    acks: Arc<BundleAcks>,
    mut bundles: watch::Receiver<Arc<Bundle>>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let mut changes = acks.changes();
    let mut heartbeat = tokio::time::interval(heartbeat);
    // The roots of each generation of the bundle the sidecars were given.
    let mut roots_of: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut sent: Option<pb::BundleAckReport> = None;
    let mut failing = false;
    loop {
        let due = {
            let bundle = bundles.borrow_and_update().clone();
            roots_of
                .entry(bundle.generation)
                .or_insert_with(|| pem_fingerprints(&bundle.roots_pem).into_iter().collect());
            let held = acks.held();
            // Generations no sidecar holds any more are forgotten, the current one kept.
            let oldest = held.first().map_or(bundle.generation, |(g, _)| *g);
            roots_of.retain(|g, _| *g >= oldest || *g == bundle.generation);
            report(&held, &roots_of)
        };
        let wait = if sent.as_ref() != Some(&due) {
            match remote.client().report_bundle_acks(due.clone()).await {
                Ok(_) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(
                            "the server takes this cell's bundle acknowledgements again"
                        );
                    }
                    sent = Some(due);
                    None
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot report the sidecars' bundle acknowledgements; will retry");
                    }
                    Some(RETRY)
                }
            }
        } else {
            None
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => tokio::time::sleep(GATHER).await,
            _ = bundles.changed() => {}
            _ = heartbeat.tick() => sent = None,
            _ = tokio::time::sleep(wait.unwrap_or(RETRY)), if wait.is_some() => {}
        }
    }
}

/// The report of `held` (generation, sidecars): one entry per distinct set of roots.
fn report(held: &[(u64, usize)], roots_of: &BTreeMap<u64, Vec<String>>) -> pb::BundleAckReport {
    let mut by_roots: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for (generation, sidecars) in held {
        // Generation 0: acknowledged nothing yet, so no roots.
        let roots = roots_of.get(generation).cloned().unwrap_or_default();
        *by_roots.entry(roots).or_default() += *sidecars as u64;
    }
    pb::BundleAckReport {
        held: by_roots
            .into_iter()
            .map(|(root_sha256, sidecars)| pb::HeldBundle {
                root_sha256,
                sidecars,
            })
            .collect(),
    }
}
