//! `idmint agent`: runs on a Diego cell. Makes each instance's key here, has the server
//! certify it over mutual TLS with the cell's credential, renews it, serves it to the
//! instance's sidecar over SDS and writes Diego's instance files. Follows the placements the
//! server has for this cell, and keeps serving what it has while the server is unreachable.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::agent::AgentHealth;
use crate::agent::cell_credential::{CellIdentity, CredentialDir};
use crate::agent::remote::{RemoteAuthority, RemoteSettings};
use crate::agent::{Bundle, Workloads};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::PlacementUpdate;
use crate::policy::AllowUpdate;
use crate::proto;
use crate::sds::SdsMetrics;

/// How soon a lost placement or bundle stream is opened again.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// How long shutdown waits for each of the agent's tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where the agent finds its server and its credential.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The server API, `https://host:port`.
    pub server: String,
    /// The name the server's certificate carries.
    pub server_name: String,
    /// Where `idmint cell enroll` wrote this cell's credential.
    pub credential_dir: PathBuf,
}

/// A running agent.
pub struct Agent {
    /// The cell its credential names.
    pub cell: CellId,
    /// When its current cell credential expires.
    pub credential_not_after: OffsetDateTime,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Stops every task, waiting a bounded time for each.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
    }
}

/// Loads the cell credential, connects to the server (retrying until it answers, or until
/// `stop` resolves: then `None`), and starts serving the cell's instances.
pub async fn start(
    config: Config,
    opts: &AgentOptions,
    stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Agent>> {
    let dir = CredentialDir::new(&opts.credential_dir);
    let credential = dir.load(&config.ca)?;
    let cell = credential.cell.clone();
    // Health and metrics answer from here on, "not ready" while the server is away.
    let listen = config.admin.listen;
    let admin = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} for the agent's admin HTTP (set admin.listen)")
        })?;
    let health = Arc::new(AgentHealth::default());
    let shutdown = CancellationToken::new();
    let admin_task = super::spawn_owned(crate::admin::agent::serve(
        admin,
        health.clone(),
        crate::clock::Clock::system(),
        shutdown.clone(),
    ));
    let Some(remote) = connect(opts, &credential, stop).await else {
        shutdown.cancel();
        let _ = admin_task.await;
        return Ok(None);
    };
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: config.ca.trust_domain.clone(),
        roots_pem: credential.roots_pem.clone(),
        generation: 0,
    }));
    let identity = Arc::new(CellIdentity::new(
        dir,
        config.ca.clone(),
        remote.clone(),
        credential,
    ));
    // The intermediate the server signs with, as its trust bundle stream says: "" until the
    // stream's first message.
    let (signer_tx, signer) = watch::channel(String::new());
    let settings = config.agent_settings();
    let clock = settings.clock.clone();
    let agent = Arc::new(
        Workloads::new(
            Arc::new(remote.clone()),
            settings,
            bundle_rx,
            Arc::new(SdsMetrics::default()),
            shutdown.clone(),
        )
        .following_signer(signer.clone()),
    );
    let _ = health.workloads.set(agent.clone());
    let tasks = vec![
        admin_task,
        super::spawn_owned(watch_bundle(
            remote.clone(),
            identity.clone(),
            config.clone(),
            (bundle_tx, signer_tx),
            health,
            shutdown.clone(),
        )),
        super::spawn_owned({
            let (lists, stop) = (agent.allow_lists(), shutdown.clone());
            let updates = server_allow_lists(remote.clone(), cell.clone());
            async move { lists.follow(updates, stop).await }
        }),
        super::spawn_owned(
            agent
                .clone()
                .follow(server_placements(remote, cell.clone())),
        ),
        super::spawn_owned(identity.clone().keep_renewed(
            config.agent.renewal,
            clock,
            signer,
            shutdown.clone(),
        )),
    ];
    Ok(Some(Agent {
        cell,
        credential_not_after: identity.not_after(),
        shutdown,
        tasks,
    }))
}

/// Connects to the server with the cell credential, retrying every [`FOLLOW_EVERY`] until it
/// answers; `None` if `stop` resolves first.
async fn connect(
    opts: &AgentOptions,
    credential: &crate::agent::cell_credential::CellCredential,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<RemoteAuthority> {
    loop {
        let attempt = RemoteAuthority::connect(RemoteSettings {
            endpoint: opts.server.clone(),
            server_name: &opts.server_name,
            cert_chain_pem: &credential.chain_pem,
            key_pem: &credential.key_pem,
            roots_pem: &credential.roots_pem,
        });
        let outcome = tokio::select! {
            _ = &mut stop => return None,
            r = attempt => r,
        };
        match outcome {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::warn!(server = %opts.server, error = ?e, "cannot reach the server; retrying");
                tokio::select! {
                    _ = &mut stop => return None,
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        }
    }
}

/// Keeps the agent's trust bundle the server's, for its sidecars and for its own connection
/// to the server, reconnecting when the stream breaks.
async fn watch_bundle(
    remote: RemoteAuthority,
    identity: Arc<CellIdentity>,
    config: Config,
    (tx, signer): (watch::Sender<Arc<Bundle>>, watch::Sender<String>),
    health: Arc<AgentHealth>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = remote
            .client()
            .watch_bundle(proto::WatchBundleRequest {})
            .await;
        match stream {
            Err(e) => tracing::warn!(error = %e, "cannot open the server's trust bundle stream"),
            Ok(stream) => {
                let mut stream = stream.into_inner();
                health.connected.store(true, Ordering::Relaxed);
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = stream.message() => m,
                    };
                    let b = match msg {
                        Ok(Some(b)) => {
                            health.bundle.store(true, Ordering::Relaxed);
                            b
                        }
                        Ok(None) => {
                            tracing::warn!("the server ended the trust bundle stream");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the trust bundle stream broke");
                            break;
                        }
                    };
                    signer.send_if_modified(|s| {
                        let changed = *s != b.signing_ca_sha256;
                        s.clone_from(&b.signing_ca_sha256);
                        changed
                    });
                    if b.roots_pem != tx.borrow().roots_pem {
                        if let Err(e) = identity.bundle_changed(&b.roots_pem) {
                            tracing::error!(error = %e, "cannot store the new trust bundle");
                        }
                        tx.send_replace(Arc::new(Bundle {
                            trust_domain: config.ca.trust_domain.clone(),
                            roots_pem: b.roots_pem,
                            generation: b.generation,
                        }));
                    }
                }
            }
        }
        health.connected.store(false, Ordering::Relaxed);
        tracing::warn!("the current trust bundle stays until the stream is open again");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// The placements of `cell` from the server, as one endless sequence of updates: every
/// (re)connected stream starts with a snapshot that replaces what the agent held, so a lost
/// connection misses nothing. While the server cannot be reached, nothing arrives and what is
/// served stays as it is.
fn server_placements(
    remote: RemoteAuthority,
    cell: CellId,
) -> impl futures_util::Stream<Item = PlacementUpdate> {
    followed(
        "this cell's placements",
        move || {
            let (remote, cell_id) = (remote.clone(), cell.to_string());
            async move {
                let request = proto::WatchPlacementsRequest { cell_id };
                remote.client().watch_placements(request).await
            }
        },
        proto::placement_update_from_wire,
    )
}

/// The allow lists of the apps on `cell` from the server, followed as the placements are.
fn server_allow_lists(
    remote: RemoteAuthority,
    cell: CellId,
) -> impl futures_util::Stream<Item = AllowUpdate> {
    followed(
        "this cell's allow lists",
        move || {
            let (remote, cell_id) = (remote.clone(), cell.to_string());
            async move {
                let request = proto::WatchAllowListsRequest { cell_id };
                remote.client().watch_allow_lists(request).await
            }
        },
        proto::allow_update_from_wire,
    )
}

/// A server stream whose every (re)opening starts with a snapshot, as one endless sequence:
/// opened again `FOLLOW_EVERY` after it fails, breaks, ends or sends what cannot be read.
fn followed<W, T, F, Fut>(
    what: &'static str,
    open: F,
    read: fn(W) -> Result<T, String>,
) -> impl futures_util::Stream<Item = T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<W>>, tonic::Status>>,
{
    futures_util::stream::unfold(
        (open, None::<tonic::Streaming<W>>),
        move |(open, mut stream)| async move {
            loop {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => match open().await {
                        Ok(s) => stream.insert(s.into_inner()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch {what}; serving what is served");
                            tokio::time::sleep(FOLLOW_EVERY).await;
                            continue;
                        }
                    },
                };
                let failure = match s.message().await {
                    Ok(Some(update)) => match read(update) {
                        Ok(update) => return Some((update, (open, stream))),
                        Err(e) => format!("an unreadable update: {e}"),
                    },
                    Ok(None) => "the server ended the stream".to_string(),
                    Err(e) => format!("the stream broke: {e}"),
                };
                tracing::warn!(%failure, "following {what} again from a snapshot");
                stream = None;
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        },
    )
}
