//! SLOs over the admin API: `GET /v1/slos` (budgets, burn rates, alert states).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::Slos;

pub fn admin_router(slos: Slos) -> Router {
    Router::new()
        .route("/v1/slos", get(status))
        .with_state(slos)
}

async fn status(State(slos): State<Slos>) -> Json<serde_json::Value> {
    Json(json!({ "slos": slos.status(crate::now()) }))
}
