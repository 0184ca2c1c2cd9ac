//! The server API in this process, and clients of it with credentials of any principal.

use std::net::IpAddr;

use idmint::agent;
use idmint::agent::remote::{RemoteAuthority, RemoteSettings};
use idmint::app::Runtime;
use idmint::ca::{Credential, Init, Principal};
use idmint::proto;
use idmint::server::api_tls::ApiTls;
use idmint::server::grpc::{self, IdentityApi};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{config_in, placement, INSTANCE};

pub struct Pem {
    pub chain: String,
    pub key: String,
}

pub async fn credential(rt: &Runtime, who: Principal) -> Pem {
    let c: Credential = rt
        .issuance
        .enroll(&who, "1h".parse().unwrap(), OffsetDateTime::now_utc())
        .await
        .unwrap();
    Pem {
        chain: c.chain_pem(),
        key: c.key_pem().to_string(),
    }
}

pub async fn connect(port: u16, pem: &Pem, roots: &str) -> Result<RemoteAuthority, String> {
    RemoteAuthority::connect(RemoteSettings {
        endpoints: vec![format!("https://127.0.0.1:{port}")],
        server_name: "localhost",
        cert_chain_pem: &pem.chain,
        key_pem: &pem.key,
        roots_pem: roots,
    })
    .await
    .map_err(|e| format!("{e:?}"))
}

/// A client of the API on `port` with the credential `idmint cell enroll` wrote to `dir`.
pub async fn connect_with_dir(port: u16, dir: &std::path::Path) -> RemoteAuthority {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pem = Pem {
        chain: read("cell.pem"),
        key: read("cell.key"),
    };
    connect(port, &pem, &read("bundle.pem")).await.unwrap()
}

/// A client with `pem` is refused when it connects, or at the latest when it asks for a
/// certificate.
pub async fn assert_gets_nothing(port: u16, pem: &Pem, roots: &str, what: &str) {
    if let Ok(client) = connect(port, pem, roots).await {
        let r = agent::obtain_svid(&client, on_cell(INSTANCE, "cell-1"), None).await;
        assert!(r.is_err(), "{what}");
    }
}

pub fn on_cell(instance: &str, cell: &str) -> idmint::placement::Placement {
    let mut p = placement();
    p.instance_guid = instance.parse().unwrap();
    p.cell_id = cell.parse().unwrap();
    p
}

/// A runtime in `dir` with `overrides`, serving the API on a loopback port with the server's
/// own credential for "localhost" (cells may register their own instances only when
/// `server.cells_register_own` says so).
pub async fn start(
    dir: &std::path::Path,
    overrides: &[(&str, &str)],
) -> (
    Runtime,
    u16,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let rt = Runtime::start(config_in(dir, overrides), Init::CreateIfMissing)
        .await
        .unwrap();
    let tls = ApiTls::enroll(
        rt.issuance.clone(),
        Principal::Server {
            dns: vec!["localhost".into()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
        },
        rt.config.agent.renewal,
        rt.clock.clone(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let api = IdentityApi::new(
        rt.issuance.clone(),
        rt.registry.clone(),
        rt.policies.clone(),
        rt.ca.clone(),
        rt.config.server.cells_register_own.unwrap_or(false),
    );
    let served = tokio::spawn(grpc::serve(listener, api, tls, cancel.clone()));
    (rt, port, cancel, served)
}

/// Stops the API, then the runtime.
pub async fn stop(
    rt: Runtime,
    cancel: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    cancel.cancel();
    served.await.unwrap().unwrap();
    rt.shutdown().await;
}

/// A client of the API on `port` with a fresh credential for `who`.
pub async fn client_as(rt: &Runtime, port: u16, who: Principal) -> RemoteAuthority {
    connect(port, &credential(rt, who).await, &rt.ca.roots_pem())
        .await
        .unwrap()
}

/// Sends `requests` on one `SignStream` call and closes it: the answers that came, and how the
/// stream ended.
pub async fn sign_stream(
    client: &RemoteAuthority,
    requests: Vec<proto::SignStreamRequest>,
) -> (Vec<proto::SignStreamResult>, Result<(), tonic::Status>) {
    let mut stream = match client
        .client()
        .sign_stream(futures_util::stream::iter(requests))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut answers = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(a)) => answers.push(a),
            Ok(None) => return (answers, Ok(())),
            Err(status) => return (answers, Err(status)),
        }
    }
}
