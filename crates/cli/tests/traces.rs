//! The trace store through the real binary: a request continues the caller's
//! trace through the gateway into a function, both hops are kept as spans
//! (child under parent), and `gantry traces` lists and draws them.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{client, eventually, Gantry};

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\nhi")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 28))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn cli(gantry: &Gantry, args: &[&str]) -> String {
    let (ok, out, err) = support::gantry_cli(gantry, args);
    assert!(ok, "{err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_through_the_gateway_into_a_function_is_one_trace() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[functions.hello]
component = "hello.wat"
executor = "wagi"

[[routes]]
name = "hello"
path = "/hello"
to = "function:hello"

[topics.greetings]

[[subscriptions]]
topic = "greetings"
to = "function:hello"
"#;
    let gantry = Gantry::start_with(manifest, |dir| {
        std::fs::write(dir.join("hello.wat"), HELLO).unwrap();
    })
    .await;
    let c = client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = c
        .get(gantry.url("/hello"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gantry.log());

    let url = gantry.admin_url(&format!("/v1/traces/{trace}"));
    eventually("both spans are stored", Duration::from_secs(10), || async {
        let v: Value = c
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        v["spans"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await;
    let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    let spans = v["spans"].as_array().unwrap();
    let gateway = spans.iter().find(|s| s["service"] == "gateway").unwrap();
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .unwrap();
    assert_eq!(gateway["parent_id"], "00f067aa0ba902b7");
    assert_eq!(gateway["name"], "GET hello");
    assert_eq!(gateway["attributes"]["http.route"], "hello");
    assert_eq!(gateway["attributes"]["http.response.status_code"], 200);
    assert_eq!(function["parent_id"], gateway["span_id"]);
    assert_eq!(function["attributes"]["faas.name"], "hello");
    assert_eq!(function["attributes"]["faas.trigger"], "http");
    assert!(function["start_ns"].as_u64() >= gateway["start_ns"].as_u64());

    let listed = cli(&gantry, &["traces", "list", "--route", "hello"]);
    assert!(
        listed.contains(trace) && listed.contains("GET hello (gateway)"),
        "{listed}"
    );
    let shown = cli(&gantry, &["traces", "show", trace]);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines[0].starts_with(&format!("trace {trace}")), "{shown}");
    assert!(lines[1].contains("GET hello [gateway] 200"), "{shown}");
    assert!(
        lines[2].contains("  function hello [function:hello] 200"),
        "{shown}"
    );

    let missing = c
        .get(gantry.admin_url("/v1/traces/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let malformed = c
        .get(gantry.admin_url("/v1/traces/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    // An event published in a trace: its delivery and the function it
    // triggers join that trace, each under the previous hop.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let published = c
        .post(gantry.api_url("/v1/publish/greetings"))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .body(r#"{"specversion":"1.0","id":"g-1","source":"/test","type":"greeting","data":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let url = gantry.admin_url(&format!("/v1/traces/{trace}"));
    eventually(
        "the delivery and the function are traced",
        Duration::from_secs(15),
        || async {
            let v: Value = c
                .get(&url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            v["spans"].as_array().is_some_and(|s| s.len() == 2)
        },
    )
    .await;
    let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    let spans = v["spans"].as_array().unwrap();
    let delivery = spans.iter().find(|s| s["service"] == "events").unwrap();
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .unwrap();
    assert_eq!(delivery["parent_id"], "b7ad6b7169203331");
    assert_eq!(delivery["name"], "deliver greetings");
    assert_eq!(delivery["attributes"]["messaging.message.id"], "g-1");
    assert_eq!(function["parent_id"], delivery["span_id"]);
    assert_eq!(function["attributes"]["faas.trigger"], "pubsub");
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_to_a_real_decoder_and_flushed_at_shutdown() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let mut receiver = std::process::Command::new(root.join("tests/tools/otlp-receiver.sh"))
        .arg(root.join("../../target/guests"))
        .arg(port.to_string())
        .arg(&out)
        .spawn()
        .unwrap();
    let up = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(120),
            "the OTLP receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let manifest = format!(
        r#"
[platform]
name = "shop"
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"

[telemetry]
otlp_endpoint = "http://127.0.0.1:{port}"

[functions.hello]
component = "hello.wat"
executor = "wagi"

[[routes]]
name = "hello"
path = "/hello"
to = "function:hello"
"#
    );
    let mut gantry = Gantry::start_with(&manifest, |dir| {
        std::fs::write(dir.join("hello.wat"), HELLO).unwrap();
    })
    .await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let response = client()
        .get(gantry.url("/hello"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Stop at once: the spans still reach the collector (flush at shutdown).
    assert!(gantry.stop().success(), "{}", gantry.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spans: Vec<Value> = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let spans: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if spans.len() >= 2 || std::time::Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = receiver.kill();
    let _ = receiver.wait();
    let gateway = spans
        .iter()
        .find(|s| s["service"] == "gateway")
        .expect("gateway span exported");
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .expect("function span exported");
    assert_eq!(gateway["trace_id"], trace);
    assert_eq!(gateway["parent_id"], "00f067aa0ba902b7");
    assert_eq!(gateway["name"], "GET hello");
    assert_eq!(gateway["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(gateway["namespace"], "shop");
    assert_eq!(gateway["scope"], "gantry");
    assert_eq!(gateway["attributes"]["http.route"], "hello");
    assert_eq!(gateway["attributes"]["http.response.status_code"], 200);
    assert!(gateway["end"].as_u64() > gateway["start"].as_u64());
    assert_eq!(function["trace_id"], trace);
    assert_eq!(function["parent_id"], gateway["span_id"]);
    assert_eq!(function["attributes"]["faas.name"], "hello");
}
