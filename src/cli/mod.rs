//! The `idmint` command line.

mod admin_client;
mod agent;
mod audit;
mod bench;
mod ca;
mod cell;
mod dev;
mod instance;
mod issue;
mod policy;
mod revoke;
mod role;
mod server;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{Config, Sources};

/// idmint: SPIFFE X.509 identities for Cloud Foundry apps, served to Envoy sidecars.
#[derive(Parser, Debug)]
#[command(name = "idmint", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Default: ./idmint.toml when it exists.
    #[arg(long, global = true, env = "IDMINT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set ca.leaf_ttl=30m (repeatable; wins over file and env).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<(String, String)>,
    /// Data directory (same as --set data_dir=DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service on embedded SQLite with a dev CA, in ./idmint-data by default.
    Dev,
    /// Inspect or initialise the certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run the server: CA, ledger and placements, serving agents over mutual TLS.
    Server(server::ServerArgs),
    /// Run a cell's agent against a server: keys, renewals, SDS and instance files.
    Agent(agent::AgentArgs),
    /// Issue a certificate for one app instance (operator use).
    Issue(issue::IssueArgs),
    /// Credentials for Diego cells.
    #[command(subcommand)]
    Cell(cell::CellCommand),
    /// Credentials for the admin API's roles: admin, auditor, orchestrator.
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// Search and show the issuance ledger.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Register, list and deregister app instances on the running service.
    #[command(subcommand)]
    Instance(instance::InstanceCommand),
    /// Container-to-container policies and enforcement modes on the running service.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Revoke a certificate, an instance's, an app's or a cell's, before they expire.
    Revoke(revoke::RevokeArgs),
    /// Validate the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure throughput against this machine's raw ceiling.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate idmint.toml + IDMINT_* + flags and print the effective config (secrets redacted).
    Check,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    Sources::parse_override(s).map_err(|e| e.to_string())
}

/// Every `--set` on the command line, in order, wherever it stands: clap keeps only those after
/// the subcommand when a global option is given on both sides of it, and an operator's
/// `idmint --set a=1 server --set b=2` means both. Clap has checked each already.
fn every_set(args: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--" => break,
            "--set" => args.next(),
            other => other.strip_prefix("--set=").map(str::to_string),
        };
        if let Some(pair) = value.and_then(|v| parse_override(&v).ok()) {
            found.push(pair);
        }
    }
    found
}

impl Cli {
    fn config(&self) -> Result<Config> {
        let mut overrides = Vec::new();
        if let Some(dir) = &self.data_dir {
            overrides.push(("data_dir".to_string(), dir.display().to_string()));
        }
        overrides.extend(self.overrides.iter().cloned());
        let sources = Sources {
            file: self.config.clone(),
            overrides,
        };
        Ok(Config::load(&sources)?)
    }
}

/// Parses the command line, runs the command, and maps failure to exit code 1.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.overrides = every_set(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let default_level = if matches!(
        cli.command,
        Command::Dev | Command::Server(_) | Command::Agent(_)
    ) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDMINT_LOG")
        // PostgreSQL's notices (a migration table that exists already, at every start) are
        // not news.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "{default_level},sqlx::postgres::notice=warn"
            ))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = cli.config()?;
    match cli.command {
        Command::Dev => dev::run(config).await,
        Command::Ca(cmd) => ca::run(cmd, config).await,
        Command::Issue(args) => issue::run(args, config).await,
        Command::Server(args) => server::run(args, config).await,
        Command::Agent(args) => agent::run(args, config).await,
        Command::Cell(cmd) => cell::run(cmd, config).await,
        Command::Role(cmd) => role::run(cmd, config).await,
        Command::Audit(cmd) => audit::run(cmd, config).await,
        Command::Instance(cmd) => instance::run(cmd, config).await,
        Command::Policy(cmd) => policy::run(cmd, config).await,
        Command::Revoke(args) => revoke::run(args, config).await,
        Command::Config(ConfigCommand::Check) => {
            match &config.file {
                Some(f) => println!("# config OK (file {}, environment, flags)", f.display()),
                None => println!("# config OK (no file; defaults, environment, flags)"),
            }
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Bench(cmd) => bench::run(cmd, config).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_counts_on_both_sides_of_the_subcommand_in_order() {
        let args = [
            "--set",
            "ca.leaf_ttl=1h",
            "server",
            "--set=admin.listen=127.0.0.1:1",
            "--listen",
            "x",
            "--set",
            "ca.leaf_ttl=2h",
            "--",
            "--set",
            "data_dir=y",
        ];
        let found = every_set(args.iter().map(|s| s.to_string()));
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ca.leaf_ttl", "1h"),
                ("admin.listen", "127.0.0.1:1"),
                ("ca.leaf_ttl", "2h")
            ]
        );
    }
}
