//! Reliability on the hop from the gateway to a service: a circuit breaker and
//! a retry budget per service, and the retry rules of a route. The bulkhead (a
//! cap on requests in flight) is counted by the service handle itself.
//!
//! Per-service state lives in [`ServicePolicies`], which a reload carries over
//! to the new route table whenever the service itself was kept running.

mod breaker;
mod budget;
pub(crate) mod retry;

use std::sync::Arc;

use gantry_services::ServiceHandle;

pub(crate) use breaker::{Admission, CircuitBreaker};
pub(crate) use budget::RetryBudget;

/// The reliability state of one running service.
#[derive(Debug)]
pub(crate) struct ServicePolicies {
    /// The handle these policies belong to: a restarted service starts afresh.
    pub(crate) service: Arc<ServiceHandle>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) budget: RetryBudget,
}

impl ServicePolicies {
    pub(crate) fn new(
        service: Arc<ServiceHandle>,
        metrics: &crate::metrics::GatewayMetrics,
    ) -> ServicePolicies {
        let config = service.config();
        ServicePolicies {
            breaker: CircuitBreaker::new(service.name(), config.circuit_breaker.clone(), metrics),
            budget: RetryBudget::new(config.retry_budget),
            service,
        }
    }
}
