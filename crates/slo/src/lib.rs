//! Service-level objectives, evaluated by Gantry from its own request
//! counts, with multi-window, multi-burn-rate alerts as in the Google SRE
//! workbook (chapter 5), the way Sloth and Pyrra generate them:
//!
//! | severity | long window | short window | burn rate |
//! |---|---|---|---|
//! | page | 1h | 5m | 14.4 (2% of a 30-day budget in an hour) |
//! | page | 6h | 30m | 6 (5% in six hours) |
//! | ticket | 3d | 6h | 1 (10% in three days) |
//!
//! The burn rate over a window is the share of bad requests in it divided by
//! the share the objective allows (`1 - objective`). An alert fires when both
//! its windows burn at least at its rate and the short window holds at least
//! `min_requests` requests (so one error on a quiet service pages no one). It
//! resolves once the condition has been false for a whole short window, so a
//! burn that hovers at the threshold does not flap.
//!
//! Counts are kept per minute in memory, as far back as the longest of the
//! SLO's window and three days, and written to `slos.db` at every evaluation
//! ([`store`]), so a restart keeps the budget. Every function takes the
//! current time, so tests drive the clock.

pub mod api;
mod cluster;
pub mod notify;
pub mod rules;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_manifest::Slo;
use serde::Serialize;

/// Counts are kept in buckets of this many seconds.
const BUCKET: u64 = 60;
/// Bad requests' trace ids kept per SLO, as examples for alerts.
const EXAMPLES: usize = 5;

/// One alerting rule of the workbook's table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub severity: &'static str,
    pub long: Duration,
    pub short: Duration,
    pub burn_rate: f64,
}

/// The rules every SLO gets.
pub const RULES: [Rule; 3] = [
    Rule {
        severity: "page",
        long: Duration::from_secs(3600),
        short: Duration::from_secs(300),
        burn_rate: 14.4,
    },
    Rule {
        severity: "page",
        long: Duration::from_secs(6 * 3600),
        short: Duration::from_secs(1800),
        burn_rate: 6.0,
    },
    Rule {
        severity: "ticket",
        long: Duration::from_secs(3 * 86_400),
        short: Duration::from_secs(6 * 3600),
        burn_rate: 1.0,
    },
];

/// Short human text for a window, as the rules print it.
pub fn window_text(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Ok,
    Firing,
    /// Firing, with the condition false since this time (unix seconds).
    Resolving(u64),
}

/// An alert that fired or resolved, for the webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub slo: String,
    pub target: String,
    pub objective: f64,
    pub severity: &'static str,
    pub windows: Windows,
    pub burn_rate: BurnRates,
    /// The burn rate that makes the alert fire.
    pub threshold: f64,
    /// The share of the error budget left over the SLO window (can go below 0).
    pub budget_remaining: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Trace ids of recent bad requests, to start the investigation from.
    pub example_trace_ids: Vec<String>,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Windows {
    pub long: String,
    pub short: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BurnRates {
    pub long: f64,
    pub short: f64,
}

/// One SLO as `gantry slo status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SloStatus {
    pub name: String,
    pub target: String,
    pub objective: f64,
    pub window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Requests and bad requests counted over the window (since start at most).
    pub requests: u64,
    pub bad: u64,
    pub budget_remaining: f64,
    pub alerts: Vec<AlertStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    pub severity: &'static str,
    pub long: String,
    pub short: String,
    pub threshold: f64,
    pub burn_long: f64,
    pub burn_short: f64,
    pub state: AlertState,
}

/// Counts and alert states of one SLO.
#[derive(Debug)]
struct Tracker {
    name: String,
    config: Slo,
    /// (bucket start, requests, bad), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    states: [AlertState; 3],
    examples: VecDeque<String>,
    /// Buckets from this start on changed since the last save.
    dirty_from: Option<u64>,
    /// In cluster mode: counts recorded since the last flush to the
    /// cluster's shared rows, by bucket start.
    added: Option<BTreeMap<u64, (u64, u64)>>,
}

impl Tracker {
    fn new(name: &str, config: Slo) -> Tracker {
        Tracker {
            name: name.to_string(),
            config,
            buckets: VecDeque::new(),
            states: [AlertState::Ok; 3],
            examples: VecDeque::new(),
            dirty_from: None,
            added: None,
        }
    }

    /// The configuration as stored beside the alert states: states are read
    /// back only for the same objective, windows and guard.
    fn config_text(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_default()
    }

    /// What the stored counts are filed under: the name and everything that
    /// gives the counts their meaning, so a changed SLO starts afresh.
    fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.name,
            self.config.target,
            self.config.latency.map_or(0, |l| l.as_millis())
        )
    }

    fn keep(&self) -> u64 {
        self.config.window.as_secs().max(3 * 86_400) + BUCKET
    }

    fn record(&mut self, now: u64, bad: bool, trace_id: &dyn std::fmt::Display) {
        let start = now - now % BUCKET;
        self.dirty_from = Some(self.dirty_from.map_or(start, |d| d.min(start)));
        if let Some(added) = &mut self.added {
            let counts = added.entry(start).or_default();
            counts.0 += 1;
            counts.1 += u64::from(bad);
        }
        match self.buckets.back_mut() {
            Some(last) if last.0 == start => {
                last.1 += 1;
                last.2 += u64::from(bad);
            }
            _ => self.buckets.push_back((start, 1, u64::from(bad))),
        }
        let horizon = now.saturating_sub(self.keep());
        while self.buckets.front().is_some_and(|b| b.0 < horizon) {
            self.buckets.pop_front();
        }
        if bad {
            let trace_id = trace_id.to_string();
            if !trace_id.is_empty() {
                if self.examples.len() == EXAMPLES {
                    self.examples.pop_front();
                }
                self.examples.push_back(trace_id);
            }
        }
    }

    /// Requests and bad requests in the last `window` before `now`.
    fn counts(&self, now: u64, window: Duration) -> (u64, u64) {
        let since = now.saturating_sub(window.as_secs());
        self.buckets
            .iter()
            .rev()
            .take_while(|b| b.0 + BUCKET > since)
            .fold((0, 0), |(t, b), bucket| (t + bucket.1, b + bucket.2))
    }

    fn allowed(&self) -> f64 {
        1.0 - self.config.objective / 100.0
    }

    fn burn(&self, now: u64, window: Duration) -> (f64, u64) {
        let (total, bad) = self.counts(now, window);
        if total == 0 {
            return (0.0, 0);
        }
        ((bad as f64 / total as f64) / self.allowed(), total)
    }

    fn budget_remaining(&self, now: u64) -> f64 {
        let (total, bad) = self.counts(now, self.config.window);
        if total == 0 {
            return 1.0;
        }
        1.0 - bad as f64 / (total as f64 * self.allowed())
    }

    fn evaluate(&mut self, now: u64, at: &str) -> Vec<Notification> {
        let mut out = Vec::new();
        for (i, rule) in RULES.iter().enumerate() {
            let (long, _) = self.burn(now, rule.long);
            let (short, short_total) = self.burn(now, rule.short);
            let condition = long >= rule.burn_rate
                && short >= rule.burn_rate
                && short_total >= self.config.min_requests;
            let next = match (self.states[i], condition) {
                (AlertState::Ok, true) => {
                    out.push(self.notification("firing", rule, long, short, now, at));
                    AlertState::Firing
                }
                (AlertState::Ok, false) => AlertState::Ok,
                (AlertState::Firing | AlertState::Resolving(_), true) => AlertState::Firing,
                (AlertState::Firing, false) => AlertState::Resolving(now),
                (AlertState::Resolving(since), false) => {
                    if now.saturating_sub(since) >= rule.short.as_secs() {
                        out.push(self.notification("resolved", rule, long, short, now, at));
                        AlertState::Ok
                    } else {
                        AlertState::Resolving(since)
                    }
                }
            };
            self.states[i] = next;
        }
        out
    }

    fn notification(
        &self,
        status: &'static str,
        rule: &Rule,
        long: f64,
        short: f64,
        now: u64,
        at: &str,
    ) -> Notification {
        Notification {
            status,
            slo: self.name.clone(),
            target: self.config.target.to_string(),
            objective: self.config.objective,
            severity: rule.severity,
            windows: Windows {
                long: window_text(rule.long),
                short: window_text(rule.short),
            },
            burn_rate: BurnRates {
                long: round(long),
                short: round(short),
            },
            threshold: rule.burn_rate,
            budget_remaining: round(self.budget_remaining(now)),
            runbook: self.config.runbook.clone(),
            example_trace_ids: self.examples.iter().cloned().collect(),
            at: at.to_string(),
        }
    }

    fn status(&self, now: u64) -> SloStatus {
        let (requests, bad) = self.counts(now, self.config.window);
        SloStatus {
            name: self.name.clone(),
            target: self.config.target.to_string(),
            objective: self.config.objective,
            window: window_text(self.config.window),
            latency_ms: self.config.latency.map(|l| l.as_millis() as u64),
            requests,
            bad,
            budget_remaining: round(self.budget_remaining(now)),
            alerts: RULES
                .iter()
                .enumerate()
                .map(|(i, rule)| AlertStatus {
                    severity: rule.severity,
                    long: window_text(rule.long),
                    short: window_text(rule.short),
                    threshold: rule.burn_rate,
                    burn_long: round(self.burn(now, rule.long).0),
                    burn_short: round(self.burn(now, rule.short).0),
                    state: self.states[i],
                })
                .collect(),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Every SLO of the system, and where alerts go. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Slos {
    trackers: Arc<Mutex<BTreeMap<String, Tracker>>>,
    alerting: Arc<Mutex<gantry_manifest::Alerting>>,
    store: Option<store::CountStore>,
    /// Cluster mode: the counts and alert states every node shares.
    shared: Option<cluster::SharedCounts>,
}

impl Slos {
    /// SLOs whose counts live in `data_dir/slos.db` and survive restarts.
    pub fn open(data_dir: &std::path::Path) -> Result<Slos, String> {
        Ok(Slos {
            store: Some(store::CountStore::open(data_dir)?),
            ..Slos::default()
        })
    }

    /// SLOs of a cluster: counts shared by every node in PostgreSQL, alerts
    /// evaluated and sent by one node at a time (see [`cluster`]).
    pub async fn clustered(cluster: &gantry_cluster::Cluster) -> Result<Slos, String> {
        Ok(Slos {
            shared: Some(
                cluster::SharedCounts::open(cluster)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            ..Slos::default()
        })
    }

    /// Cluster mode: adds this node's new counts to the shared rows, then
    /// reads the cluster's totals and alert states back into every SLO.
    /// A failed flush keeps the counts for the next round.
    pub(crate) async fn sync_shared(&self) {
        let Some(shared) = &self.shared else { return };
        let added: Vec<cluster::Added> = {
            let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            trackers
                .values_mut()
                .map(|t| {
                    let horizon = now().saturating_sub(t.keep());
                    let buckets = t
                        .added
                        .as_mut()
                        .map(std::mem::take)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(start, (requests, bad))| (start, requests, bad))
                        .collect();
                    (t.key(), horizon, buckets)
                })
                .collect()
        };
        if let Err(error) = shared.add(&added).await {
            tracing::warn!(target: "gantry::slo", %error, "cannot add SLO counts to the cluster's; keeping them for the next round");
            let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            for (key, _, buckets) in added {
                if let Some(t) = trackers.values_mut().find(|t| t.key() == key) {
                    let pending = t.added.get_or_insert_with(BTreeMap::new);
                    for (start, requests, bad) in buckets {
                        let counts = pending.entry(start).or_default();
                        counts.0 += requests;
                        counts.1 += bad;
                    }
                }
            }
            return;
        }
        let wanted: Vec<(String, String, u64, String)> = {
            let trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            trackers
                .values()
                .map(|t| {
                    let since = now().saturating_sub(t.keep());
                    (t.name.clone(), t.key(), since, t.config_text())
                })
                .collect()
        };
        for (name, key, since, config) in wanted {
            let (buckets, states) = match (
                shared.load(&key, since).await,
                shared.load_states(&name, &config).await,
            ) {
                (Ok(buckets), Ok(states)) => (buckets, states),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(target: "gantry::slo", slo = %name, %error, "cannot read the cluster's SLO counts");
                    continue;
                }
            };
            let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = trackers.get_mut(&name).filter(|t| t.key() == key) else {
                continue;
            };
            // The cluster's totals, and what this node counted since the
            // flush above (not in them yet).
            let mut merged: BTreeMap<u64, (u64, u64)> = buckets
                .into_iter()
                .map(|(start, requests, bad)| (start, (requests, bad)))
                .collect();
            for (start, (requests, bad)) in t.added.iter().flatten() {
                let counts = merged.entry(*start).or_default();
                counts.0 += requests;
                counts.1 += bad;
            }
            t.buckets = merged
                .into_iter()
                .map(|(start, (requests, bad))| (start, requests, bad))
                .collect();
            if let Some(states) = states.and_then(|text| serde_json::from_str(&text).ok()) {
                t.states = states;
            }
        }
    }

    /// Cluster mode: whether this node evaluates alerts this round (it
    /// holds, or has just taken, the evaluation lease). Always true when
    /// embedded.
    pub(crate) async fn leads(&self, every: Duration) -> bool {
        match &self.shared {
            Some(shared) => shared.lead(every).await,
            None => true,
        }
    }

    /// Cluster mode: stores the alert states this node evaluated.
    pub(crate) async fn save_shared_states(&self) {
        let Some(shared) = &self.shared else { return };
        let states: Vec<store::States> = {
            let trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            trackers
                .values()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.config_text(),
                        serde_json::to_string(&t.states).unwrap_or_default(),
                    )
                })
                .collect()
        };
        if let Err(error) = shared.save_states(&states).await {
            tracing::warn!(target: "gantry::slo", %error, "cannot store SLO alert states in the cluster");
        }
    }

    /// Cluster mode, at a clean stop: flushes this node's counts and gives
    /// the evaluation lease up.
    pub(crate) async fn leave_shared(&self) {
        let Some(shared) = &self.shared else { return };
        self.sync_shared().await;
        shared.release().await;
    }

    /// Writes the counts changed since the last save (at every evaluation
    /// and at shutdown).
    pub fn save(&self) {
        let Some(store) = &self.store else { return };
        let (updates, states): (Vec<_>, Vec<_>) = {
            let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
            trackers
                .values_mut()
                .map(|t| {
                    let changed = match t.dirty_from.take() {
                        Some(from) => t.buckets.iter().filter(|b| b.0 >= from).copied().collect(),
                        None => Vec::new(),
                    };
                    let horizon = t.buckets.front().map_or(0, |b| b.0);
                    let states = serde_json::to_string(&t.states).unwrap_or_default();
                    (
                        (t.key(), horizon, changed),
                        (t.name.clone(), t.config_text(), states),
                    )
                })
                .unzip()
        };
        store.save(&updates, &states);
    }

    /// Uses `alerting` (webhook, evaluation interval) from now on.
    pub fn set_alerting(&self, alerting: &gantry_manifest::Alerting) {
        *self.alerting.lock().unwrap_or_else(|e| e.into_inner()) = alerting.clone();
    }

    pub(crate) fn alerting(&self) -> gantry_manifest::Alerting {
        self.alerting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tracks exactly the SLOs of `slos`; an unchanged SLO keeps its counts
    /// and alert states, a changed one starts afresh. A newly tracked SLO
    /// takes its stored counts and, if its configuration is unchanged, its
    /// alert states (a page firing before a restart is not sent again).
    pub fn apply(&self, slos: &BTreeMap<String, Slo>) {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        trackers.retain(|name, t| slos.get(name) == Some(&t.config));
        for (name, config) in slos {
            trackers.entry(name.clone()).or_insert_with(|| {
                let mut tracker = Tracker::new(name, config.clone());
                // In cluster mode the counts come from the shared rows at
                // the next round; until then this node counts its own.
                if self.shared.is_some() {
                    tracker.added = Some(BTreeMap::new());
                }
                if let Some(store) = &self.store {
                    let since = now().saturating_sub(tracker.keep());
                    tracker.buckets = store.load(&tracker.key(), since).into();
                    if let Some(states) = store
                        .load_states(name, &tracker.config_text())
                        .and_then(|text| serde_json::from_str(&text).ok())
                    {
                        tracker.states = states;
                    }
                }
                tracker
            });
        }
    }

    /// Counts one request the gateway answered, at `now` (unix seconds).
    pub fn observe(
        &self,
        now: u64,
        route: &str,
        service: &str,
        status: u16,
        duration: Duration,
        trace_id: &dyn std::fmt::Display,
    ) {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        for tracker in trackers.values_mut() {
            if !tracker.config.target.matches(route, service) {
                continue;
            }
            let bad = status >= 500 || tracker.config.latency.is_some_and(|limit| duration > limit);
            tracker.record(now, bad, trace_id);
        }
    }

    /// Counts one invocation of `function` (from a route, an event or a
    /// schedule) toward the function's objectives.
    pub fn observe_function(
        &self,
        now: u64,
        function: &str,
        status: u16,
        duration: Duration,
        trace_id: &dyn std::fmt::Display,
    ) {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        for tracker in trackers.values_mut() {
            if !matches!(&tracker.config.target, gantry_manifest::SloTarget::Function(f) if f == function)
            {
                continue;
            }
            let bad = status >= 500 || tracker.config.latency.is_some_and(|limit| duration > limit);
            tracker.record(now, bad, trace_id);
        }
    }

    /// Evaluates every alert at `now`; what fired or resolved since the last time.
    pub fn evaluate(&self, now: u64) -> Vec<Notification> {
        let at = rfc3339(now);
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        trackers
            .values_mut()
            .flat_map(|t| t.evaluate(now, &at))
            .collect()
    }

    pub fn status(&self, now: u64) -> Vec<SloStatus> {
        let trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        trackers.values().map(|t| t.status(now)).collect()
    }
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> String {
    httpdate_to_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

fn httpdate_to_rfc3339(time: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now, in unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_manifest::SloTarget;

    /// A 99.9% availability SLO on route `checkout` over 30 days.
    fn checkout(min_requests: u64) -> BTreeMap<String, Slo> {
        let mut config = BTreeMap::new();
        config.insert(
            "checkout".to_string(),
            Slo {
                target: SloTarget::Route("checkout".into()),
                objective: 99.9,
                window: Duration::from_secs(30 * 86_400),
                latency: None,
                min_requests,
                runbook: Some("https://runbooks.example/checkout".into()),
            },
        );
        config
    }

    fn slos(min_requests: u64) -> Slos {
        let slos = Slos::default();
        slos.apply(&checkout(min_requests));
        slos
    }

    /// `rate` requests per second for `seconds`, the given share failing,
    /// evaluating every 10 s; the notifications, with when.
    fn traffic(
        slos: &Slos,
        from: u64,
        seconds: u64,
        rate: u64,
        failing: f64,
    ) -> Vec<(u64, Notification)> {
        let mut out = Vec::new();
        let mut failed = 0.0;
        for t in from..from + seconds {
            for n in 0..rate {
                failed += failing;
                let bad = failed >= 1.0;
                if bad {
                    failed -= 1.0;
                }
                let trace = format!("trace-{t}-{n}");
                slos.observe(
                    t,
                    "checkout",
                    "orders",
                    if bad { 503 } else { 200 },
                    Duration::from_millis(5),
                    &trace,
                );
            }
            if t.is_multiple_of(10) {
                out.extend(slos.evaluate(t).into_iter().map(|n| (t, n)));
            }
        }
        out
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn a_total_outage_pages_within_a_minute_and_resolves_after_recovery() {
        let slos = slos(20);
        traffic(&slos, T0, 3600, 2, 0.0);
        let fired = traffic(&slos, T0 + 3600, 120, 2, 1.0);
        // With an hour of good traffic behind it, the ticket (3d/6h at 1x)
        // fires first, then the 6h/30m page, then the 1h/5m page, all within
        // a minute.
        let order: Vec<&str> = fired.iter().map(|(_, n)| n.windows.long.as_str()).collect();
        assert_eq!(order, ["3d", "6h", "1h"], "{fired:?}");
        let (at, page) = fired.iter().find(|(_, n)| n.windows.long == "1h").unwrap();
        assert_eq!(page.status, "firing");
        assert_eq!(page.severity, "page");
        assert!(*at - (T0 + 3600) <= 60, "fired after {}s", at - (T0 + 3600));
        assert!(page.burn_rate.short >= 14.4);
        assert_eq!(
            page.runbook.as_deref(),
            Some("https://runbooks.example/checkout")
        );
        assert_eq!(page.example_trace_ids.len(), EXAMPLES);
        // Healthy again: the pages resolve once their short windows are clean
        // for a whole short window; nothing fires again meanwhile.
        let after = traffic(&slos, T0 + 3720, 7200, 2, 0.0);
        assert!(
            after.iter().all(|(_, n)| n.status == "resolved"),
            "{after:?}"
        );
        assert!(after.iter().any(|(_, n)| n.windows.long == "1h"));
    }

    #[test]
    fn a_burn_below_the_threshold_does_not_page() {
        let slos = slos(20);
        // 1% errors against a 0.1% budget is a burn rate of 10: under the
        // 1h/5m page's 14.4, so that page never fires (the 6h/30m one may).
        let early = traffic(&slos, T0, 1800, 2, 0.01);
        assert!(
            early.iter().all(|(_, n)| n.windows.long != "1h"),
            "{early:?}"
        );
        // 0.5% errors: burn 5, under every page threshold.
        let slos = self::slos(20);
        let calm = traffic(&slos, T0, 7200, 2, 0.005);
        assert!(calm.iter().all(|(_, n)| n.severity != "page"), "{calm:?}");
    }

    #[test]
    fn a_quiet_service_does_not_page_on_a_few_errors() {
        let slos = slos(20);
        // Three requests in five minutes, all failing: below min_requests.
        for t in [T0, T0 + 100, T0 + 200] {
            slos.observe(t, "checkout", "orders", 500, Duration::from_millis(1), &"t");
        }
        assert!(slos.evaluate(T0 + 210).is_empty());
        let status = &slos.status(T0 + 210)[0];
        assert_eq!(status.bad, 3);
        assert!(status.budget_remaining < 0.0);
    }

    #[test]
    fn a_burn_hovering_at_the_threshold_does_not_flap() {
        let slos = slos(1);
        let mut notes = traffic(&slos, T0, 600, 2, 1.0);
        // Alternate a minute of errors and a minute of success for an hour.
        for k in 0..30 {
            let from = T0 + 600 + k * 120;
            notes.extend(traffic(&slos, from, 60, 2, 0.0));
            notes.extend(traffic(&slos, from + 60, 60, 2, 1.0));
        }
        let fired = notes
            .iter()
            .filter(|(_, n)| n.status == "firing" && n.windows.long == "1h")
            .count();
        assert_eq!(fired, 1, "{notes:?}");
    }

    #[test]
    fn latency_objectives_count_slow_requests_as_bad() {
        let slos = Slos::default();
        let mut config = BTreeMap::new();
        config.insert(
            "fast".to_string(),
            Slo {
                target: SloTarget::Function("thumb".into()),
                objective: 99.0,
                window: Duration::from_secs(86_400),
                latency: Some(Duration::from_millis(300)),
                min_requests: 1,
                runbook: None,
            },
        );
        slos.apply(&config);
        slos.observe_function(T0, "thumb", 200, Duration::from_millis(100), &"");
        slos.observe_function(T0, "thumb", 200, Duration::from_millis(900), &"slow");
        slos.observe_function(T0, "other", 500, Duration::from_millis(1), &"");
        // Function objectives count invocations, not the gateway's answers
        // (a routed invocation would count twice).
        slos.observe(
            T0,
            "thumbs",
            "function:thumb",
            500,
            Duration::from_millis(1),
            &"",
        );
        let status = &slos.status(T0)[0];
        assert_eq!((status.requests, status.bad), (2, 1));
    }

    #[test]
    fn a_firing_page_is_not_sent_again_after_a_restart_and_still_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let config = BTreeMap::from([(
            "checkout".to_string(),
            Slo {
                target: SloTarget::Route("checkout".into()),
                objective: 99.9,
                window: Duration::from_secs(30 * 86_400),
                latency: None,
                min_requests: 20,
                runbook: None,
            },
        )]);
        // Driven by the real clock here: the stored minutes are trimmed to
        // what the SLO keeps from now.
        let t0 = now() - 3 * 3600;
        let slos = Slos::open(dir.path()).unwrap();
        slos.apply(&config);
        traffic(&slos, t0, 3600, 1, 0.0);
        let fired = traffic(&slos, t0 + 3600, 300, 1, 1.0);
        assert!(
            fired.iter().any(|(_, n)| n.windows.long == "1h"),
            "{fired:?}"
        );
        slos.save();
        drop(slos);

        let reopened = Slos::open(dir.path()).unwrap();
        reopened.apply(&config);
        let states: Vec<AlertState> = reopened.status(t0 + 3900)[0]
            .alerts
            .iter()
            .map(|a| a.state)
            .collect();
        assert!(states.contains(&AlertState::Firing), "{states:?}");
        // Still failing after the restart: nothing is sent again.
        let again = traffic(&reopened, t0 + 3900, 120, 1, 1.0);
        assert!(again.is_empty(), "{again:?}");
        // Another objective is another alert: its states start afresh.
        reopened.save();
        let mut stricter = config.clone();
        stricter.get_mut("checkout").unwrap().objective = 99.99;
        let changed = Slos::open(dir.path()).unwrap();
        changed.apply(&stricter);
        assert!(changed.status(t0 + 4020)[0]
            .alerts
            .iter()
            .all(|a| a.state == AlertState::Ok));
        // Recovered: each firing alert resolves, once.
        let after = traffic(&reopened, t0 + 4020, 7200, 1, 0.0);
        assert!(
            after.iter().all(|(_, n)| n.status == "resolved"),
            "{after:?}"
        );
        assert_eq!(
            after.iter().filter(|(_, n)| n.windows.long == "1h").count(),
            1,
            "{after:?}"
        );
    }

    #[test]
    fn counts_survive_a_restart_and_a_changed_latency_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let slo = |latency: Option<u64>| Slo {
            target: SloTarget::Route("checkout".into()),
            objective: 99.9,
            window: Duration::from_secs(30 * 86_400),
            latency: latency.map(Duration::from_millis),
            min_requests: 1,
            runbook: None,
        };
        let config = |latency| BTreeMap::from([("checkout".to_string(), slo(latency))]);
        let now = now();
        let slos = Slos::open(dir.path()).unwrap();
        slos.apply(&config(None));
        for status in [200, 200, 503] {
            slos.observe(now - 120, "checkout", "orders", status, Duration::ZERO, &"");
        }
        slos.observe(now, "checkout", "orders", 500, Duration::ZERO, &"");
        slos.save();
        slos.observe(now, "checkout", "orders", 200, Duration::ZERO, &"");
        slos.save();
        drop(slos);

        let reopened = Slos::open(dir.path()).unwrap();
        reopened.apply(&config(None));
        let status = &reopened.status(now)[0];
        assert_eq!((status.requests, status.bad), (5, 2));
        // Another latency makes the counts mean something else.
        let changed = Slos::open(dir.path()).unwrap();
        changed.apply(&config(Some(300)));
        assert_eq!(changed.status(now)[0].requests, 0);
        changed.save();
        let again = Slos::open(dir.path()).unwrap();
        again.apply(&config(None));
        assert_eq!(
            again.status(now)[0].requests,
            0,
            "a removed SLO's counts are deleted"
        );
    }

    /// Two nodes of one cluster: the counts are the sum of both, one node
    /// evaluates, and the alert it fired is not fired again by the node
    /// that takes the evaluation over.
    #[tokio::test]
    async fn cluster_nodes_share_counts_and_page_once() {
        let Some(options) = gantry_cluster::testing::fresh_schema("slos").await else {
            return;
        };
        let node = |name: &'static str| {
            let options = options.clone();
            async move {
                let cluster = gantry_cluster::Cluster::connect(&options, name)
                    .await
                    .unwrap();
                let slos = Slos::clustered(&cluster).await.unwrap();
                slos.apply(&checkout(10));
                slos
            }
        };
        let a = node("a").await;
        let b = node("b").await;
        let t = now();
        for _ in 0..10 {
            a.observe(t, "checkout", "orders", 200, Duration::from_millis(1), &"x");
            b.observe(t, "checkout", "orders", 503, Duration::from_millis(1), &"y");
        }
        a.sync_shared().await;
        b.sync_shared().await;
        a.sync_shared().await;
        for slos in [&a, &b] {
            let status = &slos.status(t)[0];
            assert_eq!((status.requests, status.bad), (20, 10));
        }
        // Flushed once: another round adds nothing.
        a.sync_shared().await;
        assert_eq!(a.status(t)[0].requests, 20);

        let every = Duration::from_secs(10);
        assert!(a.leads(every).await);
        assert!(!b.leads(every).await);
        let fired = a.evaluate(t);
        assert!(fired.iter().any(|n| n.status == "firing"), "{fired:?}");
        a.save_shared_states().await;

        // `a` stops cleanly: `b` takes the evaluation over with the states
        // `a` stored, and does not page again.
        a.leave_shared().await;
        b.sync_shared().await;
        assert!(b.leads(every).await);
        assert!(b.evaluate(t).is_empty());
        assert!(b.status(t)[0]
            .alerts
            .iter()
            .any(|alert| alert.state == AlertState::Firing));
    }
}
