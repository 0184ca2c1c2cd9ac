//! Placement changes made on a caller's behalf, through the admin API or the server API: the
//! registry change and its ledger record naming the caller, both or neither.

use super::issuance::placement_record;
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
        reason: Some(reason),
        ..placement_record(p, EntryKind::Placement, clock.now())
    }
}
