//! `idmint bench issue --remote`: agents issuing through the server API over mutual TLS, one
//! server with its ledger durable on SQLite, all in one process so the run is one measurement.
//! Reported beside the same raw ceiling as `bench issue`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use time::OffsetDateTime;

use super::{
    bench_placement, bench_runtime, ceiling, fresh_bench_dir, next, prepare, process_cpu_seconds,
    queue,
};
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::api::{Authority, SignRequest};
use crate::app::server::{start_api, ApiOptions};
use crate::ca::Principal;
use crate::config::Config;

/// Agents (cells), each with its own credential and connection.
const AGENTS: usize = 2;
/// Distinct instances; each is certified many times, as renewals do.
const INSTANCES: usize = 1_000;
/// The target from the issue.
const TARGET_SHARE: f64 = 50.0;

pub async fn run(config: Config, count: usize, concurrency: usize) -> Result<()> {
    let (cores, samples, ceiling_before) = prepare(count, concurrency).await?;
    let dir = fresh_bench_dir()?;
    let result = remote_path(config, samples.clone(), concurrency, &dir).await;
    std::fs::remove_dir_all(&dir).ok();
    let (rate, cpu_per_cert) = result?;
    let ceiling_after = ceiling(&samples, cores).await?;
    let ceiling = ceiling_before.max(ceiling_after);
    let share = rate / ceiling * 100.0;
    println!();
    println!("idmint bench issue --remote: {count} certificates, {cores} cores, {concurrency} in flight from {AGENTS} agents over mutual TLS, SQLite ledger (WAL, synchronous=FULL)");
    println!();
    println!("| path | certificates/s | share of ceiling |");
    println!("|---|---:|---:|");
    println!("| ceiling: ring P-256 CSR verify + sign, {cores} threads (best of 2 runs) | {ceiling:.0} | 100% |");
    println!("| agents → server API (gRPC, mutual TLS) → CA + ledger | {rate:.0} | {share:.1}% |");
    println!();
    println!(
        "{:.0} µs CPU per certificate (ceiling: {:.0} µs), agents, server and TLS together",
        cpu_per_cert * 1e6,
        cores as f64 / ceiling * 1e6
    );
    println!(
        "target: at least {TARGET_SHARE:.0}% of the ceiling: {}",
        if share >= TARGET_SHARE {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

async fn remote_path(
    config: Config,
    samples: Arc<Vec<super::Sample>>,
    concurrency: usize,
    dir: &std::path::Path,
) -> Result<(f64, f64)> {
    let mut rt = bench_runtime(config, dir).await?;
    let now = OffsetDateTime::now_utc();
    let ttl = "24h".parse()?;
    // The server API as `idmint server` starts it, on a free loopback port.
    let api = ApiOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        name: "localhost".into(),
        cells_register_own: false,
    };
    let port = start_api(&mut rt, &api, None).await?.port();
    let roots = rt.ca.roots_pem();

    println!("registering {INSTANCES} instances on {AGENTS} cells (not timed)…");
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let cell = format!("bench-cell-{a}").parse()?;
        let cred = rt.issuance.enroll(&Principal::Cell(cell), ttl, now).await?;
        agents.push(
            RemoteAuthority::connect(RemoteSettings {
                endpoints: vec![format!("https://127.0.0.1:{port}")],
                server_name: "localhost",
                cert_chain_pem: &cred.chain_pem(),
                key_pem: &cred.key_pem(),
                roots_pem: &roots,
            })
            .await?,
        );
    }
    let placement = |i: usize| {
        let j = i % INSTANCES;
        bench_placement(
            j,
            &format!("bench-cell-{}", j % AGENTS)
                .parse()
                .expect("cell id"),
        )
    };
    for j in 0..INSTANCES {
        rt.registry.register(placement(j)).await?;
    }

    // Built before the clock starts: making requests is the caller's work, not the service's.
    let requests = queue(samples.iter().enumerate().map(|(i, sample)| {
        let agent = (i % INSTANCES) % AGENTS;
        let request = SignRequest {
            placement: placement(i),
            csr: sample.csr.clone(),
            ttl: None,
        };
        (agent, request)
    }));
    let agents = Arc::new(agents);
    let recorded_before = rt.audit.entry_count().await?;
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (agents, requests) = (agents.clone(), requests.clone());
            tokio::spawn(async move {
                while let Some((agent, request)) = next(&requests) {
                    agents[agent].sign(request).await?;
                }
                Ok::<(), crate::api::Error>(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_start;
    let recorded = rt.audit.entry_count().await? - recorded_before;
    rt.shutdown().await;
    anyhow::ensure!(
        recorded as usize == samples.len(),
        "ledger holds {recorded} new records for {} certificates",
        samples.len()
    );
    Ok((samples.len() as f64 / elapsed, cpu / samples.len() as f64))
}
