//! Traffic management for strangler migrations and canaries: weighted
//! splits, sticky clients, and weights changed at run time.

mod support;

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use support::{client, Behaviour, TestGateway, Upstream};

fn split_manifest(monolith: &Upstream, catalog: &Upstream, extra: &str) -> String {
    format!(
        r#"
[services.monolith]
urls = ["{}"]
[services.catalog]
urls = ["{}"]

[[routes]]
name = "catalog"
path = "/api/catalog/*"
to = [{{ service = "monolith", weight = 90 }}, {{ service = "catalog", weight = 10 }}]
{extra}
"#,
        monolith.url(),
        catalog.url()
    )
}

#[tokio::test]
async fn a_90_10_split_lands_within_tolerance() {
    let monolith = Upstream::start(Behaviour::Echo).await;
    let catalog = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&split_manifest(&monolith, &catalog, "")).await;
    let c = client();
    let total = 2000;
    for _ in 0..total {
        c.get(gw.url("/api/catalog/items"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    // Binomial(2000, 0.1): mean 200, standard deviation ~13.4; ±60 is ~4.5 sd.
    let to_catalog = catalog.seen();
    assert!(
        (140..=260).contains(&to_catalog),
        "catalog got {to_catalog} of {total}"
    );
    assert_eq!(monolith.seen() + to_catalog, total);
    let text = gw.metrics.render();
    assert!(
        text.contains(
            r#"gantry_http_requests_total{route="catalog",service="catalog",status_class="2xx"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn sticky_splits_keep_each_client_on_one_side() {
    let monolith = Upstream::start(Behaviour::Echo).await;
    let catalog = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&split_manifest(
        &monolith,
        &catalog,
        "sticky = \"cookie:uid\"",
    ))
    .await;
    let c = client();
    let mut sides: HashMap<u32, HashSet<String>> = HashMap::new();
    for user in 0..100 {
        for _ in 0..4 {
            let body: Value = c
                .get(gw.url("/api/catalog/items"))
                .header("cookie", format!("theme=dark; uid=user-{user}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sides
                .entry(user)
                .or_default()
                .insert(body["upstream"].as_str().unwrap().to_string());
        }
    }
    assert!(
        sides.values().all(|s| s.len() == 1),
        "a client flipped between versions"
    );
    let on_catalog = sides
        .values()
        .filter(|s| s.contains(&catalog.addr.to_string()))
        .count();
    assert!(
        (2..=30).contains(&on_catalog),
        "{on_catalog} of 100 clients on the 10% side"
    );
}

#[tokio::test]
async fn weights_change_at_run_time_and_reset() {
    let monolith = Upstream::start(Behaviour::Echo).await;
    let catalog = Upstream::start(Behaviour::Echo).await;
    let gw = TestGateway::start(&split_manifest(&monolith, &catalog, "")).await;
    let table = gw.gateway.table();
    let weights = table
        .set_weights(
            "catalog",
            Some(&[("catalog".into(), 100), ("monolith".into(), 0)]),
        )
        .unwrap();
    assert_eq!(
        weights.iter().map(|w| w.weight).collect::<Vec<_>>(),
        vec![0, 100]
    );
    let c = client();
    for _ in 0..50 {
        c.get(gw.url("/api/catalog/items"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!((monolith.seen(), catalog.seen()), (0, 50));
    let listed = table.describe();
    assert!(listed[0].weights_overridden);

    // Mistakes are refused and change nothing.
    let err = table
        .set_weights("catalog", Some(&[("search".into(), 5)]))
        .unwrap_err();
    assert!(err.contains("not a service of this route"), "{err}");
    let err = table
        .set_weights("catalog", Some(&[("catalog".into(), 0)]))
        .unwrap_err();
    assert!(err.contains("nowhere"), "{err}");
    assert!(table
        .set_weights("nope", None)
        .unwrap_err()
        .contains("no route is named `nope`"));

    table.set_weights("catalog", None).unwrap();
    assert!(!table.describe()[0].weights_overridden);
    assert_eq!(
        table.describe()[0]
            .weights
            .iter()
            .map(|w| w.weight)
            .collect::<Vec<_>>(),
        vec![90, 10]
    );
}

#[tokio::test]
async fn header_and_cookie_rules_send_chosen_clients_to_a_version() {
    let monolith = Upstream::start(Behaviour::Echo).await;
    let catalog = Upstream::start(Behaviour::Echo).await;
    let manifest = format!(
        r#"
[services.monolith]
urls = ["{}"]
[services.catalog]
urls = ["{}"]

[[routes]]
name = "testers"
path = "/api/catalog/*"
cookies = {{ canary = "1" }}
to = "catalog"

[[routes]]
name = "canary-header"
path = "/api/catalog/*"
headers = {{ x-canary = "1" }}
to = "catalog"

[[routes]]
name = "everyone"
path = "/api/catalog/*"
to = "monolith"
"#,
        monolith.url(),
        catalog.url()
    );
    let gw = TestGateway::start(&manifest).await;
    let c = client();
    let served = |body: Value| body["upstream"].as_str().unwrap().to_string();
    let get = |cookie: Option<&str>, header: Option<&str>| {
        let mut request = c.get(gw.url("/api/catalog/items"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(header) = header {
            request = request.header("x-canary", header);
        }
        request.send()
    };
    let body: Value = get(Some("session=abc; canary=1"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served(body), catalog.addr.to_string());
    let body: Value = get(None, Some("1")).await.unwrap().json().await.unwrap();
    assert_eq!(served(body), catalog.addr.to_string());
    let body: Value = get(Some("canary=0"), Some("0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served(body), monolith.addr.to_string());
    let body: Value = get(None, None).await.unwrap().json().await.unwrap();
    assert_eq!(served(body), monolith.addr.to_string());
}
