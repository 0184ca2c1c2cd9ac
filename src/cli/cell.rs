//! `idmint cell …`: credentials for Diego cells.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use time::OffsetDateTime;

use super::table::rfc3339;
use crate::app::Runtime;
use crate::ca::{Credential, Init, Principal};
use crate::config::Config;
use crate::ids::{CellId, Ttl};

#[derive(Subcommand, Debug)]
pub enum CellCommand {
    /// Issue a cell's client credential (`spiffe://<td>/cell/<id>`): cell.pem (certificate and
    /// chain), cell.key (0600) and bundle.pem, recorded in the ledger.
    Enroll {
        /// The cell's id, as Diego names it.
        cell_id: CellId,
        /// Where to write the files; none of them may exist yet.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Lifetime (capped at the intermediate's expiry).
        #[arg(long, default_value = "24h")]
        ttl: Ttl,
    },
}

/// The files `enroll` writes.
const FILES: [&str; 3] = ["cell.pem", "cell.key", "bundle.pem"];

pub async fn run(cmd: CellCommand, config: Config) -> Result<()> {
    let CellCommand::Enroll {
        cell_id,
        out_dir,
        ttl,
    } = cmd;
    prepare(&out_dir)?;
    let rt = Runtime::start(config, Init::MustExist).await?;
    let result = rt
        .issuance
        .enroll(
            &Principal::Cell(cell_id.clone()),
            ttl,
            OffsetDateTime::now_utc(),
        )
        .await;
    let bundle = rt.ca.roots_pem();
    rt.shutdown().await;
    let cred = result?;
    write_credential(&out_dir, &cred, &bundle)?;
    println!("enrolled cell {cell_id} as {}", cred.issued.spiffe_id);
    println!(
        "serial {}, valid {} .. {}; wrote {}",
        cred.issued.serial_hex,
        rfc3339(cred.issued.validity.not_before),
        rfc3339(cred.issued.validity.not_after),
        out_dir.display()
    );
    Ok(())
}

/// Writes what an agent reads from its credential directory.
pub(super) fn write_credential(dir: &Path, cred: &Credential, bundle_pem: &str) -> Result<()> {
    crate::files::write_atomic(&dir.join("cell.key"), cred.key_pem().as_bytes(), 0o600)?;
    crate::files::write_atomic(&dir.join("cell.pem"), cred.chain_pem().as_bytes(), 0o644)?;
    crate::files::write_atomic(&dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)
}

fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(name) = FILES.iter().find(|f| dir.join(f).exists()) {
        bail!(
            "{} already exists; enroll into an empty directory",
            dir.join(name).display()
        );
    }
    Ok(())
}
