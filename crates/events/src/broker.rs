//! The storage seam of the event bus.
//!
//! A [`Broker`] keeps topics (append-only logs with sequence numbers), each
//! subscription's position and its pending deliveries, dead letters and
//! schema versions. It decides nothing about delivery: when to retry, how
//! keys are ordered and where events go is the dispatcher's job
//! (`dispatch.rs`), so a clustered backend (NATS JetStream) can take the
//! embedded one's place without touching delivery logic.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

/// A position in a topic: 1 for the first event ever published to it.
pub type Seq = u64;

/// An event on its way into a topic.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `id` and `source` together identify the event for deduplication.
    pub id: String,
    pub source: String,
    /// The structured JSON form.
    pub json: Bytes,
}

/// An outbox row on its way into its topic.
#[derive(Debug, Clone)]
pub struct RelayedEvent {
    pub topic: String,
    pub event: NewEvent,
    pub dedup_window: Duration,
}

/// What a claim took from a topic.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The events the subscription wants, now pending.
    pub pending: Vec<Pending>,
    /// The subscription has read everything published so far.
    pub caught_up: bool,
}

/// What a publish did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    pub seq: Seq,
    /// An event with the same `id` and `source` was published within the
    /// dedup window; this one was not stored again and `seq` is the original's.
    pub duplicate: bool,
}

/// An event as a topic holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub topic: Arc<str>,
    pub seq: Seq,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_ms: i64,
    /// The structured JSON form.
    pub json: Bytes,
}

/// An event a subscription has yet to deliver.
#[derive(Debug, Clone)]
pub struct Pending {
    pub event: StoredEvent,
    /// Attempts already made.
    pub attempts: u32,
    /// Not before this time (ms since the epoch); 0 for at once.
    pub not_before_ms: i64,
    pub last_error: Option<String>,
}

/// An event that used up its delivery attempts.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub subscription: String,
    pub topic: String,
    pub seq: Seq,
    pub attempts: u32,
    pub last_error: String,
    pub published_ms: i64,
    pub dead_at_ms: i64,
    /// The event, in structured JSON form.
    #[serde(serialize_with = "as_json")]
    pub event: Bytes,
}

fn as_json<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => value.serialize(s),
        Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only these sequence numbers (empty: any).
    pub seqs: Vec<Seq>,
    /// Only events of this CloudEvents `type`.
    pub event_type: Option<String>,
    /// Only those whose last error contains this text.
    pub error_contains: Option<String>,
}

impl DeadLetterFilter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        if !self.seqs.is_empty() && !self.seqs.contains(&letter.seq) {
            return false;
        }
        if let Some(text) = &self.error_contains {
            if !letter.last_error.contains(text.as_str()) {
                return false;
            }
        }
        if let Some(wanted) = &self.event_type {
            let actual = serde_json::from_slice::<serde_json::Value>(&letter.event)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
            if actual.as_deref() != Some(wanted.as_str()) {
                return false;
            }
        }
        true
    }
}

/// Where a subscription starts, or is moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest event the topic holds.
    Earliest,
    /// After the newest event: only events published from now on.
    Latest,
    /// This sequence number (the next event delivered is this one).
    Seq(Seq),
    /// The first event published at or after this time.
    Time(SystemTime),
}

/// A topic's counters.
#[derive(Debug, Clone, Serialize)]
pub struct TopicStats {
    pub name: String,
    /// The newest sequence number (0: nothing published yet).
    pub last_seq: Seq,
    /// The oldest sequence number still held (0: empty).
    pub first_seq: Seq,
    pub events: u64,
    pub bytes: u64,
}

/// A subscription's position and backlog.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStats {
    pub name: String,
    pub topic: String,
    /// The next sequence number to read from the topic.
    pub next_seq: Seq,
    /// Events read but not yet delivered (in flight or waiting to retry).
    pub pending: u64,
    pub dead_letters: u64,
    /// Whether the subscription is in the applied manifest.
    pub active: bool,
}

/// One registered version of a topic's schema.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaVersion {
    pub topic: String,
    pub version: u32,
    #[serde(serialize_with = "as_json_text")]
    pub schema: String,
    pub registered_ms: i64,
}

#[allow(clippy::ptr_arg)] // `serialize_with` hands over the field as it is
fn as_json_text<S: serde::Serializer>(text: &String, s: S) -> Result<S::Ok, S::Error> {
    as_json(&Bytes::from(text.clone()), s)
}

/// Decides, inside the broker, which events a subscription wants; the rest
/// are passed over without a delivery.
pub trait EventFilter: Send + Sync {
    fn wants(&self, event_json: &[u8]) -> bool;
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown subscription `{0}`")]
    UnknownSubscription(String),
    #[error("event storage failed: {0}")]
    Storage(String),
}

/// Durable storage for topics, subscriptions and dead letters. Every method
/// returns once its change is durable.
#[async_trait]
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Makes sure `topic` exists.
    async fn create_topic(&self, topic: &str) -> Result<(), BrokerError>;

    /// Appends events to a topic, in order, skipping those whose `id` and
    /// `source` were published within `dedup_window`.
    async fn publish(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
        dedup_window: Duration,
    ) -> Result<Vec<Published>, BrokerError>;

    /// Appends events read from an outbox and records `last_row` as relayed,
    /// atomically: each row is published exactly once. Returns, per event,
    /// its topic and what the publish did.
    async fn publish_relayed(
        &self,
        relay: &str,
        last_row: i64,
        events: Vec<RelayedEvent>,
    ) -> Result<Vec<(String, Published)>, BrokerError>;

    /// The newest sequence number of `topic` (0: nothing published yet).
    async fn last_seq(&self, topic: &str) -> Result<Seq, BrokerError>;

    /// The last outbox row a relay published (0: none).
    async fn relay_position(&self, relay: &str) -> Result<i64, BrokerError>;

    /// Events of `topic` from `from` on, at most `limit`.
    async fn read(
        &self,
        topic: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, BrokerError>;

    /// Creates the subscription at `start` if it does not exist (an existing
    /// one keeps its position) and marks it active.
    async fn open_subscription(
        &self,
        name: &str,
        topic: &str,
        start: Position,
    ) -> Result<(), BrokerError>;

    /// Marks subscriptions not in `active` as inactive: they keep their state
    /// but no longer hold back retention.
    async fn retain_subscriptions(&self, active: Vec<String>) -> Result<(), BrokerError>;

    /// Every pending delivery of a subscription, in sequence order.
    async fn pending(&self, subscription: &str) -> Result<Vec<Pending>, BrokerError>;

    /// Reads up to `limit` events past the subscription's position, records
    /// the wanted ones as pending and moves the position past all of them.
    async fn claim(
        &self,
        subscription: &str,
        limit: usize,
        filter: Arc<dyn EventFilter>,
    ) -> Result<Claim, BrokerError>;

    /// A delivery succeeded (or is given up without a dead letter).
    async fn ack(&self, subscription: &str, seq: Seq) -> Result<(), BrokerError>;

    /// A delivery failed and will be tried again at `not_before_ms`.
    async fn retry_later(
        &self,
        subscription: &str,
        seq: Seq,
        attempts: u32,
        not_before_ms: i64,
        error: &str,
    ) -> Result<(), BrokerError>;

    /// A delivery used up its attempts: move it to the dead-letter queue.
    async fn dead_letter(
        &self,
        subscription: &str,
        seq: Seq,
        attempts: u32,
        error: &str,
    ) -> Result<(), BrokerError>;

    /// Moves the subscription to `position`, dropping its pending deliveries.
    /// Returns the new position.
    async fn seek(&self, subscription: &str, position: Position) -> Result<Seq, BrokerError>;

    async fn dead_letters(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Puts matching dead letters back as pending deliveries with fresh
    /// attempts; returns them.
    async fn redrive(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
    ) -> Result<Vec<Pending>, BrokerError>;

    /// Deletes matching dead letters; returns how many.
    async fn purge(&self, subscription: &str, filter: DeadLetterFilter)
        -> Result<u64, BrokerError>;

    async fn topic_stats(&self) -> Result<Vec<TopicStats>, BrokerError>;

    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>, BrokerError>;

    /// Deletes events older than `max_age` or beyond `max_bytes` (oldest
    /// first) that no active subscription still needs, and expired dedup
    /// records. Returns how many events went.
    async fn trim(
        &self,
        topic: &str,
        max_age: Duration,
        max_bytes: Option<u64>,
        dedup_window: Duration,
    ) -> Result<u64, BrokerError>;

    async fn schema_versions(&self, topic: &str) -> Result<Vec<SchemaVersion>, BrokerError>;

    /// Records a new schema version; returns its number.
    async fn register_schema(&self, topic: &str, schema: &str) -> Result<u32, BrokerError>;

    /// A receiver that changes whenever `topic` gets new events.
    fn watch(&self, topic: &str) -> tokio::sync::watch::Receiver<Seq>;
}
