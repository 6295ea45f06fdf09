//! `gantry functions ...`: list, invoke and read the logs of functions on a
//! running Gantry.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::{
    admin_client, call_admin, json_text as text, percent_encode_segment, print_answer, AdminTarget,
};

#[derive(Debug, Subcommand)]
pub(crate) enum FunctionsCommand {
    /// Every function: kind, artifact, limits, what runs now.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Invoke a function once and print its answer.
    Invoke {
        name: String,
        /// The request body (JSON by default; `@FILE` reads a file).
        #[arg(long, default_value = "")]
        data: String,
        /// The path the function sees.
        #[arg(long, default_value = "/")]
        path: String,
        /// The HTTP method the function sees.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The body's content type.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Recent stdout/stderr lines of a function, oldest first.
    Logs {
        name: String,
        /// How many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub(crate) fn run(command: FunctionsCommand) -> ExitCode {
    match command {
        FunctionsCommand::List { target } => {
            print_answer(call_admin(&target, "GET", "/v1/functions", None), |v| {
                let functions = v["functions"].as_array().cloned().unwrap_or_default();
                if functions.is_empty() {
                    return "no functions\n".into();
                }
                let mut out = format!(
                    "{:<16} {:<9} {:>8} {:>9} {:>6} {:>9} {:>7}  ARTIFACT\n",
                    "NAME", "KIND", "TIMEOUT", "CONCURRENT", "QUEUED", "INSTANCES", "DEPLOYS"
                );
                for f in functions {
                    out += &format!(
                        "{:<16} {:<9} {:>7}s {:>4}/{:<5} {:>6} {:>9} {:>7}  {}\n",
                        text(&f["name"]),
                        text(&f["kind"]),
                        f["timeout_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                        text(&f["in_flight"]),
                        text(&f["max_concurrency"]),
                        text(&f["queued"]),
                        text(&f["instances"]),
                        text(&f["deployments"]),
                        text(&f["artifact"]),
                    );
                }
                out
            })
        }
        FunctionsCommand::Invoke {
            name,
            data,
            path,
            method,
            content_type,
            target,
        } => invoke(&name, &data, &path, &method, &content_type, &target),
        FunctionsCommand::Logs {
            name,
            limit,
            target,
        } => print_answer(
            call_admin(
                &target,
                "GET",
                &format!(
                    "/v1/functions/{}/logs?limit={limit}",
                    percent_encode_segment(&name)
                ),
                None,
            ),
            |v| {
                let mut out = String::new();
                for line in v["lines"].as_array().into_iter().flatten() {
                    out += &format!(
                        "{} {} {} {}\n",
                        text(&line["time"]),
                        text(&line["request_id"]),
                        text(&line["stream"]),
                        text(&line["line"])
                    );
                }
                out
            },
        ),
    }
}

fn invoke(
    name: &str,
    data: &str,
    path: &str,
    method: &str,
    content_type: &str,
    target: &AdminTarget,
) -> ExitCode {
    let body = match data.strip_prefix('@') {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(body) => body,
            Err(e) => {
                eprintln!("error: cannot read {file}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => data.to_string(),
    };
    let admin = match admin_client::admin_address(target.admin, &target.file) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!(
        "/v1/functions/{}/invoke?path={}&method={}",
        percent_encode_segment(name),
        percent_encode_segment(path),
        percent_encode_segment(method)
    );
    match admin_client::call_with(admin, "POST", &url, content_type, Some(body)) {
        Ok((status, body)) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{body}");
            }
            if status < 400 {
                ExitCode::SUCCESS
            } else {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(detail) = v["detail"].as_str() {
                    eprintln!("error: {status}: {detail}");
                } else {
                    eprintln!("error: the function answered {status}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
