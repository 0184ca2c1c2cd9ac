//! A gRPC client for an instance's SDS socket: what the SDS benchmark's simulated sidecars use.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tonic::transport::{Channel, Endpoint};

/// A client of one SDS socket.
pub type SdsClient = SecretDiscoveryServiceClient<Channel>;

/// Connects to the SDS socket at `path`.
pub async fn connect(path: &Path) -> Result<SdsClient, tonic::transport::Error> {
    Ok(SecretDiscoveryServiceClient::new(channel(path).await?))
}

/// A gRPC channel to the Unix socket at `path`.
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API and unused: the connector below decides where to go.
    Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
