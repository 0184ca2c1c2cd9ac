//! `idmint bench …`: which harness of [`crate::bench`] to run, and with what.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use crate::bench;
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Issue certificates from CSRs through the service path, ledger durable on SQLite.
    Issue {
        /// How many certificates.
        #[arg(long, default_value_t = 40_000)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Through the server API over mutual TLS, from two agents' cell credentials, instead
        /// of in-process.
        #[arg(long)]
        remote: bool,
    },
    /// Serve K instances' SDS streams from one agent and push a trust bundle change to all.
    Sds {
        /// How many instances (each with a ROOTCA and a default stream).
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
    /// N instances with short-lived certificates renewing continuously on one agent.
    Renew {
        /// How many instances.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// Certificate lifetime (renewed at half of it, ±10%).
        #[arg(long, default_value = "20s")]
        ttl: crate::ids::Ttl,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The simulated sidecars of `bench sds`, run as a child process.
    #[command(hide = true)]
    SdsClients {
        /// How many sockets to connect to.
        #[arg(long)]
        count: usize,
        /// The directory of SDS sockets.
        #[arg(long)]
        sockets_dir: std::path::PathBuf,
    },
}

pub async fn run(cmd: BenchCommand, config: Config) -> Result<()> {
    match cmd {
        BenchCommand::Issue {
            count,
            concurrency,
            remote: false,
        } => bench::issue::run(config, count, concurrency).await,
        BenchCommand::Issue {
            count,
            concurrency,
            remote: true,
        } => bench::remote::run(config, count, concurrency).await,
        BenchCommand::Sds { instances } => bench::sds::run(config, instances).await,
        BenchCommand::Renew {
            instances,
            ttl,
            seconds,
        } => bench::renew::run(config, instances, ttl, Duration::from_secs(seconds)).await,
        BenchCommand::SdsClients { count, sockets_dir } => {
            bench::sds::clients(sockets_dir, count).await
        }
    }
}
