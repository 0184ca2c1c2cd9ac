//! The SPIFFE Workload API on each instance's socket, beside SDS: the identity and trust
//! bundle its sidecar gets, for the app itself and any SPIFFE client library. As with SDS, who
//! is asking is the socket, never anything in the request.

use std::collections::HashMap;
use std::pin::Pin;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api::SignedJwt;
use crate::jwt::{Invalid, Validated};
use crate::sds::{Bundle, Identity, Workload};

/// The messages and service generated from `proto/workload.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("_");
}

use proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
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
    /// JWT-SVIDs handed out, by sorted audience.
    tokens: tokio::sync::Mutex<HashMap<Vec<String>, CachedJwt>>,
}

impl WorkloadApi {
    /// The API of `workload`; its streams end, UNAVAILABLE, at `stopping`.
    pub fn new(workload: Workload, stopping: CancellationToken) -> WorkloadApi {
        WorkloadApi {
            workload,
            stopping,
            tokens: Default::default(),
        }
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
        federated_bundles: federated_roots(bundle).collect(),
    }
}

/// Each federated trust domain's roots, DER, concatenated, by trust domain ID.
fn federated_roots(bundle: &Bundle) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    bundle
        .federated
        .iter()
        .map(|f| (f.trust_domain.id_string(), ders(&f.roots_pem).concat()))
}

fn x509_bundles_response(_: &Workload, _: &Identity, bundle: &Bundle) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: ders(&bundle.crls_pem),
        bundles: std::iter::once((
            bundle.trust_domain.id_string(),
            ders(&bundle.roots_pem).concat(),
        ))
        .chain(federated_roots(bundle))
        .collect(),
    }
}

fn jwt_bundles_response(_: &Workload, _: &Identity, bundle: &Bundle) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: std::iter::once((bundle.trust_domain.id_string(), own_jwt_keys(bundle)))
            .chain(
                bundle
                    .federated
                    .iter()
                    .map(|f| (f.trust_domain.id_string(), f.jwt_keys_json.clone())),
            )
            .map(|(td, jwks)| (td, jwks.into_bytes()))
            .collect(),
    }
}

/// The trust domain's JWT keys as a JWK set, empty when the server sent none.
fn own_jwt_keys(bundle: &Bundle) -> String {
    if bundle.jwt_keys_json.is_empty() {
        crate::jwt::jwt_keys_json(&[])
    } else {
        bundle.jwt_keys_json.clone()
    }
}

/// Most JWT-SVIDs kept per instance for reuse.
const CACHED_TOKENS: usize = 64;

impl WorkloadApi {
    /// A token for `audience`: one handed out before while it has more than half its life
    /// left (as SPIRE's agent does), else a new one from the authority.
    async fn jwt_svid(&self, audience: Vec<String>) -> Result<SignedJwt, Status> {
        let Some(issuer) = &self.workload.jwt else {
            return Err(Status::unavailable("this agent issues no JWT-SVIDs"));
        };
        let mut key = audience.clone();
        key.sort();
        key.dedup();
        let now = crate::clock::Clock::system().now().unix_timestamp();
        if let Some(t) = self.tokens.lock().await.get(&key) {
            if t.expires_at - now > t.lifetime / 2 {
                return Ok(t.signed.clone());
            }
        }
        let signed = issuer
            .issue(&self.workload.placement, audience)
            .await
            .map_err(Status::from)?;
        let mut tokens = self.tokens.lock().await;
        if tokens.len() >= CACHED_TOKENS {
            tokens.retain(|_, t| t.expires_at > now);
            if tokens.len() >= CACHED_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(
            key,
            CachedJwt {
                lifetime: (signed.expires_at - now).max(0),
                expires_at: signed.expires_at,
                signed: signed.clone(),
            },
        );
        Ok(signed)
    }

    /// Checks `token` for `audience` against the bundles this instance holds.
    fn validate(&self, token: &str, audience: &str) -> Result<Validated, Invalid> {
        let bundle = self.workload.bundle.borrow().clone();
        let own = bundle.trust_domain.as_str().to_string();
        // The keys of the token's own trust domain only: ours, or a federated one's.
        let keys = |td: &str| -> Option<Vec<crate::jwt::Jwk>> {
            let jwks = if td == own {
                own_jwt_keys(&bundle)
            } else {
                bundle.foreign(td)?.jwt_keys_json.clone()
            };
            Some(crate::jwt::BundleDoc::parse(jwks.as_bytes()).ok()?.jwt_keys)
        };
        let now = crate::clock::Clock::system().now().unix_timestamp();
        crate::jwt::token::validate(token, audience, keys, now)
    }
}

/// A token handed out, kept for reuse.
struct CachedJwt {
    signed: SignedJwt,
    expires_at: i64,
    lifetime: i64,
}

/// A JSON value as a protobuf one.
fn proto_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(proto_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn proto_struct(o: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect(),
    }
}

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
        let req = request.into_inner();
        if !req.spiffe_id.is_empty() && req.spiffe_id != self.workload.spiffe_id {
            return Err(Status::permission_denied(format!(
                "this workload's only SPIFFE ID is {}, not {}",
                self.workload.spiffe_id, req.spiffe_id
            )));
        }
        crate::jwt::token::check_audience(&req.audience).map_err(Status::invalid_argument)?;
        let signed = self.jwt_svid(req.audience).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: signed.spiffe_id,
                svid: signed.token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.follow(jwt_bundles_response)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be given"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be given"));
        }
        let valid = self
            .validate(&req.svid, &req.audience)
            .map_err(|e| Status::invalid_argument(format!("the JWT-SVID is not valid: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.subject.as_str().to_string(),
            claims: Some(proto_struct(&valid.claims)),
        }))
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
            jwt_keys_json: String::new(),
            federated: Vec::new(),
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
            jwt: None,
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

    /// Signs for the fixture's workload with a key of its own and counts what it signed.
    struct TestIssuer {
        key: crate::jwt::SigningKey,
        issued: std::sync::atomic::AtomicUsize,
    }

    impl crate::sds::JwtIssuer for TestIssuer {
        fn issue<'a>(
            &'a self,
            _: &Placement,
            audience: Vec<String>,
        ) -> Pin<
            Box<dyn std::future::Future<Output = Result<SignedJwt, crate::api::Error>> + Send + 'a>,
        > {
            let n = self
                .issued
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = crate::clock::Clock::system().now().unix_timestamp();
            let claims = crate::jwt::Claims {
                subject: "spiffe://td/app".into(),
                audience,
                expires_at: now + 300,
                issued_at: now,
                token_id: n.to_string(),
            };
            let token = self.key.sign(&claims).unwrap();
            Box::pin(async move {
                Ok(SignedJwt {
                    spiffe_id: claims.subject,
                    token,
                    expires_at: claims.expires_at,
                    ledger_seq: n as i64,
                })
            })
        }
    }

    fn jwt_fixture() -> (Fixture, Arc<TestIssuer>) {
        let mut f = fixture();
        let (key, _) = crate::jwt::SigningKey::generate().unwrap();
        let jwks = crate::jwt::jwt_keys_json(&[key.public()]);
        let issuer = Arc::new(TestIssuer {
            key,
            issued: Default::default(),
        });
        let mut workload = f.api.workload.clone();
        workload.jwt = Some(issuer.clone());
        f.api = WorkloadApi::new(workload, f.stop.clone());
        let mut b = (*f.bundle.borrow()).as_ref().clone();
        b.jwt_keys_json = jwks;
        f.bundle.send_replace(Arc::new(b));
        f.identity.send_replace(Some(identity(1)));
        (f, issuer)
    }

    fn fetch(aud: &[&str]) -> Request<JwtsvidRequest> {
        with_header(JwtsvidRequest {
            audience: aud.iter().map(|a| a.to_string()).collect(),
            spiffe_id: String::new(),
        })
    }

    fn validate(svid: &str, audience: &str) -> Request<ValidateJwtsvidRequest> {
        with_header(ValidateJwtsvidRequest {
            audience: audience.into(),
            svid: svid.into(),
        })
    }

    #[tokio::test]
    async fn a_jwt_svid_validates_for_its_audience_and_is_reused_while_fresh() {
        let (f, issuer) = jwt_fixture();
        let got = f.api.fetch_jwtsvid(fetch(&["api", "db"])).await.unwrap();
        let svid = got.into_inner().svids.remove(0);
        assert_eq!(svid.spiffe_id, "spiffe://td/app");
        let valid = f
            .api
            .validate_jwtsvid(validate(&svid.svid, "db"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(valid.spiffe_id, "spiffe://td/app");
        assert!(valid.claims.unwrap().fields.contains_key("exp"));
        let wrong = f.api.validate_jwtsvid(validate(&svid.svid, "other")).await;
        let wrong = wrong.err().unwrap();
        assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
        assert!(wrong.message().contains("audiences"), "{}", wrong.message());

        // The same audiences in another order: the same token, not a new one.
        let again = f.api.fetch_jwtsvid(fetch(&["db", "api"])).await.unwrap();
        assert_eq!(again.into_inner().svids[0].svid, svid.svid);
        assert_eq!(issuer.issued.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = f.api.fetch_jwtsvid(fetch(&["queue"])).await.unwrap();
        assert_ne!(other.into_inner().svids[0].svid, svid.svid);

        let mut bundles = f
            .api
            .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let jwks = bundles.next().await.unwrap().unwrap().bundles["spiffe://td"].clone();
        let doc = crate::jwt::BundleDoc::parse(&jwks).unwrap();
        assert_eq!(doc.jwt_keys, vec![issuer.key.public()]);
    }

    #[tokio::test]
    async fn bad_jwt_requests_get_clear_errors() {
        let (f, _) = jwt_fixture();
        let too_many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let long = "a".repeat(300);
        for aud in [&[][..], &too_many[..], &[""][..], &[long.as_str()][..]] {
            let status = f.api.fetch_jwtsvid(fetch(aud)).await.err().unwrap();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{aud:?}");
        }
        let mut other = fetch(&["api"]);
        other.get_mut().spiffe_id = "spiffe://td/someone-else".into();
        let status = f.api.fetch_jwtsvid(other).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let no_header = f
            .api
            .fetch_jwtsvid(Request::new(JwtsvidRequest {
                audience: vec!["api".into()],
                spiffe_id: String::new(),
            }))
            .await;
        assert_eq!(
            no_header.err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
        for (svid, aud) in [("", "api"), ("x.y.z", ""), ("not a jwt", "api")] {
            let status = f
                .api
                .validate_jwtsvid(validate(svid, aud))
                .await
                .err()
                .unwrap();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{svid:?}");
        }
    }
}
