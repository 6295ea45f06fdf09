//! The built-in trace store: spans from every hop Gantry sees, kept in
//! `DATA_DIR/traces.db` (SQLite), bounded by age and count, and read back by
//! the admin API and `gantry traces`.
//!
//! Recording never blocks a request: spans go through a bounded channel to
//! one writer thread that inserts them in batches (one transaction per
//! batch); when the channel is full a span is dropped and counted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::Serialize;

/// Spans waiting for the writer at most; more are dropped.
const QUEUE: usize = 16_384;
/// Spans kept at most; the oldest go first.
const MAX_SPANS: i64 = 200_000;
/// Spans older than this are removed.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

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
    pub attributes: serde_json::Map<String, serde_json::Value>,
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
    pub limit: usize,
}

/// Writes and reads spans. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TraceStore {
    sender: SyncSender<Span>,
    reader: Arc<Mutex<Connection>>,
    dropped: Arc<AtomicU64>,
    /// Also sent here when OTLP export is on.
    export: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Span>>>,
}

impl TraceStore {
    /// Opens (or creates) `traces.db` in `data_dir` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<TraceStore, String> {
        let path = data_dir.join("traces.db");
        let fail =
            |e: rusqlite::Error| format!("cannot open the trace store {}: {e}", path.display());
        let writer = Connection::open(&path).map_err(fail)?;
        // Traces are diagnostics: a lost last batch on a crash is acceptable,
        // so no fsync per batch.
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
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
        std::thread::Builder::new()
            .name("gantry-traces".into())
            .spawn(move || write_loop(writer, receiver))
            .map_err(|e| e.to_string())?;
        Ok(TraceStore {
            sender,
            reader: Arc::new(Mutex::new(reader)),
            dropped: Arc::default(),
            export: Arc::default(),
        })
    }

    /// Also sends every span to `exporter` (OTLP), from now on.
    pub fn export_to(&self, exporter: tokio::sync::mpsc::Sender<Span>) {
        let _ = self.export.set(exporter);
    }

    /// Queues a span for the store (and the exporter); never blocks.
    pub fn record(&self, span: Span) {
        if let Some(exporter) = self.export.get() {
            if exporter.try_send(span.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(TrySendError::Full(_)) = self.sender.try_send(span) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
                        || s.attributes.get("gantry.service").and_then(|v| v.as_str())
                            == Some(service)
                }) {
                    continue;
                }
            }
            if let Some(route) = &query.route {
                if !trace
                    .iter()
                    .any(|s| s.attributes.get("http.route").and_then(|v| v.as_str()) == Some(route))
                {
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
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

fn write_loop(mut connection: Connection, receiver: Receiver<Span>) {
    let mut last_trim = SystemTime::now();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batch.push(more);
            if batch.len() >= 1024 {
                break;
            }
        }
        let written = (|| -> rusqlite::Result<()> {
            let tx = connection.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO spans (trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, error, attributes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for span in &batch {
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
                        serde_json::Value::Object(span.attributes.clone()).to_string(),
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(error) = written {
            tracing::warn!(target: "gantry::traces", %error, spans = batch.len(), "cannot store spans");
        }
        if last_trim.elapsed().unwrap_or_default() > Duration::from_secs(60) {
            last_trim = SystemTime::now();
            let horizon = SystemTime::now()
                .checked_sub(MAX_AGE)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            let _ = connection.execute("DELETE FROM spans WHERE start_ns < ?1", [horizon]);
            let _ = connection.execute(
                "DELETE FROM spans WHERE rowid <= (SELECT MAX(rowid) FROM spans) - ?1",
                [MAX_SPANS],
            );
        }
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
            attributes: serde_json::Map::new(),
        }
    }

    #[test]
    fn spans_are_stored_and_read_back_as_traces() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path()).unwrap();
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        store.record(span(
            t,
            "00000000000000a1",
            Some("00000000000000ff"),
            "GET place-order",
            1_000,
            5_000,
        ));
        store.record(span(
            t,
            "00000000000000a2",
            Some("00000000000000a1"),
            "function confirm",
            2_000,
            1_000,
        ));
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
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.trace(t).unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
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
