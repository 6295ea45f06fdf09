//! The retry rules of a route. The breaker and retry budget belong to the
//! service (`gantry_services::resilience`), shared by every caller.

pub(crate) mod retry;
