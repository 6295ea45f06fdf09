//! The gateway's request metrics, labelled by route, service and status class.
//!
//! Per-route handles are looked up once when a route table is built, so the
//! request path only bumps atomics.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    service: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    service: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The gateway's metric families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

/// The metric handles of one route (or of unrouted requests).
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl GatewayMetrics {
    /// Registers `gantry_http_requests_total` and
    /// `gantry_http_request_duration_seconds` in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
        });
        metrics.register(|registry| {
            registry.register(
                "http_requests",
                "HTTP requests through the gateway, by route, service and status class",
                requests.clone(),
            );
            registry.register(
                "http_request_duration_seconds",
                "Time from receiving a request to sending its response headers",
                duration.clone(),
            );
        });
        GatewayMetrics { requests, duration }
    }

    pub(crate) fn for_route(&self, route: &str, service: &str) -> RouteMetrics {
        let by_class = CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.to_string(),
                    service: service.to_string(),
                    status_class,
                })
                .clone()
        });
        let duration = self
            .duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                service: service.to_string(),
            })
            .clone();
        RouteMetrics { by_class, duration }
    }
}

impl RouteMetrics {
    pub(crate) fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}
