//! When and how a failed attempt is retried.

use std::time::Duration;

use http::{HeaderMap, Method};

/// Methods whose repetition has the same effect as one call (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// Exponential backoff with full jitter: a random wait up to
/// `base * 2^retry`, capped at `max`.
pub(crate) fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(16)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_are_retried() {
        let none = HeaderMap::new();
        assert!(is_idempotent(&Method::GET, &none));
        assert!(is_idempotent(&Method::PUT, &none));
        assert!(!is_idempotent(&Method::POST, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", "abc".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &keyed));
    }

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for retry in 0..20 {
            let wait = backoff(retry, base, max);
            assert!(wait <= base * 2u32.pow(retry.min(4)).min(10) || wait <= max);
            assert!(wait <= max);
        }
    }
}
