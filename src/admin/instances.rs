//! `/v1/instances`: register, list and deregister app instances (what `idmint instance …`
//! calls). Registering creates the instance's SDS socket before answering.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access::Actor;
use super::AdminState;
use crate::ids::{CellId, Guid};
use crate::placement::Placement;
use crate::server::{placing, registry};

/// The default cell of instances registered without one (`idmint dev` runs one cell).
pub const LOCAL_CELL: &str = "local";

/// An instance as the API takes and shows it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceJson {
    /// Instance GUID.
    pub instance_guid: String,
    /// App GUID.
    pub app_guid: String,
    /// Space GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_guid: Option<String>,
    /// Org GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_guid: Option<String>,
    /// Cell; `local` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    /// Container IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The app's SPIFFE ID (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The SDS socket the instance's sidecar connects to (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds_socket: Option<String>,
    /// Serial of the certificate served now, hex (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its expiry, RFC 3339 (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When it is next renewed, or the next retry after a failure, RFC 3339 (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal: Option<String>,
    /// Why the last attempt failed, while attempts are failing (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_error: Option<String>,
}

fn bad(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

fn parse(j: &InstanceJson) -> Result<Placement, String> {
    let guid = |field: &str, v: &str| v.parse::<Guid>().map_err(|e| format!("{field}: {e}"));
    let opt = |field: &str, v: &Option<String>| v.as_deref().map(|v| guid(field, v)).transpose();
    Ok(Placement {
        instance_guid: guid("instance_guid", &j.instance_guid)?,
        app_guid: guid("app_guid", &j.app_guid)?,
        space_guid: opt("space_guid", &j.space_guid)?,
        org_guid: opt("org_guid", &j.org_guid)?,
        cell_id: j
            .cell_id
            .as_deref()
            .unwrap_or(LOCAL_CELL)
            .parse::<CellId>()
            .map_err(|e| format!("cell_id: {e}"))?,
        container_ip: j
            .ip
            .as_deref()
            .map(|ip| ip.parse::<IpAddr>().map_err(|e| format!("ip: {ip:?}: {e}")))
            .transpose()?,
    })
}

async fn show(state: &AdminState, p: &Placement) -> InstanceJson {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let cert = match &state.agent {
        Some(agent) => agent.cert_status(&p.instance_guid).await,
        None => None,
    }
    .unwrap_or_default();
    let settings = state.ca.settings();
    let spiffe_id = settings
        .id_template
        .render(&settings.trust_domain, p.id_values())
        .ok()
        .map(|id| id.to_string());
    InstanceJson {
        instance_guid: p.instance_guid.to_string(),
        app_guid: p.app_guid.to_string(),
        space_guid: p.space_guid.as_ref().map(|g| g.to_string()),
        org_guid: p.org_guid.as_ref().map(|g| g.to_string()),
        cell_id: Some(p.cell_id.to_string()),
        ip: p.container_ip.map(|ip| ip.to_string()),
        spiffe_id,
        sds_socket: state
            .agent
            .as_ref()
            .filter(|a| a.serves(p))
            .map(|a| a.socket_path(&p.instance_guid).display().to_string()),
        serial: cert.serial_hex,
        not_after: cert.not_after.map(rfc3339),
        next_renewal: cert.next_attempt.map(rfc3339),
        renewal_error: cert.last_error,
    }
}

pub async fn list(State(state): State<AdminState>) -> Response {
    let (all, _) = state.registry.snapshot();
    let mut shown = Vec::with_capacity(all.len());
    for p in &all {
        shown.push(show(&state, p).await);
    }
    Json(shown).into_response()
}

pub async fn register(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    body: Result<Json<InstanceJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    let placement = match parse(&req) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    // Refuse now what could never be issued, rather than fail later on the socket.
    let settings = state.ca.settings();
    if let Err(e) = settings
        .id_template
        .render(&settings.trust_domain, placement.id_values())
    {
        return bad(e);
    }
    let (registry, ledger, clock) = (&state.registry, &state.ledger, &state.clock);
    let created = match placing::register(registry, ledger, clock, placement.clone(), &by).await {
        Ok(created) => created,
        Err(e @ registry::Error::Conflict(_)) => {
            return (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    if let Some(agent) = state.agent.as_ref().filter(|a| a.serves(&placement)) {
        if let Err(e) = agent.add(placement.clone()).await {
            tracing::error!(instance = %placement.instance_guid, error = %e, "cannot serve SDS");
            // All or nothing: an instance that cannot be served is not left registered.
            if created {
                let undo = placing::deregister(
                    registry,
                    ledger,
                    clock,
                    &placement.instance_guid,
                    "idmint, undoing a registration it cannot serve",
                );
                if let Err(undo) = undo.await {
                    tracing::error!(instance = %placement.instance_guid, error = %undo,
                        "cannot undo the registration of an instance that is not served");
                }
            }
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response();
        }
    }
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, Json(show(&state, &placement).await)).into_response()
}

pub async fn deregister(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    Path(guid): Path<String>,
) -> Response {
    let guid: Guid = match guid.parse() {
        Ok(g) => g,
        Err(e) => return bad(format!("instance GUID: {e}")),
    };
    match placing::deregister(&state.registry, &state.ledger, &state.clock, &guid, &by).await {
        Ok(p) => {
            if let Some(agent) = &state.agent {
                agent.remove(&guid).await;
            }
            Json(show(&state, &p).await).into_response()
        }
        Err(e @ registry::Error::Unknown(_)) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
