//! The same store on a real PostgreSQL: migrations, CA creation, issuance, and two idmint
//! processes' worth of runtimes sharing one database without gaps or repeats in the ledger.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashSet;

use common::*;
use idmint::agent;
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::store::{EntryKind, LedgerFilter};

async fn runtime(data_dir: &std::path::Path, url: &str, init: Init) -> Runtime {
    runtime_with(data_dir, url, init, &[]).await
}

async fn runtime_with(
    data_dir: &std::path::Path,
    url: &str,
    init: Init,
    extra: &[(&str, &str)],
) -> Runtime {
    let mut overrides = vec![("store.url", url)];
    overrides.extend_from_slice(extra);
    let config = config_in(data_dir, &overrides);
    Runtime::start(config, init)
        .await
        .expect("runtime on PostgreSQL")
}

#[tokio::test]
async fn ca_and_ledger_live_in_postgresql_and_survive_a_restart() {
    let url = fresh_pg_database("restart").await;
    let dir = tempfile::tempdir().unwrap();

    let rt = runtime(dir.path(), &url, Init::CreateIfMissing).await;
    let fingerprint = rt.ca.intermediate().fingerprint.clone();
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .unwrap();
    let roots: Vec<Vec<u8>> = rt.ca.roots().iter().map(|r| r.der.clone()).collect();
    let (ok, out) = openssl_verify(
        dir.path(),
        &roots,
        &svid.cert.chain_der,
        &svid.cert.cert_der,
    );
    assert!(ok, "openssl verify: {out}");
    rt.shutdown().await;

    // The schema is PostgreSQL's own, applied by the migrator.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let (cert_type,): (String,) = sqlx::query_as(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'ledger_entries' AND column_name = 'cert_der'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(cert_type, "bytea");
    }

    let rt = runtime(dir.path(), &url, Init::MustExist).await;
    assert_eq!(
        rt.ca.intermediate().fingerprint,
        fingerprint,
        "same CA after restart"
    );
    let entry = rt
        .audit
        .by_serial(&svid.cert.serial_hex)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        entry.seq, 1,
        "after the record of the first JWT signing key"
    );
    assert_eq!(entry.record.kind, EntryKind::Issued);
    assert_eq!(
        entry.record.cert_der.as_deref(),
        Some(svid.cert.cert_der.as_slice())
    );
    rt.shutdown().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn two_runtimes_on_one_database_keep_the_ledger_dense() {
    let url = fresh_pg_database("shared").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Nodes of one deployment share the KEK, provisioned by the operator.
    let kek = dir_a.path().join("shared-kek");
    write_private(&kek, "5e".repeat(32));
    let kek = kek.display().to_string();
    let shared = [("ca.kek_file", kek.as_str())];
    // Both start at once: exactly one creates the CA, the other uses it.
    let (a, b) = tokio::join!(
        runtime_with(dir_a.path(), &url, Init::CreateIfMissing, &shared),
        runtime_with(dir_b.path(), &url, Init::CreateIfMissing, &shared),
    );
    assert_eq!(
        a.ca.intermediate().fingerprint,
        b.ca.intermediate().fingerprint,
        "one CA for both"
    );

    const EACH: usize = 100;
    let issue = |rt: &Runtime| {
        let issuance = rt.issuance.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..EACH {
                let issuance = issuance.clone();
                tasks.push(tokio::spawn(async move {
                    agent::obtain_svid(&issuance, placement(), None)
                        .await
                        .unwrap()
                        .cert
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let (from_a, from_b) = tokio::join!(issue(&a), issue(&b));

    let entries = a
        .audit
        .list(&LedgerFilter {
            limit: Some(10 * EACH as i64),
            ..LedgerFilter::default()
        })
        .await
        .unwrap();
    // The first JWT signing key's record, made by one of the two, then the certificates.
    assert_eq!(entries[0].record.kind, EntryKind::Ca);
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (0..=2 * EACH as i64).collect::<Vec<_>>(),
        "dense from 0, no repeats"
    );
    let serials: HashSet<_> = entries
        .iter()
        .filter_map(|e| e.record.serial.clone())
        .collect();
    assert_eq!(serials.len(), 2 * EACH, "every serial once");
    let handed_out: HashSet<i64> = from_a.iter().chain(&from_b).map(|c| c.ledger_seq).collect();
    assert_eq!(
        handed_out.len(),
        2 * EACH,
        "each caller was told its own ledger entry"
    );

    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn one_server_rotates_the_ca_and_the_other_takes_it_up() {
    use idmint::ca::maintenance::ControlError;
    use idmint::ca::rotate::Target;
    use tokio_util::sync::CancellationToken;

    let url = fresh_pg_database("leader").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let kek = dir_a.path().join("shared-kek");
    write_private(&kek, "5e".repeat(32));
    let kek = kek.display().to_string();
    let shared = [("ca.kek_file", kek.as_str())];
    let a = runtime_with(dir_a.path(), &url, Init::CreateIfMissing, &shared).await;
    let b = runtime_with(dir_b.path(), &url, Init::MustExist, &shared).await;
    let (_fleet, fleet_rx) = tokio::sync::watch::channel(None);
    let maintain = |rt: &Runtime| {
        let m = maintenance(rt, fleet_rx.clone());
        let cancel = CancellationToken::new();
        let (control, task) = m.start(cancel.clone());
        (control, cancel, tokio::spawn(task))
    };
    let (control_a, cancel_a, task_a) = maintain(&a);
    let before = a.ca.intermediate().fingerprint;
    control_a
        .rotate(Target::Intermediate)
        .await
        .expect("A leads");
    let rotated = a.ca.intermediate().fingerprint;
    assert_ne!(rotated, before);

    // B follows: it may not rotate, and it takes up A's rotation from the database.
    let (control_b, cancel_b, _task_b) = maintain(&b);
    let err = control_b.rotate(Target::Intermediate).await.unwrap_err();
    assert!(matches!(err, ControlError::NotLeader), "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.ca.intermediate().fingerprint != rotated {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took up the rotation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let svid = agent::obtain_svid(&b.issuance, placement(), None)
        .await
        .unwrap();
    assert_eq!(svid.cert.chain_der[0], a.ca.intermediate().der);

    // A stops: B takes the lead.
    cancel_a.cancel();
    task_a.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match control_b.rotate(Target::Intermediate).await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "B never led: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_ne!(b.ca.intermediate().fingerprint, rotated);
    cancel_b.cancel();
    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn a_writer_cancelled_inside_its_transaction_leaves_no_transaction_open() {
    use idmint::store::{Settings, Store};
    use sqlx::{Connection, Row};
    use std::time::{Duration, Instant};

    let url = fresh_pg_database("cancel").await;
    let store = Store::open(&Settings { url: url.clone() }, true)
        .await
        .unwrap();
    // Another session holds the writers' lock, so the writer waits inside its transaction.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(115301217461876)")
        .execute(&mut other)
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(500),
        store.apply_ca_changes(&[], &[], &[], 0),
    )
    .await;
    assert!(cancelled.is_err(), "the writer waited for the lock");
    sqlx::query("SELECT pg_advisory_unlock(115301217461876)")
        .execute(&mut other)
        .await
        .unwrap();

    // The cancelled transaction is rolled back: no session is left holding it open (and with
    // it the writers' lock), and the next writer gets through.
    let database = url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open: i64 = sqlx::query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        )
        .bind(&database)
        .fetch_one(&mut other)
        .await
        .unwrap()
        .get("n");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} session(s) left inside a transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        store.apply_ca_changes(&[], &[], &[], 0),
    )
    .await
    .expect("the next writer is not blocked")
    .unwrap();
    other.close().await.unwrap();
    store.close().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn four_writers_racing_for_sequence_numbers_never_fail_and_keep_the_ledger_dense() {
    use idmint::ledger::Ledger;
    use idmint::store::{LedgerRecord, Settings, Store};
    let url = fresh_pg_database("racing").await;
    let store = Store::open(&Settings { url: url.clone() }, true)
        .await
        .unwrap();
    const WRITERS: usize = 4;
    const EACH: usize = 400;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Each its own writer with its own connection, as separate servers have.
        let (ledger, writer) = Ledger::start(store.clone(), stop.child_token());
        let writer = tokio::spawn(writer);
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            // One at a time: every append is a batch of one, racing the other writers.
            for i in 0..EACH {
                let record = LedgerRecord {
                    reason: Some(format!("writer {w} record {i}")),
                    ..LedgerRecord::bare(EntryKind::Denied, time::OffsetDateTime::UNIX_EPOCH)
                };
                if let Err(e) = ledger.append(record).await {
                    failed.push(e.to_string());
                }
            }
            drop(ledger);
            (failed, writer)
        }));
    }
    for t in tasks {
        let (failed, writer) = t.await.unwrap();
        assert!(failed.is_empty(), "appends failed: {failed:?}");
        writer.await.unwrap();
    }
    let entries = store
        .ledger_entries(&LedgerFilter {
            limit: Some(10 * (WRITERS * EACH) as i64),
            ..LedgerFilter::default()
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..(WRITERS * EACH) as i64).collect::<Vec<_>>());
    store.close().await;
    drop_pg_database(&url).await;
}

#[test]
fn a_server_on_postgresql_starts_in_a_new_data_directory_and_logs_no_notices() {
    use std::io::BufRead;
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fresh_pg_database("fresh_dir"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("not-yet");
    let start = |log: &str| {
        let log_path = tmp.path().join(log);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idmint"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--set", &format!("store.url={url}")])
            .args(["--set", &format!("admin.listen=127.0.0.1:{}", free_port())])
            .args(["server", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let ready = std::io::BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("ready"));
        let _ = child.kill();
        let _ = child.wait();
        (ready, std::fs::read_to_string(log_path).unwrap())
    };
    let (ready, log) = start("first.log");
    assert!(ready, "the first start fails: {log}");
    assert!(
        data.join("kek").exists(),
        "the key-encryption key is in the new directory"
    );
    let (ready, log) = start("second.log");
    assert!(ready, "the second start fails: {log}");
    assert!(
        !log.contains("already exists"),
        "PostgreSQL's notices are logged: {log}"
    );
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(drop_pg_database(&url));
}

/// A CA step and its ledger records commit together: a step that fails leaves neither, one
/// that succeeds leaves both, numbered after what the ledger writer appended.
#[tokio::test]
async fn a_ca_step_and_its_ledger_records_commit_together() {
    use idmint::store::{CaChange, LedgerRecord};
    let url = fresh_pg_database("ca_step").await;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), &url, Init::CreateIfMissing).await;
    let store = rt.store().clone();
    let before = rt.audit.entry_count().await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut event = LedgerRecord {
        reason: Some("test step".into()),
        ..LedgerRecord::bare(EntryKind::Ca, now)
    };
    event.leaf_hash = idmint::ledger::leaf_hash(&event);
    let unknown = CaChange {
        fingerprint: "00".repeat(32),
        state: Some("retired"),
        activated_at: None,
        retired_at: Some(now.unix_timestamp()),
        pruned_at: None,
    };
    let failed = store
        .apply_ca_changes(&[], &[unknown], std::slice::from_ref(&event), 0)
        .await;
    assert!(failed.is_err(), "a change of no certificate is refused");
    assert_eq!(
        rt.audit.entry_count().await.unwrap(),
        before,
        "nor recorded"
    );

    store
        .apply_ca_changes(&[], &[], std::slice::from_ref(&event), 0)
        .await
        .unwrap();
    // The ledger writer carries on after it, densely.
    let svid = agent::obtain_svid(&rt.issuance, placement(), None)
        .await
        .unwrap();
    assert_eq!(svid.cert.ledger_seq, before + 1);
    let entries = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..=before + 1).collect::<Vec<_>>());
    assert_eq!(
        entries[before as usize].record.reason.as_deref(),
        Some("test step")
    );
    rt.shutdown().await;
    drop_pg_database(&url).await;
}
