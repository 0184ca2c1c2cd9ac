//! `idmint policy …`: container-to-container policies kept by idmint, and the enforcement
//! modes, on the running service through its admin HTTP API.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::admin_client::request;
use super::table;
use crate::admin::policies::{Changed, ModeJson, ModesJson};
use crate::config::Config;
use crate::ids::Guid;
use crate::policy::{
    parse_policy_server_answer, policy_list_json, Mode, PortRange, Protocol, Source,
};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Allow an app's instances to reach another app's (as `cf add-network-policy`).
    Add(PolicyArgs),
    /// Withdraw a policy added before (the same source, destination, protocol and ports).
    Remove(PolicyArgs),
    /// List the policies in force.
    List {
        /// Only the policies naming this app, as source or destination.
        #[arg(long)]
        app: Option<Guid>,
        /// Print the policy server's JSON format.
        #[arg(long)]
        json: bool,
    },
    /// Show or switch enforcement modes: `trust-domain` (any app of the trust domain) or
    /// `policy` (only the apps policies allow).
    #[command(subcommand)]
    Mode(ModeCommand),
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The app that opens connections (its GUID), or a workload of a federated trust domain
    /// (its SPIFFE ID).
    #[arg(long)]
    source: Source,
    /// The app that accepts them.
    #[arg(long)]
    destination: Guid,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    protocol: Protocol,
    /// A port (8080) or a range (8080-8090) of the destination.
    #[arg(long, default_value = "8080", value_parser = parse_ports)]
    port: PortRange,
}

#[derive(Subcommand, Debug)]
pub enum ModeCommand {
    /// Set the mode of the foundation, or of one space or app.
    Set {
        /// trust-domain or policy.
        mode: Mode,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Clear a mode set before, so the wider one applies (for the foundation: the config's
    /// policy.default_mode).
    Clear {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List the modes set.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The foundation when neither is given.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct ScopeArgs {
    /// Only this space's apps (those without a mode of their own).
    #[arg(long)]
    space: Option<Guid>,
    /// Only this app.
    #[arg(long)]
    app: Option<Guid>,
}

impl ScopeArgs {
    fn json(&self, mode: Option<Mode>) -> ModeJson {
        let (scope, id) = match (&self.space, &self.app) {
            (Some(s), _) => ("space", Some(s.to_string())),
            (_, Some(a)) => ("app", Some(a.to_string())),
            _ => ("foundation", None),
        };
        ModeJson {
            scope: scope.into(),
            id,
            mode,
        }
    }
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    let number = |p: &str| {
        p.trim()
            .parse::<i64>()
            .map_err(|_| format!("{p:?} is not a port number"))
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(s)?, number(s)?),
    };
    PortRange::new(start, end).map_err(|e| e.to_string())
}

pub async fn run(cmd: PolicyCommand, config: Config) -> Result<()> {
    let admin = &config.admin;
    match cmd {
        PolicyCommand::Add(p) => {
            change(admin, "/v1/policies", p, "added", "in force already").await
        }
        PolicyCommand::Remove(p) => {
            change(admin, "/v1/policies/delete", p, "removed", "not in force").await
        }
        PolicyCommand::List { app, json } => {
            let path = match &app {
                Some(a) => format!("/v1/policies?app={a}"),
                None => "/v1/policies".into(),
            };
            let text = request(admin, "GET", &path, None).await?;
            if json {
                println!("{}", text.trim_end());
                return Ok(());
            }
            let policies = parse_policy_server_answer(text.as_bytes())
                .context("unreadable answer from the admin API")?;
            let rows: Vec<Vec<String>> = policies
                .iter()
                .map(|p| {
                    vec![
                        p.source.to_string(),
                        p.destination.to_string(),
                        p.protocol.to_string(),
                        p.ports.to_string(),
                    ]
                })
                .collect();
            table::print(&["SOURCE", "DESTINATION", "PROTOCOL", "PORTS"], &rows);
            Ok(())
        }
        PolicyCommand::Mode(ModeCommand::Set { mode, scope }) => {
            set_mode(admin, scope.json(Some(mode))).await
        }
        PolicyCommand::Mode(ModeCommand::Clear { scope }) => {
            set_mode(admin, scope.json(None)).await
        }
        PolicyCommand::Mode(ModeCommand::List { json }) => {
            let text = request(admin, "GET", "/v1/policy-modes", None).await?;
            if json {
                println!("{}", text.trim_end());
                return Ok(());
            }
            let modes: ModesJson = serde_json::from_str(&text)?;
            let mut rows = vec![vec![
                "default".to_string(),
                String::new(),
                modes.default.to_string(),
            ]];
            rows.extend(modes.set.iter().map(|m| {
                vec![
                    m.scope.clone(),
                    m.id.clone().unwrap_or_default(),
                    m.mode.map(|m| m.to_string()).unwrap_or_default(),
                ]
            }));
            table::print(&["SCOPE", "ID", "MODE"], &rows);
            Ok(())
        }
    }
}

async fn change(
    admin: &crate::config::AdminSettings,
    path: &str,
    p: PolicyArgs,
    did: &str,
    already: &str,
) -> Result<()> {
    let policy = crate::policy::Policy {
        source: p.source,
        destination: p.destination,
        protocol: p.protocol,
        ports: p.port,
    };
    let mut body = policy_list_json([&policy]);
    // The external form carries no count.
    body.as_object_mut()
        .expect("an object")
        .remove("total_policies");
    let text = request(admin, "POST", path, Some(&body.to_string())).await?;
    let changed: Changed = serde_json::from_str(&text)?;
    if changed.changed > 0 {
        println!("{did}: {policy}");
    } else {
        println!("{already}: {policy}");
    }
    Ok(())
}

async fn set_mode(admin: &crate::config::AdminSettings, body: ModeJson) -> Result<()> {
    let text = request(
        admin,
        "PUT",
        "/v1/policy-modes",
        Some(&serde_json::to_string(&body)?),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    let what = match (&body.id, body.mode) {
        (Some(id), Some(m)) => format!("{} {id}: {m}", body.scope),
        (None, Some(m)) => format!("foundation: {m}"),
        (Some(id), None) => format!("{} {id}: cleared", body.scope),
        (None, None) => "foundation: cleared (policy.default_mode applies)".into(),
    };
    if answer["changed"] == true {
        println!("{what}");
    } else {
        println!("unchanged, {what}");
    }
    Ok(())
}
