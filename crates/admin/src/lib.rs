//! The admin API: a separate listener (keep it private) for operators and tools.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when every service with a health check has a healthy instance, else 503 naming the others |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /v1/services` | services, owners, instances and their health |
//! | `GET /v1/routes` | routes in match order |
//! | `POST /v1/reload` | re-read the manifest and apply it; 422 with the errors if it is invalid |
//! | `PUT /v1/routes/{route}/weights` | change a split's weights at run time, e.g. `{"catalog": 25}` |
//! | `DELETE /v1/routes/{route}/weights` | back to the manifest's weights |
//! | `POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{id}` | create (shown once), list and revoke API keys |
//! | `GET /v1/routes/{route}/shadow` | the shadow comparison report: match rate and the latest differing pairs |
//!
//! Other subsystems add their own endpoints through the `extra` router of
//! [`serve`] (the event bus: `/v1/topics`, `/v1/subscriptions`, ...).
//!
//! Reloads are not done here: the admin API asks the app through a channel
//! ([`ReloadRequest`]) so every reload, whatever triggered it, runs the same way.

use std::net::SocketAddr;

use axum::extract::Path;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gantry_gateway::Gateway;
use gantry_problem::Explain;
use gantry_telemetry::Metrics;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What a successful reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Services that did not exist before.
    pub started: Vec<String>,
    /// Services whose configuration changed and were restarted.
    pub restarted: Vec<String>,
    /// Services no longer in the manifest.
    pub stopped: Vec<String>,
    /// Services left running as they were.
    pub unchanged: Vec<String>,
    /// Routes now served.
    pub routes: usize,
    /// Changes that need a restart of Gantry to take effect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRefused {
    pub reason: String,
}

/// A request to reload, answered when the reload is done.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<ReloadReport, ReloadRefused>>,
}

#[derive(Clone, Debug)]
struct AdminState {
    gateway: Gateway,
    metrics: Metrics,
    reload: mpsc::Sender<ReloadRequest>,
}

/// Serves the admin API, with the routes of `extra` merged in, on `listener`
/// until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    metrics: Metrics,
    reload: mpsc::Sender<ReloadRequest>,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(AdminState {
        gateway,
        metrics,
        reload,
    })
    .merge(extra);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/services", get(services))
        .route("/v1/routes", get(routes))
        .route("/v1/reload", post(reload))
        .route("/v1/routes/{route}/weights", put(set_weights).delete(reset_weights))
        .route("/v1/routes/{route}/shadow", get(shadow_report))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "no such admin endpoint; see /v1/services, /v1/routes, /v1/topics, /v1/subscriptions, /v1/reload, /v1/traces, /traces (the trace viewer), /metrics, /readyz",
            )
        })
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let table = state.gateway.table();
    let waiting: Vec<&str> = table
        .services()
        .iter()
        .filter(|s| s.has_health_check() && !s.is_ready())
        .map(|s| s.name())
        .collect();
    if waiting.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let body = json!({ "status": "not ready", "waiting_for": waiting });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.refresh().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn services(State(state): State<AdminState>) -> Response {
    let table = state.gateway.table();
    let services: Vec<_> = table
        .services()
        .iter()
        .map(|s| {
            let mut status = serde_json::to_value(s.status()).unwrap_or_default();
            status["circuit_breaker"] = json!(table.breaker_state(s.name()));
            status["max_concurrent"] = json!(s.config().max_concurrent);
            status
        })
        .collect();
    Json(json!({ "services": services })).into_response()
}

async fn routes(State(state): State<AdminState>) -> Response {
    Json(json!({ "routes": state.gateway.table().describe() })).into_response()
}

/// `PUT /v1/routes/{route}/weights` with `{"catalog": 25}`: changes the split
/// at run time. Services not named keep their weight.
async fn set_weights(
    State(state): State<AdminState>,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let weights: std::collections::BTreeMap<String, u32> = match serde_json::from_slice(&body) {
        Ok(weights) => weights,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("the body must be a JSON object of service names to weights, e.g. {{\"catalog\": 25}}: {error}"),
            )
        }
    };
    let weights: Vec<(String, u32)> = weights.into_iter().collect();
    answer_weights(
        state.gateway.table().set_weights(&route, Some(&weights)),
        &route,
    )
}

/// `DELETE /v1/routes/{route}/weights`: back to the manifest's weights.
async fn reset_weights(State(state): State<AdminState>, Path(route): Path<String>) -> Response {
    answer_weights(state.gateway.table().set_weights(&route, None), &route)
}

/// `GET /v1/routes/{route}/shadow`: how the route's mirrored responses compared.
async fn shadow_report(State(state): State<AdminState>, Path(route): Path<String>) -> Response {
    match state.gateway.table().shadow_report(&route) {
        Ok(summary) => Json(summary).into_response(),
        Err(reason) => problem(StatusCode::NOT_FOUND, &reason),
    }
}

/// `POST /v1/keys` with `{"consumer": "NAME"}`: a new API key, shown once.
async fn create_key(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let Some(keys) = state.gateway.api_keys() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API key store is not open",
        );
    };
    let consumer = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["consumer"].as_str().map(str::to_string))
        .filter(|c| !c.trim().is_empty());
    let Some(consumer) = consumer else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the body must be {\"consumer\": \"NAME\"}",
        );
    };
    match keys.create(&consumer).await {
        Ok(created) => {
            tracing::info!(target: "gantry::keys", id = %created.info.id, consumer = %created.info.consumer, "API key created");
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(error) => error.problem().respond(),
    }
}

/// `GET /v1/keys`: every key without its secret.
async fn list_keys(State(state): State<AdminState>) -> Response {
    let Some(keys) = state.gateway.api_keys() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API key store is not open",
        );
    };
    match keys.list().await {
        Ok(keys) => Json(json!({ "keys": keys })).into_response(),
        Err(error) => error.problem().respond(),
    }
}

/// `DELETE /v1/keys/{id}`: revokes a key at once.
async fn revoke_key(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let Some(keys) = state.gateway.api_keys() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API key store is not open",
        );
    };
    match keys.revoke(&id).await {
        Ok(true) => {
            tracing::info!(target: "gantry::keys", %id, "API key revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => problem(
            StatusCode::NOT_FOUND,
            &format!("no API key has the id `{id}`; `gantry keys list` shows them"),
        ),
        Err(error) => error.problem().respond(),
    }
}

fn answer_weights(result: Result<Vec<gantry_gateway::Weight>, String>, route: &str) -> Response {
    match result {
        Ok(weights) => {
            tracing::info!(target: "gantry::traffic", route, weights = ?weights.iter().map(|w| (&w.service, w.weight)).collect::<Vec<_>>(), "route weights changed");
            Json(json!({ "route": route, "weights": weights })).into_response()
        }
        Err(reason) if reason.starts_with("no route") => problem(StatusCode::NOT_FOUND, &reason),
        Err(reason) => problem(StatusCode::UNPROCESSABLE_ENTITY, &reason),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.reload.send(ReloadRequest { reply }).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "Gantry is shutting down");
    }
    match answer.await {
        Ok(Ok(report)) => Json(json!({ "status": "applied", "report": report })).into_response(),
        Ok(Err(refused)) => problem(StatusCode::UNPROCESSABLE_ENTITY, &refused.reason),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "Gantry is shutting down"),
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    gantry_problem::Problem::plain(status)
        .detail(detail)
        .respond()
}
