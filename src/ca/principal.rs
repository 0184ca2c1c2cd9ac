//! Credentials for the parties that talk to the server API rather than to sidecars: cells,
//! the orchestrator that places instances, operators, and the server itself. Each carries one
//! SPIFFE ID under the trust domain that says who it is.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::X509Certificate;

use super::serial::random_serial;
use super::{Error, Settings};
use crate::ids::CellId;

/// Who a credential is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A Diego cell: `spiffe://<td>/cell/<id>`.
    Cell(CellId),
    /// The orchestrator that declares placements: `spiffe://<td>/orchestrator`.
    Orchestrator,
    /// An operator: `spiffe://<td>/admin/<name>`.
    Admin(String),
    /// Someone who reads the ledger and nothing else: `spiffe://<td>/auditor/<name>`.
    Auditor(String),
    /// The server, reachable at these names and addresses: `spiffe://<td>/server`.
    Server {
        /// DNS names clients connect to.
        dns: Vec<String>,
        /// Addresses clients connect to.
        ips: Vec<IpAddr>,
    },
}

impl Principal {
    /// Its SPIFFE ID.
    pub fn spiffe_id(&self, settings: &Settings) -> String {
        let td = settings.trust_domain.id_string();
        match self {
            Principal::Cell(cell) => format!("{td}/cell/{cell}"),
            Principal::Orchestrator => format!("{td}/orchestrator"),
            Principal::Admin(name) => format!("{td}/admin/{name}"),
            Principal::Auditor(name) => format!("{td}/auditor/{name}"),
            Principal::Server { .. } => format!("{td}/server"),
        }
    }

    /// Who a certificate names: its one URI SAN, read as a principal of `settings`' trust
    /// domain; otherwise why not.
    pub fn of_certificate(
        cert: &X509Certificate<'_>,
        settings: &Settings,
    ) -> Result<Principal, PrincipalError> {
        let uris = super::uri_sans(cert);
        let [id] = uris.as_slice() else {
            return Err(PrincipalError::UriCount(uris.len()));
        };
        Principal::from_spiffe_id(settings, id)
            .ok_or_else(|| PrincipalError::NotAPrincipal(id.to_string()))
    }

    /// What a SPIFFE ID under `settings`' trust domain names, if it is a principal's.
    pub fn from_spiffe_id(settings: &Settings, id: &str) -> Option<Principal> {
        let td = settings.trust_domain.id_string();
        let path = id.strip_prefix(&td)?.strip_prefix('/')?;
        match path.split_once('/') {
            Some(("cell", cell)) => cell.parse().ok().map(Principal::Cell),
            Some(("admin", name)) if is_person_name(name) => Some(Principal::Admin(name.into())),
            Some(("auditor", name)) if is_person_name(name) => {
                Some(Principal::Auditor(name.into()))
            }
            None if path == "orchestrator" => Some(Principal::Orchestrator),
            _ => None,
        }
    }
}

/// Whether `name` can name an admin or auditor: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn is_person_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a client's certificate names no principal the server API serves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    #[error("a client certificate is required")]
    NoCertificate,
    #[error("unreadable client certificate")]
    Unreadable,
    #[error("a client or cell certificate must carry exactly one SPIFFE ID (this one has {0})")]
    UriCount(usize),
    #[error("{0} is not a cell, the orchestrator, an admin or an auditor of this trust domain")]
    NotAPrincipal(String),
}

/// The certificate of `principal`: its SPIFFE ID as a URI SAN (and the server's names), not a
/// CA, signing only; client authentication, and server authentication for the server.
pub(super) fn principal_params(
    settings: &Settings,
    principal: &Principal,
    organization: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, Error> {
    let id = principal.spiffe_id(settings);
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, id.trim_start_matches("spiffe://"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    if let Principal::Server { dns, ips } = principal {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        for name in dns {
            p.subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    }
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial(not_before)?));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_a_principal_by_exactly_one_spiffe_id() {
        use x509_parser::prelude::FromDer;
        let s = Settings::defaults();
        let named = |uris: &[&str]| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = uris
                .iter()
                .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
                .collect();
            let key = rcgen::KeyPair::generate().unwrap();
            let der = p.self_signed(&key).unwrap().der().to_vec();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            Principal::of_certificate(&cert, &s)
        };
        assert_eq!(
            named(&["spiffe://cf.internal/cell/cell-1"]),
            Ok(Principal::Cell("cell-1".parse().unwrap()))
        );
        assert_eq!(named(&[]), Err(PrincipalError::UriCount(0)));
        assert_eq!(
            named(&[
                "spiffe://cf.internal/orchestrator",
                "spiffe://cf.internal/cell/c"
            ]),
            Err(PrincipalError::UriCount(2))
        );
        let app = "spiffe://cf.internal/org/o/space/s/app/a";
        assert_eq!(
            named(&[app]),
            Err(PrincipalError::NotAPrincipal(app.into()))
        );
    }

    #[test]
    fn spiffe_ids_name_principals_and_nothing_else() {
        let s = Settings::defaults();
        for p in [
            Principal::Cell("cell-1".parse().unwrap()),
            Principal::Orchestrator,
            Principal::Admin("ops".into()),
            Principal::Auditor("sec-team".into()),
        ] {
            assert_eq!(Principal::from_spiffe_id(&s, &p.spiffe_id(&s)), Some(p));
        }
        // No app identity can be made to look like one: the template refuses their segments.
        let server = Principal::Server {
            dns: vec![],
            ips: vec![],
        };
        for p in [
            Principal::Cell("c".parse().unwrap()),
            Principal::Orchestrator,
            Principal::Admin("a".into()),
            Principal::Auditor("a".into()),
            server,
        ] {
            let id = p.spiffe_id(&s);
            let first = id["spiffe://cf.internal/".len()..]
                .split('/')
                .next()
                .unwrap();
            assert!(crate::spiffe::PRINCIPAL_SEGMENTS.contains(&first), "{id}");
        }
        for other in [
            "spiffe://cf.internal/server",
            "spiffe://other.td/cell/cell-1",
            "spiffe://cf.internal/cell/bad cell",
            "spiffe://cf.internal/org/o/space/s/app/a",
            "spiffe://cf.internal/admin/",
            "spiffe://cf.internal/admin/a/b",
            "spiffe://cf.internal/auditor/",
            "spiffe://cf.internal/auditor/sp ace",
            "spiffe://cf.internal/cellx/1",
        ] {
            assert_eq!(Principal::from_spiffe_id(&s, other), None, "{other}");
        }
    }
}
