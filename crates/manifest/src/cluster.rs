//! `[cluster]`: run as one node of a cluster sharing a PostgreSQL database.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// `[cluster]`: without it Gantry runs embedded (SQLite files in the data
/// directory); with it, every node started with this manifest shares the
/// state in PostgreSQL, takes configurations applied with `gantry apply`,
/// and leases work (saga runs, schedules, alerts) so it happens once.
#[derive(Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Where the database is: `postgres = "postgres://user@host:5432/db"`,
    /// or `postgres_env = "VAR"` to read the URL (and its password) from
    /// an environment variable instead of the file.
    #[serde(flatten)]
    pub postgres: PostgresUrl,
    /// The schema Gantry's tables live in (default `public`), so several
    /// clusters can share a database.
    pub schema: String,
    /// Connections each node keeps to PostgreSQL (default 16).
    pub pool_size: u32,
    /// How long a node holds a saga run without renewing it; a dead node's
    /// runs move to another node after at most this long, plus the one
    /// second between sweeps (default 8s: within 10 s in all).
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub lease: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("postgres", &self.postgres)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Where the PostgreSQL URL comes from.
#[derive(Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostgresUrl {
    /// Written in the manifest.
    Postgres(String),
    /// Read from this environment variable when the node starts.
    PostgresEnv(String),
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A URL may carry a password: never printed.
            PostgresUrl::Postgres(_) => f.write_str("Postgres(<url>)"),
            PostgresUrl::PostgresEnv(var) => write!(f, "PostgresEnv({var})"),
        }
    }
}

impl PostgresUrl {
    /// The URL, reading the environment when it comes from there.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            PostgresUrl::Postgres(url) => Ok(url.clone()),
            PostgresUrl::PostgresEnv(var) => std::env::var(var).map_err(|_| {
                format!("[cluster] postgres_env names `{var}`, which is not set; export it with the database URL")
            }),
        }
    }
}
