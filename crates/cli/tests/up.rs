//! `gantry up` end to end: the real binary, real service processes, real HTTP.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{client, eventually, Gantry};

/// The shop example's own manifest, pointed at this build's binaries and at free ports.
fn shop_manifest() -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/gantry.toml");
    std::fs::read_to_string(path)
        .unwrap()
        .replace("../../target/release", "{BIN}")
        .replace("127.0.0.1:8080", "127.0.0.1:{GATEWAY}")
        .replace("127.0.0.1:8081", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:8082", "127.0.0.1:{API}")
        .replace(
            "\"schemas/",
            &format!("\"{}/examples/shop/schemas/", workspace_root().display()),
        )
        .replace(
            "\"functions/",
            &format!("\"{}/examples/shop/functions/", workspace_root().display()),
        )
        // A loaded CI machine can take more than the example's 2 s to answer
        // a charge; the tests do not exercise the timeout path.
        .replace("timeout = \"2s\"", "timeout = \"15s\"")
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

async fn get_json(url: &str) -> Value {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {status} {text:?}: {e}"))
}

#[tokio::test]
async fn the_shop_example_splits_mirrors_and_routes_each_path() {
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();

    // The catalog route splits 90/10 between the monolith and the catalog.
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let body: Value = c
            .get(gantry.url("/api/catalog/items"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["items"].as_array().unwrap().len(), 3);
        *served
            .entry(body["service"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        served["monolith"] > 70 && served.get("catalog").copied().unwrap_or(0) > 0,
        "{served:?}"
    );

    // Every monolith-served catalog request was mirrored to the catalog and compared.
    eventually(
        "the shadow comparisons",
        Duration::from_secs(10),
        || async {
            get_json(&gantry.admin_url("/v1/routes/catalog/shadow")).await["compared"].as_u64()
                >= Some(served["monolith"] as u64)
        },
    )
    .await;
    let report = get_json(&gantry.admin_url("/v1/routes/catalog/shadow")).await;
    assert_eq!(report["mismatched"], 0, "{report}");
    assert_eq!(report["match_rate"], 1.0);
    let out = std::process::Command::new(support::GANTRY)
        .args([
            "shadow",
            "report",
            "catalog",
            "--admin",
            &format!("127.0.0.1:{}", gantry.admin),
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("match rate 100.0%"), "{printed}");

    // Shift everything to the catalog: both of its instances serve.
    let shifted = c
        .put(gantry.admin_url("/v1/routes/catalog/weights"))
        .body(r#"{"catalog": 100, "monolith": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(shifted.status(), 200);
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let body = get_json(&gantry.url("/api/catalog/items")).await;
        assert_eq!(body["service"], "catalog");
        instances.insert(body["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "both catalog instances serve traffic");

    let item = get_json(&gantry.url("/api/catalog/items/2")).await;
    assert_eq!(item["item"]["name"], "moka pot");
    let orders = get_json(&gantry.url("/api/orders")).await;
    assert_eq!(orders["service"], "monolith");
    // The catalog route is GET/HEAD only: a POST falls through to the monolith.
    let post: Value = c
        .post(gantry.url("/api/catalog/import"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(post["service"], "monolith");

    let services = get_json(&gantry.admin_url("/v1/services")).await;
    let catalog = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "catalog")
        .unwrap();
    assert_eq!(catalog["owner"], "team-catalog");
    assert_eq!(catalog["instances"].as_array().unwrap().len(), 2);
    assert_eq!(catalog["circuit_breaker"], "closed");
    let routes = get_json(&gantry.admin_url("/v1/routes")).await;
    assert_eq!(routes["routes"][0]["path"], "/api/catalog/*");

    let metrics = c
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"gantry_http_requests_total{route="catalog",service="catalog",status_class="2xx"}"#
        ),
        "{metrics}"
    );
    let health = c.get(gantry.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn relative_paths_resolve_against_the_manifest_directory() {
    // The manifest names its program and data directory relative to itself,
    // and Gantry runs from `/`.
    let bin = support::shop_binaries();
    let manifest = "[platform]\nlisten = \"127.0.0.1:{GATEWAY}\"\nadmin = \"127.0.0.1:{ADMIN}\"\ndata_dir = \"state\"\n\n[services.web]\ncommand = [\"bin/shop-monolith\"]\nhealth = \"/healthz\"\n\n[[routes]]\npath = \"/*\"\nto = \"web\"\n";
    let gantry = Gantry::start_with(manifest, |dir| {
        std::fs::create_dir(dir.join("bin")).unwrap();
        std::fs::copy(bin.join("shop-monolith"), dir.join("bin/shop-monolith")).unwrap();
    })
    .await;
    assert!(
        gantry.dir.path().join("state").is_dir(),
        "data_dir is created next to the manifest"
    );
    let home = client().get(gantry.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
}

#[tokio::test]
async fn hot_reload_under_load_fails_no_request() {
    let v1 = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[services.monolith]
command = ["{BIN}/shop-monolith"]
health = "/healthz"

[services.catalog]
command = ["{BIN}/shop-catalog"]
health = "/healthz"

[[routes]]
path = "/api/catalog/*"
to = "catalog"
strip_prefix = "/api"

[[routes]]
path = "/*"
to = "monolith"
"#;
    let gantry = Gantry::start(v1).await;

    // Clients hammer two routes on keep-alive connections for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let url = gantry.url(if worker % 2 == 0 {
            "/api/catalog/items"
        } else {
            "/api/orders"
        });
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        r.bytes().await.unwrap();
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let failure = format!(
                            "{url}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                        failures.lock().unwrap().push(failure);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{url}: {e}")),
                }
            }
        }));
    }
    let routes = |n: usize| {
        let url = gantry.admin_url("/v1/routes");
        async move { get_json(&url).await["routes"].as_array().unwrap().len() == n }
    };

    // 1. A new route appears.
    let v2 = v1.replace("[[routes]]\npath = \"/*\"", "[[routes]]\npath = \"/shop/*\"\nto = \"monolith\"\nrewrite = \"/api/{*}\"\n\n[[routes]]\npath = \"/*\"");
    gantry.rewrite_manifest(&v2);
    eventually("the /shop route is served", Duration::from_secs(20), || {
        routes(3)
    })
    .await;
    let via_rewrite = get_json(&gantry.url("/shop/orders")).await;
    assert_eq!(via_rewrite["service"], "monolith");

    // 2. The catalog changes (two instances): it restarts behind the gateway.
    let v3 = v2.replace(
        "command = [\"{BIN}/shop-catalog\"]",
        "command = [\"{BIN}/shop-catalog\"]\ninstances = 2",
    );
    gantry.rewrite_manifest(&v3);
    eventually("two catalog instances", Duration::from_secs(20), || async {
        let services = get_json(&gantry.admin_url("/v1/services")).await;
        services["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "catalog" && s["instances"].as_array().unwrap().len() == 2)
    })
    .await;

    // 3. The monolith's environment changes: it restarts too, and the old
    // process stops as soon as the requests it had are done (not after the
    // whole drain timeout).
    let services = get_json(&gantry.admin_url("/v1/services")).await;
    let old_pid = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "monolith")
        .and_then(|s| s["instances"][0]["pid"].as_u64())
        .unwrap();
    let v4 = v3.replace(
        "health = \"/healthz\"\n\n[services.catalog]",
        "health = \"/healthz\"\nenv = { MODE = \"reloaded\" }\n\n[services.catalog]",
    );
    gantry.rewrite_manifest(&v4);
    eventually(
        "the monolith restarted",
        Duration::from_secs(20),
        || async { gantry.log().contains("restarted=[\"monolith\"]") },
    )
    .await;
    eventually(
        "the old monolith process stopped",
        Duration::from_secs(5),
        || async { !std::path::Path::new(&format!("/proc/{old_pid}")).exists() },
    )
    .await;

    // 4. A broken manifest is refused; the old routes keep serving.
    let broken = v4.replace(
        "strip_prefix = \"/api\"",
        "strip_prefix = \"/api\"\ntimeout = \"soon\"",
    );
    gantry.rewrite_manifest(&broken);
    eventually(
        "the broken manifest is rejected",
        Duration::from_secs(20),
        || async { gantry.log().contains("manifest rejected") },
    )
    .await;
    let refused = client()
        .post(gantry.admin_url("/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("gantry.toml:") && detail.contains("error[M005]"),
        "{detail}"
    );
    assert!(routes(3).await, "the previous routes are still in place");

    // 5. Fixed again, applied through the admin API.
    gantry.rewrite_manifest(&v4.replace("/shop/*", "/store/*"));
    let applied = client()
        .post(gantry.admin_url("/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 200);
    assert_eq!(
        get_json(&gantry.url("/store/orders")).await["service"],
        "monolith"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gantry.log()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "the load ran: {} requests",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn sighup_reloads_when_file_watching_is_off() {
    let v1 = "[platform]\nlisten = \"127.0.0.1:{GATEWAY}\"\nadmin = \"127.0.0.1:{ADMIN}\"\nwatch = false\n\n[services.monolith]\ncommand = [\"{BIN}/shop-monolith\"]\nhealth = \"/healthz\"\n\n[[routes]]\npath = \"/api/*\"\nto = \"monolith\"\n";
    let gantry = Gantry::start(v1).await;
    assert_eq!(
        client().get(gantry.url("/")).send().await.unwrap().status(),
        404
    );
    gantry.rewrite_manifest(&v1.replace("/api/*", "/*"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client().get(gantry.url("/")).send().await.unwrap().status(),
        404,
        "no reload without a trigger"
    );
    gantry.signal("HUP");
    eventually(
        "SIGHUP applied the manifest",
        Duration::from_secs(10),
        || async { client().get(gantry.url("/")).send().await.unwrap().status() == 200 },
    )
    .await;
}

#[tokio::test]
async fn a_crashed_service_process_is_restarted_and_traffic_returns() {
    let manifest = "[platform]\nlisten = \"127.0.0.1:{GATEWAY}\"\nadmin = \"127.0.0.1:{ADMIN}\"\n\n[services.catalog]\ncommand = [\"{BIN}/shop-catalog\"]\nhealth = \"/healthz\"\n\n[[routes]]\npath = \"/*\"\nto = \"catalog\"\n";
    let gantry = Gantry::start(manifest).await;
    let before = get_json(&gantry.admin_url("/v1/services")).await;
    let pid = before["services"][0]["instances"][0]["pid"]
        .as_u64()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();

    eventually("the crash is noticed", Duration::from_secs(10), || async {
        client()
            .get(gantry.url("/catalog/items"))
            .send()
            .await
            .unwrap()
            .status()
            != 200
            || get_json(&gantry.admin_url("/v1/services")).await["services"][0]["instances"][0]
                ["restarts"]
                != 0
    })
    .await;
    eventually(
        "the instance is back with a new process",
        Duration::from_secs(20),
        || async {
            let services = get_json(&gantry.admin_url("/v1/services")).await;
            let instance = &services["services"][0]["instances"][0];
            instance["healthy"] == true
                && instance["pid"].as_u64() != Some(pid)
                && instance["restarts"].as_u64() >= Some(1)
        },
    )
    .await;
    let body = get_json(&gantry.url("/catalog/items")).await;
    assert_eq!(body["service"], "catalog");
    eventually("the restart is logged", Duration::from_secs(10), || async {
        gantry.log().contains("process exited; restarting")
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_and_stops_every_service_process() {
    let mut gantry = Gantry::start(&shop_manifest()).await;
    let services = get_json(&gantry.admin_url("/v1/services")).await;
    let pids: Vec<u64> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["pid"].as_u64())
        })
        .collect();
    // monolith, two catalog instances, orders, notifications, inventory,
    // payments, shipping (functions and buckets are listed too, with no
    // process of their own).
    assert_eq!(pids.len(), 8);
    let status = gantry.stop();
    assert!(
        status.success(),
        "gantry exited with {status}:\n{}",
        gantry.log()
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "service process {pid} outlived gantry"
        );
    }
    assert!(gantry.log().contains("stopped"));
}

#[tokio::test]
async fn gantry_traffic_shifts_a_split_at_run_time_and_a_reload_keeps_it() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"

[services.monolith]
command = ["{BIN}/shop-monolith"]
health = "/healthz"

[services.catalog]
command = ["{BIN}/shop-catalog"]
health = "/healthz"

[[routes]]
name = "catalog"
path = "/api/catalog/*"
to = [{ service = "monolith", weight = 100 }, { service = "catalog", weight = 0 }]
strip_prefix = "/api"
"#;
    let gantry = Gantry::start(manifest).await;
    let served_by = || async {
        get_json(&gantry.url("/api/catalog/items")).await["service"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(served_by().await, "monolith");

    let admin = format!("127.0.0.1:{}", gantry.admin);
    let out = std::process::Command::new(support::GANTRY)
        .args([
            "traffic",
            "catalog",
            "--set",
            "catalog=100",
            "--set",
            "monolith=0",
            "--admin",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("catalog") && printed.contains("(100.0%)"),
        "{printed}"
    );
    for _ in 0..5 {
        assert_eq!(served_by().await, "catalog");
    }
    let routes = get_json(&gantry.admin_url("/v1/routes")).await;
    assert_eq!(routes["routes"][0]["weights_overridden"], true);

    // A reload that leaves the route's services alone keeps the override.
    gantry.rewrite_manifest(&manifest.replace(
        "health = \"/healthz\"\n\n[services.catalog]",
        "health = \"/healthz\"\nowner = \"team-storefront\"\n\n[services.catalog]",
    ));
    eventually("the reload is applied", Duration::from_secs(20), || async {
        get_json(&gantry.admin_url("/v1/services"))
            .await
            .to_string()
            .contains("team-storefront")
    })
    .await;
    assert_eq!(served_by().await, "catalog");

    // Unknown services are refused with a clear message.
    let out = std::process::Command::new(support::GANTRY)
        .args(["traffic", "catalog", "--set", "search=5", "--admin", &admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a service of this route"));

    let out = std::process::Command::new(support::GANTRY)
        .args(["traffic", "catalog", "--reset", "--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(served_by().await, "monolith");
}

#[tokio::test]
async fn placing_an_order_in_the_shop_needs_a_token_and_an_idempotency_key() {
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();
    let anonymous = c
        .post(gantry.url("/api/orders"))
        .body("{\"sku\": 2}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let minted = std::process::Command::new(support::GANTRY)
        .args(["token", "--sub", "alice", "--scope", "orders:write", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();

    let no_key = c
        .post(gantry.url("/api/orders"))
        .bearer_auth(&token)
        .body("{\"sku\": 2}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);

    let place = || {
        c.post(gantry.url("/api/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", "alice-order-1")
            .body("{\"sku\": 2}")
            .send()
    };
    let first = place().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["user"], "alice");
    // The answer is stored once its body has streamed: until then the key
    // is in use (409), as for a client retrying early.
    let mut again = place().await.unwrap();
    // (Few tries: every request counts against the route's 10 a minute.)
    for _ in 0..5 {
        if again.status() != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        again = place().await.unwrap();
    }
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert!(
        again.headers().contains_key("ratelimit"),
        "replays count against the limit too"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["order_id"], first["order_id"],
        "the same order, not a second one"
    );
}

#[tokio::test]
async fn api_keys_are_created_used_and_revoked_from_the_cli() {
    let manifest = r#"
[platform]
listen = "127.0.0.1:{GATEWAY}"
admin = "127.0.0.1:{ADMIN}"
data_dir = "state"

[services.monolith]
command = ["{BIN}/shop-monolith"]
health = "/healthz"

[[routes]]
path = "/partners/*"
to = "monolith"
auth = "api_key"
forward_claims = { sub = "x-consumer" }
"#;
    let gantry = Gantry::start(manifest).await;
    let admin = format!("127.0.0.1:{}", gantry.admin);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(support::GANTRY)
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let c = client();
    let without = c.get(gantry.url("/partners/feed")).send().await.unwrap();
    assert_eq!(without.status(), 401);
    assert_eq!(
        without.headers()["www-authenticate"],
        "ApiKey realm=\"gantry\""
    );

    let key = cli(&["keys", "create", "--consumer", "acme"])
        .trim()
        .to_string();
    assert!(key.starts_with("gk_"), "{key}");
    let with_key = c
        .get(gantry.url("/partners/feed"))
        .header("x-api-key", &key)
        .header("x-consumer", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    let seen: Value = with_key.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-consumer"], "acme",
        "the consumer comes from the key, not the client"
    );

    let listed = cli(&["keys", "list"]);
    assert!(
        listed.contains("acme") && listed.contains("active"),
        "{listed}"
    );
    let stored = std::fs::read(gantry.dir.path().join("state/gantry.db")).unwrap();
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the key is stored hashed"
    );
    assert!(
        !gantry.log().contains(secret),
        "the key never reaches the log"
    );

    let id = listed.split_whitespace().next().unwrap().to_string();
    cli(&["keys", "revoke", &id]);
    let revoked = c
        .get(gantry.url("/partners/feed"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 401);
}

/// The shop's event flow: an order placed through the gateway is written with
/// its event in one transaction (outbox), relayed, delivered to
/// notifications, which publishes `notification.sent` through `GANTRY_API`
/// in the same trace; a confirmation that keeps failing is dead-lettered and
/// redriven once the failure is fixed.
#[tokio::test]
async fn shop_orders_flow_through_the_outbox_to_notifications_and_the_dead_letter_queue() {
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();
    let minted = std::process::Command::new(support::GANTRY)
        .args(["token", "--sub", "alice", "--scope", "orders:write", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let place = |key: &'static str, body: &'static str| {
        c.post(gantry.url("/api/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(body)
            .send()
    };
    let placed: Value = place("o-1", r#"{"sku": 2, "email": "alice@example.com"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(placed["service"], "orders");
    let order_id = placed["order_id"].as_i64().unwrap();

    eventually(
        "the confirmation is sent",
        Duration::from_secs(20),
        || async {
            let sent = get_json(&gantry.url("/notifications")).await;
            sent["sent"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n["order_id"] == order_id))
        },
    )
    .await;
    eventually(
        "notification.sent is published through GANTRY_API",
        Duration::from_secs(20),
        || async {
            let text = c
                .get(gantry.admin_url("/v1/topics/notification.sent/events?from=earliest&limit=10"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(&format!("sent-order-{order_id}"))
        },
    )
    .await;

    // The order is one trace: the gateway request, the event's deliveries,
    // the confirm function and the checkout saga's steps.
    let trace_url = gantry.admin_url("/v1/traces/4bf92f3577b34da6a3ce929d0e0e4736");
    eventually(
        "the order's trace reaches every hop",
        Duration::from_secs(20),
        || async {
            let trace = get_json(&trace_url).await;
            let services: Vec<&str> = trace["spans"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["service"].as_str()).collect())
                .unwrap_or_default();
            ["gateway", "events", "function:confirm", "workflows"]
                .iter()
                .all(|wanted| services.contains(wanted))
        },
    )
    .await;

    // A confirmation whose mail provider is down ends in the dead-letter queue.
    let bounced: Value = place("o-2", r#"{"sku": 3, "email": "bob@bounce.example"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dlq = gantry.admin_url("/v1/subscriptions/notifications.order.placed/dead-letters");
    eventually(
        "the bounced confirmation is dead-lettered",
        Duration::from_secs(30),
        || async {
            let letters = get_json(&dlq).await;
            letters["dead_letters"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|d| d["event"]["data"]["order_id"] == bounced["order_id"])
            })
        },
    )
    .await;
    let letters = get_json(&dlq).await;
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["attempts"], 4);
    assert!(
        letter["last_error"].as_str().unwrap().contains("502"),
        "{letter}"
    );

    // Fix the provider, redrive: delivered.
    c.post(gantry.url("/notifications/recover"))
        .send()
        .await
        .unwrap();
    let redriven: Value = c
        .post(format!("{dlq}/redrive"))
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(redriven["redriven"], 1);
    eventually(
        "the redriven confirmation is sent",
        Duration::from_secs(20),
        || async {
            let sent = get_json(&gantry.url("/notifications")).await;
            sent["sent"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n["order_id"] == bounced["order_id"]))
        },
    )
    .await;
    let metrics = c
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "gantry_event_deliveries_total{subscription=\"notifications.order.placed\",outcome=\"dead_lettered\"} 1",
        "gantry_event_deliveries_total{subscription=\"notifications.order.placed\",outcome=\"failed\"} 3",
        "gantry_events_published_total{topic=\"order.placed\"} 2",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
}

/// The checkout saga of the shop: the happy path, a declined payment that
/// releases the reservation, and a charge whose answer is lost, retried with
/// the same Idempotency-Key: one charge.
#[tokio::test]
async fn the_shop_checkout_saga_takes_each_path() {
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();
    let start = |id: &str, order: i64| {
        c.post(gantry.api_url("/v1/workflows/checkout"))
            .json(&serde_json::json!({"id": id, "input": {"order_id": order, "sku": 2, "amount_cents": 3900}}))
            .send()
    };
    let run_state = |id: String| {
        let url = gantry.admin_url(&format!("/v1/workflows/{id}"));
        async move {
            get_json(&url).await["state"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let set_mode = |mode: &'static str| {
        c.put(gantry.url("/payments/mode"))
            .json(&serde_json::json!({ "mode": mode }))
            .send()
    };

    assert_eq!(start("order-1", 1).await.unwrap().status(), 201);
    eventually("checkout completes", Duration::from_secs(20), || async {
        run_state("order-1".into()).await == "completed"
    })
    .await;
    let confirmed = c
        .get(gantry.admin_url("/v1/topics/order.confirmed/events?from=earliest&limit=5"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(confirmed.contains("\"order_id\":1"), "{confirmed}");

    assert_eq!(set_mode("decline").await.unwrap().status(), 200);
    start("order-2", 2).await.unwrap();
    eventually(
        "a declined payment is compensated",
        Duration::from_secs(20),
        || async { run_state("order-2".into()).await == "compensated" },
    )
    .await;
    let run = get_json(&gantry.admin_url("/v1/workflows/order-2")).await;
    assert!(run["error"].as_str().unwrap().contains("402"), "{run}");
    let undone: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["phase"] == "undo")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(undone, ["reserve"]);

    assert_eq!(set_mode("fail_after_charge").await.unwrap().status(), 200);
    start("order-3", 3).await.unwrap();
    eventually(
        "a lost answer is retried into one charge",
        Duration::from_secs(20),
        || async { run_state("order-3".into()).await == "completed" },
    )
    .await;
    let ledger = get_json(&gantry.url("/payments")).await;
    let charges_for_3 = ledger["charges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["order_id"] == 3)
        .count();
    assert_eq!(charges_for_3, 1, "{ledger}");

    // The runs and their events are counted in /metrics.
    let metrics = c
        .get(gantry.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "gantry_workflow_runs_started_total{workflow=\"checkout\"}",
        "gantry_workflow_runs_ended_total{workflow=\"checkout\",state=\"compensated\"} 1",
        "gantry_workflow_step_attempts_total{workflow=\"checkout\",step=\"charge\",phase=\"do\",outcome=\"retry\"} 1",
        "gantry_events_published_total{topic=\"order.confirmed\"}",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
}

/// Placing an order starts its checkout saga through the `order.placed`
/// subscription (`to = "workflow:checkout"`).
#[tokio::test]
async fn a_placed_order_starts_its_checkout_saga() {
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();
    let minted = std::process::Command::new(support::GANTRY)
        .args(["token", "--sub", "carol", "--scope", "orders:write", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let placed: Value = c
        .post(gantry.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "carol-1")
        .body(r#"{"sku": 3}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = format!("order.placed-order-{}", placed["order_id"]);
    let url = gantry.admin_url(&format!("/v1/workflows/{id}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let run = loop {
        let run = get_json(&url).await;
        let state = run["state"].as_str().unwrap_or_default().to_string();
        if !["", "running", "waiting"].contains(&state.as_str()) {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkout run did not end: {run:#}\n{}",
            gantry.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["state"], "completed", "{run:#}\n{}", gantry.log());
    assert_eq!(run["input"]["amount_cents"], 3900);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_functions_answer_every_trigger() {
    // nextest gives each test its own process: only this Gantry sees it.
    std::env::set_var("SHOP_PAYMENTS_WEBHOOK_SECRET", "whsec_shop_test");
    let gantry = Gantry::start(&shop_manifest()).await;
    let c = client();
    let function_logs = |name: &'static str| {
        let url = gantry.admin_url(&format!("/v1/functions/{name}/logs"));
        let c = c.clone();
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["lines"].to_string()
        }
    };

    // The WAGI report, on demand.
    let report = c.get(gantry.url("/report")).send().await.unwrap();
    assert_eq!(report.status(), 200, "{}", gantry.log());
    assert!(report
        .text()
        .await
        .unwrap()
        .starts_with("shop daily report\ngenerated at unix time "));

    // An upload is indexed by photo-index.
    let stored = c
        .put(gantry.url("/photos/tom.txt"))
        .header("content-type", "text/plain")
        .body("a photo of tom")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    eventually("the photo is indexed", Duration::from_secs(30), || async {
        function_logs("photo-index")
            .await
            .contains("indexed photo tom.txt: 14 bytes of \\\"text/plain\\\"")
    })
    .await;

    // A placed order is confirmed by the confirm function.
    let minted = std::process::Command::new(support::GANTRY)
        .args(["token", "--sub", "alice", "--scope", "orders:write", "-f"])
        .arg(gantry.manifest_path())
        .output()
        .unwrap();
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let placed: Value = c
        .post(gantry.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "fn-1")
        .body(r#"{"sku": 2, "email": "carol@example.com"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = placed["order_id"].as_i64().unwrap();
    eventually(
        "the confirm function runs",
        Duration::from_secs(30),
        || async {
            function_logs("confirm").await.contains(&format!(
                "order {order_id}: confirmation sent to carol@example.com"
            ))
        },
    )
    .await;

    // The payment provider's webhook: signed passes, unsigned is refused.
    let body =
        r#"{"type":"payment_intent.succeeded","data":{"object":{"metadata":{"order_id":7}}}}"#;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = support::stripe_signature(b"whsec_shop_test", t, body);
    let answer = c
        .post(gantry.url("/webhooks/payments"))
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["received"], "payment_intent.succeeded");
    assert_eq!(answer["order_id"], 7);
    let refused = c
        .post(gantry.url("/webhooks/payments"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The placed order counts toward the checkout SLOs.
    let slos: Value = get_json(&gantry.admin_url("/v1/slos")).await;
    let availability = slos["slos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "place-order-availability")
        .unwrap();
    assert_eq!(availability["requests"], 1, "{slos}");
    assert_eq!(availability["bad"], 0, "{slos}");
    assert_eq!(availability["alerts"][0]["state"], "ok");
}
