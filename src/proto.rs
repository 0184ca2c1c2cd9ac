//! The server API on the wire: the messages and gRPC stubs generated from
//! `proto/idmint.proto` at build time, the API's limits and flow-control window, and placements
//! to and from their wire form.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("idmint.v1");
}

pub use generated::*;

use crate::ids::Guid;

/// The most requests of one `SignStream` the server works on at once; it reads the stream no
/// further until some are answered, so one caller cannot queue unbounded work.
pub const MAX_STREAM_IN_FLIGHT: usize = 1024;

/// The largest request message the server reads unless `server.max_message` says otherwise.
/// A sign request is a few hundred bytes, a placement less; anything near this is not one of
/// ours.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// HTTP/2 flow-control window per stream, at both ends: hundreds of signed certificates on one
/// `SignStream` go out without waiting for window updates.
pub const WINDOW: u32 = 1 << 20;

/// The wire form of a placement.
pub fn placement_to_wire(p: &crate::placement::Placement) -> Placement {
    let text = |v: &Option<Guid>| v.as_ref().map(|g| g.to_string()).unwrap_or_default();
    Placement {
        instance_guid: p.instance_guid.to_string(),
        app_guid: p.app_guid.to_string(),
        space_guid: text(&p.space_guid),
        org_guid: text(&p.org_guid),
        cell_id: p.cell_id.to_string(),
        container_ip: p.container_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// The wire form of a federated bundle.
pub fn foreign_to_wire(f: &crate::sds::ForeignBundle) -> ForeignBundle {
    ForeignBundle {
        trust_domain: f.trust_domain.to_string(),
        roots_pem: f.roots_pem.clone(),
        jwt_keys_json: f.jwt_keys_json.clone(),
    }
}

/// Federated bundles from their wire form; one naming no valid trust domain, or ours, is left
/// out (a server never sends one).
pub fn foreign_from_wire(
    wire: Vec<ForeignBundle>,
    own: &crate::spiffe::TrustDomain,
) -> Vec<crate::sds::ForeignBundle> {
    wire.into_iter()
        .filter_map(|f| {
            let trust_domain: crate::spiffe::TrustDomain = f.trust_domain.parse().ok()?;
            (trust_domain != *own).then_some(crate::sds::ForeignBundle {
                trust_domain,
                roots_pem: f.roots_pem,
                jwt_keys_json: f.jwt_keys_json,
            })
        })
        .collect()
}

/// A placement from its wire form, or which field is wrong and why.
pub fn placement_from_wire(p: Placement) -> Result<crate::placement::Placement, String> {
    Ok(crate::placement::Placement {
        instance_guid: parse_field("instance_guid", &p.instance_guid)?,
        app_guid: parse_field("app_guid", &p.app_guid)?,
        space_guid: optional_field("space_guid", &p.space_guid)?,
        org_guid: optional_field("org_guid", &p.org_guid)?,
        cell_id: parse_field("cell_id", &p.cell_id)?,
        container_ip: optional_field("container_ip", &p.container_ip)?,
    })
}

/// The wire form of a placement update.
pub fn placement_update_to_wire(u: &crate::placement::PlacementUpdate) -> PlacementUpdate {
    use crate::placement::PlacementUpdate as U;
    use placement_update::Update;
    PlacementUpdate {
        update: Some(match u {
            U::Snapshot(all) => Update::Snapshot(Placements {
                placements: all.iter().map(placement_to_wire).collect(),
            }),
            U::Registered(p) => Update::Registered(placement_to_wire(p)),
            U::Deregistered(p) => Update::Deregistered(placement_to_wire(p)),
        }),
    }
}

/// A placement update from its wire form, or what is wrong with it.
pub fn placement_update_from_wire(
    u: PlacementUpdate,
) -> Result<crate::placement::PlacementUpdate, String> {
    use crate::placement::PlacementUpdate as U;
    use placement_update::Update;
    match u.update {
        Some(Update::Snapshot(all)) => Ok(U::Snapshot(
            all.placements
                .into_iter()
                .map(placement_from_wire)
                .collect::<Result<_, _>>()?,
        )),
        Some(Update::Registered(p)) => Ok(U::Registered(placement_from_wire(p)?)),
        Some(Update::Deregistered(p)) => Ok(U::Deregistered(placement_from_wire(p)?)),
        None => Err("a placement update without an update".into()),
    }
}

/// An allow list as sent to agents.
pub fn allow_list_to_wire(app: &crate::ids::Guid, list: &crate::policy::AllowList) -> AllowList {
    use crate::policy::Mode;
    AllowList {
        app_guid: app.to_string(),
        mode: match list.mode {
            Mode::TrustDomain => EnforcementMode::TrustDomain,
            Mode::Policy => EnforcementMode::Policy,
        } as i32,
        allowed_spiffe_ids: list.sources.iter().cloned().collect(),
    }
}

/// An allow list as an agent takes it: every ID must be a SPIFFE ID, the mode a known one.
pub fn allow_list_from_wire(
    l: AllowList,
) -> Result<(crate::ids::Guid, crate::policy::AllowList), String> {
    use crate::policy::Mode;
    let app = parse_field("app_guid", &l.app_guid)?;
    let mode = match EnforcementMode::try_from(l.mode) {
        Ok(EnforcementMode::TrustDomain) => Mode::TrustDomain,
        Ok(EnforcementMode::Policy) => Mode::Policy,
        _ => return Err(format!("mode: {} is not an enforcement mode", l.mode)),
    };
    let sources = l
        .allowed_spiffe_ids
        .into_iter()
        .map(|id| parse_field::<crate::spiffe::SpiffeId>("allowed_spiffe_ids", &id).map(|_| id))
        .collect::<Result<_, _>>()?;
    Ok((app, crate::policy::AllowList { mode, sources }))
}

/// An allow-list update as sent to agents.
pub fn allow_update_to_wire(u: &crate::policy::AllowUpdate) -> AllowListUpdate {
    use crate::policy::AllowUpdate as U;
    use allow_list_update::Update;
    AllowListUpdate {
        update: Some(match u {
            U::Snapshot(all) => Update::Snapshot(AllowLists {
                lists: all.iter().map(|(a, l)| allow_list_to_wire(a, l)).collect(),
            }),
            U::Set(app, list) => Update::Set(allow_list_to_wire(app, list)),
            U::Gone(app) => Update::GoneAppGuid(app.to_string()),
        }),
    }
}

/// An allow-list update as an agent takes it.
pub fn allow_update_from_wire(u: AllowListUpdate) -> Result<crate::policy::AllowUpdate, String> {
    use crate::policy::AllowUpdate as U;
    use allow_list_update::Update;
    match u.update {
        Some(Update::Snapshot(all)) => Ok(U::Snapshot(
            all.lists
                .into_iter()
                .map(allow_list_from_wire)
                .collect::<Result<_, _>>()?,
        )),
        Some(Update::Set(l)) => {
            let (app, list) = allow_list_from_wire(l)?;
            Ok(U::Set(app, list))
        }
        Some(Update::GoneAppGuid(app)) => Ok(U::Gone(parse_field("gone_app_guid", &app)?)),
        None => Err("an allow-list update without an update".into()),
    }
}

/// A required field, parsed; the error names the field.
pub fn parse_field<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| format!("{field}: {e}"))
}

/// An optional field (empty when unset), parsed; the error names the field.
fn optional_field<T: std::str::FromStr>(field: &str, value: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    (!value.is_empty())
        .then(|| parse_field(field, value))
        .transpose()
}
