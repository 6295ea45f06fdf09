//! WebSockets through the gateway: the HTTP/1.1 Upgrade handshake goes through
//! the route's layers, admission and attempts like any request (so auth, rate
//! limits, breakers and retries apply at the handshake); when the upstream
//! answers `101 Switching Protocols`, both connections are handed to a relay
//! task that copies bytes both ways until one side closes, the socket idles
//! past `idle_timeout`, lives past `max_duration`, or Gantry shuts down.
//!
//! The relay copies bytes, not messages: frames are neither unmasked nor
//! re-framed. It only follows where each frame ends (the 2–14 byte header
//! says how long the payload is), so that when Gantry ends a socket it can
//! send each side a close frame (1001, "going away") between frames rather
//! than in the middle of one. A WebSocket library would parse and re-mask
//! every message for that; the header arithmetic is all it takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_manifest::WebSocketPolicy;
use http::header::{self, HeaderValue};
use http::{request, HeaderMap, Method, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::RequestObserver;

/// Whether a request asks to become a WebSocket: an HTTP/1.1 `GET` with
/// `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 §4.1).
pub(crate) fn is_upgrade(parts: &request::Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, header::UPGRADE, "websocket")
        && has_token(&parts.headers, header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Puts back the two hop-by-hop headers a handshake needs on the next hop
/// (they were removed with the other hop-by-hop headers).
pub(crate) fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Why a socket ended: the `reason` label of
/// `gantry_websocket_connections_closed_total` and the span's attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed its side first.
    Client,
    /// The upstream closed its side first.
    Upstream,
    /// Nothing passed either way for `idle_timeout`.
    Idle,
    /// The socket reached `max_duration`.
    MaxDuration,
    /// Gantry shut down and the drain time was over.
    Shutdown,
    /// A reload replaced or removed the socket's service, and the drain
    /// time was over.
    Reload,
    /// A connection failed (reset, or an upgrade that did not complete).
    Error,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Client => "client_closed",
            Closed::Upstream => "upstream_closed",
            Closed::Idle => "idle_timeout",
            Closed::MaxDuration => "max_duration",
            Closed::Shutdown => "shutdown",
            Closed::Reload => "reload",
            Closed::Error => "error",
        }
    }
}

/// A socket's end, as observers see it (one span per socket).
#[derive(Debug)]
pub struct SocketClosed<'a> {
    pub route: &'a str,
    pub service: &'a str,
    /// The handshake's trace and span: the socket's span is its child.
    pub trace_id: u128,
    pub parent_id: u64,
    pub span_id: u64,
    pub sampled: bool,
    pub started: std::time::SystemTime,
    pub duration: Duration,
    /// `client_closed`, `upstream_closed`, `idle_timeout`, `max_duration`,
    /// `shutdown`, `reload` or `error`.
    pub reason: &'static str,
    /// Bytes and frames from the client to the upstream, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    route: String,
    reason: &'static str,
}

/// The gateway's WebSocket metric families.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketMetrics {
    open: Family<RouteLabel, Gauge>,
    opened: Family<RouteLabel, Counter>,
    closed: Family<ClosedLabels, Counter>,
}

impl SocketMetrics {
    pub(crate) fn register(metrics: &gantry_telemetry::Metrics) -> SocketMetrics {
        let families = SocketMetrics::default();
        metrics.register(|registry| {
            registry.register(
                "websocket_connections_open",
                "WebSockets open through the gateway, by route",
                families.open.clone(),
            );
            registry.register(
                "websocket_connections_opened",
                "WebSockets opened through the gateway, by route",
                families.opened.clone(),
            );
            registry.register(
                "websocket_connections_closed",
                "WebSockets closed, by route and reason (client_closed, upstream_closed, idle_timeout, max_duration, shutdown, reload, error)",
                families.closed.clone(),
            );
        });
        families
    }
}

/// The gateway's open sockets: each a task of its own, outliving the
/// request (and the route table) that opened it, so a reload does not cut it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sockets {
    tasks: TaskTracker,
    /// Cancelled when Gantry ends the sockets still open at shutdown.
    closing: CancellationToken,
    metrics: SocketMetrics,
    /// Each open socket's service (by the address of its handle) and the
    /// token that ends it when a reload retires that service.
    open: Arc<Mutex<HashMap<u64, (usize, CancellationToken)>>>,
    next_id: Arc<AtomicU64>,
}

/// What a socket's relay needs to know about where it came from.
pub(crate) struct Opened {
    pub(crate) route: Arc<str>,
    pub(crate) service: String,
    /// `Arc::as_ptr` of the service's handle: a reload that replaces the
    /// service retires its sockets.
    pub(crate) handle: usize,
    /// The handshake's trace context: the socket's span is a child of it.
    pub(crate) trace: crate::identity::TraceContext,
    pub(crate) policy: WebSocketPolicy,
    pub(crate) observer: Option<Arc<dyn RequestObserver>>,
}

impl Sockets {
    pub(crate) fn new(metrics: SocketMetrics) -> Sockets {
        Sockets {
            metrics,
            ..Sockets::default()
        }
    }

    /// Relays between the client and the upstream once both upgrades
    /// complete (the client's after it has the 101 answer).
    pub(crate) fn open(&self, client: OnUpgrade, upstream: OnUpgrade, opened: Opened) {
        let closing = self.closing.clone();
        let metrics = self.metrics.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let retire = CancellationToken::new();
        self.registry().insert(id, (opened.handle, retire.clone()));
        let registry = self.open.clone();
        self.tasks.spawn(async move {
            // Out of the registry however the task ends.
            let _registered = Deregister { registry, id };
            let route = RouteLabel {
                route: opened.route.to_string(),
            };
            let started = (std::time::SystemTime::now(), Instant::now());
            let (client, upstream) = match tokio::join!(client, upstream) {
                (Ok(client), Ok(upstream)) => (client, upstream),
                (client, upstream) => {
                    let error = client.err().or(upstream.err());
                    tracing::debug!(target: "gantry::websocket", route = %opened.route, ?error, "the upgrade did not complete");
                    metrics
                        .closed
                        .get_or_create(&ClosedLabels {
                            route: route.route,
                            reason: Closed::Error.label(),
                        })
                        .inc();
                    return;
                }
            };
            metrics.opened.get_or_create(&route).inc();
            let open = metrics.open.get_or_create(&route).clone();
            open.inc();
            let outcome = relay(client, upstream, &opened.policy, &closing, &retire).await;
            open.dec();
            metrics
                .closed
                .get_or_create(&ClosedLabels {
                    route: route.route,
                    reason: outcome.closed.label(),
                })
                .inc();
            tracing::debug!(target: "gantry::websocket", route = %opened.route, reason = outcome.closed.label(), "socket closed");
            if let Some(observer) = &opened.observer {
                let span = opened.trace.child();
                observer.socket(&SocketClosed {
                    route: &opened.route,
                    service: &opened.service,
                    trace_id: span.trace_id,
                    parent_id: opened.trace.span_id,
                    span_id: span.span_id,
                    sampled: span.sampled(),
                    started: started.0,
                    duration: started.1.elapsed(),
                    reason: outcome.closed.label(),
                    bytes_in: outcome.inbound.bytes,
                    bytes_out: outcome.outbound.bytes,
                    frames_in: outcome.inbound.frames,
                    frames_out: outcome.outbound.frames,
                });
            }
        });
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (usize, CancellationToken)>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a reload: sockets to a service it replaced or removed (by the
    /// address of the old handle) get until `drain` to end, then a 1001.
    pub(crate) fn retire(&self, handles: &[usize], drain: Duration) {
        let retiring: Vec<CancellationToken> = self
            .registry()
            .values()
            .filter(|(handle, _)| handles.contains(handle))
            .map(|(_, token)| token.clone())
            .collect();
        if retiring.is_empty() {
            return;
        }
        tracing::info!(target: "gantry::websocket", sockets = retiring.len(), ?drain, "a reload replaced the service of open WebSockets; they close after the drain time");
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            for token in retiring {
                token.cancel();
            }
        });
    }

    /// At shutdown: open sockets get until `drain` to end on their own, then
    /// each side gets a close frame (1001, going away) and the socket ends.
    pub(crate) async fn close_all(&self, drain: Duration) {
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait()).await.is_ok() {
            return;
        }
        tracing::info!(target: "gantry::websocket", open = self.tasks.len(), "closing the WebSockets still open (1001)");
        self.closing.cancel();
        // Writing a close frame takes a moment; a peer that does not read
        // does not hold the shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }
}

/// What passed one way.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    bytes: u64,
    frames: u64,
}

struct Outcome {
    closed: Closed,
    /// Client to upstream.
    inbound: Flow,
    /// Upstream to client.
    outbound: Flow,
}

/// Which way a pump copies: to the upstream, frames must be masked (a
/// client's frames), to the client they are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Upstream,
    Client,
}

/// Takes a socket out of the registry when its task ends.
struct Deregister {
    registry: Arc<Mutex<HashMap<u64, (usize, CancellationToken)>>>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    policy: &WebSocketPolicy,
    closing: &CancellationToken,
    retire: &CancellationToken,
) -> Outcome {
    let started = Instant::now();
    // Milliseconds since `started` of the last byte either way.
    let activity = AtomicU64::new(0);
    let stop = CancellationToken::new();
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let inbound = pump(
        client_read,
        upstream_write,
        Toward::Upstream,
        &stop,
        &activity,
        started,
    );
    let outbound = pump(
        upstream_read,
        client_write,
        Toward::Client,
        &stop,
        &activity,
        started,
    );
    let watchdog = async {
        let max = policy.max_duration.map(|max| started + max);
        loop {
            let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
            let idle_at = last + policy.idle_timeout;
            let wake = max.map_or(idle_at, |max| max.min(idle_at));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = closing.cancelled() => return Closed::Shutdown,
                _ = retire.cancelled() => return Closed::Reload,
            }
            let now = Instant::now();
            if max.is_some_and(|max| now >= max) {
                return Closed::MaxDuration;
            }
            let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
            if now >= last + policy.idle_timeout {
                return Closed::Idle;
            }
        }
    };
    // Once Gantry ends the socket, a peer that does not read gets this long
    // before its connection is dropped.
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::pin!(inbound, outbound, watchdog, grace);
    // The first side to finish says why the socket ended, unless Gantry ends it.
    let mut first: Option<Closed> = None;
    let (mut inbound_flow, mut outbound_flow) = (None, None);
    while inbound_flow.is_none() || outbound_flow.is_none() {
        tokio::select! {
            flow = &mut inbound, if inbound_flow.is_none() => {
                let (flow, ok) = flow;
                first.get_or_insert(if ok { Closed::Client } else { Closed::Error });
                inbound_flow = Some(flow);
            }
            flow = &mut outbound, if outbound_flow.is_none() => {
                let (flow, ok) = flow;
                first.get_or_insert(if ok { Closed::Upstream } else { Closed::Error });
                outbound_flow = Some(flow);
            }
            reason = &mut watchdog, if !stop.is_cancelled() => {
                first.get_or_insert(reason);
                stop.cancel();
            }
            _ = &mut grace => break,
        }
    }
    Outcome {
        closed: first.unwrap_or(Closed::Error),
        inbound: inbound_flow.unwrap_or_default(),
        outbound: outbound_flow.unwrap_or_default(),
    }
}

/// Copies `from` to `to` until `from` ends (then `to` is shut down) or `stop`
/// fires (then `to` gets a 1001 close frame if the stream is between frames).
/// Returns what passed, and `false` if a read or write failed.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    toward: Toward,
    stop: &CancellationToken,
    activity: &AtomicU64,
    started: Instant,
) -> (Flow, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    let mut flow = Flow::default();
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = stop.cancelled() => {
                if frames.at_boundary() {
                    let _ = to.write_all(&close_frame(toward)).await;
                }
                let _ = to.shutdown().await;
                return (flow, true);
            }
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                return (flow, true);
            }
            Ok(n) => n,
            Err(_) => {
                let _ = to.shutdown().await;
                return (flow, false);
            }
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return (flow, false);
        }
        flow.bytes += n as u64;
        flow.frames += frames.advance(&buffer[..n]);
        activity.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A close frame with status 1001 ("going away"): masked toward the
/// upstream, as a client's frames must be (RFC 6455 §5.3).
fn close_frame(toward: Toward) -> Vec<u8> {
    const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();
    match toward {
        Toward::Client => vec![0x88, 0x02, GOING_AWAY[0], GOING_AWAY[1]],
        Toward::Upstream => {
            let mut key = [0u8; 4];
            // The mask only keeps intermediaries from reading the frame as
            // something else; any unpredictable key will do.
            if getrandom::fill(&mut key).is_err() {
                key = fastrand::u32(..).to_be_bytes();
            }
            vec![
                0x88,
                0x82,
                key[0],
                key[1],
                key[2],
                key[3],
                GOING_AWAY[0] ^ key[0],
                GOING_AWAY[1] ^ key[1],
            ]
        }
    }
}

/// Where a byte stream of WebSocket frames is: between frames, in a frame's
/// header, or in its payload.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Payload bytes still to come of the current frame.
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Follows `bytes`; returns how many frames began in them.
    fn advance(&mut self, mut bytes: &[u8]) -> u64 {
        let mut begun = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            if self.have == 0 {
                begun += 1;
            }
            let want = if self.have < 2 {
                2
            } else {
                header_len(self.header[1])
            };
            let n = (want - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have >= 2 && self.have == header_len(self.header[1]) {
                self.payload_left = payload_len(&self.header[..self.have]);
                self.have = 0;
            }
        }
        begun
    }
}

/// A frame header's length from its second byte: 2, plus the extended
/// payload length (2 or 8 bytes), plus the masking key (4 bytes).
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked), with a payload of `len` bytes.
    fn masked_frame(len: usize) -> Vec<u8> {
        let mut frame = vec![0x82];
        match len {
            0..=125 => frame.push(0x80 | len as u8),
            126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend(std::iter::repeat_n(0xaa, len));
        frame
    }

    #[test]
    fn frame_boundaries_are_followed_whatever_the_reads_cut() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(masked_frame(len));
        }
        // Unmasked frames, as a server sends them.
        stream.extend([0x81, 0x03, b'a', b'b', b'c']);
        for cut in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut begun = 0;
            for chunk in stream.chunks(cut) {
                begun += frames.advance(chunk);
            }
            assert!(frames.at_boundary(), "reads of {cut} bytes");
            assert_eq!(begun, 7, "reads of {cut} bytes");
        }
        let mut frames = Frames::default();
        frames.advance(&masked_frame(300)[..150]);
        assert!(!frames.at_boundary());
        frames.advance(&[0x81]);
        assert!(!frames.at_boundary());
    }

    #[test]
    fn close_frames_say_going_away_and_are_masked_toward_the_upstream() {
        assert_eq!(close_frame(Toward::Client), [0x88, 0x02, 0x03, 0xe9]);
        let masked = close_frame(Toward::Upstream);
        assert_eq!(&masked[..2], &[0x88, 0x82]);
        let code = [masked[6] ^ masked[2], masked[7] ^ masked[3]];
        assert_eq!(u16::from_be_bytes(code), 1001);
        let mut frames = Frames::default();
        assert_eq!(frames.advance(&masked), 1);
        assert!(frames.at_boundary());
    }

    #[test]
    fn only_a_websocket_get_over_http_1_1_is_an_upgrade() {
        let request = |method: Method, version: Version, upgrade: &str, connection: &str| {
            let (mut parts, ()) = http::Request::builder()
                .method(method)
                .version(version)
                .uri("/ws")
                .body(())
                .unwrap()
                .into_parts();
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_str(upgrade).unwrap());
            parts.headers.insert(
                header::CONNECTION,
                HeaderValue::from_str(connection).unwrap(),
            );
            is_upgrade(&parts)
        };
        assert!(request(
            Method::GET,
            Version::HTTP_11,
            "websocket",
            "Upgrade"
        ));
        assert!(request(
            Method::GET,
            Version::HTTP_11,
            "WebSocket",
            "keep-alive, Upgrade"
        ));
        assert!(!request(
            Method::POST,
            Version::HTTP_11,
            "websocket",
            "upgrade"
        ));
        assert!(!request(
            Method::GET,
            Version::HTTP_2,
            "websocket",
            "upgrade"
        ));
        assert!(!request(Method::GET, Version::HTTP_11, "h2c", "upgrade"));
        assert!(!request(
            Method::GET,
            Version::HTTP_11,
            "websocket",
            "keep-alive"
        ));
    }
}
