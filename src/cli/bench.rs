//! `idmint bench …`: throughput as a share of this machine's raw signing ceiling, both measured
//! in the same run.

use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::ca::{Init, Mode};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::Placement;
use crate::store;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Issue certificates from CSRs through the service path, ledger durable on SQLite.
    Issue {
        /// How many certificates.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

pub async fn run(cmd: BenchCommand, config: Config) -> Result<()> {
    match cmd {
        BenchCommand::Issue { count, concurrency } => issue(config, count, concurrency).await,
    }
}

/// A CSR and the parts a raw verifier needs.
struct Sample {
    csr: Vec<u8>,
    public_key: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

async fn issue(config: Config, count: usize, concurrency: usize) -> Result<()> {
    ensure!(count > 0 && concurrency > 0, "--count and --concurrency must be at least 1");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("preparing {count} CSRs (not timed)…");
    let samples = Arc::new(tokio::task::spawn_blocking(move || make_samples(count, cores)).await??);

    let ceiling_before = {
        let s = samples.clone();
        tokio::task::spawn_blocking(move || raw_ceiling(&s, cores)).await??
    };
    let (issue_rate, elapsed) = service_path(config, samples.clone(), concurrency).await?;
    let ceiling_after = {
        let s = samples.clone();
        tokio::task::spawn_blocking(move || raw_ceiling(&s, cores)).await??
    };
    // The higher ceiling is the stricter yardstick.
    let ceiling = ceiling_before.max(ceiling_after);
    let share = issue_rate / ceiling * 100.0;
    println!();
    println!("idmint bench issue: {count} certificates, {cores} cores, {concurrency} in flight, SQLite ledger (WAL, synchronous=FULL)");
    println!();
    println!("| path | certificates/s | share of ceiling |");
    println!("|---|---:|---:|");
    println!("| ceiling: ring P-256 CSR verify + sign, {cores} threads (best of 2 runs) | {ceiling:.0} | 100% |");
    println!("| idmint issue path: CSR check, SVID profile, sign, ledger committed | {issue_rate:.0} | {share:.1}% |");
    println!();
    println!("issue path wall time {:.2}s; ceiling runs {ceiling_before:.0}/s and {ceiling_after:.0}/s", elapsed.as_secs_f64());
    println!("target: at least 60% of the ceiling: {}", if share >= 60.0 { "met" } else { "NOT met" });
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
        all.extend(h.join().map_err(|_| anyhow::anyhow!("CSR thread panicked"))??);
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
                        let sig = key.sign(&rng, tbs).map_err(|_| anyhow::anyhow!("sign failed"))?;
                        std::hint::black_box(sig);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("ceiling thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(samples.len() as f64 / start.elapsed().as_secs_f64())
}

/// Runs every sample through the service's sign path on a fresh SQLite store in a temporary
/// directory, and checks the ledger holds one record per certificate.
async fn service_path(
    mut config: Config,
    samples: Arc<Vec<Sample>>,
    concurrency: usize,
) -> Result<(f64, Duration)> {
    let mut tag = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut tag)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    let dir = std::env::temp_dir().join(format!("idmint-bench-{}", crate::ca::encode_hex(&tag)));
    config.data_dir = dir.clone();
    config.store = store::Settings {
        url: format!("sqlite://{}", dir.join("idmint.db").display()),
    };
    config.ca.mode = Mode::SelfSigned;
    config.ca.kek_file = dir.join("kek");
    let rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let cell: CellId = "bench-cell".parse()?;

    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (issuance, samples, next, cell) =
                (rt.issuance.clone(), samples.clone(), next.clone(), cell.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(sample) = samples.get(i) else {
                        return Ok::<(), crate::api::Error>(());
                    };
                    let req = SignRequest {
                        placement: placement(i, &cell),
                        csr: sample.csr.clone(),
                        ttl: None,
                    };
                    crate::api::Authority::sign(&issuance, req).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = start.elapsed();
    let recorded = rt.audit.len().await?;
    rt.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
    ensure!(
        recorded as usize == samples.len(),
        "ledger holds {recorded} records for {} certificates",
        samples.len()
    );
    Ok((samples.len() as f64 / elapsed.as_secs_f64(), elapsed))
}

fn placement(i: usize, cell: &CellId) -> Placement {
    let guid = |kind: u32| {
        format!("{kind:08x}-0000-4000-8000-{i:012x}")
            .parse()
            .expect("well-formed GUID")
    };
    Placement {
        instance_guid: guid(1),
        app_guid: guid(2),
        space_guid: Some(guid(3)),
        org_guid: Some(guid(4)),
        cell_id: cell.clone(),
        container_ip: Some(std::net::IpAddr::from([10, 255, (i >> 8) as u8, i as u8])),
    }
}
