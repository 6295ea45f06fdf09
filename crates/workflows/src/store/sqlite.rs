//! The embedded journal: `workflows.db` in the data directory (SQLite, WAL,
//! `synchronous = FULL`), for a single node.
//!
//! One thread owns the connection. It takes every operation that is waiting
//! and runs them in one transaction (each multi-statement operation in its
//! own savepoint), then commits once: concurrent runs share an fsync, as in
//! the event store.

use std::path::Path;

use gantry_cluster::migrate::Migrations;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, JournalError, Result, Run, State, StepRecord};
use crate::definition::Definition;

/// Operations that may share one commit.
const MAX_BATCH: usize = 512;

/// Runs after the transaction that held the job commits (or fails to).
type Finish = Box<dyn FnOnce(std::result::Result<(), JournalError>) + Send>;
/// A unit of work for the writer thread.
type Job = Box<dyn FnOnce(&mut Connection) -> Finish + Send>;

/// Migration 1 is the schema from before versions were kept, verbatim, so
/// older files upgrade cleanly.
pub(super) const MIGRATIONS: Migrations = Migrations {
    store: "workflows",
    steps: &["
CREATE TABLE IF NOT EXISTS definitions (
    workflow TEXT NOT NULL,
    version INTEGER NOT NULL,
    json TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (workflow, version)
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version INTEGER NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    trace TEXT NOT NULL,
    wait_from TEXT NOT NULL DEFAULT '{}',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_state ON instances (state);
CREATE TABLE IF NOT EXISTS steps (
    instance TEXT NOT NULL,
    idx INTEGER NOT NULL,
    phase TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    started_ms INTEGER,
    finished_ms INTEGER,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (instance, idx, phase)
);
"],
};

/// The SQLite journal: a handle on its writer thread.
#[derive(Clone)]
pub(super) struct Sqlite {
    jobs: mpsc::Sender<Job>,
}

/// The writer thread: group commits until every sender is gone.
fn run_writer(mut conn: Connection, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        // A job that runs with no batch transaction around it (BEGIN failed,
        // or an error made SQLite roll the batch back) committed on its own.
        let finishes: Vec<(bool, Finish)> = batch
            .into_iter()
            .map(|job| (conn.is_autocommit(), job(&mut conn)))
            .collect();
        let committed = begun
            .and_then(|_| conn.execute_batch("COMMIT"))
            .map_err(JournalError::sql);
        if committed.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for (alone, finish) in finishes {
            finish(if alone { Ok(()) } else { committed.clone() });
        }
    }
}

impl Sqlite {
    pub(super) fn open(data_dir: &Path) -> Result<Sqlite> {
        let path = data_dir.join("workflows.db");
        let open_failed = |reason: String| JournalError::Open {
            path: path.display().to_string(),
            reason,
        };
        let mut conn = Connection::open(&path).map_err(|e| open_failed(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| open_failed(e.to_string()))?;
        gantry_cluster::migrate::sqlite(&mut conn, &MIGRATIONS)
            .map_err(|e| open_failed(e.to_string()))?;
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("gantry-workflows-db".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| open_failed(format!("cannot start its thread: {e}")))?;
        Ok(Sqlite { jobs })
    }

    /// Runs `work` on the writer thread; resolves once it is committed.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let outcome = work(conn).map_err(JournalError::sql);
            Box::new(move |committed: std::result::Result<(), JournalError>| {
                let _ = reply.send(committed.and(outcome));
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| JournalError::Stopped)?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Stores `definition` as a new version unless the latest one has the
    /// same steps; returns it with its version.
    pub(super) async fn register(&self, definition: Definition) -> Result<Definition> {
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            let latest: Option<(u32, String)> = tx
                .query_row(
                    "SELECT version, json FROM definitions WHERE workflow = ?1 ORDER BY version DESC LIMIT 1",
                    [&definition.workflow],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((version, json)) = &latest {
                if let Ok(stored) = serde_json::from_str::<Definition>(json) {
                    if stored.same_steps(&definition) {
                        return Ok(Definition { version: *version, ..definition });
                    }
                }
            }
            let version = latest.map_or(1, |(v, _)| v + 1);
            let definition = Definition { version, ..definition };
            tx.execute(
                "INSERT INTO definitions (workflow, version, json, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    definition.workflow,
                    version,
                    serde_json::to_string(&definition).expect("definitions serialize"),
                    now_ms()
                ],
            )?;
            tx.commit()?;
            Ok(definition)
        })
        .await
    }

    pub(super) async fn definition(
        &self,
        workflow: &str,
        version: u32,
    ) -> Result<Option<Definition>> {
        let workflow = workflow.to_string();
        self.with(move |conn| {
            let json: Option<String> = conn
                .query_row(
                    "SELECT json FROM definitions WHERE workflow = ?1 AND version = ?2",
                    params![workflow, version],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
        })
        .await
    }

    /// Creates a run unless one with this id exists; returns the run and
    /// whether it was created. With `first`, step 0's first attempt starts
    /// with it.
    pub(super) async fn create(&self, instance: Run, first: Option<&str>) -> Result<(Run, bool)> {
        let first = first.map(str::to_string);
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(existing) = load(&tx, &instance.id)? {
                return Ok((existing, false));
            }
            tx.execute(
                "INSERT INTO instances (id, workflow, version, input, state, trace, wait_from, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    instance.id,
                    instance.workflow,
                    instance.version,
                    instance.input.to_string(),
                    instance.state.as_str(),
                    instance.trace,
                    serde_json::to_string(&instance.wait_from).expect("a map serializes"),
                    instance.created_ms,
                ],
            )?;
            if let Some(first) = first {
                start_first_attempt(&tx, &instance.id, 0, &first, instance.created_ms)?;
            }
            tx.commit()?;
            Ok((instance, true))
        })
        .await
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<Run>> {
        let id = id.to_string();
        self.with(move |conn| load(conn, &id)).await
    }

    /// Runs, newest first.
    pub(super) async fn list(
        &self,
        state: Option<State>,
        workflow: Option<String>,
        limit: usize,
    ) -> Result<Vec<Run>> {
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT id FROM instances WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR workflow = ?2)
                 ORDER BY created_ms DESC, id LIMIT ?3",
            )?;
            let ids: Vec<String> = statement
                .query_map(
                    params![state.map(State::as_str), workflow, limit as i64],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(load(conn, &id)?);
            }
            Ok(out)
        })
        .await
    }

    /// How many runs of each workflow are in each unfinished state
    /// (running, waiting, compensating, needs_attention).
    pub(super) async fn open_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.with(|conn| {
            conn.prepare(
                "SELECT workflow, state, COUNT(*) FROM instances
                 WHERE state IN ('running', 'waiting', 'compensating', 'needs_attention')
                 GROUP BY workflow, state",
            )?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect()
        })
        .await
    }

    /// Every run the engine must drive (after a restart).
    pub(super) async fn active(&self) -> Result<Vec<String>> {
        self.with(|conn| {
            conn.prepare(
                "SELECT id FROM instances WHERE state IN ('running', 'waiting', 'compensating') ORDER BY created_ms",
            )?
            .query_map([], |r| r.get(0))?
            .collect()
        })
        .await
    }

    pub(super) async fn steps(&self, id: &str) -> Result<Vec<StepRecord>> {
        let id = id.to_string();
        self.with(move |conn| steps(conn, &id)).await
    }

    pub(super) async fn set_state(
        &self,
        id: &str,
        state: State,
        error: Option<String>,
    ) -> Result<()> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE instances SET state = ?2, error = COALESCE(?3, error), updated_ms = ?4 WHERE id = ?1",
                params![id, state.as_str(), error, now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Records that an attempt is about to run (before its side effect).
    pub(super) async fn attempt_started(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        name: &str,
        attempts: u32,
        not_before_ms: i64,
    ) -> Result<()> {
        let (id, phase, name) = (id.to_string(), phase.to_string(), name.to_string());
        self.with(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT INTO steps (instance, idx, phase, name, status, attempts, started_ms, not_before_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)
                 ON CONFLICT DO UPDATE SET status = 'running', attempts = excluded.attempts,
                    started_ms = COALESCE(steps.started_ms, excluded.started_ms),
                    not_before_ms = excluded.not_before_ms, finished_ms = NULL",
                params![id, idx as i64, phase, name, attempts, now, not_before_ms],
            )
            .map(|_| ())
        })
        .await
    }

    /// An attempt failed; the next may run at `not_before_ms`.
    pub(super) async fn attempt_failed(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: &str,
        not_before_ms: i64,
    ) -> Result<()> {
        let (id, phase, error) = (id.to_string(), phase.to_string(), error.to_string());
        self.with(move |conn| {
            conn.execute(
                "UPDATE steps SET status = 'retrying', error = ?4, not_before_ms = ?5
                 WHERE instance = ?1 AND idx = ?2 AND phase = ?3",
                params![id, idx as i64, phase, error, not_before_ms],
            )
            .map(|_| ())
        })
        .await
    }

    /// The step finished: `done` with its output, or `failed` for good.
    pub(super) async fn finish(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        outcome: std::result::Result<Value, String>,
    ) -> Result<()> {
        let (id, phase) = (id.to_string(), phase.to_string());
        self.with(move |conn| {
            let (status, output, error) = match outcome {
                Ok(output) => ("done", Some(output.to_string()), None),
                Err(error) => ("failed", None, Some(error)),
            };
            conn.execute(
                "UPDATE steps SET status = ?4, output = ?5, error = COALESCE(?6, error), finished_ms = ?7
                 WHERE instance = ?1 AND idx = ?2 AND phase = ?3",
                params![id, idx as i64, phase, status, output, error, now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    /// A forward step succeeded: its output, the next position and the run's
    /// state, in one transaction (one fsync per step transition).
    pub(super) async fn complete_step(
        &self,
        id: &str,
        idx: usize,
        output: Value,
        state: State,
        next: Option<&str>,
    ) -> Result<bool> {
        let (id, next) = (id.to_string(), next.map(str::to_string));
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            let now = now_ms();
            let cancel_requested: bool = tx
                .query_row(
                    "SELECT cancel_requested FROM instances WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            tx.execute(
                "UPDATE steps SET status = 'done', output = ?3, finished_ms = ?4
                 WHERE instance = ?1 AND idx = ?2 AND phase = 'do'",
                params![id, idx as i64, output.to_string(), now],
            )?;
            // A run to be cancelled keeps its state, for its driver to
            // compensate, and starts nothing more.
            tx.execute(
                "UPDATE instances SET position = ?2, state = CASE WHEN ?5 THEN state ELSE ?3 END,
                    updated_ms = ?4 WHERE id = ?1",
                params![id, idx as i64 + 1, state.as_str(), now, cancel_requested],
            )?;
            if let Some(next) = next.filter(|_| !cancel_requested) {
                start_first_attempt(&tx, &id, idx + 1, &next, now)?;
            }
            tx.commit()?;
            Ok(cancel_requested)
        })
        .await
    }

    /// A step (or compensation) failed for good, and the run moves to
    /// `state` with `run_error`: one transaction, so a crash cannot leave a
    /// failed step in a run that would try it again.
    pub(super) async fn fail_step(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: String,
        state: State,
        run_error: String,
    ) -> Result<()> {
        let (id, phase) = (id.to_string(), phase.to_string());
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            let now = now_ms();
            tx.execute(
                "UPDATE steps SET status = 'failed', error = ?4, finished_ms = ?5
                 WHERE instance = ?1 AND idx = ?2 AND phase = ?3",
                params![id, idx as i64, phase, error, now],
            )?;
            tx.execute(
                "UPDATE instances SET state = ?2, error = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, state.as_str(), run_error, now],
            )?;
            tx.commit()
        })
        .await
    }

    /// An operator retries a parked run: its failed compensation starts over.
    pub(super) async fn retry(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            tx.execute(
                "DELETE FROM steps WHERE instance = ?1 AND phase = 'undo' AND status != 'done'",
                [&id],
            )?;
            tx.execute(
                "UPDATE instances SET state = 'compensating', updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            tx.commit()
        })
        .await
    }

    /// An operator resumes a run from a step: it and the steps after it run
    /// again (under a new generation of idempotency keys).
    pub(super) async fn resume(&self, id: &str, from: usize) -> Result<()> {
        let id = id.to_string();
        self.with(move |conn| {
            let tx = conn.savepoint()?;
            tx.execute(
                "DELETE FROM steps WHERE instance = ?1 AND (phase = 'undo' OR idx >= ?2)",
                params![id, from as i64],
            )?;
            tx.execute(
                "UPDATE instances SET state = 'running', position = ?2, generation = generation + 1,
                    cancel_requested = 0, error = NULL, updated_ms = ?3 WHERE id = ?1",
                params![id, from as i64, now_ms()],
            )?;
            tx.commit()
        })
        .await
    }

    pub(super) async fn request_cancel(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE instances SET cancel_requested = 1, updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    pub(super) async fn cancel_parked(&self, id: &str, error: String) -> Result<bool> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE instances SET state = 'cancelled', error = ?2, updated_ms = ?3
                 WHERE id = ?1 AND state = 'needs_attention'",
                params![id, error, now_ms()],
            )
            .map(|n| n == 1)
        })
        .await
    }
}

/// Journals that the first attempt of forward step `idx` starts (what
/// `attempt_started` writes for attempt 1), within a larger write.
fn start_first_attempt(
    conn: &Connection,
    id: &str,
    idx: usize,
    name: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO steps (instance, idx, phase, name, status, attempts, started_ms, not_before_ms)
         VALUES (?1, ?2, 'do', ?3, 'running', 1, ?4, 0)",
        params![id, idx as i64, name, now],
    )
    .map(|_| ())
}

fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        "SELECT id, workflow, version, input, state, position, generation, cancel_requested, error,
                trace, wait_from, created_ms, updated_ms
         FROM instances WHERE id = ?1",
        [id],
        |r| {
            Ok(Run {
                id: r.get(0)?,
                workflow: r.get(1)?,
                version: r.get(2)?,
                input: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Null),
                state: State::parse(&r.get::<_, String>(4)?).unwrap_or(State::Failed),
                position: r.get::<_, i64>(5)? as usize,
                generation: r.get(6)?,
                cancel_requested: r.get(7)?,
                error: r.get(8)?,
                trace: r.get(9)?,
                wait_from: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
                created_ms: r.get(11)?,
                updated_ms: r.get(12)?,
            })
        },
    )
    .optional()
}

fn steps(conn: &Connection, id: &str) -> rusqlite::Result<Vec<StepRecord>> {
    conn.prepare(
        "SELECT idx, phase, name, status, attempts, output, error, started_ms, finished_ms, not_before_ms
         FROM steps WHERE instance = ?1 ORDER BY COALESCE(started_ms, 0), idx, phase",
    )?
    .query_map([id], |r| {
        Ok(StepRecord {
            idx: r.get::<_, i64>(0)? as usize,
            phase: r.get(1)?,
            name: r.get(2)?,
            status: r.get(3)?,
            attempts: r.get(4)?,
            output: r
                .get::<_, Option<String>>(5)?
                .and_then(|s| serde_json::from_str(&s).ok()),
            error: r.get(6)?,
            started_ms: r.get(7)?,
            finished_ms: r.get(8)?,
            not_before_ms: r.get(9)?,
        })
    })?
    .collect()
}
