//! Envoy's Secret Discovery Service over one Unix socket per instance, with the SPIFFE Workload
//! API beside it on the same socket. Who is asking is the socket it connected to, never what it
//! says in `node.id`.

mod acks;
mod authority;
pub mod client;
mod delta;
mod metrics;
mod names;
mod secrets;
pub(crate) mod service;
pub(crate) mod slots;
mod sotw;
mod stream;
mod transport;
mod workload;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

pub use acks::{AckSlot, BundleAcks};
pub use metrics::SdsMetrics;
pub use names::{classify, Refused, SecretKind};
pub use secrets::SECRET_TYPE;
pub use slots::SdsLimits;
pub use workload::{Bundle, ForeignBundle, Identity, JwtIssuer, Workload};

/// Creates the socket at `path` with permission bits `mode` (and its directory, 0700, so no
/// other user of this host reaches it). A stale socket file from an earlier run is replaced;
/// any other file there is an error.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |io| BindError::Io { path, io }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ok();
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_at(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_at(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_at(path))?;
    Ok(listener)
}

/// Why an instance's SDS socket could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Its directory, an old socket in its place, or the socket itself.
    #[error("cannot create SDS socket {}: {io}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        io: std::io::Error,
    },
    /// Something other than a socket is where the socket goes.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
}

/// Serves SDS for `workload` on `listener` until `cancel`; open streams end with it.
pub async fn serve(
    listener: UnixListener,
    workload: Workload,
    metrics: Arc<SdsMetrics>,
    limits: SdsLimits,
    cancel: CancellationToken,
) {
    let instance = workload.placement.instance_guid.clone();
    let slots = slots::Slots::new(limits, metrics.clone());
    let messages = crate::message_limit::MessageLimit::new(
        limits.max_message,
        "agent.max_message",
        metrics.message_hits(),
    );
    let workload_api = crate::workload_api::WorkloadApi::new(workload.clone(), cancel.clone());
    let workload_api = crate::workload_api::SpiffeWorkloadApiServer::new(workload_api)
        .max_decoding_message_size(limits.max_message);
    let sds = service::Sds::new(workload, metrics, slots, cancel.clone());
    let service = messages.service(transport::SdsRoutes::new(sds, limits.max_message));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(authority::AuthorityFix::new));
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .add_service(messages.service(workload_api))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(%instance, error = %e, "SDS server failed");
    }
}
