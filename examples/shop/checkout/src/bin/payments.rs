//! Payments: charges and refunds. `PUT /payments/mode` switches how the
//! next charges behave, to show each path of the checkout saga:
//! `ok`, `decline` (402, not retried: the saga compensates), `timeout`
//! (never answers in time: retried, then compensated), `fail_after_charge`
//! (charges, then answers 500: the retry carries the same Idempotency-Key
//! and gets the first charge back, so the card is charged once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use shop_checkout::Answers;

#[derive(Default)]
struct Payments {
    answers: Answers,
    mode: Mutex<String>,
    charges: Mutex<Vec<Value>>,
    refunds: Mutex<Vec<Value>>,
}

#[tokio::main]
async fn main() {
    let payments = Arc::new(Payments::default());
    *payments.mode.lock().expect("lock") = "ok".into();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/charges", post(charge))
        .route("/refunds", post(refund))
        .route("/payments", get(ledger))
        .route("/payments/mode", put(set_mode))
        .with_state(payments);
    shop_checkout::serve(app, 8094).await;
}

async fn charge(
    State(p): State<Arc<Payments>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mode = p.mode.lock().expect("lock").clone();
    if mode == "timeout" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let answer = p.answers.once(&headers, || {
        if mode == "decline" {
            eprintln!("payments: declined {body}");
            return (
                StatusCode::PAYMENT_REQUIRED,
                json!({ "error": "card declined" }),
            );
        }
        let mut charges = p.charges.lock().expect("lock");
        let charge = json!({
            "id": format!("ch-{}", charges.len() + 1),
            "order_id": body["order_id"],
            "amount_cents": body["amount_cents"],
            "idempotency_key": key,
        });
        eprintln!("payments: charged {charge}");
        charges.push(charge.clone());
        (StatusCode::CREATED, charge)
    });
    if mode == "fail_after_charge" && answer.0 == StatusCode::CREATED {
        // The charge happened, but the answer is lost: the saga retries.
        *p.mode.lock().expect("lock") = "ok".into();
        eprintln!("payments: charged, but answering 500 (fail_after_charge)");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": "crashed after charging" })),
        );
    }
    answer
}

async fn refund(
    State(p): State<Arc<Payments>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    p.answers.once(&headers, || {
        let refund = json!({ "charge_id": body["charge_id"] });
        eprintln!("payments: refunded {refund}");
        p.refunds.lock().expect("lock").push(refund.clone());
        (StatusCode::CREATED, refund)
    })
}

async fn ledger(State(p): State<Arc<Payments>>) -> Json<Value> {
    Json(json!({
        "mode": *p.mode.lock().expect("lock"),
        "charges": *p.charges.lock().expect("lock"),
        "refunds": *p.refunds.lock().expect("lock"),
    }))
}

async fn set_mode(
    State(p): State<Arc<Payments>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mode = body["mode"].as_str().unwrap_or_default();
    if !["ok", "decline", "timeout", "fail_after_charge"].contains(&mode) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "mode is ok, decline, timeout or fail_after_charge" })),
        );
    }
    *p.mode.lock().expect("lock") = mode.to_string();
    (StatusCode::OK, Json(json!({ "mode": mode })))
}
