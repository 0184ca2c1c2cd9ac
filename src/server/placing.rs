//! Placement changes made on a caller's behalf, through the admin API or the server API: the
//! registry change and its ledger record naming the caller, both or neither.

use super::registry::{self, Registry};
use crate::clock::Clock;
use crate::ids::Guid;
use crate::ledger::Ledger;
use crate::placement::Placement;
use crate::store::{EntryKind, LedgerRecord};

/// Registers `p` for `by`; whether it is new. Registering it again as it is changes and
/// records nothing.
pub async fn register(
    registry: &Registry,
    ledger: &Ledger,
    clock: &Clock,
    p: Placement,
    by: &str,
) -> Result<bool, registry::Error> {
    let created = registry.register(p.clone()).await?;
    if !created {
        return Ok(false);
    }
    let record = record(&p, format!("registered by {by}"), clock);
    if let Err(e) = ledger.append(record).await {
        if let Err(undo) = registry.deregister(&p.instance_guid).await {
            tracing::error!(instance = %p.instance_guid, error = %undo,
                "cannot undo a registration the ledger did not record");
        }
        return Err(registry::Error::Unrecorded(e.to_string()));
    }
    Ok(true)
}

/// Deregisters `instance` for `by`; what it was.
pub async fn deregister(
    registry: &Registry,
    ledger: &Ledger,
    clock: &Clock,
    instance: &Guid,
    by: &str,
) -> Result<Placement, registry::Error> {
    let p = registry.deregister(instance).await?;
    let record = record(&p, format!("deregistered by {by}"), clock);
    if let Err(e) = ledger.append(record).await {
        if let Err(undo) = registry.register(p.clone()).await {
            tracing::error!(%instance, error = %undo,
                "cannot undo a deregistration the ledger did not record");
        }
        return Err(registry::Error::Unrecorded(e.to_string()));
    }
    Ok(p)
}

fn record(p: &Placement, reason: String, clock: &Clock) -> LedgerRecord {
    LedgerRecord {
        instance_guid: Some(p.instance_guid.to_string()),
        app_guid: Some(p.app_guid.to_string()),
        space_guid: p.space_guid.as_ref().map(|g| g.to_string()),
        org_guid: p.org_guid.as_ref().map(|g| g.to_string()),
        cell_id: Some(p.cell_id.to_string()),
        container_ip: p.container_ip.map(|ip| ip.to_string()),
        reason: Some(reason),
        ..LedgerRecord::bare(EntryKind::Placement, clock.now())
    }
}
