//! Functions as processes speaking the AWS Lambda Runtime API, so handlers
//! built on the official runtime clients (`lambda_runtime` for Rust,
//! `awslambdaric` for Python, the Node and Java ones...) run unmodified.
//!
//! Each process gets its own Runtime API endpoint (`AWS_LAMBDA_RUNTIME_API`,
//! a loopback port): it long-polls `GET /2018-06-01/runtime/invocation/next`
//! and posts the outcome to `.../invocation/{id}/response` or `/error`, as in
//! Lambda, one invocation at a time. A [`Pool`] keeps `min_instances`
//! processes warm, starts more (cold starts) up to `max_concurrency`, stops
//! idle ones after `idle_timeout` (to zero by default), kills a process whose
//! invocation runs past `timeout`, and replaces crashed ones on demand.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::FunctionMetrics;
use crate::Failure;

/// What a Lambda function is started with.
#[derive(Debug, Clone)]
pub(crate) struct LambdaConfig {
    pub(crate) function: Arc<str>,
    pub(crate) command: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) workdir: Option<PathBuf>,
    pub(crate) memory_mb: u64,
    pub(crate) timeout: Duration,
    pub(crate) min_instances: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) logs: crate::logs::LogBook,
}

/// Where an invocation's outcome goes: the result, or the function's error body.
type Reply = oneshot::Sender<Result<Bytes, Bytes>>;

/// How long a new process may take to ask for its first invocation (its
/// init phase), as AWS Lambda allows. `timeout` counts from then on.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One invocation handed to a process.
#[derive(Debug)]
struct Invocation {
    id: String,
    payload: Bytes,
    /// From when the process takes it: its deadline is then + `timeout`.
    timeout: Duration,
    trace: Option<String>,
    /// Told when the process takes the invocation.
    taken: oneshot::Sender<()>,
    reply: Reply,
}

/// The Runtime API side of one process.
#[derive(Debug)]
struct Endpoint {
    function: Arc<str>,
    queue: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    /// The invocation the process is working on: its id and where the outcome goes.
    current: Mutex<Option<(String, Reply)>>,
    /// The trace id of the current invocation, for its log lines.
    current_trace: Mutex<Option<String>>,
    init_error: Mutex<Option<String>>,
}

/// One running process.
#[derive(Debug)]
struct Instance {
    invocations: mpsc::Sender<Invocation>,
    endpoint: Arc<Endpoint>,
    alive: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
    kill: CancellationToken,
}

/// The processes of one function.
#[derive(Debug)]
pub(crate) struct Pool {
    config: LambdaConfig,
    idle: Mutex<Vec<Arc<Instance>>>,
    live: Arc<AtomicUsize>,
    next_id: AtomicU64,
    metrics: FunctionMetrics,
    stop: CancellationToken,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Replaced (hot deploy) or removed: its processes go with it.
        self.stop.cancel();
    }
}

impl Pool {
    pub(crate) fn start(config: LambdaConfig, metrics: FunctionMetrics) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            config,
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            metrics,
            stop: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&pool);
        let stop = pool.stop.clone();
        let every =
            (pool.config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                let Some(pool) = weak.upgrade() else { break };
                pool.keep_in_shape().await;
                drop(pool);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        pool
    }

    /// Processes alive now.
    pub(crate) fn instances(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Stops idle processes past `idle_timeout` (keeping `min_instances`) and
    /// starts processes up to `min_instances`.
    async fn keep_in_shape(&self) {
        let min = self.config.min_instances as usize;
        let retired: Vec<Arc<Instance>> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|i| i.alive.load(Ordering::Acquire));
            let mut retired = Vec::new();
            let live = self.live.load(Ordering::Acquire);
            let mut keep = Vec::new();
            for instance in idle.drain(..) {
                let idle_for = instance
                    .last_used
                    .lock()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                if idle_for >= self.config.idle_timeout && live - retired.len() > min {
                    retired.push(instance);
                } else {
                    keep.push(instance);
                }
            }
            *idle = keep;
            retired
        };
        for instance in retired {
            tracing::info!(target: "gantry::functions", function = %self.config.function, "stopping an idle instance");
            instance.kill.cancel();
        }
        while self.live.load(Ordering::Acquire) < min && !self.stop.is_cancelled() {
            match self.spawn().await {
                Ok(instance) => self
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(instance),
                Err(error) => {
                    tracing::error!(target: "gantry::functions", function = %self.config.function, %error, "cannot start a warm instance");
                    break;
                }
            }
        }
    }

    /// Runs one invocation. `Err` for a timeout or a dead process; a
    /// function error comes back as `Ok(Err(body))`.
    pub(crate) async fn invoke(
        &self,
        payload: Bytes,
        request_id: &str,
        trace: Option<String>,
        cold_start: &mut bool,
    ) -> Result<Result<Bytes, Bytes>, Failure> {
        let (instance, cold) = self.checkout().await?;
        *cold_start = cold;
        if cold {
            self.metrics.cold_start(&self.config.function);
        }
        let (reply, outcome) = oneshot::channel();
        let (taken, taken_by_process) = oneshot::channel();
        let invocation = Invocation {
            id: request_id.to_string(),
            payload,
            timeout: self.config.timeout,
            trace,
            taken,
            reply,
        };
        if instance.invocations.send(invocation).await.is_err() {
            return Err(Failure::Crashed("the function's process exited".into()));
        }
        // A warm process is already waiting for it; a new one first starts
        // up (its init phase), which its `timeout` does not count.
        let pickup = if cold {
            INIT_TIMEOUT
        } else {
            self.config.timeout
        };
        if tokio::time::timeout(pickup, taken_by_process)
            .await
            .is_err()
        {
            tracing::warn!(target: "gantry::functions", function = %self.config.function, request_id, limit = ?pickup, "the process did not take the invocation in time; killing it");
            instance.kill.cancel();
            return Err(if cold {
                Failure::Crashed(format!(
                    "the function did not ask for an invocation within {INIT_TIMEOUT:?} of starting (init timeout); check what its start-up waits for"
                ))
            } else {
                Failure::Timeout(self.config.timeout)
            });
        }
        // (If the process died before taking it, `outcome` fails at once below.)
        match tokio::time::timeout(self.config.timeout, outcome).await {
            Ok(Ok(result)) => {
                *instance.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                if instance.alive.load(Ordering::Acquire) {
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(instance);
                }
                Ok(result)
            }
            Ok(Err(_)) => {
                let init = instance
                    .endpoint
                    .init_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone());
                Err(Failure::Crashed(match init {
                    Some(error) => format!("the function failed to initialize: {error}"),
                    None => "the function's process exited during the invocation".into(),
                }))
            }
            Err(_) => {
                tracing::warn!(target: "gantry::functions", function = %self.config.function, request_id, timeout = ?self.config.timeout, "invocation timed out; killing its process");
                instance.kill.cancel();
                Err(Failure::Timeout(self.config.timeout))
            }
        }
    }

    /// An idle live process, or a new one (a cold start).
    async fn checkout(&self) -> Result<(Arc<Instance>, bool), Failure> {
        loop {
            let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match popped {
                Some(instance) if instance.alive.load(Ordering::Acquire) => {
                    return Ok((instance, false))
                }
                Some(_) => continue,
                None => break,
            }
        }
        let instance = self
            .spawn()
            .await
            .map_err(|e| Failure::Crashed(format!("cannot start the function: {e}")))?;
        Ok((instance, true))
    }

    async fn spawn(&self) -> std::io::Result<Arc<Instance>> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let api: SocketAddr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(1);
        let endpoint = Arc::new(Endpoint {
            function: self.config.function.clone(),
            queue: tokio::sync::Mutex::new(rx),
            current: Mutex::new(None),
            current_trace: Mutex::new(None),
            init_error: Mutex::new(None),
        });
        let number = self.next_id.fetch_add(1, Ordering::Relaxed);
        let config = &self.config;
        let Some((program, args)) = config.command.split_first() else {
            return Err(std::io::Error::other("the command is empty"));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", config.function.as_ref())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                config.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/gantry/functions/{}", config.function),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("instance-{number}"))
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_REGION", "local")
            .env("AWS_DEFAULT_REGION", "local")
            .env("TZ", ":UTC")
            .env(
                "LAMBDA_TASK_ROOT",
                config.workdir.clone().unwrap_or_default(),
            )
            .env("_HANDLER", args.first().map(String::as_str).unwrap_or(""))
            .envs(&config.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &config.workdir {
            command.current_dir(dir);
        }
        let mut child = command.spawn()?;
        let alive = Arc::new(AtomicBool::new(true));
        let kill = self.stop.child_token();
        let instance = Arc::new(Instance {
            invocations: tx,
            endpoint: endpoint.clone(),
            alive: alive.clone(),
            last_used: Mutex::new(Instant::now()),
            kill: kill.clone(),
        });
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let endpoint = endpoint.clone();
            let logs = self.config.logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let request_id = endpoint
                        .current
                        .lock()
                        .ok()
                        .and_then(|c| c.as_ref().map(|(id, _)| id.clone()))
                        .unwrap_or_default();
                    let trace_id = endpoint.current_trace.lock().ok().and_then(|t| t.clone());
                    logs.write(
                        &endpoint.function,
                        &request_id,
                        trace_id.as_deref(),
                        stream,
                        &line,
                    );
                }
            });
        }
        let server_stop = CancellationToken::new();
        let app = router(endpoint.clone());
        tokio::spawn({
            let server_stop = server_stop.clone();
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { server_stop.cancelled().await })
                    .await;
            }
        });
        self.live.fetch_add(1, Ordering::AcqRel);
        self.metrics.instances(&self.config.function, 1);
        let live = self.live.clone();
        let metrics = self.metrics.clone();
        let function = self.config.function.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                _ = kill.cancelled() => {
                    let _ = child.kill().await;
                    None
                }
            };
            alive.store(false, Ordering::Release);
            live.fetch_sub(1, Ordering::AcqRel);
            metrics.instances(&function, -1);
            server_stop.cancel();
            if let Some(status) = status {
                tracing::warn!(target: "gantry::functions", function = %function, %status, "a function process exited; a new one starts on the next invocation");
            }
            // Anything waiting on this process learns it is gone.
            if let Ok(mut current) = endpoint.current.lock() {
                current.take();
            }
            let mut queue = endpoint.queue.lock().await;
            queue.close();
            while queue.try_recv().is_ok() {}
        });
        tracing::info!(target: "gantry::functions", function = %self.config.function, api = %api, "started a function process");
        Ok(instance)
    }
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

fn router(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route(NEXT, get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(endpoint)
}

async fn next(State(endpoint): State<Arc<Endpoint>>) -> axum::response::Response {
    let invocation = endpoint.queue.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return (StatusCode::GONE, "the function is stopping").into_response();
    };
    let _ = invocation.taken.send(());
    let deadline_ms = (SystemTime::now() + invocation.timeout)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    if let Ok(mut current) = endpoint.current.lock() {
        *current = Some((invocation.id.clone(), invocation.reply));
    }
    if let Ok(mut trace) = endpoint.current_trace.lock() {
        *trace = crate::logs::trace_id(invocation.trace.as_deref());
    }
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", invocation.id);
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        format!(
            "arn:aws:lambda:local:000000000000:function:{}",
            endpoint.function
        ),
    );
    if let Some(trace) = invocation.trace {
        set("lambda-runtime-trace-id", trace);
    }
    set("content-type", "application/json".into());
    (StatusCode::OK, headers, invocation.payload).into_response()
}

/// Hands an outcome to whoever waits for invocation `id`.
fn finish(
    endpoint: &Endpoint,
    id: &str,
    outcome: Result<Bytes, Bytes>,
) -> axum::response::Response {
    let waiting = endpoint
        .current
        .lock()
        .ok()
        .and_then(|mut current| match current.as_ref() {
            Some((current_id, _)) if current_id == id => current.take(),
            _ => None,
        });
    match waiting {
        Some((_, reply)) => {
            let _ = reply.send(outcome);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"status": "OK"})),
            )
                .into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "errorType": "InvalidRequestID",
                "errorMessage": format!("invocation {id} is not in progress"),
            })),
        )
            .into_response(),
    }
}

async fn response(
    State(endpoint): State<Arc<Endpoint>>,
    Path(id): Path<String>,
    body: Bytes,
) -> axum::response::Response {
    finish(&endpoint, &id, Ok(body))
}

async fn error(
    State(endpoint): State<Arc<Endpoint>>,
    Path(id): Path<String>,
    body: Bytes,
) -> axum::response::Response {
    tracing::warn!(target: "gantry::functions", function = %endpoint.function, request_id = %id, error = %String::from_utf8_lossy(&body), "the function reported an error");
    finish(&endpoint, &id, Err(body))
}

async fn init_error(
    State(endpoint): State<Arc<Endpoint>>,
    body: Bytes,
) -> axum::response::Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::error!(target: "gantry::functions", function = %endpoint.function, error = %text, "the function failed to initialize");
    if let Ok(mut init) = endpoint.init_error.lock() {
        *init = Some(text);
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

/// The Lambda event for an HTTP request: a CloudEvent delivered by the event
/// bus (binary mode, `ce-*` headers) becomes the CloudEvent's JSON; any other
/// request becomes an API Gateway HTTP API payload (format 2.0).
pub(crate) fn event_for(parts: &http::request::Parts, body: &[u8], request_id: &str) -> Bytes {
    if let Some(event) = cloudevent_json(parts, body) {
        return Bytes::from(event.to_string());
    }
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if name == http::header::COOKIE {
            cookies.extend(
                values
                    .iter()
                    .flat_map(|v| v.split("; "))
                    .map(str::to_string),
            );
            continue;
        }
        headers.insert(name.as_str().to_string(), values.join(",").into());
    }
    let query = parts.uri.query().unwrap_or("");
    let mut parameters = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let value = percent_decode(value);
        match parameters.get_mut(&key) {
            Some(serde_json::Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                parameters.insert(key, value.into());
            }
        }
    }
    let (body, encoded) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.uri.path(),
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "gantry",
            "domainName": header("host"),
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": format!("{:?}", parts.version),
                "sourceIp": header("x-forwarded-for").split(',').next().unwrap_or("").trim(),
                "userAgent": header("user-agent"),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": now.as_millis() as u64,
        },
        "body": body,
        "isBase64Encoded": encoded,
    });
    if !cookies.is_empty() {
        event["cookies"] = cookies.into();
    }
    if !parameters.is_empty() {
        event["queryStringParameters"] = parameters.into();
    }
    Bytes::from(event.to_string())
}

fn percent_decode(text: &str) -> String {
    let text = text.replace('+', " ");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A binary-mode CloudEvent as its structured JSON form.
fn cloudevent_json(parts: &http::request::Parts, body: &[u8]) -> Option<serde_json::Value> {
    parts.headers.get("ce-specversion")?;
    let mut event = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Some(attribute) = name.as_str().strip_prefix("ce-") {
            event.insert(
                attribute.to_string(),
                percent_decode(value.to_str().ok()?).into(),
            );
        }
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    event.insert("datacontenttype".into(), content_type.into());
    if !body.is_empty() {
        let data = if content_type.contains("json") {
            serde_json::from_slice(body).ok()
        } else {
            None
        };
        match data {
            Some(json) => event.insert("data".into(), json),
            None => match std::str::from_utf8(body) {
                Ok(text) => event.insert("data".into(), text.into()),
                Err(_) => event.insert(
                    "data_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(body)
                        .into(),
                ),
            },
        };
    }
    Some(serde_json::Value::Object(event))
}

/// The HTTP response for a function's result, as API Gateway maps format 2.0:
/// an object with `statusCode` gives the status, headers, cookies and body;
/// anything else is a 200 with the result as a JSON body.
pub(crate) fn response_for(result: &[u8]) -> Result<http::Response<Bytes>, Failure> {
    let value: serde_json::Value = serde_json::from_slice(result)
        .map_err(|e| Failure::Crashed(format!("the function's response is not JSON: {e}")))?;
    let json = |value: &serde_json::Value| {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Bytes::from(value.to_string()))
            .map_err(|e| Failure::Crashed(e.to_string()))
    };
    let Some(object) = value.as_object().filter(|o| o.contains_key("statusCode")) else {
        return json(&value);
    };
    let status = object
        .get("statusCode")
        .and_then(|s| s.as_u64())
        .and_then(|s| http::StatusCode::from_u16(s as u16).ok())
        .ok_or_else(|| Failure::Crashed("`statusCode` is not an HTTP status".into()))?;
    let mut builder = http::Response::builder().status(status);
    let mut has_type = false;
    if let Some(headers) = object.get("headers").and_then(|h| h.as_object()) {
        for (name, value) in headers {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            has_type |= name.eq_ignore_ascii_case("content-type");
            builder = builder.header(name.as_str(), value);
        }
    }
    if let Some(cookies) = object.get("cookies").and_then(|c| c.as_array()) {
        for cookie in cookies.iter().filter_map(|c| c.as_str()) {
            builder = builder.header("set-cookie", cookie);
        }
    }
    let body = match object.get("body") {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(text)) => {
            if object.get("isBase64Encoded").and_then(|b| b.as_bool()) == Some(true) {
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| Failure::Crashed(format!("`body` is not base64: {e}")))?,
                )
            } else {
                Bytes::from(text.clone())
            }
        }
        Some(other) => Bytes::from(other.to_string()),
    };
    if !has_type && !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(body)
        .map_err(|e| Failure::Crashed(format!("bad response from the function: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_become_format_2_events() {
        let request = http::Request::post("/orders/7?tag=a&tag=b&q=x%20y")
            .header("host", "shop.local")
            .header("cookie", "a=1; b=2")
            .header("x-thing", "v")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let event: serde_json::Value =
            serde_json::from_slice(&event_for(&parts, b"{\"n\":1}", "req-1")).unwrap();
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["rawPath"], "/orders/7");
        assert_eq!(event["queryStringParameters"]["tag"], "a,b");
        assert_eq!(event["queryStringParameters"]["q"], "x y");
        assert_eq!(event["cookies"][1], "b=2");
        assert_eq!(event["headers"]["x-thing"], "v");
        assert_eq!(event["requestContext"]["http"]["method"], "POST");
        assert_eq!(event["requestContext"]["requestId"], "req-1");
        assert_eq!(event["body"], "{\"n\":1}");
        assert_eq!(event["isBase64Encoded"], false);
    }

    #[test]
    fn cloudevents_arrive_as_their_json() {
        let request = http::Request::post("/")
            .header("ce-specversion", "1.0")
            .header("ce-id", "e1")
            .header("ce-type", "order.placed")
            .header("ce-source", "%2Forders")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let event: serde_json::Value =
            serde_json::from_slice(&event_for(&parts, b"{\"order_id\":\"o1\"}", "r")).unwrap();
        assert_eq!(event["type"], "order.placed");
        assert_eq!(event["source"], "/orders");
        assert_eq!(event["data"]["order_id"], "o1");
    }

    #[test]
    fn results_map_back_to_responses() {
        let response = response_for(
            br#"{"statusCode":201,"headers":{"x-a":"1"},"body":"made","cookies":["c=1"]}"#,
        )
        .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.headers()["set-cookie"], "c=1");
        assert_eq!(response.body().as_ref(), b"made");
        let response = response_for(br#"{"ok":true}"#).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), br#"{"ok":true}"#);
        let response =
            response_for(br#"{"statusCode":200,"body":"aGk=","isBase64Encoded":true}"#).unwrap();
        assert_eq!(response.body().as_ref(), b"hi");
        assert!(response_for(b"not json").is_err());
    }
}
