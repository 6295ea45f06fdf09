//! Sagas through the real `gantry` binary: `kill -9` in the middle of a step
//! and in the middle of a compensation, then a restart. The workflow must
//! finish, and no side effect may happen twice.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use support::{client, eventually, Gantry, GANTRY};

/// A service that acts once per idempotency key (answering a repeat with
/// the first answer), counts its side effects, and can be made slow or
/// failing per `METHOD /segment`.
#[derive(Clone, Default)]
struct Service {
    effects: Arc<Mutex<Vec<String>>>,
    answers: Arc<Mutex<HashMap<String, Value>>>,
    slow: Arc<Mutex<HashMap<String, Duration>>>,
    failing: Arc<Mutex<HashMap<String, u16>>>,
    /// Requests received, by route.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Service {
    async fn start() -> (Service, String) {
        let service = Service::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(service.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (service, url)
    }

    fn count(&self, prefix: &str) -> usize {
        self.effects
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }

    fn received(&self, route: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| *r == route)
            .count()
    }
}

async fn handle(
    State(s): State<Service>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let route = format!("{method} /{}", path.split('/').next().unwrap_or_default());
    s.seen.lock().unwrap().push(route.clone());
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // The side effect happens before the (slow) answer, as in a service
    // that charges and then takes its time to reply.
    let slow = s.slow.lock().unwrap().get(&route).copied();
    let answered = s.answers.lock().unwrap().get(&key).cloned();
    let failing = s.failing.lock().unwrap().get(&route).copied();
    let (status, answer) = match (answered, failing) {
        (Some(answer), _) => (StatusCode::CREATED, answer),
        (None, Some(status)) => (
            StatusCode::from_u16(status).unwrap(),
            json!({"error": "refused"}),
        ),
        (None, None) => {
            let answer = json!({"id": format!("{}-{}", route.replace([' ', '/'], ""), key)});
            s.effects.lock().unwrap().push(format!("{method} /{path}"));
            s.answers.lock().unwrap().insert(key, answer.clone());
            (StatusCode::CREATED, answer)
        }
    };
    if let Some(wait) = slow {
        tokio::time::sleep(wait).await;
    }
    (status, Json(answer))
}

fn manifest(url: &str) -> String {
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
api = "127.0.0.1:{{API}}"

[telemetry]
sample_ratio = 1

[services.shop]
urls = ["{url}"]

[workflows.checkout]
[[workflows.checkout.steps]]
name = "reserve"
call = "shop:POST /reservations"
compensate = {{ call = "shop:DELETE /reservations/{{{{ steps.reserve.output.id }}}}" }}

[[workflows.checkout.steps]]
name = "charge"
call = "shop:POST /charges"
timeout = "10s"
compensate = {{ call = "shop:POST /refunds" }}

[[workflows.checkout.steps]]
name = "ship"
call = "shop:POST /shipments"
retry = {{ max_attempts = 1 }}
"#
    )
}

async fn start(gantry: &Gantry, id: &str) {
    let response = client()
        .post(gantry.api_url("/v1/workflows/checkout"))
        .json(&json!({"id": id, "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn state(gantry: &Gantry, id: &str) -> String {
    let run: Value = client()
        .get(gantry.admin_url(&format!("/v1/workflows/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    run["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn kill_9_in_the_middle_of_a_step_then_restart_finishes_without_a_second_charge() {
    let (service, url) = Service::start().await;
    service
        .slow
        .lock()
        .unwrap()
        .insert("POST /charges".into(), Duration::from_millis(1500));
    let mut gantry = Gantry::start(&manifest(&url)).await;
    start(&gantry, "k1").await;
    // The charge request is in the service (and charged) when Gantry dies.
    eventually(
        "the charge is in flight",
        Duration::from_secs(10),
        || async { service.received("POST /charges") == 1 },
    )
    .await;
    gantry.kill_hard();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(service.count("POST /charges"), 1);

    gantry.restart().await;
    eventually(
        "the run completes after the restart",
        Duration::from_secs(30),
        || async { state(&gantry, "k1").await == "completed" },
    )
    .await;
    assert!(
        service.received("POST /charges") >= 2,
        "the charge was replayed"
    );
    assert_eq!(service.count("POST /charges"), 1, "and charged once");
    assert_eq!(service.count("POST /reservations"), 1);
    assert_eq!(service.count("POST /shipments"), 1);
}

#[tokio::test]
async fn kill_9_during_compensation_then_restart_compensates_each_step_once() {
    let (service, url) = Service::start().await;
    service
        .failing
        .lock()
        .unwrap()
        .insert("POST /shipments".into(), 400);
    service
        .slow
        .lock()
        .unwrap()
        .insert("POST /refunds".into(), Duration::from_millis(1500));
    let mut gantry = Gantry::start(&manifest(&url)).await;
    start(&gantry, "k2").await;
    eventually(
        "the refund is in flight",
        Duration::from_secs(10),
        || async { service.received("POST /refunds") == 1 },
    )
    .await;
    assert_eq!(state(&gantry, "k2").await, "compensating");
    gantry.kill_hard();
    tokio::time::sleep(Duration::from_millis(1600)).await;

    gantry.restart().await;
    eventually(
        "the run is compensated after the restart",
        Duration::from_secs(30),
        || async { state(&gantry, "k2").await == "compensated" },
    )
    .await;
    assert_eq!(service.count("POST /refunds"), 1, "refunded once");
    assert_eq!(service.count("DELETE /reservations"), 1, "released once");
    assert_eq!(service.count("POST /charges"), 1);

    // The CLI shows the run, its error and each step.
    let out = std::process::Command::new(GANTRY)
        .args(["workflows", "show", "k2", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("state compensated"), "{text}");
    assert!(text.contains("step `ship` failed"), "{text}");
    assert!(text.contains("compensate"), "{text}");
    let out = std::process::Command::new(GANTRY)
        .args(["workflows", "list", "--state", "compensated", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("k2"));
}

#[tokio::test]
async fn starting_is_idempotent_and_bad_starts_are_refused_clearly() {
    let (_service, url) = Service::start().await;
    let gantry = Gantry::start(&manifest(&url)).await;
    let c = client();
    let first = c
        .post(gantry.api_url("/v1/workflows/checkout"))
        .json(&json!({"id": "same", "input": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let again = c
        .post(gantry.api_url("/v1/workflows/checkout"))
        .json(&json!({"id": "same", "input": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let unknown = c
        .post(gantry.api_url("/v1/workflows/nope"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("declared workflows: checkout"),
        "{body}"
    );
    let malformed = c
        .post(gantry.api_url("/v1/workflows/checkout"))
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let missing = c
        .get(gantry.admin_url("/v1/workflows/never"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_route_to_the_platform_api_starts_runs_with_gateway_policies() {
    let (service, url) = Service::start().await;
    let text = format!(
        "{}\n[services.platform]\nurls = [\"http://127.0.0.1:{{API}}\"]\n\n[[routes]]\npath = \"/api/checkout\"\nmethods = [\"POST\"]\nto = \"platform\"\nrewrite = \"/v1/workflows/checkout\"\n",
        manifest(&url)
    );
    let gantry = Gantry::start(&text).await;
    let response = client()
        .post(gantry.url("/api/checkout"))
        .json(&json!({"id": "via-route", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    eventually("the run completes", Duration::from_secs(10), || async {
        state(&gantry, "via-route").await == "completed"
    })
    .await;
    assert_eq!(service.count("POST /shipments"), 1);

    // The request that started the run and every step call are one trace.
    let get = |url: String| async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let traces_url = gantry.admin_url("/v1/traces?service=workflows");
    // Spans are written in batches: wait until the trace has the gateway's
    // and both steps' spans, not just its first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let trace = loop {
        let listed = get(traces_url.clone()).await;
        if let Some(id) = listed["traces"][0]["trace_id"].as_str() {
            let trace = get(gantry.admin_url(&format!("/v1/traces/{id}"))).await;
            let spans = trace["spans"].as_array().cloned().unwrap_or_default();
            let has_step = |step: &str| {
                spans
                    .iter()
                    .any(|s| s["attributes"]["gantry.workflow.step"] == step)
            };
            if spans.iter().any(|s| s["service"] == "gateway")
                && has_step("reserve")
                && has_step("charge")
            {
                break trace;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run's steps were never traced: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = trace["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["service"] == "gateway"), "{trace}");
    // The run's start span sits under the gateway's attempt that carried
    // the start request; every step call sits under the start span.
    let start = spans
        .iter()
        .find(|s| s["service"] == "workflows" && s["kind"] == "internal")
        .unwrap_or_else(|| panic!("no start span: {trace}"));
    let attempt = spans
        .iter()
        .find(|s| s["kind"] == "client" && s["service"] == "gateway")
        .unwrap();
    assert_eq!(start["parent_id"], attempt["span_id"], "{trace}");
    let step_spans: Vec<&Value> = spans
        .iter()
        .filter(|s| s["service"] == "workflows" && s["kind"] == "client")
        .collect();
    assert!(
        step_spans
            .iter()
            .all(|s| s["parent_id"] == start["span_id"]),
        "{trace}"
    );
    let steps: Vec<&str> = step_spans
        .iter()
        .map(|s| s["attributes"]["gantry.workflow.step"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"reserve") && steps.contains(&"charge"),
        "{trace}"
    );
}
