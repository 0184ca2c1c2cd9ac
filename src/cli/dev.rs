//! `idmint dev`: the whole service in one process on embedded SQLite.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::cell::write_credential;
use super::server::start_api;
use super::table::rfc3339;
use crate::admin::instances::LOCAL_CELL;
use crate::admin::{self, AdminState};
use crate::agent::cell_credential::{CellIdentity, CredentialDir};
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::agent::{Bundle, Settings as AgentSettings, Workloads};
use crate::app::Runtime;
use crate::ca::maintenance::{CaControl, Maintenance};
use crate::ca::upstream_watch::UpstreamWatch;
use crate::ca::{Init, Mode, Principal};
use crate::config::Config;
use crate::ids::Ttl;
use crate::sds::SdsMetrics;

/// How long the local cell's credential lives, in seconds (less under intermediates configured
/// to live less); it renews half-way.
const LOCAL_CELL_TTL: u64 = 24 * 3600;

pub async fn run(config: Config) -> Result<()> {
    // Listen for signals first, so a Ctrl-C during start-up still ends in a clean shutdown.
    let stop = stop_signal()?;
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let bundle_path = rt.config.data_dir.join("bundle.pem");
    let bundle = rt.ca.roots_pem();
    crate::files::write_atomic(&bundle_path, bundle.as_bytes(), 0o644)?;

    let listen = rt.config.admin.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for admin HTTP (set admin.listen)"))?;
    let admin_addr = listener.local_addr()?;
    let own_cells = rt.config.server.cells_register_own.unwrap_or(true);
    let api_listen = rt.config.server.listen;
    let api_addr = start_api(&mut rt, api_listen, "localhost", own_cells).await?;
    let local = start_local_cell(&mut rt, api_addr).await?;
    let agent = start_agent(&mut rt, bundle_path.clone(), local).await;
    let fleet = agent.metrics().bundle_acks().lowest();
    let ca_control = start_ca_maintenance(&mut rt, fleet)?;
    let state = AdminState {
        ca: rt.ca.clone(),
        audit: rt.audit.clone(),
        registry: rt.registry.clone(),
        agent: Some(agent.clone()),
        sds_metrics: agent.metrics(),
        ca_control,
    };
    rt.spawn("admin http", |token| admin::serve(listener, state, token));

    let c = &rt.config;
    let inter = rt.ca.intermediate();
    println!("idmint dev: trust domain {}", c.ca.trust_domain);
    println!("  data directory      {}", c.data_dir.display());
    println!(
        "  database            {}",
        crate::store::redact_url(&c.store.url)
    );
    println!("  key-encryption key  {}", c.ca.kek_file.display());
    println!("  trust bundle        {}", bundle_path.display());
    for root in rt.ca.roots() {
        println!(
            "  root CA             {} (until {})",
            root.fingerprint,
            rfc3339(root.not_after)
        );
    }
    println!(
        "  intermediate CA     {} ({}, until {})",
        inter.fingerprint,
        rt.ca.key_description(),
        rfc3339(inter.not_after)
    );
    println!("  server API          https://{api_addr}  (name localhost; cells register own instances: {})",
        if own_cells { "yes" } else { "no" });
    println!(
        "  local cell          {LOCAL_CELL}, credential in {}",
        local_cell_dir(c).display()
    );
    println!("  SDS sockets         {}", c.agent.sds_dir.display());
    println!("  instance files      {}", c.agent.instance_dir.display());
    println!("  admin HTTP          http://{admin_addr}  (/healthz, /metrics, /v1/bundle.pem, /v1/ledger, /v1/instances)");
    println!("ready; Ctrl-C to stop");

    stop.await;
    // stdout may be gone by now (a closed pipe); shutting down matters more than saying so.
    let say = |what: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{what}");
    };
    say("shutting down");
    rt.shutdown().await;
    say("stopped");
    Ok(())
}

/// Where the local cell's credential is kept.
fn local_cell_dir(config: &Config) -> PathBuf {
    config.data_dir.join("local-cell")
}

/// This process's own cell, [`LOCAL_CELL`]: a credential enrolled afresh at each start and
/// renewed like any agent's, and a connection to the server API with it.
async fn start_local_cell(rt: &mut Runtime, api_addr: SocketAddr) -> Result<Arc<CellIdentity>> {
    let dir = local_cell_dir(&rt.config);
    // Nothing of a previous run's credential (a half-done renewal included) outlives it.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cell = Principal::Cell(LOCAL_CELL.parse().expect("a valid cell id"));
    let ttl = Ttl::from_secs(LOCAL_CELL_TTL)
        .expect("non-zero")
        .min(rt.config.ca.intermediate_ttl);
    let cred = rt
        .issuance
        .enroll(&cell, ttl, OffsetDateTime::now_utc())
        .await
        .context("cannot enroll the local cell")?;
    write_credential(&dir, &cred, &rt.ca.roots_pem())?;
    let files = CredentialDir::new(dir);
    let loaded = files.load(&rt.config.ca)?;
    let host = if api_addr.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        api_addr.ip()
    };
    let remote = RemoteAuthority::connect(RemoteSettings {
        endpoint: format!("https://{}", SocketAddr::new(host, api_addr.port())),
        server_name: "localhost",
        cert_chain_pem: &loaded.chain_pem,
        key_pem: &loaded.key_pem,
        roots_pem: &loaded.roots_pem,
    })
    .await
    .context("the local cell cannot reach the server API")?;
    let identity = Arc::new(CellIdentity::new(
        files,
        rt.config.ca.clone(),
        remote,
        loaded,
    ));
    let renewing = identity.clone();
    let schedule = rt.config.agent.renewal;
    rt.spawn("local cell credential", move |token| {
        renewing.keep_renewed(schedule, token)
    });
    Ok(identity)
}

/// The agent half in this process, as the local cell: serves SDS for every instance placed on
/// it, getting certificates through the server API, with the trust bundle following the CA
/// (and `bundle_path` rewritten) whenever its roots change.
async fn start_agent(
    rt: &mut Runtime,
    bundle_path: PathBuf,
    local: Arc<CellIdentity>,
) -> Arc<Workloads<RemoteAuthority>> {
    let ca = rt.ca.clone();
    let trust_domain = rt.config.ca.trust_domain.clone();
    let bundle_now = move |ca: &crate::ca::CertificateAuthority| {
        let published = ca.published();
        Bundle {
            trust_domain: trust_domain.clone(),
            roots_pem: published.roots_pem,
            generation: published.generation,
        }
    };
    let first = bundle_now(&ca);
    let metrics = Arc::new(SdsMetrics::default());
    metrics.bundle_acks().set_current(first.generation);
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(first));
    let settings = AgentSettings {
        cell: Some(LOCAL_CELL.parse().expect("a valid cell id")),
        ..AgentSettings::from_config(&rt.config)
    };
    let agent = Arc::new(Workloads::new(
        Arc::new(local.remote().clone()),
        settings,
        bundle_rx,
        metrics.clone(),
        rt.shutdown_token(),
    ));
    // Sockets of instances registered before this start exist before "ready" is printed.
    let events = agent.serve_registered(&rt.registry).await;
    let registry = rt.registry.clone();
    let follower = agent.clone();
    rt.spawn("agent", move |_| follower.follow(registry, events));
    rt.spawn("trust bundle", move |token| async move {
        let mut changes = ca.watch();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
            local.follow_signer(&ca.intermediate().fingerprint).await;
            let next = bundle_now(&ca);
            if next.roots_pem == bundle_tx.borrow().roots_pem {
                continue;
            }
            if let Err(e) =
                crate::files::write_atomic(&bundle_path, next.roots_pem.as_bytes(), 0o644)
            {
                tracing::error!(error = %e, "cannot rewrite the trust bundle file");
            }
            if let Err(e) = local.bundle_changed(&next.roots_pem) {
                tracing::error!(error = %e, "cannot give the local cell the new trust bundle");
            }
            metrics.bundle_acks().set_current(next.generation);
            bundle_tx.send_replace(Arc::new(next));
        }
    });
    agent
}

/// Rotates the self-signed CA on schedule, or takes up replaced upstream files; either way a
/// new root waits until `fleet` (the lowest bundle generation the sidecars acknowledged) has it.
pub(super) fn start_ca_maintenance(
    rt: &mut Runtime,
    fleet: watch::Receiver<Option<u64>>,
) -> Result<Option<CaControl>> {
    let ledger = rt.issuance.ledger().clone();
    if let Mode::Upstream(files) = rt.config.ca.mode.clone() {
        let watch = UpstreamWatch::new(rt.ca.clone(), files, ledger, fleet);
        rt.spawn("upstream CA files", move |token| watch.run(token));
        return Ok(None);
    }
    let Some(maintenance) = Maintenance::new(rt.ca.clone(), rt.store().clone(), ledger, fleet)?
    else {
        return Ok(None);
    };
    let (control, task) = maintenance.spawn(rt.shutdown_token());
    rt.spawn("CA maintenance", move |_| async move {
        let _ = task.await;
    });
    Ok(Some(control))
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. The handlers are installed on return.
pub(super) fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
