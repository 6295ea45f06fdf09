//! Telemetry shared by every Gantry subsystem: the log pipeline, the
//! Prometheus metrics registry and the trace store ([`traces`]).
//!
//! Logs are `tracing` events. They are written by a background thread
//! (`tracing-appender`'s non-blocking writer) so a busy gateway never waits on
//! the terminal; the returned [`LogGuard`] flushes what is left on shutdown.
//! Metrics live in one [`Metrics`] registry that each subsystem registers its
//! families into, and the admin API renders at `/metrics`.

pub mod attributes;
pub mod context;
pub mod otlp;
pub mod traces;

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Upper bounds (seconds) of `gantry_http_request_duration_seconds`.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of `gantry_function_duration_seconds`: 100 µs
/// doubling to about 13 s.
pub fn function_duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18)
}

/// Keeps the background log writer alive; dropping it flushes pending lines.
#[must_use = "logs stop being written when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// Installs the global log subscriber writing to stderr. The filter comes from
/// `GANTRY_LOG` (same syntax as `RUST_LOG`), defaulting to `info`.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Under a flood, drop log lines rather than stall request handling.
        .lossy(true)
        // The queue is allocated whole at start: 16k lines (0.5 MiB) rather
        // than the default 128k (4 MiB of idle memory).
        .buffered_lines_limit(16_384)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    // A second init (tests that start several apps in one process) keeps the first.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard(guard)
}

/// Brings gauges read from storage (subscription lag, dead letters, parked
/// workflows) up to date just before a scrape.
pub type Refresher =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// The process-wide metrics registry. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    refreshers: Arc<Mutex<Vec<Refresher>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers metric families under the `gantry_` prefix.
    pub fn register(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        register(registry.sub_registry_with_prefix("gantry"));
    }

    /// Runs `refresh` before every scrape (see [`Metrics::refresh`]).
    pub fn on_scrape(&self, refresh: Refresher) {
        self.refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(refresh);
    }

    /// Brings scrape-time gauges up to date, giving up after two seconds (the
    /// scrape then shows the previous values).
    pub async fn refresh(&self) {
        let refreshers = self
            .refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = async {
            for refresh in refreshers {
                refresh().await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), all).await;
    }

    /// The Prometheus text exposition of every registered family.
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}
