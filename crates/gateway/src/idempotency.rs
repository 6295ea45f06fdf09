//! Idempotency keys: a durable record per (route, consumer, key) of the first
//! request's fingerprint and, once it is done, its response.
//!
//! Records live in SQLite (WAL mode, `gantry.db` in the data directory) or,
//! in cluster mode, in the cluster's PostgreSQL, so replays work across
//! restarts and across nodes. Claiming a key is one transaction, so of
//! concurrent requests with the same key (to any node) exactly one runs. A
//! record left "running" by a crash is taken over once it is older than the
//! route's timeout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use http::{HeaderMap, StatusCode};
use rusqlite::{params, Connection, OptionalExtension};

use crate::database::StoreError;
use sha2::{Digest, Sha256};

const SQLITE: Migrations = Migrations {
    store: "idempotency",
    steps: &["CREATE TABLE IF NOT EXISTS idempotency (
                 route TEXT NOT NULL, consumer TEXT NOT NULL, key TEXT NOT NULL,
                 fingerprint BLOB NOT NULL, running INTEGER NOT NULL,
                 started_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
                 status INTEGER, headers TEXT, body BLOB,
                 PRIMARY KEY (route, consumer, key));"],
};

const POSTGRES: Migrations = Migrations {
    store: "idempotency",
    steps: &["CREATE TABLE gantry_idempotency (
                 route TEXT NOT NULL, consumer TEXT NOT NULL, key TEXT NOT NULL,
                 fingerprint BYTEA NOT NULL, running BOOLEAN NOT NULL,
                 started_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL,
                 status INTEGER, headers TEXT, body BYTEA,
                 PRIMARY KEY (route, consumer, key));
              CREATE INDEX gantry_idempotency_expiry ON gantry_idempotency (expires_ms);"],
};

/// The durable store of idempotency records. Cheap to clone.
#[derive(Clone)]
pub struct IdempotencyStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Postgres),
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

/// A record as read, before deciding what a claim finds.
struct Existing {
    fingerprint: Vec<u8>,
    running: bool,
    started_ms: i64,
    expires_ms: i64,
    status: Option<i32>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
}

impl Existing {
    /// What a claim with `fingerprint` finds: `None` when the record is
    /// expired or abandoned and the claim takes it over.
    fn claim(self, fingerprint: &[u8; 32], now: i64, running_timeout: Duration) -> Option<Claim> {
        let expired = self.expires_ms <= now;
        let abandoned = self.running && self.started_ms + running_timeout.as_millis() as i64 <= now;
        if expired || abandoned {
            None
        } else if self.fingerprint != fingerprint {
            Some(Claim::Mismatch)
        } else if self.running {
            Some(Claim::InFlight)
        } else {
            let headers: Vec<(String, Vec<u8>)> = self
                .headers
                .and_then(|h| serde_json::from_str::<Vec<(String, String)>>(&h).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes()))
                .collect();
            Some(Claim::Replay(Stored {
                status: u16::try_from(self.status.unwrap_or(200))
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::OK),
                headers,
                body: Bytes::from(self.body.unwrap_or_default()),
            }))
        }
    }
}

impl IdempotencyStore {
    /// Opens (or creates) the records in `gantry.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<IdempotencyStore, StoreError> {
        let connection = crate::database::open(data_dir, &SQLITE)?;
        Ok(IdempotencyStore {
            backend: Backend::Sqlite(connection),
        })
    }

    /// The records in the cluster's PostgreSQL, shared by every node.
    pub async fn postgres(pg: Postgres) -> Result<IdempotencyStore, StoreError> {
        gantry_cluster::migrate::postgres(&pg, &POSTGRES).await?;
        Ok(IdempotencyStore {
            backend: Backend::Postgres(pg),
        })
    }

    /// Claims `record` for a request with `fingerprint`.
    pub(crate) async fn claim(
        &self,
        record: RecordKey,
        fingerprint: [u8; 32],
        ttl: Duration,
        running_timeout: Duration,
    ) -> Result<Claim, StoreError> {
        match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.clone();
                tokio::task::spawn_blocking(move || {
                    claim_sqlite(&connection, &record, &fingerprint, ttl, running_timeout)
                })
                .await?
            }
            Backend::Postgres(pg) => {
                Ok(claim_postgres(pg, &record, &fingerprint, ttl, running_timeout).await?)
            }
        }
    }

    /// Stores the response of a claimed key.
    pub(crate) async fn complete(
        &self,
        record: RecordKey,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "date" | "x-request-id" | "content-length")
            })
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let headers = serde_json::to_string(&headers).unwrap_or_default();
        let status = i32::from(status.as_u16());
        let error = match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                    connection.execute(
                        "UPDATE idempotency SET running = 0, status = ?4, headers = ?5, body = ?6
                         WHERE route = ?1 AND consumer = ?2 AND key = ?3",
                        params![
                            record.route,
                            record.consumer,
                            record.key,
                            status,
                            headers,
                            body.as_ref()
                        ],
                    )
                })
                .await;
                match result {
                    Ok(Ok(_)) => return,
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                }
            }
            Backend::Postgres(pg) => {
                let result = async {
                    let client = pg.client().await?;
                    let update = client
                        .prepare_cached(
                            "UPDATE gantry_idempotency SET running = false, status = $4, headers = $5, body = $6
                             WHERE route = $1 AND consumer = $2 AND key = $3",
                        )
                        .await
                        .map_err(PgError::query("storing a response"))?;
                    client
                        .execute(
                            &update,
                            &[&record.route, &record.consumer, &record.key, &status, &headers, &body.as_ref()],
                        )
                        .await
                        .map_err(PgError::query("storing a response"))
                }
                .await;
                match result {
                    Ok(_) => return,
                    Err(error) => error.to_string(),
                }
            }
        };
        tracing::error!(target: "gantry::idempotency", %error, "cannot store a response");
    }

    /// Forgets a claimed key whose request did not get a storable answer, so
    /// a retry runs again.
    pub(crate) fn release(&self, record: RecordKey) {
        match &self.backend {
            Backend::Sqlite(connection) => {
                let connection = connection.clone();
                tokio::task::spawn_blocking(move || {
                    let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = connection.execute(
                        "DELETE FROM idempotency WHERE route = ?1 AND consumer = ?2 AND key = ?3 AND running = 1",
                        params![record.route, record.consumer, record.key],
                    );
                });
            }
            Backend::Postgres(pg) => {
                let pg = pg.clone();
                tokio::spawn(async move {
                    let Ok(client) = pg.client().await else {
                        return;
                    };
                    let _ = client
                        .execute(
                            "DELETE FROM gantry_idempotency WHERE route = $1 AND consumer = $2 AND key = $3 AND running",
                            &[&record.route, &record.consumer, &record.key],
                        )
                        .await;
                });
            }
        }
    }
}

fn claim_sqlite(
    connection: &Mutex<Connection>,
    record: &RecordKey,
    fingerprint: &[u8; 32],
    ttl: Duration,
    running_timeout: Duration,
) -> Result<Claim, StoreError> {
    let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
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
                Ok(Existing {
                    fingerprint: row.get(0)?,
                    running: row.get(1)?,
                    started_ms: row.get(2)?,
                    expires_ms: row.get(3)?,
                    status: row.get(4)?,
                    headers: row.get(5)?,
                    body: row.get(6)?,
                })
            },
        )
        .optional()
        .map_err(StoreError::sql("idempotency records"))?;
    let claim = match existing.and_then(|e| e.claim(fingerprint, now, running_timeout)) {
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

/// On PostgreSQL: insert the claim if the key is new; otherwise lock the
/// record and decide. Two nodes inserting the same new key at once: the
/// second insert waits for the first to commit, then finds the record.
async fn claim_postgres(
    pg: &Postgres,
    record: &RecordKey,
    fingerprint: &[u8; 32],
    ttl: Duration,
    running_timeout: Duration,
) -> Result<Claim, PgError> {
    let context = "idempotency records";
    let now = now_ms();
    let expires = now + ttl.as_millis() as i64;
    let mut client = pg.client().await?;
    // A new key (the common case) is one statement, committed on its own,
    // prepared once per connection.
    let insert = client
        .prepare_cached(
            "INSERT INTO gantry_idempotency (route, consumer, key, fingerprint, running, started_ms, expires_ms)
             VALUES ($1, $2, $3, $4, true, $5, $6) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(PgError::query(context))?;
    let inserted = client
        .execute(
            &insert,
            &[
                &record.route,
                &record.consumer,
                &record.key,
                &fingerprint.as_slice(),
                &now,
                &expires,
            ],
        )
        .await
        .map_err(PgError::query(context))?;
    if inserted == 1 {
        return Ok(Claim::Proceed);
    }
    // A key seen before: decide under the row's lock.
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query(context))?;
    let claim = {
        let row = tx
            .query_opt(
                "SELECT fingerprint, running, started_ms, expires_ms, status, headers, body
                 FROM gantry_idempotency WHERE route = $1 AND consumer = $2 AND key = $3 FOR UPDATE",
                &[&record.route, &record.consumer, &record.key],
            )
            .await
            .map_err(PgError::query(context))?;
        let existing = row.map(|row| Existing {
            fingerprint: row.get(0),
            running: row.get(1),
            started_ms: row.get(2),
            expires_ms: row.get(3),
            status: row.get(4),
            headers: row.get(5),
            body: row.get(6),
        });
        match existing.and_then(|e| e.claim(fingerprint, now, running_timeout)) {
            Some(claim) => claim,
            None => {
                // Expired, abandoned, or released between the insert and
                // the select: this request takes the key.
                tx.execute(
                    "INSERT INTO gantry_idempotency (route, consumer, key, fingerprint, running, started_ms, expires_ms)
                     VALUES ($1, $2, $3, $4, true, $5, $6)
                     ON CONFLICT (route, consumer, key) DO UPDATE SET
                        fingerprint = excluded.fingerprint, running = true, started_ms = excluded.started_ms,
                        expires_ms = excluded.expires_ms, status = NULL, headers = NULL, body = NULL",
                    &[&record.route, &record.consumer, &record.key, &fingerprint.as_slice(), &now, &expires],
                )
                .await
                .map_err(PgError::query(context))?;
                Claim::Proceed
            }
        }
    };
    tx.commit().await.map_err(PgError::query(context))?;
    Ok(claim)
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

/// One suite for every backend: what a claim finds, run against SQLite and
/// PostgreSQL alike.
#[cfg(test)]
mod conformance {
    use super::*;

    fn record(key: &str) -> RecordKey {
        RecordKey {
            route: "orders".into(),
            consumer: "alice".into(),
            key: key.into(),
        }
    }

    const TTL: Duration = Duration::from_secs(3600);
    const RUNNING: Duration = Duration::from_secs(30);

    async fn claims_replays_and_mismatches(store: IdempotencyStore) {
        let print = [1u8; 32];
        assert!(matches!(
            store
                .claim(record("k1"), print, TTL, RUNNING)
                .await
                .unwrap(),
            Claim::Proceed
        ));
        assert!(matches!(
            store
                .claim(record("k1"), print, TTL, RUNNING)
                .await
                .unwrap(),
            Claim::InFlight
        ));
        assert!(matches!(
            store
                .claim(record("k1"), [2u8; 32], TTL, RUNNING)
                .await
                .unwrap(),
            Claim::Mismatch
        ));
        let mut headers = HeaderMap::new();
        headers.insert("location", "/orders/7".parse().unwrap());
        headers.insert("date", "now".parse().unwrap());
        store
            .complete(
                record("k1"),
                StatusCode::CREATED,
                headers,
                Bytes::from_static(b"{\"id\":7}"),
            )
            .await;
        match store
            .claim(record("k1"), print, TTL, RUNNING)
            .await
            .unwrap()
        {
            Claim::Replay(stored) => {
                assert_eq!(stored.status, StatusCode::CREATED);
                assert_eq!(stored.body.as_ref(), b"{\"id\":7}");
                assert_eq!(
                    stored.headers,
                    [("location".to_string(), b"/orders/7".to_vec())]
                );
            }
            other => panic!("expected a replay, got {other:?}"),
        }
        // Another consumer's key of the same name is another record.
        let mut bob = record("k1");
        bob.consumer = "bob".into();
        assert!(matches!(
            store.claim(bob, print, TTL, RUNNING).await.unwrap(),
            Claim::Proceed
        ));
    }

    async fn released_expired_and_abandoned_keys_run_again(store: IdempotencyStore) {
        let print = [3u8; 32];
        assert!(matches!(
            store
                .claim(record("gone"), print, TTL, RUNNING)
                .await
                .unwrap(),
            Claim::Proceed
        ));
        store.release(record("gone"));
        // The release is fire-and-forget: wait until it has happened.
        let mut claimed = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if matches!(
                store
                    .claim(record("gone"), print, TTL, RUNNING)
                    .await
                    .unwrap(),
                Claim::Proceed
            ) {
                claimed = true;
                break;
            }
        }
        assert!(claimed, "a released key runs again");
        // Abandoned: running for longer than the running timeout.
        assert!(matches!(
            store
                .claim(record("stuck"), print, TTL, Duration::ZERO)
                .await
                .unwrap(),
            Claim::Proceed
        ));
        assert!(matches!(
            store
                .claim(record("stuck"), print, TTL, Duration::ZERO)
                .await
                .unwrap(),
            Claim::Proceed
        ));
        // Expired: a finished record past its time to live.
        assert!(matches!(
            store
                .claim(record("old"), print, Duration::ZERO, RUNNING)
                .await
                .unwrap(),
            Claim::Proceed
        ));
        store
            .complete(
                record("old"),
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert!(matches!(
            store
                .claim(record("old"), [4u8; 32], TTL, RUNNING)
                .await
                .unwrap(),
            Claim::Proceed
        ));
    }

    async fn one_of_many_concurrent_claims_proceeds(store: IdempotencyStore) {
        let claims = (0..16).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(record("race"), [5u8; 32], TTL, RUNNING).await })
        });
        let mut proceeded = 0;
        for claim in claims {
            match claim.await.unwrap().unwrap() {
                Claim::Proceed => proceeded += 1,
                Claim::InFlight => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(proceeded, 1);
    }

    async fn sqlite() -> (IdempotencyStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (IdempotencyStore::open(dir.path()).unwrap(), dir)
    }

    async fn postgres(tag: &str) -> Option<IdempotencyStore> {
        let options = gantry_cluster::testing::fresh_schema(tag).await?;
        let pg = Postgres::connect(&options).await.unwrap();
        Some(IdempotencyStore::postgres(pg).await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_conforms() {
        let (store, _dir) = sqlite().await;
        claims_replays_and_mismatches(store.clone()).await;
        released_expired_and_abandoned_keys_run_again(store.clone()).await;
        one_of_many_concurrent_claims_proceeds(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_conforms() {
        let Some(store) = postgres("idempotency").await else {
            return;
        };
        claims_replays_and_mismatches(store.clone()).await;
        released_expired_and_abandoned_keys_run_again(store.clone()).await;
        one_of_many_concurrent_claims_proceeds(store).await;
    }
}
