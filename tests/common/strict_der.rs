//! A strict reading of what idmint encodes, with RustCrypto's `der` (through `x509-cert`): its
//! decoder refuses non-minimal lengths and integers, bad booleans and bit strings, which
//! openssl, x509-parser and Envoy let through. It sorts a SET OF that is out of order rather
//! than refusing it, so every structure is also encoded again and the bytes must be identical:
//! that is what catches an unsorted SET OF.
//!
//! This file uses only external crates: the unit tests in `src/ca` include it too.
#![allow(dead_code)]

use std::net::IpAddr;

use x509_cert::der::asn1::Ia5String;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::request::CertReq;
use x509_cert::Certificate;

/// What a strict reading of a certificate found.
#[derive(Debug, Default)]
pub struct StrictView {
    /// The subject, RDN by RDN: (attribute OID, value) in the order encoded.
    pub subject: Vec<Vec<(String, String)>>,
    /// The issuer, as the subject.
    pub issuer: Vec<Vec<(String, String)>>,
    /// The serial number's content bytes.
    pub serial: Vec<u8>,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    /// basicConstraints: (critical, cA, pathLenConstraint).
    pub basic_constraints: Option<(bool, bool, Option<u8>)>,
    /// keyUsage: (critical, bits as in RFC 5280: bit 0 digitalSignature = 1 << 0).
    pub key_usage: Option<(bool, u16)>,
    /// extendedKeyUsage OIDs, dotted.
    pub extended_key_usage: Vec<String>,
    /// subjectAltName entries.
    pub san_uris: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_ips: Vec<IpAddr>,
    /// Whether the SAN extension is critical.
    pub san_critical: bool,
    /// Subject and authority key identifiers.
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// Dotted OIDs of every extension, in order.
    pub extension_oids: Vec<String>,
    /// The signature algorithm OID, dotted, and whether its parameters are absent.
    pub signature_algorithm: String,
    pub signature_parameters_absent: bool,
}

/// Decodes `bytes` as `T` strictly and checks that encoding it again gives the same bytes.
pub fn roundtrip<'a, T: Decode<'a> + Encode>(what: &str, bytes: &'a [u8]) -> T {
    let value = T::from_der(bytes)
        .unwrap_or_else(|e| panic!("{what}: a strict DER decoder refuses it: {e}"));
    let again = value
        .to_der()
        .unwrap_or_else(|e| panic!("{what}: encoding it again failed: {e}"));
    if let Some(at) = (0..bytes.len().max(again.len())).find(|&i| bytes.get(i) != again.get(i)) {
        panic!(
            "{what}: not canonical DER; re-encoding changes it from byte {at}\n ours: {}\nagain: {}",
            hex(bytes),
            hex(&again)
        );
    }
    value
}

/// Reads a certificate strictly: the whole certificate and each extension round-trip
/// byte-identical, and every extension is one this reading knows (so none goes unchecked).
pub fn certificate(what: &str, der: &[u8]) -> StrictView {
    let cert: Certificate = roundtrip(what, der);
    let tbs = &cert.tbs_certificate;
    let (sig_oid, sig_params) = (
        cert.signature_algorithm.oid,
        cert.signature_algorithm.parameters.clone(),
    );
    assert_eq!(
        tbs.signature, cert.signature_algorithm,
        "{what}: the TBS and outer signature algorithms differ"
    );
    let mut view = StrictView {
        subject: rdns(what, &tbs.subject),
        issuer: rdns(what, &tbs.issuer),
        serial: tbs.serial_number.as_bytes().to_vec(),
        not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        signature_algorithm: sig_oid.to_string(),
        signature_parameters_absent: sig_params.is_none(),
        ..StrictView::default()
    };
    assert!(
        view.serial.len() <= 20,
        "{what}: RFC 5280 allows serials of at most 20 octets"
    );
    for ext in tbs.extensions.iter().flatten() {
        let bytes = ext.extn_value.as_bytes();
        let oid = ext.extn_id;
        let name = format!("{what}: extension {oid}");
        view.extension_oids.push(oid.to_string());
        if oid == BasicConstraints::OID {
            let bc: BasicConstraints = roundtrip(&name, bytes);
            view.basic_constraints = Some((ext.critical, bc.ca, bc.path_len_constraint));
        } else if oid == KeyUsage::OID {
            let ku: KeyUsage = roundtrip(&name, bytes);
            view.key_usage = Some((ext.critical, ku.0.bits()));
        } else if oid == ExtendedKeyUsage::OID {
            let eku: ExtendedKeyUsage = roundtrip(&name, bytes);
            view.extended_key_usage = eku.0.iter().map(|o| o.to_string()).collect();
        } else if oid == SubjectAltName::OID {
            let san: SubjectAltName = roundtrip(&name, bytes);
            view.san_critical = ext.critical;
            for general_name in &san.0 {
                read_general_name(&name, general_name, &mut view);
            }
        } else if oid == SubjectKeyIdentifier::OID {
            let ski: SubjectKeyIdentifier = roundtrip(&name, bytes);
            view.subject_key_id = Some(ski.0.as_bytes().to_vec());
        } else if oid == AuthorityKeyIdentifier::OID {
            let aki: AuthorityKeyIdentifier = roundtrip(&name, bytes);
            view.authority_key_id = aki.key_identifier.map(|k| k.as_bytes().to_vec());
        } else {
            panic!("{name}: not known to the strict reading; teach it this extension");
        }
    }
    view
}

/// Reads a PKCS#10 request strictly.
pub fn csr(what: &str, der: &[u8]) {
    let req: CertReq = roundtrip(what, der);
    rdns(what, &req.info.subject);
}

fn read_general_name(what: &str, name: &GeneralName, view: &mut StrictView) {
    match name {
        GeneralName::UniformResourceIdentifier(uri) => view.san_uris.push(ia5(uri)),
        GeneralName::DnsName(dns) => view.san_dns.push(ia5(dns)),
        GeneralName::IpAddress(ip) => {
            let b = ip.as_bytes();
            let ip = match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(b).unwrap()),
                16 => IpAddr::from(<[u8; 16]>::try_from(b).unwrap()),
                n => panic!("{what}: an IP address SAN of {n} octets"),
            };
            view.san_ips.push(ip);
        }
        other => panic!("{what}: a SAN of a kind we never write: {other:?}"),
    }
}

fn ia5(s: &Ia5String) -> String {
    s.as_str().to_string()
}

/// The RDNs of a Name, each value read as the string type it is encoded as.
fn rdns(what: &str, name: &x509_cert::name::Name) -> Vec<Vec<(String, String)>> {
    name.0
        .iter()
        .map(|rdn| {
            rdn.0
                .iter()
                .map(|atv| {
                    let value = match atv.value.tag() {
                        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
                            std::str::from_utf8(atv.value.value())
                                .unwrap_or_else(|_| panic!("{what}: a name value is not UTF-8"))
                                .to_string()
                        }
                        other => panic!("{what}: a name value of type {other}"),
                    };
                    (atv.oid.to_string(), value)
                })
                .collect()
        })
        .collect()
}

/// The dotted OIDs this reading names, for assertions.
pub mod oid {
    pub const CN: &str = "2.5.4.3";
    pub const O: &str = "2.5.4.10";
    pub const OU: &str = "2.5.4.11";
    pub const SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
    pub const CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
    pub const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    pub const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
}

/// keyUsage bits as [`StrictView::key_usage`] holds them.
pub mod key_usage {
    pub const DIGITAL_SIGNATURE: u16 = 1 << 0;
    pub const KEY_ENCIPHERMENT: u16 = 1 << 2;
    pub const KEY_AGREEMENT: u16 = 1 << 4;
    pub const KEY_CERT_SIGN: u16 = 1 << 5;
    pub const CRL_SIGN: u16 = 1 << 6;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
