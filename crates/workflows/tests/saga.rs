//! Sagas end to end: a real journal, a real event bus, and test services
//! that honour idempotency keys and count their side effects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::{Json, Router};
use gantry_events::EventBus;
use gantry_manifest::Manifest;
use gantry_services::ServiceDirectory;
use gantry_services::ServiceHandle;
use gantry_workflows::{Engine, State as RunState};
use serde_json::{json, Value};

/// A status to answer, and for how many more requests (`None`: until healed).
type Failing = (u16, Option<usize>);

/// A service that records each side effect once per idempotency key and
/// answers a repeated key with the first answer.
#[derive(Clone, Default)]
struct Shop {
    /// `METHOD /path` in the order the side effects happened.
    effects: Arc<Mutex<Vec<String>>>,
    /// Every request's idempotency key.
    keys: Arc<Mutex<Vec<String>>>,
    answers: Arc<Mutex<HashMap<String, (u16, Value)>>>,
    /// What to answer a `METHOD /first-segment` with, e.g. `POST /charges` → 402.
    failures: Arc<Mutex<HashMap<String, Failing>>>,
    /// Delay before answering a `METHOD /first-segment`.
    delays: Arc<Mutex<HashMap<String, Duration>>>,
}

impl Shop {
    async fn start() -> (Shop, String) {
        let shop = Shop::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(shop.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (shop, url)
    }

    fn fail(&self, route: &str, status: u16) {
        self.failures
            .lock()
            .unwrap()
            .insert(route.to_string(), (status, None));
    }

    /// Fails the next `times` requests to `route`, then answers again.
    fn fail_times(&self, route: &str, status: u16, times: usize) {
        self.failures
            .lock()
            .unwrap()
            .insert(route.to_string(), (status, Some(times)));
    }

    fn heal(&self, route: &str) {
        self.failures.lock().unwrap().remove(route);
    }

    fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }
}

async fn handle(
    State(shop): State<Shop>,
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
    shop.keys.lock().unwrap().push(key.clone());
    let delay = shop.delays.lock().unwrap().get(&route).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let answered = shop.answers.lock().unwrap().get(&key).cloned();
    if let Some((status, answer)) = answered {
        return (StatusCode::from_u16(status).unwrap(), Json(answer));
    }
    let failure = {
        let mut failures = shop.failures.lock().unwrap();
        match failures.get_mut(&route) {
            Some((status, None)) => Some(*status),
            Some((status, Some(left))) if *left > 0 => {
                *left -= 1;
                Some(*status)
            }
            _ => None,
        }
    };
    if let Some(status) = failure {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": format!("{route} refused")})),
        );
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let answer = json!({"id": format!("{segment}-{}", shop.effects.lock().unwrap().len() + 1), "got": body, "path": path});
    shop.effects
        .lock()
        .unwrap()
        .push(format!("{method} /{path}"));
    shop.answers
        .lock()
        .unwrap()
        .insert(key, (201, answer.clone()));
    (StatusCode::CREATED, Json(answer))
}

const CHECKOUT: &str = r#"
[services.shop]
urls = ["{SHOP}"]

[topics."shipment.dispatched"]
[topics."order.completed"]

[workflows.checkout]
[[workflows.checkout.steps]]
name = "reserve"
call = "shop:POST /reservations"
body = { order = "{{ input.order_id }}", sku = "{{ input.sku }}" }
compensate = { call = "shop:DELETE /reservations/{{ steps.reserve.output.id }}" }

[[workflows.checkout.steps]]
name = "charge"
call = "shop:POST /charges"
body = { order = "{{ input.order_id }}", reservation = "{{ steps.reserve.output.id }}" }
retry = { max_attempts = 3, initial = "20ms", max = "50ms" }
compensate = { call = "shop:POST /refunds", body = { charge = "{{ steps.charge.output.id }}" } }

[[workflows.checkout.steps]]
name = "ship"
call = "shop:POST /shipments"
body = { order = "{{ input.order_id }}" }
retry = { max_attempts = 2, initial = "20ms", max = "50ms" }
compensate = { call = "shop:DELETE /shipments/{{ steps.ship.output.id }}" }

[[workflows.checkout.steps]]
name = "dispatched"
wait = { topic = "shipment.dispatched", match = { "/data/order_id" = "{{ input.order_id }}" } }
timeout = "10s"

[[workflows.checkout.steps]]
name = "done"
publish = { topic = "order.completed", type = "order.completed", data = { order_id = "{{ input.order_id }}", shipment = "{{ steps.ship.output.id }}" } }
"#;

struct Rig {
    engine: Engine,
    bus: EventBus,
    dir: tempfile::TempDir,
    directory: ServiceDirectory,
    manifest: Manifest,
}

fn manifest(text: &str, url: &str, dir: &std::path::Path) -> Manifest {
    gantry_manifest::parse(
        &text.replace("{SHOP}", url),
        std::path::Path::new("t.toml"),
        dir,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

impl Rig {
    async fn start(text: &str, url: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(text, url, dir.path());
        let directory: ServiceDirectory = Arc::default();
        let mut services = HashMap::new();
        for (name, config) in &manifest.services {
            services.insert(name.clone(), ServiceHandle::start(name, config).unwrap());
        }
        directory.store(Arc::new(services));
        Rig::open(dir, directory, manifest).await
    }

    async fn open(dir: tempfile::TempDir, directory: ServiceDirectory, manifest: Manifest) -> Rig {
        let bus = EventBus::open(dir.path(), directory.clone(), None).unwrap();
        bus.apply(&manifest).await.unwrap();
        let engine = Engine::open(dir.path(), bus.clone(), directory.clone(), None).unwrap();
        bus.set_workflow_starter(Arc::new(engine.clone()));
        engine.apply(&manifest).await.unwrap();
        Rig {
            engine,
            bus,
            dir,
            directory,
            manifest,
        }
    }

    /// Stops the engine and opens another on the same journal, as a restart does.
    async fn restart(self) -> Rig {
        self.engine.stop().await;
        self.bus.stop().await;
        let Rig {
            dir,
            directory,
            manifest,
            ..
        } = self;
        Rig::open(dir, directory, manifest).await
    }

    async fn wait_state(&self, id: &str, state: RunState) -> gantry_workflows::RunView {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let Ok(run) = self.engine.get(id).await else {
                assert!(Instant::now() < deadline, "run {id} never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
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

    async fn dispatch(&self, order_id: i64) {
        let event = gantry_events::CloudEvent::from_json(json!({
            "specversion": "1.0", "id": format!("d-{order_id}"), "source": "/shipping",
            "type": "shipment.dispatched", "data": {"order_id": order_id}
        }))
        .unwrap();
        self.bus
            .publish("shipment.dispatched", vec![event], None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_happy_path_runs_every_step_with_templates_and_idempotency_keys() {
    let (shop, url) = Shop::start().await;
    let rig = Rig::start(CHECKOUT, &url).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (run, created) = rig
        .engine
        .start(
            "checkout",
            Some("order-7".into()),
            json!({"order_id": 7, "sku": 3}),
            Some(parent),
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(run.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    // The shipment is dispatched before the workflow starts waiting for it:
    // the wait still sees it.
    rig.dispatch(7).await;

    let run = rig.wait_state("order-7", RunState::Completed).await;
    assert_eq!(
        shop.effects(),
        ["POST /reservations", "POST /charges", "POST /shipments"]
    );
    let keys = shop.keys.lock().unwrap().clone();
    assert_eq!(keys, ["order-7/reserve", "order-7/charge", "order-7/ship"]);
    let charge = run.steps.iter().find(|s| s.name == "charge").unwrap();
    assert_eq!(
        charge.output.as_ref().unwrap()["got"],
        json!({"order": 7, "reservation": "reservations-1"})
    );
    let waited = run.steps.iter().find(|s| s.name == "dispatched").unwrap();
    assert_eq!(waited.output.as_ref().unwrap()["id"], "d-7");

    // The completion event carries templated data and the run's trace.
    let events = rig
        .bus
        .broker()
        .read("order.completed", 1, 10)
        .await
        .unwrap();
    let event: Value = serde_json::from_slice(&events[0].json).unwrap();
    assert_eq!(
        event["data"],
        json!({"order_id": 7, "shipment": "shipments-3"})
    );
    assert!(event["traceparent"]
        .as_str()
        .unwrap()
        .contains("4bf92f3577b34da6a3ce929d0e0e4736"));

    // Starting again with the same id and input gives back the same run.
    let (again, created) = rig
        .engine
        .start(
            "checkout",
            Some("order-7".into()),
            json!({"order_id": 7, "sku": 3}),
            None,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.id, "order-7");
    let conflict = rig
        .engine
        .start(
            "checkout",
            Some("order-7".into()),
            json!({"order_id": 8}),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        conflict.to_string().contains("already exists"),
        "{conflict}"
    );
}

#[tokio::test]
async fn a_failure_compensates_exactly_the_completed_steps_in_reverse() {
    for (failing, status, undo) in [
        ("POST /reservations", 409, vec![]),
        (
            "POST /charges",
            402,
            vec!["DELETE /reservations/reservations-1"],
        ),
        (
            "POST /shipments",
            400,
            vec!["POST /refunds", "DELETE /reservations/reservations-1"],
        ),
    ] {
        let (shop, url) = Shop::start().await;
        shop.fail(failing, status);
        let rig = Rig::start(CHECKOUT, &url).await;
        rig.engine
            .start(
                "checkout",
                Some("o".into()),
                json!({"order_id": 1, "sku": 1}),
                None,
            )
            .await
            .unwrap();
        let end = if undo.is_empty() {
            RunState::Failed
        } else {
            RunState::Compensated
        };
        let run = rig.wait_state("o", end).await;
        let effects = shop.effects();
        let done = effects.len() - undo.len();
        assert_eq!(&effects[done..], undo.as_slice(), "when {failing} fails");
        assert!(
            run.instance
                .error
                .as_deref()
                .unwrap()
                .contains(&status.to_string()),
            "{:?}",
            run.instance.error
        );
        // A refused call (4xx not in retry_on) is not retried.
        let attempts = shop
            .keys
            .lock()
            .unwrap()
            .iter()
            .filter(|k| !k.ends_with("/compensate"))
            .count();
        assert_eq!(attempts, done + 1, "when {failing} fails");
    }
}

#[tokio::test]
async fn retryable_failures_are_retried_with_the_same_key() {
    let (shop, url) = Shop::start().await;
    // Two 503s, then the service recovers before the third (last) attempt.
    shop.fail_times("POST /charges", 503, 2);
    let rig = Rig::start(CHECKOUT, &url).await;
    rig.engine
        .start(
            "checkout",
            Some("r".into()),
            json!({"order_id": 2, "sku": 1}),
            None,
        )
        .await
        .unwrap();
    rig.dispatch(2).await;
    let run = rig.wait_state("r", RunState::Completed).await;
    let charge = run.steps.iter().find(|s| s.name == "charge").unwrap();
    assert_eq!(charge.attempts, 3, "{charge:?}");
    let keys = shop.keys.lock().unwrap().clone();
    assert_eq!(
        keys.iter().filter(|k| *k == "r/charge").count(),
        3,
        "{keys:?}"
    );
    assert_eq!(
        shop.effects()
            .iter()
            .filter(|e| *e == "POST /charges")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_parks_the_run_until_an_operator_retries() {
    let (shop, url) = Shop::start().await;
    shop.fail("POST /shipments", 400);
    shop.fail("POST /refunds", 500);
    let text = CHECKOUT;
    let rig = Rig::start(text, &url).await;
    rig.engine
        .start(
            "checkout",
            Some("p".into()),
            json!({"order_id": 3, "sku": 1}),
            None,
        )
        .await
        .unwrap();
    let parked = rig.wait_state("p", RunState::NeedsAttention).await;
    assert!(parked
        .instance
        .error
        .as_deref()
        .unwrap()
        .contains("compensation of step `charge`"));
    // The reservation was not released: compensation stops where it failed.
    assert!(!shop
        .effects()
        .iter()
        .any(|e| e.starts_with("DELETE /reservations")));

    shop.heal("POST /refunds");
    rig.engine.retry("p").await.unwrap();
    rig.wait_state("p", RunState::Compensated).await;
    let effects = shop.effects();
    assert_eq!(
        &effects[effects.len() - 2..],
        ["POST /refunds", "DELETE /reservations/reservations-1"]
    );
    assert_eq!(effects.iter().filter(|e| *e == "POST /refunds").count(), 1);
}

const TIMER: &str = r#"
[services.shop]
urls = ["{SHOP}"]

[workflows.later]
[[workflows.later.steps]]
name = "pause"
sleep = "1500ms"

[[workflows.later.steps]]
name = "remind"
call = "shop:POST /reminders"
"#;

#[tokio::test]
async fn a_timer_fires_at_its_time_across_a_restart() {
    let (shop, url) = Shop::start().await;
    let rig = Rig::start(TIMER, &url).await;
    let started = Instant::now();
    rig.engine
        .start("later", Some("t".into()), json!({}), None)
        .await
        .unwrap();
    rig.wait_state("t", RunState::Waiting).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rig = rig.restart().await;
    rig.wait_state("t", RunState::Completed).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the timer kept its due time"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "and did not start over much later"
    );
    assert_eq!(shop.effects(), ["POST /reminders"]);
}

#[tokio::test]
async fn a_running_workflow_keeps_its_definition_after_a_reload() {
    let (shop, url) = Shop::start().await;
    let rig = Rig::start(TIMER, &url).await;
    rig.engine
        .start("later", Some("old".into()), json!({}), None)
        .await
        .unwrap();
    rig.wait_state("old", RunState::Waiting).await;

    let v2 = TIMER.replace("POST /reminders", "POST /nudges");
    let m2 = manifest(&v2, &url, rig.dir.path());
    let registered = rig.engine.apply(&m2).await.unwrap();
    assert_eq!(registered, ["later v2"]);
    let (new, _) = rig
        .engine
        .start("later", Some("new".into()), json!({}), None)
        .await
        .unwrap();
    assert_eq!(new.version, 2);
    rig.wait_state("old", RunState::Completed).await;
    rig.wait_state("new", RunState::Completed).await;
    let mut effects = shop.effects();
    effects.sort();
    assert_eq!(effects, ["POST /nudges", "POST /reminders"]);
}

#[tokio::test]
async fn operators_cancel_and_resume_runs() {
    let (shop, url) = Shop::start().await;
    let rig = Rig::start(CHECKOUT, &url).await;
    rig.engine
        .start(
            "checkout",
            Some("c".into()),
            json!({"order_id": 9, "sku": 1}),
            None,
        )
        .await
        .unwrap();
    // Waiting for a dispatch that does not come: cancel compensates.
    rig.wait_state("c", RunState::Waiting).await;
    rig.engine.cancel("c").await.unwrap();
    rig.wait_state("c", RunState::Cancelled).await;
    let effects = shop.effects();
    assert_eq!(
        &effects[3..],
        [
            "DELETE /shipments/shipments-3",
            "POST /refunds",
            "DELETE /reservations/reservations-1"
        ]
    );

    // Every step was undone, so it can only start over from the first one,
    // under new keys.
    let refused = rig.engine.resume("c", "ship").await.unwrap_err();
    assert!(
        refused.to_string().contains("can resume from `reserve`"),
        "{refused}"
    );
    rig.engine.resume("c", "reserve").await.unwrap();
    rig.dispatch(9).await;
    rig.wait_state("c", RunState::Completed).await;
    assert!(shop.keys.lock().unwrap().contains(&"c/ship/1".to_string()));
    let unknown = rig.engine.resume("c", "nope").await.unwrap_err();
    assert!(
        unknown.to_string().contains("only a stopped run"),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_subscription_starts_one_run_per_event() {
    let (shop, url) = Shop::start().await;
    let text = format!(
        "{}\n[topics.\"reminder.requested\"]\n\n[[subscriptions]]\ntopic = \"reminder.requested\"\nto = \"workflow:later\"\n",
        TIMER.replace("1500ms", "10ms")
    );
    let rig = Rig::start(&text, &url).await;
    let event = gantry_events::CloudEvent::from_json(json!({
        "specversion": "1.0", "id": "r-1", "source": "/tests",
        "type": "reminder.requested", "data": {"who": "alice"}
    }))
    .unwrap();
    rig.bus
        .publish("reminder.requested", vec![event.clone()], None)
        .await
        .unwrap();
    let run = rig
        .wait_state("reminder.requested-r-1", RunState::Completed)
        .await;
    assert_eq!(run.instance.input, json!({"who": "alice"}));
    // The same event again (a replay) starts nothing new.
    rig.bus
        .seek(
            "later.reminder.requested",
            gantry_events::Position::Earliest,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = rig.engine.store().list(None, None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(shop.effects(), ["POST /reminders"]);
}

/// Starts run `id` of `manifest`'s checkout, cancels it while its charge
/// (400 ms) is in flight, waits for it to end cancelled; the shop's effects.
async fn cancelled_during_the_charge(manifest: &str, id: &str) -> Vec<String> {
    let (shop, url) = Shop::start().await;
    shop.delays
        .lock()
        .unwrap()
        .insert("POST /charges".into(), Duration::from_millis(400));
    let rig = Rig::start(manifest, &url).await;
    rig.engine
        .start(
            "checkout",
            Some(id.into()),
            json!({"order_id": 5, "sku": 1}),
            None,
        )
        .await
        .unwrap();
    let charge_key = format!("{id}/charge");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shop.keys.lock().unwrap().contains(&charge_key) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.engine.cancel(id).await.unwrap();
    rig.wait_state(id, RunState::Cancelled).await;
    shop.effects()
}

/// The charge completed, so it was refunded and the reservation released.
const REFUNDED: [&str; 4] = [
    "POST /reservations",
    "POST /charges",
    "POST /refunds",
    "DELETE /reservations/reservations-1",
];

#[tokio::test]
async fn a_cancel_during_a_call_lets_it_finish_and_compensates_it() {
    // Nothing was shipped.
    assert_eq!(cancelled_during_the_charge(CHECKOUT, "x").await, REFUNDED);
}

#[tokio::test]
async fn a_cancel_during_the_last_step_still_compensates_the_run() {
    // The last step's outcome and the run's end are one journal write; a
    // cancel asked while that step ran must still win over "completed".
    let two_steps = CHECKOUT
        .split("[[workflows.checkout.steps]]\nname = \"ship\"")
        .next()
        .unwrap();
    assert_eq!(
        cancelled_during_the_charge(two_steps, "last").await,
        REFUNDED
    );
}

#[tokio::test]
async fn a_step_to_a_service_whose_breaker_is_open_is_not_sent() {
    let (shop, url) = Shop::start().await;
    let text = CHECKOUT.replace(
        "urls = [\"{SHOP}\"]",
        "urls = [\"{SHOP}\"]\ncircuit_breaker = { consecutive_failures = 2, open_for = \"1s\" }",
    );
    let rig = Rig::start(&text, &url).await;
    // Other callers (the gateway, say) saw the service fail: the breaker,
    // which belongs to the service, is open for every caller.
    let shop_service = rig.directory.load()["shop"].clone();
    for _ in 0..2 {
        let admission = shop_service.breaker().admit().unwrap();
        shop_service.breaker().record(admission, false);
    }
    assert_eq!(shop_service.breaker().state().as_str(), "open");
    rig.engine
        .start(
            "checkout",
            Some("b".into()),
            json!({"order_id": 9, "sku": 1}),
            None,
        )
        .await
        .unwrap();
    // The first step keeps being refused by the breaker, never sent.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        shop.keys.lock().unwrap().is_empty(),
        "nothing reached the service while its breaker was open"
    );
    let run = rig.engine.get("b").await.unwrap();
    let reserve = run.steps.iter().find(|s| s.name == "reserve").unwrap();
    assert!(
        reserve
            .error
            .as_deref()
            .is_some_and(|e| e.contains("circuit breaker is open")),
        "{reserve:?}"
    );
    // After `open_for` a probe goes through; the service is fine, the
    // breaker closes and the saga goes on.
    rig.dispatch(9).await;
    rig.wait_state("b", RunState::Completed).await;
    assert_eq!(shop_service.breaker().state().as_str(), "closed");
    assert!(shop.keys.lock().unwrap().contains(&"b/reserve".to_string()));
}
