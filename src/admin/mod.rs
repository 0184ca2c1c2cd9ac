//! Admin HTTP: health, metrics, the trust bundle, instance registration, and the audit API
//! over the ledger. Health, metrics and the bundle are open; every other route needs a caller
//! whose role allows it (see [`access`]).

pub mod access;
pub mod agent;
pub mod instances;
pub mod listener;
pub mod log;
pub mod policies;
pub mod revoke;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use self::access::{Actor, Caller, Operation, Refusals};
use self::listener::AdminListener;

use crate::agent::remote::RemoteAuthority;
use crate::agent::Workloads;
use crate::ca::maintenance::{CaControl, ControlError};
use crate::ca::CertificateAuthority;
use crate::clock::Clock;
use crate::ids::Guid;
use crate::ledger::{AuditLog, Ledger};
use crate::sds::SdsMetrics;
use crate::server::limits::Limits;
use crate::server::policy_server::PollMetrics;
use crate::server::{Policies, Registry};
use crate::store::{EntryKind, LedgerFilter, LedgerRecord};

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// For the trust bundle.
    pub ca: Arc<CertificateAuthority>,
    /// For the audit API.
    pub audit: AuditLog,
    /// Registered instances.
    pub registry: Registry,
    /// Container-to-container policies and enforcement modes.
    pub policies: Policies,
    /// How polling CF's policy server goes, when the policies come from it.
    pub policy_polls: Option<Arc<PollMetrics>>,
    /// The in-process agent, when this process serves SDS.
    pub agent: Option<Arc<Workloads<RemoteAuthority>>>,
    /// SDS counters.
    pub sds_metrics: Arc<SdsMetrics>,
    /// Rotates the CA on request (self-signed mode).
    pub ca_control: Option<CaControl>,
    /// What certificates' time left is counted from.
    pub clock: Clock,
    /// The ledger's writer: its counters, and the records of what callers change or are
    /// refused.
    pub ledger: Ledger,
    /// Requests refused for want of a credential or a role.
    pub refusals: Arc<Refusals>,
    /// What clients of the server API may cost, when this process serves it.
    pub limits: Option<Arc<Limits>>,
    /// The largest request body read (`admin.max_body`).
    pub max_body: usize,
    /// How signing the ledger's checkpoints goes in this process.
    pub log: Arc<crate::ledger::checkpoints::LogStatus>,
    /// The keys that sign the ledger's checkpoints, for their rotation.
    pub log_keys: crate::ledger::checkpoints::LogKeys,
    /// What is revoked, and the CRLs.
    pub revocations: crate::server::revocations::Revocations,
    /// The federated trust domains' bundles and how fetching them goes.
    pub federation: Arc<crate::server::federation::Federation>,
}

/// The most ledger entries one request returns.
const MAX_PAGE: i64 = 10_000;

/// The admin routes, each open or needing its operation.
pub fn router(state: AdminState) -> Router {
    let needs = |op: Operation, route: MethodRouter<AdminState>| {
        route.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), op),
            access::require,
        ))
    };
    use Operation::*;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/bundle.pem", get(bundle))
        .route("/metrics", get(metrics))
        .route("/v1/ledger", needs(ReadLedger, get(ledger)))
        .route("/v1/log/checkpoint", get(log::checkpoint))
        .route("/v1/log/key", get(log::key))
        .route(
            "/v1/log/tile/entries/{*path}",
            needs(ReadLedger, get(log::entries)),
        )
        .route("/v1/log/tile/{*path}", get(log::hash_tile))
        .route(
            "/v1/instances",
            needs(ReadPlacements, get(instances::list))
                .merge(needs(Place, post(instances::register))),
        )
        .route(
            "/v1/instances/{guid}",
            needs(Place, delete(instances::deregister)),
        )
        .route("/v1/ca/rotate/{target}", needs(RotateCa, post(rotate_ca)))
        .route("/v1/revoke", needs(Revoke, post(revoke::revoke)))
        .route("/v1/crl", get(revoke::list))
        .route("/v1/crl/{name}", get(revoke::one))
        .route(
            "/v1/policies",
            needs(ReadPolicies, get(policies::list))
                .merge(needs(ChangePolicies, post(policies::add))),
        )
        .route(
            "/v1/policies/delete",
            needs(ChangePolicies, post(policies::remove)),
        )
        .route(
            "/v1/policy-modes",
            needs(ReadPolicies, get(policies::modes)).merge(needs(
                ChangePolicies,
                axum::routing::put(policies::set_mode),
            )),
        )
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown`.
pub async fn serve(listener: AdminListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state).into_make_service_with_connect_info::<Caller>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut text = String::new();
    let now = state.clock.now();
    match &state.agent {
        Some(agent) => agent.render_metrics(now, &mut text).await,
        None => state.sds_metrics.render(&mut text),
    }
    ca_expiry(&state.ca, now, &mut text);
    server_metrics(&state, &mut text);
    state.refusals.render(&mut text);
    write_limit_hits_header(&mut text);
    if let Some(agent) = &state.agent {
        agent.metrics().render_limit_hits(&mut text);
    }
    if let Some(limits) = &state.limits {
        limits.render(&mut text);
    }
    log_metrics(&state, now, &mut text).await;
    revocation_metrics(&state, now, &mut text);
    state.federation.render_metrics(&mut text);
    policy_counts(&state.policies, &mut text);
    if let Some(polls) = &state.policy_polls {
        polls.render(now, &mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The ledger's commits and failures, and whether this process leads CA maintenance.
fn server_metrics(state: &AdminState, out: &mut String) {
    let stats = state.ledger.stats();
    write_metric(
        out,
        "idmint_ledger_records_total",
        "counter",
        "Ledger records committed by this process.",
        stats.records,
    );
    write_metric(
        out,
        "idmint_ledger_write_failures_total",
        "counter",
        "Ledger records whose commit failed, so their requests were refused.",
        stats.failed_records,
    );
    if let Some(control) = &state.ca_control {
        write_metric(
            out,
            "idmint_ca_leader",
            "gauge",
            "Whether this process runs CA maintenance (rotation) for its database.",
            u8::from(control.leads()),
        );
    }
}

/// What is revoked, and whether the CRLs that say so are fresh and complete.
fn revocation_metrics(state: &AdminState, now: time::OffsetDateTime, out: &mut String) {
    let revoked = state.revocations.now();
    write_metric(
        out,
        "idmint_revoked_certificates",
        "gauge",
        "Revoked certificates that have not expired: what the CRLs list.",
        revoked.serials.len(),
    );
    if let Some(at) = revoked.signed_at {
        write_metric(
            out,
            "idmint_crl_age_seconds",
            "gauge",
            "Seconds since this server last signed its CRLs (they are valid for 24 hours).",
            (now - at).whole_seconds().max(0),
        );
    }
    write_metric(
        out,
        "idmint_intermediates_without_crl",
        "gauge",
        "Intermediates with live leaves that could not sign a CRL: while anything is revoked, sidecars refuse what they issued.",
        revoked.signers.len().saturating_sub(revoked.crls.len()),
    );
}

/// The ledger's size, what the latest checkpoint covers and how old it is, and whether this
/// process stopped signing because the ledger no longer matches a checkpoint.
async fn log_metrics(state: &AdminState, now: time::OffsetDateTime, out: &mut String) {
    let (entries, checkpoint) = match (
        state.audit.next_seq().await,
        state.audit.latest_checkpoint().await,
    ) {
        (Ok(entries), Ok(checkpoint)) => (entries, checkpoint),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the log for the metrics");
            return;
        }
    };
    write_metric(
        out,
        "idmint_ledger_entries",
        "gauge",
        "Entries in the ledger (all servers').",
        entries,
    );
    if let Some(c) = checkpoint {
        write_metric(
            out,
            "idmint_log_checkpoint_size",
            "gauge",
            "Entries the latest signed checkpoint covers.",
            c.size,
        );
        let age = (crate::clock::unix_ms(now) - c.signed_at_ms).max(0) / 1000;
        write_metric(
            out,
            "idmint_log_checkpoint_age_seconds",
            "gauge",
            "Seconds since the latest checkpoint was signed.",
            age,
        );
    }
    write_metric(
        out,
        "idmint_log_checkpoints_signed_total",
        "counter",
        "Checkpoints this process signed.",
        state.log.signed(),
    );
    write_metric(
        out,
        "idmint_log_diverged",
        "gauge",
        "1 when this process stopped signing checkpoints because the ledger no longer matches one.",
        u8::from(state.log.diverged()),
    );
}

/// HELP and TYPE of `idmint_limit_hits_total`, written once before every part's samples.
pub(crate) fn write_limit_hits_header(out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP idmint_limit_hits_total Requests or connections a limit refused or held back, by limit.");
    let _ = writeln!(out, "# TYPE idmint_limit_hits_total counter");
}

/// One sample with its HELP and TYPE lines. `series` is the metric's name, with its labels
/// when it has any (`name{label="value"}`).
pub(crate) fn write_metric(
    out: &mut String,
    series: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    use std::fmt::Write;
    let name = series.split('{').next().unwrap_or(series);
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{series} {value}");
}

async fn bundle(State(state): State<AdminState>) -> Response {
    let pem = state.ca.roots_pem();
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    app_guid: Option<String>,
    serial: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    cell_id: Option<String>,
    instance_guid: Option<String>,
    /// Only certificates valid (and not revoked) at this time (Unix seconds).
    valid_at: Option<i64>,
    limit: Option<i64>,
}

async fn ledger(State(state): State<AdminState>, Query(q): Query<LedgerQuery>) -> Response {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg + "\n").into_response();
    let app_guid = match q.app_guid.as_deref().map(str::parse::<Guid>).transpose() {
        Ok(g) => g.map(|g| g.to_string()),
        Err(e) => return bad(format!("app_guid: {e}")),
    };
    let instance_guid = match q
        .instance_guid
        .as_deref()
        .map(str::parse::<Guid>)
        .transpose()
    {
        Ok(g) => g.map(|g| g.to_string()),
        Err(e) => return bad(format!("instance_guid: {e}")),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad(format!("limit must be between 1 and {MAX_PAGE}"));
    }
    let filter = LedgerFilter {
        app_guid,
        serial: q.serial.map(|s| s.to_ascii_lowercase()),
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        cell_id: q.cell_id,
        valid_at: q.valid_at,
        instance_guid,
        limit: Some(limit),
    };
    match state.audit.list(&filter).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "ledger query failed");
            (StatusCode::SERVICE_UNAVAILABLE, "ledger unavailable\n").into_response()
        }
    }
}

/// A new checkpoint signing key, recorded in the ledger with who asked; the retired key stays
/// published so that what it signed can still be checked.
async fn rotate_ledger_key(state: &AdminState, by: &str) -> Response {
    let now = state.clock.now();
    match state.log_keys.rotate(crate::clock::unix_ms(now)).await {
        Ok((old, new)) => {
            let record = LedgerRecord {
                reason: Some(format!(
                    "ledger checkpoint key rotated, requested by {by}: {old} retired, {new} signs from the next checkpoint"
                )),
                ..LedgerRecord::bare(EntryKind::Ca, now)
            };
            if let Err(e) = state.ledger.append(record).await {
                tracing::error!(error = %e, %by, "cannot record the ledger key rotation");
            }
            Json(vec![
                format!("retired {old}"),
                format!("signing with {new}"),
            ])
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot rotate the ledger key");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot rotate the ledger key: {e}\n"),
            )
                .into_response()
        }
    }
}

/// `POST /v1/ca/rotate/{intermediate|root|ledger-key}`: what `idmint ca rotate` calls.
async fn rotate_ca(
    State(state): State<AdminState>,
    Extension(Actor(by)): Extension<Actor>,
    Path(target): Path<String>,
) -> Response {
    use crate::ca::rotate::Target;
    let target_name = target.clone();
    let target = match target.as_str() {
        "intermediate" => Target::Intermediate,
        "root" => Target::Root,
        "ledger-key" => return rotate_ledger_key(&state, &by).await,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "nothing called {other:?} to rotate; say intermediate, root or ledger-key\n"
                ),
            )
                .into_response()
        }
    };
    let Some(control) = &state.ca_control else {
        return (
            StatusCode::CONFLICT,
            "this CA is in upstream mode: replace its files to rotate it\n",
        )
            .into_response();
    };
    match control.rotate(target).await {
        Ok(done) => {
            // Each step is recorded as it is taken; this says who asked for them.
            let record = LedgerRecord {
                reason: Some(format!(
                    "rotation of the {} requested by {by}: {}",
                    target_name,
                    done.join("; ")
                )),
                ..LedgerRecord::bare(EntryKind::Ca, state.clock.now())
            };
            if let Err(e) = state.ledger.append(record).await {
                tracing::error!(error = %e, %by, "cannot record who rotated the CA");
            }
            Json(done).into_response()
        }
        Err(why) => {
            let code = match why {
                ControlError::NotLeader | ControlError::RootRotationUnderWay { .. } => {
                    StatusCode::CONFLICT
                }
                ControlError::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, format!("{why}\n")).into_response()
        }
    }
}

/// How many policies are in force.
fn policy_counts(policies: &Policies, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP idmint_policies_in_force Container-to-container policies in force."
    );
    let _ = writeln!(out, "# TYPE idmint_policies_in_force gauge");
    let _ = writeln!(out, "idmint_policies_in_force {}", policies.count());
}

/// Seconds until the signing intermediate and the soonest-expiring root in the bundle expire.
fn ca_expiry(ca: &CertificateAuthority, now: time::OffsetDateTime, out: &mut String) {
    use std::fmt::Write;
    let left = |t: time::OffsetDateTime| (t - now).whole_seconds();
    let root = ca
        .roots()
        .iter()
        .map(|r| left(r.not_after))
        .min()
        .unwrap_or(0);
    let _ = writeln!(out, "# HELP idmint_ca_seconds_to_expiry Seconds until the signing intermediate, and the first root in the trust bundle, expire.");
    let _ = writeln!(out, "# TYPE idmint_ca_seconds_to_expiry gauge");
    let _ = writeln!(
        out,
        "idmint_ca_seconds_to_expiry{{role=\"intermediate\"}} {}",
        left(ca.intermediate().not_after)
    );
    let _ = writeln!(out, "idmint_ca_seconds_to_expiry{{role=\"root\"}} {root}");
}
