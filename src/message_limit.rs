//! The largest gRPC request message a server reads, enforced as the request body arrives.
//!
//! tonic refuses an oversized message itself, but before any of our code sees it, so the
//! refusal could not be counted nor name the setting. [`MessageLimit::service`] wraps a gRPC
//! service so that its request bodies are read through [`LimitedBody`]: it follows the
//! length prefix of every message, and at the first one longer than the limit counts the hit
//! and ends the body with `OUT_OF_RANGE`, which tonic hands on as the call's status. The
//! message itself is never buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::server::NamedService;
use tonic::Status;

/// A gRPC message's prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The largest request message, the setting it comes from, and how often it was hit.
#[derive(Clone, Debug)]
pub struct MessageLimit {
    max: usize,
    setting: &'static str,
    hits: Arc<AtomicU64>,
}

impl MessageLimit {
    /// At most `max` bytes a message, as `setting` says; hits are added to `hits`.
    pub fn new(max: usize, setting: &'static str, hits: Arc<AtomicU64>) -> MessageLimit {
        MessageLimit { max, setting, hits }
    }

    /// The largest message, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests refused for a message over the limit.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// `service`, reading its request bodies under this limit.
    pub fn service<S>(&self, service: S) -> Limited<S> {
        Limited {
            inner: service,
            limit: self.clone(),
        }
    }

    /// `body`, ended with `OUT_OF_RANGE` at the first message over the limit.
    pub fn body<B>(&self, body: B) -> LimitedBody<B> {
        LimitedBody {
            inner: body,
            limit: self.clone(),
            scan: Scan::default(),
            refusal: Refusal::None,
        }
    }

    fn refuse(&self, len: usize) -> Status {
        self.hits.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            len,
            max = self.max,
            setting = self.setting,
            "request message too large"
        );
        Status::out_of_range(format!(
            "a message of {len} bytes is larger than {} bytes, the most this server reads ({})",
            self.max, self.setting
        ))
    }
}

/// A gRPC service whose request bodies are read under a [`MessageLimit`].
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limit: MessageLimit,
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<LimitedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let body = self.limit.body(body);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// Where the scan of a body stands: inside a prefix (`prefix_seen` bytes of it so far) or
/// inside a message (`body_left` bytes of it still to come).
#[derive(Default)]
struct Scan {
    prefix: [u8; PREFIX],
    prefix_seen: usize,
    body_left: usize,
}

/// A message over the limit: its length, and where its prefix starts in the chunk that
/// completed it (0 when it started in an earlier chunk).
struct Oversized {
    len: usize,
    at: usize,
}

impl Scan {
    /// Follows `chunk` up to the first message over `max` that it announces.
    fn follow(&mut self, chunk: &[u8], max: usize) -> Option<Oversized> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.body_left > 0 {
                let n = self.body_left.min(chunk.len() - pos);
                self.body_left -= n;
                pos += n;
                continue;
            }
            let starts_at = pos.saturating_sub(self.prefix_seen);
            let n = (PREFIX - self.prefix_seen).min(chunk.len() - pos);
            self.prefix[self.prefix_seen..self.prefix_seen + n]
                .copy_from_slice(&chunk[pos..pos + n]);
            self.prefix_seen += n;
            pos += n;
            if self.prefix_seen == PREFIX {
                self.prefix_seen = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > max {
                    return Some(Oversized { len, at: starts_at });
                }
                self.body_left = len;
            }
        }
        None
    }
}

/// Whether a body has met a message over its limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    None,
    /// The bytes before the message were passed on; the refusal of a message this long is next.
    Due(usize),
    Done,
}

/// A request body that ends with `OUT_OF_RANGE` at the first message over its limit.
pub struct LimitedBody<B> {
    inner: B,
    limit: MessageLimit,
    scan: Scan,
    refusal: Refusal,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.refusal {
            Refusal::None => {}
            Refusal::Due(len) => {
                this.refusal = Refusal::Done;
                return Poll::Ready(Some(Err(Box::new(this.limit.refuse(len)))));
            }
            Refusal::Done => return Poll::Ready(None),
        }
        let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Some(oversized) = this.scan.follow(data, this.limit.max) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // The messages before it are whole and are passed on, so they are answered.
        if oversized.at == 0 {
            this.refusal = Refusal::Done;
            return Poll::Ready(Some(Err(Box::new(this.limit.refuse(oversized.len)))));
        }
        this.refusal = Refusal::Due(oversized.len);
        let before = data.slice(..oversized.at);
        Poll::Ready(Some(Ok(Frame::data(before))))
    }

    fn is_end_stream(&self) -> bool {
        self.refusal == Refusal::Done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn framed(lengths: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lengths {
            out.push(0);
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend(std::iter::repeat_n(7u8, len));
        }
        out
    }

    /// Reads `wire` in chunks of `step` bytes through a limit of `max`: the bytes passed on,
    /// and the status it ended with, if any.
    async fn read(wire: &[u8], step: usize, max: usize) -> (usize, Option<Status>, u64) {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = wire
            .chunks(step)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let limit = MessageLimit::new(max, "test.max_message", Arc::default());
        let mut body = limit.body(body);
        let mut passed = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => passed += frame.into_data().map_or(0, |d| d.len()),
                Err(e) => {
                    let status = *e.downcast::<Status>().expect("a status");
                    return (passed, Some(status), limit.hits());
                }
            }
        }
        (passed, None, limit.hits())
    }

    #[tokio::test]
    async fn messages_up_to_the_limit_pass_whatever_the_chunking() {
        let wire = framed(&[0, 100, 3, 100]);
        for step in [1, 2, 4, 5, 6, 99, 105, wire.len()] {
            let (passed, refused, hits) = read(&wire, step, 100).await;
            assert_eq!((passed, hits), (wire.len(), 0), "chunks of {step}");
            assert!(refused.is_none());
        }
    }

    #[tokio::test]
    async fn the_first_message_over_the_limit_ends_the_body_counted() {
        let wire = framed(&[10, 101, 5]);
        for step in [1, 3, 7, 16, wire.len()] {
            let (passed, refused, hits) = read(&wire, step, 100).await;
            let status = refused.expect("refused");
            assert_eq!(status.code(), tonic::Code::OutOfRange);
            assert!(
                status.message().contains("101 bytes"),
                "{}",
                status.message()
            );
            assert!(status.message().contains("test.max_message"));
            assert_eq!(hits, 1);
            // The message before it is passed on whole; nothing of the oversized one's prefix
            // after the chunk it started in.
            assert!(
                passed >= 10 + PREFIX,
                "chunks of {step}: {passed} bytes passed"
            );
            assert!(
                passed < 10 + 2 * PREFIX,
                "chunks of {step}: {passed} bytes passed"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_announced_length_is_refused_before_any_of_it_arrives() {
        let mut wire = vec![0u8];
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let (_, refused, hits) = read(&wire, 5, 1 << 20).await;
        assert_eq!(refused.expect("refused").code(), tonic::Code::OutOfRange);
        assert_eq!(hits, 1);
    }
}
