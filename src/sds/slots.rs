//! How many SDS streams a socket and the whole agent hold open at once. Each stream holds a
//! slot for its life; past either limit a new stream is refused with RESOURCE_EXHAUSTED, so a
//! container opening streams without end on its own socket costs the agent a bounded amount.
//! (How large a message may be is enforced as it arrives: [`crate::message_limit`].)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::Status;

use super::metrics::SdsMetrics;

/// What one instance's SDS socket may cost the agent (`agent.max_streams_per_socket`,
/// `agent.max_streams`, `agent.max_message`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdsLimits {
    /// Streams one instance's socket holds open at once.
    pub per_socket: usize,
    /// Streams the agent holds open at once, over all sockets.
    pub total: usize,
    /// The largest request message read, in bytes.
    pub max_message: usize,
}

/// One socket's streams, and the agent's through its metrics.
#[derive(Clone)]
pub struct Slots {
    limits: SdsLimits,
    socket: Arc<AtomicUsize>,
    metrics: Arc<SdsMetrics>,
}

/// A stream's place; freed when dropped.
pub struct Slot {
    socket: Arc<AtomicUsize>,
    metrics: Arc<SdsMetrics>,
}

impl Slots {
    /// A socket's slots under `limits`, counting the agent's in `metrics`.
    pub fn new(limits: SdsLimits, metrics: Arc<SdsMetrics>) -> Slots {
        Slots {
            limits,
            socket: Arc::default(),
            metrics,
        }
    }

    /// A slot for a new stream, or why there is none.
    pub fn take(&self) -> Result<Slot, Status> {
        if !take_one(&self.socket, self.limits.per_socket) {
            self.metrics.stream_limit_hit(Limit::Socket);
            return Err(Status::resource_exhausted(format!(
                "this socket holds {} SDS streams already (agent.max_streams_per_socket)",
                self.limits.per_socket
            )));
        }
        if !take_one(self.metrics.streams_held(), self.limits.total) {
            self.socket.fetch_sub(1, Ordering::AcqRel);
            self.metrics.stream_limit_hit(Limit::Agent);
            return Err(Status::resource_exhausted(format!(
                "the agent holds {} SDS streams already (agent.max_streams)",
                self.limits.total
            )));
        }
        Ok(Slot {
            socket: self.socket.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// Which limit refused a stream.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// `agent.max_streams_per_socket`.
    Socket,
    /// `agent.max_streams`.
    Agent,
}

fn take_one(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.socket.fetch_sub(1, Ordering::AcqRel);
        self.metrics.streams_held().fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_and_the_agent_each_hold_at_most_their_limit() {
        let metrics = Arc::new(SdsMetrics::default());
        let limits = SdsLimits {
            per_socket: 2,
            total: 3,
            max_message: 1024,
        };
        let (a, b) = (
            Slots::new(limits, metrics.clone()),
            Slots::new(limits, metrics.clone()),
        );
        let a1 = a.take().unwrap();
        let _a2 = a.take().unwrap();
        assert!(a
            .take()
            .err()
            .unwrap()
            .message()
            .contains("max_streams_per_socket"));
        let _b1 = b.take().unwrap();
        assert!(b
            .take()
            .err()
            .unwrap()
            .message()
            .contains("agent.max_streams"));
        drop(a1);
        let _b2 = b.take().expect("a freed slot is taken again");
        let mut text = String::new();
        metrics.render_limit_hits(&mut text);
        assert!(
            text.contains("idmint_limit_hits_total{limit=\"sds_streams_per_socket\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("idmint_limit_hits_total{limit=\"sds_streams\"} 1"),
            "{text}"
        );
    }
}
