//! `idmint ca …`

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use super::table;
use crate::app;
use crate::ca::{self, CaCert, Init, Mode};
use crate::clock::Clock;
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
    /// Rotate the running service's self-signed CA now. An intermediate signs at once; a root
    /// enters the trust bundle and signs once every connected sidecar has acknowledged it; a
    /// new ledger key signs from the next checkpoint (the retired one stays published).
    Rotate {
        /// `intermediate`, `root` or `ledger-key`.
        #[arg(value_parser = ["intermediate", "root", "ledger-key"])]
        target: String,
    },
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
        CaCommand::Show { json } => show(&config, json).await,
        CaCommand::Rotate { target } => {
            let done = super::admin_client::request(
                &config.admin,
                "POST",
                &format!("/v1/ca/rotate/{target}"),
                None,
            )
            .await?;
            let lines: Vec<String> = serde_json::from_str(&done)?;
            for line in lines {
                println!("{line}");
            }
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
                ca::init_self_signed(config.ca.clone(), &store, Clock::system().now()).await?;
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
    let set = ca::dev_credentials(&config.ca, cells, Clock::system().now())?;
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
        crate::files::write_atomic(&dir.join(name), contents.as_bytes(), *mode)?;
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
        println!(
            "  cell {cell}: {}",
            ca::Principal::Cell(cell.clone()).spiffe_id(&config.ca)
        );
    }
    Ok(())
}

/// One CA certificate as `ca show` prints it.
struct Shown {
    cert: CaCert,
    state: String,
    note: String,
}

async fn show(config: &Config, json: bool) -> Result<()> {
    let store = Store::open(&config.store, false).await?;
    let now = Clock::system().now();
    let ca = ca::load(config.ca.clone(), &store, Init::MustExist, now).await?;
    let shown = match &config.ca.mode {
        Mode::SelfSigned => stored(config, &store.ca_records().await?)?,
        Mode::Upstream(_) => ca
            .roots()
            .into_iter()
            .chain(ca.chain())
            .map(|cert| Shown {
                cert,
                state: "active".into(),
                note: "from the upstream files".into(),
            })
            .collect(),
    };
    let jwt_keys = store.jwt_keys().await?;
    store.close().await;
    let mode = match &config.ca.mode {
        Mode::SelfSigned => "self-signed",
        Mode::Upstream(_) => "upstream",
    };
    if json {
        let out = serde_json::json!({
            "mode": mode,
            "trust_domain": config.ca.trust_domain.as_str(),
            "signing_key": ca.key_description(),
            "signing_intermediate": ca.intermediate().fingerprint,
            "certificates": shown.iter().map(|s| serde_json::json!({
                "role": s.cert.role,
                "state": s.state,
                "note": s.note,
                "subject": s.cert.subject,
                "sha256_fingerprint": s.cert.fingerprint,
                "not_before": s.cert.not_before.unix_timestamp(),
                "not_after": s.cert.not_after.unix_timestamp(),
                "pem": s.cert.pem(),
            })).collect::<Vec<_>>(),
            "jwt_keys": jwt_keys.iter().map(|k| serde_json::json!({
                "kid": k.kid,
                "state": k.state,
                "created_at_ms": k.created_at_ms,
                "activated_at_ms": k.activated_at_ms,
                "retired_at_ms": k.retired_at_ms,
                "removed_at_ms": k.removed_at_ms,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|s| {
            vec![
                s.cert.role.as_str().to_string(),
                s.state.clone(),
                s.cert.fingerprint.clone(),
                table::time_text(s.cert.not_after.unix_timestamp()),
                s.note.clone(),
            ]
        })
        .collect();
    table::print(
        &["ROLE", "STATE", "SHA-256 FINGERPRINT", "NOT AFTER", "NOTE"],
        &rows,
    );
    println!("signing key: {}", ca.key_description());
    println!();
    if jwt_keys.is_empty() {
        println!("JWT-SVID signing keys: none yet (the server makes the first when it starts)");
    } else {
        let ms = |t: Option<i64>| t.map(|t| table::time_text(t / 1000)).unwrap_or_default();
        let rows: Vec<Vec<String>> = jwt_keys
            .iter()
            .map(|k| {
                vec![
                    k.kid.clone(),
                    k.state.clone(),
                    ms(Some(k.created_at_ms)),
                    ms(k.activated_at_ms),
                    ms(k.retired_at_ms.or(k.removed_at_ms)),
                ]
            })
            .collect();
        table::print(
            &[
                "JWT KEY ID",
                "STATE",
                "MADE",
                "SIGNS FROM",
                "RETIRED / REMOVED",
            ],
            &rows,
        );
    }
    Ok(())
}

/// Every stored CA certificate, newest last, with what it waits for.
fn stored(config: &Config, records: &[crate::store::CaRecord]) -> Result<Vec<Shown>> {
    use crate::ca::rotation::{activation_deadline, prune_time, CaView, State};
    let views = ca::rotate::views(records)?;
    let at = |t: OffsetDateTime| table::time_text(t.unix_timestamp());
    let leaf_ttl = config.ca.leaf_ttl.duration();
    let note =
        |v: &CaView| match (v.role, v.state) {
            (ca::Role::Root, State::Prepared) => format!(
            "in the trust bundle; signs once every sidecar has acknowledged it, at the latest {}",
            at(activation_deadline(v.created_at, config.ca.root_activation_max_wait.duration()))
        ),
            (ca::Role::Root, State::Active) => {
                format!(
                    "successor prepared at {}",
                    at(v.not_before + (v.not_after - v.not_before) * config.ca.root_rotate_at)
                )
            }
            (ca::Role::Root, State::Retired) => match (v.pruned_at, v.retired_at) {
                (Some(p), _) => format!("left the trust bundle {}", at(p)),
                (None, Some(r)) => format!(
                    "in the trust bundle until its last leaf expires, {}",
                    at(prune_time(r, leaf_ttl, config.ca.clock_skew.duration()))
                ),
                (None, None) => "retired".into(),
            },
            (ca::Role::Intermediate, State::Prepared) => "made; takes over on schedule".into(),
            (ca::Role::Intermediate, State::Active) => format!(
                "signing; successor at {}",
                at(v.not_before
                    + (v.not_after - v.not_before) * crate::ca::rotation::INTERMEDIATE_ACTIVATE_AT)
            ),
            (ca::Role::Intermediate, State::Retired) => {
                "retired; its leaves expire on their own".into()
            }
        };
    records
        .iter()
        .zip(&views)
        .map(|(r, v)| {
            Ok(Shown {
                cert: CaCert::from_der(v.role, &r.cert_der)?,
                state: v.state.as_str().to_string(),
                note: note(v),
            })
        })
        .collect()
}
