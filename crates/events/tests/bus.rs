//! The event bus end to end: a real SQLite store, a real HTTP subscriber.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use gantry_events::{DeadLetterFilter, Position, PublishError};
use serde_json::json;
use support::{event, manifest, Answer, Subscriber, TestBus};

const SECONDS_10: Duration = Duration::from_secs(10);

const BASIC: &str = r#"
[services.sub]
urls = ["{SUB}"]

[topics."order.placed"]

[[subscriptions]]
topic = "order.placed"
to = "sub:/events"
retry = { max_attempts = 3, initial = "50ms", max = "200ms" }
"#;

#[tokio::test]
async fn events_are_delivered_in_binary_mode_with_the_trace_continued() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(BASIC, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;

    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let published = bus
        .bus
        .publish(
            "order.placed",
            vec![event("e-1", json!({"order_id": "o-1"}))],
            Some(parent),
        )
        .await
        .unwrap();
    assert_eq!(published[0].seq, 1);
    assert!(!published[0].duplicate);

    let seen = sub.wait_for(1, SECONDS_10).await;
    let d = &seen[0];
    assert_eq!(d.header("ce-id"), "e-1");
    assert_eq!(d.header("ce-type"), "order.placed");
    assert_eq!(d.header("ce-source"), "/tests");
    assert_eq!(d.header("ce-specversion"), "1.0");
    assert_eq!(d.header("content-type"), "application/json");
    assert_eq!(d.header("gantry-delivery-attempt"), "1");
    assert_eq!(d.header("gantry-subscription"), "sub.order.placed");
    assert_eq!(d.header("gantry-sequence"), "1");
    assert_eq!(d.json(), json!({"order_id": "o-1"}));
    let traceparent = d.header("traceparent");
    assert!(
        traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{traceparent}"
    );
    assert_ne!(
        traceparent, parent,
        "the delivery is a new span of the same trace"
    );
    assert_eq!(d.header("ce-traceparent"), parent);
}

#[tokio::test]
async fn same_key_events_go_one_at_a_time_in_order_while_keys_run_in_parallel() {
    let sub = Subscriber::start().await;
    sub.behave(|d| {
        // Uneven service times shuffle completions across keys.
        let n = d.json()["n"].as_u64().unwrap_or(0);
        Answer::SlowOk(Duration::from_millis(2 + (n * 7) % 13))
    });
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[services.sub]
urls = ["{SUB}"]

[topics.orders]

[[subscriptions]]
topic = "orders"
to = "sub:/events"
ordering_key = "/data/order_id"
max_in_flight = 4
"#;
    let m = manifest(text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut batch = Vec::new();
    for n in 0..20 {
        for key in keys {
            batch.push(event(
                &format!("{key}-{n}"),
                json!({"order_id": key, "n": n}),
            ));
        }
    }
    bus.bus.publish("orders", batch, None).await.unwrap();

    let seen = sub.wait_for(120, SECONDS_10 * 3).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for d in &seen {
        let data = d.json();
        let key = data["order_id"].as_str().unwrap().to_string();
        let n = data["n"].as_i64().unwrap();
        let previous = last.insert(key.clone(), n).unwrap_or(-1);
        assert_eq!(n, previous + 1, "key {key}: {n} arrived after {previous}");
    }
    assert!(
        sub.max_in_flight() > 1,
        "different keys should be delivered in parallel"
    );
    assert!(
        sub.max_in_flight() <= 4,
        "max_in_flight is 4, saw {}",
        sub.max_in_flight()
    );
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_and_redrive_delivers() {
    let sub = Subscriber::start().await;
    sub.behave(|_| Answer::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[services.sub]
urls = ["{SUB}"]

[topics.orders]

[[subscriptions]]
name = "flaky"
topic = "orders"
to = "sub:/events"
retry = { max_attempts = 4, initial = "100ms", max = "300ms", multiplier = 2 }
"#;
    let m = manifest(text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    bus.bus
        .publish("orders", vec![event("poison", json!({"n": 1}))], None)
        .await
        .unwrap();

    let seen = sub.wait_for(4, SECONDS_10).await;
    let attempts: Vec<String> = seen
        .iter()
        .map(|d| d.header("gantry-delivery-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    // Waits are between half and all of 100ms, 200ms, 300ms (capped).
    for (i, ceiling) in [100u64, 200, 300].into_iter().enumerate() {
        let gap = seen[i + 1].at - seen[i].at;
        assert!(
            gap >= Duration::from_millis(ceiling / 2 - 5),
            "gap {i} was {gap:?}"
        );
        assert!(
            gap <= Duration::from_millis(ceiling + 1000),
            "gap {i} was {gap:?}"
        );
    }

    // It lands in the dead-letter queue with the last error.
    let letters = wait_for_letters(&bus, "flaky", 1).await;
    assert_eq!(letters[0].attempts, 4);
    assert!(
        letters[0].last_error.contains("500"),
        "{}",
        letters[0].last_error
    );
    let stored: serde_json::Value = serde_json::from_slice(&letters[0].event).unwrap();
    assert_eq!(stored["id"], "poison");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sub.seen().len(), 4, "no attempts after the last one");

    // Fixed subscriber, redrive: delivered, the queue is empty.
    sub.behave(|_| Answer::Status(204));
    let redriven = bus
        .bus
        .redrive(
            "flaky",
            DeadLetterFilter {
                seqs: vec![1],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    let seen = sub.wait_for(5, SECONDS_10).await;
    assert_eq!(seen[4].header("ce-id"), "poison");
    assert_eq!(seen[4].header("gantry-delivery-attempt"), "1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bus
        .bus
        .dead_letters("flaky", DeadLetterFilter::default(), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn wait_for_letters(bus: &TestBus, name: &str, n: usize) -> Vec<gantry_events::DeadLetter> {
    for _ in 0..500 {
        let letters = bus
            .bus
            .dead_letters(name, DeadLetterFilter::default(), 100)
            .await
            .unwrap();
        if letters.len() >= n {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} dead letters in `{name}`");
}

#[tokio::test]
async fn purge_removes_only_the_selected_dead_letters() {
    let sub = Subscriber::start().await;
    sub.behave(|_| Answer::Status(400));
    let dir = tempfile::tempdir().unwrap();
    let text = BASIC.replace("max_attempts = 3", "max_attempts = 1");
    let m = manifest(&text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let events = (0..3)
        .map(|i| event(&format!("e{i}"), json!({"i": i})))
        .collect();
    bus.bus.publish("order.placed", events, None).await.unwrap();
    wait_for_letters(&bus, "sub.order.placed", 3).await;
    let purged = bus
        .bus
        .purge(
            "sub.order.placed",
            DeadLetterFilter {
                seqs: vec![2],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let left: Vec<u64> = bus
        .bus
        .dead_letters("sub.order.placed", DeadLetterFilter::default(), 10)
        .await
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(left, [1, 3]);

    // Selections by type and by error text.
    let by = |event_type: Option<&str>, error: Option<&str>| DeadLetterFilter {
        seqs: Vec::new(),
        event_type: event_type.map(str::to_string),
        error_contains: error.map(str::to_string),
    };
    let list = |filter| async {
        bus.bus
            .dead_letters("sub.order.placed", filter, 10)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(list(by(Some("order.placed"), None)).await, 2);
    assert_eq!(list(by(Some("order.paid"), None)).await, 0);
    assert_eq!(list(by(None, Some("400"))).await, 2);
    assert_eq!(list(by(None, Some("no such text"))).await, 0);
    assert_eq!(
        bus.bus
            .dead_letters("sub.order.placed", DeadLetterFilter::default(), 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_hanging_key_does_not_block_other_keys_or_subscriptions() {
    let sub = Subscriber::start().await;
    sub.behave(|d| {
        if d.json()["order_id"] == "stuck" {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[services.sub]
urls = ["{SUB}"]

[topics.orders]

[[subscriptions]]
name = "ordered"
topic = "orders"
to = "sub:/ordered"
ordering_key = "/data/order_id"
timeout = "300ms"
retry = { max_attempts = 100, initial = "1s", max = "5s" }

[[subscriptions]]
name = "other"
topic = "orders"
to = "sub:/other"
filter = { type = "order.*" }
"#;
    let m = manifest(text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let mut batch = vec![
        event("s1", json!({"order_id": "stuck"})),
        event("s2", json!({"order_id": "stuck"})),
    ];
    for i in 0..10 {
        batch.push(event(
            &format!("ok{i}"),
            json!({"order_id": format!("k{i}")}),
        ));
    }
    bus.bus.publish("orders", batch, None).await.unwrap();
    // 1 stuck attempt on `ordered` + its 10 others, and all 12 on `other`.
    sub.wait_for(23, SECONDS_10).await;
    let seen = sub.seen();
    let on = |path: &str| {
        seen.iter()
            .filter(|d| d.header("gantry-subscription") == path)
            .count()
    };
    assert_eq!(on("other"), 12);
    assert!(on("ordered") >= 11);
    // The second `stuck` event waits behind the first.
    assert!(!seen
        .iter()
        .any(|d| d.header("ce-id") == "s2" && d.header("gantry-subscription") == "ordered"));
}

#[tokio::test]
async fn duplicates_within_the_dedup_window_are_stored_once() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(BASIC, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let first = bus
        .bus
        .publish("order.placed", vec![event("same", json!({}))], None)
        .await
        .unwrap();
    let again = bus
        .bus
        .publish(
            "order.placed",
            vec![event("same", json!({})), event("other", json!({}))],
            None,
        )
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(again[0].duplicate);
    assert_eq!(again[0].seq, first[0].seq);
    assert_eq!(again[1].seq, 2);
    sub.wait_for(2, SECONDS_10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.seen().len(), 2);
}

#[tokio::test]
async fn events_that_break_the_schema_are_refused_with_the_field() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("order.json"),
        r#"{"type": "object", "required": ["order_id", "total"],
            "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0}}}"#,
    )
    .unwrap();
    let text = BASIC.replace(
        "[topics.\"order.placed\"]",
        "[topics.\"order.placed\"]\nschema = \"order.json\"",
    );
    let m = manifest(&text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let good = event("ok", json!({"order_id": "o-1", "total": 10}));
    let bad = event("bad", json!({"order_id": "o-2", "total": "ten"}));
    let error = bus
        .bus
        .publish("order.placed", vec![good, bad], None)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, PublishError::Schema { index: 2, .. }),
        "{message}"
    );
    assert!(message.contains("/data/total"), "{message}");
    assert!(message.contains("`bad`"), "{message}");
    // Nothing of the refused batch was stored.
    let stats = bus.bus.broker().topic_stats().await.unwrap();
    assert_eq!(stats[0].last_seq, 0);
}

#[tokio::test]
async fn a_breaking_schema_change_is_refused_with_a_diff_and_a_compatible_one_registers() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"order_id": {"type": "string"}}}"#,
    )
    .unwrap();
    let text = BASIC.replace(
        "[topics.\"order.placed\"]",
        "[topics.\"order.placed\"]\nschema = \"order.json\"",
    );
    let m = manifest(&text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;

    // Making a field required breaks old events.
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["email"], "properties": {"order_id": {"type": "string"}, "email": {"type": "string"}}}"#,
    )
    .unwrap();
    let error = bus.bus.apply(&m).await.unwrap_err();
    assert!(error.contains("/email"), "{error}");
    assert!(error.contains("required"), "{error}");
    assert!(error.contains("version 1 stays registered"), "{error}");

    // Adding an optional field is fine.
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"order_id": {"type": "string"}, "email": {"type": "string"}}}"#,
    )
    .unwrap();
    let report = bus.bus.apply(&m).await.unwrap();
    assert_eq!(report.schemas_registered, ["order.placed v2"]);
    let versions = bus
        .bus
        .broker()
        .schema_versions("order.placed")
        .await
        .unwrap();
    assert_eq!(versions.len(), 2);
}

#[tokio::test]
async fn seeking_back_replays_and_seeking_ahead_skips() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(BASIC, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let events = (0..5)
        .map(|i| event(&format!("e{i}"), json!({"i": i})))
        .collect();
    bus.bus.publish("order.placed", events, None).await.unwrap();
    sub.wait_for(5, SECONDS_10).await;

    let next = bus
        .bus
        .seek("sub.order.placed", Position::Seq(3))
        .await
        .unwrap();
    assert_eq!(next, 3);
    let seen = sub.wait_for(8, SECONDS_10).await;
    let replayed: Vec<String> = seen[5..].iter().map(|d| d.header("ce-id")).collect();
    assert_eq!(replayed, ["e2", "e3", "e4"]);

    let next = bus
        .bus
        .seek("sub.order.placed", Position::Earliest)
        .await
        .unwrap();
    assert_eq!(next, 1);
    sub.wait_for(13, SECONDS_10).await;

    let next = bus
        .bus
        .seek("sub.order.placed", Position::Latest)
        .await
        .unwrap();
    assert_eq!(next, 6);
    let unknown = bus.bus.seek("nope", Position::Latest).await.unwrap_err();
    assert!(
        unknown.to_string().contains("unknown subscription `nope`"),
        "{unknown}"
    );
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let sub = Subscriber::start().await;
    sub.behave(|_| Answer::Status(503));
    let dir = tempfile::tempdir().unwrap();
    let text = BASIC.replace("max_attempts = 3", "max_attempts = 50");
    let m = manifest(&text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let events = (0..20)
        .map(|i| event(&format!("e{i}"), json!({"i": i})))
        .collect();
    bus.bus.publish("order.placed", events, None).await.unwrap();
    sub.wait_for(1, SECONDS_10).await;

    let bus = bus.restart(&m).await;
    sub.behave(|_| Answer::Status(200));
    bus.bus
        .publish("order.placed", vec![event("after", json!({}))], None)
        .await
        .unwrap();
    // Every event arrives with a 2xx after the restart.
    let deadline = std::time::Instant::now() + SECONDS_10;
    loop {
        let acked: std::collections::HashSet<String> =
            sub.seen().iter().map(|d| d.header("ce-id")).collect();
        if acked.len() == 21 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} distinct events",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_subscription_filter_passes_over_other_events() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = BASIC.replace(
        "to = \"sub:/events\"",
        "to = \"sub:/events\"\nfilter = { type = \"order.paid\" }",
    );
    let m = manifest(&text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    let mut paid = event("p", json!({}));
    paid = gantry_events::CloudEvent::from_json({
        let mut v = serde_json::Value::Object(paid.as_map().clone());
        v["type"] = json!("order.paid");
        v
    })
    .unwrap();
    bus.bus
        .publish(
            "order.placed",
            vec![event("x", json!({})), paid, event("y", json!({}))],
            None,
        )
        .await
        .unwrap();
    let seen = sub.wait_for(1, SECONDS_10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.seen().len(), 1);
    assert_eq!(seen[0].header("ce-id"), "p");
}

#[tokio::test]
async fn the_outbox_relays_each_row_once_in_order_across_restarts() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE gantry_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, event TEXT NOT NULL);
         CREATE TABLE orders (id TEXT PRIMARY KEY);",
    )
    .unwrap();
    // A dedup window of 1ms: a row relayed twice would be stored twice.
    let basic = BASIC.replace(
        "[topics.\"order.placed\"]",
        "[topics.\"order.placed\"]\ndedup_window = \"1ms\"",
    );
    let text = format!(
        "{basic}\n[services.orders]\nurls = [\"{{SUB}}\"]\noutbox = {{ database = \"orders.db\", poll = \"20ms\" }}\n"
    );
    let m = manifest(&text, &sub, dir.path());
    let mut bus = TestBus::start(&m, dir).await;

    let writer = std::thread::spawn(move || {
        for i in 0..200 {
            // The state change and its event commit together.
            let tx = conn.unchecked_transaction().unwrap();
            tx.execute("INSERT INTO orders (id) VALUES (?1)", [format!("o-{i}")])
                .unwrap();
            let event = json!({"specversion": "1.0", "id": format!("o-{i}"), "source": "/orders",
                               "type": "order.placed", "data": {"i": i}});
            tx.execute(
                "INSERT INTO gantry_outbox (topic, event) VALUES ('order.placed', ?1)",
                [event.to_string()],
            )
            .unwrap();
            tx.commit().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    // Restart the bus twice while rows are being written.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        bus = bus.restart(&m).await;
    }
    writer.join().unwrap();

    // The topic holds each row exactly once, in order (with a 1ms dedup
    // window, a second relay of a row would show here).
    let deadline = std::time::Instant::now() + SECONDS_10;
    let stored = loop {
        let stored = bus
            .bus
            .broker()
            .read("order.placed", 1, 1000)
            .await
            .unwrap();
        if stored.len() >= 200 || std::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<i64> = stored
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.json).unwrap()["data"]["i"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (0..200).collect::<Vec<_>>(), "each row once, in order");
    // And the subscriber got every one of them.
    let seen = sub.wait_for(200, SECONDS_10).await;
    let distinct: std::collections::HashSet<String> =
        seen.iter().map(|d| d.header("ce-id")).collect();
    assert_eq!(distinct.len(), 200);
    // Relayed rows are removed from the service's table (after they are
    // published, so possibly a moment after their delivery).
    let conn = rusqlite::Connection::open(bus.dir.path().join("orders.db")).unwrap();
    let deadline = std::time::Instant::now() + SECONDS_10;
    loop {
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM gantry_outbox", [], |r| r.get(0))
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} rows never left the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failing_key_with_a_long_backlog_does_not_stall_the_other_keys() {
    let sub = Subscriber::start().await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    sub.behave(move |d| {
        if d.json()["order_id"] == "stuck" && flag.load(std::sync::atomic::Ordering::Relaxed) {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[services.sub]
urls = ["{SUB}"]

[topics.orders]

[[subscriptions]]
name = "ordered"
topic = "orders"
to = "sub:/events"
ordering_key = "/data/order_id"
retry = { max_attempts = 1000, initial = "50ms", max = "100ms" }
"#;
    let m = manifest(text, &sub, dir.path());
    let bus = TestBus::start(&m, dir).await;
    // 400 events of one key that keeps failing: more than the window holds.
    let stuck = (0..400)
        .map(|n| event(&format!("s{n}"), json!({"order_id": "stuck", "n": n})))
        .collect();
    bus.bus.publish("orders", stuck, None).await.unwrap();
    let others = (0..10)
        .map(|n| event(&format!("o{n}"), json!({"order_id": format!("k{n}")})))
        .collect();
    bus.bus.publish("orders", others, None).await.unwrap();

    let deadline = std::time::Instant::now() + SECONDS_10;
    loop {
        let delivered = sub
            .seen()
            .iter()
            .filter(|d| d.header("ce-id").starts_with('o'))
            .count();
        if delivered == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "other keys stalled: {delivered} of 10"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Once the key recovers, its whole backlog goes, in order.
    failing.store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + SECONDS_10 * 3;
    loop {
        let acked: Vec<i64> = sub
            .seen()
            .iter()
            .filter(|d| d.header("ce-id").starts_with('s'))
            .map(|d| d.json()["n"].as_i64().unwrap())
            .collect();
        let mut last = -1;
        let mut ordered = true;
        for n in &acked {
            // Retries repeat a number; a step back would be a reorder.
            ordered &= *n >= last;
            last = last.max(*n);
        }
        assert!(ordered, "the stuck key's events went out of order");
        if last == 399 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog drained only to {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
