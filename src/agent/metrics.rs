//! The agent's renewal counters and its certificates by time left, as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the time-to-expiry buckets.
const EXPIRY_BUCKETS: [u64; 6] = [60, 300, 900, 3600, 86_400, 604_800];

/// Renewals and failed attempts since the agent started.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
}

impl AgentMetrics {
    /// A certificate replaced one that was still being served.
    pub fn renewed(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to obtain a certificate failed (first issuance or renewal).
    pub fn failed(&self) {
        self.renewal_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Renewals so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.renewal_failures.load(Ordering::Relaxed)
    }

    /// Appends the counters, and a histogram of `seconds_left` (one value per served
    /// certificate; negative for expired ones), to `out`.
    pub fn render(&self, seconds_left: &[i64], out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP idmint_agent_renewals_total Certificates replaced before they expired."
        );
        let _ = writeln!(out, "# TYPE idmint_agent_renewals_total counter");
        let _ = writeln!(out, "idmint_agent_renewals_total {}", self.renewals());
        let _ = writeln!(out, "# HELP idmint_agent_renewal_failures_total Attempts to obtain a certificate that failed and were retried.");
        let _ = writeln!(out, "# TYPE idmint_agent_renewal_failures_total counter");
        let _ = writeln!(
            out,
            "idmint_agent_renewal_failures_total {}",
            self.failures()
        );
        let _ = writeln!(
            out,
            "# HELP idmint_agent_certificate_seconds_to_expiry Served certificates by time left."
        );
        let _ = writeln!(
            out,
            "# TYPE idmint_agent_certificate_seconds_to_expiry histogram"
        );
        for le in EXPIRY_BUCKETS {
            let n = seconds_left.iter().filter(|s| **s <= le as i64).count();
            let _ = writeln!(
                out,
                "idmint_agent_certificate_seconds_to_expiry_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let n = seconds_left.len();
        let sum: i64 = seconds_left.iter().sum();
        let _ = writeln!(
            out,
            "idmint_agent_certificate_seconds_to_expiry_bucket{{le=\"+Inf\"}} {n}"
        );
        let _ = writeln!(out, "idmint_agent_certificate_seconds_to_expiry_sum {sum}");
        let _ = writeln!(out, "idmint_agent_certificate_seconds_to_expiry_count {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = AgentMetrics::default();
        m.renewed();
        m.failed();
        m.failed();
        let mut out = String::new();
        m.render(&[-5, 30, 200, 4000], &mut out);
        assert!(out.contains("idmint_agent_renewals_total 1\n"), "{out}");
        assert!(
            out.contains("idmint_agent_renewal_failures_total 2\n"),
            "{out}"
        );
        assert!(out.contains("_bucket{le=\"60\"} 2\n"), "{out}");
        assert!(out.contains("_bucket{le=\"300\"} 3\n"), "{out}");
        assert!(out.contains("_bucket{le=\"3600\"} 3\n"), "{out}");
        assert!(out.contains("_bucket{le=\"86400\"} 4\n"), "{out}");
        assert!(out.contains("_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("_count 4\n"), "{out}");
    }
}
