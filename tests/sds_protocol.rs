//! The xDS rules of idmint's SDS, checked with a gRPC client on an instance socket: nonces,
//! ACK and NACK, pushes only on change, content-derived versions, held requests, refusals,
//! several names per stream, the delta protocol, fetch, and deregistration.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use idmint::agent::{Bundle, Settings, Workloads};
use idmint::api::{self, Authority, SignRequest, SignedCert};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::sds::{SdsMetrics, SECRET_TYPE};
use idmint::server::IssuanceService;
use prost::Message;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// An authority that signs only once the test opens its gate: the seam lets a test hold the
/// first certificate back.
struct Gated {
    inner: IssuanceService,
    gate: Arc<Semaphore>,
}

impl Authority for Gated {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        let _permit = self.gate.acquire().await.expect("gate open");
        self.inner.sign(request).await
    }

    async fn sign_jwt(&self, _: api::JwtRequest) -> Result<api::SignedJwt, api::Error> {
        Err(api::Error::Unavailable(api::Cause::Server {
            code: tonic::Code::Unimplemented,
            message: "this test's authority issues no JWT-SVIDs".into(),
        }))
    }

    async fn trust_bundle(&self) -> Result<Vec<Vec<u8>>, api::Error> {
        self.inner.trust_bundle().await
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    rt: Option<Runtime>,
    agent: Arc<Workloads<Gated>>,
    gate: Arc<Semaphore>,
    bundle: watch::Sender<Arc<Bundle>>,
    metrics: Arc<SdsMetrics>,
    roots_pem: String,
    sds_dir: PathBuf,
}

const OTHER_APP_ID: &str =
    "spiffe://cf.internal/org/0e0e0e0e-0000-4000-8000-000000000003/space/5a5a5a5a-0000-4000-8000-000000000002/app/b0b0b0b0-0000-4000-8000-00000000000b";

impl Harness {
    /// A runtime and an agent serving `placement()`; with `open`, certificates are issued at once.
    async fn new(open: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::start(config_in(dir.path(), &[]), Init::CreateIfMissing)
            .await
            .unwrap();
        let roots_pem = rt.ca.roots_pem();
        let (bundle, bundle_rx) = watch::channel(Arc::new(Bundle {
            trust_domain: rt.config.ca.trust_domain.clone(),
            roots_pem: roots_pem.clone(),
            generation: 1,
            crls_pem: String::new(),
            jwt_keys_json: String::new(),
            federated: Vec::new(),
        }));
        let gate = Arc::new(Semaphore::new(if open {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let metrics = Arc::new(SdsMetrics::default());
        let sds_dir = dir.path().join("sds");
        let agent = Arc::new(Workloads::new(
            Arc::new(Gated {
                inner: rt.issuance.clone(),
                gate: gate.clone(),
            }),
            Settings {
                sds_dir: sds_dir.clone(),
                instance_dir: None,
                cell: None,
                ..rt.config.agent_settings()
            },
            bundle_rx,
            metrics.clone(),
            CancellationToken::new(),
        ));
        agent.add(placement()).await.unwrap();
        Harness {
            _dir: dir,
            rt: Some(rt),
            agent,
            gate,
            bundle,
            metrics,
            roots_pem,
            sds_dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.agent.socket_path(&placement().instance_guid)
    }

    async fn client(&self) -> SecretDiscoveryServiceClient<Channel> {
        client(&self.socket()).await
    }

    /// Publishes a bundle with an extra (made-up) root so every validation context changes.
    fn change_bundle(&self, extra: &str) {
        let b = self.bundle.borrow().clone();
        self.bundle.send_replace(Arc::new(Bundle {
            trust_domain: b.trust_domain.clone(),
            roots_pem: format!("{}{extra}", self.roots_pem),
            generation: b.generation + 1,
            crls_pem: String::new(),
            jwt_keys_json: String::new(),
            federated: Vec::new(),
        }));
    }

    async fn stop(mut self) {
        self.agent.remove(&placement().instance_guid).await;
        self.rt.take().unwrap().shutdown().await;
    }
}

async fn client(socket: &Path) -> SecretDiscoveryServiceClient<Channel> {
    idmint::sds::client::connect(socket)
        .await
        .expect("connect to the SDS socket")
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(
        client: &mut SecretDiscoveryServiceClient<Channel>,
        first: DiscoveryRequest,
    ) -> Sotw {
        let (tx, rx_req) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client
            .stream_secrets(ReceiverStream::new(rx_req))
            .await
            .expect("stream opens")
            .into_inner();
        Sotw { tx, rx }
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .and_then(|m| m.ok_or_else(|| tonic::Status::cancelled("stream ended")))
    }

    /// Asserts nothing arrives for a while.
    async fn silent(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(400), self.rx.message()).await;
        assert!(got.is_err(), "expected no response, got {got:?}");
    }
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn trusted_ca(s: &Secret) -> String {
    match &s.r#type {
        Some(secret::Type::ValidationContext(vc)) => {
            match vc.trusted_ca.as_ref().and_then(|d| d.specifier.clone()) {
                Some(Specifier::InlineString(pem)) => pem,
                other => panic!("trusted_ca: {other:?}"),
            }
        }
        other => panic!("not a validation context: {other:?}"),
    }
}

fn chain_pem(s: &Secret) -> String {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            let key = t.private_key.as_ref().and_then(|d| d.specifier.clone());
            assert!(matches!(key, Some(Specifier::InlineString(k)) if k.contains("PRIVATE KEY")));
            match t
                .certificate_chain
                .as_ref()
                .and_then(|d| d.specifier.clone())
            {
                Some(Specifier::InlineString(pem)) => pem,
                other => panic!("certificate_chain: {other:?}"),
            }
        }
        other => panic!("not a certificate: {other:?}"),
    }
}

const FAKE_ROOT: &str = "-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n";

#[tokio::test]
async fn ack_gets_no_reply_changes_are_pushed_and_versions_follow_content() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let mut s = Sotw::open(&mut c, request(&["ROOTCA"], "", "")).await;
    let r1 = s.next().await.unwrap();
    assert_eq!(r1.type_url, SECRET_TYPE);
    let got = secrets(&r1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "ROOTCA");
    assert_eq!(trusted_ca(&got[0]), h.roots_pem);

    s.tx.send(request(&["ROOTCA"], &r1.version_info, &r1.nonce))
        .await
        .unwrap();
    s.silent().await;

    h.change_bundle(FAKE_ROOT);
    let r2 = s.next().await.unwrap();
    assert_ne!(r2.version_info, r1.version_info, "new content, new version");
    assert_ne!(r2.nonce, r1.nonce, "a new nonce per response");
    assert!(trusted_ca(&secrets(&r2)[0]).ends_with(FAKE_ROOT));
    s.tx.send(request(&["ROOTCA"], &r2.version_info, &r2.nonce))
        .await
        .unwrap();

    // The same content published again is not a change.
    h.change_bundle(FAKE_ROOT);
    s.silent().await;

    // Versions come from content: a second stream sees the same version for the same bundle.
    let mut other = Sotw::open(&mut c, request(&["ROOTCA"], "", "")).await;
    assert_eq!(other.next().await.unwrap().version_info, r2.version_info);
    h.stop().await;
}

#[tokio::test]
async fn a_nack_is_counted_and_the_last_good_secret_stays_until_content_changes() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let mut s = Sotw::open(&mut c, request(&["ROOTCA"], "", "")).await;
    let r1 = s.next().await.unwrap();
    s.tx.send(request(&["ROOTCA"], &r1.version_info, &r1.nonce))
        .await
        .unwrap();
    h.change_bundle(FAKE_ROOT);
    let r2 = s.next().await.unwrap();
    let mut nack = request(&["ROOTCA"], &r1.version_info, &r2.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad certificate".into(),
        details: vec![],
    });
    s.tx.send(nack).await.unwrap();
    s.silent().await;
    let mut text = String::new();
    h.metrics.render(&mut text);
    assert!(
        text.contains("idmint_sds_nacks_total{kind=\"validation_context\"} 1"),
        "{text}"
    );

    h.change_bundle(&FAKE_ROOT.repeat(2));
    let r3 = s.next().await.unwrap();
    assert_ne!(r3.version_info, r2.version_info);
    h.stop().await;
}

#[tokio::test]
async fn a_certificate_not_issued_yet_is_held_not_answered_empty() {
    let h = Harness::new(false).await;
    let mut c = h.client().await;
    let mut s = Sotw::open(&mut c, request(&["default"], "", "")).await;
    s.silent().await;
    h.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let r = s.next().await.unwrap();
    let got = secrets(&r);
    assert_eq!(got[0].name, "default");
    let chain = chain_pem(&got[0]);
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    h.stop().await;
}

#[tokio::test]
async fn several_names_on_one_stream_and_a_new_name_is_sent_even_if_unchanged() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let own_id = expected_spiffe_id();
    let mut s = Sotw::open(&mut c, request(&["default", "ROOTCA"], "", "")).await;
    let mut r1 = s.next().await.unwrap();
    if secrets(&r1).len() < 2 {
        // The certificate may arrive just after the roots.
        s.tx.send(request(&["default", "ROOTCA"], &r1.version_info, &r1.nonce))
            .await
            .unwrap();
        r1 = s.next().await.unwrap();
    }
    let names: Vec<String> = secrets(&r1).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["ROOTCA", "default"]);

    let all = [
        "default",
        "ROOTCA",
        "ALL",
        "id-cert-and-key",
        "id-validation-context",
        own_id.as_str(),
        "spiffe://cf.internal",
    ];
    s.tx.send(request(&all, &r1.version_info, &r1.nonce))
        .await
        .unwrap();
    let r2 = s.next().await.unwrap();
    let got = secrets(&r2);
    assert_eq!(
        got.len(),
        all.len(),
        "every subscribed name, including the unchanged ones"
    );
    let by_name = |n: &str| got.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(
        chain_pem(&by_name(&own_id)),
        chain_pem(&by_name("default")),
        "same certificate"
    );
    assert_eq!(trusted_ca(&by_name("spiffe://cf.internal")), h.roots_pem);
    match by_name("ALL").r#type {
        Some(secret::Type::ValidationContext(vc)) => {
            let v = vc.custom_validator_config.expect("SPIFFE validator");
            assert_eq!(v.name, "envoy.tls.cert_validator.spiffe");
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn another_workloads_secret_and_bad_requests_are_refused() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    for name in [
        OTHER_APP_ID,
        "spiffe://other.example",
        "rootca",
        "../default",
    ] {
        let mut s = Sotw::open(&mut c, request(&[name], "", "")).await;
        let err = s.next().await.expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
        assert!(err.message().contains(name), "{}", err.message());
    }
    let mut wrong_type = request(&["default"], "", "");
    wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let mut s = Sotw::open(&mut c, wrong_type).await;
    assert_eq!(s.next().await.unwrap_err().code(), Code::InvalidArgument);

    let err = c
        .fetch_secrets(request(&[OTHER_APP_ID], "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut text = String::new();
    h.metrics.render(&mut text);
    assert!(text.contains("idmint_sds_refused_total 5"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn oversized_and_compressed_requests_get_a_clear_error() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;

    // 5 MiB of name: over the 4 MiB a request may have.
    let mut s = Sotw::open(&mut c, request(&[&"x".repeat(5 << 20)], "", "")).await;
    let err = s.next().await.expect_err("too large");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    let (tx, rx) = mpsc::channel(1);
    tx.send(request(&["default"], "", "")).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("grpc-encoding", "gzip".parse().unwrap());
    let err = c.stream_secrets(req).await.expect_err("compressed");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("gzip"), "{}", err.message());

    // The socket still serves well-formed requests.
    let mut s = Sotw::open(&mut c, request(&["default"], "", "")).await;
    assert_eq!(secrets(&s.next().await.unwrap()).len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_socket_not_node_id_says_who_is_asking() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let mut req = request(&["default"], "", "");
    req.node = Some(Node {
        id: "b0b0b0b0-0000-4000-8000-00000000000b".into(),
        cluster: OTHER_APP_ID.into(),
        ..Default::default()
    });
    let resp = c.fetch_secrets(req).await.unwrap().into_inner();
    let chain = chain_pem(&secrets(&resp)[0]);
    let der = pem::parse(chain.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uri = san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    assert_eq!(uri.as_deref(), Some(expected_spiffe_id().as_str()));
    h.stop().await;
}

async fn next_delta(rx: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a response within 10 s")
        .expect("no error")
        .expect("stream open")
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_counts_acks_and_nacks() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let (tx, rx_req) = mpsc::channel(8);
    let sub = |names: &[&str], nonce: &str| DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(sub(&["ROOTCA", "default"], "")).await.unwrap();
    let mut rx = c
        .delta_secrets(ReceiverStream::new(rx_req))
        .await
        .unwrap()
        .into_inner();

    let mut seen = std::collections::BTreeMap::new();
    let mut last: DeltaDiscoveryResponse = next_delta(&mut rx).await;
    for r in &last.resources {
        seen.insert(r.name.clone(), r.version.clone());
    }
    while seen.len() < 2 {
        tx.send(sub(&[], &last.nonce)).await.unwrap();
        last = next_delta(&mut rx).await;
        for r in &last.resources {
            seen.insert(r.name.clone(), r.version.clone());
        }
    }
    tx.send(sub(&[], &last.nonce)).await.unwrap(); // ACK

    h.change_bundle(FAKE_ROOT);
    let changed = next_delta(&mut rx).await;
    let names: Vec<&str> = changed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA"], "only the changed secret");
    assert_ne!(changed.resources[0].version, seen["ROOTCA"]);
    let mut nack = sub(&[], &changed.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut text = String::new();
    h.metrics.render(&mut text);
    assert!(
        text.contains("idmint_sds_nacks_total{kind=\"validation_context\"} 1"),
        "{text}"
    );

    tx.send(sub(&[OTHER_APP_ID], "")).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    h.stop().await;
}

#[tokio::test]
async fn deregistration_closes_streams_and_removes_the_socket() {
    let h = Harness::new(true).await;
    let mut c = h.client().await;
    let mut s = Sotw::open(&mut c, request(&["ROOTCA"], "", "")).await;
    s.next().await.unwrap();
    assert_eq!(h.metrics.streams_open(), 1);
    let socket = h.socket();
    h.agent.remove(&placement().instance_guid).await;
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!socket.exists(), "socket removed");
    assert!(h.sds_dir.exists());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.metrics.streams_open(), 0);
    h.stop().await;
}
