//! Work that one server at a time does for every server sharing a database: CA maintenance,
//! polling CF's policy server, and signing the ledger's checkpoints. On PostgreSQL each role
//! is an advisory lock held by a connection of its own, so it is lost when that connection
//! breaks (the server died, or was cut off) and another server takes it. On SQLite one process
//! owns the database and always leads.

use super::{Backend, Error, Store};

/// A role one server at a time holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lead {
    /// Rotating the CA.
    CaMaintenance,
    /// Polling CF's policy server (the others take up what it stores).
    PolicyPolls,
    /// Signing the ledger's checkpoints.
    LogCheckpoints,
}

impl Lead {
    /// Its advisory-lock key: the role's name in ASCII.
    fn key(self) -> i64 {
        match self {
            // "idmintC" in ASCII.
            Lead::CaMaintenance => 0x69_646d_696e_7443,
            // "imtpolls" in ASCII.
            Lead::PolicyPolls => 0x696d_7470_6f6c_6c73,
            // "imtlogcp" in ASCII.
            Lead::LogCheckpoints => 0x696d_746c_6f67_6370,
        }
    }
}

/// Holding a [`Lead`].
pub struct Leader {
    conn: Option<sqlx::AnyConnection>,
}

impl Leader {
    /// Whether this process still leads. A lost connection gives up the lock (PostgreSQL
    /// releases it with the session) and says so.
    pub async fn still_leads(&mut self) -> bool {
        use sqlx::Connection;
        match &mut self.conn {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

impl Store {
    /// Takes `role` if no other server holds it; `None` when another does.
    pub async fn try_lead(&self, role: Lead) -> Result<Option<Leader>, Error> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(Leader { conn: None }));
        }
        let mut conn = self.pool.acquire().await?;
        if super::postgres::try_lock(&mut conn, role.key()).await? {
            // Out of the pool: the lock lives as long as this connection.
            Ok(Some(Leader {
                conn: Some(conn.detach()),
            }))
        } else {
            Ok(None)
        }
    }
}
