//! Instance choice: load balancers, affinity, and passive ejection of
//! instances that keep failing.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::{client, Behaviour, TestGateway, Upstream};

#[tokio::test]
async fn least_requests_sends_traffic_away_from_a_busy_instance() {
    let slow = Upstream::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let fast = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\", \"{}\"]\nload_balancer = \"least_requests\"\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\n",
        slow.url(),
        fast.url()
    );
    let gw = TestGateway::start(&manifest).await;
    // Eight clients loop for a second: the slow instance holds on to its
    // requests, so least-requests keeps choosing the fast one.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/");
            tokio::spawn(async move {
                let c = client();
                while std::time::Instant::now() < deadline {
                    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let (fast, slow) = (fast.seen(), slow.seen());
    assert!(fast > slow * 10, "fast {fast} slow {slow}");
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_instance() {
    let upstreams = [
        Upstream::start(Behaviour::Echo).await,
        Upstream::start(Behaviour::Echo).await,
        Upstream::start(Behaviour::Echo).await,
    ];
    let urls: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.url()))
        .collect();
    let manifest = format!(
        "[services.app]\nurls = [{}]\nload_balancer = \"consistent_hash\"\nhash_on = \"header:x-user\"\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\n",
        urls.join(", ")
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    let mut placement: HashMap<String, HashSet<String>> = HashMap::new();
    for user in 0..20 {
        for _ in 0..5 {
            let body: Value = c
                .get(gw.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            placement
                .entry(format!("user-{user}"))
                .or_default()
                .insert(body["upstream"].as_str().unwrap().to_string());
        }
    }
    assert!(
        placement.values().all(|instances| instances.len() == 1),
        "{placement:?}"
    );
    let used: HashSet<_> = placement.values().flatten().collect();
    assert!(used.len() >= 2, "keys spread over instances: {used:?}");
}

#[tokio::test]
async fn a_failing_instance_is_ejected_and_comes_back() {
    let flaky = Upstream::start(Behaviour::Switch).await;
    let steady = Upstream::start(Behaviour::Echo).await;
    flaky.switch.store(500, Ordering::SeqCst);
    let manifest = format!(
        "[services.app]\nurls = [\"{}\", \"{}\"]\ncircuit_breaker = {{ enabled = false }}\noutlier_ejection = {{ consecutive_failures = 3, base = \"2s\" }}\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\nretry = {{ attempts = 1 }}\n",
        flaky.url(),
        steady.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    for _ in 0..6 {
        c.get(gw.url("/")).send().await.unwrap();
    }
    assert_eq!(
        flaky.seen(),
        3,
        "round-robin until the third failure ejects it"
    );
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(flaky.seen(), 3, "an ejected instance gets no traffic");

    // (`base` is long enough for the checks above on a slow machine.)
    flaky.switch.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert!(flaky.seen() > 3, "back in rotation after the ejection ends");
}

#[tokio::test]
async fn health_thresholds_decide_when_an_instance_leaves_and_rejoins() {
    let upstream = Upstream::start(Behaviour::Switch).await;
    let manifest = format!(
        "[services.app]\nurls = [\"{}\"]\nhealth = \"/healthz\"\nhealth_interval = \"50ms\"\nhealthy_threshold = 3\nunhealthy_threshold = 1\n\n[[routes]]\npath = \"/*\"\nto = \"app\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);

    // One failed check is enough to take it out (unhealthy_threshold = 1).
    upstream.switch.store(500, Ordering::SeqCst);
    let mut status = 200;
    for _ in 0..100 {
        status = c.get(gw.url("/")).send().await.unwrap().status().as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 503, "the instance left after failing its check");

    // It needs three passing checks in a row to come back.
    upstream.switch.store(0, Ordering::SeqCst);
    let checks_before = upstream.health_checks.load(Ordering::SeqCst);
    let mut back = false;
    for _ in 0..200 {
        if c.get(gw.url("/")).send().await.unwrap().status() == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(back, "the instance came back");
    let passing = upstream.health_checks.load(Ordering::SeqCst) - checks_before;
    assert!(passing >= 3, "back after {passing} passing checks");
}
