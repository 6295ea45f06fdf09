//! Builds every Gantry subsystem from a manifest, runs them, and applies
//! reloads. Used by the `gantry` binary and by end-to-end tests.
//!
//! The shape of a run:
//! 1. load and validate the manifest; bind the gateway and admin listeners
//!    (so a taken port fails at once, before any process starts);
//! 2. start the services and give the ones with health checks a bounded time
//!    to become healthy;
//! 3. serve the gateway and the admin API;
//! 4. on a reload (file change, `SIGHUP`, `POST /v1/reload`): validate the new
//!    manifest, start only the services that changed, wait until they are
//!    healthy, swap the route table, then stop what was replaced once its
//!    in-flight requests are done. An invalid manifest changes nothing;
//! 5. on shutdown: stop accepting, drain in-flight requests (bounded by
//!    `drain_timeout`), stop every service process.

mod reload;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_admin::ReloadRequest;
use gantry_gateway::{ApiKeys, Gateway, GatewayMetrics, IdempotencyStore};
use gantry_manifest::LoadError;
use gantry_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use reload::Live;

/// How long services get to become healthy before traffic is routed anyway
/// (at start) or a reload is refused (at reload).
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// Why Gantry could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Manifest(#[from] LoadError),
    #[error("cannot listen for {what} on {addr}: {source}; change `{key}` in [platform] or stop what uses the port")]
    Listen {
        what: &'static str,
        key: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Start(String),
}

/// Runs the system the manifest at `path` describes until `shutdown` fires.
pub async fn run(path: &Path, shutdown: CancellationToken) -> Result<(), AppError> {
    let manifest = gantry_manifest::load(path)?;
    let platform = manifest.platform.clone();
    std::fs::create_dir_all(&platform.data_dir).map_err(|source| AppError::DataDir {
        path: platform.data_dir.clone(),
        source,
    })?;
    let gateway_listener = bind(platform.listen, "the gateway", "listen").await?;
    let admin_listener = bind(platform.admin, "the admin API", "admin").await?;

    let metrics = Metrics::new();
    let gateway_metrics = GatewayMetrics::register(&metrics);
    let (live, table) = Live::start(path, manifest, gateway_metrics.clone())
        .await
        .map_err(AppError::Start)?;
    let gateway = Gateway::new(table, gateway_metrics);
    // Idempotency records live in the data directory and outlive restarts.
    gateway.use_idempotency_store(
        IdempotencyStore::open(&platform.data_dir).map_err(AppError::Start)?,
    );
    gateway.use_api_keys(ApiKeys::open(&platform.data_dir).map_err(AppError::Start)?);
    let mut live = live.with_gateway(gateway.clone());

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let servers = CancellationToken::new();
    let gateway_task = tokio::spawn(gantry_gateway::serve(
        gateway.clone(),
        gateway_listener,
        servers.clone(),
        platform.drain_timeout,
    ));
    let admin_task = tokio::spawn(gantry_admin::serve(
        admin_listener,
        gateway.clone(),
        metrics.clone(),
        reload_tx,
        servers.clone(),
    ));
    tracing::info!(
        target: "gantry::app",
        system = %platform.name,
        gateway = %platform.listen,
        admin = %platform.admin,
        manifest = %path.display(),
        "gantry is up"
    );

    let mut triggers = watch::Triggers::new(path, platform.watch);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(request) = reload_rx.recv() => {
                let outcome = live.reload(watch::Trigger::AdminApi).await;
                let _ = request.reply.send(outcome);
            }
            Some(source) = triggers.next() => {
                let _ = live.reload(source).await;
            }
        }
    }

    tracing::info!(target: "gantry::app", drain = ?platform.drain_timeout, "shutting down: draining requests");
    servers.cancel();
    let _ = gateway_task.await;
    let _ = admin_task.await;
    live.stop_all(platform.drain_timeout).await;
    tracing::info!(target: "gantry::app", "stopped");
    Ok(())
}

async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen {
            what,
            key,
            addr,
            source,
        })
}
