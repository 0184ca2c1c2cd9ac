//! Persistent state over sqlx: SQLite (embedded default) or PostgreSQL (HA).
//!
//! Both backends share one set of queries through sqlx's `Any` driver; what differs
//! (connecting, locking, migrations) lives in `sqlite.rs` and `postgres.rs`.

mod ack_queries;
mod ca_queries;
mod change_queries;
mod jwt_key_queries;
mod lead;
mod ledger_queries;
mod log_queries;
mod placement_queries;
mod policy_queries;
mod postgres;
mod records;
mod revocation_queries;
mod sqlite;

use std::path::PathBuf;

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool};

pub use ack_queries::HeldBundle;
pub use ca_queries::CaChange;
pub use change_queries::{Change, ChangeListener, Heard, Topic};
pub use jwt_key_queries::{JwtKeyChange, JwtKeyRecord};
pub use lead::{Lead, Leader};
pub use ledger_queries::{LedgerAppender, MAX_APPEND};
pub use log_queries::{StoredCheckpoint, StoredLogKey};
pub use records::{CaRecord, EntryKind, LedgerEntry, LedgerFilter, LedgerRecord};
pub use revocation_queries::{RevokedCert, RevokedSubject};

/// How long a query waits for a connection.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("database URL {0:?} is neither sqlite://PATH nor postgres://…")]
    UnsupportedUrl(String),
    #[error("no database at {0}; start `idmint dev` (or `idmint ca init`) first to create one")]
    Missing(PathBuf),
    #[error("database file {path} is corrupt or not an idmint database ({detail}); it was left untouched")]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot open database {target}: {detail}")]
    Open { target: String, detail: String },
    #[error("schema migration failed on {target}: {detail}")]
    Migrate { target: String, detail: String },
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("ledger sequence numbers were taken by another writer")]
    SeqTaken,
    #[error("database holds an unreadable value in {0}")]
    BadValue(&'static str),
    #[error("this database belongs to one process; there are no other servers' changes to follow")]
    NotShared,
}

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
}

// By hand, so that a config printed with `{:?}` (a log line, a panic) never shows a password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL's URL, for the connection that listens for other servers' changes.
    url: Option<std::sync::Arc<str>>,
}

impl Store {
    /// Opens the store and brings its schema up to date. With `create`, a missing SQLite
    /// file is created; without it, a missing file is an error.
    pub async fn open(settings: &Settings, create: bool) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let url = settings.url.as_str();
        let (backend, connect_url) = if let Some(path) = url.strip_prefix("sqlite://") {
            (
                Backend::Sqlite,
                sqlite::prepare(PathBuf::from(path), create)?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(Error::UnsupportedUrl(url.to_string()));
        };
        probe(backend, url, &connect_url).await?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // A database that is away fails a request in moments rather than holding it:
            // issuance is refused as unavailable and the caller retries.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlite::configure_connection(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(|e| classify_open_error(backend, url, e))?;
        let store = Store {
            pool,
            backend,
            url: (backend == Backend::Postgres).then(|| connect_url.as_str().into()),
        };
        store.migrate(url).await?;
        Ok(store)
    }

    async fn migrate(&self, url: &str) -> Result<(), Error> {
        let result = match self.backend {
            Backend::Sqlite => sqlite::MIGRATOR.run(&self.pool).await,
            Backend::Postgres => postgres::MIGRATOR.run(&self.pool).await,
        };
        result.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => {
                classify_open_error(self.backend, url, inner)
            }
            other => Error::Migrate {
                target: redact_url(url),
                detail: other.to_string(),
            },
        })
    }

    /// Closes every connection, waiting for in-flight queries. SQLite's write-ahead log is
    /// folded into the database file first, so a stopped idmint leaves one self-contained file.
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
            {
                // Not an error for the data: the log stays beside the file and is replayed.
                tracing::warn!(error = %e, "could not fold the SQLite log into the database file");
            }
        }
        self.pool.close().await;
    }

    /// Starts a transaction that holds the write lock from its first statement, so reading
    /// "what is the next sequence number" and writing it cannot interleave with another writer.
    /// It is a guard: dropped without [`sqlx::Transaction::commit`] (an error returned early, or
    /// a caller cancelled mid-way) it rolls back before its connection serves anyone else.
    pub(crate) async fn begin_exclusive(&self) -> Result<sqlx::Transaction<'static, Any>, Error> {
        match self.backend {
            Backend::Sqlite => sqlite::begin_exclusive(&self.pool).await,
            Backend::Postgres => postgres::begin_exclusive(&self.pool).await,
        }
    }
}

/// Opens one connection and reads the schema before a pool is built: a pool would retry a
/// connection that fails (a corrupt file, a refused login) until its timeout and then
/// report only the timeout.
async fn probe(backend: Backend, url: &str, connect_url: &str) -> Result<(), Error> {
    use sqlx::{AnyConnection, Connection};
    let classify = |e| classify_open_error(backend, url, e);
    let mut conn = AnyConnection::connect(connect_url)
        .await
        .map_err(classify)?;
    if backend == Backend::Sqlite {
        sqlite::configure_connection(&mut conn)
            .await
            .map_err(classify)?;
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut conn)
            .await
            .map_err(classify)?;
    }
    conn.close().await.map_err(classify)
}

fn classify_open_error(backend: Backend, url: &str, e: sqlx::Error) -> Error {
    let detail = e.to_string();
    if backend == Backend::Sqlite
        && (detail.contains("not a database") || detail.contains("malformed"))
    {
        return Error::Corrupt {
            path: PathBuf::from(url.trim_start_matches("sqlite://")),
            detail,
        };
    }
    Error::Open {
        target: redact_url(url),
        detail,
    }
}

/// A database URL with any password replaced, safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}
