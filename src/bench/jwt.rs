//! `idmint bench jwt`: JWT-SVIDs per second through the issue path (claims, ES256 signature,
//! the ledger record committed before each answer), beside the machine's raw ES256 signing
//! ceiling measured in the same run.

use std::time::Instant;

use anyhow::{ensure, Result};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};

use super::{
    bench_placement, bench_runtime, fresh_bench_dir, next, process_cpu_seconds, queue, run_cores,
};
use crate::api::JwtRequest;
use crate::config::Config;
use crate::ids::CellId;

/// The target share of the ceiling.
const TARGET: f64 = 50.0;

/// Runs the benchmark on a fresh SQLite store and prints its table.
pub async fn run(config: Config, count: usize, concurrency: usize) -> Result<()> {
    let cores = run_cores(count, concurrency)?;
    let ceiling_before = tokio::task::spawn_blocking(move || es256_ceiling(count, cores)).await??;
    let dir = fresh_bench_dir()?;
    std::fs::create_dir_all(&dir)?;
    let result = issue_path(config, &dir, count, concurrency, cores).await;
    std::fs::remove_dir_all(&dir).ok();
    let path = result?;
    let ceiling_after = tokio::task::spawn_blocking(move || es256_ceiling(count, cores)).await??;
    // The higher ceiling is the stricter yardstick.
    let ceiling = ceiling_before.max(ceiling_after);
    let share = path.rate / ceiling * 100.0;
    println!();
    println!("idmint bench jwt: {count} JWT-SVIDs, {cores} cores, {concurrency} in flight, ledger on SQLite");
    println!();
    println!("| path | JWT-SVIDs/s | share of ceiling |");
    println!("|---|---:|---:|");
    println!("| ceiling: ring ES256 sign of a token-sized input, {cores} threads (best of 2 runs) | {ceiling:.0} | 100% |");
    println!(
        "| idmint keys alone: claims, header, ES256 (no ledger), {cores} threads | {:.0} | {:.1}% |",
        path.keys_rate,
        path.keys_rate / ceiling * 100.0
    );
    println!(
        "| idmint JWT-SVID path: placement, revocation check, ledger committed before each answer | {:.0} | {share:.1}% |",
        path.rate
    );
    println!();
    println!(
        "JWT-SVID path: {:.2}s wall, {:.0} µs CPU per token (ceiling: {:.0} µs); ceiling runs {ceiling_before:.0}/s and {ceiling_after:.0}/s",
        path.seconds,
        path.cpu_per_token * 1e6,
        cores as f64 / ceiling * 1e6,
    );
    println!(
        "ledger: {:.1} records per commit on average",
        path.mean_batch
    );
    println!(
        "target: at least {TARGET:.0}% of the ceiling: {}",
        if share >= TARGET { "met" } else { "NOT met" }
    );
    Ok(())
}

struct PathResult {
    rate: f64,
    keys_rate: f64,
    seconds: f64,
    cpu_per_token: f64,
    mean_batch: f64,
}

/// `count` tokens through the service's JWT-SVID path, `concurrency` at a time, each for an
/// instance of its own; then the keys alone.
async fn issue_path(
    config: Config,
    dir: &std::path::Path,
    count: usize,
    concurrency: usize,
    cores: usize,
) -> Result<PathResult> {
    let rt = bench_runtime(config, dir).await?;
    let cell: CellId = "bench-cell".parse()?;
    // The CA's own events (its first JWT signing key) are there before any token.
    let recorded_before = rt.audit.entry_count().await?;
    // Built before the clock starts: making requests is the caller's work.
    let requests = queue((0..count).map(|i| JwtRequest {
        placement: bench_placement(i, &cell),
        audience: vec!["bench-api".to_string()],
    }));
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (issuance, requests) = (rt.issuance.clone(), requests.clone());
            tokio::spawn(async move {
                while let Some(req) = next(&requests) {
                    crate::api::Authority::sign_jwt(&issuance, req).await?;
                }
                Ok::<(), crate::api::Error>(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_start;
    let writer = rt.issuance.ledger().stats();
    let recorded = rt.audit.entry_count().await? - recorded_before;
    let keys = rt.jwt.clone();
    let now = rt.clock.now();
    let keys_rate = tokio::task::spawn_blocking(move || {
        on_every_core(count, cores, || {
            let audience = vec!["bench-api".to_string()];
            std::hint::black_box(keys.issue("spiffe://bench/app", audience, now)?);
            Ok(())
        })
    })
    .await??;
    rt.shutdown().await;
    ensure!(
        recorded as usize == count,
        "ledger holds {recorded} records for {count} JWT-SVIDs"
    );
    Ok(PathResult {
        rate: count as f64 / seconds,
        keys_rate,
        seconds,
        cpu_per_token: cpu / count as f64,
        mean_batch: writer.records as f64 / writer.commits.max(1) as f64,
    })
}

/// Raw ES256 signatures per second over a token-sized input, one thread per core.
fn es256_ceiling(count: usize, threads: usize) -> Result<f64> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let input = vec![0x5au8; 420];
    on_every_core(count, threads, || {
        let sig = key
            .sign(&rng, &input)
            .map_err(|_| anyhow::anyhow!("sign failed"))?;
        std::hint::black_box(sig);
        Ok(())
    })
}

/// `work` done `count` times in all over `threads` threads; how many times a second.
fn on_every_core(
    count: usize,
    threads: usize,
    work: impl Fn() -> Result<()> + Sync,
) -> Result<f64> {
    let per = count.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let work = &work;
                scope.spawn(move || -> Result<()> { (0..per).try_for_each(|_| work()) })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((per * threads) as f64 / start.elapsed().as_secs_f64())
}
