//! `/v1/revoke` (what `idmint revoke` calls) and `/v1/crl/…`, where each intermediate's CRL
//! is published.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access::Actor;
use super::AdminState;
use crate::ca::crl::{self, Reason};
use crate::ids::{CellId, Guid};
use crate::server::revocations::{RevokeError, Target};

/// A revocation request: exactly one of the four targets, and a reason.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    /// An RFC 5280 reason, by name (`key-compromise`, `superseded`, …).
    pub reason: String,
}

impl RevokeJson {
    /// What to revoke and why, or what is wrong with the request.
    pub fn parse(&self) -> Result<(Target, Reason), String> {
        let reason = Reason::parse(&self.reason)?;
        let mut targets = Vec::new();
        if let Some(s) = &self.serial {
            let serial = crl::normalize_serial(s)
                .ok_or_else(|| format!("serial {s:?} is not a hexadecimal serial number"))?;
            targets.push(Target::Serial(serial));
        }
        if let Some(i) = &self.instance_guid {
            let guid = i
                .parse::<Guid>()
                .map_err(|e| format!("instance_guid: {e}"))?;
            targets.push(Target::Instance(guid));
        }
        if let Some(a) = &self.app_guid {
            let guid = a.parse::<Guid>().map_err(|e| format!("app_guid: {e}"))?;
            targets.push(Target::App(guid));
        }
        if let Some(c) = &self.cell_id {
            let cell = c.parse::<CellId>().map_err(|e| format!("cell_id: {e}"))?;
            targets.push(Target::Cell(cell));
        }
        match targets.len() {
            1 => Ok((targets.remove(0), reason)),
            _ => Err("say exactly one of serial, instance_guid, app_guid or cell_id".into()),
        }
    }
}

fn text(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, format!("{msg}\n")).into_response()
}

/// `POST /v1/revoke`.
pub async fn revoke(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    body: Result<Json<RevokeJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (target, reason) = match req.parse() {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    match state.revocations.revoke(&target, reason, &by).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e @ RevokeError::Unknown(_)) => text(StatusCode::NOT_FOUND, e),
        Err(e @ RevokeError::Expired(_)) => text(StatusCode::CONFLICT, e),
        Err(e @ RevokeError::Unavailable(_)) => {
            tracing::error!(error = %e, %target, "revocation failed");
            text(StatusCode::SERVICE_UNAVAILABLE, e)
        }
    }
}

/// One published CRL, as `GET /v1/crl` lists it.
#[derive(Serialize)]
struct CrlListing {
    issuer_sha256: String,
    der: String,
    pem: String,
}

/// `GET /v1/crl`: where each intermediate's CRL is, and the serials they list. Open like the
/// CRLs themselves; which apps and cells are refused is in the ledger, for its readers.
pub async fn list(State(state): State<AdminState>) -> Response {
    let now = state.revocations.now();
    let crls: Vec<CrlListing> = now
        .crls
        .iter()
        .map(|c| CrlListing {
            issuer_sha256: c.issuer_fingerprint.clone(),
            der: format!("/v1/crl/{}.crl", c.issuer_fingerprint),
            pem: format!("/v1/crl/{}.pem", c.issuer_fingerprint),
        })
        .collect();
    Json(serde_json::json!({
        "crls": crls,
        "revoked_serials": now.serials,
    }))
    .into_response()
}

/// `GET /v1/crl/{issuer}.crl` (DER) or `.pem`.
pub async fn one(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let (issuer, pem) = match (name.strip_suffix(".crl"), name.strip_suffix(".pem")) {
        (Some(i), _) => (i, false),
        (_, Some(i)) => (i, true),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "ask for /v1/crl/<issuer SHA-256>.crl (DER) or .pem; /v1/crl lists them",
            )
        }
    };
    let now = state.revocations.now();
    let Some(found) = now
        .crls
        .iter()
        .find(|c| c.issuer_fingerprint == issuer.to_ascii_lowercase())
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no CRL for an intermediate with SHA-256 {issuer}; /v1/crl lists them"),
        );
    };
    if pem {
        (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            crl::pem(&found.der),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            found.der.clone(),
        )
            .into_response()
    }
}
