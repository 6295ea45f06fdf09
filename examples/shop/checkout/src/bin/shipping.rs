//! Shipping: creates shipments, cancels them (the compensation), and a
//! moment after creating one announces `shipment.dispatched` through the
//! platform API (`GANTRY_API`), which the checkout saga waits for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shop_checkout::Answers;

#[derive(Default)]
struct Shipping {
    answers: Answers,
    shipments: Mutex<Vec<Value>>,
    platform: Option<String>,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() {
    let shipping = Arc::new(Shipping {
        platform: std::env::var("GANTRY_API").ok(),
        ..Shipping::default()
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/shipments", post(create).get(list))
        .route("/shipments/{id}", delete(cancel))
        .with_state(shipping);
    shop_checkout::serve(app, 8095).await;
}

async fn create(
    State(s): State<Arc<Shipping>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let answer = s.answers.once(&headers, || {
        let mut shipments = s.shipments.lock().expect("lock");
        let shipment = json!({
            "id": format!("sh-{}", shipments.len() + 1),
            "order_id": body["order_id"],
            "status": "created",
        });
        eprintln!("shipping: created {shipment}");
        shipments.push(shipment.clone());
        (StatusCode::CREATED, shipment)
    });
    // Dispatch a moment later, in the caller's trace.
    if answer.0 == StatusCode::CREATED {
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (s, shipment) = (s.clone(), answer.1 .0.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            dispatch(&s, &shipment, &traceparent).await;
        });
    }
    answer
}

async fn dispatch(s: &Shipping, shipment: &Value, traceparent: &str) {
    let Some(platform) = &s.platform else { return };
    let event = json!({
        "specversion": "1.0",
        "id": format!("dispatched-{}", shipment["id"].as_str().unwrap_or_default()),
        "source": "/shop/shipping",
        "type": "shipment.dispatched",
        "data": { "order_id": shipment["order_id"], "shipment_id": shipment["id"] },
    });
    let mut request = s
        .http
        .post(format!("{platform}/v1/publish/shipment.dispatched"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string());
    if !traceparent.is_empty() {
        request = request.header("traceparent", traceparent);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => eprintln!("shipping: dispatched {}", shipment["id"]),
        Ok(r) => eprintln!("shipping: cannot announce the dispatch: {}", r.status()),
        Err(e) => eprintln!("shipping: cannot announce the dispatch: {e}"),
    }
}

async fn cancel(
    State(s): State<Arc<Shipping>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    s.answers.once(&headers, || {
        let mut shipments = s.shipments.lock().expect("lock");
        match shipments.iter_mut().find(|sh| sh["id"] == id.as_str()) {
            Some(shipment) => {
                shipment["status"] = json!("cancelled");
                eprintln!("shipping: cancelled {id}");
                (StatusCode::OK, shipment.clone())
            }
            None => (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no shipment {id}") }),
            ),
        }
    })
}

async fn list(State(s): State<Arc<Shipping>>) -> Json<Value> {
    Json(json!({ "shipments": *s.shipments.lock().expect("lock") }))
}
