//! The server API over mutual TLS, with the agent's remote authority as the client: cells get
//! certificates only for instances placed on them, the orchestrator places instances, and a
//! client without a credential of this trust domain gets nothing.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use common::api::*;
use common::*;
use idmint::agent;
use idmint::agent::remote::RemoteAuthority;
use idmint::api::{Authority, Error};
use idmint::ca::Principal;
use idmint::proto;
use idmint::store::{EntryKind, LedgerFilter};
use time::OffsetDateTime;

const OTHER: &str = "2b2b2b2b-0000-4000-8000-000000000005";

#[tokio::test]
async fn cells_get_only_their_own_instances_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    let roots = rt.ca.roots_pem();

    // The orchestrator places one instance on each cell.
    let orchestrator = client_as(&rt, port, Principal::Orchestrator).await;
    for p in [on_cell(INSTANCE, "cell-1"), on_cell(OTHER, "cell-2")] {
        orchestrator
            .client()
            .register_placement(proto::placement_to_wire(&p))
            .await
            .unwrap();
    }

    let cell1 = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
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
        matches!(&err, agent::Error::Authority(Error::PermissionDenied(m)) if m.to_string().contains("placed on cell cell-2")),
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
    // JWT-SVIDs likewise: for its own instance, and not for another cell's.
    use idmint::api::JwtRequest;
    let jwt = |instance: &str, audience: &[&str]| JwtRequest {
        placement: on_cell(instance, "cell-1"),
        audience: audience.iter().map(|a| a.to_string()).collect(),
    };
    let token = cell1.sign_jwt(jwt(INSTANCE, &["api"])).await.unwrap();
    assert_eq!(token.spiffe_id, expected_spiffe_id());
    let denials = |rt: &idmint::app::Runtime| {
        let audit = rt.audit.clone();
        async move {
            let all = audit.list(&LedgerFilter::default()).await.unwrap();
            all.iter()
                .filter(|e| e.record.kind == EntryKind::Denied)
                .count()
        }
    };
    let before = denials(&rt).await;
    let err = cell1.sign_jwt(jwt(OTHER, &["api"])).await.unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied(m) if m.to_string().contains("placed on cell cell-2")),
        "{err:?}"
    );
    assert_eq!(denials(&rt).await, before + 1, "the JWT denial is recorded");
    let last = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let last = last
        .iter()
        .rfind(|e| e.record.kind == EntryKind::Denied)
        .unwrap();
    assert!(last
        .record
        .reason
        .as_deref()
        .unwrap()
        .starts_with("JWT-SVID: cell cell-1"));
    let count = rt.audit.entry_count().await.unwrap();
    let err = cell1.sign_jwt(jwt(INSTANCE, &[])).await.unwrap_err();
    assert!(matches!(&err, Error::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("audience"), "{err}");
    assert_eq!(
        rt.audit.entry_count().await.unwrap(),
        count,
        "nothing recorded"
    );
    // A cell may not place instances (off by default on a server), and sees only its own.
    let refused = cell1
        .client()
        .register_placement(proto::placement_to_wire(&on_cell(OTHER, "cell-1")))
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
    assert_gets_nothing(
        port,
        &impostor,
        &roots,
        "a foreign cell credential was accepted",
    )
    .await;
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
    assert_gets_nothing(port, &expired, &roots, "an expired credential was accepted").await;
    assert_eq!(rt.audit.entry_count().await.unwrap(), before);

    stop(rt, cancel, served).await;
}

fn first_cert_der(chain_pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .unwrap()
        .1
        .contents
}

fn lifetime_secs(cert_der: &[u8]) -> i64 {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

#[tokio::test]
async fn a_cell_renews_its_credential_with_its_own_key_and_keeps_working_across_a_root_rotation() {
    use idmint::agent::cell_credential::{CellIdentity, CredentialDir};
    use idmint::ca::maintenance::Maintenance;
    use idmint::ca::rotate::Target;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) =
        start(dir.path(), &[("ca.root_activation_max_wait", "1s")]).await;
    rt.registry
        .register(on_cell(INSTANCE, "cell-1"))
        .await
        .unwrap();

    // What `idmint cell enroll` writes.
    let creds = dir.path().join("cell-1");
    std::fs::create_dir(&creds).unwrap();
    let enrolled = credential(&rt, Principal::Cell("cell-1".parse().unwrap())).await;
    std::fs::write(creds.join("cell.pem"), &enrolled.chain).unwrap();
    write_private(&creds.join("cell.key"), &enrolled.key);
    std::fs::write(creds.join("bundle.pem"), rt.ca.roots_pem()).unwrap();
    let files = CredentialDir::new(&creds);
    let loaded = files.load(rt.ca.settings()).unwrap();
    assert_eq!(loaded.cell.to_string(), "cell-1");
    let remote = connect(port, &enrolled, &rt.ca.roots_pem()).await.unwrap();
    let identity = CellIdentity::new(
        files.clone(),
        rt.ca.settings().clone(),
        remote.clone(),
        loaded,
    );

    // Renewal: a new key made here, certified for the same cell, no longer-lived, recorded.
    let serial = identity.renew().await.unwrap();
    let chain = std::fs::read_to_string(creds.join("cell.pem")).unwrap();
    let key = std::fs::read_to_string(creds.join("cell.key")).unwrap();
    assert_ne!(chain, enrolled.chain);
    assert_ne!(key, enrolled.key);
    assert_eq!(
        files.load(rt.ca.settings()).unwrap().serial_hex,
        serial,
        "the stored credential is the one the server issued"
    );
    let mode = std::fs::metadata(creds.join("cell.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let leaf = first_cert_der(&chain);
    assert!(lifetime_secs(&leaf) <= lifetime_secs(&first_cert_der(&enrolled.chain)));
    let roots: Vec<Vec<u8>> = rt.ca.roots().into_iter().map(|r| r.der).collect();
    let (ok, out) = openssl_verify(dir.path(), &roots, &[rt.ca.intermediate().der], &leaf);
    assert!(ok, "{out}");
    let recorded = rt
        .audit
        .list(&LedgerFilter {
            serial: Some(serial.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].record.kind, EntryKind::Issued);
    assert_eq!(recorded[0].record.cell_id.as_deref(), Some("cell-1"));
    assert_eq!(
        recorded[0].record.spiffe_id.as_deref(),
        Some("spiffe://cf.internal/cell/cell-1")
    );
    // The files on disk are a working credential, and the connection uses it now.
    let reread = files.load(rt.ca.settings()).unwrap();
    let fresh = connect(
        port,
        &Pem {
            chain: reread.chain_pem.clone(),
            key: reread.key_pem.to_string(),
        },
        &reread.roots_pem,
    )
    .await
    .unwrap();
    agent::obtain_svid(&fresh, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();
    agent::obtain_svid(&remote, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();

    // A renewal asks for no more than the credential presented, and a bad CSR is a recorded
    // denial that issues nothing.
    let longer = remote
        .client()
        .renew_credential(proto::RenewCredentialRequest {
            csr: agent::new_key_and_csr().unwrap().1,
            ttl_seconds: 100 * 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(lifetime_secs(&longer.cert_der) <= 3600 + 30);
    let before = rt.audit.entry_count().await.unwrap();
    let bad = remote
        .client()
        .renew_credential(proto::RenewCredentialRequest {
            csr: b"not a CSR".to_vec(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let newest = rt
        .audit
        .list(&LedgerFilter::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(rt.audit.entry_count().await.unwrap(), before + 1);
    assert_eq!(newest.record.kind, EntryKind::Denied);
    assert_eq!(newest.record.cell_id.as_deref(), Some("cell-1"));

    // A new root: once it signs, a credential renewed under it is accepted by the running
    // server, whose own certificate moves to the new intermediate too.
    let m = Maintenance::new(
        rt.ca.clone(),
        rt.store().clone(),
        tokio::sync::watch::channel(None).1,
        rt.clock.clone(),
    )
    .unwrap()
    .unwrap();
    let (control, task) = m.start(cancel.clone());
    tokio::spawn(task);
    let old_inter = rt.ca.intermediate();
    let [old_root] = rt.ca.roots().try_into().unwrap();
    control.rotate(Target::Root).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rt.ca.intermediate().fingerprint == old_inter.fingerprint {
        assert!(std::time::Instant::now() < deadline, "never activated");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    identity.bundle_changed(&rt.ca.roots_pem()).unwrap();
    assert_eq!(
        std::fs::read_to_string(creds.join("bundle.pem")).unwrap(),
        rt.ca.roots_pem()
    );
    // The bundle stream says which intermediate signs now; a credential from another one
    // renews under it at once, and one from the same does not.
    let before = std::fs::read_to_string(creds.join("cell.pem")).unwrap();
    let (signer, signer_rx) = tokio::sync::watch::channel(String::new());
    let identity = std::sync::Arc::new(identity);
    let mut keeping = tokio::task::JoinSet::new();
    keeping.spawn(identity.clone().keep_renewed(
        idmint::renewal::Schedule::default(),
        rt.clock.clone(),
        signer_rx,
        cancel.clone(),
    ));
    signer.send_replace(rt.ca.intermediate().fingerprint);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let renewed = loop {
        let now = files.load(rt.ca.settings()).unwrap();
        if now.chain_pem != before {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never renewed under the new intermediate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        renewed.issuer_sha256.as_deref(),
        Some(rt.ca.intermediate().fingerprint.as_str())
    );
    signer.send_modify(|s| s.push_str(""));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(creds.join("cell.pem")).unwrap(),
        renewed.chain_pem,
        "the same intermediate again renews nothing"
    );
    let signer = remote
        .client()
        .watch_bundle(proto::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .signing_ca_sha256;
    assert_eq!(signer, rt.ca.intermediate().fingerprint);
    let new_root = rt
        .ca
        .roots()
        .into_iter()
        .find(|r| r.fingerprint != old_root.fingerprint)
        .unwrap();
    let new_root_pem = idmint::ca::cert_pem(&new_root.der);
    let (ok, out) = openssl_verify(
        dir.path(),
        &[new_root.der],
        &[rt.ca.intermediate().der],
        &first_cert_der(&renewed.chain_pem),
    );
    assert!(ok, "the renewed credential chains to the new root: {out}");
    // Trusting only the new root, a new connection with the renewed credential works: the
    // server trusts the new root for clients and presents a certificate under it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attempt = connect(
            port,
            &Pem {
                chain: renewed.chain_pem.clone(),
                key: renewed.key_pem.to_string(),
            },
            &new_root_pem,
        )
        .await;
        match attempt {
            Ok(c) => {
                agent::obtain_svid(&c, on_cell(INSTANCE, "cell-1"), None)
                    .await
                    .unwrap();
                break;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    agent::obtain_svid(&remote, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();

    stop(rt, cancel, served).await;
}

#[tokio::test]
async fn a_sign_stream_answers_each_request_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    rt.registry
        .register(on_cell(INSTANCE, "cell-1"))
        .await
        .unwrap();
    rt.registry
        .register(on_cell(OTHER, "cell-2"))
        .await
        .unwrap();
    let cell1 = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;

    // Many at once through the agent's interface: each gets its own certificate.
    let signs = (0..40).map(|_| agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None));
    let svids = futures_util::future::join_all(signs).await;
    let serials: std::collections::HashSet<String> = svids
        .into_iter()
        .map(|s| {
            let s = s.unwrap();
            assert_eq!(s.cert.spiffe_id, expected_spiffe_id());
            s.cert.serial_hex
        })
        .collect();
    assert_eq!(serials.len(), 40);

    // A mixed stream: each request answered on its own, under its id.
    let request = |id: u64, instance: &str, csr: Vec<u8>| proto::SignStreamRequest {
        id,
        request: Some(proto::SignRequest {
            instance_guid: instance.to_string(),
            csr,
            ttl_seconds: 0,
        }),
    };
    let csr = || agent::new_key_and_csr().unwrap().1;
    let before = rt.audit.entry_count().await.unwrap();
    let (answers, ended) = sign_stream(
        &cell1,
        vec![
            request(7, INSTANCE, csr()),
            request(3, OTHER, csr()),
            request(9, INSTANCE, b"not a CSR".to_vec()),
            request(1, "not-a-guid", csr()),
            proto::SignStreamRequest {
                id: 4,
                request: None,
            },
            request(8, INSTANCE, csr()),
        ],
    )
    .await;
    assert!(ended.is_ok(), "{ended:?}");
    use proto::sign_stream_result::Outcome;
    let codes: std::collections::BTreeMap<u64, Option<tonic::Code>> = answers
        .iter()
        .map(|a| {
            let code = match a.outcome.as_ref().unwrap() {
                Outcome::Signed(s) => {
                    assert_eq!(s.spiffe_id, expected_spiffe_id());
                    None
                }
                Outcome::Refused(r) => Some(tonic::Code::from(r.code)),
            };
            (a.id, code)
        })
        .collect();
    assert_eq!(answers.len(), 6, "one answer per request");
    let invalid = Some(tonic::Code::InvalidArgument);
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        [
            (1, invalid),
            (3, Some(tonic::Code::PermissionDenied)),
            (4, invalid),
            (7, None),
            (8, None),
            (9, invalid),
        ]
    );
    // Two issuances and two recorded denials (a GUID that is not one, or no request at all,
    // reaches no decision).
    let entries = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let new: Vec<_> = entries
        .iter()
        .filter(|e| e.seq >= before)
        .map(|e| e.record.kind)
        .collect();
    assert_eq!(new.len(), 4, "{new:?}");
    assert_eq!(new.iter().filter(|k| **k == EntryKind::Issued).count(), 2);
    assert_eq!(new.iter().filter(|k| **k == EntryKind::Denied).count(), 2);

    // An oversized message ends the stream with an error once the requests before it are
    // answered; the oversized one is not read, so nothing is recorded for it.
    let before = rt.audit.entry_count().await.unwrap();
    let (answers, ended) = sign_stream(
        &cell1,
        vec![
            request(1, INSTANCE, csr()),
            request(2, INSTANCE, vec![0x30; proto::DEFAULT_MAX_MESSAGE + 1]),
            request(3, INSTANCE, csr()),
        ],
    )
    .await;
    let ended = ended.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].id, 1);
    assert!(matches!(answers[0].outcome, Some(Outcome::Signed(_))));
    assert_eq!(rt.audit.entry_count().await.unwrap(), before + 1);

    stop(rt, cancel, served).await;
}

/// The next update of a placement stream, within a few seconds.
async fn next_update(
    stream: &mut tonic::Streaming<proto::PlacementUpdate>,
) -> idmint::placement::PlacementUpdate {
    let update = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("an update in time")
        .unwrap()
        .expect("the stream is open");
    proto::placement_update_from_wire(update).unwrap()
}

/// The next update of an allow-list stream, within a few seconds.
async fn next_allow(
    stream: &mut tonic::Streaming<proto::AllowListUpdate>,
) -> idmint::policy::AllowUpdate {
    let update = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("an update in time")
        .unwrap()
        .expect("the stream is open");
    proto::allow_update_from_wire(update).unwrap()
}

async fn place(orchestrator: &RemoteAuthority, p: idmint::placement::Placement) {
    orchestrator
        .client()
        .register_placement(proto::placement_to_wire(&p))
        .await
        .unwrap();
}

#[tokio::test]
async fn watch_placements_sends_a_cells_own_snapshot_then_each_change_and_ends_when_the_server_stops(
) {
    use idmint::placement::PlacementUpdate;
    const THIRD: &str = "3c3c3c3c-0000-4000-8000-000000000006";
    const FOURTH: &str = "4d4d4d4d-0000-4000-8000-000000000007";
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    let orchestrator = client_as(&rt, port, Principal::Orchestrator).await;
    place(&orchestrator, on_cell(INSTANCE, "cell-1")).await;
    place(&orchestrator, on_cell(OTHER, "cell-2")).await;

    // A cell naming another cell still gets only its own.
    let cell1 = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let mut stream = cell1
        .client()
        .watch_placements(proto::WatchPlacementsRequest {
            cell_id: "cell-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_update(&mut stream).await,
        PlacementUpdate::Snapshot(vec![on_cell(INSTANCE, "cell-1")])
    );
    // Changes on other cells are not sent; changes on this one are, in order.
    place(&orchestrator, on_cell(THIRD, "cell-2")).await;
    place(&orchestrator, on_cell(FOURTH, "cell-1")).await;
    assert_eq!(
        next_update(&mut stream).await,
        PlacementUpdate::Registered(on_cell(FOURTH, "cell-1"))
    );
    orchestrator
        .client()
        .deregister_placement(proto::DeregisterRequest {
            instance_guid: INSTANCE.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_update(&mut stream).await,
        PlacementUpdate::Deregistered(on_cell(INSTANCE, "cell-1"))
    );

    // The orchestrator may watch every cell.
    let mut all = orchestrator
        .client()
        .watch_placements(proto::WatchPlacementsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let PlacementUpdate::Snapshot(everything) = next_update(&mut all).await else {
        panic!("a snapshot first")
    };
    let mut guids: Vec<String> = everything
        .iter()
        .map(|p| p.instance_guid.to_string())
        .collect();
    guids.sort();
    assert_eq!(guids, [OTHER, THIRD, FOURTH]);

    // Stopping the server ends the streams rather than waiting for the watchers.
    stop(rt, cancel, served).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
}

#[tokio::test]
async fn watch_allow_lists_sends_a_cells_own_apps_lists_then_each_change_that_concerns_them() {
    use idmint::policy::{AllowList, AllowUpdate, Mode, Policy, PortRange, Protocol, Scope};
    const APP_B: &str = "b0b0b0b0-0000-4000-8000-000000000009";
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[("policy.default_mode", "policy")]).await;
    let orchestrator = client_as(&rt, port, Principal::Orchestrator).await;
    place(&orchestrator, on_cell(INSTANCE, "cell-1")).await;
    let mut b = on_cell(OTHER, "cell-2");
    b.app_guid = APP_B.parse().unwrap();
    place(&orchestrator, b).await;
    let policy = |source: &str, destination: &str| Policy {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
        protocol: Protocol::Tcp,
        ports: PortRange::new(8080, 8080).unwrap(),
    };
    // A cell naming another cell still gets only its own apps' lists.
    let cell1 = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let mut stream = cell1
        .client()
        .watch_allow_lists(proto::WatchAllowListsRequest {
            cell_id: "cell-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let nobody = AllowList {
        mode: Mode::Policy,
        sources: Default::default(),
    };
    assert_eq!(
        next_allow(&mut stream).await,
        AllowUpdate::Snapshot(vec![(APP.parse().unwrap(), nobody)])
    );
    // B→A concerns cell-1; A→B and B's mode only cell-2, so cell-1 hears of the first alone.
    rt.policies
        .add(&[policy(APP, APP_B)].into(), "a test")
        .await
        .unwrap();
    rt.policies
        .set_mode(
            Scope::App(APP_B.parse().unwrap()),
            Some(Mode::TrustDomain),
            "a test",
        )
        .await
        .unwrap();
    rt.policies
        .add(&[policy(APP_B, APP)].into(), "a test")
        .await
        .unwrap();
    let b_id = format!("spiffe://cf.internal/org/{ORG}/space/{SPACE}/app/{APP_B}");
    assert_eq!(
        next_allow(&mut stream).await,
        AllowUpdate::Set(
            APP.parse().unwrap(),
            AllowList {
                mode: Mode::Policy,
                sources: [b_id].into(),
            }
        )
    );
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "nothing else for cell-1: {quiet:?}");

    // Stopping the server ends the stream rather than waiting for the watcher.
    stop(rt, cancel, served).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_and_the_server_recovers_when_stalled_clients_go() {
    use idmint::server::api_tls::MAX_HANDSHAKES;
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    let pem = credential(&rt, Principal::Orchestrator).await;
    let roots = rt.ca.roots_pem();

    // Connections that never say a word hold every handshake slot.
    let mut stalled = Vec::new();
    for _ in 0..MAX_HANDSHAKES {
        stalled.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waiting = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        connect(port, &pem, &roots),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a handshake started beyond the cap of {MAX_HANDSHAKES}"
    );

    // They go; a client is served again at once.
    drop(stalled);
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connect(port, &pem, &roots),
    )
    .await
    .expect("served once the stalled connections closed")
    .unwrap();
    client
        .client()
        .list_placements(proto::ListPlacementsRequest::default())
        .await
        .unwrap();
    stop(rt, cancel, served).await;
}
