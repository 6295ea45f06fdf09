//! The shop's notifications service: it subscribes to `order.placed` and
//! "sends" a confirmation for each order.
//!
//! Deliveries are at least once, so it remembers the event ids it has
//! handled and acknowledges a repeat without sending twice. To show the
//! dead-letter queue, the mail provider for `bounce.example` addresses is
//! "down": those events fail until `POST /notifications/recover`.
//!
//! Each confirmation sent is announced as a `notification.sent` event,
//! published straight to the platform API at `GANTRY_API` with the
//! delivery's `traceparent`, so it joins the order's trace.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Mailer {
    handled: Mutex<HashSet<String>>,
    sent: Mutex<Vec<Value>>,
    bounce_recovered: AtomicBool,
    /// The platform API, from `GANTRY_API`.
    platform: Option<String>,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8092".into());
    let mailer = Arc::new(Mailer {
        platform: std::env::var("GANTRY_API").ok(),
        ..Mailer::default()
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/events", post(on_event))
        .route("/notifications", get(sent))
        .route("/notifications/recover", post(recover))
        .with_state(mailer);
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("notifications: cannot bind");
    axum::serve(listener, app)
        .await
        .expect("notifications: server failed");
}

/// A CloudEvent in binary mode: attributes in `ce-*` headers, data in the body.
async fn on_event(
    State(mailer): State<Arc<Mailer>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("ce-id");
    if mailer.handled.lock().expect("lock").contains(&id) {
        return (StatusCode::OK, format!("{id} was already handled"));
    }
    let data: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let email = data["email"].as_str().unwrap_or_default().to_string();
    if email.ends_with("@bounce.example") && !mailer.bounce_recovered.load(Ordering::Relaxed) {
        eprintln!(
            "notifications: mail provider refused {email} (attempt {})",
            header("gantry-delivery-attempt")
        );
        return (
            StatusCode::BAD_GATEWAY,
            format!("the mail provider refused {email}"),
        );
    }
    let note = json!({
        "event_id": id,
        "order_id": data["order_id"],
        "to": if email.is_empty() { data["user"].clone() } else { json!(email) },
        "trace": header("traceparent"),
    });
    eprintln!("notifications: order confirmation sent: {note}");
    mailer.handled.lock().expect("lock").insert(id.clone());
    mailer.sent.lock().expect("lock").push(note.clone());
    announce(&mailer, &id, note, &header("traceparent")).await;
    (StatusCode::OK, "sent".into())
}

/// Publishes `notification.sent` through the platform API. A failure is
/// logged and not retried: the confirmation itself was sent.
async fn announce(mailer: &Mailer, cause: &str, note: Value, traceparent: &str) {
    let Some(platform) = &mailer.platform else {
        return;
    };
    let event = json!({
        "specversion": "1.0",
        "id": format!("sent-{cause}"),
        "source": "/shop/notifications",
        "type": "notification.sent",
        "data": note,
    });
    let mut request = mailer
        .http
        .post(format!("{platform}/v1/publish/notification.sent"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string());
    if !traceparent.is_empty() {
        request = request.header("traceparent", traceparent);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => eprintln!(
            "notifications: cannot publish notification.sent: {}",
            response.text().await.unwrap_or_default()
        ),
        Err(error) => eprintln!("notifications: cannot publish notification.sent: {error}"),
    }
}

async fn sent(State(mailer): State<Arc<Mailer>>) -> Json<Value> {
    let sent = mailer.sent.lock().expect("lock").clone();
    Json(json!({ "service": "notifications", "sent": sent }))
}

async fn recover(State(mailer): State<Arc<Mailer>>) -> Json<Value> {
    mailer.bounce_recovered.store(true, Ordering::Relaxed);
    Json(json!({ "bounce.example": "recovered" }))
}
