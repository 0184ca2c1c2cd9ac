//! Real Envoy sidecars on idmint's SDS: a consumer (app A) and a provider (app B) get their
//! certificates and trust bundle from their own sockets and talk mTLS, the consumer accepting
//! only the provider's SPIFFE ID, the provider what idmint's c2c-validation-context says. The
//! bootstraps are the ones in docs/envoy.md.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dev::*;
use common::envoy::*;
use common::http_get;
use common::laggard::Laggard;

#[test]
fn two_sidecars_get_their_identities_over_sds_and_talk_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idmint = Idmint::start(dir);
    let (sock_a, sock_b) = (idmint.register(1), idmint.register(2));
    let backend = start_backend();

    // Provider B on the incremental protocol, consumer A on state-of-the-world: both served.
    let (provider, consumer) = start_pair(
        dir,
        (&sock_a, &spiffe_id(1)),
        (&sock_b, &spiffe_id(2)),
        backend,
        "600s",
    );

    let mut answer = None;
    wait_until(
        "a request through A to reach B's app",
        Duration::from_secs(20),
        || {
            answer = http_get(consumer.listen, "/hello");
            matches!(answer, Some((200, _)))
        },
    );
    let (_, xfcc) = answer.unwrap();
    assert!(
        xfcc.contains(&format!("URI={}", spiffe_id(1))),
        "B's app sees A's SPIFFE ID: {xfcc}"
    );

    // Each sidecar ACKed what it was sent, and nothing was refused.
    assert!(
        idmint.metric("idmint_sds_streams_open") >= 3,
        "consumer's two streams and provider's delta stream"
    );
    assert!(idmint.metric("idmint_sds_acks_total{kind=\"tls_certificate\"}") >= 2);
    assert!(idmint.metric("idmint_sds_acks_total{kind=\"validation_context\"}") >= 1);
    assert!(idmint.metric("idmint_sds_acks_total{kind=\"c2c_validation_context\"}") >= 1);
    assert_eq!(
        idmint.metric("idmint_sds_nacks_total{kind=\"tls_certificate\"}"),
        0
    );
    assert_eq!(idmint.metric("idmint_sds_refused_total"), 0);

    // A consumer that expects a different provider ID refuses B.
    let wrong_peer = start_envoy(
        dir,
        "consumer-a-expects-c",
        EnvoyConfig {
            role: "consumer",
            socket: &sock_a,
            api: "GRPC",
            peer: &spiffe_id(3),
            upstream: provider.listen,
            cert_name: None,
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    wait_for_secrets(&wrong_peer, "consumer A expecting C");
    let refused = http_get(wrong_peer.listen, "/hello");
    assert!(
        !matches!(refused, Some((200, _))),
        "A expecting C must not reach B: {refused:?}"
    );

    // A sidecar on A's socket asking for B's certificate is refused.
    let before = idmint.metric("idmint_sds_refused_total");
    let thief = start_envoy(
        dir,
        "consumer-a-asks-for-b",
        EnvoyConfig {
            role: "consumer",
            socket: &sock_a,
            api: "GRPC",
            peer: &spiffe_id(2),
            upstream: provider.listen,
            cert_name: Some(&spiffe_id(2)),
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    wait_until(
        "idmint to refuse B's certificate on A's socket",
        Duration::from_secs(20),
        || idmint.metric("idmint_sds_refused_total") > before,
    );
    let stolen = http_get(thief.listen, "/hello");
    assert!(
        !matches!(stolen, Some((200, _))),
        "no certificate, no mTLS: {stolen:?}"
    );

    // A deregistered instance's socket is gone; an Envoy pointed at it gets nothing.
    let sock_d = idmint.register(4);
    let out = idmint.cli(&["instance", "deregister", &instance(4)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&sock_d).exists(),
        "socket removed on deregistration"
    );
    let orphan = start_envoy(
        dir,
        "consumer-d",
        EnvoyConfig {
            role: "consumer",
            socket: &sock_d,
            api: "GRPC",
            peer: &spiffe_id(2),
            upstream: provider.listen,
            cert_name: None,
            validation_name: None,
            max_connection_duration: "600s",
        },
    );
    wait_until("the orphan Envoy's admin", Duration::from_secs(20), || {
        http_get(orphan.admin, "/ready").is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stat(&orphan, "sds.default.update_success"),
        0,
        "nothing served to a deregistered instance"
    );
    let nothing = http_get(orphan.listen, "/hello");
    assert!(!matches!(nothing, Some((200, _))), "{nothing:?}");

    // The original pair still works, and idmint stops cleanly with streams open.
    assert!(matches!(
        http_get(consumer.listen, "/again"),
        Some((200, _))
    ));
    let mut process = idmint.process;
    let status = Command::new("kill")
        .args(["-INT", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = process.0.wait().unwrap();
    assert!(
        exit.success(),
        "idmint dev exits cleanly with SDS streams open: {exit:?}"
    );
}

#[test]
fn requests_keep_flowing_while_leaves_renew_under_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 4 s certificates: each sidecar's renews every 1.6–2.4 s.
    let idmint = Idmint::start_with(dir, &["ca.leaf_ttl=4s"]);
    let (sock_a, sock_b) = (idmint.register(1), idmint.register(2));
    let backend = start_backend();
    let (provider, consumer) = start_pair(
        dir,
        (&sock_a, &spiffe_id(1)),
        (&sock_b, &spiffe_id(2)),
        backend,
        "1s",
    );
    wait_until("the first request through", Duration::from_secs(20), || {
        matches!(http_get(consumer.listen, "/warmup"), Some((200, _)))
    });

    // Long enough for every certificate to be replaced several times, and for the first
    // ones to expire: a request that needed a lapsed certificate would fail.
    let until = Instant::now() + Duration::from_secs(10);
    let (mut sent, mut failed) = (0u32, Vec::new());
    let mut client_certs = std::collections::BTreeSet::new();
    while Instant::now() < until {
        sent += 1;
        match http_get(consumer.listen, "/during-renewal") {
            Some((200, xfcc)) => {
                assert!(xfcc.contains(&format!("URI={}", spiffe_id(1))), "{xfcc}");
                if let Some(hash) = xfcc.split(';').find_map(|f| f.strip_prefix("Hash=")) {
                    client_certs.insert(hash.to_string());
                }
            }
            other => failed.push(other),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );
    assert!(sent > 100, "only {sent} requests");
    assert!(
        stat(&consumer, "sds.default.update_success") >= 4,
        "consumer received renewed certificates"
    );
    assert!(stat(&provider, "sds.default.update_success") >= 4);
    assert!(idmint.metric("idmint_agent_renewals_total") >= 6);
    assert!(
        client_certs.len() >= 3,
        "B's app saw A's certificate change: {client_certs:?}"
    );
}

impl Idmint {
    fn ca_show(&self) -> serde_json::Value {
        let out = self.cli(&["ca", "show", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Fingerprints of the CA certificates with this role and state.
    fn cas(&self, role: &str, state: &str) -> Vec<String> {
        common::cas_in(&self.ca_show(), role, state)
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["audit", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn requests_keep_flowing_through_intermediate_and_root_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 4 s leaves; intermediates live 15 s, so one rotates on its own during the test; a new
    // root may wait an hour for acknowledgements, so only the sidecars' ACKs can activate it.
    // Peers' clocks are this machine's: a 2 s skew allowance keeps a retired root 6 s.
    let idmint = Idmint::start_with(
        dir,
        &[
            "ca.leaf_ttl=4s",
            "ca.intermediate_ttl=15s",
            "ca.clock_skew=2s",
            "ca.root_activation_max_wait=1h",
        ],
    );
    let (sock_a, sock_b) = (idmint.register(1), idmint.register(2));
    let backend = start_backend();
    let (_provider, consumer) = start_pair(
        dir,
        (&sock_a, &spiffe_id(1)),
        (&sock_b, &spiffe_id(2)),
        backend,
        "1s",
    );
    wait_until("the first request through", Duration::from_secs(20), || {
        matches!(http_get(consumer.listen, "/warmup"), Some((200, _)))
    });
    let old_root = idmint.cas("root", "active");
    assert_eq!(old_root.len(), 1);
    let requests = traffic(consumer.listen);
    // A third client on A's socket that takes the trust bundle but is slow to acknowledge.
    let mut laggard = Laggard::open(&sock_a);
    std::thread::sleep(Duration::from_secs(2));

    // The new root enters the bundle; it signs only once every client has acknowledged it.
    // The consumer takes the roots as ROOTCA, the provider inside c2c-validation-context.
    let bundle_acks = || {
        idmint.metric("idmint_sds_acks_total{kind=\"validation_context\"}")
            + idmint.metric("idmint_sds_acks_total{kind=\"c2c_validation_context\"}")
    };
    let acks_before = bundle_acks();
    let out = idmint.cli(&["ca", "rotate", "root"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("root prepared"));
    let pushed = laggard.next_bundle();
    assert_eq!(
        pushed.matches("BEGIN CERTIFICATE").count(),
        2,
        "the new root was pushed"
    );
    wait_until(
        "both Envoy sidecars to acknowledge it",
        Duration::from_secs(20),
        || bundle_acks() >= acks_before + 2,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        idmint.cas("root", "active"),
        old_root,
        "the new root waits for the slow client"
    );
    assert_eq!(idmint.cas("root", "prepared").len(), 1);
    laggard.ack_last();
    let new_root = {
        let mut active = Vec::new();
        wait_until("the new root to sign", Duration::from_secs(20), || {
            active = idmint.cas("root", "active");
            active != old_root
        });
        active
    };
    // The activation is recorded just after it is stored.
    let mut activated = None;
    wait_until(
        "the activation in the ledger",
        Duration::from_secs(5),
        || {
            activated = idmint
                .ledger()
                .into_iter()
                .filter_map(|e| e["reason"].as_str().map(String::from))
                .find(|r| r.starts_with("root activated"));
            activated.is_some()
        },
    );
    let activated = activated.unwrap();
    assert!(
        activated.contains("every connected sidecar has it"),
        "activated by acknowledgement, not by the time limit: {activated}"
    );
    let (_, bundle) = http_get(idmint.admin, "/v1/bundle.pem").unwrap();
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "both roots while leaves under the old one live"
    );

    // The old root leaves the bundle once its last leaf has expired (4 s + 2 s skew
    // allowance), and an intermediate rotates on its own on the way.
    wait_until("the old root to be pruned", Duration::from_secs(60), || {
        let (_, bundle) = http_get(idmint.admin, "/v1/bundle.pem").unwrap();
        bundle.matches("BEGIN CERTIFICATE").count() == 1
    });
    wait_until(
        "B's app to see A's certificate change ten times",
        Duration::from_secs(30),
        || requests.client_certs_seen() >= 10,
    );
    let Traffic { client_certs, .. } = requests.finish(500);
    assert!(
        client_certs.len() >= 10,
        "B's app saw A's certificate change over time: {client_certs:?}"
    );
    assert_eq!(idmint.cas("root", "active"), new_root);

    // A's certificates came from at least three intermediates: the first, the one under the
    // new root, and its scheduled successor.
    let ledger = idmint.ledger();
    let issuers: std::collections::BTreeSet<&str> = ledger
        .iter()
        .filter(|e| e["kind"] == "issued" && e["app_guid"] == app(1).as_str())
        .filter_map(|e| e["issuer_fingerprint"].as_str())
        .collect();
    assert!(issuers.len() >= 3, "{issuers:?}");
    let reasons: Vec<&str> = ledger
        .iter()
        .filter(|e| e["kind"] == "ca")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for expected in [
        "root prepared",
        "root retired",
        "root activated",
        "root pruned",
        "intermediate activated",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(expected)),
            "no {expected:?} in {reasons:?}"
        );
    }
    assert_eq!(stat(&consumer, "sds.ROOTCA.update_rejected"), 0);
}

#[test]
fn requests_keep_flowing_while_the_ledger_is_unavailable_and_renewal_resumes_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 14 s certificates renew 5.6–8.4 s after they arrive.
    let idmint = Idmint::start_with(dir, &["ca.leaf_ttl=14s"]);
    let (sock_a, sock_b) = (idmint.register(1), idmint.register(2));
    let issued = Instant::now();

    // At once, another process takes the database's write lock for 10 s: no ledger record
    // can be committed, so nothing can be issued, through both certificates' renewal points
    // and until 4 s before they expire.
    let db = idmint.data.join("idmint.db");
    let outage = Duration::from_secs(10);
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('COMMIT')\n",
        ])
        .arg(&db)
        .arg(outage.as_secs().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let renewals_before = idmint.metric("idmint_agent_renewals_total");

    let backend = start_backend();
    let (_provider, consumer) = start_pair(
        dir,
        (&sock_a, &spiffe_id(1)),
        (&sock_b, &spiffe_id(2)),
        backend,
        "1s",
    );
    wait_until("the first request through", Duration::from_secs(10), || {
        matches!(http_get(consumer.listen, "/warmup"), Some((200, _)))
    });
    let requests = traffic(consumer.listen);

    std::thread::sleep((issued + Duration::from_secs(9)).saturating_duration_since(Instant::now()));
    assert_eq!(
        idmint.metric("idmint_agent_renewals_total"),
        renewals_before,
        "nothing renewed while the ledger was locked"
    );
    assert!(locker.wait().unwrap().success());
    // Renewal resumes: both sidecars' certificates are replaced before they expire.
    wait_until("renewals after the outage", Duration::from_secs(5), || {
        idmint.metric("idmint_agent_renewals_total") >= renewals_before + 2
    });
    assert!(
        issued.elapsed() < Duration::from_secs(13),
        "renewed before the first certificates expired"
    );
    std::thread::sleep(Duration::from_secs(2));
    requests.finish(300);
}
