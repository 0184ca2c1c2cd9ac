//! Certificate revocation lists: one per issuing intermediate, signed with its key, listing
//! the certificates it issued that were revoked and have not expired.

use std::collections::HashSet;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use super::{decode_hex, encode_hex, CaCert, CaKey, Error};
use crate::store::RevokedCert;

/// Why a certificate was revoked: the RFC 5280 reason codes that apply to an end entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

/// Every reason, by the name the CLI and the API take.
pub const REASONS: [(&str, Reason); 6] = [
    ("unspecified", Reason::Unspecified),
    ("key-compromise", Reason::KeyCompromise),
    ("affiliation-changed", Reason::AffiliationChanged),
    ("superseded", Reason::Superseded),
    ("cessation-of-operation", Reason::CessationOfOperation),
    ("privilege-withdrawn", Reason::PrivilegeWithdrawn),
];

impl Reason {
    /// The reason named `name`, or an error listing the names there are.
    pub fn parse(name: &str) -> Result<Reason, String> {
        REASONS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = REASONS.iter().map(|(n, _)| *n).collect();
                format!(
                    "{name:?} is not a revocation reason; say one of {}",
                    names.join(", ")
                )
            })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        REASONS
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(n, _)| *n)
            .expect("every reason is named")
    }

    fn code(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// A serial as the ledger writes it (lowercase hex, no separators), from what a person may
/// type: any case, with or without colons. `None` when it is not hex.
pub fn normalize_serial(typed: &str) -> Option<String> {
    let hex: String = typed
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let valid = !hex.is_empty()
        && hex.len() <= 40
        && hex.len() % 2 == 0
        && hex.chars().all(|c| c.is_ascii_hexdigit());
    valid.then_some(hex)
}

/// The CRL of `issuer`, signed with `key`, listing `revoked` (those it issued), valid from
/// `this_update` to `next_update`, numbered `number`. DER.
pub fn sign(
    issuer: &CaCert,
    key: &CaKey,
    revoked: &[&RevokedCert],
    (this_update, next_update): (OffsetDateTime, OffsetDateTime),
    number: u64,
) -> Result<Vec<u8>, Error> {
    let mut entries = Vec::with_capacity(revoked.len());
    for r in revoked {
        let serial = decode_hex(&r.serial)
            .ok_or_else(|| Error::Inconsistent(format!("revoked serial {:?}", r.serial)))?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.revoked_at_ms) * 1_000_000)
            .map_err(|_| Error::Inconsistent(format!("revocation time of {}", r.serial)))?;
        entries.push(RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            // Whole seconds: the time is encoded as UTCTime.
            revocation_time: at.replace_nanosecond(0).unwrap_or(at),
            reason_code: Reason::parse(&r.reason).ok().map(Reason::code),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: this_update.replace_nanosecond(0).unwrap_or(this_update),
        next_update: next_update.replace_nanosecond(0).unwrap_or(next_update),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let signer = rcgen::Issuer::from_ca_cert_der(&issuer.der.as_slice().into(), key)?;
    Ok(params.signed_by(&signer)?.der().to_vec())
}

/// PEM of a DER CRL.
pub fn pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("X509 CRL", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The serials (as the ledger writes them) that the PEM CRLs in `crls_pem` list. Their
/// signatures are not checked: they came from the server over its authenticated API, and
/// this only decides which certificates to replace early.
pub fn revoked_serials(crls_pem: &str) -> Result<HashSet<String>, String> {
    let mut serials = HashSet::new();
    for block in pem::parse_many(crls_pem).map_err(|e| format!("the CRLs: {e}"))? {
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(block.contents())
                .map_err(|e| format!("a CRL: {e}"))?;
        for revoked in crl.iter_revoked_certificates() {
            serials.insert(encode_hex(revoked.raw_serial()));
        }
    }
    Ok(serials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_the_ledger_writes_them() {
        assert_eq!(normalize_serial("4A:0b:FF").as_deref(), Some("4a0bff"));
        assert_eq!(normalize_serial("4a0bff").as_deref(), Some("4a0bff"));
        for bad in ["", "4a0", "xyz1", "4a 0b", &"ab".repeat(21)] {
            assert_eq!(normalize_serial(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reasons_round_trip_and_unknown_ones_are_named() {
        for (name, reason) in REASONS {
            assert_eq!(Reason::parse(name), Ok(reason));
            assert_eq!(reason.name(), name);
        }
        let e = Reason::parse("because").unwrap_err();
        assert!(e.contains("key-compromise"), "{e}");
    }
}
