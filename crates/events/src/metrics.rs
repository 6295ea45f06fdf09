//! The event bus's Prometheus metrics: what was published, and how
//! deliveries went, per topic and subscription.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscription: String,
    /// `delivered`, `failed` (will retry), `dead_lettered` or `dropped`.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

/// The bus's metric families. Cheap to clone; counting works whether or
/// not they were registered.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    published: Family<TopicLabels, Counter>,
    duplicates: Family<TopicLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    duration: Family<SubscriptionLabels, Histogram>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        EventMetrics {
            published: Family::default(),
            duplicates: Family::default(),
            deliveries: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl EventMetrics {
    /// Adds the families to the process registry (`/metrics`).
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(|registry| {
            registry.register(
                "events_published",
                "Events stored in a topic",
                self.published.clone(),
            );
            registry.register(
                "events_duplicates",
                "Publishes acknowledged as duplicates within the dedup window (not stored again)",
                self.duplicates.clone(),
            );
            registry.register(
                "event_deliveries",
                "Delivery attempts by outcome: delivered, failed (will retry), dead_lettered, dropped",
                self.deliveries.clone(),
            );
            registry.register(
                "event_delivery_duration_seconds",
                "How long one delivery attempt took",
                self.duration.clone(),
            );
        });
    }

    pub(crate) fn published(&self, topic: &str, stored: u64, duplicates: u64) {
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        if stored > 0 {
            self.published.get_or_create(&labels).inc_by(stored);
        }
        if duplicates > 0 {
            self.duplicates.get_or_create(&labels).inc_by(duplicates);
        }
    }

    pub(crate) fn delivery(&self, subscription: &str, outcome: &'static str, seconds: f64) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                subscription: subscription.to_string(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .observe(seconds);
    }
}
