//! What `deploy/` ships, checked by the tools that consume it: the BOSH templates rendered
//! with Ruby's ERB and their configs passed through `idmint config check`, the ops files
//! against the job specs, the systemd units through `systemd-analyze`, the alert rules
//! through `promtool`, and every metric the dashboard and the alerts name against what a
//! running server and agent export.

// Tests wait on real processes with real deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::process::{idmint, ok, start, wait_until};
use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a checker that `make test` installs; a missing one fails with what to do.
fn run(tool: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is needed to check deploy/ (make test installs it): {e}")
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Renders `job` with `properties` (YAML) and `links` (YAML, optional) into `out`.
fn render(job: &str, properties: &str, links: Option<&str>, out: &Path) -> Output {
    std::fs::create_dir_all(out).unwrap();
    let props = out.join("properties.yml");
    std::fs::write(&props, properties).unwrap();
    let job_dir = root().join("deploy/bosh/jobs").join(job);
    let script = root().join("tests/deploy/bosh_render.rb");
    let mut args = vec![
        script.display().to_string(),
        job_dir.display().to_string(),
        props.display().to_string(),
        out.join("rendered").display().to_string(),
    ];
    if let Some(links) = links {
        let file = out.join("links.yml");
        std::fs::write(&file, links).unwrap();
        args.push(file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("ruby", &args, out)
}

/// `idmint config check` on a rendered config; its output.
fn config_check(out: &Path) -> String {
    let config = out.join("rendered/config/idmint.toml");
    ok(idmint(&out.join("unused"))
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]))
}

fn yaml_loads(file: &Path) {
    let out = run(
        "ruby",
        &[
            "-ryaml",
            "-e",
            "YAML.safe_load(File.read(ARGV[0]))",
            &file.display().to_string(),
        ],
        file.parent().unwrap(),
    );
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
}

const SERVER_REQUIRED: &str = "idmint:\n  database: {password: \"p@ss/w%rd\"}\n  ca: {kek: \"0123456789abcdef0123456789abcdef-kek\"}\n";
const SERVER_LINK: &str =
    "idmint-server:\n  idmint: {server: {name: idmint.service.cf.internal, port: 8471}}\n";

#[test]
fn every_bosh_template_renders_and_each_rendered_config_passes_config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = root().join("deploy/bosh/samples");
    let sample = |name: &str| std::fs::read_to_string(samples.join(name)).unwrap();
    let cases = [
        ("idmint-server", SERVER_REQUIRED.to_string(), None),
        ("idmint-server", sample("idmint-server-upstream.yml"), None),
        ("idmint-agent", "{}".to_string(), Some(SERVER_LINK)),
        ("idmint-agent", sample("idmint-agent.yml"), None),
    ];
    for (i, (job, properties, links)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("{i}-{job}"));
        let rendered = render(job, properties, *links, &out);
        assert!(rendered.status.success(), "{job}: {}", text(&rendered));
        yaml_loads(&out.join("rendered/config/bpm.yml"));
        let checked = config_check(&out);
        assert!(checked.starts_with("# config OK"), "{checked}");
        if *job == "idmint-server" {
            // The password is percent-encoded into the URL, and config check never shows it.
            assert!(
                !checked.contains("w%rd") && checked.contains("***"),
                "{checked}"
            );
            let kek = std::fs::read_to_string(out.join("rendered/config/kek")).unwrap();
            let kek = kek.trim();
            assert!(
                kek.len() == 64 && kek.bytes().all(|b| b.is_ascii_hexdigit()),
                "a key-encryption key file: {kek}"
            );
        }
    }
    // The upstream sample runs on Diego's intermediate; the agent sample knows two servers.
    let upstream = std::fs::read_to_string(
        tmp.path()
            .join("1-idmint-server/rendered/config/idmint.toml"),
    )
    .unwrap();
    assert!(upstream.contains("mode = \"upstream\"") && upstream.contains("[ca.upstream]"));
    let bpm =
        std::fs::read_to_string(tmp.path().join("3-idmint-agent/rendered/config/bpm.yml")).unwrap();
    assert_eq!(bpm.matches("--server\n").count(), 2, "{bpm}");
    assert!(
        bpm.contains("/var/vcap/data/idmint-sds"),
        "its own SDS volume: {bpm}"
    );
}

#[test]
fn bosh_templates_refuse_what_cannot_run_and_name_the_property() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("idmint-server", "{}", None, "idmint.database.password is required"),
        (
            "idmint-server",
            "idmint: {database: {password: x}, ca: {kek: short}}",
            None,
            "idmint.ca.kek must be at least 32 characters",
        ),
        (
            "idmint-server",
            "idmint: {database: {password: x}, ca: {kek: 0123456789abcdef0123456789abcdef, mode: upstream}}",
            None,
            "idmint.ca.upstream.certificate is required",
        ),
        (
            "idmint-server",
            "idmint: {database: {password: x}, ca: {kek: 0123456789abcdef0123456789abcdef, mode: other}}",
            None,
            "idmint.ca.mode must be self-signed or upstream",
        ),
        ("idmint-agent", "{}", None, "idmint.agent.servers is empty"),
    ];
    for (i, (job, properties, links, said)) in cases.iter().enumerate() {
        let out = render(job, properties, *links, &tmp.path().join(i.to_string()));
        assert!(!out.status.success(), "{job} {properties}");
        let why = text(&out);
        assert!(why.contains(said), "{job} {properties}: {why}");
    }
}

#[test]
fn the_ops_files_set_only_properties_the_jobs_declare() {
    let ops: Vec<String> = std::fs::read_dir(root().join("deploy/bosh/operations"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    assert!(ops.len() >= 2, "{ops:?}");
    let script = root()
        .join("tests/deploy/ops_check.rb")
        .display()
        .to_string();
    let jobs = root().join("deploy/bosh/jobs").display().to_string();
    let mut args = vec![script.as_str(), jobs.as_str()];
    args.extend(ops.iter().map(String::as_str));
    let out = run("ruby", &args, &root());
    assert!(out.status.success(), "{}", text(&out));
    // The checker notices a property no job has.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "- type: replace\n  path: /instance_groups/name=idmint/jobs/name=idmint-server/properties/idmint/ca/nonsense?\n  value: 1\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let out = run("ruby", &[&script, &jobs, &bad], &root());
    assert!(!out.status.success());
    assert!(text(&out).contains("idmint-server has no property idmint.ca.nonsense"));
}

#[test]
fn the_systemd_units_verify_without_a_warning_and_are_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    for unit in ["idmint-server.service", "idmint-agent.service"] {
        // As installed, with the binary where the unit says it is.
        let text_of_unit =
            std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        assert!(text_of_unit.contains("ExecStart=/usr/local/bin/idmint "));
        let installed = text_of_unit.replace("/usr/local/bin/idmint", env!("CARGO_BIN_EXE_idmint"));
        std::fs::write(tmp.path().join(unit), installed).unwrap();
        let out = run("systemd-analyze", &["verify", unit], tmp.path());
        // It exits 0 on warnings: any word from it is a failure.
        assert!(
            out.status.success() && text(&out).trim().is_empty(),
            "{unit}: {}",
            text(&out)
        );
        // Exposure 2.0 of 10 at most ("OK"); systemd's scale is tenths.
        let out = run(
            "systemd-analyze",
            &["security", "--offline=true", "--threshold=20", unit],
            tmp.path(),
        );
        let said = text(&out);
        assert!(out.status.success(), "{unit}: {said}");
        let level = said
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .unwrap_or_else(|| panic!("{said}"));
        println!("{level}");
        for hardening in [
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=\n",
            "ProtectSystem=strict",
            "UMask=0077",
            "StateDirectoryMode=0700",
        ] {
            assert!(text_of_unit.contains(hardening), "{unit}: {hardening}");
        }
    }
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = root().join("deploy/monitoring");
    let out = run("promtool", &["check", "rules", "idmint-alerts.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        "promtool",
        &["test", "rules", "idmint-alerts.test.yml"],
        &dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    // Every alert the issue names has a rule and a test.
    let rules = std::fs::read_to_string(dir.join("idmint-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("idmint-alerts.test.yml")).unwrap();
    for alert in [
        "IdmintCaExpiresSoon",
        "IdmintLeafCertificatesNearExpiry",
        "IdmintRenewalFailures",
        "IdmintBundleAckLag",
        "IdmintNoCaLeader",
        "IdmintLedgerWriteFailures",
        "IdmintServerUnreachable",
        "IdmintLedgerDiverged",
        "IdmintCheckpointsStalled",
        "IdmintCrlsStale",
        "IdmintIntermediateWithoutCrl",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert}");
    }
}

/// The metric names a real server and agent export (histograms' series included).
fn exported_metrics() -> BTreeSet<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api, server_admin, agent_admin) = (free_port(), free_port(), free_port());
    let server_data = dir.join("server");
    let mut cmd = idmint(&server_data);
    cmd.args(["--set", &format!("admin.listen=127.0.0.1:{server_admin}")])
        .args(["server", "--listen", &format!("127.0.0.1:{api}")]);
    let _server = start(cmd, dir.join("server.log"));
    let cli = |args: &[&str]| {
        ok(idmint(&server_data)
            .args(["--set", &format!("admin.listen=127.0.0.1:{server_admin}")])
            .args(args))
    };
    let creds = dir.join("creds");
    cli(&[
        "cell",
        "enroll",
        "cell-1",
        "--out-dir",
        creds.to_str().unwrap(),
    ]);
    cli(&register_args(INSTANCE, APP, "cell-1"));
    let mut cmd = idmint(&dir.join("agent"));
    cmd.args(["--set", &format!("admin.listen=127.0.0.1:{agent_admin}")])
        .args(["agent", "--server", &format!("https://127.0.0.1:{api}")])
        .arg("--credential-dir")
        .arg(&creds);
    let _agent = start(cmd, dir.join("agent.log"));
    let mut agent = String::new();
    wait_until(
        "the agent's first certificate",
        Duration::from_secs(20),
        || {
            agent = http_get(agent_admin, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default();
            agent.contains("idmint_agent_certificate_seconds_to_expiry_count 1")
        },
    );
    let server = http_get(server_admin, "/metrics").unwrap().1;
    let mut names = BTreeSet::new();
    for line in server.lines().chain(agent.lines()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The `idmint_…` names in `text`.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("idmint_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_loads_and_it_and_the_alerts_name_only_metrics_idmint_exports() {
    let dir = root().join("deploy/monitoring");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-idmint.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["title"].is_string());
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    let exported = exported_metrics();
    let alerts = std::fs::read_to_string(dir.join("idmint-alerts.yml")).unwrap();
    let mut named = named_metrics(&queries.join("\n"));
    // The alerts' expressions, and their descriptions' pointers to other metrics.
    named.extend(named_metrics(&alerts));
    let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:?}; exported: {exported:?}"
    );
    assert!(named.len() >= 12, "{named:?}");
}
