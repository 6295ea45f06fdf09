//! Idempotency keys: a repeated request is answered from the store (see
//! `crate::idempotency` for the records themselves), a concurrent one gets
//! 409, a different request under the same key 422.

use http::header::{HeaderName, HeaderValue};
use http::Response;

use std::ops::ControlFlow;

use super::{Exchange, Verdict, RATELIMIT, RATELIMIT_POLICY};
use crate::attempts::{buffer_small_body, limit_body};
use crate::body::GatewayBody;
use crate::forwarding::client_ip;
use crate::idempotency::{fingerprint, Claim, ClaimGuard, RecordKey};
use crate::problem::Problem;
use crate::router::CompiledRoute;
use crate::upstream::RequestBody;

pub(crate) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Claims the request's idempotency key, or answers for it (a replay with
/// the rate-limit headers, 409, 422, 400 or 413). The body is read whole
/// when a key is given, to fingerprint it.
pub(super) async fn apply(exchange: &mut Exchange<'_>) -> Verdict {
    let body = exchange.take_body();
    let (body, answer) = claim(exchange, body).await;
    exchange.body = body;
    match answer {
        None => ControlFlow::Continue(()),
        Some(mut response) => {
            if let (Some((policy, state)), true) = (
                &exchange.rate_headers,
                response.headers().contains_key(REPLAYED),
            ) {
                response
                    .headers_mut()
                    .insert(RATELIMIT_POLICY, policy.clone());
                response.headers_mut().insert(RATELIMIT, state.clone());
            }
            ControlFlow::Break(response)
        }
    }
}

async fn claim(
    exchange: &mut Exchange<'_>,
    body: RequestBody,
) -> (RequestBody, Option<Response<GatewayBody>>) {
    let route: &CompiledRoute = exchange.route;
    let parts = &exchange.parts;
    let path = exchange.path;
    let request_id = exchange.request_id;
    let claims = exchange.claims.as_ref();
    let client = exchange.client;
    let table = exchange.table;
    let gateway = exchange.gateway;
    let guard = &mut exchange.claim_guard;
    {
        let Some(policy) = &route.idempotency else {
            return (body, None);
        };
        let answer =
            |problem: Problem, detail: String| Some(problem.respond(detail, path, request_id));
        let key = match parts.headers.get(policy.header.as_str()) {
            None if policy.required => {
                let detail = format!("route `{}` needs an `{}` header: a unique key per operation, reused on retries", route.label, policy.header);
                return (body, answer(Problem::IdempotencyKeyMissing, detail));
            }
            None => return (body, None),
            Some(value) => match value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
            {
                Some(key) => key.to_string(),
                None => {
                    let detail = format!(
                        "the `{}` header must be 1 to 255 visible characters",
                        policy.header
                    );
                    return (body, answer(Problem::IdempotencyKeyMissing, detail));
                }
            },
        };
        let Some(store) = gateway.inner.idempotency.as_ref() else {
            let detail =
                "idempotency keys need the data directory's store, which is not open".to_string();
            return (body, answer(Problem::StoreUnavailable, detail));
        };
        let limit = policy.max_body;
        let body = match limit_body(body, limit).await {
            Ok(body) => body,
            Err(_) => {
                let detail = format!(
                    "requests with an idempotency key may have bodies of at most {limit} bytes"
                );
                return (
                    RequestBody::Buffered(None),
                    answer(Problem::BodyTooLarge, detail),
                );
            }
        };
        let body = match buffer_small_body(body, limit).await {
            Ok(body @ RequestBody::Buffered(_)) => body,
            _ => {
                let detail = "the request body could not be read whole".to_string();
                return (
                    RequestBody::Buffered(None),
                    answer(Problem::BadRequestBody, detail),
                );
            }
        };
        let bytes = match &body {
            RequestBody::Buffered(bytes) => bytes.clone().unwrap_or_default(),
            RequestBody::Streaming(_) | RequestBody::Recorded { .. } => bytes::Bytes::new(),
        };
        let consumer = match claims.and_then(|c| c.get("sub")).and_then(|s| s.as_str()) {
            Some(subject) => format!("sub:{subject}"),
            None => format!(
                "ip:{}",
                client_ip(client, &parts.headers, &table.trusted_proxies)
            ),
        };
        let target = parts.uri.path_and_query().map_or(path, |pq| pq.as_str());
        let print = fingerprint(parts.method.as_str(), target, &consumer, &bytes);
        let record = RecordKey {
            route: route.label.to_string(),
            consumer,
            key,
        };
        let running_timeout = route.timeout + std::time::Duration::from_secs(10);
        match store
            .claim(record.clone(), print, policy.ttl, running_timeout)
            .await
        {
            Ok(Claim::Proceed) => {
                *guard = Some(ClaimGuard::new(store.clone(), record));
                (body, None)
            }
            Ok(Claim::Replay(stored)) => {
                let mut response = Response::new(GatewayBody::local(stored.body));
                *response.status_mut() = stored.status;
                for (name, value) in stored.headers {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_bytes(&value),
                    ) {
                        response.headers_mut().append(name, value);
                    }
                }
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
                (body, Some(response))
            }
            Ok(Claim::InFlight) => {
                let detail =
                    "a request with this idempotency key is still being processed; retry later"
                        .to_string();
                (body, answer(Problem::IdempotencyConflict, detail))
            }
            Ok(Claim::Mismatch) => {
                let detail = "this idempotency key was used for a different request (method, path, body or consumer)".to_string();
                (body, answer(Problem::IdempotencyMismatch, detail))
            }
            Err(error) => {
                tracing::error!(target: "gantry::idempotency", %error, "idempotency store failed");
                (
                    body,
                    answer(
                        Problem::StoreUnavailable,
                        "the idempotency store is unavailable".to_string(),
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Rig;
    use super::*;

    #[tokio::test]
    async fn a_key_is_claimed_once_and_a_concurrent_repeat_is_refused() {
        let rig = Rig::new(
            "[[routes]]\nname = \"pay\"\npath = \"/pay\"\nto = \"app\"\nidempotency = { header = \"idempotency-key\", required = true }\n",
        )
        .await;
        let mut missing = rig.exchange("pay", "POST", "/pay", &[], "{}");
        let ControlFlow::Break(response) = apply(&mut missing).await else {
            panic!("a request without its required key passed");
        };
        assert_eq!(response.status(), 400);

        let key = [("idempotency-key", "k-1")];
        let mut first = rig.exchange("pay", "POST", "/pay", &key, "{}");
        assert!(apply(&mut first).await.is_continue());
        assert!(
            first.claim_guard.is_some(),
            "the key is claimed for the answer"
        );
        // While the first is in flight (its guard alive), a repeat waits its turn.
        let mut repeat = rig.exchange("pay", "POST", "/pay", &key, "{}");
        let ControlFlow::Break(response) = apply(&mut repeat).await else {
            panic!("a concurrent repeat passed");
        };
        assert_eq!(response.status(), 409);
        let mut different = rig.exchange("pay", "POST", "/pay", &key, "{\"other\": 1}");
        let ControlFlow::Break(response) = apply(&mut different).await else {
            panic!("another request under the same key passed");
        };
        assert_eq!(response.status(), 422);
    }
}
