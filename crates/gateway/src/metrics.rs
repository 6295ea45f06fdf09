//! The gateway's request metrics, labelled by route, service and status class.
//!
//! Per-route handles are looked up once when a route table is built, so the
//! request path only bumps atomics.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

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

/// An exemplar's labels: the trace of one request in the bucket, so a
/// latency spike on a dashboard leads to a trace (OpenMetrics exemplars).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    trace_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    route: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    route: String,
    reason: &'static str,
}

/// The gateway's metric families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, HistogramWithExemplars<TraceExemplar>>,
    retries: Family<RouteLabels, Counter>,
    shed: Family<ServiceLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
    pub(crate) sockets: crate::websocket::SocketMetrics,
}

/// The metric handles of one route (or of unrouted requests).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: HistogramWithExemplars<TraceExemplar>,
    pub(crate) retries: Counter,
    /// Requests shed by the service's bulkhead.
    pub(crate) shed: Counter,
    fallbacks: Family<FallbackLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
    route: String,
}

impl GatewayMetrics {
    /// Registers `gantry_http_requests_total` and
    /// `gantry_http_request_duration_seconds` in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration =
            Family::<RouteLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                || HistogramWithExemplars::new(gantry_telemetry::HTTP_DURATION_BUCKETS.into_iter()),
            );
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
        let retries = Family::<RouteLabels, Counter>::default();
        let shed = Family::<ServiceLabels, Counter>::default();
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        let grpc = Family::<GrpcLabels, Counter>::default();
        metrics.register(|registry| {
            registry.register(
                "grpc_responses",
                "gRPC calls through the gateway by route and gRPC status (`rpc.grpc.status_code`), when the status is in the answer's head",
                grpc.clone(),
            );
            registry.register(
                "http_retries",
                "Retried upstream attempts, by route",
                retries.clone(),
            );
            registry.register(
                "bulkhead_shed",
                "Requests shed because a service had too many in flight",
                shed.clone(),
            );
            registry.register(
                "fallbacks",
                "Fallback answers served, by route and reason",
                fallbacks.clone(),
            );
        });
        GatewayMetrics {
            requests,
            duration,
            retries,
            shed,
            fallbacks,
            grpc,
            sockets: crate::websocket::SocketMetrics::register(metrics),
        }
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
        let labels = RouteLabels {
            route: route.to_string(),
            service: service.to_string(),
        };
        RouteMetrics {
            by_class,
            duration,
            retries: self.retries.get_or_create(&labels).clone(),
            shed: self
                .shed
                .get_or_create(&ServiceLabels {
                    service: service.to_string(),
                })
                .clone(),
            fallbacks: self.fallbacks.clone(),
            grpc: self.grpc.clone(),
            route: route.to_string(),
        }
    }
}

impl RouteMetrics {
    pub(crate) fn fallback(&self, reason: &'static str) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                route: self.route.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a gRPC call's status.
    pub(crate) fn record_grpc(&self, code: u8) {
        let code = gantry_manifest::GrpcCode::ALL
            .get(usize::from(code))
            .map_or("out_of_range_code", |c| c.name());
        self.grpc
            .get_or_create(&GrpcLabels {
                route: self.route.clone(),
                code,
            })
            .inc();
    }

    /// Counts an answer; `trace` (a kept trace's id) becomes the exemplar of
    /// its latency bucket.
    pub(crate) fn record(&self, status: u16, seconds: f64, trace: Option<u128>) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(
            seconds,
            trace.map(|id| TraceExemplar {
                trace_id: format!("{id:032x}"),
            }),
        );
    }
}

/// Bulkhead use, read at each scrape from the route table in force: requests
/// in flight per service, beside the service's `max_concurrent`.
pub(crate) fn register_saturation(metrics: &Metrics, gateway: crate::Gateway) {
    metrics.register(|registry| {
        registry.register_collector(Box::new(Breakers(gateway.clone())));
    });
    let in_flight = Family::<ServiceLabels, Gauge>::default();
    let limit = Family::<ServiceLabels, Gauge>::default();
    metrics.register(|registry| {
        registry.register(
            "service_requests_in_flight",
            "Requests in flight to a service through the gateway (what its bulkhead counts)",
            in_flight.clone(),
        );
        registry.register(
            "service_max_concurrent_requests",
            "A service's bulkhead limit (`max_concurrent`): more in flight are shed",
            limit.clone(),
        );
    });
    metrics.on_scrape(std::sync::Arc::new(move || {
        let (gateway, in_flight, limit) = (gateway.clone(), in_flight.clone(), limit.clone());
        Box::pin(async move {
            // Services removed by a reload disappear from the scrape.
            in_flight.clear();
            limit.clear();
            for service in gateway.table().services() {
                let labels = ServiceLabels {
                    service: service.name().to_string(),
                };
                in_flight
                    .get_or_create(&labels)
                    .set(service.in_flight() as i64);
                limit
                    .get_or_create(&labels)
                    .set(i64::from(service.config().max_concurrent));
            }
        })
    }));
}

/// `gantry_circuit_breaker_state` and `gantry_circuit_breaker_opened_total`,
/// read from each running service's breaker at every scrape (the breakers
/// belong to the services, shared by every caller, not to the gateway).
#[derive(Debug)]
struct Breakers(crate::Gateway);

impl prometheus_client::collector::Collector for Breakers {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let state = Family::<ServiceLabels, Gauge>::default();
        let opened = Family::<ServiceLabels, Counter>::default();
        for service in self.0.table().services() {
            let labels = ServiceLabels {
                service: service.name().to_string(),
            };
            let breaker = service.breaker();
            state.get_or_create(&labels).set(breaker.state() as i64);
            opened.get_or_create(&labels).inc_by(breaker.opened_total());
        }
        let metric = encoder.encode_descriptor(
            "circuit_breaker_state",
            "Circuit breaker state by service: 0 closed, 1 open, 2 half-open",
            None,
            state.metric_type(),
        )?;
        state.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "circuit_breaker_opened",
            "Times a service's circuit breaker opened",
            None,
            opened.metric_type(),
        )?;
        opened.encode(metric)
    }
}
