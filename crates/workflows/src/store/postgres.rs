//! The cluster's journal: the same tables in the cluster's PostgreSQL
//! (prefixed `wf_`, as the schema is shared with the other stores), plus
//! each run's lease.
//!
//! A run is driven by the node whose `holder` is its `owner`, until
//! `lease_until` (the database's clock, never a node's: nodes' clocks may
//! disagree). A driver's writes lock the run's row and check the owner in
//! the same transaction, so once another node has taken a run over, a
//! paused-then-resumed old driver cannot write over the new one's
//! progress: its writes are refused with [`JournalError::LeaseLost`].
//!
//! Each such write (and each run's creation and lease taken or given up) is
//! one statement. Two writer tasks per node gather the writes of every run
//! in flight and commit each gathering in one
//! transaction (group commit, as the embedded journal does): one WAL flush
//! for many runs' steps instead of one each, with every write durable
//! before its driver moves on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use serde_json::Value;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{GenericClient, Row, Transaction};

use tokio::sync::{mpsc, oneshot};

use super::{now_ms, JournalError, Renewal, Result, Run, State, StepRecord};
use crate::definition::Definition;

pub(super) const MIGRATIONS: Migrations = Migrations {
    store: "workflows",
    steps: &["CREATE TABLE wf_definitions (
            workflow TEXT NOT NULL,
            version INTEGER NOT NULL,
            json JSONB NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (workflow, version));
        CREATE TABLE wf_runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            version INTEGER NOT NULL,
            input JSONB NOT NULL,
            state TEXT NOT NULL,
            position INTEGER NOT NULL DEFAULT 0,
            generation INTEGER NOT NULL DEFAULT 0,
            cancel_requested BOOLEAN NOT NULL DEFAULT false,
            error TEXT,
            trace TEXT NOT NULL,
            wait_from JSONB NOT NULL DEFAULT '{}',
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            owner TEXT,
            lease_until TIMESTAMPTZ);
        CREATE INDEX wf_runs_by_state ON wf_runs (state);
        CREATE INDEX wf_runs_by_created ON wf_runs (created_ms DESC, id);
        CREATE INDEX wf_runs_active ON wf_runs (lease_until)
            WHERE state IN ('running', 'waiting', 'compensating');
        CREATE TABLE wf_steps (
            instance TEXT NOT NULL REFERENCES wf_runs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            phase TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            output JSONB,
            error TEXT,
            started_ms BIGINT,
            finished_ms BIGINT,
            not_before_ms BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (instance, idx, phase));"],
};

/// A fenced write's statement ([`Pg::fenced`]): `$1` is the run, `$2` this
/// node; the writes follow as CTEs that use `run` (the run's id and, as of
/// the lock, whether an operator asked to cancel it).
macro_rules! fenced_sql {
    ($($writes:literal),+ $(,)?) => {
        concat!(
            "WITH run AS MATERIALIZED (SELECT id, cancel_requested FROM wf_runs
                WHERE id = $1 AND owner = $2 FOR UPDATE)",
            $(", ", $writes,)+
            " SELECT EXISTS (SELECT 1 FROM run),
                     COALESCE((SELECT cancel_requested FROM run), false)"
        )
    };
}

/// What a node knows of a run it drives, from its own latest write.
#[derive(Debug, Clone, Copy, Default)]
struct Driven {
    /// Created here a moment ago, with this node's lease: the driver's first
    /// `acquire` needs no statement.
    created: bool,
    /// Whether an operator asked to cancel it, as of this node's last write.
    cancel_requested: bool,
    /// It ended or parked, and its lease was given up with that write: the
    /// driver's `release` needs no statement.
    released: bool,
}

/// Whether a fenced write gives the run's lease up (the run ends or parks).
#[derive(Debug, Clone, Copy)]
enum Releases {
    No,
    Yes,
    /// Yes, unless an operator asked to cancel the run: the write then
    /// leaves it to its driver.
    UnlessCancelling,
}

impl Releases {
    fn when_ending(state: State) -> Releases {
        if state.is_active() {
            Releases::No
        } else {
            Releases::Yes
        }
    }
}

/// A fenced write's parameters, owned: the write waits in a queue.
type Param = Box<dyn ToSql + Send + Sync>;

macro_rules! params {
    ($($value:expr),* $(,)?) => {
        vec![$(Box::new($value) as Param),*]
    };
}

/// Fenced writes a writer commits together at most.
const BATCH: usize = 128;
/// Writers per node: while one commits, the next gathers its batch.
const WRITERS: usize = 4;

/// A journal write waiting for a writer: one statement answering one
/// boolean (for a fenced write, whether the run was this node's).
struct Write {
    sql: &'static str,
    context: &'static str,
    params: Vec<Param>,
    /// The statement's answer: whether it applied (for a fenced write, the
    /// run was this node's) and, where it says, whether the run is to be
    /// cancelled.
    done: oneshot::Sender<Result<(bool, bool)>>,
}

/// The columns [`run_from`] reads, in its order.
const RUN_COLUMNS: &str = "id, workflow, version, input::text, state, position, generation,
    cancel_requested, error, trace, wait_from::text, created_ms, updated_ms";

const ACTIVE: &str = "('running', 'waiting', 'compensating')";

/// The PostgreSQL journal of one node. Cheap to clone.
#[derive(Clone)]
pub(super) struct Pg {
    pg: Postgres,
    /// To the journal's writers ([`writer`]).
    writes: mpsc::Sender<Write>,
    /// Definitions read so far, by workflow and version.
    definitions: Arc<Mutex<HashMap<(String, u32), Definition>>>,
    /// What this node learnt of the runs it drives, so a driver need not ask
    /// again ([`Driven`]).
    driven: Arc<Mutex<HashMap<String, Driven>>>,
    /// This process (`node/incarnation`): the owner it writes on runs.
    holder: String,
    lease: Duration,
}

impl Pg {
    pub(super) async fn open(pg: &Postgres, holder: &str, lease: Duration) -> Result<Pg> {
        gantry_cluster::migrate::postgres(pg, &MIGRATIONS).await?;
        let (writes, queue) = mpsc::channel(4 * BATCH);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..WRITERS {
            tokio::spawn(writer(pg.clone(), queue.clone()));
        }
        Ok(Pg {
            writes,
            pg: pg.clone(),
            definitions: Arc::default(),
            driven: Arc::default(),
            holder: holder.to_string(),
            lease,
        })
    }

    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// One write of a driver to run `id`, as a single statement: CTE `run`
    /// locks the run's row only if this node owns it, the `writes` (more
    /// CTEs) touch only rows of a run found there, and the statement says
    /// whether it was, and whether the run is to be cancelled. `releases`
    /// says whether the statement gives the lease up. A node taking the run
    /// over waits for the lock, and a
    /// write waiting behind a takeover finds the new owner, so no write of
    /// the old owner can land after a takeover: it is refused with
    /// [`JournalError::LeaseLost`]. The write goes through the journal's
    /// writers ([`writer`]), which commit the writes of many runs together.
    async fn fenced(
        &self,
        id: &str,
        context: &'static str,
        sql: &'static str,
        params: Vec<Param>,
        releases: Releases,
    ) -> Result<bool> {
        let (held, cancel_requested) = self.write(context, sql, params).await?;
        let mut driven = self.driven.lock().unwrap_or_else(|e| e.into_inner());
        if held {
            let run = driven.entry(id.to_string()).or_default();
            run.cancel_requested = cancel_requested;
            run.released = match releases {
                Releases::No => false,
                Releases::Yes => true,
                Releases::UnlessCancelling => !cancel_requested,
            };
            // A lease given up must be taken again, whoever created the run.
            run.created &= !run.released;
            Ok(cancel_requested)
        } else {
            driven.remove(id);
            Err(JournalError::LeaseLost { id: id.to_string() })
        }
    }

    /// Hands a write (one statement answering a boolean, and optionally a
    /// second) to the journal's writers and waits until it is committed.
    async fn write(
        &self,
        context: &'static str,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<(bool, bool)> {
        let (done, outcome) = oneshot::channel();
        self.writes
            .send(Write {
                sql,
                context,
                params,
                done,
            })
            .await
            .map_err(|_| JournalError::Corrupt("the journal's writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| JournalError::Corrupt("the journal's writer has stopped".into()))?
    }

    /// Whether an operator asked to cancel run `id`: as of this node's last
    /// write to it (which read it), else read now.
    pub(super) async fn cancel_requested(&self, id: &str) -> Result<bool> {
        if let Some(driven) = self
            .driven
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(driven.cancel_requested);
        }
        Ok(self.get(id).await?.is_some_and(|run| run.cancel_requested))
    }

    pub(super) async fn register(&self, definition: Definition) -> Result<Definition> {
        let mut client = self.pg.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("registering a workflow"))?;
        // Nodes starting together register the same workflow at once: one
        // at a time, so they agree on its version.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('gantry-workflows:' || $1::text))",
            &[&definition.workflow],
        )
        .await
        .map_err(PgError::query("locking a workflow's versions"))?;
        let latest = tx
            .query_opt(
                "SELECT version, json::text FROM wf_definitions WHERE workflow = $1
                 ORDER BY version DESC LIMIT 1",
                &[&definition.workflow],
            )
            .await
            .map_err(PgError::query("reading a workflow's versions"))?;
        let mut version = 1;
        if let Some(row) = latest {
            let stored_version = to_u32(get::<i32>(&row, 0)?, "version")?;
            if let Ok(stored) = serde_json::from_str::<Definition>(&get::<String>(&row, 1)?) {
                if stored.same_steps(&definition) {
                    return Ok(Definition {
                        version: stored_version,
                        ..definition
                    });
                }
            }
            version = stored_version + 1;
        }
        let definition = Definition {
            version,
            ..definition
        };
        let json = serde_json::to_string(&definition)
            .map_err(|e| JournalError::Corrupt(format!("a definition: {e}")))?;
        tx.execute(
            "INSERT INTO wf_definitions (workflow, version, json, created_ms)
             VALUES ($1, $2, $3::text::jsonb, $4)",
            &[&definition.workflow, &to_i32(version)?, &json, &now_ms()],
        )
        .await
        .map_err(PgError::query("storing a workflow definition"))?;
        tx.commit()
            .await
            .map_err(PgError::query("storing a workflow definition"))?;
        Ok(definition)
    }

    /// A stored definition. A version never changes once stored, so each is
    /// read from the database once per node.
    pub(super) async fn definition(
        &self,
        workflow: &str,
        version: u32,
    ) -> Result<Option<Definition>> {
        let key = (workflow.to_string(), version);
        if let Some(known) = self
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(known.clone()));
        }
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "SELECT json::text FROM wf_definitions WHERE workflow = $1 AND version = $2",
                &[&workflow, &to_i32(version)?],
            )
            .await
            .map_err(PgError::query("reading a workflow definition"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let definition: Option<Definition> = serde_json::from_str(&get::<String>(&row, 0)?).ok();
        if let Some(definition) = &definition {
            self.definitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, definition.clone());
        }
        Ok(definition)
    }

    pub(super) async fn create(&self, instance: Run, first: Option<&str>) -> Result<(Run, bool)> {
        let input = instance.input.to_string();
        let wait_from = serde_json::to_string(&instance.wait_from)
            .map_err(|e| JournalError::Corrupt(format!("a run's wait positions: {e}")))?;
        // With `first` ($11), step 0's first attempt starts with the run.
        const SQL: &str = "WITH w AS (
                INSERT INTO wf_runs (id, workflow, version, input, state, trace, wait_from,
                    created_ms, updated_ms, owner, lease_until)
                VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7::text::jsonb, $8, $8, $9,
                    now() + $10::BIGINT * interval '1 millisecond')
                ON CONFLICT (id) DO NOTHING RETURNING id),
            first AS (
                INSERT INTO wf_steps (instance, idx, phase, name, status, attempts, started_ms)
                SELECT id, 0, 'do', $11, 'running', 1, $8 FROM w WHERE $11::text IS NOT NULL)
            SELECT EXISTS (SELECT 1 FROM w)";
        let (inserted, _) = self
            .write(
                "creating a workflow run",
                SQL,
                params![
                    instance.id.clone(),
                    instance.workflow.clone(),
                    to_i32(instance.version)?,
                    input,
                    instance.state.as_str(),
                    instance.trace.clone(),
                    wait_from,
                    instance.created_ms,
                    self.holder.clone(),
                    self.lease_ms(),
                    first.map(str::to_string),
                ],
            )
            .await?;
        if inserted {
            self.driven
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    instance.id.clone(),
                    Driven {
                        created: true,
                        ..Driven::default()
                    },
                );
            return Ok((instance, true));
        }
        match self.get(&instance.id).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(JournalError::Corrupt(format!(
                "run `{}` exists and does not",
                instance.id
            ))),
        }
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<Run>> {
        let client = self.pg.client().await?;
        let select = client
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM wf_runs WHERE id = $1"))
            .await
            .map_err(PgError::query("reading a workflow run"))?;
        let row = client
            .query_opt(&select, &[&id])
            .await
            .map_err(PgError::query("reading a workflow run"))?;
        row.as_ref().map(run_from).transpose()
    }

    pub(super) async fn list(
        &self,
        state: Option<State>,
        workflow: Option<String>,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let client = self.pg.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM wf_runs
                     WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR workflow = $2)
                     ORDER BY created_ms DESC, id LIMIT $3"
                ),
                &[&state.map(State::as_str), &workflow, &limit],
            )
            .await
            .map_err(PgError::query("listing workflow runs"))?;
        rows.iter().map(run_from).collect()
    }

    pub(super) async fn open_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                "SELECT workflow, state, COUNT(*) FROM wf_runs
                 WHERE state IN ('running', 'waiting', 'compensating', 'needs_attention')
                 GROUP BY workflow, state",
                &[],
            )
            .await
            .map_err(PgError::query("counting workflow runs"))?;
        rows.iter()
            .map(|row| {
                let count: i64 = get(row, 2)?;
                Ok((get(row, 0)?, get(row, 1)?, count.max(0) as u64))
            })
            .collect()
    }

    pub(super) async fn active(&self) -> Result<Vec<String>> {
        let client = self.pg.client().await?;
        let rows = client
            .query(
                &format!("SELECT id FROM wf_runs WHERE state IN {ACTIVE} ORDER BY created_ms"),
                &[],
            )
            .await
            .map_err(PgError::query("listing active workflow runs"))?;
        rows.iter().map(|row| get(row, 0)).collect()
    }

    pub(super) async fn steps(&self, id: &str) -> Result<Vec<StepRecord>> {
        let client = self.pg.client().await?;
        let select = client
            .prepare_cached(
                "SELECT idx, phase, name, status, attempts, output::text, error, started_ms,
                        finished_ms, not_before_ms
                 FROM wf_steps WHERE instance = $1
                 ORDER BY COALESCE(started_ms, 0), idx, phase COLLATE \"C\"",
            )
            .await
            .map_err(PgError::query("reading a run's steps"))?;
        let rows = client
            .query(&select, &[&id])
            .await
            .map_err(PgError::query("reading a run's steps"))?;
        rows.iter()
            .map(|row| {
                Ok(StepRecord {
                    idx: to_usize(get(row, 0)?, "idx")?,
                    phase: get(row, 1)?,
                    name: get(row, 2)?,
                    status: get(row, 3)?,
                    attempts: to_u32(get(row, 4)?, "attempts")?,
                    output: get::<Option<String>>(row, 5)?
                        .and_then(|s| serde_json::from_str(&s).ok()),
                    error: get(row, 6)?,
                    started_ms: get(row, 7)?,
                    finished_ms: get(row, 8)?,
                    not_before_ms: get(row, 9)?,
                })
            })
            .collect()
    }

    pub(super) async fn set_state(
        &self,
        id: &str,
        state: State,
        error: Option<String>,
    ) -> Result<()> {
        // A run that ends or parks gives its lease up.
        const SQL: &str = fenced_sql!(
            "w AS (UPDATE wf_runs SET state = $3, error = COALESCE($4, error), updated_ms = $5,
                      owner = CASE WHEN $3::text IN ('running', 'waiting', 'compensating')
                          THEN owner END,
                      lease_until = CASE WHEN $3::text IN ('running', 'waiting', 'compensating')
                          THEN lease_until END
                   WHERE id = $1 AND EXISTS (SELECT 1 FROM run))"
        );
        self.fenced(
            id,
            "recording a run's state",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                state.as_str(),
                error,
                now_ms()
            ],
            Releases::when_ending(state),
        )
        .await
        .map(drop)
    }

    pub(super) async fn attempt_started(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        name: &str,
        attempts: u32,
        not_before_ms: i64,
    ) -> Result<()> {
        const SQL: &str = fenced_sql!(
            "w AS (INSERT INTO wf_steps (instance, idx, phase, name, status, attempts, started_ms, not_before_ms)
                   SELECT id, $3, $4, $5, 'running', $6, $7, $8 FROM run
                   ON CONFLICT (instance, idx, phase) DO UPDATE SET status = 'running',
                      attempts = excluded.attempts,
                      started_ms = COALESCE(wf_steps.started_ms, excluded.started_ms),
                      not_before_ms = excluded.not_before_ms, finished_ms = NULL)"
        );
        self.fenced(
            id,
            "recording an attempt",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                idx_i32(idx)?,
                phase.to_string(),
                name.to_string(),
                to_i32(attempts)?,
                now_ms(),
                not_before_ms,
            ],
            Releases::No,
        )
        .await
        .map(drop)
    }

    pub(super) async fn attempt_failed(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: &str,
        not_before_ms: i64,
    ) -> Result<()> {
        const SQL: &str = fenced_sql!(
            "w AS (UPDATE wf_steps SET status = 'retrying', error = $5, not_before_ms = $6
                   WHERE instance = $1 AND EXISTS (SELECT 1 FROM run) AND idx = $3 AND phase = $4)"
        );
        self.fenced(
            id,
            "recording a failed attempt",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                idx_i32(idx)?,
                phase.to_string(),
                error.to_string(),
                not_before_ms,
            ],
            Releases::No,
        )
        .await
        .map(drop)
    }

    pub(super) async fn finish(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        outcome: std::result::Result<Value, String>,
    ) -> Result<()> {
        const SQL: &str = fenced_sql!(
            "w AS (UPDATE wf_steps SET status = $5, output = $6::text::jsonb,
                      error = COALESCE($7, error), finished_ms = $8
                   WHERE instance = $1 AND EXISTS (SELECT 1 FROM run) AND idx = $3 AND phase = $4)"
        );
        let (status, output, error) = match outcome {
            Ok(output) => ("done", Some(output.to_string()), None),
            Err(error) => ("failed", None, Some(error)),
        };
        self.fenced(
            id,
            "recording a step's outcome",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                idx_i32(idx)?,
                phase.to_string(),
                status,
                output,
                error,
                now_ms(),
            ],
            Releases::No,
        )
        .await
        .map(drop)
    }

    pub(super) async fn complete_step(
        &self,
        id: &str,
        idx: usize,
        output: Value,
        state: State,
        next: Option<&str>,
    ) -> Result<bool> {
        // Unless the run is to be cancelled: it moves to `state` ($5), gives
        // its lease up when that ends it, and starts the next step ($7).
        const SQL: &str = fenced_sql!(
            "step AS (UPDATE wf_steps SET status = 'done', output = $4::text::jsonb, finished_ms = $6
                      WHERE instance = $1 AND EXISTS (SELECT 1 FROM run) AND idx = $3 AND phase = 'do')",
            "moved AS (UPDATE wf_runs SET position = $3 + 1, updated_ms = $6,
                          state = CASE WHEN (SELECT cancel_requested FROM run) THEN state ELSE $5 END,
                          owner = CASE WHEN (SELECT cancel_requested FROM run)
                              OR $5::text IN ('running', 'waiting', 'compensating') THEN owner END,
                          lease_until = CASE WHEN (SELECT cancel_requested FROM run)
                              OR $5::text IN ('running', 'waiting', 'compensating') THEN lease_until END
                       WHERE id = $1 AND EXISTS (SELECT 1 FROM run))",
            "next AS (INSERT INTO wf_steps (instance, idx, phase, name, status, attempts, started_ms)
                      SELECT id, $3 + 1, 'do', $7, 'running', 1, $6 FROM run
                      WHERE $7::text IS NOT NULL AND NOT cancel_requested)"
        );
        self.fenced(
            id,
            "recording a step's outcome",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                idx_i32(idx)?,
                output.to_string(),
                state.as_str(),
                now_ms(),
                next.map(str::to_string),
            ],
            if state.is_active() {
                Releases::No
            } else {
                Releases::UnlessCancelling
            },
        )
        .await
    }

    pub(super) async fn fail_step(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: String,
        state: State,
        run_error: String,
    ) -> Result<()> {
        const SQL: &str = fenced_sql!(
            "step AS (UPDATE wf_steps SET status = 'failed', error = $5, finished_ms = $8
                      WHERE instance = $1 AND EXISTS (SELECT 1 FROM run) AND idx = $3 AND phase = $4)",
            "moved AS (UPDATE wf_runs SET state = $6, error = $7, updated_ms = $8,
                          owner = CASE WHEN $6::text IN ('running', 'waiting', 'compensating')
                              THEN owner END,
                          lease_until = CASE WHEN $6::text IN ('running', 'waiting', 'compensating')
                              THEN lease_until END
                       WHERE id = $1 AND EXISTS (SELECT 1 FROM run))"
        );
        self.fenced(
            id,
            "recording a step's outcome",
            SQL,
            params![
                id.to_string(),
                self.holder.clone(),
                idx_i32(idx)?,
                phase.to_string(),
                error,
                state.as_str(),
                run_error,
                now_ms(),
            ],
            Releases::when_ending(state),
        )
        .await
        .map(drop)
    }

    pub(super) async fn retry(&self, id: &str) -> Result<()> {
        let mut client = self.pg.client().await?;
        let tx = tokio_postgres::Client::transaction(&mut client)
            .await
            .map_err(PgError::query("retrying a run"))?;
        tx.execute(
            "DELETE FROM wf_steps WHERE instance = $1 AND phase = 'undo' AND status != 'done'",
            &[&id],
        )
        .await
        .map_err(PgError::query("retrying a run"))?;
        tx.execute(
            "UPDATE wf_runs SET state = 'compensating', updated_ms = $2 WHERE id = $1",
            &[&id, &now_ms()],
        )
        .await
        .map_err(PgError::query("retrying a run"))?;
        commit(tx).await
    }

    pub(super) async fn resume(&self, id: &str, from: usize) -> Result<()> {
        let mut client = self.pg.client().await?;
        let tx = tokio_postgres::Client::transaction(&mut client)
            .await
            .map_err(PgError::query("resuming a run"))?;
        tx.execute(
            "DELETE FROM wf_steps WHERE instance = $1 AND (phase = 'undo' OR idx >= $2)",
            &[&id, &idx_i32(from)?],
        )
        .await
        .map_err(PgError::query("resuming a run"))?;
        tx.execute(
            "UPDATE wf_runs SET state = 'running', position = $2, generation = generation + 1,
                cancel_requested = false, error = NULL, updated_ms = $3 WHERE id = $1",
            &[&id, &idx_i32(from)?, &now_ms()],
        )
        .await
        .map_err(PgError::query("resuming a run"))?;
        commit(tx).await
    }

    pub(super) async fn request_cancel(&self, id: &str) -> Result<()> {
        let client = self.pg.client().await?;
        client
            .execute(
                "UPDATE wf_runs SET cancel_requested = true, updated_ms = $2 WHERE id = $1",
                &[&id, &now_ms()],
            )
            .await
            .map_err(PgError::query("cancelling a run"))?;
        Ok(())
    }

    pub(super) async fn cancel_parked(&self, id: &str, error: String) -> Result<bool> {
        let client = self.pg.client().await?;
        let changed = client
            .execute(
                "UPDATE wf_runs SET state = 'cancelled', error = $2, updated_ms = $3
                 WHERE id = $1 AND state = 'needs_attention'",
                &[&id, &error, &now_ms()],
            )
            .await
            .map_err(PgError::query("cancelling a run"))?;
        Ok(changed == 1)
    }

    pub(super) async fn acquire(&self, id: &str) -> Result<bool> {
        {
            let mut driven = self.driven.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(run) = driven.get_mut(id).filter(|run| run.created) {
                // Created here with the lease a moment ago.
                run.created = false;
                return Ok(true);
            }
        }
        const SQL: &str = "WITH w AS (
                UPDATE wf_runs SET owner = $2,
                    lease_until = now() + $3::BIGINT * interval '1 millisecond'
                WHERE id = $1 AND (owner IS NULL OR owner = $2 OR lease_until < now())
                RETURNING cancel_requested)
            SELECT EXISTS (SELECT 1 FROM w), COALESCE((SELECT cancel_requested FROM w), false)";
        let (taken, cancel_requested) = self
            .write(
                "taking a run's lease",
                SQL,
                params![id.to_string(), self.holder.clone(), self.lease_ms()],
            )
            .await?;
        if taken {
            self.driven
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    id.to_string(),
                    Driven {
                        cancel_requested,
                        ..Driven::default()
                    },
                );
        }
        Ok(taken)
    }

    pub(super) async fn renew(&self, id: &str) -> Result<Option<Renewal>> {
        let client = self.pg.client().await?;
        let renew = client
            .prepare_cached(
                "UPDATE wf_runs SET lease_until = now() + $3::BIGINT * interval '1 millisecond'
                 WHERE id = $1 AND owner = $2
                 RETURNING state, cancel_requested",
            )
            .await
            .map_err(PgError::query("renewing a run's lease"))?;
        let row = client
            .query_opt(&renew, &[&id, &self.holder, &self.lease_ms()])
            .await
            .map_err(PgError::query("renewing a run's lease"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state: String = get(&row, 0)?;
        Ok(Some(Renewal {
            state: State::parse(&state)
                .ok_or_else(|| JournalError::Corrupt(format!("unknown run state `{state}`")))?,
            cancel_requested: get(&row, 1)?,
        }))
    }

    pub(super) async fn release(&self, id: &str) -> Result<()> {
        const SQL: &str = "WITH w AS (
                UPDATE wf_runs SET owner = NULL, lease_until = NULL
                WHERE id = $1 AND owner = $2 RETURNING 1)
            SELECT EXISTS (SELECT 1 FROM w)";
        let driven = self
            .driven
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if driven.is_some_and(|run| run.released) {
            // Given up with the write that ended the run.
            return Ok(());
        }
        self.write(
            "releasing a run's lease",
            SQL,
            params![id.to_string(), self.holder.clone()],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn orphans(&self, limit: usize) -> Result<Vec<String>> {
        let client = self.pg.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT id FROM wf_runs WHERE state IN {ACTIVE}
                        AND (owner IS NULL OR lease_until IS NULL OR lease_until < now())
                     ORDER BY created_ms LIMIT $1"
                ),
                &[&limit],
            )
            .await
            .map_err(PgError::query("looking for unowned workflow runs"))?;
        rows.iter().map(|row| get(row, 0)).collect()
    }
}

/// A journal writer: takes the fenced writes waiting (up to [`BATCH`]) and
/// commits them in one transaction, their statements pipelined on one
/// connection; group commit, as the embedded journal does. Each write still
/// checks its own run's owner, so one run's lost lease does not fail the
/// others. A statement that fails voids the transaction: the batch is then
/// written one by one, so only that write fails.
async fn writer(pg: Postgres, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Write>>>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        {
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, BATCH).await == 0 {
                return; // the journal is gone
            }
        }
        match write_batch(&pg, &batch).await {
            Ok(held) => {
                for (write, held) in batch.drain(..).zip(held) {
                    let _ = write.done.send(Ok(held));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(write) = batch.pop() {
                    let _ = write.done.send(Err(error));
                }
            }
            Err(_) => {
                for write in batch.drain(..) {
                    let held = write_batch(&pg, std::slice::from_ref(&write))
                        .await
                        .map(|held| held.first().copied().unwrap_or_default());
                    let _ = write.done.send(held);
                }
            }
        }
    }
}

/// Writes `batch` in one transaction (a single write on its own); per write,
/// whether its run was this node's.
async fn write_batch(pg: &Postgres, batch: &[Write]) -> Result<Vec<(bool, bool)>> {
    let mut client = pg.client().await?;
    let mut statements = Vec::with_capacity(batch.len());
    for write in batch {
        statements.push(
            client
                .prepare_cached(write.sql)
                .await
                .map_err(PgError::query(write.context))?,
        );
    }
    let rows = if batch.len() == 1 {
        pipeline(&**client, batch, &statements).await?
    } else {
        let tx = tokio_postgres::Client::transaction(&mut client)
            .await
            .map_err(PgError::query("starting a journal write"))?;
        let rows = pipeline(&tx, batch, &statements).await?;
        commit(tx).await?;
        rows
    };
    rows.iter()
        .map(|row| {
            let second = if row.len() > 1 { get(row, 1)? } else { false };
            Ok((get(row, 0)?, second))
        })
        .collect()
}

/// Sends every write's statement before reading any answer.
async fn pipeline<C: GenericClient + Sync>(
    client: &C,
    batch: &[Write],
    statements: &[tokio_postgres::Statement],
) -> std::result::Result<Vec<Row>, PgError> {
    futures_util::future::try_join_all(batch.iter().zip(statements).map(|(write, statement)| {
        let params: Vec<&(dyn ToSql + Sync)> = write
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        async move {
            client
                .query_one(statement, &params)
                .await
                .map_err(PgError::query(write.context))
        }
    }))
    .await
}

async fn commit(tx: Transaction<'_>) -> Result<()> {
    tx.commit()
        .await
        .map_err(PgError::query("committing a journal write"))?;
    Ok(())
}

/// Column `idx` of `row`, or why it cannot be read.
fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| JournalError::Corrupt(format!("column {idx}: {e}")))
}

fn to_u32(value: i32, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| JournalError::Corrupt(format!("{what} is {value}")))
}

fn to_usize(value: i32, what: &str) -> Result<usize> {
    usize::try_from(value).map_err(|_| JournalError::Corrupt(format!("{what} is {value}")))
}

fn to_i32(value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| JournalError::Corrupt(format!("{value} is too large")))
}

fn idx_i32(value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| JournalError::Corrupt(format!("{value} is too large")))
}

fn run_from(row: &Row) -> Result<Run> {
    let state: String = get(row, 4)?;
    Ok(Run {
        id: get(row, 0)?,
        workflow: get(row, 1)?,
        version: to_u32(get(row, 2)?, "version")?,
        input: serde_json::from_str(&get::<String>(row, 3)?).unwrap_or(Value::Null),
        // As in the embedded journal: a state this Gantry does not know is
        // shown as failed rather than hiding the run.
        state: State::parse(&state).unwrap_or(State::Failed),
        position: to_usize(get(row, 5)?, "position")?,
        generation: to_u32(get(row, 6)?, "generation")?,
        cancel_requested: get(row, 7)?,
        error: get(row, 8)?,
        trace: get(row, 9)?,
        wait_from: serde_json::from_str(&get::<String>(row, 10)?).unwrap_or_default(),
        created_ms: get(row, 11)?,
        updated_ms: get(row, 12)?,
    })
}
