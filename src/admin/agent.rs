//! The admin HTTP of `idmint agent`, on its own `admin.listen`: `/healthz` (ready once the agent
//! has its cell credential, the server's trust bundle and a connection to a server; it answers
//! from before the credential is there only with `--wait-for-credential`) and `/metrics` (its
//! connection, SDS and renewal counters).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::write_metric;
use crate::agent::remote::RemoteAuthority;
use crate::agent::Workloads;
use crate::clock::Clock;

/// What the agent's health and metrics are read from; filled in as the agent starts.
#[derive(Default)]
pub struct AgentHealth {
    /// The cell credential is loaded.
    pub credential: AtomicBool,
    /// The server's trust bundle stream has delivered the bundle.
    pub bundle: AtomicBool,
    /// The trust bundle stream to the server is open now.
    pub connected: AtomicBool,
    /// The served instances, once the agent runs.
    pub workloads: OnceLock<Arc<Workloads<RemoteAuthority>>>,
    /// The connection to the servers, once made.
    pub remote: OnceLock<RemoteAuthority>,
}

impl AgentHealth {
    /// What keeps the agent from being ready; empty when it is.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.credential.load(Ordering::Relaxed) {
            missing.push("this cell's credential (idmint cell enroll)");
        }
        if !self.connected.load(Ordering::Relaxed) {
            missing.push("a connection to the server");
        }
        if !self.bundle.load(Ordering::Relaxed) {
            missing.push("the server's trust bundle");
        }
        missing
    }
}

#[derive(Clone)]
struct AgentAdmin {
    health: Arc<AgentHealth>,
    clock: Clock,
}

/// Serves the agent's admin routes on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<AgentHealth>,
    clock: Clock,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AgentAdmin { health, clock });
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the agent's admin HTTP server failed");
    }
}

async fn healthz(State(admin): State<AgentAdmin>) -> Response {
    let missing = admin.health.missing();
    if missing.is_empty() {
        return "ok\n".into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: waiting for {}\n", missing.join(", ")),
    )
        .into_response()
}

async fn metrics(State(admin): State<AgentAdmin>) -> Response {
    let mut text = String::new();
    let ready = admin.health.missing().is_empty();
    let connected = admin.health.connected.load(Ordering::Relaxed);
    let out = &mut text;
    write_metric(
        out,
        "idmint_agent_ready",
        "gauge",
        "Whether the agent has its credential, the trust bundle and a connection to the server.",
        u8::from(ready),
    );
    write_metric(
        out,
        "idmint_agent_server_connected",
        "gauge",
        "Whether the agent's stream to an idmint server is open.",
        u8::from(connected),
    );
    if let Some(remote) = admin.health.remote.get() {
        write_metric(
            out,
            "idmint_agent_server_switches_total",
            "counter",
            "How often the agent moved to another idmint server.",
            remote.moves(),
        );
        let endpoint = format!(
            "idmint_agent_server_info{{endpoint=\"{}\"}}",
            remote.server()
        );
        write_metric(
            out,
            &endpoint,
            "gauge",
            "The idmint server the agent uses now.",
            1,
        );
    }
    if let Some(agent) = admin.health.workloads.get() {
        agent.render_metrics(admin.clock.now(), &mut text).await;
        super::write_limit_hits_header(&mut text);
        agent.metrics().render_limit_hits(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
