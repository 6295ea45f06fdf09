//! Cluster mode at start and while running: connect to the cluster's
//! PostgreSQL, take its configuration (or seed it with the local manifest),
//! and serve the cluster's listings on the admin API.
//!
//! The cluster's configuration is the one in the database: a node started
//! with a local manifest that differs from it runs the stored version and
//! says so (`gantry apply` changes the cluster's). Only the local manifest's
//! `[cluster]` section (where the database is) and `gantry up`'s flags
//! (ports, data directory, node name) are the node's own.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gantry_cluster::{Cluster, PgOptions};
use gantry_manifest::Manifest;
use gantry_problem::{Explain, Problem};
use http::StatusCode;

use crate::AppError;

/// How a stored version is named in diagnostics.
pub(crate) fn origin(version: i64) -> PathBuf {
    PathBuf::from(format!("cluster configuration v{version}"))
}

/// This node's name: `--node`, else the host's name.
pub(crate) fn node_name(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "gantry".to_string())
}

/// Connects to the cluster's database and brings its tables up to date.
pub(crate) async fn connect(
    config: &gantry_manifest::Cluster,
    node: &str,
) -> Result<Cluster, AppError> {
    let url = config.postgres.resolve().map_err(AppError::Start)?;
    let options = PgOptions {
        url,
        schema: config.schema.clone(),
        pool_size: config.pool_size as usize,
    };
    Cluster::connect(&options, node).await.map_err(|error| {
        AppError::Start(format!(
            "cannot use the cluster's PostgreSQL ([cluster] in the manifest): {error}"
        ))
    })
}

/// The configuration to start with: the cluster's newest version, or the
/// local manifest stored as the first version when the cluster has none.
pub(crate) async fn first_config(
    cluster: &Cluster,
    local: Manifest,
    local_text: String,
    path: &Path,
) -> Result<(Manifest, String, i64), AppError> {
    let (version, text, seeded) = cluster
        .config()
        .seed(&local_text, &format!("node {}", cluster.node()))
        .await
        .map_err(|e| AppError::Start(format!("cannot read the cluster's configuration: {e}")))?;
    if seeded {
        tracing::info!(target: "gantry::cluster", version, manifest = %path.display(), "the cluster had no configuration: stored the local manifest");
        return Ok((local, local_text, version));
    }
    if text == local_text {
        return Ok((local, local_text, version));
    }
    tracing::info!(target: "gantry::cluster", version, local = %path.display(), "running the cluster's configuration, which differs from the local manifest; `gantry apply` changes the cluster's");
    let manifest =
        gantry_manifest::parse(&text, &origin(version), &local.base_dir).map_err(|e| {
            AppError::Start(format!(
                "the cluster's configuration v{version} does not load on this node \
             (paths resolve against {}):\n{e}",
                local.base_dir.display()
            ))
        })?;
    Ok((manifest, text, version))
}

/// `GET /v1/nodes` and `GET /v1/config` on the admin API.
pub(crate) fn admin_router(cluster: Option<Cluster>) -> Router {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/config", get(history))
        .with_state(cluster)
}

fn embedded() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-clustered",
        "This Gantry is not part of a cluster",
    )
    .detail("it runs embedded, on its own data directory; add [cluster] to the manifest to run several nodes")
    .respond()
}

async fn nodes(State(cluster): State<Option<Cluster>>) -> Response {
    let Some(cluster) = cluster else {
        return embedded();
    };
    match cluster.membership().list().await {
        Ok(nodes) => Json(serde_json::json!({ "nodes": nodes })).into_response(),
        Err(error) => error.problem().respond(),
    }
}

async fn history(State(cluster): State<Option<Cluster>>) -> Response {
    let Some(cluster) = cluster else {
        return embedded();
    };
    let running = match cluster.membership().list().await {
        Ok(nodes) => nodes
            .into_iter()
            .find(|n| n.name == cluster.node())
            .and_then(|n| n.config_version),
        Err(error) => return error.problem().respond(),
    };
    match cluster.config().history(50).await {
        Ok(versions) => Json(serde_json::json!({
            "node": cluster.node(),
            "running": running,
            "versions": versions,
        }))
        .into_response(),
        Err(error) => error.problem().respond(),
    }
}
