//! Functions through the real `gantry` binary: every trigger (HTTP routes,
//! events, schedules, webhooks, uploads), Lambda processes built on the
//! official `lambda_runtime` crate, wasm hot deploys under load.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{client, eventually, Gantry};

/// A WAGI module answering `hello from VERSION` (VERSION is 2 characters).
fn wagi(version: &str) -> Vec<u8> {
    assert_eq!(version.len(), 2);
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\nhello from {version}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 39))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    );
    // WAT text is accepted as is: wasmtime parses it.
    text.into_bytes()
}

async fn functions(gantry: &Gantry) -> Vec<Value> {
    let v: Value = client()
        .get(gantry.admin_url("/v1/functions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["functions"].as_array().unwrap().clone()
}

async fn logs(gantry: &Gantry, function: &str) -> String {
    let v: Value = client()
        .get(gantry.admin_url(&format!("/v1/functions/{function}/logs?limit=500")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap_or("").to_string() + "\n")
        .collect()
}

use support::gantry_cli as cli;

#[tokio::test(flavor = "multi_thread")]
async fn routes_reach_lambda_and_wasm_functions_and_a_deploy_under_load_fails_nothing() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[functions.probe]
command = ["{BIN}/shop-probe"]
runtime = "lambda"
timeout = "1s"
idle_timeout = "1s"

[functions.slowstart]
command = ["sh", "-c", "sleep 2 && exec {BIN}/shop-probe"]
runtime = "lambda"
timeout = "1s"

[functions.hello]
component = "hello.wat"
executor = "wagi"

[[routes]]
path = "/lambda/*"
strip_prefix = "/lambda"
to = "function:probe"

[[routes]]
path = "/slowstart/*"
strip_prefix = "/slowstart"
to = "function:slowstart"

[[routes]]
path = "/hello"
to = "function:hello"
rate_limit = { requests = 100000, per = "1s" }
"#;
    let gantry = Gantry::start_with(manifest, |dir| {
        std::fs::write(dir.join("hello.wat"), wagi("v1")).unwrap();
    })
    .await;
    let client = client();

    // A Lambda function behind a route: API Gateway payload 2.0 both ways.
    let response = client
        .post(gantry.url("/lambda/orders?tag=a&tag=b"))
        .header("cookie", "session=s1")
        .body("{\"n\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gantry.log());
    assert_eq!(response.headers()["x-probe"], "1");
    assert_eq!(response.headers()["set-cookie"], "probe=1");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/orders");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["query"]["tag"], "a,b");
    assert_eq!(echoed["body"], "{\"n\":1}");
    assert_eq!(echoed["request_id"], request_id);
    assert_eq!(echoed["function"], "probe");
    assert_eq!(echoed["home_visible"], false, "the host environment leaked");

    // A function error, a timeout and a crash are clear 5xx answers...
    let response = client
        .get(gantry.url("/lambda/error"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("the probe was asked to fail"));
    let started = Instant::now();
    let response = client
        .get(gantry.url("/lambda/sleep"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    let response = client
        .get(gantry.url("/lambda/crash"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    // ...and the next request gets a fresh process.
    let response = client.get(gantry.url("/lambda/pid")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // A start-up longer than `timeout` is the init phase, not the invocation.
    let response = client
        .get(gantry.url("/slowstart/pid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gantry.log());

    // Idle processes stop after idle_timeout: scale to zero, then back.
    eventually(
        "the probe scales to zero",
        Duration::from_secs(15),
        || async {
            functions(&gantry)
                .await
                .iter()
                .any(|f| f["name"] == "probe" && f["instances"] == 0)
        },
    )
    .await;
    let response = client.get(gantry.url("/lambda/pid")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let metrics = client
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("function_cold_starts_total{function=\"probe\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("function_invocations_total{function=\"probe\",outcome=\"timeout\",status_class=\"5xx\"} 1"),
        "{metrics}"
    );

    // The CLI: list, invoke, logs.
    let (ok, out, err) = cli(&gantry, &["functions", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("probe") && out.contains("lambda") && out.contains("wagi"),
        "{out}"
    );
    let (ok, out, err) = cli(
        &gantry,
        &[
            "functions",
            "invoke",
            "probe",
            "--path",
            "/cli",
            "--data",
            "{\"x\":1}",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"path\":\"/cli\""), "{out}");
    let (ok, _, err) = cli(
        &gantry,
        &["functions", "invoke", "probe", "--path", "/error"],
    );
    assert!(!ok);
    assert!(err.contains("502"), "{err}");
    let (ok, _, err) = cli(&gantry, &["functions", "invoke", "nope"]);
    assert!(!ok);
    assert!(err.contains("no function `nope`"), "{err}");

    // A wasm function redeployed under load: no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let answered = |body: &str| seen.lock().unwrap().contains(body);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, seen) = (
            client.clone(),
            gantry.url("/hello"),
            stop.clone(),
            seen.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.text().await.unwrap();
                seen.lock().unwrap().insert(body);
            }
        }));
    }
    eventually("v1 answers the load", Duration::from_secs(20), || async {
        answered("hello from v1")
    })
    .await;
    std::fs::write(gantry.dir.path().join("hello.wat"), wagi("v2")).unwrap();
    // The load goes on until the new version has answered it too.
    eventually("v2 answers the load", Duration::from_secs(20), || async {
        answered("hello from v2")
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        functions(&gantry)
            .await
            .iter()
            .any(|f| f["name"] == "hello" && f["deployments"] == 2),
        "one deployment after the first"
    );

    // Stopping Gantry stops the function's processes too.
    let pid: u32 = client
        .get(gantry.url("/lambda/pid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let mut gantry = gantry;
    assert!(gantry.stop().success(), "{}", gantry.log());
    eventually(
        "the function's process is gone",
        Duration::from_secs(5),
        || async {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_schedules_webhooks_and_uploads_trigger_functions() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[functions.probe]
command = ["{BIN}/shop-probe"]
runtime = "lambda"
min_instances = 1

[topics."order.placed"]
[topics.uploads]

[[subscriptions]]
topic = "order.placed"
to = "function:probe"

[[subscriptions]]
topic = "uploads"
to = "function:probe"

[schedules.tick]
cron = "* * * * * *"
to = "function:probe"

[buckets.photos]
max_size = "1KiB"
topic = "uploads"

[[routes]]
path = "/photos/*"
strip_prefix = "/photos"
methods = ["PUT", "GET"]
to = "bucket:photos"

[[routes]]
path = "/webhooks/payments"
to = "function:probe"
webhook = { style = "stripe", secret_env = "GANTRY_TEST_WEBHOOK_SECRET", tolerance = "5m" }
"#;
    // nextest runs each test in its own process: this reaches only the
    // Gantry this test starts.
    std::env::set_var("GANTRY_TEST_WEBHOOK_SECRET", "whsec_shop");
    let gantry = Gantry::start(manifest).await;
    let client = client();

    // An event on the bus reaches the function as its CloudEvent JSON.
    let response = client
        .post(gantry.api_url("/v1/publish/order.placed"))
        .header("content-type", "application/cloudevents+json")
        .body(
            serde_json::json!({
                "specversion": "1.0", "id": "order-7", "source": "/orders",
                "type": "order.placed", "data": { "order_id": 7 }
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(
        "the event reaches the function",
        Duration::from_secs(20),
        || async {
            logs(&gantry, "probe")
                .await
                .contains("event \"order.placed\" \"order-7\"")
        },
    )
    .await;

    // The schedule fires every second.
    eventually("the schedule fires", Duration::from_secs(20), || async {
        logs(&gantry, "probe")
            .await
            .contains("event \"dev.gantry.schedule\" \"tick/")
    })
    .await;
    let schedules: Value = client
        .get(gantry.admin_url("/v1/schedules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schedules["schedules"][0]["name"], "tick");
    assert!(schedules["schedules"][0]["last_fired"].is_string());

    // Webhooks: a valid Stripe signature passes; a bad one, a missing one
    // and a replayed (old) timestamp get 401 and never reach the function.
    let body = r#"{"type":"payment_intent.succeeded"}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = |t: u64, body: &str| support::stripe_signature(b"whsec_shop", t, body);
    let send = |signature: Option<String>, body: &'static str| {
        let mut request = client.post(gantry.url("/webhooks/payments")).body(body);
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        request.send()
    };
    let response = send(Some(signed(now, body)), body).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["body"], body);
    for (signature, why) in [
        (Some(signed(now, "{}")), "signature"),
        (None, "no Stripe-Signature"),
        (Some(signed(now - 3600, body)), "tolerance"),
    ] {
        let response = send(signature, body).await.unwrap();
        assert_eq!(response.status(), 401);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{problem}"
        );
    }

    // Uploads: stored with their type, announced, readable back; too big is 413.
    let response = client
        .put(gantry.url("/photos/cats/tom.txt"))
        .header("content-type", "text/plain")
        .body("a photo of tom")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", gantry.log());
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["key"], "cats/tom.txt");
    assert_eq!(stored["size"], 14);
    eventually(
        "the upload reaches the function",
        Duration::from_secs(20),
        || async {
            logs(&gantry, "probe")
                .await
                .contains("event \"object.created\" \"photos/cats/tom.txt/")
        },
    )
    .await;
    let response = client
        .get(gantry.api_url("/v1/objects/photos/cats/tom.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "a photo of tom");
    let response = client
        .get(gantry.url("/photos/cats/tom.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "a photo of tom");
    let response = client
        .put(gantry.url("/photos/big.bin"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client
        .get(gantry.api_url("/v1/objects/photos/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_handler_runs_unmodified_on_the_official_runtime_client() {
    let guests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/tests/guests");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guests");
    std::fs::create_dir_all(&target).unwrap();
    let output = std::process::Command::new(guests.join("python-lambda.sh"))
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let manifest = format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"

[functions.py]
command = ["{python}", "-m", "awslambdaric", "lambda_handler.handle"]
runtime = "lambda"
workdir = "{}"

[[routes]]
path = "/py/*"
to = "function:py"
"#,
        guests.canonicalize().unwrap().display()
    );
    let gantry = Gantry::start(&manifest).await;
    let c = client();
    let response = c.get(gantry.url("/py/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", gantry.log());
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["path"], "/py/hello");
    assert_eq!(body["function"], "py");
    assert_eq!(body["request_id"], request_id);
    assert_eq!(body["has_deadline"], true);
    let response = c.get(gantry.url("/py/fail")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let problem = response.text().await.unwrap();
    assert!(
        problem.contains("the handler was asked to fail"),
        "{problem}"
    );
    eventually(
        "the handler's output is in its log",
        Duration::from_secs(10),
        || async {
            logs(&gantry, "py")
                .await
                .contains("python handler got /py/hello")
        },
    )
    .await;
}

/// The Python wasi:http component of crates/functions/tests/guests.
fn python_component() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("target/guests/app.wasm");
    let status =
        std::process::Command::new(root.join("crates/functions/tests/guests/build-python.sh"))
            .arg(&out)
            .status()
            .unwrap();
    assert!(status.success(), "building the Python guest failed");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasm_function_reaches_only_the_services_and_topics_it_was_granted() {
    let billing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let billing_url = format!("http://{}", billing.local_addr().unwrap());
    tokio::spawn(async move {
        let app =
            axum::Router::new().route("/invoices", axum::routing::get(|| async { "3 invoices" }));
        axum::serve(billing, app).await.unwrap();
    });
    let manifest = format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"

[services.billing]
urls = ["{billing_url}"]

[services.ledger]
urls = ["{billing_url}"]

[topics."order.paid"]
[topics."order.refunded"]

[functions.py]
component = "{}"
services = ["billing"]
publish = ["order.paid"]

[[routes]]
path = "/*"
to = "function:py"
"#,
        python_component().display()
    );
    let gantry = Gantry::start(&manifest).await;
    let c = client();
    let fetch = |query: Vec<(&'static str, String)>| {
        let request = c.get(gantry.url("/fetch")).query(&query);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // A granted service, by name: Gantry finds the instance.
    let (status, text) = fetch(vec![("url", "http://billing/invoices".into())]).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "upstream said 200: 3 invoices"),
        "{}",
        gantry.log()
    );
    // Not granted, though it is a declared service at the same address.
    let (status, _) = fetch(vec![("url", "http://ledger/invoices".into())]).await;
    assert_eq!(status, 403);
    // Publishing to a granted topic works; to another topic it is refused.
    let event = |id: &str, topic: &str| {
        serde_json::json!({"specversion": "1.0", "id": id, "source": "/py", "type": topic, "data": {"n": 1}})
            .to_string()
    };
    let (status, text) = fetch(vec![
        ("url", "http://gantry/v1/publish/order.paid".into()),
        ("method", "POST".into()),
        ("body", event("p-1", "order.paid")),
        ("ctype", "application/cloudevents+json".into()),
    ])
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("upstream said 200"), "{text}");
    let (status, _) = fetch(vec![
        ("url", "http://gantry/v1/publish/order.refunded".into()),
        ("method", "POST".into()),
        ("body", event("r-1", "order.refunded")),
        ("ctype", "application/cloudevents+json".into()),
    ])
    .await;
    assert_eq!(status, 403);
    // Gantry writes its log from a background thread: the line may land
    // just after the answer.
    eventually(
        "the refusal is logged with its reason",
        Duration::from_secs(10),
        || async { gantry.log().contains("may not publish to `order.refunded`") },
    )
    .await;
    let topics: Value = c
        .get(gantry.admin_url("/v1/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = |name: &str| {
        topics["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["last_seq"].clone())
            .unwrap()
    };
    assert_eq!(stored("order.paid"), 1, "{topics}");
    assert_ne!(stored("order.refunded"), 1, "{topics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_catch_up_or_skip_missed_runs_and_never_overlap() {
    let spin =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[functions.tick]
component = "tick.wat"
executor = "wagi"

[functions.slow]
component = "spin.wat"
executor = "wagi"
timeout = "2500ms"

[schedules.catchup]
cron = "* * * * * *"
to = "function:tick"
missed = "catch_up"

[schedules.skipper]
cron = "* * * * * *"
to = "function:tick"

[schedules.slow]
cron = "* * * * * *"
to = "function:slow"
"#;
    let mut gantry = Gantry::start_with(manifest, |dir| {
        std::fs::write(dir.join("tick.wat"), wagi("ok")).unwrap();
        std::fs::write(dir.join("spin.wat"), spin).unwrap();
    })
    .await;
    // A run of `slow` lasts 2.5 s and the schedule fires every second: the
    // runs in between are skipped, never started beside it.
    eventually(
        "an overlapping run is skipped",
        Duration::from_secs(20),
        || async {
            gantry
                .log()
                .contains("the previous run is still going; skipping this one")
        },
    )
    .await;
    let metrics = client()
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("function_instances{function=\"slow\"} 2"),
        "{metrics}"
    );

    // Down for 3 s: `catchup` runs once for all it missed, `skipper` drops them.
    assert!(gantry.stop().success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    gantry.restart().await;
    let said = |log: &str, what: &str, schedule: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains(&format!("schedule={schedule} ")))
    };
    // Each schedule says it for itself (`slow` skips too, so wait for these two).
    eventually(
        "the missed runs are handled",
        Duration::from_secs(20),
        || async {
            let log = gantry.log();
            said(&log, "running once to catch up", "catchup")
                && said(&log, "skipping them (missed", "skipper")
        },
    )
    .await;
    let log = gantry.log();
    assert!(!said(&log, "running once to catch up", "skipper"), "{log}");
    assert!(
        !log.contains("cannot record the schedule's last run"),
        "{log}"
    );
}
