//! Sends alert notifications to the `[alerting] webhook` as JSON POSTs, and
//! runs the evaluation loop.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::{Notification, Slos};

/// Attempts per notification before it is given up (and logged).
const ATTEMPTS: u32 = 3;

/// Evaluates `slos` every `[alerting] evaluate_every` until `stop`, logging
/// every alert that fires or resolves and posting it to `[alerting] webhook`
/// when there is one. Both settings are read afresh each time (reloads).
pub async fn run(slos: Slos, stop: CancellationToken) {
    // Webhooks over https are verified against the system's roots.
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(gantry_tls::https_connector());
    loop {
        let every = slos.alerting().evaluate_every;
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::task::spawn_blocking(move || slos.save()).await;
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let webhook = slos.alerting().webhook;
        let notes = slos.evaluate(crate::now());
        {
            let slos = slos.clone();
            let _ = tokio::task::spawn_blocking(move || slos.save()).await;
        }
        for note in notes {
            if note.status == "firing" {
                tracing::warn!(target: "gantry::slo", slo = %note.slo, severity = note.severity, long = %note.windows.long, short = %note.windows.short, burn_long = note.burn_rate.long, burn_short = note.burn_rate.short, budget_remaining = note.budget_remaining, "SLO alert firing");
            } else {
                tracing::info!(target: "gantry::slo", slo = %note.slo, severity = note.severity, long = %note.windows.long, "SLO alert resolved");
            }
            if let Some(url) = &webhook {
                send(&client, url, &note).await;
            }
        }
    }
}

async fn send(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
    note: &Notification,
) {
    let body = Bytes::from(serde_json::to_vec(note).unwrap_or_default());
    for attempt in 1..=ATTEMPTS {
        let request = match http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
        {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(target: "gantry::slo", %url, %error, "the alert webhook URL is not usable");
                return;
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return,
            Ok(Ok(response)) => {
                tracing::warn!(target: "gantry::slo", %url, status = %response.status(), attempt, "the alert webhook refused a notification")
            }
            Ok(Err(error)) => {
                tracing::warn!(target: "gantry::slo", %url, %error, attempt, "cannot reach the alert webhook")
            }
            Err(_) => {
                tracing::warn!(target: "gantry::slo", %url, attempt, "the alert webhook did not answer in 5s")
            }
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    tracing::error!(target: "gantry::slo", %url, slo = %note.slo, status = note.status, "gave up sending an alert notification");
}
