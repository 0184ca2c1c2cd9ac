//! Several servers on one real PostgreSQL: what one server changes (placements, policies,
//! modes) reaches the others through the change feed, also across a broken connection.

// Tests wait on real databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use common::{laggard, process};
use idmint::api::{Caller, SignRequest};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::placement::{Placement, PlacementUpdate};
use idmint::policy::{Mode, Policy, PortRange, Protocol, Scope};

/// Two runtimes on one fresh database, sharing the operator's key-encryption key.
async fn two_servers(tag: &str) -> (String, Runtime, Runtime, [tempfile::TempDir; 2]) {
    two_servers_with(tag, &[]).await
}

/// [`two_servers`] with more settings.
async fn two_servers_with(
    tag: &str,
    settings: &[(&str, &str)],
) -> (String, Runtime, Runtime, [tempfile::TempDir; 2]) {
    let url = fresh_pg_database(tag).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let kek = dirs[0].path().join("shared-kek");
    write_private(&kek, "5e".repeat(32));
    let kek = kek.display().to_string();
    let start = |dir: &std::path::Path, init| {
        let mut all = vec![("store.url", url.as_str()), ("ca.kek_file", kek.as_str())];
        all.extend_from_slice(settings);
        let config = config_in(dir, &all);
        async move {
            Runtime::start(config, init)
                .await
                .expect("runtime on PostgreSQL")
        }
    };
    let a = start(dirs[0].path(), Init::CreateIfMissing).await;
    let b = start(dirs[1].path(), Init::MustExist).await;
    (url, a, b, dirs)
}

/// Stops both runtimes and drops their database.
async fn stop_both(a: Runtime, b: Runtime, url: &str) {
    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(url).await;
}

/// Waits until `ok` holds; returns how long it took.
async fn within(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn placed(n: u8) -> Placement {
    let mut p = placement();
    p.instance_guid = format!("1a1a1a1a-0000-4000-8000-0000000001{n:02x}")
        .parse()
        .unwrap();
    p
}

fn policy(source: &str) -> Policy {
    Policy {
        source: source.parse().unwrap(),
        destination: APP.parse().unwrap(),
        protocol: Protocol::Tcp,
        ports: PortRange::new(8080, 8080).unwrap(),
    }
}

const OTHER_APP: &str = "c0c0c0c0-0000-4000-8000-00000000000c";

#[tokio::test]
async fn placements_policies_and_modes_made_on_one_server_reach_the_other() {
    let (url, a, b, _dirs) = two_servers("feed").await;
    let mut cell_on_b = b.registry.watch(Some("cell-1".parse().unwrap()));
    assert_eq!(cell_on_b.next().await, PlacementUpdate::Snapshot(vec![]));

    // Registered through A: B knows it, and B's follower of cell-1 hears of it.
    assert!(a.registry.register(placed(1)).await.unwrap());
    let took = within("B knows A's placement", Duration::from_secs(3), || {
        b.registry.get(&placed(1).instance_guid).is_some()
    })
    .await;
    println!("a placement reached the other server in {took:?}");
    let heard = tokio::time::timeout(Duration::from_secs(3), cell_on_b.next())
        .await
        .expect("the cell's follower on B hears of it");
    assert_eq!(heard, PlacementUpdate::Registered(placed(1)));

    // The same placement again through B changes nothing; a different one is a conflict.
    assert!(!b.registry.register(placed(1)).await.unwrap());
    let mut moved = placed(1);
    moved.cell_id = "cell-2".parse().unwrap();
    let err = b.registry.register(moved).await.unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    // Deregistered through B: gone on A.
    b.registry
        .deregister(&placed(1).instance_guid)
        .await
        .unwrap();
    within("A forgets it", Duration::from_secs(3), || {
        a.registry.get(&placed(1).instance_guid).is_none()
    })
    .await;

    // A policy added on A, and a mode set on B, reach the other.
    let added: BTreeSet<Policy> = [policy(OTHER_APP)].into();
    a.policies.add(&added, "tester").await.unwrap();
    within("B has A's policy", Duration::from_secs(3), || {
        b.policies.list(None) == added.iter().cloned().collect::<Vec<_>>()
    })
    .await;
    let app_scope = Scope::App(APP.parse().unwrap());
    b.policies
        .set_mode(app_scope.clone(), Some(Mode::Policy), "tester")
        .await
        .unwrap();
    within("A has B's mode", Duration::from_secs(3), || {
        a.policies
            .modes()
            .iter()
            .any(|(s, m)| *s == app_scope && m == Mode::Policy)
    })
    .await;
    a.policies.remove(&added, "tester").await.unwrap();
    within("B drops the policy", Duration::from_secs(3), || {
        b.policies.list(None).is_empty()
    })
    .await;

    stop_both(a, b, &url).await;
}

#[tokio::test]
async fn a_cell_is_served_by_a_server_that_has_not_heard_of_its_instance_yet() {
    let (url, a, b, _dirs) = two_servers("find").await;
    // Registered through A and asked of B at once: B reads the store rather than refuse.
    a.registry.register(placed(2)).await.unwrap();
    let (_key, csr) = idmint::agent::new_key_and_csr().unwrap();
    let signed = b
        .issuance
        .sign_as(
            &Caller::Cell("cell-1".parse().unwrap()),
            SignRequest {
                placement: placed(2),
                csr,
                ttl: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("B certifies an instance registered through A");
    assert_eq!(signed.spiffe_id, expected_spiffe_id());
    stop_both(a, b, &url).await;
}

#[tokio::test]
async fn changes_made_while_a_server_was_cut_off_from_postgresql_reach_it_afterwards() {
    let (url, a, b, _dirs) = two_servers("cut").await;
    a.registry.register(placed(3)).await.unwrap();
    within("B knows it", Duration::from_secs(3), || {
        b.registry.get(&placed(3).instance_guid).is_some()
    })
    .await;

    // Every connection to the database is cut, B's listener among them; A then changes things.
    let cut = terminate_backends(&url).await;
    assert!(cut >= 2, "only {cut} connections were cut");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A's pool notices the broken connections as it uses them.
        match a.registry.register(placed(4)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "A never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.registry
        .deregister(&placed(3).instance_guid)
        .await
        .unwrap();
    let took = within("B takes up both", Duration::from_secs(10), || {
        b.registry.get(&placed(4).instance_guid).is_some()
            && b.registry.get(&placed(3).instance_guid).is_none()
    })
    .await;
    println!("changes reached the cut-off server {took:?} after they were made");
    stop_both(a, b, &url).await;
}

/// Terminates every other connection to `url`'s database; returns how many.
async fn terminate_backends(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get("n")
}

/// Servers as separate processes on one fresh database, and agents that know them all.
struct Foundation {
    dir: tempfile::TempDir,
    url: String,
    kek: String,
    /// Settings every server gets.
    settings: Vec<String>,
    servers: Vec<Option<process::Running>>,
    api: Vec<u16>,
    admin: Vec<u16>,
}

impl Foundation {
    fn new(tag: &str, n: usize) -> Foundation {
        Self::with(tag, n, &[])
    }

    fn with(tag: &str, n: usize, settings: &[&str]) -> Foundation {
        let url = block_on(fresh_pg_database(tag));
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek");
        write_private(&kek, "5e".repeat(32));
        let mut f = Foundation {
            kek: kek.display().to_string(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            dir,
            url,
            servers: (0..n).map(|_| None).collect(),
            api: (0..n).map(|_| free_port()).collect(),
            admin: (0..n).map(|_| free_port()).collect(),
        };
        for i in 0..n {
            f.start(i);
        }
        f
    }

    /// idmint with server `i`'s settings.
    fn idmint(&self, i: usize) -> std::process::Command {
        let mut cmd = process::idmint(&self.dir.path().join(format!("server-{i}")));
        for setting in [
            format!("store.url={}", self.url),
            format!("ca.kek_file={}", self.kek),
            format!("admin.listen=127.0.0.1:{}", self.admin[i]),
            "ca.leaf_ttl=30s".to_string(),
        ]
        .iter()
        .chain(&self.settings)
        {
            cmd.args(["--set", setting]);
        }
        cmd
    }

    fn start(&mut self, i: usize) {
        let mut cmd = self.idmint(i);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{}", self.api[i])]);
        let log = self.dir.path().join(format!("server-{i}.log"));
        self.servers[i] = Some(process::start(cmd, log));
    }

    /// kill -9.
    fn kill(&mut self, i: usize) {
        self.servers[i].take().expect("running");
    }

    fn cli(&self, i: usize, args: &[&str]) -> String {
        process::ok(self.idmint(i).args(args))
    }

    fn register(&self, via: usize, instance: &str, cell: &str) {
        self.register_app(via, instance, APP, cell);
    }

    fn register_app(&self, via: usize, instance: &str, app: &str, cell: &str) {
        self.cli(via, &register_args(instance, app, cell));
    }

    /// An agent for `cell` given every server; its data directory and admin port.
    fn agent(&self, cell: &str) -> (process::Running, std::path::PathBuf, u16) {
        let all: Vec<usize> = (0..self.api.len()).collect();
        self.agent_on(cell, &all, &[])
    }

    /// An agent for `cell` given `servers`, with `settings`.
    fn agent_on(
        &self,
        cell: &str,
        servers: &[usize],
        settings: &[&str],
    ) -> (process::Running, std::path::PathBuf, u16) {
        let creds = self.dir.path().join(format!("{cell}-credential"));
        let out = creds.to_str().unwrap();
        self.cli(0, &["cell", "enroll", cell, "--out-dir", out]);
        let data = self.dir.path().join(format!("agent-{cell}"));
        let admin = free_port();
        let mut cmd = process::idmint(&data);
        cmd.args(["--set", &format!("admin.listen=127.0.0.1:{admin}")]);
        for setting in settings {
            cmd.args(["--set", setting]);
        }
        cmd.arg("agent").arg("--credential-dir").arg(&creds);
        for i in servers {
            cmd.args(["--server", &format!("https://127.0.0.1:{}", self.api[*i])]);
        }
        let log = self.dir.path().join(format!("agent-{cell}.log"));
        (process::start(cmd, log), data, admin)
    }

    /// Which server the agent with admin port `admin` uses now.
    fn server_of(&self, admin: u16) -> usize {
        let metrics = http_get(admin, "/metrics").expect("agent metrics").1;
        let port: u16 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("idmint_agent_server_info{endpoint=\"https://127.0.0.1:"))
            .and_then(|rest| rest.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no server in {metrics}"));
        self.api.iter().position(|p| *p == port).unwrap()
    }

    /// The ledger as a live server `i` lists it.
    fn ledger(&self, i: usize) -> Vec<serde_json::Value> {
        let out = self.cli(i, &["audit", "list", "--json", "--limit", "100000"]);
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Foundation {
    fn drop(&mut self) {
        self.servers.clear();
        block_on(drop_pg_database(&self.url));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

fn instance_serial(agent_data: &std::path::Path, instance: &str) -> Option<String> {
    let crt = agent_data
        .join("instances")
        .join(instance)
        .join("instance.crt");
    let pem = std::fs::read(crt).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.raw_serial_as_string().replace(':', ""))
}

/// Asserts the ledger has no gaps and holds every serial in `held`.
fn assert_dense_and_holding(ledger: &[serde_json::Value], held: &[String]) {
    let mut seqs: Vec<i64> = ledger.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>(), "dense");
    for serial in held {
        assert!(
            ledger
                .iter()
                .any(|e| e["serial"].as_str() == Some(serial.as_str())),
            "certificate {serial} is not in the ledger"
        );
    }
}

const SECOND: &str = "1a1a1a1a-0000-4000-8000-000000000201";
const THIRD: &str = "1a1a1a1a-0000-4000-8000-000000000202";

#[test]
fn an_agent_leaves_a_killed_server_for_another_and_is_served_there() {
    let mut f = Foundation::new("failover", 3);
    f.register(1, INSTANCE, "cell-1");
    let (_agent, data, admin) = f.agent("cell-1");
    process::wait_until("the first certificate", Duration::from_secs(20), || {
        instance_serial(&data, INSTANCE).is_some()
    });

    // Twice: the server in use is killed, and an instance registered through a live one is
    // served from another.
    let mut held = vec![instance_serial(&data, INSTANCE).unwrap()];
    for (round, instance) in [SECOND, THIRD].into_iter().enumerate() {
        let used = f.server_of(admin);
        f.kill(used);
        let killed = Instant::now();
        let live = (0..3).find(|i| f.servers[*i].is_some()).unwrap();
        f.register(live, instance, "cell-1");
        process::wait_until(
            "a certificate after the kill",
            Duration::from_secs(15),
            || instance_serial(&data, instance).is_some(),
        );
        println!(
            "round {round}: served by another server {:?} after the kill",
            killed.elapsed()
        );
        let now = f.server_of(admin);
        assert_ne!(now, used, "moved on");
        assert!(f.servers[now].is_some(), "to a live server");
        held.push(instance_serial(&data, instance).unwrap());
    }
    let metrics = http_get(admin, "/metrics").unwrap().1;
    assert!(
        !metrics.contains("idmint_agent_server_switches_total 0"),
        "{metrics}"
    );
    let live = (0..3).find(|i| f.servers[*i].is_some()).unwrap();
    assert_dense_and_holding(&f.ledger(live), &held);
}

#[test]
fn the_ca_maintenance_lead_moves_when_its_server_is_killed() {
    let mut f = Foundation::new("lead", 2);
    let rotate = |f: &Foundation, i: usize| {
        f.idmint(i)
            .args(["ca", "rotate", "intermediate"])
            .output()
            .unwrap()
    };
    // Exactly one leads (the other says who to ask).
    let answers: Vec<_> = (0..2).map(|i| rotate(&f, i)).collect();
    let leader = answers
        .iter()
        .position(|o| o.status.success())
        .expect("one server leads");
    let other = 1 - leader;
    let refused = String::from_utf8_lossy(&answers[other].stderr).to_string();
    assert!(refused.contains("another idmint server"), "{refused}");
    let admin = f.admin.clone();
    let leads = |i: usize| {
        let metrics = http_get(admin[i], "/metrics").unwrap().1;
        metrics.contains("idmint_ca_leader 1")
    };
    assert!(leads(leader) && !leads(other), "the metrics say who leads");

    f.kill(leader);
    let killed = Instant::now();
    process::wait_until("the other server to lead", Duration::from_secs(10), || {
        rotate(&f, other).status.success()
    });
    println!("the lead moved {:?} after the kill", killed.elapsed());
    assert!(leads(other));
    assert_dense_and_holding(&f.ledger(other), &[]);
}

impl Foundation {
    /// The fingerprints of the CA certificates in `role` and `state`, as the store says.
    fn cas(&self, role: &str, state: &str) -> Vec<String> {
        let shown = serde_json::from_str(&self.cli(0, &["ca", "show", "--json"])).unwrap();
        cas_in(&shown, role, state)
    }

    /// Rotates the root through whichever live server leads; returns which.
    fn rotate_root(&self) -> usize {
        (0..self.api.len())
            .filter(|i| self.servers[*i].is_some())
            .find(|i| {
                self.idmint(*i)
                    .args(["ca", "rotate", "root"])
                    .output()
                    .unwrap()
                    .status
                    .success()
            })
            .expect("a server rotated the root")
    }
}

fn socket(agent_data: &std::path::Path, instance: &str) -> String {
    let sock = agent_data.join("sds").join(format!("{instance}.sock"));
    sock.display().to_string()
}

const ON_CELL_2: &str = "2b2b2b2b-0000-4000-8000-000000000005";

#[test]
fn a_new_root_waits_for_the_sidecars_of_every_cell_whichever_server_their_agent_uses() {
    // A new root may wait an hour: only the sidecars' acknowledgements can activate it
    // sooner. An agent silent for 3 s no longer counts; live agents report every second.
    let f = Foundation::with(
        "acks",
        2,
        &[
            "ca.root_activation_max_wait=1h",
            "server.agent_ack_grace=3s",
        ],
    );
    f.register(0, INSTANCE, "cell-1");
    f.register(1, ON_CELL_2, "cell-2");
    let every_second = ["agent.ack_report_every=1s"];
    let (_agent1, data1, _) = f.agent_on("cell-1", &[0], &every_second);
    let (agent2, data2, _) = f.agent_on("cell-2", &[1], &every_second);
    process::wait_until("both cells' certificates", Duration::from_secs(20), || {
        instance_serial(&data1, INSTANCE).is_some() && instance_serial(&data2, ON_CELL_2).is_some()
    });
    let mut sidecar1 = laggard::Laggard::open(&socket(&data1, INSTANCE));
    let mut sidecar2 = laggard::Laggard::open(&socket(&data2, ON_CELL_2));
    std::thread::sleep(Duration::from_secs(2));

    // Cell 1's sidecar takes the new root, cell 2's does not yet: it waits.
    let old_root = f.cas("root", "active");
    f.rotate_root();
    for sidecar in [&mut sidecar1, &mut sidecar2] {
        let pushed = sidecar.next_bundle();
        assert_eq!(
            pushed.matches("BEGIN CERTIFICATE").count(),
            2,
            "new root pushed"
        );
    }
    sidecar1.ack_last();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        f.cas("root", "active"),
        old_root,
        "waits for cell 2's sidecar"
    );
    sidecar2.ack_last();
    let took = process::wait_until("the new root to sign", Duration::from_secs(15), || {
        f.cas("root", "active") != old_root
    });
    println!("the new root signed {took:?} after the last sidecar acknowledged it");
    // The activation is recorded just after it is stored.
    let mut activated = None;
    process::wait_until(
        "the activation in the ledger",
        Duration::from_secs(5),
        || {
            activated = f
                .ledger(0)
                .into_iter()
                .filter_map(|e| e["reason"].as_str().map(String::from))
                .find(|r| r.starts_with("root activated"));
            activated.is_some()
        },
    );
    let activated = activated.unwrap();
    assert!(
        activated.contains("every connected sidecar"),
        "activated by acknowledgement: {activated}"
    );

    // Again, and cell 2's agent dies before its sidecar takes the root: once its last
    // report is older than the grace, it no longer holds the root back.
    let second_old = f.cas("root", "active");
    f.rotate_root();
    sidecar1.next_bundle();
    sidecar1.ack_last();
    sidecar2.next_bundle();
    drop(agent2);
    let took = process::wait_until(
        "the root to sign without the dead agent",
        Duration::from_secs(20),
        || f.cas("root", "active") != second_old,
    );
    println!("signed {took:?} after the silent agent was killed");
    let logs: String = (0..2)
        .map(|i| std::fs::read_to_string(f.dir.path().join(format!("server-{i}.log"))).unwrap())
        .collect();
    assert!(logs.contains("stopped reporting"), "the silence is logged");
}

/// Cuts `url`'s database off: no new connections, and every open one terminated.
async fn database_down(url: &str, down: bool) {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {}",
        !down
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    if down {
        terminate_backends(url).await;
    }
}

#[test]
fn while_postgresql_is_away_servers_refuse_issuance_serve_the_rest_and_recover_by_themselves() {
    let f = Foundation::with("outage", 2, &["ca.leaf_ttl=12s"]);
    f.register(0, INSTANCE, "cell-1");
    let (_agent, data, admin) = f.agent("cell-1");
    process::wait_until("the first certificate", Duration::from_secs(20), || {
        instance_serial(&data, INSTANCE).is_some()
    });
    let creds = f.dir.path().join("cell-1-credential");
    let read = |name: &str| std::fs::read_to_string(creds.join(name)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cell = rt
        .block_on(idmint::agent::remote::RemoteAuthority::connect(
            idmint::agent::remote::RemoteSettings {
                endpoints: vec![format!("https://127.0.0.1:{}", f.api[0])],
                server_name: "localhost",
                cert_chain_pem: &read("cell.pem"),
                key_pem: &read("cell.key"),
                roots_pem: &read("bundle.pem"),
            },
        ))
        .unwrap();
    let sign = || {
        rt.block_on(idmint::agent::obtain_svid(&cell, placement(), None))
            .map(|s| s.cert.serial_hex)
    };
    let before = sign().expect("issues while the database is up");

    rt.block_on(database_down(&f.url, true));
    let down = Instant::now();
    // Issuance is refused as unavailable, never answered with an unrecorded certificate.
    let err = sign().expect_err("nothing is issued without the ledger");
    assert!(
        matches!(
            err,
            idmint::agent::Error::Authority(idmint::api::Error::Unavailable(_))
        ),
        "refused as unavailable: {err}"
    );
    println!(
        "a sign request was refused {:?} into the outage",
        down.elapsed()
    );
    // What needs no write is still served: the trust bundle, and the agent's certificate.
    for port in &f.admin {
        let bundle = http_get(*port, "/v1/bundle.pem");
        assert!(
            matches!(&bundle, Some((200, b)) if b.contains("BEGIN CERTIFICATE")),
            "{bundle:?}"
        );
    }
    let held = instance_serial(&data, INSTANCE).unwrap();
    assert!(data.join("sds").join(format!("{INSTANCE}.sock")).exists());

    std::thread::sleep(Duration::from_secs(5));
    rt.block_on(database_down(&f.url, false));
    let back = Instant::now();
    let mut after = None;
    process::wait_until(
        "issuance to resume by itself",
        Duration::from_secs(30),
        || {
            after = sign().ok();
            after.is_some()
        },
    );
    println!(
        "issuance resumed {:?} after the database came back",
        back.elapsed()
    );
    // The agent renews again (12 s certificates renew within ~8 s).
    process::wait_until("the agent to renew", Duration::from_secs(30), || {
        instance_serial(&data, INSTANCE).is_some_and(|s| s != held)
    });
    let metrics = http_get(admin, "/metrics").unwrap().1;
    assert!(metrics.contains("idmint_agent_ready 1"), "{metrics}");
    let ledger = f.ledger(0);
    let now_held = instance_serial(&data, INSTANCE).unwrap();
    assert_dense_and_holding(&ledger, &[before, after.unwrap(), now_held]);
}

const APP_B: &str = "b0b0b0b0-0000-4000-8000-00000000000b";

fn app_id(app: &str) -> String {
    format!("spiffe://cf.internal/org/{ORG}/space/{SPACE}/app/{app}")
}

fn crt(agent_data: &std::path::Path, instance: &str) -> String {
    let path = agent_data
        .join("instances")
        .join(instance)
        .join("instance.crt");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn an_envoy_pair_loses_no_request_while_servers_are_killed_and_postgresql_is_cut_off() {
    use common::envoy::{start_backend, start_pair, traffic};
    // 10 s certificates renew every 4–6 s, so every step below sees renewals; a new root may
    // wait an hour, so only the sidecars' acknowledgements activate it.
    let mut f = Foundation::with(
        "chaos",
        3,
        &["ca.leaf_ttl=10s", "ca.root_activation_max_wait=1h"],
    );
    f.register_app(0, INSTANCE, APP, "cell-1");
    f.register_app(1, ON_CELL_2, APP_B, "cell-2");
    let (_agent1, data1, _) = f.agent("cell-1");
    let (_agent2, data2, _) = f.agent("cell-2");
    let (sock_a, sock_b) = (socket(&data1, INSTANCE), socket(&data2, ON_CELL_2));
    process::wait_until("both sockets", Duration::from_secs(20), || {
        std::path::Path::new(&sock_a).exists() && std::path::Path::new(&sock_b).exists()
    });
    let backend = start_backend();
    let (_provider, consumer) = start_pair(
        f.dir.path(),
        (&sock_a, &app_id(APP)),
        (&sock_b, &app_id(APP_B)),
        backend,
        "1s",
    );
    process::wait_until("the first request through", Duration::from_secs(20), || {
        matches!(http_get(consumer.listen, "/warmup"), Some((200, _)))
    });
    let requests = traffic(consumer.listen);
    let renewed_after = |f: &Foundation, what: &str| {
        let (a, b) = (crt(&data1, INSTANCE), crt(&data2, ON_CELL_2));
        let took = process::wait_until(what, Duration::from_secs(30), || {
            crt(&data1, INSTANCE) != a && crt(&data2, ON_CELL_2) != b
        });
        println!("{what}: both cells renewed within {took:?}");
        assert!(f.servers.iter().any(Option::is_some));
    };

    // A root rotation starts, and its leader is killed before the sidecars have the root.
    let old_root = f.cas("root", "active");
    let leader = f.rotate_root();
    f.kill(leader);
    let new_root = {
        let mut active = Vec::new();
        process::wait_until(
            "the rotation to complete under a new leader",
            Duration::from_secs(30),
            || {
                active = f.cas("root", "active");
                active != old_root
            },
        );
        active
    };
    renewed_after(&f, "after the CA leader was killed");

    // A second server dies.
    let second = (0..3).find(|i| f.servers[*i].is_some()).unwrap();
    f.kill(second);
    renewed_after(&f, "after a second server was killed");

    // Every connection to PostgreSQL is cut, and none is allowed for 3 s.
    block_on(database_down(&f.url, true));
    std::thread::sleep(Duration::from_secs(3));
    block_on(database_down(&f.url, false));
    renewed_after(&f, "after PostgreSQL was cut off");

    let t = requests.finish(300);
    println!("{} requests, none failed", t.sent);
    let live = (0..3).find(|i| f.servers[*i].is_some()).unwrap();
    let ledger = f.ledger(live);
    let held = [
        instance_serial(&data1, INSTANCE).unwrap(),
        instance_serial(&data2, ON_CELL_2).unwrap(),
    ];
    assert_dense_and_holding(&ledger, &held);
    // The rotation completed once: one activation of the new root.
    let activations = ledger
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("root activated"))
                && e["issuer_fingerprint"].as_str() == Some(new_root[0].as_str())
        })
        .count();
    assert_eq!(activations, 1, "the new root was activated once");
}

/// A stand-in for a PostgreSQL server that asks for a password and refuses every one, as a
/// real server does for a wrong password. Returns its port.
fn refusing_postgres() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = (|| -> std::io::Result<()> {
                let mut len = [0u8; 4];
                loop {
                    // The start-up message, after an optional TLS request refused with 'N'.
                    conn.read_exact(&mut len)?;
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    conn.read_exact(&mut body)?;
                    if body[..4] == 80877103u32.to_be_bytes() {
                        conn.write_all(b"N")?;
                        continue;
                    }
                    break;
                }
                // Cleartext password, please.
                conn.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
                let mut tag = [0u8; 1];
                conn.read_exact(&mut tag)?;
                conn.read_exact(&mut len)?;
                let mut password = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                conn.read_exact(&mut password)?;
                let mut fields = Vec::new();
                for (code, text) in [
                    (b'S', "FATAL"),
                    (b'V', "FATAL"),
                    (b'C', "28P01"),
                    (b'M', "password authentication failed for user \"idmint\""),
                ] {
                    fields.push(code);
                    fields.extend_from_slice(text.as_bytes());
                    fields.push(0);
                }
                fields.push(0);
                let mut error = vec![b'E'];
                error.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                error.extend_from_slice(&fields);
                conn.write_all(&error)
            })();
        }
    });
    port
}

/// Starts `idmint server` in `data` with `settings` on free ports, expecting it to refuse to
/// start; returns what it said.
fn refused_server(data: &std::path::Path, settings: &[String]) -> String {
    let mut cmd = process::idmint(data);
    for setting in settings {
        cmd.args(["--set", setting]);
    }
    let out = cmd
        .args(["--set", &format!("admin.listen=127.0.0.1:{}", free_port())])
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    err
}

#[test]
fn a_wrong_password_or_another_key_encryption_key_stops_a_server_with_the_reason() {
    // A wrong password: refused, said, and the password is not printed.
    let dir = tempfile::tempdir().unwrap();
    let port = refusing_postgres();
    let err = refused_server(
        &dir.path().join("data"),
        &[format!(
            "store.url=postgres://idmint:s3cret-pw@127.0.0.1:{port}/idmint"
        )],
    );
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains("s3cret-pw"),
        "the password is never printed: {err}"
    );

    // Two servers on one database with different key-encryption keys: the second refuses.
    let f = Foundation::new("kek", 1);
    let other_kek = f.dir.path().join("other-kek");
    write_private(&other_kek, "6f".repeat(32));
    let err = refused_server(
        &f.dir.path().join("second"),
        &[
            format!("store.url={}", f.url),
            format!("ca.kek_file={}", other_kek.display()),
        ],
    );
    assert!(
        err.contains("sealed with another key") && err.contains("same ca.kek_file"),
        "{err}"
    );
}

#[tokio::test]
async fn one_server_polls_the_policy_server_and_every_server_enforces_what_it_stored() {
    use common::policy_server::{self, answer_json, Answer};
    let dir = tempfile::tempdir().unwrap();
    let (stand_in, files) = policy_server::start(dir.path(), false);
    let url = stand_in.url();
    let settings = [
        ("policy.source", "policy-server"),
        ("policy.server.url", url.as_str()),
        ("policy.server.ca_file", files.ca.to_str().unwrap()),
        ("policy.server.cert_file", files.cert.to_str().unwrap()),
        ("policy.server.key_file", files.key.to_str().unwrap()),
        ("policy.server.poll_every", "100ms"),
    ];
    let (db, a, b, _dirs) = two_servers_with("polls", &settings).await;
    let mut source = placed(5);
    source.app_guid = OTHER_APP.parse().unwrap();
    a.registry.register(placed(6)).await.unwrap();
    b.registry.register(source).await.unwrap();
    stand_in.answer(Answer::Json(answer_json(&[(
        OTHER_APP.to_string(),
        APP.to_string(),
    )])));
    let expected = vec![policy(OTHER_APP)];
    within("both servers enforce it", Duration::from_secs(5), || {
        a.policies.list(None) == expected && b.policies.list(None) == expected
    })
    .await;
    // Exactly one of them polls, and the change is recorded once.
    let polling = |rt: &Runtime| {
        let mut text = String::new();
        rt.policy_polls
            .as_ref()
            .unwrap()
            .render(time::OffsetDateTime::now_utc(), &mut text);
        text.contains("idmint_policy_server_polling 1")
    };
    assert!(polling(&a) != polling(&b), "one server polls");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = a
        .audit
        .list(&idmint::store::LedgerFilter::default())
        .await
        .unwrap();
    let recorded = entries
        .iter()
        .filter(|e| e.record.kind == idmint::store::EntryKind::Policy)
        .count();
    assert_eq!(recorded, 1, "the policy came into force once: {entries:?}");
    stop_both(a, b, &db).await;
}

#[tokio::test]
async fn a_ca_rotation_on_one_server_wakes_the_others_and_they_take_it_up() {
    use idmint::ca::rotate::Target;
    let (url, a, b, _dirs) = two_servers("cafeed").await;
    let maintain = |rt: &Runtime| maintenance(rt, tokio::sync::watch::channel(None).1);
    let stop = tokio_util::sync::CancellationToken::new();
    let (control, task) = maintain(&a).start(stop.clone());
    let task = tokio::spawn(task);
    control.rotate(Target::Intermediate).await.expect("A leads");
    let rotated = a.ca.intermediate().fingerprint;
    // B's change feed wakes its CA maintenance for the rotation.
    tokio::time::timeout(Duration::from_secs(3), b.ca_changed().notified())
        .await
        .expect("B is told of A's rotation");
    // Woken, B's maintenance takes it up.
    let (_control_b, task_b) = maintain(&b).woken_by(b.ca_changed()).start(stop.clone());
    let task_b = tokio::spawn(task_b);
    within(
        "B signs with A's new intermediate",
        Duration::from_secs(3),
        || b.ca.intermediate().fingerprint == rotated,
    )
    .await;
    stop.cancel();
    let _ = tokio::join!(task, task_b);
    stop_both(a, b, &url).await;
}
