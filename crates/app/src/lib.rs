//! Builds every Gantry subsystem from a manifest, runs them, and applies
//! reloads. Used by the `gantry` binary and by end-to-end tests.
//!
//! The shape of a run:
//! 1. load and validate the manifest; bind the gateway and admin listeners
//!    (so a taken port fails at once, before any process starts);
//! 2. start the services and give the ones with health checks a bounded time
//!    to become healthy;
//! 3. open the event bus and apply the topics and subscriptions (schemas are
//!    checked against their registered versions first); register the
//!    workflows and resume the runs the journal says were going;
//! 4. serve the gateway, the platform API and the admin API;
//! 5. on a reload (file change, `SIGHUP`, `POST /v1/reload`): validate the new
//!    manifest, start only the services that changed, wait until they are
//!    healthy, apply the event bus changes, swap the route table, then stop
//!    what was replaced once its in-flight requests are done. An invalid
//!    manifest (or a breaking schema change) changes nothing;
//! 6. on shutdown: stop accepting, drain in-flight requests (bounded by
//!    `drain_timeout`), stop event deliveries (what was in flight stays
//!    pending for the next start), stop every service process.

mod cluster;
mod reload;
mod traces_api;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_admin::ReloadRequest;
use gantry_events::EventBus;
use gantry_gateway::{ApiKeys, Gateway, GatewayMetrics, GatewayParts, IdempotencyStore};
use gantry_manifest::{LoadError, Manifest};
use gantry_services::ServiceDirectory;
use gantry_telemetry::context::HexId;
use gantry_telemetry::traces::{unix_nanos, AttrValue, Attributes, Span, TraceStore};
use gantry_telemetry::Metrics;
use gantry_workflows::Engine;
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
    #[error(transparent)]
    Workflows(#[from] gantry_workflows::JournalError),
    #[error(transparent)]
    Store(#[from] gantry_gateway::StoreError),
    #[error("{0}")]
    Start(String),
}

/// How often certificate files are checked for a change.
const CERTIFICATE_POLL: Duration = Duration::from_secs(1);

/// The gateway's TLS from `[platform.tls]`.
fn server_tls(config: &gantry_manifest::TlsConfig) -> Result<gantry_tls::ServerTls, AppError> {
    let options = gantry_tls::ServerOptions {
        certs: config
            .certs
            .iter()
            .map(|c| gantry_tls::CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect(),
        client_ca: config.client_ca.clone(),
    };
    gantry_tls::ServerTls::load(&options)
        .map_err(|e| AppError::Start(format!("[platform.tls]: {e}")))
}

/// What `gantry up`'s flags change about a node, over what every
/// configuration says: so several nodes can run from one manifest on one
/// machine, each with its own ports and data directory.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The node's name in the cluster (default: the host name).
    pub node: Option<String>,
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl NodeOptions {
    /// Applies the flags to a configuration's `[platform]`.
    pub(crate) fn apply(&self, platform: &mut gantry_manifest::Platform) {
        if let Some(listen) = self.listen {
            platform.listen = listen;
        }
        if let Some(admin) = self.admin {
            platform.admin = admin;
        }
        if let Some(api) = self.api {
            platform.api = api;
        }
        if let Some(data_dir) = &self.data_dir {
            platform.data_dir = data_dir.clone();
        }
    }
}

/// Runs the system the manifest at `path` describes until `shutdown` fires.
pub async fn run(path: &Path, shutdown: CancellationToken) -> Result<(), AppError> {
    run_node(path, NodeOptions::default(), shutdown).await
}

/// Like [`run`], with `gantry up`'s flags. With `[cluster]` in the manifest
/// the node joins the cluster and runs the cluster's configuration.
pub async fn run_node(
    path: &Path,
    node: NodeOptions,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let local = gantry_manifest::load(path)?;
    let local_text = std::fs::read_to_string(path).unwrap_or_default();
    let base_dir = local.base_dir.clone();
    let (cluster, mut manifest, text, version) = match local.cluster.clone() {
        Some(config) => {
            let name = cluster::node_name(node.node.as_deref());
            let joined = cluster::connect(&config, &name).await?;
            let (manifest, text, version) =
                cluster::first_config(&joined, local, local_text, path).await?;
            (Some(joined), manifest, text, Some(version))
        }
        None => (None, local, local_text, None),
    };
    node.apply(&mut manifest.platform);
    let platform = manifest.platform.clone();
    std::fs::create_dir_all(&platform.data_dir).map_err(|source| AppError::DataDir {
        path: platform.data_dir.clone(),
        source,
    })?;
    // Certificates load before anything listens: a bad file stops the start.
    let tls = match &platform.tls {
        Some(config) => Some(server_tls(config)?),
        None => None,
    };
    let gateway_listener = bind(platform.listen, "the gateway", "listen").await?;
    let redirect_listener = match platform.redirect_http {
        Some(addr) => Some(bind(addr, "the https redirect", "redirect_http").await?),
        None => None,
    };
    let admin_listener = bind(platform.admin, "the admin API", "admin").await?;
    let api_listener = bind(platform.api, "the platform API", "api").await?;
    let api_url = platform_url(platform.api);
    give_platform_env(&mut manifest, &api_url);

    // Each subsystem is built whole from its configuration and what it
    // needs (the trace store and the SLOs first, since most of the others
    // report to them); none is changed after it is built, except the bus's
    // workflow starter (the two need each other; see EventBus).
    let metrics = Metrics::new();
    let gateway_metrics = GatewayMetrics::register(&metrics);
    let directory: ServiceDirectory = Arc::default();
    let traces = TraceStore::open(&platform.data_dir).map_err(AppError::Start)?;
    traces.set_sampling(sampling(&manifest.telemetry));
    traces.register_metrics(&metrics);
    // OTLP export, when a collector is configured; flushed at shutdown.
    let export_stop = CancellationToken::new();
    let exporter = gantry_telemetry::otlp::target(
        manifest.telemetry.otlp_endpoint.as_deref(),
        manifest
            .telemetry
            .otlp_protocol
            .map(|p| p == gantry_manifest::OtlpProtocol::Grpc),
    )
    .map(|target| {
            let protocol = if target.grpc { "gRPC" } else { "HTTP/protobuf" };
            tracing::info!(target: "gantry::traces", url = %target.url, protocol, "exporting spans over OTLP");
            let (sender, task) =
                gantry_telemetry::otlp::start(target, platform.name.clone(), export_stop.clone());
            traces.export_to(sender);
            task
        });
    // SLOs: in cluster mode the counts are the cluster's, and one node
    // evaluates and sends the alerts.
    let slos = match &cluster {
        Some(cluster) => gantry_slo::Slos::clustered(cluster)
            .await
            .map_err(AppError::Start)?,
        None => gantry_slo::Slos::open(&platform.data_dir).map_err(AppError::Start)?,
    };
    slos.apply(&manifest.slos);
    slos.set_alerting(&manifest.alerting);
    let observer = Arc::new(Observer {
        slos: slos.clone(),
        traces: traces.clone(),
    });
    let bus = EventBus::open_with_sync(
        &platform.data_dir,
        platform.events_sync,
        directory.clone(),
        Some(traces.clone()),
    )
    .map_err(AppError::Start)?;
    // Outboxes: in cluster mode one node at a time relays each, from a
    // position the cluster keeps.
    if let (Some(cluster), Some(config)) = (&cluster, &manifest.cluster) {
        let shared = gantry_events::SharedRelays::new(
            cluster.postgres().clone(),
            cluster.leases().clone(),
            cluster.holder(),
            config.lease,
        )
        .await
        .map_err(|e| AppError::Start(format!("cannot prepare the outbox relays: {e}")))?;
        bus.share_relays(shared);
    }
    // Sagas: in cluster mode the journal is shared and each run is leased
    // to the node driving it.
    let workflows = match (&cluster, &manifest.cluster) {
        (Some(cluster), Some(config)) => {
            Engine::open_postgres(
                cluster,
                config.lease,
                bus.clone(),
                directory.clone(),
                Some(traces.clone()),
            )
            .await?
        }
        _ => Engine::open(
            &platform.data_dir,
            bus.clone(),
            directory.clone(),
            Some(traces.clone()),
        )?,
    };
    bus.set_workflow_starter(Arc::new(workflows.clone()));
    bus.register_metrics(&metrics);
    workflows.register_metrics(&metrics);
    let functions = gantry_functions::Functions::with_parts(
        &platform.data_dir,
        gantry_functions::FunctionsParts {
            resolve: Some(Arc::new(Grants {
                directory: directory.clone(),
                api_url: api_url.clone(),
            })),
            traces: Some(traces.clone()),
            observer: Some(observer.clone()),
        },
    );
    functions.metrics().register(&metrics);
    // Schedules: in cluster mode every node runs the timers and the one
    // that records a due run in PostgreSQL fires it.
    let scheduler = match &cluster {
        Some(cluster) => gantry_functions::Scheduler::clustered(
            cluster.postgres().clone(),
            cluster.node(),
            functions.clone(),
        )
        .await
        .map_err(|e| AppError::Start(e.to_string()))?,
        None => gantry_functions::Scheduler::new(&platform.data_dir, functions.clone()),
    };
    // Objects: in cluster mode stored in PostgreSQL, so any node serves them.
    let objects = match &cluster {
        Some(cluster) => gantry_buckets::ObjectStore::postgres(cluster.postgres().clone())
            .await
            .map_err(|e| AppError::Start(format!("cannot prepare the object store: {e}")))?,
        None => gantry_buckets::ObjectStore::files(&platform.data_dir.join("objects")),
    };
    let buckets = gantry_buckets::Buckets::new(objects, bus.clone());
    let (live, table) = Live::start(
        path,
        reload::Loaded {
            manifest,
            text,
            version,
            source: match &cluster {
                Some(cluster) => reload::Source::Cluster(cluster.clone()),
                None => reload::Source::File,
            },
            node: node.clone(),
        },
        gateway_metrics.clone(),
        reload::Events {
            bus: bus.clone(),
            workflows: workflows.clone(),
            directory,
            api_url,
            functions: functions.clone(),
            scheduler: scheduler.clone(),
            buckets: buckets.clone(),
            slos: slos.clone(),
            traces: traces.clone(),
            base_dir,
        },
    )
    .await
    .map_err(AppError::Start)?;
    // Idempotency records and API keys: shared by every node in cluster
    // mode, so a key holds across nodes.
    let (idempotency, api_keys) = match &cluster {
        Some(cluster) => {
            gantry_gateway::shared_limits::migrate(cluster.postgres())
                .await
                .map_err(|e| AppError::Start(e.to_string()))?;
            (
                IdempotencyStore::postgres(cluster.postgres().clone()).await?,
                ApiKeys::postgres(cluster.postgres().clone()).await?,
            )
        }
        None => (
            IdempotencyStore::open(&platform.data_dir)?,
            ApiKeys::open(&platform.data_dir)?,
        ),
    };
    let gateway = Gateway::with_parts(
        table,
        gateway_metrics,
        GatewayParts {
            idempotency: Some(idempotency),
            api_keys: Some(api_keys),
            observer: Some(observer),
        },
    );
    gateway.register_saturation(&metrics);
    let mut live = live.with_gateway(gateway.clone());

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let servers = CancellationToken::new();
    // Watch the manifest before anything reports ready, so an edit made
    // right after `/readyz` answers 200 is not missed.
    // In cluster mode the configuration comes from the database, not the file.
    let mut triggers = watch::Triggers::new(path, platform.watch && cluster.is_none());
    let mut cluster_versions = match &cluster {
        Some(cluster) => cluster.config().watch(servers.clone()),
        None => mpsc::channel(1).1,
    };
    let tls_watcher = tls
        .as_ref()
        .map(|tls| tls.spawn_watcher(CERTIFICATE_POLL, servers.clone()));
    let gateway_task = tokio::spawn(gantry_gateway::serve(
        gateway.clone(),
        gateway_listener,
        tls.clone(),
        servers.clone(),
        platform.drain_timeout,
    ));
    let redirect_task = redirect_listener.map(|listener| {
        tokio::spawn(gantry_gateway::redirect_to_https(
            listener,
            platform.listen.port(),
            servers.clone(),
        ))
    });
    let admin_task = tokio::spawn(gantry_admin::serve(
        admin_listener,
        gateway.clone(),
        metrics.clone(),
        reload_tx,
        gantry_events::api::admin_router(bus.clone())
            .merge(gantry_workflows::api::admin_router(workflows.clone()))
            .merge(gantry_slo::api::admin_router(slos.clone()))
            .merge(traces_api::admin_router(traces.clone()))
            .merge(gantry_functions::api::admin_router(
                functions.clone(),
                scheduler.clone(),
            ))
            .merge(cluster::admin_router(cluster.clone())),
        servers.clone(),
    ));
    let api_task = tokio::spawn({
        let servers = servers.clone();
        let router = gantry_workflows::api::platform_router(workflows.clone())
            .merge(gantry_buckets::platform_router(buckets.clone()))
            .merge(gantry_events::api::platform_router(bus.clone()));
        async move {
            axum::serve(api_listener, router)
                .with_graceful_shutdown(async move { servers.cancelled().await })
                .await
        }
    });
    let slo_task = tokio::spawn(gantry_slo::notify::run(slos.clone(), servers.clone()));
    // Rate limits count the whole cluster's requests: nodes trade counts.
    let limits_task = cluster.as_ref().map(|cluster| {
        tokio::spawn(gantry_gateway::shared_limits::run(
            gateway.clone(),
            cluster.postgres().clone(),
            cluster.holder(),
            servers.clone(),
        ))
    });
    tracing::info!(
        target: "gantry::app",
        system = %platform.name,
        gateway = %platform.listen,
        scheme = if tls.is_some() { "https" } else { "http" },
        admin = %platform.admin,
        api = %platform.api,
        manifest = %path.display(),
        "gantry is up"
    );

    // Join the cluster once this node serves: from here on it heartbeats.
    let heartbeat = match &cluster {
        Some(cluster) => {
            let addresses = gantry_cluster::NodeAddresses {
                gateway: platform.listen.to_string(),
                admin: platform.admin.to_string(),
                api: platform.api.to_string(),
            };
            let joined = cluster.join(&addresses, servers.clone()).await;
            match joined {
                Ok(task) => {
                    cluster.report_config(live.version(), None).await;
                    tracing::info!(target: "gantry::cluster", node = cluster.node(), version = ?live.version(), "joined the cluster");
                    Some(task)
                }
                Err(error) => {
                    servers.cancel();
                    return Err(AppError::Start(error.to_string()));
                }
            }
        }
        None => None,
    };

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(request) = reload_rx.recv() => {
                let outcome = live.reload(watch::Trigger::AdminApi).await;
                report(cluster.as_ref(), &live, &outcome).await;
                let _ = request.reply.send(outcome);
            }
            Some(source) = triggers.next() => {
                let outcome = live.reload(source).await;
                report(cluster.as_ref(), &live, &outcome).await;
            }
            Some(version) = cluster_versions.recv() => {
                if live.version() < Some(version) {
                    let outcome = live.reload(watch::Trigger::Cluster).await;
                    report(cluster.as_ref(), &live, &outcome).await;
                }
            }
        }
    }

    tracing::info!(target: "gantry::app", drain = ?platform.drain_timeout, "shutting down: draining requests");
    servers.cancel();
    let _ = gateway_task.await;
    if let Some(task) = redirect_task {
        let _ = task.await;
    }
    if let Some(task) = tls_watcher {
        let _ = task.await;
    }
    let _ = admin_task.await;
    let _ = api_task.await;
    let _ = slo_task.await;
    if let Some(task) = limits_task {
        let _ = task.await;
    }
    if let Some(task) = heartbeat {
        let _ = task.await;
    }
    workflows.stop().await;
    bus.stop().await;
    live.stop_all(platform.drain_timeout).await;
    // The last spans (the drained requests') reach the store and the exporter.
    {
        let traces = traces.clone();
        let _ = tokio::task::spawn_blocking(move || traces.flush(Duration::from_secs(1))).await;
    }
    export_stop.cancel();
    if let Some(exporter) = exporter {
        let _ = tokio::time::timeout(Duration::from_secs(3), exporter).await;
    }
    scheduler.stop();
    buckets.stop();
    functions.stop();
    tracing::info!(target: "gantry::app", "stopped");
    Ok(())
}

/// Tells the cluster which configuration this node runs after a reload, or
/// why it kept the previous one.
async fn report(
    cluster: Option<&gantry_cluster::Cluster>,
    live: &Live,
    outcome: &Result<gantry_admin::ReloadReport, gantry_admin::ReloadRefused>,
) {
    let Some(cluster) = cluster else { return };
    match outcome {
        Ok(_) => cluster.report_config(live.version(), None).await,
        Err(refused) => {
            let attempted = live.attempted_version();
            cluster
                .report_config(live.version(), Some((attempted, &refused.reason)))
                .await
        }
    }
}

/// The trace store's sampling, from `[telemetry]`.
pub(crate) fn sampling(
    telemetry: &gantry_manifest::Telemetry,
) -> gantry_telemetry::traces::Sampling {
    gantry_telemetry::traces::Sampling {
        enabled: telemetry.traces,
        ratio: telemetry.sample_ratio,
        slow: telemetry.slow,
    }
}

/// Counts every gateway answer toward the SLOs it belongs to, and keeps a
/// span of it in the trace store.
#[derive(Debug)]
struct Observer {
    slos: gantry_slo::Slos,
    traces: TraceStore,
}

impl gantry_gateway::RequestObserver for Observer {
    fn sample(&self, trace_id: u128) -> bool {
        self.traces.sample(trace_id)
    }

    fn keeps_trace(&self, sampled: bool, status: u16, duration: Duration) -> bool {
        self.traces.keeps(sampled, status >= 500, duration)
    }

    fn attempt(&self, a: &gantry_gateway::Attempt<'_>) -> bool {
        let error = a.error.is_some() || a.status.is_some_and(|s| s >= 500);
        // Spans of traces that are neither sampled nor notable are never
        // built: at the default ratio that is almost every request.
        let keep = self.traces.keeps(a.sampled, error, a.duration);
        if keep {
            self.traces.record(attempt_span(a, error));
        } else {
            self.traces.sampled_out();
        }
        keep && !a.sampled
    }

    fn socket(&self, s: &gantry_gateway::SocketClosed<'_>) {
        // Kept with its trace: sampled at the handshake, or failed.
        if self
            .traces
            .keeps(s.sampled, s.reason == "error", Duration::ZERO)
        {
            self.traces.record(socket_span(s));
        } else {
            self.traces.sampled_out();
        }
    }

    fn observe(&self, r: &gantry_gateway::Observation<'_>) {
        let trace_id = HexId::trace(r.trace_id);
        self.slos.observe(
            gantry_slo::now(),
            r.route,
            r.service,
            r.status,
            r.duration,
            &trace_id,
        );
        if r.keep_span {
            self.traces.record(request_span(r));
        } else {
            self.traces.sampled_out();
        }
    }
}

/// The span of one WebSocket, from the upgrade to its close.
fn socket_span(s: &gantry_gateway::SocketClosed<'_>) -> Span {
    let mut attributes = Attributes::new();
    attributes.insert("http.route", s.route.to_string());
    attributes.insert("gantry.service", s.service.to_string());
    attributes.insert("gantry.websocket.close_reason", s.reason);
    attributes.insert("gantry.websocket.bytes_in", s.bytes_in);
    attributes.insert("gantry.websocket.bytes_out", s.bytes_out);
    attributes.insert("gantry.websocket.frames_in", s.frames_in);
    attributes.insert("gantry.websocket.frames_out", s.frames_out);
    Span {
        trace_id: HexId::trace(s.trace_id).to_string(),
        span_id: HexId::span(s.span_id).to_string(),
        parent_id: Some(HexId::span(s.parent_id).to_string()),
        name: format!("WebSocket {}", s.route),
        kind: "internal",
        service: "gateway".into(),
        start_ns: unix_nanos(s.started),
        duration_ns: s.duration.as_nanos() as u64,
        error: s.reason == "error",
        attributes,
        sampled: true,
    }
}

/// The gateway's server span of one request.
fn request_span(r: &gantry_gateway::Observation<'_>) -> Span {
    let mut attributes = Attributes::new();
    attributes.insert("http.request.method", AttrValue::method(r.method));
    attributes.insert("http.route", r.route.to_string());
    attributes.insert("url.path", r.path.to_string());
    attributes.insert("http.response.status_code", r.status);
    if let Some(code) = r.grpc_status {
        attributes.insert("rpc.system", "grpc");
        attributes.insert("rpc.grpc.status_code", u16::from(code));
    }
    attributes.insert("gantry.service", r.service.to_string());
    if let Some(instance) = r.instance {
        attributes.insert("gantry.instance", instance);
    }
    Span {
        trace_id: HexId::trace(r.trace_id).to_string(),
        span_id: HexId::span(r.span_id).to_string(),
        parent_id: r.parent_id.map(|p| HexId::span(p).to_string()),
        name: format!("{} {}", r.method, r.route),
        kind: "server",
        service: "gateway".into(),
        start_ns: unix_nanos(r.started),
        duration_ns: r.duration.as_nanos() as u64,
        error: r.status >= 500,
        attributes,
        // Recorded only when kept; a kept request span keeps its trace.
        sampled: true,
    }
}

/// A client span of one upstream attempt, so retries show.
fn attempt_span(a: &gantry_gateway::Attempt<'_>, error: bool) -> Span {
    let mut attributes = Attributes::new();
    attributes.insert("http.request.method", AttrValue::method(a.method));
    attributes.insert("server.address", a.authority.to_string());
    attributes.insert("gantry.service", a.service.to_string());
    attributes.insert("gantry.instance", a.instance);
    if a.number > 1 {
        attributes.insert("http.request.resend_count", a.number - 1);
    }
    if let Some(status) = a.status {
        attributes.insert("http.response.status_code", status);
    }
    if let Some(error) = a.error {
        attributes.insert("error.type", error);
    }
    Span {
        trace_id: HexId::trace(a.trace_id).to_string(),
        span_id: HexId::span(a.span_id).to_string(),
        parent_id: Some(HexId::span(a.parent_id).to_string()),
        name: format!("{} {}", a.method, a.service),
        kind: "client",
        service: "gateway".into(),
        start_ns: unix_nanos(a.started),
        duration_ns: a.duration.as_nanos() as u64,
        error,
        attributes,
        sampled: a.sampled,
    }
}

impl gantry_functions::InvocationObserver for Observer {
    fn invoked(&self, function: &str, status: u16, duration: Duration, trace_id: &str) {
        self.slos
            .observe_function(gantry_slo::now(), function, status, duration, &trace_id);
    }
}

/// Where functions' granted services and the platform API are.
struct Grants {
    directory: ServiceDirectory,
    api_url: String,
}

impl gantry_functions::Resolve for Grants {
    fn service(&self, service: &str) -> Option<String> {
        let services = self.directory.load();
        let instance = services.get(service)?.pick(None)?.clone();
        Some(format!("{}://{}", instance.scheme(), instance.authority))
    }

    fn platform_api(&self) -> Option<String> {
        Some(self.api_url.clone())
    }
}

/// The URL services use to reach the platform API.
fn platform_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(host, addr.port()))
}

/// Every service process learns where the platform API is from `GANTRY_API`
/// (unless its manifest `env` says otherwise).
pub(crate) fn give_platform_env(manifest: &mut Manifest, api_url: &str) {
    for service in manifest.services.values_mut() {
        service
            .env
            .entry("GANTRY_API".into())
            .or_insert_with(|| api_url.to_string());
    }
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
