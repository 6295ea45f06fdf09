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

/// Answers every request with 503.
const BUSY: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Status: 503\nContent-Type: text/plain\n\nbusy")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 42))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// The trace at `url` once it holds `count` spans.
async fn trace_with(url: &str, count: usize, what: &str, limit: Duration) -> Value {
    eventually(what, limit, || async {
        let v: Value = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        v["spans"].as_array().is_some_and(|s| s.len() == count)
    })
    .await;
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

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

[telemetry]
sample_ratio = 1

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
    let v = trace_with(
        &url,
        3,
        "all three spans are stored",
        Duration::from_secs(10),
    )
    .await;
    let spans = v["spans"].as_array().unwrap();
    let gateway = spans
        .iter()
        .find(|s| s["kind"] == "server" && s["service"] == "gateway")
        .unwrap();
    let attempt = spans.iter().find(|s| s["kind"] == "client").unwrap();
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .unwrap();
    assert_eq!(gateway["parent_id"], "00f067aa0ba902b7");
    assert_eq!(gateway["name"], "GET hello");
    assert_eq!(gateway["attributes"]["http.route"], "hello");
    assert_eq!(gateway["attributes"]["http.response.status_code"], 200);
    assert_eq!(attempt["parent_id"], gateway["span_id"]);
    assert_eq!(attempt["name"], "GET function:hello");
    assert_eq!(attempt["attributes"]["http.response.status_code"], 200);
    assert_eq!(function["parent_id"], attempt["span_id"]);
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
        lines[2].contains("  GET function:hello [gateway] 200"),
        "{shown}"
    );
    assert!(
        lines[3].contains("    function hello [function:hello] 200"),
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

    // An event published in a trace: the publish, its delivery and the
    // function it triggers join that trace, each under the previous hop.
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
    let v = trace_with(
        &url,
        3,
        "the delivery and the function are traced",
        Duration::from_secs(15),
    )
    .await;
    let spans = v["spans"].as_array().unwrap();
    let publish = spans
        .iter()
        .find(|s| s["name"] == "publish greetings")
        .unwrap();
    let delivery = spans
        .iter()
        .find(|s| s["name"] == "deliver greetings")
        .unwrap();
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .unwrap();
    assert_eq!(publish["parent_id"], "b7ad6b7169203331");
    assert_eq!(publish["attributes"]["messaging.message.id"], "g-1");
    assert_eq!(publish["attributes"]["messaging.operation.type"], "send");
    assert_eq!(delivery["parent_id"], publish["span_id"]);
    assert_eq!(delivery["attributes"]["messaging.message.id"], "g-1");
    assert_eq!(function["parent_id"], delivery["span_id"]);
    assert_eq!(function["attributes"]["faas.trigger"], "pubsub");
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_http_to_a_real_decoder_and_flushed_at_shutdown() {
    check_otlp_export("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_grpc_to_a_real_grpc_server() {
    check_otlp_export("grpc").await;
}

/// Starts the official-protobuf receiver (over `protocol`), sends one
/// request through Gantry, stops Gantry at once and checks what arrived.
async fn check_otlp_export(protocol: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let mut receiver = std::process::Command::new(root.join("tests/tools/otlp-receiver.sh"))
        .arg(root.join("../../target/guests"))
        .arg(port.to_string())
        .arg(&out)
        .arg(if protocol == "grpc" { "grpc" } else { "http" })
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
sample_ratio = 1
otlp_endpoint = "http://127.0.0.1:{port}"
otlp_protocol = "{protocol}"

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
        if spans.len() >= 3 || std::time::Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = receiver.kill();
    let _ = receiver.wait();
    let gateway = spans
        .iter()
        .find(|s| s["service"] == "gateway" && s["kind"] == 2)
        .expect("gateway span exported");
    let attempt = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("attempt span exported (SPAN_KIND_CLIENT)");
    let function = spans
        .iter()
        .find(|s| s["service"] == "function:hello")
        .expect("function span exported");
    assert_eq!(
        gateway["protocol"],
        if protocol == "grpc" { "grpc" } else { "http" }
    );
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
    assert_eq!(attempt["parent_id"], gateway["span_id"]);
    assert_eq!(function["parent_id"], attempt["span_id"]);
    assert_eq!(function["attributes"]["faas.name"], "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sampling_off_failing_traces_are_kept_whole_with_every_retry() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[telemetry]
sample_ratio = 0
# Only failures keep a trace here, however slow the machine.
slow = "60s"

[functions.hello]
component = "hello.wat"
executor = "wagi"

[functions.busy]
component = "busy.wat"
executor = "wagi"

[[routes]]
name = "hello"
path = "/hello"
to = "function:hello"

[[routes]]
name = "busy"
path = "/busy"
to = "function:busy"
retry = { attempts = 3, on = [503], backoff = "10ms", max_backoff = "20ms" }

[topics.jobs]

[[subscriptions]]
topic = "jobs"
to = "function:busy"
retry = { max_attempts = 1 }
"#;
    let gantry = Gantry::start_with(manifest, |dir| {
        std::fs::write(dir.join("hello.wat"), HELLO).unwrap();
        std::fs::write(dir.join("busy.wat"), BUSY).unwrap();
    })
    .await;
    let c = client();
    let healthy = "6bf92f3577b34da6a3ce929d0e0e4738";
    let failing = "7bf92f3577b34da6a3ce929d0e0e4739";
    for _ in 0..5 {
        let ok = c
            .get(gantry.url("/hello"))
            .header("traceparent", format!("00-{healthy}-00f067aa0ba902b7-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let busy = c
        .get(gantry.url("/busy"))
        .header("traceparent", format!("00-{failing}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);

    // The failing trace is kept whole: the gateway span, three attempts (the
    // retries numbered), and the function under each attempt.
    let url = gantry.admin_url(&format!("/v1/traces/{failing}"));
    let v = trace_with(
        &url,
        7,
        "the failing trace is kept",
        Duration::from_secs(10),
    )
    .await;
    let spans = v["spans"].as_array().unwrap();
    let server = spans
        .iter()
        .find(|s| s["service"] == "gateway" && s["kind"] == "server")
        .unwrap();
    assert_eq!(server["error"], true);
    let attempts: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "client").collect();
    assert_eq!(attempts.len(), 3, "{v:#}");
    let resends: Vec<u64> = attempts
        .iter()
        .map(|a| {
            a["attributes"]["http.request.resend_count"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(resends, [0, 1, 2]);
    for attempt in &attempts {
        assert_eq!(attempt["parent_id"], server["span_id"]);
        assert_eq!(attempt["attributes"]["http.response.status_code"], 503);
        assert!(
            spans
                .iter()
                .any(|f| f["service"] == "function:busy" && f["parent_id"] == attempt["span_id"]),
            "a function span under each attempt: {v:#}"
        );
    }
    let listed = cli(&gantry, &["traces", "list", "--status", "5xx"]);
    assert!(listed.contains(failing), "{listed}");
    let listed = cli(&gantry, &["traces", "list", "--status", "200"]);
    assert!(!listed.contains(failing), "{listed}");
    let (ok, _, err) = support::gantry_cli(&gantry, &["traces", "list", "--status", "9xx"]);
    assert!(!ok && err.contains("use a code such as `503`"), "{err}");
    let shown = cli(&gantry, &["traces", "show", failing]);
    assert!(
        shown.contains("GET function:busy [gateway] 503 (retry 2)"),
        "{shown}"
    );

    // The healthy trace was sampled out (the failing one was stored after
    // it, so it would be there by now).
    let missing = c
        .get(gantry.admin_url(&format!("/v1/traces/{healthy}")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // An event that fails its only attempt: the dead-letter gauge and the
    // lag read from the store show it at the next scrape.
    let published = c
        .post(gantry.api_url("/v1/publish/jobs"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"j-1","source":"/test","type":"job","data":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let metrics_url = gantry.admin_url("/metrics");
    eventually(
        "the dead letter is counted",
        Duration::from_secs(15),
        || async {
            let text = c
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(
                r#"gantry_subscription_dead_letters{subscription="busy.jobs",topic="jobs"} 1"#,
            )
        },
    )
    .await;
    let text = c
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"gantry_subscription_lag_events{subscription="busy.jobs",topic="jobs"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gantry_topic_events{topic="jobs"} 1"#),
        "{text}"
    );
    // The five healthy requests' fifteen spans (gateway, attempt, function)
    // were let go after the hold.
    eventually(
        "the healthy spans are sampled out",
        Duration::from_secs(20),
        || async {
            let text = c
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(r#"gantry_trace_spans_total{outcome="sampled_out"} 15"#)
        },
    )
    .await;
}

/// Debian's Chromium, or `None` (outside CI) when it is not installed.
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have Chromium for the trace viewer test (.ci/run installs Debian's `chromium`)"
        );
        eprintln!("skipping: no Chromium here (apt-get install chromium)");
    }
    found
}

/// The DOM of `url` after its scripts ran, from headless Chromium.
fn rendered(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_viewer_lists_traces_and_draws_one_as_a_waterfall_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[telemetry]
sample_ratio = 1

[functions.hello]
component = "hello.wat"
executor = "wagi"

[functions.busy]
component = "busy.wat"
executor = "wagi"

[[routes]]
name = "hello"
path = "/hello"
to = "function:hello"

[[routes]]
name = "busy"
path = "/busy"
to = "function:busy"
retry = { attempts = 1 }
"#;
    let gantry = Gantry::start_with(manifest, |dir| {
        std::fs::write(dir.join("hello.wat"), HELLO).unwrap();
        std::fs::write(dir.join("busy.wat"), BUSY).unwrap();
    })
    .await;
    let c = client();
    let hello = "5bf92f3577b34da6a3ce929d0e0e4731";
    let busy = "5bf92f3577b34da6a3ce929d0e0e4732";
    for (path, trace) in [("/hello", hello), ("/busy", busy)] {
        c.get(gantry.url(path))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .send()
            .await
            .unwrap();
    }
    let v = trace_with(
        &gantry.admin_url(&format!("/v1/traces/{hello}")),
        3,
        "the hello trace is stored",
        Duration::from_secs(10),
    )
    .await;
    trace_with(
        &gantry.admin_url(&format!("/v1/traces/{busy}")),
        3,
        "the busy trace is stored",
        Duration::from_secs(10),
    )
    .await;

    // The list: both traces, the failing one marked.
    let list = rendered(browser, &gantry.admin_url("/traces"));
    assert!(
        list.contains(&format!("data-trace-id=\"{hello}\"")),
        "{list}"
    );
    assert!(
        list.contains(&format!("data-trace-id=\"{busy}\"")),
        "{list}"
    );
    assert!(list.contains("<td class=\"error\">GET busy</td>"), "{list}");
    assert!(list.contains("2 traces"), "{list}");

    // One trace: a row per span, each under its parent, with a bar.
    let page = rendered(browser, &gantry.admin_url(&format!("/traces#{hello}")));
    for span in v["spans"].as_array().unwrap() {
        let id = span["span_id"].as_str().unwrap();
        assert!(page.contains(&format!("data-span-id=\"{id}\"")), "{page}");
    }
    let order: Vec<usize> = ["GET hello", "GET function:hello", "function hello"]
        .iter()
        .map(|name| {
            page.find(&format!(">{name}</td>"))
                .unwrap_or_else(|| panic!("no {name} row in {page}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(page.contains("3 spans across 2 services"), "{page}");
    assert_eq!(page.matches("class=\"bar\"").count(), 3, "{page}");

    // An unknown trace says so.
    let missing = rendered(
        browser,
        &gantry.admin_url("/traces#0123456789abcdef0123456789abcdef"),
    );
    assert!(missing.contains("no spans of trace"), "{missing}");
}
