//! The `idmint` binary as an operator uses it: `dev` up and down, `issue` to files checked by
//! openssl, `audit` and `ca show` in both forms, `config check`, and each mistake refused.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn idmint(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idmint"));
    // A developer's shell may carry settings; these tests give every one they rely on.
    for (key, _) in std::env::vars() {
        if key.starts_with("IDMINT_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--data-dir")
        .arg(data_dir)
        .current_dir(data_dir.parent().unwrap());
    cmd
}

/// `idmint dev` with its admin HTTP on `admin` and its server API on a free port.
fn dev(data_dir: &Path, admin: &str) -> Command {
    let mut cmd = idmint(data_dir);
    cmd.args(["--set", &format!("admin.listen={admin}")]).args([
        "--set",
        "server.listen=127.0.0.1:0",
        "dev",
    ]);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("idmint runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A data directory with a CA in it, made by `idmint ca init`.
fn initialised() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(idmint(&data).args(["ca", "init"]));
    (tmp, data)
}

/// How many ledger entries there are, the CA's own events (its first JWT signing key) left out.
fn ledger_len(data: &Path) -> usize {
    let out = ok(idmint(data).args(["audit", "list", "--json"]));
    serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "ca")
        .count()
}

#[test]
fn dev_starts_serves_and_stops_cleanly_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("idmint-data");
    let mut child = dev(&data, "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "dev never became ready: {printed:?}"
        );
        let line = lines.next().expect("dev printed its locations").unwrap();
        printed.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("admin HTTP") {
            let url = rest.split_whitespace().next().unwrap();
            break url.trim_start_matches("http://").to_string();
        }
    };
    let all = printed.join("\n");
    // The server made its first JWT signing key, which `ca show` lists.
    let shown: serde_json::Value =
        serde_json::from_str(&ok(idmint(&data).args(["ca", "show", "--json"]))).unwrap();
    let keys = shown["jwt_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{shown}");
    assert_eq!(keys[0]["state"], "active");
    for what in [
        "data directory",
        "database",
        "key-encryption key",
        "trust bundle",
        "root CA",
        "intermediate CA",
    ] {
        assert!(all.contains(what), "dev says where the {what} is: {all}");
    }
    assert!(data.join("kek").exists() && data.join("bundle.pem").exists());

    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http_get(port, "/healthz"), Some((200, "ok\n".to_string())));
    let (status, bundle) = http_get(port, "/v1/bundle.pem").expect("bundle served");
    assert_eq!(status, 200);
    let on_disk = std::fs::read_to_string(data.join("bundle.pem")).unwrap();
    assert_eq!(bundle, on_disk, "served bundle is the written one");

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "dev exits 0 on Ctrl-C: {exit:?}");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");

    // Restarting uses the same CA.
    let first_root = all
        .lines()
        .find(|l| l.contains("root CA"))
        .unwrap()
        .to_string();
    let mut again = dev(&data, "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut again_lines = BufReader::new(again.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap());
    let started: Vec<String> = again_lines
        .by_ref()
        .take_while(|l| !l.starts_with("ready"))
        .collect();
    let again_root = started
        .iter()
        .find(|l| l.contains("root CA"))
        .unwrap()
        .clone();
    Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(again_lines.last().as_deref(), Some("stopped"));
    assert!(again.wait().unwrap().success(), "SIGTERM stops cleanly too");
    assert_eq!(again_root, first_root);
}

#[test]
fn issue_writes_cert_chain_bundle_and_a_private_key_only_its_owner_reads() {
    let (tmp, data) = initialised();
    let out_dir = tmp.path().join("out");
    let mut cmd = idmint(&data);
    cmd.args([
        "issue",
        "--app-guid",
        APP,
        "--instance-guid",
        INSTANCE,
        "--space-guid",
        SPACE,
    ])
    .args(["--org-guid", ORG, "--ip", "10.255.1.7", "--out-dir"])
    .arg(&out_dir);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&expected_spiffe_id()), "{}", text(&out));

    let mode = |f: &str| {
        std::fs::metadata(out_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    let verified = openssl_ok(
        &out_dir,
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "chain.pem",
            "cert.pem",
        ],
    );
    assert!(verified.contains("cert.pem: OK"), "{verified}");
    // The key written is the key certified.
    let cert_key = openssl_ok(&out_dir, &["x509", "-in", "cert.pem", "-noout", "-pubkey"]);
    let key_pub = openssl_ok(&out_dir, &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(cert_key, key_pub);

    // Same directory again: refused, nothing overwritten, nothing issued.
    let before: Vec<Vec<u8>> = ["cert.pem", "key.pem"]
        .iter()
        .map(|f| std::fs::read(out_dir.join(f)).unwrap())
        .collect();
    let issued = ledger_len(&data);
    let again = run(&mut cmd);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let after: Vec<Vec<u8>> = ["cert.pem", "key.pem"]
        .iter()
        .map(|f| std::fs::read(out_dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(ledger_len(&data), issued);
}

#[test]
fn issue_from_a_csr_prints_the_chain_and_the_ledger_shows_it() {
    let (tmp, data) = initialised();
    let csr = openssl_csr(
        tmp.path(),
        "app",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    std::fs::write(tmp.path().join("app.csr"), &csr).unwrap();
    let chain = ok(idmint(&data)
        .args([
            "issue",
            "--app-guid",
            APP,
            "--instance-guid",
            INSTANCE,
            "--ttl",
            "10m",
        ])
        .args(["--space-guid", SPACE, "--org-guid", ORG, "--csr"])
        .arg(tmp.path().join("app.csr")));
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );

    let list: Vec<serde_json::Value> = serde_json::from_str(&ok(idmint(&data).args([
        "audit",
        "list",
        "--json",
        "--app-guid",
        APP,
    ])))
    .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "issued");
    let serial = list[0]["serial"].as_str().unwrap().to_string();
    let none: Vec<serde_json::Value> = serde_json::from_str(&ok(idmint(&data).args([
        "audit",
        "list",
        "--json",
        "--app-guid",
        SPACE,
    ])))
    .unwrap();
    assert!(none.is_empty(), "filter by app");

    let table = ok(idmint(&data).args(["audit", "list"]));
    assert!(table.contains(&serial), "{table}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(idmint(&data).args(["audit", "show", &serial, "--json"])))
            .unwrap();
    assert_eq!(shown["serial"], serial.as_str());
    let pem = shown["certificate_pem"].as_str().unwrap();
    assert!(
        chain.starts_with(pem),
        "the ledger holds the certificate handed out"
    );
    let human = ok(idmint(&data).args(["audit", "show", &serial]));
    assert!(human.contains(&expected_spiffe_id()), "{human}");

    let missing = run(idmint(&data).args(["audit", "show", "00ff"]));
    assert!(!missing.status.success());
    assert!(text(&missing).contains("00ff"), "{}", text(&missing));
}

#[test]
fn bad_arguments_are_refused_before_anything_is_issued() {
    let (tmp, data) = initialised();
    let issue = |extra: &[&str]| {
        let mut cmd = idmint(&data);
        cmd.args(["issue", "--instance-guid", INSTANCE])
            .args(["--space-guid", SPACE, "--org-guid", ORG])
            .args(extra);
        run(&mut cmd)
    };
    let out_dir = tmp.path().join("out").display().to_string();
    for (args, says) in [
        (
            vec!["--app-guid", "not-a-guid", "--out-dir", &out_dir],
            "--app-guid",
        ),
        (vec!["--app-guid", "", "--out-dir", &out_dir], "--app-guid"),
        (
            vec![
                "--app-guid",
                APP,
                "--ip",
                "10.0.0.256",
                "--out-dir",
                &out_dir,
            ],
            "--ip",
        ),
        (
            vec!["--app-guid", APP, "--ttl", "forever", "--out-dir", &out_dir],
            "--ttl",
        ),
    ] {
        let out = issue(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "usage error for {args:?}: {}",
            text(&out)
        );
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let missing = tmp.path().join("nope.csr");
    let out = issue(&["--app-guid", APP, "--csr", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(missing.to_str().unwrap()),
        "{}",
        text(&out)
    );
    let out = issue(&["--app-guid", APP]);
    assert!(text(&out).contains("--out-dir"), "{}", text(&out));
    assert!(!Path::new(&out_dir).exists(), "nothing written");
    assert_eq!(ledger_len(&data), 0, "nothing recorded");

    // A CSR that is not one is refused, and the denial (only) is recorded.
    let garbage = tmp.path().join("garbage.csr");
    std::fs::write(&garbage, b"\x30\x03\x02\x01\x00 junk").unwrap();
    let out = issue(&["--app-guid", APP, "--csr", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("CSR"), "{}", text(&out));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(idmint(&data).args(["audit", "list", "--json"]))).unwrap();
    let list: Vec<_> = list.into_iter().filter(|e| e["kind"] != "ca").collect();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "denied");

    // Commands that need a CA say how to get one.
    let empty = tmp.path().join("empty");
    let out = run(idmint(&empty).args(["audit", "list"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("idmint dev"), "{}", text(&out));
}

#[test]
fn ca_show_lists_root_and_intermediate_in_both_forms() {
    let (_tmp, data) = initialised();
    let json: serde_json::Value =
        serde_json::from_str(&ok(idmint(&data).args(["ca", "show", "--json"]))).unwrap();
    let roles: Vec<&str> = json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["root", "intermediate"]);
    let fp = json["certificates"][1]["sha256_fingerprint"]
        .as_str()
        .unwrap();
    assert_eq!(fp.len(), 64);
    let table = ok(idmint(&data).args(["ca", "show"]));
    assert!(table.contains(fp), "{table}");
    // JWT signing keys are made by the server, which has not run yet.
    assert_eq!(json["jwt_keys"], serde_json::json!([]));
    assert!(table.contains("JWT-SVID signing keys: none yet"), "{table}");

    // Rotation: only what can be rotated, and only through a running service.
    let before = ledger_len(&data);
    let out = run(idmint(&data).args(["ca", "rotate", "sideways"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(idmint(&data).args(["ca", "rotate", "root"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("is idmint running"), "{}", text(&out));
    assert_eq!(ledger_len(&data), before, "nothing rotated");
    let after: serde_json::Value =
        serde_json::from_str(&ok(idmint(&data).args(["ca", "show", "--json"]))).unwrap();
    assert_eq!(after["certificates"], json["certificates"]);
}

#[test]
fn config_check_layers_file_environment_and_flags_and_redacts_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("idmint.toml");
    std::fs::write(
        &file,
        "trust_domain = \"example.org\"\n[ca]\nleaf_ttl = \"30m\"\n",
    )
    .unwrap();
    let check = |cmd: &mut Command| {
        cmd.args(["config", "check", "--config"]).arg(&file);
        run(cmd)
    };

    let out = check(
        idmint(&data)
            .env("IDMINT_CA_LEAF_TTL", "20m")
            .args(["--set", "ca.root_ttl=5y"]),
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("example.org"), "file: {shown}");
    assert!(shown.contains("20m"), "environment beats the file: {shown}");
    assert!(shown.contains("5y"), "flags: {shown}");

    let out = check(idmint(&data).env(
        "IDMINT_STORE_URL",
        "postgres://idmint:hunter2@db.internal/idmint",
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("hunter2"),
        "password redacted: {}",
        text(&out)
    );

    let out = check(idmint(&data).env("IDMINT_LEAF_TTL", "20m"));
    assert!(!out.status.success());
    assert!(text(&out).contains("IDMINT_LEAF_TTL"), "{}", text(&out));
    assert!(
        text(&out).contains("IDMINT_CA_LEAF_TTL"),
        "lists the known names: {}",
        text(&out)
    );

    let out = check(idmint(&data).args([
        "--set",
        "ca.leaf_ttl=1h",
        "--set",
        "ca.intermediate_ttl=30m",
    ]));
    assert!(!out.status.success(), "leaf longer than its intermediate");

    let shown = ok(idmint(&data).args(["--set", "agent.renew_at=70%", "config", "check"]));
    assert!(shown.contains("renew_at = \"70%\""), "{shown}");
    assert!(shown.contains("renew_jitter = \"10%\""), "{shown}");
    for (setting, key) in [
        ("agent.renew_at=150%", "agent.renew_at"),
        ("agent.renew_at=soon", "agent.renew_at"),
        ("agent.renew_jitter=0.6", "agent.renew_jitter"),
    ] {
        let out = check(idmint(&data).args(["--set", setting]));
        assert!(!out.status.success(), "{setting} accepted");
        assert!(text(&out).contains(key), "{setting}: {}", text(&out));
    }

    // A data directory so deep that instance sockets would not fit is refused up front.
    let deep = tmp.path().join("d".repeat(90));
    let out = check(&mut idmint(&deep));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("agent.sds_dir") && text(&out).contains("too long for SDS sockets"),
        "{}",
        text(&out)
    );

    std::fs::write(&file, "trust_domain = [\n").unwrap();
    let out = check(&mut idmint(&data));
    assert!(!out.status.success());
    assert!(
        text(&out).contains(file.to_str().unwrap()),
        "{}",
        text(&out)
    );

    let out = run(idmint(&data).args(["config", "check", "--config", "/nonexistent/idmint.toml"]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/nonexistent/idmint.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn dev_certs_writes_a_set_and_replaces_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("certs");
    let mut cmd = idmint(&data);
    cmd.args([
        "ca",
        "dev-certs",
        "--cell",
        "cell-a",
        "--cell",
        "cell-b",
        "--out-dir",
    ])
    .arg(&out);
    let listing = ok(&mut cmd);
    assert!(
        listing.contains("spiffe://cf.internal/cell/cell-b"),
        "{listing}"
    );
    let mode = std::fs::metadata(out.join("root.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    for cell in ["cell-a", "cell-b"] {
        let verified = openssl_ok(
            &out,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                &format!("cell-{cell}.pem"),
            ],
        );
        assert!(verified.contains("OK"), "{verified}");
    }
    let before = std::fs::read(out.join("root.pem")).unwrap();
    let again = run(&mut cmd);
    assert!(!again.status.success());
    assert!(text(&again).contains("--replace"), "{}", text(&again));
    assert_eq!(
        std::fs::read(out.join("root.pem")).unwrap(),
        before,
        "nothing overwritten"
    );
    ok(cmd.arg("--replace"));
    assert_ne!(
        std::fs::read(out.join("root.pem")).unwrap(),
        before,
        "a new set"
    );

    let bad = run(idmint(&data)
        .args(["ca", "dev-certs", "--cell", "no spaces/please", "--out-dir"])
        .arg(&out));
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

/// `idmint dev` running in `data` with its admin API on a free port; killed on drop.
struct Dev {
    child: std::process::Child,
    admin: String,
}

impl Dev {
    fn start(data: &Path) -> Dev {
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let mut child = dev(data, &admin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = lines.map(|l| l.unwrap());
        assert!(
            lines.by_ref().any(|l| l.starts_with("ready")),
            "dev became ready"
        );
        std::thread::spawn(move || lines.for_each(drop));
        Dev { child, admin }
    }

    fn cli(&self, data: &Path, args: &[&str]) -> Output {
        let mut cmd = idmint(data);
        cmd.args(["--set", &format!("admin.listen={}", self.admin)])
            .args(args);
        run(&mut cmd)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn instances_register_list_deregister_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::start(&data);
    let register_as = |instance: &str, app: &str, extra: &[&str]| {
        let mut args = vec![
            "instance",
            "register",
            "--instance-guid",
            instance,
            "--app-guid",
            app,
        ];
        args.extend_from_slice(extra);
        dev.cli(&data, &args)
    };
    let register = |extra: &[&str]| register_as(INSTANCE, APP, extra);
    let full = [
        "--space-guid",
        SPACE,
        "--org-guid",
        ORG,
        "--ip",
        "10.255.1.7",
    ];
    let out = register(&full);
    assert!(out.status.success(), "{}", text(&out));
    let socket = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    assert!(Path::new(&socket).is_absolute(), "{socket}");
    assert!(socket.ends_with(&format!("{INSTANCE}.sock")));
    assert!(Path::new(&socket).exists());
    assert!(
        register(&full).status.success(),
        "registering the same placement again is fine"
    );

    // Bad input: refused with a reason, nothing registered.
    let other_app = register(&[
        "--space-guid",
        SPACE,
        "--org-guid",
        ORG,
        "--app-guid",
        SPACE,
    ]);
    assert_eq!(
        other_app.status.code(),
        Some(2),
        "--app-guid twice is a usage error"
    );
    let conflict = register_as(INSTANCE, SPACE, &["--space-guid", SPACE, "--org-guid", ORG]);
    assert!(!conflict.status.success());
    assert!(
        text(&conflict).contains("already registered"),
        "{}",
        text(&conflict)
    );
    let no_org = register_as(ORG, APP, &[]);
    assert!(!no_org.status.success());
    assert!(
        text(&no_org).contains("org_guid"),
        "the template needs it: {}",
        text(&no_org)
    );
    let bad_guid = register_as("x", APP, &[]);
    assert_eq!(bad_guid.status.code(), Some(2));
    let bad_ip = register(&["--space-guid", SPACE, "--org-guid", ORG, "--ip", "10.0.0"]);
    assert_eq!(bad_ip.status.code(), Some(2));

    // An instance whose socket cannot be made is not left registered.
    let blocked = data.join("sds").join(format!("{ORG}.sock"));
    std::fs::write(&blocked, "in the way").unwrap();
    let unservable = register_as(ORG, APP, &["--space-guid", SPACE, "--org-guid", ORG]);
    assert!(!unservable.status.success());
    assert!(
        text(&unservable).contains("is not a socket"),
        "{}",
        text(&unservable)
    );
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&dev.cli(&data, &["instance", "list", "--json"]).stdout).unwrap();
    assert!(
        listed.iter().all(|i| i["instance_guid"] != ORG),
        "{listed:?}"
    );
    std::fs::remove_file(&blocked).unwrap();

    // The certificate is issued in the background; the list shows it once it is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list: Vec<serde_json::Value> = serde_json::from_str(
            &String::from_utf8(dev.cli(&data, &["instance", "list", "--json"]).stdout).unwrap(),
        )
        .unwrap();
        if list.len() == 1 && list[0]["serial"].is_string() {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(list[0]["spiffe_id"], expected_spiffe_id());
    assert_eq!(list[0]["sds_socket"], socket.as_str());
    let serial = list[0]["serial"].as_str().unwrap();
    let not_after = time::OffsetDateTime::parse(
        list[0]["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let next = time::OffsetDateTime::parse(
        list[0]["next_renewal"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(next < not_after, "renewal {next} before expiry {not_after}");
    let shown = ok(idmint(&data).args(["audit", "show", serial]));
    assert!(shown.contains(INSTANCE), "{shown}");
    let table = String::from_utf8(dev.cli(&data, &["instance", "list"]).stdout).unwrap();
    assert!(
        table.contains(INSTANCE)
            && table.contains("10.255.1.7")
            && table.contains("NEXT RENEWAL")
            && table.contains(serial),
        "{table}"
    );

    // Restart: the registration and its socket come back.
    drop(dev);
    let dev = Dev::start(&data);
    assert!(Path::new(&socket).exists(), "socket recreated on restart");
    let unknown = dev.cli(&data, &["instance", "deregister", ORG]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("no instance"), "{}", text(&unknown));
    let out = dev.cli(&data, &["instance", "deregister", INSTANCE]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!Path::new(&socket).exists(), "socket removed");
    let list = String::from_utf8(dev.cli(&data, &["instance", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.trim(), "[]");

    // Without a running service the CLI says so.
    drop(dev);
    let out = run(idmint(&data).args(["instance", "list"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("is idmint running"), "{}", text(&out));
}

#[test]
fn cell_enroll_writes_a_client_credential_that_openssl_accepts_and_records_it() {
    let (tmp, data) = initialised();
    let out_dir = tmp.path().join("cell-7");
    let said = ok(idmint(&data)
        .args(["cell", "enroll", "cell-7", "--out-dir"])
        .arg(&out_dir));
    assert!(said.contains("spiffe://cf.internal/cell/cell-7"), "{said}");
    let key = out_dir.join("cell.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // cell.pem is the certificate then its chain; openssl checks it as a TLS client.
    let pem = std::fs::read_to_string(out_dir.join("cell.pem")).unwrap();
    let (leaf, chain) = pem.split_at(pem.find("-----END CERTIFICATE-----").unwrap() + 26);
    std::fs::write(tmp.path().join("leaf.pem"), leaf).unwrap();
    std::fs::write(tmp.path().join("chain.pem"), chain.trim_start()).unwrap();
    let verified = openssl_ok(
        tmp.path(),
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            out_dir.join("bundle.pem").to_str().unwrap(),
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    let dump = openssl_ok(tmp.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(
        dump.contains("URI:spiffe://cf.internal/cell/cell-7"),
        "{dump}"
    );
    assert!(dump.contains("TLS Web Client Authentication"), "{dump}");
    assert!(!dump.contains("TLS Web Server Authentication"), "{dump}");
    assert!(dump.contains("CA:FALSE"), "{dump}");
    let (ok_key, _) = openssl(
        tmp.path(),
        &["pkey", "-in", key.to_str().unwrap(), "-noout"],
    );
    assert!(ok_key, "the key reads");

    // Recorded as an issuance for the cell.
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&ok(idmint(&data).args(["audit", "list", "--json"]))).unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["kind"], "issued");
    assert_eq!(last["cell_id"], "cell-7");
    assert_eq!(last["spiffe_id"], "spiffe://cf.internal/cell/cell-7");

    // Nothing is overwritten or issued again; a bad cell id is refused.
    let before = ledger_len(&data);
    let again = run(idmint(&data)
        .args(["cell", "enroll", "cell-7", "--out-dir"])
        .arg(&out_dir));
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let bad = run(idmint(&data)
        .args(["cell", "enroll", "bad cell!", "--out-dir"])
        .arg(tmp.path().join("x")));
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(ledger_len(&data), before);
}

#[test]
fn a_server_api_address_in_use_is_refused_before_anything_is_issued() {
    let (_tmp, data) = initialised();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for command in [
        vec!["server", "--listen", addr.as_str()],
        vec!["--set", &format!("server.listen={addr}"), "dev"],
    ] {
        let out = run(idmint(&data)
            .args(["--set", "admin.listen=127.0.0.1:0"])
            .args(&command));
        assert!(!out.status.success(), "{command:?}");
        let said = text(&out);
        assert!(
            said.contains(&format!("cannot listen on {addr} for the server API")),
            "{said}"
        );
    }
    let ledger: Vec<serde_json::Value> =
        serde_json::from_str(&ok(idmint(&data).args(["audit", "list", "--json"]))).unwrap();
    assert!(
        ledger.iter().all(|e| e["kind"] != "issued"),
        "nothing issued: {ledger:?}"
    );
}

#[test]
fn issue_benchmarks_run_in_process_and_remote_and_report_against_the_ceiling() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let small = ["bench", "issue", "--count", "200", "--concurrency", "16"];
    let local = ok(idmint(&data).args(small));
    assert!(
        local.contains("| idmint issue path: CA + ledger committed before each answer |"),
        "{local}"
    );
    // JWT-SVIDs: each recorded (the run checks the ledger holds one record per token).
    let jwt = ok(idmint(&data).args(["bench", "jwt", "--count", "200", "--concurrency", "16"]));
    assert!(
        jwt.contains("| idmint JWT-SVID path: placement, revocation check, ledger committed before each answer |"),
        "{jwt}"
    );
    assert!(jwt.contains("target: at least 50% of the ceiling"), "{jwt}");
    let remote = ok(idmint(&data).args(small).arg("--remote"));
    assert!(
        remote.contains("| agents → 1 server API(s) (gRPC, mutual TLS) → CA + ledger |"),
        "{remote}"
    );
    // On the PostgreSQL the tests use: in process, and two servers sharing it.
    let pg = common::pg_admin_url();
    let on_pg = ["--store", "postgres", "--postgres-url", pg.as_str()];
    let local_pg = ok(idmint(&data).args(small).args(on_pg));
    assert!(local_pg.contains("PostgreSQL ledger"), "{local_pg}");
    let shared = ok(idmint(&data)
        .args(small)
        .args(on_pg)
        .args(["--remote", "--servers", "2"]));
    assert!(
        shared.contains("| agents → 2 server API(s) (gRPC, mutual TLS) → CA + ledger |"),
        "{shared}"
    );
    let failover = ok(idmint(&data).args([
        "bench",
        "failover",
        "--kills",
        "2",
        "--postgres-url",
        pg.as_str(),
    ]));
    assert!(
        failover.contains("| kill → next successful sign (2 kills) |"),
        "{failover}"
    );
    // Two servers need a database they can share.
    let out = run(idmint(&data)
        .args(small)
        .args(["--remote", "--servers", "2"]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("add --store postgres"),
        "{}",
        text(&out)
    );
    for out in [&local, &remote, &local_pg, &shared] {
        assert!(
            out.contains("| ceiling: ring P-256 CSR verify + sign"),
            "{out}"
        );
        assert!(out.contains("target: at least"), "{out}");
    }
    // The benchmark works in a directory of its own and leaves the data directory alone.
    assert!(!data.exists());
}

#[test]
fn keys_sockets_and_credential_directories_carry_the_narrowest_modes() {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let service = common::dev::Idmint::start(tmp.path());
    let socket = service.register(1);
    let data = service.data.clone();
    assert_eq!(mode(Path::new(&socket)), 0o600, "an SDS socket");
    assert_eq!(mode(&data.join("sds")), 0o700, "the SDS directory");
    assert_eq!(mode(&data.join("admin.sock")), 0o600, "the admin socket");
    assert_eq!(mode(&data.join("kek")), 0o600, "the key-encryption key");
    assert_eq!(
        mode(&data.join("local-cell")),
        0o700,
        "a cell's credential directory"
    );
    assert_eq!(
        mode(&data.join("local-cell/cell.key")),
        0o600,
        "a cell's key"
    );
    let instance = data.join("instances").join(common::dev::instance(1));
    let key = instance.join("instance.key");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !key.exists() {
        assert!(Instant::now() < deadline, "instance files written");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mode(&key), 0o600, "an instance's key");
    let enrolled = tmp.path().join("new/cell-9");
    let out = service.cli(&[
        "cell",
        "enroll",
        "cell-9",
        "--out-dir",
        enrolled.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&enrolled), 0o700, "an enrolled cell's directory");
    drop(service);

    // A wider socket mode when the sidecar runs as another user; nothing wider than rw.
    let shown = ok(idmint(&data).args(["--set", "agent.sds_socket_mode=0666", "config", "check"]));
    assert!(shown.contains("sds_socket_mode = \"0666\""), "{shown}");
    for bad in ["0777", "0644x", "0400", "1666"] {
        let out = run(idmint(&data).args([
            "--set",
            &format!("agent.sds_socket_mode={bad}"),
            "config",
            "check",
        ]));
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            text(&out).contains("agent.sds_socket_mode"),
            "{}",
            text(&out)
        );
    }
}
