//! `idmint issue`: one certificate for one instance, from a CSR or with a locally made key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::table::rfc3339;
use crate::agent;
use crate::api::{Authority, SignRequest, SignedCert};
use crate::app::{self, Runtime};
use crate::ca::{cert_pem, Init};
use crate::config::Config;
use crate::ids::{CellId, Guid, Ttl};
use crate::placement::Placement;

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// App GUID: the certificate's SPIFFE ID is the app's.
    #[arg(long)]
    app_guid: Guid,
    /// Instance GUID: the certificate's CN and a DNS SAN.
    #[arg(long)]
    instance_guid: Guid,
    /// Space GUID.
    #[arg(long)]
    space_guid: Option<Guid>,
    /// Org GUID.
    #[arg(long)]
    org_guid: Option<Guid>,
    /// Container IP address: an IP SAN.
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Cell recorded in the ledger as the requester.
    #[arg(long, default_value = "operator")]
    cell_id: CellId,
    /// Lifetime, e.g. 30m (default: ca.leaf_ttl).
    #[arg(long)]
    ttl: Option<Ttl>,
    /// Certify the key in this PKCS#10 CSR (PEM or DER); the chain is printed unless --out-dir.
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// Write cert.pem, chain.pem, bundle.pem (and key.pem when no --csr) here.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// The files `--out-dir` receives; none may exist already.
const OUT_FILES: [&str; 4] = ["cert.pem", "chain.pem", "bundle.pem", "key.pem"];

pub async fn run(args: IssueArgs, config: Config) -> Result<()> {
    // Check every input before anything is issued, so a mistake leaves no ledger record.
    let csr = match &args.csr {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("cannot read CSR {}", path.display()))?,
        ),
        None => None,
    };
    match (&csr, &args.out_dir) {
        (None, None) => {
            bail!("without --csr, --out-dir DIR is needed to write the new private key")
        }
        (_, Some(dir)) => prepare_out_dir(dir)?,
        (Some(_), None) => {}
    }
    let placement = Placement {
        instance_guid: args.instance_guid,
        app_guid: args.app_guid,
        space_guid: args.space_guid,
        org_guid: args.org_guid,
        cell_id: args.cell_id,
        container_ip: args.ip,
    };

    let rt = Runtime::start(config, Init::MustExist).await?;
    let result = match csr {
        Some(csr) => rt
            .issuance
            .sign(SignRequest {
                placement,
                csr,
                ttl: args.ttl,
            })
            .await
            .map(|cert| (cert, None))
            .map_err(anyhow::Error::from),
        None => agent::obtain_svid(&rt.issuance, placement, args.ttl)
            .await
            .map(|svid| (svid.cert, Some(svid.key_pkcs8)))
            .map_err(anyhow::Error::from),
    };
    let bundle = rt.ca.roots_pem();
    rt.shutdown().await;
    let (cert, key) = result?;

    let chain = chain_pem(&cert);
    match &args.out_dir {
        Some(dir) => {
            crate::files::write_atomic(
                &dir.join("cert.pem"),
                cert_pem(&cert.cert_der).as_bytes(),
                0o644,
            )?;
            crate::files::write_atomic(&dir.join("chain.pem"), chain.as_bytes(), 0o644)?;
            crate::files::write_atomic(&dir.join("bundle.pem"), bundle.as_bytes(), 0o644)?;
            if let Some(key) = key {
                let pem = crate::ca::private_key_pem(&key);
                crate::files::write_atomic(&dir.join("key.pem"), pem.as_bytes(), 0o600)?;
            }
            eprintln!("wrote {}", dir.display());
        }
        None => print!("{chain}"),
    }
    eprintln!("issued serial {} for {}", cert.serial_hex, cert.spiffe_id);
    eprintln!(
        "valid {} .. {} (ledger entry {})",
        rfc3339(cert.not_before),
        rfc3339(cert.not_after),
        cert.ledger_seq
    );
    if cert.capped {
        eprintln!("note: the lifetime was cut short to the intermediate CA's expiry");
    }
    Ok(())
}

fn chain_pem(cert: &SignedCert) -> String {
    std::iter::once(&cert.cert_der)
        .chain(&cert.chain_der)
        .map(|der| cert_pem(der))
        .collect()
}

fn prepare_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in OUT_FILES {
        let path = dir.join(name);
        if path.exists() {
            bail!(
                "{} already exists; choose an empty --out-dir (nothing is overwritten)",
                path.display()
            );
        }
    }
    app::ensure_writable_dir(dir)
}
