//! Chaos tests: upstreams that fail on command, real traffic through the
//! gateway, and the reliability policies doing their job.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::{client, closed_port, Behaviour, TestGateway, Upstream};

fn manifest(service: &str, route: &str) -> String {
    format!("[services.app]\n{service}\n\n[[routes]]\nname = \"app\"\npath = \"/*\"\nto = \"app\"\n{route}\n")
}

#[tokio::test]
async fn retries_succeed_against_a_flaky_instance() {
    let upstream = Upstream::start(Behaviour::FailFirst {
        failures: 2,
        status: 503,
    })
    .await;
    let gw = TestGateway::start(&manifest(
        &format!("urls = [\"{}\"]", upstream.url()),
        "retry = { attempts = 3, backoff = \"5ms\" }",
    ))
    .await;
    let response = client().get(gw.url("/flaky")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.seen(), 3, "two failed attempts, then success");
    let text = gw.metrics.render();
    assert!(
        text.contains(r#"gantry_http_retries_total{route="app",service="app"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn only_idempotent_requests_are_retried_after_a_response() {
    let upstream = Upstream::start(Behaviour::FailFirst {
        failures: 1,
        status: 503,
    })
    .await;
    let gw = TestGateway::start(&manifest(
        &format!("urls = [\"{}\"]", upstream.url()),
        "retry = { attempts = 3, backoff = \"5ms\" }",
    ))
    .await;
    let post = client()
        .post(gw.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 503, "a POST is not resent");
    assert_eq!(upstream.seen(), 1);
    // With an idempotency key the client says resending is safe.
    let upstream = Upstream::start(Behaviour::FailFirst {
        failures: 1,
        status: 503,
    })
    .await;
    let gw = TestGateway::start(&manifest(
        &format!("urls = [\"{}\"]", upstream.url()),
        "retry = { attempts = 3, backoff = \"5ms\" }",
    ))
    .await;
    let keyed = client()
        .post(gw.url("/orders"))
        .header("idempotency-key", "order-7")
        .body("{\"sku\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    assert_eq!(upstream.seen(), 2);
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_instance() {
    let good = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(
        &format!(
            "urls = [\"http://127.0.0.1:{}\", \"{}\"]",
            closed_port(),
            good.url()
        ),
        "",
    ))
    .await;
    let c = client();
    for _ in 0..6 {
        // Even a POST: nothing was sent to the dead instance.
        let response = c.post(gw.url("/")).body("x").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(good.seen(), 6);
}

#[tokio::test]
async fn the_retry_budget_caps_extra_load_during_an_outage() {
    let upstream = Upstream::start(Behaviour::FailFirst {
        failures: usize::MAX,
        status: 503,
    })
    .await;
    let gw = TestGateway::start(&manifest(
        &format!(
            "urls = [\"{}\"]\ncircuit_breaker = {{ enabled = false }}",
            upstream.url()
        ),
        "retry = { attempts = 5, backoff = \"1ms\", max_backoff = \"1ms\" }",
    ))
    .await;
    let c = client();
    let requests = 300;
    let started = std::time::Instant::now();
    for _ in 0..requests {
        let response = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 503);
    }
    let seconds = started.elapsed().as_secs_f64();
    let sent = upstream.seen();
    // Without a budget this would be 1,500. With 20%: 300 + 60, plus the
    // budget's floor of 10 retries per second and its initial burst of 10.
    let bound = requests + requests / 5 + 10 + (10.0 * seconds).ceil() as usize;
    assert!(
        sent <= bound,
        "{sent} upstream requests for {requests} (bound {bound})"
    );
    assert!(sent > requests, "some retries were made: {sent}");
}

#[tokio::test]
async fn the_breaker_opens_sheds_probes_and_closes() {
    let upstream = Upstream::start(Behaviour::Switch).await;
    upstream.switch.store(500, Ordering::SeqCst);
    let gw = TestGateway::start(&manifest(
        &format!(
            "urls = [\"{}\"]\ncircuit_breaker = {{ min_requests = 5, failure_ratio = 0.5, open_for = \"2s\" }}",
            upstream.url()
        ),
        "retry = { attempts = 1 }",
    ))
    .await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 500);
    }
    // Open: answered at once by the gateway, the service sees nothing.
    let before = upstream.seen();
    for _ in 0..10 {
        let response = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "urn:gantry:problem:circuit-open");
    }
    assert_eq!(
        upstream.seen(),
        before,
        "no request reached the service while open"
    );
    let text = gw.metrics.render();
    assert!(
        text.contains(r#"gantry_circuit_breaker_state{service="app"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gantry_circuit_breaker_opened_total{service="app"} 1"#),
        "{text}"
    );

    // After `open_for`, one probe goes through; the service has recovered.
    // (`open_for` is long enough for the checks above on a slow machine.)
    upstream.switch.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert!(gw
        .metrics
        .render()
        .contains(r#"gantry_circuit_breaker_state{service="app"} 0"#));
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let upstream = Upstream::start(Behaviour::Switch).await;
    upstream.switch.store(503, Ordering::SeqCst);
    let gw = TestGateway::start(&manifest(
        &format!(
            "urls = [\"{}\"]\ncircuit_breaker = {{ min_requests = 2, failure_ratio = 1.0, open_for = \"200ms\" }}",
            upstream.url()
        ),
        "retry = { attempts = 1 }",
    ))
    .await;
    let c = client();
    for _ in 0..2 {
        c.get(gw.url("/")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = upstream.seen();
    assert_eq!(
        c.get(gw.url("/")).send().await.unwrap().status(),
        503,
        "the probe fails"
    );
    assert_eq!(upstream.seen(), before + 1, "exactly one probe");
    let body: Value = c
        .get(gw.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["type"], "urn:gantry:problem:circuit-open",
        "open again after the failed probe"
    );
}

#[tokio::test]
async fn the_bulkhead_sheds_requests_past_its_cap_at_once() {
    let upstream = Upstream::start(Behaviour::Slow(Duration::from_millis(600))).await;
    let gw = TestGateway::start(&manifest(
        &format!("urls = [\"{}\"]\nmax_concurrent = 2", upstream.url()),
        "",
    ))
    .await;
    let c = client();
    let requests: Vec<_> = (0..6).map(|_| c.get(gw.url("/")).send()).collect();
    let responses = futures_util::future::join_all(requests).await;
    let mut statuses: Vec<u16> = responses
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503]);
    assert_eq!(
        upstream.seen(),
        2,
        "shed requests never reached the service"
    );
    let shed = responses
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.status() == 503)
        .unwrap();
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:bulkhead-full");
    assert!(gw
        .metrics
        .render()
        .contains(r#"gantry_bulkhead_shed_total{service="app"} 4"#));
    // Once they finish, capacity is back.
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);

    // Bulkhead use is a gauge beside the limit, read at each scrape.
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(c.get(gw.url("/")).send()))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.seen() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.metrics.refresh().await;
    let text = gw.metrics.render();
    assert!(
        text.contains(r#"gantry_service_requests_in_flight{service="app"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gantry_service_max_concurrent_requests{service="app"} 2"#),
        "{text}"
    );
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    loop {
        gw.metrics.refresh().await;
        if gw
            .metrics
            .render()
            .contains(r#"gantry_service_requests_in_flight{service="app"} 0"#)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gw.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_static_fallback_is_served_while_the_breaker_is_open() {
    let upstream = Upstream::start(Behaviour::Failing).await;
    let gw = TestGateway::start(&manifest(
        &format!(
            "urls = [\"{}\"]\ncircuit_breaker = {{ min_requests = 3, failure_ratio = 0.5, open_for = \"10s\" }}",
            upstream.url()
        ),
        "retry = { attempts = 1 }\nfallback = { status = 200, body = '{\"items\": [], \"degraded\": true}' }",
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            c.get(gw.url("/catalog")).send().await.unwrap().status(),
            500
        );
    }
    let response = c.get(gw.url("/catalog")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gantry-fallback"], "circuit-open");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["degraded"], true);
    assert!(gw
        .metrics
        .render()
        .contains(r#"gantry_fallbacks_total{route="app",reason="circuit-open"} 1"#));
}

#[tokio::test]
async fn a_fallback_service_answers_when_the_deadline_runs_out() {
    let slow = Upstream::start(Behaviour::Slow(Duration::from_secs(5))).await;
    let backup = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\"]\n[services.backup]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"app\"\npath = \"/*\"\nto = \"app\"\ntimeout = \"200ms\"\nfallback = {{ to = \"backup\" }}\n",
        slow.url(),
        backup.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let response = client().get(gw.url("/items")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gantry-fallback"], "upstream-timeout");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], backup.addr.to_string());
    assert_eq!(body["uri"], "/items");
}

#[tokio::test]
async fn a_slow_attempt_is_abandoned_and_retried_within_the_deadline() {
    let upstream = Upstream::start(Behaviour::SlowFirst {
        slow: 1,
        delay: Duration::from_secs(3),
    })
    .await;
    let gw = TestGateway::start(&manifest(
        &format!("urls = [\"{}\"]", upstream.url()),
        "timeout = \"2s\"\nattempt_timeout = \"150ms\"\nretry = { attempts = 2, on = [504], backoff = \"5ms\" }",
    ))
    .await;
    let response = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    // The second attempt learned how much of the deadline was left.
    let left: u64 = body["headers"]["x-gantry-deadline-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 2000 && left > 1000, "deadline left: {left} ms");
}

#[tokio::test]
async fn a_fallback_service_gets_the_request_as_the_gateway_prepared_it() {
    // The bulkhead refuses the second request while the first holds the only
    // slot: the fallback service must see Gantry's forwarding headers and the
    // rewritten path, not what the client sent.
    let slow = Upstream::start(Behaviour::Slow(Duration::from_secs(2))).await;
    let backup = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\"]\nmax_concurrent = 1\n[services.backup]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"app\"\npath = \"/api/*\"\nto = \"app\"\nstrip_prefix = \"/api\"\nfallback = {{ to = \"backup\" }}\n",
        slow.url(),
        backup.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let first = tokio::spawn(client().get(gw.url("/api/hold")).send());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while slow.requests.load(std::sync::atomic::Ordering::SeqCst) == 0
        && slow.connections.load(std::sync::atomic::Ordering::SeqCst) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = client()
        .get(gw.url("/api/items"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-private")
        .header("x-private", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gantry-fallback"], "bulkhead-full");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], backup.addr.to_string());
    assert_eq!(body["uri"], "/items");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert!(body["headers"].get("x-private").is_none(), "{body}");
    assert!(body["headers"].get("x-request-id").is_some(), "{body}");
    let _ = first.await;
}
