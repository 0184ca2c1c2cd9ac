//! `idmint dev`: the whole service in one process on embedded SQLite.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::table::rfc3339;
use crate::admin::{self, AdminState};
use crate::agent::{Bundle, Settings as AgentSettings, Workloads};
use crate::app::{self, Runtime};
use crate::ca::{Init, Mode};
use crate::config::Config;
use crate::sds::SdsMetrics;
use crate::server::ca_maintenance::{CaControl, Maintenance};
use crate::server::ca_upstream::UpstreamWatch;
use crate::server::IssuanceService;

pub async fn run(config: Config) -> Result<()> {
    // Listen for signals first, so a Ctrl-C during start-up still ends in a clean shutdown.
    let stop = stop_signal()?;
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let bundle_path = rt.config.data_dir.join("bundle.pem");
    let bundle = rt.ca.roots_pem();
    app::write_atomic(&bundle_path, bundle.as_bytes(), 0o644)?;

    let listen = rt.config.admin.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for admin HTTP (set admin.listen)"))?;
    let admin_addr = listener.local_addr()?;
    let agent = start_agent(&mut rt, bundle_path.clone()).await;
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

/// The agent half in this process: serves SDS for every registered instance, with the trust
/// bundle following the CA (and `bundle_path` rewritten) whenever its roots change.
async fn start_agent(rt: &mut Runtime, bundle_path: PathBuf) -> Arc<Workloads<IssuanceService>> {
    let ca = rt.ca.clone();
    let trust_domain = rt.config.ca.trust_domain.clone();
    let bundle_now = move |ca: &crate::ca::CertificateAuthority| Bundle {
        trust_domain: trust_domain.clone(),
        roots_pem: ca.roots_pem(),
        generation: ca.generation(),
    };
    let first = bundle_now(&ca);
    let metrics = Arc::new(SdsMetrics::default());
    metrics.bundle_acks().set_current(first.generation);
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(first));
    let settings = AgentSettings::from_config(&rt.config);
    let agent = Arc::new(Workloads::new(
        Arc::new(rt.issuance.clone()),
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
            let next = bundle_now(&ca);
            if next.roots_pem == bundle_tx.borrow().roots_pem {
                continue;
            }
            if let Err(e) = app::write_atomic(&bundle_path, next.roots_pem.as_bytes(), 0o644) {
                tracing::error!(error = %e, "cannot rewrite the trust bundle file");
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
