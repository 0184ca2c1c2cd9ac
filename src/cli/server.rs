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
    /// Where the server API listens.
    #[arg(long, default_value = "127.0.0.1:8471")]
    listen: SocketAddr,
    /// The DNS name agents use for this server; its certificate carries it.
    #[arg(long, default_value = "localhost")]
    name: String,
    /// Let a cell register and deregister instances on itself.
    #[arg(long)]
    cells_register_own: bool,
}

pub async fn run(args: ServerArgs, config: Config) -> Result<()> {
    let stop = stop_signal()?;
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let ips = if args.listen.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![args.listen.ip()]
    };
    // Renewed while the server runs, and re-issued by every start.
    let tls = ApiTls::enroll(
        rt.issuance.clone(),
        Principal::Server {
            dns: vec![args.name.clone()],
            ips,
        },
    )
    .await?;
    let api_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the server API", args.listen))?;
    let api_addr = api_listener.local_addr()?;
    let api = IdentityApi::new(
        rt.issuance.clone(),
        rt.registry.clone(),
        rt.ca.clone(),
        args.cells_register_own,
    );
    rt.spawn("server API", move |token| async move {
        if let Err(e) = grpc::serve(api_listener, api, tls, token).await {
            tracing::error!(error = %e, "server API failed");
        }
    });

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
        if args.cells_register_own { "yes" } else { "no" }
    );
    println!("ready; Ctrl-C to stop");
    stop.await;
    rt.shutdown().await;
    Ok(())
}
