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
