//! Where an app instance runs: the facts a certificate is bound to.

use std::net::IpAddr;

use crate::ids::{CellId, Guid};
use crate::spiffe::IdValues;

/// One app instance placed on one cell. Every field of an issued certificate except its
/// public key comes from here (and the CA's settings), never from the CSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The container's instance GUID: the certificate's CN and a DNS SAN.
    pub instance_guid: Guid,
    /// The app the instance belongs to; its SPIFFE ID is the app's.
    pub app_guid: Guid,
    /// The app's space, when known.
    pub space_guid: Option<Guid>,
    /// The app's organization, when known.
    pub org_guid: Option<Guid>,
    /// The cell the instance runs on.
    pub cell_id: CellId,
    /// The container's IP address, when known: an IP SAN.
    pub container_ip: Option<IpAddr>,
}

impl Placement {
    /// The values an app SPIFFE ID template is filled with.
    pub fn id_values(&self) -> IdValues<'_> {
        IdValues {
            org_guid: self.org_guid.as_ref().map(|g| g.as_str()),
            space_guid: self.space_guid.as_ref().map(|g| g.as_str()),
            app_guid: self.app_guid.as_str(),
        }
    }
}

/// What a follower of the placements (an agent, for its cell) hears, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementUpdate {
    /// Every placement now: what the follower held is replaced by this.
    Snapshot(Vec<Placement>),
    /// An instance was placed.
    Registered(Placement),
    /// An instance was removed.
    Deregistered(Placement),
}
