//! `idmint bench log`: a ledger of N entries shaped like issuances (1,000,000 by default), then
//! what the verifiable log costs over it, each against a baseline taken in the same run:
//! following the ledger as a tiled tree against reading its leaf hashes; an inclusion proof of
//! a random entry against reading that entry; `audit verify` against reading every record.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use ring::rand::{SecureRandom, SystemRandom};

use super::fresh_bench_dir;
use crate::ledger::merkle;
use crate::ledger::tree::TiledTree;
use crate::store::{self, EntryKind, LedgerRecord, Store};

/// A certificate's size in the ledger, about what idmint issues.
const CERT_BYTES: usize = 640;

pub async fn run(entries: u64, proofs: usize) -> Result<()> {
    ensure!(
        entries > 0 && proofs > 0,
        "--entries and --proofs must be at least 1"
    );
    let dir = fresh_bench_dir()?;
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, entries, proofs).await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

async fn measure(dir: &std::path::Path, entries: u64, proofs: usize) -> Result<()> {
    let url = format!("sqlite://{}", dir.join("idmint.db").display());
    let store = Store::open(&store::Settings { url }, true).await?;
    eprintln!("writing {entries} ledger entries (not timed)…");
    fill(&store, entries).await?;

    // Following the ledger: reading its leaf hashes is the floor.
    let started = Instant::now();
    let mut from = 0;
    loop {
        let batch = store.leaf_hashes(from, 4096).await?;
        if batch.is_empty() {
            break;
        }
        from += batch.len() as u64;
    }
    let read_leaves = started.elapsed();
    let started = Instant::now();
    let mut tree = TiledTree::load(store.clone()).await?;
    tree.catch_up().await?;
    let follow = started.elapsed();
    ensure!(
        tree.size() == entries,
        "the tree holds {} entries",
        tree.size()
    );

    // Proofs of random entries, each checked; reading one entry is the floor.
    let rng = SystemRandom::new();
    let mut proof_times = Vec::with_capacity(proofs);
    let mut read_times = Vec::with_capacity(proofs);
    let root = tree.root();
    let size = tree.size();
    for _ in 0..proofs {
        let mut r = [0u8; 8];
        rng.fill(&mut r)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let index = u64::from_le_bytes(r) % entries;
        let started = Instant::now();
        let entry = store.ledger_range(index, index + 1).await?;
        read_times.push(started.elapsed());
        let started = Instant::now();
        let path = tree
            .with_subtrees(|v| merkle::inclusion_proof(v, index, size))
            .await?;
        let leaf = merkle::leaf(&crate::ledger::canonical(&entry[0].record));
        merkle::verify_inclusion(&leaf, index, size, &path, &root)
            .map_err(|e| anyhow::anyhow!("a proof does not hold: {e}"))?;
        proof_times.push(started.elapsed());
    }

    // `audit verify`; reading every record is the floor.
    let started = Instant::now();
    let mut from = 0;
    loop {
        let batch = store.ledger_range(from, from + 4096).await?;
        if batch.is_empty() {
            break;
        }
        from += batch.len() as u64;
    }
    let read_all = started.elapsed();
    let started = Instant::now();
    let report = crate::ledger::verify::verify(&store, &[]).await?;
    let verify = started.elapsed();
    ensure!(
        report.findings.is_empty() && report.entries == entries,
        "the bench ledger does not verify"
    );
    store.close().await;

    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let ratio = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64());
    let (proof_median, proof_max) = median_max(&mut proof_times);
    let (read_median, read_max) = median_max(&mut read_times);
    println!(
        "\nidmint bench log: {entries} entries ({CERT_BYTES}-byte certificates), SQLite, {} cores\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| measure | time | baseline (same run) | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| follow the ledger as a tiled tree (all entries) | {} | read the leaf hashes: {} | {} | |",
        s(follow),
        s(read_leaves),
        ratio(follow, read_leaves)
    );
    println!(
        "| inclusion proof of a random entry, median of {proofs} | {} | read the entry: {} | {} | ≤ 5 ms |",
        ms(proof_median),
        ms(read_median),
        ratio(proof_median, read_median)
    );
    println!(
        "| inclusion proof, slowest | {} | {} | | ≤ 5 ms |",
        ms(proof_max),
        ms(read_max)
    );
    println!(
        "| audit verify (every entry rehashed, tiles and checkpoints checked) | {} | read every record: {} | {} | ≤ 20 s |",
        s(verify),
        s(read_all),
        ratio(verify, read_all)
    );
    let met = proof_max <= Duration::from_millis(5) && verify <= Duration::from_secs(20);
    println!(
        "\ntargets (every proof ≤ 5 ms, verify ≤ 20 s): {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(())
}

fn median_max(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// Appends `entries` issuance-shaped records, each different.
async fn fill(store: &Store, entries: u64) -> Result<()> {
    let mut cert = vec![0u8; CERT_BYTES];
    SystemRandom::new()
        .fill(&mut cert)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut appender = store.ledger_appender();
    let now = time::OffsetDateTime::now_utc();
    let mut next = 0u64;
    while next < entries {
        let n = (entries - next).min(store::MAX_APPEND as u64);
        let records: Vec<LedgerRecord> = (next..next + n)
            .map(|i| {
                let mut der = cert.clone();
                der[..8].copy_from_slice(&i.to_be_bytes());
                let mut r = LedgerRecord::bare(EntryKind::Issued, now);
                r.serial = Some(format!("{i:032x}"));
                r.spiffe_id = Some(format!("spiffe://bench.example/app/{:08x}", i % 5000));
                r.instance_guid = Some(format!("{i:08x}-0000-4000-8000-000000000001"));
                r.app_guid = Some(format!("{:08x}-0000-4000-8000-000000000002", i % 5000));
                r.cell_id = Some(format!("cell-{}", i % 100));
                r.cert_der = Some(der);
                r.leaf_hash = crate::ledger::leaf_hash(&r);
                r
            })
            .collect();
        appender.insert_at(next as i64, &records).await?;
        next += n;
    }
    appender.close().await;
    Ok(())
}
