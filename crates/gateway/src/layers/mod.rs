//! The edge policies of a route, as a stack of layers.
//!
//! Each policy is one [`Layer`] in its own module; [`stack`] builds a
//! route's stack when the route table is built, with only the policies the
//! route has, and is the one place their order is written (with why each
//! sits where it does). The proxy runs the stack between routing and
//! admission: each layer may change the request ([`Exchange`]) and either
//! lets it go on or answers it.
//!
//! Why a small enum of our own rather than tower `Layer`s: every policy here
//! borrows the route table for the life of the request (limiters, JWT keys,
//! stores), answers with the same response type, and runs in a fixed order
//! known when the table is built. An enum dispatched with a `match` keeps
//! that borrow, costs no boxing or `poll_ready` per layer, and reads as a
//! plain list; tower's `Service` would need owned, cloned state per layer
//! and boxed futures on the hottest path of the gateway.

mod authenticate;
mod body_limit;
mod claims;
pub(crate) mod idempotency;
mod rate_limit;
#[cfg(test)]
mod testing;
mod webhook;

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use gantry_manifest::{AuthMode, RateLimitKey};
use http::header::HeaderValue;
use http::Response;

use crate::body::GatewayBody;
use crate::forwarding::Peer;
use crate::idempotency::ClaimGuard;
use crate::proxy::Gateway;
use crate::rate_limit::RateLimiter;
use crate::router::{CompiledRoute, RouteTable};
use crate::upstream::RequestBody;
use crate::webhook::WebhookVerifier;

pub(crate) use rate_limit::{RATELIMIT, RATELIMIT_POLICY};

/// Verified claims: a JWT's payload, an API key's consumer (`sub`) or a
/// client certificate's subject.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// What a layer decides: go on to the next one, or answer the client now.
pub(crate) type Verdict = ControlFlow<Response<GatewayBody>>;

/// One request on its way through a route's layers.
pub(crate) struct Exchange<'a> {
    pub(crate) gateway: &'a Gateway,
    pub(crate) table: &'a RouteTable,
    pub(crate) route: &'a CompiledRoute,
    pub(crate) client: &'a Peer,
    /// The client's address (through trusted proxies).
    pub(crate) client_addr: IpAddr,
    /// The normalised path, for problems.
    pub(crate) path: &'a str,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) parts: http::request::Parts,
    pub(crate) body: RequestBody,
    /// Set by [`Layer::Authenticate`].
    pub(crate) claims: Option<Claims>,
    /// `RateLimit-Policy` and `RateLimit` for the answer, set by a rate limit.
    pub(crate) rate_headers: Option<(HeaderValue, HeaderValue)>,
    /// The idempotency key this request claimed: its answer is stored.
    pub(crate) claim_guard: Option<ClaimGuard>,
}

impl Exchange<'_> {
    /// Takes the body out to transform it; put the result back.
    fn take_body(&mut self) -> RequestBody {
        std::mem::replace(&mut self.body, RequestBody::Buffered(None))
    }

    /// A problem for this request.
    fn problem(&self, problem: crate::problem::Problem, detail: String) -> Verdict {
        ControlFlow::Break(problem.respond(detail, self.path, self.request_id))
    }
}

/// One edge policy of a route.
#[derive(Debug)]
pub(crate) enum Layer {
    /// Removes client copies of headers Gantry sets from verified claims.
    StripClaimHeaders,
    /// Counts the request against the route's `rate_limit`.
    RateLimit(Arc<RateLimiter>),
    /// Checks the route's `auth`, guarded by the failed-auth limiter, and
    /// forwards the claims it asks for.
    Authenticate,
    /// Refuses bodies past the route's `max_body`.
    BodyLimit(u64),
    /// Verifies a webhook's signature over its body.
    Webhook(Arc<WebhookVerifier>),
    /// Claims, replays or refuses an idempotency key.
    Idempotency,
}

impl Layer {
    pub(crate) async fn apply(&self, exchange: &mut Exchange<'_>) -> Verdict {
        match self {
            Layer::StripClaimHeaders => claims::strip(exchange),
            Layer::RateLimit(limiter) => rate_limit::apply(limiter, exchange),
            Layer::Authenticate => authenticate::apply(exchange).await,
            Layer::BodyLimit(limit) => body_limit::apply(*limit, exchange).await,
            Layer::Webhook(verifier) => webhook::apply(verifier, exchange).await,
            Layer::Idempotency => idempotency::apply(exchange).await,
        }
    }
}

/// A route's layers, in the order they run. This is the one place the
/// order is written; a route gets only the layers for policies it has.
pub(crate) fn stack(route: &CompiledRoute, strip_claim_headers: bool) -> Vec<Layer> {
    let mut layers = Vec::new();
    // First, whatever happens next: a client cannot send its own copy of a
    // header Gantry fills from verified claims (any route's
    // `forward_claims`), to this route's service nor into a `header:` limit.
    if strip_claim_headers {
        layers.push(Layer::StripClaimHeaders);
    }
    let by_identity = route
        .rate_limit
        .as_ref()
        .filter(|l| !matches!(l.policy.key, RateLimitKey::Ip));
    // A limit by client address runs before credentials are looked at: a
    // flood of bad tokens costs one map lookup each, not a signature check.
    if let Some(limiter) = route.rate_limit.as_ref().filter(|_| by_identity.is_none()) {
        layers.push(Layer::RateLimit(limiter.clone()));
    }
    if route.auth != AuthMode::None {
        layers.push(Layer::Authenticate);
    }
    // A limit by header or claim runs after authentication: the claim is
    // verified by then (and a forwarded-claim header is Gantry's own).
    if let Some(limiter) = by_identity {
        layers.push(Layer::RateLimit(limiter.clone()));
    }
    // The body limit comes before anything reads the body.
    if let Some(limit) = route.shaping.max_body {
        layers.push(Layer::BodyLimit(limit));
    }
    // The webhook signature is checked over the (limited) body.
    if let Some(verifier) = &route.webhook {
        layers.push(Layer::Webhook(verifier.clone()));
    }
    // Idempotency last: a stored answer is replayed only to a request that
    // passed every check above, and a key is claimed only for a request
    // that will be sent.
    if route.idempotency.is_some() {
        layers.push(Layer::Idempotency);
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::testing::{Rig, JWT_SECTION};
    use super::*;

    fn names(layers: &[Layer]) -> Vec<&'static str> {
        layers
            .iter()
            .map(|layer| match layer {
                Layer::StripClaimHeaders => "strip-claim-headers",
                Layer::RateLimit(_) => "rate-limit",
                Layer::Authenticate => "authenticate",
                Layer::BodyLimit(_) => "body-limit",
                Layer::Webhook(_) => "webhook",
                Layer::Idempotency => "idempotency",
            })
            .collect()
    }

    #[tokio::test]
    async fn a_route_gets_only_its_policies_in_the_written_order() {
        let rig = Rig::new(
            &[
                JWT_SECTION,
                r#"
[[routes]]
name = "bare"
path = "/bare"
to = "app"

[[routes]]
name = "by-ip"
path = "/ip"
to = "app"
auth = "jwt"
rate_limit = { requests = 5, per = "1s" }
max_body = "1KiB"

[[routes]]
name = "by-claim"
path = "/claim"
to = "app"
auth = "jwt"
forward_claims = { sub = "x-user" }
rate_limit = { requests = 5, per = "1s", key = "claim:sub" }
idempotency = { header = "idempotency-key" }
"#,
            ]
            .concat(),
        )
        .await;
        // Every route strips the claim headers some route sets.
        assert_eq!(names(&rig.route("bare").layers), ["strip-claim-headers"]);
        assert_eq!(
            names(&rig.route("by-ip").layers),
            [
                "strip-claim-headers",
                "rate-limit",
                "authenticate",
                "body-limit"
            ]
        );
        assert_eq!(
            names(&rig.route("by-claim").layers),
            [
                "strip-claim-headers",
                "authenticate",
                "rate-limit",
                "idempotency"
            ]
        );
    }
}
