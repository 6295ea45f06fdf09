//! A route table built from a manifest snippet, and requests through it,
//! for the layers' unit tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http_body_util::BodyExt;

use super::Exchange;
use crate::forwarding::Peer;
use crate::proxy::Gateway;
use crate::router::{CompiledRoute, RouteTable};
use crate::upstream::RequestBody;

/// The HS256 secret of the layers' tests' `[jwt]` key, `k`.
pub(crate) const JWT_SECRET: &str = "a-test-secret-of-enough-length-0123456789";

/// A `[jwt]` section with that one key, to put before a snippet's routes.
pub(crate) const JWT_SECTION: &str = r#"
[jwt]
[[jwt.keys]]
kid = "k"
algorithm = "HS256"
secret = "a-test-secret-of-enough-length-0123456789"
"#;

pub(crate) struct Rig {
    gateway: Gateway,
    table: Arc<RouteTable>,
    peer: Peer,
    request_id: http::HeaderValue,
    /// Holds the idempotency store's files.
    _data: tempfile::TempDir,
}

impl Rig {
    /// `snippet` adds routes (and `[jwt]`, `[platform]`...) to a manifest
    /// with one external service, `app`.
    pub(crate) async fn new(snippet: &str) -> Rig {
        let text = format!("[services.app]\nurls = [\"http://127.0.0.1:9\"]\n\n{snippet}");
        let manifest = gantry_manifest::parse(&text, Path::new("test.toml"), Path::new("/tmp"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut services = HashMap::new();
        for (name, config) in &manifest.services {
            services.insert(
                name.clone(),
                gantry_services::ServiceHandle::start(name, config).unwrap(),
            );
        }
        let metrics = crate::GatewayMetrics::register(&gantry_telemetry::Metrics::new());
        let table = RouteTable::build(&manifest.routes, &services, &metrics, None)
            .unwrap()
            .with_platform(&manifest.platform, None)
            .with_jwt(manifest.jwt.as_ref())
            .await
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let parts = crate::GatewayParts {
            idempotency: Some(crate::IdempotencyStore::open(data.path()).unwrap()),
            ..Default::default()
        };
        let gateway = Gateway::with_parts(table, metrics, parts);
        Rig {
            _data: data,
            table: gateway.table(),
            gateway,
            peer: Peer::new(([192, 0, 2, 7], 40000).into()),
            request_id: http::HeaderValue::from_static("test-request"),
        }
    }

    pub(crate) fn route(&self, label: &str) -> &CompiledRoute {
        self.table
            .routes()
            .find(|r| &*r.label == label)
            .unwrap_or_else(|| panic!("no route `{label}`"))
    }

    /// A request on `route`, as the proxy hands it to the layers.
    pub(crate) fn exchange(
        &self,
        route: &str,
        method: &str,
        path: &'static str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Exchange<'_> {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        Exchange {
            gateway: &self.gateway,
            table: &self.table,
            route: self.route(route),
            client: &self.peer,
            client_addr: self.peer.addr.ip(),
            path,
            request_id: &self.request_id,
            parts,
            body: RequestBody::Buffered(Some(bytes::Bytes::copy_from_slice(body.as_bytes()))),
            claims: None,
            rate_headers: None,
            claim_guard: None,
        }
    }

    /// The body a layer left in the exchange, as text.
    pub(crate) async fn body_text(&self, exchange: Exchange<'_>) -> String {
        let bytes = match exchange.body {
            RequestBody::Buffered(bytes) => bytes.unwrap_or_default(),
            RequestBody::Streaming(body) | RequestBody::Recorded { body, .. } => {
                body.collect().await.unwrap().to_bytes()
            }
        };
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
