//! Work that must happen once across the cluster.
//!
//! - A **lease** gives one node a named piece of ongoing work (evaluating
//!   SLO alerts, relaying an outbox) until it expires; the holder renews it
//!   while it works, and another node takes it over once it lapses. Each
//!   change of holder bumps the lease's fencing number.
//! - A **once-claim** records that a one-off thing happened (a schedule's
//!   run for one due time): the first node to claim it does it, the others
//!   see it claimed. Claims are kept for a day, then swept.

use std::time::Duration;

use crate::migrate::Migrations;
use crate::postgres::{PgError, Postgres};

pub(crate) const MIGRATIONS: Migrations = Migrations {
    store: "leases",
    steps: &["CREATE TABLE gantry_leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            fence BIGINT NOT NULL DEFAULT 1);
        CREATE TABLE gantry_once (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            node TEXT NOT NULL,
            claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (scope, key));"],
};

/// How long once-claims are kept.
const ONCE_KEPT: &str = "1 day";

/// Leases and once-claims. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    pg: Postgres,
}

impl Leases {
    pub(crate) fn new(pg: Postgres) -> Leases {
        Leases { pg }
    }

    /// Takes or renews lease `name` for `holder` for `ttl`. Returns the
    /// lease's fencing number when `holder` has it, `None` when another
    /// holder's lease has not expired.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, PgError> {
        let client = self.pg.client().await?;
        let ttl_ms = ttl.as_millis() as i64;
        let row = client
            .query_opt(
                "INSERT INTO gantry_leases (name, holder, expires_at)
                 VALUES ($1, $2, now() + $3::BIGINT * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET
                    holder = excluded.holder,
                    expires_at = excluded.expires_at,
                    fence = CASE WHEN gantry_leases.holder = excluded.holder
                                 THEN gantry_leases.fence ELSE gantry_leases.fence + 1 END
                 WHERE gantry_leases.holder = excluded.holder OR gantry_leases.expires_at < now()
                 RETURNING fence",
                &[&name, &holder, &ttl_ms],
            )
            .await
            .map_err(PgError::query("taking a lease"))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Gives lease `name` up, if `holder` has it, so another node can take
    /// it at once.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), PgError> {
        let client = self.pg.client().await?;
        client
            .execute(
                "UPDATE gantry_leases SET expires_at = now() - interval '1 millisecond'
                 WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(PgError::query("releasing a lease"))?;
        Ok(())
    }

    /// Claims `key` in `scope` for `node`: true for the first claim only.
    pub async fn claim_once(&self, scope: &str, key: &str, node: &str) -> Result<bool, PgError> {
        let client = self.pg.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO gantry_once (scope, key, node) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&scope, &key, &node],
            )
            .await
            .map_err(PgError::query("claiming a one-off task"))?;
        if inserted == 1 && fastrand_sweep() {
            let _ = client
                .execute(
                    &format!(
                        "DELETE FROM gantry_once WHERE claimed_at < now() - interval '{ONCE_KEPT}'"
                    ),
                    &[],
                )
                .await;
        }
        Ok(inserted == 1)
    }
}

/// About one claim in a hundred sweeps old claims.
fn fastrand_sweep() -> bool {
    uuid::Uuid::new_v4().as_bytes()[0] < 3
}
