//! `idmint bench …`: throughput as a share of this machine's raw signing ceiling, both measured
//! in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Subcommand;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::agent::new_key_and_csr;
use crate::api::SignRequest;
use crate::app::Runtime;
use crate::ca::{CertificateAuthority, Init, Mode};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::Placement;
use crate::store;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Issue certificates from CSRs through the service path, ledger durable on SQLite.
    Issue {
        /// How many certificates.
        #[arg(long, default_value_t = 40_000)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Through the server API over mutual TLS, from two agents' cell credentials, instead
        /// of in-process.
        #[arg(long)]
        remote: bool,
    },
    /// Serve K instances' SDS streams from one agent and push a trust bundle change to all.
    Sds {
        /// How many instances (each with a ROOTCA and a default stream).
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
    /// N instances with short-lived certificates renewing continuously on one agent.
    Renew {
        /// How many instances.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// Certificate lifetime (renewed at half of it, ±10%).
        #[arg(long, default_value = "20s")]
        ttl: crate::ids::Ttl,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The simulated sidecars of `bench sds`, run as a child process.
    #[command(hide = true)]
    SdsClients {
        /// How many sockets to connect to.
        #[arg(long)]
        count: usize,
        /// The directory of SDS sockets.
        #[arg(long)]
        sockets_dir: std::path::PathBuf,
    },
}

pub async fn run(cmd: BenchCommand, config: Config) -> Result<()> {
    match cmd {
        BenchCommand::Issue {
            count,
            concurrency,
            remote: false,
        } => issue(config, count, concurrency).await,
        BenchCommand::Issue {
            count,
            concurrency,
            remote: true,
        } => super::bench_remote::run(config, count, concurrency).await,
        BenchCommand::Sds { instances } => super::bench_sds::run(config, instances).await,
        BenchCommand::Renew {
            instances,
            ttl,
            seconds,
        } => super::bench_renew::run(config, instances, ttl, Duration::from_secs(seconds)).await,
        BenchCommand::SdsClients { count, sockets_dir } => {
            super::bench_sds::clients(sockets_dir, count).await
        }
    }
}

/// A CSR and the parts a raw verifier needs.
pub(super) struct Sample {
    pub(super) csr: Vec<u8>,
    public_key: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

/// The cores, the CSRs (made untimed) and the ceiling measured once before the run.
pub(super) async fn prepare(
    count: usize,
    concurrency: usize,
) -> Result<(usize, Arc<Vec<Sample>>, f64)> {
    ensure!(
        count > 0 && concurrency > 0,
        "--count and --concurrency must be at least 1"
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("preparing {count} CSRs (not timed)…");
    let samples = Arc::new(tokio::task::spawn_blocking(move || make_samples(count, cores)).await??);
    let ceiling = ceiling(&samples, cores).await?;
    Ok((cores, samples, ceiling))
}

/// [`raw_ceiling`] off the async runtime.
pub(super) async fn ceiling(samples: &Arc<Vec<Sample>>, cores: usize) -> Result<f64> {
    let s = samples.clone();
    tokio::task::spawn_blocking(move || raw_ceiling(&s, cores)).await?
}

async fn issue(config: Config, count: usize, concurrency: usize) -> Result<()> {
    let (cores, samples, ceiling_before) = prepare(count, concurrency).await?;
    let path = service_path(config, samples.clone(), concurrency, cores).await?;
    let (issue_rate, ca_rate) = (path.rate, path.ca_rate);
    let ceiling_after = ceiling(&samples, cores).await?;
    // The higher ceiling is the stricter yardstick.
    let ceiling = ceiling_before.max(ceiling_after);
    let share = issue_rate / ceiling * 100.0;
    println!();
    println!("idmint bench issue: {count} certificates, {cores} cores, {concurrency} in flight, SQLite ledger (WAL, synchronous=FULL)");
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
    println!(
        "target: at least 60% of the ceiling: {}",
        if share >= 60.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

fn make_samples(count: usize, threads: usize) -> Result<Vec<Sample>> {
    let per = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let n = per.min(count.saturating_sub(t * per));
            std::thread::spawn(move || -> Result<Vec<Sample>> {
                (0..n)
                    .map(|_| {
                        let (_key, csr) = new_key_and_csr()?;
                        let (_, parsed) = X509CertificationRequest::from_der(&csr)
                            .map_err(|e| anyhow::anyhow!("own CSR unreadable: {e}"))?;
                        let info = &parsed.certification_request_info;
                        Ok(Sample {
                            public_key: info.subject_pki.subject_public_key.data.to_vec(),
                            signed: info.raw.to_vec(),
                            signature: parsed.signature_value.data.to_vec(),
                            csr: csr.clone(),
                        })
                    })
                    .collect()
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("CSR thread panicked"))??,
        );
    }
    Ok(all)
}

/// Certificates per second if all a certificate cost were one CSR verify and one ECDSA
/// signature over a leaf-sized message, on every core.
fn raw_ceiling(samples: &[Sample], threads: usize) -> Result<f64> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let tbs = vec![0x5au8; 600];
    let per = samples.len().div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = samples
            .chunks(per)
            .map(|chunk| {
                let (pkcs8, tbs) = (&pkcs8, &tbs);
                scope.spawn(move || -> Result<()> {
                    let rng = SystemRandom::new();
                    let key = EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        pkcs8.as_ref(),
                        &rng,
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    for s in chunk {
                        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &s.public_key)
                            .verify(&s.signed, &s.signature)
                            .map_err(|_| anyhow::anyhow!("sample CSR did not verify"))?;
                        let sig = key
                            .sign(&rng, tbs)
                            .map_err(|_| anyhow::anyhow!("sign failed"))?;
                        std::hint::black_box(sig);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("ceiling thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(samples.len() as f64 / start.elapsed().as_secs_f64())
}

/// Runs every sample through the service's sign path on a fresh SQLite store in a temporary
/// directory, and checks the ledger holds one record per certificate.
async fn service_path(
    config: Config,
    samples: Arc<Vec<Sample>>,
    concurrency: usize,
    cores: usize,
) -> Result<PathResult> {
    let dir = fresh_bench_dir()?;
    let rt = bench_runtime(config, &dir).await?;
    let cell: CellId = "bench-cell".parse()?;

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
    let recorded = rt.audit.entry_count().await?;
    let ca_rate = {
        let (ca, samples, cell) = (rt.ca.clone(), samples.clone(), cell.clone());
        tokio::task::spawn_blocking(move || ca_alone(&ca, &samples, &cell, cores)).await??
    };
    rt.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
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

/// A new, not yet existing, directory under the system's temporary directory.
pub(super) fn fresh_bench_dir() -> Result<std::path::PathBuf> {
    let mut tag = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut tag)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    Ok(std::env::temp_dir().join(format!("idmint-bench-{}", crate::ca::encode_hex(&tag))))
}

/// A fresh runtime in `dir`: SQLite there, a new self-signed CA, whatever `config` said.
pub(super) async fn bench_runtime(mut config: Config, dir: &std::path::Path) -> Result<Runtime> {
    config.data_dir = dir.to_path_buf();
    config.store = store::Settings {
        url: format!("sqlite://{}", dir.join("idmint.db").display()),
    };
    config.ca.mode = Mode::SelfSigned;
    config.ca.kek_file = dir.join("kek");
    Runtime::start(config, Init::CreateIfMissing).await
}

/// User + system CPU time of this process so far, from /proc (Linux).
pub(super) fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // USER_HZ is 100 on every Linux platform idmint targets.
    (ticks(11) + ticks(12)) / 100.0
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

/// Work shared by the callers of a run, each taking the next item.
pub(super) type Queue<T> = Arc<std::sync::Mutex<std::vec::IntoIter<T>>>;

pub(super) fn queue<T>(items: impl Iterator<Item = T>) -> Queue<T> {
    Arc::new(std::sync::Mutex::new(items.collect::<Vec<_>>().into_iter()))
}

pub(super) fn next<T>(queue: &Queue<T>) -> Option<T> {
    queue.lock().expect("never poisoned").next()
}

/// The placement of sample `i`: ten instances per app, GUIDs scattered as real v4 GUIDs are, so
/// the ledger's per-app index sees the random inserts production gives it.
pub(super) fn bench_placement(i: usize, cell: &CellId) -> Placement {
    let guid = |kind: u64, n: usize| {
        let h = scatter(kind << 40 | n as u64);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            kind,
            n
        )
        .parse()
        .expect("well-formed GUID")
    };
    let app = i / 10;
    Placement {
        instance_guid: guid(1, i),
        app_guid: guid(2, app),
        space_guid: Some(guid(3, app / 10)),
        org_guid: Some(guid(4, app / 100)),
        cell_id: cell.clone(),
        container_ip: Some(std::net::IpAddr::from([10, 255, (i >> 8) as u8, i as u8])),
    }
}

/// A bijective 64-bit mix (SplitMix64's finaliser): distinct inputs give distinct outputs.
fn scatter(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
