//! The route table: manifest routes compiled for matching, each bound to its
//! running service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_manifest::{
    AuthMode, EscapedSlashes, Fallback, HashKey, PathMatch, PathPattern, RetryPolicy, Route,
};
use gantry_services::ServiceHandle;
use http::header::HeaderName;
use http::{HeaderValue, Method, Uri};
use serde::Serialize;

use crate::attempts::affinity_key;
use crate::auth::JwtVerifier;
use crate::metrics::{GatewayMetrics, RouteMetrics};
use crate::rate_limit::RateLimiter;
use crate::shadow::{Shadow, ShadowSummary};
use crate::shaping::Shaping;
use crate::split::{Backend, Backends, Weight};

/// Why a route table could not be built from a (validated) manifest.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route `{route}` sends traffic to `{service}`, which is not running")]
    MissingService { route: String, service: String },
    #[error("route `{route}`: header `{header}` cannot be matched: {why}")]
    BadHeader {
        route: String,
        header: String,
        why: String,
    },
}

/// How a compiled route rewrites the path it forwards.
#[derive(Debug, Clone)]
enum PathRewrite {
    Keep,
    StripPrefix(String),
    Template(String),
}

/// One route, ready for matching.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub(crate) label: Arc<str>,
    pattern: PathPattern,
    methods: Vec<Method>,
    host: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    cookies: Vec<(HashKey, String)>,
    rewrite: PathRewrite,
    pub(crate) timeout: Duration,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) fallback: Option<CompiledFallback>,
    pub(crate) backends: Backends,
    pub(crate) shadow: Option<Shadow>,
    pub(crate) rate_limit: Option<Arc<RateLimiter>>,
    pub(crate) shaping: Shaping,
    pub(crate) auth: AuthMode,
    pub(crate) api_key_from: gantry_manifest::ApiKeySource,
    pub(crate) scopes: Vec<String>,
    /// Claims to forward, with the header each goes in.
    pub(crate) forward_claims: Vec<(String, HeaderName)>,
    pub(crate) idempotency: Option<gantry_manifest::IdempotencyPolicy>,
    pub(crate) webhook: Option<Arc<crate::webhook::WebhookVerifier>>,
    /// The edge policies this route has, in order (`layers::stack`).
    pub(crate) layers: Vec<crate::layers::Layer>,
    config: Route,
}

impl CompiledRoute {
    /// Whether and how WebSocket upgrades pass on this route.
    pub(crate) fn websocket(&self) -> &gantry_manifest::WebSocketPolicy {
        &self.config.websocket
    }
}

/// A route's fallback, ready to serve.
#[derive(Debug)]
pub(crate) enum CompiledFallback {
    Static {
        status: http::StatusCode,
        body: bytes::Bytes,
        content_type: HeaderValue,
    },
    Service(Arc<ServiceHandle>),
}

/// All routes, in manifest order (the first match wins), plus the metrics of
/// requests no route matched.
#[derive(Debug)]
pub struct RouteTable {
    pub(crate) routes: Vec<CompiledRoute>,
    /// Proxies whose `X-Forwarded-For` is believed (`[platform] trusted_proxies`).
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// What happens before routing, from `[platform]`.
    pub(crate) edge: Edge,
    /// Every header some route's `forward_claims` sets: removed from every
    /// request, so no client can pose as a verified identity on any route.
    pub(crate) claim_headers: Vec<HeaderName>,
    /// Checks tokens for routes with `auth = "jwt"`.
    pub(crate) jwt: Option<Arc<JwtVerifier>>,
    /// Every service of the manifest this table was built from, routed to or not.
    services: Vec<Arc<ServiceHandle>>,
    pub(crate) unrouted: RouteMetrics,
}

/// The gateway-wide settings of `[platform]` that apply to every request.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) normalize_path: bool,
    pub(crate) escaped_slashes: EscapedSlashes,
    /// Failed authentications per client address (`auth_failure_limit`).
    pub(crate) auth_failures: Option<Arc<RateLimiter>>,
    /// `Strict-Transport-Security`, sent on answers over TLS.
    pub(crate) hsts: Option<HeaderValue>,
}

impl Default for Edge {
    fn default() -> Edge {
        Edge {
            normalize_path: true,
            escaped_slashes: EscapedSlashes::Reject,
            auth_failures: None,
            hsts: None,
        }
    }
}

/// A route as shown by `GET /v1/routes`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    #[serde(flatten)]
    pub route: Route,
    /// Whether every service of the route has a healthy instance.
    pub ready: bool,
    /// The weights in force, by service.
    pub weights: Vec<Weight>,
    /// Whether an operator changed the weights at run time (`gantry traffic`).
    pub weights_overridden: bool,
}

impl RouteTable {
    /// Compiles `routes`, binding each to its service in `services`.
    ///
    /// Breakers and retry budgets belong to the running services, so a
    /// service kept across a reload keeps them; a restarted one starts afresh.
    pub fn build(
        routes: &[Route],
        services: &HashMap<String, Arc<ServiceHandle>>,
        metrics: &GatewayMetrics,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, BuildError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for route in routes {
            let mut list = Vec::new();
            for (name, weight) in route.to.backends() {
                let service =
                    services
                        .get(name)
                        .cloned()
                        .ok_or_else(|| BuildError::MissingService {
                            route: route.path.clone(),
                            service: name.to_string(),
                        })?;
                let route_metrics = metrics.for_route(route.label(), name);
                list.push(Backend::new(service, route_metrics, weight));
            }
            let backends = Backends::new(list, route.sticky.clone());
            if let Some(previous) =
                previous.and_then(|p| p.routes.iter().find(|r| *r.label == *route.label()))
            {
                backends.carry_over(&previous.backends);
            }
            let headers = route
                .headers
                .iter()
                .map(|(name, value)| {
                    let bad = |why: String| BuildError::BadHeader {
                        route: route.path.clone(),
                        header: name.clone(),
                        why,
                    };
                    Ok((
                        HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?,
                        HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?,
                    ))
                })
                .collect::<Result<_, BuildError>>()?;
            let rewrite = match (&route.strip_prefix, &route.rewrite) {
                (Some(prefix), _) => PathRewrite::StripPrefix(prefix.clone()),
                (None, Some(template)) => PathRewrite::Template(template.clone()),
                (None, None) => PathRewrite::Keep,
            };
            let fallback = match &route.fallback {
                None => None,
                Some(Fallback::Service { to }) => Some(CompiledFallback::Service(
                    services
                        .get(to)
                        .cloned()
                        .ok_or_else(|| BuildError::MissingService {
                            route: route.path.clone(),
                            service: to.clone(),
                        })?,
                )),
                Some(Fallback::Static {
                    status,
                    body,
                    content_type,
                }) => Some(CompiledFallback::Static {
                    status: http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::OK),
                    body: bytes::Bytes::from(body.clone()),
                    content_type: HeaderValue::from_str(content_type)
                        .unwrap_or(HeaderValue::from_static("text/plain")),
                }),
            };
            let shadow = match &route.shadow {
                None => None,
                Some(policy) => {
                    let service = services.get(&policy.to).cloned().ok_or_else(|| {
                        BuildError::MissingService {
                            route: route.path.clone(),
                            service: policy.to.clone(),
                        }
                    })?;
                    // The report survives a reload that keeps mirroring to the same service.
                    let report = previous
                        .and_then(|p| p.routes.iter().find(|r| *r.label == *route.label()))
                        .and_then(|r| r.shadow.as_ref())
                        .filter(|s| s.policy.to == policy.to)
                        .map(|s| s.report.clone())
                        .unwrap_or_default();
                    Some(Shadow {
                        policy: policy.clone(),
                        service,
                        report,
                    })
                }
            };
            // A limiter keeps its counts across a reload that does not change it.
            let rate_limit = route.rate_limit.as_ref().map(|policy| {
                previous
                    .and_then(|p| p.routes.iter().find(|r| *r.label == *route.label()))
                    .and_then(|r| r.rate_limit.clone())
                    .filter(|limiter| limiter.policy == *policy)
                    .unwrap_or_else(|| Arc::new(RateLimiter::new(policy.clone())))
            });
            // A verifier keeps its replay memory across a reload that does not change it.
            let webhook = route.webhook.as_ref().map(|policy| {
                previous
                    .and_then(|p| p.routes.iter().find(|r| *r.label == *route.label()))
                    .and_then(|r| r.webhook.clone())
                    .filter(|v| v.policy == *policy)
                    .unwrap_or_else(|| {
                        Arc::new(crate::webhook::WebhookVerifier::new(policy, &route.path))
                    })
            });
            compiled.push(CompiledRoute {
                label: Arc::from(route.label()),
                pattern: route.pattern.clone(),
                methods: route
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                host: route.host.clone(),
                headers,
                cookies: route
                    .cookies
                    .iter()
                    .map(|(name, value)| (HashKey::Cookie(name.clone()), value.clone()))
                    .collect(),
                rewrite,
                timeout: route.timeout,
                attempt_timeout: route.attempt_timeout,
                retry: route.retry.clone(),
                fallback,
                backends,
                shadow,
                rate_limit,
                shaping: Shaping::compile(route),
                auth: route.auth,
                api_key_from: route.api_key_from.clone(),
                scopes: route.scopes.clone(),
                forward_claims: route
                    .forward_claims
                    .iter()
                    .filter_map(|(claim, header)| {
                        Some((
                            claim.clone(),
                            HeaderName::from_bytes(header.as_bytes()).ok()?,
                        ))
                    })
                    .collect(),
                idempotency: route.idempotency.clone(),
                webhook,
                layers: Vec::new(),
                config: route.clone(),
            });
        }
        let mut services: Vec<_> = services.values().cloned().collect();
        services.sort_by(|a, b| a.name().cmp(b.name()));
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for (_, header) in compiled.iter().flat_map(|r| &r.forward_claims) {
            if !claim_headers.contains(header) {
                claim_headers.push(header.clone());
            }
        }
        // Each route's edge stack, once the table-wide claim headers are known.
        for route in &mut compiled {
            route.layers = crate::layers::stack(route, !claim_headers.is_empty());
        }
        Ok(RouteTable {
            claim_headers,
            routes: compiled,
            trusted_proxies: Vec::new(),
            edge: Edge::default(),
            jwt: None,
            services,
            // Requests no route matched are counted under route="unmatched".
            unrouted: metrics.for_route("unmatched", "none"),
        })
    }

    /// Every route, in manifest order.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> impl Iterator<Item = &CompiledRoute> {
        self.routes.iter()
    }

    /// The first route matching the request, with the path it matched.
    pub(crate) fn find<'r>(
        &'r self,
        method: &Method,
        host: Option<&str>,
        path: &'r str,
        headers: &http::HeaderMap,
    ) -> Option<(&'r CompiledRoute, PathMatch<'r>)> {
        self.routes.iter().find_map(|route| {
            if !route.methods.is_empty() && !route.methods.contains(method) {
                return None;
            }
            if let Some(wanted) = &route.host {
                if !host.is_some_and(|h| host_matches(wanted, h)) {
                    return None;
                }
            }
            if !route
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
            {
                return None;
            }
            if !route
                .cookies
                .iter()
                .all(|(cookie, value)| affinity_key(cookie, headers) == Some(value.as_str()))
            {
                return None;
            }
            route.pattern.matches(path).map(|m| (route, m))
        })
    }

    /// The services this table knows, by name.
    pub fn services(&self) -> &[Arc<ServiceHandle>] {
        &self.services
    }

    /// Changes the weights of a route's split at run time (`None` resets them
    /// to the manifest's); answers the weights now in force.
    pub fn set_weights(
        &self,
        route: &str,
        weights: Option<&[(String, u32)]>,
    ) -> Result<Vec<Weight>, String> {
        let found = self
            .routes
            .iter()
            .find(|r| *r.label == *route)
            .ok_or_else(|| format!("no route is named `{route}`; `GET /v1/routes` lists them"))?;
        match weights {
            Some(weights) => found.backends.set_weights(weights)?,
            None => found.backends.reset(),
        }
        Ok(found.backends.weights().0)
    }

    /// Applies the gateway-wide settings of `[platform]`: trusted proxies,
    /// path normalisation, the failed-authentication limit (whose counts a
    /// reload that keeps it unchanged carries over from `previous`) and HSTS.
    pub fn with_platform(
        mut self,
        platform: &gantry_manifest::Platform,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let auth_failures = platform.auth_failure_limit.as_ref().map(|policy| {
            previous
                .and_then(|p| p.edge.auth_failures.clone())
                .filter(|limiter| limiter.policy == *policy)
                .unwrap_or_else(|| Arc::new(RateLimiter::new(policy.clone())))
        });
        let hsts = platform.tls.as_ref().and_then(|tls| {
            let age = tls.hsts?.as_secs();
            let subdomains = if tls.hsts_subdomains {
                "; includeSubDomains"
            } else {
                ""
            };
            HeaderValue::from_str(&format!("max-age={age}{subdomains}")).ok()
        });
        self.edge = Edge {
            normalize_path: platform.normalize_path,
            escaped_slashes: platform.escaped_slashes,
            auth_failures,
            hsts,
        };
        self.with_trusted_proxies(&platform.trusted_proxies)
    }

    /// Sets the proxies whose `X-Forwarded-For` is believed; entries that are
    /// not IP addresses or CIDR ranges are skipped (the manifest validated them).
    pub fn with_trusted_proxies(mut self, proxies: &[String]) -> RouteTable {
        self.trusted_proxies = proxies
            .iter()
            .filter_map(|p| {
                p.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect();
        self
    }

    /// Loads the `[jwt]` keys (PEM files, secrets from the environment) and
    /// fetches the JWKS, if any; an unreadable key is an error.
    pub async fn with_jwt(
        mut self,
        config: Option<&gantry_manifest::JwtConfig>,
    ) -> Result<RouteTable, String> {
        if let Some(config) = config {
            let verifier = JwtVerifier::new(config)?;
            verifier.refresh_jwks(true).await;
            self.jwt = Some(Arc::new(verifier));
        }
        Ok(self)
    }

    /// The shadow comparison report of a route.
    pub fn shadow_report(&self, route: &str) -> Result<ShadowSummary, String> {
        let found = self
            .routes
            .iter()
            .find(|r| *r.label == *route)
            .ok_or_else(|| format!("no route is named `{route}`; `GET /v1/routes` lists them"))?;
        match &found.shadow {
            Some(shadow) => Ok(shadow.summary(route)),
            None => Err(format!(
                "route `{route}` has no `shadow`; add `shadow = {{ to = \"SERVICE\" }}` to it"
            )),
        }
    }

    /// The state of a service's circuit breaker: `closed`, `open` or `half-open`.
    pub fn breaker_state(&self, service: &str) -> Option<&'static str> {
        self.services
            .iter()
            .find(|s| s.name() == service)
            .map(|s| s.breaker().state().as_str())
    }

    /// The methods of routes that would match this request under another
    /// method: what a 405 lists in `Allow`. Empty when no route matches at all.
    pub(crate) fn allowed_methods(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Vec<Method> {
        let mut methods: Vec<Method> = Vec::new();
        for route in &self.routes {
            let host_ok = route
                .host
                .as_ref()
                .is_none_or(|wanted| host.is_some_and(|h| host_matches(wanted, h)));
            let headers_ok = route
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value));
            if host_ok && headers_ok && route.pattern.matches(path).is_some() {
                if route.methods.is_empty() {
                    return Vec::new();
                }
                for method in &route.methods {
                    if !methods.contains(method) {
                        methods.push(method.clone());
                    }
                }
            }
        }
        methods
    }

    /// Every route with its current readiness, for listings.
    pub fn describe(&self) -> Vec<RouteInfo> {
        self.routes
            .iter()
            .map(|r| {
                let (weights, weights_overridden) = r.backends.weights();
                RouteInfo {
                    route: r.config.clone(),
                    ready: r.backends.iter().all(|b| b.service.is_ready()),
                    weights,
                    weights_overridden,
                }
            })
            .collect()
    }
}

/// `host` is the request's Host without port; `wanted` is lowercase.
fn host_matches(wanted: &str, host: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    // `shop.test.` is the same host as `shop.test` (a fully qualified name).
    let host = host.strip_suffix('.').unwrap_or(host);
    match wanted.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && ends_with_ignore_case(host, suffix),
        None => host.eq_ignore_ascii_case(wanted),
    }
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len() && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

impl CompiledRoute {
    /// The origin-form URI (path and query) to send upstream; `None` when a
    /// rewrite produced something that is not a valid path.
    pub(crate) fn upstream_uri(&self, uri: &Uri, matched: &PathMatch<'_>) -> Option<Uri> {
        if let PathRewrite::Keep = self.rewrite {
            // The common case: no copy, no parse.
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = uri.path_and_query().cloned();
            return Uri::from_parts(parts).ok();
        }
        Uri::try_from(self.upstream_path(uri.path(), matched, uri.query())).ok()
    }

    /// The path (and query) to send upstream.
    fn upstream_path(&self, path: &str, matched: &PathMatch<'_>, query: Option<&str>) -> String {
        let mut out = match &self.rewrite {
            PathRewrite::Keep => path.to_string(),
            PathRewrite::StripPrefix(prefix) => {
                let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
                if rest.is_empty() {
                    "/".to_string()
                } else {
                    rest.to_string()
                }
            }
            PathRewrite::Template(template) => expand(template, matched),
        };
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

fn expand(template: &str, matched: &PathMatch<'_>) -> String {
    let mut out = String::with_capacity(template.len() + matched.rest.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if name == "*" {
            let tail = matched.rest.strip_prefix('/').unwrap_or(matched.rest);
            if out.ends_with('/') || tail.is_empty() {
                out.push_str(tail);
            } else {
                out.push('/');
                out.push_str(tail);
            }
        } else if let Some((_, value)) = matched.params.iter().find(|(n, _)| *n == name) {
            out.push_str(value);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_wildcard_without_port() {
        assert!(host_matches("shop.test", "SHOP.test:8080"));
        assert!(!host_matches("shop.test", "api.shop.test"));
        assert!(host_matches("*.shop.test", "api.shop.test"));
        assert!(!host_matches("*.shop.test", "shop.test"));
        assert!(
            host_matches("shop.test", "shop.test.:8080"),
            "a trailing dot"
        );
        assert!(host_matches("*.shop.test", "api.shop.test."));
    }

    #[test]
    fn templates_take_params_and_the_rest() {
        let pattern = PathPattern::parse("/api/users/{id}/*").unwrap();
        let m = pattern.matches("/api/users/7/orders/3").unwrap();
        assert_eq!(expand("/users/{id}/{*}", &m), "/users/7/orders/3");
        assert_eq!(expand("/u/{id}", &m), "/u/7");
    }
}
