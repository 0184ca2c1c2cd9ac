//! What every SDS stream of one instance shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::metrics::SdsMetrics;
use super::names::{classify, SecretKind};
use super::secrets::{Built, Sources};
use crate::agent::Workload;
use crate::ca::sha256_hex;

/// A stream's view of its instance.
pub struct Ctx {
    pub workload: Workload,
    pub sources: Sources,
    pub metrics: Arc<SdsMetrics>,
    pub cancel: CancellationToken,
    pub td_id: String,
}

/// What a stream does next.
pub enum Outcome {
    /// Nothing to send.
    Quiet,
    /// Send what changed (`force`: even if unchanged, because a name is new).
    Push { force: bool },
    /// End the stream, with this error if any.
    End(Option<Status>),
}

impl Ctx {
    /// The instance GUID, for logs.
    pub fn instance(&self) -> &str {
        self.workload.placement.instance_guid.as_str()
    }

    /// The kind of `name`, or `PERMISSION_DENIED` (logged and counted) when it is not ours.
    pub fn classify(&self, name: &str) -> Result<SecretKind, Status> {
        classify(name, &self.workload.spiffe_id, &self.td_id).map_err(|refused| {
            self.metrics.refused();
            tracing::warn!(instance = %self.instance(), spiffe_id = %self.workload.spiffe_id,
                asked_for = %refused.name, "refused a secret that is not this instance's");
            Status::permission_denied(refused.to_string())
        })
    }
}

/// One version for several secrets: changes when any of them does.
pub fn combined_version<'a>(parts: impl Iterator<Item = (&'a str, &'a Built)>) -> String {
    let mut all = String::new();
    for (name, built) in parts {
        all.push_str(name);
        all.push('=');
        all.push_str(&built.version);
        all.push('\n');
    }
    sha256_hex(all.as_bytes())[..16].to_string()
}
