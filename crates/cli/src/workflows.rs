//! `gantry workflows ...`: start, list, inspect, retry, resume and cancel
//! saga runs on a running Gantry.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::{
    admin_client, call_admin, json_text as text, percent_encode_segment,
    print_answer as print_with, AdminTarget,
};

#[derive(Debug, Subcommand)]
pub(crate) enum WorkflowsCommand {
    /// Start a run through the platform API.
    Start {
        workflow: String,
        /// The run's id; choosing one makes starting idempotent.
        #[arg(long)]
        id: Option<String>,
        /// The input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Runs, newest first.
    List {
        /// Only runs in this state (running, waiting, compensating, completed,
        /// compensated, failed, needs_attention, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// A run: its input, state and every step's attempts, outputs and errors.
    Show {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Retry the failing compensation of a run that needs attention.
    Retry {
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Run a stopped run again from a step.
    Resume {
        id: String,
        /// The step to start from.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Cancel a run: what it completed is compensated.
    Cancel {
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub(crate) fn run(command: WorkflowsCommand) -> ExitCode {
    let path =
        |id: &str, action: &str| format!("/v1/workflows/{}{action}", percent_encode_segment(id));
    match command {
        WorkflowsCommand::Start {
            workflow,
            id,
            input,
            target,
        } => start(&workflow, id, &input, &target),
        WorkflowsCommand::List {
            state,
            workflow,
            target,
        } => {
            let mut query = vec!["limit=200".to_string()];
            if let Some(state) = state {
                query.push(format!("state={}", percent_encode_segment(&state)));
            }
            if let Some(workflow) = workflow {
                query.push(format!("workflow={}", percent_encode_segment(&workflow)));
            }
            let answer = call_admin(
                &target,
                "GET",
                &format!("/v1/workflows?{}", query.join("&")),
                None,
            );
            print_with(answer, |v| {
                let runs = v["runs"].as_array().cloned().unwrap_or_default();
                if runs.is_empty() {
                    return "no runs\n".into();
                }
                let mut out = format!(
                    "{:<38} {:<16} {:>3} {:<16} {:>6}  ERROR\n",
                    "ID", "WORKFLOW", "V", "STATE", "STEP"
                );
                for r in runs {
                    out += &format!(
                        "{:<38} {:<16} {:>3} {:<16} {:>6}  {}\n",
                        text(&r["id"]),
                        text(&r["workflow"]),
                        text(&r["version"]),
                        text(&r["state"]),
                        text(&r["position"]),
                        r["error"].as_str().unwrap_or("")
                    );
                }
                out
            })
        }
        WorkflowsCommand::Show { id, json, target } => {
            let answer = call_admin(&target, "GET", &path(&id, ""), None);
            if json {
                return print_with(answer, |v| format!("{v:#}\n"));
            }
            print_with(answer, describe)
        }
        WorkflowsCommand::Retry { id, target } => print_with(
            call_admin(&target, "POST", &path(&id, "/retry"), Some("{}".into())),
            |v| format!("{} is {} again\n", text(&v["id"]), text(&v["state"])),
        ),
        WorkflowsCommand::Resume { id, from, target } => print_with(
            call_admin(
                &target,
                "POST",
                &path(&id, "/resume"),
                Some(json!({ "from": from }).to_string()),
            ),
            |v| {
                format!(
                    "{} resumed from `{from}`: {}\n",
                    text(&v["id"]),
                    text(&v["state"])
                )
            },
        ),
        WorkflowsCommand::Cancel { id, target } => print_with(
            call_admin(&target, "POST", &path(&id, "/cancel"), Some("{}".into())),
            |v| format!("{} is {}\n", text(&v["id"]), text(&v["state"])),
        ),
    }
}

fn start(workflow: &str, id: Option<String>, input: &str, target: &AdminTarget) -> ExitCode {
    let input: Value = match serde_json::from_str(input) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("error: --input is not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api = match gantry_manifest::load(&target.file) {
        Ok(manifest) => manifest.platform.api,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let body = json!({ "id": id, "input": input }).to_string();
    let path = format!("/v1/workflows/{}", percent_encode_segment(workflow));
    match admin_client::call_with(api, "POST", &path, "application/json", Some(body)) {
        Ok((status, body)) if status < 300 => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{} {} (v{}): {}",
                    if status == 201 {
                        "started"
                    } else {
                        "already started"
                    },
                    text(&v["id"]),
                    text(&v["version"]),
                    text(&v["state"])
                );
            }
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            eprintln!("error: {}", v["detail"].as_str().unwrap_or(&body));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A run as a readable report: state, input, then each step and compensation.
fn describe(v: &Value) -> String {
    let mut out = format!(
        "run {}  workflow {} v{}  state {}\ninput {}\n",
        text(&v["id"]),
        text(&v["workflow"]),
        text(&v["version"]),
        text(&v["state"]),
        v["input"]
    );
    if let Some(error) = v["error"].as_str() {
        out += &format!("error {error}\n");
    }
    out += &format!(
        "\n{:<16} {:<11} {:<9} {:>8} {:>9}  OUTPUT / ERROR\n",
        "STEP", "PHASE", "STATUS", "ATTEMPTS", "MS"
    );
    for step in v["steps"].as_array().into_iter().flatten() {
        let took = match (step["started_ms"].as_i64(), step["finished_ms"].as_i64()) {
            (Some(a), Some(b)) => (b - a).to_string(),
            _ => "-".into(),
        };
        let phase = if step["phase"] == "undo" {
            "compensate"
        } else {
            "do"
        };
        let detail = match (
            step["status"].as_str(),
            &step["output"],
            step["error"].as_str(),
        ) {
            (Some("done"), output, _) => output.to_string(),
            (_, _, Some(error)) => error.to_string(),
            _ => String::new(),
        };
        let detail: String = detail.chars().take(100).collect();
        out += &format!(
            "{:<16} {:<11} {:<9} {:>8} {:>9}  {detail}\n",
            text(&step["name"]),
            phase,
            text(&step["status"]),
            text(&step["attempts"]),
            took
        );
    }
    out
}
