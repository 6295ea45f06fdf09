//! Errors the gateway answers itself, as RFC 9457 problem details.

use gantry_problem::Blame;
use http::{HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;

/// A failure Gantry answers instead of the upstream. Each has a stable `type`
/// URN that clients and docs can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    NoRoute,
    NoHealthyInstance,
    UpstreamRefused,
    UpstreamReset,
    UpstreamTimeout,
    CircuitOpen,
    BulkheadFull,
    BadRequestBody,
    RateLimited,
    MethodNotAllowed,
    BodyTooLarge,
    OriginNotAllowed,
    Unauthenticated,
    Forbidden,
    IdempotencyKeyMissing,
    IdempotencyConflict,
    IdempotencyMismatch,
    StoreUnavailable,
    HeadersTooLarge,
    BadPath,
}

impl Problem {
    /// The short name: the last part of the `type` URN
    /// (`urn:gantry:problem:NAME`), and the `reason` of fallback metrics and
    /// headers.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Problem::NoRoute => "no-route",
            Problem::NoHealthyInstance => "no-healthy-instance",
            Problem::UpstreamRefused => "upstream-refused",
            Problem::UpstreamReset => "upstream-reset",
            Problem::UpstreamTimeout => "upstream-timeout",
            Problem::CircuitOpen => "circuit-open",
            Problem::BulkheadFull => "bulkhead-full",
            Problem::BadRequestBody => "bad-request-body",
            Problem::RateLimited => "rate-limited",
            Problem::MethodNotAllowed => "method-not-allowed",
            Problem::BodyTooLarge => "body-too-large",
            Problem::OriginNotAllowed => "origin-not-allowed",
            Problem::Unauthenticated => "unauthenticated",
            Problem::Forbidden => "forbidden",
            Problem::IdempotencyKeyMissing => "idempotency-key-missing",
            Problem::IdempotencyConflict => "idempotency-key-in-use",
            Problem::IdempotencyMismatch => "idempotency-key-reused",
            Problem::StoreUnavailable => "store-unavailable",
            Problem::HeadersTooLarge => "headers-too-large",
            Problem::BadPath => "bad-path",
        }
    }

    /// Who the refusal is to blame on: the caller (4xx), the service it was
    /// for, or Gantry's own store.
    pub(crate) fn blame(self) -> Blame {
        match self {
            Problem::NoHealthyInstance
            | Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamTimeout
            | Problem::CircuitOpen
            | Problem::BulkheadFull => Blame::Upstream,
            Problem::StoreUnavailable => Blame::Gantry,
            _ => Blame::Caller,
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::NoHealthyInstance => StatusCode::SERVICE_UNAVAILABLE,
            Problem::UpstreamRefused | Problem::UpstreamReset => StatusCode::BAD_GATEWAY,
            Problem::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Problem::CircuitOpen | Problem::BulkheadFull => StatusCode::SERVICE_UNAVAILABLE,
            Problem::BadRequestBody => StatusCode::BAD_REQUEST,
            Problem::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Problem::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Problem::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::OriginNotAllowed => StatusCode::FORBIDDEN,
            Problem::Unauthenticated => StatusCode::UNAUTHORIZED,
            Problem::Forbidden => StatusCode::FORBIDDEN,
            Problem::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            Problem::IdempotencyConflict => StatusCode::CONFLICT,
            Problem::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Problem::BadPath => StatusCode::BAD_REQUEST,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Problem::NoRoute => "No route matches this request",
            Problem::NoHealthyInstance => "No healthy instance of the service",
            Problem::UpstreamRefused => "The service refused the connection",
            Problem::UpstreamReset => "The service closed the connection without a response",
            Problem::UpstreamTimeout => "The service did not answer in time",
            Problem::CircuitOpen => "The service is failing; requests to it are paused",
            Problem::BulkheadFull => "The service has too many requests in flight",
            Problem::BadRequestBody => "The request body could not be read",
            Problem::RateLimited => "Too many requests",
            Problem::MethodNotAllowed => "The route does not accept this method",
            Problem::BodyTooLarge => "The request body is too large for this route",
            Problem::OriginNotAllowed => "This origin may not call the route from a browser",
            Problem::Unauthenticated => "Valid credentials are required",
            Problem::Forbidden => "The credentials do not allow this",
            Problem::IdempotencyKeyMissing => "A valid idempotency key is required",
            Problem::IdempotencyConflict => "A request with this idempotency key is in progress",
            Problem::IdempotencyMismatch => "The idempotency key was used for a different request",
            Problem::StoreUnavailable => "Gantry's store is unavailable",
            Problem::HeadersTooLarge => "The request headers are too large",
            Problem::BadPath => "The request path is not acceptable",
        }
    }

    /// Builds the response. `detail` says what happened for this request.
    pub(crate) fn respond(
        self,
        detail: String,
        path: &str,
        request_id: &HeaderValue,
    ) -> Response<GatewayBody> {
        tracing::debug!(
            target: "gantry::gateway",
            problem = self.reason(),
            blame = ?self.blame(),
            path,
            "refused: {detail}"
        );
        let mut problem = gantry_problem::Problem::edge(self.status(), self.reason(), self.title())
            .detail(detail)
            .instance(path)
            .request_id(request_id.to_str().unwrap_or_default());
        if matches!(
            self,
            Problem::NoHealthyInstance | Problem::CircuitOpen | Problem::BulkheadFull
        ) {
            // Nothing was sent and the service may have room in a moment.
            problem = problem.retry_after(1);
        }
        problem.respond_with(GatewayBody::local)
    }
}
