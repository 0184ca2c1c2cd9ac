//! `idmint revoke`: takes certificates back before they expire, through the running service.

use anyhow::Result;
use clap::{ArgGroup, Args};

use crate::admin::revoke::RevokeJson;
use crate::config::Config;
use crate::server::revocations::Outcome;

/// What to revoke (exactly one) and why.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).multiple(false)
    .args(["serial", "instance", "app", "cell"])))]
pub struct RevokeArgs {
    /// One certificate, by serial (hex, colons allowed).
    #[arg(long)]
    serial: Option<String>,
    /// Every live certificate of an instance; its agent gets a new one with a new key at once.
    #[arg(long)]
    instance: Option<String>,
    /// Every live certificate of an app, and no new one for it.
    #[arg(long)]
    app: Option<String>,
    /// Every live certificate issued on a cell, its own credential included, and no new one.
    #[arg(long)]
    cell: Option<String>,
    /// Why: unspecified, key-compromise, affiliation-changed, superseded,
    /// cessation-of-operation or privilege-withdrawn.
    #[arg(long)]
    reason: String,
}

pub async fn run(args: RevokeArgs, config: Config) -> Result<()> {
    let request = RevokeJson {
        serial: args.serial,
        instance_guid: args.instance,
        app_guid: args.app,
        cell_id: args.cell,
        reason: args.reason,
    };
    // Checked here too, so that a typo is named before anything is sent.
    let (target, _) = request.parse().map_err(anyhow::Error::msg)?;
    let body = serde_json::to_string(&request)?;
    let answer =
        super::admin_client::request(&config.admin, "POST", "/v1/revoke", Some(&body)).await?;
    let outcome: Outcome = serde_json::from_str(&answer)?;
    match (outcome.revoked.len(), outcome.newly_refused) {
        (0, None | Some(false)) => println!("{target}: nothing new to revoke (revoked already)"),
        (n, refused) => {
            println!(
                "{target}: revoked {n} certificate(s) (ledger entry {})",
                outcome.ledger_seq.unwrap_or_default()
            );
            for serial in &outcome.revoked {
                println!("  {serial}");
            }
            if refused == Some(true) {
                println!("{target} gets no certificate from now on");
            }
        }
    }
    Ok(())
}
