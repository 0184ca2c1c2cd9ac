//! `idmint bench sds`: K instances served by one agent, each with a simulated sidecar holding a
//! `ROOTCA` and a `default` stream on its own socket; then a trust bundle change pushed to all:
//! a new root, or with `--revoke` a revocation (one certificate revoked through the server's
//! revocation path, the CRLs it signs pushed in every `ROOTCA`). With `--workload-api` the
//! clients are apps holding one Workload API `FetchX509SVID` stream each instead of sidecars.
//! The clients run in a child process so the agent's memory is measured alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{bench_placement, bench_runtime, fresh_bench_dir, process_cpu_seconds, raise_fd_limit};
use crate::agent::{Bundle, Settings as AgentSettings, Workloads};
use crate::ca::crl::Reason;
use crate::config::Config;
use crate::sds::{client, SdsMetrics, SECRET_TYPE};
use crate::server::revocations::Target;
use crate::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use crate::workload_api::proto::{X509svidRequest, X509svidResponse};
use crate::workload_api::SECURITY_HEADER;

/// Targets from the SDS issue.
const TARGET_ALL_ACKED: Duration = Duration::from_secs(1);
const TARGET_BYTES_PER_STREAM: f64 = 16.0 * 1024.0;

/// How long the change may take before the run reports who is missing.
const CHANGE_WAIT: Duration = Duration::from_secs(30);

/// Open files besides the sockets: database, stdio, the runtime's own.
const FD_SLACK: u64 = 128;

/// Streams the simulated sidecars open at once while connecting.
const CONNECT_CONCURRENCY: usize = 256;

/// What reaches every sidecar in the measured change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A second root joins the bundle.
    NewRoot,
    /// One certificate is revoked: the CRLs join every validation context.
    Revocation,
}

/// Who listens on the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    /// Sidecars: a `ROOTCA` and a `default` SDS stream each, ACKing what arrives.
    Sds,
    /// Apps: one Workload API `FetchX509SVID` stream each.
    WorkloadApi,
}

pub async fn run(config: Config, instances: usize, change: Change, clients: Clients) -> Result<()> {
    ensure!(instances > 0, "--instances must be at least 1");
    // One listening socket and one connection per instance, plus the database and slack.
    raise_fd_limit(2 * instances as u64 + FD_SLACK)?;
    let dir = fresh_bench_dir()?;
    let result = measure(config, instances, (change, clients), &dir).await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

async fn measure(
    config: Config,
    instances: usize,
    (change, clients): (Change, Clients),
    dir: &Path,
) -> Result<()> {
    let rt = bench_runtime(config, dir).await?;
    let roots_pem = rt.ca.roots_pem();
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: rt.config.ca.trust_domain.clone(),
        roots_pem: roots_pem.clone(),
        generation: 1,
        crls_pem: String::new(),
        jwt_keys_json: String::new(),
        federated: Vec::new(),
    }));
    let metrics = Arc::new(SdsMetrics::default());
    let sds_dir = dir.join("sds");
    let agent = Workloads::new(
        Arc::new(rt.issuance.clone()),
        AgentSettings {
            sds_dir: sds_dir.clone(),
            instance_dir: None,
            cell: None,
            ..rt.config.agent_settings()
        },
        bundle_rx,
        metrics.clone(),
        rt.shutdown_token(),
    );
    println!("registering {instances} instances (not timed)…");
    let cell = "bench-cell".parse()?;
    for i in 0..instances {
        agent.add(bench_placement(i, &cell)).await?;
    }
    // The baseline is the agent with every certificate issued and no sidecar yet.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (issued, served) = agent.issued().await;
        if issued == served {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {issued} of {served} certificates issued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_before = rss_bytes()?;

    let wl = clients == Clients::WorkloadApi;
    match clients {
        Clients::Sds => {
            println!("connecting {instances} simulated sidecars, 2 streams each (not timed)…")
        }
        Clients::WorkloadApi => {
            println!("connecting {instances} Workload API clients, 1 stream each (not timed)…")
        }
    }
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "sds-clients", "--count", &instances.to_string()])
        .args(wl.then_some("--workload-api"))
        .arg("--sockets-dir")
        .arg(
            agent
                .socket_path(&bench_placement(0, &cell).instance_guid)
                .parent()
                .unwrap(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut child_in = child.stdin.take().unwrap();
    let mut child_out = BufReader::new(child.stdout.take().unwrap()).lines();
    expect_line(&mut child_out, "ready").await?;
    // Initial ACKs are in once the counters show them: one per stream. An app's stream has
    // its first response once the child says it is ready.
    if !wl {
        wait_for(
            || acks(&metrics) >= 2 * instances as u64,
            Duration::from_secs(120),
        )
        .await
        .with_context(|| format!("first ACKs: {} of {}", acks(&metrics), 2 * instances))?;
    }
    let streams = if wl {
        instances as i64
    } else {
        metrics.streams_open()
    };
    let rss_after = rss_bytes()?;
    let per_stream = (rss_after.saturating_sub(rss_before)) as f64 / streams.max(1) as f64;

    // The change: a second root joins the bundle, or a certificate is revoked.
    let new_root = rcgen::generate_simple_self_signed(vec!["bench-new-root.invalid".to_string()])?;
    let revoked = agent
        .cert_status(&bench_placement(0, &cell).instance_guid)
        .await
        .and_then(|s| s.serial_hex)
        .context("instance 0 has no certificate")?;
    let acks_before = acks(&metrics);
    let pushes_before = metrics.pushes_total();
    let cpu_before = process_cpu_seconds();
    let start = Instant::now();
    child_in.write_all(b"go\n").await?;
    child_in.flush().await?;
    let (roots_pem, crls_pem) = match change {
        Change::NewRoot => (format!("{roots_pem}{}", new_root.cert.pem()), String::new()),
        Change::Revocation => {
            // Recorded in the ledger, stored, and the CRLs signed again, as `idmint revoke`.
            rt.revocations
                .revoke(
                    &Target::Serial(revoked),
                    Reason::KeyCompromise,
                    "idmint bench sds",
                )
                .await?;
            (roots_pem, rt.revocations.now().crls_pem.clone())
        }
    };
    bundle_tx.send_replace(Arc::new(Bundle {
        trust_domain: rt.config.ca.trust_domain.clone(),
        roots_pem,
        generation: 2,
        crls_pem,
        jwt_keys_json: String::new(),
        federated: Vec::new(),
    }));
    let everyone = if wl {
        // The apps send no ACK: the child's report says when the last one had the change.
        Ok(())
    } else {
        wait_for(
            || acks(&metrics) >= acks_before + instances as u64,
            CHANGE_WAIT,
        )
        .await
    };
    let mut all_acked = start.elapsed();
    let mut cpu = process_cpu_seconds() - cpu_before;
    let acked = acks(&metrics) - acks_before;
    let pushed = metrics.pushes_total() - pushes_before;
    // The sidecars report their latencies only once every one of them has the change.
    let lat = if everyone.is_ok() {
        let line = tokio::time::timeout(CHANGE_WAIT, child_out.next_line())
            .await
            .with_context(|| format!("not every client had the change within {CHANGE_WAIT:?}"))??
            .context("sidecars ended early")?;
        let lat: Vec<f64> = line
            .strip_prefix("latencies_us ")
            .context("unexpected report from the sidecars")?
            .split_whitespace()
            .map(|v| v.parse::<f64>())
            .collect::<Result<_, _>>()?;
        ensure!(
            lat.len() == 3,
            "unexpected report from the sidecars: {line}"
        );
        if wl {
            all_acked = Duration::from_secs_f64(lat[2] / 1e6);
            cpu = process_cpu_seconds() - cpu_before;
        }
        Some(lat)
    } else {
        None
    };
    let _ = child.kill().await;
    drop(agent);
    rt.shutdown().await;

    let ms = |us: f64| us / 1000.0;
    println!();
    let what = match change {
        Change::NewRoot => "a new root",
        Change::Revocation => "a revocation (CRLs in every ROOTCA)",
    };
    let (streams_are, all_have_it) = if wl {
        (
            "Workload API FetchX509SVID streams",
            "bundle change received by every app (the slowest one's clock)",
        )
    } else {
        (
            "SDS streams (ROOTCA + default each)",
            "bundle change ACKed by every sidecar (agent's count)",
        )
    };
    println!("idmint bench sds: {instances} instances on one agent, {streams} {streams_are}; the change: {what}");
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    if !wl {
        println!(
            "| sidecars pushed the change / ACKed it | {pushed} / {acked} of {instances} | all |"
        );
    }
    if let Some(lat) = &lat {
        println!(
            "| {all_have_it} | {:.0} ms | ≤ 1000 ms |",
            all_acked.as_secs_f64() * 1000.0
        );
        let each = if wl {
            "per-app update received"
        } else {
            "per-sidecar push + ACK"
        };
        println!("| {each}, p50 | {:.1} ms | |", ms(lat[0]));
        println!("| {each}, p99 | {:.1} ms | |", ms(lat[1]));
        println!("| {each}, max | {:.1} ms | |", ms(lat[2]));
    } else {
        println!(
            "| bundle change ACKed by every sidecar | not within {} s | ≤ 1000 ms |",
            CHANGE_WAIT.as_secs()
        );
    }
    println!("| agent CPU for the push | {cpu:.2} s | |");
    println!(
        "| agent resident memory per open stream | {:.1} KiB | ≤ 16 KiB |",
        per_stream / 1024.0
    );
    println!(
        "| agent resident memory, before → after connecting | {:.0} → {:.0} MiB | |",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    println!();
    let met =
        lat.is_some() && all_acked <= TARGET_ALL_ACKED && per_stream <= TARGET_BYTES_PER_STREAM;
    println!(
        "targets (all updated within 1 s, ≤ 16 KiB per stream): {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(())
}

fn acks(m: &SdsMetrics) -> u64 {
    m.acks_total()
}

async fn wait_for(mut done: impl FnMut() -> bool, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("gave up after {limit:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(())
}

async fn expect_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    want: &str,
) -> Result<()> {
    match lines.next_line().await? {
        Some(l) if l == want => Ok(()),
        Some(l) => bail!("sidecars said {l:?}"),
        None => bail!("the sidecar process ended early"),
    }
}

/// Resident set size of this process, from /proc (Linux).
pub(super) fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// The simulated sidecars (`idmint bench sds-clients`): connect to every socket in `dir`, open
/// a `ROOTCA` and a `default` stream on each, ACK what arrives, print `ready`; after `go` on
/// stdin, report how long each took to receive and ACK the changed `ROOTCA`. With
/// [`Clients::WorkloadApi`], apps instead: one `FetchX509SVID` stream each, and how long each
/// took to receive its next update.
pub async fn clients(dir: PathBuf, count: usize, clients: Clients) -> Result<()> {
    raise_fd_limit(count as u64 + FD_SLACK)?;
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    ensure!(
        sockets.len() == count,
        "found {} sockets, expected {count}",
        sockets.len()
    );

    let go: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let done = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (finished_tx, mut finished_rx) = mpsc::channel::<()>(count);
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(count);
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        let (go, done, finished_tx, gate, ready_tx) = (
            go.clone(),
            done.clone(),
            finished_tx.clone(),
            gate.clone(),
            ready_tx.clone(),
        );
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate open");
            let mut sidecar = match Peer::open(&socket, clients).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready_tx.send(Ok(())).await;
            match sidecar.await_change().await {
                Ok(()) => {
                    if let Some(start) = go.get() {
                        done.lock().unwrap().push(start.elapsed());
                    }
                    let _ = finished_tx.send(()).await;
                }
                Err(e) => eprintln!("sidecar on {}: {e:#}", socket.display()),
            }
            // Hold both streams open until the process ends.
            std::future::pending::<()>().await;
        });
    }
    for _ in 0..count {
        ready_rx.recv().await.context("sidecar task ended")??;
    }
    println!("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await? {
        Some(l) if l == "go" => {
            let _ = go.set(Instant::now());
        }
        _ => return Ok(()),
    }
    for _ in 0..count {
        finished_rx.recv().await.context("sidecar task ended")?;
    }
    let mut lat: Vec<f64> = done
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    println!(
        "latencies_us {:.0} {:.0} {:.0}",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    // A sidecar counts itself done once its ACK is queued, not sent: stay connected until
    // the agent has counted every ACK and closes our stdin (or kills us).
    let _ = stdin.next_line().await;
    tasks.abort_all();
    Ok(())
}

/// One client of an instance's socket: a sidecar or an app.
enum Peer {
    Sidecar(Box<Sidecar>),
    App(Box<Streaming<X509svidResponse>>),
}

impl Peer {
    async fn open(socket: &Path, clients: Clients) -> Result<Peer> {
        Ok(match clients {
            Clients::Sds => Peer::Sidecar(Box::new(Sidecar::open(socket).await?)),
            Clients::WorkloadApi => Peer::App(Box::new(open_x509_svid_stream(socket).await?)),
        })
    }

    /// Waits for the bundle change: a new `ROOTCA` version (ACKed), or the app's next update.
    async fn await_change(&mut self) -> Result<()> {
        match self {
            Peer::Sidecar(s) => s.await_roots_change().await,
            Peer::App(stream) => {
                stream.message().await?.context("stream ended")?;
                Ok(())
            }
        }
    }
}

/// An app's `FetchX509SVID` stream on `socket`, once its first response has come.
async fn open_x509_svid_stream(socket: &Path) -> Result<Streaming<X509svidResponse>> {
    let channel = client::channel(socket).await?;
    let mut api = SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().expect("ASCII"));
    let mut stream = api.fetch_x509svid(request).await?.into_inner();
    stream.message().await?.context("stream ended")?;
    Ok(stream)
}

/// One simulated sidecar: a `ROOTCA` and a `default` stream on its instance's socket.
struct Sidecar {
    roots_tx: mpsc::Sender<DiscoveryRequest>,
    roots_rx: Streaming<DiscoveryResponse>,
    roots_version: String,
    _cert_tx: mpsc::Sender<DiscoveryRequest>,
    _cert_rx: Streaming<DiscoveryResponse>,
}

type SdsClient = envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient<tonic::transport::Channel>;

/// Opens a stream for `name`, waits for its first response and ACKs it.
pub(super) async fn open_stream(
    mut c: SdsClient,
    name: &str,
) -> Result<(
    mpsc::Sender<DiscoveryRequest>,
    Streaming<DiscoveryResponse>,
    String,
)> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        resource_names: vec![name.to_string()],
        type_url: SECRET_TYPE.to_string(),
        ..Default::default()
    })
    .await?;
    let mut stream = c
        .stream_secrets(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let resp = stream.message().await?.context("stream ended")?;
    tx.send(ack(name, &resp)).await?;
    Ok((tx, stream, resp.version_info))
}

pub(super) fn ack(name: &str, resp: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: resp.version_info.clone(),
        resource_names: vec![name.to_string()],
        type_url: SECRET_TYPE.to_string(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

impl Sidecar {
    async fn open(socket: &Path) -> Result<Sidecar> {
        let c = client::connect(socket).await?;
        let roots = open_stream(c.clone(), "ROOTCA").await?;
        let cert = open_stream(c, "default").await?;
        Ok(Sidecar {
            roots_tx: roots.0,
            roots_rx: roots.1,
            roots_version: roots.2,
            _cert_tx: cert.0,
            _cert_rx: cert.1,
        })
    }

    async fn await_roots_change(&mut self) -> Result<()> {
        loop {
            let resp = self.roots_rx.message().await?.context("stream ended")?;
            self.roots_tx.send(ack("ROOTCA", &resp)).await?;
            if resp.version_info != self.roots_version {
                self.roots_version = resp.version_info;
                return Ok(());
            }
        }
    }
}
