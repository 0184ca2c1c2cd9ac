//! `idmint agent`: the cell-local half; see [`crate::app::agent`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::app::agent::AgentOptions;
use crate::app::{self, stop_signal};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// A server's API, `https://host:port`. Repeat it for several servers; a host name with
    /// several addresses stands for a server at each. The agent spreads over them and moves
    /// to the next when its server fails.
    #[arg(
        long = "server",
        value_name = "URL",
        default_value = "https://127.0.0.1:8471"
    )]
    servers: Vec<String>,
    /// The name every server's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Where `idmint cell enroll` wrote this cell's cell.pem, cell.key and bundle.pem.
    #[arg(long, value_name = "DIR")]
    credential_dir: PathBuf,
    /// When the credential is not there yet, wait for it (answering /healthz with what is
    /// missing) instead of stopping: for agents deployed before their cell is enrolled.
    #[arg(long)]
    wait_for_credential: bool,
}

pub async fn run(args: AgentArgs, config: Config) -> Result<()> {
    let stop = stop_signal()?;
    tokio::pin!(stop);
    let opts = AgentOptions {
        servers: args.servers,
        server_name: args.server_name,
        credential_dir: args.credential_dir,
        wait_for_credential: args.wait_for_credential,
    };
    let (sds_dir, instance_dir) = (
        config.agent.sds_dir.clone(),
        config.agent.instance_dir.clone(),
    );
    let Some(agent) = app::agent::start(config, &opts, stop.as_mut()).await? else {
        return Ok(());
    };
    println!(
        "idmint agent: cell {}, servers {}",
        agent.cell,
        opts.servers.join(" ")
    );
    println!(
        "  cell credential     {} (until {})",
        opts.credential_dir.display(),
        super::table::rfc3339(agent.credential_not_after)
    );
    println!("  SDS sockets         {}", sds_dir.display());
    println!("  instance files      {}", instance_dir.display());
    println!("ready; Ctrl-C to stop");
    stop.await;
    agent.shutdown().await;
    Ok(())
}
