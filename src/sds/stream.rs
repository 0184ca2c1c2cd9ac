//! What every SDS stream of one instance shares.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::metrics::SdsMetrics;
use super::names::{classify, SecretKind};
use super::secrets::{content_version, Built, Sources};
use super::Workload;

/// A stream's view of its instance.
pub struct Ctx {
    pub workload: Workload,
    pub sources: Sources,
    pub metrics: Arc<SdsMetrics>,
    pub cancel: CancellationToken,
    pub td_id: String,
    /// The stream's place under the stream limits, held as long as the stream lives.
    pub _slot: Option<super::slots::Slot>,
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

    /// The kind of `name`, or `PERMISSION_DENIED` (logged and counted) when it is not ours,
    /// or names a trust domain whose bundle is not held (not federated, or not fetched yet).
    pub fn classify(&self, name: &str) -> Result<SecretKind, Status> {
        let refuse = |why: String| {
            self.metrics.refused();
            tracing::warn!(instance = %self.instance(), spiffe_id = %self.workload.spiffe_id,
                asked_for = %name, "refused a secret that is not this instance's");
            Status::permission_denied(why)
        };
        let kind = classify(name, &self.workload.spiffe_id, &self.td_id)
            .map_err(|refused| refuse(refused.to_string()))?;
        if kind == SecretKind::ForeignRoots
            && self
                .workload
                .bundle
                .borrow()
                .foreign(&name["spiffe://".len()..])
                .is_none()
        {
            return Err(refuse(format!(
                "secret {name:?}: no bundle of that trust domain is held here (it is not \
                 federated with this one, or its bundle has not been fetched yet)"
            )));
        }
        Ok(kind)
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
    content_version(all.as_bytes())
}

/// The responses of one stream, as tonic sends them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Counts a stream open for as long as it lives.
struct OpenStream(Arc<SdsMetrics>);

impl OpenStream {
    fn new(metrics: Arc<SdsMetrics>) -> Self {
        metrics.stream_opened();
        OpenStream(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// What the request reader leaves for the response side.
struct Shared<S> {
    state: S,
    /// A response is due (`Some(force)`).
    push: Option<bool>,
    /// The stream is over, with this error if any.
    end: Option<Option<Status>>,
}

/// The response side of one stream.
struct Machine<S> {
    shared: Arc<Mutex<Shared<S>>>,
    wake: Arc<Notify>,
    ctx: Arc<Ctx>,
    /// Its own receivers, so each change is seen once.
    sources: Sources,
    ended: bool,
    /// The reader task, owned by the response side: it ends with the instance's cancellation,
    /// at the end of the requests, or is aborted when the response side goes away first (the
    /// client left).
    _reader: JoinSet<()>,
    _open: OpenStream,
}

/// Runs `requests` through a protocol's state machine as [`drive`] would, without a client or
/// a wait: the responses it sends, and the error that ended it, if one did. For fuzzing.
pub fn replay<Req, Resp, S>(
    ctx: &Ctx,
    mut state: S,
    requests: Vec<Req>,
    on_request: fn(&mut S, &Ctx, Req) -> Outcome,
    respond: fn(&mut S, &Ctx, bool) -> Option<Resp>,
) -> (Vec<Resp>, Option<Status>) {
    let mut sent = Vec::new();
    for req in requests {
        match on_request(&mut state, ctx, req) {
            Outcome::Quiet => {}
            Outcome::Push { force } => sent.extend(respond(&mut state, ctx, force)),
            Outcome::End(status) => return (sent, status),
        }
    }
    (sent, None)
}

/// Runs a protocol's state machine for one stream. Requests are read by a small task of their
/// own and handed to `on_request` at once, so an ACK is counted when it arrives, whatever the
/// HTTP/2 flow control is doing to the response side. Changes of the instance's secrets, and
/// requests that call for one, ask `respond` for a push; the instance's cancellation ends the
/// stream with `UNAVAILABLE`.
pub fn drive<Req, Resp, S>(
    mut inbound: Streaming<Req>,
    ctx: Ctx,
    state: S,
    on_request: fn(&mut S, &Ctx, Req) -> Outcome,
    respond: fn(&mut S, &Ctx, bool) -> Option<Resp>,
) -> ResponseStream<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    S: Send + 'static,
{
    let open = OpenStream::new(ctx.metrics.clone());
    let ctx = Arc::new(ctx);
    let shared = Arc::new(Mutex::new(Shared {
        state,
        push: None,
        end: None,
    }));
    let wake = Arc::new(Notify::new());
    let stop = ctx.cancel.child_token();

    let (r_ctx, r_shared, r_wake, r_stop) = (ctx.clone(), shared.clone(), wake.clone(), stop);
    let mut reader = JoinSet::new();
    reader.spawn(async move {
        loop {
            let outcome = tokio::select! {
                _ = r_stop.cancelled() => return,
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => on_request(&mut lock(&r_shared).state, &r_ctx, req),
                    Ok(None) => Outcome::End(None),
                    Err(status) => {
                        // An unreadable request (too large, not protobuf) or a client that
                        // reset the stream; in the first case the client learns why.
                        tracing::debug!(instance = %r_ctx.instance(), %status, "SDS stream ended on a bad request or by the client");
                        Outcome::End(Some(status))
                    }
                },
            };
            let done = {
                let mut sh = lock(&r_shared);
                match outcome {
                    Outcome::Quiet => false,
                    Outcome::Push { force } => {
                        sh.push = Some(sh.push.unwrap_or(false) || force);
                        false
                    }
                    Outcome::End(status) => {
                        sh.end = Some(status);
                        true
                    }
                }
            };
            r_wake.notify_one();
            if done {
                return;
            }
        }
    });

    let machine = Machine {
        shared,
        wake,
        sources: ctx.sources.clone(),
        ctx,
        ended: false,
        _reader: reader,
        _open: open,
    };
    Box::pin(futures_util::stream::unfold(
        machine,
        move |mut m| async move {
            if m.ended {
                return None;
            }
            loop {
                enum Next<R> {
                    End(Option<Status>),
                    Send(R),
                    Wait,
                }
                let next = {
                    let mut sh = lock(&m.shared);
                    if let Some(end) = sh.end.take() {
                        Next::End(end)
                    } else if let Some(force) = sh.push.take() {
                        match respond(&mut sh.state, &m.ctx, force) {
                            Some(resp) => Next::Send(resp),
                            None => Next::Wait,
                        }
                    } else {
                        Next::Wait
                    }
                };
                match next {
                    Next::End(status) => {
                        m.ended = true;
                        return status.map(|status| (Err(status), m));
                    }
                    Next::Send(resp) => return Some((Ok(resp), m)),
                    Next::Wait => {}
                }
                tokio::select! {
                    _ = m.ctx.cancel.cancelled() => {
                        m.ended = true;
                        return Some((Err(Status::unavailable(
                            "this instance was deregistered; its SDS socket is closed")), m));
                    }
                    _ = m.wake.notified() => {}
                    _ = m.sources.changed() => {
                        let mut sh = lock(&m.shared);
                        sh.push = Some(sh.push.unwrap_or(false));
                    }
                }
            }
        },
    ))
}

fn lock<S>(m: &Mutex<Shared<S>>) -> std::sync::MutexGuard<'_, Shared<S>> {
    // A panic while holding it cannot leave the state half-written in a way that matters more
    // than continuing to serve.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
