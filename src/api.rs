//! The one interface between the agent half and the server half.
//!
//! The agent asks for certificates only through [`Authority`]. In `idmint dev` the server's
//! [`crate::server::IssuanceService`] implements it in-process, and the agent's gRPC client
//! for agents on other machines, without either half changing.

use std::future::Future;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::ids::{CellId, Guid, Ttl};
use crate::placement::Placement;
use crate::{ca, ledger};

/// Who is asking for a certificate, as the server has authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An operator (the CLI) or the agent in the server's own process: may have any placement
    /// certified.
    Operator,
    /// A Diego cell: only for instances the registry places on it, and only as registered.
    Cell(CellId),
}

/// A request to certify the key in `csr` for one placed instance.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// The instance the certificate is for.
    pub placement: Placement,
    /// A PKCS#10 CSR, DER or PEM. Only its public key is used.
    pub csr: Vec<u8>,
    /// Lifetime wanted; `None` for the server's default.
    pub ttl: Option<Ttl>,
}

/// A certificate the server issued and recorded.
#[derive(Clone, Debug)]
pub struct SignedCert {
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// The leaf, DER.
    pub cert_der: Vec<u8>,
    /// Intermediates to present after the leaf, DER.
    pub chain_der: Vec<Vec<u8>>,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// True when the lifetime was cut short to the issuing CA's expiry.
    pub capped: bool,
    /// Position of the issuance record in the ledger.
    pub ledger_seq: i64,
}

impl SignedCert {
    /// What the server answers for `issued`, recorded at `ledger_seq`.
    pub fn recorded(issued: ca::Issued, ledger_seq: i64) -> SignedCert {
        SignedCert {
            spiffe_id: issued.spiffe_id,
            cert_der: issued.cert_der,
            chain_der: issued.chain_der,
            serial_hex: issued.serial_hex,
            not_before: issued.validity.not_before,
            not_after: issued.validity.not_after,
            capped: issued.validity.capped,
            ledger_seq,
        }
    }
}

/// A request for a JWT-SVID for one placed instance.
#[derive(Clone, Debug)]
pub struct JwtRequest {
    /// The instance the token is for.
    pub placement: Placement,
    /// Who the token is for; checked with [`crate::jwt::token::check_audience`].
    pub audience: Vec<String>,
}

/// A JWT-SVID the server issued and recorded.
#[derive(Clone, Debug)]
pub struct SignedJwt {
    /// Its subject.
    pub spiffe_id: String,
    /// The token, compact serialization.
    pub token: String,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// Position of the issuance record in the ledger.
    pub ledger_seq: i64,
}

/// Why the authority did not issue. The message is for an operator to act on.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is wrong (bad CSR, TTL, identity); the refusal was recorded.
    #[error("refused: {0}")]
    Refused(Cause),
    /// The caller may not have this certificate; the denial was recorded.
    #[error("permission denied: {0}")]
    PermissionDenied(Denial),
    /// The authority cannot issue right now (storage, expired CA); retry later.
    #[error("unavailable: {0}")]
    Unavailable(Cause),
}

/// What lies under a refusal or an outage: the error itself where it happened in this
/// process, the server's status where the answer came over the network.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum Cause {
    /// The CA refused the request or cannot sign.
    #[error(transparent)]
    Ca(Arc<ca::Error>),
    /// The ledger cannot record the decision, so none was made.
    #[error("the ledger cannot record it: {0}")]
    Ledger(Arc<ledger::Error>),
    /// The task signing with a slow key ended without an answer.
    #[error("the signing task failed: {0}")]
    SigningTask(Arc<tokio::task::JoinError>),
    /// The server answered with this status.
    #[error("{message} ({code:?})")]
    Server {
        /// Its code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The server's answer does not say what it must: this one is missing or out of range.
    #[error("the server's answer is unreadable: {0}")]
    Unreadable(String),
    /// The caller is over one of its limits; it may retry later.
    #[error("{0}")]
    Throttled(String),
    /// The stream the request went on ended before its answer came.
    #[error("the sign stream ended before the answer came")]
    StreamEnded,
    /// The placement registry could not be read.
    #[error("the placement registry cannot be read: {0}")]
    Registry(String),
    /// No JWT-SVID can be signed now.
    #[error(transparent)]
    Jwt(Arc<crate::jwt::keys::Error>),
    /// The audience asked for is not one a token can carry.
    #[error("{0}")]
    Audience(String),
}

impl From<ca::Error> for Cause {
    fn from(e: ca::Error) -> Cause {
        Cause::Ca(Arc::new(e))
    }
}

impl From<crate::jwt::keys::Error> for Cause {
    fn from(e: crate::jwt::keys::Error) -> Cause {
        Cause::Jwt(Arc::new(e))
    }
}

impl From<ledger::Error> for Cause {
    fn from(e: ledger::Error) -> Cause {
        Cause::Ledger(Arc::new(e))
    }
}

/// Why a cell may not have a certificate.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The instance is not registered at all.
    #[error("cell {cell} asked for instance {instance}, which is not registered")]
    NotRegistered {
        /// Who asked.
        cell: CellId,
        /// For what.
        instance: Guid,
    },
    /// The instance runs on another cell.
    #[error("cell {cell} asked for instance {instance}, which is placed on cell {placed_on}")]
    PlacedElsewhere {
        /// Who asked.
        cell: CellId,
        /// For what.
        instance: Guid,
        /// Where the registry places it.
        placed_on: CellId,
    },
    /// The app, the cell or the credential asking is revoked.
    #[error("{0}")]
    Revoked(String),
    /// The server refused, across the network, in these words.
    #[error("{0}")]
    Server(String),
}

/// What the agent half needs from the server half.
pub trait Authority: Send + Sync {
    /// Issues a certificate. Returns only once the issuance is durable in the ledger.
    fn sign(&self, request: SignRequest) -> impl Future<Output = Result<SignedCert, Error>> + Send;

    /// Issues a JWT-SVID. Returns only once its record is durable in the ledger.
    fn sign_jwt(
        &self,
        request: JwtRequest,
    ) -> impl Future<Output = Result<SignedJwt, Error>> + Send;

    /// The trust bundle (root certificates, DER) that verifies what this authority issues.
    fn trust_bundle(&self) -> impl Future<Output = Result<Vec<Vec<u8>>, Error>> + Send;
}
