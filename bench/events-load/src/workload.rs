//! What both targets share: the plan, the message payload, the publishers'
//! schedule and loop, the receiver's bookkeeping and the report.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

/// How many times a publish is tried before the message counts as failed.
/// Retries reuse the message id, so the broker's deduplication keeps them
/// from turning into duplicates.
const PUBLISH_ATTEMPTS: u32 = 3;
/// The pause between two attempts of one publish.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The load to generate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub count: u64,
    pub concurrency: usize,
    /// Total messages per second; `None` publishes flat out.
    pub rate: Option<f64>,
    /// The whole run (publishing and delivery) must fit in this.
    pub timeout: Duration,
}

/// The body of every message (the CloudEvent's `data` for Gantry, the
/// message payload for NATS).
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// Identifies the run, so messages from another run are not counted.
    pub run: String,
    /// 0..count, unique within the run.
    pub seq: u64,
    /// When the publish started, in ns since the Unix epoch.
    pub sent_ns: u64,
}

/// A unique id for this run: the process id and the start time.
pub fn run_id() -> String {
    format!("{}-{}", std::process::id(), now_ns())
}

/// Wall-clock time in ns since the Unix epoch (sender and receiver are on
/// the same machine, so the same clock).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds, from 1 µs to one hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record_micros(histogram: &mut Histogram<u64>, micros: u64) {
    // `saturating_record` clamps values outside the bounds instead of failing.
    histogram.saturating_record(micros.max(1));
}

fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

/// Why one publish failed.
#[derive(Debug)]
pub enum PublishError {
    /// Worth another try (connection reset, timeout, 5xx).
    Retry(String),
    /// Another try would fail the same way (unknown topic, bad request):
    /// the run stops.
    Fatal(String),
}

/// One publisher: sends a message and resolves once the broker has
/// acknowledged it as durable. Each publisher has one request outstanding at
/// a time; `Plan::concurrency` of them run at once.
pub trait Publisher: Send + 'static {
    fn publish(
        &mut self,
        payload: &Payload,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// Hands out sequence numbers to the publishers and, at a fixed rate, the
/// moment each one may go.
#[derive(Debug)]
struct Schedule {
    next: AtomicU64,
    count: u64,
    start: Instant,
    /// Time between two messages at a fixed rate.
    interval: Option<Duration>,
    /// Set when a publisher hit a fatal error: everyone stops.
    stopped: AtomicBool,
}

impl Schedule {
    /// The next message to publish, once it is due; `None` when all are taken.
    async fn next(&self) -> Option<u64> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if seq >= self.count {
            return None;
        }
        if let Some(interval) = self.interval {
            tokio::time::sleep_until((self.start + interval.mul_f64(seq as f64)).into()).await;
        }
        Some(seq)
    }

    /// How late a message goes compared with its slot at a fixed rate.
    fn lateness(&self, seq: u64) -> Duration {
        match self.interval {
            Some(interval) => self
                .start
                .elapsed()
                .saturating_sub(interval.mul_f64(seq as f64)),
            None => Duration::ZERO,
        }
    }
}

/// What the publishers saw.
#[derive(Debug)]
pub struct PublishStats {
    /// When the first publish started.
    pub start: Instant,
    /// When the last ack arrived.
    pub last_ack: Instant,
    pub acked: u64,
    /// Messages given up after every attempt failed.
    pub failed: u64,
    /// Failed attempts, retried or not.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publish-ack latency, µs.
    pub ack_latency: Histogram<u64>,
    /// At a fixed rate: the most a publish started after its slot.
    pub max_lateness: Duration,
}

/// What one publisher task brings back.
struct WorkerStats {
    acked: u64,
    failed: u64,
    errors: u64,
    first_error: Option<String>,
    fatal: Option<String>,
    ack_latency: Histogram<u64>,
    max_lateness: Duration,
    last_ack: Option<Instant>,
}

/// Runs every publisher until `plan.count` messages went out (or a fatal
/// error). Returns an error only for a fatal publish error.
pub async fn publish_all<P: Publisher>(
    publishers: Vec<P>,
    run: &str,
    plan: &Plan,
) -> Result<PublishStats, String> {
    let start = Instant::now();
    let schedule = Arc::new(Schedule {
        next: AtomicU64::new(0),
        count: plan.count,
        start,
        interval: plan.rate.map(|rate| Duration::from_secs_f64(1.0 / rate)),
        stopped: AtomicBool::new(false),
    });
    let run: Arc<str> = Arc::from(run);
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|publisher| tokio::spawn(publish_loop(publisher, schedule.clone(), run.clone())))
        .collect();

    let mut stats = PublishStats {
        start,
        last_ack: start,
        acked: 0,
        failed: 0,
        errors: 0,
        first_error: None,
        ack_latency: histogram(),
        max_lateness: Duration::ZERO,
    };
    let mut fatal = None;
    for task in tasks {
        let worker = task
            .await
            .map_err(|e| format!("a publisher task failed: {e}"))?;
        stats.acked += worker.acked;
        stats.failed += worker.failed;
        stats.errors += worker.errors;
        stats.first_error = stats.first_error.or(worker.first_error);
        fatal = fatal.or(worker.fatal);
        stats
            .ack_latency
            .add(&worker.ack_latency)
            .map_err(|e| format!("cannot merge histograms: {e}"))?;
        stats.max_lateness = stats.max_lateness.max(worker.max_lateness);
        if let Some(at) = worker.last_ack {
            stats.last_ack = stats.last_ack.max(at);
        }
    }
    match fatal {
        Some(error) => Err(error),
        None => Ok(stats),
    }
}

async fn publish_loop<P: Publisher>(
    mut publisher: P,
    schedule: Arc<Schedule>,
    run: Arc<str>,
) -> WorkerStats {
    let mut stats = WorkerStats {
        acked: 0,
        failed: 0,
        errors: 0,
        first_error: None,
        fatal: None,
        ack_latency: histogram(),
        max_lateness: Duration::ZERO,
        last_ack: None,
    };
    'messages: while let Some(seq) = schedule.next().await {
        stats.max_lateness = stats.max_lateness.max(schedule.lateness(seq));
        let payload = Payload {
            run: run.to_string(),
            seq,
            sent_ns: now_ns(),
        };
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let started = Instant::now();
            match publisher.publish(&payload).await {
                Ok(()) => {
                    let now = Instant::now();
                    record_micros(&mut stats.ack_latency, (now - started).as_micros() as u64);
                    stats.last_ack = Some(now);
                    stats.acked += 1;
                    continue 'messages;
                }
                Err(PublishError::Fatal(error)) => {
                    schedule.stopped.store(true, Ordering::Relaxed);
                    stats.fatal = Some(error);
                    break 'messages;
                }
                Err(PublishError::Retry(error)) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(error);
                    if attempt < PUBLISH_ATTEMPTS {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
        stats.failed += 1;
    }
    stats
}

// ---------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------

/// The receiver's bookkeeping: which messages arrived, how long they took.
/// Shared by whatever receives them (HTTP handlers, the NATS consumer).
#[derive(Debug)]
pub struct Tracker {
    run: String,
    count: u64,
    state: Mutex<TrackerState>,
    /// How many distinct messages arrived so far, for `wait_all`.
    distinct: watch::Sender<u64>,
}

#[derive(Debug)]
struct TrackerState {
    seen: Vec<bool>,
    distinct: u64,
    duplicates: u64,
    /// Messages of another run or with a sequence number out of range.
    foreign: u64,
    /// End-to-end latency (publish start to receipt), µs.
    end_to_end: Histogram<u64>,
    last_delivery: Option<Instant>,
}

/// What happened to one received message.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    First,
    Duplicate,
    Foreign,
}

impl Tracker {
    pub fn new(run: &str, count: u64) -> Tracker {
        Tracker {
            run: run.to_string(),
            count,
            state: Mutex::new(TrackerState {
                seen: vec![false; count as usize],
                distinct: 0,
                duplicates: 0,
                foreign: 0,
                end_to_end: histogram(),
                last_delivery: None,
            }),
            distinct: watch::Sender::new(0),
        }
    }

    /// Records one received message body (a JSON `Payload`).
    pub fn record(&self, body: &[u8]) -> Result<Receipt, String> {
        let received_ns = now_ns();
        let received = Instant::now();
        let payload: Payload =
            serde_json::from_slice(body).map_err(|e| format!("not a benchmark payload ({e})"))?;
        self.record_at(&payload, received_ns, received)
    }

    /// Records one message that arrived now, already decoded.
    pub fn record_payload(&self, payload: &Payload) -> Result<Receipt, String> {
        self.record_at(payload, now_ns(), Instant::now())
    }

    fn record_at(
        &self,
        payload: &Payload,
        received_ns: u64,
        received: Instant,
    ) -> Result<Receipt, String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "the tracker's lock is poisoned".to_string())?;
        if payload.run != self.run || payload.seq >= self.count {
            state.foreign += 1;
            return Ok(Receipt::Foreign);
        }
        let seen = &mut state.seen[payload.seq as usize];
        if *seen {
            state.duplicates += 1;
            return Ok(Receipt::Duplicate);
        }
        *seen = true;
        state.distinct += 1;
        let micros = received_ns.saturating_sub(payload.sent_ns) / 1000;
        record_micros(&mut state.end_to_end, micros);
        state.last_delivery = Some(received);
        let distinct = state.distinct;
        drop(state);
        self.distinct.send_replace(distinct);
        Ok(Receipt::First)
    }

    /// Resolves once every message of the run has arrived at least once.
    pub async fn wait_all(&self) {
        let mut distinct = self.distinct.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = distinct.wait_for(|n| *n >= self.count).await;
    }

    pub fn is_complete(&self) -> bool {
        *self.distinct.borrow() >= self.count
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// The figures of one run, printed as one line of JSON.
#[derive(Debug)]
pub struct Report {
    pub system: &'static str,
    pub count: u64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub complete: bool,
    pub delivered: u64,
    /// Acked messages per second, first publish start to last ack.
    pub publish_per_s: f64,
    /// Delivered messages per second, first publish start to last delivery.
    pub deliver_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    pub duplicates: u64,
    pub foreign: u64,
    pub publish_failed: u64,
    pub publish_errors: u64,
    pub first_error: Option<String>,
    pub max_lateness_ms: f64,
}

impl Report {
    pub fn new(
        system: &'static str,
        plan: &Plan,
        publish: &PublishStats,
        tracker: &Tracker,
    ) -> Result<Report, String> {
        let state = tracker
            .state
            .lock()
            .map_err(|_| "the tracker's lock is poisoned".to_string())?;
        let per_second = |n: u64, until: Instant| {
            let seconds = (until - publish.start).as_secs_f64();
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let last_delivery = state.last_delivery.unwrap_or(publish.start);
        Ok(Report {
            system,
            count: plan.count,
            concurrency: plan.concurrency,
            rate: plan.rate,
            complete: state.distinct >= plan.count,
            delivered: state.distinct,
            publish_per_s: per_second(publish.acked, publish.last_ack),
            deliver_per_s: per_second(state.distinct, last_delivery),
            ack_p50_ms: millis(&publish.ack_latency, 0.50),
            ack_p99_ms: millis(&publish.ack_latency, 0.99),
            e2e_p50_ms: millis(&state.end_to_end, 0.50),
            e2e_p99_ms: millis(&state.end_to_end, 0.99),
            e2e_max_ms: millis(&state.end_to_end, 1.0),
            duplicates: state.duplicates,
            foreign: state.foreign,
            publish_failed: publish.failed,
            publish_errors: publish.errors,
            first_error: publish.first_error.clone(),
            max_lateness_ms: publish.max_lateness.as_secs_f64() * 1000.0,
        })
    }

    pub fn to_json(&self) -> String {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "system": self.system,
            "count": self.count,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "complete": self.complete,
            "delivered": self.delivered,
            "publish_per_s": round(self.publish_per_s),
            "deliver_per_s": round(self.deliver_per_s),
            "ack_p50_ms": round(self.ack_p50_ms),
            "ack_p99_ms": round(self.ack_p99_ms),
            "e2e_p50_ms": round(self.e2e_p50_ms),
            "e2e_p99_ms": round(self.e2e_p99_ms),
            "e2e_max_ms": round(self.e2e_max_ms),
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "publish_failed": self.publish_failed,
            "publish_errors": self.publish_errors,
            "first_error": self.first_error,
            "max_lateness_ms": round(self.max_lateness_ms),
        })
        .to_string()
    }
}

/// Publishes with `publishers` and waits for the deliveries `tracker` counts,
/// everything within `plan.timeout`. The common middle of both targets.
pub async fn measure<P: Publisher>(
    system: &'static str,
    publishers: Vec<P>,
    tracker: &Tracker,
    run: &str,
    plan: &Plan,
) -> Result<Report, String> {
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let publish = tokio::time::timeout_at(deadline, publish_all(publishers, run, plan))
        .await
        .map_err(|_| {
            format!(
                "publishing did not finish within {:?} (--timeout)",
                plan.timeout
            )
        })??;
    eprintln!(
        "events-load: {system}: {} published, waiting for deliveries",
        publish.acked
    );
    // A timeout here is reported, not an error: the report says what arrived.
    let _ = tokio::time::timeout_at(deadline, tracker.wait_all()).await;
    Report::new(system, plan, &publish, tracker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_firsts_duplicates_and_foreigners() {
        let tracker = Tracker::new("r1", 2);
        let body = |run: &str, seq: u64| {
            serde_json::to_vec(&Payload {
                run: run.into(),
                seq,
                sent_ns: now_ns(),
            })
            .expect("serializable")
        };
        assert_eq!(tracker.record(&body("r1", 0)), Ok(Receipt::First));
        assert_eq!(tracker.record(&body("r1", 0)), Ok(Receipt::Duplicate));
        assert_eq!(tracker.record(&body("r0", 1)), Ok(Receipt::Foreign));
        assert_eq!(tracker.record(&body("r1", 7)), Ok(Receipt::Foreign));
        assert!(!tracker.is_complete());
        assert_eq!(tracker.record(&body("r1", 1)), Ok(Receipt::First));
        assert!(tracker.is_complete());
        assert!(tracker.record(b"{}").is_err());
    }
}
