//! Guest output: every line a function writes to stdout or stderr goes to
//! Gantry's log (tagged with the function, the request id and the trace id,
//! so logs and traces join) and into a bounded per-function buffer that
//! `gantry functions logs NAME` reads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Lines kept per function.
const KEEP: usize = 2000;

/// One line of guest output.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    /// The invocation's trace (32 hex digits), when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub line: String,
}

/// The recent output of every function.
#[derive(Debug, Clone, Default)]
pub struct LogBook {
    lines: Arc<Mutex<HashMap<Arc<str>, VecDeque<LogLine>>>>,
}

impl LogBook {
    pub(crate) fn write(
        &self,
        function: &Arc<str>,
        request_id: &str,
        trace_id: Option<&str>,
        stream: &'static str,
        line: &str,
    ) {
        tracing::info!(target: "gantry::functions::guest", function = %function, request_id, trace_id, stream, "{line}");
        let entry = LogLine {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.to_string(),
            trace_id: trace_id.map(str::to_owned),
            stream,
            line: line.to_string(),
        };
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = lines.entry(function.clone()).or_default();
        if buffer.len() == KEEP {
            buffer.pop_front();
        }
        buffer.push_back(entry);
    }

    /// The last `limit` lines of a function, oldest first.
    pub fn tail(&self, function: &str, limit: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .get(function)
            .map(|buffer| {
                let skip = buffer.len().saturating_sub(limit);
                buffer.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }
}

/// The trace id of a `traceparent` value.
pub(crate) fn trace_id(traceparent: Option<&str>) -> Option<String> {
    let trace = traceparent?.split('-').nth(1)?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_string())
}
