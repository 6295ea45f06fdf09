//! `[slos.NAME]` and `[alerting]`: service-level objectives and where their
//! alerts go.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// `[slos.NAME]`: an objective for the requests of a route, a service or a
/// function, over a window.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// What the objective is about: `route:NAME`, `service:NAME` or `function:NAME`.
    pub target: SloTarget,
    /// The share of good requests to reach, in percent (`99.9`).
    pub objective: f64,
    /// The period the objective is measured over (`30d`).
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// With it, a good request also answers within this time (a latency
    /// objective); without it, good means not a 5xx (availability).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    #[schemars(with = "Option<String>")]
    pub latency: Option<Duration>,
    /// Requests the short window of an alert must hold before it may fire,
    /// so a quiet service does not page on one error.
    pub min_requests: u64,
    /// A page that says what to do when the alert fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
}

/// Which requests an SLO counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SloTarget {
    Route(String),
    Service(String),
    Function(String),
}

impl SloTarget {
    /// Whether a gateway request on `route` to `service` counts. Function
    /// objectives count invocations instead, whatever triggered them.
    pub fn matches(&self, route: &str, service: &str) -> bool {
        match self {
            SloTarget::Route(name) => name == route,
            SloTarget::Service(name) => name == service,
            SloTarget::Function(_) => false,
        }
    }
}

impl std::fmt::Display for SloTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SloTarget::Route(name) => write!(f, "route:{name}"),
            SloTarget::Service(name) => write!(f, "service:{name}"),
            SloTarget::Function(name) => write!(f, "function:{name}"),
        }
    }
}

/// `[alerting]`: where SLO alerts are sent.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerting {
    /// A URL that gets a JSON POST when an alert fires and when it resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// How often objectives are evaluated.
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub evaluate_every: Duration,
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            webhook: None,
            evaluate_every: Duration::from_secs(10),
        }
    }
}

/// `[telemetry]`: which traces are kept and where they are exported.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `false` records no spans at all (metrics and logs stay).
    pub traces: bool,
    /// The fraction of traces kept, from 0 to 1 (decided on the trace id,
    /// so every hop agrees; default 0.05, `1` keeps every trace). Traces
    /// with an error or a slow span are kept whatever the ratio.
    pub sample_ratio: f64,
    /// A trace with a span at least this long is always kept.
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub slow: Duration,
    /// An OTLP collector (`http://127.0.0.1:4318` for HTTP/protobuf,
    /// `http://127.0.0.1:4317` for gRPC): every kept span is also exported
    /// there. Without it, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`; without it,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<OtlpProtocol>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            traces: true,
            sample_ratio: 0.05,
            slow: Duration::from_secs(1),
            otlp_endpoint: None,
            otlp_protocol: None,
        }
    }
}

/// How spans travel to an OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

mod optional_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}
