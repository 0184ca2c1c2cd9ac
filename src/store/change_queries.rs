//! The change feed (table `changes`): how servers sharing one database hear of each other's
//! changes to the placements and the policies. A change is numbered in the transaction that
//! makes it, under a lock, so numbers are dense and in commit order; on PostgreSQL the commit
//! also notifies the channel every server listens on.

use sqlx::postgres::PgListener;
use sqlx::{Any, AnyConnection, Executor, Row, Transaction};

use super::{Backend, Error, Store};

/// The PostgreSQL channel a change is announced on.
const CHANNEL: &str = "idmint_changes";

/// What a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// One instance's placement; the subject is its GUID.
    Placement,
    /// The policies or the enforcement modes (the subject is empty: they are reloaded whole).
    Policy,
    /// The CA: a rotation step (the subject is empty: the CA is reloaded whole).
    Ca,
    /// A revocation (the subject is empty: the revocations are reloaded whole).
    Revocation,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Topic::Placement => "placement",
            Topic::Policy => "policy",
            Topic::Ca => "ca",
            Topic::Revocation => "revocation",
        }
    }
}

/// One row of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its number: the one after the change committed before it.
    pub seq: i64,
    /// What changed.
    pub topic: Topic,
    /// Which one (see [`Topic`]).
    pub subject: String,
}

impl Store {
    /// Starts a transaction in which changes are numbered: on PostgreSQL it holds the feed's
    /// advisory lock from its first statement, so the next number is read and written by one
    /// writer at a time and committed before the next writer reads it.
    pub(super) async fn begin_change(&self) -> Result<Transaction<'static, Any>, Error> {
        match self.backend {
            Backend::Sqlite => super::sqlite::begin_exclusive(&self.pool).await,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                self.lock_changes(&mut tx).await?;
                Ok(tx)
            }
        }
    }

    /// Takes the feed's lock inside `tx` (on PostgreSQL; SQLite's writer holds the whole
    /// database), so a change can be numbered in it; CA changes take it after the writers'
    /// lock.
    pub(super) async fn lock_changes(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        if self.backend == Backend::Postgres {
            tx.execute(super::postgres::CHANGES_LOCK).await?;
        }
        Ok(())
    }

    /// Appends a change to the feed inside `tx` (from [`Store::begin_change`]); announced to
    /// the listening servers when the transaction commits.
    pub(super) async fn record_change(
        &self,
        tx: &mut AnyConnection,
        topic: Topic,
        subject: &str,
        at_ms: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO changes (seq, topic, subject, at_ms) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3 FROM changes",
        )
        .bind(topic.as_str())
        .bind(subject)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        if self.backend == Backend::Postgres {
            // Delivered at commit, and not at all on rollback.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// The number of the last change (0 before the first).
    pub async fn last_change(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("last")?)
    }

    /// Up to `limit` changes after `after`, in order.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query(
            "SELECT seq, topic, subject FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let topic = match r.try_get::<String, _>("topic")?.as_str() {
                    "placement" => Topic::Placement,
                    "policy" => Topic::Policy,
                    "ca" => Topic::Ca,
                    "revocation" => Topic::Revocation,
                    _ => return Err(Error::BadValue("changes.topic")),
                };
                Ok(Change {
                    seq: r.try_get("seq")?,
                    topic,
                    subject: r.try_get("subject")?,
                })
            })
            .collect()
    }

    /// Deletes changes made before `before_ms`, always keeping the last one, whose number the
    /// next change counts from. Returns how many went.
    pub async fn prune_changes(&self, before_ms: i64) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM changes WHERE at_ms < $1 AND seq < (SELECT MAX(seq) FROM changes)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether other servers may share this database, so that their changes must be followed:
    /// PostgreSQL. SQLite belongs to one process.
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Listens for announced changes on a connection of its own (PostgreSQL only).
    pub async fn listen_for_changes(&self) -> Result<ChangeListener, Error> {
        let url = self.url.as_deref().ok_or(Error::NotShared)?;
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(ChangeListener { listener })
    }
}

/// Wakes its owner when another server (or this one) committed a change.
pub struct ChangeListener {
    listener: PgListener,
}

/// What [`ChangeListener::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A change was announced.
    Change,
    /// The connection was lost and is made again at the next wait; announcements in between
    /// were missed, so the feed must be read.
    Reconnecting,
}

impl ChangeListener {
    /// Waits for the next announcement. An error means the connection could not be made
    /// again; the next call tries again.
    pub async fn wait(&mut self) -> Result<Heard, Error> {
        match self.listener.try_recv().await? {
            Some(_) => Ok(Heard::Change),
            None => Ok(Heard::Reconnecting),
        }
    }
}
