//! SQLite specifics: file checks, per-connection settings, write locking.

use std::path::PathBuf;

use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};

use super::Error;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Checks the file (and with `create`, its directory) and returns the URL to connect with.
pub(super) fn prepare(path: PathBuf, create: bool) -> Result<String, Error> {
    let open_err = |detail: String| Error::Open {
        target: path.display().to_string(),
        detail,
    };
    if path.is_dir() {
        return Err(open_err("that path is a directory".into()));
    }
    if !path.exists() {
        if !create {
            return Err(Error::Missing(path));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("{}: {e}", dir.display())))?;
        }
    }
    let mode = if create { "rwc" } else { "rw" };
    Ok(format!("sqlite://{}?mode={mode}", path.display()))
}

/// WAL for concurrent readers, FULL sync so a committed ledger batch survives power loss,
/// and a busy timeout so a second process (a CLI beside `idmint dev`) waits instead of failing.
pub(super) async fn configure_connection(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA synchronous = FULL").await?;
    Ok(())
}

pub(super) async fn begin_exclusive(pool: &AnyPool) -> Result<Transaction<'static, Any>, Error> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}
