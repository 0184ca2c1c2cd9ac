//! Upstream mode: an operator's intermediate and roots, made with openssl in every key format
//! an existing Diego CA may hand over, sign leaves that openssl verifies.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::*;
use idmint::agent;
use idmint::app::Runtime;
use idmint::ca::Init;

const INTERMEDIATE_EXT: &str = "[v3]\n\
    basicConstraints = critical, CA:TRUE, pathlen:0\n\
    keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
    subjectKeyIdentifier = hash\n\
    authorityKeyIdentifier = keyid\n\
    [leafish]\n\
    basicConstraints = critical, CA:FALSE\n\
    keyUsage = critical, digitalSignature\n";

/// Makes an openssl root (P-256) in `dir`: root.key, root.pem.
fn make_root(dir: &Path, name: &str) {
    openssl_ok(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{name}.key"),
        ],
    );
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/O=Operator/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Makes a key with `genpkey`-style `keygen` args, converted by `convert` (e.g. to SEC1 or
/// PKCS#1), and a certificate for it signed by `root` with the `section` extensions.
fn make_signed(
    dir: &Path,
    name: &str,
    keygen: &[&str],
    convert: Option<&[&str]>,
    root: &str,
    section: &str,
) {
    let key = format!("{name}.key");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(keygen);
    args.extend_from_slice(&["-out", &key]);
    openssl_ok(dir, &args);
    if let Some(convert) = convert {
        let mut args = convert.to_vec();
        args.extend_from_slice(&["-in", &key, "-out", &key]);
        openssl_ok(dir, &args);
    }
    std::fs::write(dir.join("ext.cnf"), INTERMEDIATE_EXT).unwrap();
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/O=Operator/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl_ok(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{root}.pem"),
            "-CAkey",
            &format!("{root}.key"),
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-extensions",
            section,
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn upstream_config(dir: &Path, cert: &str, key: &str, roots: &str) -> idmint::config::Config {
    let path = |f: &str| dir.join(f).display().to_string();
    config_in(
        &dir.join("data"),
        &[
            ("ca.mode", "upstream"),
            ("ca.upstream.intermediate_cert", &path(cert)),
            ("ca.upstream.intermediate_key", &path(key)),
            ("ca.upstream.root_bundle", &path(roots)),
        ],
    )
}

async fn issue_and_verify(dir: &Path, name: &str, key_header: &str) {
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    assert!(
        key_pem.contains(key_header),
        "{name}.key is {key_header}: {key_pem}"
    );
    let config = upstream_config(
        dir,
        &format!("{name}.pem"),
        &format!("{name}.key"),
        "root.pem",
    );
    let rt = Runtime::start(config, Init::CreateIfMissing)
        .await
        .expect("upstream CA loads");
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .expect("issues");
    let roots: Vec<Vec<u8>> = rt.ca.roots().iter().map(|r| r.der.clone()).collect();
    let (ok, out) = openssl_verify(dir, &roots, &svid.cert.chain_der, &svid.cert.cert_der);
    assert!(ok, "{name}: openssl verify: {out}");
    webpki_verify(&roots, &svid.cert.chain_der, &svid.cert.cert_der).expect("webpki verifies");
    let strict = strict_der::certificate(name, &svid.cert.cert_der);
    let rsa = name.starts_with("rsa");
    assert_eq!(
        (
            strict.signature_algorithm.as_str(),
            strict.signature_parameters_absent
        ),
        if rsa {
            (strict_der::oid::RSA_SHA256, false)
        } else {
            (strict_der::oid::ECDSA_SHA256, true)
        },
        "{name}: the algorithm the intermediate's key signs with"
    );
    python_strict(
        dir,
        &[PyItem::cert(
            &svid.cert.cert_der,
            Some(&svid.cert.chain_der[0]),
        )],
    );
    assert_eq!(
        svid.cert.chain_der.len(),
        1,
        "chain is the operator's intermediate"
    );
    // Revoked, the leaf is listed in a CRL the operator's intermediate signs (we hold its
    // key), which openssl and Python's cryptography check against it.
    use idmint::server::revocations::Target;
    rt.revocations
        .revoke(
            &Target::Serial(svid.cert.serial_hex.clone()),
            idmint::ca::crl::Reason::KeyCompromise,
            "test",
        )
        .await
        .unwrap();
    let revoked = rt.revocations.now();
    let inter = &svid.cert.chain_der[0];
    let crl = revoked
        .crls
        .iter()
        .find(|c| c.issuer_fingerprint == idmint::ca::sha256_hex(inter))
        .expect("a CRL for the operator's intermediate");
    assert!(revoked.crls_pem.contains("BEGIN X509 CRL"));
    std::fs::write(dir.join(format!("{name}.crl")), &crl.der).unwrap();
    std::fs::write(
        dir.join(format!("{name}-inter.pem")),
        idmint::ca::cert_pem(inter),
    )
    .unwrap();
    let (ok, out) = openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &format!("{name}.crl"),
            "-CAfile",
            &format!("{name}-inter.pem"),
            "-noout",
            "-verify",
        ],
    );
    assert!(ok && out.contains("verify OK"), "{name}: {out}");
    let read = python_strict(dir, &[PyItem::crl(&crl.der, inter)]);
    assert_eq!(read[0]["signature_verified"], true, "{name}");
    // The operator's intermediate key stays in its file; the KEK seals only the ledger's
    // checkpoint signing key.
    let store = rt.store();
    let keys = store.log_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(dir.join("data").join("kek").exists());
    rt.shutdown().await;
}

#[tokio::test]
async fn p256_intermediates_in_sec1_and_pkcs8_sign_verifiable_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_root(d, "root");
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    make_signed(d, "ec-sec1", &p256, Some(&["ec"]), "root", "v3");
    issue_and_verify(d, "ec-sec1", "BEGIN EC PRIVATE KEY").await;
    make_signed(d, "ec-pkcs8", &p256, None, "root", "v3");
    issue_and_verify(d, "ec-pkcs8", "BEGIN PRIVATE KEY").await;
}

#[tokio::test]
async fn rsa_intermediates_in_pkcs1_and_pkcs8_sign_verifiable_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_root(d, "root");
    let rsa = |bits: &'static str| ["-algorithm", "RSA", "-pkeyopt", bits];
    make_signed(
        d,
        "rsa2048-pkcs1",
        &rsa("rsa_keygen_bits:2048"),
        Some(&["rsa", "-traditional"]),
        "root",
        "v3",
    );
    issue_and_verify(d, "rsa2048-pkcs1", "BEGIN RSA PRIVATE KEY").await;
    make_signed(
        d,
        "rsa3072-pkcs8",
        &rsa("rsa_keygen_bits:3072"),
        None,
        "root",
        "v3",
    );
    issue_and_verify(d, "rsa3072-pkcs8", "BEGIN PRIVATE KEY").await;
}

async fn refused(dir: &Path, cert: &str, key: &str, roots: &str) -> String {
    let config = upstream_config(dir, cert, key, roots);
    let err = Runtime::start(config, Init::CreateIfMissing)
        .await
        .err()
        .expect("refused");
    format!("{err:#}")
}

#[tokio::test]
async fn broken_upstream_material_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_root(d, "root");
    make_root(d, "other-root");
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    make_signed(d, "inter", &p256, None, "root", "v3");
    make_signed(d, "stranger", &p256, None, "root", "v3");
    make_signed(d, "not-a-ca", &p256, None, "root", "leafish");
    make_signed(d, "foreign", &p256, None, "other-root", "v3");
    let path = |f: &str| d.join(f).display().to_string();

    let text = refused(d, "inter.pem", "stranger.key", "root.pem").await;
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains(&path("stranger.key")), "{text}");

    let text = refused(d, "not-a-ca.pem", "not-a-ca.key", "root.pem").await;
    assert!(text.contains("not a CA certificate"), "{text}");
    assert!(text.contains(&path("not-a-ca.pem")), "{text}");

    let text = refused(d, "foreign.pem", "foreign.key", "root.pem").await;
    assert!(text.contains("no root in the bundle"), "{text}");
    assert!(text.contains(&path("root.pem")), "{text}");

    let text = refused(d, "inter.pem", "missing.key", "root.pem").await;
    assert!(text.contains(&path("missing.key")), "{text}");

    std::fs::write(
        d.join("garbage.key"),
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = refused(d, "inter.pem", "garbage.key", "root.pem").await;
    assert!(text.contains(&path("garbage.key")), "{text}");

    std::fs::write(d.join("empty.pem"), b"").unwrap();
    let text = refused(d, "empty.pem", "inter.key", "root.pem").await;
    assert!(text.contains(&path("empty.pem")), "{text}");

    let p384 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
    make_signed(d, "p384", &p384, None, "root", "v3");
    let text = refused(d, "p384.pem", "p384.key", "root.pem").await;
    assert!(text.contains(&path("p384.key")), "{text}");
}

/// The committed development credentials: a valid chain, labelled, usable as an upstream CA.
#[tokio::test]
async fn committed_dev_credentials_form_a_labelled_working_chain() {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    for name in ["root.pem", "intermediate.pem", "cell-dev-cell-1.pem"] {
        let subject = openssl_ok(&certs, &["x509", "-in", name, "-noout", "-subject"]);
        assert!(subject.contains("DEVELOPMENT ONLY"), "{name}: {subject}");
    }
    let out = openssl_ok(
        &certs,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "-purpose",
            "sslclient",
            "cell-dev-cell-1.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let san = openssl_ok(
        &certs,
        &[
            "x509",
            "-in",
            "cell-dev-cell-1.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        san.contains("URI:spiffe://cf.internal/cell/dev-cell-1"),
        "{san}"
    );

    let dir = tempfile::tempdir().unwrap();
    for f in ["root.pem", "intermediate.pem", "intermediate.key"] {
        std::fs::copy(certs.join(f), dir.path().join(f)).unwrap();
    }
    let config = upstream_config(
        dir.path(),
        "intermediate.pem",
        "intermediate.key",
        "root.pem",
    );
    let rt = Runtime::start(config, Init::CreateIfMissing)
        .await
        .expect("dev intermediate loads");
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .expect("issues");
    let roots: Vec<Vec<u8>> = rt.ca.roots().iter().map(|r| r.der.clone()).collect();
    let (ok, text) = openssl_verify(
        dir.path(),
        &roots,
        &svid.cert.chain_der,
        &svid.cert.cert_der,
    );
    assert!(ok, "{text}");
    rt.shutdown().await;
}

/// Puts `cert`, `key` and `roots` (files in `d`) in place as the live upstream files, each
/// replaced whole.
fn install(d: &Path, cert: &str, key: &str, roots: &str) {
    for (from, to) in [
        (cert, "live.pem"),
        (key, "live.key"),
        (roots, "live-roots.pem"),
    ] {
        std::fs::copy(d.join(from), d.join("staging")).unwrap();
        std::fs::rename(d.join("staging"), d.join(to)).unwrap();
    }
}

fn whats(events: &[idmint::ca::rotate::CaEvent]) -> Vec<String> {
    events.iter().map(|e| e.what.clone()).collect()
}

fn assert_has(events: &[String], start: &str) {
    assert!(
        events.iter().any(|e| e.starts_with(start)),
        "no {start:?} in {events:?}"
    );
}

#[tokio::test]
async fn replaced_files_are_taken_up_live_with_the_overlap_rules_and_bad_ones_refused() {
    use idmint::ca::upstream_watch::UpstreamWatch;
    use time::OffsetDateTime;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    make_root(d, "root1");
    make_signed(d, "inter1", &p256, None, "root1", "v3");
    make_signed(d, "inter2", &p256, None, "root1", "v3");
    make_root(d, "root2");
    make_signed(d, "inter3", &p256, None, "root2", "v3");
    install(d, "inter1.pem", "inter1.key", "root1.pem");
    let path = |f: &str| d.join(f).display().to_string();
    let config = config_in(
        &d.join("data"),
        &[
            ("ca.mode", "upstream"),
            ("ca.upstream.intermediate_cert", &path("live.pem")),
            ("ca.upstream.intermediate_key", &path("live.key")),
            ("ca.upstream.root_bundle", &path("live-roots.pem")),
            ("ca.leaf_ttl", "1m"),
        ],
    );
    let files = match &config.ca.mode {
        idmint::ca::Mode::Upstream(f) => f.clone(),
        _ => unreachable!(),
    };
    let rt = Runtime::start(config, Init::CreateIfMissing).await.unwrap();
    let der = |name: &str| {
        let pem = std::fs::read(d.join(name)).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    };
    let fp = |name: &str| idmint::ca::sha256_hex(&der(name));
    let roots = || {
        rt.ca
            .roots()
            .into_iter()
            .map(|r| r.fingerprint)
            .collect::<Vec<_>>()
    };
    // One sidecar connected, which has acknowledged nothing newer than generation 0.
    let (fleet, fleet_rx) = tokio::sync::watch::channel(Some(0));
    let mut watch =
        UpstreamWatch::new(rt.ca.clone(), files, rt.issuance.ledger().clone(), fleet_rx);
    let now = OffsetDateTime::now_utc();
    assert!(watch.step(now).await.is_empty(), "nothing changed yet");

    // A new intermediate under the same root signs at once.
    install(d, "inter2.pem", "inter2.key", "root1.pem");
    let events = whats(&watch.step(now).await);
    assert_has(&events, "upstream intermediate activated");
    assert_eq!(rt.ca.intermediate().fingerprint, fp("inter2.pem"));
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .unwrap();
    let (ok, out) = openssl_verify(
        d,
        &[der("root1.pem")],
        &svid.cert.chain_der,
        &svid.cert.cert_der,
    );
    assert!(ok, "{out}");

    // A key that is not a key is refused; the CA in use keeps signing.
    std::fs::write(d.join("live.key"), "not a key\n").unwrap();
    assert!(watch.step(now).await.is_empty());
    assert_eq!(rt.ca.intermediate().fingerprint, fp("inter2.pem"));
    agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .expect("still issuing");

    // An intermediate under a new root: the root joins the bundle first; the intermediate
    // signs only once the sidecar has acknowledged a bundle containing it.
    install(d, "inter3.pem", "inter3.key", "root2.pem");
    let events = whats(&watch.step(now).await);
    assert_has(&events, "upstream root added");
    assert_eq!(roots(), [fp("root1.pem"), fp("root2.pem")]);
    assert_eq!(
        rt.ca.intermediate().fingerprint,
        fp("inter2.pem"),
        "not yet"
    );
    assert!(
        watch.step(now).await.is_empty(),
        "still waiting for the sidecar"
    );
    fleet.send_replace(Some(rt.ca.generation()));
    let events = whats(&watch.step(now).await);
    assert_has(&events, "upstream intermediate activated");
    assert_has(&events, "upstream root left the files");
    assert_eq!(rt.ca.intermediate().fingerprint, fp("inter3.pem"));
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .unwrap();
    let (ok, out) = openssl_verify(
        d,
        &[der("root2.pem")],
        &svid.cert.chain_der,
        &svid.cert.cert_der,
    );
    assert!(ok, "new leaves chain to the new root: {out}");
    assert_eq!(
        roots().len(),
        2,
        "the old root stays while leaves under it live"
    );

    // Once a leaf's lifetime and the clock-skew allowance have passed, the old root goes.
    let later = now + time::Duration::seconds(60 + 30 + 1);
    let events = whats(&watch.step(later).await);
    assert_has(&events, "root pruned");
    assert_eq!(roots(), [fp("root2.pem")]);
    let ca_events = rt
        .audit
        .list(&idmint::store::LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == idmint::store::EntryKind::Ca)
        .count();
    assert!(ca_events >= 6, "{ca_events} CA events recorded");
    rt.shutdown().await;
}
