//! SLO counts and alert states on disk (`DATA_DIR/slos.db`), so a restart
//! keeps the error budget and does not page again for an alert that was
//! already firing: per-minute buckets are written at every evaluation (only
//! the minutes that changed since the last write) and read back when an SLO
//! is tracked again with the same target; alert states are read back when
//! the SLO's whole configuration is the same.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

/// A minute's counts: its start (unix seconds), requests, bad requests.
pub(crate) type Bucket = (u64, u64, u64);
/// One SLO's changed buckets: its key, the oldest start it keeps, the buckets.
pub(crate) type Update = (String, u64, Vec<Bucket>);
/// One SLO's alert states: its name, its configuration (JSON), the states (JSON).
pub(crate) type States = (String, String, String);

/// The bucket table. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CountStore {
    connection: Arc<Mutex<Connection>>,
}

impl CountStore {
    pub(crate) fn open(data_dir: &Path) -> Result<CountStore, String> {
        let path = data_dir.join("slos.db");
        let fail = |e: rusqlite::Error| format!("cannot open SLO counts {}: {e}", path.display());
        let connection = Connection::open(&path).map_err(fail)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS buckets (
                     slo TEXT NOT NULL,
                     start INTEGER NOT NULL,
                     requests INTEGER NOT NULL,
                     bad INTEGER NOT NULL,
                     PRIMARY KEY (slo, start)
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS alert_states (
                     slo TEXT PRIMARY KEY,
                     config TEXT NOT NULL,
                     states TEXT NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(fail)?;
        Ok(CountStore {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// The buckets of `key` from `since` on, oldest first.
    pub(crate) fn load(&self, key: &str, since: u64) -> Vec<Bucket> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let read = || -> rusqlite::Result<Vec<Bucket>> {
            connection
                .prepare_cached(
                    "SELECT start, requests, bad FROM buckets WHERE slo = ?1 AND start >= ?2 ORDER BY start",
                )?
                .query_map(params![key, since as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })?
                .collect()
        };
        read().unwrap_or_else(|error| {
            tracing::warn!(target: "gantry::slo", slo = key, %error, "cannot read stored SLO counts; counting from now");
            Vec::new()
        })
    }

    /// The alert states stored for SLO `name`, if it had `config` then.
    pub(crate) fn load_states(&self, name: &str, config: &str) -> Option<String> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .query_row(
                "SELECT states FROM alert_states WHERE slo = ?1 AND config = ?2",
                params![name, config],
                |r| r.get(0),
            )
            .ok()
    }

    /// Writes `buckets` of each key (replacing what is there) and removes
    /// buckets older than each key's horizon, and writes every SLO's alert
    /// states, in one transaction. Keys and SLOs not given (removed or
    /// changed) are removed.
    pub(crate) fn save(&self, updates: &[Update], states: &[States]) {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let written = (|| -> rusqlite::Result<()> {
            let tx = connection.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO buckets (slo, start, requests, bad) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut trim =
                    tx.prepare_cached("DELETE FROM buckets WHERE slo = ?1 AND start < ?2")?;
                for (key, horizon, buckets) in updates {
                    for (start, requests, bad) in buckets {
                        upsert.execute(params![
                            key,
                            *start as i64,
                            *requests as i64,
                            *bad as i64
                        ])?;
                    }
                    trim.execute(params![key, *horizon as i64])?;
                }
            }
            let keys: Vec<&str> = updates.iter().map(|(k, _, _)| k.as_str()).collect();
            let stored: Vec<String> = tx
                .prepare("SELECT DISTINCT slo FROM buckets")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for key in stored.iter().filter(|k| !keys.contains(&k.as_str())) {
                tx.execute("DELETE FROM buckets WHERE slo = ?1", [key])?;
            }
            tx.execute("DELETE FROM alert_states", [])?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO alert_states (slo, config, states) VALUES (?1, ?2, ?3)",
                )?;
                for (name, config, states) in states {
                    insert.execute(params![name, config, states])?;
                }
            }
            tx.commit()
        })();
        if let Err(error) = written {
            tracing::warn!(target: "gantry::slo", %error, "cannot store SLO counts");
        }
    }
}
