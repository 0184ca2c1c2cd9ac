//! SDS counters for the admin `/metrics` endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::acks::BundleAcks;
use super::names::SecretKind;
use super::slots::Limit;

/// One counter per secret kind label.
#[derive(Default)]
struct ByKind {
    tls_certificate: AtomicU64,
    validation_context: AtomicU64,
    c2c_validation_context: AtomicU64,
}

impl ByKind {
    fn total(&self) -> u64 {
        self.tls_certificate.load(Ordering::Relaxed)
            + self.validation_context.load(Ordering::Relaxed)
            + self.c2c_validation_context.load(Ordering::Relaxed)
    }

    fn get(&self, kind: SecretKind) -> &AtomicU64 {
        match kind {
            SecretKind::Certificate => &self.tls_certificate,
            SecretKind::C2cValidation => &self.c2c_validation_context,
            SecretKind::Roots | SecretKind::SpiffeValidator | SecretKind::ForeignRoots => {
                &self.validation_context
            }
        }
    }
}

/// What every SDS stream of this agent has done.
#[derive(Default)]
pub struct SdsMetrics {
    streams_open: AtomicI64,
    pushes: ByKind,
    acks: ByKind,
    nacks: ByKind,
    refused: AtomicU64,
    bundle_acks: Arc<BundleAcks>,
    /// Streams holding a slot, for `agent.max_streams`.
    streams_held: AtomicUsize,
    socket_streams_full: AtomicU64,
    agent_streams_full: AtomicU64,
    /// Requests refused for a message over `agent.max_message`.
    message_hits: Arc<AtomicU64>,
}

impl SdsMetrics {
    pub(super) fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
    pub(super) fn pushed(&self, kind: SecretKind) {
        self.pushes.get(kind).fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn acked(&self, kind: SecretKind) {
        self.acks.get(kind).fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn nacked(&self, kind: SecretKind) {
        self.nacks.get(kind).fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn streams_held(&self) -> &AtomicUsize {
        &self.streams_held
    }
    pub(super) fn stream_limit_hit(&self, limit: Limit) {
        match limit {
            Limit::Socket => &self.socket_streams_full,
            Limit::Agent => &self.agent_streams_full,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn message_hits(&self) -> Arc<AtomicU64> {
        self.message_hits.clone()
    }
    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Which trust bundle the open streams have acknowledged.
    pub fn bundle_acks(&self) -> &Arc<BundleAcks> {
        &self.bundle_acks
    }

    /// Open SDS streams now.
    pub fn streams_open(&self) -> i64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// Secrets pushed, of every kind, so far.
    pub fn pushes_total(&self) -> u64 {
        self.pushes.total()
    }

    /// ACKs of every kind so far.
    pub fn acks_total(&self) -> u64 {
        self.acks.total()
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP idmint_sds_bundle_seconds_since_fleet_acked Seconds since every open SDS stream last had the current trust bundle (0: they all have it).");
        let _ = writeln!(
            out,
            "# TYPE idmint_sds_bundle_seconds_since_fleet_acked gauge"
        );
        let _ = writeln!(
            out,
            "idmint_sds_bundle_seconds_since_fleet_acked {:.1}",
            self.bundle_acks.seconds_behind()
        );
        let _ = writeln!(out, "# HELP idmint_sds_streams_open SDS streams open now.");
        let _ = writeln!(out, "# TYPE idmint_sds_streams_open gauge");
        let _ = writeln!(out, "idmint_sds_streams_open {}", self.streams_open());
        for (name, help, by) in [
            (
                "idmint_sds_pushes_total",
                "Secrets sent to sidecars.",
                &self.pushes,
            ),
            (
                "idmint_sds_acks_total",
                "Secrets sidecars accepted.",
                &self.acks,
            ),
            (
                "idmint_sds_nacks_total",
                "Secrets sidecars rejected.",
                &self.nacks,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for kind in [
                SecretKind::Certificate,
                SecretKind::Roots,
                SecretKind::C2cValidation,
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{}\"}} {}",
                    kind.label(),
                    by.get(kind).load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP idmint_sds_refused_total Requests for a secret that is not the caller's."
        );
        let _ = writeln!(out, "# TYPE idmint_sds_refused_total counter");
        let _ = writeln!(
            out,
            "idmint_sds_refused_total {}",
            self.refused.load(Ordering::Relaxed)
        );
    }

    /// `idmint_limit_hits_total` samples for the SDS limits.
    pub fn render_limit_hits(&self, out: &mut String) {
        for (limit, n) in [
            ("sds_streams_per_socket", &self.socket_streams_full),
            ("sds_streams", &self.agent_streams_full),
            ("sds_message", &*self.message_hits),
        ] {
            let _ = writeln!(
                out,
                "idmint_limit_hits_total{{limit=\"{limit}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}
