//! The verifiable log over the ledger, on SQLite and PostgreSQL: the tiled tree follows the
//! ledger as entries are committed, restores itself from its stored tiles, and agrees with a
//! tree built in memory from the same leaves at every size.

#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use idmint::ledger::merkle::{self, MemoryTree};
use idmint::ledger::tree::TiledTree;
use idmint::store::{EntryKind, LedgerRecord, Settings, Store};

/// Appends `n` ledger entries after those stored, each with its own leaf hash; the hashes.
async fn append(store: &Store, n: usize) -> Vec<merkle::Hash> {
    let mut appender = store.ledger_appender();
    let mut hashes = Vec::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(idmint::store::MAX_APPEND);
        let first = appender.next_seq().await.unwrap();
        let records: Vec<_> = (0..batch as i64)
            .map(|i| {
                let mut r = LedgerRecord::bare(EntryKind::Denied, time::OffsetDateTime::now_utc());
                r.reason = Some(format!("entry {}", first + i));
                r.leaf_hash = idmint::ledger::leaf_hash(&r);
                r
            })
            .collect();
        appender.insert_at(first, &records).await.unwrap();
        hashes.extend(
            records
                .iter()
                .map(|r| <merkle::Hash>::try_from(&r.leaf_hash[..]).unwrap()),
        );
        left -= batch;
    }
    appender.close().await;
    hashes
}

async fn follows_the_ledger(url: &str) {
    let store = Store::open(&Settings { url: url.into() }, true)
        .await
        .unwrap();
    let mut memory = MemoryTree::default();
    let mut tree = TiledTree::load(store.clone()).await.unwrap();
    assert_eq!(tree.size(), 0);
    assert_eq!(tree.root(), merkle::empty_root());
    // Past one full tile of the second level (65,536 entries), in uneven steps.
    let mut checked = Vec::new();
    for step in [1, 255, 1, 300, 65_000, 100, 5_000] {
        for h in append(&store, step).await {
            memory.push(h);
        }
        assert_eq!(tree.catch_up().await.unwrap(), step as u64);
        assert_eq!(tree.size(), memory.size());
        assert_eq!(
            tree.root(),
            memory.root(memory.size()).unwrap(),
            "size {}",
            tree.size()
        );
        checked.push(tree.size());
        // Restored from the tiles, and read on from the ledger, it is the same tree.
        let mut again = TiledTree::load(store.clone()).await.unwrap();
        assert!(again.size() <= tree.size() && tree.size() - again.size() < 256);
        again.catch_up().await.unwrap();
        assert_eq!(again.root(), tree.root());
    }
    for &size in &checked {
        assert_eq!(
            tree.root_at(size).await.unwrap(),
            memory.root(size).unwrap(),
            "root at {size}"
        );
    }
    assert!(tree.root_at(tree.size() + 1).await.is_err());
    assert_eq!(tree.catch_up().await.unwrap(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tree_follows_the_ledger_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idmint.db").display());
    follows_the_ledger(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tree_follows_the_ledger_on_postgres() {
    let url = fresh_pg_database("log_tree").await;
    follows_the_ledger(&url).await;
    drop_pg_database(&url).await;
}

/// A checkpointer over `store`, as a server makes it (key sealed with the KEK in `dir`).
async fn checkpointer(
    store: &Store,
    dir: &std::path::Path,
) -> idmint::ledger::checkpoints::Checkpointer {
    use idmint::ledger::checkpoints::{self, Checkpointer};
    let kek = checkpoints::kek(store, &dir.join("kek")).await.unwrap();
    let keys = checkpoints::LogKeys::new(store.clone(), kek, ORIGIN.into());
    let clock = idmint::clock::Clock::system();
    Checkpointer::new(store.clone(), keys, clock, Default::default())
        .await
        .unwrap()
}

const ORIGIN: &str = "test.example/idmint/ledger";

/// Every stored checkpoint, opened with the stored verifier key and read.
async fn signed_checkpoints(store: &Store) -> Vec<idmint::ledger::note::Checkpoint> {
    use idmint::ledger::note::{Checkpoint, NoteVerifier};
    let keys = store.log_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    let verifier = NoteVerifier::parse(&keys[0].verifier).unwrap();
    let mut out = Vec::new();
    for stored in store.checkpoints().await.unwrap() {
        let body = verifier.open(&stored.note).unwrap();
        let c = Checkpoint::parse(body).unwrap();
        assert_eq!((c.size, &c.root[..]), (stored.size, &stored.root[..]));
        assert_eq!(c.origin, "test.example/idmint/ledger");
        out.push(c);
    }
    out
}

/// Asserts that every checkpoint is consistent with every later one, by proofs from `tree`.
fn assert_all_consistent(tree: &MemoryTree, checkpoints: &[idmint::ledger::note::Checkpoint]) {
    for (i, old) in checkpoints.iter().enumerate() {
        assert_eq!(old.root, tree.root(old.size).unwrap());
        for new in &checkpoints[i + 1..] {
            let proof = merkle::consistency_proof(tree, old.size, new.size).unwrap();
            merkle::verify_consistency(old.size, new.size, &proof, &old.root, &new.root).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_signed_as_the_ledger_grows_and_stay_consistent_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idmint.db").display());
    let store = Store::open(&Settings { url }, true).await.unwrap();
    let mut memory = MemoryTree::default();
    let mut signer = checkpointer(&store, dir.path()).await;
    // The empty log gets a checkpoint too, and nothing new means nothing signed.
    assert_eq!(signer.step().await.unwrap().unwrap().size, 0);
    assert!(signer.step().await.unwrap().is_none());
    for (round, n) in [300usize, 1, 2000].into_iter().enumerate() {
        for h in append(&store, n).await {
            memory.push(h);
        }
        if round == 1 {
            // A restart in between: the next server reads on from the tiles and the tail.
            signer = checkpointer(&store, dir.path()).await;
        }
        let signed = signer.step().await.unwrap().expect("a new checkpoint");
        assert_eq!(signed.size, memory.size());
    }
    let checkpoints = signed_checkpoints(&store).await;
    assert_eq!(
        checkpoints.iter().map(|c| c.size).collect::<Vec<_>>(),
        [0, 300, 301, 2301]
    );
    assert_all_consistent(&memory, &checkpoints);

    // The seed is stored sealed: not in the clear, and another KEK cannot open it.
    let key = &store.log_keys().await.unwrap()[0];
    assert_eq!(key.sealed_seed.len(), 12 + 32 + 16);
    let other = tempfile::tempdir().unwrap();
    let wrong = idmint::ca::Kek::create(&other.path().join("kek")).unwrap();
    let keys = idmint::ledger::checkpoints::LogKeys::new(store.clone(), wrong, ORIGIN.into());
    let err = keys.current(0).await.err().unwrap();
    assert!(err.to_string().contains("signing key"), "{err}");

    // An entry under the last checkpoint changed in the database: nothing more is signed.
    sqlite_exec(
        dir.path(),
        "UPDATE ledger_entries SET leaf_hash = zeroblob(32) WHERE seq = 2300",
    )
    .await;
    append(&store, 5).await;
    let mut restarted = checkpointer(&store, dir.path()).await;
    let err = restarted.step().await.unwrap_err();
    assert!(
        matches!(
            err,
            idmint::ledger::checkpoints::CheckpointError::Diverged { size: 2301 }
        ),
        "{err}"
    );
    assert_eq!(store.checkpoints().await.unwrap().len(), 4);
    store.close().await;

    // Entries a checkpoint covers cut from the end: nothing more is signed either.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idmint.db").display());
    let store = Store::open(&Settings { url }, true).await.unwrap();
    append(&store, 300).await;
    checkpointer(&store, dir.path()).await.step().await.unwrap();
    sqlite_exec(dir.path(), "DELETE FROM ledger_entries WHERE seq >= 290").await;
    let err = checkpointer(&store, dir.path())
        .await
        .step()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            idmint::ledger::checkpoints::CheckpointError::Diverged { size: 300 }
        ),
        "{err}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_sharing_postgres_sign_consistent_checkpoints() {
    let url = fresh_pg_database("log_checkpoints").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Store::open(&Settings { url: url.clone() }, true)
            .await
            .unwrap(),
        Store::open(&Settings { url: url.clone() }, true)
            .await
            .unwrap(),
    );
    let mut memory = MemoryTree::default();
    // Both make the key at once: one is kept, and both sign with it. (Servers share the KEK.)
    idmint::ledger::checkpoints::kek(&a, &dir.path().join("kek"))
        .await
        .unwrap();
    let (mut first, mut second) =
        tokio::join!(checkpointer(&a, dir.path()), checkpointer(&b, dir.path()));
    for round in 0..6 {
        for h in append(if round % 2 == 0 { &a } else { &b }, 150 * round + 7).await {
            memory.push(h);
        }
        let (x, y) = tokio::join!(first.step(), second.step());
        let signed: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
        assert_eq!(signed.len(), 1, "one of the two signs each size");
    }
    let checkpoints = signed_checkpoints(&a).await;
    assert_eq!(checkpoints.len(), 6);
    assert_all_consistent(&memory, &checkpoints);
    a.close().await;
    b.close().await;
    drop_pg_database(&url).await;
}

/// Runs `sql` on the SQLite database in `dir` behind idmint's back.
async fn sqlite_exec(dir: &std::path::Path, sql: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("idmint.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// The latest checkpoint's size, read from `/v1/log/checkpoint`.
fn served_size(admin: u16) -> Option<u64> {
    let (status, note) = http_get(admin, "/v1/log/checkpoint")?;
    (status == 200).then(|| note.lines().nth(1)?.parse().ok())?
}

#[test]
fn a_generic_tlog_client_follows_and_checks_the_served_log() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = common::dev::Idmint::start_with(tmp.path(), &[]);
    // Enough registrations (each recorded, and each instance's certificate issued) for a
    // full tile.
    register_many(&idmint, 150);
    let entries = checkpointed_entries(&idmint).len() as u64;
    assert!(entries >= 256, "{entries} entries");

    // Python, with its own hashing and Ed25519, agrees with the checkpoint.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/tlog_check.py"))
        .arg(format!("http://127.0.0.1:{}", idmint.admin))
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tlog client refused the log: {stderr}"
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(seen["size"].as_u64().unwrap() >= entries, "{seen}");
    assert!(seen["level1"].as_u64().unwrap() >= 1, "{seen}");

    // The entries bundle holds the records whose leaf hashes the first tile lists; it needs
    // the right to read the ledger.
    let (status, _) = http_get(idmint.admin, "/v1/log/tile/entries/000").unwrap();
    assert_eq!(status, 401);
    let tile = raw_get(&idmint.admin_socket(), "/v1/log/tile/0/000");
    let bundle = raw_get(&idmint.admin_socket(), "/v1/log/tile/entries/000");
    let mut rest = &bundle[..];
    let mut hashes = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let record = idmint::ledger::decode(&rest[2..2 + len]).expect("a ledger record");
        assert_eq!(
            idmint::ledger::leaf_hash(&record),
            merkle::leaf(&rest[2..2 + len]).to_vec()
        );
        hashes.extend_from_slice(&merkle::leaf(&rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    assert_eq!(hashes, tile);

    // Bad paths get a clear answer, and a tile past the log none.
    for bad in [
        "/v1/log/tile/0/1234",
        "/v1/log/tile/0/000.p/300",
        "/v1/log/tile/x/000",
    ] {
        let (status, body) = http_get(idmint.admin, bad).unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("not a tile path"), "{body}");
    }
    let (status, _) = http_get(idmint.admin, "/v1/log/tile/0/x999/000").unwrap();
    assert_eq!(status, 404);
}

/// The body of a GET on the admin socket, as bytes.
fn raw_get(socket: &std::path::Path, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = answer[head_end..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(&body);
    }
    body
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 4 + size..];
    }
}

/// The ledger's entries (as the admin API lists them) once a checkpoint covers them all.
fn checkpointed_entries(idmint: &common::dev::Idmint) -> Vec<serde_json::Value> {
    let (_, ledger) =
        socket_request(&idmint.admin_socket(), "GET", "/v1/ledger?limit=10000", "").unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&ledger).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while served_size(idmint.admin).unwrap_or(0) < entries.len() as u64 {
        let n = entries.len();
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of {n} entries"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    entries
}

/// Registers `n` instances through the admin socket; each is recorded and certified.
fn register_many(idmint: &common::dev::Idmint, n: u32) {
    for i in 0..n {
        let body = format!(
            r#"{{"instance_guid": "{i:08x}-0000-4000-8000-000000000011",
                "app_guid": "{i:08x}-0000-4000-8000-000000000012",
                "space_guid": "00000000-0000-4000-8000-000000000013",
                "org_guid": "00000000-0000-4000-8000-000000000014"}}"#
        );
        let (status, answer) =
            socket_request(&idmint.admin_socket(), "POST", "/v1/instances", &body).unwrap();
        assert_eq!(status, 201, "{answer}");
    }
}

/// Runs the CLI on the data in `data` (and the database at `url`, when not SQLite's).
fn cli(data: &std::path::Path, url: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idmint"));
    cmd.arg("--data-dir").arg(data);
    if let Some(url) = url {
        cmd.args(["--set", &format!("store.url={url}")]);
    }
    let out = cmd.args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Each way of tampering with the stored ledger, as SQL both databases run, and what
/// `audit verify` must name.
const TAMPERING: &[(&str, &[&str], &str)] = &[
    (
        "a field edited",
        &["UPDATE ledger_entries SET recorded_at_ms = recorded_at_ms + 1 WHERE seq = 100"],
        "entry 100: its fields do not match",
    ),
    (
        "a row deleted",
        &["DELETE FROM ledger_entries WHERE seq = 100"],
        "entry 100: missing",
    ),
    (
        "two rows swapped",
        &[
            "UPDATE ledger_entries SET seq = 9000000 WHERE seq = 100",
            "UPDATE ledger_entries SET seq = 100 WHERE seq = 101",
            "UPDATE ledger_entries SET seq = 101 WHERE seq = 9000000",
        ],
        "entry 100: not the entry the log recorded",
    ),
    (
        "a row inserted",
        &[
            "UPDATE ledger_entries SET seq = seq + 9000000 WHERE seq >= 100",
            "UPDATE ledger_entries SET seq = seq - 8999999 WHERE seq >= 9000000",
            "INSERT INTO ledger_entries (seq, kind, recorded_at_ms, reason, leaf_hash) \
             SELECT 100, kind, recorded_at_ms, 'slipped in', leaf_hash FROM ledger_entries \
             WHERE seq = 101",
        ],
        "entry 100:",
    ),
    (
        "the tail cut off",
        &["DELETE FROM ledger_entries WHERE seq >= 280"],
        "entries from 280 on were removed",
    ),
];

/// Where the ledger under test lives.
enum Db {
    Sqlite,
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

/// Makes a ledger with `idmint dev`, keeps a checkpoint and a proof as a team would, then
/// tampers with copies of the database in every way and has `audit verify` name each.
async fn tampering_is_named(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let url = match &db {
        Db::Sqlite => None,
        Db::Postgres(url) => Some(url.as_str()),
    };
    let store_setting = url.map(|u| format!("store.url={u}"));
    let settings: Vec<&str> = store_setting.iter().map(String::as_str).collect();
    let idmint = common::dev::Idmint::start_with(tmp.path(), &settings);
    register_many(&idmint, 150);
    let entries = checkpointed_entries(&idmint);
    let data = idmint.data.clone();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let team = path(&tmp.path().join("team-checkpoint.note"));
    let (ok, out) = cli(&data, url, &["audit", "checkpoint", "--save", &team]);
    assert!(ok, "{out}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("checked with the key "))
        .unwrap()
        .to_string();

    // A proof of one issuance, checked offline with the key alone.
    let serial = entries
        .iter()
        .find_map(|e| e["serial"].as_str())
        .unwrap()
        .to_string();
    let (ok, proof) = cli(
        &data,
        url,
        &["audit", "prove", &serial, "--checkpoint", &team],
    );
    assert!(ok, "{proof}");
    let proof_file = path(&tmp.path().join("proof.json"));
    std::fs::write(&proof_file, &proof).unwrap();
    let check = |key: &str| {
        cli(
            &data,
            url,
            &["audit", "check-proof", &proof_file, "--key", key],
        )
    };
    let (ok, out) = check(&key);
    assert!(ok && out.contains("proof holds"), "{out}");
    // A truncated proof, and a proof checked with another key, do not hold.
    let mut cut: serde_json::Value = serde_json::from_str(&proof).unwrap();
    cut["proof"].as_array_mut().unwrap().pop();
    std::fs::write(&proof_file, cut.to_string()).unwrap();
    let (ok, out) = check(&key);
    assert!(!ok && out.contains("does not hold"), "{out}");
    std::fs::write(&proof_file, &proof).unwrap();
    let other =
        idmint::ledger::note::NoteSigner::from_seed(key.split('+').next().unwrap(), &[3; 32])
            .unwrap()
            .verifier()
            .encode();
    let (ok, out) = check(&other);
    assert!(!ok && out.contains("no signature"), "{out}");
    let (ok, out) = cli(&data, url, &["audit", "prove", "deadbeef"]);
    assert!(
        !ok && out.contains("no certificate with serial deadbeef"),
        "{out}"
    );

    // Saved checkpoints that are not the log's are refused, naming the file.
    let forged = path(&tmp.path().join("forged.note"));
    let text = std::fs::read_to_string(&team).unwrap();
    std::fs::write(&forged, text.replacen('\n', "\n1", 1)).unwrap();
    let (ok, out) = cli(&data, url, &["audit", "verify", "--checkpoint", &forged]);
    assert!(
        !ok && out.contains("forged.note") && out.contains("does not verify"),
        "{out}"
    );
    let (ok, out) = cli(
        &data,
        url,
        &["audit", "verify", "--checkpoint", "/nonexistent/c.note"],
    );
    assert!(!ok && out.contains("cannot read checkpoint file"), "{out}");
    drop(idmint);

    // The untouched ledger verifies, against the log's checkpoints and the team's.
    let (ok, out) = cli(&data, url, &["audit", "verify", "--checkpoint", &team]);
    assert!(ok && out.contains("ledger verified"), "{out}");
    for (n, (name, sql, named)) in TAMPERING.iter().enumerate() {
        let (case_data, case_url) = match &db {
            Db::Sqlite => {
                let to = tmp.path().join(format!("case-{n}"));
                copy_dir(&data, &to);
                for statement in *sql {
                    sqlite_exec(&to, statement).await;
                }
                (to, None)
            }
            Db::Postgres(url) => {
                let copy = clone_pg_database(url, n).await;
                pg_exec(&copy, sql).await;
                (data.clone(), Some(copy))
            }
        };
        let (ok, out) = cli(
            &case_data,
            case_url.as_deref(),
            &["audit", "verify", "--checkpoint", &team],
        );
        assert!(!ok, "{name}: audit verify passed: {out}");
        assert!(out.contains(named), "{name}: {out}");
        if let Some(copy) = case_url {
            drop_pg_database(&copy).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_ledger_on_sqlite_is_found_and_named() {
    tampering_is_named(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_ledger_on_postgres_is_found_and_named() {
    let url = fresh_pg_database("log_tamper").await;
    tampering_is_named(Db::Postgres(url.clone())).await;
    drop_pg_database(&url).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of the database at `url` (whose users have gone), for case `n`.
async fn clone_pg_database(url: &str, n: usize) -> String {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap();
    let copy = format!("{name}_case{n}");
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    // The stopped server's sessions may take a moment to end.
    for attempt in 0.. {
        let made = sqlx::query(&format!("CREATE DATABASE {copy} TEMPLATE {name}"))
            .execute(&mut conn)
            .await;
        match made {
            Ok(_) => break,
            Err(_) if attempt < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot copy {name}: {e}"),
        }
    }
    let base = url.rsplit_once('/').unwrap().0;
    format!("{base}/{copy}")
}

async fn pg_exec(url: &str, sql: &[&str]) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    for statement in sql {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

#[test]
fn audit_queries_by_cell_time_and_validity_and_the_siem_export() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = common::dev::Idmint::start_with(tmp.path(), &[]);
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    register_many(&idmint, 4);
    // Placed on a cell of its own (no agent there, so only the placement is recorded).
    let body = r#"{"instance_guid": "0000abcd-0000-4000-8000-000000000011",
        "app_guid": "0000abcd-0000-4000-8000-000000000012", "cell_id": "cell-b",
        "space_guid": "00000000-0000-4000-8000-000000000013",
        "org_guid": "00000000-0000-4000-8000-000000000014"}"#;
    let (status, answer) =
        socket_request(&idmint.admin_socket(), "POST", "/v1/instances", body).unwrap();
    assert_eq!(status, 201, "{answer}");
    let app0 = "00000000-0000-4000-8000-000000000012";
    // Each local instance gets its certificate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let valid = loop {
        let (ok, out) = idmint_cli(&idmint, &["audit", "valid", "--app-guid", app0, "--json"]);
        assert!(ok, "{out}");
        let valid: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if !valid.is_empty() || std::time::Instant::now() > deadline {
            break valid;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!valid.is_empty(), "app 0's certificate is valid now");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for v in &valid {
        assert_eq!(v["kind"], "issued");
        assert_eq!(v["app_guid"], app0);
        assert!(v["not_before"].as_i64().unwrap() <= now && v["not_after"].as_i64().unwrap() > now);
    }
    // A day from now, nothing issued today is valid any more.
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (ok, out) = idmint_cli(
        &idmint,
        &[
            "audit",
            "valid",
            "--app-guid",
            app0,
            "--at",
            &tomorrow,
            "--json",
        ],
    );
    assert!(ok && out.trim() == "[]", "{out}");

    // By cell.
    let (ok, out) = idmint_cli(&idmint, &["audit", "list", "--cell", "cell-b", "--json"]);
    assert!(ok, "{out}");
    let on_b: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        !on_b.is_empty() && on_b.iter().all(|e| e["cell_id"] == "cell-b"),
        "{out}"
    );
    // By time range: nothing before the test began, everything since.
    let before = started
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (ok, out) = idmint_cli(&idmint, &["audit", "list", "--until", &before, "--json"]);
    assert!(ok && out.trim() == "[]", "{out}");
    let (ok, out) = idmint_cli(&idmint, &["audit", "list", "--since", &before, "--json"]);
    assert!(ok, "{out}");
    let since: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();

    // The export: one line per entry, in order, each with its index, leaf hash and record.
    let (ok, out) = idmint_cli(&idmint, &["audit", "export"]);
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= since.len() && lines.len() >= 9,
        "{} lines",
        lines.len()
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"].as_u64(), Some(i as u64));
        assert_eq!(line["leaf_hash"].as_str().unwrap().len(), 64);
        if line["kind"] == "issued" {
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD
                .decode(line["certificate"].as_str().unwrap())
                .unwrap();
            x509_parser::parse_x509_certificate(&der).unwrap();
        }
    }
    let (ok, out) = idmint_cli(&idmint, &["audit", "export", "--from", "3"]);
    assert!(ok && out.lines().count() == lines.len() - 3, "{out}");
    // Bad input is refused, clearly.
    let (ok, out) = idmint_cli(&idmint, &["audit", "valid", "--app-guid", "not-a-guid"]);
    assert!(!ok && out.contains("not-a-guid"), "{out}");
    let (ok, out) = idmint_cli(&idmint, &["audit", "list", "--until", "yesterday-ish"]);
    assert!(!ok && out.contains("yesterday-ish"), "{out}");
}

/// The CLI on a running `idmint dev`'s data: whether it succeeded, and what it printed.
fn idmint_cli(idmint: &common::dev::Idmint, args: &[&str]) -> (bool, String) {
    let out = idmint.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_kill_9_under_load_every_certificate_received_is_proven_in_the_log() {
    use common::process;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let (api, admin) = (free_port(), free_port());
    let server = |data: &std::path::Path| {
        let mut cmd = process::idmint(data);
        cmd.args(["--set", &format!("admin.listen=127.0.0.1:{admin}")])
            .args(["server", "--listen", &format!("127.0.0.1:{api}")]);
        process::start(cmd, tmp.path().join("server.log"))
    };
    let cli = |args: &[&str]| {
        let mut cmd = process::idmint(&data);
        cmd.args(["--set", &format!("admin.listen=127.0.0.1:{admin}")]);
        process::ok(cmd.args(args))
    };
    let running = server(&data);
    let creds = tmp.path().join("cell-1");
    cli(&[
        "cell",
        "enroll",
        "cell-1",
        "--out-dir",
        creds.to_str().unwrap(),
    ]);
    cli(&register_args(INSTANCE, APP, "cell-1"));
    let client = common::api::connect_with_dir(api, &creds).await;

    // Streams of sign requests, until the server is killed under them.
    let csr = idmint::agent::new_key_and_csr().unwrap().1;
    let load = tokio::spawn(async move {
        let mut received = Vec::new();
        for round in 0u64.. {
            let requests: Vec<_> = (0..200)
                .map(|i| idmint::proto::SignStreamRequest {
                    id: round * 1000 + i,
                    request: Some(idmint::proto::SignRequest {
                        instance_guid: INSTANCE.into(),
                        csr: csr.clone(),
                        ttl_seconds: 0,
                    }),
                })
                .collect();
            let Ok(stream) = client
                .client()
                .sign_stream(futures_util::stream::iter(requests))
                .await
            else {
                return received;
            };
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(answer)) => {
                        if let Some(idmint::proto::sign_stream_result::Outcome::Signed(s)) =
                            answer.outcome
                        {
                            received.push(s.serial_hex);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return received,
                }
            }
        }
        received
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(running); // SIGKILL
    let received = load.await.unwrap();
    assert!(
        received.len() > 100,
        "only {} certificates before the kill",
        received.len()
    );

    // Restarted, the server reads on and signs a checkpoint of everything.
    let running = server(&data);
    let url = format!("sqlite://{}", data.join("idmint.db").display());
    let store = Store::open(&Settings { url }, false).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let covered = store
            .latest_checkpoint()
            .await
            .unwrap()
            .map_or(0, |c| c.size);
        if covered == store.ledger_next_seq().await.unwrap() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of the whole ledger"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(running);
    let (ok, out) = cli_result(&data, &["audit", "verify"]);
    assert!(ok && out.contains("ledger verified"), "{out}");

    // Every certificate a client received is in the log, with a proof that holds.
    let audit = idmint::ledger::AuditLog::new(store.clone());
    let note = audit.checkpoint().await.unwrap().unwrap();
    let key = idmint::ledger::note::NoteVerifier::parse(&audit.verifier_keys().await.unwrap()[0])
        .unwrap();
    let checkpoint = idmint::ledger::note::Checkpoint::parse(key.open(&note).unwrap()).unwrap();
    let mut tree = TiledTree::load(store.clone()).await.unwrap();
    tree.catch_up().await.unwrap();
    for serial in &received {
        let entry = audit
            .by_serial(serial)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("certificate {serial} is not in the ledger"));
        let proof = idmint::ledger::prove::prove(&tree, &entry, &checkpoint, &note)
            .await
            .unwrap();
        idmint::ledger::prove::check(&proof, &key).unwrap();
    }
    store.close().await;
}

/// The CLI on the data in `data`: whether it succeeded, and what it printed.
fn cli_result(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    cli(data, None, args)
}

#[test]
fn a_rotated_ledger_key_signs_on_and_the_retired_one_still_checks_what_it_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let idmint = common::dev::Idmint::start_with(tmp.path(), &[]);
    register_many(&idmint, 3);
    checkpointed_entries(&idmint);
    let before = path_in(&tmp, "before.note");
    let (ok, out) = idmint_cli(&idmint, &["audit", "checkpoint", "--save", &before]);
    assert!(ok, "{out}");
    let old_key = http_get(idmint.admin, "/v1/log/key").unwrap().1;
    let old_key = old_key.trim().to_string();

    let (ok, out) = idmint_cli(&idmint, &["ca", "rotate", "ledger-key"]);
    assert!(ok && out.contains(&format!("retired {old_key}")), "{out}");
    // The rotation is itself an entry, recorded with who asked; the next checkpoint covers it
    // and is signed with the new key.
    let entries = checkpointed_entries(&idmint);
    let reason = entries.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("ledger checkpoint key rotated, requested by"),
        "{reason}"
    );
    let keys = http_get(idmint.admin, "/v1/log/key").unwrap().1;
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(
        keys[1], old_key,
        "the retired key is still published, after the current"
    );
    use idmint::ledger::note::NoteVerifier;
    let (new, old) = (
        NoteVerifier::parse(keys[0]).unwrap(),
        NoteVerifier::parse(&old_key).unwrap(),
    );
    let latest = http_get(idmint.admin, "/v1/log/checkpoint").unwrap().1;
    new.open(&latest).unwrap();
    assert!(old.open(&latest).is_err());
    // The checkpoint the retired key signed still holds the ledger, with the new ones.
    let (ok, out) = idmint_cli(&idmint, &["audit", "verify", "--checkpoint", &before]);
    assert!(ok && out.contains("ledger verified"), "{out}");
    // An unknown target is refused, naming what can be rotated.
    let (ok, out) = idmint_cli(&idmint, &["ca", "rotate", "everything"]);
    assert!(!ok && out.contains("ledger-key"), "{out}");
}

fn path_in(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_string()
}
