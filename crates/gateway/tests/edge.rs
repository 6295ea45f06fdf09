//! Edge policies at the gateway: rate limits per client.

mod support;

use std::sync::atomic::Ordering;

use serde_json::Value;
use support::{client, Behaviour, TestGateway, Upstream};

fn limited(upstream: &Upstream, platform: &str, limit: &str) -> String {
    format!(
        "[platform]\n{platform}\n[services.app]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"orders\"\npath = \"/*\"\nto = \"app\"\nrate_limit = {{ {limit} }}\n",
        upstream.url()
    )
}

#[tokio::test]
async fn a_rate_limit_is_exact_under_concurrency() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&limited(&upstream, "", "requests = 50, per = \"1h\"")).await;
    let c = client();
    let requests: Vec<_> = (0..200).map(|_| c.get(gw.url("/")).send()).collect();
    let responses = futures_util::future::join_all(requests).await;
    let ok = responses
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    assert_eq!(ok, 50, "exactly the burst gets through");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 50);
    let refused = responses
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.status() == 429)
        .unwrap();
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        "\"default\";q=50;w=3600"
    );
    assert!(refused.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"default\";r=0;t="));
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=72).contains(&wait), "retry after {wait}s");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:rate-limited");
    assert_eq!(body["status"], 429);
}

#[tokio::test]
async fn allowed_responses_say_what_is_left() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&limited(
        &upstream,
        "",
        "requests = 10, per = \"1m\", burst = 3",
    ))
    .await;
    let c = client();
    let mut left = Vec::new();
    for _ in 0..3 {
        let response = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        left.push(
            response.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        left[0].contains(";r=2;") && left[1].contains(";r=1;") && left[2].contains(";r=0;"),
        "{left:?}"
    );
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn limits_are_kept_per_key() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&limited(
        &upstream,
        "",
        "requests = 2, per = \"1h\", key = \"header:x-api-key\"",
    ))
    .await;
    let c = client();
    for key in ["alice", "bob"] {
        for _ in 0..2 {
            let response = c
                .get(gw.url("/"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{key}");
        }
        let response = c
            .get(gw.url("/"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "{key}");
    }
}

#[tokio::test]
async fn client_addresses_come_through_trusted_proxies_only() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    // Gantry's clients in this test connect from 127.0.0.1: a trusted proxy.
    let trusted = TestGateway::start(&limited(
        &upstream,
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "requests = 1, per = \"1h\"",
    ))
    .await;
    let c = client();
    for ip in ["203.0.113.5", "203.0.113.6"] {
        let response = c
            .get(trusted.url("/"))
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{ip} has its own limit");
    }
    let again = c
        .get(trusted.url("/"))
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);

    // Without trusted proxies a forged X-Forwarded-For does not buy a new quota.
    let untrusted = TestGateway::start(&limited(&upstream, "", "requests = 1, per = \"1h\"")).await;
    assert_eq!(
        c.get(untrusted.url("/"))
            .header("x-forwarded-for", "1.1.1.1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(untrusted.url("/"))
            .header("x-forwarded-for", "2.2.2.2")
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
}

fn shaped(upstream: &Upstream, route: &str) -> String {
    format!(
        "[services.app]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath = \"/api/*\"\n{route}\n",
        upstream.url()
    )
}

#[tokio::test]
async fn headers_are_edited_both_ways() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&shaped(
        &upstream,
        "to = \"app\"\nrequest_headers = { set = { x-team = \"shop\" }, remove = [\"x-debug\"] }\nresponse_headers = { add = { x-served-by = \"gantry\" }, remove = [\"keep-alive\"] }",
    ))
    .await;
    let response = client()
        .get(gw.url("/api/x"))
        .header("x-debug", "1")
        .header("x-team", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-served-by"], "gantry");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["headers"]["x-team"], "shop");
    assert!(body["headers"].get("x-debug").is_none());
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&shaped(&upstream, "to = \"app\"\nmax_body = \"1KiB\"")).await;
    let c = client();
    assert_eq!(
        c.post(gw.url("/api/x"))
            .body(vec![b'a'; 1024])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let declared = c
        .post(gw.url("/api/x"))
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    let body: Value = declared.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:body-too-large");
    // Chunked, no length announced: read up to the limit and refused.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 512])));
    let streamed = c
        .post(gw.url("/api/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        1,
        "refused bodies never reach the service"
    );
}

#[tokio::test]
async fn a_method_the_route_does_not_take_gets_405_with_allow() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&shaped(
        &upstream,
        "methods = [\"GET\", \"POST\"]\nto = \"app\"",
    ))
    .await;
    let response = client()
        .delete(gw.url("/api/orders/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:method-not-allowed");
    assert_eq!(
        client()
            .get(gw.url("/other"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_gateway() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&shaped(
        &upstream,
        "methods = [\"GET\", \"POST\"]\nto = \"app\"\ncors = { origins = [\"https://shop.example\"], headers = [\"content-type\", \"authorization\"], expose_headers = [\"x-request-id\"], credentials = true, max_age = \"10m\" }",
    ))
    .await;
    let c = client();
    let preflight = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/orders"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        0,
        "the preflight never reached the service"
    );

    let other = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/orders"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let actual = c
        .get(gw.url("/api/orders"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        actual.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        actual.headers()["access-control-expose-headers"],
        "x-request-id"
    );
    assert_eq!(actual.headers()["vary"], "origin");
}

#[tokio::test]
async fn deprecated_versions_say_so_on_every_response() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"v1\"\npath = \"/v1/*\"\nto = \"app\"\ndeprecation = {{ since = \"2026-01-31\", sunset = \"2026-12-31\", link = \"https://docs.example/v2\" }}\n\n[[routes]]\nname = \"v2-by-header\"\npath = \"/orders\"\nheaders = {{ api-version = \"2\" }}\nto = \"app\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    let old = c.get(gw.url("/v1/orders")).send().await.unwrap();
    assert_eq!(old.headers()["deprecation"], "@1769817600");
    assert_eq!(old.headers()["sunset"], "Thu, 31 Dec 2026 00:00:00 GMT");
    assert_eq!(
        old.headers()["link"],
        "<https://docs.example/v2>; rel=\"deprecation\""
    );
    let current = c
        .get(gw.url("/orders"))
        .header("api-version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), 200);
    assert!(current.headers().get("deprecation").is_none());
    assert_eq!(
        c.get(gw.url("/orders")).send().await.unwrap().status(),
        404,
        "the header selects the version"
    );
}

#[tokio::test]
async fn oversized_headers_and_odd_methods_get_clear_4xx_problems() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&shaped(&upstream, "methods = [\"GET\"]\nto = \"app\"")).await;
    let c = client();
    let huge = "x".repeat(40 * 1024);
    let response = c
        .get(gw.url("/api/x"))
        .header("x-huge", huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:headers-too-large");
    let odd = c
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            gw.url("/api/x"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 405);
    assert_eq!(odd.headers()["content-type"], "application/problem+json");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
}
