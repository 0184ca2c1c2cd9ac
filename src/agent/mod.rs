//! The agent half: keys are generated here and never leave; only CSRs go to the authority.

use zeroize::Zeroizing;

pub mod allow_lists;
pub mod bundle_report;
pub mod cell_credential;
mod metrics;
pub mod remote;
mod workloads;

pub use crate::sds::{Bundle, Identity, Workload};
pub use allow_lists::AllowLists;
pub use metrics::AgentMetrics;
pub use workloads::{check_sds_dir, CertStatus, Settings, Workloads};

use crate::api::{self, Authority, SignRequest, SignedCert};
use crate::ids::Ttl;
use crate::placement::Placement;

/// Why the agent could not obtain a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("generating a key or CSR failed: {0}")]
    KeyGeneration(#[from] rcgen::Error),
    #[error(transparent)]
    Authority(#[from] api::Error),
    /// The CSR made here does not read back (a defect, never expected).
    #[error("the CSR made here is unreadable: {0}")]
    Csr(#[from] crate::ca::csr::CsrError),
    /// The instance's SPIFFE ID cannot be written from its placement.
    #[error(transparent)]
    Id(#[from] crate::spiffe::TemplateError),
    /// Its SDS socket cannot be made.
    #[error(transparent)]
    Socket(#[from] crate::sds::BindError),
    /// Its Diego identity files cannot be written.
    #[error(transparent)]
    Files(#[from] crate::files::Error),
}

/// A certificate with the private key that belongs to it.
pub struct Svid {
    /// What the authority issued.
    pub cert: SignedCert,
    /// The private key, PKCS#8 DER; wiped on drop.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

/// A new ECDSA P-256 key and a CSR for it. The CSR carries no names: the server writes them.
pub fn new_key_and_csr() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

/// Generates a key locally and has `authority` certify it for `placement`.
pub async fn obtain_svid<A: Authority>(
    authority: &A,
    placement: Placement,
    ttl: Option<Ttl>,
) -> Result<Svid, Error> {
    let (key_pkcs8, csr) = new_key_and_csr()?;
    let cert = authority
        .sign(SignRequest {
            placement,
            csr,
            ttl,
        })
        .await?;
    Ok(Svid { cert, key_pkcs8 })
}
