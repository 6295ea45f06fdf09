//! For tests of PostgreSQL stores: a fresh schema per test, so tests run in
//! parallel against one server without seeing each other's rows.
//!
//! The server is `GANTRY_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it does not answer, a
//! test is skipped with a message, except under `CI=true`, where it fails:
//! CI must never pass without having run the cluster's tests.

use crate::postgres::PgOptions;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("GANTRY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Options for a new, empty schema named after `tag` and a random suffix;
/// `None` (after printing why) when the server is down outside CI.
///
/// # Panics
/// When the server is down and `CI=true`.
pub async fn fresh_schema(tag: &str) -> Option<PgOptions> {
    let url = url();
    let reachable = match url.parse::<tokio_postgres::Config>() {
        Ok(config) => match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                drop(client);
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        },
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = reachable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("PostgreSQL at {url} is required under CI=true: {error}");
        }
        eprintln!(
            "skipped: PostgreSQL at {url} is not reachable ({error}); set GANTRY_TEST_POSTGRES"
        );
        return None;
    }
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(20)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    Some(PgOptions {
        url,
        schema: format!("t_{tag}_{suffix}"),
        pool_size: 8,
    })
}
