//! `gantry slo ...`: budgets and burn rates on a running Gantry, and the same
//! objectives as Prometheus rules.

use std::process::ExitCode;

use clap::Subcommand;

use crate::{call_admin, json_text as text, print_answer, AdminTarget};

#[derive(Debug, Subcommand)]
pub(crate) enum SloCommand {
    /// Every SLO: requests, error budget left, burn rates and alert states.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Prometheus recording and alerting rules equivalent to the manifest's SLOs.
    Rules {
        /// The manifest.
        #[arg(short = 'f', long = "file", default_value = "gantry.toml")]
        file: std::path::PathBuf,
    },
}

pub(crate) fn run(command: SloCommand) -> ExitCode {
    match command {
        SloCommand::Status { json, target } => {
            let answer = call_admin(&target, "GET", "/v1/slos", None);
            if json {
                return print_answer(answer, |v| format!("{v:#}\n"));
            }
            print_answer(answer, |v| {
                let slos = v["slos"].as_array().cloned().unwrap_or_default();
                if slos.is_empty() {
                    return "no SLOs (declare them with [slos.NAME])\n".into();
                }
                let mut out = String::new();
                for slo in slos {
                    out += &format!(
                        "{}  {}  objective {}% over {}{}\n  requests {}  bad {}  error budget left {:.1}%\n",
                        text(&slo["name"]),
                        text(&slo["target"]),
                        text(&slo["objective"]),
                        text(&slo["window"]),
                        slo["latency_ms"]
                            .as_u64()
                            .map(|ms| format!(", under {ms} ms"))
                            .unwrap_or_default(),
                        text(&slo["requests"]),
                        text(&slo["bad"]),
                        slo["budget_remaining"].as_f64().unwrap_or(1.0) * 100.0,
                    );
                    for alert in slo["alerts"].as_array().into_iter().flatten() {
                        out += &format!(
                            "  {:<6} {:>3}/{:<3} burn {:>8.2} / {:<8.2} threshold {:>5}  {}\n",
                            text(&alert["severity"]),
                            text(&alert["long"]),
                            text(&alert["short"]),
                            alert["burn_long"].as_f64().unwrap_or(0.0),
                            alert["burn_short"].as_f64().unwrap_or(0.0),
                            text(&alert["threshold"]),
                            alert_state(&alert["state"]),
                        );
                    }
                }
                out
            })
        }
        SloCommand::Rules { file } => match gantry_manifest::load(&file) {
            Ok(manifest) => {
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", gantry_slo::rules::prometheus(&manifest.slos));
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn alert_state(state: &serde_json::Value) -> String {
    match state {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) if o.contains_key("resolving") => "resolving".into(),
        other => other.to_string(),
    }
}
