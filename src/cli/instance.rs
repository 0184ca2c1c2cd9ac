//! `idmint instance …`: register, list and deregister app instances on the running service,
//! through its admin HTTP API.

use std::net::IpAddr;

use anyhow::Result;
use clap::Subcommand;

use super::admin_client::request;
use super::table;
use crate::admin::instances::{InstanceJson, LOCAL_CELL};
use crate::config::Config;
use crate::ids::{CellId, Guid};

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Register an app instance; prints the SDS socket its sidecar connects to.
    Register {
        /// Instance GUID.
        #[arg(long)]
        instance_guid: Guid,
        /// App GUID: the sidecar's SPIFFE ID is the app's.
        #[arg(long)]
        app_guid: Guid,
        /// Space GUID.
        #[arg(long)]
        space_guid: Option<Guid>,
        /// Org GUID.
        #[arg(long)]
        org_guid: Option<Guid>,
        /// Container IP.
        #[arg(long)]
        ip: Option<IpAddr>,
        /// The cell it runs on.
        #[arg(long, default_value = LOCAL_CELL)]
        cell_id: CellId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List registered instances.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deregister an instance: its SDS socket and streams close.
    Deregister {
        /// Instance GUID.
        instance_guid: Guid,
    },
}

pub async fn run(cmd: InstanceCommand, config: Config) -> Result<()> {
    let admin = &config.admin;
    match cmd {
        InstanceCommand::Register {
            instance_guid,
            app_guid,
            space_guid,
            org_guid,
            ip,
            cell_id,
            json,
        } => {
            let body = InstanceJson {
                instance_guid: instance_guid.to_string(),
                app_guid: app_guid.to_string(),
                space_guid: space_guid.map(|g| g.to_string()),
                org_guid: org_guid.map(|g| g.to_string()),
                cell_id: Some(cell_id.to_string()),
                ip: ip.map(|ip| ip.to_string()),
                ..Default::default()
            };
            let text = request(
                admin,
                "POST",
                "/v1/instances",
                Some(&serde_json::to_string(&body)?),
            )
            .await?;
            let shown: InstanceJson = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                match &shown.sds_socket {
                    Some(socket) => println!("{socket}"),
                    None => println!(
                        "registered {} on cell {}; its SDS socket is on that cell's agent, not here",
                        shown.instance_guid,
                        shown.cell_id.as_deref().unwrap_or("?")
                    ),
                }
            }
            Ok(())
        }
        InstanceCommand::List { json } => {
            let text = request(admin, "GET", "/v1/instances", None).await?;
            let all: Vec<InstanceJson> = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|i| {
                    vec![
                        i.instance_guid.clone(),
                        i.cell_id.clone().unwrap_or_default(),
                        i.ip.clone().unwrap_or_default(),
                        i.spiffe_id.clone().unwrap_or_default(),
                        i.sds_socket.clone().unwrap_or_default(),
                        i.serial.clone().unwrap_or_else(|| "(none yet)".into()),
                        i.not_after.clone().unwrap_or_default(),
                        match (&i.next_renewal, &i.renewal_error) {
                            (Some(t), Some(e)) => format!("{t} (retry; last: {e})"),
                            (Some(t), None) => t.clone(),
                            (None, _) => String::new(),
                        },
                    ]
                })
                .collect();
            table::print(
                &[
                    "INSTANCE",
                    "CELL",
                    "IP",
                    "SPIFFE ID",
                    "SDS SOCKET",
                    "SERIAL",
                    "EXPIRES",
                    "NEXT RENEWAL",
                ],
                &rows,
            );
            Ok(())
        }
        InstanceCommand::Deregister { instance_guid } => {
            request(
                admin,
                "DELETE",
                &format!("/v1/instances/{instance_guid}"),
                None,
            )
            .await?;
            println!("deregistered {instance_guid}");
            Ok(())
        }
    }
}
