//! Rate limits per client: the generic cell rate algorithm (GCRA), an exact
//! token bucket kept as one timestamp per key.
//!
//! Each key stores its "theoretical arrival time" (TAT). A request is allowed
//! when it would not push the TAT further than `burst` emission intervals
//! past now; allowing it moves the TAT one interval on. The check and the
//! update happen under one lock, so the limit holds exactly under concurrency.
//! A key whose TAT has passed is indistinguishable from a new one and is
//! dropped, so memory follows the number of recently active clients.
//!
//! In cluster mode a limit is the cluster's total: each limiter also counts
//! what it allowed per key since the last exchange, and
//! [`crate::shared_limits`] trades those counts with the other nodes a few
//! times a second, charging theirs to the local TATs ([`RateLimiter::charge`]).
//! No request waits on the database.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_manifest::RateLimitPolicy;
use http::HeaderValue;

const SHARDS: usize = 16;
/// A shard is swept of idle keys when it grows past this many.
const SWEEP_AT: usize = 4096;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    pub(crate) policy: RateLimitPolicy,
    interval: Duration,
    capacity: Duration,
    shards: Vec<Mutex<Shard>>,
    policy_header: HeaderValue,
    /// Set once the cluster exchange picks this limiter up: from then on
    /// allowed requests are counted into `Shard::allowed` for it.
    shared: AtomicBool,
}

#[derive(Debug)]
struct Shard {
    keys: HashMap<String, Instant>,
    /// Cluster mode: requests allowed per key since the last exchange.
    allowed: HashMap<String, u32>,
    /// Sweep when the shard grows past this; doubling it after each sweep
    /// keeps the cost of sweeping constant per request.
    sweep_at: usize,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed { remaining: u32, reset: Duration },
    Limited { retry_after: Duration },
}

impl RateLimiter {
    pub(crate) fn new(policy: RateLimitPolicy) -> RateLimiter {
        let interval = policy.per / policy.requests.max(1);
        let capacity = interval * policy.burst.max(1);
        let policy_header = HeaderValue::from_str(&format!(
            "\"default\";q={};w={}",
            policy.requests,
            policy.per.as_secs().max(1)
        ))
        .expect("digits are a valid header value");
        RateLimiter {
            policy,
            interval,
            capacity,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        keys: HashMap::new(),
                        allowed: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
            policy_header,
            shared: AtomicBool::new(false),
        }
    }

    /// Whether a request of `key` at `now` would be allowed, without counting it.
    pub(crate) fn peek(&self, key: &str, now: Instant) -> Decision {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        self.decide(&shard, key, now).0
    }

    /// Counts a request of `key` at `now`, if the limit allows it.
    pub(crate) fn check(&self, key: &str, now: Instant) -> Decision {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let (decision, next) = self.decide(&shard, key, now);
        if let Decision::Allowed { .. } = decision {
            if self.shared.load(Ordering::Relaxed) {
                *shard.allowed.entry(key.to_string()).or_default() += 1;
            }
            shard.keys.insert(key.to_string(), next);
            if shard.keys.len() > shard.sweep_at {
                shard.keys.retain(|_, tat| *tat > now);
                shard.sweep_at = (shard.keys.len() * 2).max(SWEEP_AT);
            }
        }
        decision
    }

    /// Gives back what one allowed request of `key` took (it turned out not
    /// to count, e.g. its credentials were good).
    pub(crate) fn refund(&self, key: &str, now: Instant) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = shard.allowed.get_mut(key) {
            *count = count.saturating_sub(1);
        }
        if let Some(tat) = shard.keys.get_mut(key) {
            match tat.checked_sub(self.interval) {
                Some(earlier) if earlier > now => *tat = earlier,
                _ => {
                    shard.keys.remove(key);
                }
            }
        }
    }

    /// Starts counting allowed requests for the cluster exchange.
    pub(crate) fn share(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// The requests allowed per key since the last call (cluster mode).
    pub(crate) fn take_allowed(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.allowed.drain().filter(|(_, n)| *n > 0));
        }
        out
    }

    /// Charges `count` requests that other nodes allowed for `key` to this
    /// node's bucket, as if they had come here. The TAT is bounded to one
    /// window past the bucket, so a burst elsewhere cannot lock a key out
    /// for longer than the limit's own period.
    pub(crate) fn charge(&self, key: &str, count: u32, now: Instant) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let tat = shard
            .keys
            .get(key)
            .copied()
            .filter(|tat| *tat > now)
            .unwrap_or(now);
        let ceiling = now + self.capacity + self.policy.per;
        let next = (tat + self.interval * count).min(ceiling);
        shard.keys.insert(key.to_string(), next);
    }

    /// The decision for a request of `key` at `now`, and the key's TAT if
    /// the request is counted.
    fn decide(&self, shard: &Shard, key: &str, now: Instant) -> (Decision, Instant) {
        let tat = shard
            .keys
            .get(key)
            .copied()
            .filter(|tat| *tat > now)
            .unwrap_or(now);
        let next = tat + self.interval;
        // The request fits if the bucket, after it, holds at most `capacity`.
        let fill = next.duration_since(now);
        let decision = if fill > self.capacity {
            Decision::Limited {
                retry_after: fill - self.capacity,
            }
        } else {
            Decision::Allowed {
                remaining: ((self.capacity - fill).as_nanos() / self.interval.as_nanos().max(1))
                    as u32,
                reset: fill,
            }
        };
        (decision, next)
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    /// The `RateLimit-Policy` header value.
    pub(crate) fn policy_header(&self) -> &HeaderValue {
        &self.policy_header
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().keys.len())
            .sum()
    }
}

/// The `RateLimit` header value: what is left and when the bucket is full again.
pub(crate) fn rate_limit_header(remaining: u32, reset: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "\"default\";r={remaining};t={}",
        reset.as_secs_f64().ceil() as u64
    ))
    .expect("digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_manifest::RateLimitKey;

    fn limiter(requests: u32, per: Duration, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitPolicy {
            requests,
            per,
            burst,
            key: RateLimitKey::Ip,
        })
    }

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let limiter = limiter(10, Duration::from_secs(1), 3);
        let start = Instant::now();
        for expected in [2, 1, 0] {
            assert_eq!(
                limiter.check("a", start),
                Decision::Allowed {
                    remaining: expected,
                    reset: Duration::from_millis(100) * (3 - expected)
                }
            );
        }
        let Decision::Limited { retry_after } = limiter.check("a", start) else {
            panic!("over the burst")
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // One interval later there is room for one more.
        assert!(matches!(
            limiter.check("a", start + Duration::from_millis(100)),
            Decision::Allowed { .. }
        ));
        // Other keys have their own bucket.
        assert!(matches!(
            limiter.check("b", start),
            Decision::Allowed { remaining: 2, .. }
        ));
    }

    #[test]
    fn counts_are_traded_between_nodes_and_charged() {
        let here = limiter(10, Duration::from_secs(1), 5);
        let start = Instant::now();
        // Not shared yet: nothing is counted for the exchange.
        assert!(matches!(here.check("a", start), Decision::Allowed { .. }));
        assert!(here.take_allowed().is_empty());
        here.share();
        for _ in 0..2 {
            assert!(matches!(here.check("a", start), Decision::Allowed { .. }));
        }
        here.refund("a", start);
        assert_eq!(here.take_allowed(), vec![("a".to_string(), 1)]);
        assert!(here.take_allowed().is_empty(), "taken once");

        // Another node allowed three for `b`: two are left of its burst of five.
        here.charge("b", 3, start);
        for _ in 0..2 {
            assert!(matches!(here.check("b", start), Decision::Allowed { .. }));
        }
        assert!(matches!(here.check("b", start), Decision::Limited { .. }));
        // However much is charged, the key is free again within one period
        // past its bucket.
        here.charge("c", 1_000_000, start);
        assert!(matches!(
            here.check("c", start + Duration::from_millis(1500)),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limiter = limiter(1000, Duration::from_secs(1), 1);
        let start = Instant::now();
        for i in 0..100_000 {
            limiter.check(&format!("client-{i}"), start);
        }
        assert_eq!(limiter.keys(), 100_000, "active clients are all kept");
        // Later, when every bucket has refilled, new traffic sweeps the old keys.
        let later = start + Duration::from_secs(5);
        for i in 0..100_000 {
            limiter.check(&format!("other-{i}"), later);
        }
        assert!(limiter.keys() < 150_000, "{} keys kept", limiter.keys());
    }

    #[test]
    fn a_refund_gives_back_one_request() {
        let limiter = RateLimiter::new(RateLimitPolicy {
            requests: 2,
            per: Duration::from_secs(60),
            burst: 2,
            key: gantry_manifest::RateLimitKey::Ip,
        });
        let now = Instant::now();
        assert!(matches!(limiter.check("a", now), Decision::Allowed { .. }));
        assert!(matches!(limiter.check("a", now), Decision::Allowed { .. }));
        assert!(matches!(limiter.peek("a", now), Decision::Limited { .. }));
        limiter.refund("a", now);
        assert!(matches!(limiter.peek("a", now), Decision::Allowed { .. }));
        assert!(matches!(limiter.check("a", now), Decision::Allowed { .. }));
        assert!(matches!(limiter.check("a", now), Decision::Limited { .. }));
        limiter.refund("b", now); // unknown keys are left alone
        limiter.refund("a", now);
        limiter.refund("a", now);
        limiter.refund("a", now);
        assert_eq!(limiter.keys(), 0, "a fully refunded key is forgotten");
    }
}
