//! API keys: long random secrets handed to consumers, stored only as SHA-256
//! hashes (in `gantry.db` in the data directory), so neither the database
//! nor the logs ever hold a usable key. A key is shown once, when created.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The API key store. Cheap to clone.
#[derive(Clone)]
pub struct ApiKeys {
    connection: Arc<Mutex<Connection>>,
}

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
}

/// A key just created: the only time its secret is visible.
#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

impl ApiKeys {
    pub fn open(data_dir: &Path) -> Result<ApiKeys, String> {
        let connection = crate::database::open(
            data_dir,
            "CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY, consumer TEXT NOT NULL, hash BLOB NOT NULL UNIQUE,
                 created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);",
        )?;
        Ok(ApiKeys { connection })
    }

    /// Creates a key for `consumer`.
    pub fn create(&self, consumer: &str) -> Result<NewApiKey, String> {
        let id = format!("{:08x}", fastrand::u32(..));
        let secret: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
        let key = format!("gk_{id}_{secret}");
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .execute(
                "INSERT INTO api_keys (id, consumer, hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, consumer, hash(&key).as_slice(), created_ms],
            )
            .map_err(|e| e.to_string())?;
        Ok(NewApiKey {
            info: ApiKeyInfo {
                id,
                consumer: consumer.to_string(),
                created_ms,
                revoked: false,
            },
            key,
        })
    }

    pub fn list(&self) -> Result<Vec<ApiKeyInfo>, String> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let mut statement = connection
            .prepare("SELECT id, consumer, created_ms, revoked FROM api_keys ORDER BY created_ms")
            .map_err(|e| e.to_string())?;
        let rows = statement
            .query_map([], |row| {
                Ok(ApiKeyInfo {
                    id: row.get(0)?,
                    consumer: row.get(1)?,
                    created_ms: row.get(2)?,
                    revoked: row.get(3)?,
                })
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// Revokes a key; `false` when there is no such key.
    pub fn revoke(&self, id: &str) -> Result<bool, String> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .execute("UPDATE api_keys SET revoked = 1 WHERE id = ?1", params![id])
            .map(|changed| changed > 0)
            .map_err(|e| e.to_string())
    }

    /// The consumer a presented key belongs to, if it is valid and not revoked.
    pub(crate) async fn consumer(&self, presented: &str) -> Option<String> {
        let digest = hash(presented);
        let keys = self.clone();
        tokio::task::spawn_blocking(move || {
            let connection = keys.connection.lock().unwrap_or_else(|e| e.into_inner());
            connection
                .query_row(
                    "SELECT consumer FROM api_keys WHERE hash = ?1 AND revoked = 0",
                    params![digest.as_slice()],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .ok()
                .flatten()
        })
        .await
        .ok()
        .flatten()
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
