//! Membership: each node registers itself, heartbeats, and says which
//! configuration it runs; a node whose heartbeat is older than
//! [`DOWN_AFTER`] is listed as down. Times are the database's (`now()`), so
//! the nodes' clocks need not agree.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::migrate::Migrations;
use crate::postgres::{PgError, Postgres};

pub(crate) const MIGRATIONS: Migrations = Migrations {
    store: "nodes",
    steps: &["CREATE TABLE gantry_nodes (
        name TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        gateway TEXT NOT NULL,
        admin TEXT NOT NULL,
        api TEXT NOT NULL,
        gantry_version TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        config_version BIGINT,
        config_error TEXT,
        config_refused BIGINT,
        stopped BOOLEAN NOT NULL DEFAULT false)"],
};

/// How often a node heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);

/// Where a node serves.
#[derive(Debug, Clone)]
pub struct NodeAddresses {
    pub gateway: String,
    pub admin: String,
    pub api: String,
}

/// A node as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub gateway: String,
    pub admin: String,
    pub api: String,
    pub gantry_version: String,
    /// `up`, `down` (no heartbeat for a while) or `stopped` (shut down cleanly).
    pub state: String,
    /// The configuration version it runs, once it has applied one.
    pub config_version: Option<i64>,
    /// Why it refused the newest configuration, if it did.
    pub config_error: Option<String>,
    /// The version it refused (with `config_error`), when known.
    pub config_refused: Option<i64>,
    /// Unix times in milliseconds.
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub silent_ms: i64,
}

/// Why a node may not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "a node named `{name}` is already running (it heartbeat {silent_ms} ms ago); \
         give this one another name with --node"
    )]
    NameTaken { name: String, silent_ms: i64 },
    #[error(transparent)]
    Store(#[from] PgError),
}

/// The membership table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Membership {
    pg: Postgres,
}

impl Membership {
    pub(crate) fn new(pg: Postgres) -> Membership {
        Membership { pg }
    }

    /// Registers node `name` (this process, `incarnation`). Refused while
    /// another live process holds the name, so two nodes never share one.
    pub async fn join(
        &self,
        name: &str,
        incarnation: &str,
        addresses: &NodeAddresses,
    ) -> Result<(), JoinError> {
        let client = self.pg.client().await?;
        let down_ms = DOWN_AFTER.as_millis() as i64;
        let rows = client
            .execute(
                "INSERT INTO gantry_nodes (name, incarnation, gateway, admin, api, gantry_version)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET
                    incarnation = excluded.incarnation, gateway = excluded.gateway,
                    admin = excluded.admin, api = excluded.api,
                    gantry_version = excluded.gantry_version, started_at = now(),
                    heartbeat_at = now(), config_version = NULL, config_error = NULL,
                    config_refused = NULL, stopped = false
                 WHERE gantry_nodes.stopped
                    OR gantry_nodes.heartbeat_at < now() - $7::BIGINT * interval '1 millisecond'",
                &[
                    &name,
                    &incarnation,
                    &addresses.gateway,
                    &addresses.admin,
                    &addresses.api,
                    &env!("CARGO_PKG_VERSION"),
                    &down_ms,
                ],
            )
            .await
            .map_err(PgError::query("registering the node"))?;
        if rows == 1 {
            return Ok(());
        }
        let silent_ms = client
            .query_one(
                "SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::BIGINT FROM gantry_nodes WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(PgError::query("reading the node table"))?
            .get(0);
        Err(JoinError::NameTaken {
            name: name.to_string(),
            silent_ms,
        })
    }

    /// Heartbeats every [`HEARTBEAT`] until `stop` fires, then marks the
    /// node stopped. A failed heartbeat is logged and tried again.
    pub async fn heartbeat(self, name: String, incarnation: String, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.beat(&name, &incarnation, false).await {
                tracing::warn!(target: "gantry::cluster", %error, "heartbeat failed");
            }
        }
        if let Err(error) = self.beat(&name, &incarnation, true).await {
            tracing::warn!(target: "gantry::cluster", %error, "cannot mark the node stopped");
        }
    }

    async fn beat(&self, name: &str, incarnation: &str, stopped: bool) -> Result<(), PgError> {
        let client = self.pg.client().await?;
        client
            .execute(
                "UPDATE gantry_nodes SET heartbeat_at = now(), stopped = $3
                 WHERE name = $1 AND incarnation = $2",
                &[&name, &incarnation, &stopped],
            )
            .await
            .map_err(PgError::query("heartbeat"))?;
        Ok(())
    }

    /// Records which configuration the node runs (`running`), and which
    /// version it refused and why (`refused`), if it refused one since.
    pub async fn report_config(
        &self,
        name: &str,
        incarnation: &str,
        running: Option<i64>,
        refused: Option<(Option<i64>, &str)>,
    ) -> Result<(), PgError> {
        let client = self.pg.client().await?;
        let (refused_version, error) = refused.unzip();
        let refused_version = refused_version.flatten();
        client
            .execute(
                "UPDATE gantry_nodes SET config_version = COALESCE($3, config_version),
                        config_refused = $4, config_error = $5
                 WHERE name = $1 AND incarnation = $2",
                &[&name, &incarnation, &running, &refused_version, &error],
            )
            .await
            .map_err(PgError::query("reporting the configuration"))?;
        Ok(())
    }

    /// Every node ever registered, by name.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, PgError> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                "SELECT name, gateway, admin, api, gantry_version, stopped, config_version, config_error, config_refused,
                        (extract(epoch FROM started_at) * 1000)::BIGINT,
                        (extract(epoch FROM heartbeat_at) * 1000)::BIGINT,
                        (extract(epoch FROM now() - heartbeat_at) * 1000)::BIGINT
                 FROM gantry_nodes ORDER BY name",
                &[],
            )
            .await
            .map_err(PgError::query("listing nodes"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let stopped: bool = row.get(5);
                let silent_ms: i64 = row.get(11);
                let state = if stopped {
                    "stopped"
                } else if silent_ms > DOWN_AFTER.as_millis() as i64 {
                    "down"
                } else {
                    "up"
                };
                NodeInfo {
                    name: row.get(0),
                    gateway: row.get(1),
                    admin: row.get(2),
                    api: row.get(3),
                    gantry_version: row.get(4),
                    state: state.to_string(),
                    config_version: row.get(6),
                    config_error: row.get(7),
                    config_refused: row.get(8),
                    started_at_ms: row.get(9),
                    heartbeat_at_ms: row.get(10),
                    silent_ms,
                }
            })
            .collect())
    }
}
