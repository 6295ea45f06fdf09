//! The route's `rate_limit`: a token bucket per key (client address, header
//! or claim); over it, 429 with `Retry-After`. Under it, the IETF
//! `RateLimit-Policy` / `RateLimit` headers go on the answer.

use std::ops::ControlFlow;
use std::time::Instant;

use gantry_manifest::RateLimitKey;
use http::header::{self, HeaderName, HeaderValue};

use super::{Exchange, Verdict};
use crate::problem::Problem;
use crate::rate_limit::{rate_limit_header, Decision, RateLimiter};

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub(super) fn apply(limiter: &RateLimiter, exchange: &mut Exchange<'_>) -> Verdict {
    let key = match &limiter.policy.key {
        RateLimitKey::Ip => exchange.client_addr.to_string(),
        RateLimitKey::Claim(name) => {
            match exchange.claims.as_ref().and_then(|c| c.get(name.as_str())) {
                Some(serde_json::Value::String(value)) => format!("claim:{value}"),
                Some(value) => format!("claim:{value}"),
                // Without credentials, the client address is the key.
                None => exchange.client_addr.to_string(),
            }
        }
        RateLimitKey::Header(name) => exchange
            .parts
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    match limiter.check(&key, Instant::now()) {
        Decision::Allowed { remaining, reset } => {
            exchange.rate_headers = Some((
                limiter.policy_header().clone(),
                rate_limit_header(remaining, reset),
            ));
            ControlFlow::Continue(())
        }
        Decision::Limited { retry_after } => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let detail = format!(
                "route `{}` allows {} requests per {} per client; try again in {seconds}s",
                exchange.route.label,
                limiter.policy.requests,
                humantime::format_duration(limiter.policy.per)
            );
            let mut response =
                Problem::RateLimited.respond(detail, exchange.path, exchange.request_id);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            headers.insert(RATELIMIT_POLICY, limiter.policy_header().clone());
            headers.insert(RATELIMIT, rate_limit_header(0, retry_after));
            ControlFlow::Break(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Rig;
    use super::*;

    #[tokio::test]
    async fn a_client_over_its_limit_gets_429_and_others_go_on() {
        let rig = Rig::new(
            "[[routes]]\nname = \"r\"\npath = \"/\"\nto = \"app\"\nrate_limit = { requests = 2, per = \"1m\", key = \"header:x-tenant\" }\n",
        )
        .await;
        let limiter = rig.route("r").rate_limit.clone().unwrap();
        for _ in 0..2 {
            let mut ok = rig.exchange("r", "GET", "/", &[("x-tenant", "a")], "");
            assert!(apply(&limiter, &mut ok).is_continue());
            assert!(
                ok.rate_headers.is_some(),
                "RateLimit headers for the answer"
            );
        }
        let mut over = rig.exchange("r", "GET", "/", &[("x-tenant", "a")], "");
        let ControlFlow::Break(response) = apply(&limiter, &mut over) else {
            panic!("the third request passed a limit of two");
        };
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let mut other = rig.exchange("r", "GET", "/", &[("x-tenant", "b")], "");
        assert!(apply(&limiter, &mut other).is_continue());
    }
}
