//! The request path through the gateway; see the crate docs for the phases.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::api_keys::ApiKeys;
use crate::attempts::{buffer_small_body, Forward, Forwarded};
use crate::body::GatewayBody;
use crate::forwarding::{add_forwarded, client_ip, is_trusted, strip_hop_by_hop, Peer};
use crate::idempotency::IdempotencyStore;
use crate::identity::{request_id, TraceContext, REQUEST_ID, TRACEPARENT};
use crate::layers::{Exchange, RATELIMIT, RATELIMIT_POLICY};
use crate::metrics::{GatewayMetrics, RouteMetrics};
use crate::problem::Problem;
use crate::resilience::retry::is_idempotent;
use crate::router::RouteTable;
use crate::shadow::Tap;
use crate::upstream::{RequestBody, UpstreamPool};

/// The largest request head accepted (names and values of all headers).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The gateway: the current route table and the upstream connection pool.
/// Cheap to clone; clones share both.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

/// Sees every request the gateway answered (SLOs count them, the trace
/// store keeps a span of each).
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, request: &Observation<'_>);

    /// One attempt to get an answer from a service instance; a retried
    /// request makes several. Called before [`RequestObserver::observe`].
    /// Returns whether the attempt's span was kept (a failing attempt keeps
    /// its whole trace, the request's own span included).
    fn attempt(&self, _attempt: &Attempt<'_>) -> bool {
        false
    }

    /// Head sampling: whether a trace the gateway starts (the client sent
    /// no `traceparent`) is sampled. The decision travels upstream in the
    /// `traceparent` flags, so every hop agrees.
    fn sample(&self, _trace_id: u128) -> bool {
        true
    }

    /// Whether a request's span is kept: sampled at the head, or failed, or
    /// slow (tail). A kept trace's id may be the exemplar of the latency
    /// histogram's bucket.
    fn keeps_trace(&self, _sampled: bool, _status: u16, _duration: std::time::Duration) -> bool {
        false
    }

    /// A WebSocket the gateway relayed has closed (one span per socket,
    /// under its handshake's span).
    fn socket(&self, _socket: &crate::websocket::SocketClosed<'_>) {}
}

/// One upstream attempt, as observers see it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub service: &'a str,
    pub instance: u32,
    /// The instance's `host:port`.
    pub authority: &'a str,
    pub method: &'a str,
    /// 1 for the first attempt.
    pub number: u32,
    pub started: std::time::SystemTime,
    /// Until the response head or the failure.
    pub duration: std::time::Duration,
    /// The answer's status, when there was one.
    pub status: Option<u16>,
    /// Why there was no answer: `connect`, `reset` or `timeout`.
    pub error: Option<&'static str>,
    /// The trace, the attempt's own span (the instance's parent) and the
    /// gateway span it belongs to.
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: u64,
    /// The trace's head sampling decision.
    pub sampled: bool,
}

/// One answered request, as observers see it.
#[derive(Debug)]
pub struct Observation<'a> {
    pub route: &'a str,
    pub service: &'a str,
    pub instance: Option<u32>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// When the request arrived.
    pub started: std::time::SystemTime,
    /// Until the response head.
    pub duration: std::time::Duration,
    /// The W3C trace id, this hop's span id (sent upstream as the parent),
    /// and the caller's span id when the trace was continued.
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    /// A gRPC call's status, when the answer's head carries it (Gantry's own
    /// refusals and trailers-only answers; a status in trailers comes after).
    pub grpc_status: Option<u8>,
    /// Whether this request's span is kept (see [`RequestObserver::keeps_trace`]);
    /// SLOs count every request either way.
    pub keep_span: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) observer: Option<Arc<dyn RequestObserver>>,
    pub(crate) idempotency: Option<IdempotencyStore>,
    pub(crate) api_keys: Option<ApiKeys>,
    pub(crate) upstreams: UpstreamPool,
    pub(crate) metrics: GatewayMetrics,
    /// WebSockets relayed after their handshake.
    pub(crate) sockets: crate::websocket::Sockets,
}

/// What a gateway is built from besides its route table and metrics: the
/// stores it reads on the request path and who watches its answers. Given
/// once, at construction; nothing is set on a running gateway.
#[derive(Debug, Default)]
pub struct GatewayParts {
    /// Idempotency records (`idempotency = ...` on routes); without it such
    /// routes answer 503 `store-unavailable`.
    pub idempotency: Option<IdempotencyStore>,
    /// API keys (`auth = "api_key"` routes); without it no key is valid.
    pub api_keys: Option<ApiKeys>,
    /// Shown every answered request (SLO counts, spans).
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl Gateway {
    /// A gateway serving `table`, with a pool of keep-alive upstream
    /// connections and no stores (tests, benchmarks).
    pub fn new(table: RouteTable, metrics: GatewayMetrics) -> Gateway {
        Gateway::with_parts(table, metrics, GatewayParts::default())
    }

    /// A gateway serving `table` with `parts`.
    pub fn with_parts(table: RouteTable, metrics: GatewayMetrics, parts: GatewayParts) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                idempotency: parts.idempotency,
                observer: parts.observer,
                api_keys: parts.api_keys,
                upstreams: UpstreamPool::default(),
                sockets: crate::websocket::Sockets::new(metrics.sockets.clone()),
                metrics,
            }),
        }
    }

    /// At shutdown, after the last request: WebSockets still open get until
    /// `drain` to end, then a close frame (1001, going away).
    pub async fn close_sockets(&self, drain: std::time::Duration) {
        self.inner.sockets.close_all(drain).await;
    }

    /// After a reload: WebSockets to the services it replaced or removed get
    /// until `drain` to end, then a close frame (1001). Sockets to services
    /// the reload kept are left alone.
    pub fn retire_sockets(
        &self,
        replaced: &[Arc<gantry_services::ServiceHandle>],
        drain: std::time::Duration,
    ) {
        let handles: Vec<usize> = replaced.iter().map(|h| Arc::as_ptr(h) as usize).collect();
        self.inner.sockets.retire(&handles, drain);
    }

    /// The API key store, for the admin API.
    pub fn api_keys(&self) -> Option<&ApiKeys> {
        self.inner.api_keys.as_ref()
    }

    /// The metric families route tables register into.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// The route table new requests use.
    /// Adds the bulkhead gauges (`gantry_service_requests_in_flight`,
    /// `gantry_service_max_concurrent_requests`), read at each scrape.
    pub fn register_saturation(&self, metrics: &gantry_telemetry::Metrics) {
        crate::metrics::register_saturation(metrics, self.clone());
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// Installs a new route table atomically and returns the old one. Requests
    /// that already started finish on the old table.
    pub fn swap(&self, table: RouteTable) -> Arc<RouteTable> {
        self.inner.table.swap(Arc::new(table))
    }

    /// Handles one client request. Never fails: problems become responses.
    pub async fn handle(&self, request: Request<Incoming>, client: &Peer) -> Response<GatewayBody> {
        let started = Instant::now();
        let table = self.inner.table.load_full();

        // Phase 1: identify.
        let request_id = request_id(request.headers());
        let observer = self.inner.observer.as_deref();
        let trace = crate::identity::trace_context(request.headers(), |id| {
            observer.is_none_or(|o| o.sample(id))
        });
        let (mut parts, body) = request.into_parts();
        // Paths are normalised before routing, and the upstream gets the
        // normalised one: the path a route matched is the path it serves.
        let normalized = if table.edge.normalize_path {
            crate::normalize::normalize(parts.uri.path(), table.edge.escaped_slashes).map(|p| {
                match p {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(p) => Some(p),
                }
            })
        } else {
            Ok(None)
        };
        let path = match &normalized {
            Ok(Some(normal)) => normal.clone(),
            _ => parts.uri.path().to_owned(),
        };
        let mut outcome = Outcome {
            started,
            method: parts.method.clone(),
            path: &path,
            route: "unmatched",
            service: "none",
            instance: None,
            request_id: &request_id,
            trace: &trace,
            observer,
            attempt_kept: std::sync::atomic::AtomicBool::new(false),
            hsts: client.tls.as_ref().and(table.edge.hsts.as_ref()),
            grpc: crate::grpc::is_grpc(&parts.headers),
        };
        match normalized {
            Ok(None) => {}
            Ok(Some(normal)) => {
                if let Err(detail) = replace_path(&mut parts.uri, &normal) {
                    return outcome.finish(
                        Problem::BadPath.respond(detail, &path, &request_id),
                        &table.unrouted,
                    );
                }
            }
            Err(bad) => {
                return outcome.finish(
                    Problem::BadPath.respond(bad.detail().to_string(), &path, &request_id),
                    &table.unrouted,
                );
            }
        }

        // Oversized heads are refused before any work. (hyper itself refuses
        // heads past its read buffer, with a bare 431.)
        let head_size: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head_size > MAX_HEADER_BYTES {
            let detail = format!(
                "the request headers total {head_size} bytes; the limit is {MAX_HEADER_BYTES}"
            );
            return outcome.finish(
                Problem::HeadersTooLarge.respond(detail, &path, &request_id),
                &table.unrouted,
            );
        }

        // Phase 2: route.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let origin = parts.headers.get(header::ORIGIN).cloned();
        // A CORS preflight is answered here for routes with `cors`.
        let preflight = parts
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .filter(|_| parts.method == Method::OPTIONS);
        if let (Some(requested), Some(origin)) = (preflight, &origin) {
            if let Some((route, _)) = table.find(&requested, host, &path, &parts.headers) {
                if let Some(cors) = &route.shaping.cors {
                    outcome.route = &route.label;
                    let metrics = &route.backends.choose(&parts.headers).metrics;
                    let response = cors.preflight(origin, &requested).unwrap_or_else(|| {
                        let detail = format!(
                            "origin {} is not in the `cors.origins` of route `{}`",
                            origin.to_str().unwrap_or("?"),
                            route.label
                        );
                        Problem::OriginNotAllowed.respond(detail, &path, &request_id)
                    });
                    return outcome.finish(response, metrics);
                }
            }
        }
        let Some((route, matched)) = table.find(&parts.method, host, &path, &parts.headers) else {
            let allowed = table.allowed_methods(host, &path, &parts.headers);
            if !allowed.is_empty() {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let detail = format!("{path} accepts {}, not {}", list.join(", "), parts.method);
                let mut response = Problem::MethodNotAllowed.respond(detail, &path, &request_id);
                if let Ok(allow) = HeaderValue::from_str(&list.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                return outcome.finish(response, &table.unrouted);
            }
            let detail = format!(
                "no route matches {} {path}; `GET /v1/routes` on the admin API lists the routes",
                parts.method
            );
            return outcome.finish(
                Problem::NoRoute.respond(detail, &path, &request_id),
                &table.unrouted,
            );
        };
        let body = RequestBody::Streaming(body);
        let backend = route.backends.choose(&parts.headers);
        let service = &backend.service;
        outcome.route = &route.label;
        outcome.service = service.name();

        // The route's edge policies, in the order `layers::stack` gives.
        let mut exchange = Exchange {
            gateway: self,
            table: &table,
            route,
            client,
            client_addr: client_ip(client, &parts.headers, &table.trusted_proxies),
            path: &path,
            request_id: &request_id,
            parts,
            body,
            claims: None,
            rate_headers: None,
            claim_guard: None,
        };
        for layer in &route.layers {
            if let ControlFlow::Break(response) = layer.apply(&mut exchange).await {
                return outcome.finish(response, &backend.metrics);
            }
        }
        let Exchange {
            mut parts,
            body,
            rate_headers,
            mut claim_guard,
            ..
        } = exchange;

        // The request as the upstream gets it (from the service, or from a
        // fallback service if admission refuses it): rewritten path,
        // hop-by-hop headers gone, forwarding headers set by Gantry.
        let Some(uri) = route.upstream_uri(&parts.uri, &matched) else {
            // Only a rewrite can produce this, from segments of the client's
            // path: the client's request is at fault, not the route.
            let detail = format!(
                "route `{}` rewrites this path into one that is not a valid URI; check the path's segments",
                route.label
            );
            return outcome.finish(
                Problem::BadPath.respond(detail, &path, &request_id),
                &backend.metrics,
            );
        };
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // A WebSocket handshake keeps its upgrade (and goes upstream on a
        // connection of its own); the client's side of the upgrade is taken
        // here, before the request is sent.
        let websocket = crate::websocket::is_upgrade(&parts)
            && route.websocket().enabled
            && !service.config().protocol.is_h2();
        let client_upgrade = if websocket {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        // A gRPC call's own deadline, when shorter than the route's.
        let timeout = match parts.headers.get(crate::grpc::GRPC_TIMEOUT) {
            Some(value) if outcome.grpc => {
                crate::grpc::parse_timeout(value).map_or(route.timeout, |t| t.min(route.timeout))
            }
            _ => route.timeout,
        };
        strip_hop_by_hop(&mut parts.headers);
        if websocket {
            crate::websocket::restore_upgrade_headers(&mut parts.headers);
        }
        if outcome.grpc {
            // `TE: trailers` is hop-by-hop, but gRPC servers require it on
            // every hop: it says the client reads trailers (the status).
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let peer_trusted = is_trusted(&table.trusted_proxies, &client.addr.ip());
        add_forwarded(
            &mut parts.headers,
            client,
            original_host.as_ref(),
            peer_trusted,
        );
        parts.headers.insert(REQUEST_ID, request_id.clone());
        parts
            .headers
            .insert(TRACEPARENT, crate::identity::traceparent(&trace));
        route.shaping.request.apply(&mut parts.headers);

        // Phase 3: admission. The bulkhead caps requests in flight to the
        // service (the count also keeps a reload from stopping the service
        // under this request); the breaker refuses while the service fails.
        let Some(in_flight) = service.try_track_request() else {
            backend.metrics.shed.inc();
            let detail = format!(
                "service `{}` already has {} requests in flight (its `max_concurrent`); try again shortly",
                service.name(),
                service.config().max_concurrent
            );
            let request = Request::from_parts(parts, body);
            return self
                .fall_back(
                    route,
                    backend,
                    Problem::BulkheadFull,
                    detail,
                    Some(request),
                    &mut outcome,
                )
                .await;
        };
        let Some(admission) = service.breaker().admit() else {
            let detail = format!(
                "service `{}` is failing and its circuit breaker is open; requests resume after a successful probe",
                service.name()
            );
            let request = Request::from_parts(parts, body);
            return self
                .fall_back(
                    route,
                    backend,
                    Problem::CircuitOpen,
                    detail,
                    Some(request),
                    &mut outcome,
                )
                .await;
        };

        // Phase 4: forward, retrying what may be retried.
        // A gRPC call is sent again only on the gRPC statuses the route's
        // `retry.on` names (UNAVAILABLE: the server did not take it).
        let idempotent = is_idempotent(&parts.method, &parts.headers)
            || (outcome.grpc && route.retry.retries_any_grpc());
        // A body is read ahead (when small and of known length) if the request
        // may be sent more than once: retried, or mirrored to a shadow.
        // A request the split already sent to the shadow's service is not mirrored.
        let shadow = route
            .shadow
            .as_ref()
            .filter(|shadow| shadow.policy.to != service.name() && shadow.applies(idempotent));
        let keep_for_retry = idempotent && route.retry.attempts > 1;
        let body = if keep_for_retry || shadow.is_some() {
            let limit = shadow
                .map_or(0, |s| s.policy.max_body)
                .max(route.retry.max_body);
            match buffer_small_body(body, limit).await {
                Ok(body) => body,
                Err(error) => {
                    service.breaker().record(admission, true);
                    let detail = format!("reading the request body failed: {error}");
                    return outcome.finish(
                        Problem::BadRequestBody.respond(detail, &path, &request_id),
                        &backend.metrics,
                    );
                }
            }
        } else {
            body
        };
        let mirrored = shadow.and_then(|shadow| match body.replay() {
            Some(copy) => Some(shadow.mirror(
                self.inner.upstreams.clone(),
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
                copy,
                route.timeout,
            )),
            None => {
                shadow.skip();
                None
            }
        });
        let forwarded = Forward {
            upstreams: &self.inner.upstreams,
            route,
            backend,
            admission,
            idempotent,
            grpc: outcome.grpc,
            deadline: started + timeout,
            trace: &trace,
            observer: outcome.observer,
            attempt_kept: &outcome.attempt_kept,
        }
        .run(parts, body)
        .await;
        let response = match forwarded {
            Forwarded::Response(response, instance, load) => {
                outcome.instance = Some(instance);
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    let upstream_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                    match (client_upgrade, upstream_upgrade) {
                        (Some(client), Some(upstream)) => {
                            crate::websocket::restore_upgrade_headers(&mut parts.headers);
                            self.inner.sockets.open(
                                client,
                                upstream,
                                crate::websocket::Opened {
                                    route: route.label.clone(),
                                    service: service.name().to_string(),
                                    handle: Arc::as_ptr(service) as usize,
                                    trace,
                                    policy: route.websocket().clone(),
                                    observer: self.inner.observer.clone(),
                                },
                            );
                        }
                        _ => {
                            // A 101 to a request that did not ask for one.
                            let detail = format!(
                                "service `{}` switched protocols on a request that did not ask to",
                                service.name()
                            );
                            return outcome.finish(
                                Problem::UpstreamReset.respond(detail, &path, &request_id),
                                &backend.metrics,
                            );
                        }
                    }
                    let response = Response::from_parts(
                        parts,
                        GatewayBody::Upstream {
                            body,
                            guard: None,
                            tap: None,
                            grpc: None,
                        },
                    );
                    return outcome.finish(response, &backend.metrics);
                }
                let mut tap = mirrored.map(|mirror| mirror.tap(parts.status, &parts.headers));
                if let Some(guard) = claim_guard.take() {
                    // A 5xx is not stored: the guard drops and the key is freed.
                    if !parts.status.is_server_error() {
                        let tap = tap.get_or_insert_with(|| {
                            Box::new(Tap::new(parts.status, &parts.headers))
                        });
                        let limit = route
                            .idempotency
                            .as_ref()
                            .map_or(0, |p| p.max_body as usize);
                        guard.store_when(tap.listen(limit));
                    }
                }
                if let Some(tap) = &mut tap {
                    if body.is_end_stream() {
                        // hyper never polls an empty body: it ends here.
                        tap.observe(None);
                    }
                }
                // A gRPC status in the trailers is counted as they pass (one
                // in the head is counted when the answer is recorded).
                let grpc = (outcome.grpc && crate::grpc::status_in(&parts.headers).is_none())
                    .then(|| Box::new(backend.metrics.clone()));
                let body = GatewayBody::Upstream {
                    body,
                    guard: Some((in_flight, Some(load))),
                    tap,
                    grpc,
                };
                Response::from_parts(parts, body)
            }
            Forwarded::Failed {
                problem,
                detail,
                instance,
                request,
            } => {
                outcome.instance = instance;
                if matches!(
                    problem,
                    Problem::UpstreamTimeout | Problem::NoHealthyInstance
                ) {
                    drop(in_flight);
                    return self
                        .fall_back(route, backend, problem, detail, request, &mut outcome)
                        .await;
                }
                problem.respond(detail, &path, &request_id)
            }
        };
        let mut response = response;
        route
            .shaping
            .finish_response(response.headers_mut(), origin.as_ref());
        if let Some((policy, state)) = rate_headers {
            response.headers_mut().insert(RATELIMIT_POLICY, policy);
            response.headers_mut().insert(RATELIMIT, state);
        }
        outcome.finish(response, &backend.metrics)
    }
}

/// Puts a normalised path (keeping the query, scheme and authority) in `uri`.
fn replace_path(uri: &mut http::Uri, path: &str) -> Result<(), String> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| format!("the normalised path is not a valid URI path: {e}"))?,
    );
    *uri = http::Uri::from_parts(parts)
        .map_err(|e| format!("the normalised path is not a valid URI: {e}"))?;
    Ok(())
}

/// What the access log and metrics record about one request.
pub(crate) struct Outcome<'a> {
    pub(crate) started: Instant,
    pub(crate) method: Method,
    pub(crate) path: &'a str,
    pub(crate) route: &'a str,
    pub(crate) service: &'a str,
    pub(crate) instance: Option<u32>,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) trace: &'a TraceContext,
    pub(crate) observer: Option<&'a dyn RequestObserver>,
    /// Set when an upstream attempt's span was kept (it failed or was slow),
    /// which keeps the request's span too.
    pub(crate) attempt_kept: std::sync::atomic::AtomicBool,
    /// `Strict-Transport-Security` for answers over TLS, when configured.
    pub(crate) hsts: Option<&'a HeaderValue>,
    /// The request is a gRPC call: Gantry's refusals are answered as gRPC statuses.
    pub(crate) grpc: bool,
}

impl Outcome<'_> {
    fn finish(
        self,
        response: Response<GatewayBody>,
        metrics: &RouteMetrics,
    ) -> Response<GatewayBody> {
        self.finish_ref(response, metrics)
    }

    /// Phase 5: record the request, then hand the response back.
    pub(crate) fn finish_ref(
        &self,
        mut response: Response<GatewayBody>,
        metrics: &RouteMetrics,
    ) -> Response<GatewayBody> {
        let elapsed = self.started.elapsed();
        let status = response.status().as_u16();
        // A gRPC client cannot read a problem document: Gantry's refusals
        // become gRPC statuses. Metrics and spans keep the HTTP status the
        // refusal had, so a 401 counts as a 4xx whatever the protocol.
        let grpc_status = if self.grpc {
            if response
                .extensions()
                .get::<gantry_problem::Detail>()
                .is_some()
            {
                response = crate::grpc::refusal(response);
            }
            let code = crate::grpc::status_in(response.headers());
            if let Some(code) = code {
                metrics.record_grpc(code);
            }
            code
        } else {
            None
        };
        let sampled =
            self.trace.sampled() || self.attempt_kept.load(std::sync::atomic::Ordering::Relaxed);
        let keep_span = self
            .observer
            .is_some_and(|o| o.keeps_trace(sampled, status, elapsed));
        let exemplar = keep_span.then_some(self.trace.trace_id);
        metrics.record(status, elapsed.as_secs_f64(), exemplar);
        if let Some(observer) = self.observer {
            observer.observe(&Observation {
                route: self.route,
                service: self.service,
                instance: self.instance,
                method: self.method.as_str(),
                path: self.path,
                status,
                started: std::time::SystemTime::now() - elapsed,
                duration: elapsed,
                trace_id: self.trace.trace_id,
                span_id: self.trace.span_id,
                parent_id: self.trace.parent_id,
                grpc_status,
                keep_span,
            });
        }
        response
            .headers_mut()
            .insert(REQUEST_ID, self.request_id.clone());
        if let Some(hsts) = self.hsts {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        tracing::info!(
            target: "gantry::access",
            route = self.route,
            service = self.service,
            instance = self.instance,
            method = %self.method,
            path = self.path,
            status,
            duration_us = elapsed.as_micros() as u64,
            request_id = self.request_id.to_str().unwrap_or_default(),
            trace_id = %self.trace.trace_id(),
        );
        response
    }
}
