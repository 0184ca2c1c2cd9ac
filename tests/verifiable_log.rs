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
