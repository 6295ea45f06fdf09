//! The connection pool every cluster store shares, and the one error type
//! for "PostgreSQL could not do it".

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use gantry_problem::{Blame, Explain, Problem};
use http::StatusCode;
use tokio_postgres::NoTls;

/// How long a request waits for a free connection before it is answered 503.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long connecting to PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why PostgreSQL could not do what was asked: Gantry's own trouble (its
/// database), never the caller's, and worth retrying. Answered 503
/// `store-unavailable`. The connection URL (which may hold a password) is
/// never part of the message.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the [cluster] postgres URL is not valid: {0}")]
    Url(String),
    #[error("no PostgreSQL connection is free: {0}")]
    Pool(String),
    #[error("{context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the {store} store's schema is at version {found}, newer than this Gantry knows ({known}); \
         run the Gantry release that upgraded it, or a newer one"
    )]
    Newer {
        store: String,
        found: i64,
        known: i64,
    },
}

impl PgError {
    /// Wraps a driver error with what was being done.
    pub fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        move |source| PgError::Query { context, source }
    }
}

impl Explain for PgError {
    fn blame(&self) -> Blame {
        Blame::Gantry
    }

    fn problem(&self) -> Problem {
        store_unavailable(self)
    }
}

/// The answer to a request that a store failed (SQLite or PostgreSQL):
/// 503 `store-unavailable`, to be tried again shortly.
pub fn store_unavailable(error: &dyn std::fmt::Display) -> Problem {
    Problem::edge(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "Gantry's store is unavailable",
    )
    .detail(format!("{error}; try again shortly"))
    .retry_after(1)
}

/// Where the cluster's database is and how to use it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database`. Secret: never logged.
    pub url: String,
    /// The schema every table lives in (`public` unless told otherwise), so
    /// several clusters (or tests) can share one database.
    pub schema: String,
    /// Connections per node.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"<secret>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// A pool of connections to the cluster's database. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    // Behind an `Arc` so a handle stays one pointer wide: stores hold it by
    // value and clone it into tasks.
    config: Arc<tokio_postgres::Config>,
    schema: Arc<str>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A connection borrowed from the pool.
pub type Client = deadpool_postgres::Object;

impl Postgres {
    /// Builds the pool and checks that the database answers; creates the
    /// schema when it is missing.
    pub async fn connect(options: &PgOptions) -> Result<Postgres, PgError> {
        if !valid_schema(&options.schema) {
            return Err(PgError::Url(format!(
                "schema `{}` must be lowercase letters, digits and `_`, starting with a letter",
                options.schema
            )));
        }
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
        config
            .options(format!("-c search_path={}", options.schema))
            .application_name("gantry")
            .connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        let postgres = Postgres {
            pool,
            config: Arc::new(config),
            schema: options.schema.as_str().into(),
        };
        let client = postgres.client().await?;
        // `IF NOT EXISTS` does not make two concurrent creations safe: the
        // loser of the race fails on the catalog's unique index. Nodes start
        // together, so that failure means the schema is there.
        let created = client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", options.schema))
            .await;
        if let Err(error) = created {
            let raced = error.code().is_some_and(|code| {
                *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    || *code == tokio_postgres::error::SqlState::DUPLICATE_SCHEMA
            });
            if !raced {
                return Err(PgError::query("creating the cluster's schema")(error));
            }
        }
        Ok(postgres)
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<Client, PgError> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::Pool(e.to_string()))
    }

    /// The schema every table lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A connection of its own, outside the pool (for `LISTEN`), and the
    /// task that drives it, whose messages arrive on `notifications`.
    pub(crate) async fn dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        PgError,
    > {
        self.config
            .connect(NoTls)
            .await
            .map_err(PgError::query("connecting to PostgreSQL"))
    }

    /// A channel name for `LISTEN`/`NOTIFY` scoped to this cluster's schema
    /// (channels are database-wide; schemas are not).
    pub(crate) fn channel(&self, what: &str) -> String {
        format!("gantry_{what}_{}", self.schema)
    }
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_cannot_inject_sql() {
        assert!(valid_schema("public"));
        assert!(valid_schema("gantry_t1"));
        assert!(!valid_schema("x; DROP TABLE y"));
        assert!(!valid_schema("Public"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema(""));
    }

    #[test]
    fn options_never_show_the_url() {
        let options = PgOptions {
            url: "postgres://u:hunter2@db/x".into(),
            schema: "public".into(),
            pool_size: 4,
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
