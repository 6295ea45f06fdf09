//! Health checks: an instance gets traffic only while its checks pass.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gantry_tls::rustls::ClientConfig;
use http_body_util::{BodyExt, Empty, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;

/// While an instance is not healthy it is checked at least this often, so a
/// starting process gets traffic soon after it is ready.
const UNHEALTHY_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How an instance is checked.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// `GET path` must answer 2xx.
    Http {
        path: String,
        client: Box<HttpClient>,
    },
    /// The gRPC health checking protocol over HTTP/2: `grpc.health.v1.Health/Check`
    /// for the whole server must answer `SERVING`.
    Grpc { client: Box<GrpcClient> },
    /// The port must accept a TCP connection (processes without a `health` path).
    Tcp,
}

pub(crate) type GrpcClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client of a gRPC service's health checks: HTTP/2 only (prior
/// knowledge for `http://`, ALPN `h2` for `https://`).
pub(crate) fn grpc_client(tls: Option<Arc<ClientConfig>>) -> GrpcClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector(tls))
}

/// A gRPC `HealthCheckRequest` for the whole server (`service = ""`): an
/// empty message behind the 5-byte gRPC frame header.
const HEALTH_CHECK_REQUEST: [u8; 5] = [0, 0, 0, 0, 0];

/// Whether a `HealthCheckResponse` body (gRPC framed) says `SERVING`: field 1
/// (`status`, a varint) equal to 1. Written by hand because the message has
/// one field; a protobuf library would be a large dependency for it.
pub(crate) fn grpc_serving(body: &[u8]) -> bool {
    let Some(message) = body.get(5..) else {
        return false;
    };
    if body[0] != 0 {
        return false; // compressed: we asked for none
    }
    let mut at = 0;
    let mut status = 0u64;
    while at < message.len() {
        let tag = message[at];
        at += 1;
        let mut value = 0u64;
        let mut shift = 0;
        match tag & 7 {
            0 => loop {
                let Some(byte) = message.get(at) else {
                    return false;
                };
                at += 1;
                value |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 || shift > 63 {
                    break;
                }
            },
            _ => return false, // HealthCheckResponse has only varint fields
        }
        if tag >> 3 == 1 {
            status = value;
        }
    }
    status == 1
}

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The client of a service's health checks; `https://` instances are
/// verified with `tls` (the service's roots).
/// HTTP/2 services (`protocol = "h2" | "h2c"`) are checked over HTTP/2.
pub(crate) fn http_client(tls: Option<Arc<ClientConfig>>, http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector(tls))
}

fn connector(tls: Option<Arc<ClientConfig>>) -> HttpsConnector<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.enforce_http(false);
    let config = tls.unwrap_or_else(|| Arc::new(plain_only()));
    HttpsConnector::from((connector, config))
}

/// A client config for services with no `https://` instance: never used for
/// a handshake, so it trusts nothing.
fn plain_only() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(
        gantry_tls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(gantry_tls::rustls::RootCertStore::empty())
    .with_no_client_auth()
}

impl Probe {
    async fn check(&self, instance: &Instance, timeout: Duration) -> bool {
        let attempt = async {
            match self {
                Probe::Http { path, client } => {
                    let uri = format!("{}://{}{}", instance.scheme(), instance.authority, path);
                    let Ok(uri) = uri.parse::<http::Uri>() else {
                        return false;
                    };
                    match client.get(uri).await {
                        Ok(response) => response.status().is_success(),
                        Err(_) => false,
                    }
                }
                Probe::Grpc { client } => {
                    let uri = format!(
                        "{}://{}/grpc.health.v1.Health/Check",
                        instance.scheme(),
                        instance.authority
                    );
                    let Ok(request) = http::Request::post(uri)
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .header(http::header::TE, "trailers")
                        .body(Full::new(Bytes::from_static(&HEALTH_CHECK_REQUEST)))
                    else {
                        return false;
                    };
                    let Ok(response) = client.request(request).await else {
                        return false;
                    };
                    if !response.status().is_success() {
                        return false;
                    }
                    let Ok(body) = response.into_body().collect().await else {
                        return false;
                    };
                    let ok = body
                        .trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .is_some_and(|s| s == "0");
                    ok && grpc_serving(&body.to_bytes())
                }
                Probe::Tcp => TcpStream::connect(instance.authority.as_str())
                    .await
                    .is_ok(),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(false)
    }
}

/// How often and how strictly an instance is checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing checks in a row before an instance gets traffic.
    pub healthy: u32,
    /// Failing checks in a row before a healthy instance stops getting it.
    pub unhealthy: u32,
}

/// Checks one instance until `cancel` fires, updating its health flag.
pub(crate) async fn watch(
    service: Arc<str>,
    instance: Arc<Instance>,
    probe: Probe,
    thresholds: Thresholds,
    cancel: CancellationToken,
) {
    let Thresholds {
        interval,
        timeout,
        healthy,
        unhealthy,
    } = thresholds;
    let (mut failures, mut successes) = (0, 0);
    loop {
        let healthy_now = instance.is_healthy();
        let wait = if healthy_now {
            interval
        } else {
            interval.min(UNHEALTHY_PROBE_INTERVAL)
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !instance.is_running() {
            (failures, successes) = (0, 0);
            continue;
        }
        if probe.check(&instance, timeout).await {
            failures = 0;
            successes += 1;
            instance.forgive();
            if !healthy_now && successes >= healthy {
                tracing::info!(target: "gantry::health", service = %service, instance = instance.index, "instance is healthy");
                instance.set_healthy(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if healthy_now && failures >= unhealthy {
                tracing::warn!(target: "gantry::health", service = %service, instance = instance.index, failures, "instance failed its health checks; no traffic until it passes");
                instance.set_healthy(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_serving;

    #[test]
    fn a_health_answer_is_serving_only_when_its_status_field_is_1() {
        // HealthCheckResponse { status: SERVING } framed: no compression, length 2.
        assert!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        // NOT_SERVING (2), UNKNOWN (field absent), a truncated varint, a compressed frame.
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 0]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x81]));
        assert!(!grpc_serving(&[1, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!grpc_serving(&[]));
    }
}
