//! The `idmint bench` harnesses: throughput and latency as shares of this machine's raw
//! ceilings, both measured in the same run, printed as tables. The command line only picks one.

// A benchmark times real work on the system's clock, and owns the workers it starts until the
// run is over.
#![allow(clippy::disallowed_methods)]

pub mod failover;
pub mod issue;
pub mod jwt;
pub mod log;
pub mod policy;
pub mod remote;
pub mod renew;
pub mod sds;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::agent::new_key_and_csr;
use crate::app::Runtime;
use crate::ca::{Init, Mode};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::Placement;
use crate::store;

/// A CSR and the parts a raw verifier needs.
struct Sample {
    csr: Vec<u8>,
    public_key: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

/// The cores a run of `count` requests, `concurrency` at a time, spreads over; refused when
/// either is 0.
fn run_cores(count: usize, concurrency: usize) -> Result<usize> {
    ensure!(
        count > 0 && concurrency > 0,
        "--count and --concurrency must be at least 1"
    );
    Ok(std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
}

/// The cores, the CSRs (made untimed) and the ceiling measured once before the run.
async fn prepare(count: usize, concurrency: usize) -> Result<(usize, Arc<Vec<Sample>>, f64)> {
    let cores = run_cores(count, concurrency)?;
    println!("preparing {count} CSRs (not timed)…");
    let samples = Arc::new(tokio::task::spawn_blocking(move || make_samples(count, cores)).await??);
    let ceiling = ceiling(&samples, cores).await?;
    Ok((cores, samples, ceiling))
}

/// [`raw_ceiling`] off the async runtime.
async fn ceiling(samples: &Arc<Vec<Sample>>, cores: usize) -> Result<f64> {
    let s = samples.clone();
    tokio::task::spawn_blocking(move || raw_ceiling(&s, cores)).await?
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

/// A new, not yet existing, directory under the system's temporary directory.
fn fresh_bench_dir() -> Result<std::path::PathBuf> {
    let mut tag = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut tag)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    Ok(std::env::temp_dir().join(format!("idmint-bench-{}", crate::ca::encode_hex(&tag))))
}

/// A fresh runtime in `dir`: SQLite there, a new self-signed CA, whatever `config` said.
async fn bench_runtime(config: Config, dir: &std::path::Path) -> Result<Runtime> {
    let store = store::Settings {
        url: format!("sqlite://{}", dir.join("idmint.db").display()),
    };
    bench_runtime_on(config, dir, &dir.join("kek"), store, Init::CreateIfMissing).await
}

/// A runtime with its state in `dir` on `store`, its CA keys sealed with `kek`: a new
/// self-signed CA with `Init::CreateIfMissing`, the one in the store with `Init::MustExist`.
async fn bench_runtime_on(
    mut config: Config,
    dir: &std::path::Path,
    kek: &std::path::Path,
    store: store::Settings,
    init: Init,
) -> Result<Runtime> {
    config.data_dir = dir.to_path_buf();
    config.store = store;
    config.ca.mode = Mode::SelfSigned;
    config.ca.kek_file = kek.to_path_buf();
    // A handful of simulated cells issue thousands of certificates a second each, far past
    // what one real cell asks for: the per-cell rate is lifted so that it is checked on every
    // request but never holds one back.
    config.server.limits.sign_rate = u32::MAX;
    config.server.limits.sign_burst = u32::MAX;
    Runtime::start(config, init).await
}

/// Where `bench issue` keeps the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server of `--postgres-url`, dropped afterwards.
    Postgres,
}

/// The store of one run in a directory of its own: its settings, and the database to drop
/// afterwards (PostgreSQL).
struct BenchStore {
    dir: std::path::PathBuf,
    settings: store::Settings,
    made: Option<(String, String)>,
}

impl BenchStore {
    /// A fresh directory and a fresh store of `kind`: SQLite there, or a new database on
    /// `postgres`.
    async fn fresh(kind: StoreKind, postgres: &str) -> Result<BenchStore> {
        let dir = fresh_bench_dir()?;
        std::fs::create_dir_all(&dir)?;
        let made = match kind {
            StoreKind::Sqlite => Ok(None),
            StoreKind::Postgres => create_database(&dir, postgres).await.map(Some),
        };
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                std::fs::remove_dir_all(&dir).ok();
                return Err(e);
            }
        };
        let url = match &made {
            None => format!("sqlite://{}", dir.join("idmint.db").display()),
            Some((server, name)) => {
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        };
        Ok(BenchStore {
            dir,
            settings: store::Settings { url },
            made,
        })
    }

    /// Where the run keeps its files.
    fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn is_postgres(&self) -> bool {
        self.made.is_some()
    }

    /// What the table says of it.
    fn describe(&self) -> &'static str {
        match self.made {
            None => "SQLite ledger (WAL, synchronous=FULL)",
            Some(_) => "PostgreSQL ledger (local server, fsync on)",
        }
    }

    /// Drops the database made for the run, and removes its directory.
    async fn remove(self) {
        use sqlx::Connection;
        if let Some((server, name)) = &self.made {
            if let Ok(mut conn) = sqlx::PgConnection::connect(server).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Creates a database named after `dir` on the PostgreSQL server `postgres`; returns the
/// server's URL and the database's name.
async fn create_database(dir: &std::path::Path, postgres: &str) -> Result<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(postgres).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach PostgreSQL at {} (set --postgres-url): {e}",
            store::redact_url(postgres)
        )
    })?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("idmint-bench")
        .replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok((postgres.to_string(), name))
}

/// User + system CPU time of this process so far, from /proc (Linux).
fn process_cpu_seconds() -> f64 {
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

/// Work shared by the callers of a run, each taking the next item.
type Queue<T> = Arc<std::sync::Mutex<std::vec::IntoIter<T>>>;

fn queue<T>(items: impl Iterator<Item = T>) -> Queue<T> {
    Arc::new(std::sync::Mutex::new(items.collect::<Vec<_>>().into_iter()))
}

fn next<T>(queue: &Queue<T>) -> Option<T> {
    queue.lock().expect("never poisoned").next()
}

/// The placement of sample `i`: ten instances per app, GUIDs scattered as real v4 GUIDs are, so
/// the ledger's per-app index sees the random inserts production gives it.
fn bench_placement(i: usize, cell: &CellId) -> Placement {
    placement_of(i, i / 10, cell)
}

/// Instance `i` of app `app` on `cell`: ten apps to a space, a hundred to an org.
fn placement_of(i: usize, app: usize, cell: &CellId) -> Placement {
    Placement {
        instance_guid: bench_guid(1, i),
        app_guid: bench_guid(2, app),
        space_guid: Some(bench_guid(3, app / 10)),
        org_guid: Some(bench_guid(4, app / 100)),
        cell_id: cell.clone(),
        container_ip: Some(std::net::IpAddr::from([10, 255, (i >> 8) as u8, i as u8])),
    }
}

/// The `n`-th GUID of a kind (1 instance, 2 app, 3 space, 4 org), scattered as v4 GUIDs are.
fn bench_guid(kind: u64, n: usize) -> crate::ids::Guid {
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
}

/// A bijective 64-bit mix (SplitMix64's finaliser): distinct inputs give distinct outputs.
fn scatter(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Raises the open-file limit to at least `need`, as far as the system allows.
fn raise_fd_limit(need: u64) -> Result<()> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= need {
        return Ok(());
    }
    // Raising the hard limit needs privilege; fall back to the hard limit we have.
    if Resource::NOFILE.set(need, need.max(hard)).is_err() {
        Resource::NOFILE.set(hard, hard)?;
    }
    let (soft, _) = Resource::NOFILE.get()?;
    ensure!(
        soft >= need,
        "this benchmark needs {need} open files and the limit is {soft}; raise it (ulimit -n) or use fewer --instances"
    );
    Ok(())
}
