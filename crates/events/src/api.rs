//! The event bus over HTTP.
//!
//! Platform API (for services, at `GANTRY_API`):
//!
//! | endpoint | answer |
//! |---|---|
//! | `POST /v1/publish/{topic}` | publish one event (structured or binary mode) or a batch; 200 once durable |
//! | `GET /v1/openapi.json` | the platform API's OpenAPI document |
//!
//! Admin API (for operators and `gantry events ...`):
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/topics` | topics: settings, schema version, sequence numbers, size |
//! | `GET /v1/topics/{topic}/schemas` | every registered schema version |
//! | `GET /v1/topics/{topic}/events?from=&follow=` | events as NDJSON; `follow=true` keeps streaming new ones |
//! | `GET /v1/subscriptions` | subscriptions: position, lag, pending, dead letters |
//! | `POST /v1/subscriptions/{name}/seek` | `{"to": "earliest" \| "latest" \| SEQ \| "RFC 3339 time"}` |
//! | `GET /v1/subscriptions/{name}/dead-letters` | dead letters (`?type=`, `?error=`, `?limit=`) |
//! | `GET /v1/subscriptions/{name}/dead-letters/{seq}` | one dead letter with its event |
//! | `POST /v1/subscriptions/{name}/dead-letters/redrive` | `{"seqs": [..], "type": .., "error_contains": .., "all": true}` |
//! | `POST /v1/subscriptions/{name}/dead-letters/purge` | same selection; deletes them |
//! | `GET /v1/platform-api/openapi.json` | the platform API's OpenAPI document |

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_problem::{Explain, Problem};
use serde::Deserialize;
use serde_json::json;

use crate::broker::{DeadLetterFilter, Position, Seq, StoredEvent};
use crate::cloudevent;
use crate::{EventBus, OperationError, PublishError};

/// The largest publish request body (a batch); single events are also held
/// to their topic's `max_event_size`.
pub const MAX_PUBLISH_BODY: usize = 16 * 1024 * 1024;

/// The platform API's OpenAPI document.
pub const OPENAPI: &str = include_str!("../../../docs/platform-api.openapi.json");

/// Routes of the platform API that belong to the event bus.
pub fn platform_router(bus: EventBus) -> Router {
    Router::new()
        .route("/v1/publish/{topic}", post(publish))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such platform API endpoint",
                "the platform API serves POST /v1/publish/{topic}; GET /v1/openapi.json describes it",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_PUBLISH_BODY))
        .with_state(bus)
}

/// Routes of the admin API that belong to the event bus.
pub fn admin_router(bus: EventBus) -> Router {
    Router::new()
        .route("/v1/topics", get(topics))
        .route("/v1/topics/{topic}/schemas", get(schemas))
        .route("/v1/topics/{topic}/events", get(events))
        .route("/v1/subscriptions", get(subscriptions))
        .route("/v1/subscriptions/{name}/seek", post(seek))
        .route("/v1/subscriptions/{name}/dead-letters", get(dead_letters))
        .route(
            "/v1/subscriptions/{name}/dead-letters/{seq}",
            get(dead_letter),
        )
        .route(
            "/v1/subscriptions/{name}/dead-letters/redrive",
            post(redrive),
        )
        .route("/v1/subscriptions/{name}/dead-letters/purge", post(purge))
        .route("/v1/platform-api/openapi.json", get(openapi))
        .with_state(bus)
}

/// An RFC 9457 problem response.
fn problem(
    status: StatusCode,
    kind: &str,
    title: &'static str,
    detail: impl Into<String>,
) -> Response {
    Problem::new(status, kind, title).detail(detail).respond()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn publish(
    State(bus): State<EventBus>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request-too-large",
                "Request too large",
                format!(
                    "a publish request may carry at most {} MiB; split the batch",
                    MAX_PUBLISH_BODY / (1024 * 1024)
                ),
            )
        }
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Unreadable request",
                rejection.body_text(),
            )
        }
    };
    let events = match cloudevent::parse_request(&headers, body) {
        Ok(events) => events,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-event",
                "Invalid CloudEvent",
                error.0,
            )
        }
    };
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match bus.publish(&topic, events, traceparent.as_deref()).await {
        Ok(published) => {
            let results: Vec<_> = ids
                .iter()
                .zip(&published)
                .map(|(id, p)| json!({"id": id, "seq": p.seq, "duplicate": p.duplicate}))
                .collect();
            Json(json!({"topic": topic, "results": results})).into_response()
        }
        Err(error) => publish_problem(error),
    }
}

fn publish_problem(error: PublishError) -> Response {
    error.problem().respond()
}

fn operation_problem(error: OperationError) -> Response {
    error.problem().respond()
}

async fn topics(State(bus): State<EventBus>) -> Response {
    let stats = match bus.broker().topic_stats().await {
        Ok(stats) => stats,
        Err(e) => return operation_problem(e.into()),
    };
    let declared = bus.topics();
    let mut out = Vec::new();
    for stat in stats {
        let runtime = declared.get(&stat.name);
        out.push(json!({
            "name": stat.name,
            "declared": runtime.is_some(),
            "last_seq": stat.last_seq,
            "first_seq": stat.first_seq,
            "events": stat.events,
            "bytes": stat.bytes,
            "schema_version": runtime.and_then(|r| r.schema.as_ref()).map(|s| s.version),
            "config": runtime.map(|r| &r.config),
        }));
    }
    Json(json!({"topics": out})).into_response()
}

async fn schemas(State(bus): State<EventBus>, Path(topic): Path<String>) -> Response {
    match bus.broker().schema_versions(&topic).await {
        Ok(versions) => Json(json!({"topic": topic, "versions": versions})).into_response(),
        Err(e) => operation_problem(e.into()),
    }
}

async fn subscriptions(State(bus): State<EventBus>) -> Response {
    let stats = match bus.broker().subscription_stats().await {
        Ok(stats) => stats,
        Err(e) => return operation_problem(e.into()),
    };
    let topics = match bus.broker().topic_stats().await {
        Ok(topics) => topics,
        Err(e) => return operation_problem(e.into()),
    };
    let configs = bus.subscription_configs().await;
    let out: Vec<_> = stats
        .into_iter()
        .map(|s| {
            let last = topics
                .iter()
                .find(|t| t.name == s.topic)
                .map_or(0, |t| t.last_seq);
            let lag = crate::metrics::lag(last, s.next_seq, s.pending);
            json!({
                "name": s.name,
                "topic": s.topic,
                "active": s.active,
                "next_seq": s.next_seq,
                "pending": s.pending,
                "lag": lag,
                "dead_letters": s.dead_letters,
                "config": configs.get(&s.name).map(|c| &**c),
            })
        })
        .collect();
    Json(json!({"subscriptions": out})).into_response()
}

#[derive(Debug, Deserialize)]
struct SeekRequest {
    to: serde_json::Value,
}

/// `earliest`, `latest`, a sequence number or an RFC 3339 time.
pub fn parse_position(value: &serde_json::Value) -> Result<Position, String> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .map(Position::Seq)
            .ok_or_else(|| "a sequence number is a whole number from 1".to_string()),
        serde_json::Value::String(text) => match text.as_str() {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            other => {
                if let Ok(seq) = other.parse::<u64>() {
                    return parse_position(&json!(seq));
                }
                humantime::parse_rfc3339_weak(other)
                    .map(Position::Time)
                    .map_err(|_| {
                        format!("`{other}` is not `earliest`, `latest`, a sequence number or an RFC 3339 time")
                    })
            }
        },
        _ => Err("`to` must be `earliest`, `latest`, a sequence number or a time".into()),
    }
}

async fn seek(
    State(bus): State<EventBus>,
    Path(name): Path<String>,
    body: Result<Json<SeekRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid seek",
            "send JSON such as {\"to\": \"earliest\"}, {\"to\": 42} or {\"to\": \"2026-01-31T12:00:00Z\"}",
        );
    };
    let position = match parse_position(&request.to) {
        Ok(position) => position,
        Err(why) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid seek",
                why,
            )
        }
    };
    match bus.seek(&name, position).await {
        Ok(next) => Json(json!({"subscription": name, "next_seq": next})).into_response(),
        Err(e) => operation_problem(e),
    }
}

#[derive(Debug, Deserialize, Default)]
struct LetterQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    error: Option<String>,
    limit: Option<usize>,
}

async fn dead_letters(
    State(bus): State<EventBus>,
    Path(name): Path<String>,
    Query(query): Query<LetterQuery>,
) -> Response {
    let filter = DeadLetterFilter {
        seqs: Vec::new(),
        event_type: query.event_type,
        error_contains: query.error,
    };
    match bus
        .dead_letters(&name, filter, query.limit.unwrap_or(100))
        .await
    {
        Ok(letters) => Json(json!({"subscription": name, "dead_letters": letters})).into_response(),
        Err(e) => operation_problem(e),
    }
}

async fn dead_letter(
    State(bus): State<EventBus>,
    Path((name, seq)): Path<(String, Seq)>,
) -> Response {
    let filter = DeadLetterFilter {
        seqs: vec![seq],
        ..DeadLetterFilter::default()
    };
    match bus.dead_letters(&name, filter, 1).await {
        Ok(letters) => match letters.into_iter().next() {
            Some(letter) => Json(letter).into_response(),
            None => problem(
                StatusCode::NOT_FOUND,
                "unknown-dead-letter",
                "No such dead letter",
                format!("subscription `{name}` has no dead letter with sequence number {seq}"),
            ),
        },
        Err(e) => operation_problem(e),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Selection {
    #[serde(default)]
    seqs: Vec<Seq>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    error_contains: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Selection {
    fn filter(self) -> Result<DeadLetterFilter, String> {
        let narrowed =
            !self.seqs.is_empty() || self.event_type.is_some() || self.error_contains.is_some();
        if !narrowed && !self.all {
            return Err(
                "nothing selected: name the dead letters with `seqs`, `type` or \
                 `error_contains`, or send `\"all\": true`"
                    .into(),
            );
        }
        Ok(DeadLetterFilter {
            seqs: self.seqs,
            event_type: self.event_type,
            error_contains: self.error_contains,
        })
    }
}

/// The dead letters a redrive or purge names; the error is the problem to answer.
fn selection(
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> Result<DeadLetterFilter, Box<Response>> {
    let refused = |detail: String| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid selection",
            detail,
        ))
    };
    match body {
        Ok(Json(selection)) => selection.filter().map_err(refused),
        Err(rejection) => Err(refused(format!(
            "{rejection}; send JSON such as {{\"seqs\": [12]}}, {{\"type\": \"order.placed\"}} or {{\"all\": true}}"
        ))),
    }
}

async fn redrive(
    State(bus): State<EventBus>,
    Path(name): Path<String>,
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let filter = match selection(body) {
        Ok(filter) => filter,
        Err(response) => return *response,
    };
    match bus.redrive(&name, filter).await {
        Ok(count) => Json(json!({"subscription": name, "redriven": count})).into_response(),
        Err(e) => operation_problem(e),
    }
}

async fn purge(
    State(bus): State<EventBus>,
    Path(name): Path<String>,
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let filter = match selection(body) {
        Ok(filter) => filter,
        Err(response) => return *response,
    };
    match bus.purge(&name, filter).await {
        Ok(count) => Json(json!({"subscription": name, "purged": count})).into_response(),
        Err(e) => operation_problem(e),
    }
}

#[derive(Debug, Deserialize)]
struct TailQuery {
    from: Option<String>,
    #[serde(default)]
    follow: bool,
    limit: Option<usize>,
}

/// One NDJSON line per event: `{"seq", "published", "event"}`.
fn line(event: &StoredEvent) -> Bytes {
    let published = std::time::UNIX_EPOCH + Duration::from_millis(event.published_ms.max(0) as u64);
    let value = json!({
        "topic": &*event.topic,
        "seq": event.seq,
        "published": humantime::format_rfc3339_millis(published).to_string(),
        "event": serde_json::from_slice::<serde_json::Value>(&event.json).unwrap_or_default(),
    });
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

async fn events(
    State(bus): State<EventBus>,
    Path(topic): Path<String>,
    Query(query): Query<TailQuery>,
) -> Response {
    if bus.topic(&topic).is_none() {
        return operation_problem(OperationError::UnknownTopic(topic));
    }
    let from = query
        .from
        .as_deref()
        .unwrap_or(if query.follow { "latest" } else { "earliest" });
    let position = match parse_position(&json!(from)) {
        Ok(position) => position,
        Err(why) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid `from`",
                why,
            )
        }
    };
    let broker = bus.broker().clone();
    // Resolve the start against the topic's current sequence numbers.
    let start = match position {
        Position::Seq(seq) => seq,
        Position::Earliest => 1,
        Position::Latest | Position::Time(_) => {
            let stats = broker.topic_stats().await.unwrap_or_default();
            let last = stats
                .iter()
                .find(|t| t.name == topic)
                .map_or(0, |t| t.last_seq);
            match position {
                Position::Time(time) => {
                    let ms = time
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    // Scan forward for the first event at or after the time.
                    let mut seq = 1;
                    'scan: loop {
                        let batch = broker.read(&topic, seq, 1024).await.unwrap_or_default();
                        if batch.is_empty() {
                            break 'scan last + 1;
                        }
                        for event in &batch {
                            if event.published_ms >= ms {
                                break 'scan event.seq;
                            }
                            seq = event.seq + 1;
                        }
                    }
                }
                _ => last + 1,
            }
        }
    };
    let limit = query.limit.unwrap_or(usize::MAX);
    let follow = query.follow;
    let watch = broker.watch(&topic);
    let state = (broker, topic, start, limit, watch);
    let stream = futures_util::stream::unfold(
        state,
        move |(broker, topic, next, left, mut watch)| async move {
            if left == 0 {
                return None;
            }
            loop {
                match broker.read(&topic, next, left.min(256)).await {
                    Ok(batch) if !batch.is_empty() => {
                        let last = batch.last().map_or(next, |e| e.seq);
                        let sent = batch.len();
                        let chunk: Vec<u8> = batch.iter().flat_map(|e| line(e).to_vec()).collect();
                        return Some((
                            Ok::<_, std::io::Error>(Bytes::from(chunk)),
                            (broker, topic, last + 1, left - sent, watch),
                        ));
                    }
                    Ok(_) if follow => {
                        // Wait for new events; wake now and then so a closed
                        // connection is noticed.
                        let _ = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
                    }
                    _ => return None,
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
