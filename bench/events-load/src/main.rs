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
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::workload::{Plan, Report};

#[derive(Debug, Parser)]
#[command(
    name = "events-load",
    about = "Durable publish -> delivery benchmark for Gantry's event bus and NATS JetStream"
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
}

/// The shape of the load, the same for both targets.
#[derive(Debug, Args)]
struct LoadArgs {
    /// How many messages to publish.
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
