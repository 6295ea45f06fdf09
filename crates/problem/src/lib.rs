//! The one shape of every failure Gantry answers: an RFC 9457 problem
//! (`application/problem+json`), and the two questions an error must answer
//! before it becomes one: who is to blame, and is it safe to try again.
//!
//! Each crate keeps its own error types (thiserror enums that name what went
//! wrong in its own terms) and implements [`Explain`] for them; this module
//! is the only place that turns them into bytes on the wire. Two families of
//! `type` exist and both are kept, because clients and docs already rely on
//! them: the gateway's own refusals (`urn:gantry:problem:NAME`, see
//! [`Problem::edge`]) and the APIs' and functions' answers
//! (`https://gantry.dev/problems/NAME`, see [`Problem::new`]).

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Who a failure is to blame on. Operators read it in logs; callers read it
/// in the status class (4xx: the caller, 5xx: someone else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Whoever sent the request (or built the call): bad input, missing or
    /// wrong credentials, a limit they went over.
    Caller,
    /// The service (or function) the request was for: it failed, is failing,
    /// is too busy or did not answer in time.
    Upstream,
    /// Gantry itself: its store, its configuration, its shutdown.
    Gantry,
}

/// What an error says about itself before it is answered.
pub trait Explain: std::fmt::Display {
    /// Who is to blame.
    fn blame(&self) -> Blame;

    /// Whether the same request may succeed if sent again unchanged (after a
    /// pause). A caller's mistake is never retryable; most failures of an
    /// upstream or of Gantry's store are.
    fn retryable(&self) -> bool {
        self.blame() != Blame::Caller
    }

    /// The problem this error is answered with over HTTP. The default
    /// follows the blame (400, 502 or 503) with the error's own message as
    /// the detail; errors with a more precise answer say so.
    fn problem(&self) -> Problem {
        let problem = match self.blame() {
            Blame::Caller => Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Blame::Upstream => Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                "The service failed",
            ),
            Blame::Gantry => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Gantry cannot do this right now",
            ),
        };
        problem.detail(self.to_string())
    }
}

/// An RFC 9457 problem, built up and then rendered once.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    kind: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: String,
    instance: Option<String>,
    request_id: Option<String>,
    retry_after: Option<u32>,
}

const API_TYPES: &str = "https://gantry.dev/problems/";
const EDGE_TYPES: &str = "urn:gantry:problem:";

impl Problem {
    /// A problem of the APIs and of functions: `type` is
    /// `https://gantry.dev/problems/{name}`.
    pub fn new(status: StatusCode, name: &str, title: impl Into<Cow<'static, str>>) -> Problem {
        Problem::typed(status, Cow::Owned(format!("{API_TYPES}{name}")), title)
    }

    /// A refusal of the gateway's own (no route, rate limited, circuit open,
    /// ...): `type` is `urn:gantry:problem:{name}`.
    pub fn edge(status: StatusCode, name: &str, title: impl Into<Cow<'static, str>>) -> Problem {
        Problem::typed(status, Cow::Owned(format!("{EDGE_TYPES}{name}")), title)
    }

    /// A problem with no type of its own (`about:blank`): the title is the
    /// status's reason phrase, as RFC 9457 asks.
    pub fn plain(status: StatusCode) -> Problem {
        let title = status.canonical_reason().unwrap_or("Error");
        Problem::typed(status, Cow::Borrowed("about:blank"), title)
    }

    fn typed(
        status: StatusCode,
        kind: Cow<'static, str>,
        title: impl Into<Cow<'static, str>>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title: title.into(),
            detail: String::new(),
            instance: None,
            request_id: None,
            retry_after: None,
        }
    }

    /// What happened to this request, and what to do about it.
    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = detail.into();
        self
    }

    /// The request's path.
    pub fn instance(mut self, path: impl Into<String>) -> Problem {
        self.instance = Some(path.into());
        self
    }

    /// The request id, so a report can be matched to logs and traces.
    pub fn request_id(mut self, id: impl Into<String>) -> Problem {
        self.request_id = Some(id.into());
        self
    }

    /// Adds `Retry-After: SECONDS`.
    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `type` URI.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The `type`'s last part: `rate-limited` for
    /// `urn:gantry:problem:rate-limited`.
    pub fn name(&self) -> &str {
        self.kind
            .strip_prefix(EDGE_TYPES)
            .or_else(|| self.kind.strip_prefix(API_TYPES))
            .unwrap_or(&self.kind)
    }

    /// The JSON document.
    pub fn to_json(&self) -> Bytes {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), self.kind.as_ref().into());
        body.insert("title".into(), self.title.as_ref().into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.as_str().into());
        if let Some(instance) = &self.instance {
            body.insert("instance".into(), instance.as_str().into());
        }
        if let Some(id) = &self.request_id {
            body.insert("request_id".into(), id.as_str().into());
        }
        Bytes::from(serde_json::Value::Object(body).to_string())
    }

    /// The response, its body built by `body` from the JSON bytes (each
    /// server has its own body type).
    pub fn respond_with<B>(&self, body: impl FnOnce(Bytes) -> B) -> Response<B> {
        let mut response = Response::new(body(self.to_json()));
        *response.status_mut() = self.status;
        // For answers in another shape than JSON (a gRPC status): the
        // sentence a client reads, without the JSON around it.
        response
            .extensions_mut()
            .insert(Detail(self.detail.clone()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The response, for bodies that can be made from bytes (axum's `Body`,
    /// `Full<Bytes>`).
    pub fn respond<B: From<Bytes>>(&self) -> Response<B> {
        self.respond_with(B::from)
    }
}

/// The `detail` of a problem answer, kept in the response's extensions so a
/// server that must answer in another shape (a gRPC status and message) can
/// say the same thing.
#[derive(Debug, Clone)]
pub struct Detail(pub String);

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_renders_every_member_it_was_given() {
        let problem = Problem::edge(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many")
            .detail("slow down")
            .instance("/orders")
            .request_id("r-1")
            .retry_after(3);
        let response: Response<Bytes> = problem.respond();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["type"], "urn:gantry:problem:rate-limited");
        assert_eq!(body["title"], "Too many");
        assert_eq!(body["status"], 429);
        assert_eq!(body["detail"], "slow down");
        assert_eq!(body["instance"], "/orders");
        assert_eq!(body["request_id"], "r-1");
        assert_eq!(problem.name(), "rate-limited");
    }

    #[test]
    fn members_not_given_are_left_out() {
        let problem = Problem::new(StatusCode::NOT_FOUND, "unknown-run", "Unknown run");
        let body: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
        assert_eq!(body["type"], "https://gantry.dev/problems/unknown-run");
        assert!(body.get("instance").is_none());
        assert!(body.get("request_id").is_none());
        let plain = Problem::plain(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(plain.kind(), "about:blank");
        assert_eq!(
            plain.to_string(),
            "Service Unavailable (503 Service Unavailable): "
        );
    }

    #[test]
    fn a_callers_mistake_is_not_retryable_by_default() {
        struct Bad;
        impl std::fmt::Display for Bad {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bad")
            }
        }
        impl Explain for Bad {
            fn blame(&self) -> Blame {
                Blame::Caller
            }
            fn problem(&self) -> Problem {
                Problem::new(StatusCode::BAD_REQUEST, "bad", "Bad").detail(self.to_string())
            }
        }
        assert!(!Bad.retryable());
        assert_eq!(Bad.problem().status(), 400);
    }
}
