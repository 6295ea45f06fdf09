//! Cluster mode end to end: two engines (two "nodes") on one PostgreSQL
//! schema. Node A starts a run and is killed in the middle of a step, its
//! lease never released; node B takes the run over once the lease lapses and
//! finishes it, and the upstream service sees each side effect once.
//!
//! Node A lives on a runtime of its own, shut down without running any more
//! of its code, which is what `kill -9` does to a process: its tasks stop
//! mid-await, its connections drop, nothing is cleaned up.
//!
//! Needs PostgreSQL (`GANTRY_TEST_POSTGRES`); skipped without it outside CI.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::{Json, Router};
use gantry_cluster::{Cluster, PgOptions, Postgres};
use gantry_events::EventBus;
use gantry_manifest::Manifest;
use gantry_services::{ServiceDirectory, ServiceHandle};
use gantry_workflows::{Engine, State as RunState};
use serde_json::{json, Value};
use tokio::sync::Notify;

const LEASE: Duration = Duration::from_secs(1);

/// A service that applies each side effect once per idempotency key (a
/// repeated key gets the first answer) and can hold one route's first
/// request forever, after applying it: the caller dies waiting.
#[derive(Clone, Default)]
struct Upstream {
    /// `METHOD /path` of each side effect applied, in order.
    effects: Arc<Mutex<Vec<String>>>,
    /// Every request's idempotency key, repeats included.
    keys: Arc<Mutex<Vec<String>>>,
    answers: Arc<Mutex<HashMap<String, (u16, Value)>>>,
    /// `METHOD /first-segment` whose first request is held.
    hold: Arc<Mutex<Option<String>>>,
    held: Arc<Notify>,
    /// `METHOD /first-segment` declined with 402.
    decline: Arc<Mutex<Option<String>>>,
}

impl Upstream {
    async fn start() -> (Upstream, String) {
        let upstream = Upstream::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/{*path}", any(serve))
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (upstream, url)
    }

    fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    fn distinct_keys(&self) -> BTreeSet<String> {
        self.keys().into_iter().collect()
    }
}

async fn serve(
    State(upstream): State<Upstream>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let segment = path.split('/').next().unwrap_or_default();
    let route = format!("{method} /{segment}");
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    upstream.keys.lock().unwrap().push(key.clone());
    let answered = upstream.answers.lock().unwrap().get(&key).cloned();
    if let Some((status, answer)) = answered {
        return (StatusCode::from_u16(status).unwrap(), Json(answer));
    }
    let (status, answer) = if upstream.decline.lock().unwrap().as_deref() == Some(&route) {
        (402, json!({"error": "declined"}))
    } else {
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut effects = upstream.effects.lock().unwrap();
        effects.push(format!("{method} /{path}"));
        (
            201,
            json!({"id": format!("{segment}-{}", effects.len()), "got": body}),
        )
    };
    upstream
        .answers
        .lock()
        .unwrap()
        .insert(key, (status, answer.clone()));
    let hold = {
        let mut hold = upstream.hold.lock().unwrap();
        if hold.as_deref() == Some(&route) {
            *hold = None;
            true
        } else {
            false
        }
    };
    if hold {
        // Applied, but the caller never hears so.
        upstream.held.notify_one();
        std::future::pending::<()>().await;
    }
    (StatusCode::from_u16(status).unwrap(), Json(answer))
}

const ORDER: &str = r#"
[services.shop]
urls = ["{SHOP}"]

[workflows.order]
[[workflows.order.steps]]
name = "reserve"
call = "shop:POST /reservations"
body = { order = "{{ input.order_id }}" }
timeout = "30s"
retry = { max_attempts = 5, initial = "50ms", max = "200ms" }
compensate = { call = "shop:DELETE /reservations/{{ steps.reserve.output.id }}" }

[[workflows.order.steps]]
name = "charge"
call = "shop:POST /charges"
body = { order = "{{ input.order_id }}", reservation = "{{ steps.reserve.output.id }}" }
timeout = "30s"
retry = { max_attempts = 5, initial = "50ms", max = "200ms" }

[workflows.nap]
[[workflows.nap.steps]]
name = "reserve"
call = "shop:POST /reservations"
body = { order = "{{ input.order_id }}" }
compensate = { call = "shop:DELETE /reservations/{{ steps.reserve.output.id }}" }

[[workflows.nap.steps]]
name = "nap"
sleep = "60s"
"#;

/// One node: its cluster handle, bus and engine.
struct Node {
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A killed node: its engine is not dropped (its handles belong to a
    /// runtime that is gone), its data directory is removed.
    fn forget(self) {
        std::mem::forget(self.engine);
        drop(self._dir);
    }

    async fn start(
        options: &PgOptions,
        name: &str,
        manifest: &Manifest,
        directory: &ServiceDirectory,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::connect(options, name).await.unwrap();
        let bus = EventBus::open(dir.path(), directory.clone(), None).unwrap();
        bus.apply(manifest).await.unwrap();
        let engine = Engine::open_postgres(&cluster, LEASE, bus, directory.clone(), None)
            .await
            .unwrap();
        engine.apply(manifest).await.unwrap();
        Node { engine, _dir: dir }
    }
}

struct Rig {
    options: PgOptions,
    manifest: Manifest,
    directory: ServiceDirectory,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(tag: &str) -> Option<Rig> {
        let options = gantry_cluster::testing::fresh_schema(tag).await?;
        let (upstream, url) = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let manifest = gantry_manifest::parse(
            &ORDER.replace("{SHOP}", &url),
            std::path::Path::new("t.toml"),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let directory: ServiceDirectory = Arc::default();
        let mut services = HashMap::new();
        for (name, config) in &manifest.services {
            services.insert(name.clone(), ServiceHandle::start(name, config).unwrap());
        }
        directory.store(Arc::new(services));
        Some(Rig {
            options,
            manifest,
            directory,
            upstream,
            _dir: dir,
        })
    }

    /// Node A on a runtime of its own, which has started run `id` and is
    /// stuck in the held request. Returns the runtime, to kill it, and the
    /// node, to forget once killed (its tasks are gone; only its files are
    /// to be cleaned up).
    async fn node_a_stuck_in(&self, id: &str) -> (tokio::runtime::Runtime, Node) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (options, manifest, directory) = (
            self.options.clone(),
            self.manifest.clone(),
            self.directory.clone(),
        );
        let id = id.to_string();
        let started = runtime.spawn(async move {
            let node = Node::start(&options, "node-a", &manifest, &directory).await;
            node.engine
                .start("order", Some(id), json!({"order_id": 7}), None)
                .await
                .unwrap();
            node
        });
        let node = started.await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.upstream.held.notified())
            .await
            .expect("node A's request reached the upstream");
        (runtime, node)
    }

    /// Who holds run `id`, straight from the journal.
    async fn owner(&self, id: &str) -> Option<String> {
        let pg = Postgres::connect(&self.options).await.unwrap();
        let client = pg.client().await.unwrap();
        client
            .query_one("SELECT owner FROM wf_runs WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }
}

async fn wait_state(engine: &Engine, id: &str, state: RunState) -> gantry_workflows::RunView {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = engine.get(id).await.unwrap();
        if run.instance.state == state {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is {:?}, not {state:?}: {:#}",
            run.instance.state,
            json!(run)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_run_whose_node_is_killed_mid_step_is_finished_by_another_node_once() {
    let Some(rig) = Rig::start("takeover").await else {
        return;
    };
    *rig.upstream.hold.lock().unwrap() = Some("POST /reservations".into());
    // Node B is up first: it must leave node A's run alone while A lives.
    let b = Node::start(&rig.options, "node-b", &rig.manifest, &rig.directory).await;
    let (a, a_node) = rig.node_a_stuck_in("order-1").await;
    let owner = rig.owner("order-1").await.unwrap();
    assert!(
        owner.starts_with("node-a/"),
        "node A drives its run: {owner}"
    );
    // A lives (renewing) past its lease: B does not take the run.
    tokio::time::sleep(LEASE * 2).await;
    let owner = rig.owner("order-1").await.unwrap();
    assert!(
        owner.starts_with("node-a/"),
        "a live node keeps its run: {owner}"
    );
    assert_eq!(rig.upstream.keys(), ["order-1/reserve"]);

    let killed = Instant::now();
    a.shutdown_background();
    a_node.forget();

    let run = wait_state(&b.engine, "order-1", RunState::Completed).await;
    let took = killed.elapsed();
    assert!(
        took < LEASE + Duration::from_secs(4),
        "node B took {took:?} to finish the run"
    );
    // Each side effect once, though the reservation was asked for twice.
    assert_eq!(
        rig.upstream.effects(),
        ["POST /reservations", "POST /charges"]
    );
    assert_eq!(
        rig.upstream.distinct_keys(),
        BTreeSet::from(["order-1/reserve".to_string(), "order-1/charge".to_string()])
    );
    assert_eq!(
        rig.upstream.keys(),
        ["order-1/reserve", "order-1/reserve", "order-1/charge"],
        "node B replayed the step node A died in, under the same key"
    );
    let charge = run.steps.iter().find(|s| s.name == "charge").unwrap();
    assert_eq!(
        charge.output.as_ref().unwrap()["got"],
        json!({"order": 7, "reservation": "reservations-1"}),
        "node B carried on with the answer node A never heard"
    );
    assert_eq!(rig.owner("order-1").await, None, "an ended run is released");
    b.engine.stop().await;
}

#[tokio::test]
async fn a_compensation_whose_node_is_killed_is_finished_by_another_node_once() {
    let Some(rig) = Rig::start("takeoverundo").await else {
        return;
    };
    *rig.upstream.decline.lock().unwrap() = Some("POST /charges".into());
    *rig.upstream.hold.lock().unwrap() = Some("DELETE /reservations".into());
    let b = Node::start(&rig.options, "node-b", &rig.manifest, &rig.directory).await;
    // Node A reserves, is declined the charge, and dies undoing the reservation.
    let (a, a_node) = rig.node_a_stuck_in("order-2").await;
    let run = b.engine.get("order-2").await.unwrap();
    assert_eq!(run.instance.state, RunState::Compensating);
    a.shutdown_background();
    a_node.forget();

    let run = wait_state(&b.engine, "order-2", RunState::Compensated).await;
    assert_eq!(
        rig.upstream.effects(),
        ["POST /reservations", "DELETE /reservations/reservations-1"]
    );
    assert_eq!(
        rig.upstream.keys(),
        [
            "order-2/reserve",
            "order-2/charge",
            "order-2/reserve/compensate",
            "order-2/reserve/compensate"
        ]
    );
    let undo = run
        .steps
        .iter()
        .find(|s| s.name == "reserve" && s.phase == "undo")
        .unwrap();
    assert_eq!(undo.status, "done");
    assert_eq!(rig.owner("order-2").await, None);
    b.engine.stop().await;
}

#[tokio::test]
async fn a_run_started_on_one_node_is_driven_there_and_released_when_it_ends() {
    let Some(rig) = Rig::start("owned").await else {
        return;
    };
    let a = Node::start(&rig.options, "node-a", &rig.manifest, &rig.directory).await;
    let b = Node::start(&rig.options, "node-b", &rig.manifest, &rig.directory).await;
    let (run, created) = a
        .engine
        .start(
            "order",
            Some("order-3".into()),
            json!({"order_id": 3}),
            None,
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(run.state, RunState::Running);
    // Started on A, visible (and idempotent) through B.
    let (same, created) = b
        .engine
        .start(
            "order",
            Some("order-3".into()),
            json!({"order_id": 3}),
            None,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(same.id, "order-3");
    wait_state(&b.engine, "order-3", RunState::Completed).await;
    assert_eq!(rig.upstream.keys(), ["order-3/reserve", "order-3/charge"]);
    assert_eq!(rig.owner("order-3").await, None);
    a.engine.stop().await;
    b.engine.stop().await;
}

#[tokio::test]
async fn a_cancel_asked_on_another_node_reaches_the_driver_of_a_waiting_run() {
    let Some(rig) = Rig::start("remotecancel").await else {
        return;
    };
    let a = Node::start(&rig.options, "node-a", &rig.manifest, &rig.directory).await;
    let b = Node::start(&rig.options, "node-b", &rig.manifest, &rig.directory).await;
    a.engine
        .start("nap", Some("nap-1".into()), json!({"order_id": 1}), None)
        .await
        .unwrap();
    wait_state(&b.engine, "nap-1", RunState::Waiting).await;
    let asked = Instant::now();
    b.engine.cancel("nap-1").await.unwrap();
    // Node A, sleeping for a minute, hears of it with its next renewal.
    let run = wait_state(&b.engine, "nap-1", RunState::Cancelled).await;
    assert!(asked.elapsed() < LEASE * 2, "took {:?}", asked.elapsed());
    assert_eq!(
        rig.upstream.effects(),
        ["POST /reservations", "DELETE /reservations/reservations-1"]
    );
    assert_eq!(
        run.instance.error.as_deref(),
        Some("cancelled by an operator")
    );
    assert_eq!(rig.owner("nap-1").await, None);
    a.engine.stop().await;
    b.engine.stop().await;
}

#[tokio::test]
async fn a_node_stopping_gracefully_hands_its_runs_over_at_once() {
    let Some(rig) = Rig::start("handover").await else {
        return;
    };
    let a = Node::start(&rig.options, "node-a", &rig.manifest, &rig.directory).await;
    a.engine
        .start("nap", Some("nap-2".into()), json!({"order_id": 2}), None)
        .await
        .unwrap();
    wait_state(&a.engine, "nap-2", RunState::Waiting).await;
    assert!(rig.owner("nap-2").await.unwrap().starts_with("node-a/"));
    a.engine.stop().await;
    assert_eq!(rig.owner("nap-2").await, None, "released on stop");
    let b = Node::start(&rig.options, "node-b", &rig.manifest, &rig.directory).await;
    // Taken at start: node B's resume finds it unowned.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(owner) = rig.owner("nap-2").await {
            assert!(owner.starts_with("node-b/"), "{owner}");
            break;
        }
        assert!(Instant::now() < deadline, "node B never took the run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The timer keeps its deadline: still waiting, the step not run again.
    let run = b.engine.get("nap-2").await.unwrap();
    assert_eq!(run.instance.state, RunState::Waiting);
    assert_eq!(rig.upstream.keys(), ["nap-2/reserve"]);
    b.engine.stop().await;
}
