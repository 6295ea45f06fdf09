//! gRPC through the gateway: the call's deadline (`grpc-timeout`), its status
//! (`grpc-status`), and refusals answered as gRPC statuses rather than problem
//! documents, which gRPC clients cannot read.
//!
//! gRPC is HTTP/2 with `content-type: application/grpc[+proto|+json...]`; its
//! status comes in trailers, or in the response head for an answer without
//! messages ("trailers-only"), which is how Gantry answers a call it refuses.

use std::time::Duration;

use gantry_manifest::GrpcCode;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;

pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request is a gRPC call (`application/grpc`, with or without a
/// `+codec` suffix; gRPC-Web is another protocol and is not included).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). `None` for anything else, which the call then runs without.
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time left of a call, as the upstream gets it in `grpc-timeout`:
/// milliseconds (rounded down, so the upstream gives up no later than
/// Gantry), or microseconds under one millisecond, or seconds when the
/// milliseconds need more than 8 digits.
pub(crate) fn encode_timeout(left: Duration) -> HeaderValue {
    let millis = left.as_millis();
    let text = if millis == 0 {
        format!("{}u", left.as_micros())
    } else if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit are a valid header value")
}

/// The gRPC status a response head carries (trailers-only answers).
pub(crate) fn status_in(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    value.parse().ok()
}

/// Whether a response head says the server failed the call: the gRPC
/// statuses that mean "the server, not the request" (what HTTP says with 5xx).
pub(crate) fn server_failed(headers: &HeaderMap) -> bool {
    const FAILURES: [GrpcCode; 5] = [
        GrpcCode::Unknown,
        GrpcCode::DeadlineExceeded,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
    ];
    status_in(headers).is_some_and(|code| FAILURES.iter().any(|f| *f as u8 == code))
}

/// The gRPC status for one of Gantry's own refusals, by its HTTP status:
/// the closest meaning, not gRPC's generic HTTP mapping (which turns most
/// refusals into UNKNOWN or UNAVAILABLE).
pub(crate) fn code_for(status: StatusCode) -> GrpcCode {
    match status.as_u16() {
        400 | 411 | 415 | 422 => GrpcCode::InvalidArgument,
        401 => GrpcCode::Unauthenticated,
        403 => GrpcCode::PermissionDenied,
        404 | 405 | 501 => GrpcCode::Unimplemented,
        408 | 504 => GrpcCode::DeadlineExceeded,
        409 => GrpcCode::Aborted,
        412 | 428 => GrpcCode::FailedPrecondition,
        413 | 429 | 431 => GrpcCode::ResourceExhausted,
        502 | 503 => GrpcCode::Unavailable,
        400..=499 => GrpcCode::FailedPrecondition,
        _ => GrpcCode::Internal,
    }
}

/// One of Gantry's problem answers, rewritten for a gRPC client: a
/// trailers-only answer (HTTP 200, no messages) with `grpc-status` and the
/// problem's detail in `grpc-message`. Headers that still mean something
/// (`Retry-After`, rate limit state, the request id) are kept.
pub(crate) fn refusal(response: Response<GatewayBody>) -> Response<GatewayBody> {
    let (mut parts, _) = response.into_parts();
    let code = code_for(parts.status);
    let detail = parts
        .extensions
        .get::<gantry_problem::Detail>()
        .map(|d| d.0.as_str())
        .unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("refused"));
    let message = percent_encode(detail);
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&message) {
        parts.headers.insert(GRPC_MESSAGE, message);
    }
    Response::from_parts(parts, GatewayBody::local(bytes::Bytes::new()))
}

/// `grpc-message` encoding: UTF-8, with bytes outside printable ASCII and
/// `%` itself percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_are_told_apart_by_their_content_type() {
        let mut headers = HeaderMap::new();
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_bad_ones_ignored() {
        let parse = |v: &'static str| parse_timeout(&HeaderValue::from_static(v));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99u"), Some(Duration::from_micros(99)));
        assert_eq!(parse("1000n"), Some(Duration::from_nanos(1000)));
        for bad in ["", "m", "123456789m", "10x", "-5m", "1.5S", "10 m"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_time_left_is_sent_in_the_largest_precise_unit() {
        assert_eq!(encode_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(encode_timeout(Duration::from_micros(300)), "300u");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        let back = parse_timeout(&encode_timeout(Duration::from_micros(123_456))).unwrap();
        assert!(
            back <= Duration::from_micros(123_456),
            "never more than was left"
        );
    }

    #[test]
    fn a_refusal_becomes_a_trailers_only_answer_with_its_detail() {
        let problem = gantry_problem::Problem::edge(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
        )
        .detail("missing bearer token; 100% sure");
        let response = refusal(problem.respond_with(GatewayBody::local));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()[GRPC_STATUS], "16");
        assert_eq!(
            response.headers()[GRPC_MESSAGE],
            "missing bearer token; 100%25 sure"
        );
    }

    #[test]
    fn each_refusal_has_the_grpc_status_a_client_expects() {
        for (status, code) in [
            (401, GrpcCode::Unauthenticated),
            (403, GrpcCode::PermissionDenied),
            (429, GrpcCode::ResourceExhausted),
            (503, GrpcCode::Unavailable),
            (504, GrpcCode::DeadlineExceeded),
            (404, GrpcCode::Unimplemented),
            (413, GrpcCode::ResourceExhausted),
            (500, GrpcCode::Internal),
        ] {
            assert_eq!(
                code_for(StatusCode::from_u16(status).unwrap()),
                code,
                "{status}"
            );
        }
    }
}
