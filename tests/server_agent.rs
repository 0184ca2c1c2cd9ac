//! The server and two agents as separate processes, as on a foundation: each agent, with its
//! own cell credential, serves exactly the instances placed on its cell — over SDS and as
//! Diego instance files — and keeps serving while the server is down.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::envoy::{start_backend, start_pair, traffic};
use common::process::{idmint, ok, start, wait_until, Running};
use common::*;

struct Server {
    process: Option<Running>,
    data: PathBuf,
    admin: String,
    api_port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(dir: &Path, api_port: u16, admin: &str, leaf_ttl: &str) -> Running {
        let mut cmd = idmint(&dir.join("server"));
        // The server's config file, when the test wrote one (federation is set only there).
        let config = dir.join("server.toml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["--set", &format!("admin.listen={admin}")])
            .args(["--set", &format!("ca.leaf_ttl={leaf_ttl}")])
            .args(["server", "--listen", &format!("127.0.0.1:{api_port}")]);
        start(cmd, dir.join("server.log"))
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(idmint(&self.data)
            .args(["--set", &format!("admin.listen={}", self.admin)])
            .args(args))
    }

    fn register(&self, instance: &str, app: &str, cell: &str) {
        self.cli(&register_args(instance, app, cell));
    }

    fn agent(&self, cell: &str) -> (Running, PathBuf, u16) {
        self.agent_enrolled_for(cell, "24h")
    }

    /// An agent for `cell`, with a cell credential that lives `ttl`.
    /// Also returns where the agent's admin HTTP listens.
    fn agent_enrolled_for(&self, cell: &str, ttl: &str) -> (Running, PathBuf, u16) {
        let creds = self.dir.join(format!("{cell}-credential"));
        self.cli(&[
            "cell",
            "enroll",
            cell,
            "--ttl",
            ttl,
            "--out-dir",
            creds.to_str().unwrap(),
        ]);
        let data = self.dir.join(format!("agent-{cell}"));
        let mut cmd = idmint(&data);
        // Each agent its own admin port: they share this machine with each other and the server.
        let admin = free_port();
        cmd.args(["--set", &format!("admin.listen=127.0.0.1:{admin}")]);
        cmd.args([
            "agent",
            "--server",
            &format!("https://127.0.0.1:{}", self.api_port),
        ])
        .arg("--credential-dir")
        .arg(&creds);
        (
            start(cmd, self.dir.join(format!("agent-{cell}.log"))),
            data,
            admin,
        )
    }
}

const ON_CELL_2: &str = "2b2b2b2b-0000-4000-8000-000000000005";

#[test]
fn two_agents_serve_their_own_cells_and_keep_serving_while_the_server_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    // A federated trust domain whose endpoint is not reachable: its bundle from the file is
    // what the server holds and hands to the agents.
    let partner = partner_root();
    std::fs::write(dir.join("partner.pem"), &partner).unwrap();
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "[[federation]]\nbundle_endpoint_url = \"https://127.0.0.1:1/\"\n\
             profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://partner.example/bundle\"\n\
             bundle_file = \"{}\"\n",
            dir.join("partner.pem").display()
        ),
    )
    .unwrap();
    let mut server = Server {
        process: Some(Server::start(dir, api_port, &admin, "10s")),
        data: dir.join("server"),
        admin: admin.clone(),
        api_port,
        dir: dir.to_path_buf(),
    };
    server.register(INSTANCE, APP, "cell-1");
    server.register(ON_CELL_2, APP, "cell-2");
    let (_agent1, data1, admin1) = server.agent("cell-1");
    let (_agent2, data2, _) = server.agent("cell-2");

    // Each agent serves its own instance, and only that one.
    let files = |data: &Path, instance: &str| data.join("instances").join(instance);
    wait_until("cell-1's instance files", Duration::from_secs(20), || {
        files(&data1, INSTANCE).join("instance.crt").exists()
    });
    wait_until("cell-2's instance files", Duration::from_secs(20), || {
        files(&data2, ON_CELL_2).join("instance.crt").exists()
    });
    assert!(data1.join("sds").join(format!("{INSTANCE}.sock")).exists());
    assert!(!data1.join("sds").join(format!("{ON_CELL_2}.sock")).exists());
    assert!(!data2.join("sds").join(format!("{INSTANCE}.sock")).exists());
    let crt = std::fs::read_to_string(files(&data1, INSTANCE).join("instance.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(crt.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let uri = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
    assert_eq!(uri.as_deref(), Some(expected_spiffe_id().as_str()));
    let ledger: Vec<serde_json::Value> =
        serde_json::from_str(&server.cli(&["audit", "list", "--json"])).unwrap();
    assert!(ledger.iter().any(|e| e["kind"] == "issued"
        && e["cell_id"] == "cell-1"
        && e["instance_guid"] == INSTANCE));
    // The agent is ready, and its metrics count what it serves.
    wait_until("cell-1's agent ready", Duration::from_secs(10), || {
        matches!(http_get(admin1, "/healthz"), Some((200, _)))
    });
    let metrics = http_get(admin1, "/metrics").unwrap().1;
    assert!(metrics.contains("idmint_agent_ready 1"), "{metrics}");
    assert!(metrics.contains("idmint_sds_streams_open"), "{metrics}");
    assert!(metrics.contains("idmint_agent_renewals_total"), "{metrics}");

    // Through the agent's Workload API: a JWT-SVID the server signed over the cell's
    // connection, checked against the JWT keys the server streamed to the agent; and the
    // federated trust domain's bundle beside ours.
    let socket = data1.join("sds").join(format!("{INSTANCE}.sock"));
    let workload = |args: &[&str]| workload_client(socket.to_str().unwrap(), args).remove(0);
    let jwt = workload(&["jwt", "orders"]);
    assert_eq!(jwt["verified"], true, "{jwt}");
    assert_eq!(jwt["spiffe_id"], expected_spiffe_id());
    let bundles = workload(&["bundles"]);
    assert_eq!(
        bundles["bundles"]["spiffe://partner.example"], 1,
        "{bundles}"
    );
    assert_eq!(bundles["bundles"]["spiffe://cf.internal"], 1);

    // The server goes away: the agents keep what they serve; when it is back, renewals resume.
    server.process.take();
    let before = std::fs::read_to_string(files(&data1, INSTANCE).join("instance.crt")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        data1.join("sds").join(format!("{INSTANCE}.sock")).exists(),
        "still served"
    );
    server.process = Some(Server::start(dir, api_port, &admin, "10s"));
    // 10 s certificates renew within 6 s of issue; allow for the agent's backoff.
    wait_until(
        "a renewal after the restart",
        Duration::from_secs(30),
        || std::fs::read_to_string(files(&data1, INSTANCE).join("instance.crt")).unwrap() != before,
    );
}

/// A root of another trust domain, PEM.
fn partner_root() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn serial_of(cert_pem: &str) -> String {
    serial_of_pem(cert_pem.as_bytes())
}

#[test]
fn a_revoked_instance_is_re_keyed_by_its_agent_and_a_revoked_cell_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let server = Server {
        process: Some(Server::start(dir, api_port, &admin, "1h")),
        data: dir.join("server"),
        admin: admin.clone(),
        api_port,
        dir: dir.to_path_buf(),
    };
    server.register(INSTANCE, APP, "cell-1");
    server.register(ON_CELL_2, APP, "cell-2");
    let (_agent1, data1, _) = server.agent("cell-1");
    let (_agent2, data2, _) = server.agent("cell-2");
    let files = |data: &Path, instance: &str| data.join("instances").join(instance);
    let read = |data: &Path, instance: &str, name: &str| {
        std::fs::read_to_string(files(data, instance).join(name)).unwrap_or_default()
    };
    wait_until("both instances' files", Duration::from_secs(20), || {
        !read(&data1, INSTANCE, "instance.crt").is_empty()
            && !read(&data2, ON_CELL_2, "instance.crt").is_empty()
    });
    let (old_cert, old_key) = (
        read(&data1, INSTANCE, "instance.crt"),
        read(&data1, INSTANCE, "instance.key"),
    );

    // The instance: its agent learns of it from the CRLs the server streams, and gets a new
    // certificate with a new key at once, though it had most of an hour left.
    let said = server.cli(&["revoke", "--instance", INSTANCE, "--reason", "superseded"]);
    assert!(said.contains(&serial_of(&old_cert)), "{said}");
    let took = wait_until("the re-keyed instance", Duration::from_secs(10), || {
        read(&data1, INSTANCE, "instance.crt") != old_cert
    });
    assert_ne!(read(&data1, INSTANCE, "instance.key"), old_key);
    assert_ne!(
        serial_of(&read(&data1, INSTANCE, "instance.crt")),
        serial_of(&old_cert)
    );
    eprintln!("re-keyed {took:?} after the revocation");

    // The cell: its instance's certificate is revoked, and nothing replaces it.
    let held = read(&data2, ON_CELL_2, "instance.crt");
    server.cli(&["revoke", "--cell", "cell-2", "--reason", "key-compromise"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        read(&data2, ON_CELL_2, "instance.crt"),
        held,
        "nothing new for a revoked cell"
    );
    let ledger: Vec<serde_json::Value> =
        serde_json::from_str(&server.cli(&["audit", "list", "--json", "--limit", "10000"]))
            .unwrap();
    let issued_on_cell_2 = ledger
        .iter()
        .filter(|e| e["kind"] == "issued" && e["instance_guid"] == ON_CELL_2)
        .count();
    assert_eq!(
        issued_on_cell_2, 1,
        "only the certificate issued before the revocation"
    );
}

#[test]
fn an_agent_renews_its_cell_credential_and_reconnects_with_it_after_the_first_one_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let mut server = Server {
        process: Some(Server::start(dir, api_port, &admin, "1h")),
        data: dir.join("server"),
        admin: admin.clone(),
        api_port,
        dir: dir.to_path_buf(),
    };
    let enrolled = Instant::now();
    let (_agent, data, _) = server.agent_enrolled_for("cell-1", "6s");
    let creds = dir.join("cell-1-credential");
    let read = |name: &str| std::fs::read_to_string(creds.join(name)).unwrap();
    let first = read("cell.pem");
    let first_key = read("cell.key");
    // 6 s credentials renew 2.4 to 3.6 s after issue.
    wait_until("a renewed cell credential", Duration::from_secs(20), || {
        read("cell.pem") != first
    });
    assert_ne!(read("cell.key"), first_key, "a new key each time");
    let cell_id = "spiffe://cf.internal/cell/cell-1";
    let ledger: Vec<serde_json::Value> =
        serde_json::from_str(&server.cli(&["audit", "list", "--json"])).unwrap();
    let issued = ledger
        .iter()
        .filter(|e| e["kind"] == "issued" && e["spiffe_id"] == cell_id)
        .count();
    assert!(issued >= 2, "enrolment and renewal recorded: {ledger:?}");

    // Past the first credential's expiry, a restarted server accepts only the renewed one,
    // and the agent reconnects with it.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(enrolled.elapsed()));
    server.process.take();
    server.process = Some(Server::start(dir, api_port, &admin, "1h"));
    server.register(INSTANCE, APP, "cell-1");
    let crt = data.join("instances").join(INSTANCE).join("instance.crt");
    wait_until(
        "the instance served after reconnecting",
        Duration::from_secs(20),
        || crt.exists(),
    );
    let (ok, out) = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            creds.join("bundle.pem").to_str().unwrap(),
            "-untrusted",
            creds.join("cell.pem").to_str().unwrap(),
            creds.join("cell.pem").to_str().unwrap(),
        ],
    );
    assert!(ok, "the renewed cell credential verifies: {out}");
}

const APP_B: &str = "b0b0b0b0-0000-4000-8000-00000000000b";

#[test]
fn dev_serves_its_local_cell_through_the_server_api_and_lets_another_cells_agent_join() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let mut cmd = idmint(&dir.join("server"));
    cmd.args(["--set", &format!("admin.listen={admin}")])
        .args(["--set", &format!("server.listen=127.0.0.1:{api_port}")])
        .arg("dev");
    let server = Server {
        process: Some(start(cmd, dir.join("dev.log"))),
        data: dir.join("server"),
        admin,
        api_port,
        dir: dir.to_path_buf(),
    };
    server.register(INSTANCE, APP, "local");
    let (_agent, data2, _) = server.agent("cell-2");

    // Cells register their own instances by default in dev, and only their own.
    let creds = dir.join("cell-2-credential");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cell2 = common::api::connect_with_dir(api_port, &creds).await;
        let mut mine = placement();
        (mine.instance_guid, mine.app_guid, mine.cell_id) = (
            ON_CELL_2.parse().unwrap(),
            APP_B.parse().unwrap(),
            "cell-2".parse().unwrap(),
        );
        let wire = idmint::proto::placement_to_wire(&mine);
        cell2.client().register_placement(wire).await.unwrap();
        mine.instance_guid = "3c3c3c3c-0000-4000-8000-000000000006".parse().unwrap();
        mine.cell_id = "local".parse().unwrap();
        let wire = idmint::proto::placement_to_wire(&mine);
        let refused = cell2.client().register_placement(wire).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    });

    // Each cell serves its own: dev's local cell and the joined agent.
    let files = |data: &Path, instance: &str| data.join("instances").join(instance);
    let socket = |data: &Path, instance: &str| data.join("sds").join(format!("{instance}.sock"));
    wait_until("cell-2's instance files", Duration::from_secs(20), || {
        files(&data2, ON_CELL_2).join("instance.crt").exists()
    });
    assert!(socket(&server.data, INSTANCE).exists());
    assert!(files(&server.data, INSTANCE).join("instance.crt").exists());
    assert!(!socket(&server.data, ON_CELL_2).exists());
    assert!(!socket(&data2, INSTANCE).exists());
    // An instance on a cell with no agent here: registered, and said to be served elsewhere.
    let elsewhere = server.cli(&[
        "instance",
        "register",
        "--instance-guid",
        "4d4d4d4d-0000-4000-8000-000000000007",
        "--app-guid",
        APP,
        "--space-guid",
        SPACE,
        "--org-guid",
        ORG,
        "--cell-id",
        "cell-3",
    ]);
    assert!(
        elsewhere.contains("on cell cell-3") && elsewhere.contains("not here"),
        "{elsewhere}"
    );
    // The local cell has a credential like any other, and its certificates came through the
    // API as that cell.
    assert!(server.data.join("local-cell").join("cell.pem").exists());
    let ledger: Vec<serde_json::Value> =
        serde_json::from_str(&server.cli(&["audit", "list", "--json"])).unwrap();
    assert!(ledger
        .iter()
        .any(|e| e["kind"] == "issued" && e["spiffe_id"] == "spiffe://cf.internal/cell/local"));
    assert!(ledger.iter().any(|e| e["kind"] == "issued"
        && e["cell_id"] == "local"
        && e["instance_guid"] == INSTANCE));
}

fn app_id(app: &str) -> String {
    format!("spiffe://cf.internal/org/{ORG}/space/{SPACE}/app/{app}")
}

#[test]
fn an_envoy_pair_on_two_cells_keeps_talking_through_a_server_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    // 10 s certificates: renewed 4–6 s after issue, so a 3 s outage never outlasts one.
    let mut server = Server {
        process: Some(Server::start(dir, api_port, &admin, "10s")),
        data: dir.join("server"),
        admin: admin.clone(),
        api_port,
        dir: dir.to_path_buf(),
    };
    server.register(INSTANCE, APP, "cell-1");
    server.register(ON_CELL_2, APP_B, "cell-2");
    // B admits A alone, from the lists cell-2's agent follows over the server API.
    server.cli(&["policy", "add", "--source", APP, "--destination", APP_B]);
    server.cli(&["policy", "mode", "set", "policy"]);
    let (_agent1, data1, _) = server.agent("cell-1");
    let (_agent2, data2, _) = server.agent("cell-2");
    let socket = |data: &Path, instance: &str| {
        data.join("sds")
            .join(format!("{instance}.sock"))
            .display()
            .to_string()
    };
    let (sock_a, sock_b) = (socket(&data1, INSTANCE), socket(&data2, ON_CELL_2));
    wait_until("both sockets", Duration::from_secs(20), || {
        Path::new(&sock_a).exists() && Path::new(&sock_b).exists()
    });
    let backend = start_backend();
    let (_provider, consumer) = start_pair(
        dir,
        (&sock_a, &app_id(APP)),
        (&sock_b, &app_id(APP_B)),
        backend,
        "1s",
    );
    wait_until("the first request through", Duration::from_secs(20), || {
        matches!(http_get(consumer.listen, "/warmup"), Some((200, _)))
    });
    let requests = traffic(consumer.listen);
    let crt = |data: &Path, instance: &str| {
        std::fs::read_to_string(data.join("instances").join(instance).join("instance.crt")).unwrap()
    };
    let (before_a, before_b) = (crt(&data1, INSTANCE), crt(&data2, ON_CELL_2));

    // The server is down for 3 s, then back; both cells' certificates renew afterwards.
    server.process.take();
    std::thread::sleep(Duration::from_secs(3));
    server.process = Some(Server::start(dir, api_port, &admin, "10s"));
    wait_until(
        "renewals after the restart",
        Duration::from_secs(30),
        || crt(&data1, INSTANCE) != before_a && crt(&data2, ON_CELL_2) != before_b,
    );
    std::thread::sleep(Duration::from_secs(2));
    requests.finish(200);

    // Without A→B, B's sidecar refuses A's new connections (the consumer opens one a second).
    server.cli(&["policy", "remove", "--source", APP, "--destination", APP_B]);
    wait_until("B to refuse A", Duration::from_secs(10), || {
        !matches!(http_get(consumer.listen, "/refused"), Some((200, _)))
    });
}

#[test]
fn an_agent_says_what_is_missing_and_stops_on_ctrl_c_while_the_server_is_away() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // No credential: one clear sentence naming the file.
    let out = idmint(&dir.join("agent"))
        .args(["agent", "--credential-dir"])
        .arg(dir.join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cell.pem") && err.contains("idmint cell enroll"),
        "{err}"
    );

    // A server address that is not one.
    for bad in [
        "127.0.0.1:8471",
        "http://127.0.0.1:8471",
        "https://127.0.0.1",
    ] {
        let out = idmint(&dir.join("agent"))
            .args(["agent", "--server", bad, "--credential-dir"])
            .arg(dir.join("nowhere"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not an https://host:port address"), "{err}");
    }

    // A credential, but no server yet: it keeps trying every server it was given, says why
    // each failed, and Ctrl-C ends it cleanly.
    let (api_port, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let server = Server {
        process: Some(Server::start(dir, api_port, &admin, "1h")),
        data: dir.join("server"),
        admin,
        api_port,
        dir: dir.to_path_buf(),
    };
    // Deployed before its cell is enrolled, an agent told to wait says what it waits for, and
    // starts once the credential is there.
    let (waiting_admin, later) = (free_port(), dir.join("cell-3-credential"));
    let _waiting = Running(
        idmint(&dir.join("agent-3"))
            .args(["--set", &format!("admin.listen=127.0.0.1:{waiting_admin}")])
            .args([
                "agent",
                "--server",
                &format!("https://127.0.0.1:{api_port}"),
            ])
            .arg("--wait-for-credential")
            .arg("--credential-dir")
            .arg(&later)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the waiting agent's health",
        Duration::from_secs(10),
        || {
            matches!(http_get(waiting_admin, "/healthz"),
            Some((503, body)) if body.contains("this cell's credential"))
        },
    );
    server.cli(&[
        "cell",
        "enroll",
        "cell-3",
        "--out-dir",
        later.to_str().unwrap(),
    ]);
    wait_until(
        "the waiting agent to be ready",
        Duration::from_secs(20),
        || matches!(http_get(waiting_admin, "/healthz"), Some((200, _))),
    );

    let creds = dir.join("cell-1-credential");
    server.cli(&[
        "cell",
        "enroll",
        "cell-1",
        "--out-dir",
        creds.to_str().unwrap(),
    ]);
    drop(server);
    // A cell key every user can read: refused, naming the file.
    let key = creds.join("cell.key");
    let mode = |m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(0o644);
    let out = idmint(&dir.join("agent"))
        .args(["agent", "--credential-dir"])
        .arg(&creds)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cell.key is readable by every user (mode 644)"),
        "{err}"
    );
    mode(0o600);
    let (agent_admin, second) = (free_port(), free_port());
    let log = dir.join("agent.log");
    let mut agent = idmint(&dir.join("agent"))
        .args(["--set", &format!("admin.listen=127.0.0.1:{agent_admin}")])
        .args([
            "agent",
            "--server",
            &format!("https://127.0.0.1:{api_port}"),
        ])
        .args(["--server", &format!("https://127.0.0.1:{second}")])
        .arg("--credential-dir")
        .arg(&creds)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.try_wait().unwrap().is_none(), "still trying");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("cannot reach any idmint server"), "{said}");
    for port in [api_port, second] {
        assert!(
            said.contains(&format!("https://127.0.0.1:{port}: ")),
            "{said}"
        );
    }
    assert!(said.contains("refused"), "each server's reason: {said}");
    // Its health says what it waits for, and its metrics answer.
    let health = http_get(agent_admin, "/healthz");
    assert!(
        matches!(&health, Some((503, body)) if body.contains("a connection to the server")),
        "{health:?}"
    );
    let metrics = http_get(agent_admin, "/metrics");
    assert!(
        matches!(&metrics, Some((200, body)) if body.contains("idmint_agent_ready 0")),
        "{metrics:?}"
    );
    let pid = agent.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
