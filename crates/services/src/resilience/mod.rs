//! Reliability state of one running service, shared by every caller: a
//! circuit breaker and a retry budget. (The bulkhead, a cap on requests in
//! flight, is counted by the [`crate::ServiceHandle`] itself.) A service kept
//! running across a reload keeps them; a restarted one starts afresh.

mod breaker;
mod budget;

pub use breaker::{Admission, BreakerState, CircuitBreaker};
pub use budget::RetryBudget;
