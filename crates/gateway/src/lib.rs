//! The HTTP edge of Gantry: every client request enters here.
//!
//! A [`Gateway`] holds the current [`RouteTable`] behind an atomic pointer. A
//! reload builds a whole new table and swaps it in ([`Gateway::swap`]); requests
//! already running keep the table (and service handles) they started with, so a
//! reload never fails a request.
//!
//! Each request goes through these phases, in order (see [`proxy`]):
//! 1. **identify**: keep a well-formed `X-Request-Id` or make one; continue the
//!    W3C `traceparent` or start a trace, with a new span id for this hop;
//! 2. **route**: the first route whose path, methods, host and headers match;
//! 3. **pick**: a healthy instance of the route's service, round-robin;
//! 4. **forward**: rewrite the path, drop hop-by-hop headers, set
//!    `X-Forwarded-*`, and send it over a pooled keep-alive connection, bodies
//!    streaming both ways, within the route's timeout;
//! 5. **record**: one access-log event and the request metrics.
//!
//! Failures become `application/problem+json` responses (RFC 9457) carrying the
//! request id: 404 no route, 502 upstream refused or reset, 503 no healthy
//! instance, 504 upstream timeout.

mod api_keys;
mod auth;
mod body;
mod forward;
mod forwarding;
mod idempotency;
mod identity;
mod metrics;
mod problem;
pub mod proxy;
mod rate_limit;
mod resilience;
mod router;
mod server;
mod shadow;
mod shaping;
mod split;
mod upstream;

pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey};
pub use body::GatewayBody;
pub use forwarding::Peer;
pub use idempotency::IdempotencyStore;
pub use metrics::GatewayMetrics;
pub use proxy::Gateway;
pub use router::{BuildError, RouteInfo, RouteTable};
pub use server::serve;
pub use shadow::{Difference, ShadowSummary, Side};
pub use split::Weight;
pub use upstream::UpstreamBody;
