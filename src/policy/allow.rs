//! What a provider's sidecar is told to accept, and how an agent hears of it: per destination
//! app, the enforcement mode and the SPIFFE IDs of the apps allowed to reach it.

use std::collections::BTreeSet;

use super::Mode;
use crate::ids::Guid;

/// What the sidecars of one app accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    /// `trust-domain`: any workload of the trust domain, whatever `sources` says.
    pub mode: Mode,
    /// The SPIFFE IDs of the apps a policy allows, in order. Empty in `policy` mode: nobody.
    pub sources: BTreeSet<String>,
}

/// What an agent hears about the apps placed on its cell, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowUpdate {
    /// The lists of every app placed on the cell now: what the agent held is replaced.
    Snapshot(Vec<(Guid, AllowList)>),
    /// One app's list changed, or the app came to the cell.
    Set(Guid, AllowList),
    /// The app's last instance left the cell.
    Gone(Guid),
}
