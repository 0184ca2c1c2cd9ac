//! The certificate authority: CA keys and certificates, CSR checks, the leaf profile.

mod authority;
mod bootstrap;
mod cert_info;
pub mod crl;
pub mod csr;
mod dev_credentials;
mod kek;
mod keys;
mod leaf;
#[cfg(test)]
mod leaf_props;
pub mod maintenance;
mod principal;
pub mod rotate;
pub mod rotation;
mod serial;
pub mod upstream_watch;
// The strict DER reading the integration tests use, shared with the unit tests here.
#[cfg(test)]
#[path = "../../tests/common/strict_der.rs"]
mod strict_der;

use std::path::PathBuf;

pub use authority::{
    leaf_validity, CertificateAuthority, Credential, Issued, PublishedBundle, Signing, Validity,
};
pub use bootstrap::{chains_to, in_memory, init_self_signed, load, upstream_signing, Init};
pub use cert_info::{
    cert_pem, pem_encode, pem_fingerprints, private_key_pem, sha256_hex, uri_sans, CaCert, Role,
};
pub use csr::{CheckedCsr, CsrError, LeafKeyType};
pub use dev_credentials::{dev_credentials, DevCredentials, PemPair, DEV_ORGANIZATION};
pub use kek::{decode_hex, encode_hex, Kek};
pub use keys::{CaKey, SignatureScheme};
pub use principal::{is_person_name, Principal, PrincipalError};
pub use serial::time_ordered_id;

use crate::ids::Ttl;
use crate::spiffe::{IdTemplate, TemplateError, TrustDomain};

/// What went wrong in the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("requested TTL {requested} is longer than the issuing CA's whole lifetime ({limit})")]
    TtlBeyondCa { requested: Ttl, limit: String },
    #[error("the issuing CA expired at {0}; no certificate can be issued")]
    CaExpired(String),
    #[error(transparent)]
    Identity(#[from] TemplateError),
    #[error("key-encryption key file {0} does not exist (create one with `openssl rand -hex 32 > FILE; chmod 600 FILE`)")]
    KekMissing(PathBuf),
    #[error("cannot use key-encryption key file {0}: {1}")]
    KekUnreadable(PathBuf, String),
    #[error("key-encryption key file {0} must hold exactly 64 hexadecimal digits (32 bytes)")]
    KekMalformed(PathBuf),
    #[error("key-encryption key file {0} is readable by every user (mode {1:o}); make it readable by the service alone (chmod 600) and start again")]
    KekExposed(PathBuf, u32),
    #[error(
        "key-encryption key in {0} does not decrypt the stored CA keys: they were sealed with \
         another key (every server sharing a database needs the same ca.kek_file); nothing \
         was changed"
    )]
    KekWrong(PathBuf),
    #[error(
        "no CA has been initialised in this store; start `idmint dev` or run `idmint ca init`"
    )]
    NotInitialised,
    #[error("stored CA is inconsistent: {0}")]
    Inconsistent(String),
    #[error("upstream CA file {path}: {reason}")]
    Upstream { path: PathBuf, reason: String },
    #[error("unsupported CA key: {0}")]
    UnsupportedCaKey(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("signing failed")]
    Signing,
    #[error("building a CA certificate failed: {0}")]
    Build(#[from] rcgen::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl Error {
    /// True when the request was at fault (bad CSR, TTL, identity), not the CA or its storage.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            Error::Csr(_) | Error::TtlBeyondCa { .. } | Error::Identity(_)
        )
    }
}

/// Where the CA keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// idmint creates and keeps its own root and intermediate.
    SelfSigned,
    /// An operator's intermediate (and the roots above it) are loaded from PEM files.
    Upstream(UpstreamFiles),
}

/// The PEM files of an upstream CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamFiles {
    /// The intermediate certificate (optionally followed by further intermediates up the chain).
    pub intermediate_cert: PathBuf,
    /// The intermediate's private key: PKCS#8, SEC1 or PKCS#1 PEM.
    pub intermediate_key: PathBuf,
    /// One or more root certificates.
    pub root_bundle: PathBuf,
}

/// CA settings, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The trust domain certificates are issued in.
    pub trust_domain: TrustDomain,
    /// How app SPIFFE IDs are written.
    pub id_template: IdTemplate,
    /// Self-signed or upstream.
    pub mode: Mode,
    /// The file holding the key-encryption key.
    pub kek_file: PathBuf,
    /// Lifetime of a self-signed root.
    pub root_ttl: Ttl,
    /// Lifetime of a self-signed intermediate.
    pub intermediate_ttl: Ttl,
    /// Default lifetime of a leaf.
    pub leaf_ttl: Ttl,
    /// Share of a self-signed root's life at which its successor is prepared.
    pub root_rotate_at: f64,
    /// How long a prepared root waits for every sidecar to acknowledge it before signing.
    pub root_activation_max_wait: Ttl,
    /// How far peers' clocks may lag ours: certificates are back-dated by it, and a retired
    /// root stays trusted this long after its last leaf expired.
    pub clock_skew: Ttl,
    /// The least time a new root is published before it signs: three refresh hints while a
    /// bundle endpoint is served, so that federated trust domains, which fetch at that pace,
    /// hold it first (the SPIFFE Federation standard's advice); none otherwise.
    pub root_min_publish: std::time::Duration,
}

#[cfg(test)]
impl Settings {
    /// The settings with nothing configured, for unit tests.
    pub(crate) fn defaults() -> Settings {
        crate::config::Config::load_with_env(&Default::default(), Vec::new())
            .expect("the defaults are valid")
            .ca
    }
}
