//! The server half: turns sign requests into certificates, recording every decision in the
//! ledger before answering.

pub mod allow_watch;
pub mod api_tls;
pub mod bundle_endpoint;
pub mod change_feed;
pub mod federation;
pub mod fleet;
pub mod grpc;
mod issuance;
pub mod limits;
pub mod placing;
pub mod policies;
pub mod policy_server;
pub mod registry;
pub mod revocations;
mod status;

pub use issuance::IssuanceService;
pub use policies::Policies;
pub use registry::Registry;
