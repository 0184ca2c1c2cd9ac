//! What an instance's SDS server serves: the instance's own identity and the trust bundle,
//! each published on a `watch` by whoever keeps them (the agent).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::api::{self, Authority, JwtRequest, SignedJwt};
use crate::placement::Placement;
use crate::policy::AllowList;
use crate::spiffe::TrustDomain;

/// What an instance's sidecar is given as its own identity.
pub struct Identity {
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Leaf first, then intermediates, PEM.
    pub chain_pem: String,
    /// The PKCS#8 private key, PEM; wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// Serial, hex.
    pub serial_hex: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
    /// SHA-256 (hex) of the intermediate that issued it.
    pub issuer_sha256: Option<String>,
}

/// The roots every sidecar trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain the roots are for.
    pub trust_domain: TrustDomain,
    /// The root certificates, PEM, concatenated.
    pub roots_pem: String,
    /// The CA generation this content was taken at; a sidecar that acknowledged it has every
    /// root published up to then.
    pub generation: u64,
    /// The CRLs, PEM, concatenated, while any certificate is revoked; empty otherwise.
    pub crls_pem: String,
    /// The keys that check JWT-SVIDs, a JWK set; empty when the server sends none.
    pub jwt_keys_json: String,
    /// The bundles of the trust domains federated with this one, by trust domain name; each
    /// is kept apart from the others and from our own.
    pub federated: Vec<ForeignBundle>,
}

/// A federated trust domain's bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignBundle {
    /// Its trust domain.
    pub trust_domain: TrustDomain,
    /// Its roots, PEM, concatenated.
    pub roots_pem: String,
    /// Its JWT keys, a JWK set.
    pub jwt_keys_json: String,
}

impl Bundle {
    /// The federated bundle of `trust_domain`, when one is held.
    pub fn foreign(&self, trust_domain: &str) -> Option<&ForeignBundle> {
        self.federated
            .iter()
            .find(|f| f.trust_domain.as_str() == trust_domain)
    }
}

/// One served instance, as its SDS server sees it.
#[derive(Clone)]
pub struct Workload {
    /// Where it runs.
    pub placement: Placement,
    /// Its SPIFFE ID (known before its first certificate is).
    pub spiffe_id: String,
    /// Its current identity; `None` until the first certificate arrives.
    pub identity: watch::Receiver<Option<Arc<Identity>>>,
    /// The trust bundle.
    pub bundle: watch::Receiver<Arc<Bundle>>,
    /// Whom the instance's app accepts as a provider; `None` until the server has said.
    pub allowed: watch::Receiver<Option<Arc<AllowList>>>,
    /// Where its JWT-SVIDs come from; `None` where none are issued.
    pub jwt: Option<Arc<dyn JwtIssuer>>,
}

/// How an instance's JWT-SVIDs are obtained: from the authority, which records each one.
pub trait JwtIssuer: Send + Sync {
    /// A JWT-SVID for `placement`, for `audience`.
    fn issue<'a>(
        &'a self,
        placement: &Placement,
        audience: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<SignedJwt, api::Error>> + Send + 'a>>;
}

impl<A: Authority> JwtIssuer for A {
    fn issue<'a>(
        &'a self,
        placement: &Placement,
        audience: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<SignedJwt, api::Error>> + Send + 'a>> {
        Box::pin(self.sign_jwt(JwtRequest {
            placement: placement.clone(),
            audience,
        }))
    }
}
