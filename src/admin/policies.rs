//! `/v1/policies` and `/v1/policy-modes`: what `idmint policy …` calls. Policies are written in
//! CF's policy-server format; every change is recorded in the ledger with the caller who made it.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access::Actor;
use super::AdminState;
use crate::ids::Guid;
use crate::policy::{parse_policy_list, policy_list_json, Mode, Scope};
use crate::server::policies;

fn bad(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    app: Option<String>,
}

/// `GET /v1/policies[?app=GUID]`: the policies in force, in the policy server's format.
pub async fn list(State(state): State<AdminState>, Query(q): Query<ListQuery>) -> Response {
    let app = match q.app.as_deref().map(str::parse::<Guid>).transpose() {
        Ok(app) => app,
        Err(e) => return bad(format!("app: {e}")),
    };
    Json(policy_list_json(&state.policies.list(app.as_ref()))).into_response()
}

/// What a change did.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Changed {
    /// How many policies were added or removed.
    pub changed: usize,
    /// How many were in force (adding) or absent (removing) already.
    pub unchanged: usize,
}

/// `POST /v1/policies`, body `{"policies": [...]}`: adds them, all or none if one is invalid.
pub async fn add(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    body: Bytes,
) -> Response {
    change(state, by, body, true).await
}

/// `POST /v1/policies/delete`, body `{"policies": [...]}`: removes them.
pub async fn remove(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    body: Bytes,
) -> Response {
    change(state, by, body, false).await
}

async fn change(state: AdminState, by: String, body: Bytes, adding: bool) -> Response {
    let policies = match parse_policy_list(&body) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let done = if adding {
        state.policies.add(&policies, &by).await
    } else {
        state.policies.remove(&policies, &by).await
    };
    match done {
        Ok(done) => Json(Changed {
            changed: done.len(),
            unchanged: policies.len() - done.len(),
        })
        .into_response(),
        Err(e @ policies::Error::NotHere { .. }) => {
            (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(e @ policies::Error::OwnTrustDomain(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// A mode set, as the API shows and takes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModeJson {
    /// `foundation`, `space` or `app`.
    pub scope: String,
    /// The space or app GUID; absent for the foundation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The mode; `null` to clear a setting (taking only).
    pub mode: Option<Mode>,
}

/// Every mode set and the configured default.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct ModesJson {
    /// The foundation's mode when none is set (`policy.default_mode`).
    pub default: Mode,
    /// The modes operators set.
    pub set: Vec<ModeJson>,
}

/// `GET /v1/policy-modes`.
pub async fn modes(State(state): State<AdminState>) -> Response {
    let modes = state.policies.modes();
    let set = modes
        .iter()
        .map(|(scope, mode)| ModeJson {
            scope: scope.kind().to_string(),
            id: Some(scope.id().to_string()).filter(|id| !id.is_empty()),
            mode: Some(mode),
        })
        .collect();
    Json(ModesJson {
        default: modes.configured(),
        set,
    })
    .into_response()
}

/// `PUT /v1/policy-modes`, body a [`ModeJson`]: sets or clears one mode.
pub async fn set_mode(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    body: Bytes,
) -> Response {
    let req: ModeJson = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("not a mode setting: {e}")),
    };
    let scope = match Scope::parse(&req.scope, req.id.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    match state.policies.set_mode(scope, req.mode, &by).await {
        Ok(changed) => Json(serde_json::json!({ "changed": changed })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
