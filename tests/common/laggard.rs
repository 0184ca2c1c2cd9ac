//! An SDS client over an instance's socket that takes the trust bundle (`ROOTCA`) and
//! acknowledges each push only when the test says so: a sidecar slow to take a new root.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// An SDS client holding a `ROOTCA` stream that acknowledges only when told to.
pub struct Laggard {
    rt: tokio::runtime::Runtime,
    tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    last: Option<DiscoveryResponse>,
}

impl Laggard {
    pub fn open(socket: &str) -> Laggard {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = rt.block_on(async {
            let mut client = idmint::sds::client::connect(Path::new(socket))
                .await
                .unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(Self::request("", "")).await.unwrap();
            let rx = client
                .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            (tx, rx)
        });
        let mut l = Laggard {
            rt,
            tx,
            rx,
            last: None,
        };
        l.next_bundle();
        l.ack_last();
        l
    }

    fn request(version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            resource_names: vec!["ROOTCA".into()],
            type_url: idmint::sds::SECRET_TYPE.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// The next bundle pushed, as text (not acknowledged).
    pub fn next_bundle(&mut self) -> String {
        let rx = &mut self.rx;
        let resp = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), rx.message()).await })
            .expect("a push in time")
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&resp.resources[0].value).to_string();
        self.last = Some(resp);
        text
    }

    pub fn ack_last(&mut self) {
        let resp = self.last.take().expect("a response to acknowledge");
        let ack = Self::request(&resp.version_info, &resp.nonce);
        self.rt.block_on(self.tx.send(ack)).unwrap();
    }
}
