//! Ledger reads and the batched append.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{finish, EntryKind, Error, LedgerEntry, LedgerFilter, LedgerRecord, Store};

const COLUMNS: &str = "kind, recorded_at_ms, serial, spiffe_id, instance_guid, app_guid, \
    space_guid, org_guid, cell_id, container_ip, not_before, not_after, public_key_sha256, \
    issuer_fingerprint, cert_der, reason, leaf_hash";
const COLUMN_COUNT: usize = 17;

/// Rows per INSERT statement: well under both backends' bound-parameter limits.
const ROWS_PER_STATEMENT: usize = 100;

impl Store {
    /// Appends `records` in one transaction, numbered densely after the last entry. Returns
    /// the first sequence number. Nothing is visible (or durable) unless all of them are.
    pub async fn append_ledger(&self, records: &[LedgerRecord]) -> Result<i64, Error> {
        let mut conn = self.pool.acquire().await?;
        self.begin_exclusive(&mut conn).await?;
        let result = async {
            let first: i64 =
                sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) AS next FROM ledger_entries")
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("next")?;
            for (chunk_no, chunk) in records.chunks(ROWS_PER_STATEMENT).enumerate() {
                let sql = insert_sql(chunk.len());
                let mut q = sqlx::query(&sql);
                for (i, r) in chunk.iter().enumerate() {
                    let seq = first + (chunk_no * ROWS_PER_STATEMENT + i) as i64;
                    q = q
                        .bind(seq)
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
                q.execute(&mut *conn).await?;
            }
            Ok(first)
        }
        .await;
        finish(&mut conn, result).await
    }

    /// Ledger entries matching `filter`, oldest first.
    pub async fn ledger_entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, Error> {
        // Take the newest `limit` rows, then return them in log order.
        let sql = format!(
            "SELECT seq, {COLUMNS} FROM ledger_entries \
             WHERE ($1 IS NULL OR app_guid = $2) AND ($3 IS NULL OR serial = $4) \
               AND ($5 IS NULL OR recorded_at_ms >= $6) \
             ORDER BY seq DESC LIMIT $7"
        );
        let limit = filter.limit.unwrap_or(i64::MAX);
        let rows = sqlx::query(&sql)
            .bind(&filter.app_guid)
            .bind(&filter.app_guid)
            .bind(&filter.serial)
            .bind(&filter.serial)
            .bind(filter.since_ms)
            .bind(filter.since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut entries = rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// The number of ledger entries.
    pub async fn ledger_len(&self) -> Result<i64, Error> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM ledger_entries")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }
}

fn insert_sql(rows: usize) -> String {
    let per_row = COLUMN_COUNT + 1;
    let mut sql = format!("INSERT INTO ledger_entries (seq, {COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..per_row {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * per_row + col + 1));
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
