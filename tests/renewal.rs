//! Leaf renewal in the agent, on paused time: hour-long certificates from the real CA are
//! renewed on schedule with a new key, each renewal is pushed to the open SDS stream, and a
//! signer outage shorter than the certificate's remaining life never lets the served
//! certificate lapse. The CA is loaded from its store in real time; then the clock is paused
//! and the agent signs with the CA directly, as the ledger's store would observe real time.
//! That each issuance is recorded is `issuance.rs`'s to show.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use idmint::agent::{Bundle, CertStatus, Settings, Workloads};
use idmint::api::{self, Authority, SignRequest, SignedCert};
use idmint::app::Runtime;
use idmint::ca::{CertificateAuthority, Init};
use idmint::clock::Clock;
use idmint::sds::{SdsMetrics, SECRET_TYPE};
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

/// The real CA, signing at the test's clock, behind a switch that makes it fail as an
/// unreachable or broken server would.
struct Switchable {
    ca: Arc<CertificateAuthority>,
    clock: Clock,
    failing: AtomicBool,
}

impl Authority for Switchable {
    async fn sign(&self, request: SignRequest) -> Result<SignedCert, api::Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(api::Error::Unavailable(api::Cause::Server {
                code: tonic::Code::Unavailable,
                message: "signer switched off by the test".into(),
            }));
        }
        let issued = self
            .ca
            .issue(
                &request.placement,
                &request.csr,
                request.ttl,
                self.clock.now(),
            )
            .map_err(|e| api::Error::Refused(e.into()))?;
        // Nothing is recorded here: position 0 of the ledger.
        Ok(SignedCert::recorded(issued, 0))
    }

    async fn sign_jwt(&self, _: api::JwtRequest) -> Result<api::SignedJwt, api::Error> {
        Err(api::Error::Unavailable(api::Cause::Server {
            code: tonic::Code::Unimplemented,
            message: "this test's authority issues no JWT-SVIDs".into(),
        }))
    }

    async fn trust_bundle(&self) -> Result<Vec<Vec<u8>>, api::Error> {
        Ok(self.ca.roots().into_iter().map(|r| r.der).collect())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    rt: Option<Runtime>,
    agent: Arc<Workloads<Switchable>>,
    authority: Arc<Switchable>,
    clock: Clock,
    _bundle: watch::Sender<Arc<Bundle>>,
}

impl Harness {
    async fn new(leaf_ttl: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), &[("ca.leaf_ttl", leaf_ttl)]);
        let rt = Runtime::start(config, Init::CreateIfMissing).await.unwrap();
        // From here on, time moves only as the test lets it.
        tokio::time::pause();
        let clock = Clock::following_tokio(Clock::system().now());
        let (bundle, bundle_rx) = watch::channel(Arc::new(Bundle {
            trust_domain: rt.config.ca.trust_domain.clone(),
            roots_pem: rt.ca.roots_pem(),
            generation: 1,
            crls_pem: String::new(),
            jwt_keys_json: String::new(),
            federated: Vec::new(),
        }));
        let authority = Arc::new(Switchable {
            ca: rt.ca.clone(),
            clock: clock.clone(),
            failing: AtomicBool::new(false),
        });
        let agent = Arc::new(Workloads::new(
            authority.clone(),
            Settings {
                sds_dir: dir.path().join("sds"),
                instance_dir: None,
                cell: None,
                clock: clock.clone(),
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
            clock,
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
        tokio::time::resume();
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
async fn leaves_renew_with_new_keys_and_each_renewal_is_pushed() {
    // Hour-long certificates renew 24 to 36 minutes after they arrive.
    let h = Harness::new("1h").await;
    let mut stream = CertStream::open(&h).await;
    let (mut chain, mut key) = stream.next(Duration::from_secs(10)).await;
    let first_arrived = h.clock.now();
    let mut arrived = first_arrived;
    for _ in 0..3 {
        let (old_serial, old_expiry) = leaf_of(&chain);
        let (next_chain, next_key) = stream.next(Duration::from_secs(3600)).await;
        let (serial, expiry) = leaf_of(&next_chain);
        assert_ne!(serial, old_serial);
        assert_ne!(next_key, key, "a renewal makes a new key");
        assert!(expiry > old_expiry);
        let now = h.clock.now();
        assert!(now < old_expiry, "pushed before the old one expired");
        let gap = now - arrived;
        assert!(
            gap >= time::Duration::minutes(24) && gap <= time::Duration::minutes(36),
            "renewed {gap} after the last one arrived"
        );
        arrived = now;
        (chain, key) = (next_chain, next_key);
    }

    let status = h.status().await;
    let (serial, expiry) = leaf_of(&chain);
    assert_eq!(status.serial_hex.as_deref(), Some(serial.as_str()));
    assert_eq!(status.not_after, Some(expiry));
    let next = status.next_attempt.expect("a renewal is scheduled");
    assert!(next < expiry && next > h.clock.now());
    assert_eq!(status.last_error, None);
    assert_eq!(h.agent.renewal_metrics().renewals(), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_signer_outage_shorter_than_the_certificate_never_lets_it_lapse() {
    let h = Harness::new("1h").await;
    let mut stream = CertStream::open(&h).await;
    let (chain, _) = stream.next(Duration::from_secs(10)).await;
    let (first_serial, first_expiry) = leaf_of(&chain);

    // Down from now until two minutes before the first certificate expires: every attempt in
    // between fails, and the first certificate is still the one served.
    h.authority.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(h.clock.until(first_expiry - Duration::from_secs(120))).await;
    let during = h.status().await;
    assert_eq!(during.serial_hex.as_deref(), Some(first_serial.as_str()));
    assert!(during.last_error.unwrap().contains("switched off"));
    assert!(h.agent.renewal_metrics().failures() >= 5);
    let retry = during.next_attempt.unwrap();
    assert!(
        retry < first_expiry - Duration::from_secs(60),
        "the next retry comes well before expiry"
    );

    h.authority.failing.store(false, Ordering::SeqCst);
    let (renewed, _) = stream.next(Duration::from_secs(120)).await;
    let (serial, _) = leaf_of(&renewed);
    assert_ne!(serial, first_serial);
    assert!(
        h.clock.now() < first_expiry,
        "renewed before the old certificate expired"
    );
    assert_eq!(h.status().await.last_error, None);
    h.stop().await;
}
