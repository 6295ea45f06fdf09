//! Phase 4: sending a request upstream within its deadline, retrying failed
//! attempts when the route's policy, the method and the service's retry budget
//! allow it.
//!
//! What is retried:
//! - a connection that could not be made, on another pick of instance, for any
//!   method: nothing was sent;
//! - a response whose status is in the route's `retry.on`, and an attempt that
//!   ran past `attempt_timeout` (when 504 is in `retry.on`), for idempotent
//!   requests whose body was small enough to keep.
//!
//! A connection that fails after the request went out is never retried: the
//! service may have acted on it.

use std::time::Instant;

use bytes::Bytes;
use gantry_manifest::HashKey;
use gantry_services::InstanceLoad;
use http::header::{self, HeaderName, HeaderValue};
use http::{request, HeaderMap, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;

use crate::identity::{TraceContext, TRACEPARENT};
use crate::problem::Problem;
use crate::proxy::{Attempt, RequestObserver};
use crate::resilience::retry::backoff;
use crate::router::{CompiledFallback, CompiledRoute};
use crate::split::Backend;
use crate::upstream::{Replay, RequestBody, UpstreamBody, UpstreamError, UpstreamPool};
use gantry_services::resilience::Admission;

/// Set on a response that a fallback produced; its value is the reason.
pub(crate) const FALLBACK: HeaderName = HeaderName::from_static("x-gantry-fallback");
/// Milliseconds left of the request's deadline, sent upstream so a service can
/// give up early.
pub(crate) const DEADLINE: HeaderName = HeaderName::from_static("x-gantry-deadline-ms");

/// How forwarding ended.
pub(crate) enum Forwarded {
    /// The response, the instance that gave it, and that instance's load
    /// count (held until the body is sent).
    Response(Response<UpstreamBody>, u32, InstanceLoad),
    Failed {
        problem: Problem,
        detail: String,
        instance: Option<u32>,
        /// The request, when it was never sent (for a fallback service).
        request: Option<Request<RequestBody>>,
    },
}

/// One request's way upstream.
pub(crate) struct Forward<'a> {
    pub(crate) upstreams: &'a UpstreamPool,
    pub(crate) route: &'a CompiledRoute,
    pub(crate) backend: &'a Backend,
    pub(crate) admission: Admission,
    pub(crate) idempotent: bool,
    /// A gRPC call: the time left also goes upstream as `grpc-timeout`, and
    /// gRPC statuses in `retry.on` are retried.
    pub(crate) grpc: bool,
    pub(crate) deadline: Instant,
    /// Each attempt is a span under this one.
    pub(crate) trace: &'a TraceContext,
    pub(crate) observer: Option<&'a dyn RequestObserver>,
    /// Set when an attempt's span is kept.
    pub(crate) attempt_kept: &'a std::sync::atomic::AtomicBool,
}

/// What a request is rebuilt from for another attempt.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Replay,
}

impl Template {
    /// The request again, if its body can be sent again: a recorded body
    /// must have ended within its limit.
    fn build(&self) -> Option<Request<RequestBody>> {
        let mut request = Request::new(self.body.body()?);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        Some(request)
    }

    fn can_build(&self) -> bool {
        self.body.ready()
    }
}

impl Forward<'_> {
    pub(crate) async fn run(self, parts: request::Parts, body: RequestBody) -> Forwarded {
        let route = self.route;
        let service = &self.backend.service;
        let policy = &route.retry;
        self.backend.service.budget().deposit();
        // Only requests that may be resent after a response keep a template.
        // Only requests that may be sent again (a retry after a response or a
        // timeout, or to a fallback service) keep a template.
        let may_resend = (policy.attempts > 1 && !policy.on.is_empty())
            || matches!(route.fallback, Some(CompiledFallback::Service(_)));
        let template = match body.replay_later() {
            Some(replay) if self.idempotent && may_resend => Some(Template {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: replay,
            }),
            _ => None,
        };
        let key = service
            .config()
            .hash_on
            .as_ref()
            .and_then(|on| affinity_key(on, &parts.headers))
            .map(str::to_owned);
        let mut pending = Some(Request::from_parts(parts, body));
        let mut admission = Some(self.admission);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= policy.attempts;
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let mut request = match (pending.take(), &template) {
                (Some(request), _) => request,
                (None, Some(template)) => match template.build() {
                    Some(request) => request,
                    None => unreachable_retry(),
                },
                (None, None) => unreachable_retry(),
            };
            if remaining.is_zero() {
                return self.timed_out(None, Some(request));
            }
            let Some(instance) = service.pick(key.as_deref()).cloned() else {
                let detail = format!(
                    "service `{}` has no healthy instance right now; try again shortly",
                    service.name()
                );
                return Forwarded::Failed {
                    problem: Problem::NoHealthyInstance,
                    detail,
                    instance: None,
                    request: Some(request),
                };
            };
            let hop = self.trace.child();
            let method = request.method().clone();
            let headers = request.headers_mut();
            headers.insert(header::HOST, instance.host_header.clone());
            headers.insert(DEADLINE, HeaderValue::from(remaining.as_millis() as u64));
            if self.grpc {
                headers.insert(
                    crate::grpc::GRPC_TIMEOUT,
                    crate::grpc::encode_timeout(remaining),
                );
            }
            headers.insert(TRACEPARENT, crate::identity::traceparent(&hop));
            let attempt_started = (std::time::SystemTime::now(), Instant::now());
            let limit = route
                .attempt_timeout
                .map_or(remaining, |a| a.min(remaining));
            let admitted = admission.take().unwrap_or(Admission::Normal);
            let load = instance.begin();
            let sent = tokio::time::timeout(limit, self.upstreams.send(&instance, request)).await;
            // A gRPC server's failure (UNAVAILABLE, INTERNAL...) comes with
            // HTTP 200: it counts against the instance and the breaker too.
            let succeeded = matches!(&sent, Ok(Ok(response))
                if !(response.status().is_server_error()
                    || self.grpc && crate::grpc::server_failed(response.headers())));
            service.record(&instance, succeeded);
            if let Some(observer) = self.observer {
                let (status, error) = match &sent {
                    Ok(Ok(response)) => (Some(response.status().as_u16()), None),
                    Ok(Err(UpstreamError::Connect(..))) => (None, Some("connect")),
                    Ok(Err(UpstreamError::Http(_))) => (None, Some("reset")),
                    Err(_) => (None, Some("timeout")),
                };
                let kept = observer.attempt(&Attempt {
                    service: service.name(),
                    instance: instance.index,
                    authority: instance.authority.as_str(),
                    method: method.as_str(),
                    number: attempt,
                    started: attempt_started.0,
                    duration: attempt_started.1.elapsed(),
                    status,
                    error,
                    trace_id: hop.trace_id,
                    span_id: hop.span_id,
                    parent_id: self.trace.span_id,
                    sampled: hop.sampled(),
                });
                if kept {
                    self.attempt_kept
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            match sent {
                Ok(Ok(response)) => {
                    let status = response.status();
                    self.backend.service.breaker().record(admitted, succeeded);
                    let grpc_retry = self.grpc
                        && crate::grpc::status_in(response.headers())
                            .is_some_and(|code| policy.retries_grpc(code));
                    let retryable = template.as_ref().is_some_and(Template::can_build)
                        && (policy.retries_status(status.as_u16()) || grpc_retry);
                    if retryable && !last && self.back_off(attempt).await {
                        continue;
                    }
                    return Forwarded::Response(response, instance.index, load);
                }
                Ok(Err(UpstreamError::Connect(error, unsent))) => {
                    self.backend.service.breaker().record(admitted, false);
                    tracing::debug!(target: "gantry::proxy", service = service.name(), instance = instance.index, %error, "connect failed");
                    // No budget is spent: a connection that never opened put no
                    // load on the service.
                    if !last && self.wait_backoff(attempt).await {
                        pending = Some(*unsent);
                        continue;
                    }
                    let detail = format!(
                        "could not connect to `{}` instance {} at {}: {error}",
                        service.name(),
                        instance.index,
                        instance.authority
                    );
                    return Forwarded::Failed {
                        problem: Problem::UpstreamRefused,
                        detail,
                        instance: Some(instance.index),
                        request: Some(*unsent),
                    };
                }
                Ok(Err(UpstreamError::Http(error))) => {
                    self.backend.service.breaker().record(admitted, false);
                    tracing::debug!(target: "gantry::proxy", service = service.name(), instance = instance.index, %error, "upstream exchange failed");
                    let detail = format!(
                        "`{}` instance {} closed the connection before answering",
                        service.name(),
                        instance.index
                    );
                    return Forwarded::Failed {
                        problem: Problem::UpstreamReset,
                        detail,
                        instance: Some(instance.index),
                        request: None,
                    };
                }
                Err(_elapsed) => {
                    self.backend.service.breaker().record(admitted, false);
                    let attempt_timed_out = limit < remaining;
                    let retryable = attempt_timed_out
                        && template.as_ref().is_some_and(Template::can_build)
                        && policy.retries_status(504);
                    if retryable && !last && self.back_off(attempt).await {
                        continue;
                    }
                    return self.timed_out(
                        Some(instance.index),
                        template.as_ref().and_then(Template::build),
                    );
                }
            }
        }
    }

    /// Takes a retry from the budget and waits the backoff; `false` when the
    /// budget is spent or the deadline would pass first.
    async fn back_off(&self, attempt: u32) -> bool {
        let route = self.route;
        let wait = backoff(attempt - 1, route.retry.backoff, route.retry.max_backoff);
        if Instant::now() + wait >= self.deadline || !self.backend.service.budget().withdraw() {
            return false;
        }
        self.sleep(wait).await
    }

    /// Waits the backoff without touching the budget.
    async fn wait_backoff(&self, attempt: u32) -> bool {
        let route = self.route;
        let wait = backoff(attempt - 1, route.retry.backoff, route.retry.max_backoff);
        if Instant::now() + wait >= self.deadline {
            return false;
        }
        self.sleep(wait).await
    }

    async fn sleep(&self, wait: std::time::Duration) -> bool {
        self.backend.metrics.retries.inc();
        tokio::time::sleep(wait).await;
        true
    }

    fn timed_out(&self, instance: Option<u32>, request: Option<Request<RequestBody>>) -> Forwarded {
        let route = self.route;
        let detail = format!(
            "`{}` did not start answering within {}",
            self.backend.service.name(),
            match route.attempt_timeout {
                Some(attempt) if attempt < route.timeout => format!(
                    "the route's attempt timeout of {} (deadline {})",
                    humantime::format_duration(attempt),
                    humantime::format_duration(route.timeout)
                ),
                _ => format!(
                    "the route's timeout of {}",
                    humantime::format_duration(route.timeout)
                ),
            }
        );
        Forwarded::Failed {
            problem: Problem::UpstreamTimeout,
            detail,
            instance,
            request,
        }
    }
}

/// The value of a request's affinity key (`hash_on`), if it has one.
pub(crate) fn affinity_key<'h>(on: &HashKey, headers: &'h HeaderMap) -> Option<&'h str> {
    match on {
        HashKey::Header(name) => headers.get(name.as_str()).and_then(|v| v.to_str().ok()),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value),
    }
}

/// A retry happens only with a template or a returned (unsent) request.
fn unreachable_retry() -> ! {
    unreachable!("a retry is only started when the request can be sent again")
}

/// Enforces a route's `max_body`: a declared length over it, or a streamed
/// body that grows past it, is refused (`Err(())`: answer 413). A streamed
/// body of unknown length is read ahead to check it.
pub(crate) async fn limit_body(
    body: RequestBody,
    limit: u64,
) -> Result<RequestBody, Option<hyper::Error>> {
    let body = match body {
        RequestBody::Streaming(body) => body,
        RequestBody::Buffered(Some(bytes)) if bytes.len() as u64 > limit => return Err(None),
        buffered => return Ok(buffered),
    };
    if let Some(length) = body.size_hint().exact() {
        return if length > limit {
            Err(None)
        } else {
            Ok(RequestBody::Streaming(body))
        };
    }
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(RequestBody::Buffered(Some(collected.to_bytes()))),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(error) => Err(Some(*error)),
            // The only other error is the length limit.
            Err(_) => Err(None),
        },
    }
}

/// Reads a whole body of at most `limit` bytes into memory.
pub(crate) async fn read_body(body: RequestBody, limit: u64) -> Result<bytes::Bytes, String> {
    match body {
        RequestBody::Buffered(bytes) => Ok(bytes.unwrap_or_default()),
        RequestBody::Streaming(body) | RequestBody::Recorded { body, .. } => {
            match http_body_util::Limited::new(body, limit as usize)
                .collect()
                .await
            {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(error) => Err(match error.downcast::<hyper::Error>() {
                    Ok(error) => format!("reading the request body failed: {error}"),
                    Err(_) => format!("the body is larger than {limit} bytes"),
                }),
            }
        }
    }
}

/// Reads a body of known length up to `limit` bytes ahead, so the request can
/// be sent more than once; anything else streams.
pub(crate) async fn buffer_small_body(
    body: RequestBody,
    limit: u64,
) -> Result<RequestBody, hyper::Error> {
    let body = match body {
        RequestBody::Streaming(body) => body,
        buffered => return Ok(buffered),
    };
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(None));
    }
    match body.size_hint().exact() {
        Some(length) if length <= limit => {
            let bytes: Bytes = body.collect().await?.to_bytes();
            Ok(RequestBody::Buffered(Some(bytes)))
        }
        Some(_) => Ok(RequestBody::Streaming(body)),
        // Of unknown length (chunked, or HTTP/2 without `content-length`, as
        // gRPC sends): not waited for, which could stall a client that sends
        // its next message only after an answer, but recorded on its way.
        None if limit > 0 => Ok(RequestBody::recorded(body, limit)),
        None => Ok(RequestBody::Streaming(body)),
    }
}
