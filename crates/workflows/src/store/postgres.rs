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

use std::time::Duration;

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use serde_json::Value;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Row, Transaction};

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

/// The columns [`run_from`] reads, in its order.
const RUN_COLUMNS: &str = "id, workflow, version, input::text, state, position, generation,
    cancel_requested, error, trace, wait_from::text, created_ms, updated_ms";

const ACTIVE: &str = "('running', 'waiting', 'compensating')";

/// The PostgreSQL journal of one node. Cheap to clone.
#[derive(Clone)]
pub(super) struct Pg {
    pg: Postgres,
    /// This process (`node/incarnation`): the owner it writes on runs.
    holder: String,
    lease: Duration,
}

impl Pg {
    pub(super) async fn open(pg: &Postgres, holder: &str, lease: Duration) -> Result<Pg> {
        gantry_cluster::migrate::postgres(pg, &MIGRATIONS).await?;
        Ok(Pg {
            pg: pg.clone(),
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

    /// Starts a driver's write to run `id`: its row locked until the
    /// transaction ends, and refused unless this node owns it. A node taking
    /// the run over waits for the lock, so no write of the old owner can
    /// land after the takeover.
    async fn fence<'a>(
        &self,
        client: &'a mut tokio_postgres::Client,
        id: &str,
    ) -> Result<Transaction<'a>> {
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("starting a journal write"))?;
        let held = tx
            .query_opt(
                "SELECT 1 FROM wf_runs WHERE id = $1 AND owner = $2 FOR UPDATE",
                &[&id, &self.holder],
            )
            .await
            .map_err(PgError::query("checking a run's lease"))?;
        if held.is_none() {
            return Err(JournalError::LeaseLost { id: id.to_string() });
        }
        Ok(tx)
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

    pub(super) async fn definition(
        &self,
        workflow: &str,
        version: u32,
    ) -> Result<Option<Definition>> {
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "SELECT json::text FROM wf_definitions WHERE workflow = $1 AND version = $2",
                &[&workflow, &to_i32(version)?],
            )
            .await
            .map_err(PgError::query("reading a workflow definition"))?;
        match row {
            None => Ok(None),
            Some(row) => Ok(serde_json::from_str(&get::<String>(&row, 0)?).ok()),
        }
    }

    pub(super) async fn create(&self, instance: Run) -> Result<(Run, bool)> {
        let client = self.pg.client().await?;
        let input = instance.input.to_string();
        let wait_from = serde_json::to_string(&instance.wait_from)
            .map_err(|e| JournalError::Corrupt(format!("a run's wait positions: {e}")))?;
        let inserted = client
            .execute(
                "INSERT INTO wf_runs (id, workflow, version, input, state, trace, wait_from,
                    created_ms, updated_ms, owner, lease_until)
                 VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7::text::jsonb, $8, $8, $9,
                    now() + $10::BIGINT * interval '1 millisecond')
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &instance.id,
                    &instance.workflow,
                    &to_i32(instance.version)?,
                    &input,
                    &instance.state.as_str(),
                    &instance.trace,
                    &wait_from,
                    &instance.created_ms,
                    &self.holder,
                    &self.lease_ms(),
                ],
            )
            .await
            .map_err(PgError::query("creating a workflow run"))?;
        if inserted == 1 {
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
        let row = client
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM wf_runs WHERE id = $1"),
                &[&id],
            )
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
        let rows = client
            .query(
                "SELECT idx, phase, name, status, attempts, output::text, error, started_ms,
                        finished_ms, not_before_ms
                 FROM wf_steps WHERE instance = $1
                 ORDER BY COALESCE(started_ms, 0), idx, phase COLLATE \"C\"",
                &[&id],
            )
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
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        tx.execute(
            "UPDATE wf_runs SET state = $2, error = COALESCE($3, error), updated_ms = $4
             WHERE id = $1",
            &[&id, &state.as_str(), &error, &now_ms()],
        )
        .await
        .map_err(PgError::query("recording a run's state"))?;
        commit(tx).await
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
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        tx.execute(
            "INSERT INTO wf_steps (instance, idx, phase, name, status, attempts, started_ms, not_before_ms)
             VALUES ($1, $2, $3, $4, 'running', $5, $6, $7)
             ON CONFLICT (instance, idx, phase) DO UPDATE SET status = 'running',
                attempts = excluded.attempts,
                started_ms = COALESCE(wf_steps.started_ms, excluded.started_ms),
                not_before_ms = excluded.not_before_ms, finished_ms = NULL",
            &[
                &id,
                &idx_i32(idx)?,
                &phase,
                &name,
                &to_i32(attempts)?,
                &now_ms(),
                &not_before_ms,
            ],
        )
        .await
        .map_err(PgError::query("recording an attempt"))?;
        commit(tx).await
    }

    pub(super) async fn attempt_failed(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        error: &str,
        not_before_ms: i64,
    ) -> Result<()> {
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        tx.execute(
            "UPDATE wf_steps SET status = 'retrying', error = $4, not_before_ms = $5
             WHERE instance = $1 AND idx = $2 AND phase = $3",
            &[&id, &idx_i32(idx)?, &phase, &error, &not_before_ms],
        )
        .await
        .map_err(PgError::query("recording a failed attempt"))?;
        commit(tx).await
    }

    pub(super) async fn finish(
        &self,
        id: &str,
        idx: usize,
        phase: &str,
        outcome: std::result::Result<Value, String>,
    ) -> Result<()> {
        let (status, output, error) = match outcome {
            Ok(output) => ("done", Some(output.to_string()), None),
            Err(error) => ("failed", None, Some(error)),
        };
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        tx.execute(
            "UPDATE wf_steps SET status = $4, output = $5::text::jsonb,
                error = COALESCE($6, error), finished_ms = $7
             WHERE instance = $1 AND idx = $2 AND phase = $3",
            &[
                &id,
                &idx_i32(idx)?,
                &phase,
                &status,
                &output,
                &error,
                &now_ms(),
            ],
        )
        .await
        .map_err(PgError::query("recording a step's outcome"))?;
        commit(tx).await
    }

    pub(super) async fn complete_step(
        &self,
        id: &str,
        idx: usize,
        output: Value,
        state: State,
    ) -> Result<()> {
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        let now = now_ms();
        tx.execute(
            "UPDATE wf_steps SET status = 'done', output = $3::text::jsonb, finished_ms = $4
             WHERE instance = $1 AND idx = $2 AND phase = 'do'",
            &[&id, &idx_i32(idx)?, &output.to_string(), &now],
        )
        .await
        .map_err(PgError::query("recording a step's outcome"))?;
        tx.execute(
            "UPDATE wf_runs SET position = $2, state = $3, updated_ms = $4 WHERE id = $1",
            &[&id, &idx_i32(idx + 1)?, &state.as_str(), &now],
        )
        .await
        .map_err(PgError::query("moving a run on"))?;
        commit(tx).await
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
        let mut client = self.pg.client().await?;
        let tx = self.fence(&mut client, id).await?;
        let now = now_ms();
        tx.execute(
            "UPDATE wf_steps SET status = 'failed', error = $4, finished_ms = $5
             WHERE instance = $1 AND idx = $2 AND phase = $3",
            &[&id, &idx_i32(idx)?, &phase, &error, &now],
        )
        .await
        .map_err(PgError::query("recording a step's outcome"))?;
        tx.execute(
            "UPDATE wf_runs SET state = $2, error = $3, updated_ms = $4 WHERE id = $1",
            &[&id, &state.as_str(), &run_error, &now],
        )
        .await
        .map_err(PgError::query("recording a run's state"))?;
        commit(tx).await
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
        let client = self.pg.client().await?;
        let taken = client
            .execute(
                "UPDATE wf_runs SET owner = $2,
                    lease_until = now() + $3::BIGINT * interval '1 millisecond'
                 WHERE id = $1 AND (owner IS NULL OR owner = $2 OR lease_until < now())",
                &[&id, &self.holder, &self.lease_ms()],
            )
            .await
            .map_err(PgError::query("taking a run's lease"))?;
        Ok(taken == 1)
    }

    pub(super) async fn renew(&self, id: &str) -> Result<Option<Renewal>> {
        let client = self.pg.client().await?;
        let row = client
            .query_opt(
                "UPDATE wf_runs SET lease_until = now() + $3::BIGINT * interval '1 millisecond'
                 WHERE id = $1 AND owner = $2
                 RETURNING state, cancel_requested",
                &[&id, &self.holder, &self.lease_ms()],
            )
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
        let client = self.pg.client().await?;
        client
            .execute(
                "UPDATE wf_runs SET owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $2",
                &[&id, &self.holder],
            )
            .await
            .map_err(PgError::query("releasing a run's lease"))?;
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
