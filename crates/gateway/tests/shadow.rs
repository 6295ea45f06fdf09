//! Shadow traffic: the client gets the primary's answer; the shadow's is
//! compared, and the report says how often they agree and where they differ.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{client, Behaviour, TestGateway, Upstream};

fn manifest(primary: &Upstream, shadow: &Upstream, options: &str) -> String {
    format!(
        "[services.monolith]\nurls = [\"{}\"]\n[services.catalog]\nurls = [\"{}\"]\n\n[[routes]]\nname = \"catalog\"\npath = \"/*\"\nto = \"monolith\"\nshadow = {{ to = \"catalog\"{options} }}\n",
        primary.url(),
        shadow.url()
    )
}

async fn report_after(gw: &TestGateway, compared: u64) -> gantry_gateway::ShadowSummary {
    for _ in 0..200 {
        let report = gw.gateway.table().shadow_report("catalog").unwrap();
        if report.compared + report.errors + report.skipped >= compared {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the comparisons did not finish");
}

#[tokio::test]
async fn shadow_diffs_find_a_seeded_difference_and_ignore_configured_fields() {
    let primary = Upstream::start(Behaviour::Echo).await;
    let shadow = Upstream::start(Behaviour::Switch).await;
    // The two echo their own address and Host: those fields are expected to differ.
    let gw = TestGateway::start(&manifest(
        &primary,
        &shadow,
        ", ignore_fields = [\"/upstream\", \"/headers\"]",
    ))
    .await;
    let c = client();
    for i in 0..10 {
        let response = c.get(gw.url(&format!("/items/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let report = report_after(&gw, 10).await;
    assert_eq!(
        (report.compared, report.matched, report.mismatched),
        (10, 10, 0)
    );
    assert_eq!(report.match_rate, Some(1.0));
    assert_eq!(shadow.requests.load(Ordering::SeqCst), 10);

    // The new service starts failing: the client still gets the primary's 200.
    shadow.switch.store(500, Ordering::SeqCst);
    for _ in 0..5 {
        let response = c.get(gw.url("/items/7")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let report = report_after(&gw, 15).await;
    assert_eq!(
        (report.compared, report.matched, report.mismatched),
        (15, 10, 5)
    );
    let latest = &report.recent_differences[0];
    assert_eq!(latest.reason, "status 200 != 500");
    assert_eq!(
        (latest.method.as_str(), latest.path.as_str()),
        ("GET", "/items/7")
    );
    assert_eq!((latest.primary.status, latest.shadow.status), (200, 500));
}

#[tokio::test]
async fn body_differences_name_the_first_differing_field() {
    let primary = Upstream::start(Behaviour::Echo).await;
    let shadow = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(
        &primary,
        &shadow,
        ", compare_headers = [\"content-type\"]",
    ))
    .await;
    client().get(gw.url("/x")).send().await.unwrap();
    let report = report_after(&gw, 1).await;
    assert_eq!(report.mismatched, 1);
    // Keys are compared in order: the Host header is the first difference.
    assert_eq!(report.recent_differences[0].reason, "body at /headers/host");
    assert_eq!(
        report.recent_differences[0].primary.headers["content-type"],
        "application/json"
    );
}

#[tokio::test]
async fn only_idempotent_requests_are_mirrored_unless_configured() {
    let primary = Upstream::start(Behaviour::Echo).await;
    let shadow = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(&primary, &shadow, "")).await;
    let response = client()
        .post(gw.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        shadow.requests.load(Ordering::SeqCst),
        0,
        "a POST is not sent twice"
    );

    let primary = Upstream::start(Behaviour::Echo).await;
    let shadow = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&manifest(
        &primary,
        &shadow,
        ", unsafe_methods = true, ignore_fields = [\"/upstream\", \"/headers\"]",
    ))
    .await;
    client()
        .post(gw.url("/orders"))
        .body("{\"sku\": 1}")
        .send()
        .await
        .unwrap();
    let report = report_after(&gw, 1).await;
    assert_eq!(report.matched, 1);
    assert_eq!(shadow.requests.load(Ordering::SeqCst), 1);
}
