//! Container-to-container policy enforced by real Envoy sidecars: app B's provider sidecar
//! takes `c2c-validation-context` from idmint and admits exactly the apps B's policies allow,
//! changing with each `idmint policy` call while every process keeps running.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::dev::*;
use common::envoy::*;
use common::{http_get, socket_request};

/// Every request through a consumer made with this opens a new connection to the provider, so
/// each one is a handshake judged by the provider's validation context of that moment.
const NEW_CONNECTION_EACH_REQUEST: &str = "600s, max_requests_per_connection: 1";

fn consumer(dir: &std::path::Path, name: &str, socket: &str, provider: &Sidecar) -> Sidecar {
    let sidecar = start_envoy(
        dir,
        name,
        EnvoyConfig {
            role: "consumer",
            socket,
            api: "GRPC",
            peer: &spiffe_id(2),
            upstream: provider.listen,
            cert_name: None,
            validation_name: None,
            max_connection_duration: NEW_CONNECTION_EACH_REQUEST,
        },
    );
    wait_for_secrets(&sidecar, name);
    sidecar
}

/// App B's provider sidecar in front of `backend`, on the SDS protocol `api`, once it has its
/// secrets.
fn provider(dir: &std::path::Path, socket: &str, api: &str, backend: u16) -> Sidecar {
    let sidecar = start_envoy(
        dir,
        "provider-b",
        EnvoyConfig {
            role: "provider",
            socket,
            api,
            peer: "",
            upstream: backend,
            cert_name: None,
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    wait_for_secrets(&sidecar, "provider B");
    sidecar
}

fn admitted(consumer: &Sidecar) -> bool {
    matches!(http_get(consumer.listen, "/c2c"), Some((200, _)))
}

/// Runs an `idmint` command that must succeed; returns its output.
fn ok(idmint: &Idmint, args: &[&str]) -> String {
    let out = idmint.cli(args);
    assert!(
        out.status.success(),
        "idmint {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until A and C are admitted or refused as expected; returns how long that took.
fn expect(what: &str, a: &Sidecar, a_in: bool, c: &Sidecar, c_in: bool) -> Duration {
    let since = Instant::now();
    wait_until(what, Duration::from_secs(10), || {
        admitted(a) == a_in && admitted(c) == c_in
    });
    let took = since.elapsed();
    // A few more handshakes each: the outcome holds, it was not a passing state.
    for _ in 0..3 {
        assert_eq!(admitted(a), a_in, "{what}: A");
        assert_eq!(admitted(c), c_in, "{what}: C");
    }
    eprintln!("{what}: in force at the sidecars after {took:?}");
    took
}

#[test]
fn the_provider_admits_exactly_the_apps_its_policies_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idmint = Idmint::start(dir);
    let (sock_a, sock_b, sock_c) = (idmint.register(1), idmint.register(2), idmint.register(3));
    let backend = start_backend();
    let provider = provider(dir, &sock_b, "DELTA_GRPC", backend);
    let a = consumer(dir, "consumer-a", &sock_a, &provider);
    let c = consumer(dir, "consumer-c", &sock_c, &provider);
    let pushes = || stat(&provider, "sds.c2c-validation-context.update_success");

    // The foundation's default is today's behaviour: any app of the trust domain.
    expect("trust-domain by default", &a, true, &c, true);

    // A→B, and B in policy mode: A in, C out.
    let (a_id, b_id, c_id) = (app(1), app(2), app(3));
    let said = ok(
        &idmint,
        &["policy", "add", "--source", &a_id, "--destination", &b_id],
    );
    assert!(said.starts_with("added: "), "{said}");
    ok(
        &idmint,
        &["policy", "mode", "set", "policy", "--app", &b_id],
    );
    let mut took = vec![expect("A→B in policy mode", &a, true, &c, false)];

    // C→B: C's new connections are admitted, nothing restarted.
    let before = pushes();
    ok(
        &idmint,
        &[
            "policy",
            "add",
            "--source",
            &c_id,
            "--destination",
            &b_id,
            "--port",
            "9000-9100",
        ],
    );
    took.push(expect("A→B and C→B", &a, true, &c, true));
    assert!(
        pushes() > before,
        "B's sidecar was pushed a new validation context"
    );

    // Without A→B, A is refused.
    ok(
        &idmint,
        &[
            "policy",
            "remove",
            "--source",
            &a_id,
            "--destination",
            &b_id,
        ],
    );
    took.push(expect("C→B only", &a, false, &c, true));

    // Nobody may reach B: every handshake is refused, though Envoy reads an empty matcher list
    // as "any SAN".
    ok(
        &idmint,
        &[
            "policy",
            "remove",
            "--source",
            &c_id,
            "--destination",
            &b_id,
            "--port",
            "9000-9100",
        ],
    );
    took.push(expect("no source allowed", &a, false, &c, false));
    let (_, dump) = http_get(
        provider.admin,
        "/config_dump?resource=dynamic_active_secrets",
    )
    .expect("provider config dump");
    assert!(
        dump.contains("no app may reach this one") && !dump.contains(&spiffe_id(1)),
        "B's validation context holds only the matcher that matches nothing: {dump}"
    );

    // B back in trust-domain mode: both admitted again.
    ok(
        &idmint,
        &["policy", "mode", "set", "trust-domain", "--app", &b_id],
    );
    took.push(expect("B in trust-domain mode", &a, true, &c, true));

    // The foundation in policy mode reaches B (its own setting cleared) through its space.
    ok(&idmint, &["policy", "mode", "clear", "--app", &b_id]);
    ok(&idmint, &["policy", "mode", "set", "policy"]);
    took.push(expect(
        "the foundation in policy mode",
        &a,
        false,
        &c,
        false,
    ));
    ok(
        &idmint,
        &["policy", "mode", "set", "trust-domain", "--space", SPACE],
    );
    took.push(expect("B's space in trust-domain mode", &a, true, &c, true));
    eprintln!("policy changes in force after: {took:?}");

    // Nothing was refused by the sidecar as unreadable, and idmint counted its pushes.
    assert_eq!(
        stat(&provider, "sds.c2c-validation-context.update_rejected"),
        0
    );
    assert_eq!(
        idmint.metric("idmint_sds_nacks_total{kind=\"c2c_validation_context\"}"),
        0
    );
    assert!(idmint.metric("idmint_sds_pushes_total{kind=\"c2c_validation_context\"}") >= 7);
    assert_eq!(idmint.metric("idmint_policies_in_force"), 0);

    // Each change is in the ledger, with who asked.
    let out = ok(&idmint, &["audit", "list", "--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let reasons: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "policy")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 9, "{reasons:#?}");
    assert!(reasons[0].starts_with(&format!(
        "policy added: app {a_id} may reach app {b_id} (tcp ports 8080)"
    )));
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("by the admin socket (uid ")),
        "{reasons:#?}"
    );
    assert!(reasons.iter().any(|r| r.contains(&format!(
        "enforcement mode of space {SPACE} set to trust-domain"
    ))));
}

#[test]
fn bad_policies_and_modes_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(tmp.path());
    let (a_id, b_id) = (app(1), app(2));
    ok(
        &idmint,
        &["policy", "add", "--source", &a_id, "--destination", &b_id],
    );
    let ledger_len = || {
        let out = ok(&idmint, &["audit", "list", "--json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len()
    };
    let before = ledger_len();
    let policy = |source: &str, protocol: &str, start: i64, end: i64| {
        format!(
            r#"{{"source":{{"id":"{source}"}},"destination":{{"id":"{b_id}","protocol":"{protocol}","ports":{{"start":{start},"end":{end}}}}}}}"#
        )
    };
    let good = policy(&app(3), "tcp", 8080, 8080);
    for (body, says) in [
        ("not json".to_string(), "not a policy list"),
        (
            r#"{"policies": [{"source": {"id": "x"}}]}"#.to_string(),
            "missing field `destination`",
        ),
        (
            format!(r#"{{"policies": [{good}], "extra": 1}}"#),
            "unknown field `extra`",
        ),
        (
            format!(
                r#"{{"policies": [{good}, {}]}}"#,
                policy("not-a-guid", "tcp", 1, 2)
            ),
            "policy 1: source.id",
        ),
        (
            format!(r#"{{"policies": [{}]}}"#, policy(&app(3), "tcp", 0, 80)),
            "not a port range",
        ),
        (
            format!(
                r#"{{"policies": [{}]}}"#,
                policy(&app(3), "tcp", 9000, 8000)
            ),
            "not a port range",
        ),
        (
            format!(r#"{{"policies": [{}]}}"#, policy(&app(3), "tcp", 1, 65536)),
            "not a port range",
        ),
        (
            format!(r#"{{"policies": [{}]}}"#, policy(&app(3), "icmp", 1, 2)),
            "neither \"tcp\" nor \"udp\"",
        ),
        (
            format!(
                r#"{{"policies": [{}]}}"#,
                policy(&app(3), "tcp", 2, 3).replace(r#""start":2"#, r#""start":"2""#)
            ),
            "invalid type",
        ),
    ] {
        let (status, answer) =
            socket_request(&idmint.admin_socket(), "POST", "/v1/policies", &body).unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
    for (body, says) in [
        (
            r#"{"scope":"app","id":"nope","mode":"policy"}"#,
            "app \"nope\"",
        ),
        (
            r#"{"scope":"org","id":"","mode":"policy"}"#,
            "no enforcement scope",
        ),
        (
            r#"{"scope":"foundation","mode":"strict"}"#,
            "unknown variant `strict`",
        ),
        (
            r#"{"scope":"foundation","mode":"policy","why":1}"#,
            "unknown field `why`",
        ),
    ] {
        let (status, answer) =
            socket_request(&idmint.admin_socket(), "PUT", "/v1/policy-modes", body).unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
    let out = idmint.cli(&[
        "policy",
        "add",
        "--source",
        &a_id,
        "--destination",
        &b_id,
        "--port",
        "70000",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a port range"));

    // Adding what is in force, or removing what is not, is a no-op and records nothing.
    let said = ok(
        &idmint,
        &["policy", "add", "--source", &a_id, "--destination", &b_id],
    );
    assert!(said.starts_with("in force already"), "{said}");
    let said = ok(
        &idmint,
        &[
            "policy",
            "remove",
            "--source",
            &b_id,
            "--destination",
            &a_id,
        ],
    );
    assert!(said.starts_with("not in force"), "{said}");
    ok(&idmint, &["policy", "mode", "clear", "--app", &a_id]);
    assert_eq!(ledger_len(), before, "nothing refused or idle was recorded");
    let listed = ok(&idmint, &["policy", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["total_policies"], 1, "{listed}");

    // A policy for an app with no instance is kept, and applies once one is placed.
    let c_id = app(3);
    ok(
        &idmint,
        &["policy", "add", "--source", &a_id, "--destination", &c_id],
    );
    let out = ok(&idmint, &["policy", "list", "--app", &c_id]);
    assert!(out.contains(&c_id), "{out}");
}

/// A policy server answer allowing each `(source, destination)` pair of the numbered apps.
fn policy_server_answer(pairs: &[(u8, u8)]) -> String {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(s, d)| (app(*s), app(*d))).collect();
    common::policy_server::answer_json(&pairs)
}

#[test]
fn policies_from_the_policy_server_reach_the_provider_too() {
    use common::policy_server::{self, Answer};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (stand_in, files) = policy_server::start(dir, false);
    stand_in.answer(Answer::Json(policy_server_answer(&[(1, 2)])));
    let url = format!("policy.server.url={}", stand_in.url());
    let ca = format!("policy.server.ca_file={}", files.ca.display());
    let cert = format!("policy.server.cert_file={}", files.cert.display());
    let key = format!("policy.server.key_file={}", files.key.display());
    let idmint = Idmint::start_with(
        dir,
        &[
            "policy.default_mode=policy",
            "policy.source=policy-server",
            &url,
            &ca,
            &cert,
            &key,
            "policy.server.poll_every=200ms",
        ],
    );
    let (sock_a, sock_b, sock_c) = (idmint.register(1), idmint.register(2), idmint.register(3));
    let backend = start_backend();
    let provider = provider(dir, &sock_b, "GRPC", backend);
    let a = consumer(dir, "consumer-a", &sock_a, &provider);
    let c = consumer(dir, "consumer-c", &sock_c, &provider);
    let mut took = vec![expect("A→B from the policy server", &a, true, &c, false)];

    stand_in.answer(Answer::Json(policy_server_answer(&[(3, 2)])));
    took.push(expect("C→B from the policy server", &a, false, &c, true));

    // A broken answer keeps the last good set.
    stand_in.answer(Answer::Json("{\"total_policies\": 1".into()));
    let failures = "idmint_policy_server_poll_failures_total{kind=\"malformed\"}";
    wait_until("a malformed answer", Duration::from_secs(10), || {
        idmint.metric(failures) > 0
    });
    expect("the last good set", &a, false, &c, true);

    stand_in.answer(Answer::Json(policy_server_answer(&[])));
    took.push(expect("no policy for B", &a, false, &c, false));
    // With polls every 200 ms, give or take a tenth: each change is in force a poll later.
    eprintln!("policy server changes in force after: {took:?}");
    assert_eq!(idmint.metric("idmint_policies_in_force"), 0);
    assert!(idmint.metric("idmint_policy_server_good_polls_total") >= 3);
}
