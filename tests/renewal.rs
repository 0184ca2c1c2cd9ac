//! Leaf renewal in the agent: certificates with a lifetime of a few seconds are renewed on
//! schedule with a new key, each renewal is pushed to the open SDS stream and recorded in the
//! ledger, and a signer outage shorter than the certificate's remaining life never lets the
//! served certificate lapse.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use idmint::agent::{Bundle, CertStatus, Settings, Workloads};
use idmint::api::{self, Authority, SignRequest, SignedCert};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::sds::{SdsMetrics, SECRET_TYPE};
use idmint::server::IssuanceService;
use idmint::store::{EntryKind, LedgerFilter};
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

/// The real issuance service behind a switch that makes it fail, as an unreachable or
/// broken server would.
struct Switchable {
    inner: IssuanceService,
    failing: AtomicBool,
}

impl Authority for Switchable {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(api::Error::Unavailable(
                "signer switched off by the test".into(),
            ));
        }
        self.inner.sign(request).await
    }

    async fn trust_bundle(&self) -> Result<Vec<Vec<u8>>, api::Error> {
        self.inner.trust_bundle().await
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    rt: Option<Runtime>,
    agent: Arc<Workloads<Switchable>>,
    authority: Arc<Switchable>,
    _bundle: watch::Sender<Arc<Bundle>>,
}

impl Harness {
    async fn new(leaf_ttl: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), &[("ca.leaf_ttl", leaf_ttl)]);
        let rt = Runtime::start(config, Init::CreateIfMissing).await.unwrap();
        let (bundle, bundle_rx) = watch::channel(Arc::new(Bundle {
            trust_domain: rt.config.ca.trust_domain.clone(),
            roots_pem: rt.ca.roots_pem(),
            generation: 1,
        }));
        let authority = Arc::new(Switchable {
            inner: rt.issuance.clone(),
            failing: AtomicBool::new(false),
        });
        let agent = Arc::new(Workloads::new(
            authority.clone(),
            Settings {
                sds_dir: dir.path().join("sds"),
                instance_dir: None,
                cell: None,
                ..rt.config.agent_settings()
            },
            bundle_rx,
            Arc::new(SdsMetrics::default()),
            CancellationToken::new(),
        ));
        agent.add(placement()).await.unwrap();
        Harness {
            _dir: dir,
            rt: Some(rt),
            agent,
            authority,
            _bundle: bundle,
        }
    }

    async fn status(&self) -> CertStatus {
        self.agent
            .cert_status(&placement().instance_guid)
            .await
            .expect("instance served")
    }

    async fn stop(mut self) {
        self.agent.remove(&placement().instance_guid).await;
        self.rt.take().unwrap().shutdown().await;
    }
}

/// A `default` stream on the instance's socket, ACKing every response it reads.
struct CertStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl CertStream {
    async fn open(h: &Harness) -> CertStream {
        let socket = h.agent.socket_path(&placement().instance_guid);
        let mut client = idmint::sds::client::connect(&socket).await.unwrap();
        let (tx, rx_req) = mpsc::channel(8);
        tx.send(request("", "")).await.unwrap();
        let rx = client
            .stream_secrets(ReceiverStream::new(rx_req))
            .await
            .unwrap()
            .into_inner();
        CertStream { tx, rx }
    }

    /// The next certificate pushed (chain PEM, key PEM), ACKed; fails after `within`.
    async fn next(&mut self, within: Duration) -> (String, String) {
        let resp = tokio::time::timeout(within, self.rx.message())
            .await
            .expect("a push in time")
            .expect("stream healthy")
            .expect("stream open");
        self.tx
            .send(request(&resp.version_info, &resp.nonce))
            .await
            .unwrap();
        let secret = Secret::decode(resp.resources[0].value.as_slice()).unwrap();
        match secret.r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                let text = |d: Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
                    .and_then(|d| d.specifier)
                {
                    Some(Specifier::InlineString(s)) => s,
                    other => panic!("{other:?}"),
                };
                (text(t.certificate_chain), text(t.private_key))
            }
            other => panic!("not a certificate: {other:?}"),
        }
    }
}

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        resource_names: vec!["default".into()],
        type_url: SECRET_TYPE.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// The leaf's serial (lowercase hex) and expiry, read with x509-parser.
fn leaf_of(chain_pem: &str) -> (String, OffsetDateTime) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    (serial, cert.validity().not_after.to_datetime())
}

#[tokio::test]
async fn leaves_renew_with_new_keys_and_each_renewal_is_pushed_and_recorded() {
    // 4 s certificates renew 1.6–2.4 s after they arrive.
    let h = Harness::new("4s").await;
    let mut stream = CertStream::open(&h).await;
    let (mut chain, mut key) = stream.next(Duration::from_secs(10)).await;
    let mut serials = vec![leaf_of(&chain).0];
    for _ in 0..3 {
        let (old_serial, old_expiry) = leaf_of(&chain);
        let (next_chain, next_key) = stream.next(Duration::from_secs(4)).await;
        let (serial, expiry) = leaf_of(&next_chain);
        assert_ne!(serial, old_serial);
        assert_ne!(next_key, key, "a renewal makes a new key");
        assert!(expiry > old_expiry);
        // Pushed before the old one expired.
        assert!(OffsetDateTime::now_utc() < old_expiry);
        serials.push(serial);
        (chain, key) = (next_chain, next_key);
    }

    let status = h.status().await;
    let (serial, expiry) = leaf_of(&chain);
    assert_eq!(status.serial_hex.as_deref(), Some(serial.as_str()));
    assert_eq!(status.not_after, Some(expiry));
    let next = status.next_attempt.expect("a renewal is scheduled");
    assert!(next < expiry && next > OffsetDateTime::now_utc() - time::Duration::seconds(1));
    assert_eq!(status.last_error, None);
    assert!(h.agent.renewal_metrics().renewals() >= 3);

    // Every certificate served is an issuance in the ledger.
    let rt = h.rt.as_ref().unwrap();
    let entries = rt
        .audit
        .list(&LedgerFilter {
            app_guid: Some(APP.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for s in &serials {
        assert!(
            entries
                .iter()
                .any(|e| e.record.kind == EntryKind::Issued && e.record.serial.as_ref() == Some(s)),
            "serial {s} not in the ledger"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_signer_outage_shorter_than_the_certificate_never_lets_it_lapse() {
    // 8 s certificates renew 3.2–4.8 s after they arrive.
    let h = Harness::new("8s").await;
    let mut stream = CertStream::open(&h).await;
    let (chain, _) = stream.next(Duration::from_secs(10)).await;
    let (first_serial, first_expiry) = leaf_of(&chain);

    h.authority.failing.store(true, Ordering::SeqCst);
    // Past the latest renewal point: attempts have failed, and the first certificate is
    // still the one served.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let s = h.status().await;
        if s.last_error.is_some() && h.agent.renewal_metrics().failures() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "renewal never failed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = h.status().await;
    assert_eq!(during.serial_hex.as_deref(), Some(first_serial.as_str()));
    assert!(during.last_error.unwrap().contains("switched off"));
    let retry = during.next_attempt.unwrap();
    assert!(retry < first_expiry, "the next retry comes before expiry");
    assert!(OffsetDateTime::now_utc() < first_expiry);

    h.authority.failing.store(false, Ordering::SeqCst);
    let left = first_expiry - OffsetDateTime::now_utc();
    let (renewed, _) = stream
        .next(Duration::try_from(left).expect("still valid"))
        .await;
    let (serial, _) = leaf_of(&renewed);
    assert_ne!(serial, first_serial);
    assert!(
        OffsetDateTime::now_utc() < first_expiry,
        "renewed before the old certificate expired"
    );
    assert_eq!(h.status().await.last_error, None);
    h.stop().await;
}
