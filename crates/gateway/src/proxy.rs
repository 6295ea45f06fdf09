//! The request path through the gateway; see the crate docs for the phases.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::forwarding::{add_forwarded, strip_hop_by_hop, Peer};
use crate::identity::{request_id, TraceContext, REQUEST_ID, TRACEPARENT};
use crate::metrics::{GatewayMetrics, RouteMetrics};
use crate::problem::Problem;
use crate::router::RouteTable;
use crate::upstream::{UpstreamError, UpstreamPool};

/// The gateway: the current route table and the upstream connection pool.
/// Cheap to clone; clones share both.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    table: ArcSwap<RouteTable>,
    upstreams: UpstreamPool,
    metrics: GatewayMetrics,
}

impl Gateway {
    /// A gateway serving `table`, with a pool of keep-alive upstream connections.
    pub fn new(table: RouteTable, metrics: GatewayMetrics) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                upstreams: UpstreamPool::default(),
                metrics,
            }),
        }
    }

    /// The metric families route tables register into.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// The route table new requests use.
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
        let trace = TraceContext::from_headers(request.headers());
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let mut outcome = Outcome {
            started,
            method: parts.method.clone(),
            path: &path,
            route: "unmatched",
            service: "none",
            instance: None,
            request_id: &request_id,
            trace: &trace,
        };

        // Phase 2: route.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let Some((route, matched)) = table.find(&parts.method, host, &path, &parts.headers) else {
            let detail = format!(
                "no route matches {} {path}; `GET /v1/routes` on the admin API lists the routes",
                parts.method
            );
            return outcome.finish(
                Problem::NoRoute.respond(detail, &path, &request_id),
                &table.unrouted,
            );
        };
        let service = &route.service;
        outcome.route = &route.label;
        outcome.service = service.name();

        // Counted before an instance is picked so a reload cannot stop the
        // service between the pick and the send.
        let in_flight = service.track_request();

        // Phase 3: pick an instance.
        let Some(instance) = service.pick() else {
            let detail = format!(
                "service `{}` has no healthy instance right now; try again shortly",
                service.name()
            );
            return outcome.finish(
                Problem::NoHealthyInstance.respond(detail, &path, &request_id),
                &route.metrics,
            );
        };
        outcome.instance = Some(instance.index);

        // Phase 4: forward.
        let Some(uri) = route.upstream_uri(&parts.uri, &matched) else {
            // Only a rewrite can produce this, from captured segments.
            let detail = "the rewritten upstream path is not a valid URI".to_string();
            return outcome.finish(
                Problem::NoRoute.respond(detail, &path, &request_id),
                &route.metrics,
            );
        };
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // Host names the instance, as nginx does by default; the original is
        // kept in X-Forwarded-Host.
        parts
            .headers
            .insert(header::HOST, instance.host_header.clone());
        add_forwarded(&mut parts.headers, client, original_host.as_ref());
        parts.headers.insert(REQUEST_ID, request_id.clone());
        parts.headers.insert(TRACEPARENT, trace.traceparent());

        let sent = tokio::time::timeout(
            route.timeout,
            self.inner
                .upstreams
                .send(&instance.authority, Request::from_parts(parts, body)),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = GatewayBody::Upstream {
                    body,
                    guard: Some(in_flight),
                };
                Response::from_parts(parts, body)
            }
            Ok(Err(error)) => {
                tracing::debug!(target: "gantry::proxy", service = service.name(), instance = instance.index, ?error, "upstream request failed");
                let (problem, detail) = if let UpstreamError::Connect(_) = error {
                    let detail = format!(
                        "could not connect to `{}` instance {} at {}",
                        service.name(),
                        instance.index,
                        instance.authority
                    );
                    (Problem::UpstreamRefused, detail)
                } else {
                    let detail = format!(
                        "`{}` instance {} closed the connection before answering",
                        service.name(),
                        instance.index
                    );
                    (Problem::UpstreamReset, detail)
                };
                problem.respond(detail, &path, &request_id)
            }
            Err(_elapsed) => {
                let detail = format!(
                    "`{}` did not start answering within the route's timeout of {}",
                    service.name(),
                    humantime::format_duration(route.timeout)
                );
                Problem::UpstreamTimeout.respond(detail, &path, &request_id)
            }
        };
        outcome.finish(response, &route.metrics)
    }
}

/// What the access log and metrics record about one request.
struct Outcome<'a> {
    started: Instant,
    method: Method,
    path: &'a str,
    route: &'a str,
    service: &'a str,
    instance: Option<u32>,
    request_id: &'a HeaderValue,
    trace: &'a TraceContext,
}

impl Outcome<'_> {
    /// Phase 5: record the request, then hand the response back.
    fn finish(
        self,
        mut response: Response<GatewayBody>,
        metrics: &RouteMetrics,
    ) -> Response<GatewayBody> {
        let elapsed = self.started.elapsed();
        let status = response.status().as_u16();
        metrics.record(status, elapsed.as_secs_f64());
        response
            .headers_mut()
            .insert(REQUEST_ID, self.request_id.clone());
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
