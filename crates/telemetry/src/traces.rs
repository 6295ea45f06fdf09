//! The built-in trace store: spans from every hop Gantry sees, kept in
//! `DATA_DIR/traces.db` (SQLite), bounded by age and count, and read back by
//! the admin API and `gantry traces`.
//!
//! Recording never blocks a request: spans go through a bounded channel to
//! one writer thread that inserts them in batches (one transaction per
//! batch); when the channel is full a span is dropped and counted.
//!
//! The writer thread also samples ([`Sampling`]): a trace is kept when its id
//! falls under the configured ratio (the same decision on every hop, as in
//! OpenTelemetry's `TraceIdRatioBased`), and *always* when any of its spans
//! failed or was slow. Spans of a trace not (yet) kept wait in memory for
//! [`HOLD`]; a failing or slow span arriving in that time keeps the whole
//! trace, including what came before it (tail sampling).

pub use crate::attributes::{AttrValue, Attributes};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::Serialize;

/// Spans waiting for the writer at most; more are dropped. The queue is an
/// array allocated (and touched) whole at start, so it holds boxes: 32k
/// slots of a pointer cost 0.5 MiB of memory, 32k spans inline cost ~8 MiB.
const QUEUE: usize = 32_768;
/// How often the writer takes what is queued.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Spans kept at most; the oldest go first.
const MAX_SPANS: i64 = 200_000;
/// The store's size on disk at most (table, indexes and write-ahead log
/// together stay near this); the oldest spans go first.
const MAX_BYTES: i64 = 64 * 1024 * 1024;
/// How often the limits are applied. Often enough that a burst cannot grow
/// the file far past them (SQLite reuses freed pages but never shrinks a
/// file by itself).
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Spans older than this are removed.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long spans of a trace not sampled wait for a failing or slow span
/// that would keep the trace.
pub const HOLD: Duration = Duration::from_secs(10);
/// Spans waiting that way at most; the oldest traces go first.
const MAX_HELD: usize = 50_000;
/// How long a trace kept for a failure keeps its later spans.
const KEEP_LATER: Duration = Duration::from_secs(120);

/// Which traces are kept. Errors and slow spans keep their trace whatever
/// the ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// `false`: no span is recorded at all.
    pub enabled: bool,
    /// The fraction of traces kept, from 0 to 1, decided on the trace id.
    pub ratio: f64,
    /// A trace with a span at least this long is kept.
    pub slow: Duration,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            enabled: true,
            ratio: 1.0,
            slow: Duration::from_secs(1),
        }
    }
}

impl Sampling {
    /// Whether `trace_id` falls under the ratio: its rightmost 56 bits (the
    /// random part of a W3C trace id) compared with `ratio × 2^56`.
    pub fn keeps_id(&self, trace_id: &str) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let tail = trace_id
            .get(trace_id.len().saturating_sub(14)..)
            .unwrap_or("");
        match u64::from_str_radix(tail, 16) {
            Ok(random) => self.keeps_random(random),
            Err(_) => true,
        }
    }

    /// [`Sampling::keeps_id`] for a trace id as a number.
    pub fn keeps_number(&self, trace_id: u128) -> bool {
        self.keeps_random((trace_id & ((1 << 56) - 1)) as u64)
    }

    fn keeps_random(&self, random: u64) -> bool {
        self.ratio >= 1.0 || (random as f64) < self.ratio * (1u64 << 56) as f64
    }
}

/// Counts of what happened to recorded spans.
#[derive(Debug, Default)]
pub struct SpanCounts {
    /// Stored (and exported).
    pub kept: AtomicU64,
    /// Not kept by sampling.
    pub sampled_out: AtomicU64,
    /// Lost because the writer or the exporter could not keep up.
    pub dropped: AtomicU64,
}

/// One operation of one hop, in OpenTelemetry's terms.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// E.g. `GET place-order`, `function confirm`.
    pub name: String,
    /// `server`, `client`, `internal`, `producer` or `consumer`.
    pub kind: &'static str,
    /// What produced it: `gateway`, `function:NAME`...
    pub service: String,
    /// Unix nanoseconds.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub error: bool,
    /// OpenTelemetry semantic-convention attributes (`http.route`, ...).
    pub attributes: Attributes,
    /// The trace's head sampling decision (the `traceparent` flag). A span
    /// not sampled is kept only when its trace turns out to matter: a span
    /// of it failed or was slow.
    #[serde(skip)]
    pub sampled: bool,
}

/// A trace as listed: its root span and totals.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root: String,
    pub service: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub spans: u64,
    pub error: bool,
}

/// Filters for [`TraceStore::list`].
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub route: Option<String>,
    pub min_duration: Option<Duration>,
    pub errors_only: bool,
    /// Some span answered an HTTP status in this range.
    pub status: Option<(u16, u16)>,
    pub limit: usize,
}

/// Writes and reads spans. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TraceStore {
    sender: SyncSender<Box<Span>>,
    reader: Arc<Mutex<Connection>>,
    counts: Arc<SpanCounts>,
    enabled: Arc<AtomicBool>,
    sampling: Arc<RwLock<Sampling>>,
    /// Kept spans also go here when OTLP export is on.
    export: Arc<OnceLock<tokio::sync::mpsc::Sender<Span>>>,
    writer: std::thread::Thread,
    flush: Arc<Flush>,
}

/// Lets [`TraceStore::flush`] wait for the writer to take what is queued.
#[derive(Debug, Default)]
struct Flush {
    requested: AtomicU64,
    done: Mutex<u64>,
    cond: Condvar,
}

impl Flush {
    fn done(&self, request: u64) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *done = (*done).max(request);
        self.cond.notify_all();
    }
}

impl TraceStore {
    /// Opens (or creates) `traces.db` in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<TraceStore, String> {
        TraceStore::open_bounded(data_dir, MAX_SPANS, MAX_BYTES)
    }

    /// [`TraceStore::open`] with other bounds (tests use small ones).
    fn open_bounded(data_dir: &Path, max_spans: i64, max_bytes: i64) -> Result<TraceStore, String> {
        let path = data_dir.join("traces.db");
        let fail =
            |e: rusqlite::Error| format!("cannot open the trace store {}: {e}", path.display());
        let writer = Connection::open(&path).map_err(fail)?;
        // Takes effect on a new file (before its first table): trimmed pages
        // are then given back to the filesystem.
        writer
            .pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(fail)?;
        // Traces are diagnostics: a lost last batch on a crash is acceptable,
        // so no fsync per batch.
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA journal_size_limit = 8388608;
                 CREATE TABLE IF NOT EXISTS spans (
                     trace_id TEXT NOT NULL,
                     span_id TEXT NOT NULL,
                     parent_id TEXT,
                     name TEXT NOT NULL,
                     kind TEXT NOT NULL,
                     service TEXT NOT NULL,
                     start_ns INTEGER NOT NULL,
                     duration_ns INTEGER NOT NULL,
                     error INTEGER NOT NULL,
                     attributes TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
                 CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns);",
            )
            .map_err(fail)?;
        let reader = Connection::open(&path).map_err(fail)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let counts = Arc::<SpanCounts>::default();
        let sampling = Arc::<RwLock<Sampling>>::default();
        let export = Arc::<OnceLock<tokio::sync::mpsc::Sender<Span>>>::default();
        let flush = Arc::<Flush>::default();
        let writer = Writer {
            max_spans,
            max_bytes,
            connection: writer,
            tail: Tail::default(),
            sampling: sampling.clone(),
            counts: counts.clone(),
            export: export.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("gantry-traces".into())
            .spawn({
                let flush = flush.clone();
                move || writer.run(receiver, flush)
            })
            .map_err(|e| e.to_string())?;
        Ok(TraceStore {
            sender,
            reader: Arc::new(Mutex::new(reader)),
            counts,
            enabled: Arc::new(AtomicBool::new(true)),
            sampling,
            export,
            writer: thread.thread().clone(),
            flush,
        })
    }

    /// Sends every kept span to `exporter` (OTLP) too, from now on.
    pub fn export_to(&self, exporter: tokio::sync::mpsc::Sender<Span>) {
        let _ = self.export.set(exporter);
    }

    /// Waits (at most `limit`) until the writer has taken every span
    /// recorded before the call: stored, exported or held for sampling.
    pub fn flush(&self, limit: Duration) {
        let request = self.flush.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.writer.unpark();
        let done = self.flush.done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .flush
            .cond
            .wait_timeout_while(done, limit, |done| *done < request);
    }

    /// Which traces to keep from now on (at start and on reload).
    pub fn set_sampling(&self, sampling: Sampling) {
        self.enabled.store(sampling.enabled, Ordering::Relaxed);
        *self.sampling.write().unwrap_or_else(|e| e.into_inner()) = sampling;
    }

    /// Whether spans are recorded at all; producers may skip building them.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Head sampling: whether a trace that starts here (no caller's
    /// `traceparent`) is sampled, decided on its id by the ratio.
    pub fn sample(&self, trace_id: u128) -> bool {
        let sampling = *self.sampling.read().unwrap_or_else(|e| e.into_inner());
        sampling.enabled && sampling.keeps_number(trace_id)
    }

    /// [`TraceStore::sample`] for a trace id in hex: what a hop without the
    /// caller's flag at hand (a saga run resumed from its journal) decides,
    /// the same as the gateway did for that trace.
    pub fn sample_hex(&self, trace_id: &str) -> bool {
        let sampling = *self.sampling.read().unwrap_or_else(|e| e.into_inner());
        sampling.enabled && sampling.keeps_id(trace_id)
    }

    /// Whether a span is worth building and recording: its trace was sampled
    /// at the head, or the span failed or was slow (which keeps its whole
    /// trace). Also what exemplars use: a trace id on a metric must lead
    /// somewhere.
    pub fn keeps(&self, sampled: bool, error: bool, duration: Duration) -> bool {
        let sampling = *self.sampling.read().unwrap_or_else(|e| e.into_inner());
        sampling.enabled && (sampled || error || duration >= sampling.slow)
    }

    /// A span's trace context: the caller's trace continued when
    /// `traceparent` is valid, else a new trace sampled by the ratio.
    pub fn context(&self, traceparent: Option<&str>) -> crate::context::TraceContext {
        crate::context::TraceContext::continue_or_start(traceparent.map(str::as_bytes), |id| {
            self.sample(id)
        })
    }

    /// Counts a span its producer decided not to build (not sampled, not
    /// failing, not slow), as if the writer had sampled it out.
    pub fn sampled_out(&self) {
        if self.enabled() {
            self.counts.sampled_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a span for sampling, the store and the exporter; never blocks.
    pub fn record(&self, span: Span) {
        if !self.enabled() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.sender.try_send(Box::new(span)) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers `gantry_trace_spans_total{outcome}` (kept, sampled_out,
    /// dropped), brought up to date at each scrape.
    pub fn register_metrics(&self, metrics: &crate::Metrics) {
        #[derive(
            Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet,
        )]
        struct Outcome {
            outcome: &'static str,
        }
        let family = prometheus_client::metrics::family::Family::<
            Outcome,
            prometheus_client::metrics::counter::Counter,
        >::default();
        metrics.register(|registry| {
            registry.register(
                "trace_spans",
                "Spans recorded, by what became of them: kept (stored and exported), sampled_out, dropped (the writer's queue was full)",
                family.clone(),
            )
        });
        let counts = self.counts.clone();
        metrics.on_scrape(Arc::new(move || {
            for (outcome, total) in [
                ("kept", &counts.kept),
                ("sampled_out", &counts.sampled_out),
                ("dropped", &counts.dropped),
            ] {
                let counter = family.get_or_create(&Outcome { outcome });
                let (total, shown) = (total.load(Ordering::Relaxed), counter.get());
                if total > shown {
                    counter.inc_by(total - shown);
                }
            }
            Box::pin(async {})
        }));
    }

    /// What happened to the spans recorded so far.
    pub fn counts(&self) -> &SpanCounts {
        &self.counts
    }

    /// Recent traces, newest first.
    pub fn list(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, String> {
        let connection = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut statement = connection
            .prepare(
                "SELECT trace_id, MIN(start_ns), MAX(start_ns + duration_ns) - MIN(start_ns),
                        COUNT(*), MAX(error)
                 FROM spans
                 WHERE trace_id IN (SELECT DISTINCT trace_id FROM spans ORDER BY start_ns DESC LIMIT 5000)
                 GROUP BY trace_id ORDER BY MIN(start_ns) DESC",
            )
            .map_err(|e| e.to_string())?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)? as u64,
                    row.get::<_, i64>(2)? as u64,
                    row.get::<_, i64>(3)? as u64,
                    row.get::<_, i64>(4)? != 0,
                ))
            })
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for row in rows {
            let (trace_id, start_ns, duration_ns, spans, error) = row.map_err(|e| e.to_string())?;
            if query.errors_only && !error {
                continue;
            }
            if query
                .min_duration
                .is_some_and(|d| (duration_ns as u128) < d.as_nanos())
            {
                continue;
            }
            let trace = spans_of(&connection, &trace_id)?;
            let root = trace
                .iter()
                .find(|s| {
                    s.parent_id
                        .as_ref()
                        .is_none_or(|p| !trace.iter().any(|o| &o.span_id == p))
                })
                .or(trace.first());
            let Some(root) = root else { continue };
            if let Some(service) = &query.service {
                if !trace.iter().any(|s| {
                    &s.service == service
                        || s.attributes
                            .get("gantry.service")
                            .and_then(AttrValue::as_str)
                            == Some(service)
                }) {
                    continue;
                }
            }
            if let Some((low, high)) = query.status {
                if !trace.iter().any(|s| {
                    s.attributes
                        .get("http.response.status_code")
                        .and_then(AttrValue::as_i64)
                        .is_some_and(|c| (i64::from(low)..=i64::from(high)).contains(&c))
                }) {
                    continue;
                }
            }
            if let Some(route) = &query.route {
                if !trace.iter().any(|s| {
                    s.attributes.get("http.route").and_then(AttrValue::as_str) == Some(route)
                }) {
                    continue;
                }
            }
            out.push(TraceSummary {
                trace_id,
                root: root.name.clone(),
                service: root.service.clone(),
                start_ns,
                duration_ns,
                spans,
                error,
            });
            if out.len() >= query.limit.max(1) {
                break;
            }
        }
        Ok(out)
    }

    /// Every span of a trace, by start time.
    pub fn trace(&self, trace_id: &str) -> Result<Vec<Span>, String> {
        let connection = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        spans_of(&connection, trace_id)
    }
}

fn spans_of(connection: &Connection, trace_id: &str) -> Result<Vec<Span>, String> {
    let mut statement = connection
        .prepare_cached(
            "SELECT trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, error, attributes
             FROM spans WHERE trace_id = ?1 ORDER BY start_ns, rowid",
        )
        .map_err(|e| e.to_string())?;
    let rows = statement
        .query_map([trace_id], |row| {
            let kind: String = row.get(4)?;
            let attributes: String = row.get(9)?;
            Ok(Span {
                trace_id: row.get(0)?,
                span_id: row.get(1)?,
                parent_id: row.get(2)?,
                name: row.get(3)?,
                kind: match kind.as_str() {
                    "server" => "server",
                    "client" => "client",
                    "producer" => "producer",
                    "consumer" => "consumer",
                    _ => "internal",
                },
                service: row.get(5)?,
                start_ns: row.get::<_, i64>(6)? as u64,
                duration_ns: row.get::<_, i64>(7)? as u64,
                error: row.get::<_, i64>(8)? != 0,
                attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                sampled: true,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// The writer thread: samples, stores in batches, exports, trims.
struct Writer {
    connection: Connection,
    max_spans: i64,
    max_bytes: i64,
    tail: Tail,
    sampling: Arc<RwLock<Sampling>>,
    counts: Arc<SpanCounts>,
    export: Arc<OnceLock<tokio::sync::mpsc::Sender<Span>>>,
}

impl Writer {
    /// Wakes every [`WRITE_EVERY`] (or when asked to flush) and takes
    /// whatever is queued. Polling rather than blocking on the channel is
    /// deliberate: a receiver blocked in `recv` is woken by every span, and
    /// on a busy core those wake-ups (a futex call and a context switch per
    /// span) cost more than everything else tracing does.
    fn run(mut self, receiver: Receiver<Box<Span>>, flush: Arc<Flush>) {
        let mut last_trim = Instant::now();
        loop {
            std::thread::park_timeout(WRITE_EVERY);
            let asked = flush.requested.load(Ordering::Acquire);
            let sampling = *self.sampling.read().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut batch = Vec::new();
            let mut stopped = false;
            loop {
                match receiver.try_recv() {
                    Ok(span) => self.tail.offer(*span, &sampling, now, &mut batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stopped = true;
                        break;
                    }
                }
            }
            let expired = self.tail.expire(now);
            self.counts
                .sampled_out
                .fetch_add(expired, Ordering::Relaxed);
            if !batch.is_empty() {
                self.counts
                    .kept
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.store(&batch);
                if let Some(exporter) = self.export.get() {
                    for span in batch {
                        if exporter.try_send(span).is_err() {
                            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            flush.done(asked);
            if stopped {
                return;
            }
            if last_trim.elapsed() > TRIM_EVERY {
                last_trim = Instant::now();
                self.trim();
            }
        }
    }

    fn store(&mut self, batch: &[Span]) {
        let written = (|| -> rusqlite::Result<()> {
            let tx = self.connection.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO spans (trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, error, attributes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for span in batch {
                    insert.execute(params![
                        span.trace_id,
                        span.span_id,
                        span.parent_id,
                        span.name,
                        span.kind,
                        span.service,
                        span.start_ns as i64,
                        span.duration_ns as i64,
                        span.error as i64,
                        serde_json::to_string(&span.attributes).unwrap_or_default(),
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(error) = written {
            tracing::warn!(target: "gantry::traces", %error, spans = batch.len(), "cannot store spans");
        }
    }

    fn trim(&mut self) {
        let horizon = SystemTime::now()
            .checked_sub(MAX_AGE)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        let _ = self
            .connection
            .execute("DELETE FROM spans WHERE start_ns < ?1", [horizon]);
        let _ = self.connection.execute(
            "DELETE FROM spans WHERE rowid <= (SELECT MAX(rowid) FROM spans) - ?1",
            [self.max_spans],
        );
        // Over the size limit: the oldest spans go, as large a share as the
        // excess (aiming a tenth under the limit), until under it.
        for _ in 0..8 {
            let used = self.used_bytes();
            if used <= self.max_bytes {
                break;
            }
            let share = 1.0 - (self.max_bytes as f64 * 0.9) / used as f64;
            let _ = self.connection.execute(
                "DELETE FROM spans WHERE rowid <= (SELECT MIN(rowid) + CAST((MAX(rowid) - MIN(rowid)) * ?1 AS INTEGER) FROM spans)",
                [share],
            );
        }
        // Both pragmas answer with rows, which must be stepped through for
        // them to finish.
        for pragma in [
            "PRAGMA incremental_vacuum",
            "PRAGMA wal_checkpoint(TRUNCATE)",
        ] {
            if let Ok(mut statement) = self.connection.prepare(pragma) {
                let _ = statement
                    .query([])
                    .map(|mut rows| while let Ok(Some(_)) = rows.next() {});
            }
        }
    }

    /// Bytes in use by the store's pages (free pages excluded).
    fn used_bytes(&self) -> i64 {
        let pragma = |name: &str| {
            self.connection
                .query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0))
                .unwrap_or(0)
        };
        (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")
    }
}

/// Tail sampling: spans of traces not kept by the ratio wait here for a
/// reason to keep them.
#[derive(Debug, Default)]
struct Tail {
    /// Spans waiting, by trace.
    held: HashMap<String, Vec<Span>>,
    /// Traces in the order their first span arrived, to expire them.
    arrivals: VecDeque<(Instant, String)>,
    held_spans: usize,
    /// Traces kept for a failure or slowness: their later spans are kept too.
    kept: HashMap<String, Instant>,
    kept_order: VecDeque<(Instant, String)>,
}

impl Tail {
    /// Decides on `span`: kept spans (and any held ones it keeps) go to `out`.
    fn offer(&mut self, span: Span, sampling: &Sampling, now: Instant, out: &mut Vec<Span>) {
        if span.sampled || self.kept.contains_key(&span.trace_id) {
            out.push(span);
            return;
        }
        let notable = span.error || span.duration_ns >= sampling.slow.as_nanos() as u64;
        if notable {
            if let Some(held) = self.held.remove(&span.trace_id) {
                self.held_spans -= held.len();
                out.extend(held);
            }
            self.kept.insert(span.trace_id.clone(), now);
            self.kept_order.push_back((now, span.trace_id.clone()));
            out.push(span);
            return;
        }
        let trace_id = span.trace_id.clone();
        match self.held.get_mut(&trace_id) {
            Some(held) => held.push(span),
            None => {
                self.arrivals.push_back((now, trace_id.clone()));
                self.held.insert(trace_id, vec![span]);
            }
        }
        self.held_spans += 1;
    }

    /// Forgets held traces older than [`HOLD`] (or the oldest, past
    /// [`MAX_HELD`] spans); returns how many spans were let go.
    fn expire(&mut self, now: Instant) -> u64 {
        let mut released = 0;
        while let Some((arrived, trace_id)) = self.arrivals.front() {
            let old = now.duration_since(*arrived) >= HOLD;
            if !old && self.held_spans <= MAX_HELD {
                break;
            }
            if let Some(held) = self.held.remove(trace_id) {
                self.held_spans -= held.len();
                released += held.len() as u64;
            }
            self.arrivals.pop_front();
        }
        while let Some((at, trace_id)) = self.kept_order.front() {
            if now.duration_since(*at) < KEEP_LATER {
                break;
            }
            if self.kept.get(trace_id) == Some(at) {
                self.kept.remove(trace_id);
            }
            self.kept_order.pop_front();
        }
        released
    }
}

/// Unix nanoseconds of `time`.
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        trace: &str,
        id: &str,
        parent: Option<&str>,
        name: &str,
        start: u64,
        duration: u64,
    ) -> Span {
        Span {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_id: parent.map(str::to_string),
            name: name.into(),
            kind: "server",
            service: "gateway".into(),
            start_ns: start,
            duration_ns: duration,
            error: false,
            attributes: Attributes::new(),
            sampled: false,
        }
    }

    #[test]
    fn the_ratio_is_decided_on_the_trace_id_alone() {
        let tenth = Sampling {
            ratio: 0.1,
            ..Sampling::default()
        };
        // The rightmost 56 bits: 0x19..99 is under 10% of 2^56, 0x1a.. is over.
        assert!(tenth.keeps_id("ffffffffffffffffff19999999999999"));
        assert!(!tenth.keeps_id("0000000000000000001a000000000000"));
        let kept = (0..10_000u64)
            .filter(|n| tenth.keeps_id(&format!("{:032x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
            .count();
        assert!((800..1200).contains(&kept), "{kept} of 10000 kept at 10%");
        let none = Sampling {
            ratio: 0.0,
            ..Sampling::default()
        };
        assert!(!none.keeps_id("ffffffffffffffffffffffffffffffff"));
        assert!(Sampling::default().keeps_id("00000000000000000000000000000000"));
    }

    #[test]
    fn a_failing_or_slow_span_keeps_its_whole_trace() {
        let sampling = Sampling {
            ratio: 0.0,
            slow: Duration::from_millis(500),
            ..Sampling::default()
        };
        let mut tail = Tail::default();
        let now = Instant::now();
        let mut out = Vec::new();
        let ok = "00000000000000000000000000000001";
        let failing = "00000000000000000000000000000002";
        let slow = "00000000000000000000000000000003";
        tail.offer(
            span(ok, "a1", None, "GET ok", 0, 1_000),
            &sampling,
            now,
            &mut out,
        );
        tail.offer(
            span(failing, "b2", Some("b1"), "function f", 0, 1_000),
            &sampling,
            now,
            &mut out,
        );
        assert!(out.is_empty(), "nothing is kept before a reason");
        let mut root = span(failing, "b1", None, "GET failing", 0, 2_000);
        root.error = true;
        tail.offer(root, &sampling, now, &mut out);
        assert_eq!(
            out.iter().map(|s| s.span_id.as_str()).collect::<Vec<_>>(),
            ["b2", "b1"]
        );
        // A later span of a kept trace is kept too.
        out.clear();
        tail.offer(
            span(failing, "b3", Some("b1"), "deliver", 0, 10),
            &sampling,
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.clear();
        tail.offer(
            span(slow, "c1", None, "GET slow", 0, 600_000_000),
            &sampling,
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        // The healthy trace is let go after the hold.
        assert_eq!(tail.expire(now + HOLD / 2), 0);
        assert_eq!(tail.expire(now + HOLD), 1);
        assert!(tail.held.is_empty() && tail.held_spans == 0);
        out.clear();
        tail.offer(
            span(failing, "b4", Some("b1"), "late", 0, 10),
            &sampling,
            now + KEEP_LATER,
            &mut out,
        );
        tail.expire(now + KEEP_LATER);
        assert_eq!(
            out.len(),
            1,
            "still within the keep-later time when offered"
        );
        tail.offer(
            span(failing, "b5", Some("b1"), "later", 0, 10),
            &sampling,
            now + KEEP_LATER,
            &mut out,
        );
        assert_eq!(out.len(), 1, "forgotten after the keep-later time");
    }

    #[test]
    fn held_spans_are_bounded() {
        let sampling = Sampling {
            ratio: 0.0,
            ..Sampling::default()
        };
        let mut tail = Tail::default();
        let now = Instant::now();
        let mut out = Vec::new();
        for n in 0..(MAX_HELD as u64 + 10) {
            tail.offer(
                span(&format!("{n:032x}"), "a1", None, "GET", 0, 1),
                &sampling,
                now,
                &mut out,
            );
        }
        assert_eq!(tail.expire(now), 10);
        assert_eq!(tail.held_spans, MAX_HELD);
    }

    fn sampled(mut span: Span) -> Span {
        span.sampled = true;
        span
    }

    #[test]
    fn the_store_stays_within_its_size_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open_bounded(dir.path(), 1_000_000, 256 * 1024).unwrap();
        let mut writer = Writer {
            connection: Connection::open(dir.path().join("traces.db")).unwrap(),
            max_spans: 1_000_000,
            max_bytes: 256 * 1024,
            tail: Tail::default(),
            sampling: Arc::default(),
            counts: Arc::default(),
            export: Arc::default(),
        };
        let spans: Vec<Span> = (0..4_000u32)
            .map(|n| {
                let now = unix_nanos(SystemTime::now());
                let mut s = sampled(span(&format!("{n:032x}"), "a1", None, "GET", now, 1));
                s.attributes.insert("url.path", "/".repeat(200));
                s
            })
            .collect();
        writer.store(&spans);
        assert!(writer.used_bytes() > 256 * 1024);
        writer.trim();
        let file = std::fs::metadata(dir.path().join("traces.db"))
            .unwrap()
            .len();
        assert!(writer.used_bytes() <= 256 * 1024, "{}", writer.used_bytes());
        assert!(file <= 512 * 1024, "the file shrank too: {file} bytes");
        let left: i64 = writer
            .connection
            .query_row("SELECT COUNT(*) FROM spans", [], |r| r.get(0))
            .unwrap();
        assert!(left > 0 && left < 4_000, "{left}");
        // The newest spans are the ones kept.
        let newest = format!("{:032x}", 3_999);
        assert_eq!(store.trace(&newest).unwrap().len(), 1);
    }

    #[test]
    fn spans_are_stored_and_read_back_as_traces() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path()).unwrap();
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        store.record(sampled(span(
            t,
            "00000000000000a1",
            Some("00000000000000ff"),
            "GET place-order",
            1_000,
            5_000,
        )));
        store.record(sampled(span(
            t,
            "00000000000000a2",
            Some("00000000000000a1"),
            "function confirm",
            2_000,
            1_000,
        )));
        let mut errors = span(
            "11111111111111111111111111111111",
            "00000000000000b1",
            None,
            "GET x",
            10_000,
            50,
        );
        errors.error = true;
        store.record(errors);
        store.flush(Duration::from_secs(5));
        let spans = store.trace(t).unwrap();
        assert_eq!(spans[1].parent_id.as_deref(), Some("00000000000000a1"));
        let all = store
            .list(&TraceQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 2);
        let ours = all.iter().find(|s| s.trace_id == t).unwrap();
        assert_eq!(
            (ours.root.as_str(), ours.spans, ours.duration_ns),
            ("GET place-order", 2, 5_000)
        );
        let errors = store
            .list(&TraceQuery {
                limit: 10,
                errors_only: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(errors.len(), 1);
        let slow = store
            .list(&TraceQuery {
                limit: 10,
                min_duration: Some(Duration::from_nanos(1_000)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(slow.len(), 1);
    }
}
