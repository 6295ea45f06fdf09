//! Request identity: the `X-Request-Id` a request is known by, and its place in
//! a distributed trace (W3C Trace Context `traceparent`).
//!
//! Parsing `traceparent` is written here rather than pulled from the
//! OpenTelemetry SDK: the gateway only needs to read, validate and re-issue one
//! 55-byte header per request, which is a few lines and no allocation.

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

/// This hop's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: u128,
    /// The span id of this hop, sent upstream as the parent.
    pub span_id: u64,
    /// The caller's span id, when the trace was continued.
    pub parent_id: Option<u64>,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the caller's trace if its `traceparent` is valid, else starts one.
    pub(crate) fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = nonzero_u64();
        match headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                flags,
            },
            None => TraceContext {
                trace_id: loop {
                    let id = fastrand::u128(..);
                    if id != 0 {
                        break id;
                    }
                },
                span_id,
                parent_id: None,
                flags: 0x01,
            },
        }
    }

    /// A new span in the same trace, under this one (an upstream attempt).
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            parent_id: Some(self.span_id),
            flags: self.flags,
        }
    }

    /// The trace id, displayed as 32 hex digits without allocating.
    pub(crate) fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The `traceparent` to send upstream: same trace, this hop as parent.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        // Formatted by hand: this runs on every request and `format!` of a
        // u128 as hex is several times slower.
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        write_hex(&mut out[53..55], u128::from(self.flags));
        HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
    }
}

/// A trace id for logs: 32 lowercase hex digits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceId(u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Fills `out` with the low `out.len()` hex digits of `value`, lowercase.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, lowercase hex. Versions above 00 may carry
/// more fields after the flags, which are ignored as the spec asks.
fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = u128::from_str_radix(lower_hex(&value[3..35])?, 16).ok()?;
    let parent_id = u64::from_str_radix(lower_hex(&value[36..52])?, 16).ok()?;
    let flags = hex_u8(&value[53..55])?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

fn lower_hex(bytes: &[u8]) -> Option<&str> {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
}

fn hex_u8(bytes: &[u8]) -> Option<u8> {
    u8::from_str_radix(lower_hex(bytes)?, 16).ok()
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
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_headers(&headers(TRACEPARENT, incoming));
        assert_eq!(
            ctx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ctx.parent_id, Some(0x00f067aa0ba902b7));
        let out = ctx.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!out.contains("00f067aa0ba902b7"));
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let ctx = TraceContext::from_headers(&headers(TRACEPARENT, bad));
            assert_eq!(ctx.parent_id, None, "{bad} should not be continued");
        }
        // A future version with extra fields is still continued.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::from_headers(&headers(TRACEPARENT, future))
            .parent_id
            .is_some());
    }
}
