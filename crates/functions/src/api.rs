//! Functions over the admin API (for operators and `gantry functions ...`).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/functions` | every function: kind, artifact, limits, load, deployments |
//! | `POST /v1/functions/{name}/invoke` | runs the function once with the request body (and `?path=`, `?method=`); answers what it answered |
//! | `GET /v1/functions/{name}/logs?limit=` | its recent stdout/stderr lines |
//! | `GET /v1/schedules` | schedules: cron, time zone, last and next run |

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::{Functions, Scheduler};

pub fn admin_router(functions: Functions, scheduler: Scheduler) -> Router {
    let schedules = Router::new()
        .route("/v1/schedules", get(schedules))
        .with_state(scheduler);
    Router::new()
        .route("/v1/functions", get(list))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v1/functions/{name}/logs", get(logs))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(functions)
        .merge(schedules)
}

async fn schedules(State(scheduler): State<Scheduler>) -> Json<serde_json::Value> {
    Json(json!({ "schedules": scheduler.list() }))
}

async fn list(State(functions): State<Functions>) -> Json<serde_json::Value> {
    Json(json!({ "functions": functions.list() }))
}

fn not_found(functions: &Functions, name: &str) -> Response {
    let names: Vec<String> = functions.list().into_iter().map(|f| f.name).collect();
    let declared = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    gantry_problem::Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-function",
        "No such function",
    )
    .detail(format!(
        "there is no function `{name}`; declared: {declared}"
    ))
    .respond()
}

#[derive(Debug, Deserialize)]
struct InvokeQuery {
    path: Option<String>,
    method: Option<String>,
}

async fn invoke(
    State(functions): State<Functions>,
    Path(name): Path<String>,
    Query(query): Query<InvokeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(base) = functions.url(&name) else {
        return not_found(&functions, &name);
    };
    let path = query.path.unwrap_or_else(|| "/".into());
    let method = query.method.unwrap_or_else(|| "POST".into());
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return (StatusCode::BAD_REQUEST, "`method` is not an HTTP method").into_response();
    };
    let content_type = headers
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static("application/json"));
    match crate::client::send(&base, method, &path, content_type, body).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("cannot reach function `{name}`: {error}"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
}

async fn logs(
    State(functions): State<Functions>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    if functions.url(&name).is_none() {
        return not_found(&functions, &name);
    }
    let lines = functions.logs().tail(&name, query.limit.unwrap_or(100));
    Json(json!({ "function": name, "lines": lines })).into_response()
}
