//! `idmint bench issue --remote`: agents issuing through the server API over mutual TLS, to one
//! server with its ledger durable on SQLite, or to several sharing one PostgreSQL, all in one
//! process so the run is one measurement. Reported beside the same raw ceiling as `bench issue`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use time::OffsetDateTime;

use super::{
    bench_placement, bench_runtime_on, ceiling, next, prepare, process_cpu_seconds, queue,
    BenchStore, StoreKind,
};
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::api::{Authority, SignRequest};
use crate::app::server::{start_api, ApiOptions};
use crate::ca::{Init, Principal};
use crate::config::Config;

/// Agents (cells), each with its own credential and connection; spread over the servers.
const AGENTS: usize = 4;
/// Distinct instances; each is certified many times, as renewals do.
const INSTANCES: usize = 1_000;
/// The targets: one server on SQLite, and several sharing PostgreSQL (which shares the cores).
const TARGET_SHARE: f64 = 50.0;
const TARGET_SHARE_SHARED: f64 = 40.0;

/// Runs the benchmark against `servers` servers on a fresh store of `store`.
pub async fn run(
    config: Config,
    count: usize,
    concurrency: usize,
    store: StoreKind,
    postgres: &str,
    servers: usize,
) -> Result<()> {
    anyhow::ensure!(servers >= 1, "--servers must be at least 1");
    anyhow::ensure!(
        servers == 1 || store == StoreKind::Postgres,
        "several servers share one PostgreSQL database; add --store postgres"
    );
    let (cores, samples, ceiling_before) = prepare(count, concurrency).await?;
    let store = BenchStore::fresh(store, postgres).await?;
    let (ledger, shared) = (store.describe(), store.is_postgres());
    let result = remote_path(config, samples.clone(), concurrency, &store, servers).await;
    store.remove().await;
    let (rate, cpu_per_cert) = result?;
    let ceiling_after = ceiling(&samples, cores).await?;
    let ceiling = ceiling_before.max(ceiling_after);
    let share = rate / ceiling * 100.0;
    println!();
    println!("idmint bench issue --remote: {count} certificates, {cores} cores, {concurrency} in flight from {AGENTS} agents over mutual TLS to {servers} server(s), {ledger}");
    println!();
    println!("| path | certificates/s | share of ceiling |");
    println!("|---|---:|---:|");
    println!("| ceiling: ring P-256 CSR verify + sign, {cores} threads (best of 2 runs) | {ceiling:.0} | 100% |");
    println!("| agents → {servers} server API(s) (gRPC, mutual TLS) → CA + ledger | {rate:.0} | {share:.1}% |");
    println!();
    println!(
        "{:.0} µs CPU per certificate (ceiling: {:.0} µs), agents, server and TLS together",
        cpu_per_cert * 1e6,
        cores as f64 / ceiling * 1e6
    );
    let target = if shared {
        TARGET_SHARE_SHARED
    } else {
        TARGET_SHARE
    };
    println!(
        "target: at least {target:.0}% of the ceiling: {}",
        if share >= target { "met" } else { "NOT met" }
    );
    Ok(())
}

async fn remote_path(
    config: Config,
    samples: Arc<Vec<super::Sample>>,
    concurrency: usize,
    store: &BenchStore,
    servers: usize,
) -> Result<(f64, f64)> {
    let dir = store.dir();
    // The servers as `idmint server` starts them, each on a free loopback port, sharing the
    // store and the key-encryption key; the first makes the CA.
    let api = ApiOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        name: "localhost".into(),
        cells_register_own: false,
    };
    let mut runtimes = Vec::new();
    let mut ports = Vec::new();
    for i in 0..servers {
        let init = if i == 0 {
            Init::CreateIfMissing
        } else {
            Init::MustExist
        };
        let data = dir.join(format!("server-{i}"));
        let mut rt = bench_runtime_on(
            config.clone(),
            &data,
            &dir.join("kek"),
            store.settings.clone(),
            init,
        )
        .await?;
        ports.push(start_api(&mut rt, &api, None).await?.0.port());
        runtimes.push(rt);
    }
    let rt = &runtimes[0];
    let now = OffsetDateTime::now_utc();
    let ttl = "24h".parse()?;
    let roots = rt.ca.roots_pem();

    println!("registering {INSTANCES} instances on {AGENTS} cells (not timed)…");
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let cell = format!("bench-cell-{a}").parse()?;
        let cred = rt.issuance.enroll(&Principal::Cell(cell), ttl, now).await?;
        // Agent a uses server a mod N: the fleet spread evenly.
        let port = ports[a % servers];
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
    for rt in runtimes {
        rt.shutdown().await;
    }
    anyhow::ensure!(
        recorded as usize == samples.len(),
        "ledger holds {recorded} new records for {} certificates",
        samples.len()
    );
    Ok((samples.len() as f64 / elapsed, cpu / samples.len() as f64))
}
