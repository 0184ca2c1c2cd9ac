//! The gRPC routes of the secret discovery service, served with small codec buffers.
//!
//! An agent holds two streams for every instance it serves, so per-stream memory decides how
//! many instances fit. The generated server starts every stream with 8 KiB encode and decode
//! buffers; secrets are a few KiB and requests a few hundred bytes, so these routes start at
//! 1 KiB and let a buffer grow only when a message needs it.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::service::Sds;
use super::stream::ResponseStream;

/// Initial buffer per direction per stream; grows on demand.
const BUFFER: usize = 1024;
/// Flush threshold for a response stream (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Protobuf encoding with [`BUFFER`]-sized starting buffers.
struct SmallBuffers<E, D>(PhantomData<(E, D)>);

impl<E, D> Codec for SmallBuffers<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}

fn codec<E, D>() -> SmallBuffers<E, D> {
    SmallBuffers(PhantomData)
}

/// The service as tonic's router takes it.
#[derive(Clone)]
pub struct SdsRoutes(Arc<Sds>);

impl SdsRoutes {
    pub fn new(sds: Sds) -> Self {
        SdsRoutes(Arc::new(sds))
    }
}

impl NamedService for SdsRoutes {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

struct StreamSecrets(Arc<Sds>);
struct DeltaSecrets(Arc<Sds>);
struct FetchSecrets(Arc<Sds>);

impl StreamingService<DiscoveryRequest> for StreamSecrets {
    type Response = DiscoveryResponse;
    type ResponseStream = ResponseStream<DiscoveryResponse>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        std::future::ready(Ok(self.0.stream_secrets(request)))
    }
}

impl StreamingService<DeltaDiscoveryRequest> for DeltaSecrets {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = ResponseStream<DeltaDiscoveryResponse>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        std::future::ready(Ok(self.0.delta_secrets(request)))
    }
}

impl UnaryService<DiscoveryRequest> for FetchSecrets {
    type Response = DiscoveryResponse;
    type Future = BoxFuture<Result<Response<DiscoveryResponse>, Status>>;

    fn call(&mut self, request: Request<DiscoveryRequest>) -> Self::Future {
        let sds = self.0.clone();
        Box::pin(async move { sds.fetch_secrets(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for SdsRoutes
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let sds = self.0.clone();
        let path = req.uri().path();
        let method = path
            .strip_prefix("/envoy.service.secret.v3.SecretDiscoveryService/")
            .unwrap_or(path)
            .to_string();
        Box::pin(async move {
            Ok(match method.as_str() {
                "StreamSecrets" => Grpc::new(codec()).streaming(StreamSecrets(sds), req).await,
                "DeltaSecrets" => Grpc::new(codec()).streaming(DeltaSecrets(sds), req).await,
                "FetchSecrets" => Grpc::new(codec()).unary(FetchSecrets(sds), req).await,
                _ => Status::unimplemented(format!("no method {method} here")).into_http(),
            })
        })
    }
}
