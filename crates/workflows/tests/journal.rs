//! The journal's contract: one set of tests run against both backends (the
//! embedded SQLite file and the cluster's PostgreSQL), then the run leases
//! only PostgreSQL has.
//!
//! The PostgreSQL tests need a server (`GANTRY_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`); without one they are skipped
//! with a message, except under `CI=true`.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_cluster::{PgOptions, Postgres};
use gantry_workflows::definition::{ActionDef, StepDef};
use gantry_workflows::{Definition, JournalError, Run, State, Store};
use serde_json::json;

fn step(name: &str) -> StepDef {
    StepDef {
        name: name.to_string(),
        action: ActionDef::Call {
            service: "shop".into(),
            method: "POST".into(),
            path: format!("/{name}"),
            body: Some(json!({"order": "{{ input.order }}", "n": 7, "ratio": 0.1})),
            headers: BTreeMap::new(),
        },
        compensate: Some(ActionDef::Call {
            service: "shop".into(),
            method: "DELETE".into(),
            path: format!("/{name}/{{{{ steps.{name}.output.id }}}}"),
            body: None,
            headers: BTreeMap::new(),
        }),
        max_attempts: 3,
        initial_ms: 20,
        max_ms: 50,
        multiplier: 2.0,
        timeout_ms: 1000,
        retry_on: vec![502, 503],
        success: vec![],
    }
}

fn definition(workflow: &str, steps: &[&str]) -> Definition {
    Definition {
        workflow: workflow.to_string(),
        version: 0,
        steps: steps.iter().map(|name| step(name)).collect(),
    }
}

fn run(id: &str, workflow: &str, created_ms: i64) -> Run {
    Run {
        id: id.to_string(),
        workflow: workflow.to_string(),
        version: 1,
        input: json!({"order": id, "items": [{"sku": 3, "qty": 2}], "note": null}),
        state: State::Running,
        position: 0,
        generation: 0,
        cancel_requested: false,
        error: None,
        trace: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        wait_from: BTreeMap::from([("shipment.dispatched".to_string(), 5)]),
        created_ms,
        updated_ms: created_ms,
    }
}

const LEASE: Duration = Duration::from_secs(10);

/// A fresh schema's pool, or `None` (skipped) when the server is down.
async fn pg(tag: &str) -> Option<(Postgres, PgOptions)> {
    let options = gantry_cluster::testing::fresh_schema(tag).await?;
    let pg = Postgres::connect(&options).await.unwrap();
    Some((pg, options))
}

/// Runs each contract test against both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(gantry_workflows::Store::open(dir.path()).unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((pg, _)) = super::pg(stringify!($name)).await else {
                        return;
                    };
                    let store = gantry_workflows::Store::postgres(&pg, "node-a/1", super::LEASE)
                        .await
                        .unwrap();
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    definitions_get_a_new_version_only_when_their_steps_change,
    creating_a_run_is_idempotent_on_its_id,
    runs_are_listed_counted_and_found_active,
    every_step_transition_is_journaled,
    a_state_change_keeps_the_error_unless_given_one,
    operators_retry_resume_and_cancel_runs,
    a_steps_outcome_starts_the_next_step_unless_the_run_is_to_be_cancelled,
);

async fn definitions_get_a_new_version_only_when_their_steps_change(store: Store) {
    let first = store
        .register(definition("checkout", &["reserve", "charge"]))
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    let same = store
        .register(definition("checkout", &["reserve", "charge"]))
        .await
        .unwrap();
    assert_eq!(same.version, 1, "the same steps are the same version");
    let changed = store
        .register(definition("checkout", &["reserve", "charge", "ship"]))
        .await
        .unwrap();
    assert_eq!(changed.version, 2);
    let other = store
        .register(definition("refund", &["refund"]))
        .await
        .unwrap();
    assert_eq!(other.version, 1, "versions are per workflow");

    let v1 = store.definition("checkout", 1).await.unwrap().unwrap();
    assert_eq!(
        v1,
        Definition {
            version: 1,
            ..definition("checkout", &["reserve", "charge"])
        }
    );
    let v2 = store.definition("checkout", 2).await.unwrap().unwrap();
    assert_eq!(v2.steps.len(), 3);
    assert!(store.definition("checkout", 3).await.unwrap().is_none());
    assert!(store.definition("nothing", 1).await.unwrap().is_none());
}

async fn creating_a_run_is_idempotent_on_its_id(store: Store) {
    let (created, new) = store
        .create(run("order-7", "checkout", 1000))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(created.id, "order-7");

    let mut again = run("order-7", "refund", 2000);
    again.input = json!({"other": true});
    let (existing, new) = store.create(again).await.unwrap();
    assert!(!new, "a second create with the same id creates nothing");
    assert_eq!(existing.workflow, "checkout");
    assert_eq!(existing.input, run("order-7", "checkout", 0).input);

    let got = store.get("order-7").await.unwrap().unwrap();
    assert_eq!(got.state, State::Running);
    assert_eq!(got.version, 1);
    assert_eq!((got.position, got.generation), (0, 0));
    assert!(!got.cancel_requested);
    assert_eq!(got.error, None);
    assert_eq!(got.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(got.wait_from["shipment.dispatched"], 5);
    assert_eq!((got.created_ms, got.updated_ms), (1000, 1000));
    assert!(store.get("order-8").await.unwrap().is_none());
}

async fn runs_are_listed_counted_and_found_active(store: Store) {
    store.create(run("a", "checkout", 1000)).await.unwrap();
    store.create(run("b", "checkout", 2000)).await.unwrap();
    store.create(run("c", "refund", 3000)).await.unwrap();
    store.create(run("d", "checkout", 4000)).await.unwrap();
    store.set_state("b", State::Completed, None).await.unwrap();
    store
        .set_state("c", State::NeedsAttention, Some("stuck".into()))
        .await
        .unwrap();
    store.set_state("d", State::Waiting, None).await.unwrap();

    let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list(None, None, 10).await.unwrap()),
        ["d", "c", "b", "a"]
    );
    assert_eq!(ids(store.list(None, None, 2).await.unwrap()), ["d", "c"]);
    assert_eq!(
        ids(store.list(Some(State::Completed), None, 10).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        ids(store.list(None, Some("checkout".into()), 10).await.unwrap()),
        ["d", "b", "a"]
    );
    assert!(store
        .list(Some(State::Failed), Some("checkout".into()), 10)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(store.active().await.unwrap(), ["a", "d"], "oldest first");

    let mut counts = store.open_counts().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("checkout".to_string(), "running".to_string(), 1),
            ("checkout".to_string(), "waiting".to_string(), 1),
            ("refund".to_string(), "needs_attention".to_string(), 1),
        ]
    );
}

async fn every_step_transition_is_journaled(store: Store) {
    store.create(run("r", "checkout", 1000)).await.unwrap();
    assert!(store.steps("r").await.unwrap().is_empty());

    store
        .attempt_started("r", 0, "do", "reserve", 1, 0)
        .await
        .unwrap();
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].status.as_str(), steps[0].attempts),
        ("running", 1)
    );
    assert_eq!(steps[0].name, "reserve");
    let first_start = steps[0].started_ms.unwrap();

    store
        .attempt_failed("r", 0, "do", "shop answered 503", 99_000)
        .await
        .unwrap();
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps[0].status, "retrying");
    assert_eq!(steps[0].error.as_deref(), Some("shop answered 503"));
    assert_eq!(steps[0].not_before_ms, 99_000);

    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .attempt_started("r", 0, "do", "reserve", 2, 0)
        .await
        .unwrap();
    let steps = store.steps("r").await.unwrap();
    assert_eq!(
        (steps[0].status.as_str(), steps[0].attempts),
        ("running", 2)
    );
    assert_eq!(
        steps[0].started_ms,
        Some(first_start),
        "the first start is kept"
    );
    assert_eq!(steps[0].not_before_ms, 0);

    store
        .complete_step(
            "r",
            0,
            json!({"id": "reservations-1", "n": 1.5}),
            State::Waiting,
            None,
        )
        .await
        .unwrap();
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps[0].status, "done");
    assert_eq!(
        steps[0].output,
        Some(json!({"id": "reservations-1", "n": 1.5}))
    );
    assert!(steps[0].finished_ms.is_some());
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!((got.position, got.state), (1, State::Waiting));

    store
        .attempt_started("r", 1, "do", "charge", 1, 0)
        .await
        .unwrap();
    store
        .fail_step(
            "r",
            1,
            "do",
            "declined".into(),
            State::Compensating,
            "step `charge` failed: declined".into(),
        )
        .await
        .unwrap();
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!(got.state, State::Compensating);
    assert_eq!(got.error.as_deref(), Some("step `charge` failed: declined"));
    assert_eq!(got.position, 1, "a failed step does not move the run on");

    store
        .attempt_started("r", 0, "undo", "reserve", 1, 0)
        .await
        .unwrap();
    store
        .finish("r", 0, "undo", Ok(json!({"released": true})))
        .await
        .unwrap();
    store
        .attempt_started("r", 1, "undo", "charge", 1, 0)
        .await
        .unwrap();
    store
        .finish("r", 1, "undo", Err("refund refused".into()))
        .await
        .unwrap();

    let steps = store.steps("r").await.unwrap();
    let find = |idx: usize, phase: &str| {
        steps
            .iter()
            .find(|s| s.idx == idx && s.phase == phase)
            .unwrap_or_else(|| panic!("no {idx}/{phase} in {steps:?}"))
            .clone()
    };
    assert_eq!(steps.len(), 4);
    assert_eq!(find(1, "do").status, "failed");
    assert_eq!(find(1, "do").error.as_deref(), Some("declined"));
    assert_eq!(find(0, "undo").status, "done");
    assert_eq!(find(0, "undo").output, Some(json!({"released": true})));
    assert_eq!(find(1, "undo").status, "failed");
    assert_eq!(find(1, "undo").error.as_deref(), Some("refund refused"));
    assert_eq!(find(1, "undo").output, None);
    // In the order they started.
    assert_eq!((steps[0].idx, steps[0].phase.as_str()), (0, "do"));
}

async fn a_state_change_keeps_the_error_unless_given_one(store: Store) {
    store.create(run("r", "checkout", 1000)).await.unwrap();
    store
        .set_state("r", State::Compensating, Some("step failed".into()))
        .await
        .unwrap();
    store.set_state("r", State::Failed, None).await.unwrap();
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!(got.state, State::Failed);
    assert_eq!(got.error.as_deref(), Some("step failed"));
    assert!(got.updated_ms > 1000);
}

async fn a_steps_outcome_starts_the_next_step_unless_the_run_is_to_be_cancelled(store: Store) {
    // Step 0's first attempt starts with the run.
    let (_, created) = store
        .create_starting(run("r", "checkout", 1000), Some("reserve"))
        .await
        .unwrap();
    assert!(created);
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps.len(), 1);
    let reserve = &steps[0];
    assert_eq!(
        (reserve.idx, reserve.phase.as_str(), reserve.name.as_str()),
        (0, "do", "reserve")
    );
    assert_eq!((reserve.status.as_str(), reserve.attempts), ("running", 1));
    assert_eq!(reserve.started_ms, Some(1000));
    // Creating it again starts nothing more.
    let (_, again) = store
        .create_starting(run("r", "checkout", 2000), Some("reserve"))
        .await
        .unwrap();
    assert!(!again);
    assert_eq!(store.steps("r").await.unwrap().len(), 1);

    // A step's outcome starts the next step's first attempt.
    let cancel = store
        .complete_step("r", 0, json!({"id": 1}), State::Running, Some("charge"))
        .await
        .unwrap();
    assert!(!cancel);
    let steps = store.steps("r").await.unwrap();
    let charge = steps.iter().find(|s| s.idx == 1).unwrap();
    assert_eq!(
        (
            charge.name.as_str(),
            charge.status.as_str(),
            charge.attempts
        ),
        ("charge", "running", 1)
    );
    assert_eq!(store.get("r").await.unwrap().unwrap().position, 1);

    // Once an operator asks to cancel, the outcome is kept, but the run
    // keeps its state (its driver compensates) and starts nothing more.
    store.request_cancel("r").await.unwrap();
    let cancel = store
        .complete_step("r", 1, json!({"id": 2}), State::Completed, Some("ship"))
        .await
        .unwrap();
    assert!(cancel);
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!((got.position, got.state), (2, State::Running));
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps.len(), 2, "nothing of step 2 started");
    let charge = steps.iter().find(|s| s.idx == 1).unwrap();
    assert_eq!(charge.status, "done");
    assert_eq!(charge.output, Some(json!({"id": 2})));
}

async fn operators_retry_resume_and_cancel_runs(store: Store) {
    store.create(run("r", "checkout", 1000)).await.unwrap();
    for (idx, name) in [(0, "reserve"), (1, "charge")] {
        store
            .attempt_started("r", idx, "do", name, 1, 0)
            .await
            .unwrap();
        store
            .complete_step("r", idx, json!({"id": idx}), State::Running, None)
            .await
            .unwrap();
    }
    store
        .attempt_started("r", 1, "undo", "charge", 1, 0)
        .await
        .unwrap();
    store.finish("r", 1, "undo", Ok(json!(null))).await.unwrap();
    store
        .attempt_started("r", 0, "undo", "reserve", 3, 0)
        .await
        .unwrap();
    store
        .fail_step(
            "r",
            0,
            "undo",
            "gone".into(),
            State::NeedsAttention,
            "keeps failing".into(),
        )
        .await
        .unwrap();

    // Retry: the failed compensation starts over, the done one is kept.
    store.retry("r").await.unwrap();
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!(got.state, State::Compensating);
    let steps = store.steps("r").await.unwrap();
    let kept: Vec<(usize, &str, &str)> = steps
        .iter()
        .map(|s| (s.idx, s.phase.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.contains(&(1, "undo", "done")));
    assert!(!kept.iter().any(|k| k.0 == 0 && k.1 == "undo"));

    // Resume from step 1: it runs again under the next generation.
    store.request_cancel("r").await.unwrap();
    assert!(store.get("r").await.unwrap().unwrap().cancel_requested);
    store.resume("r", 1).await.unwrap();
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!(got.state, State::Running);
    assert_eq!((got.position, got.generation), (1, 1));
    assert!(!got.cancel_requested);
    assert_eq!(got.error, None);
    let steps = store.steps("r").await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!((steps[0].idx, steps[0].phase.as_str()), (0, "do"));

    // Cancelling a parked run: only while it is parked.
    assert!(!store.cancel_parked("r", "cancelled".into()).await.unwrap());
    // The run parked earlier gave its lease up: a driver takes it again.
    assert!(store.acquire("r").await.unwrap());
    store
        .set_state("r", State::NeedsAttention, Some("stuck".into()))
        .await
        .unwrap();
    assert!(store
        .cancel_parked("r", "cancelled by an operator".into())
        .await
        .unwrap());
    let got = store.get("r").await.unwrap().unwrap();
    assert_eq!(got.state, State::Cancelled);
    assert_eq!(got.error.as_deref(), Some("cancelled by an operator"));
}

#[tokio::test]
async fn an_embedded_journal_from_before_migrations_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("workflows.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE instances (
                id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version INTEGER NOT NULL,
                input TEXT NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL DEFAULT 0,
                generation INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
                error TEXT, trace TEXT NOT NULL, wait_from TEXT NOT NULL DEFAULT '{}',
                created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
             INSERT INTO instances (id, workflow, version, input, state, trace, created_ms, updated_ms)
                VALUES ('old', 'checkout', 1, '{\"x\":1}', 'waiting', 'abc', 5, 5);",
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let old = store.get("old").await.unwrap().unwrap();
    assert_eq!(old.state, State::Waiting);
    assert_eq!(old.input, json!({"x": 1}));
    assert_eq!(store.active().await.unwrap(), ["old"]);
    assert!(store.steps("old").await.unwrap().is_empty());
    drop(store);
    // And opening it again finds it up to date.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.get("old").await.unwrap().is_some());
}

#[tokio::test]
async fn the_embedded_journal_has_no_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.lease(), None);
    store.create(run("r", "checkout", 1)).await.unwrap();
    assert!(store.acquire("r").await.unwrap());
    assert!(store.orphans(10).await.unwrap().is_empty());
    store.release("r").await.unwrap();
    assert_eq!(
        store.renew("r").await.unwrap().unwrap().state,
        State::Running
    );
}

/// Two nodes' journals on one schema.
async fn two_nodes(tag: &str, lease: Duration) -> Option<(Store, Store)> {
    let (pg, options) = pg(tag).await?;
    let a = Store::postgres(&pg, "node-a/1", lease).await.unwrap();
    // Node b has a pool of its own, as another process would.
    let pg_b = Postgres::connect(&options).await.unwrap();
    let b = Store::postgres(&pg_b, "node-b/1", lease).await.unwrap();
    Some((a, b))
}

#[tokio::test]
async fn postgres_only_the_lease_holder_may_drive_a_run() {
    let Some((a, b)) = two_nodes("leaseholder", LEASE).await else {
        return;
    };
    assert_eq!(a.lease(), Some(LEASE));
    a.create(run("r", "checkout", 1)).await.unwrap();
    // The creating node holds the new run.
    assert!(!b.acquire("r").await.unwrap());
    assert!(a.acquire("r").await.unwrap(), "the holder keeps its lease");
    assert!(b.orphans(10).await.unwrap().is_empty());
    assert_eq!(b.renew("r").await.unwrap(), None);
    let renewal = a.renew("r").await.unwrap().unwrap();
    assert_eq!(renewal.state, State::Running);
    assert!(!renewal.cancel_requested);
    // An operator's cancel on node b reaches the driver with its renewal.
    b.request_cancel("r").await.unwrap();
    assert!(a.renew("r").await.unwrap().unwrap().cancel_requested);
    // Node b's driver writes are refused.
    assert!(matches!(
        b.set_state("r", State::Failed, None).await,
        Err(JournalError::LeaseLost { .. })
    ));

    // Released (ended, parked, or its node stopping): anyone may take it.
    a.release("r").await.unwrap();
    assert_eq!(b.orphans(10).await.unwrap(), ["r"]);
    assert!(b.acquire("r").await.unwrap());
    assert!(!a.acquire("r").await.unwrap());
    assert!(b.orphans(10).await.unwrap().is_empty());

    // A run that is over is nobody's business, held or not.
    b.set_state("r", State::Completed, None).await.unwrap();
    b.release("r").await.unwrap();
    assert!(a.orphans(10).await.unwrap().is_empty());
    assert!(b.orphans(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_the_write_that_ends_or_parks_a_run_gives_its_lease_up() {
    let Some((a, b)) = two_nodes("endrelease", LEASE).await else {
        return;
    };
    // Completed by its last step's outcome: free at once.
    a.create_starting(run("done", "checkout", 1), Some("reserve"))
        .await
        .unwrap();
    assert!(!b.acquire("done").await.unwrap());
    a.complete_step("done", 0, json!({}), State::Completed, None)
        .await
        .unwrap();
    assert!(b.acquire("done").await.unwrap());
    // The old driver's release, with nothing left to give up, takes
    // nothing from the new holder.
    a.release("done").await.unwrap();
    assert!(!a.acquire("done").await.unwrap());

    // Parked by a compensation that keeps failing: free at once.
    a.create(run("parked", "checkout", 2)).await.unwrap();
    a.fail_step(
        "parked",
        0,
        "undo",
        "refused".into(),
        State::NeedsAttention,
        "needs a look".into(),
    )
    .await
    .unwrap();
    assert!(b.acquire("parked").await.unwrap());

    // A run that goes on, or is to be cancelled, keeps its driver.
    a.create(run("going", "checkout", 3)).await.unwrap();
    a.complete_step("going", 0, json!({}), State::Running, None)
        .await
        .unwrap();
    assert!(!b.acquire("going").await.unwrap());
    a.create(run("cancel", "checkout", 4)).await.unwrap();
    b.request_cancel("cancel").await.unwrap();
    assert!(a
        .complete_step("cancel", 0, json!({}), State::Completed, None)
        .await
        .unwrap());
    assert!(!b.acquire("cancel").await.unwrap());
    assert_eq!(
        a.get("cancel").await.unwrap().unwrap().state,
        State::Running
    );
}

#[tokio::test]
async fn postgres_a_lapsed_lease_is_taken_over_and_the_old_holder_is_fenced() {
    let lease = Duration::from_millis(400);
    let Some((a, b)) = two_nodes("takeover", lease).await else {
        return;
    };
    a.create(run("r", "checkout", 1)).await.unwrap();
    a.attempt_started("r", 0, "do", "reserve", 1, 0)
        .await
        .unwrap();
    assert!(b.orphans(10).await.unwrap().is_empty());
    assert!(!b.acquire("r").await.unwrap());

    // Node a stops renewing (it died, or paused).
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(b.orphans(10).await.unwrap(), ["r"]);
    assert!(b.acquire("r").await.unwrap());
    assert!(b.orphans(10).await.unwrap().is_empty());

    // Node a wakes up: it learns at its next renewal, and every write it
    // would still make in the meantime is refused.
    assert_eq!(a.renew("r").await.unwrap(), None);
    let lost = |result: Result<(), JournalError>| {
        assert!(
            matches!(&result, Err(JournalError::LeaseLost { id }) if id == "r"),
            "{result:?}"
        );
    };
    lost(
        a.complete_step("r", 0, json!({"by": "a"}), State::Running, None)
            .await
            .map(drop),
    );
    lost(a.finish("r", 0, "do", Ok(json!({"by": "a"}))).await);
    lost(a.attempt_failed("r", 0, "do", "late", 1).await);
    lost(a.attempt_started("r", 1, "do", "charge", 1, 0).await);
    lost(
        a.fail_step("r", 0, "do", "late".into(), State::Failed, "late".into())
            .await,
    );
    lost(a.set_state("r", State::Completed, None).await);
    assert!(!a.acquire("r").await.unwrap());

    // Nothing of node a's late writes landed; node b goes on.
    let got = b.get("r").await.unwrap().unwrap();
    assert_eq!((got.state, got.position), (State::Running, 0));
    let steps = b.steps("r").await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].status.as_str(), steps[0].error.as_deref()),
        ("running", None)
    );
    b.attempt_started("r", 0, "do", "reserve", 2, 0)
        .await
        .unwrap();
    b.complete_step("r", 0, json!({"by": "b"}), State::Running, None)
        .await
        .unwrap();
    let steps = a.steps("r").await.unwrap();
    assert_eq!(steps[0].output, Some(json!({"by": "b"})));
    // Node a's release cannot free node b's run.
    a.release("r").await.unwrap();
    assert!(a.orphans(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_a_takeover_waits_for_a_write_in_flight() {
    // The fence is a row lock: a takeover that races a write of the old
    // holder lands either wholly before it (and the write is refused) or
    // after it (and the write counts). Never interleaved.
    let lease = Duration::from_millis(200);
    let Some((a, b)) = two_nodes("race", lease).await else {
        return;
    };
    for i in 0..20 {
        let id = format!("r{i}");
        a.create(run(&id, "checkout", i)).await.unwrap();
        a.attempt_started(&id, 0, "do", "reserve", 1, 0)
            .await
            .unwrap();
    }
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let (a, b) = (a.clone(), b.clone());
        handles.push(tokio::spawn(async move {
            let id = format!("r{i}");
            let (write, taken) = tokio::join!(
                a.complete_step(&id, 0, json!({"by": "a"}), State::Running, None),
                b.acquire(&id),
            );
            (id, write.is_ok(), taken.unwrap())
        }));
    }
    for handle in handles {
        let (id, written, taken) = handle.await.unwrap();
        assert!(taken, "the lapsed lease is taken");
        let got = b.get(&id).await.unwrap().unwrap();
        assert_eq!(
            got.position == 1,
            written,
            "run {id}: the journal says what a was told"
        );
    }
}
