//! Reloads are all or nothing: a manifest refused at its last check (the
//! event schemas) changes no function, bucket, workflow or route.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{client, eventually, Gantry};

/// A WAGI module answering `hello from VERSION` (VERSION is 2 characters).
fn wagi(version: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\nhello from {version}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 39))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    )
}

const V1: &str = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"
api = "127.0.0.1:{API}"

[functions.hello]
component = "v1.wat"
executor = "wagi"

[buckets.docs]
max_size = "1KiB"

[topics.orders]
schema = "order-v1.json"

[workflows.nap]
[[workflows.nap.steps]]
name = "rest"
sleep = "1h"

[[routes]]
name = "hello"
path = "/hello"
to = "function:hello"
"#;

/// Everything changes: the function's artifact, a new function, a new
/// bucket, the workflow, a new route, and (refused) the topic's schema.
fn v2(schema: &str) -> String {
    V1.replace("component = \"v1.wat\"", "component = \"v2.wat\"")
        .replace("sleep = \"1h\"", "sleep = \"2h\"")
        .replace("order-v1.json", schema)
        + r#"
[functions.extra]
component = "v2.wat"
executor = "wagi"

[buckets.photos]
max_size = "1KiB"

[[routes]]
name = "extra"
path = "/extra"
to = "function:extra"
"#
}

async fn text(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn start_nap(gantry: &Gantry, id: &str) -> Value {
    let response = client()
        .post(gantry.api_url("/v1/workflows/nap"))
        .json(&json!({"id": id, "input": {}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_refused_at_its_last_check_changes_nothing() {
    let mut gantry = Gantry::start_with(V1, |dir| {
        std::fs::write(dir.join("v1.wat"), wagi("v1")).unwrap();
        std::fs::write(dir.join("v2.wat"), wagi("v2")).unwrap();
        std::fs::write(
            dir.join("order-v1.json"),
            r#"{"type": "object", "properties": {"id": {"type": "string"}}}"#,
        )
        .unwrap();
        // Breaking: a new required property.
        std::fs::write(
            dir.join("order-breaking.json"),
            r#"{"type": "object", "required": ["total"], "properties": {"id": {"type": "string"}, "total": {"type": "number"}}}"#,
        )
        .unwrap();
        // Compatible: a new optional property.
        std::fs::write(
            dir.join("order-v2.json"),
            r#"{"type": "object", "properties": {"id": {"type": "string"}, "note": {"type": "string"}}}"#,
        )
        .unwrap();
    })
    .await;
    assert_eq!(
        text(&gantry.url("/hello")).await,
        (200, "hello from v1".into())
    );
    let first = start_nap(&gantry, "before").await;
    assert_eq!(first["version"], 1);
    let services_before = text(&gantry.admin_url("/v1/services")).await.1;
    let routes_before = text(&gantry.admin_url("/v1/routes")).await.1;
    let functions_before = text(&gantry.admin_url("/v1/functions")).await.1;

    // Everything in v2 stages fine until the schema check refuses it.
    gantry.rewrite_manifest(&v2("order-breaking.json"));
    let refused = client()
        .post(gantry.admin_url("/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("orders"),
        "{problem}"
    );

    // The function still serves v1, nothing new is listed or routed, and
    // a new run still gets the workflow's first version.
    assert_eq!(
        text(&gantry.url("/hello")).await,
        (200, "hello from v1".into())
    );
    assert_eq!(text(&gantry.url("/extra")).await.0, 404);
    assert_eq!(
        text(&gantry.admin_url("/v1/services")).await.1,
        services_before
    );
    assert_eq!(text(&gantry.admin_url("/v1/routes")).await.1, routes_before);
    let functions: Value =
        serde_json::from_str(&text(&gantry.admin_url("/v1/functions")).await.1).unwrap();
    let functions = &functions["functions"];
    let before: Value = serde_json::from_str(&functions_before).unwrap();
    let before = &before["functions"];
    assert_eq!(functions.as_array().unwrap().len(), 1, "{functions}");
    assert_eq!(functions[0]["deployments"], 1, "{functions}");
    assert_eq!(functions[0]["artifact"], before[0]["artifact"]);
    assert_eq!(start_nap(&gantry, "after-refusal").await["version"], 1);

    // The same changes with a compatible schema all apply.
    gantry.rewrite_manifest(&v2("order-v2.json"));
    let applied = client()
        .post(gantry.admin_url("/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());
    eventually("v2 serves", Duration::from_secs(10), || async {
        text(&gantry.url("/hello")).await == (200, "hello from v2".into())
    })
    .await;
    assert_eq!(
        text(&gantry.url("/extra")).await,
        (200, "hello from v2".into())
    );
    let services = text(&gantry.admin_url("/v1/services")).await.1;
    assert!(
        services.contains("bucket:photos") && services.contains("function:extra"),
        "{services}"
    );
    assert_eq!(start_nap(&gantry, "after-apply").await["version"], 2);
    gantry.stop();
}
