//! Versioned schema migrations, for PostgreSQL and for the embedded SQLite
//! files alike.
//!
//! Each store names itself and lists its migrations in order; migration `n`
//! (1-based) takes the store's schema from version `n - 1` to `n`. The
//! version reached is kept in `gantry_schema` (one row per store), so a
//! database upgraded by a newer Gantry is refused by an older one with a
//! message, instead of being misread.
//!
//! On PostgreSQL every migration runs in one transaction under an advisory
//! lock, so nodes starting together apply each migration once; the DDL is
//! transactional, so a failed migration leaves nothing half-done. On SQLite
//! the same happens in one `IMMEDIATE` transaction.

use rusqlite::{params, Connection, OptionalExtension};

use crate::postgres::{PgError, Postgres};

/// One store's migrations, in order.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// The store's name (`idempotency`, `workflows`, ...), unique per database.
    pub store: &'static str,
    /// Each step's SQL; step `i` brings the schema to version `i + 1`.
    pub steps: &'static [&'static str],
}

impl Migrations {
    fn known(&self) -> i64 {
        self.steps.len() as i64
    }
}

/// What a migration run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
}

const PG_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS gantry_schema (
    store TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// Brings `migrations.store`'s tables in PostgreSQL up to date.
pub async fn postgres(pg: &Postgres, migrations: &Migrations) -> Result<Migrated, PgError> {
    let mut client = pg.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query("starting a migration"))?;
    // One lock per schema: migrations of different stores wait for each
    // other, which costs nothing at start and keeps `gantry_schema` simple.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':gantry-migrations'))",
        &[],
    )
    .await
    .map_err(PgError::query("locking the schema for migrations"))?;
    tx.batch_execute(PG_VERSIONS)
        .await
        .map_err(PgError::query("creating gantry_schema"))?;
    let found: i64 = tx
        .query_opt(
            "SELECT version FROM gantry_schema WHERE store = $1",
            &[&migrations.store],
        )
        .await
        .map_err(PgError::query("reading the schema version"))?
        .map_or(0, |row| row.get(0));
    let known = migrations.known();
    if found > known {
        return Err(PgError::Newer {
            store: migrations.store.to_string(),
            found,
            known,
        });
    }
    for step in &migrations.steps[found as usize..] {
        tx.batch_execute(step)
            .await
            .map_err(PgError::query("applying a schema migration"))?;
    }
    if found < known {
        tx.execute(
            "INSERT INTO gantry_schema (store, version) VALUES ($1, $2)
             ON CONFLICT (store) DO UPDATE SET version = excluded.version, updated_at = now()",
            &[&migrations.store, &known],
        )
        .await
        .map_err(PgError::query("recording the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(PgError::query("committing a migration"))?;
    if found < known {
        tracing::info!(target: "gantry::cluster", store = migrations.store, from = found, to = known, "schema migrated");
    }
    Ok(Migrated {
        from: found,
        to: known,
    })
}

/// Why a SQLite file's schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SqliteMigrationError {
    #[error(
        "the {store} store's schema is at version {found}, newer than this Gantry knows ({known}); \
         run the Gantry release that upgraded it, or a newer one"
    )]
    Newer {
        store: String,
        found: i64,
        known: i64,
    },
    #[error("migrating the {store} store: {source}")]
    Sql {
        store: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Brings `migrations.store`'s tables in a SQLite file up to date. The first
/// migration of every embedded store is its original `CREATE ... IF NOT
/// EXISTS` schema, so files made before versions were kept upgrade cleanly.
pub fn sqlite(
    connection: &mut Connection,
    migrations: &Migrations,
) -> Result<Migrated, SqliteMigrationError> {
    let sql = |source| SqliteMigrationError::Sql {
        store: migrations.store.to_string(),
        source,
    };
    let tx = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS gantry_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .map_err(sql)?;
    let found: i64 = tx
        .query_row(
            "SELECT version FROM gantry_schema WHERE store = ?1",
            params![migrations.store],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql)?
        .unwrap_or(0);
    let known = migrations.known();
    if found > known {
        return Err(SqliteMigrationError::Newer {
            store: migrations.store.to_string(),
            found,
            known,
        });
    }
    for step in &migrations.steps[found as usize..] {
        tx.execute_batch(step).map_err(sql)?;
    }
    if found < known {
        tx.execute(
            "INSERT INTO gantry_schema (store, version) VALUES (?1, ?2)
             ON CONFLICT (store) DO UPDATE SET version = excluded.version",
            params![migrations.store, known],
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(Migrated {
        from: found,
        to: known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Migrations = Migrations {
        store: "things",
        steps: &["CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY)"],
    };
    const V2: Migrations = Migrations {
        store: "things",
        steps: &[
            "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY)",
            "ALTER TABLE things ADD COLUMN name TEXT",
        ],
    };

    #[test]
    fn sqlite_upgrades_old_files_and_refuses_newer_ones() {
        let mut connection = Connection::open_in_memory().unwrap();
        // A file made before versions were kept: the table exists, no version.
        connection
            .execute_batch(
                "CREATE TABLE things (id INTEGER PRIMARY KEY); INSERT INTO things VALUES (7)",
            )
            .unwrap();
        assert_eq!(
            sqlite(&mut connection, &V1).unwrap(),
            Migrated { from: 0, to: 1 }
        );
        assert_eq!(
            sqlite(&mut connection, &V2).unwrap(),
            Migrated { from: 1, to: 2 }
        );
        assert_eq!(
            sqlite(&mut connection, &V2).unwrap(),
            Migrated { from: 2, to: 2 }
        );
        let name: Option<String> = connection
            .query_row("SELECT name FROM things WHERE id = 7", [], |row| row.get(0))
            .unwrap();
        assert_eq!(name, None, "the old row survived the migration");
        let error = sqlite(&mut connection, &V1).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("version 2, newer than this Gantry knows (1)"),
            "{error}"
        );
    }
}
