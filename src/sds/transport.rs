//! The gRPC routes of the secret discovery service, served with small codec buffers.
//!
//! An agent holds two streams for every instance it serves, so per-stream memory decides how
//! many instances fit. The generated server starts every stream with 8 KiB encode and decode
//! buffers and keeps an encode buffer as large as the largest response it ever sent. Here a
//! request decoder starts at 1 KiB and grows only when a message needs it, and each response
//! of a stream is encoded into an allocation of its own exact size, freed once it is written:
//! a stream that is only waiting holds no response buffer at all.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures_util::StreamExt;
use http_body::Frame;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService, UnaryService};
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

/// The service as tonic's router takes it. `max_message` is checked as the body arrives
/// ([`crate::message_limit`]); the decoders hold to it as well.
#[derive(Clone)]
pub struct SdsRoutes {
    sds: Arc<Sds>,
    max_message: usize,
}

impl SdsRoutes {
    pub fn new(sds: Sds, max_message: usize) -> Self {
        SdsRoutes {
            sds: Arc::new(sds),
            max_message,
        }
    }
}

impl NamedService for SdsRoutes {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

struct FetchSecrets(Arc<Sds>);

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
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (sds, max) = (self.sds.clone(), self.max_message);
        let path = req.uri().path();
        let method = path
            .strip_prefix("/envoy.service.secret.v3.SecretDiscoveryService/")
            .unwrap_or(path)
            .to_string();
        Box::pin(async move {
            Ok(match method.as_str() {
                "StreamSecrets" => streaming(req, max, |r| sds.stream_secrets(r)),
                "DeltaSecrets" => streaming(req, max, |r| sds.delta_secrets(r)),
                "FetchSecrets" => {
                    let mut grpc = Grpc::new(codec()).max_decoding_message_size(max);
                    grpc.unary(FetchSecrets(sds), req).await
                }
                _ => Status::unimplemented(format!("no method {method} here")).into_http(),
            })
        })
    }
}

/// A bidirectional streaming method: requests decoded as they arrive, responses framed one
/// allocation each. Compressed requests are not accepted (no SDS client sends them).
fn streaming<B, Req, Resp>(
    req: http::Request<B>,
    max_message: usize,
    method: impl FnOnce(Request<Streaming<Req>>) -> Result<Response<ResponseStream<Resp>>, Status>,
) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    let (parts, body) = req.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding") {
        if encoding != "identity" {
            return Status::unimplemented(format!(
                "request compression {encoding:?} is not supported; send uncompressed messages"
            ))
            .into_http();
        }
    }
    let decoder = ProstDecoder::<Req>::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD));
    let no_compression: Option<CompressionEncoding> = None;
    let inbound = Streaming::new_request(decoder, body, no_compression, Some(max_message));
    let responses = match method(Request::from_http(http::Request::from_parts(
        parts, inbound,
    ))) {
        Ok(responses) => responses,
        Err(status) => return status.into_http(),
    };
    let (metadata, responses, _) = responses.into_parts();
    let mut http = http::Response::new(Body::new(Framed {
        responses,
        ended: false,
    }));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    http
}

/// A response body of length-prefixed gRPC messages, then the status as trailers.
struct Framed<M> {
    responses: ResponseStream<M>,
    ended: bool,
}

impl<M: prost::Message> http_body::Body for Framed<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.responses.poll_next_unpin(cx)) {
            Some(Ok(message)) => Frame::data(length_prefixed(&message)),
            Some(Err(status)) => {
                self.ended = true;
                Frame::trailers(status_trailers(&status))
            }
            None => {
                self.ended = true;
                Frame::trailers(status_trailers(&Status::ok("")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// One gRPC message: the uncompressed flag, the length, the protobuf bytes.
fn length_prefixed(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    Bytes::from(buf)
}

fn status_trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that cannot be a header value gets here; the code still goes out.
        trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    trailers
}
