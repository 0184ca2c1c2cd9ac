//! `idmint bench policy`: one agent serving 10,000 instances of 2,000 apps, with 100,000
//! policies (50 sources per destination app, one app with 150) read in CF's policy-server
//! format. Measures loading them at start, one policy change reaching the sidecars it concerns
//! (and no others), the agent's memory per app allow list, and the bytes a change moves, beside
//! baselines taken in the same run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use prost::Message;
use tokio::sync::{mpsc, watch};

use super::sds::{ack, open_stream};
use super::{
    bench_guid, bench_runtime, fresh_bench_dir, placement_of, process_cpu_seconds, raise_fd_limit,
};
use crate::agent::{AllowLists, Bundle, Settings as AgentSettings, Workloads};
use crate::config::Config;
use crate::ids::{CellId, Guid};
use crate::policy::{
    parse_policy_server_answer, policy_list_json, AllowUpdate, Mode, Origin, Policy, PortRange,
    Protocol,
};
use crate::proto;
use crate::sds::{client, SdsMetrics};
use crate::server::allow_watch::AllowWatch;
use crate::server::policies::{Policies, Settings as PolicySettings};

/// Targets from the policy issue.
const TARGET_P99: Duration = Duration::from_millis(100);
const TARGET_LOAD_CPU: f64 = 1.0;

/// Sources per destination app, and for the one app with CF's default cap.
const SOURCES: usize = 50;
const SOURCES_OF_THE_BIG_APP: usize = 150;

/// Open files besides the sockets.
const FD_SLACK: u64 = 256;
/// Sidecars connecting at once.
const CONNECT_CONCURRENCY: usize = 256;
/// How long after a change stray pushes to other sidecars are waited for.
const SETTLE: Duration = Duration::from_millis(200);

/// The secret a provider's sidecar asks for.
const C2C: &str = "c2c-validation-context";

pub async fn run(config: Config, instances: usize, apps: usize, changes: usize) -> Result<()> {
    ensure!(
        apps > SOURCES_OF_THE_BIG_APP && instances >= apps,
        "--apps must be more than {SOURCES_OF_THE_BIG_APP} and --instances at least --apps"
    );
    ensure!(changes >= 2, "--changes must be at least 2");
    // Each instance takes its listening socket here; each connected sidecar one more here and
    // one in the sidecars' process. As many sidecars connect as the open-file limit allows.
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    let connected = instances.min(hard.saturating_sub(instances as u64 + FD_SLACK) as usize);
    ensure!(
        // App 0's last instance is the last multiple of `apps` below `instances`.
        connected > (instances - 1) / apps * apps,
        "the open-file limit ({hard}) leaves room for only {connected} sidecars; use fewer --instances"
    );
    raise_fd_limit((instances + connected) as u64 + FD_SLACK)?;
    let dir = fresh_bench_dir()?;
    let result = measure(config, instances, connected, apps, changes, &dir).await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// The policy set: destination app `d` may be reached by the next `SOURCES` apps (the next
/// `SOURCES_OF_THE_BIG_APP` for app 0), all on tcp 8080.
fn policy_set(apps: usize) -> BTreeSet<Policy> {
    let mut all = BTreeSet::new();
    for d in 0..apps {
        let n = if d == 0 {
            SOURCES_OF_THE_BIG_APP
        } else {
            SOURCES
        };
        for k in 1..=n {
            all.insert(policy(bench_guid(2, (d + k) % apps), bench_guid(2, d)));
        }
    }
    all
}

fn policy(source: Guid, destination: Guid) -> Policy {
    Policy {
        source: source.into(),
        destination,
        protocol: Protocol::Tcp,
        ports: PortRange::new(8080, 8080).expect("a port"),
    }
}

/// CPU seconds and wall time of `f`.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, f64, Duration) {
    let (cpu, wall) = (process_cpu_seconds(), Instant::now());
    let out = f.await;
    (out, process_cpu_seconds() - cpu, wall.elapsed())
}

async fn measure(
    mut config: Config,
    instances: usize,
    connected: usize,
    apps: usize,
    changes: usize,
    dir: &std::path::Path,
) -> Result<()> {
    config.policy.default_mode = Mode::Policy;
    let rt = bench_runtime(config, dir).await?;
    let token = rt.shutdown_token();
    let cell: CellId = "bench-cell".parse()?;
    let settings = || PolicySettings {
        trust_domain: rt.config.ca.trust_domain.clone(),
        template: rt.config.ca.id_template.clone(),
        default_mode: Mode::Policy,
        origin: Origin::PolicyServer,
    };
    let load = || {
        Policies::load(
            rt.store().clone(),
            rt.issuance.ledger().clone(),
            rt.clock.clone(),
            settings(),
        )
    };
    println!("placing {instances} instances of {apps} apps on one agent (not timed)…");
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: rt.config.ca.trust_domain.clone(),
        roots_pem: rt.ca.roots_pem(),
        generation: 1,
        crls_pem: String::new(),
        jwt_keys_json: String::new(),
        federated: Vec::new(),
    }));
    let metrics = Arc::new(SdsMetrics::default());
    let agent = Workloads::new(
        Arc::new(rt.issuance.clone()),
        AgentSettings {
            sds_dir: dir.join("sds"),
            instance_dir: None,
            cell: Some(cell.clone()),
            ..rt.config.agent_settings()
        },
        bundle_rx,
        metrics.clone(),
        rt.shutdown_token(),
    );
    let placements: Vec<_> = (0..instances)
        .map(|i| placement_of(i, i % apps, &cell))
        .collect();
    for p in &placements {
        rt.registry.register(p.clone()).await?;
        agent.add(p.clone()).await?;
    }
    wait_until(
        "every certificate issued",
        Duration::from_secs(600),
        || async {
            let (issued, served) = agent.issued().await;
            issued == served
        },
    )
    .await?;

    let all = policy_set(apps);
    let json = policy_list_json(&all).to_string().into_bytes();
    let one_policy_json = policy_list_json([all.first().expect("policies")])["policies"][0]
        .to_string()
        .len();

    println!(
        "loading {} policies ({:.1} MB of policy-server JSON) into an empty store, once…",
        all.len(),
        json.len() as f64 / 1e6
    );
    let first = load().await?;
    first.learn(rt.registry.watch(None).next().await);
    let (first_load, first_cpu, first_wall) = timed(async {
        let parsed = parse_policy_server_answer(&json)?;
        anyhow::Ok(first.replace(parsed).await?)
    })
    .await;
    let (recorded, _) = first_load?;
    drop(first);

    println!("…and at a server start, the same answer over the stored set…");
    let (generic, generic_cpu, generic_wall) =
        timed(async { serde_json::from_slice::<serde_json::Value>(&json) }).await;
    generic?;
    let (policies, stored_cpu, stored_wall) = timed(async {
        let policies = load().await?;
        // What a start does before any agent asks: learn where the apps are.
        let mut placed = rt.registry.watch(None);
        policies.learn(placed.next().await);
        anyhow::Ok((policies, placed))
    })
    .await;
    let (policies, placed_watch) = policies?;
    let (parsed, parse_cpu, parse_wall) = timed(async { parse_policy_server_answer(&json) }).await;
    let parsed = parsed?;
    ensure!(parsed.len() == all.len(), "the answer read back short");
    let (replaced, force_cpu, force_wall) = timed(policies.replace(parsed)).await;
    let (unchanged_added, unchanged_removed) = replaced?;
    ensure!(
        unchanged_added + unchanged_removed == 0,
        "the stored set differs from the answer"
    );
    let follow = tokio::spawn(
        policies
            .clone()
            .follow_placements(placed_watch, token.clone()),
    );
    let mut watch_cell = AllowWatch::new(policies.clone(), rt.registry.watch(Some(cell.clone())));
    let (snapshot, lists_cpu, lists_wall) = timed(watch_cell.next()).await;
    let wire = proto::allow_update_to_wire(&snapshot).encode_to_vec();
    drop(snapshot);
    let lists = agent.allow_lists();
    let (applied, apply_cpu, apply_wall) = timed(async {
        let update = proto::AllowListUpdate::decode(wire.as_slice())?;
        let update = proto::allow_update_from_wire(update).map_err(anyhow::Error::msg)?;
        lists.apply(update);
        anyhow::Ok(())
    })
    .await;
    applied?;
    let load_cpu = stored_cpu + parse_cpu + force_cpu + lists_cpu + apply_cpu;
    let per_list = agent_memory_per_list(&wire, dir).await?;

    // From here on the cell's updates reach the agent as they would over the wire, counted.
    let wire_bytes = Arc::new(AtomicU64::new(0));
    let relay = tokio::spawn(relay(watch_cell, lists.clone(), wire_bytes.clone()));

    println!(
        "connecting {connected} simulated provider sidecars in their own process (not timed)…"
    );
    let sockets = dir.join("sidecar-sockets.txt");
    let list: Vec<String> = placements[..connected]
        .iter()
        .map(|p| agent.socket_path(&p.instance_guid).display().to_string())
        .collect();
    std::fs::write(&sockets, list.join("\n"))?;
    let mut sidecars = SidecarProcess::spawn(&sockets).await?;
    wait_until("every first ACK", Duration::from_secs(120), || async {
        metrics.acks_total() >= connected as u64
    })
    .await?;
    // The apps whose every instance has a sidecar: those the changes are made to.
    let eligible: Vec<usize> = (0..apps)
        .filter(|d| (*d..instances).step_by(apps).all(|i| i < connected))
        .collect();

    println!("{changes} policy changes, each beside a raw push to the same sidecars…");
    let mut current = all.clone();
    let (mut full, mut raw, mut all_acked) = (Vec::new(), Vec::new(), Vec::new());
    // How long the server took to store, record and put each change in force.
    let mut in_force = Vec::new();
    let (mut stray, mut sds_bytes, mut update_bytes) = (0u64, 0u64, 0u64);
    let mut affected_total = 0usize;
    for r in 0..changes {
        // App 0 (150 sources) first, then apps spread over the rest; add on even rounds, take
        // the same policy away on odd ones.
        let d = if r < 2 {
            0
        } else {
            eligible[(r / 2 * 997) % eligible.len()]
        };
        // The app just before `d`: never among its sources (those follow it).
        let source = bench_guid(2, (d + apps - 1) % apps);
        let p = policy(source, bench_guid(2, d));
        let affected: Vec<usize> = (0..instances).filter(|i| i % apps == d).collect();
        affected_total += affected.len();

        // Baseline: the same sidecars told of a changed list directly on the agent.
        let mut list = (*lists.get(&bench_guid(2, d)).context("a list")?).clone();
        list.sources
            .insert(format!("spiffe://bench.invalid/raw/{r}"));
        sidecars.arm(&affected).await?;
        lists.apply(AllowUpdate::Set(bench_guid(2, d), list));
        raw.extend(sidecars.latencies().await.context("the raw push")?);

        // The change itself: a new answer of the policy server, one policy different.
        if r % 2 == 0 {
            current.insert(p);
        } else {
            current.remove(&p);
        }
        let next = current.clone();
        let (pushes_before, bytes_before) = sidecars.counts().await?;
        let acks = metrics.acks_total();
        let wire_before = wire_bytes.load(Ordering::Relaxed);
        sidecars.arm(&affected).await?;
        let t0 = Instant::now();
        policies.replace(next).await?;
        in_force.push(t0.elapsed());
        full.extend(
            sidecars
                .latencies()
                .await
                .with_context(|| format!("change {r} to app {d}"))?,
        );
        wait_until(
            "the agent to count the ACKs",
            Duration::from_secs(10),
            || async { metrics.acks_total() >= acks + affected.len() as u64 },
        )
        .await?;
        all_acked.push(t0.elapsed());
        tokio::time::sleep(SETTLE).await;
        let (pushes_after, bytes_after) = sidecars.counts().await?;
        stray += (pushes_after - pushes_before).saturating_sub(affected.len() as u64);
        sds_bytes += bytes_after - bytes_before;
        update_bytes += wire_bytes.load(Ordering::Relaxed) - wire_before;
    }
    relay.abort();
    follow.abort();
    drop(sidecars);
    drop(bundle_tx);
    drop(agent);
    rt.shutdown().await;

    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (full_p50, full_p99) = (pct(&mut full, 0.5), pct(&mut full, 0.99));
    let (raw_p50, raw_p99) = (pct(&mut raw, 0.5), pct(&mut raw, 0.99));
    let acked_max = all_acked.iter().max().copied().unwrap_or_default();
    let per_change = (sds_bytes + update_bytes) as f64 / changes as f64;
    let naive_delta = (connected * one_policy_json) as f64;
    let naive_full = connected as f64 * json.len() as f64;
    let avg_sources = all.len() as f64 / apps as f64;

    println!();
    println!(
        "idmint bench policy: {instances} instances of {apps} apps on one agent ({connected} with a sidecar connected), {} policies ({avg_sources:.1} sources per app, app 0 with {SOURCES_OF_THE_BIG_APP}), {changes} changes",
        all.len()
    );
    println!();
    println!("| measure | value | baseline (same run) | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| one change → affected sidecars pushed, p50 | {:.1} ms | {:.1} ms raw push | {:.1}× | |",
        ms(full_p50),
        ms(raw_p50),
        ms(full_p50) / ms(raw_p50)
    );
    println!(
        "| one change → affected sidecars pushed, p99 | {:.1} ms | {:.1} ms raw push | {:.1}× | ≤ 100 ms |",
        ms(full_p99),
        ms(raw_p99),
        ms(full_p99) / ms(raw_p99)
    );
    println!(
        "| one change → every affected ACK counted by the agent, worst | {:.1} ms | | | |",
        ms(acked_max)
    );
    println!(
        "| … of which the server storing, recording and putting it in force, p50 / p99 | {:.1} / {:.1} ms | | | |",
        ms(pct(&mut in_force, 0.5)),
        ms(pct(&mut in_force, 0.99))
    );
    println!("| pushes to unaffected sidecars | {stray} (affected: {affected_total}) | | | 0 |");
    println!(
        "| server start with {} policies stored: CPU to have every list at the agent | {load_cpu:.2} s | {generic_cpu:.2} s generic JSON parse of the answer | {:.1}× | ≤ 1 s |",
        all.len(),
        load_cpu / generic_cpu.max(0.01)
    );
    println!(
        "| … the stored set read, the apps' placements learned | {stored_cpu:.2} s CPU, {:.0} ms | | | |",
        ms(stored_wall)
    );
    println!(
        "| … the policy server's answer parsed and checked | {parse_cpu:.2} s CPU, {:.0} ms | {:.0} ms generic parse | | |",
        ms(parse_wall),
        ms(generic_wall)
    );
    println!(
        "| … compared with the set in force (no change) | {force_cpu:.2} s CPU, {:.0} ms | | | |",
        ms(force_wall)
    );
    println!(
        "| … the cell's {} allow lists, and the agent taking them ({:.1} MB on the wire) | {:.2} s CPU, {:.0} ms | | | |",
        lists.len(),
        wire.len() as f64 / 1e6,
        lists_cpu + apply_cpu,
        ms(lists_wall + apply_wall)
    );
    println!(
        "| first answer into an empty store: stored, {recorded} ledger entries, in force | {first_cpu:.2} s CPU, {:.0} ms | | | once per foundation |",
        ms(first_wall)
    );
    println!(
        "| agent memory per app allow list ({avg_sources:.0} IDs on average) | {:.1} KiB | {:.0} MiB naive: every policy for every app | {:.0}× less | |",
        per_list / 1024.0,
        per_list * all.len() as f64 / avg_sources / 1048576.0,
        all.len() as f64 / avg_sources
    );
    println!(
        "| bytes moved per change (agent update + SDS pushes) | {:.1} KB | {:.0} KB naive: every sidecar told the one policy | {:.0}× less | |",
        per_change / 1e3,
        naive_delta / 1e3,
        naive_delta / per_change
    );
    println!(
        "| … against every sidecar sent the whole set | | {:.0} GB | {:.0}× less | |",
        naive_full / 1e9,
        naive_full / per_change
    );
    println!();
    let met = full_p99 <= TARGET_P99 && stray == 0 && load_cpu <= TARGET_LOAD_CPU;
    println!(
        "targets (p99 ≤ 100 ms, no unaffected push, load ≤ 1 s CPU): {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The agent's resident memory per app allow list: `wire` (a cell's snapshot) taken in by a
/// fresh process, so no memory freed earlier in this one hides what the lists take.
async fn agent_memory_per_list(wire: &[u8], dir: &std::path::Path) -> Result<f64> {
    let path = dir.join("allow-lists.bin");
    std::fs::write(&path, wire)?;
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "policy-memory", "--wire"])
        .arg(&path)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "the memory probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    text.trim()
        .strip_prefix("bytes_per_list ")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected report from the memory probe: {text}"))
}

/// `idmint bench policy-memory`: takes a cell's allow lists from their wire encoding in `path`
/// into an agent's [`AllowLists`], and prints the resident memory that grew per list.
pub fn memory_probe(path: &std::path::Path) -> Result<()> {
    let wire = std::fs::read(path)?;
    let lists = AllowLists::default();
    let before = super::sds::rss_bytes()?;
    let update = proto::AllowListUpdate::decode(wire.as_slice())?;
    let update = proto::allow_update_from_wire(update).map_err(anyhow::Error::msg)?;
    lists.apply(update);
    let after = super::sds::rss_bytes()?;
    ensure!(!lists.is_empty(), "no lists in {}", path.display());
    println!(
        "bytes_per_list {:.1}",
        after.saturating_sub(before) as f64 / lists.len() as f64
    );
    Ok(())
}

/// Hands the cell's updates to the agent through their wire encoding, as a remote agent gets
/// them, counting the bytes.
async fn relay(mut watch: AllowWatch, lists: Arc<AllowLists>, bytes: Arc<AtomicU64>) {
    loop {
        let update = watch.next().await;
        let wire = proto::allow_update_to_wire(&update).encode_to_vec();
        bytes.fetch_add(wire.len() as u64, Ordering::Relaxed);
        let Ok(decoded) = proto::AllowListUpdate::decode(wire.as_slice()) else {
            return;
        };
        if let Ok(update) = proto::allow_update_from_wire(decoded) {
            lists.apply(update);
        }
    }
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// The simulated sidecars' process, as the agent's side sees it: told which sidecars a change
/// concerns just before it is made, it reports when each of them got its push.
struct SidecarProcess {
    child: tokio::process::Child,
    to: tokio::process::ChildStdin,
    from: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl SidecarProcess {
    async fn spawn(sockets: &std::path::Path) -> Result<SidecarProcess> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "policy-sidecars", "--sockets"])
            .arg(sockets)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let to = child.stdin.take().context("stdin")?;
        let from = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut process = SidecarProcess { child, to, from };
        process.expect("ready").await?;
        Ok(process)
    }

    async fn say(&mut self, line: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.to.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(self.to.flush().await?)
    }

    async fn line(&mut self) -> Result<String> {
        self.from
            .next_line()
            .await?
            .context("the sidecars' process ended early")
    }

    async fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.line().await?;
        ensure!(got == want, "the sidecars said {got:?}");
        Ok(())
    }

    /// The sidecars start their clock and watch `who` for a push.
    async fn arm(&mut self, who: &[usize]) -> Result<()> {
        let list: Vec<String> = who.iter().map(usize::to_string).collect();
        self.say(&format!("go {}", list.join(","))).await?;
        self.expect("armed").await
    }

    /// How long after being armed each watched sidecar got its push.
    async fn latencies(&mut self) -> Result<Vec<Duration>> {
        let line = self.line().await?;
        let values = line
            .strip_prefix("lat_us ")
            .with_context(|| format!("the sidecars said {line:?}"))?;
        values
            .split_whitespace()
            .map(|v| Ok(Duration::from_micros(v.parse()?)))
            .collect()
    }

    /// Pushes received and their bytes, over every sidecar, so far.
    async fn counts(&mut self) -> Result<(u64, u64)> {
        self.say("count").await?;
        let line = self.line().await?;
        let mut parts = line
            .strip_prefix("count ")
            .with_context(|| format!("the sidecars said {line:?}"))?
            .split_whitespace()
            .map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(p)), Some(Ok(b))) => Ok((p, b)),
            _ => bail!("the sidecars said {line:?}"),
        }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `idmint bench policy-sidecars`: one simulated provider sidecar per socket listed in
/// `sockets`, each holding a `c2c-validation-context` stream and ACKing every push. Says
/// `ready` once all have their first push; then answers `go I,J,…` with `armed` and, once
/// each listed sidecar has had a push, `lat_us` and the microseconds each took; and `count`
/// with the pushes and bytes received so far over all.
pub async fn sidecars(sockets: &std::path::Path) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let list = std::fs::read_to_string(sockets)?;
    let sockets: Vec<std::path::PathBuf> = list.lines().map(Into::into).collect();
    raise_fd_limit(sockets.len() as u64 + FD_SLACK)?;
    let sidecars = Sidecars::connect(&sockets).await?;
    println!("ready");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        if line == "count" {
            println!("count {} {}", sidecars.total(), sidecars.bytes());
            continue;
        }
        let who: Vec<usize> = line
            .strip_prefix("go ")
            .with_context(|| format!("unknown command {line:?}"))?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let before = sidecars.counts();
        let t0 = Instant::now();
        println!("armed");
        let took = sidecars.wait(&who, &before, t0).await?;
        let us: Vec<String> = took.iter().map(|d| d.as_micros().to_string()).collect();
        println!("lat_us {}", us.join(" "));
    }
    Ok(())
}

/// The sidecars of [`sidecars`]: it ACKs every push and notes when each arrived and how large
/// it was.
struct Sidecars {
    pushes: Arc<Vec<AtomicU64>>,
    last: Arc<Mutex<Vec<Option<Instant>>>>,
    bytes: Arc<AtomicU64>,
    _tasks: tokio::task::JoinSet<()>,
}

impl Sidecars {
    async fn connect(sockets: &[std::path::PathBuf]) -> Result<Sidecars> {
        let n = sockets.len();
        let pushes: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let last = Arc::new(Mutex::new(vec![None; n]));
        let bytes = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(n);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, socket) in sockets.iter().enumerate() {
            let socket = socket.clone();
            let (pushes, last, bytes, gate, ready) = (
                pushes.clone(),
                last.clone(),
                bytes.clone(),
                gate.clone(),
                ready_tx.clone(),
            );
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await.expect("open");
                let opened = match client::connect(&socket).await {
                    Ok(c) => open_stream(c, C2C).await,
                    Err(e) => Err(e.into()),
                };
                drop(permit);
                let (tx, mut rx, _) = match opened {
                    Ok(s) => {
                        let _ = ready.send(Ok(())).await;
                        s
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                        return;
                    }
                };
                while let Ok(Some(resp)) = rx.message().await {
                    let size = resp.encoded_len() as u64;
                    if tx.send(ack(C2C, &resp)).await.is_err() {
                        return;
                    }
                    last.lock().expect("never poisoned")[i] = Some(Instant::now());
                    bytes.fetch_add(size, Ordering::Relaxed);
                    pushes[i].fetch_add(1, Ordering::Release);
                }
            });
        }
        for _ in 0..n {
            ready_rx.recv().await.context("a sidecar task ended")??;
        }
        Ok(Sidecars {
            pushes,
            last,
            bytes,
            _tasks: tasks,
        })
    }

    fn counts(&self) -> Vec<u64> {
        self.pushes
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .collect()
    }

    fn total(&self) -> u64 {
        self.counts().iter().sum()
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits until each of `who` has had a push since `before`; how long after `t0` each came.
    async fn wait(&self, who: &[usize], before: &[u64], t0: Instant) -> Result<Vec<Duration>> {
        wait_until(
            "the affected sidecars' pushes",
            Duration::from_secs(10),
            || async {
                who.iter()
                    .all(|&i| self.pushes[i].load(Ordering::Acquire) > before[i])
            },
        )
        .await?;
        let last = self.last.lock().expect("never poisoned");
        Ok(who
            .iter()
            .map(|&i| last[i].map(|at| at - t0).unwrap_or_default())
            .collect())
    }
}
