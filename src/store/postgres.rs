//! PostgreSQL specifics: write locking across servers.

use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};

use super::Error;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Serialises writers (ledger sequencing, CA initialisation) across every server on the
/// database with a transaction-scoped advisory lock.
/// Takes the lock every idmint writer's transaction holds ("idmint" in ASCII as the key),
/// released with the transaction.
pub(super) const WRITERS_LOCK: &str = "SELECT pg_advisory_xact_lock(115301217461876)";

/// Takes the lock under which changes to placements and policies are numbered ("idmint-c" in ASCII),
/// released with the transaction.
pub(super) const CHANGES_LOCK: &str = "SELECT pg_advisory_xact_lock(7594315171245600099)";

pub(super) async fn begin_exclusive(pool: &AnyPool) -> Result<Transaction<'static, Any>, Error> {
    let mut tx = pool.begin().await?;
    tx.execute(WRITERS_LOCK).await?;
    Ok(tx)
}

/// Takes the session-scoped advisory lock `key` on `conn` if no other session holds it.
pub(super) async fn try_lock(conn: &mut AnyConnection, key: i64) -> Result<bool, Error> {
    use sqlx::Row;
    let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
        .bind(key)
        .fetch_one(conn)
        .await?;
    Ok(row.try_get::<bool, _>("got")?)
}
