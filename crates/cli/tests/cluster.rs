//! Cluster mode through the real binary: three `gantry up` nodes on one
//! PostgreSQL (a fresh schema per test), one manifest, a configuration
//! applied once and run by every node, idempotency keys honoured whichever
//! node a retry reaches, and a node killed with `kill -9` in the middle of
//! traffic while the others keep serving.
//!
//! Needs the PostgreSQL of `GANTRY_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`); skipped without it, except
//! under `CI=true`, where a missing server fails the test.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use serde_json::Value;
use support::{client, eventually, free_port, GANTRY};

/// An upstream that counts the payments it takes; each takes 300 ms, so
/// concurrent retries overlap.
struct Upstream {
    addr: SocketAddr,
    payments: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let payments = Arc::new(AtomicUsize::new(0));
        let counter = payments.clone();
        let app = axum::Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/v2/hello", get(|| async { "hello from v2" }))
            .route(
                "/pay",
                post(move || {
                    let counter = counter.clone();
                    async move {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        format!("payment {n}")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, payments }
    }
}

/// The manifest every node runs, pointing at the test's schema.
fn manifest(pg: &gantry_cluster::PgOptions, upstream: SocketAddr, extra_routes: &str) -> String {
    format!(
        r#"
[platform]
name = "cluster-test"

[cluster]
postgres = "{url}"
schema = "{schema}"
lease = "2s"

[services.app]
urls = ["http://{upstream}"]

[[routes]]
path = "/pay"
methods = ["POST"]
to = "app"
idempotency = {{ header = "Idempotency-Key", required = true }}
{extra_routes}
[[routes]]
path = "/hello"
to = "app"
"#,
        url = pg.url,
        schema = pg.schema,
    )
}

/// One `gantry up --node NAME` process with its own ports and data directory.
struct Node {
    name: String,
    manifest: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    gateway: u16,
    admin: u16,
    api: u16,
}

impl Node {
    async fn start(name: &str, manifest: &Path, dir: &Path) -> Node {
        let mut node = Node {
            name: name.to_string(),
            manifest: manifest.to_path_buf(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
            gateway: 0,
            admin: 0,
            api: 0,
        };
        node.spawn().await;
        node
    }

    /// Starts (or restarts) the process, on new ports if a port was taken
    /// by another test in between.
    async fn spawn(&mut self) {
        for _ in 0..3 {
            (self.gateway, self.admin, self.api) = (free_port(), free_port(), free_port());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let child = Command::new(GANTRY)
                .args(["up", "-f"])
                .arg(&self.manifest)
                .args(["--node", &self.name])
                .args(["--listen", &format!("127.0.0.1:{}", self.gateway)])
                .args(["--admin", &format!("127.0.0.1:{}", self.admin)])
                .args(["--api", &format!("127.0.0.1:{}", self.api)])
                .arg("--data-dir")
                .arg(&self.data_dir)
                .current_dir("/")
                .env("GANTRY_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start gantry");
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => return,
                Err(log) if log.contains("cannot listen for") => continue,
                Err(log) => panic!("node {} exited:\n{log}", self.name),
            }
        }
        panic!("node {} found its ports taken three times", self.name);
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        support::wait_ready(self.child.as_mut().unwrap(), self.admin, &self.log).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to say goodbye to the cluster.
    fn kill_hard(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `gantry ARGS` (with `-f MANIFEST` last): (success, stdout, stderr).
fn cli(manifest: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(GANTRY)
        .args(args)
        .arg("-f")
        .arg(manifest)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `gantry nodes --json`, by name: (state, configuration version).
fn nodes(manifest: &Path) -> Vec<(String, String, Option<i64>)> {
    let (ok, out, err) = cli(manifest, &["nodes", "--json"]);
    assert!(ok, "gantry nodes failed: {err}");
    let value: Value = serde_json::from_str(&out).unwrap();
    value["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
                n["config_version"].as_i64(),
            )
        })
        .collect()
}

async fn status_of(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Three nodes on one manifest, their directory, and the upstream.
async fn three_nodes(tag: &str) -> Option<(tempfile::TempDir, PathBuf, Vec<Node>, Upstream)> {
    let pg = gantry_cluster::testing::fresh_schema(tag).await?;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, manifest(&pg, upstream.addr, "")).unwrap();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    Some((dir, path, nodes, upstream))
}

#[tokio::test]
async fn a_configuration_applied_once_runs_on_every_node_and_rolls_back() {
    let Some((dir, path, nodes, upstream)) = three_nodes("apply").await else {
        return;
    };
    // The first node stored the local manifest as v1; every node runs it.
    let listed = nodes_until(&path, |list| {
        list.len() == 3 && list.iter().all(|(_, s, v)| s == "up" && *v == Some(1))
    })
    .await;
    assert_eq!(
        listed.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    for node in &nodes {
        assert_eq!(status_of(&node.url("/hello")).await, 200);
        assert_eq!(status_of(&node.url("/v2/hello")).await, 404);
        let config: Value = client()
            .get(node.admin_url("/v1/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["node"], node.name.as_str(), "{config}");
        assert_eq!(config["running"], 1, "{config}");
        assert_eq!(config["versions"][0]["version"], 1, "{config}");
    }

    // A new route, applied once from another file: every node serves it
    // when `gantry apply` returns.
    let pg = gantry_cluster::PgOptions {
        url: gantry_cluster::testing::url(),
        schema: schema_of(&path),
        pool_size: 2,
    };
    let v2 = dir.path().join("v2.toml");
    let route = "[[routes]]\npath = \"/v2/*\"\nto = \"app\"\n";
    std::fs::write(&v2, manifest(&pg, upstream.addr, route)).unwrap();
    let (ok, out, err) = cli(&v2, &["apply", "--wait", "15s"]);
    assert!(ok, "apply failed:\n{out}\n{err}");
    assert!(out.contains("stored as configuration v2"), "{out}");
    for node in &nodes {
        assert_eq!(
            status_of(&node.url("/v2/hello")).await,
            200,
            "{}",
            node.name
        );
    }
    // Applying the same text again changes nothing.
    let (ok, out, _) = cli(&v2, &["apply"]);
    assert!(ok && out.contains("unchanged"), "{out}");

    // A manifest with a mistake is refused before it is stored.
    let broken = dir.path().join("broken.toml");
    let text = manifest(
        &pg,
        upstream.addr,
        "[[routes]]\npath = \"/x\"\nto = \"nowhere\"\n",
    );
    std::fs::write(&broken, text).unwrap();
    let (ok, _, err) = cli(&broken, &["apply"]);
    assert!(!ok);
    assert!(err.contains("nowhere"), "{err}");

    let (ok, out, _) = cli(&path, &["config", "history"]);
    assert!(ok);
    assert!(out.contains("v2") && out.contains("v1"), "{out}");
    assert!(
        !out.contains("v3"),
        "the broken manifest was stored:\n{out}"
    );

    // Rolling back to v1 stores it as v3; the route is gone everywhere.
    let (ok, out, err) = cli(&path, &["config", "rollback", "1", "--wait", "15s"]);
    assert!(ok, "rollback failed:\n{out}\n{err}");
    assert!(out.contains("stored again as configuration v3"), "{out}");
    for node in &nodes {
        assert_eq!(
            status_of(&node.url("/v2/hello")).await,
            404,
            "{}",
            node.name
        );
    }
    let (_, out, _) = cli(&path, &["config", "history"]);
    assert!(out.contains("rollback to 1"), "{out}");
    drop(nodes);
}

#[tokio::test]
async fn an_idempotency_key_is_honoured_whichever_node_a_retry_reaches() {
    let Some((_dir, _path, nodes, upstream)) = three_nodes("idem").await else {
        return;
    };
    let pay = |node: &Node| {
        client()
            .post(node.url("/pay"))
            .header("Idempotency-Key", "order-42")
            .body("{\"amount\":10}")
            .send()
    };
    // The same request reaches two nodes at once: one forwards it, the
    // other answers that it is in progress.
    let (first, second) = tokio::join!(pay(&nodes[0]), pay(&nodes[1]));
    let mut statuses = [
        first.unwrap().status().as_u16(),
        second.unwrap().status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    assert_eq!(upstream.payments.load(Ordering::SeqCst), 1);

    // A retry through the third node gets the stored answer.
    let replay = pay(&nodes[2]).await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.text().await.unwrap(), "payment 1");
    assert_eq!(upstream.payments.load(Ordering::SeqCst), 1);

    // The same key with another body is a different request: refused.
    let reused = client()
        .post(nodes[1].url("/pay"))
        .header("Idempotency-Key", "order-42")
        .body("{\"amount\":99}")
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);
    assert_eq!(upstream.payments.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_node_killed_mid_traffic_leaves_the_others_serving() {
    let Some((_dir, path, mut nodes, _upstream)) = three_nodes("kill").await else {
        return;
    };
    let survivors: Vec<String> = nodes[1..].iter().map(|n| n.url("/hello")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        tokio::spawn(async move {
            let client = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let url = &survivors[i % survivors.len()];
                i += 1;
                match client.get(url).send().await {
                    Ok(response) if response.status() == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].kill_hard();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(served.load(Ordering::SeqCst) > 10);

    // The cluster sees it go down, and a restart under the same name joins
    // again (once the dead process's heartbeat is stale).
    nodes_until(&path, |list| {
        list.iter().any(|(n, s, _)| n == "n1" && s == "down")
    })
    .await;
    nodes[0].spawn().await;
    assert_eq!(status_of(&nodes[0].url("/hello")).await, 200);
    nodes_until(&path, |list| list.iter().all(|(_, s, _)| s == "up")).await;
}

#[tokio::test]
async fn a_second_process_cannot_take_a_running_nodes_name() {
    let Some(pg) = gantry_cluster::testing::fresh_schema("name").await else {
        return;
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, manifest(&pg, upstream.addr, "")).unwrap();
    let _first = Node::start("same", &path, dir.path()).await;
    let output = Command::new(GANTRY)
        .args(["up", "-f"])
        .arg(&path)
        .args(["--node", "same"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--api", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .current_dir("/")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already running") && stderr.contains("--node"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_schedule_fires_once_per_due_time_across_three_nodes() {
    let Some(pg) = gantry_cluster::testing::fresh_schema("sched").await else {
        return;
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    let tick = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\ntick")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 30))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    std::fs::write(dir.path().join("tick.wat"), tick).unwrap();
    let extra = r#"
[functions.tick]
component = "tick.wat"
executor = "wagi"

[schedules.every_second]
cron = "* * * * * *"
to = "function:tick"
"#;
    std::fs::write(&path, manifest(&pg, upstream.addr, extra)).unwrap();
    let mut nodes = Vec::new();
    for name in ["s1", "s2", "s3"] {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    // Let every node run the timer for several due times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut fired: Vec<String> = Vec::new();
    let mut by_node = Vec::new();
    for node in &nodes {
        let log = node.log();
        let runs: Vec<String> = log
            .lines()
            .filter(|line| line.contains("scheduled run done"))
            .filter_map(|line| {
                let at = line.find("every_second/")?;
                let id: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                Some(id)
            })
            .collect();
        by_node.push(runs.len());
        fired.extend(runs);
    }
    let mut distinct = fired.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        fired.len() >= 3,
        "expected several runs in 5 s, got {fired:?} (per node: {by_node:?})"
    );
    assert_eq!(
        distinct.len(),
        fired.len(),
        "a due time fired on more than one node: {fired:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_is_the_clusters_total() {
    let Some(pg) = gantry_cluster::testing::fresh_schema("limits").await else {
        return;
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    // 50 requests a second per tenant, bursts of 5.
    let route = r#"[[routes]]
path = "/limited"
to = "app"
rewrite = "/hello"
rate_limit = { requests = 50, per = "1s", burst = 5, key = "header:x-tenant" }
"#;
    std::fs::write(&path, manifest(&pg, upstream.addr, route)).unwrap();
    let mut nodes = Vec::new();
    for name in ["r1", "r2", "r3"] {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    // One tenant sends flat out to all three nodes for four seconds.
    let seconds = 4.0;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut load = Vec::new();
    for node in &nodes {
        let url = node.url("/limited");
        load.push(tokio::spawn(async move {
            let client = client();
            let (mut allowed, mut limited) = (0u32, 0u32);
            while Instant::now() < deadline {
                let status = client
                    .get(&url)
                    .header("x-tenant", "t1")
                    .send()
                    .await
                    .unwrap()
                    .status();
                match status.as_u16() {
                    200 => allowed += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (allowed, limited)
        }));
    }
    let mut per_node = Vec::new();
    for task in load {
        per_node.push(task.await.unwrap());
    }
    let allowed: u32 = per_node.iter().map(|(a, _)| a).sum();
    let limited: u32 = per_node.iter().map(|(_, l)| l).sum();
    // The limit allows its burst and then its rate: 5 + 50 × 4 = 205 for
    // the cluster. Each node alone would allow that much (615 in all).
    let expected = 5.0 + 50.0 * seconds;
    let ratio = f64::from(allowed) / expected;
    eprintln!(
        "rate limit across 3 nodes: allowed {allowed} of {} requests, {ratio:.3}x the limit; per node (allowed, limited): {per_node:?}",
        allowed + limited
    );
    assert!(limited > 0, "the load must exceed the limit");
    assert!(
        (0.8..=1.25).contains(&ratio),
        "allowed {allowed}, expected about {expected}: {ratio:.3}x the limit"
    );
    // Every node allowed some and refused some: the limit is shared, not
    // split or held by one node.
    assert!(
        per_node.iter().all(|(a, l)| *a > 0 && *l > 0),
        "{per_node:?}"
    );
}

/// A saga's service: records each call's path and `Idempotency-Key`; the
/// first call to `slow` takes 1.5 s, so a node can be killed while it is in
/// flight; calls to `declined` are answered 402 (a failure not retried).
#[derive(Clone, Default)]
struct SagaService {
    calls: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl SagaService {
    async fn start(slow: &'static str, declined: &'static str) -> (SagaService, SocketAddr) {
        let service = SagaService::default();
        let recorder = service.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let recorder = recorder.clone();
            async move {
                let path = request.uri().path().to_string();
                let key = request
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let first_slow = {
                    let mut calls = recorder.calls.lock().unwrap();
                    calls.push((path.clone(), key));
                    path == slow && calls.iter().filter(|(p, _)| p == slow).count() == 1
                };
                if first_slow {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let status = if path == declined {
                    axum::http::StatusCode::PAYMENT_REQUIRED
                } else {
                    axum::http::StatusCode::OK
                };
                (status, axum::Json(serde_json::json!({ "id": "x1" })))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (service, addr)
    }

    /// The calls to `path`, and how many distinct idempotency keys they had.
    fn calls(&self, path: &str) -> (usize, usize) {
        let calls = self.calls.lock().unwrap();
        let mut keys: Vec<&str> = calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, k)| k.as_str())
            .collect();
        let all = keys.len();
        keys.sort();
        keys.dedup();
        (all, keys.len())
    }
}

#[tokio::test]
async fn a_saga_whose_node_is_killed_mid_step_is_finished_by_another_node() {
    let workflow = r#"
[services.shop]
urls = ["http://SHOP"]

[workflows.checkout]
[[workflows.checkout.steps]]
name = "reserve"
call = "shop:POST /reservations"

[[workflows.checkout.steps]]
name = "charge"
call = "shop:POST /charges"
timeout = "10s"

[[workflows.checkout.steps]]
name = "ship"
call = "shop:POST /shipments"
"#;
    let Some((_dir, mut nodes, service)) =
        saga_nodes("saga", ["w1", "w2", "w3"], workflow, "/charges", "none").await
    else {
        return;
    };
    start_checkout(&nodes[0], "order-7").await;
    eventually(
        "the charge is in flight",
        Duration::from_secs(10),
        || async { service.calls("/charges").0 == 1 },
    )
    .await;
    nodes[0].kill_hard();

    // Another node takes the run over once its lease (2 s) lapses, and
    // finishes it; the charge is repeated with the same key, so the service
    // does it once.
    run_reaches(&nodes[1], "order-7", "completed").await;
    assert_eq!(service.calls("/reservations"), (1, 1));
    let (charges, charge_keys) = service.calls("/charges");
    assert_eq!(
        charge_keys, 1,
        "one charge, whatever the attempts ({charges})"
    );
    assert_eq!(service.calls("/shipments"), (1, 1));
}

#[tokio::test]
async fn an_object_stored_through_one_node_is_served_by_every_node() {
    let Some(pg) = gantry_cluster::testing::fresh_schema("objects").await else {
        return;
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    let bucket = r#"
[buckets.photos]
max_size = "4MiB"

[[routes]]
path = "/photos/*"
strip_prefix = "/photos"
methods = ["PUT", "GET"]
to = "bucket:photos"
"#;
    std::fs::write(&path, manifest(&pg, upstream.addr, bucket)).unwrap();
    let mut nodes = Vec::new();
    for name in ["o1", "o2", "o3"] {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    // Bigger than one stored chunk, so it is reassembled on read.
    let photo: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let stored = client()
        .put(nodes[0].url("/photos/2026/cat.png"))
        .header("content-type", "image/png")
        .body(photo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap());
    nodes[0].kill_hard();

    let through_gateway = client()
        .get(nodes[1].url("/photos/2026/cat.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(through_gateway.status(), 200);
    assert_eq!(through_gateway.headers()["content-type"], "image/png");
    assert!(
        through_gateway.bytes().await.unwrap() == photo,
        "the bytes differ"
    );
    let through_api = client()
        .get(format!(
            "http://127.0.0.1:{}/v1/objects/photos/2026/cat.png",
            nodes[2].api
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(through_api.status(), 200);
    assert!(through_api.headers().contains_key("etag"));
    assert!(
        through_api.bytes().await.unwrap() == photo,
        "the bytes differ"
    );
    let missing = client()
        .get(nodes[2].url("/photos/2026/dog.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// Where the outbox's events arrive: each delivery's `ce-id`, duplicates
/// included.
async fn inbox() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let id = headers
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                record.lock().unwrap().push(id);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Writes outbox rows `from..to` as a service would, each in its own
/// transaction.
fn write_outbox(db: &Path, rows: std::ops::Range<u32>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    for i in rows {
        let event = serde_json::json!({"specversion": "1.0", "id": format!("o-{i}"),
            "source": "/orders", "type": "order.placed", "data": {"i": i}});
        conn.execute(
            "INSERT INTO gantry_outbox (topic, event) VALUES ('order.placed', ?1)",
            [event.to_string()],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn an_outbox_three_nodes_see_is_relayed_once_even_when_its_relay_is_killed() {
    let Some(pg) = gantry_cluster::testing::fresh_schema("outbox").await else {
        return;
    };
    let (inbox, seen) = inbox().await;
    let dir = tempfile::tempdir().unwrap();
    // The three nodes run on one machine: they all see the service's file.
    let db = dir.path().join("orders.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE gantry_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
                                         topic TEXT NOT NULL, event TEXT NOT NULL);",
        )
        .unwrap();
    let outbox = format!(
        r#"
[services.orders]
urls = ["http://{inbox}"]
outbox = {{ database = "{db}", poll = "20ms" }}

[topics."order.placed"]

[[subscriptions]]
topic = "order.placed"
to = "orders:/events"
"#,
        db = db.display()
    );
    let upstream = Upstream::start().await;
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, manifest(&pg, upstream.addr, &outbox)).unwrap();
    let mut nodes = Vec::new();
    for name in ["r1", "r2", "r3"] {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    let delivered = |n: usize| {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() >= n }
    };
    write_outbox(&db, 0..100);
    eventually("100 events delivered", Duration::from_secs(20), || {
        delivered(100)
    })
    .await;
    // Kill the node that relays, between two batches.
    let relay = nodes
        .iter()
        .position(|n| n.log().contains("this node relays the outbox"))
        .expect("one node says it relays the outbox");
    nodes[relay].kill_hard();
    write_outbox(&db, 100..200);
    eventually(
        "the other 100 delivered after a takeover",
        Duration::from_secs(30),
        || delivered(200),
    )
    .await;
    // Give a second relay (if there were one) time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let mut ids = seen.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every row delivered");
    assert_eq!(seen.len(), 200, "no row relayed twice");
    let relays = nodes
        .iter()
        .filter(|n| n.log().contains("this node relays the outbox"))
        .count();
    assert_eq!(relays, 2, "the killed relay, then one successor");
}

#[tokio::test]
async fn a_compensation_whose_node_is_killed_is_finished_once_by_another_node() {
    // The charge is declined, so the reservation is cancelled; the first
    // cancellation is slow, and its node is killed meanwhile.
    let workflow = r#"
[services.shop]
urls = ["http://SHOP"]

[workflows.checkout]
[[workflows.checkout.steps]]
name = "reserve"
call = "shop:POST /reservations"
compensate = { call = "shop:POST /reservations/cancel" }

[[workflows.checkout.steps]]
name = "charge"
call = "shop:POST /charges"
"#;
    let Some((_dir, mut nodes, service)) = saga_nodes(
        "compensation",
        ["c1", "c2", "c3"],
        workflow,
        "/reservations/cancel",
        "/charges",
    )
    .await
    else {
        return;
    };
    start_checkout(&nodes[0], "order-9").await;
    eventually(
        "the cancellation is in flight",
        Duration::from_secs(10),
        || async { service.calls("/reservations/cancel").0 == 1 },
    )
    .await;
    nodes[0].kill_hard();
    run_reaches(&nodes[2], "order-9", "compensated").await;
    assert_eq!(service.calls("/reservations"), (1, 1));
    assert_eq!(
        service.calls("/charges"),
        (1, 1),
        "a declined charge is not retried"
    );
    let (cancels, cancel_keys) = service.calls("/reservations/cancel");
    assert_eq!(
        cancel_keys, 1,
        "one cancellation, whatever the attempts ({cancels})"
    );
}

/// Three nodes named `names` running `workflow` (its `SHOP` replaced by the
/// address of a [`SagaService`] started with `slow` and `declined`), their
/// directory and the service.
async fn saga_nodes(
    tag: &str,
    names: [&str; 3],
    workflow: &str,
    slow: &'static str,
    declined: &'static str,
) -> Option<(tempfile::TempDir, Vec<Node>, SagaService)> {
    let pg = gantry_cluster::testing::fresh_schema(tag).await?;
    let (service, addr) = SagaService::start(slow, declined).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    let workflow = workflow.replace("SHOP", &addr.to_string());
    let upstream = Upstream::start().await;
    std::fs::write(&path, manifest(&pg, upstream.addr, &workflow)).unwrap();
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(Node::start(name, &path, dir.path()).await);
    }
    Some((dir, nodes, service))
}

/// Starts run `id` of workflow `checkout` through `node`'s platform API.
async fn start_checkout(node: &Node, id: &str) {
    let started = client()
        .post(format!(
            "http://127.0.0.1:{}/v1/workflows/checkout",
            node.api
        ))
        .json(&serde_json::json!({ "id": id, "input": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
}

/// Waits (20 s at most) until `node`'s admin API shows run `id` in `state`.
async fn run_reaches(node: &Node, id: &str, state: &str) {
    let url = node.admin_url(&format!("/v1/workflows/{id}"));
    eventually(
        &format!("run {id} is {state} (seen through node {})", node.name),
        Duration::from_secs(20),
        || async {
            let run: Value = match client().get(&url).send().await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            run["state"] == state
        },
    )
    .await;
}

/// Polls `gantry nodes` until `check` holds on its list.
async fn nodes_until(
    path: &Path,
    check: impl Fn(&[(String, String, Option<i64>)]) -> bool,
) -> Vec<(String, String, Option<i64>)> {
    let mut last = Vec::new();
    eventually("the node list", Duration::from_secs(20), || {
        last = nodes(path);
        let ok = check(&last);
        async move { ok }
    })
    .await;
    last
}

/// The `schema = "..."` of a manifest written by [`manifest`].
fn schema_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("schema = ")).unwrap();
    line.trim_start_matches("schema = ")
        .trim_matches('"')
        .to_string()
}
