//! API keys: long random secrets handed to consumers, stored only as SHA-256
//! hashes (in `gantry.db` in the data directory), so neither the database
//! nor the logs ever hold a usable key. A key is shown once, when created.
//!
//! Secrets are 256 bits from the operating system's CSPRNG. Keys made before
//! that (their secrets came from a fast, predictable generator) are marked
//! `rotate` in listings.
//!
//! Valid keys are cached in memory (by hash) so a busy route does not query
//! SQLite per request. An entry lives at most [`CACHE_TTL`], and a revocation
//! through this store drops the cache at once, so a revoked key stops working
//! within a second even when revoked elsewhere. Misses are not cached: a
//! flood of made-up keys cannot churn the cache (the failed-authentication
//! limit throttles it before it reaches the store).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use rusqlite::{params, Connection, OptionalExtension};

use crate::database::StoreError;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How long a lookup's answer is reused.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Cached answers kept at most; past it the cache starts over.
const CACHE_CAPACITY: usize = 10_000;
/// How key material is generated: 1 was `fastrand`, 2 is the OS CSPRNG.
const SCHEME_CSPRNG: i64 = 2;

/// The embedded table as it was first made; the `scheme` column is added
/// after it by [`ApiKeys::open`] (that upgrade predates versioned schemas).
const SQLITE: Migrations = Migrations {
    store: "api_keys",
    steps: &["CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY, consumer TEXT NOT NULL, hash BLOB NOT NULL UNIQUE,
                 created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);"],
};

const POSTGRES: Migrations = Migrations {
    store: "api_keys",
    steps: &["CREATE TABLE gantry_api_keys (
                 id TEXT PRIMARY KEY, consumer TEXT NOT NULL, hash BYTEA NOT NULL UNIQUE,
                 created_ms BIGINT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT false,
                 scheme BIGINT NOT NULL);"],
};

/// The API key store. Cheap to clone.
#[derive(Clone)]
pub struct ApiKeys {
    backend: Backend,
    /// Consumers of valid keys by key hash, and when they were looked up.
    cache: Arc<Mutex<KeyCache>>,
    /// Bumped by every revocation: a lookup that started before one does not
    /// put what it read into the cache.
    generation: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Postgres),
}

/// Consumers of valid keys by key hash, and when they were looked up.
type KeyCache = HashMap<[u8; 32], (Arc<str>, Instant)>;

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").finish_non_exhaustive()
    }
}

/// A key as listed: never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub consumer: String,
    /// Unix time in milliseconds.
    pub created_ms: i64,
    pub revoked: bool,
    /// Made by a Gantry that drew secrets from a non-cryptographic generator:
    /// create a new key for the consumer and revoke this one.
    pub rotate: bool,
}

/// A key just created: the only time its secret is visible.
#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

impl ApiKeys {
    /// The keys in `gantry.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ApiKeys, StoreError> {
        let connection = crate::database::open(data_dir, &SQLITE)?;
        {
            // Keys from before `scheme` existed were made with `fastrand` (scheme 1).
            let db = connection.lock().unwrap_or_else(|e| e.into_inner());
            let has_scheme = db
                .prepare("SELECT 1 FROM pragma_table_info('api_keys') WHERE name = 'scheme'")
                .and_then(|mut s| s.exists([]))
                .map_err(StoreError::sql("cannot read the api_keys table"))?;
            if !has_scheme {
                db.execute_batch(
                    "ALTER TABLE api_keys ADD COLUMN scheme INTEGER NOT NULL DEFAULT 1;",
                )
                .map_err(StoreError::sql("cannot upgrade the api_keys table"))?;
            }
        }
        Ok(ApiKeys::with(Backend::Sqlite(connection)))
    }

    /// The keys in the cluster's PostgreSQL: a key made on one node works
    /// on all of them, and a revocation reaches every node within [`CACHE_TTL`].
    pub async fn postgres(pg: Postgres) -> Result<ApiKeys, StoreError> {
        gantry_cluster::migrate::postgres(&pg, &POSTGRES).await?;
        Ok(ApiKeys::with(Backend::Postgres(pg)))
    }

    fn with(backend: Backend) -> ApiKeys {
        ApiKeys {
            backend,
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// Creates a key for `consumer`: `gk_<id>_<secret>`, a 64-bit id and a
    /// 256-bit secret, both from the OS CSPRNG.
    pub async fn create(&self, consumer: &str) -> Result<NewApiKey, StoreError> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
        let id = hex::encode(&random[..8]);
        let key = format!("gk_{id}_{}", hex::encode(&random[8..]));
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let digest = hash(&key);
        match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                connection
                    .execute(
                        "INSERT INTO api_keys (id, consumer, hash, created_ms, scheme) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![id, consumer, digest.as_slice(), created_ms, SCHEME_CSPRNG],
                    )
                    .map_err(StoreError::sql("API keys"))?;
            }
            Backend::Postgres(pg) => {
                pg.client()
                    .await?
                    .execute(
                        "INSERT INTO gantry_api_keys (id, consumer, hash, created_ms, scheme) VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &consumer, &digest.as_slice(), &created_ms, &SCHEME_CSPRNG],
                    )
                    .await
                    .map_err(PgError::query("API keys"))?;
            }
        }
        Ok(NewApiKey {
            info: ApiKeyInfo {
                id,
                consumer: consumer.to_string(),
                created_ms,
                revoked: false,
                rotate: false,
            },
            key,
        })
    }

    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let info = |id, consumer, created_ms, revoked, scheme: i64| ApiKeyInfo {
            id,
            consumer,
            created_ms,
            revoked,
            rotate: !revoked && scheme < SCHEME_CSPRNG,
        };
        match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                let mut statement = connection
                    .prepare(
                        "SELECT id, consumer, created_ms, revoked, scheme FROM api_keys ORDER BY created_ms",
                    )
                    .map_err(StoreError::sql("API keys"))?;
                let rows = statement
                    .query_map([], |row| {
                        Ok(info(
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })
                    .map_err(StoreError::sql("API keys"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(StoreError::sql("API keys"))
            }
            Backend::Postgres(pg) => {
                let rows = pg
                    .client()
                    .await?
                    .query(
                        "SELECT id, consumer, created_ms, revoked, scheme FROM gantry_api_keys ORDER BY created_ms, id",
                        &[],
                    )
                    .await
                    .map_err(PgError::query("API keys"))?;
                Ok(rows
                    .iter()
                    .map(|row| info(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
                    .collect())
            }
        }
    }

    /// Revokes a key; `false` when there is no such key.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let changed = match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                connection
                    .execute("UPDATE api_keys SET revoked = 1 WHERE id = ?1", params![id])
                    .map_err(StoreError::sql("API keys"))? as u64
            }
            Backend::Postgres(pg) => pg
                .client()
                .await?
                .execute(
                    "UPDATE gantry_api_keys SET revoked = true WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(PgError::query("API keys"))?,
        };
        // The cache is keyed by hash, which the id does not give: start over.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(changed > 0)
    }

    /// The consumer a presented key belongs to, if it is valid and not
    /// revoked; `Err` when the store cannot be read.
    pub(crate) async fn consumer(&self, presented: &str) -> Result<Option<Arc<str>>, StoreError> {
        let digest = hash(presented);
        let now = Instant::now();
        if let Some((consumer, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(Some(consumer.clone()));
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.clone();
                tokio::task::spawn_blocking(move || {
                    let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                    connection
                        .query_row(
                            "SELECT consumer FROM api_keys WHERE hash = ?1 AND revoked = 0",
                            params![digest.as_slice()],
                            |row| row.get::<_, String>(0),
                        )
                        .optional()
                        .map_err(StoreError::sql("cannot read API keys"))
                })
                .await??
            }
            Backend::Postgres(pg) => pg
                .client()
                .await?
                .query_opt(
                    "SELECT consumer FROM gantry_api_keys WHERE hash = $1 AND NOT revoked",
                    &[&digest.as_slice()],
                )
                .await
                .map_err(PgError::query("cannot read API keys"))?
                .map(|row| row.get::<_, String>(0)),
        }
        .map(Arc::<str>::from);
        if let Some(consumer) = &found {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if self.generation.load(Ordering::SeqCst) == generation {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(digest, (consumer.clone(), now));
            }
        }
        Ok(found)
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_from_before_the_csprng_are_marked_to_rotate() {
        let dir = tempfile::tempdir().unwrap();
        {
            // gantry.db as an older Gantry left it: no `scheme` column.
            let db = Connection::open(dir.path().join("gantry.db")).unwrap();
            db.execute_batch(
                "CREATE TABLE api_keys (
                     id TEXT PRIMARY KEY, consumer TEXT NOT NULL, hash BLOB NOT NULL UNIQUE,
                     created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO api_keys VALUES ('0badc0de', 'old', x'00', 1, 0);
                 INSERT INTO api_keys VALUES ('0badc0df', 'gone', x'01', 2, 1);",
            )
            .unwrap();
        }
        let keys = ApiKeys::open(dir.path()).unwrap();
        let fresh = keys.create("new").await.unwrap();
        let listed = keys.list().await.unwrap();
        let rotate: Vec<(&str, bool)> = listed
            .iter()
            .map(|k| (k.consumer.as_str(), k.rotate))
            .collect();
        assert_eq!(rotate, [("old", true), ("gone", false), ("new", false)]);
        assert_ne!(fresh.key, keys.create("new").await.unwrap().key);
        // Opening again does not try to add the column twice.
        ApiKeys::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_key_revoked_by_another_process_stops_working_after_the_cache_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::open(dir.path()).unwrap();
        let key = keys.create("shop").await.unwrap();
        assert_eq!(
            keys.consumer(&key.key).await.unwrap().as_deref(),
            Some("shop")
        );
        // Another Gantry (another connection to the same database) revokes it.
        let elsewhere = ApiKeys::open(dir.path()).unwrap();
        assert!(elsewhere.revoke(&key.info.id).await.unwrap());
        // This one still has it cached, for at most CACHE_TTL.
        assert_eq!(
            keys.consumer(&key.key).await.unwrap().as_deref(),
            Some("shop")
        );
        tokio::time::sleep(CACHE_TTL + Duration::from_millis(50)).await;
        assert_eq!(keys.consumer(&key.key).await.unwrap(), None);
        // Made-up keys are not cached.
        assert_eq!(keys.consumer("gk_made_up").await.unwrap(), None);
        assert!(!keys.cache.lock().unwrap().contains_key(&hash("gk_made_up")));
    }
}

/// One suite for every backend.
#[cfg(test)]
mod conformance {
    use super::*;

    async fn keys_work_until_revoked(keys: ApiKeys) {
        let made = keys.create("shop").await.unwrap();
        assert!(made.key.starts_with(&format!("gk_{}_", made.info.id)));
        assert_eq!(made.key.len(), 3 + 16 + 1 + 64);
        assert_eq!(
            keys.consumer(&made.key).await.unwrap().as_deref(),
            Some("shop")
        );
        assert_eq!(keys.consumer("gk_0_0").await.unwrap(), None);
        let other = keys.create("billing").await.unwrap();
        let listed: Vec<(String, bool)> = keys
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.consumer, k.revoked))
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&("shop".into(), false)));
        assert!(keys.revoke(&made.info.id).await.unwrap());
        assert!(!keys.revoke("no-such-id").await.unwrap());
        // A revocation through this store takes effect at once.
        assert_eq!(keys.consumer(&made.key).await.unwrap(), None);
        assert_eq!(
            keys.consumer(&other.key).await.unwrap().as_deref(),
            Some("billing")
        );
        let revoked = keys
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.id == made.info.id)
            .unwrap();
        assert!(revoked.revoked && !revoked.rotate);
    }

    #[tokio::test]
    async fn sqlite_conforms() {
        let dir = tempfile::tempdir().unwrap();
        keys_work_until_revoked(ApiKeys::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn postgres_conforms() {
        let Some(options) = gantry_cluster::testing::fresh_schema("apikeys").await else {
            return;
        };
        let pg = Postgres::connect(&options).await.unwrap();
        keys_work_until_revoked(ApiKeys::postgres(pg.clone()).await.unwrap()).await;
        // A key made through one node works on another.
        let a = ApiKeys::postgres(pg.clone()).await.unwrap();
        let b = ApiKeys::postgres(pg).await.unwrap();
        let made = a.create("shared").await.unwrap();
        assert_eq!(
            b.consumer(&made.key).await.unwrap().as_deref(),
            Some("shared")
        );
    }
}
