//! Rate limits as the cluster's total (cluster mode).
//!
//! Every node decides each request alone, from its own buckets, so no
//! request waits on the database. Every [`EXCHANGE`], each node writes what
//! its limiters allowed per key since the last exchange, reads what the
//! other nodes wrote since, and charges that to its own buckets. A limit is
//! then exceeded by at most what the other nodes can allow within one
//! exchange and the database round trip: with three nodes and a limit of
//! 100 requests per second, about 2 × 100 × 0.1 s = 20 requests in a second
//! at worst, and much less averaged over a limit's period.
//!
//! Rows are read by time (the last [`HORIZON`]) rather than by id, since
//! ids are handed out before commit and can become visible out of order; a
//! row is charged the first time it is seen.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// How often a node trades its counts.
pub const EXCHANGE: Duration = Duration::from_millis(100);
/// How far back each read looks.
const HORIZON_MS: i64 = 3_000;
/// Rows older than this are deleted (by whichever node's turn it is).
const KEEP_MS: i64 = 30_000;

const MIGRATIONS: Migrations = Migrations {
    store: "rate_limits",
    steps: &["CREATE TABLE gantry_rate_usage (
            id BIGSERIAL PRIMARY KEY,
            node TEXT NOT NULL,
            limiter TEXT NOT NULL,
            key TEXT NOT NULL,
            count INTEGER NOT NULL,
            at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
        CREATE INDEX gantry_rate_usage_at ON gantry_rate_usage (at)"],
};

/// Creates or upgrades the table the exchange uses.
pub async fn migrate(pg: &Postgres) -> Result<(), PgError> {
    gantry_cluster::migrate::postgres(pg, &MIGRATIONS).await?;
    Ok(())
}

/// Trades this node's rate-limit counts with the other nodes' until `stop`.
/// `node` tells this process's rows apart (a node name and incarnation).
pub async fn run(gateway: Gateway, pg: Postgres, node: String, stop: CancellationToken) {
    let mut seen: HashSet<i64> = HashSet::new();
    let mut tick = tokio::time::interval(EXCHANGE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        rounds += 1;
        match exchange(&gateway, &pg, &node, &mut seen, rounds).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(target: "gantry::gateway", "rate-limit counts are shared with the cluster again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(target: "gantry::gateway", %error, "cannot share rate-limit counts with the cluster; limits hold per node until it comes back");
            }
            Err(_) => {}
        }
    }
}

async fn exchange(
    gateway: &Gateway,
    pg: &Postgres,
    node: &str,
    seen: &mut HashSet<i64>,
    rounds: u64,
) -> Result<(), PgError> {
    let table = gateway.table();
    let limiters: Vec<_> = table
        .routes
        .iter()
        .filter_map(|route| Some((route.label.clone(), route.rate_limit.clone()?)))
        .collect();
    if limiters.is_empty() {
        return Ok(());
    }
    let (mut names, mut keys, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (label, limiter) in &limiters {
        limiter.share();
        for (key, count) in limiter.take_allowed() {
            names.push(label.to_string());
            keys.push(key);
            counts.push(count as i32);
        }
    }
    let client = pg.client().await?;
    if !names.is_empty() {
        client
            .execute(
                "INSERT INTO gantry_rate_usage (node, limiter, key, count)
                 SELECT $1, * FROM UNNEST($2::TEXT[], $3::TEXT[], $4::INTEGER[])",
                &[&node as &(dyn ToSql + Sync), &names, &keys, &counts],
            )
            .await
            .map_err(PgError::query("sharing rate-limit counts"))?;
    }
    let rows = client
        .query(
            "SELECT id, limiter, key, count FROM gantry_rate_usage
             WHERE node <> $1 AND at > clock_timestamp() - $2::BIGINT * interval '1 millisecond'",
            &[&node as &(dyn ToSql + Sync), &HORIZON_MS],
        )
        .await
        .map_err(PgError::query("reading the cluster's rate-limit counts"))?;
    let now = Instant::now();
    let mut current = HashSet::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.get(0);
        current.insert(id);
        if seen.contains(&id) {
            continue;
        }
        let (label, key, count): (&str, &str, i32) = (row.get(1), row.get(2), row.get(3));
        if let Some((_, limiter)) = limiters.iter().find(|(l, _)| &**l == label) {
            limiter.charge(key, count.max(0) as u32, now);
        }
    }
    *seen = current;
    // About every 10 s (offset per node by its name), old rows go.
    if rounds % 100 == u64::from(node.bytes().fold(0u8, |a, b| a.wrapping_add(b))) % 100 {
        client
            .execute(
                "DELETE FROM gantry_rate_usage
                 WHERE at < clock_timestamp() - $1::BIGINT * interval '1 millisecond'",
                &[&KEEP_MS],
            )
            .await
            .map_err(PgError::query("trimming rate-limit counts"))?;
    }
    Ok(())
}
