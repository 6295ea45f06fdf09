//! The gateway's stores that must survive a restart (idempotency records,
//! API key hashes): embedded in `gantry.db` (SQLite, WAL mode) in the data
//! directory, or in the cluster's PostgreSQL in cluster mode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gantry_problem::{Blame, Explain, Problem};
use rusqlite::Connection;

/// Why `gantry.db` could not do what was asked: always Gantry's own trouble
/// (its disk, its threads), never the caller's, and worth retrying. It is
/// answered as 503 `store-unavailable`, never as an auth failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    #[error("the store's worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Migration(#[from] gantry_cluster::migrate::SqliteMigrationError),
    #[error(transparent)]
    Postgres(#[from] gantry_cluster::PgError),
}

impl StoreError {
    /// Wraps a SQLite error with what was being done.
    pub(crate) fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sql { context, source }
    }
}

impl Explain for StoreError {
    fn blame(&self) -> Blame {
        Blame::Gantry
    }

    fn problem(&self) -> Problem {
        gantry_cluster::postgres::store_unavailable(self)
    }
}

/// A connection to `gantry.db`, with `migrations` applied.
pub(crate) fn open(
    data_dir: &Path,
    migrations: &gantry_cluster::migrate::Migrations,
) -> Result<Arc<Mutex<Connection>>, StoreError> {
    let path = data_dir.join("gantry.db");
    let mut connection = Connection::open(&path)
        .and_then(|connection| {
            connection
                .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                .map(|_| connection)
        })
        .map_err(|source| StoreError::Open { path, source })?;
    gantry_cluster::migrate::sqlite(&mut connection, migrations)?;
    Ok(Arc::new(Mutex::new(connection)))
}
