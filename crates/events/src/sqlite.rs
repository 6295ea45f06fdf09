//! The embedded broker: one SQLite database (`events.db` in the data
//! directory) in WAL mode. With `events_sync = "always"` (the default,
//! `synchronous = FULL`) a publish that was acknowledged survives `kill -9`
//! and power loss alike; with `"batch"` (`synchronous = NORMAL`: commits go
//! to the WAL without an fsync, which happens at checkpoints) it survives
//! `kill -9`, but a machine crash can lose the last commits.
//!
//! One thread owns the connection and runs every operation. It takes all
//! the operations that are waiting, runs them in one transaction (each in
//! its own savepoint, so one failure does not undo the others) and commits
//! once: a group commit. Under load, hundreds of publishes and acks share a
//! single fsync, which is where the throughput comes from; alone, an
//! operation pays one commit as it would anyway.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use gantry_manifest::EventsSync;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::{
    Broker, BrokerError, Claim, DeadLetter, DeadLetterFilter, EventFilter, NewEvent, Pending,
    Position, Published, RelayedEvent, SchemaVersion, Seq, StoredEvent, SubscriptionStats,
    TopicStats,
};

/// Operations that may share one transaction.
const MAX_BATCH: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    published_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    json BLOB NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (topic, published_ms);
CREATE TABLE IF NOT EXISTS dedup (
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, source, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_by_age ON dedup (topic, at_ms);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS pending (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    subscription TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    published_ms INTEGER NOT NULL,
    dead_at_ms INTEGER NOT NULL,
    json BLOB NOT NULL,
    PRIMARY KEY (subscription, seq)
);
CREATE TABLE IF NOT EXISTS schemas (
    topic TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, version)
);
CREATE TABLE IF NOT EXISTS relays (
    name TEXT PRIMARY KEY,
    last_row INTEGER NOT NULL
);
";

/// Runs after the transaction that held the job commits (or fails to).
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A unit of work for the writer thread.
type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;

/// The embedded, durable broker.
#[derive(Clone)]
pub struct SqliteBroker {
    jobs: mpsc::Sender<Job>,
    watchers: Arc<Mutex<HashMap<String, watch::Sender<Seq>>>>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker").finish_non_exhaustive()
    }
}

impl SqliteBroker {
    /// Opens (or creates) `events.db` in `data_dir` and starts its writer
    /// thread; `sync` says when a commit is on disk.
    pub fn open(data_dir: &Path, sync: EventsSync) -> Result<SqliteBroker, String> {
        let path = data_dir.join("events.db");
        let conn = Connection::open(&path)
            .map_err(|e| format!("cannot open the event store {}: {e}", path.display()))?;
        let synchronous = match sync {
            EventsSync::Always => "FULL",
            EventsSync::Batch => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
        ))
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(|e| format!("cannot prepare the event store {}: {e}", path.display()))?;
        let (jobs, rx) = mpsc::channel(8 * MAX_BATCH);
        std::thread::Builder::new()
            .name("gantry-events-db".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| format!("cannot start the event store thread: {e}"))?;
        Ok(SqliteBroker {
            jobs,
            watchers: Arc::default(),
        })
    }

    /// Runs `work` on the writer thread; resolves once its transaction committed.
    async fn call<T, W>(&self, work: W) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call_then(work, |_| {}).await
    }

    /// Like [`Self::call`], running `after` once the result is durable.
    async fn call_then<T, W, A>(&self, work: W, after: A) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = in_savepoint(conn, work);
            Box::new(move |committed: Result<(), String>| {
                let outcome = match (committed, outcome) {
                    (Ok(()), Ok(value)) => {
                        after(&value);
                        Ok(value)
                    }
                    (Err(e), _) => Err(BrokerError::Storage(e)),
                    (_, Err(e)) => Err(e),
                };
                let _ = reply.send(outcome);
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?;
        result
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?
    }

    fn notify(watchers: &Mutex<HashMap<String, watch::Sender<Seq>>>, topic: &str, seq: Seq) {
        let watchers = watchers.lock().expect("watchers lock");
        if let Some(sender) = watchers.get(topic) {
            sender.send_replace(seq);
        }
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, BrokerError> {
    let storage = |e: rusqlite::Error| BrokerError::Storage(e.to_string());
    // Prepared once per connection: these run for every operation.
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    run("SAVEPOINT job").map_err(storage)?;
    match work(conn) {
        Ok(value) => {
            run("RELEASE job").map_err(storage)?;
            Ok(value)
        }
        Err(error) => {
            let _ = run("ROLLBACK TO job").and_then(|_| run("RELEASE job"));
            Err(storage(error))
        }
    }
}

/// The writer thread: group commits until every sender is gone.
fn run_writer(conn: Connection, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        // A job that runs with no batch transaction around it (BEGIN failed,
        // or an error made SQLite roll the batch back) commits on its own
        // when its savepoint is released: its own result is its outcome.
        let finishes: Vec<(bool, Finish)> = batch
            .into_iter()
            .map(|job| (conn.is_autocommit(), job(&conn)))
            .collect();
        let committed = begun
            .and_then(|_| conn.execute_batch("COMMIT"))
            .map_err(|e| e.to_string());
        if let Err(error) = &committed {
            tracing::error!(target: "gantry::events", %error, "event store commit failed; the operations are refused");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for (alone, finish) in finishes {
            finish(if alone { Ok(()) } else { committed.clone() });
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends to a topic inside the current transaction.
fn append(
    conn: &Connection,
    topic: &str,
    events: Vec<NewEvent>,
    dedup_window: Duration,
) -> rusqlite::Result<Vec<Published>> {
    let now = now_ms();
    let window_start = now - dedup_window.as_millis() as i64;
    conn.prepare_cached("INSERT INTO topics (name) VALUES (?1) ON CONFLICT DO NOTHING")?
        .execute([topic])?;
    let mut last: Seq = conn
        .prepare_cached("SELECT last_seq FROM topics WHERE name = ?1")?
        .query_row([topic], |r| r.get(0))?;
    let mut out = Vec::with_capacity(events.len());
    let mut seen = conn.prepare_cached(
        "SELECT seq, at_ms FROM dedup WHERE topic = ?1 AND source = ?2 AND id = ?3",
    )?;
    let mut remember = conn.prepare_cached(
        "INSERT INTO dedup (topic, source, id, seq, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (topic, seq, published_ms, size, json) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for event in events {
        if !dedup_window.is_zero() {
            let earlier: Option<(Seq, i64)> = seen
                .query_row(params![topic, event.source, event.id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((seq, at)) = earlier {
                if at >= window_start {
                    out.push(Published {
                        seq,
                        duplicate: true,
                    });
                    continue;
                }
            }
        }
        last += 1;
        insert.execute(params![
            topic,
            last,
            now,
            event.json.len() as i64,
            &event.json[..]
        ])?;
        if !dedup_window.is_zero() {
            remember.execute(params![topic, event.source, event.id, last, now])?;
        }
        out.push(Published {
            seq: last,
            duplicate: false,
        });
    }
    conn.prepare_cached("UPDATE topics SET last_seq = ?2 WHERE name = ?1")?
        .execute(params![topic, last])?;
    Ok(out)
}

fn last_seq(conn: &Connection, topic: &str) -> rusqlite::Result<Seq> {
    Ok(conn
        .prepare_cached("SELECT last_seq FROM topics WHERE name = ?1")?
        .query_row([topic], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn resolve_position(conn: &Connection, topic: &str, position: Position) -> rusqlite::Result<Seq> {
    let next = last_seq(conn, topic)? + 1;
    let first: Option<Seq> = match position {
        Position::Latest => return Ok(next),
        Position::Seq(seq) => return Ok(seq.clamp(1, next)),
        Position::Earliest => conn
            .prepare_cached("SELECT MIN(seq) FROM events WHERE topic = ?1")?
            .query_row([topic], |r| r.get(0))?,
        Position::Time(time) => conn
            .prepare_cached("SELECT MIN(seq) FROM events WHERE topic = ?1 AND published_ms >= ?2")?
            .query_row(params![topic, to_ms(time)], |r| r.get(0))?,
    };
    Ok(first.unwrap_or(next))
}

fn subscription_topic(conn: &Connection, name: &str) -> Result<(String, Seq), BrokerError> {
    conn.prepare_cached("SELECT topic, next_seq FROM subscriptions WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| BrokerError::Storage(e.to_string()))?
        .ok_or_else(|| BrokerError::UnknownSubscription(name.to_string()))
}

fn pending_rows(
    conn: &Connection,
    subscription: &str,
    seqs: Option<&[Seq]>,
) -> rusqlite::Result<Vec<Pending>> {
    let mut statement = conn.prepare_cached(
        "SELECT p.seq, p.attempts, p.not_before_ms, p.last_error, e.topic, e.published_ms, e.json
         FROM pending p JOIN subscriptions s ON s.name = p.subscription
         JOIN events e ON e.topic = s.topic AND e.seq = p.seq
         WHERE p.subscription = ?1 ORDER BY p.seq",
    )?;
    let rows = statement.query_map([subscription], |r| {
        Ok(Pending {
            attempts: r.get(1)?,
            not_before_ms: r.get(2)?,
            last_error: r.get(3)?,
            event: StoredEvent {
                seq: r.get(0)?,
                topic: Arc::from(r.get::<_, String>(4)?),
                published_ms: r.get(5)?,
                json: Bytes::from(r.get::<_, Vec<u8>>(6)?),
            },
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if seqs.is_none_or(|wanted| wanted.contains(&row.event.seq)) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Dead letters of a subscription that match `filter`, oldest first; the
/// filter runs in SQL so a long queue is not read whole.
fn dead_letter_rows(
    conn: &Connection,
    subscription: &str,
    filter: &DeadLetterFilter,
    limit: Option<usize>,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let seqs = (!filter.seqs.is_empty())
        .then(|| serde_json::to_string(&filter.seqs).expect("numbers serialize"));
    let mut statement = conn.prepare_cached(
        "SELECT seq, topic, attempts, last_error, published_ms, dead_at_ms, json
         FROM dead_letters WHERE subscription = ?1
           AND (?2 IS NULL OR seq IN (SELECT value FROM json_each(?2)))
           AND (?3 IS NULL OR instr(last_error, ?3) > 0)
           AND (?4 IS NULL OR json_extract(CAST(json AS TEXT), '$.type') = ?4)
         ORDER BY seq LIMIT ?5",
    )?;
    let limit = limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
    let rows = statement.query_map(
        params![
            subscription,
            seqs,
            filter.error_contains,
            filter.event_type,
            limit
        ],
        |r| {
            Ok(DeadLetter {
                subscription: subscription.to_string(),
                seq: r.get(0)?,
                topic: r.get(1)?,
                attempts: r.get(2)?,
                last_error: r.get(3)?,
                published_ms: r.get(4)?,
                dead_at_ms: r.get(5)?,
                event: Bytes::from(r.get::<_, Vec<u8>>(6)?),
            })
        },
    )?;
    rows.collect()
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn create_topic(&self, topic: &str) -> Result<(), BrokerError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO topics (name) VALUES (?1) ON CONFLICT DO NOTHING",
                [topic],
            )
            .map(|_| ())
        })
        .await
    }

    async fn publish(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
        dedup_window: Duration,
    ) -> Result<Vec<Published>, BrokerError> {
        let name = topic.to_string();
        let watchers = self.watchers.clone();
        let notify_topic = name.clone();
        self.call_then(
            move |conn| append(conn, &name, events, dedup_window),
            move |published: &Vec<Published>| {
                if let Some(last) = published.iter().map(|p| p.seq).max() {
                    SqliteBroker::notify(&watchers, &notify_topic, last);
                }
            },
        )
        .await
    }

    async fn publish_relayed(
        &self,
        relay: &str,
        last_row: i64,
        events: Vec<RelayedEvent>,
    ) -> Result<Vec<(String, Published)>, BrokerError> {
        let relay = relay.to_string();
        let watchers = self.watchers.clone();
        let outcomes = self
            .call(move |conn| {
                let mut outcomes = Vec::with_capacity(events.len());
                for relayed in events {
                    let published = append(
                        conn,
                        &relayed.topic,
                        vec![relayed.event],
                        relayed.dedup_window,
                    )?;
                    outcomes.push((relayed.topic, published[0]));
                }
                conn.prepare_cached(
                    "INSERT INTO relays (name, last_row) VALUES (?1, ?2)
                     ON CONFLICT DO UPDATE SET last_row = excluded.last_row",
                )?
                .execute(params![relay, last_row])?;
                Ok(outcomes)
            })
            .await?;
        let mut newest: HashMap<&str, Seq> = HashMap::new();
        for (topic, published) in &outcomes {
            let seq = newest.entry(topic.as_str()).or_default();
            *seq = (*seq).max(published.seq);
        }
        for (topic, seq) in newest {
            SqliteBroker::notify(&watchers, topic, seq);
        }
        Ok(outcomes)
    }

    async fn last_seq(&self, topic: &str) -> Result<Seq, BrokerError> {
        let topic = topic.to_string();
        self.call(move |conn| last_seq(conn, &topic)).await
    }

    async fn relay_position(&self, relay: &str) -> Result<i64, BrokerError> {
        let relay = relay.to_string();
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT last_row FROM relays WHERE name = ?1",
                    [relay],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0))
        })
        .await
    }

    async fn read(
        &self,
        topic: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, BrokerError> {
        let topic: Arc<str> = Arc::from(topic);
        self.call(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, published_ms, json FROM events WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![&*topic, from, limit as i64], |r| {
                Ok(StoredEvent {
                    topic: topic.clone(),
                    seq: r.get(0)?,
                    published_ms: r.get(1)?,
                    json: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn open_subscription(
        &self,
        name: &str,
        topic: &str,
        start: Position,
    ) -> Result<(), BrokerError> {
        let (name, topic) = (name.to_string(), topic.to_string());
        self.call(move |conn| {
            let existing: Option<String> = conn
                .query_row("SELECT topic FROM subscriptions WHERE name = ?1", [&name], |r| r.get(0))
                .optional()?;
            match existing {
                Some(old) if old == topic => {
                    conn.execute("UPDATE subscriptions SET active = 1 WHERE name = ?1", [&name])?;
                }
                // The name now reads another topic: start over there.
                Some(_) => {
                    let next = resolve_position(conn, &topic, start)?;
                    conn.execute("DELETE FROM pending WHERE subscription = ?1", [&name])?;
                    conn.execute(
                        "UPDATE subscriptions SET topic = ?2, next_seq = ?3, active = 1 WHERE name = ?1",
                        params![name, topic, next],
                    )?;
                }
                None => {
                    let next = resolve_position(conn, &topic, start)?;
                    conn.execute(
                        "INSERT INTO subscriptions (name, topic, next_seq) VALUES (?1, ?2, ?3)",
                        params![name, topic, next],
                    )?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn retain_subscriptions(&self, active: Vec<String>) -> Result<(), BrokerError> {
        self.call(move |conn| {
            let names: Vec<String> = conn
                .prepare("SELECT name FROM subscriptions")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for name in names {
                let is_active = active.contains(&name);
                conn.execute(
                    "UPDATE subscriptions SET active = ?2 WHERE name = ?1",
                    params![name, is_active],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn pending(&self, subscription: &str) -> Result<Vec<Pending>, BrokerError> {
        let name = subscription.to_string();
        self.call(move |conn| pending_rows(conn, &name, None)).await
    }

    async fn claim(
        &self,
        subscription: &str,
        limit: usize,
        filter: Arc<dyn EventFilter>,
    ) -> Result<Claim, BrokerError> {
        let name = subscription.to_string();
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = match subscription_topic(conn, &name) {
                Err(e) => Err(e),
                Ok((topic, next)) => in_savepoint(conn, |conn| {
                    let topic: Arc<str> = Arc::from(topic);
                    let events: Vec<StoredEvent> = conn
                        .prepare_cached(
                            "SELECT seq, published_ms, json FROM events
                             WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                        )?
                        .query_map(params![&*topic, next, limit as i64], |r| {
                            Ok(StoredEvent {
                                topic: topic.clone(),
                                seq: r.get(0)?,
                                published_ms: r.get(1)?,
                                json: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                            })
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let caught_up = events.len() < limit;
                    let Some(last) = events.last().map(|e| e.seq) else {
                        return Ok(Claim {
                            pending: Vec::new(),
                            caught_up,
                        });
                    };
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO pending (subscription, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    )?;
                    let mut claimed = Vec::with_capacity(events.len());
                    for event in events {
                        if filter.wants(&event.json) {
                            insert.execute(params![name, event.seq])?;
                            claimed.push(Pending {
                                event,
                                attempts: 0,
                                not_before_ms: 0,
                                last_error: None,
                            });
                        }
                    }
                    conn.prepare_cached("UPDATE subscriptions SET next_seq = ?2 WHERE name = ?1")?
                        .execute(params![name, last + 1])?;
                    Ok(Claim {
                        pending: claimed,
                        caught_up,
                    })
                }),
            };
            Box::new(move |committed: Result<(), String>| {
                let _ = reply.send(match committed {
                    Ok(()) => outcome,
                    Err(e) => Err(BrokerError::Storage(e)),
                });
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?;
        result
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?
    }

    async fn ack(&self, subscription: &str, seq: Seq) -> Result<(), BrokerError> {
        let name = subscription.to_string();
        self.call(move |conn| {
            conn.prepare_cached("DELETE FROM pending WHERE subscription = ?1 AND seq = ?2")?
                .execute(params![name, seq])
                .map(|_| ())
        })
        .await
    }

    async fn retry_later(
        &self,
        subscription: &str,
        seq: Seq,
        attempts: u32,
        not_before_ms: i64,
        error: &str,
    ) -> Result<(), BrokerError> {
        let (name, error) = (subscription.to_string(), error.to_string());
        self.call(move |conn| {
            conn.prepare_cached(
                "UPDATE pending SET attempts = ?3, not_before_ms = ?4, last_error = ?5
                 WHERE subscription = ?1 AND seq = ?2",
            )?
            .execute(params![name, seq, attempts, not_before_ms, error])
            .map(|_| ())
        })
        .await
    }

    async fn dead_letter(
        &self,
        subscription: &str,
        seq: Seq,
        attempts: u32,
        error: &str,
    ) -> Result<(), BrokerError> {
        let (name, error) = (subscription.to_string(), error.to_string());
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO dead_letters (subscription, seq, topic, attempts, last_error, published_ms, dead_at_ms, json)
                 SELECT ?1, e.seq, e.topic, ?3, ?4, e.published_ms, ?5, e.json
                 FROM subscriptions s JOIN events e ON e.topic = s.topic AND e.seq = ?2
                 WHERE s.name = ?1
                 ON CONFLICT DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error,
                    dead_at_ms = excluded.dead_at_ms",
                params![name, seq, attempts, error, now_ms()],
            )?;
            conn.execute(
                "DELETE FROM pending WHERE subscription = ?1 AND seq = ?2",
                params![name, seq],
            )
            .map(|_| ())
        })
        .await
    }

    async fn seek(&self, subscription: &str, position: Position) -> Result<Seq, BrokerError> {
        let name = subscription.to_string();
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = subscription_topic(conn, &name).and_then(|(topic, _)| {
                in_savepoint(conn, |conn| {
                    let next = resolve_position(conn, &topic, position)?;
                    conn.execute("DELETE FROM pending WHERE subscription = ?1", [&name])?;
                    conn.execute(
                        "UPDATE subscriptions SET next_seq = ?2 WHERE name = ?1",
                        params![name, next],
                    )?;
                    Ok(next)
                })
            });
            Box::new(move |committed: Result<(), String>| {
                let _ = reply.send(committed.map_err(BrokerError::Storage).and(outcome));
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?;
        result
            .await
            .map_err(|_| BrokerError::Storage("the event store has stopped".into()))?
    }

    async fn dead_letters(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let name = subscription.to_string();
        self.call(move |conn| dead_letter_rows(conn, &name, &filter, Some(limit)))
            .await
    }

    async fn redrive(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
    ) -> Result<Vec<Pending>, BrokerError> {
        let name = subscription.to_string();
        self.call(move |conn| {
            let letters = dead_letter_rows(conn, &name, &filter, None)?;
            let mut out = Vec::with_capacity(letters.len());
            for letter in letters {
                // The topic may have dropped the event by now (retention): put
                // it back so the pending row has an event to point at.
                conn.execute(
                    "INSERT INTO events (topic, seq, published_ms, size, json) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT DO NOTHING",
                    params![letter.topic, letter.seq, letter.published_ms, letter.event.len() as i64, &letter.event[..]],
                )?;
                conn.execute(
                    "INSERT INTO pending (subscription, seq) VALUES (?1, ?2)
                     ON CONFLICT DO UPDATE SET attempts = 0, not_before_ms = 0, last_error = NULL",
                    params![name, letter.seq],
                )?;
                conn.execute(
                    "DELETE FROM dead_letters WHERE subscription = ?1 AND seq = ?2",
                    params![name, letter.seq],
                )?;
                out.push(Pending {
                    event: StoredEvent {
                        topic: Arc::from(letter.topic.as_str()),
                        seq: letter.seq,
                        published_ms: letter.published_ms,
                        json: letter.event,
                    },
                    attempts: 0,
                    not_before_ms: 0,
                    last_error: None,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn purge(
        &self,
        subscription: &str,
        filter: DeadLetterFilter,
    ) -> Result<u64, BrokerError> {
        let name = subscription.to_string();
        self.call(move |conn| {
            let mut purged = 0;
            for letter in dead_letter_rows(conn, &name, &filter, None)? {
                purged += conn.execute(
                    "DELETE FROM dead_letters WHERE subscription = ?1 AND seq = ?2",
                    params![name, letter.seq],
                )? as u64;
            }
            Ok(purged)
        })
        .await
    }

    async fn topic_stats(&self) -> Result<Vec<TopicStats>, BrokerError> {
        self.call(|conn| {
            conn.prepare(
                "SELECT t.name, t.last_seq, COALESCE(MIN(e.seq), 0), COUNT(e.seq), COALESCE(SUM(e.size), 0)
                 FROM topics t LEFT JOIN events e ON e.topic = t.name GROUP BY t.name ORDER BY t.name",
            )?
            .query_map([], |r| {
                Ok(TopicStats {
                    name: r.get(0)?,
                    last_seq: r.get(1)?,
                    first_seq: r.get(2)?,
                    events: r.get(3)?,
                    bytes: r.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>, BrokerError> {
        self.call(|conn| {
            conn.prepare(
                "SELECT s.name, s.topic, s.next_seq, s.active,
                    (SELECT COUNT(*) FROM pending p WHERE p.subscription = s.name),
                    (SELECT COUNT(*) FROM dead_letters d WHERE d.subscription = s.name)
                 FROM subscriptions s ORDER BY s.name",
            )?
            .query_map([], |r| {
                Ok(SubscriptionStats {
                    name: r.get(0)?,
                    topic: r.get(1)?,
                    next_seq: r.get(2)?,
                    active: r.get(3)?,
                    pending: r.get(4)?,
                    dead_letters: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn trim(
        &self,
        topic: &str,
        max_age: Duration,
        max_bytes: Option<u64>,
        dedup_window: Duration,
    ) -> Result<u64, BrokerError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            let now = now_ms();
            conn.execute(
                "DELETE FROM dedup WHERE topic = ?1 AND at_ms < ?2",
                params![topic, now - dedup_window.as_millis() as i64],
            )?;
            // Nothing a subscription still needs goes: not past its position,
            // not pending.
            let next = last_seq(conn, &topic)? + 1;
            let needed: Option<Seq> = conn.query_row(
                "SELECT MIN(m) FROM (
                    SELECT next_seq AS m FROM subscriptions WHERE topic = ?1 AND active = 1
                    UNION ALL
                    SELECT p.seq FROM pending p JOIN subscriptions s ON s.name = p.subscription
                    WHERE s.topic = ?1 AND s.active = 1)",
                [&topic],
                |r| r.get(0),
            )?;
            let keep_from = needed.unwrap_or(next);
            let cutoff = now - max_age.as_millis().min(i64::MAX as u128) as i64;
            let mut removed = conn.execute(
                "DELETE FROM events WHERE topic = ?1 AND seq < ?2 AND published_ms < ?3",
                params![topic, keep_from, cutoff],
            )? as u64;
            // Inactive subscriptions do not hold events back; their pending
            // rows for events that are gone would hold retention forever.
            let orphans = "DELETE FROM pending WHERE subscription IN
                    (SELECT name FROM subscriptions WHERE topic = ?1 AND active = 0)
                 AND seq NOT IN (SELECT seq FROM events WHERE topic = ?1)";
            if let Some(max) = max_bytes {
                let total: i64 = conn.query_row(
                    "SELECT COALESCE(SUM(size), 0) FROM events WHERE topic = ?1",
                    [&topic],
                    |r| r.get(0),
                )?;
                let mut excess = total - max as i64;
                if excess > 0 {
                    let mut until = None;
                    let mut statement = conn.prepare(
                        "SELECT seq, size FROM events WHERE topic = ?1 AND seq < ?2 ORDER BY seq",
                    )?;
                    let mut rows = statement.query(params![topic, keep_from])?;
                    while let Some(row) = rows.next()? {
                        until = Some(row.get::<_, Seq>(0)?);
                        excess -= row.get::<_, i64>(1)?;
                        if excess <= 0 {
                            break;
                        }
                    }
                    if let Some(until) = until {
                        removed += conn.execute(
                            "DELETE FROM events WHERE topic = ?1 AND seq <= ?2",
                            params![topic, until],
                        )? as u64;
                    }
                }
            }
            if removed > 0 {
                conn.execute(orphans, [&topic])?;
            }
            Ok(removed)
        })
        .await
    }

    async fn schema_versions(&self, topic: &str) -> Result<Vec<SchemaVersion>, BrokerError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            conn.prepare(
                "SELECT version, schema, registered_ms FROM schemas WHERE topic = ?1 ORDER BY version",
            )?
            .query_map([&topic], |r| {
                Ok(SchemaVersion {
                    topic: topic.clone(),
                    version: r.get(0)?,
                    schema: r.get(1)?,
                    registered_ms: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn register_schema(&self, topic: &str, schema: &str) -> Result<u32, BrokerError> {
        let (topic, schema) = (topic.to_string(), schema.to_string());
        self.call(move |conn| {
            let version: u32 = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM schemas WHERE topic = ?1",
                [&topic],
                |r| r.get(0),
            )?;
            conn.execute(
                "INSERT INTO schemas (topic, version, schema, registered_ms) VALUES (?1, ?2, ?3, ?4)",
                params![topic, version, schema, now_ms()],
            )?;
            Ok(version)
        })
        .await
    }

    fn watch(&self, topic: &str) -> watch::Receiver<Seq> {
        let mut watchers = self.watchers.lock().expect("watchers lock");
        watchers
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's connection runs with the durability the manifest chose.
    #[tokio::test]
    async fn events_sync_sets_when_a_commit_is_on_disk() {
        for (sync, expected) in [(EventsSync::Always, 2), (EventsSync::Batch, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let broker = SqliteBroker::open(dir.path(), sync).unwrap();
            let synchronous = broker
                .call(|conn| conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0)))
                .await
                .unwrap();
            // SQLite's codes: 2 is FULL (fsync per commit), 1 NORMAL.
            assert_eq!(synchronous, expected, "{sync:?}");
        }
    }
}
