//! Idempotency keys: a durable record per (route, consumer, key) of the first
//! request's fingerprint and, once it is done, its response.
//!
//! Records live in SQLite (WAL mode, `gantry.db` in the data directory), so replays work
//! across restarts. Claiming a key is one transaction on one connection, so
//! of concurrent requests with the same key exactly one runs. A record left
//! "running" by a crash is taken over once it is older than the route's
//! timeout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use rusqlite::{params, Connection, OptionalExtension};

use crate::database::StoreError;
use sha2::{Digest, Sha256};

/// The durable store of idempotency records. Cheap to clone.
#[derive(Clone)]
pub struct IdempotencyStore {
    connection: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore").finish_non_exhaustive()
    }
}

/// A stored response.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Bytes,
}

/// What claiming a key found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The key is new (or expired): this request runs.
    Proceed,
    /// The same request already ran: replay its response.
    Replay(Stored),
    /// The same key is running right now.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

/// Identifies one record.
#[derive(Debug, Clone)]
pub(crate) struct RecordKey {
    pub(crate) route: String,
    pub(crate) consumer: String,
    pub(crate) key: String,
}

impl IdempotencyStore {
    /// Opens (or creates) `idempotency.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<IdempotencyStore, StoreError> {
        let connection = crate::database::open(
            data_dir,
            "CREATE TABLE IF NOT EXISTS idempotency (
                 route TEXT NOT NULL, consumer TEXT NOT NULL, key TEXT NOT NULL,
                 fingerprint BLOB NOT NULL, running INTEGER NOT NULL,
                 started_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
                 status INTEGER, headers TEXT, body BLOB,
                 PRIMARY KEY (route, consumer, key));",
        )?;
        Ok(IdempotencyStore { connection })
    }

    /// Claims `record` for a request with `fingerprint`.
    pub(crate) async fn claim(
        &self,
        record: RecordKey,
        fingerprint: [u8; 32],
        ttl: Duration,
        running_timeout: Duration,
    ) -> Result<Claim, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.claim_now(&record, &fingerprint, ttl, running_timeout)
        })
        .await?
    }

    fn claim_now(
        &self,
        record: &RecordKey,
        fingerprint: &[u8; 32],
        ttl: Duration,
        running_timeout: Duration,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let tx = connection
            .transaction()
            .map_err(StoreError::sql("idempotency records"))?;
        let now = now_ms();
        let existing = tx
            .query_row(
                "SELECT fingerprint, running, started_ms, expires_ms, status, headers, body FROM idempotency
                 WHERE route = ?1 AND consumer = ?2 AND key = ?3",
                params![record.route, record.consumer, record.key],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, bool>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<u16>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, Option<Vec<u8>>>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(StoreError::sql("idempotency records"))?;
        let claim = match existing {
            Some((stored_fingerprint, running, started, expires, status, headers, body)) => {
                let expired = expires <= now;
                let abandoned = running && started + running_timeout.as_millis() as i64 <= now;
                if expired || abandoned {
                    None
                } else if stored_fingerprint != fingerprint {
                    Some(Claim::Mismatch)
                } else if running {
                    Some(Claim::InFlight)
                } else {
                    let headers: Vec<(String, Vec<u8>)> = headers
                        .and_then(|h| serde_json::from_str::<Vec<(String, String)>>(&h).ok())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, value)| (name, value.into_bytes()))
                        .collect();
                    Some(Claim::Replay(Stored {
                        status: StatusCode::from_u16(status.unwrap_or(200))
                            .unwrap_or(StatusCode::OK),
                        headers,
                        body: Bytes::from(body.unwrap_or_default()),
                    }))
                }
            }
            None => None,
        };
        let claim = match claim {
            Some(claim) => claim,
            None => {
                tx.execute(
                    "INSERT OR REPLACE INTO idempotency (route, consumer, key, fingerprint, running, started_ms, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
                    params![record.route, record.consumer, record.key, fingerprint.as_slice(), now, now + ttl.as_millis() as i64],
                )
                .map_err(StoreError::sql("idempotency records"))?;
                Claim::Proceed
            }
        };
        tx.commit()
            .map_err(StoreError::sql("idempotency records"))?;
        Ok(claim)
    }

    /// Stores the response of a claimed key.
    pub(crate) async fn complete(
        &self,
        record: RecordKey,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) {
        let store = self.clone();
        let headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "date" | "x-request-id" | "content-length")
            })
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let result = tokio::task::spawn_blocking(move || {
            let connection = store.connection.lock().unwrap_or_else(|e| e.into_inner());
            connection.execute(
                "UPDATE idempotency SET running = 0, status = ?4, headers = ?5, body = ?6
                 WHERE route = ?1 AND consumer = ?2 AND key = ?3",
                params![
                    record.route,
                    record.consumer,
                    record.key,
                    status.as_u16(),
                    serde_json::to_string(&headers).unwrap_or_default(),
                    body.as_ref()
                ],
            )
        })
        .await;
        let error = match result {
            Ok(Ok(_)) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::error!(target: "gantry::idempotency", %error, "cannot store a response");
    }

    /// Forgets a claimed key whose request did not get a storable answer, so
    /// a retry runs again.
    pub(crate) fn release(&self, record: RecordKey) {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let connection = store.connection.lock().unwrap_or_else(|e| e.into_inner());
            let _ = connection.execute(
                "DELETE FROM idempotency WHERE route = ?1 AND consumer = ?2 AND key = ?3 AND running = 1",
                params![record.route, record.consumer, record.key],
            );
        });
    }
}

/// Releases a claimed key when dropped, unless its response was handed on
/// to be stored: any early exit (shed, breaker, upstream failure) frees the key.
pub(crate) struct ClaimGuard {
    store: IdempotencyStore,
    record: Option<RecordKey>,
}

impl ClaimGuard {
    pub(crate) fn new(store: IdempotencyStore, record: RecordKey) -> ClaimGuard {
        ClaimGuard {
            store,
            record: Some(record),
        }
    }

    /// Stores the response when `captured` arrives; releases the key if it
    /// never does (the body was too large or the client left).
    pub(crate) fn store_when(
        mut self,
        captured: tokio::sync::oneshot::Receiver<crate::shadow::Captured>,
    ) {
        let (store, record) = (
            self.store.clone(),
            self.record.take().expect("a guard holds its record"),
        );
        tokio::spawn(async move {
            match captured.await {
                Ok(response) => {
                    store
                        .complete(record, response.status, response.headers, response.body)
                        .await
                }
                Err(_) => store.release(record),
            }
        });
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.store.release(record);
        }
    }
}

/// The fingerprint of a request: method, path and query, consumer and body.
pub(crate) fn fingerprint(
    method: &str,
    path_and_query: &str,
    consumer: &str,
    body: &[u8],
) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        consumer.as_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().into()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
