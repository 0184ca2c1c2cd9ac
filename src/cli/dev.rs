//! `idmint dev`: the whole service in one process on embedded SQLite.

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::table::rfc3339;
use crate::admin::{self, AdminState};
use crate::app::{self, Runtime};
use crate::ca::Init;
use crate::config::Config;

pub async fn run(config: Config) -> Result<()> {
    // Listen for signals first, so a Ctrl-C during start-up still ends in a clean shutdown.
    let stop = stop_signal()?;
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let bundle_path = rt.config.data_dir.join("bundle.pem");
    let bundle: String = rt.ca.roots().iter().map(|r| r.pem()).collect();
    app::write_atomic(&bundle_path, bundle.as_bytes(), 0o644)?;

    let listen = rt.config.admin.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for admin HTTP (set admin.listen)"))?;
    let admin_addr = listener.local_addr()?;
    let state = AdminState {
        ca: rt.ca.clone(),
        audit: rt.audit.clone(),
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
    println!("  admin HTTP          http://{admin_addr}  (/healthz, /v1/bundle.pem, /v1/ledger)");
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

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. The handlers are installed on return.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
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
