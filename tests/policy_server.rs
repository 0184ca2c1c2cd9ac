//! CF's policy server as the source of policy, against a local stand-in over mutual TLS: a
//! whole, valid answer replaces the set in force; every way an answer can go wrong keeps the
//! last good set, records nothing, and is counted by kind.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::policy_server::{self, Answer, ClientFiles};
use common::*;
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::ids::Guid;
use idmint::placement::Placement;
use idmint::policy::{Policy, PortRange, Protocol};
use idmint::store::EntryKind;

fn g(n: u8) -> Guid {
    format!("a{n}a{n}a{n}a{n}-0000-4000-8000-00000000000{n}")
        .parse()
        .unwrap()
}

fn policy(source: u8, destination: u8) -> Policy {
    Policy {
        source: g(source).into(),
        destination: g(destination),
        protocol: Protocol::Tcp,
        ports: PortRange::new(8080, 8080).unwrap(),
    }
}

fn answer(pairs: &[(u8, u8)]) -> String {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(s, d)| (g(*s).to_string(), g(*d).to_string()))
        .collect();
    policy_server::answer_json(&pairs)
}

async fn runtime(dir: &std::path::Path, url: &str, files: &ClientFiles) -> Runtime {
    let config = config_in(
        dir,
        &[
            ("policy.source", "policy-server"),
            ("policy.server.url", url),
            ("policy.server.ca_file", files.ca.to_str().unwrap()),
            ("policy.server.cert_file", files.cert.to_str().unwrap()),
            ("policy.server.key_file", files.key.to_str().unwrap()),
            ("policy.server.poll_every", "100ms"),
            ("policy.server.timeout", "1s"),
            ("policy.server.max_answer_bytes", "1000000"),
        ],
    );
    Runtime::start(config, Init::CreateIfMissing).await.unwrap()
}

async fn place(rt: &Runtime, app: u8) {
    rt.registry
        .register(Placement {
            instance_guid: format!("1{app}1{app}1{app}1{app}-0000-4000-8000-00000000000{app}")
                .parse()
                .unwrap(),
            app_guid: g(app),
            space_guid: None,
            org_guid: None,
            cell_id: "cell-1".parse().unwrap(),
            container_ip: None,
        })
        .await
        .unwrap();
}

/// A metric of the poller.
fn metric(rt: &Runtime, name: &str) -> f64 {
    let mut text = String::new();
    rt.policy_polls
        .as_ref()
        .expect("polling")
        .render(rt.clock.now(), &mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn failures(rt: &Runtime, kind: &str) -> f64 {
    metric(
        rt,
        &format!("idmint_policy_server_poll_failures_total{{kind=\"{kind}\"}}"),
    )
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn policy_records(rt: &Runtime) -> Vec<String> {
    rt.audit
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == EntryKind::Policy)
        .map(|e| e.record.reason.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_replace_the_set_and_bad_ones_keep_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, files) = policy_server::start(dir.path(), false);
    stand_in.answer(Answer::Json(answer(&[(1, 2)])));
    let rt = runtime(dir.path(), &stand_in.url(), &files).await;

    // Nothing is placed: nothing to ask about.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stand_in.request_count(), 0);
    place(&rt, 2).await;
    wait_for("A→B in force", || {
        rt.policies.list(None) == vec![policy(1, 2)]
    })
    .await;
    assert_eq!(
        stand_in.last_request().unwrap(),
        format!("/networking/v1/internal/policies?id={}", g(2)),
        "asks about the apps placed"
    );
    place(&rt, 3).await;
    wait_for("a request naming both apps", || {
        stand_in
            .last_request()
            .is_some_and(|r| r.ends_with(&format!("id={},{}", g(2), g(3))))
    })
    .await;
    let records = policy_records(&rt).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0].starts_with(&format!(
            "policy in force: app {} may reach app {}",
            g(1),
            g(2)
        )) && records[0].ends_with("from CF's policy server, polled"),
        "{records:?}"
    );
    assert!(metric(&rt, "idmint_policy_server_good_polls_total") >= 1.0);

    // Every bad answer keeps A→B, records nothing, and is counted by its kind.
    let bad = [
        (Answer::Json("not json".into()), "malformed"),
        (
            Answer::Json(answer(&[(1, 2)]).replace("\"tag\"", "\"colour\"")),
            "malformed",
        ),
        (
            Answer::Json(answer(&[(1, 2), (3, 2)]).replace(&g(3).to_string(), "not-a-guid")),
            "malformed",
        ),
        (
            Answer::Json(answer(&[(3, 2)]).replace("\"start\":8080", "\"start\":0")),
            "malformed",
        ),
        (
            Answer::Json(answer(&[(3, 2)]).replace("\"tcp\"", "\"icmp\"")),
            "malformed",
        ),
        (
            Answer::Json(
                answer(&[(1, 2), (3, 2)]).replace("\"total_policies\":2", "\"total_policies\":3"),
            ),
            "malformed",
        ),
        (Answer::Status(500), "status"),
        (Answer::Stall, "timeout"),
        (Answer::Endless, "too_large"),
        (Answer::Huge(400 << 20), "too_large"),
    ];
    for (answer, kind) in bad {
        let before = failures(&rt, kind);
        let what = format!("{answer:?}").chars().take(80).collect::<String>();
        stand_in.answer(answer);
        wait_for(&format!("a {kind} failure for {what}"), || {
            failures(&rt, kind) > before
        })
        .await;
        assert_eq!(rt.policies.list(None), vec![policy(1, 2)], "{what}");
    }
    assert_eq!(
        policy_records(&rt).await.len(),
        1,
        "nothing bad was recorded"
    );
    assert!(metric(&rt, "idmint_policy_server_last_good_poll_age_seconds") > 0.0);

    // Duplicates count once; a good answer again replaces the set.
    stand_in.answer(Answer::Json(answer(&[(1, 2), (3, 2), (3, 2)])));
    let want: BTreeSet<Policy> = [policy(1, 2), policy(3, 2)].into();
    wait_for("A→B and C→B", || {
        rt.policies.list(None).into_iter().collect::<BTreeSet<_>>() == want
    })
    .await;
    stand_in.answer(Answer::Json(answer(&[(3, 2)])));
    wait_for("C→B only", || {
        rt.policies.list(None) == vec![policy(3, 2)]
    })
    .await;
    let records = policy_records(&rt).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records[2].starts_with(&format!(
        "policy out of force: app {} may reach app {}",
        g(1),
        g(2)
    )));

    // Changing policies here is refused: they come from the policy server.
    let refused = rt
        .policies
        .add(&[policy(4, 2)].into(), "a test")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("come from CF's policy server"),
        "{refused}"
    );
    rt.shutdown().await;

    // After a restart with the policy server gone, the last good set is in force.
    let gone = format!("https://127.0.0.1:{}", free_port());
    let rt = runtime(dir.path(), &gone, &files).await;
    assert_eq!(rt.policies.list(None), vec![policy(3, 2)]);
    wait_for("an unreachable failure", || {
        failures(&rt, "unreachable") > 0.0
    })
    .await;
    assert_eq!(rt.policies.list(None), vec![policy(3, 2)]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_from_another_ca_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, files) = policy_server::start(dir.path(), true);
    stand_in.answer(Answer::Json(answer(&[(1, 2)])));
    let rt = runtime(dir.path(), &stand_in.url(), &files).await;
    place(&rt, 2).await;
    wait_for("a TLS failure", || failures(&rt, "tls") > 0.0).await;
    assert!(rt.policies.list(None).is_empty());
    assert_eq!(stand_in.request_count(), 0, "no request went to it");
    rt.shutdown().await;
}

#[tokio::test]
async fn missing_or_unusable_client_files_stop_the_start_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, files) = policy_server::start(dir.path(), false);
    let base = |key_file: &str| {
        config_in(
            dir.path(),
            &[
                ("policy.source", "policy-server"),
                ("policy.server.url", &stand_in.url()),
                ("policy.server.ca_file", files.ca.to_str().unwrap()),
                ("policy.server.cert_file", files.cert.to_str().unwrap()),
                ("policy.server.key_file", key_file),
            ],
        )
    };
    let missing = dir.path().join("nope.key");
    let e = Runtime::start(base(missing.to_str().unwrap()), Init::CreateIfMissing)
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("policy.server.key_file"), "{e:#}");
    let e = Runtime::start(base(files.ca.to_str().unwrap()), Init::CreateIfMissing)
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("not a PEM private key"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_server_of_another_make_is_read_the_same() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = policy_server::write_files(dir.path());
    let answer_file = dir.path().join("answer.json");
    std::fs::write(&answer_file, answer(&[(1, 2), (3, 2)])).unwrap();
    let mut python = envoy::Running(
        std::process::Command::new("python3")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_server.py"))
            .args([&server.cert, &server.key, &server.client_ca, &answer_file])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "python3 must be installed: its http.server is the policy server of another make",
            ),
    );
    let mut lines = std::io::BufReader::new(python.0.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    });
    let rt = runtime(dir.path(), &format!("https://127.0.0.1:{port}"), &client).await;
    place(&rt, 2).await;
    let want: BTreeSet<Policy> = [policy(1, 2), policy(3, 2)].into();
    wait_for("the policies from Python's server", || {
        rt.policies.list(None).into_iter().collect::<BTreeSet<_>>() == want
    })
    .await;
    let first = seen.lock().unwrap().first().cloned().unwrap();
    assert_eq!(
        first,
        format!("/networking/v1/internal/policies?id={} idmint", g(2)),
        "the path asked, and the client certificate Python's ssl saw"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_apps_are_asked_about_in_requests_of_at_most_500() {
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, files) = policy_server::start(dir.path(), false);
    stand_in.answer(Answer::Json(answer(&[(1, 2)])));
    let rt = runtime(dir.path(), &stand_in.url(), &files).await;
    for n in 0..501u32 {
        rt.registry
            .register(Placement {
                instance_guid: format!("{n:08x}-1111-4000-8000-000000000000")
                    .parse()
                    .unwrap(),
                app_guid: format!("{n:08x}-2222-4000-8000-000000000000")
                    .parse()
                    .unwrap(),
                space_guid: None,
                org_guid: None,
                cell_id: "cell-1".parse().unwrap(),
                container_ip: None,
            })
            .await
            .unwrap();
    }
    let ids = |r: &str| {
        r.split_once("id=")
            .map_or(0, |(_, ids)| ids.split(',').count())
    };
    wait_for("one poll asking about all 501 apps", || {
        let seen = stand_in.requests.lock().unwrap();
        seen.windows(2)
            .any(|w| ids(&w[0]) == 500 && ids(&w[1]) == 1)
    })
    .await;
    assert_eq!(rt.policies.list(None), vec![policy(1, 2)]);
    rt.shutdown().await;
}
