//! The trust bundles each cell's sidecars hold, as its agent last reported them.

use std::collections::BTreeSet;

use sqlx::Row;

use super::{Error, Store};

/// One bundle held by one cell's sidecars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBundle {
    /// The cell whose agent reported it.
    pub cell: String,
    /// Its roots' SHA-256 fingerprints (empty: the sidecars acknowledged no bundle yet).
    pub roots: BTreeSet<String>,
    /// How many of the cell's sidecars hold it.
    pub sidecars: u64,
    /// When it was reported (Unix milliseconds).
    pub reported_at_ms: i64,
}

impl Store {
    /// Replaces what `cell` holds with `held` (roots, sidecars), in one transaction.
    pub async fn replace_held_bundles(
        &self,
        cell: &str,
        held: &[(BTreeSet<String>, u64)],
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM bundle_acks WHERE cell = $1")
            .bind(cell)
            .execute(&mut *tx)
            .await?;
        for (roots, sidecars) in held.iter().filter(|(_, n)| *n > 0) {
            let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
            sqlx::query(
                "INSERT INTO bundle_acks (cell, roots, sidecars, reported_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (cell, roots) \
                 DO UPDATE SET sidecars = bundle_acks.sidecars + excluded.sidecars",
            )
            .bind(cell)
            .bind(roots.join(" "))
            .bind(i64::try_from(*sidecars).unwrap_or(i64::MAX))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every cell's reported bundles.
    pub async fn held_bundles(&self) -> Result<Vec<HeldBundle>, Error> {
        let rows = sqlx::query("SELECT cell, roots, sidecars, reported_at_ms FROM bundle_acks")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let roots: String = r.try_get("roots")?;
                let sidecars: i64 = r.try_get("sidecars")?;
                Ok(HeldBundle {
                    cell: r.try_get("cell")?,
                    roots: roots.split_whitespace().map(str::to_string).collect(),
                    sidecars: u64::try_from(sidecars)
                        .map_err(|_| Error::BadValue("bundle_acks.sidecars"))?,
                    reported_at_ms: r.try_get("reported_at_ms")?,
                })
            })
            .collect()
    }
}
