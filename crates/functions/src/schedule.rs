//! `[schedules.NAME]`: invoke a function on a cron schedule, in a time zone.
//!
//! Each firing is a CloudEvent (binary mode, `type = dev.gantry.schedule`,
//! `id = NAME/SCHEDULED-TIME`) posted to the function's listener, so WAGI
//! modules, wasi:http components and Lambda functions all receive it the way
//! they receive events from the bus.
//!
//! The last scheduled time that fired is kept per schedule in
//! `schedules.json` in the data directory (written atomically). At start,
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
use gantry_manifest::{Missed, Schedule};
use http::HeaderValue;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Functions;

/// Where each schedule's last fired time is kept.
#[derive(Debug, Clone)]
struct State {
    path: PathBuf,
    last: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
}

impl State {
    fn open(data_dir: &Path) -> State {
        let path = data_dir.join("schedules.json");
        let last = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        State {
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

    /// [`State::set`] on a blocking thread: the fsync stays off the async
    /// workers that serve requests.
    async fn record(&self, name: &str, at: DateTime<Utc>) {
        let (state, name) = (self.clone(), name.to_string());
        let _ = tokio::task::spawn_blocking(move || state.set(&name, at)).await;
    }

    /// Records `at` for `name` and writes the file (temp file, fsync,
    /// rename). Schedules write concurrently: the lock is held across the
    /// write so each rename publishes a whole, current file.
    fn set(&self, name: &str, at: DateTime<Utc>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
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
    state: State,
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
    pub fn new(data_dir: &Path, functions: Functions) -> Scheduler {
        Scheduler {
            functions,
            state: State::open(data_dir),
            running: Arc::default(),
        }
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
                last_fired: self.state.get(name).map(|t| t.to_rfc3339()),
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
    let now = Utc::now();
    match scheduler.state.get(&name) {
        Some(last) => {
            let (missed, latest) = missed_between(&schedule, last, now, 100_000);
            if missed > 0 {
                match schedule.missed {
                    Missed::Skip => {
                        tracing::warn!(target: "gantry::schedules", schedule = %name, missed, "runs were missed while Gantry was down; skipping them (missed = \"skip\")");
                        scheduler.state.record(&name, now).await;
                    }
                    Missed::CatchUp => {
                        let at = latest.unwrap_or(now);
                        tracing::info!(target: "gantry::schedules", schedule = %name, missed, "runs were missed while Gantry was down; running once to catch up");
                        scheduler.state.record(&name, at).await;
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
        None => scheduler.state.record(&name, now).await,
    }
    loop {
        let from = scheduler
            .state
            .get(&name)
            .unwrap_or_else(Utc::now)
            .max(Utc::now() - chrono::Duration::seconds(1));
        let Some(next) = next_after(&schedule, from) else {
            tracing::warn!(target: "gantry::schedules", schedule = %name, "the schedule never fires again");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        scheduler.state.record(&name, next).await;
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
}
