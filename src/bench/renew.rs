//! `idmint bench renew`: N instances with short-lived certificates renewing continuously on
//! one agent against the durable issuance path. Reports renewals per second against the rate
//! the schedule calls for, CPU per renewal against the raw cryptography a renewal needs, and
//! renewals per second over time, which shows the jitter spreading them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use tokio::sync::watch;

use super::{bench_placement, bench_runtime, fresh_bench_dir, process_cpu_seconds, raise_fd_limit};
use crate::agent::{Bundle, Settings as AgentSettings, Workloads};
use crate::config::Config;
use crate::ids::Ttl;
use crate::sds::SdsMetrics;

/// Open files besides the sockets.
const FD_SLACK: u64 = 128;

pub async fn run(config: Config, instances: usize, ttl: Ttl, duration: Duration) -> Result<()> {
    ensure!(instances > 0, "--instances must be at least 1");
    ensure!(
        duration >= ttl.duration(),
        "--duration must be at least one TTL, so that every certificate renews"
    );
    raise_fd_limit(instances as u64 + FD_SLACK)?;
    let dir = fresh_bench_dir()?;
    let result = measure(config, instances, ttl, duration, &dir).await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

async fn measure(
    mut config: Config,
    instances: usize,
    ttl: Ttl,
    duration: Duration,
    dir: &std::path::Path,
) -> Result<()> {
    config.ca.leaf_ttl = ttl;
    let crypto_us = raw_renewal_crypto_us()?;
    let rt = bench_runtime(config, dir).await?;
    let schedule = rt.config.agent.renewal;
    let (_bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: rt.config.ca.trust_domain.clone(),
        roots_pem: rt.ca.roots_pem(),
        generation: rt.ca.generation(),
        crls_pem: String::new(),
        jwt_keys_json: String::new(),
        federated: Vec::new(),
    }));
    let agent = Workloads::new(
        Arc::new(rt.issuance.clone()),
        AgentSettings {
            sds_dir: dir.join("sds"),
            instance_dir: None,
            cell: None,
            ..rt.config.agent_settings()
        },
        bundle_rx,
        Arc::new(SdsMetrics::default()),
        rt.shutdown_token(),
    );
    println!("registering {instances} instances with {ttl} certificates (not timed)…");
    let cell = "bench-cell".parse()?;
    for i in 0..instances {
        agent.add(bench_placement(i, &cell)).await?;
    }
    loop {
        let (issued, served) = agent.issued().await;
        if issued == served {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("renewing for {}s…", duration.as_secs());
    let metrics = agent.renewal_metrics();
    let (renewals0, failures0, cpu0) = (
        metrics.renewals(),
        metrics.failures(),
        process_cpu_seconds(),
    );
    let start = Instant::now();
    let mut per_second = Vec::new();
    let mut last = renewals0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while start.elapsed() < duration {
        tick.tick().await;
        let now = metrics.renewals();
        per_second.push(now - last);
        last = now;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let renewals = metrics.renewals() - renewals0;
    let failures = metrics.failures() - failures0;
    let cpu = process_cpu_seconds() - cpu0;
    // Leaves expired during the run would show a renewal that came too late.
    let expired = agent
        .seconds_to_expiry(time::OffsetDateTime::now_utc())
        .await
        .iter()
        .filter(|s| **s <= 0)
        .count();
    rt.shutdown().await;

    // Each certificate renews once per (renewal point × its life) on average.
    let scheduled = instances as f64 / (ttl.duration().as_secs_f64() * schedule.point());
    let rate = renewals as f64 / elapsed;
    let cpu_per = cpu / renewals.max(1) as f64 * 1e6;
    let mean = per_second.iter().sum::<u64>() as f64 / per_second.len().max(1) as f64;
    let peak = per_second.iter().copied().max().unwrap_or(0);
    println!();
    println!(
        "idmint bench renew: {instances} instances, {ttl} certificates renewed at {:.0}% ±{:.0}% of their life, {elapsed:.0} s, SQLite ledger (WAL, synchronous=FULL)",
        schedule.point() * 100.0,
        schedule.jitter() * 100.0
    );
    println!();
    println!("| measure | value | baseline | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| renewals per second, sustained | {rate:.0} | {scheduled:.0} scheduled | {:.2} |",
        rate / scheduled
    );
    println!(
        "| CPU per renewal (agent key + CSR, server verify + sign + ledger) | {cpu_per:.0} µs | {crypto_us:.0} µs raw P-256 keygen + 2 signs + verify | {:.2} |",
        cpu_per / crypto_us
    );
    println!(
        "| busiest second / mean second | {peak} / {mean:.0} | 1.0 = perfectly even | {:.2} |",
        peak as f64 / mean.max(1.0)
    );
    println!("| renewal attempts failed | {failures} | | |");
    println!("| certificates found expired at the end | {expired} | | |");
    println!();
    println!(
        "renewals in each second (each # is {} renewals):",
        (peak / 50).max(1)
    );
    let unit = (peak / 50).max(1);
    for (i, n) in per_second.iter().enumerate() {
        println!(
            "{:>4}s {:>6} {}",
            i + 1,
            n,
            "#".repeat((*n / unit) as usize)
        );
    }
    Ok(())
}

/// The least cryptography one renewal needs, in µs on one core: a P-256 key made (agent),
/// the CSR signed (agent), verified and the leaf signed (server).
fn raw_renewal_crypto_us() -> Result<f64> {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let ca = EcdsaKeyPair::from_pkcs8(
        alg,
        EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?
            .as_ref(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let msg = vec![0x5au8; 600];
    const ROUNDS: u32 = 2000;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let csr_sig = key
            .sign(&rng, &msg[..200])
            .map_err(|_| anyhow::anyhow!("sign failed"))?;
        UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            key.public_key().as_ref(),
        )
        .verify(&msg[..200], csr_sig.as_ref())
        .map_err(|_| anyhow::anyhow!("verify failed"))?;
        std::hint::black_box(
            ca.sign(&rng, &msg)
                .map_err(|_| anyhow::anyhow!("sign failed"))?,
        );
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64)
}
