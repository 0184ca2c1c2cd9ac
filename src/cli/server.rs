//! `idmint server`: the CA, the ledger and the placement registry, serving the server API to
//! agents on other machines over mutual TLS, and the admin HTTP API on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::dev::{start_ca_maintenance, stop_signal};
use crate::admin::{self, AdminState};
use crate::app::Runtime;
use crate::ca::{Init, Principal};
use crate::config::Config;
use crate::sds::SdsMetrics;
use crate::server::api_tls::ApiTls;
use crate::server::grpc::{self, IdentityApi};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the server API listens [default: server.listen, 127.0.0.1:8471].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The DNS name agents use for this server; its certificate carries it.
    #[arg(long, default_value = "localhost")]
    name: String,
    /// Let a cell register and deregister instances on itself (server.cells_register_own;
    /// off by default here).
    #[arg(long)]
    cells_register_own: bool,
}

pub async fn run(args: ServerArgs, config: Config) -> Result<()> {
    let stop = stop_signal()?;
    let listen = args.listen.unwrap_or(config.server.listen);
    let cells_register_own =
        args.cells_register_own || config.server.cells_register_own.unwrap_or(false);
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let api_addr = start_api(&mut rt, listen, &args.name, cells_register_own).await?;

    // Agents do not report their sidecars' acknowledgements to the server yet, so the fleet
    // stays at "nothing acknowledged" and a new root signs after
    // `ca.root_activation_max_wait`. The value outlives its sender.
    let (_, fleet) = watch::channel(Some(0));
    let ca_control = start_ca_maintenance(&mut rt, fleet)?;
    let admin_listen = rt.config.admin.listen;
    let admin_listener = TcpListener::bind(admin_listen).await.with_context(|| {
        format!("cannot listen on {admin_listen} for admin HTTP (set admin.listen)")
    })?;
    let admin_addr = admin_listener.local_addr()?;
    let state = AdminState {
        ca: rt.ca.clone(),
        audit: rt.audit.clone(),
        registry: rt.registry.clone(),
        agent: None,
        sds_metrics: Arc::new(SdsMetrics::default()),
        ca_control,
    };
    rt.spawn("admin http", |token| {
        admin::serve(admin_listener, state, token)
    });

    println!("idmint server: trust domain {}", rt.config.ca.trust_domain);
    println!(
        "  server API          https://{api_addr}  (name {})",
        args.name
    );
    println!("  admin HTTP          http://{admin_addr}");
    println!(
        "  cells register own instances: {}",
        if cells_register_own { "yes" } else { "no" }
    );
    println!("ready; Ctrl-C to stop");
    stop.await;
    rt.shutdown().await;
    Ok(())
}

/// Serves the server API on `listen` with a certificate for `name` (and the listening address
/// when it is a specific one). Returns where it listens.
pub(super) async fn start_api(
    rt: &mut Runtime,
    listen: SocketAddr,
    name: &str,
    cells_register_own: bool,
) -> Result<SocketAddr> {
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
            dns: vec![name.to_string()],
            ips,
        },
    )
    .await?;
    let api = IdentityApi::new(
        rt.issuance.clone(),
        rt.registry.clone(),
        rt.ca.clone(),
        cells_register_own,
    );
    rt.spawn("server API", move |token| async move {
        if let Err(e) = grpc::serve(listener, api, tls, token).await {
            tracing::error!(error = %e, "server API failed");
        }
    });
    Ok(addr)
}
