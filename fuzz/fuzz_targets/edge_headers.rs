//! Arbitrary client headers (Authorization, traceparent, X-Request-Id,
//! X-Forwarded-For, Cookie, Connection) go through the gateway's parsers and
//! the JWT check: never a panic.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] = ["authorization", "traceparent", "x-request-id", "x-forwarded-for", "cookie", "connection"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Split the input into one value per header at 0xff bytes.
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == 0xff)) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    gantry_gateway::fuzzing::edge_headers(&headers);
});
