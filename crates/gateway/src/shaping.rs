//! Request shaping at the edge: header edits both ways, a body size limit,
//! CORS (preflights answered here), and deprecation notices for old API
//! versions. Everything is compiled once per route table.

use std::time::{Duration, UNIX_EPOCH};

use gantry_manifest::{CorsPolicy, Deprecation, HeaderEdits, Route};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::body::GatewayBody;

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// Header edits ready to apply.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// CORS for one route.
#[derive(Debug)]
pub(crate) struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// A route's shaping rules.
#[derive(Debug, Default)]
pub(crate) struct Shaping {
    pub(crate) request: Edits,
    pub(crate) response: Edits,
    pub(crate) max_body: Option<u64>,
    pub(crate) cors: Option<Cors>,
    /// `Deprecation`, `Sunset` and `Link` headers for every response.
    notices: Vec<(HeaderName, HeaderValue)>,
}

impl Shaping {
    pub(crate) fn compile(route: &Route) -> Shaping {
        Shaping {
            request: route
                .request_headers
                .as_ref()
                .map(Edits::compile)
                .unwrap_or_default(),
            response: route
                .response_headers
                .as_ref()
                .map(Edits::compile)
                .unwrap_or_default(),
            max_body: route.max_body,
            cors: route
                .cors
                .as_ref()
                .map(|cors| Cors::compile(cors, &route.methods)),
            notices: route.deprecation.as_ref().map(notices).unwrap_or_default(),
        }
    }

    /// Adds what every response of the route carries: header edits, CORS
    /// headers for an allowed origin, deprecation notices.
    pub(crate) fn finish_response(&self, headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
        self.response.apply(headers);
        if let (Some(cors), Some(origin)) = (&self.cors, origin) {
            cors.add_response_headers(headers, origin);
        }
        for (name, value) in &self.notices {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl Edits {
    fn compile(edits: &HeaderEdits) -> Edits {
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect()
        };
        Edits {
            remove: edits
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&edits.set),
            add: pairs(&edits.add),
        }
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl Cors {
    fn compile(policy: &CorsPolicy, route_methods: &[String]) -> Cors {
        let join = |items: &[String]| {
            (!items.is_empty())
                .then(|| HeaderValue::from_str(&items.join(", ")).ok())
                .flatten()
        };
        let methods = if !policy.methods.is_empty() {
            policy.methods.clone()
        } else if !route_methods.is_empty() {
            route_methods.to_vec()
        } else {
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec()
        };
        Cors {
            any_origin: policy.origins.iter().any(|o| o == "*"),
            origins: policy
                .origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            methods: join(&methods).unwrap_or(HeaderValue::from_static("GET")),
            headers: join(&policy.headers),
            expose: join(&policy.expose_headers),
            credentials: policy.credentials,
            max_age: HeaderValue::from(policy.max_age.as_secs()),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin || self.origins.iter().any(|o| o == origin)
    }

    fn add_response_headers(&self, headers: &mut HeaderMap, origin: &HeaderValue) {
        if !self.allows(origin) {
            return;
        }
        if self.any_origin && !self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// The answer to a preflight request from `origin`; `None` when the origin
    /// is not allowed.
    pub(crate) fn preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
    ) -> Option<Response<GatewayBody>> {
        if !self.allows(origin) {
            return None;
        }
        let mut response = Response::new(GatewayBody::local(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.add_response_headers(headers, origin);
        let allowed = self
            .methods
            .to_str()
            .unwrap_or_default()
            .split(", ")
            .any(|m| m == method.as_str());
        if allowed {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            if let Some(allowed_headers) = &self.headers {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    allowed_headers.clone(),
                );
            }
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        Some(response)
    }
}

fn notices(deprecation: &Deprecation) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![(
        DEPRECATION,
        HeaderValue::from_str(&format!("@{}", deprecation.since)).expect("digits"),
    )];
    if let Some(sunset) = deprecation.sunset {
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(sunset));
        if let Ok(value) = HeaderValue::from_str(&date) {
            out.push((SUNSET, value));
        }
    }
    if let Some(link) = &deprecation.link {
        if let Ok(value) = HeaderValue::from_str(&format!("<{link}>; rel=\"deprecation\"")) {
            out.push((header::LINK, value));
        }
    }
    out
}
