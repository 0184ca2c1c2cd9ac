//! Limits on what one misbehaving client can cost: each is driven past its bound, and the
//! process stays healthy, honest clients are still served, and what the abuse left behind (ledger
//! records, memory) stays bounded.

// Tests wait on real processes with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::api::*;
use common::dev::Idmint;
use common::*;
use idmint::agent;
use idmint::ca::Principal;
use idmint::proto;
use tokio_stream::wrappers::ReceiverStream;

/// A GUID no instance has, numbered.
fn stranger(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-00000000abcd")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_flood_from_one_cell_adds_a_bounded_number_of_records() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    rt.registry
        .register(on_cell(INSTANCE, "cell-2"))
        .await
        .unwrap();
    let abuser = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let honest = client_as(&rt, port, Principal::Cell("cell-2".parse().unwrap())).await;
    let before = rt.audit.entry_count().await.unwrap();

    // 100,000 requests for instances that are not the cell's, 10 streams at a time.
    let csr = agent::new_key_and_csr().unwrap().1;
    const TOTAL: u32 = 100_000;
    const PER_STREAM: u32 = 2_000;
    let streams = (0..TOTAL / PER_STREAM).map(|s| {
        let requests: Vec<_> = (0..PER_STREAM)
            .map(|i| proto::SignStreamRequest {
                id: u64::from(i),
                request: Some(proto::SignRequest {
                    instance_guid: stranger(s * PER_STREAM + i),
                    csr: csr.clone(),
                    ttl_seconds: 0,
                }),
            })
            .collect();
        let abuser = &abuser;
        async move { sign_stream(abuser, requests).await }
    });
    use futures_util::StreamExt;
    let flood_began = std::time::Instant::now();
    let answered: Vec<_> = futures_util::stream::iter(streams)
        .buffer_unordered(10)
        .collect()
        .await;
    let (mut denied, mut throttled) = (0, 0);
    for (answers, ended) in answered {
        ended.unwrap();
        for a in answers {
            let Some(proto::sign_stream_result::Outcome::Refused(r)) = a.outcome else {
                panic!("a flood request was signed: {a:?}");
            };
            match tonic::Code::from(r.code) {
                tonic::Code::PermissionDenied => denied += 1,
                tonic::Code::ResourceExhausted => throttled += 1,
                other => panic!("unexpected {other:?}: {}", r.message),
            }
        }
    }
    assert_eq!(denied + throttled, TOTAL);
    assert!(throttled > 0, "the sign rate held none back");

    // The honest cell is served as before, and the abuser's flood is summarised once.
    agent::obtain_svid(&honest, on_cell(INSTANCE, "cell-2"), None)
        .await
        .expect("an honest cell still gets its certificate");
    rt.issuance.record_held_back(true).await;
    let entries = rt
        .audit
        .list(&idmint::store::LedgerFilter::default())
        .await
        .unwrap();
    let added: Vec<_> = entries
        .iter()
        .filter(|e| e.seq >= before)
        .filter(|e| e.record.cell_id.as_deref() == Some("cell-1"))
        .collect();
    // At most `server.denial_records` (60 a minute, so 60 and one a second more while it
    // lasted) one by one, and a summary a minute.
    let seconds = flood_began.elapsed().as_secs() as usize + 1;
    let bound = 60 + seconds + seconds / 60 + 1;
    assert!(
        added.len() <= bound,
        "{} records for one cell's flood of {TOTAL} in {seconds} s",
        added.len()
    );
    let summary = added.last().unwrap().record.reason.clone().unwrap();
    assert!(
        summary.contains(&format!("{throttled} sign requests refused over its rate")),
        "{summary}"
    );
    assert!(
        summary.contains("denials not recorded one by one"),
        "{summary}"
    );
    let mut metrics = String::new();
    rt.issuance.limits().unwrap().render(&mut metrics);
    assert!(
        metrics.contains(&format!(
            "idmint_limit_hits_total{{limit=\"cell_sign_rate\"}} {throttled}"
        )),
        "{metrics}"
    );
    stop(rt, cancel, served).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_past_the_limit_wait_and_the_server_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[("server.max_handshakes", "4")]).await;
    rt.registry
        .register(on_cell(INSTANCE, "cell-1"))
        .await
        .unwrap();
    // Six clients that connect and never say a word hold every handshake slot.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut metrics = String::new();
    rt.issuance.limits().unwrap().render(&mut metrics);
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"server_handshakes\"} 1"),
        "{metrics}"
    );
    // A cell connecting now waits for them to time out, and is then served.
    let cell = tokio::time::timeout(
        Duration::from_secs(40),
        client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())),
    )
    .await
    .expect("the cell gets through once the silent ones are dropped");
    agent::obtain_svid(&cell, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();
    drop(silent);
    stop(rt, cancel, served).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_registers_at_most_its_share_of_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(
        dir.path(),
        &[
            ("server.cells_register_own", "true"),
            ("server.cell_instances", "3"),
        ],
    )
    .await;
    let cell = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let place = |n: u32| {
        let mut p = on_cell(&stranger(n), "cell-1");
        p.app_guid = stranger(n).parse().unwrap();
        proto::placement_to_wire(&p)
    };
    for n in 0..3 {
        cell.client().register_placement(place(n)).await.unwrap();
    }
    let refused = cell
        .client()
        .register_placement(place(3))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("server.cell_instances"),
        "{refused:?}"
    );
    // Registering one it has again is no new instance, and the orchestrator is not held to it.
    cell.client().register_placement(place(0)).await.unwrap();
    let orchestrator = client_as(&rt, port, Principal::Orchestrator).await;
    orchestrator
        .client()
        .register_placement(place(3))
        .await
        .unwrap();
    assert_eq!(rt.registry.count_on(&"cell-1".parse().unwrap()), 4);
    stop(rt, cancel, served).await;
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_opening_streams_without_end_gets_a_bounded_number() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(
        tmp.path(),
        &["agent.max_streams_per_socket=8", "agent.max_streams=12"],
    );
    let (a, b) = (idmint.register(1), idmint.register(2));
    let pid = idmint.process.0.id();
    let rss_before = rss_kib(pid);

    let open = |client: &mut idmint::sds::client::SdsClient| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let first = DiscoveryRequest {
            resource_names: vec!["default".into()],
            type_url: idmint::sds::SECRET_TYPE.into(),
            ..Default::default()
        };
        tx.try_send(first).unwrap();
        let mut client = client.clone();
        async move {
            let stream = client.stream_secrets(ReceiverStream::new(rx)).await;
            (tx, stream)
        }
    };
    let mut client_a = idmint::sds::client::connect(std::path::Path::new(&a))
        .await
        .unwrap();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..500 {
        match open(&mut client_a).await {
            (tx, Ok(stream)) => held.push((tx, stream.into_inner())),
            (_, Err(status)) => refused.push(status),
        }
    }
    assert_eq!(held.len(), 8, "streams held on one socket");
    assert_eq!(refused.len(), 492);
    assert!(refused
        .iter()
        .all(|s| s.code() == tonic::Code::ResourceExhausted
            && s.message().contains("agent.max_streams_per_socket")));
    // The held ones are real streams: each gets its certificate.
    for (_, stream) in &mut held {
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.resources.len(), 1);
    }
    let rss_during = rss_kib(pid);

    // Another instance is still served, up to what the agent as a whole holds.
    let mut client_b = idmint::sds::client::connect(std::path::Path::new(&b))
        .await
        .unwrap();
    let mut on_b = Vec::new();
    for _ in 0..4 {
        let (tx, stream) = open(&mut client_b).await;
        on_b.push((tx, stream.expect("room left on the agent")));
    }
    let (_, over) = open(&mut client_b).await;
    let over = over.unwrap_err();
    assert!(over.message().contains("agent.max_streams"), "{over:?}");
    let metrics = http_get(idmint.admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"sds_streams_per_socket\"} 492"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"sds_streams\"} 1"),
        "{metrics}"
    );

    // Once the abuser's streams are gone, its slots are free again, and memory is back.
    drop(held);
    drop(client_a);
    let mut again = idmint::sds::client::connect(std::path::Path::new(&a))
        .await
        .unwrap();
    let mut reopened = None;
    for _ in 0..50 {
        if let (tx, Ok(s)) = open(&mut again).await {
            reopened = Some((tx, s));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a freed slot is taken again");
    let rss_after = rss_kib(pid);
    let grew = |kib: u64| kib.saturating_sub(rss_before);
    assert!(
        grew(rss_during) < 32 * 1024 && grew(rss_after) < 32 * 1024,
        "resident memory {rss_before} KiB before, {rss_during} during, {rss_after} after"
    );
}

#[test]
fn an_admin_request_body_over_the_limit_is_refused_unread() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(tmp.path(), &["admin.max_body=1024"]);
    let mut s = std::os::unix::net::UnixStream::connect(idmint.admin_socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Only the head: the limit holds before any of the body is read.
    write!(
        s,
        "POST /v1/policies HTTP/1.1\r\nHost: t\r\nContent-Length: 9437184\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("admin.max_body"), "{answer}");
    // A whole body over the limit is refused the same way.
    let big = format!(r#"{{"policies": [{}]}}"#, vec!["{}"; 600].join(","));
    let (status, _) = socket_request(&idmint.admin_socket(), "POST", "/v1/policies", &big).unwrap();
    assert_eq!(status, 413);
    let metrics = http_get(idmint.admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("idmint_admin_refusals_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_api_message_over_the_limit_is_refused_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[("server.max_message", "2048")]).await;
    rt.registry
        .register(on_cell(INSTANCE, "cell-1"))
        .await
        .unwrap();
    let cell = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let sign = |csr: Vec<u8>| proto::SignRequest {
        instance_guid: INSTANCE.into(),
        csr,
        ttl_seconds: 0,
    };
    let refused_for_size = |status: &tonic::Status| {
        status.code() == tonic::Code::OutOfRange && status.message().contains("server.max_message")
    };

    // Just under the limit is read (and refused for what it says); just over is not read.
    let under = cell
        .client()
        .sign(sign(vec![0x30; 2000]))
        .await
        .unwrap_err();
    assert_eq!(under.code(), tonic::Code::InvalidArgument, "{under:?}");
    let over = cell
        .client()
        .sign(sign(vec![0x30; 2100]))
        .await
        .unwrap_err();
    assert!(refused_for_size(&over), "{over:?}");

    // On a stream, what came before the oversized message is answered; then the stream ends.
    let csr = agent::new_key_and_csr().unwrap().1;
    let numbered = |id, csr| proto::SignStreamRequest {
        id,
        request: Some(sign(csr)),
    };
    let (answers, ended) = sign_stream(
        &cell,
        vec![numbered(1, csr.clone()), numbered(2, vec![0x30; 1 << 20])],
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(matches!(
        answers[0].outcome,
        Some(proto::sign_stream_result::Outcome::Signed(_))
    ));
    let ended = ended.unwrap_err();
    assert!(refused_for_size(&ended), "{ended:?}");

    let mut metrics = String::new();
    rt.issuance.limits().unwrap().render(&mut metrics);
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"server_message\"} 2"),
        "{metrics}"
    );
    // The same connection still serves.
    agent::obtain_svid(&cell, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();
    stop(rt, cancel, served).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sds_message_over_the_limit_is_refused_counted_and_named() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
    let tmp = tempfile::tempdir().unwrap();
    let idmint = Idmint::start_with(tmp.path(), &["agent.max_message=4096"]);
    let socket = idmint.register(1);
    let mut client = idmint::sds::client::connect(std::path::Path::new(&socket))
        .await
        .unwrap();
    let node = |id_len: usize| {
        Some(Node {
            id: "n".repeat(id_len),
            ..Default::default()
        })
    };
    let request = |id_len| DiscoveryRequest {
        node: node(id_len),
        resource_names: vec!["default".into()],
        type_url: idmint::sds::SECRET_TYPE.into(),
        ..Default::default()
    };
    let refused_for_size = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("agent.max_message"), "{status:?}");
    };

    // Each protocol: a first request over the limit ends the call.
    let first = |r| futures_util::stream::iter(vec![r]);
    match client.stream_secrets(first(request(8000))).await {
        Ok(stream) => refused_for_size(stream.into_inner().message().await.unwrap_err()),
        Err(status) => refused_for_size(status),
    }
    let delta = DeltaDiscoveryRequest {
        node: node(8000),
        resource_names_subscribe: vec!["default".into()],
        type_url: idmint::sds::SECRET_TYPE.into(),
        ..Default::default()
    };
    match client
        .delta_secrets(futures_util::stream::iter(vec![delta]))
        .await
    {
        Ok(stream) => refused_for_size(stream.into_inner().message().await.unwrap_err()),
        Err(status) => refused_for_size(status),
    }
    refused_for_size(client.fetch_secrets(request(8000)).await.unwrap_err());

    // A request under the limit is served on the same socket (the stream stays open while
    // its requests may go on, as Envoy's does).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(request(3000)).unwrap();
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let served = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(served.resources.len(), 1);
    let metrics = http_get(idmint.admin, "/metrics").unwrap().1;
    assert!(
        metrics.contains("idmint_limit_hits_total{limit=\"sds_message\"} 3"),
        "{metrics}"
    );

    // Headers past HTTP/2's 16 KiB header list are refused too, and the socket serves on.
    let mut big_headers = tonic::Request::new(request(10));
    let value = "h".repeat(32 << 10).parse().unwrap();
    big_headers.metadata_mut().insert("x-padding", value);
    client.fetch_secrets(big_headers).await.unwrap_err();
    let mut client = idmint::sds::client::connect(std::path::Path::new(&socket))
        .await
        .unwrap();
    let fetched = client
        .fetch_secrets(request(10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.resources.len(), 1);
}
