//! The trace store over the admin API (for `gantry traces`).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/traces?service=&route=&min_duration_ms=&errors=&status=&limit=` | recent traces, newest first: root span, duration, span count, error |
//! | `GET /v1/traces/{trace_id}` | every span of a trace, by start time |
//! | `GET /traces` | the trace viewer: a page listing traces and drawing one as a waterfall (`/traces#TRACE_ID`) |

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gantry_telemetry::traces::{TraceQuery, TraceStore};
use serde::Deserialize;
use serde_json::json;

pub(crate) fn admin_router(traces: TraceStore) -> Router {
    Router::new()
        .route("/v1/traces", get(list))
        .route("/v1/traces/{id}", get(show))
        .route(
            "/traces",
            get(|| async { page("text/html; charset=utf-8", VIEWER_HTML) }),
        )
        .route(
            "/traces.js",
            get(|| async { page("text/javascript; charset=utf-8", VIEWER_JS) }),
        )
        .with_state(traces)
}

/// The viewer: a static page and its script, built into the binary (no
/// build step, no external resources).
const VIEWER_HTML: &str = include_str!("ui/traces.html");
const VIEWER_JS: &str = include_str!("ui/traces.js");

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            // Only its own script and the admin API; inline styles only.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    service: Option<String>,
    route: Option<String>,
    min_duration_ms: Option<u64>,
    errors: Option<bool>,
    /// `503` or a class such as `5xx`.
    status: Option<String>,
    limit: Option<usize>,
}

async fn list(State(traces): State<TraceStore>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().map(parse_status).transpose() {
        Ok(status) => status,
        Err(detail) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"title": "Bad status filter", "status": 400, "detail": detail})),
            )
                .into_response()
        }
    };
    let query = TraceQuery {
        status,
        service: q.service,
        route: q.route,
        min_duration: q.min_duration_ms.map(Duration::from_millis),
        errors_only: q.errors.unwrap_or(false),
        limit: q.limit.unwrap_or(50).min(1000),
    };
    match tokio::task::spawn_blocking(move || traces.list(&query)).await {
        Ok(Ok(list)) => Json(json!({ "traces": list })).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `503` → 503..=503; `5xx` → 500..=599.
fn parse_status(text: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "`{text}` is not a status filter; use a code such as `503` or a class such as `5xx`"
        )
    };
    match text.as_bytes() {
        [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
            let low = u16::from(d - b'0') * 100;
            Ok((low, low + 99))
        }
        _ => match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok((code, code)),
            _ => Err(bad()),
        },
    }
}

async fn show(State(traces): State<TraceStore>, Path(id): Path<String>) -> Response {
    let wanted = id.to_ascii_lowercase();
    if wanted.len() != 32 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"title": "Not a trace id", "status": 400, "detail": format!("`{id}` is not a trace id: 32 hex digits, as in traceparent or the access log")})),
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(move || traces.trace(&wanted)).await {
        Ok(Ok(spans)) if spans.is_empty() => (
            StatusCode::NOT_FOUND,
            Json(json!({"title": "No such trace", "status": 404, "detail": format!("no spans of trace {id} are stored (kept 24 hours)")})),
        )
            .into_response(),
        Ok(Ok(spans)) => Json(json!({ "trace_id": id, "spans": spans })).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
