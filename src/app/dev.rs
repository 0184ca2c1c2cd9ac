//! `idmint dev`: both roles in one process on embedded SQLite. The agent half is the cell
//! [`LOCAL_CELL`], with a credential of its own, and gets its certificates from the server half
//! over the server API, as any cell would.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

use super::server::{bind_admin, start_admin, start_api, start_ca_maintenance, ApiOptions};
use super::Runtime;
use crate::admin::instances::LOCAL_CELL;
use crate::admin::AdminState;
use crate::agent::cell_credential::{CellIdentity, CredentialDir};
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::agent::{Bundle, Settings as AgentSettings, Workloads};
use crate::ca::{Init, Principal};
use crate::config::Config;
use crate::ids::{CellId, Ttl};
use crate::sds::SdsMetrics;
use crate::server::allow_watch::AllowWatch;
use crate::server::revocations::Revoked;

/// How long the local cell's credential lives, in seconds (less under intermediates configured
/// to live less); it renews half-way.
const LOCAL_CELL_TTL: u64 = 24 * 3600;

/// The running dev service: what it serves and where.
pub struct Dev {
    /// The domain it runs.
    pub rt: Runtime,
    /// The trust bundle file, rewritten when the roots change.
    pub bundle_path: PathBuf,
    /// Where the server API listens.
    pub api_addr: SocketAddr,
    /// Where the admin HTTP API listens.
    pub admin_addr: SocketAddr,
    /// Whether cells (the local one included) register their own instances.
    pub cells_register_own: bool,
    /// Where the local cell's credential is kept.
    pub local_cell_dir: PathBuf,
}

/// Starts everything `idmint dev` runs, creating the CA on first start.
pub async fn start(config: Config) -> Result<Dev> {
    let mut rt = Runtime::start(config, Init::CreateIfMissing).await?;
    let bundle_path = rt.config.data_dir.join("bundle.pem");
    crate::files::write_atomic(&bundle_path, rt.ca.roots_pem().as_bytes(), 0o644)?;

    let admin = bind_admin(&rt.config).await?;
    let api = ApiOptions {
        listen: rt.config.server.listen,
        name: "localhost".into(),
        cells_register_own: rt.config.server.cells_register_own.unwrap_or(true),
    };
    let (api_addr, admin_tls) = start_api(&mut rt, &api, None).await?;
    let local_cell_dir = rt.config.data_dir.join("local-cell");
    let local = start_local_cell(&mut rt, &local_cell_dir, api_addr).await?;
    let agent = start_agent(&mut rt, bundle_path.clone(), local).await;
    let fleet = agent.metrics().bundle_acks().lowest();
    let ca_control = start_ca_maintenance(&mut rt, fleet)?;
    let state = AdminState {
        ca: rt.ca.clone(),
        audit: rt.audit.clone(),
        registry: rt.registry.clone(),
        policies: rt.policies.clone(),
        policy_polls: rt.policy_polls.clone(),
        agent: Some(agent.clone()),
        sds_metrics: agent.metrics(),
        ca_control,
        clock: rt.clock.clone(),
        ledger: rt.issuance.ledger().clone(),
        refusals: Default::default(),
        limits: rt.issuance.limits().cloned(),
        max_body: rt.config.admin.max_body,
        log: rt.log.clone(),
        log_keys: rt.log_keys.clone(),
        revocations: rt.revocations.clone(),
        federation: rt.federation.clone(),
    };
    let admin_addr = start_admin(&mut rt, admin, admin_tls, state)?;
    Ok(Dev {
        rt,
        bundle_path,
        api_addr,
        admin_addr,
        cells_register_own: api.cells_register_own,
        local_cell_dir,
    })
}

fn local_cell() -> CellId {
    LOCAL_CELL.parse().expect("a valid cell id")
}

/// This process's own cell, [`LOCAL_CELL`]: a credential enrolled afresh at each start and
/// renewed like any agent's, and a connection to the server API with it.
async fn start_local_cell(
    rt: &mut Runtime,
    dir: &std::path::Path,
    api_addr: SocketAddr,
) -> Result<Arc<CellIdentity>> {
    // Nothing of a previous run's credential (a half-done renewal included) outlives it.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let files = CredentialDir::new(dir);
    files.create_empty()?;
    let cell = Principal::Cell(local_cell());
    let ttl = Ttl::from_secs(LOCAL_CELL_TTL)
        .expect("non-zero")
        .min(rt.config.ca.intermediate_ttl);
    let cred = rt
        .issuance
        .enroll(&cell, ttl, rt.clock.now())
        .await
        .context("cannot enroll the local cell")?;
    files.write(&cred, &rt.ca.roots_pem())?;
    let loaded = files.load(&rt.config.ca)?;
    let host = if api_addr.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        api_addr.ip()
    };
    let remote = RemoteAuthority::connect(RemoteSettings {
        endpoints: vec![format!(
            "https://{}",
            SocketAddr::new(host, api_addr.port())
        )],
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
    let (schedule, clock, signer) = (rt.config.agent.renewal, rt.clock.clone(), rt.ca.signer());
    rt.spawn("local cell credential", move |token| {
        renewing.keep_renewed(schedule, clock, signer, token)
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
    let mut revocations = rt.revocations.watch();
    let jwt = rt.jwt.clone();
    let mut jwt_changes = jwt.watch();
    let federation = rt.federation.clone();
    let mut federation_changes = federation.watch();
    let trust_domain = rt.config.ca.trust_domain.clone();
    let bundle_now = move |ca: &crate::ca::CertificateAuthority, revoked: &Revoked| {
        let published = ca.published();
        Bundle {
            trust_domain: trust_domain.clone(),
            roots_pem: published.roots_pem,
            generation: published.generation,
            crls_pem: revoked.crls_pem.clone(),
            jwt_keys_json: crate::jwt::jwt_keys_json(&jwt.now().published),
            federated: federation.now().to_vec(),
        }
    };
    let serials = |revoked: &Revoked| Arc::new(revoked.serials.iter().cloned().collect());
    let (revoked_tx, revoked_rx) = watch::channel(serials(&revocations.borrow_and_update()));
    let first = bundle_now(&ca, &revocations.borrow());
    let metrics = Arc::new(SdsMetrics::default());
    metrics.bundle_acks().set_current(first.generation);
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(first));
    let settings = AgentSettings {
        cell: Some(local_cell()),
        clock: rt.clock.clone(),
        ..rt.config.agent_settings()
    };
    let agent = Arc::new(
        Workloads::new(
            Arc::new(local.remote().clone()),
            settings,
            bundle_rx,
            metrics.clone(),
            rt.shutdown_token(),
        )
        .following_signer(ca.signer())
        .following_revocations(revoked_rx),
    );
    // Sockets of instances registered before this start exist before "ready" is printed.
    let mut placements = rt.registry.watch(Some(local_cell()));
    agent.apply(placements.next().await).await;
    let updates = futures_util::stream::unfold(placements, |mut watch| async move {
        Some((watch.next().await, watch))
    });
    let follower = agent.clone();
    rt.spawn("agent", move |_| follower.follow(updates));
    let mut allowed = AllowWatch::new(rt.policies.clone(), rt.registry.watch(Some(local_cell())));
    let lists = agent.allow_lists();
    lists.apply(allowed.next().await);
    let updates = futures_util::stream::unfold(allowed, |mut watch| async move {
        Some((watch.next().await, watch))
    });
    rt.spawn("allow lists", move |token| async move {
        lists.follow(updates, token).await
    });
    rt.spawn("trust bundle", move |token| async move {
        let mut changes = ca.watch();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                changed = revocations.changed() => if changed.is_err() { break },
                changed = jwt_changes.changed() => if changed.is_err() { break },
                changed = federation_changes.changed() => if changed.is_err() { break },
            }
            let revoked = revocations.borrow_and_update().clone();
            revoked_tx.send_if_modified(|held| {
                let now = serials(&revoked);
                let changed = *held != now;
                *held = now;
                changed
            });
            let next = bundle_now(&ca, &revoked);
            let held = bundle_tx.borrow().clone();
            if next.roots_pem == held.roots_pem {
                // Only the CRLs, the JWT keys or a federated bundle changed (or nothing): no
                // file to rewrite.
                let same = Bundle {
                    generation: held.generation,
                    ..next.clone()
                } == *held;
                if !same {
                    bundle_tx.send_replace(Arc::new(next));
                }
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
