//! The leaf certificate profile: X.509-SVID plus Diego instance identity, written as DER.
//!
//! rcgen's distinguished names hold one value per attribute type, and Diego's subject needs
//! three OU values, so the leaf TBSCertificate is written here directly.

use ring::digest;
use time::OffsetDateTime;
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

use super::keys::SignatureScheme;
use crate::placement::Placement;

/// Everything that goes into one leaf certificate.
pub struct LeafSpec<'a> {
    /// Serial number bytes (positive, minimal encoding not required).
    pub serial: &'a [u8],
    /// The issuing CA's subject Name, DER, copied so the chain links byte for byte.
    pub issuer_name_der: &'a [u8],
    /// The issuing CA's subject key identifier, for the authority key identifier.
    pub issuer_key_id: Option<&'a [u8]>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The one URI SAN.
    pub spiffe_id: &'a str,
    /// Subject and SAN facts.
    pub placement: &'a Placement,
    /// The subject's SubjectPublicKeyInfo, DER, from the checked CSR.
    pub spki_der: &'a [u8],
    /// How the CA signs.
    pub scheme: SignatureScheme,
}

fn oid(arcs: &[u64]) -> ObjectIdentifier {
    ObjectIdentifier::from_slice(arcs)
}

/// The DER TBSCertificate for `spec`.
pub fn tbs_der(spec: &LeafSpec<'_>) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_tagged(Tag::context(0), |w| w.write_u8(2));
            w.next().write_bigint_bytes(spec.serial, true);
            spec.scheme.algorithm_identifier(w.next());
            w.next().write_der(spec.issuer_name_der);
            w.next().write_sequence(|w| {
                write_time(w.next(), spec.not_before);
                write_time(w.next(), spec.not_after);
            });
            write_subject(w.next(), spec.placement);
            w.next().write_der(spec.spki_der);
            w.next()
                .write_tagged(Tag::context(3), |w| write_extensions(w, spec));
        })
    })
}

/// The whole certificate: TBS, algorithm, signature.
pub fn certificate_der(tbs: &[u8], scheme: SignatureScheme, signature: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(tbs);
            scheme.algorithm_identifier(w.next());
            w.next().write_bitvec_bytes(signature, signature.len() * 8);
        })
    })
}

/// RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
fn write_time(w: DERWriter<'_>, t: OffsetDateTime) {
    let t = t.replace_nanosecond(0).expect("zero nanoseconds");
    if t.year() < 2050 {
        w.write_utctime(&UTCTime::from_datetime(t));
    } else {
        w.write_generalized_time(&GeneralizedTime::from_datetime(t));
    }
}

/// Subject as Diego writes it: one RDN holding the three OU values, then CN = instance GUID.
/// The RDN is a SET OF, which DER orders by encoding (app, space, organization for equal-length
/// GUIDs), whatever order the values are given in; strict parsers refuse any other order.
fn write_subject(w: DERWriter<'_>, p: &Placement) {
    let mut units = Vec::with_capacity(3);
    if let Some(org) = &p.org_guid {
        units.push(format!("organization:{org}"));
    }
    if let Some(space) = &p.space_guid {
        units.push(format!("space:{space}"));
    }
    units.push(format!("app:{}", p.app_guid));
    w.write_sequence(|w| {
        w.next().write_set_of(|w| {
            for unit in &units {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&oid(&[2, 5, 4, 11]));
                    w.next().write_utf8_string(unit);
                });
            }
        });
        w.next().write_set_of(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[2, 5, 4, 3]));
                w.next().write_utf8_string(p.instance_guid.as_str());
            });
        });
    });
}

fn write_extension(w: DERWriter<'_>, arcs: &[u64], critical: bool, value: Vec<u8>) {
    w.write_sequence(|w| {
        w.next().write_oid(&oid(arcs));
        if critical {
            w.next().write_bool(true);
        }
        w.next().write_bytes(&value);
    });
}

fn write_extensions(w: DERWriter<'_>, spec: &LeafSpec<'_>) {
    w.write_sequence(|w| {
        // basicConstraints: cA defaults to FALSE, so DER writes an empty sequence.
        write_extension(w.next(), &[2, 5, 29, 19], true, vec![0x30, 0x00]);
        // keyUsage: digitalSignature, keyEncipherment, keyAgreement (bits 0, 2, 4).
        let key_usage = yasna::construct_der(|w| w.write_bitvec_bytes(&[0b1010_1000], 5));
        write_extension(w.next(), &[2, 5, 29, 15], true, key_usage);
        let eku = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_oid(&oid(&[1, 3, 6, 1, 5, 5, 7, 3, 1]));
                w.next().write_oid(&oid(&[1, 3, 6, 1, 5, 5, 7, 3, 2]));
            })
        });
        write_extension(w.next(), &[2, 5, 29, 37], false, eku);
        let san = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(spec.spiffe_id));
                w.next().write_tagged_implicit(Tag::context(2), |w| {
                    w.write_ia5_string(spec.placement.instance_guid.as_str())
                });
                if let Some(ip) = spec.placement.container_ip {
                    let bytes = match ip {
                        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                    };
                    w.next()
                        .write_tagged_implicit(Tag::context(7), |w| w.write_bytes(&bytes));
                }
            })
        });
        write_extension(w.next(), &[2, 5, 29, 17], false, san);
        let ski = yasna::construct_der(|w| w.write_bytes(&key_id(spec.spki_der)));
        write_extension(w.next(), &[2, 5, 29, 14], false, ski);
        if let Some(aki) = spec.issuer_key_id {
            let value = yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next()
                        .write_tagged_implicit(Tag::context(0), |w| w.write_bytes(aki))
                })
            });
            write_extension(w.next(), &[2, 5, 29, 35], false, value);
        }
    });
}

/// Subject key identifier: the first 160 bits of SHA-256 over the SPKI (RFC 7093, method 1
/// uses the key bits; the whole SPKI serves the same purpose and is what we hash elsewhere).
fn key_id(spki_der: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, spki_der).as_ref()[..20].to_vec()
}
