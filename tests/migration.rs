//! A database written before CA rotation existed opens with the current schema: its ledger
//! entries read back unchanged, with the same leaf hashes, and CA events can be appended.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

use idmint::ledger::{leaf_hash, AuditLog};
use idmint::store::{EntryKind, LedgerFilter, LedgerRecord, Settings, Store};
use sqlx::Connection;

#[tokio::test]
async fn a_ledger_from_before_ca_rotation_survives_the_upgrade() {
    let tmp = tempfile::tempdir().unwrap();
    // The schema as it was: the first two migrations only.
    let old = tmp.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for f in ["0001_init.sql", "0002_placements.sql"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations/sqlite")
                .join(f),
            old.join(f),
        )
        .unwrap();
    }
    let db = tmp.path().join("idmint.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    let mut record = LedgerRecord {
        kind: EntryKind::Issued,
        recorded_at_ms: 1_700_000_000_000,
        serial: Some("4a0b".into()),
        spiffe_id: Some("spiffe://cf.internal/app/x".into()),
        instance_guid: Some("1a1a1a1a-0000-4000-8000-000000000004".into()),
        app_guid: Some("a0a0a0a0-0000-4000-8000-000000000001".into()),
        space_guid: None,
        org_guid: None,
        cell_id: Some("cell-1".into()),
        container_ip: Some("10.0.0.1".into()),
        not_before: Some(1),
        not_after: Some(2),
        public_key_sha256: Some("ab".into()),
        issuer_fingerprint: Some("cd".into()),
        cert_der: Some(vec![0x30, 0x00]),
        reason: None,
        leaf_hash: Vec::new(),
    };
    record.leaf_hash = leaf_hash(&record);
    sqlx::query(
        "INSERT INTO ledger_entries (seq, kind, recorded_at_ms, serial, spiffe_id, instance_guid, \
         app_guid, cell_id, container_ip, not_before, not_after, public_key_sha256, \
         issuer_fingerprint, cert_der, leaf_hash) \
         VALUES (0, 'issued', ?, ?, ?, ?, ?, ?, ?, 1, 2, 'ab', 'cd', ?, ?)",
    )
    .bind(record.recorded_at_ms)
    .bind(&record.serial)
    .bind(&record.spiffe_id)
    .bind(&record.instance_guid)
    .bind(&record.app_guid)
    .bind(&record.cell_id)
    .bind(&record.container_ip)
    .bind(&record.cert_der)
    .bind(&record.leaf_hash)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = Store::open(
        &Settings {
            url: format!("sqlite://{}", db.display()),
        },
        false,
    )
    .await
    .expect("the old database is upgraded");
    let entries = AuditLog::new(store.clone())
        .list(&LedgerFilter::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].record, record);
    assert_eq!(leaf_hash(&entries[0].record), record.leaf_hash);
    // A CA event, which has no instance, fits now.
    sqlx::query(
        "INSERT INTO ledger_entries (seq, kind, recorded_at_ms, reason, leaf_hash) \
         VALUES (1, 'ca', 1, 'root prepared', x'00')",
    )
    .execute(&mut sqlx::SqliteConnection::connect(&url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(
        AuditLog::new(store.clone())
            .list(&LedgerFilter::default())
            .await
            .unwrap()[1]
            .record
            .kind,
        EntryKind::Ca
    );
    store.close().await;
}
