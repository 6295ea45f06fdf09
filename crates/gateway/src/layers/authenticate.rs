//! Authentication (`auth = "api_key" | "jwt" | "mtls"`), guarded by the
//! failed-authentication limiter, then the route's `forward_claims`.
//!
//! The limiter (`[platform] auth_failure_limit`) counts refused credentials
//! per client address: a client that keeps failing is refused before its
//! credentials are even looked at. A request that presents credentials takes
//! one failure token before they are checked and gives it back if they are
//! good, so concurrent guesses cannot all slip past the limit; a request
//! without any only looks (it is refused, but it is not guessing).

use std::ops::ControlFlow;
use std::time::Instant;

use gantry_manifest::{ApiKeySource, AuthMode};
use http::header::{self, HeaderValue};
use http::Response;

use super::{Claims, Exchange, Verdict};
use crate::auth::{deny, forward_claims};
use crate::body::GatewayBody;
use crate::forwarding::Peer;
use crate::problem::Problem;
use crate::proxy::Gateway;
use crate::rate_limit::Decision;
use crate::router::{CompiledRoute, RouteTable};

pub(super) async fn apply(exchange: &mut Exchange<'_>) -> Verdict {
    let route = exchange.route;
    let failures = exchange.table.edge.auth_failures.as_ref();
    let failure_key = failures.map(|_| failure_key(exchange.client_addr));
    let presents_credentials = credentials_presented(route, &exchange.parts);
    if let (Some(limiter), Some(key)) = (failures, &failure_key) {
        let now = Instant::now();
        let decision = if presents_credentials {
            limiter.check(key, now)
        } else {
            limiter.peek(key, now)
        };
        if let Decision::Limited { retry_after } = decision {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let detail = format!(
                "too many failed authentications from {}; try again in {seconds}s",
                exchange.client_addr
            );
            let mut response =
                Problem::RateLimited.respond(detail, exchange.path, exchange.request_id);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return ControlFlow::Break(response);
        }
    }
    let checked = check(
        exchange.gateway,
        route,
        exchange.table,
        &exchange.parts,
        exchange.client,
        exchange.path,
        exchange.request_id,
    )
    .await;
    // Only credentials that were presented and refused (401) keep their
    // token: a valid token lacking a scope (403) or a store failure (503)
    // is not a guess.
    let guessed = matches!(&checked, Err(refusal) if refusal.credentials_given
        && refusal.response.status() == http::StatusCode::UNAUTHORIZED);
    if let (true, false, Some(limiter), Some(key)) =
        (presents_credentials, guessed, failures, &failure_key)
    {
        limiter.refund(key, Instant::now());
    }
    match checked {
        Ok(claims) => {
            if let Some(claims) = &claims {
                forward_claims(&mut exchange.parts.headers, claims, &route.forward_claims);
            }
            exchange.claims = claims;
            ControlFlow::Continue(())
        }
        Err(refusal) => ControlFlow::Break(refusal.response),
    }
}

/// Checks the credentials a route asks for; the verified claims, or the
/// 401/403 (or 503 when the key store fails) to answer.
async fn check(
    gateway: &Gateway,
    route: &CompiledRoute,
    table: &RouteTable,
    parts: &http::request::Parts,
    client: &Peer,
    path: &str,
    request_id: &HeaderValue,
) -> Result<Option<Claims>, Box<Refusal>> {
    let refuse = |response: Response<GatewayBody>, credentials_given: bool| {
        Box::new(Refusal {
            response,
            credentials_given,
        })
    };
    match route.auth {
        AuthMode::None => Ok(None),
        AuthMode::ApiKey => {
            let presented = match &route.api_key_from {
                ApiKeySource::Header(name) => parts
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                ApiKeySource::Query(name) => parts.uri.query().and_then(|q| {
                    q.split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.to_owned())
                }),
            };
            let consumer = match (&presented, gateway.inner.api_keys.as_ref()) {
                (Some(key), Some(keys)) => keys.consumer(key).await.map_err(|why| {
                    tracing::error!(target: "gantry::gateway", route = %route.label, "{why}");
                    let response = Problem::StoreUnavailable.respond(
                        "the API key store cannot be read; try again shortly".into(),
                        path,
                        request_id,
                    );
                    refuse(response, false)
                })?,
                _ => None,
            };
            let Some(consumer) = consumer else {
                let reason = if presented.is_some() {
                    "the API key is not valid"
                } else {
                    "this route needs an API key"
                };
                let mut response =
                    Problem::Unauthenticated.respond(reason.to_string(), path, request_id);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ApiKey realm=\"gantry\""),
                );
                return Err(refuse(response, presented.is_some()));
            };
            let mut verified = serde_json::Map::new();
            verified.insert("sub".into(), consumer.as_ref().into());
            Ok(Some(verified))
        }
        AuthMode::Jwt => {
            let Some(verifier) = &table.jwt else {
                let detail = "the route needs JWTs but no [jwt] keys are loaded".to_string();
                let response = Problem::Unauthenticated.respond(detail, path, request_id);
                return Err(refuse(response, false));
            };
            match verifier.check(&parts.headers, &route.scopes).await {
                Ok(verified) => Ok(Some(verified)),
                Err(denied) => {
                    let given = denied.token_given();
                    Err(refuse(deny(denied, path, request_id), given))
                }
            }
        }
        AuthMode::Mtls => {
            let identity = client.tls.as_ref().and_then(|tls| tls.client.as_ref());
            let Some(identity) = identity else {
                let detail = if client.tls.is_some() {
                    "this route needs a client certificate issued by the gateway's `client_ca`; none was presented"
                } else {
                    "this route needs a client certificate, over https"
                };
                let response = Problem::Unauthenticated.respond(detail.into(), path, request_id);
                return Err(refuse(response, false));
            };
            Ok(Some(crate::auth::certificate_claims(identity)))
        }
    }
}

/// Whether the request carries the credentials its route asks for (checked
/// or not): an API key in its place, or an `Authorization` header.
fn credentials_presented(route: &CompiledRoute, parts: &http::request::Parts) -> bool {
    match route.auth {
        AuthMode::ApiKey => match &route.api_key_from {
            ApiKeySource::Header(name) => parts.headers.contains_key(name.as_str()),
            ApiKeySource::Query(name) => parts.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|pair| pair.split_once('=').is_some_and(|(k, _)| k == name))
            }),
        },
        AuthMode::Jwt => parts.headers.contains_key(header::AUTHORIZATION),
        // A client certificate was verified in the handshake already.
        AuthMode::Mtls | AuthMode::None => false,
    }
}

/// Why [`check`] refused a request.
struct Refusal {
    /// The 401, 403 or 503 to answer.
    response: Response<GatewayBody>,
    /// Whether the client presented credentials (which were refused), as
    /// opposed to sending none.
    credentials_given: bool,
}

/// What failed authentications are counted by: the client's address, and for
/// IPv6 its /64 (one host usually holds a whole /64 and could rotate within it).
fn failure_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Rig, JWT_SECRET as SECRET};
    use super::*;

    fn token(secret: &str) -> String {
        token_for(secret, 300)
    }

    /// A token for `user-7` that expires in `seconds`.
    fn token_for(secret: &str, seconds: u64) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + seconds;
        let header = jsonwebtoken::Header {
            kid: Some("k".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let claims = serde_json::json!({"sub": "user-7", "exp": exp});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    async fn rig() -> Rig {
        Rig::new(&format!(
            r#"
[platform]
auth_failure_limit = {{ requests = 2, per = "1m" }}

[jwt]
[[jwt.keys]]
kid = "k"
algorithm = "HS256"
secret = "{SECRET}"

[[routes]]
name = "r"
path = "/"
to = "app"
auth = "jwt"
forward_claims = {{ sub = "x-user" }}
"#
        ))
        .await
    }

    #[tokio::test]
    async fn a_valid_token_passes_with_its_claims_forwarded() {
        let rig = rig().await;
        let bearer = format!("Bearer {}", token(SECRET));
        let mut exchange = rig.exchange("r", "GET", "/", &[("authorization", &bearer)], "");
        assert!(apply(&mut exchange).await.is_continue());
        assert_eq!(exchange.parts.headers["x-user"], "user-7");
        assert_eq!(exchange.claims.unwrap()["sub"], "user-7");
    }

    #[tokio::test]
    async fn a_remembered_token_still_needs_its_scopes_and_still_expires() {
        let rig = Rig::new(&format!(
            r#"
[jwt]
leeway = "1s"
[[jwt.keys]]
kid = "k"
algorithm = "HS256"
secret = "{SECRET}"

[[routes]]
name = "r"
path = "/"
to = "app"
auth = "jwt"

[[routes]]
name = "admin"
path = "/admin"
to = "app"
auth = "jwt"
scopes = ["admin"]
"#
        ))
        .await;
        let bearer = format!("Bearer {}", token_for(SECRET, 2));
        // Verified once, then answered from the verdict kept for it.
        for _ in 0..2 {
            let mut exchange = rig.exchange("r", "GET", "/", &[("authorization", &bearer)], "");
            assert!(apply(&mut exchange).await.is_continue());
            assert_eq!(exchange.claims.unwrap()["sub"], "user-7");
        }
        let mut admin = rig.exchange("admin", "GET", "/admin", &[("authorization", &bearer)], "");
        let ControlFlow::Break(response) = apply(&mut admin).await else {
            panic!("a remembered token got a scope it does not have");
        };
        assert_eq!(response.status(), 403);
        // Past `exp` and the one second of leeway.
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let mut late = rig.exchange("r", "GET", "/", &[("authorization", &bearer)], "");
        let ControlFlow::Break(response) = apply(&mut late).await else {
            panic!("a remembered token outlived its exp");
        };
        assert_eq!(response.status(), 401);
    }

    #[tokio::test]
    async fn refused_guesses_are_limited_but_missing_credentials_are_not_guesses() {
        let rig = rig().await;
        for _ in 0..3 {
            let mut none = rig.exchange("r", "GET", "/", &[], "");
            let ControlFlow::Break(response) = apply(&mut none).await else {
                panic!("no token passed");
            };
            assert_eq!(response.status(), 401);
        }
        let bad = format!("Bearer {}", token("another-secret-of-enough-length-000000"));
        for _ in 0..2 {
            let mut guess = rig.exchange("r", "GET", "/", &[("authorization", &bad)], "");
            let ControlFlow::Break(response) = apply(&mut guess).await else {
                panic!("a forged token passed");
            };
            assert_eq!(response.status(), 401);
        }
        // Two refused guesses used the client's allowance: even a good
        // token is refused now, before it is checked.
        let good = format!("Bearer {}", token(SECRET));
        let mut next = rig.exchange("r", "GET", "/", &[("authorization", &good)], "");
        let ControlFlow::Break(response) = apply(&mut next).await else {
            panic!("the failed-auth limit let a third try through");
        };
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
