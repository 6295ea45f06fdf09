//! `[cluster]`.

use std::time::Duration;

use toml_edit::Item;

use super::Decoder;
use crate::cluster::{Cluster, PostgresUrl};
use crate::diagnostics::ErrorCode;

const CLUSTER_KEYS: &[&str] = &["postgres", "postgres_env", "schema", "pool_size", "lease"];

impl Decoder<'_> {
    pub(super) fn cluster(&mut self, item: &Item) -> Option<Cluster> {
        let s = self.section(item, "[cluster]".into())?;
        self.unknown_keys(&s, CLUSTER_KEYS);
        let url = self.string(&s, "postgres");
        let env = self.string(&s, "postgres_env");
        let postgres = match (url, env) {
            (Some(url), None) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    self.bad_value(
                        &s,
                        "postgres",
                        "`postgres` in [cluster] is not a postgres:// URL",
                        "e.g. `postgres = \"postgres://gantry@127.0.0.1:5432/gantry\"`",
                    );
                }
                PostgresUrl::Postgres(url)
            }
            (None, Some(var)) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.bad_value(
                        &s,
                        "postgres_env",
                        format!("`{var}` is not an environment variable name"),
                        "use letters, digits and `_`, e.g. `postgres_env = \"GANTRY_POSTGRES\"`",
                    );
                }
                PostgresUrl::PostgresEnv(var)
            }
            (Some(_), Some(_)) => {
                self.bad_value(
                    &s,
                    "postgres_env",
                    "[cluster] has both `postgres` and `postgres_env`",
                    "keep one: the URL itself, or the variable that holds it",
                );
                return None;
            }
            (None, None) => {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.span.clone(),
                    "[cluster] does not say where the database is".to_string(),
                    Some("add `postgres = \"postgres://...\"` or `postgres_env = \"VAR\"`".into()),
                );
                return None;
            }
        };
        let schema = self.string(&s, "schema").unwrap_or_else(|| "public".into());
        let valid_schema = schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && schema.len() <= 48;
        if !valid_schema {
            self.bad_value(
                &s,
                "schema",
                format!("`{schema}` is not a schema name Gantry accepts"),
                "use lowercase letters, digits and `_`, starting with a letter (at most 48)",
            );
        }
        let pool_size = self.integer(&s, "pool_size", 1, 1000).unwrap_or(16) as u32;
        let lease = self.duration(&s, "lease").unwrap_or(Duration::from_secs(8));
        if lease < Duration::from_secs(1) || lease > Duration::from_secs(600) {
            self.bad_value(
                &s,
                "lease",
                format!("`lease = {lease:?}` is out of range"),
                "use a lease from 1s to 10m: shorter renews too often, longer leaves a dead node's runs waiting",
            );
        }
        Some(Cluster {
            postgres,
            schema,
            pool_size,
            lease,
        })
    }
}
