//! Phase 2b, idempotency keys: a repeated request is answered from the store
//! (see `idempotency.rs` for the records themselves).

use http::header::{HeaderName, HeaderValue};
use http::Response;

use crate::body::GatewayBody;
use crate::forward::{buffer_small_body, limit_body};
use crate::forwarding::{client_ip, Peer};
use crate::idempotency::{fingerprint, Claim, ClaimGuard, RecordKey};
use crate::problem::Problem;
use crate::proxy::Gateway;
use crate::router::{CompiledRoute, RouteTable};
use crate::upstream::RequestBody;

pub(crate) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

impl Gateway {
    /// Handles a route's idempotency key: claims it, or answers for it (a
    /// replay, 409, 422, 400 or 413). Returns the body (read whole when a key
    /// is given, to fingerprint it) and, when the request is answered here,
    /// the response.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn idempotency(
        &self,
        route: &CompiledRoute,
        parts: &http::request::Parts,
        body: RequestBody,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
        client: &Peer,
        table: &RouteTable,
        path: &str,
        request_id: &HeaderValue,
        guard: &mut Option<ClaimGuard>,
    ) -> (RequestBody, Option<Response<GatewayBody>>) {
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
        let Some(store) = self.inner.idempotency.get() else {
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
            RequestBody::Streaming(_) => bytes::Bytes::new(),
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
