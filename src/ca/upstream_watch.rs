//! Upstream mode: the operator's intermediate, key and root files are watched and a
//! replacement is taken up without a restart, with the overlap rules of self-signed rotation.
//! An intermediate under a root the sidecars already trust signs at once; one under a new root
//! waits until every connected sidecar has acknowledged a bundle containing that root (or the
//! maximum wait). Roots that left the files stay in the bundle until the last leaf under them
//! has expired. Replacement files that do not check out are refused and logged; the CA in use
//! keeps signing.

use std::sync::Arc;
use std::time::Duration;

use ring::digest;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::rotate::CaEvent;
use crate::ca::rotation::{activation_deadline, prune_time};
use crate::ca::{
    chains_to, upstream_signing, CaCert, CertificateAuthority, Signing, UpstreamFiles,
};
use crate::clock::Clock;
use crate::ledger::Ledger;

/// How often the files are read.
const POLL: Duration = Duration::from_secs(1);

/// The watcher's state.
pub struct UpstreamWatch {
    ca: Arc<CertificateAuthority>,
    files: UpstreamFiles,
    ledger: Ledger,
    fleet: watch::Receiver<Option<u64>>,
    leaf_ttl: Duration,
    max_wait: Duration,
    /// SHA-256 of the three files' contents when last read.
    seen: Option<Vec<u8>>,
    /// An intermediate under a new root, waiting for the sidecars.
    pending: Option<Pending>,
    /// Roots no longer in the files, and when they leave the bundle.
    leaving: Vec<(CaCert, OffsetDateTime)>,
}

struct Pending {
    next: Signing,
    published: u64,
    since: OffsetDateTime,
}

impl UpstreamWatch {
    /// A watcher over `files` for `ca` (loaded from them), holding new roots back for `fleet`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        files: UpstreamFiles,
        ledger: Ledger,
        fleet: watch::Receiver<Option<u64>>,
    ) -> UpstreamWatch {
        let settings = ca.settings();
        let (leaf_ttl, max_wait) = (
            settings.leaf_ttl.duration(),
            settings.root_activation_max_wait.duration(),
        );
        let seen = hash_files(&files).ok();
        UpstreamWatch {
            ca,
            files,
            ledger,
            fleet,
            leaf_ttl,
            max_wait,
            seen,
            pending: None,
            leaving: Vec::new(),
        }
    }

    /// Runs until `cancel`, reading the time from `clock`.
    pub async fn run(mut self, clock: Clock, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.step(clock.now()).await;
        }
    }

    /// One look at the files and the schedule at `now`: what happened is logged, recorded in
    /// the ledger, and returned.
    pub async fn step(&mut self, now: OffsetDateTime) -> Vec<CaEvent> {
        let events = self.changes(now);
        for event in &events {
            tracing::info!(role = event.cert.role.as_str(), fingerprint = %event.cert.fingerprint, "{}", event.what);
            let record = super::maintenance::ca_record(event, now);
            if let Err(e) = self.ledger.append(record).await {
                tracing::error!(error = %e, "could not record a CA event");
            }
        }
        events
    }

    fn changes(&mut self, now: OffsetDateTime) -> Vec<CaEvent> {
        let mut events = Vec::new();
        self.prune(now, &mut events);
        self.activate(now, &mut events);
        let Ok(hash) = hash_files(&self.files).map_err(|e| {
            if self.seen.is_some() {
                tracing::error!(error = %e, "cannot read the upstream CA files; the CA in use keeps signing");
            }
            self.seen = None;
        }) else {
            return events;
        };
        if self.seen.as_ref() == Some(&hash) {
            return events;
        }
        self.seen = Some(hash);
        match upstream_signing(&self.files, now) {
            Ok(next) => self.take_up(next, now, &mut events),
            // Files are often replaced one by one; the next change is read again.
            Err(e) => tracing::error!(error = %e,
                "replacement upstream CA files refused; the CA in use keeps signing"),
        }
        events
    }

    fn take_up(&mut self, next: Signing, now: OffsetDateTime, events: &mut Vec<CaEvent>) {
        let current = self.ca.signing();
        if next.chain[0].fingerprint == current.chain[0].fingerprint
            && same(&next.roots, &current.roots)
        {
            return;
        }
        let published = union(&current.roots, &next.roots);
        for root in next.roots.iter().filter(|r| !contains(&current.roots, r)) {
            events.push(event(root, "upstream root added to the trust bundle"));
        }
        self.pending = None;
        if chains_to(&next.chain, &current.roots) {
            // The sidecars already trust what it chains to: it signs at once.
            self.switch(next, published, now, events);
        } else {
            events.push(event(
                &next.chain[0],
                "upstream intermediate under a new root: signs once every sidecar has the root",
            ));
            self.ca.replace(Signing {
                roots: published,
                chain: current.chain.clone(),
                key: current.key.clone(),
            });
            self.pending = Some(Pending {
                next,
                published: self.ca.generation(),
                since: now,
            });
        }
    }

    fn activate(&mut self, now: OffsetDateTime, events: &mut Vec<CaEvent>) {
        let Some(p) = &self.pending else { return };
        let acked = match *self.fleet.borrow() {
            Some(lowest) => lowest >= p.published,
            None => true,
        };
        let timed_out = now >= activation_deadline(p.since, self.max_wait);
        if !(acked || timed_out) {
            return;
        }
        if !acked {
            tracing::warn!(waited = ?self.max_wait,
                "upstream intermediate under a new root signs before every sidecar acknowledged the root");
        }
        let p = self.pending.take().expect("checked above");
        let published = self.ca.signing().roots.clone();
        self.switch(p.next, published, now, events);
    }

    /// Signs with `next` from now on, publishing `roots`; roots no longer in the files leave
    /// the bundle when the last leaf under them has expired.
    fn switch(
        &mut self,
        next: Signing,
        roots: Vec<CaCert>,
        now: OffsetDateTime,
        events: &mut Vec<CaEvent>,
    ) {
        let prune_at = prune_time(now, self.leaf_ttl, self.ca.settings().clock_skew.duration());
        for old in roots.iter().filter(|r| !contains(&next.roots, r)) {
            if !self
                .leaving
                .iter()
                .any(|(r, _)| r.fingerprint == old.fingerprint)
            {
                events.push(event(old, "upstream root left the files: stays in the trust bundle until its last leaf expires"));
                self.leaving.push((old.clone(), prune_at));
            }
        }
        events.push(event(
            &next.chain[0],
            "upstream intermediate activated: new leaves are signed by it",
        ));
        self.ca.replace(Signing {
            roots,
            chain: next.chain,
            key: next.key,
        });
    }

    fn prune(&mut self, now: OffsetDateTime, events: &mut Vec<CaEvent>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaving)
            .into_iter()
            .partition(|(_, at)| now >= *at);
        self.leaving = later;
        if due.is_empty() {
            return;
        }
        let current = self.ca.signing();
        let roots = current
            .roots
            .iter()
            .filter(|r| !due.iter().any(|(d, _)| d.fingerprint == r.fingerprint))
            .cloned()
            .collect();
        for (root, _) in &due {
            events.push(event(
                root,
                "root pruned from the trust bundle: every leaf under it has expired",
            ));
        }
        self.ca.replace(Signing {
            roots,
            chain: current.chain.clone(),
            key: current.key.clone(),
        });
    }
}

fn hash_files(files: &UpstreamFiles) -> std::io::Result<Vec<u8>> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for path in [
        &files.intermediate_cert,
        &files.intermediate_key,
        &files.root_bundle,
    ] {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path)?);
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    Ok(ctx.finish().as_ref().to_vec())
}

fn contains(roots: &[CaCert], r: &CaCert) -> bool {
    roots.iter().any(|x| x.fingerprint == r.fingerprint)
}

fn same(a: &[CaCert], b: &[CaCert]) -> bool {
    a.len() == b.len() && a.iter().all(|r| contains(b, r))
}

fn union(a: &[CaCert], b: &[CaCert]) -> Vec<CaCert> {
    let mut all = a.to_vec();
    all.extend(b.iter().filter(|r| !contains(a, r)).cloned());
    all
}

fn event(cert: &CaCert, what: &str) -> CaEvent {
    CaEvent {
        what: what.to_string(),
        cert: cert.clone(),
    }
}
