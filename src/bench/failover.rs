//! `idmint bench failover`: how long an agent goes without a certificate when its server is
//! killed. Two `idmint server` processes share a fresh PostgreSQL database; an agent's
//! connection (as `idmint agent` makes it) knows both and signs continuously. Each round kills
//! (SIGKILL) the server it uses and times until its next successful sign, then restarts that
//! server. Reported beside the sign latency measured in the same run with both servers up.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{bench_placement, bench_runtime_on, BenchStore, StoreKind};
use crate::agent::new_key_and_csr;
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::api::{Authority, SignRequest};
use crate::ca::{Init, Principal};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::Placement;

/// The target from the issue: p99 of the time without a certificate after a kill.
const TARGET: Duration = Duration::from_secs(5);
/// Signs timed with both servers up, for the baseline.
const BASELINE_SIGNS: usize = 200;

/// Runs `kills` rounds and prints the table.
pub async fn run(config: Config, kills: usize, postgres: &str) -> Result<()> {
    anyhow::ensure!(kills >= 1, "--kills must be at least 1");
    let store = BenchStore::fresh(StoreKind::Postgres, postgres).await?;
    let result = measure(config, kills, &store).await;
    store.remove().await;
    let (baseline, failovers) = result?;
    let (b50, b99) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    let (f50, f99, fmax) = (
        percentile(&failovers, 50.0),
        percentile(&failovers, 99.0),
        percentile(&failovers, 100.0),
    );
    println!();
    println!("idmint bench failover: {kills} kills (SIGKILL) of the server an agent uses, 2 servers on one PostgreSQL");
    println!();
    println!("| measure | p50 | p99 | max | p99 / baseline p99 |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| baseline: one sign, both servers up ({BASELINE_SIGNS} signs) | {} | {} | {} | 1.0× |",
        ms(b50),
        ms(b99),
        ms(percentile(&baseline, 100.0))
    );
    println!(
        "| kill → next successful sign ({kills} kills) | {} | {} | {} | {:.1}× |",
        ms(f50),
        ms(f99),
        ms(fmax),
        f99.as_secs_f64() / b99.as_secs_f64().max(1e-9)
    );
    println!();
    println!(
        "target: p99 at most {}: {}",
        ms(TARGET),
        if f99 <= TARGET { "met" } else { "NOT met" }
    );
    Ok(())
}

async fn measure(
    config: Config,
    kills: usize,
    store: &BenchStore,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = store.dir();
    let kek = dir.join("kek");
    // The CA, a cell's credential and one placement, made before the servers start.
    let cell: CellId = "bench-cell-0".parse()?;
    let placement = bench_placement(0, &cell);
    let (cred, roots) = {
        let rt = bench_runtime_on(
            config,
            &dir.join("setup"),
            &kek,
            store.settings.clone(),
            Init::CreateIfMissing,
        )
        .await?;
        rt.registry.register(placement.clone()).await?;
        let ttl = "24h".parse()?;
        let cred = rt
            .issuance
            .enroll(&Principal::Cell(cell), ttl, rt.clock.now())
            .await;
        let roots = rt.ca.roots_pem();
        rt.shutdown().await;
        (cred?, roots)
    };
    let mut servers = Vec::new();
    for i in 0..2 {
        servers.push(ServerProcess::start(dir, i, &store.settings.url, &kek)?);
    }
    let agent = RemoteAuthority::connect(RemoteSettings {
        endpoints: servers.iter().map(|s| s.endpoint()).collect(),
        server_name: "localhost",
        cert_chain_pem: &cred.chain_pem(),
        key_pem: &cred.key_pem(),
        roots_pem: &roots,
    })
    .await?;

    let mut baseline = Vec::with_capacity(BASELINE_SIGNS);
    for _ in 0..BASELINE_SIGNS {
        let start = Instant::now();
        sign(&agent, &placement).await?;
        baseline.push(start.elapsed());
    }
    let mut failovers = Vec::with_capacity(kills);
    for round in 0..kills {
        let used = servers
            .iter()
            .position(|s| s.endpoint() == agent.server())
            .context("the agent uses a server the bench does not know")?;
        servers[used].kill();
        let killed = Instant::now();
        loop {
            match sign(&agent, &placement).await {
                Ok(()) => break,
                Err(e) if killed.elapsed() > Duration::from_secs(60) => {
                    bail!("no certificate 60 s after kill {round}: {e}")
                }
                Err(_) => {}
            }
        }
        failovers.push(killed.elapsed());
        servers[used].restart()?;
    }
    Ok((baseline, failovers))
}

async fn sign(agent: &RemoteAuthority, placement: &Placement) -> Result<()> {
    let (_key, csr) = new_key_and_csr()?;
    agent
        .sign(SignRequest {
            placement: placement.clone(),
            csr,
            ttl: None,
        })
        .await?;
    Ok(())
}

/// One `idmint server` child process.
struct ServerProcess {
    child: Child,
    command: Vec<String>,
    listen: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    fn start(dir: &Path, i: usize, url: &str, kek: &Path) -> Result<ServerProcess> {
        let listen = free_loopback()?;
        let command = vec![
            "--data-dir".to_string(),
            dir.join(format!("server-{i}")).display().to_string(),
            "--set".into(),
            format!("store.url={url}"),
            "--set".into(),
            format!("ca.kek_file={}", kek.display()),
            "--set".into(),
            format!("admin.listen={}", free_loopback()?),
            "server".into(),
            "--listen".into(),
            listen.to_string(),
        ];
        let log = dir.join(format!("server-{i}.log"));
        let child = spawn_ready(&command, &log)?;
        Ok(ServerProcess {
            child,
            command,
            listen,
            log,
        })
    }

    fn endpoint(&self) -> String {
        format!("https://{}", self.listen)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) -> Result<()> {
        self.child = spawn_ready(&self.command, &self.log)?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts this binary with `args` and waits for its "ready" line.
fn spawn_ready(args: &[String], log: &Path) -> Result<Child> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready") => break,
            Some(Ok(_)) => {}
            _ => {
                let _ = child.kill();
                bail!(
                    "a server did not start: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

fn free_loopback() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
