//! Least privilege for outbound HTTP from wasm guests: every request a guest
//! sends through `wasi:http/outgoing-handler` is checked before a connection
//! is made. Three kinds of destination exist:
//!
//! - `http://SERVICE/...` where SERVICE is in the function's `services`
//!   grant: sent to a healthy instance of that service, resolved by Gantry;
//! - `http://gantry/v1/publish/TOPIC` where TOPIC is in its `publish` grant:
//!   sent to the platform API;
//! - anything else must match `allowed_outbound_hosts`.
//!
//! The destination is the request URI's authority, which the host resolves;
//! the guest cannot set `Host` (it is a forbidden header), so a Host-header
//! trick cannot reach another destination.

use std::future::Future;
use std::sync::Arc;

use http::uri::Scheme;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One `SCHEME://HOST:PORT` entry; `*` matches anything in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl Rule {
    /// Parses a (validated) manifest entry.
    pub(crate) fn parse(text: &str) -> Option<Rule> {
        let (scheme, rest) = text.split_once("://")?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                (host, Some(port))
            }
            _ => (rest, None),
        };
        let any = |s: &str| (s != "*").then(|| s.to_ascii_lowercase());
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse().ok()?),
            None => Some(if scheme == "https" { 443 } else { 80 }),
        };
        Some(Rule {
            scheme: any(scheme),
            host: any(host),
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

/// How Gantry finds where granted names live.
pub trait Resolve: Send + Sync {
    /// A base URL (`http://127.0.0.1:PORT`) of a healthy instance of `service`.
    fn service(&self, service: &str) -> Option<String>;
    /// The platform API's base URL.
    fn platform_api(&self) -> Option<String>;
}

/// The allow-list and grants of one function.
#[derive(Clone, Default)]
pub(crate) struct Outbound {
    pub(crate) function: Arc<str>,
    pub(crate) rules: Arc<Vec<Rule>>,
    pub(crate) services: Arc<Vec<String>>,
    pub(crate) publish: Arc<Vec<String>>,
    pub(crate) resolve: Option<Arc<dyn Resolve>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("function", &self.function)
            .field("rules", &self.rules)
            .field("services", &self.services)
            .field("publish", &self.publish)
            .finish_non_exhaustive()
    }
}

/// The host name of the platform API for guests.
const PLATFORM_HOST: &str = "gantry";

impl Outbound {
    /// Where a request to `uri` goes: `Ok(None)` to the URI as it is,
    /// `Ok(Some(base))` to a granted service or the platform API at `base`;
    /// `Err` says why it may not be sent.
    pub(crate) fn route(&self, uri: &http::Uri) -> Result<Option<String>, String> {
        let host = uri.host().unwrap_or_default();
        if uri.port().is_none() && uri.scheme_str() != Some("https") {
            if host == PLATFORM_HOST {
                let topic = uri
                    .path()
                    .strip_prefix("/v1/publish/")
                    .filter(|t| !t.contains('/'))
                    .ok_or_else(|| {
                        "functions may only POST /v1/publish/TOPIC to the platform API".to_string()
                    })?;
                if !self.publish.iter().any(|t| t == topic) {
                    return Err(format!("the function may not publish to `{topic}`: add it to `publish` in [functions.{}]", self.function));
                }
                return self
                    .resolve
                    .as_ref()
                    .and_then(|r| r.platform_api())
                    .map(Some)
                    .ok_or_else(|| "the platform API is not available".to_string());
            }
            if self.services.iter().any(|s| s == host) {
                return self
                    .resolve
                    .as_ref()
                    .and_then(|r| r.service(host))
                    .map(Some)
                    .ok_or_else(|| format!("service `{host}` has no healthy instance"));
            }
        }
        self.check(uri).map(|()| None)
    }

    /// Whether a request to `uri` may be sent; `Err` says why not.
    pub(crate) fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let scheme = uri.scheme().unwrap_or(&Scheme::HTTPS).as_str();
        let Some(host) = uri.host() else {
            return Err("the request has no host".into());
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if self.rules.iter().any(|r| r.allows(scheme, host, port)) {
            Ok(())
        } else {
            Err(format!(
                "{scheme}://{host}:{port} is not in the function's allowed_outbound_hosts"
            ))
        }
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        match self.route(request.uri()) {
            Err(why) => {
                tracing::warn!(
                    target: "gantry::functions",
                    function = %self.function,
                    uri = %request.uri(),
                    "outbound request denied: {why}"
                );
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
            Ok(Some(base)) => {
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                match format!("{base}{path}").parse() {
                    Ok(uri) => *request.uri_mut() = uri,
                    Err(_) => return Box::new(async { Err(Error::HttpRequestUriInvalid) }),
                }
            }
            Ok(None) => {}
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(rules: &[&str]) -> Outbound {
        Outbound {
            function: "f".into(),
            rules: Arc::new(rules.iter().map(|r| Rule::parse(r).unwrap()).collect()),
            ..Outbound::default()
        }
    }

    struct Fixed;
    impl Resolve for Fixed {
        fn service(&self, service: &str) -> Option<String> {
            (service == "billing").then(|| "http://127.0.0.1:7001".to_string())
        }
        fn platform_api(&self) -> Option<String> {
            Some("http://127.0.0.1:8082".into())
        }
    }

    #[test]
    fn granted_services_and_topics_are_resolved_by_gantry() {
        let o = Outbound {
            function: "f".into(),
            services: Arc::new(vec!["billing".into(), "down".into()]),
            publish: Arc::new(vec!["order.paid".into()]),
            resolve: Some(Arc::new(Fixed)),
            ..Outbound::default()
        };
        let route = |uri: &str| o.route(&uri.parse().unwrap());
        assert_eq!(
            route("http://billing/invoices").unwrap().as_deref(),
            Some("http://127.0.0.1:7001")
        );
        assert_eq!(
            route("http://gantry/v1/publish/order.paid")
                .unwrap()
                .as_deref(),
            Some("http://127.0.0.1:8082")
        );
        assert!(route("http://gantry/v1/publish/order.refunded")
            .unwrap_err()
            .contains("may not publish"));
        assert!(route("http://gantry/v1/workflows/x").is_err());
        assert!(route("http://down/x")
            .unwrap_err()
            .contains("no healthy instance"));
        assert!(route("http://catalog/items")
            .unwrap_err()
            .contains("allowed_outbound_hosts"));
        // A port or https means a real host, which the allow-list governs.
        assert!(route("http://billing:7001/x").is_err());
    }

    #[test]
    fn only_listed_destinations_pass() {
        let o = outbound(&["http://127.0.0.1:9000", "https://api.example.com"]);
        assert!(o.check(&"http://127.0.0.1:9000/x".parse().unwrap()).is_ok());
        assert!(o
            .check(&"https://api.example.com/v1".parse().unwrap())
            .is_ok());
        assert!(o
            .check(&"http://127.0.0.1:9001/x".parse().unwrap())
            .is_err());
        assert!(o
            .check(&"http://api.example.com/v1".parse().unwrap())
            .is_err());
        assert!(o
            .check(&"https://evil.example.com/".parse().unwrap())
            .is_err());
        assert!(outbound(&[])
            .check(&"http://127.0.0.1:9000/".parse().unwrap())
            .is_err());
    }

    #[test]
    fn wildcards_match_any_port_or_host() {
        let o = outbound(&["http://127.0.0.1:*", "https://*"]);
        assert!(o.check(&"http://127.0.0.1:1234/".parse().unwrap()).is_ok());
        assert!(o
            .check(&"https://anything.example/".parse().unwrap())
            .is_ok());
        assert!(o.check(&"http://localhost:1234/".parse().unwrap()).is_err());
    }
}
