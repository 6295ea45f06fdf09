//! Workflows over HTTP.
//!
//! Platform API: `POST /v1/workflows/{name}` with `{"id": "optional", "input": {...}}`
//! starts a run (201), or gives back the run with that id (200).
//!
//! Admin API:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/workflows?state=&workflow=&limit=` | runs, newest first |
//! | `GET /v1/workflows/{id}` | a run: input, state, error, each step's attempts, output, error and timings |
//! | `POST /v1/workflows/{id}/retry` | retry a parked run's failing compensation |
//! | `POST /v1/workflows/{id}/resume` | `{"from": "STEP"}`: run a stopped run again from a step |
//! | `POST /v1/workflows/{id}/cancel` | cancel: compensate what completed, end `cancelled` |

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use gantry_problem::{Explain, Problem};

use crate::{Engine, WorkflowError};

pub fn platform_router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/workflows/{name}", post(start))
        .with_state(engine)
}

pub fn admin_router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/workflows", get(list))
        .route("/v1/workflows/{id}", get(show))
        .route("/v1/workflows/{id}/retry", post(retry))
        .route("/v1/workflows/{id}/resume", post(resume))
        .route("/v1/workflows/{id}/cancel", post(cancel))
        .with_state(engine)
}

fn problem(status: StatusCode, kind: &str, title: &'static str, detail: String) -> Response {
    Problem::new(status, kind, title).detail(detail).respond()
}

fn refusal(error: WorkflowError) -> Response {
    error.problem().respond()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    id: Option<String>,
    #[serde(default)]
    input: Value,
}

async fn start(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<StartRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid start request",
                format!("{rejection}; send JSON such as {{\"id\": \"order-42\", \"input\": {{\"order_id\": 42}}}}"),
            )
        }
    };
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    match engine
        .start(&name, request.id, request.input, traceparent)
        .await
    {
        Ok((instance, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({
                "id": instance.id,
                "workflow": instance.workflow,
                "version": instance.version,
                "state": instance.state,
                "trace_id": instance.trace,
            });
            (status, Json(body)).into_response()
        }
        Err(error) => refusal(error),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    workflow: Option<String>,
    limit: Option<usize>,
}

async fn list(State(engine): State<Engine>, Query(query): Query<ListQuery>) -> Response {
    let state = match query.state.as_deref().map(crate::State::parse) {
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Unknown state",
                "states are running, waiting, compensating, completed, compensated, failed, needs_attention, cancelled".into(),
            )
        }
        Some(state) => state,
        None => None,
    };
    match engine
        .store()
        .list(state, query.workflow, query.limit.unwrap_or(100))
        .await
    {
        Ok(runs) => Json(json!({ "runs": runs })).into_response(),
        Err(error) => refusal(WorkflowError::Journal(error)),
    }
}

async fn show(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.get(&id).await {
        Ok(run) => Json(run).into_response(),
        Err(error) => refusal(error),
    }
}

async fn retry(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.retry(&id).await {
        Ok(run) => Json(run).into_response(),
        Err(error) => refusal(error),
    }
}

#[derive(Debug, Deserialize)]
struct ResumeRequest {
    from: String,
}

async fn resume(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    body: Result<Json<ResumeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid resume",
            "send JSON such as {\"from\": \"charge\"}".into(),
        );
    };
    match engine.resume(&id, &request.from).await {
        Ok(run) => Json(run).into_response(),
        Err(error) => refusal(error),
    }
}

async fn cancel(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.cancel(&id).await {
        Ok(run) => Json(run).into_response(),
        Err(error) => refusal(error),
    }
}
