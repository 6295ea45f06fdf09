//! Per-function Prometheus metrics: invocations by outcome, duration, cold
//! starts, and instances running.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    /// `ok` (any status the function chose), `error` (trap, crash, bad
    /// output), `timeout`, `memory`, `throttled` (refused by max_concurrency).
    outcome: &'static str,
    /// The answer's status class (`2xx`...`5xx`): a function's own 500 is
    /// `ok` as an outcome and `5xx` here, as SLOs count it.
    status_class: &'static str,
}

/// `2xx`, `3xx`, `4xx`, `5xx` (or `1xx`).
fn status_class(status: u16) -> &'static str {
    match status {
        500.. => "5xx",
        400..=499 => "4xx",
        300..=399 => "3xx",
        200..=299 => "2xx",
        _ => "1xx",
    }
}

/// The function metric families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FunctionMetrics {
    invocations: Family<OutcomeLabels, Counter>,
    duration: Family<FunctionLabels, Histogram>,
    cold_starts: Family<FunctionLabels, Counter>,
    instances: Family<FunctionLabels, Gauge>,
}

impl Default for FunctionMetrics {
    fn default() -> Self {
        FunctionMetrics {
            invocations: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(gantry_telemetry::function_duration_buckets())
            }),
            cold_starts: Family::default(),
            instances: Family::default(),
        }
    }
}

impl FunctionMetrics {
    /// Adds the families to the process registry (`/metrics`).
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(|registry| {
            registry.register(
                "function_invocations",
                "Function invocations by outcome (ok, error, timeout, memory, throttled) and status class of the answer",
                self.invocations.clone(),
            );
            registry.register(
                "function_duration_seconds",
                "How long an invocation took until the response started",
                self.duration.clone(),
            );
            registry.register(
                "function_cold_starts",
                "Invocations that had to start a new Lambda process first (wasm instances are always fresh and are not counted)",
                self.cold_starts.clone(),
            );
            registry.register(
                "function_instances",
                "Instances running: wasm invocations in progress, or Lambda processes alive",
                self.instances.clone(),
            );
        });
    }

    pub(crate) fn invoked(&self, function: &str, outcome: &'static str, status: u16, seconds: f64) {
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_string(),
                outcome,
                status_class: status_class(status),
            })
            .inc();
        if outcome != "throttled" {
            self.duration
                .get_or_create(&FunctionLabels {
                    function: function.to_string(),
                })
                .observe(seconds);
        }
    }

    pub(crate) fn cold_start(&self, function: &str) {
        self.cold_starts
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .inc();
    }

    pub(crate) fn instances(&self, function: &str, delta: i64) {
        self.instances
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .inc_by(delta);
    }
}
