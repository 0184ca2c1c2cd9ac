//! The admin API's access control, tried from outside with Python's own HTTP and TLS client:
//! each role does exactly its operations, everyone else is refused (401 without a credential,
//! 403 with the reason and a ledger record otherwise) and nothing changes; every change names
//! its caller in the ledger.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::dev::{app, instance, Idmint, ORG, SPACE, TD};
use common::http_get;

/// A client credential's files.
struct Credential {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

impl Credential {
    /// What `idmint role enroll ROLE [--name NAME]` writes into `dir`.
    fn enroll(idmint: &Idmint, dir: &Path, role: &str, name: Option<&str>) -> Credential {
        let mut args = vec!["role", "enroll", role, "--out-dir", dir.to_str().unwrap()];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        let out = idmint.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Credential {
            cert: dir.join("role.pem"),
            key: dir.join("role.key"),
            bundle: dir.join("bundle.pem"),
        }
    }

    /// The cell credential `idmint dev` keeps for its own cell.
    fn local_cell(idmint: &Idmint) -> Credential {
        let dir = idmint.data.join("local-cell");
        Credential {
            cert: dir.join("cell.pem"),
            key: dir.join("cell.key"),
            bundle: dir.join("bundle.pem"),
        }
    }
}

/// One request with Python's http.client: mutual TLS with `who`, plain HTTP without.
fn python(
    idmint: &Idmint,
    who: Option<&Credential>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    python_repeated(idmint, who, method, path, body, 1)
}

/// [`python`] `times` times over; the last answer.
fn python_repeated(
    idmint: &Idmint,
    who: Option<&Credential>,
    method: &str,
    path: &str,
    body: Option<&str>,
    times: usize,
) -> (u16, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/admin_request.py");
    let files = match who {
        Some(c) => [&c.cert, &c.key, &c.bundle].map(|p| p.display().to_string()),
        None => ["-".to_string(), "-".to_string(), "-".to_string()],
    };
    let mut cmd = Command::new("python3");
    cmd.env("REPEAT", times.to_string())
        .arg(script)
        .arg(idmint.admin.to_string())
        .args(files)
        .args([method, path]);
    if let Some(body) = body {
        cmd.arg(body);
    }
    let out = cmd.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let Some((status, body)) = stdout.split_once('\n') else {
        panic!(
            "python's client failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    (status.trim().parse().unwrap(), body.to_string())
}

/// Every operation of the admin API as one request each. Instance 9 is registered before
/// each try, so deregistering it can succeed; instance 8 is what registering adds.
fn operations() -> Vec<(&'static str, &'static str, String, Option<String>)> {
    let register = serde_json::json!({
        "instance_guid": instance(8),
        "app_guid": app(8),
        "space_guid": SPACE,
        "org_guid": ORG,
    })
    .to_string();
    let policy = serde_json::json!({"policies": [{
        "source": {"id": app(1)},
        "destination": {"id": app(2), "protocol": "tcp", "ports": {"start": 8080, "end": 8080}}
    }]})
    .to_string();
    let mode =
        r#"{"scope": "app", "id": "a3a3a3a3-0000-4000-8000-000000000003", "mode": "policy"}"#;
    vec![
        ("read the ledger", "GET", "/v1/ledger".into(), None),
        ("list instances", "GET", "/v1/instances".into(), None),
        ("register", "POST", "/v1/instances".into(), Some(register)),
        (
            "deregister",
            "DELETE",
            format!("/v1/instances/{}", instance(9)),
            None,
        ),
        ("rotate", "POST", "/v1/ca/rotate/intermediate".into(), None),
        ("list policies", "GET", "/v1/policies".into(), None),
        ("add policies", "POST", "/v1/policies".into(), Some(policy)),
        ("list modes", "GET", "/v1/policy-modes".into(), None),
        (
            "set a mode",
            "PUT",
            "/v1/policy-modes".into(),
            Some(mode.into()),
        ),
    ]
}

/// What the service holds that any operation could change.
fn state_of(idmint: &Idmint) -> String {
    let read = |args: &[&str]| {
        let out = idmint.cli(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut state = read(&["instance", "list", "--json"]);
    state += &read(&["policy", "list"]);
    state += &read(&["policy", "mode", "list"]);
    let ca: serde_json::Value = serde_json::from_str(&read(&["ca", "show", "--json"])).unwrap();
    state += &ca["certificates"].to_string();
    state
}

fn ledger_len(idmint: &Idmint) -> usize {
    let out = idmint.cli(&["audit", "list", "--json", "--limit", "10000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .len()
}

fn ledger_reasons(idmint: &Idmint) -> Vec<String> {
    let out = idmint.cli(&["audit", "list", "--json", "--limit", "10000"]);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect()
}

fn clear_eight(idmint: &Idmint) {
    idmint.cli(&["instance", "deregister", &instance(8)]);
}

#[test]
fn each_role_does_exactly_its_operations_and_everyone_else_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(tmp.path());
    let admin = Credential::enroll(&idmint, &tmp.path().join("admin"), "admin", Some("ops"));
    let auditor = Credential::enroll(&idmint, &tmp.path().join("aud"), "auditor", Some("sec"));
    let orchestrator = Credential::enroll(&idmint, &tmp.path().join("orch"), "orchestrator", None);
    let cell = Credential::local_cell(&idmint);

    let allowed: [(&str, Option<&Credential>, &[&str]); 5] = [
        (
            "admin",
            Some(&admin),
            &[
                "read the ledger",
                "list instances",
                "register",
                "deregister",
                "rotate",
                "list policies",
                "add policies",
                "list modes",
                "set a mode",
            ],
        ),
        ("auditor", Some(&auditor), &["read the ledger"]),
        (
            "orchestrator",
            Some(&orchestrator),
            &["list instances", "register", "deregister"],
        ),
        ("cell", Some(&cell), &[]),
        ("no credential", None, &[]),
    ];
    for (role, who, may) in allowed {
        for (op, method, path, body) in operations() {
            idmint.register(9);
            clear_eight(&idmint);
            let before_state = state_of(&idmint);
            let before_len = ledger_len(&idmint);
            let (status, answer) = python(&idmint, who, method, &path, body.as_deref());
            if may.contains(&op) {
                assert!(
                    (200..300).contains(&status),
                    "{role} may {op}: {status} {answer}"
                );
                continue;
            }
            match who {
                None => {
                    assert_eq!(status, 401, "{role} {op}: {answer}");
                    assert!(answer.contains("admin.socket"), "{answer}");
                    assert_eq!(ledger_len(&idmint), before_len, "a 401 is not recorded");
                }
                Some(_) => {
                    assert_eq!(status, 403, "{role} {op}: {answer}");
                    assert!(answer.contains(&format!("spiffe://{TD}/")), "{answer}");
                    assert_eq!(
                        ledger_len(&idmint),
                        before_len + 1,
                        "{role} {op}: the refusal is recorded"
                    );
                    let last = ledger_reasons(&idmint).pop().unwrap();
                    assert!(last.contains("refused"), "{last}");
                    assert!(last.contains(&path), "{last}");
                }
            }
            assert_eq!(
                state_of(&idmint),
                before_state,
                "{role} {op} changed something"
            );
        }
    }

    // The open routes need nothing.
    for path in [
        "/healthz",
        "/metrics",
        "/v1/bundle.pem",
        "/v1/log/checkpoint",
        "/v1/log/key",
    ] {
        let (status, _) = http_get(idmint.admin, path).unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let metrics = http_get(idmint.admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("idmint_admin_refusals_total{reason=\"unauthenticated\"} 9"),
        "{metrics}"
    );
}

#[test]
fn every_change_names_its_caller_in_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(tmp.path());
    let admin = Credential::enroll(&idmint, &tmp.path().join("admin"), "admin", Some("ops"));
    let orchestrator = Credential::enroll(&idmint, &tmp.path().join("orch"), "orchestrator", None);

    idmint.register(9);
    let register = serde_json::json!({
        "instance_guid": instance(8),
        "app_guid": app(8),
        "space_guid": SPACE,
        "org_guid": ORG,
    });
    let (status, _) = python(
        &idmint,
        Some(&orchestrator),
        "POST",
        "/v1/instances",
        Some(&register.to_string()),
    );
    assert_eq!(status, 201);
    let (status, _) = python(
        &idmint,
        Some(&admin),
        "DELETE",
        &format!("/v1/instances/{}", instance(8)),
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = python(
        &idmint,
        Some(&admin),
        "POST",
        "/v1/ca/rotate/intermediate",
        None,
    );
    assert_eq!(status, 200);

    let reasons = ledger_reasons(&idmint);
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(has("registered by the admin socket (uid "), "{reasons:#?}");
    assert!(
        has(&format!("registered by spiffe://{TD}/orchestrator")),
        "{reasons:#?}"
    );
    assert!(
        has(&format!("deregistered by spiffe://{TD}/admin/ops")),
        "{reasons:#?}"
    );
    assert!(
        has(&format!(
            "rotation of the intermediate requested by spiffe://{TD}/admin/ops"
        )),
        "{reasons:#?}"
    );
    // The role credentials themselves were issued on the record.
    let out = idmint.cli(&["audit", "list", "--json", "--limit", "10000"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for id in [
        format!("spiffe://{TD}/admin/ops"),
        format!("spiffe://{TD}/orchestrator"),
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["kind"] == "issued" && e["spiffe_id"] == id.as_str()),
            "{id} issued on the record"
        );
    }
}

#[test]
fn the_admin_socket_is_the_service_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(tmp.path());
    let socket = idmint.data.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A socket in a directory other users can write to is refused at start, naming the setting.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused_start(&tmp.path().join("other"), &shared.join("admin.sock"));
    assert!(
        err.contains("admin.socket") && err.contains("writable by other users"),
        "{err}"
    );

    // A second service on the same socket is refused rather than taking it over.
    let err = refused_start(&tmp.path().join("second"), &socket);
    assert!(err.contains("another process serves"), "{err}");
    assert!(idmint.cli(&["instance", "list"]).status.success());
}

/// What `idmint dev` on `data` with its admin socket at `socket` says as it refuses to start.
fn refused_start(data: &Path, socket: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_idmint"))
        .arg("--data-dir")
        .arg(data)
        .args(["--set", "admin.listen=127.0.0.1:0"])
        .args(["--set", "server.listen=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("admin.socket={}", socket.display()))
        .arg("dev")
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_caller_refused_in_a_loop_adds_a_bounded_number_of_records() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(tmp.path(), &["server.denial_records=5"]);
    let cell = Credential::local_cell(&idmint);
    let before = ledger_len(&idmint);
    // The same refusal 100 times: recorded once.
    let (status, _) = python_repeated(&idmint, Some(&cell), "GET", "/v1/ledger", None, 100);
    assert_eq!(status, 403);
    assert_eq!(ledger_len(&idmint), before + 1);
    // Nine different ones: four more recorded one by one (five a minute in all), the other
    // five counted for the caller's summary.
    for n in 0..9 {
        let path = format!("/v1/instances/{n:08x}-0000-4000-8000-000000000000");
        let (status, _) = python(&idmint, Some(&cell), "DELETE", &path, None);
        assert_eq!(status, 403);
    }
    assert_eq!(ledger_len(&idmint), before + 5);
    let metrics = http_get(idmint.admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("idmint_admin_refusals_total{reason=\"forbidden\"} 109"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"denial_records\"} 104"),
        "{metrics}"
    );
}

#[test]
fn revocation_is_the_admins_and_a_revoked_role_credential_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start(tmp.path());
    let admin = Credential::enroll(&idmint, &tmp.path().join("admin"), "admin", Some("ops"));
    let auditor = Credential::enroll(&idmint, &tmp.path().join("aud"), "auditor", Some("sec"));
    assert_eq!(
        python(&idmint, Some(&auditor), "GET", "/v1/ledger", None).0,
        200
    );
    let serial = common::serial_of_pem(&std::fs::read(&auditor.cert).unwrap());
    let body = serde_json::json!({"serial": serial, "reason": "key-compromise"}).to_string();
    // The auditor may not revoke, even itself; nothing changes.
    let (code, why) = python(&idmint, Some(&auditor), "POST", "/v1/revoke", Some(&body));
    assert_eq!(code, 403, "{why}");
    assert_eq!(
        python(&idmint, Some(&auditor), "GET", "/v1/ledger", None).0,
        200
    );
    // The admin may; from then on the auditor's credential is refused, naming why.
    let (code, answer) = python(&idmint, Some(&admin), "POST", "/v1/revoke", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let (code, why) = python(&idmint, Some(&auditor), "GET", "/v1/ledger", None);
    assert_eq!(code, 403);
    assert!(why.contains("revoked"), "{why}");
    let reasons = ledger_reasons(&idmint);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&serial) && r.contains(&format!("spiffe://{TD}/admin/ops"))),
        "{reasons:?}"
    );
}
