//! Shadow traffic with diffs: a sample of a route's requests is mirrored to a
//! second service; the client only gets the primary's answer; the two answers
//! are compared (status, chosen headers, and the body, as JSON without the
//! ignored fields when both are JSON) and the outcome goes into the route's
//! report. This is what a team moving a capability out of a monolith needs to
//! know before it shifts traffic.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use gantry_manifest::ShadowPolicy;
use gantry_services::ServiceHandle;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::upstream::{RequestBody, UpstreamPool};

/// Marks a mirrored request, so the shadow service can tell.
const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-gantry-shadow");
/// Differing pairs kept per route.
const RECENT: usize = 20;
/// Body text kept per side of a differing pair.
const EXCERPT: usize = 2048;

/// A route's shadow: where copies go and the report of how they compared.
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) policy: ShadowPolicy,
    pub(crate) service: Arc<ServiceHandle>,
    pub(crate) report: Arc<ShadowReport>,
}

/// What was compared so far. Shared across reloads while the route mirrors to
/// the same service.
#[derive(Debug, Default)]
pub struct ShadowReport {
    state: Mutex<ReportState>,
}

#[derive(Debug, Default)]
struct ReportState {
    compared: u64,
    matched: u64,
    mismatched: u64,
    errors: u64,
    skipped: u64,
    recent: VecDeque<Difference>,
}

/// A pair of responses that differed.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Unix time in milliseconds.
    pub at: u64,
    pub method: String,
    pub path: String,
    /// What differed first, e.g. `status 200 != 404` or `body at /items/0/price`.
    pub reason: String,
    pub primary: Side,
    pub shadow: Side,
}

/// One side of a compared pair.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// The start of the body.
    pub body: String,
}

/// The report as the admin API and `gantry shadow report` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSummary {
    pub route: String,
    pub to: String,
    pub percent: f64,
    pub compared: u64,
    pub matched: u64,
    pub mismatched: u64,
    /// Mirrored requests the shadow service did not answer (refused, reset, timed out).
    pub errors: u64,
    /// Requests not compared: bodies too large, or the client left early.
    pub skipped: u64,
    /// matched / compared, when anything was compared.
    pub match_rate: Option<f64>,
    /// The latest differing pairs, newest first.
    pub recent_differences: Vec<Difference>,
}

/// A response as captured for comparison.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The primary side of a mirrored request: hand it the primary response's
/// head, then let [`Tap`] collect its body as it streams to the client.
pub(crate) struct PrimaryTap {
    sender: oneshot::Sender<Captured>,
    limit: usize,
}

impl Shadow {
    /// Whether this request is mirrored (method and sample).
    pub(crate) fn applies(&self, idempotent: bool) -> bool {
        (idempotent || self.policy.unsafe_methods) && fastrand::f64() * 100.0 < self.policy.percent
    }

    /// Counts a request that should have been mirrored but could not be.
    pub(crate) fn skip(&self) {
        self.report.lock().skipped += 1;
    }

    /// Sends the copy to the shadow service in the background and returns the
    /// tap for the primary response.
    pub(crate) fn mirror(
        &self,
        upstreams: UpstreamPool,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: RequestBody,
        timeout: Duration,
    ) -> PrimaryTap {
        let (sender, primary) = oneshot::channel();
        let service = self.service.clone();
        let report = self.report.clone();
        let policy = self.policy.clone();
        let limit = policy.max_body as usize;
        let (method_text, path) = (method.to_string(), uri.path().to_string());
        tokio::spawn(async move {
            let shadow = async {
                let instance = service.pick(None)?.clone();
                headers.insert(header::HOST, instance.host_header.clone());
                headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
                let mut request = Request::new(body);
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                let response = upstreams.send(&instance, request).await.ok()?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, limit)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                Some(Captured {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            };
            let shadow = tokio::time::timeout(timeout, shadow).await.ok().flatten();
            let Ok(primary) = primary.await else {
                report.lock().skipped += 1;
                return;
            };
            let Some(shadow) = shadow else {
                report.lock().errors += 1;
                return;
            };
            match differ(&policy, &primary, &shadow) {
                None => {
                    let mut state = report.lock();
                    state.compared += 1;
                    state.matched += 1;
                }
                Some(reason) => {
                    tracing::info!(target: "gantry::shadow", to = %policy.to, path = %path, %reason, "shadow response differs");
                    let difference = Difference {
                        at: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        method: method_text,
                        path,
                        reason,
                        primary: side(&policy, &primary),
                        shadow: side(&policy, &shadow),
                    };
                    let mut state = report.lock();
                    state.compared += 1;
                    state.mismatched += 1;
                    state.recent.push_front(difference);
                    state.recent.truncate(RECENT);
                }
            }
        });
        PrimaryTap { sender, limit }
    }
}

impl PrimaryTap {
    /// Starts collecting the primary response for comparison.
    pub(crate) fn tap(self, status: StatusCode, headers: &HeaderMap) -> Box<Tap> {
        let mut tap = Tap::new(status, headers);
        tap.listeners.push((self.sender, self.limit));
        Box::new(tap)
    }
}

/// Copies a response body as it streams to the client; when it ends, the
/// copy goes to each listener (the shadow comparison, the idempotency store).
/// A listener whose size limit the body passes, or a client that leaves
/// early, gets nothing (its receiver sees the sender dropped).
pub struct Tap {
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    listeners: Vec<(oneshot::Sender<Captured>, usize)>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Tap {
    pub(crate) fn new(status: StatusCode, headers: &HeaderMap) -> Tap {
        Tap {
            status,
            headers: headers.clone(),
            body: BytesMut::new(),
            listeners: Vec::new(),
        }
    }

    /// Adds a listener that wants bodies up to `limit` bytes.
    pub(crate) fn listen(&mut self, limit: usize) -> oneshot::Receiver<Captured> {
        let (sender, receiver) = oneshot::channel();
        self.listeners.push((sender, limit));
        receiver
    }

    /// Sees one polled frame of the body (`None`: the body ended).
    pub(crate) fn observe(&mut self, frame: Option<&Frame<Bytes>>) {
        match frame {
            Some(frame) => {
                if let Some(data) = frame.data_ref() {
                    let length = self.body.len() + data.len();
                    self.listeners.retain(|(_, limit)| length <= *limit);
                    if !self.listeners.is_empty() {
                        self.body.extend_from_slice(data);
                    }
                }
            }
            None => {
                let captured = Captured {
                    status: self.status,
                    headers: std::mem::take(&mut self.headers),
                    body: std::mem::take(&mut self.body).freeze(),
                };
                for (sender, _) in self.listeners.drain(..) {
                    let _ = sender.send(captured.clone());
                }
            }
        }
    }
}

/// Polls `body`, showing each frame to `tap`.
pub(crate) fn poll_tapped<B>(
    mut body: Pin<&mut B>,
    tap: &mut Option<Box<Tap>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes>,
{
    let polled = body.as_mut().poll_frame(cx);
    if let Some(tap) = tap {
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                tap.observe(Some(frame));
                // hyper stops polling a body that says it has ended.
                if body.is_end_stream() {
                    tap.observe(None);
                }
            }
            Poll::Ready(None) => tap.observe(None),
            _ => {}
        }
    }
    polled
}

impl Shadow {
    pub(crate) fn summary(&self, route: &str) -> ShadowSummary {
        let state = self.report.lock();
        ShadowSummary {
            route: route.to_string(),
            to: self.policy.to.clone(),
            percent: self.policy.percent,
            compared: state.compared,
            matched: state.matched,
            mismatched: state.mismatched,
            errors: state.errors,
            skipped: state.skipped,
            match_rate: (state.compared > 0).then(|| state.matched as f64 / state.compared as f64),
            recent_differences: state.recent.iter().cloned().collect(),
        }
    }
}

impl ShadowReport {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first difference between two responses, if any.
fn differ(policy: &ShadowPolicy, primary: &Captured, shadow: &Captured) -> Option<String> {
    if primary.status != shadow.status {
        return Some(format!(
            "status {} != {}",
            primary.status.as_u16(),
            shadow.status.as_u16()
        ));
    }
    for name in &policy.compare_headers {
        let (a, b) = (
            primary.headers.get(name.as_str()),
            shadow.headers.get(name.as_str()),
        );
        if a != b {
            let show = |v: Option<&HeaderValue>| {
                v.and_then(|v| v.to_str().ok())
                    .unwrap_or("(absent)")
                    .to_string()
            };
            return Some(format!("header {name}: {} != {}", show(a), show(b)));
        }
    }
    match (
        serde_json::from_slice::<Value>(&primary.body),
        serde_json::from_slice::<Value>(&shadow.body),
    ) {
        (Ok(mut a), Ok(mut b)) => {
            for pointer in &policy.ignore_fields {
                remove_pointer(&mut a, pointer);
                remove_pointer(&mut b, pointer);
            }
            first_json_difference(&a, &b, String::new())
                .map(|at| format!("body at {}", if at.is_empty() { "/" } else { &at }))
        }
        _ if primary.body == shadow.body => None,
        _ => Some("body bytes differ".into()),
    }
}

/// Removes the value a JSON pointer (RFC 6901) names, if it is there.
fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

/// The JSON pointer of the first place two documents differ.
fn first_json_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let path = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => first_json_difference(p, q, path),
                    _ => Some(path),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(at);
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| first_json_difference(p, q, format!("{at}/{i}")))
        }
        _ if a == b => None,
        _ => Some(at),
    }
}

fn side(policy: &ShadowPolicy, captured: &Captured) -> Side {
    let mut body = String::from_utf8_lossy(&captured.body).into_owned();
    if body.len() > EXCERPT {
        let mut cut = EXCERPT;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    Side {
        status: captured.status.as_u16(),
        headers: policy
            .compare_headers
            .iter()
            .filter_map(|name| {
                let value = captured.headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), value.to_string()))
            })
            .collect(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignored_fields_are_left_out_and_the_first_difference_is_named() {
        let mut a = json!({"items": [{"id": 1, "price": 10}], "generated_at": 1});
        let mut b = json!({"items": [{"id": 1, "price": 12}], "generated_at": 2});
        remove_pointer(&mut a, "/generated_at");
        remove_pointer(&mut b, "/generated_at");
        assert_eq!(
            first_json_difference(&a, &b, String::new()),
            Some("/items/0/price".into())
        );
        remove_pointer(&mut a, "/items/0/price");
        remove_pointer(&mut b, "/items/0/price");
        assert_eq!(first_json_difference(&a, &b, String::new()), None);
    }
}
