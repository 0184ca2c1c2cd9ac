//! PostgreSQL specifics: write locking across servers.

use sqlx::{AnyConnection, Executor};

use super::Error;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Serialises writers (ledger sequencing, CA initialisation) across every server on the
/// database with a transaction-scoped advisory lock.
pub(super) async fn begin_exclusive(conn: &mut AnyConnection) -> Result<(), Error> {
    conn.execute("BEGIN").await?;
    // "idmint" in ASCII: one lock key for all idmint writers.
    conn.execute("SELECT pg_advisory_xact_lock(115301217461876)")
        .await?;
    Ok(())
}
