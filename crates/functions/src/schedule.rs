//! `[schedules.NAME]`: invoke a function on a cron schedule, in a time zone.
//!
//! Each firing is a CloudEvent (binary mode, `type = dev.gantry.schedule`,
//! `id = NAME/SCHEDULED-TIME`) posted to the function's listener, so WAGI
//! modules, wasi:http components and Lambda functions all receive it the way
//! they receive events from the bus.
//!
//! The last scheduled time that fired is kept per schedule in
//! `schedules.json` in the data directory (written atomically), or in
//! cluster mode in PostgreSQL, where it also decides which node fires a
//! due run (see [`Store`]). At start,
//! runs missed while Gantry was down are counted: with `missed = "skip"` they
//! are logged and dropped; with `missed = "catch_up"` the function runs once
//! at once for all of them (the event says how many). A run still going when
//! the next one is due makes that one skip, unless `overlap = true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use gantry_manifest::{Missed, Schedule};
use http::HeaderValue;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::Functions;

/// Where each schedule's last fired time is kept, and who fires a due run.
///
/// Every node of a cluster runs every schedule's timer; when a run falls
/// due, each node tries to [`Store::advance`] the schedule's last fired
/// time to that run's time, and only the one whose update lands fires it.
/// So a schedule fires once per due time however many nodes run it, with
/// no leader to elect and none to lose.
#[derive(Debug, Clone)]
enum Store {
    /// `schedules.json` in the data directory (embedded mode).
    File(FileState),
    /// The cluster's `gantry_schedules` table.
    Postgres {
        pg: Postgres,
        node: String,
        /// The last times this node read or wrote, for listings.
        seen: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
    },
}

const POSTGRES: Migrations = Migrations {
    store: "schedules",
    steps: &["CREATE TABLE gantry_schedules (
        name TEXT PRIMARY KEY,
        last_fired_ms BIGINT NOT NULL,
        node TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"],
};

impl Store {
    /// The time of the schedule's last run (fired or skipped), if any.
    async fn last(&self, name: &str) -> Result<Option<DateTime<Utc>>, String> {
        match self {
            Store::File(file) => Ok(file.get(name)),
            Store::Postgres { pg, seen, .. } => {
                let client = pg.client().await.map_err(|e| e.to_string())?;
                let row = client
                    .query_opt(
                        "SELECT last_fired_ms FROM gantry_schedules WHERE name = $1",
                        &[&name],
                    )
                    .await
                    .map_err(|e| PgError::query("reading a schedule")(e).to_string())?;
                let last = row.and_then(|row| DateTime::from_timestamp_millis(row.get(0)));
                if let Some(at) = last {
                    remember(seen, name, at);
                }
                Ok(last)
            }
        }
    }

    /// Moves the schedule's last run forward to `at`: true if this call
    /// moved it (and its caller owns the run at `at`), false if it already
    /// stood at `at` or later (another node took that run).
    async fn advance(&self, name: &str, at: DateTime<Utc>) -> Result<bool, String> {
        match self {
            Store::File(file) => Ok(file
                .record(name, at, move |last| last.is_none_or(|l| l < at))
                .await),
            Store::Postgres { pg, node, seen } => {
                let client = pg.client().await.map_err(|e| e.to_string())?;
                let moved = client
                    .execute(
                        "INSERT INTO gantry_schedules (name, last_fired_ms, node) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET last_fired_ms = excluded.last_fired_ms,
                             node = excluded.node, updated_at = now()
                         WHERE gantry_schedules.last_fired_ms < excluded.last_fired_ms",
                        &[&name as &(dyn ToSql + Sync), &at.timestamp_millis(), node],
                    )
                    .await
                    .map_err(|e| PgError::query("advancing a schedule")(e).to_string())?;
                if moved == 1 {
                    remember(seen, name, at);
                }
                Ok(moved == 1)
            }
        }
    }

    /// Records `at` as the schedule's start when it has no record yet.
    async fn begin(&self, name: &str, at: DateTime<Utc>) -> Result<(), String> {
        match self {
            Store::File(file) => {
                file.record(name, at, |last| last.is_none()).await;
                Ok(())
            }
            Store::Postgres { pg, node, seen } => {
                let client = pg.client().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        "INSERT INTO gantry_schedules (name, last_fired_ms, node) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO NOTHING",
                        &[&name as &(dyn ToSql + Sync), &at.timestamp_millis(), node],
                    )
                    .await
                    .map_err(|e| PgError::query("recording a schedule")(e).to_string())?;
                remember(seen, name, at);
                Ok(())
            }
        }
    }

    /// The last run this node knows of, without a round trip.
    fn cached(&self, name: &str) -> Option<DateTime<Utc>> {
        match self {
            Store::File(file) => file.get(name),
            Store::Postgres { seen, .. } => seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied(),
        }
    }
}

fn remember(seen: &Mutex<BTreeMap<String, DateTime<Utc>>>, name: &str, at: DateTime<Utc>) {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let entry = seen.entry(name.to_string()).or_insert(at);
    *entry = (*entry).max(at);
}

/// `schedules.json`: each schedule's last fired time, written atomically.
#[derive(Debug, Clone)]
struct FileState {
    path: PathBuf,
    last: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
}

impl FileState {
    fn open(data_dir: &Path) -> FileState {
        let path = data_dir.join("schedules.json");
        let last = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FileState {
            path,
            last: Arc::new(Mutex::new(last)),
        }
    }

    fn get(&self, name: &str) -> Option<DateTime<Utc>> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    /// [`FileState::set`] on a blocking thread: the fsync stays off the
    /// async workers that serve requests.
    async fn record(
        &self,
        name: &str,
        at: DateTime<Utc>,
        when: impl FnOnce(Option<DateTime<Utc>>) -> bool + Send + 'static,
    ) -> bool {
        let (state, name) = (self.clone(), name.to_string());
        tokio::task::spawn_blocking(move || state.set(&name, at, when))
            .await
            .unwrap_or(false)
    }

    /// Records `at` for `name`, if `when` accepts the time recorded now,
    /// and writes the file (temp file, fsync, rename). The lock is held
    /// across the check and the write, so each rename publishes a whole,
    /// current file and two callers never both see their check pass.
    fn set(
        &self,
        name: &str,
        at: DateTime<Utc>,
        when: impl FnOnce(Option<DateTime<Utc>>) -> bool,
    ) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !when(last.get(name).copied()) {
            return false;
        }
        last.insert(name.to_string(), at);
        let text = serde_json::to_vec_pretty(&*last).unwrap_or_default();
        let temp = self.path.with_extension("json.tmp");
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if let Err(error) = written {
            tracing::error!(target: "gantry::schedules", schedule = name, %error, "cannot record the schedule's last run");
        }
        true
    }
}

/// A schedule as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleInfo {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub to: String,
    pub last_fired: Option<String>,
    pub next: Option<String>,
    pub running: bool,
}

/// The running schedules.
#[derive(Clone)]
pub struct Scheduler {
    functions: Functions,
    state: Store,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
}

/// A running schedule: its settings, what stops it, whether a run is going.
type Running = (Schedule, CancellationToken, Arc<AtomicBool>);

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Schedules whose state lives in `DATA_DIR/schedules.json`.
    pub fn new(data_dir: &Path, functions: Functions) -> Scheduler {
        Scheduler {
            functions,
            state: Store::File(FileState::open(data_dir)),
            running: Arc::default(),
        }
    }

    /// Schedules whose state lives in the cluster's PostgreSQL, each due
    /// run fired by one node of the cluster (`node` names this one).
    pub async fn clustered(
        pg: Postgres,
        node: &str,
        functions: Functions,
    ) -> Result<Scheduler, PgError> {
        gantry_cluster::migrate::postgres(&pg, &POSTGRES).await?;
        Ok(Scheduler {
            functions,
            state: Store::Postgres {
                pg,
                node: node.to_string(),
                seen: Arc::default(),
            },
            running: Arc::default(),
        })
    }

    /// Runs exactly the schedules of `schedules`: unchanged ones keep going,
    /// changed ones restart, removed ones stop.
    pub fn apply(&self, schedules: &BTreeMap<String, Schedule>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, (schedule, stop, _)| {
            let keep = schedules.get(name) == Some(schedule);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, schedule) in schedules {
            if running.contains_key(name) {
                continue;
            }
            let stop = CancellationToken::new();
            let busy = Arc::new(AtomicBool::new(false));
            tokio::spawn(run(
                self.clone(),
                name.clone(),
                schedule.clone(),
                stop.clone(),
                busy.clone(),
            ));
            running.insert(name.clone(), (schedule.clone(), stop, busy));
        }
    }

    pub fn list(&self) -> Vec<ScheduleInfo> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .map(|(name, (schedule, _, busy))| ScheduleInfo {
                name: name.clone(),
                cron: schedule.cron.clone(),
                timezone: schedule.timezone.clone(),
                to: schedule.to.clone(),
                last_fired: self.state.cached(name).map(|t| t.to_rfc3339()),
                next: next_after(schedule, Utc::now()).map(|t| t.to_rfc3339()),
                running: busy.load(Ordering::Acquire),
            })
            .collect()
    }

    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, stop, _)) in std::mem::take(&mut *running) {
            stop.cancel();
        }
    }
}

/// The first time after `after` that `schedule` fires, in UTC.
fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = cron::Schedule::from_str(&schedule.cron).ok()?;
    let zone = chrono_tz::Tz::from_str(&schedule.timezone).ok()?;
    cron.after(&after.with_timezone(&zone))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// Fire times in `(from, to]`, at most `limit` counted.
fn missed_between(
    schedule: &Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> (usize, Option<DateTime<Utc>>) {
    let mut count = 0;
    let mut last = None;
    let mut at = from;
    while count < limit {
        match next_after(schedule, at) {
            Some(next) if next <= to => {
                count += 1;
                last = Some(next);
                at = next;
            }
            _ => break,
        }
    }
    (count, last)
}

async fn run(
    scheduler: Scheduler,
    name: String,
    schedule: Schedule,
    stop: CancellationToken,
    busy: Arc<AtomicBool>,
) {
    let function = gantry_manifest::function_of(&schedule.to)
        .unwrap_or_default()
        .to_string();
    let store = scheduler.state.clone();
    let last = loop {
        match store.last(&name).await {
            Ok(last) => break last,
            Err(error) => {
                tracing::warn!(target: "gantry::schedules", schedule = %name, %error, "cannot read the schedule's last run; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let now = Utc::now();
    match last {
        Some(last) => {
            let (missed, latest) = missed_between(&schedule, last, now, 100_000);
            if missed > 0 {
                match schedule.missed {
                    Missed::Skip => {
                        // Nothing is recorded: the loop below starts from
                        // now, and a run that fell due a moment ago is still
                        // claimed (and fired once) there.
                        tracing::warn!(target: "gantry::schedules", schedule = %name, missed, "runs were missed while Gantry was down; skipping them (missed = \"skip\")");
                    }
                    Missed::CatchUp => {
                        let at = latest.unwrap_or(now);
                        // One node of a cluster catches up: the one that
                        // moves the schedule to the latest missed run.
                        if store.advance(&name, at).await == Ok(true) {
                            tracing::info!(target: "gantry::schedules", schedule = %name, missed, "runs were missed while Gantry was down; running once to catch up");
                            fire(
                                &scheduler,
                                &name,
                                &schedule,
                                &function,
                                at,
                                missed,
                                busy.clone(),
                            )
                            .await;
                        }
                    }
                }
            }
        }
        // The first start of this schedule: missed runs count from here.
        None => {
            if let Err(error) = store.begin(&name, now).await {
                tracing::warn!(target: "gantry::schedules", schedule = %name, %error, "cannot record the schedule's start");
            }
        }
    }
    let mut from = store.cached(&name).unwrap_or(now);
    loop {
        // Never schedule into the past: after a pause (or a failed
        // store), the next run is the next one from now.
        let after = from.max(Utc::now() - chrono::Duration::seconds(1));
        let Some(next) = next_after(&schedule, after) else {
            tracing::warn!(target: "gantry::schedules", schedule = %name, "the schedule never fires again");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        from = next;
        match store.advance(&name, next).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(target: "gantry::schedules", schedule = %name, scheduled = %next, "another node fired this run");
                continue;
            }
            Err(error) => {
                // Firing without the record could fire it twice in a
                // cluster: the run is skipped, loudly.
                tracing::error!(target: "gantry::schedules", schedule = %name, scheduled = %next, %error, "cannot record the run; skipping it");
                continue;
            }
        }
        if busy.load(Ordering::Acquire) && !schedule.overlap {
            tracing::warn!(target: "gantry::schedules", schedule = %name, scheduled = %next, "the previous run is still going; skipping this one (overlap = false)");
            continue;
        }
        let scheduler = scheduler.clone();
        let (name, schedule, function, busy) = (
            name.clone(),
            schedule.clone(),
            function.clone(),
            busy.clone(),
        );
        tokio::spawn(async move {
            fire(&scheduler, &name, &schedule, &function, next, 0, busy).await;
        });
    }
}

/// Invokes the function once for the run scheduled at `at`.
async fn fire(
    scheduler: &Scheduler,
    name: &str,
    schedule: &Schedule,
    function: &str,
    at: DateTime<Utc>,
    missed: usize,
    busy: Arc<AtomicBool>,
) {
    let Some(base) = scheduler.functions.url(function) else {
        tracing::error!(target: "gantry::schedules", schedule = name, function, "the schedule's function is not running");
        return;
    };
    busy.store(true, Ordering::Release);
    let body = serde_json::json!({
        "schedule": name,
        "scheduled_time": at.to_rfc3339(),
        "missed": missed,
        "data": schedule.data,
    });
    let header =
        |text: String| HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("-"));
    let id = format!("{name}/{}", at.to_rfc3339());
    let headers = [
        ("content-type", HeaderValue::from_static("application/json")),
        ("ce-specversion", HeaderValue::from_static("1.0")),
        ("ce-type", HeaderValue::from_static("dev.gantry.schedule")),
        ("ce-source", header(format!("/gantry/schedules/{name}"))),
        ("ce-id", header(id.clone())),
        ("ce-time", header(Utc::now().to_rfc3339())),
        ("x-request-id", header(uuid::Uuid::new_v4().to_string())),
    ];
    let outcome = crate::client::send_with(
        &base,
        http::Method::POST,
        "/",
        &headers,
        Bytes::from(body.to_string()),
    )
    .await;
    // Read the whole answer: the run ends when the function's response does.
    let outcome = match outcome {
        Ok(response) => {
            use http_body_util::BodyExt;
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(error) => Err(error),
    };
    busy.store(false, Ordering::Release);
    match outcome {
        Ok(status) if status.is_success() => {
            tracing::info!(target: "gantry::schedules", schedule = name, function, id, "scheduled run done")
        }
        Ok(status) => {
            tracing::warn!(target: "gantry::schedules", schedule = name, function, id, %status, "scheduled run failed")
        }
        Err(error) => {
            tracing::error!(target: "gantry::schedules", schedule = name, function, id, %error, "cannot invoke the function")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, timezone: &str) -> Schedule {
        Schedule {
            cron: cron.into(),
            timezone: timezone.into(),
            to: "function:f".into(),
            missed: Missed::Skip,
            overlap: false,
            data: None,
        }
    }

    #[test]
    fn next_fire_times_follow_the_time_zone() {
        let at: DateTime<Utc> = "2026-01-15T12:00:00Z".parse().unwrap();
        let daily = schedule("0 0 2 * * *", "Europe/Paris");
        // 02:00 in Paris in January is 01:00 UTC.
        assert_eq!(
            next_after(&daily, at).unwrap().to_rfc3339(),
            "2026-01-16T01:00:00+00:00"
        );
        let utc = schedule("0 0 2 * * *", "UTC");
        assert_eq!(
            next_after(&utc, at).unwrap().to_rfc3339(),
            "2026-01-16T02:00:00+00:00"
        );
    }

    #[test]
    fn missed_runs_are_counted() {
        let every_minute = schedule("0 * * * * *", "UTC");
        let from: DateTime<Utc> = "2026-01-15T12:00:00Z".parse().unwrap();
        let to: DateTime<Utc> = "2026-01-15T12:10:30Z".parse().unwrap();
        let (count, last) = missed_between(&every_minute, from, to, 1000);
        assert_eq!(count, 10);
        assert_eq!(last.unwrap().to_rfc3339(), "2026-01-15T12:10:00+00:00");
    }

    /// One set of tests for every schedule store: two handles on one
    /// backend stand for two nodes (or a restart).
    mod conformance {
        use super::super::*;

        fn t(s: &str) -> DateTime<Utc> {
            s.parse().unwrap()
        }

        async fn suite(first: Store, second: Store) {
            assert_eq!(first.last("nightly").await.unwrap(), None);
            // The first start is recorded once; a later start keeps it.
            first
                .begin("nightly", t("2026-01-15T12:00:00Z"))
                .await
                .unwrap();
            second
                .begin("nightly", t("2026-01-15T12:00:05Z"))
                .await
                .unwrap();
            assert_eq!(
                second.last("nightly").await.unwrap(),
                Some(t("2026-01-15T12:00:00Z"))
            );
            // A due run is taken by exactly one of the two.
            let due = t("2026-01-15T13:00:00Z");
            let (a, b) = tokio::join!(
                first.advance("nightly", due),
                second.advance("nightly", due)
            );
            assert_eq!(
                [a.unwrap(), b.unwrap()].iter().filter(|&&x| x).count(),
                1,
                "a due run must be taken once"
            );
            // Going back is refused; going forward is taken.
            assert!(!first
                .advance("nightly", t("2026-01-15T12:30:00Z"))
                .await
                .unwrap());
            assert!(second
                .advance("nightly", t("2026-01-15T14:00:00Z"))
                .await
                .unwrap());
            assert_eq!(
                first.last("nightly").await.unwrap(),
                Some(t("2026-01-15T14:00:00Z"))
            );
            assert_eq!(first.cached("nightly"), Some(t("2026-01-15T14:00:00Z")));
            // Schedules are independent.
            assert_eq!(first.last("hourly").await.unwrap(), None);
            assert!(first.advance("hourly", due).await.unwrap());
        }

        #[tokio::test]
        async fn file() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::File(FileState::open(dir.path()));
            suite(store.clone(), store).await;
            // What was recorded survives a restart.
            let reopened = Store::File(FileState::open(dir.path()));
            assert_eq!(
                reopened.last("nightly").await.unwrap(),
                Some(t("2026-01-15T14:00:00Z"))
            );
        }

        #[tokio::test]
        async fn postgres() {
            let Some(options) = gantry_cluster::testing::fresh_schema("schedules").await else {
                return;
            };
            let open = |node: &'static str| {
                let options = options.clone();
                async move {
                    let pg = Postgres::connect(&options).await.unwrap();
                    gantry_cluster::migrate::postgres(&pg, &POSTGRES)
                        .await
                        .unwrap();
                    Store::Postgres {
                        pg,
                        node: node.to_string(),
                        seen: Arc::default(),
                    }
                }
            };
            let (first, second) = tokio::join!(open("n1"), open("n2"));
            suite(first, second).await;
        }
    }
}
