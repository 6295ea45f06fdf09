//! events-load: publishes events durably and measures how they come back.
//!
//! Two targets, measured the same way:
//!
//! - `events-load gantry`: publishes CloudEvents to Gantry's platform API
//!   (`POST /v1/publish/{topic}`, answered once the event is durable) and
//!   receives the deliveries of a subscription on a small HTTP server of its
//!   own (`--listen`, answers 204).
//! - `events-load nats`: publishes to a fresh JetStream stream (file storage),
//!   awaiting each PubAck, and consumes it with a durable pull consumer that
//!   acknowledges every message explicitly. The stream is deleted at the end.
//! - `events-load saga` and `events-load direct` (see `saga`): runs of a
//!   three-step workflow started on Gantry's saga engine, whose steps call
//!   the tool's own HTTP server, and the same three calls made directly.
//!
//! Every message carries the run's id, its sequence number and its send time
//! (ns since the Unix epoch), so the receiver can tell end-to-end latency,
//! duplicates and completeness. The result is one line of JSON on stdout;
//! progress and errors go to stderr.
//!
//! Exit codes: 0 all messages delivered, 1 error, 2 timed out before every
//! message was delivered (the JSON line is still printed).

mod gantry;
mod nats;
mod saga;
mod server;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::workload::{Plan, Report};

#[derive(Debug, Parser)]
#[command(
    name = "events-load",
    about = "Durable publish -> delivery benchmark for Gantry's event bus and NATS JetStream, \
             and saga runs on Gantry's workflow engine"
)]
struct Cli {
    #[command(subcommand)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum Target {
    /// Publish to Gantry's platform API and receive the subscription's deliveries.
    Gantry {
        /// Gantry's platform API (`[platform] api` in the manifest).
        #[arg(long, default_value = "http://127.0.0.1:18182")]
        api: String,
        /// The topic to publish to.
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Where to receive deliveries: the address of the service the
        /// subscription sends to.
        #[arg(long, default_value = "127.0.0.1:18190")]
        listen: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Publish to a new JetStream stream and consume it with a durable consumer.
    Nats {
        /// The NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start runs of a workflow on Gantry and serve its steps' calls; a run
    /// is complete when its last step's call (`/ship`) arrives.
    Saga {
        /// Gantry's platform API (`[platform] api` in the manifest); several,
        /// comma-separated, for the nodes of a cluster: starters take them
        /// in turn.
        #[arg(long, default_value = "http://127.0.0.1:18282")]
        api: String,
        /// Gantry's admin API: when given, the tool also waits until the
        /// journal marks every run completed and reports how long that took.
        #[arg(long)]
        admin: Option<String>,
        /// The workflow to start: steps `POST /reserve`, `/charge`, `/ship`
        /// on the service at `--listen`.
        #[arg(long, default_value = "three")]
        workflow: String,
        /// Where to serve the steps' calls: the address of the service the
        /// workflow calls.
        #[arg(long, default_value = "127.0.0.1:18290")]
        listen: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The floor for `saga`: each run's three calls made directly, one after
    /// the other, to the tool's own server at `--listen`.
    Direct {
        #[arg(long, default_value = "127.0.0.1:18290")]
        listen: String,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// The shape of the load, the same for every target (for `saga` and
/// `direct`, a message is a run and a publisher a starter).
#[derive(Debug, Args)]
struct LoadArgs {
    /// How many messages (runs) to publish (start).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// How many publishers run at once (each waits for its ack before the next publish).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Fixed total publish rate in messages per second; without it, flat out.
    #[arg(long)]
    rate: Option<f64>,
    /// Give up after this many seconds (publishing and delivery together).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

impl LoadArgs {
    fn plan(&self) -> Result<Plan, String> {
        if self.count == 0 {
            return Err("--count must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("--rate must be a positive number, not {rate}"));
            }
        }
        Ok(Plan {
            count: self.count,
            concurrency: self.concurrency,
            rate: self.rate,
            timeout: Duration::from_secs(self.timeout),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.target {
        Target::Saga {
            api,
            admin,
            workflow,
            listen,
            load,
        } => {
            return match load.plan() {
                Ok(plan) => finish_saga(
                    saga::run_gantry(&api, admin.as_deref(), &workflow, &listen, plan).await,
                ),
                Err(e) => finish_saga(Err(e)),
            }
        }
        Target::Direct { listen, load } => {
            return match load.plan() {
                Ok(plan) => finish_saga(saga::run_direct(&listen, plan).await),
                Err(e) => finish_saga(Err(e)),
            }
        }
        Target::Gantry {
            api,
            topic,
            listen,
            load,
        } => match load.plan() {
            Ok(plan) => gantry::run(&api, &topic, &listen, plan).await,
            Err(e) => Err(e),
        },
        Target::Nats { url, load } => match load.plan() {
            Ok(plan) => nats::run(&url, plan).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(report) => finish(&report),
        Err(error) => {
            eprintln!("events-load: {error}");
            ExitCode::from(1)
        }
    }
}

/// Prints the report as one line of JSON; the exit code tells whether every
/// message arrived.
fn finish(report: &Report) -> ExitCode {
    println!("{}", report.to_json());
    if report.complete {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "events-load: only {} of {} messages were delivered before the timeout",
            report.delivered, report.count
        );
        ExitCode::from(2)
    }
}

/// Like `finish`, for saga runs: the JSON line, and whether every run completed.
fn finish_saga(result: Result<saga::SagaReport, String>) -> ExitCode {
    match result {
        Ok(report) => {
            println!("{}", report.to_json());
            if report.base.complete {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "events-load: only {} of {} runs completed before the timeout",
                    report.base.delivered, report.base.count
                );
                ExitCode::from(2)
            }
        }
        Err(error) => {
            eprintln!("events-load: {error}");
            ExitCode::from(1)
        }
    }
}
