//! WebAssembly functions on wasmtime: wasi:http components and WAGI modules.
//!
//! One [`WasmHost`] (one wasmtime `Engine`) serves every function. It uses the
//! pooling allocator, so instantiating a pre-linked component is a few
//! copy-on-write mappings rather than fresh allocations, and epoch
//! interruption, so a guest stuck in a loop is stopped at its deadline. Each
//! request gets a fresh instance in its own `Store`: nothing leaks between
//! requests. Compiled code is cached on disk in the data directory
//! (wasmtime's own cache, keyed by the module's hash and the engine's
//! settings), so a restart does not compile again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, InstancePre, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outbound::Outbound;
use crate::{BoxError, Failure, FnBody};

/// How often the epoch advances: the granularity of timeouts, and how often a
/// CPU-bound guest yields its thread to other tasks.
const TICK: Duration = Duration::from_millis(10);
/// Most bytes of guest stdout/stderr kept per request for the log.
const LOG_CAPTURE: usize = 64 * 1024;
/// The largest request body a WAGI module is given on stdin.
const WAGI_MAX_BODY: usize = 16 * 1024 * 1024;
/// The largest response a WAGI module may write to stdout.
const WAGI_MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// The shared wasmtime engine.
#[derive(Clone)]
pub struct WasmHost {
    engine: Engine,
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost").finish_non_exhaustive()
    }
}

impl WasmHost {
    /// An engine whose compiled artifacts are cached under `cache_dir`.
    pub fn new(cache_dir: &Path) -> wasmtime::Result<WasmHost> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(2000)
            .total_memories(1000)
            .total_tables(2000)
            .max_memory_size(4 << 30)
            .table_elements(100_000)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        std::fs::create_dir_all(cache_dir)?;
        let mut cache = CacheConfig::new();
        cache.with_directory(cache_dir);
        config.cache(Some(Cache::new(cache)?));
        let engine = Engine::new(&config)?;
        // The epoch ticker stops when the last engine handle is gone.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("gantry-wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })?;
        Ok(WasmHost { engine })
    }

    /// Compiles (or loads from the cache) a wasi:http component.
    pub(crate) fn component(
        &self,
        path: &Path,
        settings: Settings,
    ) -> wasmtime::Result<ComponentExec> {
        let component = Component::from_file(&self.engine, path)?;
        let mut linker = Linker::<Guest>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?).map_err(|e| {
            wasmtime::format_err!("{e}: a component must export wasi:http/incoming-handler (the wasi:http proxy world); for a WASI command module set `executor = \"wagi\"`")
        })?;
        Ok(ComponentExec { pre, settings })
    }

    /// Compiles (or loads from the cache) a WASI preview 1 command module.
    pub(crate) fn wagi(&self, path: &Path, settings: Settings) -> wasmtime::Result<WagiExec> {
        let module = Module::from_file(&self.engine, path)?;
        let mut linker = wasmtime::Linker::<WagiGuest>::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |guest| &mut guest.wasi)?;
        let pre = linker.instantiate_pre(&module)?;
        if module.get_export("_start").is_none() {
            wasmtime::bail!("a WAGI module must be a WASI command (export `_start`)");
        }
        Ok(WagiExec { pre, settings })
    }
}

/// What every wasm invocation of one function gets.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) function: Arc<str>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) memory: usize,
    pub(crate) timeout: Duration,
    pub(crate) outbound: Outbound,
    pub(crate) logs: crate::logs::LogBook,
}

impl Settings {
    /// A store whose guest traps at the deadline (yielding every tick until
    /// then) and cannot grow memory past the cap.
    fn store<T: Send + 'static>(
        &self,
        engine: &Engine,
        data: T,
        limits: fn(&mut T) -> &mut StoreLimits,
    ) -> Store<T> {
        let mut store = Store::new(engine, data);
        store.limiter(move |data| limits(data) as &mut dyn wasmtime::ResourceLimiter);
        let deadline = Instant::now() + self.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    fn limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.memory)
            .trap_on_grow_failure(true)
            .build()
    }

    fn wasi(&self, stdout: &MemoryOutputPipe, stderr: &MemoryOutputPipe) -> WasiCtxBuilder {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&self.env)
            .args(&[self.function.as_ref()]);
        builder
    }

    /// Turns a guest's error into what the caller is told.
    fn failure(&self, error: &wasmtime::Error) -> Failure {
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return Failure::Timeout(self.timeout);
            }
        }
        let text = format!("{error:#}");
        if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
            return Failure::Memory(self.memory as u64);
        }
        Failure::Crashed(text)
    }

    fn log_output(
        &self,
        request_id: &str,
        trace_id: Option<&str>,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) {
        for (stream, pipe) in [("stdout", stdout), ("stderr", stderr)] {
            let contents = pipe.contents();
            for line in String::from_utf8_lossy(&contents).lines() {
                self.logs
                    .write(&self.function, request_id, trace_id, stream, line);
            }
        }
    }
}

/// A store's state for a wasi:http component.
pub(crate) struct Guest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
    outbound: Outbound,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// A compiled, pre-linked wasi:http component.
pub(crate) struct ComponentExec {
    pre: ProxyPre<Guest>,
    settings: Settings,
}

impl ComponentExec {
    /// Serves one request on a fresh instance.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<FnBody>, Failure> {
        let trace_id = crate::logs::trace_id(
            request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        let stdout = MemoryOutputPipe::new(LOG_CAPTURE);
        let stderr = MemoryOutputPipe::new(LOG_CAPTURE);
        let guest = Guest {
            wasi: self.settings.wasi(&stdout, &stderr).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: self.settings.limits(),
            outbound: self.settings.outbound.clone(),
        };
        let mut store = self
            .settings
            .store(self.pre.engine(), guest, |g: &mut Guest| &mut g.limits);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            wasmtime::Result::<_, wasmtime::Error>::Ok((req, out))
        })();
        let (req, out) = prepared.map_err(|e| Failure::Crashed(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let settings = self.settings.clone();
        let request_id_owned = request_id.to_string();
        // The guest keeps running after it sets the response, to stream the
        // body; its deadline still applies.
        let task = tokio::spawn(async move {
            let outcome = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            }
            .await;
            settings.log_output(&request_id_owned, trace_id.as_deref(), &stdout, &stderr);
            outcome
        });
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(Ok(response))) => {
                Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Ok(Err(code))) => Err(Failure::Crashed(format!(
                "the function answered with an error: {code:?}"
            ))),
            Ok(Err(_)) => Err(match task.await {
                Ok(Ok(())) => {
                    Failure::Crashed("the function returned without setting a response".into())
                }
                Ok(Err(error)) => self.settings.failure(&error),
                Err(join) => Failure::Crashed(join.to_string()),
            }),
            Err(_) => {
                task.abort();
                Err(Failure::Timeout(timeout))
            }
        }
    }
}

/// A store's state for a WAGI module.
pub(crate) struct WagiGuest {
    wasi: wasmtime_wasi::p1::WasiP1Ctx,
    limits: StoreLimits,
}

/// A compiled, pre-linked WASI command module run CGI-style.
pub(crate) struct WagiExec {
    pre: InstancePre<WagiGuest>,
    settings: Settings,
}

impl WagiExec {
    /// Runs the module once for `request`: the request in environment
    /// variables and stdin, the response from stdout.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<FnBody>, Failure> {
        let (parts, body) = request.into_parts();
        let trace_id = crate::logs::trace_id(
            parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        let body = Limited::new(body, WAGI_MAX_BODY)
            .collect()
            .await
            .map_err(|e| Failure::BadRequest(format!("cannot read the request body: {e}")))?
            .to_bytes();
        let stdout = MemoryOutputPipe::new(WAGI_MAX_OUTPUT);
        let stderr = MemoryOutputPipe::new(LOG_CAPTURE);
        let mut builder = self.settings.wasi(&stdout, &stderr);
        builder.stdin(MemoryInputPipe::new(body.clone()));
        for (key, value) in cgi_env(&parts, body.len(), request_id) {
            builder.env(key, value);
        }
        let guest = WagiGuest {
            wasi: builder.build_p1(),
            limits: self.settings.limits(),
        };
        let mut store =
            self.settings
                .store(self.pre.module().engine(), guest, |g: &mut WagiGuest| {
                    &mut g.limits
                });
        let outcome = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let outcome = match tokio::time::timeout(self.settings.timeout, outcome).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(Failure::Timeout(self.settings.timeout)),
        };
        self.settings.log_output(
            request_id,
            trace_id.as_deref(),
            &MemoryOutputPipe::new(0),
            &stderr,
        );
        match outcome {
            Ok(()) => {}
            Err(error) => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) if exit.0 == 0 => {}
                Some(exit) => {
                    return Err(Failure::Crashed(format!(
                        "the module exited with status {}",
                        exit.0
                    )))
                }
                None => return Err(self.settings.failure(&error)),
            },
        }
        parse_cgi(&stdout.contents())
    }
}

/// The CGI/WAGI request variables.
fn cgi_env(parts: &http::request::Parts, length: usize, request_id: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("REQUEST_METHOD".into(), parts.method.to_string()),
        ("PATH_INFO".into(), parts.uri.path().to_string()),
        ("SCRIPT_NAME".into(), String::new()),
        (
            "QUERY_STRING".into(),
            parts.uri.query().unwrap_or("").to_string(),
        ),
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_SOFTWARE".into(), "gantry".into()),
        ("CONTENT_LENGTH".into(), length.to_string()),
        ("X_REQUEST_ID".into(), request_id.to_string()),
        (
            "X_FULL_URL".into(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        ),
    ];
    if let Some(kind) = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.push(("CONTENT_TYPE".into(), kind.to_string()));
    }
    for (name, value) in &parts.headers {
        if name == http::header::AUTHORIZATION
            || name == http::header::CONTENT_TYPE
            || name == http::header::CONTENT_LENGTH
        {
            continue;
        }
        if let Ok(value) = value.to_str() {
            let key = format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            env.push((key, value.to_string()));
        }
    }
    env
}

/// A CGI response: header lines, a blank line, the body. `Status:` sets the
/// status; a `Location:` alone means a redirect.
fn parse_cgi(output: &[u8]) -> Result<Response<FnBody>, Failure> {
    let (head, body) = split_head(output).ok_or_else(|| {
        Failure::Crashed("the module wrote no CGI headers (write `Content-Type: ...`, a blank line, then the body)".into())
    })?;
    let head = std::str::from_utf8(head)
        .map_err(|_| Failure::Crashed("the CGI headers are not UTF-8".into()))?;
    let mut builder = Response::builder();
    let mut status = None;
    let mut location = false;
    for line in head.lines().filter(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Failure::Crashed(format!("bad CGI header line `{line}`")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| Failure::Crashed(format!("bad CGI status `{value}`")))?,
            );
            continue;
        }
        location |= name.eq_ignore_ascii_case("location");
        let value = HeaderValue::from_str(value)
            .map_err(|_| Failure::Crashed(format!("bad CGI header value in `{line}`")))?;
        builder = builder.header(name.trim(), value);
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    builder
        .status(status)
        .body(
            Full::new(Bytes::copy_from_slice(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| Failure::Crashed(format!("bad CGI response: {e}")))
}

fn split_head(output: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let (at, len) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 < b.0 {
                a
            } else {
                b
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => return None,
    };
    Some((&output[..at], &output[at + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_becomes_a_response() {
        let response =
            parse_cgi(b"Content-Type: text/plain\nStatus: 201 Created\n\nhello").unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let response = parse_cgi(b"Location: /elsewhere\r\n\r\n").unwrap();
        assert_eq!(response.status(), 302);
        assert!(parse_cgi(b"no headers at all").is_err());
    }
}
