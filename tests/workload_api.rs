//! The SPIFFE Workload API on each instance's socket, called by a stock gRPC client of another
//! language (Python's grpcio, default options) as an app would: the SVID and bundles, the
//! stream following a revocation and the re-keying it brings, and what bad calls get.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::dev::*;

fn serial_of(cert_pem: &Path) -> String {
    common::serial_of_pem(&std::fs::read(cert_pem).unwrap())
}

/// The Python example in docs/workload-api.md marked `name`.
fn doc_example(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/workload-api.md"))
        .unwrap();
    let marker = format!("<!-- workload-api-example: {name} -->");
    let after = &doc[doc.find(&marker).expect("the example's marker") + marker.len()..];
    let start = after.find("```python\n").unwrap() + "```python\n".len();
    let end = after[start..].find("```").unwrap();
    after[start..start + end].to_string()
}

#[test]
fn an_app_gets_its_identity_from_the_workload_api_and_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(dir.path());
    idmint.register(1);
    let files = idmint.data.join("instances").join(instance(1));
    let endpoint = files.join("spiffe-endpoint.env");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files.join("instance.crt").exists() {
        assert!(Instant::now() < deadline, "no identity files");
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = std::fs::read_to_string(&endpoint).unwrap();
    let socket = line
        .trim()
        .strip_prefix("SPIFFE_ENDPOINT_SOCKET=unix://")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    assert!(Path::new(&socket).is_absolute(), "{socket}");

    // The documented example, as an app runs it with the file in its environment.
    let endpoint_env = format!("unix://{socket}");
    let env = [("SPIFFE_ENDPOINT_SOCKET", endpoint_env.as_str())];
    let said = common::python3(&["-c", &doc_example("python")], &env);
    assert!(
        said.contains(&format!("spiffe_id {}", spiffe_id(1))),
        "{said}"
    );
    let said = common::python3(&["-c", &doc_example("python-jwt")], &env);
    assert_eq!(said.trim(), format!("valid for {}", spiffe_id(1)));

    // The SVID: the instance's certificate, its chain, a key that is its own, the roots.
    let got = common::workload_client(&socket, &["svid"]);
    let svid = &got[0]["svids"][0];
    assert_eq!(svid["spiffe_id"], spiffe_id(1));
    assert_eq!(svid["serial"], serial_of(&files.join("instance.crt")));
    assert_eq!(svid["key_matches"], true);
    assert_eq!(svid["chain"], 2, "leaf and intermediate");
    assert_eq!(svid["roots"], 1);
    assert_eq!(got[0]["crls"], 0, "nothing revoked");
    let bundles = common::workload_client(&socket, &["bundles"]);
    assert_eq!(bundles[0]["bundles"]["spiffe://cf.internal"], 1);

    // A JWT-SVID for two audiences, its ES256 signature checked by Python's cryptography
    // against the JWK set of FetchJWTBundles.
    let jwt = common::workload_client(&socket, &["jwt", "api", "queue"]);
    assert_eq!(jwt[0]["verified"], true, "{jwt:?}");
    assert_eq!(jwt[0]["spiffe_id"], spiffe_id(1));
    let claims = &jwt[0]["claims"];
    assert_eq!(claims["sub"], spiffe_id(1));
    assert_eq!(claims["aud"], serde_json::json!(["api", "queue"]));
    let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(life, 300, "5 minutes by default");

    // Bad calls: no security header; a JWT-SVID for no audience.
    let refused = common::workload_client(&socket, &["no-header"]);
    assert_eq!(refused[0]["code"], "INVALID_ARGUMENT");
    assert!(refused[0]["details"]
        .as_str()
        .unwrap()
        .contains("workload.spiffe.io"));
    let jwt = common::workload_client(&socket, &["jwt"]);
    assert_eq!(jwt[0]["code"], "INVALID_ARGUMENT");
    assert!(jwt[0]["details"].as_str().unwrap().contains("audience"));

    // A stream follows: the instance revoked, it gets the CRL, then its new SVID.
    let old = serial_of(&files.join("instance.crt"));
    let follower = {
        let socket = socket.clone();
        std::thread::spawn(move || common::workload_client(&socket, &["follow", "3"]))
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = idmint.cli(&[
        "revoke",
        "--instance",
        &instance(1),
        "--reason",
        "superseded",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = follower.join().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0]["svids"][0]["serial"], old);
    let last = &seen[2];
    assert_ne!(last["svids"][0]["serial"], old);
    assert_eq!(last["svids"][0]["key_matches"], true);
    assert_eq!(last["crls"], 1, "the CRL listing the old one");

    // Deregistered: the endpoint file goes with the instance's other files, once the agent
    // has stopped serving the instance (it does so after the deregistration returns).
    let out = idmint.cli(&["instance", "deregister", &instance(1)]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint.exists() {
        assert!(Instant::now() < deadline, "the endpoint file stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SPIFFE Workload API client of the Rust `spiffe` crate, as an app would hold it: an
/// X.509 source on the endpoint the instance's file names, following a renewal (10 s
/// certificates) and a rotation of the intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_library_follows_renewals_and_a_ca_rotation() {
    use spiffe::{TrustDomain, X509Source};
    let dir = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(dir.path(), &["ca.leaf_ttl=10s"]);
    idmint.register(1);
    let endpoint = idmint
        .data
        .join("instances")
        .join(instance(1))
        .join("spiffe-endpoint.env");
    let line = std::fs::read_to_string(&endpoint).unwrap();
    let address = line.trim().strip_prefix("SPIFFE_ENDPOINT_SOCKET=").unwrap();
    let source = tokio::time::timeout(
        Duration::from_secs(20),
        X509Source::builder().endpoint(address).build(),
    )
    .await
    .expect("the source syncs")
    .expect("the source syncs");
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id(1));
    assert_eq!(svid.cert_chain().len(), 2);
    let td = TrustDomain::new("cf.internal").unwrap();
    let bundles = source.bundle_set().unwrap();
    assert_eq!(bundles.get(&td).unwrap().authorities().len(), 1);

    // A renewal reaches it without asking.
    let first = svid.leaf().as_bytes().to_vec();
    let wait_for = |what: &'static str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the renewed SVID", &|| {
        source.svid().unwrap().leaf().as_bytes() != first.as_slice()
    });

    // A new intermediate: the source's SVID is re-issued under it at once.
    let before = source.svid().unwrap().cert_chain()[1].as_bytes().to_vec();
    let out = idmint.cli(&["ca", "rotate", "intermediate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("an SVID under the new intermediate", &|| {
        source.svid().unwrap().cert_chain()[1].as_bytes() != before.as_slice()
    });
    source.shutdown().await;
}
