//! The gateway's embedded database: `gantry.db` (SQLite, WAL mode) in the
//! data directory, shared by the stores that must survive a restart
//! (idempotency records, API key hashes).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// A connection to `gantry.db`, with `schema` (idempotent `CREATE ... IF NOT
/// EXISTS` statements) applied.
pub(crate) fn open(data_dir: &Path, schema: &str) -> Result<Arc<Mutex<Connection>>, String> {
    let path = data_dir.join("gantry.db");
    let connection =
        Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; {schema}"
        ))
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
    Ok(Arc::new(Mutex::new(connection)))
}
