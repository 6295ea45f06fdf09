//! Request identity: the `X-Request-Id` a request is known by, and its place in
//! a distributed trace (W3C Trace Context `traceparent`).
//!
//! The trace context type is shared by every crate
//! (`gantry_telemetry::context`).

use http::{HeaderMap, HeaderValue};

pub(crate) const REQUEST_ID: &str = "x-request-id";
pub(crate) const TRACEPARENT: &str = "traceparent";
const MAX_REQUEST_ID_LEN: usize = 128;

/// The incoming `X-Request-Id` when it is well formed (1 to 128 characters of
/// letters, digits and `-._:+/=`), otherwise a new UUID.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(REQUEST_ID) {
        let bytes = value.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:+/=".contains(b));
        if well_formed {
            return value.clone();
        }
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

pub use gantry_telemetry::context::TraceContext;

/// The hop's trace context: the caller's trace continued when its
/// `traceparent` is valid, else a new trace. Whether it is sampled is
/// `sample(trace_id)`, not the caller's flag: the gateway is the edge, and a
/// client that could set the flag could have every request traced. Hops
/// behind it follow the flag it sends (parent-based).
pub(crate) fn trace_context(headers: &HeaderMap, sample: impl Fn(u128) -> bool) -> TraceContext {
    let mut context =
        TraceContext::continue_or_start(headers.get(TRACEPARENT).map(|v| v.as_bytes()), &sample);
    context.set_sampled(sample(context.trace_id));
    context
}

/// The `traceparent` header that makes `context` the parent.
pub(crate) fn traceparent(context: &TraceContext) -> HeaderValue {
    HeaderValue::from_bytes(&context.traceparent_bytes())
        .expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn well_formed_request_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(&headers(REQUEST_ID, "abc-123")), "abc-123");
        let replaced = request_id(&headers(REQUEST_ID, "has space"));
        assert_ne!(replaced, "has space");
        assert_eq!(replaced.len(), 36);
        let too_long = "a".repeat(129);
        assert_ne!(
            request_id(&headers(REQUEST_ID, &too_long)),
            too_long.as_str()
        );
    }

    #[test]
    fn the_callers_trace_is_continued_and_sampled_by_the_edge() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let flagged = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(!trace_context(&headers(TRACEPARENT, flagged), |_| false).sampled());
        let ctx = trace_context(&headers(TRACEPARENT, incoming), |_| true);
        assert_eq!(ctx.parent_id, Some(0x00f067aa0ba902b7));
        assert!(ctx.sampled(), "the edge decides, not the client");
        let out = traceparent(&ctx);
        assert!(out
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        let fresh = trace_context(&HeaderMap::new(), |_| false);
        assert_eq!(fresh.parent_id, None);
        assert!(!fresh.sampled());
    }
}
