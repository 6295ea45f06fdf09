//! The shop's catalog service, extracted from the monolith (the strangler
//! pattern's first step). Gantry runs it: it listens on `PORT` and knows its
//! instance number from `GANTRY_INSTANCE`.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Clone)]
struct Instance(String);

#[derive(Serialize, Clone)]
struct Item {
    id: u32,
    name: &'static str,
    price_cents: u32,
}

const ITEMS: [Item; 3] = [
    Item {
        id: 1,
        name: "espresso cup",
        price_cents: 1200,
    },
    Item {
        id: 2,
        name: "moka pot",
        price_cents: 3900,
    },
    Item {
        id: 3,
        name: "grinder",
        price_cents: 8900,
    },
];

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9001);
    let instance = Instance(std::env::var("GANTRY_INSTANCE").unwrap_or_else(|_| "0".into()));
    // The catalog keeps the monolith's public paths (`/api/catalog/...`), so
    // the gateway can split and mirror traffic between the two, and also
    // answers under `/catalog/...` for routes that strip `/api`.
    let catalog = Router::new()
        .route("/items", get(list))
        .route("/items/{id}", get(item));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .nest("/catalog", catalog.clone())
        .nest("/api/catalog", catalog)
        .with_state(instance.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("catalog: cannot bind its port");
    eprintln!("catalog instance {} listening on port {port}", instance.0);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("catalog: cannot listen for SIGTERM");
            term.recv().await;
        })
        .await
        .expect("catalog: server failed");
}

async fn list(State(instance): State<Instance>) -> Json<Value> {
    Json(json!({ "service": "catalog", "instance": instance.0, "items": ITEMS }))
}

async fn item(
    State(instance): State<Instance>,
    Path(id): Path<u32>,
) -> Result<Json<Value>, StatusCode> {
    let item = ITEMS
        .iter()
        .find(|i| i.id == id)
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(
        json!({ "service": "catalog", "instance": instance.0, "item": item }),
    ))
}
