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
        /// Through the server API over mutual TLS, from four agents' cell credentials, instead
        /// of in-process.
        #[arg(long)]
        remote: bool,
        /// Where the ledger is durable: a fresh SQLite file, or a fresh database on the
        /// PostgreSQL of --postgres-url (dropped afterwards).
        #[arg(long, value_enum, default_value = "sqlite")]
        store: bench::StoreKind,
        /// The PostgreSQL server for --store postgres (a user that may create databases).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// With --remote: how many servers share the store (several need --store postgres).
        #[arg(long, default_value_t = 1)]
        servers: usize,
    },
    /// Issue JWT-SVIDs through the service path, ledger durable on SQLite, beside the raw
    /// ES256 signing ceiling.
    Jwt {
        /// How many JWT-SVIDs.
        #[arg(long, default_value_t = 40_000)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Kill (SIGKILL) the server an agent uses, again and again, and time until its next
    /// certificate: two servers on a fresh PostgreSQL database.
    Failover {
        /// How many kills.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// The PostgreSQL server (a user that may create databases).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
    },
    /// Serve K instances' SDS streams from one agent and push a trust bundle change to all.
    Sds {
        /// How many instances (each with a ROOTCA and a default stream).
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// Measure a revocation reaching every sidecar (its CRLs in every ROOTCA) instead of a
        /// new root.
        #[arg(long)]
        revoke: bool,
        /// Apps on the SPIFFE Workload API (one FetchX509SVID stream each) instead of sidecars.
        #[arg(long)]
        workload_api: bool,
    },
    /// One agent's provider sidecars under 100,000 c2c policies: loading them, and one change
    /// reaching exactly the sidecars it concerns.
    Policy {
        /// How many instances on the agent.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// How many apps they belong to (about 50 sources each, one with 150).
        #[arg(long, default_value_t = 2_000)]
        apps: usize,
        /// How many policy changes to time (half additions, half removals).
        #[arg(long, default_value_t = 40)]
        changes: usize,
    },
    /// The agent memory probe of `bench policy`, run as a child process.
    #[command(hide = true)]
    PolicyMemory {
        /// A cell's allow lists, as the server sends them.
        #[arg(long)]
        wire: std::path::PathBuf,
    },
    /// The simulated provider sidecars of `bench policy`, run as a child process.
    #[command(hide = true)]
    PolicySidecars {
        /// A file listing their sockets, one per line.
        #[arg(long)]
        sockets: std::path::PathBuf,
    },
    /// The verifiable log over a ledger of N entries: following it as a tree, inclusion
    /// proofs, and `audit verify`.
    Log {
        /// How many ledger entries.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// How many inclusion proofs of random entries to time.
        #[arg(long, default_value_t = 1_000)]
        proofs: usize,
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
        /// Open one Workload API FetchX509SVID stream on each instead of SDS streams.
        #[arg(long)]
        workload_api: bool,
    },
}

pub async fn run(cmd: BenchCommand, config: Config) -> Result<()> {
    match cmd {
        BenchCommand::Issue {
            count,
            concurrency,
            remote: false,
            store,
            postgres_url,
            servers,
        } => {
            anyhow::ensure!(servers == 1, "--servers is for --remote");
            bench::issue::run(config, count, concurrency, store, &postgres_url).await
        }
        BenchCommand::Issue {
            count,
            concurrency,
            remote: true,
            store,
            postgres_url,
            servers,
        } => bench::remote::run(config, count, concurrency, store, &postgres_url, servers).await,
        BenchCommand::Jwt { count, concurrency } => {
            bench::jwt::run(config, count, concurrency).await
        }
        BenchCommand::Failover {
            kills,
            postgres_url,
        } => bench::failover::run(config, kills, &postgres_url).await,
        BenchCommand::Sds {
            instances,
            revoke,
            workload_api,
        } => {
            let change = if revoke {
                bench::sds::Change::Revocation
            } else {
                bench::sds::Change::NewRoot
            };
            bench::sds::run(config, instances, change, clients(workload_api)).await
        }
        BenchCommand::Log { entries, proofs } => bench::log::run(entries, proofs).await,
        BenchCommand::Policy {
            instances,
            apps,
            changes,
        } => bench::policy::run(config, instances, apps, changes).await,
        BenchCommand::PolicyMemory { wire } => bench::policy::memory_probe(&wire),
        BenchCommand::PolicySidecars { sockets } => bench::policy::sidecars(&sockets).await,
        BenchCommand::Renew {
            instances,
            ttl,
            seconds,
        } => bench::renew::run(config, instances, ttl, Duration::from_secs(seconds)).await,
        BenchCommand::SdsClients {
            count,
            sockets_dir,
            workload_api,
        } => bench::sds::clients(sockets_dir, count, clients(workload_api)).await,
    }
}

fn clients(workload_api: bool) -> bench::sds::Clients {
    if workload_api {
        bench::sds::Clients::WorkloadApi
    } else {
        bench::sds::Clients::Sds
    }
}
