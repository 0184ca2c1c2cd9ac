//! CA certificate rows: the first CA, certificates made by rotation, and their state changes.

use sqlx::{AnyConnection, Row};

use super::{CaRecord, Error, LedgerRecord, Store, Topic};

/// One change of a CA certificate's state, by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaChange {
    /// Which certificate.
    pub fingerprint: String,
    /// Its new state (`prepared`, `active`, `retired`), or `None` to keep it.
    pub state: Option<&'static str>,
    /// Set `activated_at`.
    pub activated_at: Option<i64>,
    /// Set `retired_at`.
    pub retired_at: Option<i64>,
    /// Set `pruned_at`.
    pub pruned_at: Option<i64>,
}

impl Store {
    /// Every CA certificate row, oldest first.
    pub async fn ca_records(&self) -> Result<Vec<CaRecord>, Error> {
        let rows = sqlx::query(
            "SELECT role, state, fingerprint, cert_der, sealed_key, not_before, not_after, \
             created_at, activated_at, retired_at, pruned_at FROM ca_certs ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CaRecord {
                    role: r.try_get("role")?,
                    state: r.try_get("state")?,
                    fingerprint: r.try_get("fingerprint")?,
                    cert_der: r.try_get("cert_der")?,
                    sealed_key: r.try_get("sealed_key")?,
                    not_before: r.try_get("not_before")?,
                    not_after: r.try_get("not_after")?,
                    created_at: r.try_get("created_at")?,
                    activated_at: r.try_get("activated_at")?,
                    retired_at: r.try_get("retired_at")?,
                    pruned_at: r.try_get("pruned_at")?,
                })
            })
            .collect()
    }

    /// Inserts `records` only if no CA exists yet, in one transaction. Returns false when
    /// another process initialised the CA first; the caller then loads that one.
    pub async fn insert_first_ca(&self, records: &[CaRecord]) -> Result<bool, Error> {
        let mut tx = self.begin_exclusive().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ca_certs")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count > 0 {
            return Ok(false);
        }
        for r in records {
            insert(&mut tx, r).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Writes new CA certificates, state changes and the ledger records of the step in one
    /// transaction: a rotation step is stored and recorded whole or not at all, and announced
    /// to the servers sharing the database.
    pub async fn apply_ca_changes(
        &self,
        new: &[CaRecord],
        changes: &[CaChange],
        events: &[LedgerRecord],
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.begin_exclusive().await?;
        self.lock_changes(&mut tx).await?;
        for r in new {
            insert(&mut tx, r).await?;
        }
        for c in changes {
            let done = sqlx::query(
                "UPDATE ca_certs SET state = COALESCE($1, state), \
                     activated_at = COALESCE($2, activated_at), \
                     retired_at = COALESCE($3, retired_at), pruned_at = COALESCE($4, pruned_at) \
                     WHERE fingerprint = $5",
            )
            .bind(c.state)
            .bind(c.activated_at)
            .bind(c.retired_at)
            .bind(c.pruned_at)
            .bind(&c.fingerprint)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(Error::BadValue("ca_certs.fingerprint"));
            }
        }
        super::ledger_queries::append_in(&mut tx, self.backend, events).await?;
        self.record_change(&mut tx, Topic::Ca, "", now_ms).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn insert(conn: &mut AnyConnection, r: &CaRecord) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO ca_certs (role, state, fingerprint, cert_der, sealed_key, not_before, \
         not_after, created_at, activated_at, retired_at, pruned_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&r.role)
    .bind(&r.state)
    .bind(&r.fingerprint)
    .bind(&r.cert_der)
    .bind(&r.sealed_key)
    .bind(r.not_before)
    .bind(r.not_after)
    .bind(r.created_at)
    .bind(r.activated_at)
    .bind(r.retired_at)
    .bind(r.pruned_at)
    .execute(conn)
    .await?;
    Ok(())
}
