//! `idmint dev`: the whole service in one process on embedded SQLite.

use anyhow::Result;

use super::table::rfc3339;
use crate::admin::instances::LOCAL_CELL;
use crate::app::{self, stop_signal};
use crate::config::Config;

pub async fn run(config: Config) -> Result<()> {
    // Listen for signals first, so a Ctrl-C during start-up still ends in a clean shutdown.
    let stop = stop_signal()?;
    let dev = app::dev::start(config).await?;
    let (rt, c) = (&dev.rt, &dev.rt.config);
    let inter = rt.ca.intermediate();
    println!("idmint dev: trust domain {}", c.ca.trust_domain);
    println!("  data directory      {}", c.data_dir.display());
    println!(
        "  database            {}",
        crate::store::redact_url(&c.store.url)
    );
    println!("  key-encryption key  {}", c.ca.kek_file.display());
    println!("  trust bundle        {}", dev.bundle_path.display());
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
    println!(
        "  server API          https://{}  (name localhost; cells register own instances: {})",
        dev.api_addr,
        if dev.cells_register_own { "yes" } else { "no" }
    );
    println!(
        "  local cell          {LOCAL_CELL}, credential in {}",
        dev.local_cell_dir.display()
    );
    println!("  SDS sockets         {}", c.agent.sds_dir.display());
    println!("  instance files      {}", c.agent.instance_dir.display());
    println!(
        "  admin HTTP          http://{}  (open: /healthz, /metrics, /v1/bundle.pem, /v1/log/ checkpoint, key and hash tiles; the rest needs mutual TLS with a role credential)",
        dev.admin_addr
    );
    if let Some(socket) = &c.admin.socket {
        println!(
            "  admin socket        {}  (this user's idmint commands use it)",
            socket.display()
        );
    }
    println!("ready; Ctrl-C to stop");

    stop.await;
    // stdout may be gone by now (a closed pipe); shutting down matters more than saying so.
    let say = |what: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{what}");
    };
    say("shutting down");
    dev.rt.shutdown().await;
    say("stopped");
    Ok(())
}
