//! Configuration versions: every manifest applied to the cluster is stored,
//! numbered, with who applied it; nodes are told of a new one with
//! `NOTIFY` and fetch it.
//!
//! A version is only ever added, never changed: a rollback stores the old
//! text again as a new version, so the history says what ran when.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::migrate::Migrations;
use crate::postgres::{PgError, Postgres};

pub(crate) const MIGRATIONS: Migrations = Migrations {
    store: "config",
    steps: &["CREATE TABLE gantry_config (
        version BIGSERIAL PRIMARY KEY,
        manifest TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        applied_by TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '')"],
};

/// One stored configuration, without its text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigVersion {
    pub version: i64,
    /// SHA-256 of the manifest text, hex.
    pub sha256: String,
    /// Unix time in milliseconds.
    pub applied_at_ms: i64,
    pub applied_by: String,
    /// `rollback to 3`, or empty.
    pub note: String,
}

/// What storing a configuration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new version was stored and announced.
    New(i64),
    /// The text is the newest version's already: nothing was stored.
    Unchanged(i64),
}

impl Applied {
    pub fn version(&self) -> i64 {
        match self {
            Applied::New(v) | Applied::Unchanged(v) => *v,
        }
    }
}

/// The cluster's configuration history. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    pg: Postgres,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl ConfigStore {
    pub(crate) fn new(pg: Postgres) -> ConfigStore {
        ConfigStore { pg }
    }

    /// The cluster's newest configuration `(version, manifest, seeded)`;
    /// when it has none yet, `manifest` stored as the first version
    /// (`seeded`). Nodes starting together against an empty cluster agree on
    /// one first version.
    pub async fn seed(&self, manifest: &str, by: &str) -> Result<(i64, String, bool), PgError> {
        let mut client = self.pg.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("storing a configuration"))?;
        tx.execute("LOCK TABLE gantry_config IN EXCLUSIVE MODE", &[])
            .await
            .map_err(PgError::query("locking the configuration history"))?;
        if let Some(row) = tx
            .query_opt(
                "SELECT version, manifest FROM gantry_config ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(PgError::query("reading the newest configuration"))?
        {
            return Ok((row.get(0), row.get(1), false));
        }
        let version = self
            .store(tx, manifest, &sha256_hex(manifest), by, "first start")
            .await?;
        Ok((version, manifest.to_string(), true))
    }

    /// Stores `manifest` as the newest version (unless it already is) and
    /// tells every node. The caller has validated it.
    pub async fn apply(&self, manifest: &str, by: &str, note: &str) -> Result<Applied, PgError> {
        let sha = sha256_hex(manifest);
        let mut client = self.pg.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("storing a configuration"))?;
        // Applies are serialised, so "is it unchanged?" and the insert see
        // the same newest version.
        tx.execute("LOCK TABLE gantry_config IN EXCLUSIVE MODE", &[])
            .await
            .map_err(PgError::query("locking the configuration history"))?;
        let newest = tx
            .query_opt(
                "SELECT version, sha256 FROM gantry_config ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(PgError::query("reading the newest configuration"))?;
        if let Some(row) = newest {
            let (version, newest_sha): (i64, String) = (row.get(0), row.get(1));
            if newest_sha == sha && note.is_empty() {
                return Ok(Applied::Unchanged(version));
            }
        }
        Ok(Applied::New(
            self.store(tx, manifest, &sha, by, note).await?,
        ))
    }

    /// Inserts the next version in `tx` (which holds the history's lock),
    /// announces it and commits; the version's number.
    async fn store(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        manifest: &str,
        sha: &str,
        by: &str,
        note: &str,
    ) -> Result<i64, PgError> {
        let version: i64 = tx
            .query_one(
                "INSERT INTO gantry_config (manifest, sha256, applied_by, note)
                 VALUES ($1, $2, $3, $4) RETURNING version",
                &[&manifest, &sha, &by, &note],
            )
            .await
            .map_err(PgError::query("storing a configuration"))?
            .get(0);
        // Delivered when the transaction commits, never before.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.pg.channel("config"), &version.to_string()],
        )
        .await
        .map_err(PgError::query("announcing a configuration"))?;
        tx.commit()
            .await
            .map_err(PgError::query("storing a configuration"))?;
        Ok(version)
    }

    /// The newest version and its text, if any was ever applied.
    pub async fn latest(&self) -> Result<Option<(i64, String)>, PgError> {
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "SELECT version, manifest FROM gantry_config ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(PgError::query("reading the newest configuration"))?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The text of `version`.
    pub async fn text(&self, version: i64) -> Result<Option<String>, PgError> {
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "SELECT manifest FROM gantry_config WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(PgError::query("reading a configuration"))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The newest `limit` versions, newest first.
    pub async fn history(&self, limit: i64) -> Result<Vec<ConfigVersion>, PgError> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                "SELECT version, sha256, (extract(epoch FROM applied_at) * 1000)::BIGINT, applied_by, note
                 FROM gantry_config ORDER BY version DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(PgError::query("reading the configuration history"))?;
        Ok(rows
            .iter()
            .map(|row| ConfigVersion {
                version: row.get(0),
                sha256: row.get(1),
                applied_at_ms: row.get(2),
                applied_by: row.get(3),
                note: row.get(4),
            })
            .collect())
    }

    /// Stores the text of `version` again as the newest version.
    pub async fn rollback(&self, version: i64, by: &str) -> Result<Option<Applied>, PgError> {
        let Some(text) = self.text(version).await? else {
            return Ok(None);
        };
        self.apply(&text, by, &format!("rollback to {version}"))
            .await
            .map(Some)
    }

    /// Sends the number of every new version on the returned channel until
    /// `stop` fires: from `NOTIFY` as soon as one is stored, and from a
    /// look at the newest version after every (re)connection, so a
    /// notification missed while disconnected is not lost. Duplicates are
    /// possible; the receiver compares with what it runs.
    pub fn watch(&self, stop: CancellationToken) -> mpsc::Receiver<i64> {
        let (tx, rx) = mpsc::channel(16);
        let pg = self.pg.clone();
        let store = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let listened = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = listen(&pg, &store, &tx) => result,
                };
                if tx.is_closed() {
                    return;
                }
                if let Err(error) = listened {
                    tracing::warn!(target: "gantry::cluster", %error, retry_in = ?backoff, "lost the configuration channel; reconnecting");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        rx
    }
}

/// One connection's worth of listening: returns when it breaks.
async fn listen(pg: &Postgres, store: &ConfigStore, tx: &mpsc::Sender<i64>) -> Result<(), PgError> {
    let (client, mut connection) = pg.dedicated().await?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                    if notes_tx.send(note.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", pg.channel("config")))
            .await
            .map_err(PgError::query("listening for configurations"))?;
        // Anything stored while we were not listening.
        if let Some((version, _)) = store.latest().await? {
            let _ = tx.send(version).await;
        }
        while let Some(payload) = notes.recv().await {
            if let Ok(version) = payload.parse::<i64>() {
                if tx.send(version).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
    .await;
    drop(client);
    match driver.await {
        Ok(Err(error)) => Err(PgError::Query {
            context: "the configuration channel",
            source: error,
        }),
        _ => result,
    }
}
