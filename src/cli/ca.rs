//! `idmint ca …`

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use super::table;
use crate::app;
use crate::ca::{self, CaCert, Init, Mode};
use crate::config::Config;
use crate::ids::CellId;
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
    /// Write development-only credentials (root, intermediate, cell client certificates, keys
    /// in the clear) to a directory: what `certs-dev/` holds. Never for production.
    DevCerts {
        /// Where to write them.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// A cell to make a client credential for; repeat for more.
        #[arg(long = "cell", value_name = "CELL_ID", default_values_t = [CellId::from_str("dev-cell-1").expect("valid cell id")])]
        cells: Vec<CellId>,
        /// Replace files that already exist (regenerating the set).
        #[arg(long)]
        replace: bool,
    },
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
        CaCommand::DevCerts {
            out_dir,
            cells,
            replace,
        } => dev_certs(&config, &out_dir, &cells, replace),
    }
}

fn dev_certs(
    config: &Config,
    dir: &std::path::Path,
    cells: &[CellId],
    replace: bool,
) -> Result<()> {
    let set = ca::dev_credentials(&config.ca, cells, OffsetDateTime::now_utc())?;
    let pair = |name: &str, p: &ca::PemPair, chain: &str| {
        [
            (format!("{name}.pem"), p.cert_pem.clone() + chain, 0o644),
            (format!("{name}.key"), p.key_pem.to_string(), 0o600),
        ]
    };
    let mut files: Vec<(String, String, u32)> = Vec::new();
    files.extend(pair("root", &set.root, ""));
    files.extend(pair("intermediate", &set.intermediate, ""));
    for (cell, p) in &set.cells {
        // A cell presents its certificate followed by the intermediate that signed it.
        files.extend(pair(&format!("cell-{cell}"), p, &set.intermediate.cert_pem));
    }
    std::fs::create_dir_all(dir)?;
    if !replace {
        if let Some((name, _, _)) = files.iter().find(|(name, _, _)| dir.join(name).exists()) {
            bail!(
                "{} already exists; pass --replace to regenerate the set",
                dir.join(name).display()
            );
        }
    }
    for (name, contents, mode) in &files {
        app::write_atomic(&dir.join(name), contents.as_bytes(), *mode)?;
    }
    println!(
        "wrote development-only credentials to {} (trust domain {}):",
        dir.display(),
        config.ca.trust_domain
    );
    for (name, _, _) in &files {
        println!("  {name}");
    }
    for (cell, _) in &set.cells {
        println!("  cell {cell}: {}", ca::cell_spiffe_id(&config.ca, cell));
    }
    Ok(())
}
