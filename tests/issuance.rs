//! Issuance through the service path, checked by independent verifiers (openssl, webpki,
//! x509-parser), and every bad input refused with nothing issued.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use idmint::agent;
use idmint::api::{Authority, Cause, Error as ApiError, SignRequest};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::store::{EntryKind, LedgerFilter, Store};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

async fn dev_runtime(dir: &std::path::Path, overrides: &[(&str, &str)]) -> Runtime {
    Runtime::start(config_in(dir, overrides), Init::CreateIfMissing)
        .await
        .expect("runtime starts")
}

fn roots(rt: &Runtime) -> Vec<Vec<u8>> {
    rt.ca.roots().iter().map(|r| r.der.clone()).collect()
}

#[tokio::test]
async fn issued_leaf_has_the_svid_and_diego_profile_and_verifies_independently() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .unwrap();
    let cert = &svid.cert;

    let (ok, out) = openssl_verify(dir.path(), &roots(&rt), &cert.chain_der, &cert.cert_der);
    assert!(ok, "openssl verify: {out}");
    webpki_verify(&roots(&rt), &cert.chain_der, &cert.cert_der).expect("webpki verifies");

    let (_, x) = X509Certificate::from_der(&cert.cert_der).unwrap();
    let sans = &x
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let uris: Vec<_> = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(
        uris,
        vec![expected_spiffe_id().as_str()],
        "exactly one URI SAN"
    );
    assert!(
        sans.contains(&GeneralName::DNSName(INSTANCE)),
        "instance GUID DNS SAN"
    );
    assert!(
        sans.contains(&GeneralName::IPAddress(&[10, 255, 1, 7])),
        "container IP SAN"
    );
    assert_eq!(sans.len(), 3, "no other SANs: {sans:?}");

    let bc = x
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(bc.critical && !bc.value.ca, "CA:FALSE, critical");
    let ku = x.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical, "keyUsage critical");
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
    );
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = x.extended_key_usage().unwrap().expect("EKU present").value;
    assert!(eku.server_auth && eku.client_auth && eku.other.is_empty() && !eku.any);

    let cn: Vec<_> = x
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, vec![INSTANCE]);
    let mut ous: Vec<_> = x
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    ous.sort();
    assert_eq!(
        ous,
        vec![
            format!("app:{APP}"),
            format!("organization:{ORG}"),
            format!("space:{SPACE}")
        ]
    );

    assert!(x.serial.bits() >= 64, "serial has at least 64 bits");
    let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert_eq!(life, 3600 + 30, "default 1h TTL plus 30s backdating");
    assert_eq!(
        x.issuer().as_raw(),
        X509Certificate::from_der(&cert.chain_der[0])
            .unwrap()
            .1
            .subject()
            .as_raw()
    );

    // The record was durable before the certificate was handed out: a separate handle sees it.
    let other = Store::open(&rt.config.store, false).await.unwrap();
    let entries: Vec<_> = other
        .ledger_entries(&LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind != EntryKind::Ca)
        .collect();
    assert_eq!(entries.len(), 1);
    let r = &entries[0].record;
    assert_eq!(entries[0].seq, cert.ledger_seq);
    assert_eq!(r.kind, EntryKind::Issued);
    assert_eq!(r.serial.as_deref(), Some(cert.serial_hex.as_str()));
    assert_eq!(r.spiffe_id.as_deref(), Some(expected_spiffe_id().as_str()));
    assert_eq!(
        (
            r.app_guid.as_deref(),
            r.instance_guid.as_deref(),
            r.cell_id.as_deref()
        ),
        (Some(APP), Some(INSTANCE), Some("cell-1"))
    );
    assert_eq!(r.cert_der.as_deref(), Some(cert.cert_der.as_slice()));
    assert_eq!(
        r.issuer_fingerprint.as_deref(),
        Some(rt.ca.intermediate().fingerprint.as_str())
    );
    let spki_hash = idmint::ca::sha256_hex(x.public_key().raw);
    assert_eq!(r.public_key_sha256.as_deref(), Some(spki_hash.as_str()));
    assert_eq!(r.not_after, Some(x.validity().not_after.timestamp()));
    assert_eq!(r.leaf_hash, idmint::ledger::leaf_hash(r));
    rt.shutdown().await;
}

#[tokio::test]
async fn names_and_powers_asked_for_in_a_csr_are_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let csr = openssl_csr(
        dir.path(),
        "greedy",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[
            "-addext",
            "subjectAltName=DNS:evil.example,URI:spiffe://cf.internal/admin,IP:1.2.3.4",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-addext",
            "extendedKeyUsage=codeSigning",
        ],
    );
    let cert = rt
        .issuance
        .sign(SignRequest {
            placement: placement(),
            csr,
            ttl: None,
        })
        .await
        .expect("the key is certified; the requests are ignored");
    let (_, x) = X509Certificate::from_der(&cert.cert_der).unwrap();
    let text = openssl_ok(
        dir.path(),
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            &write_pem(dir.path(), &cert.cert_der),
        ],
    );
    assert!(
        !text.contains("evil.example") && !text.contains("/admin") && !text.contains("1.2.3.4"),
        "{text}"
    );
    assert!(
        !text.contains("requested-name"),
        "subject CN from the CSR leaked: {text}"
    );
    assert!(!text.contains("Code Signing"), "{text}");
    assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
    assert!(!x.key_usage().unwrap().unwrap().value.key_cert_sign());
    let (ok, out) = openssl_verify(dir.path(), &roots(&rt), &cert.chain_der, &cert.cert_der);
    assert!(ok, "{out}");
    rt.shutdown().await;
}

fn write_pem(dir: &std::path::Path, der: &[u8]) -> String {
    let path = dir.join("show.pem");
    std::fs::write(&path, idmint::ca::cert_pem(der)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn rsa_and_p384_keys_are_certified() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    for (name, keygen) in [
        (
            "rsa2048",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "p384",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
    ] {
        let csr = openssl_csr(dir.path(), name, &keygen, &[]);
        let cert = rt
            .issuance
            .sign(SignRequest {
                placement: placement(),
                csr,
                ttl: None,
            })
            .await;
        let cert = cert.unwrap_or_else(|e| panic!("{name}: {e}"));
        let (ok, out) = openssl_verify(dir.path(), &roots(&rt), &cert.chain_der, &cert.cert_der);
        assert!(ok, "{name}: {out}");
    }
    rt.shutdown().await;
}

/// Counts ledger rows by kind.
/// How many certificates were issued and how many requests denied.
async fn kinds(rt: &Runtime) -> (usize, usize) {
    let all = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let count = |kind| all.iter().filter(|e| e.record.kind == kind).count();
    (count(EntryKind::Issued), count(EntryKind::Denied))
}

#[tokio::test]
async fn bad_csrs_are_refused_with_a_clear_reason_and_recorded_as_denials_only() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let good = agent::new_key_and_csr().unwrap().1;
    let mut bad_signature = good.clone();
    let last = bad_signature.len() - 3;
    bad_signature[last] ^= 0x55;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"extra");
    let ed25519 = openssl_csr(dir.path(), "ed", &["-algorithm", "ED25519"], &[]);
    let p521 = openssl_csr(
        dir.path(),
        "p521",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        &[],
    );
    let rsa1024 = openssl_csr(
        dir.path(),
        "rsa1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        &[],
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad signature", bad_signature, "signature does not verify"),
        (
            "garbage",
            b"\x30\x03garbage bytes".to_vec(),
            "not a DER or PEM",
        ),
        ("empty", Vec::new(), "not a DER or PEM"),
        ("trailing data", trailing, "trailing data"),
        (
            "bad PEM",
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n".to_vec(),
            "not a DER or PEM",
        ),
        ("Ed25519", ed25519, "unsupported key type"),
        ("P-521", p521, "unsupported key type EC curve 1.3.132.0.35"),
        ("RSA-1024", rsa1024, "unsupported key type RSA-1024"),
    ];
    for (name, csr, expected) in &cases {
        let err = rt
            .issuance
            .sign(SignRequest {
                placement: placement(),
                csr: csr.clone(),
                ttl: None,
            })
            .await
            .expect_err(name);
        match &err {
            ApiError::Refused(Cause::Ca(e)) => {
                assert!(e.to_string().contains(expected), "{name}: {e}")
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(kinds(&rt).await, (0, cases.len()), "only denials recorded");
    let denials = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    assert!(denials.iter().all(|d| d.record.reason.is_some()
        && d.record.cert_der.is_none()
        && d.record.serial.is_none()));
    rt.shutdown().await;
}

#[tokio::test]
async fn ttl_beyond_the_ca_is_refused_and_ttl_past_its_expiry_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(
        dir.path(),
        &[("ca.intermediate_ttl", "2h"), ("ca.leaf_ttl", "1h")],
    )
    .await;
    let csr = || agent::new_key_and_csr().unwrap().1;

    let err = rt
        .issuance
        .sign(SignRequest {
            placement: placement(),
            csr: csr(),
            ttl: Some("3h".parse().unwrap()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Refused(Cause::Ca(e)) if e.to_string().contains("longer than the issuing CA's whole lifetime")),
        "{err}"
    );
    assert_eq!(kinds(&rt).await, (0, 1));

    // 2h30s is within the CA's 2h+60s life, but ends after it: capped, and the caller is told.
    let cert = rt
        .issuance
        .sign(SignRequest {
            placement: placement(),
            csr: csr(),
            ttl: Some("7230s".parse().unwrap()),
        })
        .await
        .unwrap();
    assert!(cert.capped);
    assert_eq!(cert.not_after, rt.ca.intermediate().not_after);
    let normal = rt
        .issuance
        .sign(SignRequest {
            placement: placement(),
            csr: csr(),
            ttl: None,
        })
        .await
        .unwrap();
    assert!(!normal.capped);
    assert_eq!(kinds(&rt).await, (2, 1));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_template_value_that_is_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    let mut p = placement();
    p.org_guid = None;
    let err = rt
        .issuance
        .sign(SignRequest {
            placement: p,
            csr: agent::new_key_and_csr().unwrap().1,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Refused(Cause::Ca(e)) if e.to_string().contains("{org_guid}")),
        "{err}"
    );
    assert_eq!(kinds(&rt).await, (0, 1));
    rt.shutdown().await;
}

#[tokio::test]
async fn concurrent_issuance_gives_a_dense_ledger_with_unique_serials() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dev_runtime(dir.path(), &[]).await;
    // After the CA's own events (its first JWT signing key).
    let first = rt.audit.entry_count().await.unwrap() as i64;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let issuance = rt.issuance.clone();
            tokio::spawn(async move {
                agent::obtain_svid(&issuance, placement(), None)
                    .await
                    .map(|s| s.cert.ledger_seq)
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (first..first + 200).collect::<Vec<i64>>());
    let entries = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let mut serials: Vec<_> = entries
        .iter()
        .filter(|e| e.record.kind == EntryKind::Issued)
        .map(|e| e.record.serial.clone().unwrap())
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 200);
    rt.shutdown().await;
}
