//! The event bus through the real `gantry` binary: the platform API, the
//! admin API, the CLI, and durability across `kill -9`.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use support::{client, eventually, Gantry, GANTRY};

/// A subscriber in the test process: records the `ce-id` of each delivery and
/// answers 500 to events of type `poison`.
#[derive(Clone, Default)]
struct Subscriber {
    ids: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    async fn start() -> (Subscriber, String) {
        let subscriber = Subscriber::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ids = subscriber.ids.clone();
        let app = Router::new().route(
            "/events",
            post(move |headers: HeaderMap| {
                let ids = ids.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    ids.lock().unwrap().push(header("ce-id"));
                    if header("ce-type") == "poison" {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (subscriber, url)
    }

    fn distinct(&self) -> HashSet<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }
}

fn manifest(subscriber: &str) -> String {
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
api = "127.0.0.1:{{API}}"

[services.sub]
urls = ["{subscriber}"]

[topics.orders]
max_event_size = "2KiB"
schema = "order.json"

[[subscriptions]]
name = "mailer"
topic = "orders"
to = "sub:/events"
max_in_flight = 32
retry = {{ max_attempts = 2, initial = "50ms", max = "100ms" }}
"#
    )
}

fn write_schema(dir: &std::path::Path) {
    std::fs::write(
        dir.join("order.json"),
        r#"{"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}"#,
    )
    .unwrap();
}

fn order(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/tests", "type": "order.placed", "data": {"order_id": id}})
}

async fn publish(gantry: &Gantry, body: &Value) -> (u16, Value) {
    let response = client()
        .post(gantry.api_url("/v1/publish/orders"))
        .header("content-type", "application/cloudevents+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn every_acknowledged_event_is_delivered_after_kill_9() {
    acknowledged_events_survive_kill_9("always").await;
}

/// `batch` gives up durability against a machine crash, not a process one:
/// what was acknowledged is in the OS's hands when Gantry dies.
#[tokio::test]
async fn with_events_sync_batch_every_acknowledged_event_survives_kill_9_too() {
    acknowledged_events_survive_kill_9("batch").await;
}

async fn acknowledged_events_survive_kill_9(events_sync: &str) {
    let (subscriber, url) = Subscriber::start().await;
    let text = manifest(&url).replacen(
        "[platform]\n",
        &format!("[platform]\nevents_sync = \"{events_sync}\"\n"),
        1,
    );
    let mut gantry = Gantry::start_with(&text, write_schema).await;

    // Publishers run flat out; Gantry is killed while they do.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (acked, stop, api) = (
            acked.clone(),
            stop.clone(),
            gantry.api_url("/v1/publish/orders"),
        );
        publishers.push(tokio::spawn(async move {
            let client = client();
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let id = format!("p{p}-{n}");
                let sent = client
                    .post(&api)
                    .header("content-type", "application/cloudevents+json")
                    .body(order(&id).to_string())
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                    // Refused or cut off by the kill: not acknowledged, may or may not be stored.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    eventually(
        "some publishes acknowledged",
        Duration::from_secs(20),
        || async { acked.lock().unwrap().len() >= 300 },
    )
    .await;
    gantry.kill_hard();
    // Let the publishers notice, then stop them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    for p in publishers {
        p.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 300);

    gantry.restart().await;
    eventually(
        "every acknowledged event delivered",
        Duration::from_secs(60),
        || async { acked.is_subset(&subscriber.distinct()) },
    )
    .await;
}

#[tokio::test]
async fn the_platform_api_refuses_bad_events_with_clear_problems() {
    let (_subscriber, url) = Subscriber::start().await;
    let gantry = Gantry::start_with(&manifest(&url), write_schema).await;
    let http = client();

    let (status, body) = publish(&gantry, &order("ok-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["seq"], 1);

    // Missing attribute.
    let mut missing = order("m");
    missing.as_object_mut().unwrap().remove("type");
    let (status, body) = publish(&gantry, &missing).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`type` is missing"),
        "{body}"
    );

    // Malformed JSON.
    let response = http
        .post(gantry.api_url("/v1/publish/orders"))
        .header("content-type", "application/cloudevents+json")
        .body("{\"specversion\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // Schema violation names the field.
    let mut wrong = order("w");
    wrong["data"] = json!({"order_id": 7});
    let (status, body) = publish(&gantry, &wrong).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("/data/order_id"),
        "{body}"
    );

    // Too large.
    let mut big = order("big");
    big["data"]["notes"] = json!("x".repeat(4096));
    let (status, body) = publish(&gantry, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("max_event_size"),
        "{body}"
    );

    // Unknown topic.
    let response = http
        .post(gantry.api_url("/v1/publish/nope"))
        .header("content-type", "application/cloudevents+json")
        .body(order("n").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("declared topics: orders"),
        "{body}"
    );

    // Binary mode, and a batch with a duplicate of an earlier event.
    let response = http
        .post(gantry.api_url("/v1/publish/orders"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/tests")
        .header("ce-type", "order.placed")
        .header("content-type", "application/json")
        .body(r#"{"order_id": "bin-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .post(gantry.api_url("/v1/publish/orders"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([order("ok-1"), order("b-2")]).to_string())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["duplicate"], true);
    assert_eq!(body["results"][0]["seq"], 1);
    assert_eq!(body["results"][1]["seq"], 3);

    // A request over the platform API's body limit, and an unknown endpoint.
    // Over a raw connection, reading while writing: Gantry answers before
    // the body is all sent, and may close while the client still writes.
    let answer = oversized_publish(gantry.api).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("split the batch"), "{answer}");
    let response = http
        .get(gantry.api_url("/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // The admin API serves the platform API's OpenAPI document.
    let doc: Value = http
        .get(gantry.admin_url("/v1/platform-api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/publish/{topic}"]["post"].is_object());
}

/// Sends a 17 MiB publish and returns what Gantry answered.
async fn oversized_publish(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let size = 17 * 1024 * 1024;
    let head = format!(
        "POST /v1/publish/orders HTTP/1.1\r\nhost: gantry\r\ncontent-type: application/cloudevents-batch+json\r\ncontent-length: {size}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&answer).contains("split the batch") {
            break;
        }
    }
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

fn cli(gantry: &Gantry, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(GANTRY)
        .args(args)
        .arg("-f")
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dead_letters_are_listed_shown_redriven_and_purged_from_the_cli() {
    let (subscriber, url) = Subscriber::start().await;
    let gantry = Gantry::start_with(&manifest(&url), write_schema).await;
    let mut poison = order("bad-1");
    poison["type"] = json!("poison");
    assert_eq!(publish(&gantry, &poison).await.0, 200);
    assert_eq!(publish(&gantry, &order("good-1")).await.0, 200);

    eventually(
        "the poisoned event is dead-lettered",
        Duration::from_secs(10),
        || async {
            cli(&gantry, &["events", "dlq", "list", "mailer"])
                .1
                .contains("bad-1")
        },
    )
    .await;
    let (ok, out, _) = cli(&gantry, &["events", "dlq", "list", "mailer"]);
    assert!(ok);
    assert!(out.contains("poison") && out.contains("500"), "{out}");

    let (ok, out, _) = cli(&gantry, &["events", "dlq", "show", "mailer", "1"]);
    assert!(ok);
    let letter: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["event"]["id"], "bad-1");

    let (ok, out, _) = cli(&gantry, &["events", "subscriptions"]);
    assert!(ok && out.contains("mailer"), "{out}");

    // Redrive needs a selection.
    let (ok, _, err) = cli(&gantry, &["events", "dlq", "redrive", "mailer"]);
    assert!(!ok);
    assert!(err.contains("\"all\": true"), "{err}");
    let before = subscriber.ids.lock().unwrap().len();
    let (ok, out, _) = cli(
        &gantry,
        &["events", "dlq", "redrive", "mailer", "--seq", "1"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("redrove 1"), "{out}");
    eventually(
        "the redriven event is delivered again",
        Duration::from_secs(10),
        || async { subscriber.ids.lock().unwrap().len() >= before + 2 },
    )
    .await;
    eventually(
        "and dead-lettered again",
        Duration::from_secs(10),
        || async {
            cli(&gantry, &["events", "dlq", "list", "mailer"])
                .1
                .contains("bad-1")
        },
    )
    .await;
    let (ok, out, _) = cli(&gantry, &["events", "dlq", "purge", "mailer", "--all"]);
    assert!(ok && out.contains("purged 1"), "{out}");
    let (_, out, _) = cli(&gantry, &["events", "dlq", "list", "mailer"]);
    assert!(out.contains("no dead letters"), "{out}");

    // Replay from the start, and the topic as the CLI prints it.
    let (ok, out, _) = cli(&gantry, &["events", "seek", "mailer", "--to", "earliest"]);
    assert!(ok && out.contains("sequence number 1"), "{out}");
    let (ok, out, _) = cli(
        &gantry,
        &[
            "events",
            "tail",
            "orders",
            "--from",
            "earliest",
            "--no-follow",
        ],
    );
    assert!(ok);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["event"]["id"], "good-1");
    let (ok, _, err) = cli(&gantry, &["events", "tail", "nope", "--no-follow"]);
    assert!(!ok && err.contains("unknown topic"), "{err}");
}
