//! Idempotency keys: one execution per key, replays from a durable store.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::{client, Behaviour, TestGateway, Upstream};

fn manifest(upstream: &Upstream, options: &str) -> String {
    format!(
        "[services.orders]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"orders\"\npath = \"/api/orders\"\nto = \"orders\"\nidempotency = {{ header = \"Idempotency-Key\"{options} }}\n",
        upstream.url()
    )
}

/// Sends `request` again while Gantry answers 409 (the key is in use). The
/// first answer is stored after its body has streamed to the client, so a
/// retry sent the instant that body ends may still find the key in use, as
/// a client retrying early would.
async fn once_stored(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = request().send().await.unwrap();
        if response.status() != 409 || std::time::Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_retry_with_the_same_key_is_replayed_without_reaching_the_service() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, "")).await;
    let c = client();
    let post = || {
        c.post(gw.url("/api/orders"))
            .header("idempotency-key", "order-1")
            .body("{\"sku\": 7}")
    };
    let first = post().send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body: Value = first.json().await.unwrap();

    let again = once_stored(post).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/json");
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(first_body, again_body, "the stored response, byte for byte");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_key_with_another_payload_gets_422_and_a_missing_required_key_400() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&upstream, ", required = true")).await;
    let c = client();
    let first = c
        .post(gw.url("/api/orders"))
        .header("idempotency-key", "k")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // Another payload is refused whether or not the first is stored yet.
    let other = c
        .post(gw.url("/api/orders"))
        .header("idempotency-key", "k")
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:idempotency-key-reused");
    let missing = c
        .post(gw.url("/api/orders"))
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["type"], "urn:gantry:problem:idempotency-key-missing");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_reach_the_service_once() {
    let upstream = Upstream::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let gw = TestGateway::start(&manifest(&upstream, "")).await;
    let c = client();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            c.post(gw.url("/api/orders"))
                .header("idempotency-key", "same")
                .body("x")
                .send()
        })
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stored_responses_survive_a_restart() {
    let upstream = Upstream::start(Behaviour::Echo).await;
    let data = std::env::temp_dir().join(format!("gantry-idem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    {
        let gw = TestGateway::start_in(&manifest(&upstream, ""), &data).await;
        let post = || {
            client()
                .post(gw.url("/api/orders"))
                .header("idempotency-key", "durable")
                .body("z")
        };
        assert_eq!(post().send().await.unwrap().status(), 200);
        // Stored once a retry is replayed.
        let again = once_stored(post).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
    }
    // A new gateway on the same data directory: the record is still there.
    let gw = TestGateway::start_in(&manifest(&upstream, ""), &data).await;
    let again = client()
        .post(gw.url("/api/orders"))
        .header("idempotency-key", "durable")
        .body("z")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failures_free_the_key_for_a_retry() {
    let upstream = Upstream::start(Behaviour::FailFirst {
        failures: 1,
        status: 503,
    })
    .await;
    let gw = TestGateway::start(&manifest(&upstream, "")).await;
    let c = client();
    let post = || {
        c.post(gw.url("/api/orders"))
            .header("idempotency-key", "retry-me")
            .body("x")
    };
    assert_eq!(post().send().await.unwrap().status(), 503);
    let retry = once_stored(post).await;
    assert_eq!(retry.status(), 200, "a 5xx is not stored: the retry runs");
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
}
