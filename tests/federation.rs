//! Federation between trust domains through their SPIFFE bundle endpoints: two `idmint dev`
//! foundations, each fetching the other's bundle (one over `https_web`, one over
//! `https_spiffe`), an Envoy consumer in one calling a provider in the other over mTLS, a root
//! rotation reaching the other side at the refresh hint, the last good bundle kept while the
//! other side is gone; and what a misbehaving endpoint gets.

// Tests wait on real processes with real deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dev::*;
use common::envoy::*;
use common::workload_client as workload;
use idmint::clock::Clock;
use idmint::jwt::BundleDoc;
use idmint::server::federation::{Federation, FetchError, Foreign, Profile};

const TD_A: &str = "fa.example";
const TD_B: &str = "fb.example";

fn id_in(td: &str, n: u8) -> String {
    format!("spiffe://{td}/org/{ORG}/space/{SPACE}/app/{}", app(n))
}

/// How many roots of `td` the Workload API on `socket` gives.
fn roots_of(socket: &str, td: &str) -> u64 {
    let got = workload(socket, &["bundles"]);
    got[0]["bundles"][format!("spiffe://{td}")]
        .as_u64()
        .unwrap_or(0)
}

/// A metric line's value, labels included in `name`.
fn metric(idmint: &Idmint, name: &str) -> Option<i64> {
    let (_, body) = common::http_get(idmint.admin, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn two_foundations_federate_through_their_bundle_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (web_ca, web_cert, web_key) = common::web_certificate(&dir_a);
    let (a_web, b_spiffe) = (common::free_port(), common::free_port());

    // B trusts A through A's web-PKI endpoint.
    let config_b = dir_b.join("idmint.toml");
    std::fs::write(
        &config_b,
        format!(
            "[[federation]]\ntrust_domain = \"{TD_A}\"\nbundle_endpoint_url = \"https://localhost:{a_web}/\"\n\
             profile = \"https_web\"\nca_file = \"{}\"\n",
            web_ca.display()
        ),
    )
    .unwrap();
    let b = Idmint::start_configured(
        &dir_b,
        Some(&config_b),
        &[
            &format!("trust_domain={TD_B}"),
            &format!("bundle_endpoint.spiffe_listen=127.0.0.1:{b_spiffe}"),
            "bundle_endpoint.refresh_hint=2s",
        ],
    );
    // A trusts B through B's own SVID, starting from B's bundle exchanged out of band.
    let b_bundle = dir_a.join("fb-bundle.pem");
    std::fs::copy(b.data.join("bundle.pem"), &b_bundle).unwrap();
    let config_a = dir_a.join("idmint.toml");
    std::fs::write(
        &config_a,
        format!(
            "[[federation]]\nbundle_endpoint_url = \"https://127.0.0.1:{b_spiffe}/\"\n\
             profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{TD_B}/server\"\n\
             bundle_file = \"{}\"\n",
            b_bundle.display()
        ),
    )
    .unwrap();
    let a = Idmint::start_configured(
        &dir_a,
        Some(&config_a),
        &[
            &format!("trust_domain={TD_A}"),
            &format!("bundle_endpoint.web_listen=127.0.0.1:{a_web}"),
            &format!("bundle_endpoint.web_cert_file={}", web_cert.display()),
            &format!("bundle_endpoint.web_key_file={}", web_key.display()),
            "bundle_endpoint.refresh_hint=2s",
        ],
    );
    let age = |idmint: &Idmint, td: &str| {
        metric(
            idmint,
            &format!("idmint_federated_bundle_age_seconds{{trust_domain=\"{td}\"}}"),
        )
    };
    wait_until("B to fetch A's bundle", Duration::from_secs(20), || {
        age(&b, TD_A).is_some_and(|s| s >= 0)
    });
    wait_until("A to fetch B's bundle", Duration::from_secs(20), || {
        age(&a, TD_B).is_some_and(|s| s >= 0)
    });

    // App 1 in A calls app 2 in B: A's consumer trusts B's bundle (spiffe://fb.example), B's
    // provider trusts A's through ALL.
    let sock_a = a.register(1);
    let sock_b = b.register(2);
    assert_eq!(roots_of(&sock_a, TD_B), 1, "A's apps hold B's bundle");
    assert_eq!(roots_of(&sock_b, TD_A), 1, "B's apps hold A's bundle");
    let svid = workload(&sock_a, &["svid"]);
    assert_eq!(
        svid[0]["federated"], 1,
        "FetchX509SVID's federated_bundles: {svid:?}"
    );
    let backend = start_backend();
    let provider = start_envoy(
        &dir_b,
        "provider-b",
        EnvoyConfig {
            role: "provider",
            socket: &sock_b,
            api: "DELTA_GRPC",
            peer: &id_in(TD_A, 1),
            upstream: backend,
            cert_name: None,
            validation_name: Some("ALL"),
            max_connection_duration: "600s",
        },
    );
    let peer_b = id_in(TD_B, 2);
    let validation_b = format!("spiffe://{TD_B}");
    let consumer = start_envoy(
        &dir_a,
        "consumer-a",
        EnvoyConfig {
            role: "consumer",
            socket: &sock_a,
            api: "GRPC",
            peer: &peer_b,
            upstream: provider.listen,
            cert_name: None,
            validation_name: Some(&validation_b),
            max_connection_duration: "600s",
        },
    );
    wait_until("both sidecars' secrets", Duration::from_secs(30), || {
        stat(&provider, "sds.default.update_success") >= 1
            && stat(&provider, "sds.ALL.update_success") >= 1
            && stat(&consumer, "sds.default.update_success") >= 1
            // Envoy writes the secret spiffe://fb.example as spiffe_fb.example in stat names.
            && stat(&consumer, "sds.spiffe_fb.example.update_success") >= 1
    });
    let mut answer = None;
    wait_until(
        "a request across the trust domains",
        Duration::from_secs(20),
        || {
            answer = common::http_get(consumer.listen, "/");
            answer.as_ref().is_some_and(|(status, _)| *status == 200)
        },
    );
    let (_, body) = answer.unwrap();
    assert!(
        body.contains(&id_in(TD_A, 1)),
        "the provider saw A's app: {body}"
    );

    // In policy mode, B's app 2 lets in A's app 1 by its SPIFFE ID, and not A's app 3: a
    // provider on c2c-validation-context accepts the one, refuses the other.
    let cli_b = |args: &[&str]| {
        let out = b.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let a1 = id_in(TD_A, 1);
    cli_b(&["policy", "add", "--source", &a1, "--destination", &app(2)]);
    cli_b(&["policy", "mode", "set", "policy", "--app", &app(2)]);
    // Bad sources: an ID of B's own trust domain (apps here go by GUID), not a SPIFFE ID.
    for (bad, says) in [
        (id_in(TD_B, 4), "name this foundation's apps by app GUID"),
        ("spiffe://fa.example/a b".to_string(), "source"),
    ] {
        let out = b.cli(&["policy", "add", "--source", &bad, "--destination", &app(2)]);
        assert!(!out.status.success(), "{bad} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }
    let guarded = start_envoy(
        &dir_b,
        "provider-b-policy",
        EnvoyConfig {
            role: "provider",
            socket: &sock_b,
            api: "GRPC",
            peer: &a1,
            upstream: backend,
            cert_name: None,
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    let sock_a3 = a.register(3);
    let consumer_for = |name: &str, socket: &str| {
        start_envoy(
            &dir_a,
            name,
            EnvoyConfig {
                role: "consumer",
                socket,
                api: "GRPC",
                peer: &peer_b,
                upstream: guarded.listen,
                cert_name: None,
                validation_name: Some(&validation_b),
                max_connection_duration: "600s",
            },
        )
    };
    let (allowed, refused) = (
        consumer_for("consumer-a1", &sock_a),
        consumer_for("consumer-a3", &sock_a3),
    );
    let mut answer = None;
    wait_until(
        "A's app 1 through B's policy",
        Duration::from_secs(20),
        || {
            answer = common::http_get(allowed.listen, "/");
            answer.as_ref().is_some_and(|(status, _)| *status == 200)
        },
    );
    // Refused by the provider, not for want of its own secrets: it has both, and its peer
    // (the same provider) just let app 1 in.
    wait_until("A's app 3's sidecar ready", Duration::from_secs(20), || {
        stat(&refused, "sds.default.update_success") >= 1
            && stat(&refused, "sds.spiffe_fb.example.update_success") >= 1
    });
    for _ in 0..3 {
        let not_let_in = common::http_get(refused.listen, "/");
        assert!(
            not_let_in.as_ref().is_none_or(|(status, _)| *status != 200),
            "A's app 3 got through: {not_let_in:?}"
        );
    }

    // A JWT-SVID of B's app validates on A's socket, against B's keys.
    let jwt = workload(&sock_b, &["jwt", "orders"]);
    let token = jwt[0]["token"].as_str().unwrap();
    let checked = workload(&sock_a, &["validate", "orders", token]);
    assert_eq!(checked[0]["spiffe_id"], peer_b, "{checked:?}");

    // A new root in B reaches A at B's refresh hint.
    let out = b.cli(&["ca", "rotate", "root"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("B's new root in A", Duration::from_secs(20), || {
        roots_of(&sock_a, TD_B) == 2
    });

    // B goes away: A keeps the last good bundle, and says how old it is.
    drop(b);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(roots_of(&sock_a, TD_B), 2, "the last good bundle stays");
    assert!(age(&a, TD_B).unwrap() >= 4, "its age grows");
    let failures = metric(
        &a,
        &format!("idmint_federated_bundle_failures{{trust_domain=\"{TD_B}\"}}"),
    );
    assert!(failures.unwrap() >= 1);
    let log = std::fs::read_to_string(dir_a.join("idmint.log")).unwrap();
    assert!(log.contains("cannot refresh the bundle"), "{log}");
}

/// A bundle endpoint of the test's own that answers each path as told.
struct BadEndpoint {
    _process: Running,
    port: u16,
    ca_file: std::path::PathBuf,
}

fn bad_endpoint(dir: &Path, routes: serde_json::Value) -> BadEndpoint {
    let (ca_file, cert, key) = common::web_certificate(dir);
    let routes_file = dir.join("routes.json");
    std::fs::write(&routes_file, routes.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bundle_server.py");
    let mut child = Command::new("python3")
        .args([script, cert.to_str().unwrap(), key.to_str().unwrap()])
        .arg(&routes_file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    BadEndpoint {
        _process: Running(child),
        port: line.trim().parse().unwrap(),
        ca_file,
    }
}

/// A root certificate whose URI SAN names `td`.
fn root_of(td: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("spiffe://{td}")]).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(format!("spiffe://{td}")).unwrap(),
    )];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

fn bundle_json(roots: Vec<Vec<u8>>, sequence: u64) -> serde_json::Value {
    let doc = BundleDoc {
        x509_roots: roots,
        sequence: Some(sequence),
        refresh_hint: Some(60),
        ..BundleDoc::default()
    };
    serde_json::from_str(&doc.to_json().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_endpoint_changes_nothing_held() {
    let dir = tempfile::tempdir().unwrap();
    let good = bundle_json(vec![root_of(TD_B)], 5);
    let empty = serde_json::json!({"keys": [], "spiffe_sequence": 7});
    let endpoint = bad_endpoint(
        dir.path(),
        serde_json::json!({
            "/good": [200, {"Content-Type": "application/json"}, good],
            "/garbage": [200, {}, "this is not JSON"],
            "/not-a-bundle": [200, {}, {"hello": "world"}],
            "/other-domain": [200, {}, bundle_json(vec![root_of("evil.example")], 9)],
            "/older": [200, {}, bundle_json(vec![root_of(TD_B)], 1)],
            "/huge": [200, {}, {"repeat": " ", "times": 2_000_000}],
            "/error": [503, {}, "down"],
            "/elsewhere": [302, {"Location": "https://evil.example:443/good"}, ""],
            "/moved": [302, {"Location": "/good"}, ""],
            "/empty": [200, {}, empty],
        }),
    );
    let foreign = |path: &str| Foreign {
        trust_domain: TD_B.parse().unwrap(),
        url: format!("https://localhost:{}{path}", endpoint.port)
            .parse()
            .unwrap(),
        profile: Profile::Web {
            ca_file: Some(endpoint.ca_file.clone()),
        },
        bundle_file: None,
    };
    let federation = Federation::new(vec![foreign("/good")], Clock::system()).unwrap();
    let held = |f: &Federation| f.held().get(TD_B).map(|h| h.doc.clone());

    // A redirect within the endpoint's host is followed; the bundle is taken.
    federation.refresh(&foreign("/moved")).await.unwrap();
    let first = held(&federation).unwrap();
    assert_eq!(first.sequence, Some(5));
    assert_eq!(federation.now()[0].trust_domain.as_str(), TD_B);

    for (path, expected) in [
        ("/garbage", "not a SPIFFE bundle"),
        ("/not-a-bundle", "not a SPIFFE bundle"),
        ("/other-domain", "evil.example"),
        ("/older", "older"),
        ("/huge", "longer than"),
        ("/error", "503"),
        ("/elsewhere", "another host"),
    ] {
        let err = federation.refresh(&foreign(path)).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{path}: {err}");
        assert_eq!(
            held(&federation).unwrap(),
            first,
            "{path} changed what is held"
        );
    }
    // Not our endpoint: a web client that does not trust its certificate.
    let untrusted = Foreign {
        profile: Profile::Web {
            ca_file: Some(dir.path().join("web.pem")),
        },
        ..foreign("/good")
    };
    let err = federation.refresh(&untrusted).await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(..)), "{err}");

    // A bundle that withdraws every key is the trust domain's word: taken, so nothing of
    // it is trusted any more.
    federation.refresh(&foreign("/empty")).await.unwrap();
    let now = held(&federation).unwrap();
    assert!(now.x509_roots.is_empty() && now.jwt_keys.is_empty());
    assert!(federation.now()[0].roots_pem.is_empty());
}
