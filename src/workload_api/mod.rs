//! The SPIFFE Workload API on each instance's socket, beside SDS: the identity and trust
//! bundle its sidecar gets, for the app itself and any SPIFFE client library. As with SDS, who
//! is asking is the socket, never anything in the request.

use std::pin::Pin;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::sds::{Bundle, Identity, Workload};

/// The messages and service generated from `proto/workload.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("_");
}

use proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

pub use proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;

/// The metadata every Workload API call must carry, so that a browser or a proxied request
/// tricked into reaching the socket is refused (the SPIFFE Workload Endpoint standard).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API of one instance.
pub struct WorkloadApi {
    workload: Workload,
    stopping: CancellationToken,
}

impl WorkloadApi {
    /// The API of `workload`; its streams end, UNAVAILABLE, at `stopping`.
    pub fn new(workload: Workload, stopping: CancellationToken) -> WorkloadApi {
        WorkloadApi { workload, stopping }
    }

    /// Refuses a call without the security header, or while the instance has no identity.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match request.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
            Some(Ok("true")) => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                "security header missing from request: send the metadata {SECURITY_HEADER}: true"
            )))
            }
        }
        if self.workload.identity.borrow().is_none() {
            return Err(Status::permission_denied(format!(
                "instance {} has no identity yet; try again shortly",
                self.workload.placement.instance_guid
            )));
        }
        Ok(())
    }

    /// `build` of the identity and bundle now, then again at each change of either; ends
    /// UNAVAILABLE when the instance stops being served.
    fn follow<T: Send + 'static>(
        &self,
        build: fn(&Workload, &Identity, &Bundle) -> T,
    ) -> Updates<T> {
        let workload = self.workload.clone();
        let (identity, bundle) = (workload.identity.clone(), workload.bundle.clone());
        let state = (
            workload,
            identity,
            bundle,
            self.stopping.clone(),
            Step::First,
        );
        Box::pin(futures_util::stream::unfold(
            state,
            move |(workload, mut identity, mut bundle, stopping, step)| async move {
                match step {
                    Step::Ended => return None,
                    Step::First => {}
                    Step::Next => {
                        let ended = tokio::select! {
                            _ = stopping.cancelled() => true,
                            changed = identity.changed() => changed.is_err(),
                            changed = bundle.changed() => changed.is_err(),
                        };
                        if ended {
                            let bye = Status::unavailable("this instance is no longer served here");
                            return Some((
                                Err(bye),
                                (workload, identity, bundle, stopping, Step::Ended),
                            ));
                        }
                    }
                }
                let current = identity.borrow_and_update().clone();
                let roots = bundle.borrow_and_update().clone();
                let item = match current {
                    Some(id) => Ok(build(&workload, &id, &roots)),
                    None => Err(Status::permission_denied("the instance has no identity")),
                };
                Some((item, (workload, identity, bundle, stopping, Step::Next)))
            },
        ))
    }
}

/// Where a stream of updates is.
#[derive(Clone, Copy)]
enum Step {
    /// The current state is sent at once.
    First,
    /// Then each change, when it comes.
    Next,
    /// The stream has said UNAVAILABLE and ends.
    Ended,
}

/// PEM blocks as DER, in order; what is not PEM is left out.
fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

fn x509_svid_response(workload: &Workload, id: &Identity, bundle: &Bundle) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: workload.spiffe_id.clone(),
            x509_svid: ders(&id.chain_pem).concat(),
            x509_svid_key: ders(&id.key_pem).concat(),
            bundle: ders(&bundle.roots_pem).concat(),
            hint: String::new(),
        }],
        crl: ders(&bundle.crls_pem),
        federated_bundles: Default::default(),
    }
}

fn x509_bundles_response(_: &Workload, _: &Identity, bundle: &Bundle) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: ders(&bundle.crls_pem),
        bundles: [(
            format!("spiffe://{}", bundle.trust_domain),
            ders(&bundle.roots_pem).concat(),
        )]
        .into(),
    }
}

const NO_JWT: &str = "this idmint issues no JWT-SVIDs yet: use the X.509-SVID (FetchX509SVID)";

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Updates<X509svidResponse>;
    type FetchX509BundlesStream = Updates<X509BundlesResponse>;
    type FetchJWTBundlesStream = Updates<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.follow(x509_svid_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.follow(x509_bundles_response)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.admit(&request)?;
        Err(Status::unimplemented(NO_JWT))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&request)?;
        Err(Status::unimplemented(NO_JWT))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&request)?;
        Err(Status::unimplemented(NO_JWT))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use tokio::sync::watch;

    use super::*;
    use crate::placement::Placement;

    fn pem(label: &str, bytes: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, bytes.to_vec()))
    }

    fn identity(serial: u8) -> Arc<Identity> {
        Arc::new(Identity {
            spiffe_id: "spiffe://td/app".into(),
            chain_pem: pem("CERTIFICATE", &[serial, 1]) + &pem("CERTIFICATE", &[9]),
            key_pem: pem("PRIVATE KEY", &[7]).into(),
            serial_hex: format!("{serial:02x}"),
            not_after: time::macros::datetime!(2030-01-01 0:00 UTC),
            issuer_sha256: None,
        })
    }

    fn bundle(roots: &[u8], crl: Option<&[u8]>) -> Arc<Bundle> {
        Arc::new(Bundle {
            trust_domain: "td".parse().unwrap(),
            roots_pem: pem("CERTIFICATE", roots),
            generation: 1,
            crls_pem: crl.map(|c| pem("X509 CRL", c)).unwrap_or_default(),
        })
    }

    struct Fixture {
        api: WorkloadApi,
        identity: watch::Sender<Option<Arc<Identity>>>,
        bundle: watch::Sender<Arc<Bundle>>,
        stop: CancellationToken,
    }

    fn fixture() -> Fixture {
        let (identity, identity_rx) = watch::channel(None);
        let (bundle_tx, bundle_rx) = watch::channel(bundle(&[1], None));
        let (_, allowed) = watch::channel(None);
        let workload = Workload {
            placement: Placement {
                instance_guid: "1a1a1a1a-0000-4000-8000-000000000004".parse().unwrap(),
                app_guid: "a0a0a0a0-0000-4000-8000-000000000001".parse().unwrap(),
                space_guid: None,
                org_guid: None,
                cell_id: "cell-1".parse().unwrap(),
                container_ip: None,
            },
            spiffe_id: "spiffe://td/app".into(),
            identity: identity_rx,
            bundle: bundle_rx,
            allowed,
        };
        let stop = CancellationToken::new();
        Fixture {
            api: WorkloadApi::new(workload, stop.clone()),
            identity,
            bundle: bundle_tx,
            stop,
        }
    }

    fn with_header<T>(message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        r
    }

    #[tokio::test]
    async fn calls_without_the_header_or_before_an_identity_are_refused() {
        let f = fixture();
        let no_header = f.api.fetch_x509svid(Request::new(X509svidRequest {})).await;
        assert_eq!(
            no_header.err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
        let mut wrong = Request::new(X509svidRequest {});
        wrong
            .metadata_mut()
            .insert(SECURITY_HEADER, "yes".parse().unwrap());
        let wrong = f.api.fetch_x509svid(wrong).await;
        assert_eq!(wrong.err().unwrap().code(), tonic::Code::InvalidArgument);
        let early = f.api.fetch_x509svid(with_header(X509svidRequest {})).await;
        assert_eq!(early.err().unwrap().code(), tonic::Code::PermissionDenied);
        let bundles = f
            .api
            .fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await;
        assert_eq!(bundles.err().unwrap().code(), tonic::Code::PermissionDenied);
        drop(f.identity);
    }

    #[tokio::test]
    async fn streams_send_the_whole_state_at_once_and_at_each_change_then_unavailable() {
        let f = fixture();
        f.identity.send_replace(Some(identity(1)));
        let mut svids = f
            .api
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = svids.next().await.unwrap().unwrap();
        let svid = &first.svids[0];
        assert_eq!(svid.spiffe_id, "spiffe://td/app");
        assert_eq!(svid.x509_svid, vec![1, 1, 9], "leaf then chain, DER");
        assert_eq!(svid.x509_svid_key, vec![7]);
        assert_eq!(svid.bundle, vec![1]);
        assert!(first.crl.is_empty());

        // A renewal, then a revocation's CRLs: each is the whole state again.
        f.identity.send_replace(Some(identity(2)));
        let renewed = svids.next().await.unwrap().unwrap();
        assert_eq!(renewed.svids[0].x509_svid, vec![2, 1, 9]);
        f.bundle.send_replace(bundle(&[1, 2], Some(&[5, 5])));
        let revoked = svids.next().await.unwrap().unwrap();
        assert_eq!(revoked.svids[0].x509_svid, vec![2, 1, 9]);
        assert_eq!(revoked.svids[0].bundle, vec![1, 2]);
        assert_eq!(revoked.crl, vec![vec![5, 5]]);

        let mut bundles = f
            .api
            .fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let now = bundles.next().await.unwrap().unwrap();
        assert_eq!(now.bundles["spiffe://td"], vec![1, 2]);
        assert_eq!(now.crl, vec![vec![5, 5]]);

        // Shutting down: UNAVAILABLE, then the end.
        f.stop.cancel();
        let last = svids.next().await.unwrap().unwrap_err();
        assert_eq!(last.code(), tonic::Code::Unavailable);
        assert!(svids.next().await.is_none());
        let last = bundles.next().await.unwrap().unwrap_err();
        assert_eq!(last.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn jwt_calls_say_they_are_not_served() {
        let f = fixture();
        f.identity.send_replace(Some(identity(1)));
        let r = f
            .api
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["api".into()],
                spiffe_id: String::new(),
            }))
            .await;
        let status = r.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("X.509"), "{}", status.message());
    }
}
