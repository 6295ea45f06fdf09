//! Circuit breaker: stops sending to a failing service so it can recover, and
//! answers callers at once meanwhile. One per running service, shared by
//! everything that calls it (gateway routes, event deliveries, saga steps).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use gantry_manifest::CircuitBreakerPolicy;

/// Outcomes are counted in this many slices of the window, so old ones age out
/// smoothly.
const SLICES: usize = 10;

/// The state a breaker is in; the value is also the metric's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Permission to send one request; report its outcome with [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// The single trial request of a half-open breaker.
    Probe,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    service: String,
    policy: CircuitBreakerPolicy,
    inner: Mutex<Inner>,
    /// How many times it opened, for `gantry_circuit_breaker_opened_total`.
    opened: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// (slice start, successes, failures)
    slices: [(Instant, u32, u32); SLICES],
    consecutive_failures: u32,
    open_until: Instant,
    probe_in_flight: bool,
    /// When the probe in flight was let through: a probe whose caller gave
    /// up without reporting (its future dropped) is forgotten after
    /// `open_for`, so the breaker cannot stay half-open for good.
    probe_started: Instant,
}

impl CircuitBreaker {
    pub fn new(service: &str, policy: CircuitBreakerPolicy) -> CircuitBreaker {
        let now = Instant::now();
        CircuitBreaker {
            service: service.to_string(),
            policy,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                slices: [(now, 0, 0); SLICES],
                consecutive_failures: 0,
                open_until: now,
                probe_in_flight: false,
                probe_started: now,
            }),
            opened: AtomicU64::new(0),
        }
    }

    /// How many times the breaker has opened.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    /// Whether a request may go to the service now.
    pub fn admit(&self) -> Option<Admission> {
        if !self.policy.enabled {
            return Some(Admission::Normal);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.state {
            BreakerState::Closed => Some(Admission::Normal),
            BreakerState::Open if Instant::now() >= inner.open_until => {
                self.transition(&mut inner, BreakerState::HalfOpen);
                inner.probe_in_flight = true;
                inner.probe_started = Instant::now();
                Some(Admission::Probe)
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen
                if !inner.probe_in_flight
                    || inner.probe_started.elapsed() >= self.policy.open_for =>
            {
                inner.probe_in_flight = true;
                inner.probe_started = Instant::now();
                Some(Admission::Probe)
            }
            BreakerState::HalfOpen => None,
        }
    }

    /// Records how an admitted request went.
    pub fn record(&self, admission: Admission, success: bool) {
        if !self.policy.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if admission == Admission::Probe {
            inner.probe_in_flight = false;
            if success {
                inner.slices = [(now, 0, 0); SLICES];
                inner.consecutive_failures = 0;
                self.transition(&mut inner, BreakerState::Closed);
            } else {
                self.open(&mut inner, now);
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            return;
        }
        let slice_length = (self.policy.window / SLICES as u32).max(Duration::from_millis(1));
        let (index, start) = slice_of(now, slice_length);
        let slice = &mut inner.slices[index];
        if slice.0 != start {
            // The slot last held an older slice: start it afresh.
            *slice = (start, 0, 0);
        }
        if success {
            slice.1 += 1;
            inner.consecutive_failures = 0;
        } else {
            slice.2 += 1;
            inner.consecutive_failures += 1;
        }
        let window_start = now.checked_sub(self.policy.window).unwrap_or(now);
        let (successes, failures) = inner
            .slices
            .iter()
            .filter(|(start, _, _)| *start > window_start)
            .fold((0u32, 0u32), |(s, f), (_, ss, ff)| (s + ss, f + ff));
        let total = successes + failures;
        let ratio_trips = total >= self.policy.min_requests
            && f64::from(failures) / f64::from(total) >= self.policy.failure_ratio;
        let streak_trips = self.policy.consecutive_failures > 0
            && inner.consecutive_failures >= self.policy.consecutive_failures;
        if ratio_trips || streak_trips {
            tracing::warn!(target: "gantry::breaker", service = %self.service, failures, requests = total, "circuit breaker opened");
            self.open(&mut inner, now);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.open_until = now + self.policy.open_for;
        inner.consecutive_failures = 0;
        inner.slices = [(now, 0, 0); SLICES];
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.transition(inner, BreakerState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state != to {
            tracing::info!(target: "gantry::breaker", service = %self.service, from = inner.state.as_str(), to = to.as_str(), "circuit breaker state changed");
            inner.state = to;
        }
    }
}

/// The ring slot `now` falls in, and when that slice began (slices are
/// aligned to a process-wide epoch, so a slot's start says which slice it holds).
fn slice_of(now: Instant, slice_length: Duration) -> (usize, Instant) {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let length = slice_length.as_nanos().max(1);
    let number = now.saturating_duration_since(epoch).as_nanos() / length;
    let start = epoch + Duration::from_nanos((number * length) as u64);
    ((number % SLICES as u128) as usize, start)
}
