//! The manifest's types. Their doc comments are the manifest reference: they
//! flow into the JSON Schema that `gantry schema` prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::auth::{ApiKeySource, AuthMode, JwtConfig};
use crate::events::{Outbox, Subscription, Topic};
use crate::pattern::PathPattern;
use crate::policy::{
    self, CircuitBreakerPolicy, CorsPolicy, Deprecation, Fallback, HashKey, HeaderEdits,
    IdempotencyPolicy, LoadBalancer, OutlierEjection, RateLimitPolicy, RetryPolicy, ShadowPolicy,
};
use crate::workflows::Workflow;

/// A whole Gantry system: the platform settings, the services it fronts and the
/// routes that send traffic to them.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "gantry.toml")]
pub struct Manifest {
    /// Settings of the Gantry process itself.
    #[serde(default)]
    pub platform: Platform,
    /// The services, by name. A name is how routes (and later events and
    /// policies) refer to a service.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Routes, tried in file order: the first route that matches a request wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// How bearer tokens are checked on routes with `auth = "jwt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Event topics, by name (`order.placed`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, Topic>,
    /// Deliveries of a topic's events to a service endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    /// Sagas: steps across services, with compensations, run durably.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: BTreeMap<String, Workflow>,
    /// Serverless functions, by name; routes and subscriptions reach them as `function:NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, crate::functions::Function>,
    /// Cron schedules that invoke functions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, crate::functions::Schedule>,
    /// Object buckets that `to = "bucket:NAME"` routes upload into.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, crate::functions::Bucket>,
    /// Service-level objectives, evaluated by Gantry with burn-rate alerts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slos: BTreeMap<String, crate::slo::Slo>,
    /// Where each SLO's section is, for cross-checks.
    #[serde(skip)]
    pub slo_spans: BTreeMap<String, Option<std::ops::Range<usize>>>,
    /// Where SLO alerts go.
    #[serde(default)]
    pub alerting: crate::slo::Alerting,
    /// Where traces are exported.
    #[serde(default)]
    pub telemetry: crate::slo::Telemetry,
    /// Cluster mode: the nodes share PostgreSQL. Without it, embedded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::Cluster>,
    /// The directory relative paths resolve against: the manifest's own.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[platform]`: where Gantry listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// The system's name, shown in listings and logs.
    #[serde(default = "defaults::name")]
    pub name: String,
    /// Address of the gateway that serves user traffic.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Address of the admin API (health, metrics, listings, reload). Keep it
    /// on a loopback or private address.
    #[serde(default = "defaults::admin")]
    pub admin: SocketAddr,
    /// Address of the platform API that services call (publish events, ...);
    /// each service process finds it in `GANTRY_API`. Keep it private.
    #[serde(default = "defaults::api")]
    pub api: SocketAddr,
    /// Where Gantry keeps its state. Relative to the manifest's directory.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// How long a shutdown waits for in-flight requests before closing them.
    #[serde(default = "defaults::drain_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// Reload automatically when the manifest file changes.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// Proxies in front of Gantry whose `X-Forwarded-For` is believed, as IPs or
    /// CIDR ranges (`10.0.0.0/8`). The client address for rate limits is the
    /// nearest address in that header not in this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Normalise request paths before routing (decode `%61`, remove `.` and
    /// `..` segments, merge `//`), so no spelling of a path gets around a
    /// route's policies; the upstream receives the normalised path.
    #[serde(default = "defaults::yes")]
    pub normalize_path: bool,
    /// What an encoded `/` or `\` (`%2F`, `%5C`, or a raw `\`) in a path does:
    /// `reject` (400), `keep` (forwarded encoded) or `decode` (to `/`).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Failed authentications allowed per client address before its requests
    /// to routes with `auth` get 429, checked before any credential
    /// (`{ requests = 20, per = "1m" }` unless set; `false` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_failure_limit: Option<crate::policy::RateLimitPolicy>,
    /// A plain-HTTP listener that answers every request with a 308 redirect
    /// to the same URL on https (needs `[platform.tls]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<SocketAddr>,
    /// `[platform.tls]`: the gateway serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// When the embedded event store makes an acknowledged publish durable:
    /// `always` (the default: on disk before the publish is acknowledged) or
    /// `batch` (written to the OS before, on disk at the next checkpoint).
    #[serde(default)]
    pub events_sync: EventsSync,
}

/// `[platform] events_sync`: the embedded event store's durability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventsSync {
    /// Every commit is on disk (fsync) before its publishes and acks are
    /// acknowledged: nothing acknowledged is lost, even to a power cut.
    #[default]
    Always,
    /// Commits reach the OS before they are acknowledged and the disk at the
    /// next checkpoint: a crash of Gantry loses nothing, a crash of the
    /// machine (power, kernel) can lose the last moments' events, as with
    /// NATS JetStream's default `sync_interval`.
    Batch,
}

impl EventsSync {
    /// As the manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventsSync::Always => "always",
            EventsSync::Batch => "batch",
        }
    }
}

/// `[platform] escaped_slashes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: an encoded slash is refused (the safe default).
    #[default]
    Reject,
    /// Forwarded encoded (`%2F`), for upstreams that treat it as data.
    Keep,
    /// Decoded to `/` before routing.
    Decode,
}

/// `[platform.tls]`: certificates for the gateway's listener.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys (PEM). `cert`/`key` give one; several
    /// `[[platform.tls.certs]]` are chosen by the client's SNI name, the
    /// first being the default. Files are watched and reloaded on change.
    pub certs: Vec<CertFiles>,
    /// CA bundle (PEM) that client certificates are verified against; routes
    /// with `auth = "mtls"` require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// `Strict-Transport-Security` max-age sent on every https answer, e.g. `"365d"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration_text::option"
    )]
    #[schemars(with = "Option<String>")]
    pub hsts: Option<Duration>,
    /// Adds `includeSubDomains` to the HSTS header.
    #[serde(default)]
    pub hsts_subdomains: bool,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            name: defaults::name(),
            listen: defaults::listen(),
            admin: defaults::admin(),
            api: defaults::api(),
            data_dir: defaults::data_dir(),
            drain_timeout: defaults::drain_timeout(),
            watch: true,
            trusted_proxies: Vec::new(),
            normalize_path: true,
            escaped_slashes: EscapedSlashes::Reject,
            auth_failure_limit: Some(defaults::auth_failure_limit()),
            redirect_http: None,
            tls: None,
            events_sync: EventsSync::Always,
        }
    }
}

/// `[services.NAME]`: one service, either run by Gantry (`command`) or reached
/// at addresses it does not manage (`urls`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The team accountable for this service, shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Base URLs of instances Gantry does not run, e.g. `http://127.0.0.1:9000`
    /// or `https://orders.internal:8443` (verified, with SNI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// CA bundle (PEM) that `https://` instances are verified against,
    /// instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The HTTP version spoken to instances: `http1` (the default), `h2`
    /// (HTTP/2 over TLS, for `https://` urls) or `h2c` (HTTP/2 without TLS, as
    /// gRPC servers speak it).
    #[serde(default)]
    pub protocol: policy::UpstreamProtocol,
    /// The program and its arguments, for a service Gantry runs. Each instance
    /// gets a free port in `PORT`, and `GANTRY_SERVICE` and `GANTRY_INSTANCE`.
    /// A program path with a `/` is relative to the manifest's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How many instances of `command` to run.
    #[serde(default = "defaults::instances")]
    pub instances: u32,
    /// Working directory of the processes; defaults to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Extra environment variables for the processes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// HTTP path answered with 2xx when an instance is ready, e.g. `/healthz`;
    /// or `grpc` for an HTTP/2 service: the gRPC health checking protocol
    /// (`grpc.health.v1.Health/Check`, answered `SERVING`).
    /// Without it an instance counts as healthy once its port accepts connections
    /// (for `command`) or always (for `urls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How often a running instance is health-checked.
    #[serde(default = "defaults::health_interval", with = "duration_text")]
    #[schemars(with = "String")]
    pub health_interval: Duration,
    /// How long one health check may take before it counts as failed.
    #[serde(default = "defaults::health_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub health_timeout: Duration,
    /// How long a process gets between SIGTERM and SIGKILL when it is stopped.
    #[serde(default = "defaults::stop_grace", with = "duration_text")]
    #[schemars(with = "String")]
    pub stop_grace: Duration,
    /// Bulkhead: requests in flight to this service at most; more are shed at
    /// once with 503 and `Retry-After` rather than queued.
    #[serde(default = "policy::defaults::max_concurrent")]
    pub max_concurrent: u32,
    /// Retries may add at most this fraction of extra load (0.2 = 20%), so
    /// retries cannot multiply an outage.
    #[serde(default = "policy::defaults::retry_budget")]
    pub retry_budget: f64,
    /// When to stop sending requests to a failing service.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerPolicy,
    /// How an instance is chosen: `round_robin`, `least_requests` or `consistent_hash`.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// The affinity key for `consistent_hash`: `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub hash_on: Option<HashKey>,
    /// Passing health checks in a row before an instance gets traffic.
    #[serde(default = "policy::defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failing health checks in a row before a healthy instance stops getting traffic.
    #[serde(default = "policy::defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Passive health checking: instances that keep failing requests are ejected for a while.
    #[serde(default)]
    pub outlier_ejection: OutlierEjection,
    /// An outbox table in the service's own SQLite database that Gantry relays
    /// to the event bus, e.g. `{ database = "orders.db" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<Outbox>,
}

/// How a service's instances come to exist.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceKind<'a> {
    /// Gantry runs `instances` copies of `command`.
    Process {
        command: &'a [String],
        instances: u32,
    },
    /// Instances live at these URLs; Gantry only sends them traffic.
    External { urls: &'a [String] },
}

impl Service {
    /// A service at `urls` that Gantry only sends traffic to, with every
    /// policy at its default.
    pub fn external(urls: Vec<String>) -> Service {
        Service {
            owner: None,
            urls,
            ca: None,
            protocol: Default::default(),
            command: Vec::new(),
            instances: 1,
            workdir: None,
            env: BTreeMap::new(),
            health: None,
            health_interval: defaults::health_interval(),
            health_timeout: defaults::health_timeout(),
            stop_grace: defaults::stop_grace(),
            max_concurrent: crate::policy::defaults::max_concurrent(),
            retry_budget: crate::policy::defaults::retry_budget(),
            circuit_breaker: Default::default(),
            load_balancer: Default::default(),
            hash_on: None,
            healthy_threshold: crate::policy::defaults::healthy_threshold(),
            unhealthy_threshold: crate::policy::defaults::unhealthy_threshold(),
            outlier_ejection: Default::default(),
            outbox: None,
        }
    }

    pub fn kind(&self) -> ServiceKind<'_> {
        if self.command.is_empty() {
            ServiceKind::External { urls: &self.urls }
        } else {
            ServiceKind::Process {
                command: &self.command,
                instances: self.instances,
            }
        }
    }
}

/// `[[routes]]`: which requests go to which service, and how they are rewritten.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A name for metrics and listings; defaults to the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path to match: exact (`/health`), prefix (`/api/*`, which also matches
    /// `/api`), with `{param}` segments (`/users/{id}/orders`).
    pub path: String,
    /// HTTP methods to match; empty matches every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host to match (port ignored, case-insensitive); `*.example.com` matches subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Cookies that must be present with exactly these values, e.g.
    /// `{ canary = "1" }` to send opted-in testers to a new version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, String>,
    /// Where matching requests go: a service name, or a weighted split such
    /// as `[{ service = "monolith", weight = 90 }, { service = "catalog", weight = 10 }]`.
    pub to: Target,
    /// For a split: keep each client on one side, keyed by `header:NAME` or
    /// `cookie:NAME`. Without it each request is assigned at random by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub sticky: Option<HashKey>,
    /// A leading part of the path to remove before forwarding, e.g. `/api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// A new path for the upstream request; `{param}` inserts a captured segment
    /// and `{*}` the rest of a prefix match, e.g. `/v2/items/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// The request's deadline: how long the upstream (all attempts and
    /// backoffs) has to start answering. The time left is sent upstream in
    /// `X-Gantry-Deadline-Ms`.
    #[serde(default = "defaults::route_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How long one attempt may take; defaults to the whole `timeout`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration_option"
    )]
    #[schemars(with = "Option<String>")]
    pub attempt_timeout: Option<Duration>,
    /// Retries of failed attempts.
    #[serde(default = "RetryPolicy::connect_failures_only")]
    pub retry: RetryPolicy,
    /// What to answer when the service cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Mirror requests to another service and compare the responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPolicy>,
    /// Limit the rate of requests per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPolicy>,
    /// Edits to the headers of requests sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEdits>,
    /// Edits to the headers of responses sent back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEdits>,
    /// The largest request body accepted, in bytes (or `64KiB`, `10MiB`);
    /// larger ones get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// Cross-origin access for browsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    /// Marks the route as a deprecated API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation: Option<Deprecation>,
    /// Who may call the route: `none` (default) or `jwt`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Where `auth = "api_key"` reads the key: `header:NAME` or `query:NAME`.
    #[serde(default)]
    #[schemars(with = "String")]
    pub api_key_from: ApiKeySource,
    /// Scopes the token must carry (`scope` claim, space-separated, or `scp`/`scopes` arrays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Idempotency keys: replay the stored response of a repeated request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyPolicy>,
    /// Claims passed upstream as headers, e.g. `{ sub = "x-user-id" }`.
    /// Client-sent copies of these headers are always removed first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Requests must carry a valid HMAC signature (a webhook), or get 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::functions::WebhookPolicy>,
    /// WebSocket upgrades through this route: on by default, with an idle
    /// timeout; `websocket = false` passes none.
    #[serde(default)]
    pub websocket: policy::WebSocketPolicy,
    /// The parsed `path`.
    #[serde(skip)]
    pub pattern: PathPattern,
    #[serde(skip)]
    pub(crate) spans: RouteSpans,
}

/// A route's destination.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Target {
    Service(String),
    Split(Vec<WeightedService>),
}

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedService {
    pub service: String,
    /// Relative share of the route's requests.
    pub weight: u32,
}

impl Target {
    /// Every service with its weight (a single service has weight 1).
    pub fn backends(&self) -> Vec<(&str, u32)> {
        match self {
            Target::Service(name) => vec![(name.as_str(), 1)],
            Target::Split(split) => split
                .iter()
                .map(|b| (b.service.as_str(), b.weight))
                .collect(),
        }
    }

    /// The first service: the one named in listings and error messages.
    pub fn primary(&self) -> &str {
        match self {
            Target::Service(name) => name,
            Target::Split(split) => split.first().map_or("", |b| b.service.as_str()),
        }
    }
}

impl Route {
    /// The label used for this route in metrics and logs.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.path)
    }
}

/// Where a route's parts sit in the file, for cross-check errors.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteSpans {
    pub(crate) table: Option<Range<usize>>,
    pub(crate) path: Option<Range<usize>>,
    pub(crate) to: Option<Range<usize>>,
    pub(crate) fallback: Option<Range<usize>>,
    pub(crate) shadow: Option<Range<usize>>,
    pub(crate) auth: Option<Range<usize>>,
}

pub(crate) mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn name() -> String {
        "gantry".into()
    }
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8081))
    }
    pub fn api() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8082))
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from(".gantry")
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn auth_failure_limit() -> crate::policy::RateLimitPolicy {
        crate::policy::RateLimitPolicy {
            requests: 20,
            per: Duration::from_secs(60),
            burst: 20,
            key: crate::policy::RateLimitKey::Ip,
        }
    }
    pub fn instances() -> u32 {
        1
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn stop_grace() -> Duration {
        Duration::from_secs(5)
    }
    pub fn route_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

pub(crate) mod duration_option {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Durations are written as text in the manifest (`5s`, `250ms`) and shown the
/// same way in listings.
pub(crate) mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub mod option {
        use std::time::Duration;

        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}
