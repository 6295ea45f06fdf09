//! Serverless functions: WebAssembly components (wasi:http) and WAGI modules
//! on wasmtime, and processes speaking the AWS Lambda Runtime API.
//!
//! Every function is served on its own loopback HTTP listener. To the rest of
//! Gantry a function is then simply a service named `function:NAME` whose one
//! instance is that listener: routes (`to = "function:NAME"`) keep every
//! gateway policy (auth, rate limits, retries, breakers, idempotency...),
//! subscriptions deliver events to it with their retries and dead letters,
//! and workflows can call it, without any of those subsystems knowing what a
//! function is. The listener runs each request through the function's
//! concurrency gate and its executor ([`wasm`] or [`lambda`]).
//!
//! A function's artifact (or, for Lambda, its program) is watched: when the
//! file changes, the new version is compiled beside the old one and swapped in
//! atomically. Requests already running finish on the version they started
//! on, new ones get the new version: a deploy without failed requests.

pub mod api;
mod client;
mod gate;
mod lambda;
mod logs;
mod metrics;
mod outbound;
mod schedule;
pub mod wasm;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use gantry_manifest::{Function, FunctionKind, Manifest, Service};
use gantry_problem::Problem;
use gantry_telemetry::context::TraceContext;
use gantry_telemetry::traces::TraceStore;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use gate::Refused;
pub use logs::{LogBook, LogLine};
pub use metrics::FunctionMetrics;
pub use outbound::Resolve;
pub use schedule::{ScheduleInfo, Scheduler};
pub use wasm::WasmHost;

/// An error a response body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a function's response.
pub type FnBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How often artifact files are checked for a new version.
const WATCH_EVERY: Duration = Duration::from_millis(300);
/// The largest request body a Lambda function is given (Lambda's own limit is 6 MB).
const LAMBDA_MAX_BODY: usize = 6 * 1024 * 1024;

/// Why an invocation produced no response of the function's own.
#[derive(Debug, Clone)]
pub enum Failure {
    /// It ran past its `timeout`.
    Timeout(Duration),
    /// It tried to grow its memory past `memory`.
    Memory(u64),
    /// It trapped, crashed, exited, or answered with something that is not a response.
    Crashed(String),
    /// The request could not be given to it.
    BadRequest(String),
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Memory(_) => "memory",
            Failure::Crashed(_) | Failure::BadRequest(_) => "error",
        }
    }

    fn problem(&self, function: &str, request_id: &str) -> Response<FnBody> {
        let (status, kind, title, detail) = match self {
            Failure::Timeout(limit) => (
                StatusCode::GATEWAY_TIMEOUT,
                "function-timeout",
                "Function timed out",
                format!("function `{function}` ran longer than its timeout of {limit:?}; raise `timeout` in [functions.{function}] or make it faster"),
            ),
            Failure::Memory(limit) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "function-memory",
                "Function exceeded its memory limit",
                format!("function `{function}` tried to use more than {limit} bytes of memory; raise `memory` in [functions.{function}]"),
            ),
            Failure::Crashed(why) => (
                StatusCode::BAD_GATEWAY,
                "function-error",
                "Function failed",
                format!("function `{function}` failed: {why}"),
            ),
            Failure::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                "function-bad-request",
                "Request not accepted",
                why.clone(),
            ),
        };
        Problem::new(status, kind, title)
            .detail(detail)
            .request_id(request_id)
            .respond_with(full)
    }
}

fn full(bytes: Bytes) -> FnBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a loaded function runs a request.
enum Exec {
    Component(wasm::ComponentExec),
    Wagi(wasm::WagiExec),
    Lambda(Arc<lambda::Pool>),
}

/// One version of a function, ready to serve.
struct Loaded {
    config: Function,
    exec: Exec,
    gate: gate::Gate,
    /// The artifact's (mtime, size) when it was loaded.
    fingerprint: Option<(SystemTime, u64)>,
    loaded_at: SystemTime,
}

/// A function's listener and the version it serves now.
struct Slot {
    name: Arc<str>,
    addr: SocketAddr,
    current: ArcSwap<Loaded>,
    /// Serializes reloads of this function (watcher and manifest).
    reloading: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    deployments: std::sync::atomic::AtomicU64,
}

/// Functions loaded for a manifest but not yet running it
/// ([`Functions::stage`]).
#[derive(Default)]
pub struct Staged {
    /// Every function of the manifest, by name.
    slots: HashMap<String, Arc<Slot>>,
    /// Running functions and the new version each is to serve.
    swaps: Vec<(Arc<Slot>, Loaded)>,
    /// Functions new in the manifest, listening already.
    fresh: Vec<Arc<Slot>>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("functions", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// The service each staged function is to the gateway and the bus.
    pub fn services(&self) -> BTreeMap<String, Service> {
        services_of(&self.slots)
    }
}

/// A function as listed by the admin API and `gantry functions list`.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    /// `wasi-http`, `wagi` or `lambda`.
    pub kind: &'static str,
    /// The wasm file or the Lambda command.
    pub artifact: String,
    /// Where the function's listener is (loopback).
    pub url: String,
    pub timeout_ms: u64,
    pub memory: u64,
    pub max_concurrency: u32,
    /// Invocations running now.
    pub in_flight: usize,
    /// Invocations waiting for a slot now.
    pub queued: usize,
    /// Lambda processes alive now.
    pub instances: usize,
    /// How many versions were deployed since Gantry started (1 = the first).
    pub deployments: u64,
    /// When the version serving now was loaded (RFC 3339).
    pub loaded_at: String,
}

/// Every function of the system.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    wasm: Mutex<Option<WasmHost>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    metrics: FunctionMetrics,
    logs: LogBook,
    resolve: Option<Arc<dyn Resolve>>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Functions").finish_non_exhaustive()
    }
}

impl Functions {
    /// No functions yet; compiled wasm is cached under `data_dir/functions/cache`.
    /// Functions with no grants resolver, span store or observer (tests).
    pub fn new(data_dir: &Path) -> Functions {
        Functions::with_parts(data_dir, FunctionsParts::default())
    }

    /// Functions keeping their compiled code and state under `data_dir`,
    /// with `parts`.
    pub fn with_parts(data_dir: &Path, parts: FunctionsParts) -> Functions {
        Functions {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                wasm: Mutex::new(None),
                slots: Mutex::new(HashMap::new()),
                metrics: FunctionMetrics::default(),
                logs: LogBook::default(),
                resolve: parts.resolve,
                hooks: Arc::new(Hooks {
                    traces: parts.traces,
                    observer: parts.observer,
                }),
            }),
        }
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.inner.metrics
    }

    /// Recent guest output, by function.
    pub fn logs(&self) -> &LogBook {
        &self.inner.logs
    }

    /// The wasmtime engine, created on first use.
    fn wasm(&self) -> Result<WasmHost, String> {
        let mut wasm = self.inner.wasm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = wasm.as_ref() {
            return Ok(host.clone());
        }
        let host = WasmHost::new(&self.inner.data_dir.join("functions").join("cache"))
            .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        *wasm = Some(host.clone());
        Ok(host)
    }

    /// Makes the running functions those of `manifest` ([`Functions::stage`]
    /// then [`Functions::commit`]).
    pub async fn apply(&self, manifest: &Manifest) -> Result<(), String> {
        let staged = self.stage(manifest).await?;
        self.commit(staged);
        Ok(())
    }

    /// Loads what `manifest` changes without changing what runs: a changed
    /// function's new version is compiled beside the old one, a new function
    /// gets its listener (known to nobody yet). The first function that fails
    /// to load fails the stage and undoes it. Then [`Functions::commit`] or
    /// [`Functions::discard`].
    pub async fn stage(&self, manifest: &Manifest) -> Result<Staged, String> {
        let mut staged = Staged::default();
        for (name, config) in &manifest.functions {
            let existing = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned();
            let loaded = match existing {
                Some(slot) => {
                    if slot.current.load().config != *config {
                        match self.load(&slot.name, config.clone()).await {
                            Ok(loaded) => staged.swaps.push((slot.clone(), loaded)),
                            Err(error) => {
                                self.discard(staged);
                                return Err(error);
                            }
                        }
                    }
                    Ok(slot)
                }
                None => self.start(name, config.clone()).await.inspect(|slot| {
                    staged.fresh.push(slot.clone());
                }),
            };
            match loaded {
                Ok(slot) => {
                    staged.slots.insert(name.clone(), slot);
                }
                Err(error) => {
                    self.discard(staged);
                    return Err(error);
                }
            }
        }
        Ok(staged)
    }

    /// Makes a staged set the running one: new versions swapped in (requests
    /// in flight finish on the old), removed functions stopped.
    pub fn commit(&self, staged: Staged) {
        for (slot, loaded) in staged.swaps {
            slot.current.store(Arc::new(loaded));
            let n = slot
                .deployments
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            tracing::info!(target: "gantry::functions", function = %slot.name, deployment = n, why = "manifest changed", "new version deployed");
        }
        let removed: Vec<Arc<Slot>> = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            let removed = slots
                .iter()
                .filter(|(name, _)| !staged.slots.contains_key(*name))
                .map(|(_, slot)| slot.clone())
                .collect();
            *slots = staged.slots;
            removed
        };
        for slot in removed {
            tracing::info!(target: "gantry::functions", function = %slot.name, "function removed");
            slot.stop.cancel();
        }
    }

    /// Undoes a stage: new listeners stop, new versions are dropped; what
    /// runs is as it was.
    pub fn discard(&self, staged: Staged) {
        for slot in staged.fresh {
            slot.stop.cancel();
        }
    }

    /// The service each function is to the gateway and the event bus:
    /// `function:NAME` at its listener.
    pub fn services(&self) -> BTreeMap<String, Service> {
        services_of(&self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The base URL of a function's listener.
    pub fn url(&self, name: &str) -> Option<String> {
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(name).map(|slot| format!("http://{}", slot.addr))
    }

    pub fn list(&self) -> Vec<FunctionInfo> {
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<FunctionInfo> = slots
            .values()
            .map(|slot| {
                let loaded = slot.current.load();
                let config = &loaded.config;
                let (kind, artifact) = match config.kind() {
                    FunctionKind::Component { path } => ("wasi-http", path.display().to_string()),
                    FunctionKind::Wagi { path } => ("wagi", path.display().to_string()),
                    FunctionKind::Lambda { command } => ("lambda", command.join(" ")),
                };
                FunctionInfo {
                    name: slot.name.to_string(),
                    kind,
                    artifact,
                    url: format!("http://{}", slot.addr),
                    timeout_ms: config.timeout.as_millis() as u64,
                    memory: config.memory,
                    max_concurrency: config.max_concurrency,
                    in_flight: loaded.gate.in_use(),
                    queued: loaded.gate.waiting(),
                    instances: match &loaded.exec {
                        Exec::Lambda(pool) => pool.instances(),
                        _ => loaded.gate.in_use(),
                    },
                    deployments: slot.deployments.load(std::sync::atomic::Ordering::Relaxed),
                    loaded_at: rfc3339(loaded.loaded_at),
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Stops every function (shutdown).
    pub fn stop(&self) {
        let slots: Vec<Arc<Slot>> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            slot.stop.cancel();
        }
    }

    /// Loads a function and starts its listener and artifact watcher.
    async fn start(&self, name: &str, config: Function) -> Result<Arc<Slot>, String> {
        let loaded = self.load(name, config).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("function `{name}`: cannot listen on loopback: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("function `{name}`: {e}"))?;
        let slot = Arc::new(Slot {
            name: Arc::from(name),
            addr,
            current: ArcSwap::from_pointee(loaded),
            reloading: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
            deployments: std::sync::atomic::AtomicU64::new(1),
        });
        tokio::spawn(serve(
            listener,
            slot.clone(),
            self.inner.metrics.clone(),
            self.inner.hooks.clone(),
        ));
        tokio::spawn(watch(self.clone(), slot.clone()));
        tracing::info!(target: "gantry::functions", function = name, listen = %addr, "function ready");
        Ok(slot)
    }

    /// Loads `config` and swaps it in for the slot's current version.
    async fn redeploy(&self, slot: &Slot, config: Function, why: &str) -> Result<(), String> {
        let _one_at_a_time = slot.reloading.lock().await;
        let loaded = self.load(&slot.name, config).await?;
        slot.current.store(Arc::new(loaded));
        let n = slot
            .deployments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        tracing::info!(target: "gantry::functions", function = %slot.name, deployment = n, why, "new version deployed");
        Ok(())
    }

    /// Compiles (wasm) or prepares (Lambda) one version of a function.
    async fn load(&self, name: &str, config: Function) -> Result<Loaded, String> {
        let fingerprint = artifact(&config).and_then(|p| fingerprint(&p));
        let settings = wasm::Settings {
            function: Arc::from(name),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            memory: config.memory as usize,
            timeout: config.timeout,
            outbound: outbound::Outbound {
                function: Arc::from(name),
                rules: Arc::new(
                    config
                        .allowed_outbound_hosts
                        .iter()
                        .filter_map(|r| outbound::Rule::parse(r))
                        .collect(),
                ),
                services: Arc::new(config.services.clone()),
                publish: Arc::new(config.publish.clone()),
                resolve: self.inner.resolve.clone(),
            },
            logs: self.inner.logs.clone(),
        };
        let started = Instant::now();
        let exec = match config.kind() {
            FunctionKind::Component { path } | FunctionKind::Wagi { path } => {
                let host = self.wasm()?;
                let path = path.clone();
                let wagi = matches!(config.kind(), FunctionKind::Wagi { .. });
                let exec = tokio::task::spawn_blocking(move || {
                    if wagi {
                        host.wagi(&path, settings).map(Exec::Wagi)
                    } else {
                        host.component(&path, settings).map(Exec::Component)
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
                exec.map_err(|e| {
                    let path = artifact(&config).unwrap_or_default();
                    format!("function `{name}`: cannot load {}: {e:#}", path.display())
                })?
            }
            FunctionKind::Lambda { command } => {
                if let Some(program) = command.first() {
                    if program.contains('/') && !Path::new(program).exists() {
                        return Err(format!(
                            "function `{name}`: program {program} does not exist; build it first"
                        ));
                    }
                }
                Exec::Lambda(lambda::Pool::start(
                    lambda::LambdaConfig {
                        function: Arc::from(name),
                        command: command.to_vec(),
                        env: config.env.clone(),
                        workdir: config.workdir.clone(),
                        memory_mb: config.memory / (1024 * 1024),
                        timeout: config.timeout,
                        min_instances: config.min_instances,
                        idle_timeout: config.idle_timeout,
                        logs: self.inner.logs.clone(),
                    },
                    self.inner.metrics.clone(),
                ))
            }
        };
        tracing::debug!(target: "gantry::functions", function = name, took = ?started.elapsed(), "function loaded");
        Ok(Loaded {
            gate: gate::Gate::new(config.max_concurrency, config.queue, config.queue_timeout),
            config,
            exec,
            fingerprint,
            loaded_at: SystemTime::now(),
        })
    }
}

/// The file whose change means a new version.
fn artifact(config: &Function) -> Option<PathBuf> {
    match config.kind() {
        FunctionKind::Component { path } | FunctionKind::Wagi { path } => Some(path.clone()),
        FunctionKind::Lambda { command } => command
            .first()
            .filter(|p| p.contains('/'))
            .map(PathBuf::from),
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Redeploys a function when its artifact changes. A file that is being
/// written is only picked up once it stays the same for one more check; a
/// version that does not load is not tried again until the file changes.
async fn watch(functions: Functions, slot: Arc<Slot>) {
    let mut seen = slot.current.load().fingerprint;
    let mut failed = None;
    loop {
        tokio::select! {
            _ = slot.stop.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let loaded = slot.current.load_full();
        let Some(path) = artifact(&loaded.config) else {
            continue;
        };
        let now = fingerprint(&path);
        if now.is_none() || now == loaded.fingerprint || now == failed || now != seen {
            seen = now;
            continue;
        }
        match functions
            .redeploy(&slot, loaded.config.clone(), "artifact changed")
            .await
        {
            Ok(()) => failed = None,
            Err(error) => {
                tracing::error!(target: "gantry::functions", function = %slot.name, %error, "the new version does not load; the previous one keeps serving");
                failed = now;
            }
        }
    }
}

/// A function's loopback listener: HTTP/1.1 with keep-alive.
async fn serve(
    listener: tokio::net::TcpListener,
    slot: Arc<Slot>,
    metrics: FunctionMetrics,
    hooks: Arc<Hooks>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = slot.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(target: "gantry::functions", function = %slot.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = slot.clone();
        let metrics = metrics.clone();
        let hooks = hooks.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let slot = slot.clone();
                let metrics = metrics.clone();
                let hooks = hooks.clone();
                async move {
                    let started = SystemTime::now();
                    let span = SpanStart::of(&mut request, hooks.traces.as_ref());
                    // OpenTelemetry's `faas.trigger` values.
                    let headers = request.headers();
                    let trigger = if headers
                        .get("ce-type")
                        .is_some_and(|t| t == "dev.gantry.schedule")
                    {
                        "timer"
                    } else if headers.contains_key("ce-specversion") {
                        "pubsub"
                    } else {
                        "http"
                    };
                    let response = invoke(&slot, &metrics, request).await;
                    if let Some(observer) = &hooks.observer {
                        observer.invoked(
                            &slot.name,
                            response.status().as_u16(),
                            started.elapsed().unwrap_or_default(),
                            &span.trace_id,
                        );
                    }
                    if let Some(store) = &hooks.traces {
                        span.record(
                            store,
                            &slot.name,
                            trigger,
                            started,
                            response.status().as_u16(),
                            response.extensions().get::<ColdStart>().is_some(),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs one request through the current version of the function.
async fn invoke(
    slot: &Slot,
    metrics: &FunctionMetrics,
    request: Request<Incoming>,
) -> Response<FnBody> {
    let loaded = slot.current.load_full();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let started = Instant::now();
    let _permit = match loaded.gate.enter().await {
        Ok(permit) => permit,
        Err(refused) => {
            let (status, detail) = match refused {
                Refused::QueueFull => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "function `{}` is at max_concurrency ({}) with a full queue; retry later",
                        slot.name, loaded.config.max_concurrency
                    ),
                ),
                Refused::Timeout => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "function `{}` had no free slot within queue_timeout ({:?}); retry later",
                        slot.name, loaded.config.queue_timeout
                    ),
                ),
            };
            metrics.invoked(&slot.name, "throttled", status.as_u16(), 0.0);
            return Problem::new(status, "function-busy", "Function busy")
                .detail(detail)
                .request_id(request_id.as_str())
                .retry_after(1)
                .respond_with(full);
        }
    };
    let wasm_instance = !matches!(loaded.exec, Exec::Lambda(_));
    // Every wasm request is a fresh instance; a Lambda request is cold when
    // it started a process.
    let mut cold = false;
    if wasm_instance {
        metrics.instances(&slot.name, 1);
    }
    let outcome = match &loaded.exec {
        Exec::Component(exec) => exec.handle(request, &request_id).await,
        Exec::Wagi(exec) => exec.handle(request, &request_id).await,
        Exec::Lambda(pool) => invoke_lambda(pool, request, &request_id, &mut cold).await,
    };
    if wasm_instance {
        metrics.instances(&slot.name, -1);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut response = match outcome {
        Ok(mut response) => {
            metrics.invoked(&slot.name, "ok", response.status().as_u16(), seconds);
            if let Ok(value) = request_id.parse() {
                response.headers_mut().insert("x-request-id", value);
            }
            response
        }
        Err(failure) => {
            tracing::warn!(target: "gantry::functions", function = %slot.name, request_id, outcome = failure.outcome(), error = ?failure, "invocation failed");
            let response = failure.problem(&slot.name, &request_id);
            metrics.invoked(
                &slot.name,
                failure.outcome(),
                response.status().as_u16(),
                seconds,
            );
            response
        }
    };
    if cold {
        response.extensions_mut().insert(ColdStart);
    }
    response
}

/// Sees every invocation, whatever triggered it (a route, an event, a
/// schedule): SLOs on functions count them.
pub trait InvocationObserver: Send + Sync {
    fn invoked(&self, function: &str, status: u16, duration: Duration, trace_id: &str);
}

/// What functions are built from besides their data directory. Given once,
/// at construction.
#[derive(Default)]
pub struct FunctionsParts {
    /// How granted services and the platform API are found; without it,
    /// grants resolve to nothing.
    pub resolve: Option<Arc<dyn Resolve>>,
    /// Where a span of every invocation goes.
    pub traces: Option<TraceStore>,
    /// Shown every invocation, whatever triggered it.
    pub observer: Option<Arc<dyn InvocationObserver>>,
}

impl std::fmt::Debug for FunctionsParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionsParts")
            .field("resolve", &self.resolve.is_some())
            .field("traces", &self.traces.is_some())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// What invocations are shown to.
struct Hooks {
    traces: Option<TraceStore>,
    observer: Option<Arc<dyn InvocationObserver>>,
}

/// Marks a response whose invocation started a new Lambda process.
#[derive(Debug, Clone, Copy)]
struct ColdStart;

async fn invoke_lambda(
    pool: &lambda::Pool,
    request: Request<Incoming>,
    request_id: &str,
    cold: &mut bool,
) -> Result<Response<FnBody>, Failure> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, LAMBDA_MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            Failure::BadRequest(format!(
                "cannot read the request body (Lambda functions take at most 6 MiB): {e}"
            ))
        })?
        .to_bytes();
    let event = lambda::event_for(&parts, &body, request_id);
    let trace = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match pool.invoke(event, request_id, trace, cold).await? {
        Ok(result) => Ok(lambda::response_for(&result)?.map(full)),
        Err(error) => {
            let mut response =
                Problem::new(StatusCode::BAD_GATEWAY, "function-error", "Function failed")
                    .detail(String::from_utf8_lossy(&error))
                    .request_id(request_id)
                    .respond_with(full);
            response.headers_mut().insert(
                "x-gantry-function-error",
                http::HeaderValue::from_static("Unhandled"),
            );
            Ok(response)
        }
    }
}

fn services_of(slots: &HashMap<String, Arc<Slot>>) -> BTreeMap<String, Service> {
    slots
        .iter()
        .map(|(name, slot)| {
            let mut service = Service::external(vec![format!("http://{}", slot.addr)]);
            // The function's own gate bounds concurrency; the service
            // layer must not refuse before it.
            service.max_concurrent = 1_000_000;
            (gantry_manifest::function_target(name), service)
        })
        .collect()
}

/// RFC 3339 in UTC, for listings.
fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The trace position of an invocation: the caller's trace (from
/// `traceparent`) or a new one, and this invocation's span id, which the
/// guest sees as the parent in the `traceparent` it receives.
struct SpanStart {
    trace_id: String,
    span_id: String,
    parent_id: Option<String>,
    sampled: bool,
}

impl SpanStart {
    fn of(request: &mut Request<Incoming>, store: Option<&TraceStore>) -> SpanStart {
        let caller = request
            .headers()
            .get("traceparent")
            .and_then(|v| TraceContext::continued(v.as_bytes()));
        let context = caller.unwrap_or_else(|| {
            let mut context = TraceContext::start(true);
            context.set_sampled(store.is_none_or(|s| s.sample(context.trace_id)));
            context
        });
        if let Ok(value) = http::HeaderValue::from_bytes(&context.traceparent_bytes()) {
            request.headers_mut().insert("traceparent", value);
        }
        SpanStart {
            trace_id: context.trace_id_hex(),
            span_id: context.span_id_hex(),
            parent_id: context.parent_id_hex(),
            sampled: context.sampled(),
        }
    }

    fn record(
        self,
        store: &gantry_telemetry::traces::TraceStore,
        function: &str,
        trigger: &'static str,
        started: SystemTime,
        status: u16,
        cold_start: bool,
    ) {
        let mut attributes = gantry_telemetry::traces::Attributes::new();
        attributes.insert("faas.name", function.to_string());
        attributes.insert("faas.trigger", trigger);
        attributes.insert("faas.coldstart", cold_start);
        attributes.insert("http.response.status_code", status);
        store.record(gantry_telemetry::traces::Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            name: format!("function {function}"),
            kind: "server",
            service: gantry_manifest::function_target(function),
            start_ns: gantry_telemetry::traces::unix_nanos(started),
            duration_ns: started.elapsed().unwrap_or_default().as_nanos() as u64,
            error: status >= 500,
            attributes,
            sampled: self.sampled,
        });
    }
}
