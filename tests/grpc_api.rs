//! The server API over mutual TLS, with the agent's remote authority as the client: cells get
//! certificates only for instances placed on them, the orchestrator places instances, and a
//! client without a credential of this trust domain gets nothing.

mod common;

use std::net::IpAddr;

use common::*;
use idmint::agent;
use idmint::agent::remote::{RemoteAuthority, RemoteSettings};
use idmint::api::{Authority, Error};
use idmint::app::Runtime;
use idmint::ca::{Credential, Init, Principal};
use idmint::proto;
use idmint::server::grpc::{self, IdentityApi};
use idmint::store::{EntryKind, LedgerFilter};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

struct Pem {
    chain: String,
    key: String,
}

async fn credential(rt: &Runtime, who: Principal) -> Pem {
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

async fn connect(port: u16, pem: &Pem, roots: &str) -> Result<RemoteAuthority, String> {
    RemoteAuthority::connect(RemoteSettings {
        endpoint: format!("https://127.0.0.1:{port}"),
        server_name: "localhost",
        cert_chain_pem: &pem.chain,
        key_pem: &pem.key,
        roots_pem: roots,
    })
    .await
    .map_err(|e| format!("{e:?}"))
}

fn on_cell(instance: &str, cell: &str) -> idmint::placement::Placement {
    let mut p = placement();
    p.instance_guid = instance.parse().unwrap();
    p.cell_id = cell.parse().unwrap();
    p
}

const OTHER: &str = "2b2b2b2b-0000-4000-8000-000000000005";

#[tokio::test]
async fn cells_get_only_their_own_instances_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(config_in(dir.path(), &[]), Init::CreateIfMissing)
        .await
        .unwrap();
    let roots = rt.ca.roots_pem();
    let server = credential(
        &rt,
        Principal::Server {
            dns: vec!["localhost".into()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
        },
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let api = IdentityApi::new(
        rt.issuance.clone(),
        rt.registry.clone(),
        rt.ca.clone(),
        false,
    );
    let served = tokio::spawn(grpc::serve(
        listener,
        api,
        grpc::tls_config(&server.chain, &server.key, &roots),
        cancel.clone(),
    ));

    // The orchestrator places one instance on each cell.
    let orchestrator = connect(
        port,
        &credential(&rt, Principal::Orchestrator).await,
        &roots,
    )
    .await
    .unwrap();
    for p in [on_cell(INSTANCE, "cell-1"), on_cell(OTHER, "cell-2")] {
        orchestrator
            .client()
            .register_placement(grpc::placement_to(&p))
            .await
            .unwrap();
    }

    let cell1 = connect(
        port,
        &credential(&rt, Principal::Cell("cell-1".parse().unwrap())).await,
        &roots,
    )
    .await
    .unwrap();
    // Its own instance: issued as registered, verifiable by openssl.
    let svid = agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();
    assert_eq!(svid.cert.spiffe_id, expected_spiffe_id());
    let root_ders: Vec<Vec<u8>> = rt.ca.roots().into_iter().map(|r| r.der).collect();
    let (ok, out) = openssl_verify(
        dir.path(),
        &root_ders,
        &svid.cert.chain_der,
        &svid.cert.cert_der,
    );
    assert!(ok, "{out}");
    // Another cell's instance: refused, and the refusal is in the ledger.
    let err = agent::obtain_svid(&cell1, on_cell(OTHER, "cell-1"), None)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, agent::Error::Authority(Error::PermissionDenied(m)) if m.contains("placed on cell cell-2")),
        "{err:?}"
    );
    let denial = rt
        .audit
        .list(&LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .rfind(|e| e.record.kind == EntryKind::Denied)
        .expect("a denial");
    assert_eq!(denial.record.cell_id.as_deref(), Some("cell-1"));
    assert_eq!(denial.record.instance_guid.as_deref(), Some(OTHER));
    // A cell may not place instances (off by default on a server), and sees only its own.
    let refused = cell1
        .client()
        .register_placement(grpc::placement_to(&on_cell(OTHER, "cell-1")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let listed = cell1
        .client()
        .list_placements(proto::ListPlacementsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .placements;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance_guid, INSTANCE);
    assert_eq!(cell1.trust_bundle().await.unwrap(), root_ders);

    // No credential of this trust domain: no certificate, nothing recorded.
    let before = rt.audit.entry_count().await.unwrap();
    let foreign = idmint::ca::dev_credentials(
        &rt.config.ca,
        &["cell-1".parse().unwrap()],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (_, cell_pem) = &foreign.cells[0];
    let impostor = Pem {
        chain: cell_pem.cert_pem.clone() + &foreign.intermediate.cert_pem,
        key: cell_pem.key_pem.to_string(),
    };
    match connect(port, &impostor, &roots).await {
        Err(_) => {}
        Ok(client) => {
            let r = agent::obtain_svid(&client, on_cell(INSTANCE, "cell-1"), None).await;
            assert!(r.is_err(), "a foreign cell credential was accepted");
        }
    }
    assert_eq!(rt.audit.entry_count().await.unwrap(), before);

    // No client certificate at all.
    let bare = tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&roots))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = bare {
        let r = proto::identity_client::IdentityClient::new(channel)
            .list_placements(proto::ListPlacementsRequest::default())
            .await;
        // Refused by the TLS layer, before the API could say "unauthenticated".
        let status = r.expect_err("served without a client certificate");
        assert_ne!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    // An expired credential of this trust domain.
    let expired = rt
        .issuance
        .enroll(
            &Principal::Cell("cell-1".parse().unwrap()),
            "1s".parse().unwrap(),
            OffsetDateTime::now_utc() - time::Duration::seconds(5),
        )
        .await
        .unwrap();
    let expired = Pem {
        chain: expired.chain_pem(),
        key: expired.key_pem().to_string(),
    };
    let before = rt.audit.entry_count().await.unwrap();
    match connect(port, &expired, &roots).await {
        Err(_) => {}
        Ok(client) => {
            let r = agent::obtain_svid(&client, on_cell(INSTANCE, "cell-1"), None).await;
            assert!(r.is_err(), "an expired credential was accepted");
        }
    }
    assert_eq!(rt.audit.entry_count().await.unwrap(), before);

    cancel.cancel();
    served.await.unwrap().unwrap();
    rt.shutdown().await;
}
