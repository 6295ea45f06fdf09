//! Reliability policies in the manifest: retries, circuit breakers, fallbacks.
//! Their defaults protect a system whose manifest says nothing about them.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// `retry = { ... }` on a route: how failed attempts are retried.
///
/// Only idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any
/// request with an `Idempotency-Key` header) are retried, and only when the
/// service's retry budget allows. Without a `retry` table a route still retries
/// once when the connection to an instance fails (nothing was sent, so it is
/// always safe).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 disables retries).
    #[serde(default = "defaults::attempts")]
    pub attempts: u32,
    /// What is retried besides connection failures: HTTP statuses (`503`) and,
    /// for gRPC calls, gRPC status names (`"unavailable"`), which match a
    /// `grpc-status` the upstream answers before any message.
    /// Defaults to `[502, 503, 504]` when a `retry` table is written.
    #[serde(default)]
    pub on: Vec<RetryOn>,
    /// Backoff before the first retry; it doubles each time, with full jitter.
    #[serde(default = "defaults::backoff", with = "duration_text")]
    #[schemars(with = "String")]
    pub backoff: Duration,
    /// The longest backoff.
    #[serde(default = "defaults::max_backoff", with = "duration_text")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Request bodies up to this many bytes are kept for a retry; larger ones
    /// (or bodies of unknown length) are streamed and not retried.
    #[serde(default = "defaults::max_body")]
    pub max_body: u64,
}

impl RetryPolicy {
    /// The policy of a route without a `retry` table.
    pub fn connect_failures_only() -> RetryPolicy {
        RetryPolicy {
            on: Vec::new(),
            ..RetryPolicy::written()
        }
    }

    /// The policy of an empty `retry = {}` table.
    pub fn written() -> RetryPolicy {
        RetryPolicy {
            attempts: defaults::attempts(),
            on: vec![
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
            ],
            backoff: defaults::backoff(),
            max_backoff: defaults::max_backoff(),
            max_body: defaults::max_body(),
        }
    }
}

impl RetryPolicy {
    /// Whether an answer with this HTTP status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.contains(&RetryOn::Status(status))
    }

    /// Whether an answer with this gRPC status code is retried.
    pub fn retries_grpc(&self, code: u8) -> bool {
        self.on
            .iter()
            .any(|on| matches!(on, RetryOn::Grpc(c) if *c as u8 == code))
    }

    /// Whether any gRPC status is retried.
    pub fn retries_any_grpc(&self) -> bool {
        self.on.iter().any(|on| matches!(on, RetryOn::Grpc(_)))
    }
}

/// One entry of `retry.on`: an HTTP status or a gRPC status name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Grpc(GrpcCode),
}

/// A gRPC status code (the `grpc-status` trailer), by its name in the gRPC
/// specification, written in lower case in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The manifest's name: `unavailable`, `deadline_exceeded`...
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "ok",
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::InvalidArgument => "invalid_argument",
            GrpcCode::DeadlineExceeded => "deadline_exceeded",
            GrpcCode::NotFound => "not_found",
            GrpcCode::AlreadyExists => "already_exists",
            GrpcCode::PermissionDenied => "permission_denied",
            GrpcCode::ResourceExhausted => "resource_exhausted",
            GrpcCode::FailedPrecondition => "failed_precondition",
            GrpcCode::Aborted => "aborted",
            GrpcCode::OutOfRange => "out_of_range",
            GrpcCode::Unimplemented => "unimplemented",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
            GrpcCode::DataLoss => "data_loss",
            GrpcCode::Unauthenticated => "unauthenticated",
        }
    }

    /// A code by name, in either case (`unavailable` or `UNAVAILABLE`).
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        GrpcCode::ALL
            .into_iter()
            .find(|code| code.name().eq_ignore_ascii_case(name))
    }
}

/// `websocket` on a route: whether WebSocket upgrades pass, and how long a
/// socket may live. `websocket = false` refuses upgrades (the request goes
/// upstream as a plain request).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebSocketPolicy {
    /// Set to `false` to pass no upgrades on this route.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// A socket with no bytes either way for this long is closed (1001).
    #[serde(default = "defaults::websocket_idle", with = "duration_text")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// A socket is closed (1001) after this long whatever it does; none by default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::model::duration_option"
    )]
    #[schemars(with = "Option<String>")]
    pub max_duration: Option<Duration>,
}

impl Default for WebSocketPolicy {
    fn default() -> Self {
        WebSocketPolicy {
            enabled: true,
            idle_timeout: defaults::websocket_idle(),
            max_duration: None,
        }
    }
}

/// `protocol` of a service: the HTTP version Gantry speaks to its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`), for `https://` instances: one multiplexed
    /// connection per instance.
    H2,
    /// HTTP/2 without TLS ("prior knowledge"), for `http://` instances, as
    /// gRPC servers speak it.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }
}

/// `circuit_breaker = { ... }` on a service: stop sending to a failing service
/// so it can recover, and answer fast meanwhile.
///
/// Closed, it counts outcomes over `window`; it opens when at least
/// `min_requests` were seen and `failure_ratio` of them failed (a 5xx, a
/// connection failure or a timeout), or after `consecutive_failures` failures
/// in a row. Open, it rejects at once (503) for `open_for`, then lets one probe
/// through (half-open): success closes it, failure opens it again.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerPolicy {
    /// Set to `false` to turn the breaker off.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default = "defaults::failure_ratio")]
    pub failure_ratio: f64,
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u32,
    /// Failures in a row that open the breaker whatever the ratio; 0 turns it off.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "defaults::window", with = "duration_text")]
    #[schemars(with = "String")]
    pub window: Duration,
    #[serde(default = "defaults::open_for", with = "duration_text")]
    #[schemars(with = "String")]
    pub open_for: Duration,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        CircuitBreakerPolicy {
            enabled: true,
            failure_ratio: defaults::failure_ratio(),
            min_requests: defaults::min_requests(),
            consecutive_failures: defaults::consecutive_failures(),
            window: defaults::window(),
            open_for: defaults::open_for(),
        }
    }
}

/// `fallback = { ... }` on a route: what clients get when the service cannot
/// answer (breaker open, bulkhead full, deadline over, no healthy instance).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Fallback {
    /// `fallback = { to = "SERVICE" }`: send the request there instead.
    Service { to: String },
    /// `fallback = { status = 200, body = "...", content_type = "..." }`.
    Static {
        #[serde(default = "defaults::fallback_status")]
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default = "defaults::content_type")]
        content_type: String,
    },
}

/// `load_balancer` of a service: how an instance is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Each healthy instance in turn.
    #[default]
    RoundRobin,
    /// The less busy of two instances picked at random ("power of two choices").
    LeastRequests,
    /// The same instance for the same `hash_on` key while it is healthy
    /// (rendezvous hashing: when an instance leaves, only its keys move).
    ConsistentHash,
}

/// Where a request's affinity key comes from: `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    Cookie(String),
}

impl HashKey {
    /// Parses `header:x-user-id` or `cookie:session`.
    pub fn parse(text: &str) -> Option<HashKey> {
        let (kind, name) = text.split_once(':')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        match kind.trim() {
            "header" => Some(HashKey::Header(name.to_ascii_lowercase())),
            "cookie" => Some(HashKey::Cookie(name.to_string())),
            _ => None,
        }
    }
}

/// `outlier_ejection = { ... }` on a service: passive health checking. An
/// instance that fails `consecutive_failures` requests in a row (5xx,
/// connection failure, timeout) gets no traffic for `base`, doubled on each
/// ejection up to `max`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierEjection {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default = "defaults::ejection_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "defaults::ejection_base", with = "duration_text")]
    #[schemars(with = "String")]
    pub base: Duration,
    #[serde(default = "defaults::ejection_max", with = "duration_text")]
    #[schemars(with = "String")]
    pub max: Duration,
}

impl Default for OutlierEjection {
    fn default() -> Self {
        OutlierEjection {
            enabled: true,
            consecutive_failures: defaults::ejection_failures(),
            base: defaults::ejection_base(),
            max: defaults::ejection_max(),
        }
    }
}

/// `shadow = { ... }` on a route: mirror a sample of its requests to another
/// service and compare the answers. The client only ever gets the primary's
/// response; Gantry keeps a report of how often the two agree and the latest
/// pairs that did not (`gantry shadow report ROUTE`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicy {
    /// The service that gets the copies.
    pub to: String,
    /// The share of requests mirrored, 0 to 100.
    #[serde(default = "defaults::shadow_percent")]
    pub percent: f64,
    /// Response headers that must match (the status always must).
    #[serde(default)]
    pub compare_headers: Vec<String>,
    /// JSON pointers left out of the body comparison, e.g. `/generated_at`.
    #[serde(default)]
    pub ignore_fields: Vec<String>,
    /// Mirror non-idempotent requests too (POST, PATCH). Off by default: a
    /// mirrored POST would act twice.
    #[serde(default)]
    pub unsafe_methods: bool,
    /// Bodies (request and responses) larger than this are not mirrored or compared.
    #[serde(default = "defaults::shadow_max_body")]
    pub max_body: u64,
}

/// `rate_limit = { ... }` on a route: a GCRA (token bucket) limit per key.
///
/// `requests` per `per` is the sustained rate; up to `burst` requests may come
/// at once. Past the limit a request gets 429 with `Retry-After`; every
/// response carries the IETF `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub requests: u32,
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub per: Duration,
    /// Requests allowed at once; defaults to `requests`.
    pub burst: u32,
    /// Whose requests are counted together: `ip` (the client address, through
    /// `[platform] trusted_proxies`), `header:NAME`, or `claim:NAME` (a claim of
    /// the verified token, e.g. `claim:sub` for per-user limits).
    #[schemars(with = "String")]
    pub key: RateLimitKey,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    Ip,
    Header(String),
    /// A claim of the request's verified JWT, e.g. `claim:sub` (per user).
    Claim(String),
}

/// `request_headers` / `response_headers` on a route: edits applied to every
/// request sent upstream or response sent back. `remove` runs first, then
/// `set` (replace), then `add` (append).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

/// `cors = { ... }` on a route: browsers on these origins may call it.
/// Preflight requests (`OPTIONS` with `Access-Control-Request-Method`) are
/// answered by the gateway; other responses get the CORS headers added.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins, e.g. `https://shop.example`; `*` allows any (not with `credentials`).
    pub origins: Vec<String>,
    /// Methods a browser may use; defaults to the route's `methods`, or common ones.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a browser may send.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and credentials.
    #[serde(default)]
    pub credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "defaults::cors_max_age", with = "duration_text")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

/// `deprecation = { ... }` on a route (an API version on its way out): every
/// response says so with `Deprecation` (RFC 9745) and `Sunset` (RFC 8594).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// Unix time the version was deprecated (written `since = "2026-01-31"`).
    pub since: u64,
    /// Unix time it stops working (written `sunset = "2026-12-31"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<u64>,
    /// Where to read about the replacement; sent as a `Link` with `rel="deprecation"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// `idempotency = { ... }` on a route (draft-ietf-httpapi-idempotency-key-header):
/// the first request with a key runs and its response is stored durably; a
/// retry with the same key and the same request gets the stored response
/// replayed (`Idempotent-Replayed: true`) without reaching the service; the
/// same key with another request gets 422, and while the first is still
/// running, 409. Keys are scoped per consumer (the token's `sub`, else the
/// client address).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyPolicy {
    /// The request header that carries the key.
    #[serde(default = "defaults::idempotency_header")]
    pub header: String,
    /// Refuse requests without a key (400).
    #[serde(default)]
    pub required: bool,
    /// How long a stored response is replayed.
    #[serde(default = "defaults::idempotency_ttl", with = "duration_text")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Request and response bodies up to this size are handled; larger
    /// request bodies get 413, larger responses are not stored.
    #[serde(default = "defaults::shadow_max_body")]
    pub max_body: u64,
}

pub(crate) mod defaults {
    use std::time::Duration;

    pub fn attempts() -> u32 {
        2
    }
    pub fn backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn max_backoff() -> Duration {
        Duration::from_millis(250)
    }
    pub fn max_body() -> u64 {
        64 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn failure_ratio() -> f64 {
        0.5
    }
    pub fn min_requests() -> u32 {
        20
    }
    pub fn consecutive_failures() -> u32 {
        0
    }
    pub fn window() -> Duration {
        Duration::from_secs(10)
    }
    pub fn open_for() -> Duration {
        Duration::from_secs(5)
    }
    pub fn fallback_status() -> u16 {
        200
    }
    pub fn content_type() -> String {
        "application/json".into()
    }
    pub fn max_concurrent() -> u32 {
        1024
    }
    pub fn websocket_idle() -> Duration {
        Duration::from_secs(300)
    }

    pub fn retry_budget() -> f64 {
        0.2
    }
    pub fn ejection_failures() -> u32 {
        5
    }
    pub fn ejection_base() -> Duration {
        Duration::from_secs(10)
    }
    pub fn ejection_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn idempotency_header() -> String {
        "idempotency-key".into()
    }
    pub fn idempotency_ttl() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn cors_max_age() -> Duration {
        Duration::from_secs(600)
    }
    pub fn shadow_percent() -> f64 {
        100.0
    }
    pub fn shadow_max_body() -> u64 {
        1024 * 1024
    }
    pub fn healthy_threshold() -> u32 {
        1
    }
    pub fn unhealthy_threshold() -> u32 {
        2
    }
}
