//! Inventory: reserves stock for an order, and releases a reservation (the
//! compensation when a later checkout step fails).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shop_checkout::Answers;

#[derive(Default)]
struct Inventory {
    answers: Answers,
    reservations: Mutex<HashMap<String, Value>>,
    next: Mutex<u64>,
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/reservations", post(reserve).get(list))
        .route("/reservations/{id}", delete(release))
        .with_state(Arc::new(Inventory::default()));
    shop_checkout::serve(app, 8093).await;
}

async fn reserve(
    State(inv): State<Arc<Inventory>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    inv.answers.once(&headers, || {
        let mut next = inv.next.lock().expect("lock");
        *next += 1;
        let id = format!("res-{next}");
        let reservation = json!({ "id": id, "order_id": body["order_id"], "sku": body["sku"] });
        eprintln!("inventory: reserved {reservation}");
        inv.reservations
            .lock()
            .expect("lock")
            .insert(id, reservation.clone());
        (StatusCode::CREATED, reservation)
    })
}

async fn release(
    State(inv): State<Arc<Inventory>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    inv.answers.once(&headers, || {
        match inv.reservations.lock().expect("lock").remove(&id) {
            Some(_) => {
                eprintln!("inventory: released {id}");
                (StatusCode::OK, json!({ "released": id }))
            }
            None => (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no reservation {id}") }),
            ),
        }
    })
}

async fn list(State(inv): State<Arc<Inventory>>) -> Json<Value> {
    let all: Vec<Value> = inv
        .reservations
        .lock()
        .expect("lock")
        .values()
        .cloned()
        .collect();
    Json(json!({ "reservations": all }))
}
