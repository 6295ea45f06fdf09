//! SLO counts and alert states in cluster mode: every node adds the counts
//! of the requests it answered to shared per-minute rows in PostgreSQL,
//! reads the cluster's totals back at each evaluation, and one node at a
//! time (the holder of the `slo-alerts` lease) evaluates the alerts, stores
//! their states and sends the notifications. So an alert sees every node's
//! traffic and pages once, and a node that dies hands the evaluation over
//! within the lease.

use std::time::Duration;

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{Cluster, Leases, PgError, Postgres};
use tokio_postgres::types::ToSql;

use crate::store::{Bucket, States};

pub(crate) const MIGRATIONS: Migrations = Migrations {
    store: "slos",
    steps: &["CREATE TABLE gantry_slo_buckets (
            slo TEXT NOT NULL,
            start BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            bad BIGINT NOT NULL,
            PRIMARY KEY (slo, start));
        CREATE TABLE gantry_slo_alerts (
            slo TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            states TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"],
};

/// The lease whose holder evaluates and sends alerts.
const LEASE: &str = "slo-alerts";

/// One SLO's counts added since the last flush: its key, the oldest start
/// it keeps (older rows are removed), the added buckets.
pub(crate) type Added = (String, u64, Vec<Bucket>);

/// The cluster's SLO tables. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct SharedCounts {
    pg: Postgres,
    leases: Leases,
    holder: String,
}

impl SharedCounts {
    pub(crate) async fn open(cluster: &Cluster) -> Result<SharedCounts, PgError> {
        gantry_cluster::migrate::postgres(cluster.postgres(), &MIGRATIONS).await?;
        Ok(SharedCounts {
            pg: cluster.postgres().clone(),
            leases: cluster.leases().clone(),
            holder: cluster.holder(),
        })
    }

    /// Adds each SLO's new counts to the shared rows, in one transaction
    /// (all or nothing, so a failed flush can be tried again whole).
    pub(crate) async fn add(&self, added: &[Added]) -> Result<(), PgError> {
        let mut client = self.pg.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("adding SLO counts"))?;
        for (key, horizon, buckets) in added {
            for (start, requests, bad) in buckets {
                let row: [&(dyn ToSql + Sync); 4] =
                    [key, &(*start as i64), &(*requests as i64), &(*bad as i64)];
                tx.execute(
                    "INSERT INTO gantry_slo_buckets (slo, start, requests, bad) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (slo, start) DO UPDATE SET
                        requests = gantry_slo_buckets.requests + excluded.requests,
                        bad = gantry_slo_buckets.bad + excluded.bad",
                    &row,
                )
                .await
                .map_err(PgError::query("adding SLO counts"))?;
            }
            tx.execute(
                "DELETE FROM gantry_slo_buckets WHERE slo = $1 AND start < $2",
                &[key, &(*horizon as i64)],
            )
            .await
            .map_err(PgError::query("trimming SLO counts"))?;
        }
        tx.commit()
            .await
            .map_err(PgError::query("adding SLO counts"))
    }

    /// The cluster's buckets of `key` from `since` on, oldest first.
    pub(crate) async fn load(&self, key: &str, since: u64) -> Result<Vec<Bucket>, PgError> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                "SELECT start, requests, bad FROM gantry_slo_buckets
                 WHERE slo = $1 AND start >= $2 ORDER BY start",
                &[&key, &(since as i64)],
            )
            .await
            .map_err(PgError::query("reading SLO counts"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let (start, requests, bad): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
                (start as u64, requests as u64, bad as u64)
            })
            .collect())
    }

    /// The alert states stored for SLO `name`, if it had `config` then.
    pub(crate) async fn load_states(
        &self,
        name: &str,
        config: &str,
    ) -> Result<Option<String>, PgError> {
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "SELECT states FROM gantry_slo_alerts WHERE slo = $1 AND config = $2",
                &[&name, &config],
            )
            .await
            .map_err(PgError::query("reading SLO alert states"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores every SLO's alert states (the evaluating node only).
    pub(crate) async fn save_states(&self, states: &[States]) -> Result<(), PgError> {
        let client = self.pg.client().await?;
        for (name, config, states) in states {
            client
                .execute(
                    "INSERT INTO gantry_slo_alerts (slo, config, states) VALUES ($1, $2, $3)
                     ON CONFLICT (slo) DO UPDATE SET config = excluded.config,
                        states = excluded.states, updated_at = now()",
                    &[name, config, states],
                )
                .await
                .map_err(PgError::query("storing SLO alert states"))?;
        }
        Ok(())
    }

    /// Takes or renews the evaluation lease: true while this node holds it.
    pub(crate) async fn lead(&self, every: Duration) -> bool {
        // Three missed evaluations (at least 10 s) before another node
        // takes over: a slow round does not move the lease.
        let ttl = (every * 3).max(Duration::from_secs(10));
        match self.leases.acquire(LEASE, &self.holder, ttl).await {
            Ok(fence) => fence.is_some(),
            Err(error) => {
                tracing::warn!(target: "gantry::slo", %error, "cannot take the SLO evaluation lease; not evaluating this round");
                false
            }
        }
    }

    /// Gives the evaluation lease up (clean stop), so another node takes it
    /// at once.
    pub(crate) async fn release(&self) {
        let _ = self.leases.release(LEASE, &self.holder).await;
    }
}
