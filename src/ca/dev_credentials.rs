//! Development credentials for `certs-dev/`: a root, an intermediate and one client credential
//! per cell, private keys in the clear. Published on purpose, so never trusted in production.

use std::time::Duration;

use rcgen::Issuer;
use time::OffsetDateTime;

use super::bootstrap::new_hierarchy;
use super::principal::{principal_params, Principal};
use super::{cert_pem, private_key_pem, CaKey, Error, Settings};
use crate::ids::CellId;

/// The organization every development certificate names, so none is mistaken for a real one.
pub const DEV_ORGANIZATION: &str = "idmint DEVELOPMENT ONLY - key published";

/// One certificate and its private key, both PEM.
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: zeroize::Zeroizing<String>,
}

/// What `certs-dev/` holds.
pub struct DevCredentials {
    /// The self-signed root.
    pub root: PemPair,
    /// The intermediate the root signed; usable as an upstream CA.
    pub intermediate: PemPair,
    /// A client credential per cell, signed by the intermediate.
    pub cells: Vec<(CellId, PemPair)>,
}

/// Makes a new set of development credentials with the lifetimes in `settings`; a cell
/// credential lives as long as the intermediate.
pub fn dev_credentials(
    settings: &Settings,
    cells: &[CellId],
    now: OffsetDateTime,
) -> Result<DevCredentials, Error> {
    let h = new_hierarchy(settings, DEV_ORGANIZATION, now)?;
    let issuer = Issuer::from_params(&h.inter_params, &h.inter_key);
    let cells = cells
        .iter()
        .map(|cell| {
            let key = CaKey::generate_p256()?;
            let der = principal_params(
                settings,
                &Principal::Cell(cell.clone()),
                DEV_ORGANIZATION,
                now - Duration::from_secs(60),
                h.inter_params.not_after,
            )?
            .signed_by(&key, &issuer)?
            .der()
            .to_vec();
            Ok((cell.clone(), pair(&der, &key)))
        })
        .collect::<Result<_, Error>>()?;
    Ok(DevCredentials {
        root: pair(&h.root_der, &h.root_key),
        intermediate: pair(&h.inter_der, &h.inter_key),
        cells,
    })
}

fn pair(der: &[u8], key: &CaKey) -> PemPair {
    let pkcs8 = key.pkcs8_der().expect("generated keys keep their PKCS#8");
    PemPair {
        cert_pem: cert_pem(der),
        key_pem: private_key_pem(pkcs8),
    }
}
