//! Running one instance of a `command` service: start, capture output, restart
//! with backoff, stop politely.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that stayed up this long is considered stable again: its next
/// crash restarts it quickly instead of after the grown backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What is needed to start one process instance.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    pub service: Arc<str>,
    pub command: Vec<String>,
    pub workdir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub stop_grace: Duration,
}

/// Keeps one instance's process running until `cancel` fires, then stops it.
pub(crate) async fn supervise(
    spec: ProcessSpec,
    instance: Arc<Instance>,
    cancel: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match spawn(&spec, &instance) {
            Ok(mut child) => {
                let pid = child.id();
                instance.set_running(pid, "running");
                tracing::info!(target: "gantry::process", service = %spec.service, instance = instance.index, pid, port = spec.port, "process started");
                tokio::select! {
                    status = child.wait() => {
                        instance.set_healthy(false);
                        instance.set_running(None, "backoff");
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(target: "gantry::process", service = %spec.service, instance = instance.index, %status, "process exited; restarting");
                    }
                    _ = cancel.cancelled() => {
                        instance.set_healthy(false);
                        stop(&spec, &instance, &mut child).await;
                        instance.set_running(None, "stopped");
                        return;
                    }
                }
            }
            Err(error) => {
                instance.set_running(None, "backoff");
                tracing::error!(target: "gantry::process", service = %spec.service, instance = instance.index, program = %spec.command[0], %error, "cannot start the process; check `command` in the manifest (is the program built and executable?)");
            }
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                instance.set_running(None, "stopped");
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        instance.count_restart();
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(spec: &ProcessSpec, instance: &Instance) -> std::io::Result<Child> {
    let mut command = Command::new(&spec.command[0]);
    command
        .args(&spec.command[1..])
        .current_dir(&spec.workdir)
        .envs(&spec.env)
        .env("PORT", spec.port.to_string())
        .env("GANTRY_SERVICE", spec.service.as_ref())
        .env("GANTRY_INSTANCE", instance.index.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the supervising task is dropped without a stop (a panic), do not leak the process.
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(
            stdout,
            spec.service.clone(),
            instance.index,
            "stdout",
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(
            stderr,
            spec.service.clone(),
            instance.index,
            "stderr",
        ));
    }
    Ok(child)
}

/// Each line a process writes becomes one log event tagged with its service
/// and instance. A line that is a JSON object (a structured logger's output)
/// keeps its level and message, and its `trace_id`, `span_id` and
/// `request_id` become fields of the event, so service logs join traces.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    service: Arc<str>,
    instance: u32,
    name: &'static str,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(structured) = Structured::parse(&line) else {
            tracing::info!(target: "gantry::service", service = %service, instance, stream = name, "{line}");
            continue;
        };
        let Structured {
            level,
            message,
            trace_id,
            span_id,
            request_id,
        } = &structured;
        let (trace_id, span_id, request_id) = (
            trace_id.as_deref(),
            span_id.as_deref(),
            request_id.as_deref(),
        );
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(target: "gantry::service", $level, service = %service, instance, stream = name, trace_id, span_id, request_id, "{message}")
            };
        }
        match *level {
            tracing::Level::ERROR => event!(tracing::Level::ERROR),
            tracing::Level::WARN => event!(tracing::Level::WARN),
            tracing::Level::DEBUG => event!(tracing::Level::DEBUG),
            tracing::Level::TRACE => event!(tracing::Level::TRACE),
            _ => event!(tracing::Level::INFO),
        }
    }
}

/// What Gantry takes from a JSON log line.
#[derive(Debug, PartialEq)]
struct Structured {
    level: tracing::Level,
    message: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    request_id: Option<String>,
}

impl Structured {
    /// Reads the usual keys of structured loggers (`level`/`severity`,
    /// `msg`/`message`, `trace_id`/`traceId`, ...); `None` for a plain line.
    fn parse(line: &str) -> Option<Structured> {
        if !line.trim_start().starts_with('{') {
            return None;
        }
        let serde_json::Value::Object(fields) = serde_json::from_str(line).ok()? else {
            return None;
        };
        let text = |keys: &[&str]| {
            keys.iter().find_map(|k| match fields.get(*k)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let level = match text(&["level", "severity", "levelname", "lvl"])
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "error" | "err" | "fatal" | "critical" | "panic" | "50" | "60" => tracing::Level::ERROR,
            "warn" | "warning" | "40" => tracing::Level::WARN,
            "debug" | "20" => tracing::Level::DEBUG,
            "trace" | "10" => tracing::Level::TRACE,
            _ => tracing::Level::INFO,
        };
        Some(Structured {
            level,
            message: text(&["msg", "message", "event"]).unwrap_or_else(|| line.to_string()),
            trace_id: text(&["trace_id", "traceId", "trace.id", "traceid"]),
            span_id: text(&["span_id", "spanId", "span.id"]),
            request_id: text(&["request_id", "requestId", "req_id"]),
        })
    }
}

/// SIGTERM, then SIGKILL once the grace period is over.
async fn stop(spec: &ProcessSpec, instance: &Instance, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(spec.stop_grace, child.wait()).await {
            tracing::info!(target: "gantry::process", service = %spec.service, instance = instance.index, pid, status = %status.map(|s| s.to_string()).unwrap_or_default(), "process stopped");
            return;
        }
        tracing::warn!(target: "gantry::process", service = %spec.service, instance = instance.index, pid, grace = ?spec.stop_grace, "process ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_lines_keep_level_message_and_ids() {
        let line = r#"{"level":"warn","msg":"stock low","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","request_id":"r-1","sku":3}"#;
        let parsed = Structured::parse(line).unwrap();
        assert_eq!(parsed.level, tracing::Level::WARN);
        assert_eq!(parsed.message, "stock low");
        assert_eq!(
            parsed.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(parsed.request_id.as_deref(), Some("r-1"));
        // pino's numeric levels, Python's levelname, no message key.
        assert_eq!(
            Structured::parse(r#"{"level":50,"msg":"x"}"#)
                .unwrap()
                .level,
            tracing::Level::ERROR
        );
        let python = Structured::parse(r#"{"levelname":"DEBUG","traceId":"t"}"#).unwrap();
        assert_eq!(
            (python.level, python.trace_id.as_deref()),
            (tracing::Level::DEBUG, Some("t"))
        );
        assert!(python.message.contains("traceId"));
        assert!(Structured::parse("plain text").is_none());
        assert!(Structured::parse("{not json").is_none());
    }
}
