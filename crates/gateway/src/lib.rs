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
mod attempts;
mod auth;
mod body;
mod database;
mod fallback;
mod forwarding;
mod grpc;
mod idempotency;
mod identity;
mod layers;
mod metrics;
mod normalize;
mod problem;
pub mod proxy;
mod rate_limit;
mod resilience;
mod router;
mod server;
mod shadow;
mod shaping;
pub mod shared_limits;
mod split;
mod upstream;
mod webhook;
mod websocket;

pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey};
pub use body::GatewayBody;
pub use database::StoreError;
pub use forwarding::{Peer, TlsSession};
pub use idempotency::IdempotencyStore;
pub use metrics::GatewayMetrics;
pub use proxy::{Attempt, Gateway, GatewayParts, Observation, RequestObserver};
pub use router::{BuildError, RouteInfo, RouteTable};
pub use server::{redirect_to_https, serve};
pub use shadow::{Difference, ShadowSummary, Side};
pub use split::Weight;
pub use upstream::UpstreamBody;
pub use websocket::SocketClosed;

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use http::HeaderMap;

    /// Runs every parser the gateway applies to client headers before routing:
    /// request id, trace context, forwarded-for chain, cookies, and a JWT check
    /// against an HS256 key. None of them may panic.
    pub fn edge_headers(headers: &HeaderMap) {
        let _ = crate::identity::request_id(headers);
        let trace = crate::identity::trace_context(headers, |_| true);
        let _ = crate::identity::traceparent(&trace);
        let peer = crate::forwarding::Peer::new(([10, 0, 0, 1], 1234).into());
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("a CIDR")];
        let _ = crate::forwarding::client_ip(&peer, headers, &trusted);
        let _ = crate::attempts::affinity_key(
            &gantry_manifest::HashKey::Cookie("session".into()),
            headers,
        );
        let mut edited = headers.clone();
        crate::forwarding::strip_hop_by_hop(&mut edited);
        let verifier = verifier();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let _ = runtime.block_on(verifier.check(headers, &["orders:write".to_string()]));
    }

    /// Normalises a request path under every `escaped_slashes` policy and
    /// checks what must always hold: the result starts with `/`, has no
    /// `.`/`..` segment or `//`, and normalising it again changes nothing.
    pub fn normalize_path(path: &str) {
        use gantry_manifest::EscapedSlashes;
        for policy in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            crate::normalize::assert_normal_form(path, policy);
        }
    }

    fn verifier() -> &'static crate::auth::JwtVerifier {
        static VERIFIER: std::sync::OnceLock<crate::auth::JwtVerifier> = std::sync::OnceLock::new();
        VERIFIER.get_or_init(|| {
            let config = gantry_manifest::JwtConfig {
                issuer: None,
                audience: Some("fuzz".into()),
                leeway: std::time::Duration::from_secs(5),
                jwks_url: None,
                keys: vec![gantry_manifest::JwtKey {
                    kid: Some("k".into()),
                    algorithm: "HS256".into(),
                    secret_env: None,
                    secret: Some("fuzz-secret".into()),
                    pem_file: None,
                }],
                typ: None,
            };
            crate::auth::JwtVerifier::new(&config).expect("an HS key loads")
        })
    }
}
