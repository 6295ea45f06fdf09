//! Sends alert notifications to the `[alerting] webhook` as JSON POSTs, and
//! runs the evaluation loop.

use std::time::Duration;

use bytes::Bytes;
use gantry_services::outbound::Outbound;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use crate::{Notification, Slos};

/// Attempts per notification before it is given up (and logged).
const ATTEMPTS: u32 = 3;

/// Evaluates `slos` every `[alerting] evaluate_every` until `stop`, logging
/// every alert that fires or resolves and posting it to `[alerting] webhook`
/// when there is one. Both settings are read afresh each time (reloads).
pub async fn run(slos: Slos, stop: CancellationToken) {
    loop {
        let every = slos.alerting().evaluate_every;
        tokio::select! {
            _ = stop.cancelled() => {
                slos.leave_shared().await;
                let _ = tokio::task::spawn_blocking(move || slos.save()).await;
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let webhook = slos.alerting().webhook;
        // In a cluster every node shares its counts, and one evaluates.
        slos.sync_shared().await;
        if !slos.leads(every).await {
            continue;
        }
        let notes = slos.evaluate(crate::now());
        slos.save_shared_states().await;
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
                send(url, &note).await;
            }
        }
    }
}

/// Posts `note` to the webhook, up to [`ATTEMPTS`] times (webhooks over
/// https are verified against the system's roots).
async fn send(url: &str, note: &Notification) {
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
        match Outbound::shared()
            .fetch(request, Duration::from_secs(5), 64 * 1024)
            .await
        {
            Ok((status, _)) if status.is_success() => return,
            Ok((status, _)) => {
                tracing::warn!(target: "gantry::slo", %url, %status, attempt, "the alert webhook refused a notification")
            }
            Err(error) => {
                tracing::warn!(target: "gantry::slo", %url, %error, attempt, "cannot deliver to the alert webhook")
            }
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    tracing::error!(target: "gantry::slo", %url, slo = %note.slo, status = note.status, "gave up sending an alert notification");
}
