//! The shop's monolith: everything not yet extracted into its own service.
//! Listens on `PORT` (9000 when run by hand, which is where the repository's
//! `gantry.toml` expects its `legacy` service).

use std::net::SocketAddr;

use axum::http::{HeaderMap, Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let app = Router::new()
        .route(
            "/",
            get(|| async { "Welcome to the shop (served by the monolith)\n" }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/orders", get(orders).post(place_order))
        .route("/api/catalog/items", get(old_catalog))
        .route("/debug/request", get(echo).post(echo))
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("monolith: cannot bind its port");
    eprintln!("monolith listening on port {port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("monolith: cannot listen for SIGTERM");
            term.recv().await;
        })
        .await
        .expect("monolith: server failed");
}

async fn orders() -> Json<Value> {
    Json(json!({ "service": "monolith", "orders": [{ "id": 100, "items": [1, 2] }] }))
}

/// Places an order for the user the gateway vouches for (`X-User-Id`, from
/// the token's subject).
async fn place_order(headers: HeaderMap, body: String) -> (axum::http::StatusCode, Json<Value>) {
    let user = headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000);
    let order: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (
        axum::http::StatusCode::CREATED,
        Json(json!({ "service": "monolith", "order_id": id, "user": user, "order": order })),
    )
}

/// The catalog as the monolith still serves it, until the extraction is done.
/// Same contract as the catalog service: the gateway's shadow comparison
/// checks that the two agree.
async fn old_catalog() -> Json<Value> {
    Json(json!({
        "service": "monolith",
        "items": [
            { "id": 1, "name": "espresso cup", "price_cents": 1200 },
            { "id": 2, "name": "moka pot", "price_cents": 3900 },
            { "id": 3, "name": "grinder", "price_cents": 8900 },
        ]
    }))
}

/// Shows what reached the monolith: handy to see what the gateway forwards.
async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>"))))
        .collect();
    Json(
        json!({ "service": "monolith", "method": method.as_str(), "uri": uri.to_string(), "headers": headers }),
    )
}
