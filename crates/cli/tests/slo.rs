//! SLOs through the real binary: failures injected at a service make the
//! page fire to a real webhook receiver, with the runbook and example trace
//! ids; a quiet route under its minimum-request guard pages no one.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use support::{client, eventually, Gantry, GANTRY};

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_route_pages_through_the_webhook_and_a_quiet_one_does_not() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let alerts = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alerts_url = format!("http://{}/alerts", alerts.local_addr().unwrap());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn({
        let received = received.clone();
        async move {
            let app = Router::new().route(
                "/alerts",
                post(move |Json(alert): Json<Value>| {
                    let received = received.clone();
                    async move {
                        received.lock().unwrap().push(alert);
                        "ok"
                    }
                }),
            );
            axum::serve(alerts, app).await.unwrap();
        }
    });
    tokio::spawn(async move {
        let app = Router::new().route(
            "/{*path}",
            get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down") }),
        );
        axum::serve(upstream, app).await.unwrap();
    });
    let manifest = format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"

[services.orders]
urls = ["{upstream_url}"]
circuit_breaker = {{ failure_ratio = 1.0, min_requests = 1000000 }}

[[routes]]
name = "checkout"
path = "/checkout"
to = "orders"
retry = {{ attempts = 1 }}

[[routes]]
name = "quiet"
path = "/quiet"
to = "orders"
retry = {{ attempts = 1 }}

[alerting]
webhook = "{alerts_url}"
evaluate_every = "200ms"

[slos.checkout]
route = "checkout"
objective = 99.9
window = "30d"
min_requests = 20
runbook = "https://runbooks.example/checkout"

[slos.quiet]
route = "quiet"
objective = 99.9
min_requests = 1000
"#
    );
    let mut gantry = Gantry::start(&manifest).await;
    let c = client();
    for _ in 0..40 {
        let checkout = c.get(gantry.url("/checkout")).send().await.unwrap();
        assert_eq!(checkout.status(), 503);
        let quiet = c.get(gantry.url("/quiet")).send().await.unwrap();
        assert_eq!(quiet.status(), 503);
    }
    // All three rules fire (the same evaluation sends them one after another).
    eventually("every rule fires", Duration::from_secs(20), || async {
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["slo"] == "checkout")
            .count()
            >= 3
    })
    .await;
    // Five more evaluations: nothing fires again while the alerts hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts = received.lock().unwrap().clone();
    let page = alerts
        .iter()
        .find(|a| a["slo"] == "checkout" && a["windows"]["long"] == "1h")
        .unwrap();
    assert_eq!(page["status"], "firing");
    assert_eq!(page["severity"], "page");
    assert_eq!(page["windows"]["short"], "5m");
    assert_eq!(page["threshold"], 14.4);
    assert_eq!(page["burn_rate"]["short"], 1000.0);
    assert_eq!(page["runbook"], "https://runbooks.example/checkout");
    assert!(page["budget_remaining"].as_f64().unwrap() < 0.0);
    let examples = page["example_trace_ids"].as_array().unwrap();
    assert!(!examples.is_empty());
    assert_eq!(examples[0].as_str().unwrap().len(), 32, "{page}");
    // Fired once per rule, never twice.
    let checkout_alerts = alerts.iter().filter(|a| a["slo"] == "checkout").count();
    assert_eq!(checkout_alerts, 3, "{alerts:?}");
    assert!(alerts.iter().all(|a| a["slo"] != "quiet"), "{alerts:?}");

    let out = std::process::Command::new(GANTRY)
        .args(["slo", "status", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("checkout  route:checkout  objective 99.9% over 30d"),
        "{text}"
    );
    assert!(text.contains("requests 40  bad 40"), "{text}");
    assert!(text.contains("firing"), "{text}");

    // /metrics parses with the reference OpenMetrics parser.
    let metrics = c
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut parser = std::process::Command::new(root.join("tests/tools/parse-metrics.sh"))
        .arg(root.join("../../target/guests"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "{}\n{metrics}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families = String::from_utf8_lossy(&parsed.stdout);
    // The failing requests' traces are kept, so their ids are exemplars.
    let exemplar = families
        .lines()
        .find_map(|l| l.strip_prefix("exemplar gantry_http_request_duration_seconds_bucket "))
        .unwrap_or_else(|| panic!("no exemplar in:\n{families}\n{metrics}"));
    assert_eq!(exemplar.len(), 32, "{exemplar}");
    // (Spans are stored in batches: the trace may land a moment later.)
    eventually(
        "the exemplar's trace is stored",
        Duration::from_secs(10),
        || async {
            let trace: serde_json::Value = c
                .get(gantry.admin_url(&format!("/v1/traces/{exemplar}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            trace["spans"].as_array().is_some_and(|s| !s.is_empty())
        },
    )
    .await;
    for family in [
        "gantry_http_requests counter",
        "gantry_http_request_duration_seconds histogram",
        "gantry_function_invocations counter",
        "gantry_events_published counter",
    ] {
        assert!(
            families.contains(family),
            "{family} missing from:\n{families}"
        );
    }

    let out = std::process::Command::new(GANTRY)
        .args(["slo", "rules", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.starts_with("groups:\n"), "{rules}");
    assert!(
        rules.contains("record: gantry:slo_error_ratio:rate5m"),
        "{rules}"
    );
    assert!(
        rules.contains("gantry_http_requests_total{route=\"checkout\",status_class=\"5xx\"}"),
        "{rules}"
    );
    assert!(
        rules.contains("severity: \"page\", long_window: \"1h\", short_window: \"5m\""),
        "{rules}"
    );
    assert!(
        rules.contains("runbook_url: \"https://runbooks.example/checkout\""),
        "{rules}"
    );

    // The counts survive a restart: the budget spent is still spent.
    assert!(gantry.stop().success(), "{}", gantry.log());
    gantry.restart().await;
    let out = std::process::Command::new(GANTRY)
        .args(["slo", "status", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("requests 40  bad 40"),
        "after a restart: {text}"
    );
}
