//! What every SDS stream of one instance shares.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

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

/// Everything one stream holds.
struct Machine<Req, S> {
    inbound: Streaming<Req>,
    ctx: Ctx,
    state: S,
    ended: bool,
    _open: OpenStream,
}

/// Runs a protocol's state machine as a response stream: requests go to `on_request`,
/// changes of the instance's secrets ask `respond` for a push, the instance's cancellation
/// ends the stream with `UNAVAILABLE`.
pub fn drive<Req, Resp, S>(
    inbound: Streaming<Req>,
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
    let machine = Machine {
        _open: OpenStream::new(ctx.metrics.clone()),
        inbound,
        ctx,
        state,
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        machine,
        move |mut m| async move {
            if m.ended {
                return None;
            }
            loop {
                let outcome = tokio::select! {
                    _ = m.ctx.cancel.cancelled() => Outcome::End(Some(Status::unavailable(
                        "this instance was deregistered; its SDS socket is closed"))),
                    msg = m.inbound.message() => match msg {
                        Ok(Some(req)) => on_request(&mut m.state, &m.ctx, req),
                        Ok(None) => Outcome::End(None),
                        Err(status) => {
                            tracing::debug!(instance = %m.ctx.instance(), %status, "SDS stream ended by client");
                            Outcome::End(None)
                        }
                    },
                    _ = m.ctx.sources.changed() => Outcome::Push { force: false },
                };
                match outcome {
                    Outcome::Quiet => {}
                    Outcome::Push { force } => {
                        if let Some(resp) = respond(&mut m.state, &m.ctx, force) {
                            return Some((Ok(resp), m));
                        }
                    }
                    Outcome::End(Some(status)) => {
                        m.ended = true;
                        return Some((Err(status), m));
                    }
                    Outcome::End(None) => return None,
                }
            }
        },
    ))
}
