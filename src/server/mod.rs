//! The server half: turns sign requests into certificates, recording every decision in the
//! ledger before answering.

mod issuance;

pub use issuance::IssuanceService;
