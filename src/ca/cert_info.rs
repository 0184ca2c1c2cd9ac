//! What we need to know about a CA certificate, read once when it is loaded.

use ring::digest;
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{encode_hex, Error};

/// The URI SANs of `cert`, in order; none when it has no (readable) SAN extension.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

/// Root or intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A trust anchor, in the bundle.
    Root,
    /// A signing CA below a root.
    Intermediate,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Intermediate => "intermediate",
        }
    }
}

/// A parsed CA certificate.
#[derive(Clone, Debug)]
pub struct CaCert {
    /// Root or intermediate.
    pub role: Role,
    /// Subject, as text.
    pub subject: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The certificate.
    pub der: Vec<u8>,
    /// The subject Name, DER.
    pub subject_der: Vec<u8>,
    /// The subject key identifier, when present.
    pub key_id: Option<Vec<u8>>,
    /// The SubjectPublicKeyInfo's key bits.
    pub public_key_raw: Vec<u8>,
    /// basicConstraints cA.
    pub is_ca: bool,
}

impl CaCert {
    /// Reads a DER certificate.
    pub fn from_der(role: Role, der: &[u8]) -> Result<CaCert, Error> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Inconsistent(format!("unreadable CA certificate: {e}")))?;
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            });
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        Ok(CaCert {
            role,
            subject: cert.subject().to_string(),
            fingerprint: sha256_hex(der),
            not_before: unix(cert.validity().not_before.timestamp())?,
            not_after: unix(cert.validity().not_after.timestamp())?,
            der: der.to_vec(),
            subject_der: cert.subject().as_raw().to_vec(),
            key_id,
            public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
            is_ca,
        })
    }

    /// PEM text of the certificate.
    pub fn pem(&self) -> String {
        cert_pem(&self.der)
    }
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    encode_hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// PEM armour around DER.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A PKCS#8 private key as PEM. Unlike [`pem_encode`], the copy made on the way is wiped, and
/// so is the text when it is dropped.
pub fn private_key_pem(pkcs8: &[u8]) -> zeroize::Zeroizing<String> {
    let pem = pem::Pem::new("PRIVATE KEY", pkcs8.to_vec());
    let text = pem::encode_config(
        &pem,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    drop(zeroize::Zeroizing::new(pem.into_contents()));
    zeroize::Zeroizing::new(text)
}

fn unix(secs: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| Error::Inconsistent("CA certificate validity out of range".into()))
}

/// The SHA-256 fingerprints (lowercase hex) of the certificates in `pem`; what is not a
/// certificate is passed over.
pub fn pem_fingerprints(pem: &str) -> std::collections::BTreeSet<String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| sha256_hex(&der))
        .collect()
}
