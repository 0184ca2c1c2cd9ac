//! JWT-SVIDs through the Workload API, with the Rust `spiffe` crate as the app's client: a token
//! fetched for an audience validates through `ValidateJWTSVID` and, independently, with the
//! crate's own verifier against the JWT bundle; the wrong audience, an expired token, a token
//! of another trust domain and forged ones are refused by both; every token is in the ledger
//! before the app has it.

// Tests wait on real processes with real deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::dev::*;
use spiffe::{JwtSource, JwtSvid, WorkloadApiClient};

fn endpoint(idmint: &Idmint, n: u8) -> String {
    let file = idmint
        .data
        .join("instances")
        .join(instance(n))
        .join("spiffe-endpoint.env");
    let line = std::fs::read_to_string(file).unwrap();
    line.trim()
        .strip_prefix("SPIFFE_ENDPOINT_SOCKET=")
        .unwrap()
        .to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `token` with its payload replaced by `payload` and, unless `sig` is given, its signature kept.
fn tampered(token: &str, header: Option<&str>, payload: Option<&str>, sig: Option<&str>) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let h = header.map(|h| B64.encode(h)).unwrap_or(parts[0].into());
    let p = payload.map(|p| B64.encode(p)).unwrap_or(parts[1].into());
    let s = sig.unwrap_or(parts[2]);
    format!("{h}.{p}.{s}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_library_fetches_and_validates_jwt_svids() {
    let dir = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(dir.path(), &["jwt.svid_ttl=4s"]);
    idmint.register(1);
    let address = endpoint(&idmint, 1);
    let source = tokio::time::timeout(
        Duration::from_secs(20),
        JwtSource::builder().endpoint(&address).build(),
    )
    .await
    .expect("the source syncs")
    .expect("the source syncs");
    let client = WorkloadApiClient::connect_to(&address).await.unwrap();

    let svid = source.fetch_jwt_svid(["api", "queue"]).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id(1));
    assert_eq!(svid.audience(), ["api", "queue"]);

    // Recorded under its jti: its subject, audiences, expiry, key and the token's hash.
    let payload = svid.token().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    let jti = claims["jti"].as_str().unwrap();
    let out = idmint.cli(&["audit", "list", "--serial", jti, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = &listed.as_array().unwrap()[0];
    assert_eq!(entry["kind"], "jwt_svid");
    assert_eq!(entry["spiffe_id"], spiffe_id(1));
    assert_eq!(entry["instance_guid"], instance(1));
    assert_eq!(entry["issuer_fingerprint"], svid.key_id());
    assert_eq!(entry["not_after"], svid.expiry().unix_timestamp());
    let details: serde_json::Value =
        serde_json::from_str(entry["reason"].as_str().unwrap()).unwrap();
    assert_eq!(details["audience"], serde_json::json!(["api", "queue"]));
    assert_eq!(details["token_sha256"], sha256_hex(svid.token().as_bytes()));

    // Valid for each audience: through the Workload API, and with the crate's own verifier
    // against the JWT bundle the source holds.
    for audience in ["api", "queue"] {
        let checked = client.validate_jwt_token(audience, svid.token()).await;
        assert_eq!(checked.unwrap().spiffe_id().to_string(), spiffe_id(1));
        let bundles = source.bundle_set().unwrap();
        JwtSvid::parse_and_validate(svid.token(), &*bundles, &[audience]).unwrap();
    }
    let bundles = source.bundle_set().unwrap();
    assert!(client
        .validate_jwt_token("other", svid.token())
        .await
        .is_err());
    assert!(JwtSvid::parse_and_validate(svid.token(), &*bundles, &["other"]).is_err());

    // Forged: a changed subject under the old signature, alg none, an unknown key.
    let other_sub = format!(
        r#"{{"sub":"{}","aud":["api"],"exp":{}}}"#,
        spiffe_id(2),
        svid.expiry().unix_timestamp()
    );
    let forged = [
        tampered(svid.token(), None, Some(&other_sub), None),
        tampered(
            svid.token(),
            Some(r#"{"alg":"none"}"#),
            Some(&other_sub),
            Some(""),
        ),
        tampered(
            svid.token(),
            Some(r#"{"alg":"ES256","kid":"unknown","typ":"JWT"}"#),
            None,
            None,
        ),
        "not.a.jwt".to_string(),
    ];
    for token in &forged {
        let err = client.validate_jwt_token("api", token).await;
        assert!(err.is_err(), "{token} validated");
        assert!(JwtSvid::parse_and_validate(token, &*bundles, &["api"]).is_err());
    }

    // Another trust domain's token, signed by a key of its own.
    let key = idmint::jwt::SigningKey::generate().unwrap().0;
    let foreign = key
        .sign(&idmint::jwt::Claims {
            subject: "spiffe://elsewhere.example/app".into(),
            audience: vec!["api".into()],
            expires_at: svid.expiry().unix_timestamp(),
            issued_at: svid.expiry().unix_timestamp() - 4,
            token_id: "x".into(),
        })
        .unwrap();
    let err = client
        .validate_jwt_token("api", &foreign)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("elsewhere.example"), "{err}");
    assert!(JwtSvid::parse_and_validate(&foreign, &*bundles, &["api"]).is_err());

    // Expired: refused by both.
    let wait = svid.expiry() - time::OffsetDateTime::now_utc() + Duration::from_secs(1);
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    let err = client
        .validate_jwt_token("api", svid.token())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(JwtSvid::parse_and_validate(svid.token(), &*bundles, &["api"]).is_err());
    let fresh = source.fetch_jwt_svid(["api"]).await.unwrap();
    assert_ne!(fresh.token(), svid.token());
    client
        .validate_jwt_token("api", fresh.token())
        .await
        .unwrap();
    source.shutdown().await;
}

/// Two servers on one PostgreSQL keep one set of JWT keys: the first key is made once, a
/// successor is published well before it signs, and the key it replaces stays published
/// until the last token it signed has expired. Each step is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_rotate_with_overlap_on_one_postgres_shared_by_two_servers() {
    use idmint::clock::ManualClock;
    use idmint::jwt::{token, JwtKeys, Settings};
    use idmint::store::{EntryKind, LedgerFilter, Store};

    let url = common::fresh_pg_database("jwt_keys").await;
    let dir = tempfile::tempdir().unwrap();
    let kek = std::sync::Arc::new(idmint::ca::Kek::create(&dir.path().join("kek")).unwrap());
    let settings = Settings {
        svid_ttl: idmint::ids::Ttl::from_secs(300).unwrap(),
        key_ttl: idmint::ids::Ttl::from_secs(3600).unwrap(),
        clock_skew: Duration::from_secs(30),
    };
    let store = Store::open(&idmint::store::Settings { url: url.clone() }, true)
        .await
        .unwrap();
    let other_store = Store::open(&idmint::store::Settings { url: url.clone() }, false)
        .await
        .unwrap();
    let manual = ManualClock::new(time::macros::datetime!(2030-01-01 0:00 UTC));
    let load = |store: Store| JwtKeys::load(settings, store, kek.clone(), manual.clock());
    let (a, b) = tokio::join!(load(store.clone()), load(other_store));
    let (a, b) = (a.unwrap(), b.unwrap());
    let published = |k: &JwtKeys| {
        let mut kids: Vec<String> = k.now().published.iter().map(|j| j.kid.clone()).collect();
        kids.sort();
        kids
    };
    let signer = |k: &JwtKeys| k.now().signer.as_ref().unwrap().kid().to_string();
    b.maintain().await.unwrap();
    assert_eq!(published(&a).len(), 1, "one first key, not one per server");
    assert_eq!(published(&a), published(&b));
    let first = signer(&a);
    assert_eq!(signer(&b), first);

    let validates = |t: &str, by: &JwtKeys, at: time::OffsetDateTime| {
        token::validate(
            t,
            "api",
            |_| Some(by.now().published.clone()),
            at.unix_timestamp(),
        )
    };
    let now = || manual.clock().now();
    let old_token = a
        .issue("spiffe://td/app", vec!["api".into()], now())
        .unwrap();
    // The bundle's sequence, as the bundle endpoint gives it: it grows when a key is
    // published or removed, and only then.
    let first_sequence = store.bundle_sequence().await.unwrap();
    validates(&old_token.token, &b, now()).unwrap();

    // At five sixths of its signing time a successor is published; the old key still signs.
    manual.advance(Duration::from_secs(3000));
    let (ra, rb) = tokio::join!(a.maintain(), b.maintain());
    ra.unwrap();
    rb.unwrap();
    a.maintain().await.unwrap();
    b.maintain().await.unwrap();
    assert_eq!(published(&a).len(), 2);
    assert_eq!(published(&a), published(&b));
    assert_eq!(signer(&a), first);
    let prepared_sequence = store.bundle_sequence().await.unwrap();
    assert!(prepared_sequence > first_sequence);

    // At the end of its signing time the successor signs; the old key stays published.
    manual.advance(Duration::from_secs(600));
    a.maintain().await.unwrap();
    b.maintain().await.unwrap();
    let second = signer(&a);
    assert_ne!(second, first);
    assert_eq!(signer(&b), second);
    let late = a
        .issue("spiffe://td/app", vec!["api".into()], now())
        .unwrap();
    assert_eq!(late.kid, second);
    let just_before = now();
    assert_eq!(published(&b).len(), 2);
    assert_eq!(store.bundle_sequence().await.unwrap(), prepared_sequence);
    validates(&late.token, &b, just_before).unwrap();

    // Once the last token of the old key has expired (and the clock skew), it leaves.
    manual.advance(Duration::from_secs(330));
    a.maintain().await.unwrap();
    b.maintain().await.unwrap();
    assert_eq!(published(&a), vec![second.clone()]);
    assert_eq!(published(&b), vec![second.clone()]);
    assert!(store.bundle_sequence().await.unwrap() > prepared_sequence);
    assert!(matches!(
        validates(&old_token.token, &b, just_before),
        Err(token::Invalid::UnknownKey { .. })
    ));

    let events: Vec<String> = store
        .ledger_entries(&LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == EntryKind::Ca)
        .filter_map(|e| e.record.reason)
        .collect();
    let expected = [
        format!("JWT-SVID signing key {first} made and signing"),
        format!("JWT-SVID signing key {second} prepared: published, signing later"),
        format!("JWT-SVID signing key {second} signs"),
        format!("JWT-SVID signing key {first} retired: published until its tokens expire"),
        format!("JWT-SVID signing key {first} left the bundle"),
    ];
    assert_eq!(events, expected);
    drop((a, b, store));
    common::drop_pg_database(&url).await;
}

/// Fetches a bundle endpoint with `tests/bundle_client.py`.
fn fetch_bundle(
    port: u16,
    path: &str,
    cafile: &std::path::Path,
    profile: &str,
) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bundle_client.py");
    let port = port.to_string();
    let out = common::python3(
        &[
            script,
            "localhost",
            &port,
            path,
            cafile.to_str().unwrap(),
            profile,
        ],
        &[],
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// The bundle endpoint, fetched by a stock HTTPS client over both profiles: the same JWK set
/// (the roots with `x5c`, the JWT keys with `kid`, a sequence and a refresh hint), over the
/// configured web certificate or the server's own SVID; a JWT-SVID validates against it with
/// the Rust `spiffe` crate's verifier; a root rotation raises the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_endpoint_serves_the_trust_domain_over_both_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let (web_ca, web_cert, web_key) = common::web_certificate(dir.path());
    let (spiffe_port, web_port) = (common::free_port(), common::free_port());
    let idmint = Idmint::start_with(
        dir.path(),
        &[
            &format!("bundle_endpoint.spiffe_listen=127.0.0.1:{spiffe_port}"),
            &format!("bundle_endpoint.web_listen=127.0.0.1:{web_port}"),
            &format!("bundle_endpoint.web_cert_file={}", web_cert.display()),
            &format!("bundle_endpoint.web_key_file={}", web_key.display()),
            "bundle_endpoint.refresh_hint=2m",
        ],
    );
    let own_roots = idmint.data.join("bundle.pem");
    let web = fetch_bundle(web_port, "/", &web_ca, "web");
    let spiffe = fetch_bundle(spiffe_port, "/", &own_roots, "spiffe");
    assert_eq!(web["status"], 200, "{web}");
    assert_eq!(web["content_type"], "application/json");
    assert_eq!(spiffe["status"], 200, "{spiffe}");
    assert_eq!(
        spiffe["uris"],
        serde_json::json!(["spiffe://cf.internal/server"])
    );
    assert_eq!(web["body"], spiffe["body"], "one bundle, two profiles");
    let doc = &web["body"];
    assert_eq!(doc["spiffe_refresh_hint"], 120);
    let first_sequence = doc["spiffe_sequence"].as_u64().unwrap();
    let keys = doc["keys"].as_array().unwrap();
    let x509: Vec<_> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<_> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(x509.len(), 1);
    let root_pem = std::fs::read_to_string(&own_roots).unwrap();
    let root_der = pem::parse(&root_pem).unwrap().into_contents();
    use base64::engine::general_purpose::STANDARD;
    assert_eq!(x509[0]["x5c"][0], STANDARD.encode(&root_der));
    assert_eq!(x509[0]["kty"], "EC");
    assert_eq!(jwt.len(), 1);
    assert!(jwt[0]["kid"].as_str().is_some_and(|k| !k.is_empty()));

    // Each profile refuses the other's trust: the web client does not trust our roots, and
    // nothing but the bundle is served.
    let wrong_trust = fetch_bundle(spiffe_port, "/", &web_ca, "spiffe");
    assert!(wrong_trust["error"].as_str().is_some(), "{wrong_trust}");
    let elsewhere = fetch_bundle(web_port, "/keys", &web_ca, "web");
    assert_eq!(elsewhere["status"], 404);

    // A JWT-SVID checks out against the endpoint's JWT keys with the spiffe crate's verifier.
    idmint.register(1);
    let source = JwtSource::builder()
        .endpoint(endpoint(&idmint, 1))
        .build()
        .await
        .unwrap();
    let svid = source.fetch_jwt_svid(["api"]).await.unwrap();
    let jwks = serde_json::json!({ "keys": jwt }).to_string();
    let td = spiffe::TrustDomain::new("cf.internal").unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(spiffe::JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).unwrap());
    JwtSvid::parse_and_validate(svid.token(), &set, &["api"]).unwrap();
    source.shutdown().await;

    // A new root enters the bundle: a later sequence, both roots.
    let out = idmint.cli(&["ca", "rotate", "root"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = fetch_bundle(spiffe_port, "/", &own_roots, "spiffe");
    let doc = &after["body"];
    assert!(
        doc["spiffe_sequence"].as_u64().unwrap() > first_sequence,
        "{doc}"
    );
    let roots = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count();
    assert_eq!(roots, 2);
}
