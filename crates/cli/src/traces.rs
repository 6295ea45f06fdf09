//! `gantry traces ...`: recent traces and one trace as a waterfall, from the
//! running Gantry's trace store.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::{call_admin, json_text as text, percent_encode_segment, print_answer, AdminTarget};

#[derive(Debug, Subcommand)]
pub(crate) enum TracesCommand {
    /// Recent traces, newest first.
    List {
        /// Only traces touching this service (or `function:NAME`).
        #[arg(long)]
        service: Option<String>,
        /// Only traces through this route.
        #[arg(long)]
        route: Option<String>,
        /// Only traces at least this long, e.g. `250ms`.
        #[arg(long)]
        min_duration: Option<humantime::Duration>,
        /// Only traces with an error.
        #[arg(long)]
        errors: bool,
        /// Only traces where some hop answered this HTTP status: `503`, or a
        /// class such as `5xx`.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// One trace as a waterfall of its spans.
    Show {
        trace_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub(crate) fn run(command: TracesCommand) -> ExitCode {
    match command {
        TracesCommand::List {
            service,
            route,
            min_duration,
            errors,
            status,
            limit,
            target,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(service) = service {
                query.push(format!("service={}", percent_encode_segment(&service)));
            }
            if let Some(route) = route {
                query.push(format!("route={}", percent_encode_segment(&route)));
            }
            if let Some(d) = min_duration {
                query.push(format!("min_duration_ms={}", d.as_millis()));
            }
            if errors {
                query.push("errors=true".into());
            }
            if let Some(status) = status {
                query.push(format!("status={}", percent_encode_segment(&status)));
            }
            let answer = call_admin(
                &target,
                "GET",
                &format!("/v1/traces?{}", query.join("&")),
                None,
            );
            print_answer(answer, |v| {
                let traces = v["traces"].as_array().cloned().unwrap_or_default();
                if traces.is_empty() {
                    return "no traces\n".into();
                }
                let mut out = format!(
                    "{:<32}  {:>10}  {:>5}  {:<5}  ROOT\n",
                    "TRACE", "DURATION", "SPANS", "ERROR"
                );
                for t in traces {
                    out += &format!(
                        "{:<32}  {:>10}  {:>5}  {:<5}  {} ({})\n",
                        text(&t["trace_id"]),
                        millis(&t["duration_ns"]),
                        text(&t["spans"]),
                        if t["error"] == true { "yes" } else { "" },
                        text(&t["root"]),
                        text(&t["service"]),
                    );
                }
                out
            })
        }
        TracesCommand::Show {
            trace_id,
            json,
            target,
        } => {
            let answer = call_admin(
                &target,
                "GET",
                &format!("/v1/traces/{}", percent_encode_segment(&trace_id)),
                None,
            );
            if json {
                return print_answer(answer, |v| format!("{v:#}\n"));
            }
            print_answer(answer, waterfall)
        }
    }
}

fn millis(ns: &Value) -> String {
    format!("{:.2}ms", ns.as_u64().unwrap_or(0) as f64 / 1e6)
}

/// Spans as a tree (children under their parent, by start time), each with
/// a bar placed on the trace's time line.
fn waterfall(v: &Value) -> String {
    const WIDTH: f64 = 40.0;
    let spans = v["spans"].as_array().cloned().unwrap_or_default();
    let start = spans
        .iter()
        .filter_map(|s| s["start_ns"].as_u64())
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|s| Some(s["start_ns"].as_u64()? + s["duration_ns"].as_u64()?))
        .max()
        .unwrap_or(start);
    let total = (end - start).max(1) as f64;
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let mut order = Vec::new();
    fn visit<'a>(
        spans: &'a [Value],
        parent: Option<&str>,
        ids: &[&str],
        depth: usize,
        order: &mut Vec<(usize, &'a Value)>,
    ) {
        for span in spans {
            let p = span["parent_id"].as_str();
            let is_child = match parent {
                Some(parent) => p == Some(parent),
                None => p.is_none_or(|p| !ids.contains(&p)),
            };
            if is_child {
                order.push((depth, span));
                visit(spans, span["span_id"].as_str(), ids, depth + 1, order);
            }
        }
    }
    visit(&spans, None, &ids, 0, &mut order);
    let mut out = format!(
        "trace {}  {:.2}ms  {} spans\n",
        text(&v["trace_id"]),
        total / 1e6,
        spans.len()
    );
    for (depth, span) in order {
        let offset = span["start_ns"].as_u64().unwrap_or(start) - start;
        let duration = span["duration_ns"].as_u64().unwrap_or(0);
        let from = ((offset as f64 / total) * WIDTH) as usize;
        let len = (((duration as f64 / total) * WIDTH).round() as usize).max(1);
        let bar: String = (0..WIDTH as usize)
            .map(|i| {
                if i >= from && i < from + len {
                    '█'
                } else {
                    ' '
                }
            })
            .collect();
        let attributes = &span["attributes"];
        let mut status = attributes["http.response.status_code"]
            .as_u64()
            .map(|s| s.to_string())
            .or_else(|| attributes["error.type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(resends) = attributes["http.request.resend_count"].as_u64() {
            status += &format!(" (retry {resends})");
        }
        if attributes["faas.coldstart"] == true {
            status += " cold start";
        }
        out += &format!(
            "{:>9} |{bar}| {:>9}  {}{} [{}] {}{}\n",
            format!("+{:.2}ms", offset as f64 / 1e6),
            format!("{:.2}ms", duration as f64 / 1e6),
            "  ".repeat(depth),
            text(&span["name"]),
            text(&span["service"]),
            status,
            if span["error"] == true { " ERROR" } else { "" },
        );
    }
    out
}
