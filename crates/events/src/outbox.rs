//! The outbox relay: publishes the rows a service writes into an outbox
//! table of its own SQLite database, exactly once each, in `id` order.
//!
//! The service inserts an event row in the same transaction as its state
//! change, so either both happen or neither does. The relay reads rows past
//! the last one it published, publishes them and records the new position
//! in one broker transaction (so a crash cannot publish a row twice or skip
//! one), then deletes the rows it published from the service's table.
//!
//! The table (any name, `gantry_outbox` by default):
//! ```sql
//! CREATE TABLE gantry_outbox (
//!     id INTEGER PRIMARY KEY AUTOINCREMENT,
//!     topic TEXT NOT NULL,
//!     event TEXT NOT NULL -- a CloudEvent in structured JSON
//! );
//! ```
//! A row that is not a valid event for its topic is skipped with an error in
//! the log (it cannot be refused back to the transaction that wrote it).
//!
//! In a cluster, one node at a time relays each outbox and the position is
//! the cluster's ([`crate::relay_positions`]).

use std::time::Duration;

use gantry_manifest::Outbox;
use rusqlite::{Connection, OpenFlags};
use tokio_util::sync::CancellationToken;

use crate::broker::RelayedEvent;
use crate::relay_positions::Positions;
use crate::{prepare, CloudEvent, EventBus};

/// Rows published per broker transaction at most.
const BATCH: usize = 256;

#[derive(Debug)]
pub(crate) struct RelayHandle {
    pub config: Outbox,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    pub fn start(bus: EventBus, service: &str, config: Outbox) -> RelayHandle {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            bus,
            service.to_string(),
            config.clone(),
            cancel.clone(),
        ));
        RelayHandle {
            config,
            cancel,
            task,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// A row read from the outbox.
struct Row {
    id: i64,
    topic: String,
    event: String,
}

async fn run(bus: EventBus, service: String, config: Outbox, cancel: CancellationToken) {
    let positions = bus.relay_positions();
    let relay = positions.relay_name(&service, &config);
    let mut complained = false;
    let mut relaying = false;
    loop {
        let mut wait = config.poll;
        match relay_once(&bus, &positions, &relay, &config).await {
            Ok(Some(moved)) => {
                complained = false;
                if !relaying {
                    if matches!(positions, Positions::Shared(_)) {
                        tracing::info!(target: "gantry::events", service = %service, relay = %relay, "this node relays the outbox");
                    }
                    relaying = true;
                }
                if moved == BATCH {
                    continue; // more are probably waiting
                }
            }
            Ok(None) => {
                // Another node relays this outbox.
                relaying = false;
                wait = positions.idle_wait(config.poll);
            }
            Err(error) => {
                if !complained {
                    tracing::warn!(target: "gantry::events", service = %service, database = %config.database.display(), %error, "outbox relay cannot read the outbox yet; retrying");
                    complained = true;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes the next batch of rows; returns how many rows it moved, or
/// `None` when another node relays this outbox.
async fn relay_once(
    bus: &EventBus,
    positions: &Positions,
    relay: &str,
    config: &Outbox,
) -> Result<Option<usize>, String> {
    let Some(turn) = positions.turn(relay).await? else {
        return Ok(None);
    };
    let position = positions.position(bus, &turn).await?;
    let rows = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || read_rows(&config, position))
            .await
            .map_err(|e| e.to_string())??
    };
    let Some(last) = rows.last().map(|r| r.id) else {
        return Ok(Some(0));
    };
    let count = rows.len();
    let started = std::time::SystemTime::now();
    let mut events = Vec::with_capacity(count);
    let mut spans = Vec::with_capacity(count);
    for row in rows {
        match check_row(bus, &row) {
            Ok((event, span)) => {
                events.push(event);
                spans.push(span);
            }
            Err(error) => {
                tracing::error!(target: "gantry::events", relay, row = row.id, topic = %row.topic, %error, event = %row.event, "outbox row skipped: it is not a valid event for its topic");
            }
        }
    }
    let Some(outcomes) = positions.publish(bus, &turn, last, events).await? else {
        tracing::warn!(target: "gantry::events", relay, "lost the outbox's lease while relaying; the next holder carries on");
        return Ok(None);
    };
    for ((topic, published), span) in outcomes.iter().zip(spans) {
        let stored = u64::from(!published.duplicate);
        bus.metrics().published(topic, stored, 1 - stored);
        bus.record_publish(span, started, Some(published));
    }
    // The rows are published; removing them is housekeeping, and a failure
    // here only means they are skipped by position next time.
    let config = config.clone();
    let cleaned = tokio::task::spawn_blocking(move || delete_rows(&config, last)).await;
    if let Ok(Err(error)) = cleaned {
        tracing::debug!(target: "gantry::events", relay, %error, "cannot delete relayed outbox rows");
    }
    Ok(Some(count))
}

fn check_row(
    bus: &EventBus,
    row: &Row,
) -> Result<(RelayedEvent, Option<crate::PublishSpan>), String> {
    let topic = bus
        .topic(&row.topic)
        .ok_or_else(|| format!("unknown topic `{}`", row.topic))?;
    let value: serde_json::Value =
        serde_json::from_str(&row.event).map_err(|e| format!("the event is not JSON: {e}"))?;
    let mut event = CloudEvent::from_json(value).map_err(|e| e.to_string())?;
    let span = bus.publish_span(&row.topic, &mut event);
    let prepared = prepare(&topic, &event, 1).map_err(|e| e.to_string())?;
    Ok((
        RelayedEvent {
            topic: row.topic.clone(),
            event: prepared,
            dedup_window: topic.config.dedup_window,
        },
        span,
    ))
}

fn open(config: &Outbox) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        &config.database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", config.database.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

fn read_rows(config: &Outbox, after: i64) -> Result<Vec<Row>, String> {
    let conn = open(config)?;
    let sql = format!(
        "SELECT id, topic, event FROM \"{}\" WHERE id > ?1 ORDER BY id LIMIT ?2",
        config.table
    );
    let mut statement = conn
        .prepare(&sql)
        .map_err(|e| format!("cannot read table `{}`: {e}", config.table))?;
    let rows = statement
        .query_map(rusqlite::params![after, BATCH as i64], |r| {
            Ok(Row {
                id: r.get(0)?,
                topic: r.get(1)?,
                event: r.get(2)?,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

fn delete_rows(config: &Outbox, through: i64) -> Result<(), String> {
    let conn = open(config)?;
    conn.execute(
        &format!("DELETE FROM \"{}\" WHERE id <= ?1", config.table),
        [through],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
