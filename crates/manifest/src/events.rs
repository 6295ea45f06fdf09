//! `[topics.NAME]`, `[[subscriptions]]` and a service's `outbox`: the event
//! bus's part of the manifest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// `[topics.NAME]`: a durable, ordered log of events that services publish to.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    /// A JSON Schema file the `data` of every event must match. A changed file
    /// registers a new schema version, checked against the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// Which old and new schema versions must agree: `backward` (new readers
    /// read old events; the default), `forward`, `full` or `none`.
    #[serde(default)]
    pub compatibility: Compatibility,
    /// How long events are kept (`7d`), at most: an event is removed only once
    /// every subscription of the topic is past it.
    #[serde(default = "defaults::retention", with = "duration_text")]
    #[schemars(with = "String")]
    pub retention: Duration,
    /// The most bytes of events the topic keeps (`1GiB`); oldest go first, with
    /// the same care for subscriptions as `retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// A second event with the `id` (and `source`) of one published within
    /// this window is acknowledged but not stored again.
    #[serde(default = "defaults::dedup_window", with = "duration_text")]
    #[schemars(with = "String")]
    pub dedup_window: Duration,
    /// The largest event accepted, in bytes of its JSON form (`256KiB`).
    #[serde(default = "defaults::max_event_size")]
    pub max_event_size: u64,
}

impl Default for Topic {
    fn default() -> Self {
        Topic {
            schema: None,
            compatibility: Compatibility::default(),
            retention: defaults::retention(),
            max_bytes: None,
            dedup_window: defaults::dedup_window(),
            max_event_size: defaults::max_event_size(),
        }
    }
}

/// How a new schema version must relate to the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// Every event valid under the old schema is valid under the new one.
    #[default]
    Backward,
    /// Every event valid under the new schema is valid under the old one.
    Forward,
    /// Both.
    Full,
    /// No check.
    None,
}

impl Compatibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::None => "none",
        }
    }
}

/// `[[subscriptions]]`: delivers a topic's events to a service endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The subscription's name in listings and commands; defaults to
    /// `SERVICE.TOPIC`. Its position in the topic is kept under this name.
    pub name: String,
    /// The topic to read.
    pub topic: String,
    /// Where events go: `SERVICE:/path` (an HTTP POST, e.g.
    /// `notifications:/events`) or `workflow:NAME` (each event starts a run,
    /// with the event's id as the run's id and its data as the input).
    #[schemars(with = "String")]
    pub to: Endpoint,
    /// Only events whose attributes equal these values (a trailing `*`
    /// matches a prefix), e.g. `{ type = "order.*" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// A JSON pointer into the event (`/data/order_id`, `/subject`): events
    /// with the same key are delivered one at a time, in publish order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Deliveries in flight at once, across keys.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u32,
    /// How long one delivery may take before it counts as failed.
    #[serde(default = "defaults::delivery_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry: DeliveryRetry,
    /// Keep events that used up their attempts in a dead-letter queue (true),
    /// or drop them with an error in the log (false).
    #[serde(default = "defaults::yes")]
    pub dead_letter: bool,
    /// Where a new subscription starts: `latest`, `earliest` or an RFC 3339
    /// time. An existing subscription keeps its position.
    #[serde(default)]
    #[schemars(with = "String")]
    pub start_at: StartAt,
    /// Where the subscription is written, for messages.
    #[serde(skip)]
    #[schemars(skip)]
    pub spans: SubscriptionSpans,
}

/// Byte spans of a subscription's keys in the manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionSpans {
    pub topic: Option<Range<usize>>,
    pub to: Option<Range<usize>>,
    pub name: Option<Range<usize>>,
}

/// Where a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An HTTP POST to a path of a service.
    Service { service: String, path: String },
    /// A run of a workflow per event.
    Workflow { name: String },
}

impl Endpoint {
    /// The name a default subscription name starts with.
    pub fn owner(&self) -> &str {
        match self {
            Endpoint::Service { service, .. } => {
                crate::functions::function_of(service).unwrap_or(service)
            }
            Endpoint::Workflow { name } => name,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Service { service, path }
                if path == "/" && crate::functions::function_of(service).is_some() =>
            {
                f.write_str(service)
            }
            Endpoint::Service { service, path } => write!(f, "{service}:{path}"),
            Endpoint::Workflow { name } => write!(f, "workflow:{name}"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Backoff between delivery attempts: `initial`, then times `multiplier`, at
/// most `max`, with jitter (each wait is between half and all of that).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRetry {
    /// Attempts in all, the first included.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::retry_initial", with = "duration_text")]
    #[schemars(with = "String")]
    pub initial: Duration,
    #[serde(default = "defaults::retry_max", with = "duration_text")]
    #[schemars(with = "String")]
    pub max: Duration,
    #[serde(default = "defaults::multiplier")]
    pub multiplier: f64,
}

impl Default for DeliveryRetry {
    fn default() -> Self {
        DeliveryRetry {
            max_attempts: defaults::max_attempts(),
            initial: defaults::retry_initial(),
            max: defaults::retry_max(),
            multiplier: defaults::multiplier(),
        }
    }
}

impl DeliveryRetry {
    /// The longest wait before attempt `attempt + 1` (attempts count from 1).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let scaled = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartAt {
    /// Only events published from now on.
    #[default]
    Latest,
    /// Every event the topic still holds.
    Earliest,
    /// Events published at or after this time.
    Time(SystemTime),
}

impl Serialize for StartAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StartAt::Latest => s.serialize_str("latest"),
            StartAt::Earliest => s.serialize_str("earliest"),
            StartAt::Time(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        }
    }
}

/// `outbox` of a service: a table in the service's own SQLite database that it
/// writes events into in the same transaction as its state change; Gantry
/// publishes each row exactly once, in `id` order, then deletes it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    /// The service's SQLite database file, relative to the manifest.
    pub database: PathBuf,
    /// The outbox table (see docs/events.md for its shape).
    #[serde(default = "defaults::outbox_table")]
    pub table: String,
    /// How often the table is checked for new rows.
    #[serde(default = "defaults::outbox_poll", with = "duration_text")]
    #[schemars(with = "String")]
    pub poll: Duration,
}

pub(crate) mod defaults {
    use std::time::Duration;

    pub fn retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn dedup_window() -> Duration {
        Duration::from_secs(120)
    }
    pub fn max_event_size() -> u64 {
        1024 * 1024
    }
    pub fn max_in_flight() -> u32 {
        16
    }
    pub fn delivery_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_attempts() -> u32 {
        10
    }
    pub fn retry_initial() -> Duration {
        Duration::from_millis(500)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(60)
    }
    pub fn multiplier() -> f64 {
        2.0
    }
    pub fn outbox_table() -> String {
        "gantry_outbox".into()
    }
    pub fn outbox_poll() -> Duration {
        Duration::from_millis(100)
    }
}
