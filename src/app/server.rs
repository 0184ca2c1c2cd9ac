//! `idmint server`: the CA, the ledger and the placement registry, serving the server API to
//! agents on other machines over mutual TLS, and the admin HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;

use super::Runtime;
use crate::admin::listener::{AdminListener, LocalSocket};
use crate::admin::{self, AdminState};
use crate::ca::maintenance::{CaControl, Maintenance};
use crate::ca::upstream_watch::UpstreamWatch;
use crate::ca::{Init, Mode, Principal};
use crate::config::Config;
use crate::sds::SdsMetrics;
use crate::server::api_tls::ApiTls;
use crate::server::bundle_endpoint::{self, BundleSource};
use crate::server::fleet::FleetReports;
use crate::server::grpc::{self, IdentityApi};

/// How the server API is offered.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The DNS name agents use for this server; its certificate carries it.
    pub name: String,
    /// Whether a cell may register and deregister instances on itself.
    pub cells_register_own: bool,
}

/// A running server: what it serves and where.
pub struct Server {
    /// The domain it runs.
    pub rt: Runtime,
    /// Where the server API listens.
    pub api_addr: SocketAddr,
    /// Where the admin HTTP API listens.
    pub admin_addr: SocketAddr,
}

/// Starts the server role: store, CA, ledger, the server API, CA maintenance and admin HTTP.
pub async fn start(config: Config, api: ApiOptions) -> Result<Server> {
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    // The sidecars' acknowledgements, as every server's agents report them.
    let reports = FleetReports::new(rt.store().clone(), rt.clock.clone());
    let admin = bind_admin(&rt.config).await?;
    let (api_addr, admin_tls) = start_api(&mut rt, &api, Some(reports.clone())).await?;
    let (fleet, follow) = reports.follow(
        rt.ca.clone(),
        rt.config.server.agent_ack_grace,
        rt.shutdown_token(),
    );
    rt.spawn("sidecar acknowledgements", move |_| follow);
    let ca_control = start_ca_maintenance(&mut rt, fleet)?;
    let state = AdminState {
        ca: rt.ca.clone(),
        audit: rt.audit.clone(),
        registry: rt.registry.clone(),
        policies: rt.policies.clone(),
        policy_polls: rt.policy_polls.clone(),
        agent: None,
        sds_metrics: Arc::new(SdsMetrics::default()),
        ca_control,
        clock: rt.clock.clone(),
        ledger: rt.issuance.ledger().clone(),
        refusals: Default::default(),
        limits: rt.issuance.limits().cloned(),
        max_body: rt.config.admin.max_body,
        log: rt.log.clone(),
        log_keys: rt.log_keys.clone(),
        revocations: rt.revocations.clone(),
        federation: rt.federation.clone(),
    };
    let admin_addr = start_admin(&mut rt, admin, admin_tls, state)?;
    Ok(Server {
        rt,
        api_addr,
        admin_addr,
    })
}

/// Serves the server API with a certificate for `api.name` (and the listening address when it
/// is a specific one). Returns where it listens, and the TLS the admin API offers with the
/// same certificate.
pub(crate) async fn start_api(
    rt: &mut Runtime,
    api: &ApiOptions,
    fleet: Option<FleetReports>,
) -> Result<(SocketAddr, AdminTls)> {
    let listen = api.listen;
    let ips = if listen.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![listen.ip()]
    };
    // Listen first: a taken port is refused before anything is issued.
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} for the server API (set server.listen)")
    })?;
    let addr = listener.local_addr()?;
    // Renewed while the server runs, and re-issued by every start.
    let tls = ApiTls::enroll(
        rt.issuance.clone(),
        Principal::Server {
            dns: vec![api.name.clone()],
            ips,
        },
        rt.config.agent.renewal,
        rt.clock.clone(),
    )
    .await?;
    let admin_tls = tls.admin_configs();
    start_bundle_endpoint(rt, tls.bundle_configs()).await?;
    let service = IdentityApi::new(
        rt.issuance.clone(),
        rt.registry.clone(),
        rt.policies.clone(),
        rt.ca.clone(),
        api.cells_register_own,
    );
    let service = match fleet {
        Some(fleet) => service.with_fleet_reports(fleet),
        None => service,
    };
    let service = service.with_federation(rt.federation.watch());
    let federation = rt.federation.clone();
    rt.spawn("federation", move |token| federation.run(token));
    rt.spawn("server API", move |token| async move {
        if let Err(e) = grpc::serve(listener, service, tls, token).await {
            tracing::error!(error = %e, "server API failed");
        }
    });
    Ok((addr, admin_tls))
}

/// Serves the SPIFFE bundle endpoint on each profile configured: `https_spiffe` with the
/// server's own certificate as `spiffe_tls` follows it, `https_web` with the configured one.
async fn start_bundle_endpoint(
    rt: &mut Runtime,
    spiffe_tls: watch::Receiver<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let settings = rt.config.bundle_endpoint.clone();
    let source = BundleSource::new(
        rt.ca.clone(),
        rt.jwt.clone(),
        rt.store().clone(),
        rt.clock.clone(),
        settings.refresh_hint,
    );
    if let Some(listen) = settings.spiffe_listen {
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!(
                "cannot listen on {listen} for the bundle endpoint (bundle_endpoint.spiffe_listen)"
            )
        })?;
        tracing::info!(address = %listener.local_addr()?, "SPIFFE bundle endpoint (https_spiffe)");
        let source = source.clone();
        rt.spawn("bundle endpoint https_spiffe", move |token| {
            bundle_endpoint::serve(listener, spiffe_tls, source, token)
        });
    }
    if let Some(web) = settings.web {
        let config = bundle_endpoint::web_config(&web)
            .map_err(|e| anyhow::anyhow!("bundle_endpoint.web_cert_file: {e}"))?;
        let listener = TcpListener::bind(web.listen).await.with_context(|| {
            format!(
                "cannot listen on {} for the bundle endpoint (bundle_endpoint.web_listen)",
                web.listen
            )
        })?;
        tracing::info!(address = %listener.local_addr()?, "SPIFFE bundle endpoint (https_web)");
        let (tx, rx) = watch::channel(config);
        rt.spawn("bundle endpoint web certificate", move |token| {
            bundle_endpoint::follow_web_cert(web, tx, token)
        });
        rt.spawn("bundle endpoint https_web", move |token| {
            bundle_endpoint::serve(listener, rx, source, token)
        });
    }
    Ok(())
}

/// The admin API's TLS configuration, following the server's certificate.
pub(crate) type AdminTls = watch::Receiver<Arc<rustls::ServerConfig>>;

/// The admin API's address (`admin.listen`) and socket (`admin.socket`), bound before anything
/// else starts so that a taken address or an unsafe socket directory is refused early.
pub(super) struct AdminBinding {
    tcp: TcpListener,
    socket: Option<LocalSocket>,
}

/// Binds the admin API's address and socket.
pub(super) async fn bind_admin(config: &Config) -> Result<AdminBinding> {
    let listen = config.admin.listen;
    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for admin HTTP (set admin.listen)"))?;
    let socket = match &config.admin.socket {
        Some(path) => Some(LocalSocket::bind(path)?),
        None => None,
    };
    Ok(AdminBinding { tcp, socket })
}

/// Serves the admin HTTP API on `binding`, TLS with `tls`. Returns where it listens.
pub(super) fn start_admin(
    rt: &mut Runtime,
    binding: AdminBinding,
    tls: AdminTls,
    state: AdminState,
) -> Result<SocketAddr> {
    let addr = binding.tcp.local_addr()?;
    let settings = rt.config.ca.clone();
    let listener = AdminListener::new(binding.tcp, binding.socket, tls, settings);
    rt.spawn("admin http", |token| admin::serve(listener, state, token));
    Ok(addr)
}

/// Rotates the self-signed CA on schedule, or takes up replaced upstream files; either way a
/// new root waits until `fleet` (the lowest bundle generation the sidecars acknowledged) has it.
pub(super) fn start_ca_maintenance(
    rt: &mut Runtime,
    fleet: watch::Receiver<Option<u64>>,
) -> Result<Option<CaControl>> {
    let ledger = rt.issuance.ledger().clone();
    if let Mode::Upstream(files) = rt.config.ca.mode.clone() {
        let watch = UpstreamWatch::new(rt.ca.clone(), files, ledger, fleet);
        let clock = rt.clock.clone();
        rt.spawn("upstream CA files", move |token| watch.run(clock, token));
        return Ok(None);
    }
    let maintenance = Maintenance::new(rt.ca.clone(), rt.store().clone(), fleet, rt.clock.clone())?;
    let Some(maintenance) = maintenance else {
        return Ok(None);
    };
    let maintenance = maintenance.woken_by(rt.ca_changed());
    let (control, task) = maintenance.start(rt.shutdown_token());
    rt.spawn("CA maintenance", move |_| task);
    Ok(Some(control))
}
