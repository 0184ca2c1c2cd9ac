//! The verifiable log's tables: leaf hashes read from the ledger, full tiles, signed
//! checkpoints and the checkpoint signing keys.

use sqlx::Row;

use super::{Error, Store};

/// A signed checkpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it signs.
    pub size: u64,
    /// The root at that size.
    pub root: Vec<u8>,
    /// The signed note, as published.
    pub note: String,
    /// When it was signed (Unix milliseconds).
    pub signed_at_ms: i64,
}

/// A checkpoint signing key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLogKey {
    /// The public verifier key (`name+id+key`).
    pub verifier: String,
    /// The Ed25519 seed, sealed with the KEK.
    pub sealed_seed: Vec<u8>,
    /// When it was made, and when it stopped signing (Unix milliseconds).
    pub created_at_ms: i64,
    pub retired_at_ms: Option<i64>,
}

fn to_u64(n: i64, what: &'static str) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| Error::BadValue(what))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// The leaf hashes of entries `from..` in seq order, at most `limit` of them, stopping at
    /// the first gap (an entry another writer has not committed yet).
    pub async fn leaf_hashes(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, Error> {
        let rows = sqlx::query(
            "SELECT seq, leaf_hash FROM ledger_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(from))
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            let seq = to_u64(row.try_get("seq")?, "ledger_entries.seq")?;
            if seq != expected {
                break;
            }
            out.push(row.try_get("leaf_hash")?);
        }
        Ok(out)
    }

    /// A full tile's hashes.
    pub async fn log_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, Error> {
        let row = sqlx::query("SELECT hashes FROM log_tiles WHERE level = $1 AND idx = $2")
            .bind(i32::from(level))
            .bind(to_i64(index))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("hashes")).transpose()?)
    }

    /// Full tiles `from..to` of `level`, in order; as many as are stored.
    pub async fn log_tiles(&self, level: u8, from: u64, to: u64) -> Result<Vec<Vec<u8>>, Error> {
        let rows = sqlx::query(
            "SELECT hashes FROM log_tiles WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
        )
        .bind(i32::from(level))
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("hashes")?)).collect()
    }

    /// How many full tiles `level` has (they are written in order, so the highest index + 1).
    pub async fn log_tile_count(&self, level: u8) -> Result<u64, Error> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM log_tiles WHERE level = $1")
                .bind(i32::from(level))
                .fetch_one(&self.pool)
                .await?;
        to_u64(row.try_get("n")?, "log_tiles.idx")
    }

    /// Stores full tiles. A tile already stored must hold the same hashes: the tiles of one
    /// ledger are the same whoever writes them; [`Error::BadValue`] when they are not.
    pub async fn insert_log_tiles(&self, tiles: &[(u8, u64, Vec<u8>)]) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        for (level, index, hashes) in tiles {
            sqlx::query(
                "INSERT INTO log_tiles (level, idx, hashes) VALUES ($1, $2, $3) \
                 ON CONFLICT (level, idx) DO NOTHING",
            )
            .bind(i32::from(*level))
            .bind(to_i64(*index))
            .bind(hashes)
            .execute(&mut *tx)
            .await?;
            let stored: Vec<u8> =
                sqlx::query("SELECT hashes FROM log_tiles WHERE level = $1 AND idx = $2")
                    .bind(i32::from(*level))
                    .bind(to_i64(*index))
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("hashes")?;
            if stored != *hashes {
                return Err(Error::BadValue("log_tiles.hashes"));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoint of the largest size, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, Error> {
        let row = sqlx::query(
            "SELECT size, root, note, signed_at_ms FROM log_checkpoints ORDER BY size DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| checkpoint(&r)).transpose()
    }

    /// Every checkpoint, smallest first.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, Error> {
        let rows =
            sqlx::query("SELECT size, root, note, signed_at_ms FROM log_checkpoints ORDER BY size")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(checkpoint).collect()
    }

    /// Stores a checkpoint; false when one of that size is stored already.
    pub async fn insert_checkpoint(&self, c: &StoredCheckpoint) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO log_checkpoints (size, root, note, signed_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (size) DO NOTHING",
        )
        .bind(to_i64(c.size))
        .bind(&c.root)
        .bind(&c.note)
        .bind(c.signed_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every checkpoint signing key, oldest first.
    pub async fn log_keys(&self) -> Result<Vec<StoredLogKey>, Error> {
        let rows = sqlx::query(
            "SELECT verifier, sealed_seed, created_at_ms, retired_at_ms FROM log_keys \
             ORDER BY created_at_ms, verifier",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredLogKey {
                    verifier: r.try_get("verifier")?,
                    sealed_seed: r.try_get("sealed_seed")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    retired_at_ms: r.try_get("retired_at_ms")?,
                })
            })
            .collect()
    }

    /// Stores the first signing key unless one is current already (another server made it
    /// first); the current key either way.
    pub async fn insert_first_log_key(&self, key: &StoredLogKey) -> Result<StoredLogKey, Error> {
        sqlx::query(
            "INSERT INTO log_keys (verifier, sealed_seed, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.verifier)
        .bind(&key.sealed_seed)
        .bind(key.created_at_ms)
        .execute(&self.pool)
        .await?;
        let keys = self.log_keys().await?;
        keys.into_iter()
            .find(|k| k.retired_at_ms.is_none())
            .ok_or(Error::BadValue("log_keys: no current key"))
    }
}

impl Store {
    /// Retires the current signing key at `now_ms` and makes `new` current, in one
    /// transaction; the retired key's verifier.
    pub async fn rotate_log_key(
        &self,
        new: &StoredLogKey,
        now_ms: i64,
    ) -> Result<Option<String>, Error> {
        let mut tx = self.pool.begin().await?;
        let old: Option<String> =
            sqlx::query("SELECT verifier FROM log_keys WHERE retired_at_ms IS NULL")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("verifier"))
                .transpose()?;
        sqlx::query("UPDATE log_keys SET retired_at_ms = $1 WHERE retired_at_ms IS NULL")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO log_keys (verifier, sealed_seed, created_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(&new.verifier)
        .bind(&new.sealed_seed)
        .bind(new.created_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old)
    }
}

fn checkpoint(r: &sqlx::any::AnyRow) -> Result<StoredCheckpoint, Error> {
    Ok(StoredCheckpoint {
        size: to_u64(r.try_get("size")?, "log_checkpoints.size")?,
        root: r.try_get("root")?,
        note: r.try_get("note")?,
        signed_at_ms: r.try_get("signed_at_ms")?,
    })
}
