//! Health checks: an instance gets traffic only while its checks pass.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;

/// Failed checks in a row before a healthy instance stops getting traffic; one
/// blip does not eject it.
const FAILURES_TO_UNHEALTHY: u32 = 2;
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
    /// The port must accept a TCP connection (processes without a `health` path).
    Tcp,
}

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

impl Probe {
    async fn check(&self, instance: &Instance, timeout: Duration) -> bool {
        let attempt = async {
            match self {
                Probe::Http { path, client } => {
                    let uri = format!("http://{}{}", instance.authority, path);
                    let Ok(uri) = uri.parse::<http::Uri>() else {
                        return false;
                    };
                    match client.get(uri).await {
                        Ok(response) => response.status().is_success(),
                        Err(_) => false,
                    }
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

/// Checks one instance until `cancel` fires, updating its health flag.
pub(crate) async fn watch(
    service: Arc<str>,
    instance: Arc<Instance>,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut failures = 0;
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
            failures = 0;
            continue;
        }
        if probe.check(&instance, timeout).await {
            failures = 0;
            if !healthy_now {
                tracing::info!(target: "gantry::health", service = %service, instance = instance.index, "instance is healthy");
                instance.set_healthy(true);
            }
        } else {
            failures += 1;
            if healthy_now && failures >= FAILURES_TO_UNHEALTHY {
                tracing::warn!(target: "gantry::health", service = %service, instance = instance.index, failures, "instance failed its health checks; no traffic until it passes");
                instance.set_healthy(false);
            }
        }
    }
}
