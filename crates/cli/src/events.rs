//! `gantry events ...`: topics, subscriptions, dead letters, replay and tail
//! on a running Gantry, through its admin API (and its platform API for
//! `publish`).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::{
    admin_client, call_admin, json_text as text, percent_encode_segment, print_answer as show,
    AdminTarget,
};

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Topics: sequence numbers, size and schema version.
    Topics {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Subscriptions: position, lag, pending deliveries and dead letters.
    Subscriptions {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Publish one event through the platform API (handy for trying things).
    Publish {
        topic: String,
        /// The CloudEvents `type`.
        #[arg(long = "type")]
        event_type: String,
        /// The CloudEvents `source`.
        #[arg(long, default_value = "/gantry/cli")]
        source: String,
        /// The event id; a random one by default.
        #[arg(long)]
        id: Option<String>,
        /// The data, as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print a topic's events as they are published (one JSON line each).
    Tail {
        topic: String,
        /// Where to start: `latest` (the default), `earliest`, a sequence number or an RFC 3339 time.
        #[arg(long, default_value = "latest")]
        from: String,
        /// Print what is there and stop instead of following.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Move a subscription: replay from an earlier point or skip ahead.
    Seek {
        subscription: String,
        /// `earliest`, `latest`, a sequence number or an RFC 3339 time.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Dead-letter queues: list, show, redrive, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// The dead letters of a subscription.
    List {
        subscription: String,
        #[command(flatten)]
        select: Narrow,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// One dead letter: its event, attempts and last error.
    Show {
        subscription: String,
        seq: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Deliver dead letters again, with fresh attempts.
    Redrive {
        subscription: String,
        #[command(flatten)]
        select: Selection,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete dead letters.
    Purge {
        subscription: String,
        #[command(flatten)]
        select: Selection,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Narrows a listing.
#[derive(Debug, clap::Args)]
pub(crate) struct Narrow {
    /// Only events of this CloudEvents type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only those whose last error contains this text.
    #[arg(long)]
    error: Option<String>,
}

/// Which dead letters an operation touches.
#[derive(Debug, clap::Args)]
pub(crate) struct Selection {
    /// A sequence number; repeat for several.
    #[arg(long = "seq")]
    seqs: Vec<u64>,
    /// Only events of this CloudEvents type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only those whose last error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Every dead letter of the subscription.
    #[arg(long)]
    all: bool,
}

impl Selection {
    fn body(&self) -> String {
        json!({
            "seqs": self.seqs,
            "type": self.event_type,
            "error_contains": self.error,
            "all": self.all,
        })
        .to_string()
    }
}

pub(crate) fn run(command: EventsCommand) -> ExitCode {
    match command {
        EventsCommand::Topics { target } => {
            show(call_admin(&target, "GET", "/v1/topics", None), |v| {
                let mut out = format!(
                    "{:<28} {:>10} {:>10} {:>10} {:>8}\n",
                    "TOPIC", "LAST SEQ", "EVENTS", "BYTES", "SCHEMA"
                );
                for t in list(&v["topics"]) {
                    let schema = t["schema_version"]
                        .as_u64()
                        .map_or("-".to_string(), |v| format!("v{v}"));
                    out += &format!(
                        "{:<28} {:>10} {:>10} {:>10} {:>8}\n",
                        text(&t["name"]),
                        text(&t["last_seq"]),
                        text(&t["events"]),
                        text(&t["bytes"]),
                        schema
                    );
                }
                out
            })
        }
        EventsCommand::Subscriptions { target } => {
            show(call_admin(&target, "GET", "/v1/subscriptions", None), |v| {
                let mut out = format!(
                    "{:<32} {:<20} {:>9} {:>7} {:>8} {:>6}\n",
                    "SUBSCRIPTION", "TOPIC", "NEXT SEQ", "LAG", "PENDING", "DLQ"
                );
                for s in list(&v["subscriptions"]) {
                    let name = if s["active"] == true {
                        text(&s["name"])
                    } else {
                        format!("{} (inactive)", text(&s["name"]))
                    };
                    out += &format!(
                        "{:<32} {:<20} {:>9} {:>7} {:>8} {:>6}\n",
                        name,
                        text(&s["topic"]),
                        text(&s["next_seq"]),
                        text(&s["lag"]),
                        text(&s["pending"]),
                        text(&s["dead_letters"])
                    );
                }
                out
            })
        }
        EventsCommand::Publish {
            topic,
            event_type,
            source,
            id,
            data,
            target,
        } => publish(&topic, &event_type, &source, id, &data, &target),
        EventsCommand::Tail {
            topic,
            from,
            no_follow,
            target,
        } => tail(&topic, &from, !no_follow, &target),
        EventsCommand::Seek {
            subscription,
            to,
            target,
        } => {
            let to = to
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or(Value::String(to));
            let path = format!(
                "/v1/subscriptions/{}/seek",
                percent_encode_segment(&subscription)
            );
            show(
                call_admin(
                    &target,
                    "POST",
                    &path,
                    Some(json!({ "to": to }).to_string()),
                ),
                |v| {
                    format!(
                        "{} now reads from sequence number {}\n",
                        text(&v["subscription"]),
                        v["next_seq"]
                    )
                },
            )
        }
        EventsCommand::Dlq { command } => dlq(command),
    }
}

fn dlq(command: DlqCommand) -> ExitCode {
    let base = |name: &str| {
        format!(
            "/v1/subscriptions/{}/dead-letters",
            percent_encode_segment(name)
        )
    };
    match command {
        DlqCommand::List {
            subscription,
            select,
            json,
            target,
        } => {
            let mut query = vec!["limit=1000".to_string()];
            if let Some(t) = &select.event_type {
                query.push(format!("type={}", percent_encode_segment(t)));
            }
            if let Some(e) = &select.error {
                query.push(format!("error={}", percent_encode_segment(e)));
            }
            let path = format!("{}?{}", base(&subscription), query.join("&"));
            let answer = call_admin(&target, "GET", &path, None);
            if json {
                return show(answer, |v| format!("{:#}\n", v["dead_letters"]));
            }
            show(answer, |v| {
                let letters = list(&v["dead_letters"]);
                if letters.is_empty() {
                    return format!("no dead letters in {}\n", text(&v["subscription"]));
                }
                let mut out = format!(
                    "{:>8} {:<24} {:<24} {:>8}  LAST ERROR\n",
                    "SEQ", "TYPE", "ID", "ATTEMPTS"
                );
                for l in letters {
                    out += &format!(
                        "{:>8} {:<24} {:<24} {:>8}  {}\n",
                        text(&l["seq"]),
                        text(&l["event"]["type"]),
                        text(&l["event"]["id"]),
                        text(&l["attempts"]),
                        text(&l["last_error"])
                    );
                }
                out
            })
        }
        DlqCommand::Show {
            subscription,
            seq,
            target,
        } => {
            let path = format!("{}/{seq}", base(&subscription));
            show(call_admin(&target, "GET", &path, None), |v| {
                format!("{v:#}\n")
            })
        }
        DlqCommand::Redrive {
            subscription,
            select,
            target,
        } => {
            let path = format!("{}/redrive", base(&subscription));
            show(
                call_admin(&target, "POST", &path, Some(select.body())),
                |v| {
                    format!(
                        "redrove {} dead letter(s) of {}\n",
                        v["redriven"],
                        text(&v["subscription"])
                    )
                },
            )
        }
        DlqCommand::Purge {
            subscription,
            select,
            target,
        } => {
            let path = format!("{}/purge", base(&subscription));
            show(
                call_admin(&target, "POST", &path, Some(select.body())),
                |v| {
                    format!(
                        "purged {} dead letter(s) of {}\n",
                        v["purged"],
                        text(&v["subscription"])
                    )
                },
            )
        }
    }
}

fn publish(
    topic: &str,
    event_type: &str,
    source: &str,
    id: Option<String>,
    data: &str,
    target: &AdminTarget,
) -> ExitCode {
    let data: Value = match serde_json::from_str(data) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("error: --data is not JSON: {e}");
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
    let event = json!({
        "specversion": "1.0",
        "id": id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "source": source,
        "type": event_type,
        "data": data,
    });
    let path = format!("/v1/publish/{}", percent_encode_segment(topic));
    let result = admin_client::call_with(
        api,
        "POST",
        &path,
        "application/cloudevents+json",
        Some(event.to_string()),
    );
    match result {
        Ok((200, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let r = &v["results"][0];
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "published {} to {topic} as sequence number {}{}",
                    text(&r["id"]),
                    r["seq"],
                    if r["duplicate"] == true {
                        " (a duplicate: stored once)"
                    } else {
                        ""
                    }
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

fn tail(topic: &str, from: &str, follow: bool, target: &AdminTarget) -> ExitCode {
    let admin = match admin_client::admin_address(target.admin, &target.file) {
        Ok(admin) => admin,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let path = format!(
        "/v1/topics/{}/events?from={}&follow={follow}",
        percent_encode_segment(topic),
        percent_encode_segment(from)
    );
    let result = admin_client::stream(admin, &path, |chunk| {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(chunk).is_ok() && stdout.flush().is_ok()
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(value: &Value) -> Vec<&Value> {
    value.as_array().into_iter().flatten().collect()
}
