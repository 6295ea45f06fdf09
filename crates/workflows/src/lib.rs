//! Sagas: durable multi-step workflows across services, with compensation.
//!
//! - [`definition`]: a `[workflows.NAME]` as the engine stores it, versioned,
//!   and template rendering (`{{ input.x }}`, `{{ steps.s.output.y }}`);
//! - [`store`]: the journal (`workflows.db`, or the cluster's PostgreSQL):
//!   definitions, runs, and every step's attempts, outputs, errors and
//!   timers;
//! - `engine`: runs one workflow from its journal: steps in order with
//!   retries and idempotency keys, compensation in reverse on failure,
//!   parking as `needs_attention` when a compensation keeps failing;
//! - [`api`]: `POST /v1/workflows/{name}` on the platform API, and the
//!   operator endpoints on the admin API.
//!
//! In cluster mode ([`Engine::open_postgres`]) every node shares the
//! journal, and a run is driven by one node at a time: the one holding its
//! lease. The driver renews the lease every third of its length and gives
//! it up when the run ends or parks (a `sleep` or `wait` step keeps it: the
//! node waiting is the one watching). Each node sweeps the journal every
//! second for active runs nobody holds (their node died, or they were
//! never picked up) and takes them over; their steps replay under the same
//! idempotency keys, so the services see each side effect once.

pub mod api;
pub mod definition;
mod engine;
mod metrics;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::http::StatusCode;
use gantry_events::EventBus;
use gantry_manifest::Manifest;
use gantry_problem::{Blame, Explain, Problem};
use gantry_services::ServiceDirectory;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use definition::Definition;
pub use engine::IDEMPOTENCY_HEADER;
pub use metrics::WorkflowMetrics;
pub use store::{JournalError, Renewal, Run, State, StepRecord, Store};

use store::now_ms;

/// How long a node holds a run it drives, unless told otherwise: another
/// node takes the run over at most this long, plus a sweep ([`SWEEP_EVERY`]),
/// after its driver died: within 10 s in all.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(8);

/// How often a node in a cluster looks for runs nobody drives.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many unowned runs one sweep takes at most.
const SWEEP_BATCH: usize = 100;

/// The workflow engine of one Gantry process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub store: Store,
    pub bus: EventBus,
    pub directory: ServiceDirectory,
    /// How steps call services (their bulkhead and breaker included).
    pub outbound: gantry_services::outbound::Outbound,
    /// The latest version of each workflow: what new runs use.
    current: ArcSwap<HashMap<String, Arc<Definition>>>,
    /// Runs being driven now, with what stops them.
    running: Mutex<HashMap<String, CancellationToken>>,
    shutdown: CancellationToken,
    /// The cluster's sweeper for unowned runs has started.
    sweeping: AtomicBool,
    pub metrics: WorkflowMetrics,
    /// Where step spans go.
    pub traces: Option<gantry_telemetry::traces::TraceStore>,
}

/// Why a workflow operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("unknown workflow `{name}`; {hint}")]
    UnknownWorkflow { name: String, hint: String },
    #[error("no workflow run `{0}`; `gantry workflows list` shows them")]
    UnknownRun(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl Explain for WorkflowError {
    fn blame(&self) -> Blame {
        match self {
            WorkflowError::Storage(_) | WorkflowError::Journal(_) => Blame::Gantry,
            _ => Blame::Caller,
        }
    }

    fn problem(&self) -> Problem {
        let problem = match self {
            WorkflowError::UnknownWorkflow { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-workflow",
                "Unknown workflow",
            ),
            WorkflowError::UnknownRun(_) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-run", "Unknown workflow run")
            }
            WorkflowError::Conflict(_) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
            }
            WorkflowError::Invalid(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
            ),
            WorkflowError::Storage(_) | WorkflowError::Journal(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "The workflow journal failed",
            ),
        };
        problem.detail(self.to_string())
    }
}

/// A run as the APIs show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub instance: Run,
    pub steps: Vec<StepRecord>,
}

impl Engine {
    /// Opens the journal in `data_dir`; step calls and compensations leave a
    /// span in `traces`.
    pub fn open(
        data_dir: &std::path::Path,
        bus: EventBus,
        directory: ServiceDirectory,
        traces: Option<gantry_telemetry::traces::TraceStore>,
    ) -> Result<Engine, JournalError> {
        Ok(Engine::with_store(
            Store::open(data_dir)?,
            bus,
            directory,
            traces,
        ))
    }

    /// Cluster mode: opens the journal in the cluster's PostgreSQL (bringing
    /// its tables up to date). This node drives the runs it starts and takes
    /// over those whose driver stopped renewing its `lease`
    /// ([`DEFAULT_LEASE`] unless configured). The sweeper that takes them
    /// over starts with [`Engine::resume_all`] (or [`Engine::apply`]).
    pub async fn open_postgres(
        cluster: &gantry_cluster::Cluster,
        lease: Duration,
        bus: EventBus,
        directory: ServiceDirectory,
        traces: Option<gantry_telemetry::traces::TraceStore>,
    ) -> Result<Engine, JournalError> {
        let store = Store::postgres(cluster.postgres(), &cluster.holder(), lease).await?;
        Ok(Engine::with_store(store, bus, directory, traces))
    }

    fn with_store(
        store: Store,
        bus: EventBus,
        directory: ServiceDirectory,
        traces: Option<gantry_telemetry::traces::TraceStore>,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                bus,
                directory,
                outbound: gantry_services::outbound::Outbound::shared().clone(),
                current: ArcSwap::default(),
                running: Mutex::default(),
                shutdown: CancellationToken::new(),
                sweeping: AtomicBool::new(false),
                metrics: WorkflowMetrics::default(),
                traces,
            }),
        }
    }

    /// The engine's metric families, to register in the process's registry.
    /// Registers the engine's metric families in `metrics`, with the open
    /// runs read from the journal at each scrape.
    pub fn register_metrics(&self, metrics: &gantry_telemetry::Metrics) {
        self.inner.metrics.register(metrics);
        let engine = self.clone();
        metrics.on_scrape(Arc::new(move || {
            let engine = engine.clone();
            Box::pin(async move {
                if let Ok(counts) = engine.inner.store.open_counts().await {
                    engine.inner.metrics.set_open(&counts);
                }
            })
        }));
    }

    pub fn metrics(&self) -> &WorkflowMetrics {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Registers the manifest's workflows and resumes every run the journal
    /// says was going ([`Engine::register`] then [`Engine::resume_all`]).
    pub async fn apply(&self, manifest: &Manifest) -> Result<Vec<String>, JournalError> {
        let registered = self.register(manifest).await?;
        self.resume_all().await?;
        Ok(registered)
    }

    /// Registers the manifest's workflows: a changed one gets a new version;
    /// runs in flight keep theirs.
    pub async fn register(&self, manifest: &Manifest) -> Result<Vec<String>, JournalError> {
        let mut current = HashMap::new();
        let mut registered = Vec::new();
        for (name, workflow) in &manifest.workflows {
            let definition = self
                .inner
                .store
                .register(Definition::from_manifest(name, workflow))
                .await?;
            registered.push(format!("{name} v{}", definition.version));
            current.insert(name.clone(), Arc::new(definition));
        }
        self.inner.current.store(Arc::new(current));
        Ok(registered)
    }

    /// Drives every run the journal says was going (after a start, once the
    /// event bus is ready for their publishes and waits). In cluster mode,
    /// only those no other node holds, and from then on the sweeper takes
    /// over every run whose lease lapses.
    pub async fn resume_all(&self) -> Result<(), JournalError> {
        // A new process holds nothing yet: in a cluster, the runs to take
        // are those nobody holds (the others' drivers are alive).
        let ids = match self.inner.store.lease() {
            None => self.inner.store.active().await?,
            Some(_) => self.inner.store.orphans(usize::MAX).await?,
        };
        for id in ids {
            self.spawn(&id);
        }
        self.start_sweeper();
        Ok(())
    }

    /// In cluster mode, looks every [`SWEEP_EVERY`] for active runs no node
    /// holds and drives them, until shutdown. Once per engine.
    fn start_sweeper(&self) {
        if self.inner.store.lease().is_none() || self.inner.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = engine.inner.shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match engine.inner.store.orphans(SWEEP_BATCH).await {
                    Ok(ids) => {
                        for id in ids {
                            engine.spawn(&id);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "gantry::workflows", %error, "cannot look for workflow runs to take over");
                    }
                }
            }
        });
    }

    /// Starts a run of `workflow`. With a caller-chosen `id`, starting is
    /// idempotent: the same id and input give back the existing run.
    pub async fn start(
        &self,
        workflow: &str,
        id: Option<String>,
        input: Value,
        traceparent: Option<&str>,
    ) -> Result<(Run, bool), WorkflowError> {
        let started = SystemTime::now();
        let definition = self
            .inner
            .current
            .load()
            .get(workflow)
            .cloned()
            .ok_or_else(|| {
                let current = self.inner.current.load();
                let mut names: Vec<&str> = current.keys().map(String::as_str).collect();
                names.sort();
                WorkflowError::UnknownWorkflow {
                    name: workflow.to_string(),
                    hint: if names.is_empty() {
                        "the manifest declares no workflows".into()
                    } else {
                        format!("declared workflows: {}", names.join(", "))
                    },
                }
            })?;
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if id.is_empty() || id.len() > 200 || id.contains('/') {
            return Err(WorkflowError::Invalid(
                "a workflow id is 1 to 200 characters without `/`".into(),
            ));
        }
        // The run continues the caller's trace, or starts one.
        let trace = traceparent
            .and_then(|t| gantry_telemetry::context::TraceContext::continued(t.as_bytes()))
            .unwrap_or_else(|| gantry_telemetry::context::TraceContext::start(true))
            .trace_id_hex();
        // Where each waited topic stands now: a wait sees events from here on.
        let mut wait_from = BTreeMap::new();
        for topic in definition.waited_topics() {
            let last = self
                .inner
                .bus
                .broker()
                .last_seq(topic)
                .await
                .map_err(|e| WorkflowError::Storage(e.to_string()))?;
            wait_from.insert(topic.to_string(), last + 1);
        }
        let now = now_ms();
        let instance = Run {
            id: id.clone(),
            workflow: workflow.to_string(),
            version: definition.version,
            input: input.clone(),
            state: State::Running,
            position: 0,
            generation: 0,
            cancel_requested: false,
            error: None,
            trace,
            wait_from,
            created_ms: now,
            updated_ms: now,
        };
        // A first step that calls or publishes starts with the run: one
        // journal write instead of two.
        let first = definition
            .steps
            .first()
            .filter(|step| engine::starts_at_once(step))
            .map(|step| step.name.as_str());
        let (instance, created) = self
            .inner
            .store
            .create_starting(instance, first)
            .await
            .map_err(WorkflowError::Journal)?;
        if !created && (instance.workflow != workflow || instance.input != input) {
            return Err(WorkflowError::Conflict(format!(
                "a run with id `{id}` already exists with another workflow or input; choose another id"
            )));
        }
        if created {
            self.record_start(&instance, traceparent, started);
            self.inner.metrics.started(workflow);
            tracing::info!(target: "gantry::workflows", workflow, id = %instance.id, version = instance.version, "workflow started");
            self.spawn_fresh(engine::Fresh {
                run: instance.clone(),
                first_started: first.is_some(),
            });
        }
        Ok((instance, created))
    }

    /// The run's start span: under the caller's span (the request or the
    /// delivery that started it), and the parent of every step's span.
    fn record_start(&self, instance: &Run, traceparent: Option<&str>, started: SystemTime) {
        let Some(store) = &self.inner.traces else {
            return;
        };
        let caller = traceparent
            .and_then(|t| gantry_telemetry::context::TraceContext::continued(t.as_bytes()))
            .filter(|caller| caller.trace_id_hex() == instance.trace)
            .and_then(|caller| caller.parent_id_hex());
        let mut attributes = gantry_telemetry::traces::Attributes::new();
        attributes.insert("gantry.workflow", instance.workflow.clone());
        attributes.insert("gantry.workflow.run", instance.id.clone());
        attributes.insert("gantry.workflow.version", instance.version);
        store.record(gantry_telemetry::traces::Span {
            trace_id: instance.trace.clone(),
            span_id: engine::run_span_id(instance),
            parent_id: caller,
            name: format!("start {}", instance.workflow),
            kind: "internal",
            service: "workflows".into(),
            start_ns: gantry_telemetry::traces::unix_nanos(started),
            duration_ns: started.elapsed().unwrap_or_default().as_nanos() as u64,
            error: false,
            attributes,
            sampled: store.sample_hex(&instance.trace),
        });
    }

    /// A run with its steps.
    pub async fn get(&self, id: &str) -> Result<RunView, WorkflowError> {
        let instance = self
            .inner
            .store
            .get(id)
            .await
            .map_err(WorkflowError::Journal)?
            .ok_or_else(|| WorkflowError::UnknownRun(id.to_string()))?;
        let steps = self
            .inner
            .store
            .steps(id)
            .await
            .map_err(WorkflowError::Journal)?;
        Ok(RunView { instance, steps })
    }

    /// Retries a parked run's failing compensation.
    pub async fn retry(&self, id: &str) -> Result<RunView, WorkflowError> {
        let run = self.get(id).await?;
        if run.instance.state != State::NeedsAttention {
            return Err(WorkflowError::Conflict(format!(
                "run `{id}` is {}; only a run that needs attention can be retried (use `resume --from STEP` to run steps again)",
                run.instance.state.as_str()
            )));
        }
        self.inner
            .store
            .retry(id)
            .await
            .map_err(WorkflowError::Journal)?;
        self.spawn(id);
        self.get(id).await
    }

    /// Runs a stopped run again from a step (needs attention, failed,
    /// compensated or cancelled).
    pub async fn resume(&self, id: &str, from: &str) -> Result<RunView, WorkflowError> {
        let run = self.get(id).await?;
        if run.instance.state.is_active() || run.instance.state == State::Completed {
            return Err(WorkflowError::Conflict(format!(
                "run `{id}` is {}; only a stopped run can be resumed",
                run.instance.state.as_str()
            )));
        }
        let definition = self
            .inner
            .store
            .definition(&run.instance.workflow, run.instance.version)
            .await
            .map_err(WorkflowError::Journal)?
            .ok_or_else(|| WorkflowError::Storage("the run's definition is missing".into()))?;
        let index = definition.step_index(from).ok_or_else(|| {
            let names: Vec<&str> = definition.steps.iter().map(|s| s.name.as_str()).collect();
            WorkflowError::Invalid(format!(
                "workflow `{}` has no step `{from}`; its steps: {}",
                run.instance.workflow,
                names.join(", ")
            ))
        })?;
        // Steps before `from` are kept as they are, so they must have run and
        // must not have been undone by a compensation.
        let done = |idx: usize| {
            run.steps
                .iter()
                .any(|s| s.idx == idx && s.phase == "do" && s.status == "done")
        };
        let first_not_done = (0..definition.steps.len())
            .find(|&i| !done(i))
            .unwrap_or(definition.steps.len());
        let first_undone = run
            .steps
            .iter()
            .filter(|s| s.phase == "undo" && s.status == "done")
            .map(|s| s.idx)
            .min();
        let latest = first_undone.map_or(first_not_done, |u| u.min(first_not_done));
        if index > latest {
            let name = &definition.steps[latest.min(definition.steps.len() - 1)].name;
            return Err(WorkflowError::Invalid(format!(
                "run `{id}` can resume from `{name}` or an earlier step: the steps from there on did not complete or were compensated"
            )));
        }
        self.inner
            .store
            .resume(id, index)
            .await
            .map_err(WorkflowError::Journal)?;
        self.spawn(id);
        self.get(id).await
    }

    /// Cancels a run: a running one compensates what it completed, then ends
    /// `cancelled`; a parked one ends `cancelled` at once. A call in flight is
    /// allowed to finish (so its effect is known and compensated); a `wait`
    /// or `sleep` is interrupted.
    pub async fn cancel(&self, id: &str) -> Result<RunView, WorkflowError> {
        let run = self.get(id).await?;
        match run.instance.state {
            State::Running | State::Waiting | State::Compensating => {
                self.inner
                    .store
                    .request_cancel(id)
                    .await
                    .map_err(WorkflowError::Journal)?;
                if run.instance.state == State::Waiting {
                    let token = self
                        .inner
                        .running
                        .lock()
                        .expect("running lock")
                        .get(id)
                        .cloned();
                    if let Some(token) = token {
                        token.cancel();
                    }
                }
                self.spawn(id);
            }
            State::NeedsAttention => {
                // Not driven by any node, so not a driver's (fenced) write.
                let cancelled = self
                    .inner
                    .store
                    .cancel_parked(id, "cancelled by an operator".into())
                    .await
                    .map_err(WorkflowError::Journal)?;
                if !cancelled {
                    return Err(WorkflowError::Conflict(format!(
                        "run `{id}` changed while it was being cancelled; look at it again"
                    )));
                }
            }
            other => {
                return Err(WorkflowError::Conflict(format!(
                    "run `{id}` already ended ({})",
                    other.as_str()
                )))
            }
        }
        self.get(id).await
    }

    /// Drives a run in the background unless it already is. The driver
    /// starts over when it was interrupted (a cancel during a wait) or the
    /// journal failed, until the run stops or Gantry shuts down. In cluster
    /// mode it drives the run only while it holds the run's lease.
    fn spawn(&self, id: &str) {
        self.spawn_driver(id, None);
    }

    /// [`Engine::spawn`] for a run this node has just created.
    fn spawn_fresh(&self, fresh: engine::Fresh) {
        let id = fresh.run.id.clone();
        self.spawn_driver(&id, Some(fresh));
    }

    fn spawn_driver(&self, id: &str, fresh: Option<engine::Fresh>) {
        {
            let mut running = self.inner.running.lock().expect("running lock");
            if running.contains_key(id) {
                return;
            }
            running.insert(id.to_string(), self.inner.shutdown.child_token());
        }
        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            keep_driving(&inner, &id, fresh).await;
            inner.running.lock().expect("running lock").remove(&id);
        });
    }

    /// Stops driving runs (shutdown); the journal resumes them next time.
    pub async fn stop(&self) {
        self.inner.shutdown.cancel();
        for _ in 0..200 {
            if self.inner.running.lock().expect("running lock").is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// The life of one run's driver on this node: take the lease, drive with the
/// lease renewed alongside, and give it up when the run stops.
async fn keep_driving(inner: &Inner, id: &str, mut fresh: Option<engine::Fresh>) {
    loop {
        match inner.store.acquire(id).await {
            Ok(true) => {}
            // Another node drives it.
            Ok(false) => return,
            Err(error) => {
                // The sweeper tries again in a moment.
                tracing::warn!(target: "gantry::workflows", id, %error, "cannot take the run's lease");
                return;
            }
        }
        let token = {
            let mut running = inner.running.lock().expect("running lock");
            let token = running
                .entry(id.to_string())
                .or_insert_with(|| inner.shutdown.child_token());
            if token.is_cancelled() {
                *token = inner.shutdown.child_token();
            }
            token.clone()
        };
        // What this node created is handed over once; after that the
        // journal says where the run stands.
        let fresh = fresh.take();
        let result = match inner.store.lease() {
            None => Some(engine::drive(inner, id, &token, fresh).await),
            Some(lease) => tokio::select! {
                result = engine::drive(inner, id, &token, fresh) => Some(result),
                () = hold_lease(inner, id, lease, &token) => None,
            },
        };
        let Some(result) = result else {
            // Dropping the driver abandoned any call in flight; the new
            // owner replays it under the same idempotency key.
            tracing::warn!(target: "gantry::workflows", id, "another node took the run over; no longer driving it");
            return;
        };
        if inner.shutdown.is_cancelled() {
            // Let another node take the run over at once, not a lease later.
            release(inner, id).await;
            return;
        }
        match result {
            Err(engine::DriveError::Journal(JournalError::LeaseLost { .. })) => {
                tracing::warn!(target: "gantry::workflows", id, "another node took the run over; no longer driving it");
                return;
            }
            Err(error) => {
                tracing::error!(target: "gantry::workflows", id, %error, "cannot drive the workflow; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Interrupted (a cancel during a wait): go on from the journal.
            Ok(()) if token.is_cancelled() => {}
            Ok(()) => {
                release(inner, id).await;
                return;
            }
        }
    }
}

async fn release(inner: &Inner, id: &str) {
    if let Err(error) = inner.store.release(id).await {
        tracing::warn!(target: "gantry::workflows", id, %error, "cannot give the run's lease up; it lapses instead");
    }
}

/// Renews run `id`'s lease every third of `lease` while it is driven;
/// returns when this node no longer holds it (another node took it, or
/// renewing failed for a whole lease, so another node may have). Also
/// passes on a cancel asked on another node to a run waiting here.
async fn hold_lease(inner: &Inner, id: &str, lease: Duration, token: &CancellationToken) {
    let every = (lease / 3).max(Duration::from_millis(20));
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match inner.store.renew(id).await {
            Ok(Some(renewal)) => {
                renewed = Instant::now();
                if renewal.cancel_requested && renewal.state == State::Waiting {
                    token.cancel();
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(target: "gantry::workflows", id, %error, "cannot renew the run's lease");
                if renewed.elapsed() >= lease {
                    return;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl gantry_events::WorkflowStarter for Engine {
    async fn start_from_event(
        &self,
        workflow: &str,
        id: &str,
        input: Value,
        traceparent: Option<&str>,
    ) -> Result<(), String> {
        match self
            .start(workflow, Some(id.to_string()), input, traceparent)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Steps as operators see them (for `gantry workflows show`).
pub fn describe_steps(steps: &[StepRecord]) -> Value {
    engine::describe(steps)
}
