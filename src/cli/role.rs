//! `idmint role …`: credentials for the admin API's roles (admin, auditor, orchestrator).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};

use crate::app::Runtime;
use crate::ca::{is_person_name, Init, Principal};
use crate::config::Config;
use crate::files::write_atomic;
use crate::ids::Ttl;

/// The credential's certificate and the intermediates after it.
pub(super) const CHAIN: &str = "role.pem";
/// Its private key (0600).
pub(super) const KEY: &str = "role.key";
/// The roots the server's certificate chains to.
pub(super) const BUNDLE: &str = "bundle.pem";

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Issue a role credential for the admin API: role.pem (certificate and chain), role.key
    /// (0600) and bundle.pem, recorded in the ledger. Use it with --set admin.credential=DIR.
    Enroll {
        /// admin (everything), auditor (the ledger only) or orchestrator (placements).
        role: RoleName,
        /// Who holds it (admins and auditors): letters, digits, '.', '_' or '-'.
        #[arg(long)]
        name: Option<String>,
        /// Where to write the files; none of them may exist yet.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Lifetime (capped at the intermediate's expiry).
        #[arg(long, default_value = "8h")]
        ttl: Ttl,
    },
}

/// A role as the command line names it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleName {
    Admin,
    Auditor,
    Orchestrator,
}

pub async fn run(cmd: RoleCommand, config: Config) -> Result<()> {
    let RoleCommand::Enroll {
        role,
        name,
        out_dir,
        ttl,
    } = cmd;
    let principal = principal(role, name)?;
    create_empty(&out_dir)?;
    let rt = Runtime::start(config, Init::MustExist).await?;
    let result = rt.issuance.enroll(&principal, ttl, rt.clock.now()).await;
    let bundle = rt.ca.roots_pem();
    rt.shutdown().await;
    let cred = result?;
    write_atomic(&out_dir.join(KEY), cred.key_pem().as_bytes(), 0o600)?;
    write_atomic(&out_dir.join(CHAIN), cred.chain_pem().as_bytes(), 0o644)?;
    write_atomic(&out_dir.join(BUNDLE), bundle.as_bytes(), 0o644)?;
    println!("enrolled {}", cred.issued.spiffe_id);
    super::cell::print_validity(&cred, &out_dir);
    Ok(())
}

fn principal(role: RoleName, name: Option<String>) -> Result<Principal> {
    let named = |name: Option<String>| -> Result<String> {
        let Some(name) = name else {
            bail!("--name is required for admins and auditors: the ledger names them by it");
        };
        if !is_person_name(&name) {
            bail!("--name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
        }
        Ok(name)
    };
    Ok(match role {
        RoleName::Admin => Principal::Admin(named(name)?),
        RoleName::Auditor => Principal::Auditor(named(name)?),
        RoleName::Orchestrator if name.is_some() => {
            bail!("the orchestrator has no name: leave out --name")
        }
        RoleName::Orchestrator => Principal::Orchestrator,
    })
}

/// Creates `dir`; refuses one that holds a credential already.
fn create_empty(dir: &Path) -> Result<()> {
    crate::files::create_private_dir(dir)?;
    for name in [CHAIN, KEY, BUNDLE] {
        let path = dir.join(name);
        if path.exists() {
            bail!(
                "{} already exists; enroll into an empty directory",
                path.display()
            );
        }
    }
    Ok(())
}
