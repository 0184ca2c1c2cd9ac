//! `idmint server`: the CA, the ledger and the placement registry, serving the server API to
//! agents on other machines over mutual TLS, and the admin HTTP API.

use std::net::SocketAddr;

use anyhow::Result;
use clap::Args;

use crate::app::server::ApiOptions;
use crate::app::{self, stop_signal};
use crate::config::Config;

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
    let api = ApiOptions {
        listen: args.listen.unwrap_or(config.server.listen),
        name: args.name,
        cells_register_own: args.cells_register_own
            || config.server.cells_register_own.unwrap_or(false),
    };
    let server = app::server::start(config, api.clone()).await?;
    println!(
        "idmint server: trust domain {}",
        server.rt.config.ca.trust_domain
    );
    println!(
        "  server API          https://{}  (name {})",
        server.api_addr, api.name
    );
    println!(
        "  admin HTTP          {}  (open: /healthz, /metrics, /v1/bundle.pem, /v1/log/ checkpoint, key and hash tiles; the rest needs mutual TLS with a role credential, name {})",
        server.admin_addr, api.name
    );
    match &server.rt.config.admin.socket {
        Some(socket) => println!("  admin socket        {}", socket.display()),
        None => println!("  admin socket        off (admin.socket is empty)"),
    }
    println!(
        "  cells register own instances: {}",
        if api.cells_register_own { "yes" } else { "no" }
    );
    println!("ready; Ctrl-C to stop");
    stop.await;
    server.rt.shutdown().await;
    Ok(())
}
