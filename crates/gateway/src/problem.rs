//! Errors the gateway answers itself, as RFC 9457 problem details.

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

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

#[derive(Serialize)]
struct ProblemDetails<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    instance: &'a str,
    request_id: &'a str,
}

impl Problem {
    /// The short name used as the `reason` of fallback metrics and headers.
    pub(crate) fn reason(self) -> &'static str {
        self.kind().trim_start_matches("urn:gantry:problem:")
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

    fn kind(self) -> &'static str {
        match self {
            Problem::NoRoute => "urn:gantry:problem:no-route",
            Problem::NoHealthyInstance => "urn:gantry:problem:no-healthy-instance",
            Problem::UpstreamRefused => "urn:gantry:problem:upstream-refused",
            Problem::UpstreamReset => "urn:gantry:problem:upstream-reset",
            Problem::UpstreamTimeout => "urn:gantry:problem:upstream-timeout",
            Problem::CircuitOpen => "urn:gantry:problem:circuit-open",
            Problem::BulkheadFull => "urn:gantry:problem:bulkhead-full",
            Problem::BadRequestBody => "urn:gantry:problem:bad-request-body",
            Problem::RateLimited => "urn:gantry:problem:rate-limited",
            Problem::MethodNotAllowed => "urn:gantry:problem:method-not-allowed",
            Problem::BodyTooLarge => "urn:gantry:problem:body-too-large",
            Problem::OriginNotAllowed => "urn:gantry:problem:origin-not-allowed",
            Problem::Unauthenticated => "urn:gantry:problem:unauthenticated",
            Problem::Forbidden => "urn:gantry:problem:forbidden",
            Problem::IdempotencyKeyMissing => "urn:gantry:problem:idempotency-key-missing",
            Problem::IdempotencyConflict => "urn:gantry:problem:idempotency-key-in-use",
            Problem::IdempotencyMismatch => "urn:gantry:problem:idempotency-key-reused",
            Problem::StoreUnavailable => "urn:gantry:problem:store-unavailable",
            Problem::HeadersTooLarge => "urn:gantry:problem:headers-too-large",
            Problem::BadPath => "urn:gantry:problem:bad-path",
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
        let body = ProblemDetails {
            kind: self.kind(),
            title: self.title(),
            status: self.status().as_u16(),
            detail,
            instance: path,
            request_id: request_id.to_str().unwrap_or_default(),
        };
        let json = serde_json::to_vec(&body).expect("problem details always serialize");
        let mut response = Response::new(GatewayBody::local(json));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            self,
            Problem::NoHealthyInstance | Problem::CircuitOpen | Problem::BulkheadFull
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
