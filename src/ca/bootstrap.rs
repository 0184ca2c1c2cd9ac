//! Getting a CA to run with: the stored self-signed CA (created on first start), or an
//! operator's upstream intermediate loaded from PEM files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::serial::random_serial;
use super::{
    CaCert, CaKey, CertificateAuthority, Error, Kek, Mode, Role, Settings, Signing, UpstreamFiles,
};
use crate::store::{CaRecord, Store};

/// Whether opening may create what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// First start: create the self-signed CA, and the KEK file if there is neither a CA nor a KEK.
    CreateIfMissing,
    /// Use what exists; a missing CA is an error.
    MustExist,
}

/// Loads the CA described by `settings`.
pub async fn load(
    settings: Settings,
    store: &Store,
    init: Init,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, Error> {
    match settings.mode.clone() {
        Mode::SelfSigned => load_self_signed(settings, store, init, now).await,
        Mode::Upstream(files) => load_upstream(settings, &files, now),
    }
}

/// Creates the self-signed CA if the store has none. Returns the CA and whether it was created.
pub async fn init_self_signed(
    settings: Settings,
    store: &Store,
    now: OffsetDateTime,
) -> Result<(CertificateAuthority, bool), Error> {
    let existed = !store.ca_records().await?.is_empty();
    let ca = load_self_signed(settings, store, Init::CreateIfMissing, now).await?;
    Ok((ca, !existed))
}

async fn load_self_signed(
    settings: Settings,
    store: &Store,
    init: Init,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, Error> {
    let records = store.ca_records().await?;
    if records.is_empty() {
        if init == Init::MustExist {
            return Err(Error::NotInitialised);
        }
        // No CA yet, so a new KEK cannot orphan any sealed key.
        let kek = match Kek::load(&settings.kek_file) {
            Err(Error::KekMissing(path)) => Kek::create(&path)?,
            other => other?,
        };
        let fresh = create_self_signed(&settings, &kek, now)?;
        if !store.insert_first_ca(&fresh).await? {
            tracing::info!("another process initialised the CA first; using it");
        }
        return Box::pin(load_self_signed(settings, store, Init::MustExist, now)).await;
    }
    let kek = Kek::load(&settings.kek_file)?;
    let signing = signing_from_records(&records, &kek)?;
    Ok(CertificateAuthority::new(settings, signing))
}

/// What the stored self-signed CA signs with and publishes: the newest active intermediate
/// and its key, and every root that is prepared, active, or retired but not yet pruned.
pub(super) fn signing_from_records(records: &[CaRecord], kek: &Kek) -> Result<Signing, Error> {
    let active = |role: Role| {
        records
            .iter()
            .rev()
            .find(|r| r.role == role.as_str() && r.state == "active")
            .ok_or_else(|| Error::Inconsistent(format!("no active {} CA", role.as_str())))
    };
    active(Role::Root)?;
    let inter_record = active(Role::Intermediate)?;
    let sealed = inter_record
        .sealed_key
        .as_ref()
        .ok_or_else(|| Error::Inconsistent("intermediate has no stored key".into()))?;
    let pkcs8 = kek.open(inter_record.fingerprint.as_bytes(), sealed)?;
    let key = CaKey::from_pkcs8(&pkcs8)?;
    let intermediate = CaCert::from_der(Role::Intermediate, &inter_record.cert_der)?;
    if intermediate.public_key_raw != key.public_key_raw() {
        return Err(Error::Inconsistent(
            "stored intermediate key does not match its certificate".into(),
        ));
    }
    let roots = records
        .iter()
        .filter(|r| r.role == "root" && r.pruned_at.is_none())
        .map(|r| CaCert::from_der(Role::Root, &r.cert_der))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Signing {
        roots,
        chain: vec![intermediate],
        key: Arc::new(key),
    })
}

/// A freshly made root and intermediate with their keys, and the intermediate's parameters
/// (an `rcgen` issuer needs them to sign below it).
pub(super) struct Hierarchy {
    pub root_key: CaKey,
    pub root_der: Vec<u8>,
    pub inter_params: CertificateParams,
    pub inter_key: CaKey,
    pub inter_der: Vec<u8>,
}

/// A new self-signed CA held in memory only, nothing stored: for property tests and fuzzing.
pub fn in_memory(settings: Settings, now: OffsetDateTime) -> Result<CertificateAuthority, Error> {
    let h = new_hierarchy(&settings, "idmint", now)?;
    let signing = Signing {
        roots: vec![CaCert::from_der(Role::Root, &h.root_der)?],
        chain: vec![CaCert::from_der(Role::Intermediate, &h.inter_der)?],
        key: Arc::new(h.inter_key),
    };
    Ok(CertificateAuthority::new(settings, signing))
}

/// A new P-256 root and intermediate with the lifetimes in `settings`, their subjects naming
/// `organization`.
pub(super) fn new_hierarchy(
    settings: &Settings,
    organization: &str,
    now: OffsetDateTime,
) -> Result<Hierarchy, Error> {
    let root_key = CaKey::generate_p256()?;
    let root_end = now + settings.root_ttl.duration();
    let root_params = ca_params(settings, organization, Role::Root, now, root_end)?;
    let root_der = root_params.self_signed(&root_key)?.der().to_vec();

    let inter_key = CaKey::generate_p256()?;
    let inter_end = (now + settings.intermediate_ttl.duration()).min(root_params.not_after);
    let inter_params = ca_params(settings, organization, Role::Intermediate, now, inter_end)?;
    let issuer = Issuer::from_params(&root_params, &root_key);
    let inter_der = inter_params.signed_by(&inter_key, &issuer)?.der().to_vec();
    Ok(Hierarchy {
        root_key,
        root_der,
        inter_params,
        inter_key,
        inter_der,
    })
}

/// A new root and intermediate, keys sealed under `kek`, ready to store.
fn create_self_signed(
    settings: &Settings,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<Vec<CaRecord>, Error> {
    let h = new_hierarchy(settings, "idmint", now)?;
    [
        (Role::Root, h.root_der, &h.root_key),
        (Role::Intermediate, h.inter_der, &h.inter_key),
    ]
    .into_iter()
    .map(|(role, der, key)| {
        let cert = CaCert::from_der(role, &der)?;
        let pkcs8 = key.pkcs8_der().expect("generated keys keep their PKCS#8");
        Ok(CaRecord {
            role: role.as_str().into(),
            state: "active".into(),
            sealed_key: Some(kek.seal(cert.fingerprint.as_bytes(), pkcs8)?),
            fingerprint: cert.fingerprint,
            not_before: cert.not_before.unix_timestamp(),
            not_after: cert.not_after.unix_timestamp(),
            created_at: now.unix_timestamp(),
            activated_at: Some(now.unix_timestamp()),
            retired_at: None,
            pruned_at: None,
            cert_der: der,
        })
    })
    .collect()
}

pub(super) fn ca_params(
    settings: &Settings,
    organization: &str,
    role: Role,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, Error> {
    let td = &settings.trust_domain;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::OrganizationalUnitName, td.as_str());
    let stamp = now.unix_timestamp();
    dn.push(
        DnType::CommonName,
        format!("idmint {} CA {stamp}", role.as_str()),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(match role {
        Role::Root => 1,
        Role::Intermediate => 0,
    }));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - Duration::from_secs(60);
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial(now)?));
    p.subject_alt_names = vec![SanType::URI(td.id_string().try_into()?)];
    p.use_authority_key_identifier_extension = role == Role::Intermediate;
    Ok(p)
}

fn load_upstream(
    settings: Settings,
    files: &UpstreamFiles,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, Error> {
    Ok(CertificateAuthority::new(
        settings,
        upstream_signing(files, now)?,
    ))
}

/// Reads and checks an operator's intermediate, key and roots: the key matches the
/// certificate, every certificate is a CA, the chain is signed link by link and ends at one of
/// the roots, and the intermediate has not expired. The file at fault is named.
pub fn upstream_signing(files: &UpstreamFiles, now: OffsetDateTime) -> Result<Signing, Error> {
    let fail = |path: &Path, reason: String| Error::Upstream {
        path: path.to_path_buf(),
        reason,
    };
    let chain = read_certs(&files.intermediate_cert, Role::Intermediate)?;
    let roots = read_certs(&files.root_bundle, Role::Root)?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&files.intermediate_key)
            .map_err(|e| fail(&files.intermediate_key, e.to_string()))?,
    );
    let key =
        CaKey::from_pem(&key_pem).map_err(|e| fail(&files.intermediate_key, e.to_string()))?;
    let signing = &chain[0];
    if signing.public_key_raw != key.public_key_raw() {
        return Err(fail(
            &files.intermediate_key,
            format!(
                "key does not match the certificate in {}",
                files.intermediate_cert.display()
            ),
        ));
    }
    if let Some(not_ca) = chain.iter().find(|c| !c.is_ca) {
        return Err(fail(
            &files.intermediate_cert,
            format!(
                "{} is not a CA certificate (basicConstraints cA is not set)",
                not_ca.subject
            ),
        ));
    }
    if signing.not_after <= now {
        return Err(fail(
            &files.intermediate_cert,
            format!("intermediate expired at {}", signing.not_after),
        ));
    }
    for pair in chain.windows(2) {
        if !signed_by(&pair[0], &pair[1]) {
            return Err(fail(
                &files.intermediate_cert,
                format!(
                    "{} is not signed by the next certificate, {}",
                    pair[0].subject, pair[1].subject
                ),
            ));
        }
    }
    let top = chain.last().expect("at least one certificate");
    if !roots.iter().any(|root| signed_by(top, root)) {
        return Err(fail(
            &files.root_bundle,
            format!("no root in the bundle signed {}", top.subject),
        ));
    }
    Ok(Signing {
        roots,
        chain,
        key: Arc::new(key),
    })
}

fn read_certs(path: &Path, role: Role) -> Result<Vec<CaCert>, Error> {
    use rustls_pki_types::pem::PemObject;
    let fail = |reason: String| Error::Upstream {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let ders = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
    if ders.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    ders.iter()
        .map(|der| CaCert::from_der(role, der).map_err(|e| fail(e.to_string())))
        .collect()
}

/// Whether `cert`'s signature verifies under `issuer`'s key (and names it as issuer).
pub(super) fn signed_by(cert: &CaCert, issuer: &CaCert) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        X509Certificate::from_der(&cert.der),
        X509Certificate::from_der(&issuer.der),
    ) else {
        return false;
    };
    c.issuer().as_raw() == i.subject().as_raw() && c.verify_signature(Some(i.public_key())).is_ok()
}

/// Whether the top of `chain` is signed by one of `roots`.
pub fn chains_to(chain: &[CaCert], roots: &[CaCert]) -> bool {
    chain
        .last()
        .is_some_and(|top| roots.iter().any(|root| signed_by(top, root)))
}
