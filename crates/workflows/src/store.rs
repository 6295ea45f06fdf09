//! The journal: definitions, runs, and every step's attempts, outputs,
//! errors and timers. Every step transition is written here before and
//! after the step runs; a restart (or, in cluster mode, another node)
//! continues from what it says.
//!
//! Two backends behind one API:
//! - [`Store::open`]: `workflows.db` in the data directory (SQLite), for a
//!   single node;
//! - [`Store::postgres`]: the cluster's PostgreSQL, shared by every node.
//!   There each active run is leased to the node driving it (`owner`,
//!   `lease_until`), and the writes a driver makes are fenced: they are
//!   refused with [`JournalError::LeaseLost`] once another node holds the run.

mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::definition::Definition;

/// A workflow run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Waiting,
    Compensating,
    Completed,
    Compensated,
    Failed,
    NeedsAttention,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Waiting => "waiting",
            State::Compensating => "compensating",
            State::Completed => "completed",
            State::Compensated => "compensated",
            State::Failed => "failed",
            State::NeedsAttention => "needs_attention",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        Some(match text {
            "running" => State::Running,
            "waiting" => State::Waiting,
            "compensating" => State::Compensating,
            "completed" => State::Completed,
            "compensated" => State::Compensated,
            "failed" => State::Failed,
            "needs_attention" => State::NeedsAttention,
            "cancelled" => State::Cancelled,
            _ => return None,
        })
    }

    /// The engine drives these; the others wait for an operator or are done.
    pub fn is_active(self) -> bool {
        matches!(self, State::Running | State::Waiting | State::Compensating)
    }
}

/// One workflow run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub input: Value,
    pub state: State,
    /// The next forward step to run.
    pub position: usize,
    /// Bumped when an operator resumes from a step, so the steps run again
    /// under new idempotency keys.
    pub generation: u32,
    pub cancel_requested: bool,
    pub error: Option<String>,
    /// The W3C trace id every step's calls and events belong to.
    pub trace: String,
    /// Per waited topic, the first sequence number a wait considers.
    pub wait_from: BTreeMap<String, u64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A step's (or a compensation's) journal entry.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub idx: usize,
    /// `do` or `undo` (the compensation).
    pub phase: String,
    pub name: String,
    /// `running`, `retrying`, `done` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// A retry, timer or wait deadline, in ms since the epoch (0: none).
    pub not_before_ms: i64,
}

/// What renewing a run's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The run's state now.
    pub state: State,
    /// An operator asked (possibly on another node) to cancel the run.
    pub cancel_requested: bool,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why the journal could not do what was asked. Always Gantry's own
/// failure (its disk, its database, its shutdown), never the caller's;
/// worth retrying later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the workflow journal {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("workflow journal: {0}")]
    Sql(String),
    /// PostgreSQL failed (kept behind an `Arc`: one failure may be answered
    /// to several callers).
    #[error("workflow journal: {0}")]
    Postgres(Arc<gantry_cluster::PgError>),
    /// The journal holds something this Gantry cannot read.
    #[error("workflow journal: {0}")]
    Corrupt(String),
    /// This node no longer holds run `id`'s lease: another node took it
    /// over, so this node must stop driving it and write nothing more.
    #[error("this node no longer holds the lease of workflow run `{id}`; another node drives it")]
    LeaseLost { id: String },
    #[error("the workflow journal has stopped (Gantry is shutting down)")]
    Stopped,
}

impl JournalError {
    // rusqlite's error is not Clone, and one commit's failure is answered to
    // every job of its batch: keep its message.
    fn sql(error: rusqlite::Error) -> JournalError {
        JournalError::Sql(error.to_string())
    }
}

impl From<gantry_cluster::PgError> for JournalError {
    fn from(error: gantry_cluster::PgError) -> JournalError {
        JournalError::Postgres(Arc::new(error))
    }
}

type Result<T> = std::result::Result<T, JournalError>;

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    /// Shared: the pool and options are large, and clones are frequent.
    Postgres(Arc<postgres::Pg>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

/// Calls the same method on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(store) => store.$method($($arg),*).await,
            Backend::Postgres(store) => store.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// The embedded journal: `workflows.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::Sqlite::open(data_dir)?),
        })
    }

    /// The cluster's journal in PostgreSQL, its tables brought up to date.
    /// `holder` names this process (see `gantry_cluster::Cluster::holder`);
    /// runs it drives are leased to it for `lease` at a time.
    pub async fn postgres(
        pg: &gantry_cluster::Postgres,
        holder: &str,
        lease: Duration,
    ) -> Result<Store> {
        Ok(Store {
            backend: Backend::Postgres(Arc::new(postgres::Pg::open(pg, holder, lease).await?)),
        })
    }

    /// How long a run's lease lasts, in cluster mode; `None` for the
    /// embedded journal, where this process is the only driver.
    pub fn lease(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store.lease()),
        }
    }

    /// Stores `definition` as a new version unless the latest one has the
    /// same steps; returns it with its version.
    pub async fn register(&self, definition: Definition) -> Result<Definition> {
        dispatch!(self.register(definition))
    }

    pub async fn definition(&self, workflow: &str, version: u32) -> Result<Option<Definition>> {
        dispatch!(self.definition(workflow, version))
    }

    /// Creates a run unless one with this id exists; returns the run and
    /// whether it was created. In cluster mode this node takes the new
    /// run's lease with it.
    pub async fn create(&self, instance: Run) -> Result<(Run, bool)> {
        self.create_starting(instance, None).await
    }

    /// [`Store::create`], journaling with the run (when it is new) that the
    /// first attempt of its step 0, named `first`, is starting: what
    /// [`Store::attempt_started`] would write next, without a write of its
    /// own.
    pub async fn create_starting(&self, instance: Run, first: Option<&str>) -> Result<(Run, bool)> {
        dispatch!(self.create(instance, first))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Run>> {
        dispatch!(self.get(id))
    }

    /// Whether an operator asked to cancel run `id` (false for no such run).
    /// A driver asks before each step; in cluster mode the answer comes from
    /// the driver's own last write when there is one.
    pub async fn cancel_requested(&self, id: &str) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(store) => {
                Ok(store.get(id).await?.is_some_and(|run| run.cancel_requested))
            }
            Backend::Postgres(store) => store.cancel_requested(id).await,
        }
    }

    /// Runs, newest first.
    pub async fn list(
        &self,
        state: Option<State>,
        workflow: Option<String>,
        limit: usize,
    ) -> Result<Vec<Run>> {
        dispatch!(self.list(state, workflow, limit))
    }

    /// How many runs of each workflow are in each unfinished state
    /// (running, waiting, compensating, needs_attention).
    pub async fn open_counts(&self) -> Result<Vec<(String, String, u64)>> {
        dispatch!(self.open_counts())
    }

    /// Every run the engine must drive (after a restart), oldest first.
    pub async fn active(&self) -> Result<Vec<String>> {
        dispatch!(self.active())
    }

    pub async fn steps(&self, id: &str) -> Result<Vec<StepRecord>> {
        dispatch!(self.steps(id))
    }

    /// Moves the run to `state` (a driver's write: fenced in cluster mode).
    /// A run that ends or parks here gives its lease up with this write.
    pub async fn set_state(&self, id: &str, state: State, error: Option<String>) -> Result<()> {
        dispatch!(self.set_state(id, state, error))
    }

    /// Records that an attempt is about to run (before its side effect).
    pub async fn attempt_started(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        name: &str,
        attempts: u32,
        not_before_ms: i64,
    ) -> Result<()> {
        dispatch!(self.attempt_started(id, idx, phase, name, attempts, not_before_ms))
    }

    /// An attempt failed; the next may run at `not_before_ms`.
    pub async fn attempt_failed(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: &str,
        not_before_ms: i64,
    ) -> Result<()> {
        dispatch!(self.attempt_failed(id, idx, phase, error, not_before_ms))
    }

    /// The step finished: `done` with its output, or `failed` for good.
    pub async fn finish(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        outcome: std::result::Result<Value, String>,
    ) -> Result<()> {
        dispatch!(self.finish(id, idx, phase, outcome))
    }

    /// A forward step succeeded: its output, the next position and the run's
    /// `state`, and (with `next`, the following step's name) that the first
    /// attempt of the following step is starting, in one write (one fsync
    /// per step transition).
    ///
    /// Unless an operator has asked to cancel the run: then only the output
    /// and position are written, the run keeps its state for its driver to
    /// compensate, and this answers true. A run that ends here (`state` is
    /// not active) gives its lease up with this write, in cluster mode.
    pub async fn complete_step(
        &self,
        id: &str,
        idx: usize,
        output: Value,
        state: State,
        next: Option<&str>,
    ) -> Result<bool> {
        dispatch!(self.complete_step(id, idx, output, state, next))
    }

    /// A step (or compensation) failed for good, and the run moves to
    /// `state` with `run_error`: one transaction, so a crash cannot leave a
    /// failed step in a run that would try it again. A run that parks or
    /// ends here gives its lease up with this write, in cluster mode.
    pub async fn fail_step(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: String,
        state: State,
        run_error: String,
    ) -> Result<()> {
        dispatch!(self.fail_step(id, idx, phase, error, state, run_error))
    }

    /// An operator retries a parked run: its failed compensation starts over.
    pub async fn retry(&self, id: &str) -> Result<()> {
        dispatch!(self.retry(id))
    }

    /// An operator resumes a run from a step: it and the steps after it run
    /// again (under a new generation of idempotency keys).
    pub async fn resume(&self, id: &str, from: usize) -> Result<()> {
        dispatch!(self.resume(id, from))
    }

    pub async fn request_cancel(&self, id: &str) -> Result<()> {
        dispatch!(self.request_cancel(id))
    }

    /// An operator cancels a parked run: `needs_attention` becomes
    /// `cancelled`. False when the run was not parked (any more).
    pub async fn cancel_parked(&self, id: &str, error: String) -> Result<bool> {
        dispatch!(self.cancel_parked(id, error))
    }

    /// Takes (or keeps) run `id`'s lease for this node: true when this node
    /// may drive it. Always true for the embedded journal.
    pub async fn acquire(&self, id: &str) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(store) => store.acquire(id).await,
        }
    }

    /// Extends run `id`'s lease while this node drives it; `None` when
    /// another node holds it now (or the run is gone).
    pub async fn renew(&self, id: &str) -> Result<Option<Renewal>> {
        match &self.backend {
            Backend::Sqlite(store) => Ok(store.get(id).await?.map(|run| Renewal {
                state: run.state,
                cancel_requested: run.cancel_requested,
            })),
            Backend::Postgres(store) => store.renew(id).await,
        }
    }

    /// Gives run `id`'s lease up (it ended, parked, or this node stops), so
    /// another node may drive it at once.
    pub async fn release(&self, id: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.release(id).await,
        }
    }

    /// Active runs no node holds: never picked up, or their driver's lease
    /// lapsed (it died). Empty for the embedded journal.
    pub async fn orphans(&self, limit: usize) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(store) => store.orphans(limit).await,
        }
    }
}
