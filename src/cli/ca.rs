//! `idmint ca …`

use anyhow::{bail, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use super::table;
use crate::app;
use crate::ca::{self, CaCert, Init, Mode};
use crate::config::Config;
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Show the roots and intermediate(s): fingerprints, validity, state.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create the self-signed root and intermediate if the store has none.
    Init,
}

pub async fn run(cmd: CaCommand, config: Config) -> Result<()> {
    match cmd {
        CaCommand::Show { json } => {
            let store = Store::open(&config.store, false).await?;
            let ca = ca::load(
                config.ca.clone(),
                &store,
                Init::MustExist,
                OffsetDateTime::now_utc(),
            )
            .await?;
            let certs: Vec<&CaCert> = ca.roots().iter().chain(ca.chain()).collect();
            if json {
                let mode = match &config.ca.mode {
                    Mode::SelfSigned => "self-signed",
                    Mode::Upstream(_) => "upstream",
                };
                let out = serde_json::json!({
                    "mode": mode,
                    "trust_domain": config.ca.trust_domain.as_str(),
                    "signing_key": ca.key_description(),
                    "certificates": certs.iter().map(|c| serde_json::json!({
                        "role": c.role,
                        "state": "active",
                        "subject": c.subject,
                        "sha256_fingerprint": c.fingerprint,
                        "not_before": c.not_before.unix_timestamp(),
                        "not_after": c.not_after.unix_timestamp(),
                        "pem": c.pem(),
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    vec![
                        c.role.as_str().to_string(),
                        "active".into(),
                        c.subject.clone(),
                        c.fingerprint.clone(),
                        table::time_text(c.not_after.unix_timestamp()),
                    ]
                })
                .collect();
            table::print(
                &[
                    "ROLE",
                    "STATE",
                    "SUBJECT",
                    "SHA-256 FINGERPRINT",
                    "NOT AFTER",
                ],
                &rows,
            );
            println!("signing key: {}", ca.key_description());
            Ok(())
        }
        CaCommand::Init => {
            if config.ca.mode != Mode::SelfSigned {
                bail!("`ca init` creates a self-signed CA; ca.mode is \"upstream\", whose CA comes from its files");
            }
            if config.store.url.starts_with("sqlite://") {
                app::ensure_writable_dir(&config.data_dir)?;
            }
            let store = Store::open(&config.store, true).await?;
            let (ca, created) =
                ca::init_self_signed(config.ca.clone(), &store, OffsetDateTime::now_utc()).await?;
            let verb = if created {
                "created"
            } else {
                "already initialised"
            };
            println!(
                "CA {verb}: root {} / intermediate {}",
                ca.roots()[0].fingerprint,
                ca.intermediate().fingerprint
            );
            store.close().await;
            Ok(())
        }
    }
}
