//! Every kind of certificate idmint writes is canonical DER: strict parsers of two languages
//! (RustCrypto's `der` through `x509-cert`, Python's `cryptography`) load it, it re-encodes to
//! the same bytes, and openssl and x509-parser read it too. Each kind's profile, field by
//! field, is asserted here; docs/profile.md is written from these assertions.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::IpAddr;
use std::path::Path;

use common::strict_der::{self, key_usage as ku, oid, StrictView};
use common::*;
use idmint::agent;
use idmint::api::{Authority, SignRequest};
use idmint::app::Runtime;
use idmint::ca::{Init, Principal};
use idmint::ids::Ttl;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

async fn dev_runtime(dir: &Path, overrides: &[(&str, &str)]) -> Runtime {
    Runtime::start(config_in(dir, overrides), Init::CreateIfMissing)
        .await
        .expect("runtime starts")
}

/// One certificate to check, its issuer's certificate, and what it is, for messages.
struct Emitted {
    what: String,
    der: Vec<u8>,
    issuer: Vec<u8>,
}

/// Reads `e` with every parser: strict (x509-cert, re-encoded byte-identical), x509-parser
/// (nothing left over) and openssl. Returns the strict reading.
fn read_everywhere(dir: &Path, e: &Emitted) -> StrictView {
    let view = strict_der::certificate(&e.what, &e.der);
    let (rest, _) = X509Certificate::from_der(&e.der)
        .unwrap_or_else(|err| panic!("{}: x509-parser: {err}", e.what));
    assert!(rest.is_empty(), "{}: bytes after the certificate", e.what);
    let path = dir.join("openssl-read.der");
    std::fs::write(&path, &e.der).unwrap();
    openssl_ok(
        dir,
        &[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-text",
            "-in",
            path.to_str().unwrap(),
        ],
    );
    view
}

/// Every certificate in `emitted` loads in Python's cryptography with its signature verified
/// under its issuer; returns cryptography's readings in the same order.
fn python_reads(dir: &Path, emitted: &[Emitted]) -> Vec<serde_json::Value> {
    let items: Vec<PyItem<'_>> = emitted
        .iter()
        .map(|e| PyItem::cert(&e.der, Some(&e.issuer)))
        .collect();
    python_strict(dir, &items)
}

fn rdn(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(o, v)| (o.to_string(), v.to_string()))
        .collect()
}

fn ttl(s: &str) -> Ttl {
    s.parse().unwrap()
}

#[tokio::test]
async fn leaves_are_canonical_der_with_the_diego_rdn_in_set_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let inter = rt.ca.intermediate();
    let inter_view = strict_der::certificate("intermediate", &inter.der);

    let mut ipv6 = placement();
    ipv6.container_ip = Some("fd00:10:255::7".parse().unwrap());
    let mut no_ip = placement();
    no_ip.container_ip = None;
    let rsa_csr = openssl_csr(dir.path(), "rsa", &["-algorithm", "RSA"], &[]);
    let p384_csr = openssl_csr(
        dir.path(),
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &[],
    );
    let (agent_key, agent_csr) = agent::new_key_and_csr().unwrap();
    let cases = [
        (
            "leaf, P-256 key from the agent",
            placement(),
            agent_csr.clone(),
        ),
        ("leaf, IPv6 container", ipv6, agent_csr.clone()),
        ("leaf, no container IP", no_ip, agent_csr.clone()),
        ("leaf, RSA key", placement(), rsa_csr),
        ("leaf, P-384 key", placement(), p384_csr),
    ];
    let mut emitted = Vec::new();
    let mut placements = Vec::new();
    for (what, p, csr) in cases {
        let before = OffsetDateTime::now_utc().unix_timestamp() as u64;
        let cert = rt
            .issuance
            .sign(SignRequest {
                placement: p.clone(),
                csr,
                ttl: Some(ttl("1h")),
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = Emitted {
            what: what.to_string(),
            der: cert.cert_der.clone(),
            issuer: inter.der.clone(),
        };
        let v = read_everywhere(dir.path(), &e);

        // Subject: one RDN of three OUs, in DER SET OF order, which for equal-length GUIDs is
        // app, space, organization (as Go's crypto/x509 writes Diego's own); then the CN.
        assert_eq!(
            v.subject,
            vec![
                rdn(&[
                    (oid::OU, &format!("app:{APP}")),
                    (oid::OU, &format!("space:{SPACE}")),
                    (oid::OU, &format!("organization:{ORG}")),
                ]),
                rdn(&[(oid::CN, INSTANCE)]),
            ],
            "{what}"
        );
        assert_eq!(
            v.issuer, inter_view.subject,
            "{what}: issuer is the intermediate"
        );
        assert_eq!(v.basic_constraints, Some((true, false, None)), "{what}");
        assert_eq!(
            v.key_usage,
            Some((
                true,
                ku::DIGITAL_SIGNATURE | ku::KEY_ENCIPHERMENT | ku::KEY_AGREEMENT
            )),
            "{what}"
        );
        assert_eq!(
            v.extended_key_usage,
            [oid::SERVER_AUTH, oid::CLIENT_AUTH],
            "{what}"
        );
        assert_eq!(v.san_uris, [expected_spiffe_id()], "{what}: one URI SAN");
        assert_eq!(v.san_dns, [INSTANCE], "{what}");
        assert_eq!(
            v.san_ips,
            p.container_ip.into_iter().collect::<Vec<IpAddr>>()
        );
        assert!(!v.san_critical, "{what}: the subject is not empty");
        assert_eq!(v.serial.len(), 16, "{what}: 16-byte serial");
        assert!(v.serial[0] & 0x80 == 0 && v.serial[0] != 0, "{what}");
        assert_eq!(v.subject_key_id.as_ref().map(Vec::len), Some(20), "{what}");
        assert_eq!(v.authority_key_id, inter_view.subject_key_id, "{what}");
        assert_eq!(v.signature_algorithm, oid::ECDSA_SHA256, "{what}");
        assert!(v.signature_parameters_absent, "{what}: RFC 5758");
        assert_eq!(
            v.not_after - v.not_before,
            3600 + 30,
            "{what}: TTL + backdate"
        );
        assert!(v.not_before + 30 >= before - 1, "{what}");
        emitted.push(e);
        placements.push(p);
    }

    // Python's cryptography reads the same fields, and each signature verifies.
    for ((py, e), p) in python_reads(dir.path(), &emitted)
        .iter()
        .zip(&emitted)
        .zip(&placements)
    {
        assert_eq!(py["signature_verified"], true, "{}", e.what);
        assert_eq!(
            py["subject"],
            serde_json::json!([
                [
                    [oid::OU, format!("app:{APP}")],
                    [oid::OU, format!("space:{SPACE}")],
                    [oid::OU, format!("organization:{ORG}")]
                ],
                [[oid::CN, INSTANCE]]
            ]),
            "{}",
            e.what
        );
        assert_eq!(py["uris"], serde_json::json!([expected_spiffe_id()]));
        assert_eq!(py["dns"], serde_json::json!([INSTANCE]));
        let ips: Vec<String> = p.container_ip.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(py["ips"], serde_json::json!(ips), "{}", e.what);
    }
    // The agent's key and CSR are ours too.
    python_strict(
        dir.path(),
        &[PyItem::csr(&agent_csr), PyItem::key(&agent_key)],
    );
    strict_der::csr("the agent's CSR", &agent_csr);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_leaf_without_org_and_space_has_only_the_app_ou() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(
        dir.path(),
        &[(
            "spiffe_id_template",
            "spiffe://{trust_domain}/app/{app_guid}",
        )],
    )
    .await;
    let mut p = placement();
    p.org_guid = None;
    p.space_guid = None;
    let svid = agent::obtain_svid(&rt.issuance, p, None).await.unwrap();
    let e = Emitted {
        what: "leaf without org and space".into(),
        der: svid.cert.cert_der.clone(),
        issuer: rt.ca.intermediate().der,
    };
    let v = read_everywhere(dir.path(), &e);
    assert_eq!(
        v.subject,
        vec![
            rdn(&[(oid::OU, &format!("app:{APP}"))]),
            rdn(&[(oid::CN, INSTANCE)])
        ]
    );
    assert_eq!(v.san_uris, [format!("spiffe://cf.internal/app/{APP}")]);
    python_reads(dir.path(), &[e]);
    python_strict(dir.path(), &[PyItem::key(&svid.key_pkcs8)]);
    rt.shutdown().await;
}

/// What roots and intermediates share: a CA for `path_len` levels below it, signing
/// certificates and CRLs, named by the trust domain's SPIFFE ID.
fn assert_ca_profile(v: &StrictView, path_len: u8) {
    assert_eq!(v.basic_constraints, Some((true, true, Some(path_len))));
    assert_eq!(
        v.key_usage,
        Some((
            true,
            ku::KEY_CERT_SIGN | ku::CRL_SIGN | ku::DIGITAL_SIGNATURE
        ))
    );
    assert_eq!(v.san_uris, ["spiffe://cf.internal"]);
    assert_eq!(v.subject_key_id.as_ref().map(Vec::len), Some(20));
    assert_eq!(v.serial.len(), 16);
    assert_eq!(v.signature_algorithm, oid::ECDSA_SHA256);
    assert!(v.signature_parameters_absent);
}

#[tokio::test]
async fn cas_and_principal_credentials_are_canonical_der() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let root = rt.ca.roots()[0].der.clone();
    let inter = rt.ca.intermediate().der;

    // Root: self-issued, a CA for one level of intermediates.
    let root_e = Emitted {
        what: "root".into(),
        der: root.clone(),
        issuer: root.clone(),
    };
    let root_view = read_everywhere(dir.path(), &root_e);
    assert_ca_profile(&root_view, 1);
    assert_eq!(root_view.subject, root_view.issuer);
    assert_eq!(root_view.authority_key_id, None, "self-signed: no AKI");

    // Intermediate: signs leaves only.
    let inter_e = Emitted {
        what: "intermediate".into(),
        der: inter.clone(),
        issuer: root.clone(),
    };
    let v = read_everywhere(dir.path(), &inter_e);
    assert_ca_profile(&v, 0);
    assert_eq!(v.issuer, root_view.subject);
    assert_eq!(v.authority_key_id, root_view.subject_key_id);
    let inter_subject = v.subject.clone();
    let inter_ski = v.subject_key_id.clone();
    let mut emitted = vec![root_e, inter_e];

    // Principal credentials: one SPIFFE ID each, not CAs, signing only.
    let now = OffsetDateTime::now_utc();
    let server = Principal::Server {
        dns: vec!["localhost".into(), "idmint.service.internal".into()],
        ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
    };
    let principals = [
        (Principal::Cell("cell-1".parse().unwrap()), "cell/cell-1"),
        (Principal::Orchestrator, "orchestrator"),
        (Principal::Admin("ops".into()), "admin/ops"),
        (server.clone(), "server"),
    ];
    let mut keys = Vec::new();
    for (principal, path) in &principals {
        let cred = rt.ca.issue_principal(principal, ttl("1h"), now).unwrap();
        let e = Emitted {
            what: format!("{path} credential"),
            der: cred.issued.cert_der.clone(),
            issuer: inter.clone(),
        };
        let v = read_everywhere(dir.path(), &e);
        let id = format!("spiffe://cf.internal/{path}");
        assert_eq!(v.issuer, inter_subject, "{path}");
        assert_eq!(
            v.subject,
            vec![
                rdn(&[(oid::O, "idmint")]),
                rdn(&[(oid::CN, &format!("cf.internal/{path}"))])
            ],
            "{path}"
        );
        assert_eq!(v.basic_constraints, Some((true, false, None)), "{path}");
        assert_eq!(v.key_usage, Some((true, ku::DIGITAL_SIGNATURE)), "{path}");
        assert_eq!(v.san_uris, [id], "{path}");
        assert_eq!(v.authority_key_id, inter_ski, "{path}");
        assert_eq!(v.serial.len(), 16, "{path}");
        if *path == "server" {
            assert_eq!(v.extended_key_usage, [oid::CLIENT_AUTH, oid::SERVER_AUTH]);
            assert_eq!(v.san_dns, ["localhost", "idmint.service.internal"]);
            assert_eq!(
                v.san_ips,
                [
                    "127.0.0.1".parse::<IpAddr>().unwrap(),
                    "::1".parse().unwrap()
                ]
            );
        } else {
            assert_eq!(v.extended_key_usage, [oid::CLIENT_AUTH], "{path}");
            assert!(v.san_dns.is_empty() && v.san_ips.is_empty(), "{path}");
        }
        keys.push(cred.key_pkcs8.to_vec());
        emitted.push(e);
    }

    // A renewed cell credential, certifying a key the cell made.
    let (_, csr) = agent::new_key_and_csr().unwrap();
    let renewed = rt
        .ca
        .certify_principal(&principals[0].0, &csr, ttl("1h"), now)
        .unwrap();
    let e = Emitted {
        what: "renewed cell credential".into(),
        der: renewed.cert_der.clone(),
        issuer: inter.clone(),
    };
    assert_eq!(
        read_everywhere(dir.path(), &e).san_uris,
        ["spiffe://cf.internal/cell/cell-1"]
    );
    emitted.push(e);

    for (py, e) in python_reads(dir.path(), &emitted).iter().zip(&emitted) {
        assert_eq!(py["signature_verified"], true, "{}", e.what);
    }
    let key_items: Vec<_> = keys.iter().map(|k| PyItem::key(k)).collect();
    python_strict(dir.path(), &key_items);
    rt.shutdown().await;
}

#[test]
fn development_credentials_are_canonical_der() {
    let dir = tempfile::tempdir().unwrap();
    let settings = config_in(dir.path(), &[]).ca;
    let cells = ["cell-1".parse().unwrap(), "cell-2".parse().unwrap()];
    let fresh = idmint::ca::dev_credentials(&settings, &cells, OffsetDateTime::now_utc()).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let read = |name: &str| std::fs::read_to_string(committed.join(name)).unwrap();
    let sets = [
        (
            "fresh",
            fresh.root.cert_pem.clone(),
            fresh.intermediate.cert_pem.clone(),
            fresh.cells[0].1.cert_pem.clone(),
        ),
        (
            "certs-dev/",
            read("root.pem"),
            read("intermediate.pem"),
            read("cell-dev-cell-1.pem"),
        ),
    ];
    let mut emitted = Vec::new();
    for (set, root, inter, cell) in sets {
        let der = |pem: &str| pem::parse(pem).unwrap().into_contents();
        let (root, inter, cell) = (der(&root), der(&inter), der(&cell));
        for (what, cert, issuer) in [
            ("root", &root, &root),
            ("intermediate", &inter, &root),
            ("cell-1", &cell, &inter),
        ] {
            let e = Emitted {
                what: format!("{set} {what}"),
                der: cert.clone(),
                issuer: issuer.clone(),
            };
            let v = read_everywhere(dir.path(), &e);
            assert!(
                v.subject[0]
                    .contains(&(oid::O.to_string(), idmint::ca::DEV_ORGANIZATION.to_string())),
                "{} names itself a development certificate: {:?}",
                e.what,
                v.subject
            );
            emitted.push(e);
        }
    }
    for (py, e) in python_reads(dir.path(), &emitted).iter().zip(&emitted) {
        assert_eq!(py["signature_verified"], true, "{}", e.what);
    }
    let keys: Vec<Vec<u8>> = [
        &fresh.root.key_pem,
        &fresh.intermediate.key_pem,
        &fresh.cells[0].1.key_pem,
    ]
    .iter()
    .map(|pem| pem::parse(pem.as_bytes()).unwrap().into_contents())
    .collect();
    let key_items: Vec<_> = keys.iter().map(|k| PyItem::key(k)).collect();
    python_strict(dir.path(), &key_items);
}
