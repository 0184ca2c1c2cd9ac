//! Envoy's Secret Discovery Service over one Unix socket per instance. Who is asking is the
//! socket it connected to, never what it says in `node.id`.

mod acks;
pub mod client;
mod delta;
mod metrics;
mod names;
mod secrets;
mod service;
mod sotw;
mod stream;
mod transport;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

pub use acks::{AckSlot, BundleAcks};
pub use metrics::SdsMetrics;
pub use names::{classify, Refused, SecretKind};
pub use secrets::SECRET_TYPE;

use crate::agent::Workload;

/// Creates the socket at `path` (and its directory, 0700). A stale socket file from an earlier
/// run is replaced; any other file there is an error.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create SDS socket directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ok();
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot create SDS socket {}", path.display()))
}

/// Serves SDS for `workload` on `listener` until `cancel`; open streams end with it.
pub async fn serve(
    listener: UnixListener,
    workload: Workload,
    metrics: Arc<SdsMetrics>,
    cancel: CancellationToken,
) {
    let instance = workload.placement.instance_guid.clone();
    let service = transport::SdsRoutes::new(service::Sds::new(workload, metrics, cancel.clone()));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(%instance, error = %e, "SDS server failed");
    }
}
