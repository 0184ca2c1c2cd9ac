//! Ledger reads and the batched append.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::{Backend, EntryKind, Error, LedgerEntry, LedgerFilter, LedgerRecord, Store};

const COLUMNS: &str = "kind, recorded_at_ms, serial, spiffe_id, instance_guid, app_guid, \
    space_guid, org_guid, cell_id, container_ip, not_before, not_after, public_key_sha256, \
    issuer_fingerprint, cert_der, reason, leaf_hash";
const COLUMN_COUNT: usize = 17;

/// The most records one append may carry: all of them go into a single INSERT statement,
/// which must stay under SQLite's 32,766 and PostgreSQL's 65,535 bound parameters.
pub const MAX_APPEND: usize = 1024;
const _: () = assert!(MAX_APPEND * (COLUMN_COUNT + 1) <= 32_766);

/// The ledger's writer side: one connection kept for appends alone, so its prepared
/// multi-row INSERTs stay cached and every batch skips the pool.
pub struct LedgerAppender {
    store: Store,
    conn: Option<AnyConnection>,
}

impl Store {
    /// A writer for the ledger. It connects on first use and again after a failed append.
    pub fn ledger_appender(&self) -> LedgerAppender {
        LedgerAppender {
            store: self.clone(),
            conn: None,
        }
    }
}

impl LedgerAppender {
    async fn conn(&mut self) -> Result<&mut AnyConnection, Error> {
        if self.conn.is_none() {
            let conn = self.store.pool.acquire().await?.detach();
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The sequence number the next ledger entry gets.
    pub async fn next_seq(&mut self) -> Result<i64, Error> {
        let result = next_seq(self.conn().await?).await;
        self.forget_on_error(result)
    }

    /// Inserts `records` numbered from `first`, in one statement: all become durable or none.
    /// [`Error::SeqTaken`] means another writer already used those numbers; read
    /// [`LedgerAppender::next_seq`] again and retry. One statement, not a transaction, because
    /// every statement is a round trip to the database and this is the issuance hot path.
    pub async fn insert_at(&mut self, first: i64, records: &[LedgerRecord]) -> Result<(), Error> {
        assert!(
            records.len() <= MAX_APPEND,
            "ledger append larger than MAX_APPEND"
        );
        if records.is_empty() {
            return Ok(());
        }
        let sql = insert_sql(records.len(), self.store.backend);
        let q = bind_records(sqlx::query(&sql), first, records);
        let conn = self.conn().await?;
        let result = match q.execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(taken_or_repeated(conn, first, db).await)
            }
            Err(e) => Err(e.into()),
        };
        self.forget_on_error(result)
    }

    /// Closes the connection and waits until it is closed, so that a store closed after this
    /// finds no connection of the ledger's still open (SQLite removes its log files only when
    /// the last one closes).
    pub async fn close(mut self) {
        use sqlx::Connection;
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the ledger's connection failed");
            }
        }
    }

    /// Inserts `records` at the next sequence numbers while holding the writers' lock (SQLite's
    /// write lock, PostgreSQL's advisory lock of every idmint writer), so no other writer can
    /// take them: the way out when [`LedgerAppender::insert_at`] keeps losing the race. One
    /// transaction of four round trips. Returns the first number.
    pub async fn insert_locked(&mut self, records: &[LedgerRecord]) -> Result<i64, Error> {
        use sqlx::Connection;
        let backend = self.store.backend;
        let sql = insert_sql(records.len(), backend);
        let conn = self.conn().await?;
        let result = async {
            let mut tx = match backend {
                Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => {
                    let mut tx = conn.begin().await?;
                    sqlx::query(super::postgres::WRITERS_LOCK)
                        .execute(&mut *tx)
                        .await?;
                    tx
                }
            };
            let first = next_seq(&mut tx).await?;
            let inserted = bind_records(sqlx::query(&sql), first, records)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    Ok(first)
                }
                // A writer that does not take the lock got there first (see `insert_at`).
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    tx.rollback().await?;
                    Err(taken_or_repeated(conn, first, db).await)
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        self.forget_on_error(result)
    }

    /// Drops the connection after a failure other than a taken sequence number, so a
    /// broken connection (a restarted PostgreSQL) is replaced on the next append.
    fn forget_on_error<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if matches!(&result, Err(e) if !matches!(e, Error::SeqTaken)) {
            self.conn = None;
        }
        result
    }
}

/// What a unique violation inserting from `first` was: a taken sequence number (another writer)
/// or, with odds of 2^-80 per pair issued in the same millisecond, a repeated serial. Only the
/// first moves MAX(seq).
async fn taken_or_repeated(
    conn: &mut AnyConnection,
    first: i64,
    violation: Box<dyn sqlx::error::DatabaseError>,
) -> Error {
    match next_seq(conn).await {
        Ok(next) if next > first => Error::SeqTaken,
        Ok(_) => Error::Query(sqlx::Error::Database(violation)),
        Err(e) => e,
    }
}

async fn next_seq(conn: &mut AnyConnection) -> Result<i64, Error> {
    Ok(
        sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) AS next FROM ledger_entries")
            .fetch_one(conn)
            .await?
            .try_get("next")?,
    )
}

impl Store {
    /// Ledger entries matching `filter`, oldest first.
    pub async fn ledger_entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, Error> {
        // Take the newest `limit` rows, then return them in log order.
        let sql = format!(
            "SELECT seq, {COLUMNS} FROM ledger_entries \
             WHERE ($1 IS NULL OR app_guid = $2) AND ($3 IS NULL OR serial = $4) \
               AND ($5 IS NULL OR recorded_at_ms >= $6) AND ($7 IS NULL OR recorded_at_ms < $8) \
               AND ($9 IS NULL OR cell_id = $10) \
               AND ($11 IS NULL OR (kind = 'issued' AND not_before <= $12 AND not_after > $13 \
                    AND NOT EXISTS (SELECT 1 FROM revoked_certs r \
                        WHERE r.serial = ledger_entries.serial AND r.revoked_at_ms < $14))) \
               AND ($15 IS NULL OR instance_guid = $16) \
             ORDER BY seq DESC LIMIT $17"
        );
        let limit = filter.limit.unwrap_or(i64::MAX);
        let rows = sqlx::query(&sql)
            .bind(&filter.app_guid)
            .bind(&filter.app_guid)
            .bind(&filter.serial)
            .bind(&filter.serial)
            .bind(filter.since_ms)
            .bind(filter.since_ms)
            .bind(filter.until_ms)
            .bind(filter.until_ms)
            .bind(&filter.cell_id)
            .bind(&filter.cell_id)
            .bind(filter.valid_at)
            .bind(filter.valid_at)
            .bind(filter.valid_at)
            // Revoked within that second or before it.
            .bind(
                filter
                    .valid_at
                    .map(|t| t.saturating_add(1).saturating_mul(1000)),
            )
            .bind(&filter.instance_guid)
            .bind(&filter.instance_guid)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Entries `from..to` by seq, in order; fewer when the ledger ends (or has a gap) first.
    pub async fn ledger_range(&self, from: u64, to: u64) -> Result<Vec<LedgerEntry>, Error> {
        let sql = format!(
            "SELECT seq, {COLUMNS} FROM ledger_entries WHERE seq >= $1 AND seq < $2 ORDER BY seq"
        );
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let rows = sqlx::query(&sql)
            .bind(clamp(from))
            .bind(clamp(to))
            .fetch_all(&self.pool)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            let entry = entry_from_row(row)?;
            if u64::try_from(entry.seq).ok() != Some(expected) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The seq the next entry gets (an index lookup, unlike counting).
    pub async fn ledger_next_seq(&self) -> Result<u64, Error> {
        let mut conn = self.pool.acquire().await?;
        let next = next_seq(&mut conn).await?;
        u64::try_from(next).map_err(|_| Error::BadValue("ledger_entries.seq"))
    }

    /// The number of ledger entries.
    pub async fn ledger_len(&self) -> Result<i64, Error> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM ledger_entries")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }
}

/// Appends `records` (leaf hashes set) to the ledger inside `tx`, which holds the writers' lock
/// (SQLite's write transaction, PostgreSQL's advisory lock): how a change and its ledger
/// records commit together. Returns the first sequence number. The ledger writer, should it
/// have counted on those numbers, finds them taken and reads the next one again.
pub(super) async fn append_in(
    tx: &mut AnyConnection,
    backend: Backend,
    records: &[LedgerRecord],
) -> Result<i64, Error> {
    let first = next_seq(tx).await?;
    if !records.is_empty() {
        bind_records(
            sqlx::query(&insert_sql(records.len(), backend)),
            first,
            records,
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(first)
}

/// A multi-row INSERT. SQLite gets anonymous `?` placeholders: with numbered ones, SQLite
/// looks each name up by scanning a list, which makes binding a large statement quadratic.
/// Binds `records`, numbered from `first`, to an INSERT made by [`insert_sql`].
fn bind_records<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    first: i64,
    records: &'q [LedgerRecord],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for (i, r) in records.iter().enumerate() {
        q = q
            .bind(first + i as i64)
            .bind(r.kind.as_str())
            .bind(r.recorded_at_ms)
            .bind(&r.serial)
            .bind(&r.spiffe_id)
            .bind(&r.instance_guid)
            .bind(&r.app_guid)
            .bind(&r.space_guid)
            .bind(&r.org_guid)
            .bind(&r.cell_id)
            .bind(&r.container_ip)
            .bind(r.not_before)
            .bind(r.not_after)
            .bind(&r.public_key_sha256)
            .bind(&r.issuer_fingerprint)
            .bind(&r.cert_der)
            .bind(&r.reason)
            .bind(&r.leaf_hash);
    }
    q
}

fn insert_sql(rows: usize, backend: Backend) -> String {
    let per_row = COLUMN_COUNT + 1;
    let mut sql = format!("INSERT INTO ledger_entries (seq, {COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..per_row {
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${}", row * per_row + col + 1)),
            }
        }
        sql.push(')');
    }
    sql
}

fn entry_from_row(r: &AnyRow) -> Result<LedgerEntry, Error> {
    let kind: String = r.try_get("kind")?;
    Ok(LedgerEntry {
        seq: r.try_get("seq")?,
        record: LedgerRecord {
            kind: EntryKind::parse(&kind).ok_or(Error::BadValue("ledger_entries.kind"))?,
            recorded_at_ms: r.try_get("recorded_at_ms")?,
            serial: r.try_get("serial")?,
            spiffe_id: r.try_get("spiffe_id")?,
            instance_guid: r.try_get("instance_guid")?,
            app_guid: r.try_get("app_guid")?,
            space_guid: r.try_get("space_guid")?,
            org_guid: r.try_get("org_guid")?,
            cell_id: r.try_get("cell_id")?,
            container_ip: r.try_get("container_ip")?,
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            public_key_sha256: r.try_get("public_key_sha256")?,
            issuer_fingerprint: r.try_get("issuer_fingerprint")?,
            cert_der: r.try_get("cert_der")?,
            reason: r.try_get("reason")?,
            leaf_hash: r.try_get("leaf_hash")?,
        },
    })
}
