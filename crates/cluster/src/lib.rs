//! Cluster mode: several Gantry nodes sharing one PostgreSQL.
//!
//! This crate holds what every clustered store needs ([`Postgres`], the
//! pool; [`migrate`], versioned schemas for PostgreSQL and SQLite alike) and
//! the cluster's own coordination:
//!
//! - [`ConfigStore`]: numbered configuration versions, announced to every
//!   node with `LISTEN`/`NOTIFY`;
//! - [`Membership`]: nodes register, heartbeat, report the configuration
//!   they run; silent ones are listed as down;
//! - [`Leases`]: ongoing work held by one node at a time, and once-only
//!   claims for one-off work (a schedule's run for one due time).
//!
//! Each subsystem's PostgreSQL store lives beside its SQLite store in the
//! subsystem's crate and borrows connections from the same [`Postgres`].

pub mod config;
pub mod lease;
pub mod migrate;
pub mod nodes;
pub mod postgres;
pub mod testing;

pub use config::{Applied, ConfigStore, ConfigVersion};
pub use lease::Leases;
pub use nodes::{JoinError, Membership, NodeAddresses, NodeInfo};
pub use postgres::{PgError, PgOptions, Postgres};

/// This node's handle on the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    pg: Postgres,
    node: String,
    /// Tells this process apart from an earlier one with the same name.
    incarnation: String,
    config: ConfigStore,
    membership: Membership,
    leases: Leases,
}

impl Cluster {
    /// Connects as node `node` and brings the cluster's own tables up to
    /// date. Joining (see [`Cluster::join`]) is a separate step, taken once
    /// the node can serve.
    pub async fn connect(options: &PgOptions, node: &str) -> Result<Cluster, PgError> {
        let pg = Postgres::connect(options).await?;
        Cluster::with_pool(pg, node).await
    }

    /// Like [`Cluster::connect`], over an existing pool.
    pub async fn with_pool(pg: Postgres, node: &str) -> Result<Cluster, PgError> {
        for migrations in [&config::MIGRATIONS, &nodes::MIGRATIONS, &lease::MIGRATIONS] {
            migrate::postgres(&pg, migrations).await?;
        }
        Ok(Cluster {
            config: ConfigStore::new(pg.clone()),
            membership: Membership::new(pg.clone()),
            leases: Leases::new(pg.clone()),
            pg,
            node: node.to_string(),
            incarnation: uuid::Uuid::new_v4().to_string(),
        })
    }

    pub fn postgres(&self) -> &Postgres {
        &self.pg
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This process's identity: the node name and a random incarnation, so a
    /// lease held by a killed process is not mistaken for its successor's.
    pub fn holder(&self) -> String {
        format!("{}/{}", self.node, self.incarnation)
    }

    pub fn config(&self) -> &ConfigStore {
        &self.config
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Registers this node, then heartbeats until `stop` fires.
    ///
    /// A node restarted right after a crash finds its name still held by
    /// its previous process, whose heartbeat has not yet gone stale: it
    /// waits for that (at most [`nodes::DOWN_AFTER`] and a heartbeat), so a
    /// supervisor's immediate restart works. A name that stays live is held
    /// by another running process, and joining fails.
    pub async fn join(
        &self,
        addresses: &NodeAddresses,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, JoinError> {
        let deadline = tokio::time::Instant::now() + nodes::DOWN_AFTER + 2 * nodes::HEARTBEAT;
        let mut waited = false;
        loop {
            match self
                .membership
                .join(&self.node, &self.incarnation, addresses)
                .await
            {
                Err(JoinError::NameTaken { silent_ms, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    if !waited {
                        tracing::info!(target: "gantry::cluster", node = %self.node, silent_ms,
                            "the node name is held by a process that heartbeat recently; waiting to see it go silent");
                        waited = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        Ok(tokio::spawn(self.membership.clone().heartbeat(
            self.node.clone(),
            self.incarnation.clone(),
            stop,
        )))
    }

    /// Records the configuration this node runs, and the version it refused
    /// since and why, if it refused one.
    pub async fn report_config(&self, running: Option<i64>, refused: Option<(Option<i64>, &str)>) {
        if let Err(error) = self
            .membership
            .report_config(&self.node, &self.incarnation, running, refused)
            .await
        {
            tracing::warn!(target: "gantry::cluster", %error, "cannot report the configuration version");
        }
    }
}
