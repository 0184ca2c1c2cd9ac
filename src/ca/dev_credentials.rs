//! Development credentials for `certs-dev/`: a root, an intermediate and one client credential
//! per cell, private keys in the clear. Published on purpose, so never trusted in production.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::authority::random_serial;
use super::bootstrap::new_hierarchy;
use super::{cert_pem, pem_encode, CaKey, Error, Settings};
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

/// The SPIFFE ID a cell's credential carries: `spiffe://<td>/cell/<cell id>`.
pub fn cell_spiffe_id(settings: &Settings, cell: &CellId) -> String {
    format!("{}/cell/{cell}", settings.trust_domain.id_string())
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
            let der = cell_params(
                settings,
                cell,
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
        key_pem: zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", pkcs8)),
    }
}

/// A cell's client credential: `spiffe://<td>/cell/<id>` as its one URI SAN, client
/// authentication only, not a CA.
pub(super) fn cell_params(
    settings: &Settings,
    cell: &CellId,
    organization: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, Error> {
    let now = not_before;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, format!("cell {cell}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial(now)?));
    p.subject_alt_names = vec![SanType::URI(cell_spiffe_id(settings, cell).try_into()?)];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}
