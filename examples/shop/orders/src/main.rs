//! The shop's orders service. It owns its data (`ORDERS_DB`, a SQLite file)
//! and announces each new order as an `order.placed` event through an
//! outbox: the order row and the event row are written in one transaction,
//! and Gantry relays the event to the bus. No order without its event, no
//! event without its order, even if the process dies between the two.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde_json::{json, Value};

type Db = Arc<Mutex<Connection>>;

#[tokio::main]
async fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8091".into());
    let path = std::env::var("ORDERS_DB").unwrap_or_else(|_| "orders.db".into());
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).expect("orders: cannot create the database directory");
    }
    let conn = Connection::open(&path).expect("orders: cannot open the database");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS orders (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user TEXT NOT NULL,
             sku INTEGER NOT NULL,
             email TEXT
         );
         -- Gantry's outbox table: see docs/events.md.
         CREATE TABLE IF NOT EXISTS gantry_outbox (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             topic TEXT NOT NULL,
             event TEXT NOT NULL
         );",
    )
    .expect("orders: cannot create the tables");
    let db: Db = Arc::new(Mutex::new(conn));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/orders", post(place_order))
        .with_state(db);
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("orders: cannot bind");
    axum::serve(listener, app)
        .await
        .expect("orders: server failed");
}

/// Places an order for the user the gateway vouches for (`X-User-Id`).
async fn place_order(
    State(db): State<Db>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let user = headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    let order: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let Some(sku) = order["sku"].as_i64() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "send {\"sku\": NUMBER, \"email\": \"...\"}" })),
        );
    };
    let email = order["email"].as_str().map(str::to_string);
    // The event carries the request's trace (the CloudEvents
    // distributed-tracing extension), so what it triggers joins the trace.
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let placed = {
        let mut conn = db.lock().expect("orders: lock");
        write_order(
            &mut conn,
            &user,
            sku,
            email.as_deref(),
            traceparent.as_deref(),
        )
    };
    match placed {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({ "service": "orders", "order_id": id, "user": user, "order": order })),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("cannot store the order: {error}") })),
        ),
    }
}

/// The order and its event, in one transaction.
fn write_order(
    conn: &mut Connection,
    user: &str,
    sku: i64,
    email: Option<&str>,
    traceparent: Option<&str>,
) -> rusqlite::Result<i64> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO orders (user, sku, email) VALUES (?1, ?2, ?3)",
        rusqlite::params![user, sku, email],
    )?;
    let id = tx.last_insert_rowid();
    // The price list of the example: 13.00 per sku number.
    let mut data = json!({ "order_id": id, "user": user, "sku": sku, "amount_cents": sku * 1300 });
    if let Some(email) = email {
        data["email"] = json!(email);
    }
    let mut event = json!({
        "specversion": "1.0",
        "id": format!("order-{id}"),
        "source": "/shop/orders",
        "type": "order.placed",
        "subject": id.to_string(),
        "data": data,
    });
    if let Some(traceparent) = traceparent {
        event["traceparent"] = json!(traceparent);
    }
    tx.execute(
        "INSERT INTO gantry_outbox (topic, event) VALUES ('order.placed', ?1)",
        [event.to_string()],
    )?;
    tx.commit()?;
    Ok(id)
}
