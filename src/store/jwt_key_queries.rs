//! The keys that sign JWT-SVIDs: read, and changed a step at a time.

use sqlx::Row;

use super::{Error, Store, Topic};

/// One stored JWT signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// Its key ID: the SHA-256 (hex) of its public point.
    pub kid: String,
    /// `prepared`, `active`, `retired` or `removed`.
    pub state: String,
    /// The uncompressed P-256 point.
    pub public_point: Vec<u8>,
    /// The PKCS#8 key, sealed with the key-encryption key.
    pub sealed_key: Vec<u8>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    pub retired_at_ms: Option<i64>,
    pub removed_at_ms: Option<i64>,
}

/// One change to the stored keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKeyChange {
    /// A new key.
    Insert(JwtKeyRecord),
    /// A key moves to `state`, stamped at `at_ms`.
    Set {
        kid: String,
        state: &'static str,
        at_ms: i64,
    },
    /// A retired key leaves the bundle; its sealed private key is wiped.
    Remove { kid: String, at_ms: i64 },
}

impl Store {
    /// Every JWT signing key, oldest first.
    pub async fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, Error> {
        let rows = sqlx::query(
            "SELECT kid, state, public_point, sealed_key, created_at_ms, activated_at_ms, \
             retired_at_ms, removed_at_ms FROM jwt_keys ORDER BY created_at_ms, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JwtKeyRecord {
                    kid: r.try_get("kid")?,
                    state: r.try_get("state")?,
                    public_point: r.try_get("public_point")?,
                    sealed_key: r.try_get("sealed_key")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    activated_at_ms: r.try_get("activated_at_ms")?,
                    retired_at_ms: r.try_get("retired_at_ms")?,
                    removed_at_ms: r.try_get("removed_at_ms")?,
                })
            })
            .collect()
    }

    /// Applies `changes` and appends their ledger records `events` in one transaction,
    /// announced as a CA change, but only if the keys and their states are still `seen`
    /// (kid, state): when another server changed them first, nothing is written and false is
    /// returned.
    pub async fn change_jwt_keys(
        &self,
        seen: &[(String, String)],
        changes: &[JwtKeyChange],
        events: &[super::LedgerRecord],
        now_ms: i64,
    ) -> Result<bool, Error> {
        // The writers' lock first, then the feed's, as CA changes take them.
        let mut tx = self.begin_exclusive().await?;
        self.lock_changes(&mut tx).await?;
        let rows = sqlx::query("SELECT kid, state FROM jwt_keys ORDER BY created_at_ms, kid")
            .fetch_all(&mut *tx)
            .await?;
        let now: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("state")?)))
            .collect::<Result<_, Error>>()?;
        if now != seen {
            return Ok(false);
        }
        for change in changes {
            match change {
                JwtKeyChange::Insert(k) => {
                    sqlx::query(
                        "INSERT INTO jwt_keys (kid, state, public_point, sealed_key, \
                         created_at_ms, activated_at_ms, retired_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&k.kid)
                    .bind(&k.state)
                    .bind(&k.public_point)
                    .bind(&k.sealed_key)
                    .bind(k.created_at_ms)
                    .bind(k.activated_at_ms)
                    .bind(k.retired_at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                JwtKeyChange::Set { kid, state, at_ms } => {
                    let column = match *state {
                        "active" => "activated_at_ms",
                        "retired" => "retired_at_ms",
                        _ => return Err(Error::BadValue("jwt_keys.state")),
                    };
                    sqlx::query(&format!(
                        "UPDATE jwt_keys SET state = $1, {column} = $2 WHERE kid = $3"
                    ))
                    .bind(*state)
                    .bind(*at_ms)
                    .bind(kid)
                    .execute(&mut *tx)
                    .await?;
                }
                JwtKeyChange::Remove { kid, at_ms } => {
                    sqlx::query(
                        "UPDATE jwt_keys SET state = 'removed', removed_at_ms = $1, \
                         sealed_key = $2 WHERE kid = $3",
                    )
                    .bind(*at_ms)
                    .bind(Vec::<u8>::new())
                    .bind(kid)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        super::ledger_queries::append_in(&mut tx, self.backend, events).await?;
        self.record_change(&mut tx, Topic::Ca, "jwt", now_ms)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A number that grows with every change to the published trust bundle (a root made or
    /// pruned, a JWT signing key made or removed) and is the same on every server sharing
    /// the database: the time of the latest change in Unix milliseconds, times 1000, plus
    /// the count of such changes (mod 1000). Root times are whole seconds, taken as the end
    /// of their second; the count tells apart changes within one.
    pub async fn bundle_sequence(&self) -> Result<i64, Error> {
        let roots = sqlx::query(
            "SELECT COALESCE(MAX(created_at), 0) AS made, COALESCE(MAX(pruned_at), 0) AS pruned, \
             COUNT(*) AS n, COUNT(pruned_at) AS n_pruned FROM ca_certs WHERE role = 'root'",
        )
        .fetch_one(&self.pool)
        .await?;
        let keys = sqlx::query(
            "SELECT COALESCE(MAX(created_at_ms), 0) AS made, \
             COALESCE(MAX(removed_at_ms), 0) AS removed, COUNT(*) AS n, \
             COUNT(removed_at_ms) AS n_removed FROM jwt_keys",
        )
        .fetch_one(&self.pool)
        .await?;
        let get = |row: &sqlx::any::AnyRow, column: &str| row.try_get::<i64, _>(column);
        let root_s = get(&roots, "made")?.max(get(&roots, "pruned")?);
        let root_ms = if root_s > 0 { root_s * 1000 + 999 } else { 0 };
        let key_ms = get(&keys, "made")?.max(get(&keys, "removed")?);
        let count = get(&roots, "n")?
            + get(&roots, "n_pruned")?
            + get(&keys, "n")?
            + get(&keys, "n_removed")?;
        Ok(root_ms.max(key_ms) * 1000 + count % 1000)
    }
}
