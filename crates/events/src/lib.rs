//! The event bus: durable topics of CloudEvents, subscriptions that deliver
//! them to services over HTTP with retries and dead-letter queues, replay,
//! schemas with compatibility checks, and the outbox relay.
//!
//! The pieces, from the outside in:
//! - [`api`]: the HTTP surface. `POST /v1/publish/{topic}` on the platform
//!   API (what services call, at `GANTRY_API`), and the operator endpoints on
//!   the admin API (topics, subscriptions, dead letters, replay, tail);
//! - [`EventBus`]: applies the manifest's topics and subscriptions, checks
//!   events on publish, and runs one delivery loop per subscription;
//! - `dispatch`: a subscription's delivery loop (ordering keys, in-flight
//!   limit, backoff, dead letters);
//! - [`broker::Broker`]: durable storage, embedded as [`SqliteBroker`].

pub mod api;
pub mod broker;
pub mod cloudevent;
mod deliver;
mod dispatch;
mod metrics;
mod outbox;
pub mod relay_positions;
pub mod schema;
mod sqlite;

use gantry_services::ServiceDirectory;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::StatusCode;
use gantry_manifest::{Compatibility, EventsSync, Manifest, Outbox, StartAt, Subscription, Topic};
use gantry_problem::{Blame, Explain, Problem};
use gantry_telemetry::traces::TraceStore;
use serde::Serialize;
use tokio::sync::{oneshot, Mutex};
use tokio_util::sync::CancellationToken;

pub use broker::{Broker, BrokerError, DeadLetter, DeadLetterFilter, Position, Published, Seq};
pub use cloudevent::{CloudEvent, EventError};
pub use deliver::{WorkflowStarter, ATTEMPT_HEADER, SEQUENCE_HEADER, SUBSCRIPTION_HEADER};
pub use metrics::EventMetrics;
pub use relay_positions::SharedRelays;
pub use sqlite::SqliteBroker;

use broker::NewEvent;
use deliver::Deliverer;
use dispatch::{Control, RunnerHandle};
use outbox::RelayHandle;
use schema::compat;
use schema::TopicSchema;

/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// A topic as the bus runs it: its manifest settings and its schema.
#[derive(Debug)]
pub struct TopicRuntime {
    pub name: String,
    pub config: Topic,
    pub schema: Option<TopicSchema>,
}

/// The event bus of one Gantry process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Arc<dyn Broker>,
    deliverer: Deliverer,
    topics: ArcSwap<HashMap<String, Arc<TopicRuntime>>>,
    runners: Mutex<HashMap<String, RunnerHandle>>,
    relays: Mutex<HashMap<String, RelayHandle>>,
    /// Where outbox relays keep their positions: the broker, unless
    /// [`EventBus::share_relays`] says the cluster's.
    relay_positions: std::sync::OnceLock<relay_positions::Positions>,
    background: CancellationToken,
    metrics: EventMetrics,
}

/// Why a publish was refused. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("unknown topic `{topic}`; {hint}")]
    UnknownTopic { topic: String, hint: String },
    #[error("{0}")]
    Malformed(#[from] EventError),
    #[error("event #{index} is {size} bytes, over the topic's `max_event_size` of {max} bytes; publish a link to large payloads instead")]
    TooLarge { index: usize, size: usize, max: u64 },
    #[error("event #{index} (id `{id}`): {message}")]
    Schema {
        index: usize,
        id: String,
        message: String,
    },
    #[error(transparent)]
    Storage(#[from] BrokerError),
}

/// Why a subscription operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("unknown subscription `{0}`; `gantry events subscriptions` lists them")]
    UnknownSubscription(String),
    #[error("unknown topic `{0}`; `gantry events topics` lists them")]
    UnknownTopic(String),
    #[error(transparent)]
    Storage(BrokerError),
}

impl From<BrokerError> for OperationError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::UnknownSubscription(name) => OperationError::UnknownSubscription(name),
            other => OperationError::Storage(other),
        }
    }
}

impl Explain for PublishError {
    fn blame(&self) -> Blame {
        match self {
            PublishError::Storage(_) => Blame::Gantry,
            _ => Blame::Caller,
        }
    }

    fn problem(&self) -> Problem {
        let detail = self.to_string();
        let (status, name, title) = match self {
            PublishError::UnknownTopic { .. } => {
                (StatusCode::NOT_FOUND, "unknown-topic", "Unknown topic")
            }
            PublishError::Malformed(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-event",
                "Invalid CloudEvent",
            ),
            PublishError::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "event-too-large",
                "Event too large",
            ),
            PublishError::Schema { .. } => (
                StatusCode::BAD_REQUEST,
                "schema-violation",
                "Event does not match the topic's schema",
            ),
            PublishError::Storage(_) => {
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "The event was not stored",
                )
                .detail(format!("{detail}; nothing was published, retry later"))
            }
        };
        Problem::new(status, name, title).detail(detail)
    }
}

impl Explain for OperationError {
    fn blame(&self) -> Blame {
        match self {
            OperationError::Storage(_) => Blame::Gantry,
            _ => Blame::Caller,
        }
    }

    fn problem(&self) -> Problem {
        let (status, name, title) = match self {
            OperationError::UnknownSubscription(_) => (
                StatusCode::NOT_FOUND,
                "unknown-subscription",
                "Unknown subscription",
            ),
            OperationError::UnknownTopic(_) => {
                (StatusCode::NOT_FOUND, "unknown-topic", "Unknown topic")
            }
            OperationError::Storage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Event storage failed",
            ),
        };
        Problem::new(status, name, title).detail(self.to_string())
    }
}

/// What applying a manifest changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// New schema versions registered, as `topic vN`.
    pub schemas_registered: Vec<String>,
    pub subscriptions_started: Vec<String>,
    pub subscriptions_stopped: Vec<String>,
}

impl EventBus {
    /// The bus on the embedded broker in `data_dir`, every commit on disk
    /// before it is acknowledged.
    pub fn open(
        data_dir: &std::path::Path,
        services: ServiceDirectory,
        traces: Option<TraceStore>,
    ) -> Result<EventBus, String> {
        EventBus::open_with_sync(data_dir, EventsSync::Always, services, traces)
    }

    /// The bus on the embedded broker in `data_dir`, with the manifest's
    /// `[platform] events_sync`.
    pub fn open_with_sync(
        data_dir: &std::path::Path,
        sync: EventsSync,
        services: ServiceDirectory,
        traces: Option<TraceStore>,
    ) -> Result<EventBus, String> {
        Ok(EventBus::with_broker(
            Arc::new(SqliteBroker::open(data_dir, sync)?),
            services,
            traces,
        ))
    }

    /// The bus on any broker, keeping a span of every delivery attempt of a
    /// traced event in `traces`. Starts the retention task.
    pub fn with_broker(
        broker: Arc<dyn Broker>,
        services: ServiceDirectory,
        traces: Option<TraceStore>,
    ) -> EventBus {
        let bus = EventBus {
            inner: Arc::new(Inner {
                broker,
                deliverer: Deliverer::new(services, traces),
                topics: ArcSwap::default(),
                runners: Mutex::default(),
                relays: Mutex::default(),
                relay_positions: std::sync::OnceLock::new(),
                background: CancellationToken::new(),
                metrics: EventMetrics::default(),
            }),
        };
        tokio::spawn(retention(bus.clone()));
        bus
    }

    /// In a cluster: each outbox is relayed by one node at a time, from a
    /// position kept in the cluster's PostgreSQL. Call before the first
    /// [`EventBus::apply`]; later calls are ignored.
    pub fn share_relays(&self, shared: SharedRelays) {
        let _ = self
            .inner
            .relay_positions
            .set(relay_positions::Positions::Shared(shared));
    }

    pub(crate) fn relay_positions(&self) -> relay_positions::Positions {
        self.inner
            .relay_positions
            .get()
            .cloned()
            .unwrap_or_default()
    }

    /// The bus's metric families, to register in the process's registry.
    pub fn metrics(&self) -> &EventMetrics {
        &self.inner.metrics
    }

    /// Registers the bus's metric families in `metrics`, with the backlog
    /// gauges read from the store at each scrape.
    pub fn register_metrics(&self, metrics: &gantry_telemetry::Metrics) {
        self.inner.metrics.register(metrics);
        let bus = self.clone();
        metrics.on_scrape(Arc::new(move || {
            let bus = bus.clone();
            Box::pin(async move {
                let broker = bus.broker();
                if let (Ok(topics), Ok(subscriptions)) = (
                    broker.topic_stats().await,
                    broker.subscription_stats().await,
                ) {
                    bus.inner.metrics.set_backlog(&topics, &subscriptions);
                }
            })
        }));
    }

    /// Lets subscriptions with `to = "workflow:NAME"` start runs. The one
    /// setter left on a built subsystem, because the two need each other:
    /// the workflow engine publishes on the bus (so it is built from it),
    /// and the bus starts workflows. Set once, before `apply`.
    pub fn set_workflow_starter(&self, starter: Arc<dyn WorkflowStarter>) {
        let _ = self.inner.deliverer.starter.set(starter);
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicRuntime>> {
        self.inner.topics.load().get(name).cloned()
    }

    pub fn topics(&self) -> Arc<HashMap<String, Arc<TopicRuntime>>> {
        self.inner.topics.load_full()
    }

    /// Makes the running bus match `manifest`: checks every schema first (a
    /// breaking change or a broken schema refuses the whole manifest and
    /// changes nothing), then registers new schema versions, and starts,
    /// restarts or stops subscriptions and outbox relays.
    pub async fn apply(&self, manifest: &Manifest) -> Result<ApplyReport, String> {
        let plan = self.check(manifest).await?;
        self.commit(plan, manifest).await
    }

    /// The first half of [`EventBus::apply`]: checks every schema (compiles,
    /// agrees with its previous version) and changes nothing. A reload runs
    /// every subsystem's check before it commits any of them.
    pub async fn check(&self, manifest: &Manifest) -> Result<BusPlan, String> {
        let broker = &self.inner.broker;
        let mut planned = Vec::new();
        for (name, config) in &manifest.topics {
            let schema = match &config.schema {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("topic `{name}`: cannot read schema {}: {e}", path.display())
                    })?;
                    let versions = broker
                        .schema_versions(name)
                        .await
                        .map_err(|e| e.to_string())?;
                    let latest = versions.last();
                    let same = latest.is_some_and(|v| same_json(&v.schema, &text));
                    let version = match latest {
                        Some(v) if same => v.version,
                        Some(v) => v.version + 1,
                        None => 1,
                    };
                    let compiled = TopicSchema::compile(&text, version)
                        .map_err(|e| format!("topic `{name}`: schema {}: {e}", path.display()))?;
                    if let (Some(previous), false) = (latest, same) {
                        let old: serde_json::Value =
                            serde_json::from_str(&previous.schema).unwrap_or_default();
                        let mode = compat_mode(config.compatibility);
                        let problems = compat::check(&old, &compiled.document(), mode);
                        if !problems.is_empty() {
                            return Err(format!(
                                "{}\nthe schema file is {}; version {} stays registered. Make the change compatible, \
                                 publish the new shape to a new topic (e.g. `{name}.v{}`), or set \
                                 `compatibility = \"none\"` on the topic if every consumer is ready for it",
                                compat::render(name, mode, &problems),
                                path.display(),
                                previous.version,
                                previous.version + 1,
                            ));
                        }
                    }
                    Some((compiled, !same))
                }
            };
            planned.push((name.clone(), config.clone(), schema));
        }
        Ok(BusPlan { planned })
    }

    /// The second half of [`EventBus::apply`]: registers new schema versions,
    /// then starts, restarts or stops subscriptions and outbox relays. Fails
    /// only when the store does.
    pub async fn commit(&self, plan: BusPlan, manifest: &Manifest) -> Result<ApplyReport, String> {
        let broker = &self.inner.broker;
        let mut report = ApplyReport::default();
        let mut topics = HashMap::new();
        let planned = plan.planned;
        for (name, config, schema) in planned {
            broker
                .create_topic(&name)
                .await
                .map_err(|e| e.to_string())?;
            let schema = match schema {
                Some((compiled, true)) => {
                    let version = broker
                        .register_schema(&name, &compiled.text)
                        .await
                        .map_err(|e| e.to_string())?;
                    report.schemas_registered.push(format!("{name} v{version}"));
                    tracing::info!(target: "gantry::events", topic = %name, version, "schema version registered");
                    Some(TopicSchema::compile(&compiled.text, version)?)
                }
                Some((compiled, false)) => Some(compiled),
                None => None,
            };
            topics.insert(
                name.clone(),
                Arc::new(TopicRuntime {
                    name,
                    config,
                    schema,
                }),
            );
        }
        self.inner.topics.store(Arc::new(topics));

        let mut runners = self.inner.runners.lock().await;
        let wanted: BTreeMap<&str, &Subscription> = manifest
            .subscriptions
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let names: Vec<String> = runners.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|s| same_subscription(s, &runners[&name].config));
            if !keep {
                let handle = runners.remove(&name).expect("listed");
                handle.stop().await;
                if !wanted.contains_key(name.as_str()) {
                    report.subscriptions_stopped.push(name);
                }
            }
        }
        for (name, subscription) in wanted {
            if runners.contains_key(name) {
                continue;
            }
            let start = match subscription.start_at {
                StartAt::Latest => Position::Latest,
                StartAt::Earliest => Position::Earliest,
                StartAt::Time(time) => Position::Time(time),
            };
            broker
                .open_subscription(name, &subscription.topic, start)
                .await
                .map_err(|e| e.to_string())?;
            let handle = RunnerHandle::start(
                Arc::new(subscription.clone()),
                broker.clone(),
                self.inner.deliverer.clone(),
                self.inner.metrics.clone(),
            );
            runners.insert(name.to_string(), handle);
            report.subscriptions_started.push(name.to_string());
        }
        broker
            .retain_subscriptions(runners.keys().cloned().collect())
            .await
            .map_err(|e| e.to_string())?;
        drop(runners);

        let mut relays = self.inner.relays.lock().await;
        let wanted: BTreeMap<&str, &Outbox> = manifest
            .services
            .iter()
            .filter_map(|(name, s)| s.outbox.as_ref().map(|o| (name.as_str(), o)))
            .collect();
        let names: Vec<String> = relays.keys().cloned().collect();
        for name in names {
            if wanted.get(name.as_str()) != Some(&&relays[&name].config) {
                relays.remove(&name).expect("listed").stop().await;
            }
        }
        for (service, config) in wanted {
            if !relays.contains_key(service) {
                relays.insert(
                    service.to_string(),
                    RelayHandle::start(self.clone(), service, config.clone()),
                );
            }
        }
        Ok(report)
    }

    /// Checks events and appends them to `topic`; resolves once they are
    /// durable. `traceparent` (the publisher's trace) is recorded on events
    /// that do not carry their own.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
        traceparent: Option<&str>,
    ) -> Result<Vec<Published>, PublishError> {
        let runtime = self
            .topic(topic)
            .ok_or_else(|| PublishError::UnknownTopic {
                topic: topic.to_string(),
                hint: self.topic_hint(),
            })?;
        let started = std::time::SystemTime::now();
        let mut batch = Vec::with_capacity(events.len());
        let mut spans = Vec::with_capacity(events.len());
        for (index, mut event) in events.into_iter().enumerate() {
            if let Some(parent) = traceparent {
                if !event.has("traceparent") {
                    event.set_extension("traceparent", parent);
                }
            }
            spans.push(self.publish_span(topic, &mut event));
            batch.push(prepare(&runtime, &event, index + 1)?);
        }
        let published = self
            .inner
            .broker
            .publish(topic, batch, runtime.config.dedup_window)
            .await;
        for (span, outcome) in spans.into_iter().zip(
            published
                .as_ref()
                .map(|p| p.iter().map(Some).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(std::iter::repeat(None)),
        ) {
            self.record_publish(span, started, outcome);
        }
        let published = published?;
        let duplicates = published.iter().filter(|p| p.duplicate).count() as u64;
        self.inner
            .metrics
            .published(topic, published.len() as u64 - duplicates, duplicates);
        Ok(published)
    }

    /// Makes `event` the child of a new publish span (continuing the trace
    /// it carries, or starting one), so its deliveries show under the
    /// publish. The span is recorded by [`EventBus::record_publish`] once
    /// the outcome is known.
    pub(crate) fn publish_span(&self, topic: &str, event: &mut CloudEvent) -> Option<PublishSpan> {
        let store = self.inner.deliverer.traces.as_ref()?;
        if !store.enabled() {
            return None;
        }
        let carried = event.attribute("traceparent");
        // The publish span continues the trace the event carries (keeping
        // its sampling decision), or starts one.
        let context = store.context(carried.as_deref());
        event.set_extension("traceparent", &context.traceparent());
        Some(PublishSpan {
            store: store.clone(),
            topic: topic.to_string(),
            id: event.id().to_string(),
            event_type: event.event_type().to_string(),
            context,
        })
    }

    pub(crate) fn record_publish(
        &self,
        span: Option<PublishSpan>,
        started: std::time::SystemTime,
        outcome: Option<&Published>,
    ) {
        let Some(span) = span else { return };
        let mut attributes = gantry_telemetry::traces::Attributes::new();
        attributes.insert("messaging.system", "gantry");
        attributes.insert("messaging.operation.type", "send");
        attributes.insert("messaging.destination.name", span.topic.clone());
        attributes.insert("messaging.message.id", span.id);
        attributes.insert("cloudevents.event_type", span.event_type);
        if let Some(published) = outcome {
            attributes.insert("gantry.event.seq", published.seq);
            if published.duplicate {
                attributes.insert("gantry.event.duplicate", true);
            }
        }
        span.store.record(gantry_telemetry::traces::Span {
            trace_id: span.context.trace_id_hex(),
            span_id: span.context.span_id_hex(),
            parent_id: span.context.parent_id_hex(),
            name: format!("publish {}", span.topic),
            kind: "producer",
            service: "events".into(),
            start_ns: gantry_telemetry::traces::unix_nanos(started),
            duration_ns: started.elapsed().unwrap_or_default().as_nanos() as u64,
            error: outcome.is_none(),
            attributes,
            sampled: span.context.sampled(),
        });
    }

    fn topic_hint(&self) -> String {
        let topics = self.inner.topics.load();
        let mut names: Vec<&str> = topics.keys().map(String::as_str).collect();
        names.sort();
        if names.is_empty() {
            "the manifest declares no topics; add a `[topics.NAME]` section".into()
        } else {
            format!("declared topics: {}", names.join(", "))
        }
    }

    /// Moves a subscription to another position (replay or skip ahead).
    pub async fn seek(
        &self,
        subscription: &str,
        position: Position,
    ) -> Result<Seq, OperationError> {
        let control = self.control(subscription).await;
        match control {
            Some(control) => {
                let (reply, answer) = oneshot::channel();
                control
                    .send(Control::Seek(position, reply))
                    .await
                    .map_err(|_| stopped(subscription))?;
                Ok(answer.await.map_err(|_| stopped(subscription))??)
            }
            None => Ok(self.inner.broker.seek(subscription, position).await?),
        }
    }

    /// Puts dead letters back for delivery; returns how many.
    pub async fn redrive(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
    ) -> Result<usize, OperationError> {
        self.known_subscription(subscription).await?;
        match self.control(subscription).await {
            Some(control) => {
                let (reply, answer) = oneshot::channel();
                control
                    .send(Control::Redrive(filter, reply))
                    .await
                    .map_err(|_| stopped(subscription))?;
                Ok(answer.await.map_err(|_| stopped(subscription))??)
            }
            None => Ok(self.inner.broker.redrive(subscription, filter).await?.len()),
        }
    }

    pub async fn purge(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
    ) -> Result<u64, OperationError> {
        self.known_subscription(subscription).await?;
        Ok(self.inner.broker.purge(subscription, filter).await?)
    }

    pub async fn dead_letters(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OperationError> {
        self.known_subscription(subscription).await?;
        Ok(self
            .inner
            .broker
            .dead_letters(subscription, filter, limit)
            .await?)
    }

    async fn known_subscription(&self, name: &str) -> Result<(), OperationError> {
        let stats = self.inner.broker.subscription_stats().await?;
        if stats.iter().any(|s| s.name == name) {
            Ok(())
        } else {
            Err(OperationError::UnknownSubscription(name.to_string()))
        }
    }

    async fn control(&self, subscription: &str) -> Option<tokio::sync::mpsc::Sender<Control>> {
        self.inner
            .runners
            .lock()
            .await
            .get(subscription)
            .map(|r| r.control.clone())
    }

    /// The running subscriptions' manifest settings, by name.
    pub async fn subscription_configs(&self) -> HashMap<String, Arc<Subscription>> {
        self.inner
            .runners
            .lock()
            .await
            .iter()
            .map(|(name, r)| (name.clone(), r.config.clone()))
            .collect()
    }

    /// Stops every delivery loop and relay (shutdown). Pending deliveries stay
    /// in the broker for the next start.
    pub async fn stop(&self) {
        self.inner.background.cancel();
        let runners: Vec<RunnerHandle> = self
            .inner
            .runners
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        // All at once: each may wait a while for its deliveries in flight.
        futures_util::future::join_all(runners.into_iter().map(RunnerHandle::stop)).await;
        let relays: Vec<RelayHandle> = self
            .inner
            .relays
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        futures_util::future::join_all(relays.into_iter().map(RelayHandle::stop)).await;
    }
}

/// Checks one event against its topic and turns it into what the broker stores.
/// A publish span waiting for its outcome.
/// What [`EventBus::check`] found: each topic with its schema, compiled,
/// and whether it is a new version to register.
#[derive(Debug)]
pub struct BusPlan {
    planned: Vec<PlannedTopic>,
}

/// A topic's name, settings, and its schema with whether that is a new version.
type PlannedTopic = (String, gantry_manifest::Topic, Option<(TopicSchema, bool)>);

pub(crate) struct PublishSpan {
    store: gantry_telemetry::traces::TraceStore,
    topic: String,
    id: String,
    event_type: String,
    context: gantry_telemetry::context::TraceContext,
}

fn prepare(
    topic: &TopicRuntime,
    event: &CloudEvent,
    index: usize,
) -> Result<NewEvent, PublishError> {
    let json = event.to_bytes();
    if json.len() as u64 > topic.config.max_event_size {
        return Err(PublishError::TooLarge {
            index,
            size: json.len(),
            max: topic.config.max_event_size,
        });
    }
    if let Some(schema) = &topic.schema {
        schema
            .check(event.data())
            .map_err(|message| PublishError::Schema {
                index,
                id: event.id().to_string(),
                message,
            })?;
    }
    Ok(NewEvent {
        id: event.id().to_string(),
        source: event.source().to_string(),
        json,
    })
}

fn stopped(subscription: &str) -> OperationError {
    OperationError::Storage(BrokerError::Storage(format!(
        "subscription `{subscription}` stopped while handling the request"
    )))
}

/// Whether a running subscription can keep running under a new manifest.
fn same_subscription(new: &Subscription, running: &Subscription) -> bool {
    // Where a subscription starts only matters when it is created.
    let mut new = new.clone();
    new.start_at = running.start_at;
    new.spans = running.spans.clone();
    new == *running
}

fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn compat_mode(mode: Compatibility) -> compat::Compatibility {
    match mode {
        Compatibility::Backward => compat::Compatibility::Backward,
        Compatibility::Forward => compat::Compatibility::Forward,
        Compatibility::Full => compat::Compatibility::Full,
        Compatibility::None => compat::Compatibility::None,
    }
}

/// Applies each topic's retention and expires dedup records, periodically.
async fn retention(bus: EventBus) {
    let cancel = bus.inner.background.clone();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        for (name, topic) in bus.topics().iter() {
            let config = &topic.config;
            match bus
                .inner
                .broker
                .trim(
                    name,
                    config.retention,
                    config.max_bytes,
                    config.dedup_window,
                )
                .await
            {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::debug!(target: "gantry::events", topic = %name, removed, "retention removed events")
                }
                Err(error) => {
                    tracing::warn!(target: "gantry::events", topic = %name, %error, "retention failed")
                }
            }
        }
    }
}
