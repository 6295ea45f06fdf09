//! The gateway as a client sees it: real HTTP through a real gateway to real
//! upstreams on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use support::{client, closed_port, Behaviour, TestGateway, Upstream};

fn one_route(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[services.app]
urls = ["{upstream}"]

[[routes]]
path = "/*"
to = "app"
{extra}
"#
    )
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn forwards_to_the_upstream_and_sets_forwarding_headers() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let response = client()
        .get(gw.url("/hello?x=1"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("keep-alive").is_none(),
        "hop-by-hop response header leaked"
    );
    let returned_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen = json(response).await;
    let headers = &seen["headers"];
    assert_eq!(seen["uri"], "/hello?x=1");
    assert!(
        headers.get("x-private").is_none(),
        "a header named in Connection was forwarded"
    );
    // The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(headers["host"], upstream.addr.to_string());
    // A request id is made, sent upstream and returned to the client.
    assert_eq!(headers["x-request-id"], returned_id.as_str());
    assert_eq!(returned_id.len(), 36);
}

#[tokio::test]
async fn request_ids_and_trace_context_are_propagated() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .get(gw.url("/"))
        .header("x-request-id", "order-42")
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "order-42");
    let seen = json(response).await;
    assert_eq!(seen["headers"]["x-request-id"], "order-42");
    let traceparent = seen["headers"]["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id for this hop");
    assert_eq!(parts[2].len(), 16);

    // Without one, a trace is started.
    let seen = json(client().get(gw.url("/")).send().await.unwrap()).await;
    let started = seen["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(started.len(), 55);
    assert!(started.starts_with("00-"));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let client = client();
    for _ in 0..20 {
        let response = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        20
    );
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn large_bodies_stream_through_in_both_directions() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;

    // Download: 48 MiB.
    let size = 48 * 1024 * 1024;
    let mut stream = client()
        .get(gw.url(&format!("/bytes/{size}")))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, size);

    // Full duplex: the echo of the first chunk arrives before the second is sent,
    // which is only possible if neither direction is buffered whole.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let request = client().post(gw.url("/stream")).body(body).send();
    let chunk = Bytes::from(vec![b'a'; 256 * 1024]);
    tx.send(Ok(chunk.clone())).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("response headers before the body ends")
        .unwrap();
    let mut echoed = response.bytes_stream();
    let mut got = 0;
    while got < chunk.len() {
        got += tokio::time::timeout(Duration::from_secs(10), echoed.next())
            .await
            .expect("first chunk echoed while the upload is open")
            .unwrap()
            .unwrap()
            .len();
    }
    // Then a large remainder, 32 MiB, streams through too.
    let sender = tokio::spawn(async move {
        for _ in 0..128 {
            tx.send(Ok(Bytes::from(vec![b'b'; 256 * 1024])))
                .await
                .unwrap();
        }
    });
    while let Some(piece) = echoed.next().await {
        got += piece.unwrap().len();
    }
    sender.await.unwrap();
    assert_eq!(got, 129 * 256 * 1024);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = json(response).await;
    assert_eq!(body["status"], status);
    assert_eq!(
        body["request_id"],
        id.as_str(),
        "the problem names the request"
    );
    body
}

#[tokio::test]
async fn no_route_is_a_404_problem() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\"]\n\n[[routes]]\npath = \"/api/*\"\nto = \"app\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let body = problem(client().get(gw.url("/other")).send().await.unwrap(), 404).await;
    assert_eq!(body["type"], "urn:gantry:problem:no-route");
    assert_eq!(body["instance"], "/other");
    assert!(body["detail"].as_str().unwrap().contains("GET /other"));
}

#[tokio::test]
async fn refused_connections_are_a_502_problem() {
    let gw = TestGateway::start(&one_route(
        &format!("http://127.0.0.1:{}", closed_port()),
        "",
    ))
    .await;
    let body = problem(client().get(gw.url("/")).send().await.unwrap(), 502).await;
    assert_eq!(body["type"], "urn:gantry:problem:upstream-refused");
}

#[tokio::test]
async fn connections_closed_without_an_answer_are_a_502_problem() {
    let upstream = Upstream::start(Behaviour::Reset).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let body = problem(client().get(gw.url("/")).send().await.unwrap(), 502).await;
    assert_eq!(body["type"], "urn:gantry:problem:upstream-reset");
}

#[tokio::test]
async fn no_healthy_instance_is_a_503_problem() {
    let upstream = Upstream::start(Behaviour::Failing).await;
    let manifest = format!("[services.app]\nurls = [\"{}\"]\nhealth = \"/healthz\"\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\n", upstream.url());
    let gw = TestGateway::start(&manifest).await;
    let response = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = problem(response, 503).await;
    assert_eq!(body["type"], "urn:gantry:problem:no-healthy-instance");
}

#[tokio::test]
async fn slow_upstreams_are_a_504_problem_after_the_route_timeout() {
    let upstream = Upstream::start(Behaviour::Slow(Duration::from_secs(5))).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "timeout = \"200ms\"")).await;
    let started = std::time::Instant::now();
    let body = problem(client().get(gw.url("/")).send().await.unwrap(), 504).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout did not cut the wait short"
    );
    assert_eq!(body["type"], "urn:gantry:problem:upstream-timeout");
    assert!(body["detail"].as_str().unwrap().contains("200ms"));
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/h2")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = json(response).await;
    assert_eq!(seen["uri"], "/h2");
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.addr.to_string());
}

#[tokio::test]
async fn routes_match_on_method_host_headers_and_params_and_rewrite_paths() {
    let a = Upstream::start(Behaviour::Echo).await;
    let b = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        r#"
[services.a]
urls = ["{a}"]
[services.b]
urls = ["{b}"]

[[routes]]
path = "/api/users/{{id}}"
methods = ["GET"]
to = "b"
rewrite = "/users/{{id}}/profile"

[[routes]]
path = "/api/*"
headers = {{ x-canary = "1" }}
to = "b"
strip_prefix = "/api"

[[routes]]
path = "/api/*"
host = "*.shop.test"
to = "b"

[[routes]]
path = "/*"
to = "a"
"#,
        a = a.url(),
        b = b.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    let get = |path: &str| c.get(gw.url(path));

    let seen = json(get("/api/users/7").send().await.unwrap()).await;
    assert_eq!(
        (
            seen["upstream"].as_str().unwrap(),
            seen["uri"].as_str().unwrap()
        ),
        (b.addr.to_string().as_str(), "/users/7/profile")
    );
    // A POST does not match the GET-only route, and falls through to `a`.
    let seen = json(c.post(gw.url("/api/users/7")).send().await.unwrap()).await;
    assert_eq!(seen["upstream"], a.addr.to_string());
    let seen = json(
        get("/api/orders?page=2")
            .header("x-canary", "1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            seen["upstream"].as_str().unwrap(),
            seen["uri"].as_str().unwrap()
        ),
        (b.addr.to_string().as_str(), "/orders?page=2")
    );
    let seen = json(
        get("/api/orders")
            .header("host", "eu.shop.test")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            seen["upstream"].as_str().unwrap(),
            seen["uri"].as_str().unwrap()
        ),
        (b.addr.to_string().as_str(), "/api/orders")
    );
    let seen = json(get("/api/orders").send().await.unwrap()).await;
    assert_eq!(seen["upstream"], a.addr.to_string());
}

#[tokio::test]
async fn requests_are_spread_round_robin_over_instances() {
    let a = Upstream::start(Behaviour::Echo).await;
    let b = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\", \"{}\"]\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\n",
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    for _ in 0..10 {
        c.get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(a.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn metrics_count_requests_by_route_service_and_status_class() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let manifest = format!("[services.app]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath = \"/api/*\"\nto = \"app\"\n", upstream.url());
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    for _ in 0..3 {
        c.get(gw.url("/api/x"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    c.get(gw.url("/nowhere"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = gw.metrics.render();
    assert!(
        text.contains(
            r#"gantry_http_requests_total{route="api",service="app",status_class="2xx"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"gantry_http_requests_total{route="unmatched",service="none",status_class="4xx"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"gantry_http_request_duration_seconds_count{route="api",service="app"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_swapped_route_table_serves_new_requests() {
    let a = Upstream::start(Behaviour::Echo).await;
    let b = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&one_route(&a.url(), "")).await;
    let seen = json(client().get(gw.url("/")).send().await.unwrap()).await;
    assert_eq!(seen["upstream"], a.addr.to_string());

    let manifest = gantry_manifest::parse(
        &one_route(&b.url(), ""),
        std::path::Path::new("t.toml"),
        std::path::Path::new("/tmp"),
    )
    .unwrap();
    let mut services = std::collections::HashMap::new();
    services.insert(
        "app".to_string(),
        gantry_services::ServiceHandle::start("app", &manifest.services["app"]).unwrap(),
    );
    let table =
        gantry_gateway::RouteTable::build(&manifest.routes, &services, gw.gateway.metrics(), None)
            .unwrap();
    gw.gateway.swap(table);
    let seen = json(client().get(gw.url("/")).send().await.unwrap()).await;
    assert_eq!(seen["upstream"], b.addr.to_string());
}

#[tokio::test]
async fn shutdown_stops_accepting_but_lets_in_flight_requests_finish() {
    let upstream = Upstream::start(Behaviour::Slow(Duration::from_millis(600))).await;
    let gw = TestGateway::start(&one_route(&upstream.url(), "")).await;
    let in_flight = tokio::spawn(client().get(gw.url("/slow")).send());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.seen() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.shut_down();
    // The listener closes as shutdown begins (give the accept loop a moment).
    loop {
        let refused = client().get(gw.url("/late")).send().await;
        if refused.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new connections were still accepted after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(response.status(), 200);
}
