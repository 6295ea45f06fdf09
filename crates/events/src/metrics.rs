//! The event bus's Prometheus metrics: what was published, and how
//! deliveries went, per topic and subscription.

use gantry_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::broker::{SubscriptionStats, TopicStats};

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BacklogLabels {
    subscription: String,
    topic: String,
}

/// The bus's metric families. Cheap to clone; counting works whether or
/// not they were registered.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    published: Family<TopicLabels, Counter>,
    duplicates: Family<TopicLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    duration: Family<SubscriptionLabels, Histogram>,
    // Saturation, read from the store at scrape time.
    lag: Family<BacklogLabels, Gauge>,
    dead_letters: Family<BacklogLabels, Gauge>,
    topic_events: Family<TopicLabels, Gauge>,
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
            lag: Family::default(),
            dead_letters: Family::default(),
            topic_events: Family::default(),
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
            registry.register(
                "subscription_lag_events",
                "Events of the topic a subscription has not delivered yet (unread, in flight or waiting to retry)",
                self.lag.clone(),
            );
            registry.register(
                "subscription_dead_letters",
                "Events in a subscription's dead-letter queue",
                self.dead_letters.clone(),
            );
            registry.register(
                "topic_events",
                "Events a topic holds",
                self.topic_events.clone(),
            );
        });
    }

    /// Sets the saturation gauges from the store's numbers. Subscriptions no
    /// longer in the manifest are left out.
    pub(crate) fn set_backlog(&self, topics: &[TopicStats], subscriptions: &[SubscriptionStats]) {
        self.lag.clear();
        self.dead_letters.clear();
        self.topic_events.clear();
        for topic in topics {
            self.topic_events
                .get_or_create(&TopicLabels {
                    topic: topic.name.clone(),
                })
                .set(topic.events as i64);
        }
        for s in subscriptions.iter().filter(|s| s.active) {
            let last = topics
                .iter()
                .find(|t| t.name == s.topic)
                .map_or(0, |t| t.last_seq);
            let labels = BacklogLabels {
                subscription: s.name.clone(),
                topic: s.topic.clone(),
            };
            self.lag
                .get_or_create(&labels)
                .set(lag(last, s.next_seq, s.pending) as i64);
            self.dead_letters
                .get_or_create(&labels)
                .set(s.dead_letters as i64);
        }
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

/// Events published but not yet read, plus those read but not delivered.
pub(crate) fn lag(last_seq: u64, next_seq: u64, pending: u64) -> u64 {
    (last_seq + 1).saturating_sub(next_seq) + pending
}
