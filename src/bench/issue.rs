//! `idmint bench issue`: certificates per second through the in-process service path (CA and
//! durable ledger, on SQLite or PostgreSQL) and through the CA alone, beside the machine's raw
//! signing ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::{
    bench_placement, bench_runtime_on, ceiling, next, prepare, process_cpu_seconds, queue,
    BenchStore, Sample, StoreKind,
};
use crate::api::SignRequest;
use crate::ca::{CertificateAuthority, Init};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::Placement;

/// Runs the benchmark on a fresh store of `store` and prints its table.
pub async fn run(
    config: Config,
    count: usize,
    concurrency: usize,
    store: StoreKind,
    postgres: &str,
) -> Result<()> {
    let (cores, samples, ceiling_before) = prepare(count, concurrency).await?;
    let store = BenchStore::fresh(store, postgres).await?;
    let ledger = store.describe();
    let store_is_postgres = store.is_postgres();
    let path = service_path(config, samples.clone(), concurrency, cores, &store).await;
    store.remove().await;
    let path = path?;
    let (issue_rate, ca_rate) = (path.rate, path.ca_rate);
    let ceiling_after = ceiling(&samples, cores).await?;
    // The higher ceiling is the stricter yardstick.
    let ceiling = ceiling_before.max(ceiling_after);
    let share = issue_rate / ceiling * 100.0;
    println!();
    println!("idmint bench issue: {count} certificates, {cores} cores, {concurrency} in flight, {ledger}");
    println!();
    println!("| path | certificates/s | share of ceiling |");
    println!("|---|---:|---:|");
    println!("| ceiling: ring P-256 CSR verify + sign, {cores} threads (best of 2 runs) | {ceiling:.0} | 100% |");
    println!("| idmint CA alone: CSR check, SVID profile, sign (no ledger), {cores} threads | {ca_rate:.0} | {:.1}% |", ca_rate / ceiling * 100.0);
    println!("| idmint issue path: CA + ledger committed before each answer | {issue_rate:.0} | {share:.1}% |");
    println!();
    println!(
        "issue path: {:.2}s wall, {:.0} µs CPU per certificate (ceiling: {:.0} µs); ceiling runs {ceiling_before:.0}/s and {ceiling_after:.0}/s",
        path.elapsed.as_secs_f64(),
        path.cpu_per_cert * 1e6,
        cores as f64 / ceiling * 1e6,
    );
    println!(
        "ledger: {:.1} records per commit on average",
        path.mean_batch
    );
    // The ledger's database shares the two cores when it is PostgreSQL.
    let target = if store_is_postgres { 45.0 } else { 60.0 };
    println!(
        "target: at least {target:.0}% of the ceiling: {}",
        if share >= target { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Runs every sample through the service's sign path on a fresh `store`, and checks the
/// ledger holds one record per certificate.
async fn service_path(
    config: Config,
    samples: Arc<Vec<Sample>>,
    concurrency: usize,
    cores: usize,
    store: &BenchStore,
) -> Result<PathResult> {
    let dir = store.dir();
    let rt = bench_runtime_on(
        config,
        dir,
        &dir.join("kek"),
        store.settings.clone(),
        Init::CreateIfMissing,
    )
    .await?;
    let cell: CellId = "bench-cell".parse()?;
    // The CA's own events (its first JWT signing key) are there before any certificate.
    let recorded_before = rt.audit.entry_count().await?;

    // Built before the clock starts: making requests is the caller's work, not the service's.
    let requests = queue(samples.iter().enumerate().map(|(i, sample)| SignRequest {
        placement: bench_placement(i, &cell),
        csr: sample.csr.clone(),
        ttl: None,
    }));
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (issuance, requests) = (rt.issuance.clone(), requests.clone());
            tokio::spawn(async move {
                while let Some(req) = next(&requests) {
                    crate::api::Authority::sign(&issuance, req).await?;
                }
                Ok::<(), crate::api::Error>(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_seconds() - cpu_start;
    let writer = rt.issuance.ledger().stats();
    let recorded = rt.audit.entry_count().await? - recorded_before;
    let ca_rate = {
        let (ca, samples, cell) = (rt.ca.clone(), samples.clone(), cell.clone());
        tokio::task::spawn_blocking(move || ca_alone(&ca, &samples, &cell, cores)).await??
    };
    rt.shutdown().await;
    ensure!(
        recorded as usize == samples.len(),
        "ledger holds {recorded} records for {} certificates",
        samples.len()
    );
    Ok(PathResult {
        rate: samples.len() as f64 / elapsed.as_secs_f64(),
        ca_rate,
        elapsed,
        cpu_per_cert: cpu / samples.len() as f64,
        mean_batch: writer.records as f64 / writer.commits.max(1) as f64,
    })
}

struct PathResult {
    rate: f64,
    ca_rate: f64,
    elapsed: Duration,
    cpu_per_cert: f64,
    mean_batch: f64,
}

/// The CA's own cost: issuance without the ledger, one thread per core.
fn ca_alone(
    ca: &CertificateAuthority,
    samples: &[Sample],
    cell: &CellId,
    threads: usize,
) -> Result<f64> {
    let per = samples.len().div_ceil(threads);
    let now = time::OffsetDateTime::now_utc();
    // Built before the clock starts, as for the issue path.
    let placements: Vec<Placement> = (0..samples.len())
        .map(|i| bench_placement(i, cell))
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = samples
            .chunks(per)
            .zip(placements.chunks(per))
            .map(|(samples, placements)| {
                scope.spawn(move || -> Result<()> {
                    for (s, p) in samples.iter().zip(placements) {
                        let issued = ca.issue(p, &s.csr, None, now)?;
                        std::hint::black_box(issued);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("CA thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(samples.len() as f64 / start.elapsed().as_secs_f64())
}
