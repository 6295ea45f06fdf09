//! Delivery of one subscription: which pending event goes next, retries with
//! backoff, dead letters.
//!
//! The rules:
//! - events with the same ordering key go one at a time, in sequence order;
//!   a key's next event waits until the one before it is acknowledged or
//!   dead-lettered;
//! - events without a key, and events of different keys, go in parallel up
//!   to `max_in_flight`;
//! - a failed delivery waits (exponential backoff with jitter) without
//!   holding a slot, so other keys keep moving;
//! - every state change is written to the broker before the next event of
//!   the key is sent, so after a crash the same order resumes; only the
//!   deliveries in flight at the crash can repeat.
//!
//! In memory the runner holds a bounded window of pending events: per-key
//! queues, and a heap of the queue heads ordered by when they may go.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gantry_manifest::Subscription;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, DeadLetterFilter, EventFilter, Pending, Position, Seq};
use crate::deliver::Deliverer;
use crate::metrics::EventMetrics;
use crate::sqlite::now_ms;

/// Events of one ordering key held in memory at most.
const PER_KEY_LIMIT: usize = 64;

/// How long a stopping subscription waits for its deliveries in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Operator requests a running subscription handles itself, so they never
/// race its deliveries.
#[derive(Debug)]
pub(crate) enum Control {
    Seek(Position, oneshot::Sender<Result<Seq, BrokerError>>),
    Redrive(
        DeadLetterFilter,
        oneshot::Sender<Result<usize, BrokerError>>,
    ),
}

/// A running subscription, as the bus keeps it.
#[derive(Debug)]
pub(crate) struct RunnerHandle {
    pub config: Arc<Subscription>,
    pub control: mpsc::Sender<Control>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunnerHandle {
    pub fn start(
        config: Arc<Subscription>,
        broker: Arc<dyn Broker>,
        deliverer: Deliverer,
        metrics: EventMetrics,
    ) -> RunnerHandle {
        let (control, inbox) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let runner = Runner {
            filter: Arc::new(Filter(config.clone())),
            window: (config.max_in_flight as usize * 8).max(256),
            config: config.clone(),
            broker,
            deliverer,
            metrics,
            entries: HashMap::new(),
            queues: HashMap::new(),
            ready: BinaryHeap::new(),
            in_flight: 0,
            epoch: 0,
            redriven: HashSet::new(),
            overflowed: HashSet::new(),
            drained: HashSet::new(),
        };
        let task = tokio::spawn(runner.run(inbox, cancel.clone()));
        RunnerHandle {
            config,
            control,
            cancel,
            task,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// A subscription's `filter`, checked inside the broker.
struct Filter(Arc<Subscription>);

impl EventFilter for Filter {
    fn wants(&self, event_json: &[u8]) -> bool {
        if self.0.filter.is_empty() {
            return true;
        }
        let Ok(serde_json::Value::Object(event)) = serde_json::from_slice(event_json) else {
            return false;
        };
        self.0.filter.iter().all(|(attribute, wanted)| {
            let actual = match event.get(attribute) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                _ => return false,
            };
            match wanted.strip_suffix('*') {
                Some(prefix) => actual.starts_with(prefix),
                None => actual == *wanted,
            }
        })
    }
}

/// A pending event in memory.
struct Entry {
    pending: Pending,
    key: Option<Arc<str>>,
}

/// How a delivery ended, once the broker has recorded it.
enum Outcome {
    /// Acknowledged, dead-lettered or dropped: the key may move on.
    Done,
    /// Will be tried again at `not_before_ms`.
    Retry {
        attempts: u32,
        not_before_ms: i64,
        error: String,
    },
}

struct Finished {
    seq: Seq,
    epoch: u64,
    outcome: Outcome,
}

struct Runner {
    config: Arc<Subscription>,
    filter: Arc<Filter>,
    broker: Arc<dyn Broker>,
    deliverer: Deliverer,
    metrics: EventMetrics,
    /// How many pending events to hold in memory at most.
    window: usize,
    entries: HashMap<Seq, Entry>,
    /// Per ordering key, its pending events in order; the front one is in
    /// flight or in `ready`.
    queues: HashMap<Arc<str>, VecDeque<Seq>>,
    /// Events free to go, by (not before, seq).
    ready: BinaryHeap<Reverse<(i64, Seq)>>,
    in_flight: usize,
    /// Bumped by a seek, so deliveries started before it are ignored.
    epoch: u64,
    /// Redriven while their last attempt was still being recorded.
    redriven: HashSet<Seq>,
    /// Keys with pending events left in the broker (see [`Runner::add`]).
    overflowed: HashSet<Arc<str>>,
    /// Overflowed keys whose queue has drained: read them back.
    drained: HashSet<Arc<str>>,
}

impl Runner {
    async fn run(mut self, mut inbox: mpsc::Receiver<Control>, cancel: CancellationToken) {
        let name = self.config.name.clone();
        let mut published = self.broker.watch(&self.config.topic);
        let mut deliveries: JoinSet<Finished> = JoinSet::new();
        let mut caught_up = false;
        loop {
            match self.broker.pending(&name).await {
                Ok(pending) => {
                    for p in pending {
                        self.add(p);
                    }
                    break;
                }
                Err(error) => {
                    tracing::error!(target: "gantry::events", subscription = %name, %error, "cannot load pending deliveries; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        loop {
            self.reload_drained().await;
            // Top the window up once a quarter of it is free.
            if !caught_up && self.entries.len() <= self.window - self.window / 4 {
                let room = self.window - self.entries.len();
                match self.broker.claim(&name, room, self.filter.clone()).await {
                    Ok(claim) => {
                        caught_up = claim.caught_up;
                        for p in claim.pending {
                            self.add(p);
                        }
                    }
                    Err(error) => {
                        tracing::error!(target: "gantry::events", subscription = %name, %error, "cannot read the topic; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let now = now_ms();
            while self.in_flight < self.config.max_in_flight as usize {
                match self.ready.peek() {
                    Some(Reverse((at, _))) if *at <= now => {
                        let Reverse((_, seq)) = self.ready.pop().expect("peeked");
                        self.start(seq, &mut deliveries);
                    }
                    _ => break,
                }
            }
            let wake_at = match self.ready.peek() {
                Some(Reverse((at, _))) if self.in_flight < self.config.max_in_flight as usize => {
                    Some(*at)
                }
                _ => None,
            };
            let sleep = async {
                match wake_at {
                    Some(at) => {
                        let wait = (at - now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(joined) = deliveries.join_next() => {
                    self.in_flight -= 1;
                    if let Ok(finished) = joined {
                        self.finish(finished);
                    }
                }
                changed = published.changed() => {
                    if changed.is_ok() {
                        caught_up = false;
                    }
                }
                Some(control) = inbox.recv() => {
                    self.control(control, &mut deliveries).await;
                    // A seek moved the position: read from there.
                    caught_up = false;
                }
                _ = sleep => {}
            }
        }
        // Let deliveries in flight finish and be recorded, for a while; what
        // is still out after that stays pending in the broker and goes again
        // after a restart.
        let drain = async {
            while let Some(joined) = deliveries.join_next().await {
                if let Ok(finished) = joined {
                    self.finish(finished);
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            tracing::info!(target: "gantry::events", subscription = %name, "deliveries still in flight at stop will be made again after a restart");
        }
        deliveries.abort_all();
    }

    fn ordering_key(&self, pending: &Pending) -> Option<Arc<str>> {
        let pointer = self.config.ordering_key.as_deref()?;
        let event: serde_json::Value = serde_json::from_slice(&pending.event.json).ok()?;
        match event.pointer(pointer)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(Arc::from(s.as_str())),
            other => Some(Arc::from(other.to_string().as_str())),
        }
    }

    /// Holds a pending event in memory, behind the earlier events of its
    /// key. A key that already has [`PER_KEY_LIMIT`] events waiting (one that
    /// keeps failing, say) gets no more: the rest stay pending in the broker
    /// and are read back once its queue drains, so one key cannot fill the
    /// window and stall the others.
    fn add(&mut self, pending: Pending) {
        let seq = pending.event.seq;
        if self.entries.contains_key(&seq) {
            return;
        }
        let key = self.ordering_key(&pending);
        if let Some(key) = &key {
            let held = self.queues.get(key).map_or(0, VecDeque::len);
            if self.overflowed.contains(key) || held >= PER_KEY_LIMIT {
                self.overflowed.insert(key.clone());
                return;
            }
        }
        let not_before = pending.not_before_ms;
        match &key {
            Some(key) => {
                let queue = self.queues.entry(key.clone()).or_default();
                if queue.is_empty() {
                    self.ready.push(Reverse((not_before, seq)));
                }
                queue.push_back(seq);
            }
            None => self.ready.push(Reverse((not_before, seq))),
        }
        self.entries.insert(seq, Entry { pending, key });
    }

    /// Reads back the pending events of keys that overflowed and have
    /// drained since.
    async fn reload_drained(&mut self) {
        if self.drained.is_empty() {
            return;
        }
        match self.broker.pending(&self.config.name).await {
            Ok(pending) => {
                for key in self.drained.drain() {
                    self.overflowed.remove(&key);
                }
                for p in pending {
                    self.add(p);
                }
            }
            Err(error) => {
                tracing::error!(target: "gantry::events", subscription = %self.config.name, %error, "cannot read pending deliveries back; retrying");
            }
        }
    }

    fn start(&mut self, seq: Seq, deliveries: &mut JoinSet<Finished>) {
        let Some(entry) = self.entries.get(&seq) else {
            return;
        };
        self.in_flight += 1;
        let pending = entry.pending.clone();
        let config = self.config.clone();
        let broker = self.broker.clone();
        let deliverer = self.deliverer.clone();
        let metrics = self.metrics.clone();
        let epoch = self.epoch;
        deliveries.spawn(async move {
            let outcome = attempt(&config, &*broker, &deliverer, &metrics, &pending).await;
            Finished {
                seq,
                epoch,
                outcome,
            }
        });
    }

    fn finish(&mut self, finished: Finished) {
        if finished.epoch != self.epoch {
            return;
        }
        match finished.outcome {
            Outcome::Retry {
                attempts,
                not_before_ms,
                error,
            } => {
                if let Some(entry) = self.entries.get_mut(&finished.seq) {
                    entry.pending.attempts = attempts;
                    entry.pending.not_before_ms = not_before_ms;
                    entry.pending.last_error = Some(error);
                    self.ready.push(Reverse((not_before_ms, finished.seq)));
                }
            }
            Outcome::Done => {
                let Some(entry) = self.entries.remove(&finished.seq) else {
                    return;
                };
                let again = self.redriven.remove(&finished.seq).then(|| Pending {
                    attempts: 0,
                    not_before_ms: 0,
                    last_error: None,
                    ..entry.pending.clone()
                });
                if let Some(key) = entry.key {
                    if let Some(queue) = self.queues.get_mut(&key) {
                        queue.retain(|s| *s != finished.seq);
                        match queue.front() {
                            Some(next) => {
                                let at = self
                                    .entries
                                    .get(next)
                                    .map_or(0, |e| e.pending.not_before_ms);
                                self.ready.push(Reverse((at, *next)));
                            }
                            None => {
                                self.queues.remove(&key);
                                if self.overflowed.contains(&key) {
                                    self.drained.insert(key.clone());
                                }
                            }
                        }
                    }
                }
                if let Some(pending) = again {
                    self.add(pending);
                }
            }
        }
    }

    async fn control(&mut self, control: Control, deliveries: &mut JoinSet<Finished>) {
        match control {
            Control::Seek(position, reply) => {
                // Deliveries in flight finish and are recorded first, so none
                // of them writes over the rows the seek creates, and no key
                // has two events out at once.
                while let Some(joined) = deliveries.join_next().await {
                    self.in_flight -= 1;
                    if let Ok(finished) = joined {
                        self.finish(finished);
                    }
                }
                let result = self.broker.seek(&self.config.name, position).await;
                if result.is_ok() {
                    self.entries.clear();
                    self.queues.clear();
                    self.ready.clear();
                    self.epoch += 1;
                }
                let _ = reply.send(result);
            }
            Control::Redrive(filter, reply) => {
                let result = self.broker.redrive(&self.config.name, filter).await;
                let result = result.map(|pending| {
                    let count = pending.len();
                    for p in pending {
                        if self.entries.contains_key(&p.event.seq) {
                            // Its last attempt is still being recorded: once it
                            // is, deliver it again with fresh attempts.
                            self.redriven.insert(p.event.seq);
                        } else {
                            self.add(p);
                        }
                    }
                    count
                });
                let _ = reply.send(result);
            }
        }
    }
}

/// One delivery attempt and its bookkeeping in the broker.
async fn attempt(
    config: &Subscription,
    broker: &dyn Broker,
    deliverer: &Deliverer,
    metrics: &EventMetrics,
    pending: &Pending,
) -> Outcome {
    let name = &config.name;
    let seq = pending.event.seq;
    let attempts = pending.attempts + 1;
    let started = std::time::Instant::now();
    let sent = deliverer.send(config, pending, attempts).await;
    let took = started.elapsed().as_secs_f64();
    let outcome = match (&sent, attempts >= config.retry.max_attempts) {
        (Ok(()), _) => "delivered",
        (Err(_), false) => "failed",
        (Err(_), true) if config.dead_letter => "dead_lettered",
        (Err(_), true) => "dropped",
    };
    metrics.delivery(name, outcome, took);
    let error = match sent {
        Ok(()) => {
            return match broker.ack(name, seq).await {
                Ok(()) => Outcome::Done,
                Err(e) => storage_trouble(name, seq, attempts, e),
            };
        }
        Err(error) => error,
    };
    if attempts >= config.retry.max_attempts {
        let recorded = if config.dead_letter {
            tracing::warn!(target: "gantry::events", subscription = %name, seq, attempts, %error, "delivery failed for the last time; the event is in the dead-letter queue");
            broker.dead_letter(name, seq, attempts, &error).await
        } else {
            tracing::error!(target: "gantry::events", subscription = %name, seq, attempts, %error, "delivery failed for the last time; the event is dropped (`dead_letter = false`)");
            broker.ack(name, seq).await
        };
        return match recorded {
            Ok(()) => Outcome::Done,
            Err(e) => storage_trouble(name, seq, attempts, e),
        };
    }
    let wait = jittered(config.retry.backoff_ceiling(attempts));
    let not_before_ms = now_ms() + wait.as_millis() as i64;
    tracing::debug!(target: "gantry::events", subscription = %name, seq, attempts, retry_in = ?wait, %error, "delivery failed; will retry");
    match broker
        .retry_later(name, seq, attempts, not_before_ms, &error)
        .await
    {
        Ok(()) => Outcome::Retry {
            attempts,
            not_before_ms,
            error,
        },
        Err(e) => storage_trouble(name, seq, attempts, e),
    }
}

/// The broker could not record an outcome: keep the event and try again
/// shortly; at worst it is delivered once more.
fn storage_trouble(name: &str, seq: Seq, attempts: u32, error: BrokerError) -> Outcome {
    tracing::error!(target: "gantry::events", subscription = %name, seq, %error, "cannot record a delivery; it will be made again");
    Outcome::Retry {
        attempts: attempts.saturating_sub(1),
        not_before_ms: now_ms() + 1000,
        error: error.to_string(),
    }
}

/// A wait between half and all of `ceiling` ("equal jitter"), so retries of
/// many events spread out but never come sooner than half the backoff.
fn jittered(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_all_of_the_backoff() {
        for _ in 0..1000 {
            let wait = jittered(Duration::from_millis(800));
            assert!(wait >= Duration::from_millis(400) && wait <= Duration::from_millis(800));
        }
    }
}
