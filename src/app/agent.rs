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
use crate::agent::bundle_report::report_bundle_acks;
use crate::agent::cell_credential::{CellIdentity, CredentialDir};
use crate::agent::remote::{
    is_server_address, ConnectError, RemoteAuthority, RemoteSettings, ServerTurn,
};
use crate::agent::{Bundle, Workloads};
use crate::config::Config;
use crate::ids::CellId;
use crate::placement::PlacementUpdate;
use crate::policy::AllowUpdate;
use crate::proto;
use crate::renewal::RevokedSerials;
use crate::sds::{BundleAcks, SdsMetrics};

/// How soon a placement or bundle stream that could not be opened is tried again (on the
/// next server).
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// How soon a stream that broke is opened again, on the next server: at once, nearly, so a
/// failed server is left within moments.
const AFTER_BREAK: Duration = Duration::from_millis(100);

/// How long shutdown waits for each of the agent's tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where the agent finds its server and its credential.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The servers' API, `https://host:port` each; a host name with several addresses stands
    /// for a server at each.
    pub servers: Vec<String>,
    /// The name the server's certificate carries.
    pub server_name: String,
    /// Where `idmint cell enroll` wrote this cell's credential.
    pub credential_dir: PathBuf,
    /// Wait for the credential to appear instead of stopping when it is not there.
    pub wait_for_credential: bool,
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
    if let Some(bad) = opts.servers.iter().find(|url| !is_server_address(url)) {
        return Err(ConnectError::BadAddress(bad.clone()).into());
    }
    let dir = CredentialDir::new(&opts.credential_dir);
    let first_try = match dir.load(&config.ca) {
        Err(e) if !opts.wait_for_credential => return Err(e.into()),
        loaded => loaded,
    };
    // Health and metrics answer from here on, "not ready" while the credential or the server
    // is away.
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
    let mut stop = stop;
    let credential = match first_try {
        Ok(c) => c,
        Err(e) => match wait_for_credential(&dir, &config, e, stop.as_mut()).await {
            Some(c) => c,
            None => {
                shutdown.cancel();
                let _ = admin_task.await;
                return Ok(None);
            }
        },
    };
    health.credential.store(true, Ordering::Relaxed);
    let cell = credential.cell.clone();
    let remote = match connect(opts, &credential, stop).await {
        Ok(Some(remote)) => remote,
        done => {
            shutdown.cancel();
            let _ = admin_task.await;
            return done.map(|_| None);
        }
    };
    let _ = health.remote.set(remote.clone());
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: config.ca.trust_domain.clone(),
        roots_pem: credential.roots_pem.clone(),
        // This agent's own count, whichever server the bundle came from: its sidecars'
        // acknowledgements and its reports of them are by it.
        generation: 1,
        crls_pem: String::new(),
        jwt_keys_json: String::new(),
        federated: Vec::new(),
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
    // The serials the server's CRLs list: an instance whose certificate is among them gets a
    // new one at once.
    let (revoked_tx, revoked) = watch::channel(Arc::default());
    let settings = config.agent_settings();
    let clock = settings.clock.clone();
    let sds_metrics = Arc::new(SdsMetrics::default());
    let agent = Arc::new(
        Workloads::new(
            Arc::new(remote.clone()),
            settings,
            bundle_rx.clone(),
            sds_metrics.clone(),
            shutdown.clone(),
        )
        .following_signer(signer.clone())
        .following_revocations(revoked),
    );
    let _ = health.workloads.set(agent.clone());
    let tasks = vec![
        admin_task,
        super::spawn_owned(watch_bundle(
            remote.clone(),
            identity.clone(),
            config.clone(),
            (bundle_tx, signer_tx, revoked_tx),
            (health, sds_metrics.bundle_acks().clone()),
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
                .follow(server_placements(remote.clone(), cell.clone())),
        ),
        super::spawn_owned(report_bundle_acks(
            remote.clone(),
            sds_metrics.bundle_acks().clone(),
            bundle_rx,
            config.agent.ack_report_every,
            shutdown.clone(),
        )),
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

/// Waits for a cell credential to appear in `dir` (an operator enrolls the cell after the agent
/// was deployed), trying every [`FOLLOW_EVERY`]; `None` if `stop` resolves first. Why it is not
/// there yet is logged once, and again when the reason changes.
async fn wait_for_credential(
    dir: &CredentialDir,
    config: &Config,
    first: crate::agent::cell_credential::Error,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<crate::agent::cell_credential::CellCredential> {
    let mut said = String::new();
    let mut why = first.to_string();
    loop {
        if why != said {
            tracing::warn!(reason = %why, "waiting for this cell's credential: enroll the cell with `idmint cell enroll CELL_ID --out-dir DIR` on a server and put the files here");
            said = why;
        }
        tokio::select! {
            _ = &mut stop => return None,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        match dir.load(&config.ca) {
            Ok(c) => return Some(c),
            Err(e) => why = e.to_string(),
        }
    }
}

/// Connects to one of the servers with the cell credential, trying them all every
/// [`FOLLOW_EVERY`] until one answers; `None` if `stop` resolves first. An address that is not
/// one is an error at once.
async fn connect(
    opts: &AgentOptions,
    credential: &crate::agent::cell_credential::CellCredential,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<RemoteAuthority>> {
    let mut logged = String::new();
    loop {
        let attempt = async {
            RemoteAuthority::connect(RemoteSettings {
                endpoints: resolve(&opts.servers).await,
                server_name: &opts.server_name,
                cert_chain_pem: &credential.chain_pem,
                key_pem: &credential.key_pem,
                roots_pem: &credential.roots_pem,
            })
            .await
        };
        let outcome = tokio::select! {
            _ = &mut stop => return Ok(None),
            r = attempt => r,
        };
        match outcome {
            Ok(r) => return Ok(Some(r)),
            Err(e @ ConnectError::BadAddress(_)) => return Err(e.into()),
            Err(e) => {
                // Said once per change, not every round: an agent may wait long for a server.
                let said = e.to_string();
                if said != logged {
                    tracing::warn!(error = %said, "serving nothing new until a server answers; retrying every {FOLLOW_EVERY:?}");
                    logged = said;
                }
                tokio::select! {
                    _ = &mut stop => return Ok(None),
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        }
    }
}

/// The servers' endpoints with every host name replaced by the addresses it resolves to, so
/// one DNS name can stand for several servers; a name that does not resolve stays, and fails
/// as it is tried.
async fn resolve(servers: &[String]) -> Vec<String> {
    let mut endpoints = Vec::new();
    for url in servers {
        let host_port = url.parse::<http::Uri>().ok().and_then(|u| {
            let host = u.host()?.trim_matches(['[', ']']).to_string();
            Some((host, u.port_u16()?))
        });
        let Some((host, port)) = host_port.filter(|(h, _)| h.parse::<std::net::IpAddr>().is_err())
        else {
            endpoints.push(url.clone());
            continue;
        };
        match tokio::net::lookup_host(format!("{host}:{port}")).await {
            Ok(addrs) => {
                let before = endpoints.len();
                for addr in addrs {
                    let url = format!("https://{addr}");
                    if !endpoints.contains(&url) {
                        endpoints.push(url);
                    }
                }
                if endpoints.len() == before {
                    endpoints.push(url.clone());
                }
            }
            Err(_) => endpoints.push(url.clone()),
        }
    }
    endpoints
}

/// Keeps the agent's trust bundle the server's, for its sidecars and for its own connection
/// to the server, reconnecting when the stream breaks.
async fn watch_bundle(
    remote: RemoteAuthority,
    identity: Arc<CellIdentity>,
    config: Config,
    (tx, signer, revoked): (
        watch::Sender<Arc<Bundle>>,
        watch::Sender<String>,
        watch::Sender<RevokedSerials>,
    ),
    (health, acks): (Arc<AgentHealth>, Arc<BundleAcks>),
    shutdown: CancellationToken,
) {
    acks.set_current(tx.borrow().generation);
    loop {
        let turn = remote.turn();
        let stream = remote
            .client()
            .watch_bundle(proto::WatchBundleRequest {})
            .await;
        let pause = match stream {
            Err(e) => {
                tracing::warn!(server = %remote.server(), error = %e, "cannot open the server's trust bundle stream");
                FOLLOW_EVERY
            }
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
                    let roots_changed = b.roots_pem != tx.borrow().roots_pem;
                    if roots_changed {
                        if let Err(e) = identity.bundle_changed(&b.roots_pem) {
                            tracing::error!(error = %e, "cannot store the new trust bundle");
                        }
                    }
                    let mut crls_pem = b.crls_pem;
                    if crls_pem != tx.borrow().crls_pem {
                        match crate::ca::crl::revoked_serials(&crls_pem) {
                            Ok(serials) => {
                                revoked.send_replace(Arc::new(serials));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the server's CRLs are unreadable; the ones held stay");
                                crls_pem.clone_from(&tx.borrow().crls_pem);
                            }
                        }
                    }
                    let jwt_changed = b.jwt_keys_json != tx.borrow().jwt_keys_json;
                    let federated =
                        crate::proto::foreign_from_wire(b.federated, &config.ca.trust_domain);
                    let sidecars_see = roots_changed
                        || crls_pem != tx.borrow().crls_pem
                        || federated != tx.borrow().federated;
                    if !sidecars_see && !jwt_changed {
                        continue;
                    }
                    // A new generation only for what sidecars are sent (the federated bundles
                    // are, in ALL): they acknowledge nothing for JWT keys, which only the
                    // Workload API serves.
                    let mut generation = tx.borrow().generation;
                    if sidecars_see {
                        generation += 1;
                        acks.set_current(generation);
                    }
                    tx.send_replace(Arc::new(Bundle {
                        trust_domain: config.ca.trust_domain.clone(),
                        roots_pem: b.roots_pem,
                        generation,
                        crls_pem,
                        jwt_keys_json: b.jwt_keys_json,
                        federated,
                    }));
                }
                AFTER_BREAK
            }
        };
        health.connected.store(false, Ordering::Relaxed);
        tracing::warn!("the current trust bundle stays until the stream is open again");
        remote.fail_over(turn);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The placements of `cell` from the server, as one endless sequence of updates: every
/// (re)connected stream starts with a snapshot that replaces what the agent held, so a lost
/// connection misses nothing. While no server can be reached, nothing arrives and what is
/// served stays as it is.
fn server_placements(
    remote: RemoteAuthority,
    cell: CellId,
) -> impl futures_util::Stream<Item = PlacementUpdate> {
    followed(
        "this cell's placements",
        remote,
        move |remote| {
            let request = proto::WatchPlacementsRequest {
                cell_id: cell.to_string(),
            };
            async move { remote.client().watch_placements(request).await }
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
        remote,
        move |remote| {
            let request = proto::WatchAllowListsRequest {
                cell_id: cell.to_string(),
            };
            async move { remote.client().watch_allow_lists(request).await }
        },
        proto::allow_update_from_wire,
    )
}

/// A server stream whose every (re)opening starts with a snapshot, as one endless sequence.
/// When it fails, breaks, ends or sends what cannot be read, the agent moves to the next
/// server and opens it there: [`AFTER_BREAK`] after a break, [`FOLLOW_EVERY`] after a failed
/// opening.
fn followed<W, T, F, Fut>(
    what: &'static str,
    remote: RemoteAuthority,
    open: F,
    read: fn(W) -> Result<T, String>,
) -> impl futures_util::Stream<Item = T>
where
    F: Fn(RemoteAuthority) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<W>>, tonic::Status>>,
{
    futures_util::stream::unfold(
        (open, None::<(tonic::Streaming<W>, ServerTurn)>),
        move |(open, mut stream)| {
            let remote = remote.clone();
            async move {
                loop {
                    let (s, turn) = match stream.as_mut() {
                        Some((s, turn)) => (s, *turn),
                        None => {
                            let turn = remote.turn();
                            match open(remote.clone()).await {
                                Ok(s) => {
                                    let (s, _) = stream.insert((s.into_inner(), turn));
                                    (s, turn)
                                }
                                Err(e) => {
                                    tracing::warn!(server = %remote.server(), error = %e, "cannot watch {what}; serving what is served");
                                    remote.fail_over(turn);
                                    tokio::time::sleep(FOLLOW_EVERY).await;
                                    continue;
                                }
                            }
                        }
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
                    remote.fail_over(turn);
                    tokio::time::sleep(AFTER_BREAK).await;
                }
            }
        },
    )
}
