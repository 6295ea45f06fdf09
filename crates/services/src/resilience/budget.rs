//! Retry budget: retries may add at most a fixed fraction of extra load.
//!
//! Each original request deposits `ratio` of a token; each retry withdraws a
//! whole one. A small floor of tokens per second lets a quiet service still
//! retry the odd failure. During a full outage the budget runs dry and retries
//! stop, so a failing service sees at most `1 + ratio` times its normal load.

use std::sync::Mutex;
use std::time::Instant;

/// Retries a quiet service may make per second regardless of its traffic (and
/// the burst it starts with), as Linkerd's default budget allows.
pub const FLOOR_PER_SECOND: f64 = 10.0;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            state: Mutex::new(State {
                tokens: FLOOR_PER_SECOND,
                refilled: Instant::now(),
            }),
        }
    }

    fn cap(&self) -> f64 {
        // Enough for a burst of retries after a calm period, never an avalanche.
        (self.ratio * 100.0).max(FLOOR_PER_SECOND * 10.0)
    }

    /// An original request: adds to the budget.
    pub fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tokens = (state.tokens + self.ratio).min(self.cap());
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        state.tokens = (state.tokens + elapsed * FLOOR_PER_SECOND).min(self.cap());
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_of_requests() {
        let budget = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants a retry.
            if budget.withdraw() {
                retries += 1;
            }
        }
        // 20% of 1000, plus the initial burst and a little refill.
        assert!((200..=215).contains(&retries), "{retries} retries");
    }
}
