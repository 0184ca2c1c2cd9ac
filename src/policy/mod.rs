//! Container-to-container policies: who may open connections to whom, as Cloud Foundry's
//! policy server holds them, and what they mean for mTLS. A provider's sidecar sees only the
//! peer's SPIFFE ID, never the port it dialled, so an app may reach another if any policy names
//! it as a source for that destination, whatever the protocol and ports; both are kept and
//! shown all the same.

mod allow;
mod mode;
mod model;

pub use allow::{AllowList, AllowUpdate};
pub use mode::{Mode, Modes, Scope};
pub use model::{
    parse_policy_list, parse_policy_server_answer, policy_list_json, AllowSets, Origin, Policy,
    PortRange, Protocol, Source,
};

use crate::ids;

/// Why a policy, or a set of them, was refused. Nothing of a refused set is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Not the JSON of the policy server's model (syntax, a missing or unknown field, a wrong
    /// type).
    #[error("not a policy list: {0}")]
    Malformed(String),
    /// One policy of the list is wrong; `index` counts from 0.
    #[error("policy {index}: {why}")]
    Policy {
        /// Its position in the list.
        index: usize,
        /// What is wrong with it.
        why: PolicyError,
    },
    /// The list says it holds another number of policies than it does: cut short, most likely.
    #[error("the answer says it holds {said} policies but holds {held}")]
    Count {
        /// What `total_policies` says.
        said: usize,
        /// How many there are.
        held: usize,
    },
}

/// What is wrong with one policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The source or destination is not an app GUID.
    #[error("{side}.id: {error}")]
    App {
        /// `source` or `destination`.
        side: &'static str,
        /// Why.
        error: ids::Error,
    },
    /// The source is neither an app GUID nor a SPIFFE ID.
    #[error("source.id: {0}")]
    Source(String),
    /// Neither `tcp` nor `udp`.
    #[error("destination.protocol: {0:?} is neither \"tcp\" nor \"udp\"")]
    Protocol(String),
    /// A port outside 1–65535, or a range that ends before it starts.
    #[error("destination.ports: {start}-{end} is not a port range (1-65535, start <= end)")]
    Ports {
        /// The first port.
        start: i64,
        /// The last port.
        end: i64,
    },
}
