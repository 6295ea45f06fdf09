//! NATS JetStream: publish to a fresh file-storage stream awaiting every
//! PubAck, consume with a durable pull consumer acknowledging every message.
//!
//! The stream (`GANTRY_BENCH_<pid>`, subject `gantry.bench.<pid>`) is created
//! for the run and deleted at its end, whatever happened in between. Every
//! message carries `Nats-Msg-Id` (the same id Gantry gets), so retries are
//! deduplicated within the stream's default two-minute window, as in Gantry.

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, context, stream, Context};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::workload::{self, Payload, Plan, PublishError, Publisher, Receipt, Report, Tracker};

pub async fn run(url: &str, plan: Plan) -> Result<Report, String> {
    let client = async_nats::ConnectOptions::new()
        .name("events-load")
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
    let js = jetstream::new(client.clone());
    let pid = std::process::id();
    let names = Names {
        stream: format!("GANTRY_BENCH_{pid}"),
        subject: format!("gantry.bench.{pid}"),
    };

    // A SIGTERM or SIGINT (the bench script's cleanup, Ctrl-C) ends the run
    // early, but still deletes the stream below.
    let outcome = tokio::select! {
        outcome = run_on_stream(&js, &names, &plan) => outcome,
        signal = interrupted() => Err(format!("stopped by {signal}")),
    };

    // Always remove the stream, even when the run failed.
    let deleted = js.delete_stream(&names.stream).await;
    // Make sure the last acks and the delete left the client.
    let _ = client.flush().await;
    match (outcome, deleted) {
        (Ok(report), Ok(_)) => Ok(report),
        (Ok(_), Err(e)) => Err(format!("cannot delete stream {}: {e}", names.stream)),
        (Err(error), _) => Err(error),
    }
}

/// Resolves when the process gets SIGTERM or SIGINT.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers the default (exit) applies; never resolve.
        _ => std::future::pending().await,
    }
}

struct Names {
    stream: String,
    subject: String,
}

async fn run_on_stream(js: &Context, names: &Names, plan: &Plan) -> Result<Report, String> {
    let stream = js
        .create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create stream {}: {e}", names.stream))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create a consumer on {}: {e}", names.stream))?;

    let run = workload::run_id();
    let tracker = Arc::new(Tracker::new(&run, plan.count));

    // The consumer runs before the first publish, as Gantry's subscription does.
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot start consuming {}: {e}", names.stream))?;
    let receiver = {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        eprintln!("events-load: consumer error: {error}");
                        continue;
                    }
                };
                match tracker.record(&message.payload) {
                    Ok(Receipt::First | Receipt::Duplicate | Receipt::Foreign) => {}
                    Err(error) => eprintln!("events-load: unexpected message: {error}"),
                }
                // One explicit ack per message, whatever it was.
                if let Err(error) = message.ack().await {
                    eprintln!("events-load: ack failed: {error}");
                }
                if tracker.is_complete() {
                    break;
                }
            }
        })
    };

    let publishers = (0..plan.concurrency)
        .map(|_| NatsPublisher {
            js: js.clone(),
            subject: names.subject.clone(),
        })
        .collect();
    let report = workload::measure("nats", publishers, &tracker, &run, plan).await;
    receiver.abort();
    report
}

struct NatsPublisher {
    js: Context,
    subject: String,
}

impl Publisher for NatsPublisher {
    async fn publish(&mut self, payload: &Payload) -> Result<(), PublishError> {
        let body = serde_json::to_vec(payload)
            .map_err(|e| PublishError::Fatal(format!("cannot encode a payload: {e}")))?;
        let message = PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(format!("{}-{}", payload.run, payload.seq));
        let classify = |error: context::PublishError| match error.kind() {
            context::PublishErrorKind::StreamNotFound => {
                PublishError::Fatal(format!("publish to {} failed: {error}", self.subject))
            }
            _ => PublishError::Retry(format!("publish failed: {error}")),
        };
        // The first await sends the message; the second waits for the PubAck,
        // which JetStream sends once the message is stored.
        let ack = self
            .js
            .send_publish(self.subject.clone(), message)
            .await
            .map_err(classify)?;
        ack.await.map_err(classify)?;
        Ok(())
    }
}
