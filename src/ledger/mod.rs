//! The issuance ledger: every issuance and denial, appended in order and made durable before
//! the caller hears the outcome.
//!
//! Each record carries its RFC 6962 leaf hash, so the Merkle tree, checkpoints and proofs can be
//! built over the stored log without rewriting it.

pub mod checkpoints;
mod leaf_hash;
pub mod merkle;
pub mod note;
pub mod prove;
pub mod tiles;
pub mod tree;
pub mod verify;
mod writer;

pub use leaf_hash::{canonical, decode, leaf_hash, DecodeError};
pub use writer::{Ledger, WriterStats, MAX_BATCH};

/// Why an append did not become durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch holding the record failed; every caller of the batch gets the same cause.
    #[error("ledger write failed, nothing was recorded: {0}")]
    Store(std::sync::Arc<crate::store::Error>),
    #[error("ledger is shutting down; the record was not written")]
    Closed,
}

/// Read access to the ledger for audit: listing and lookup by serial.
#[derive(Clone, Debug)]
pub struct AuditLog {
    store: crate::store::Store,
}

impl AuditLog {
    /// Reads the ledger in `store`.
    pub fn new(store: crate::store::Store) -> Self {
        AuditLog { store }
    }

    /// Entries matching `filter`, in log order.
    pub async fn list(
        &self,
        filter: &crate::store::LedgerFilter,
    ) -> Result<Vec<crate::store::LedgerEntry>, crate::store::Error> {
        self.store.ledger_entries(filter).await
    }

    /// The issuance with this serial (lowercase or uppercase hex), if any.
    pub async fn by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<crate::store::LedgerEntry>, crate::store::Error> {
        let filter = crate::store::LedgerFilter {
            serial: Some(serial.to_ascii_lowercase()),
            ..Default::default()
        };
        Ok(self.store.ledger_entries(&filter).await?.pop())
    }

    pub(crate) fn store(&self) -> &crate::store::Store {
        &self.store
    }

    /// How many entries the ledger holds.
    pub async fn entry_count(&self) -> Result<i64, crate::store::Error> {
        self.store.ledger_len().await
    }
}
