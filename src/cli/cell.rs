//! `idmint cell …`: credentials for Diego cells.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::table::rfc3339;
use crate::agent::cell_credential::CredentialDir;
use crate::app::Runtime;
use crate::ca::{Init, Principal};
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

pub async fn run(cmd: CellCommand, config: Config) -> Result<()> {
    let CellCommand::Enroll {
        cell_id,
        out_dir,
        ttl,
    } = cmd;
    let dir = CredentialDir::new(&out_dir);
    dir.create_empty()?;
    let rt = Runtime::start(config, Init::MustExist).await?;
    let result = rt
        .issuance
        .enroll(&Principal::Cell(cell_id.clone()), ttl, rt.clock.now())
        .await;
    let bundle = rt.ca.roots_pem();
    rt.shutdown().await;
    let cred = result?;
    dir.write(&cred, &bundle)?;
    println!("enrolled cell {cell_id} as {}", cred.issued.spiffe_id);
    print_validity(&cred, &out_dir);
    Ok(())
}

/// The serial and validity of a credential just written to `out_dir`.
pub(super) fn print_validity(cred: &crate::ca::Credential, out_dir: &std::path::Path) {
    println!(
        "serial {}, valid {} .. {}; wrote {}",
        cred.issued.serial_hex,
        rfc3339(cred.issued.validity.not_before),
        rfc3339(cred.issued.validity.not_after),
        out_dir.display()
    );
}
