//! The one way Gantry's own subsystems call a service: event deliveries and
//! saga steps (the gateway's proxy path has its own streaming pool in
//! `gateway/src/upstream.rs`, but the same service state), and the one way
//! they fetch an outside URL (JWKS documents, alert webhooks): see
//! [`Outbound::fetch`]. One process-wide pool, [`Outbound::shared`].
//!
//! A call resolves the service in the [`ServiceDirectory`], passes its
//! bulkhead and circuit breaker (shared with gateway routes), picks a healthy
//! instance, sends on a pooled connection (plain, or TLS with the service's
//! client for `https://` instances) within the call's timeout, reads the
//! answer up to [`MAX_ANSWER`], and reports the outcome to the breaker and
//! the instance's outlier detection. Failures are a [`CallError`] that says
//! who is to blame and whether calling again later may help.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use gantry_manifest::UpstreamProtocol;
use gantry_problem::{Blame, Explain};

use crate::{Instance, ServiceDirectory, ServiceHandle};

/// The largest answer read from a service; more is an error, not a stall.
pub const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// One request to a service: a method, a path (the instance supplies scheme
/// and authority), headers, a whole body and how long to wait for it all.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
}

/// A service's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The instance that answered.
    pub instance: u32,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("service `{0}` is not running")]
    NotRunning(String),
    #[error("no healthy instance of service `{0}`")]
    NoHealthyInstance(String),
    #[error("service `{service}` already has {limit} requests in flight (its `max_concurrent`)")]
    Bulkhead { service: String, limit: u32 },
    #[error("service `{0}` is failing and its circuit breaker is open; the call was not sent")]
    BreakerOpen(String),
    #[error("cannot build the request to `{service}`: {reason}")]
    BadRequest { service: String, reason: String },
    #[error("cannot reach {service} at {authority}: {reason}")]
    Unreachable {
        service: String,
        authority: String,
        reason: String,
    },
    #[error("{service} did not answer within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    #[error("{service} broke off its answer (or sent more than {MAX_ANSWER} bytes): {reason}")]
    BrokenAnswer { service: String, reason: String },
}

impl Explain for CallError {
    fn blame(&self) -> Blame {
        match self {
            CallError::NotRunning(_) => Blame::Gantry,
            CallError::BadRequest { .. } => Blame::Caller,
            _ => Blame::Upstream,
        }
    }

    // Retryable: everything but a call that cannot be built. (Nothing was
    // sent when the breaker or the bulkhead refused; a timeout or a broken
    // answer may have had effects, so the call must carry an idempotency key
    // to be sent again, as saga steps do.)
}

/// Why an outside URL gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}` is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} broke off its answer (or sent more than {limit} bytes): {reason}")]
    BrokenAnswer {
        url: String,
        limit: usize,
        reason: String,
    },
}

impl Explain for FetchError {
    fn blame(&self) -> Blame {
        match self {
            // The URL comes from the manifest.
            FetchError::BadUrl { .. } => Blame::Gantry,
            _ => Blame::Upstream,
        }
    }
}

/// The pooled clients: plain HTTP for service instances, and HTTPS (the
/// system's roots) for outside URLs. Cheap to clone; every clone shares the
/// pools.
#[derive(Debug, Clone)]
pub struct Outbound {
    plain: Client<HttpConnector, Full<Bytes>>,
    /// HTTP/2 by prior knowledge, for `protocol = "h2c"` services.
    h2c: Client<HttpConnector, Full<Bytes>>,
    external: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Outbound {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Outbound {
            plain: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector.clone()),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            external: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(gantry_tls::https_connector()),
        }
    }
}

impl Outbound {
    /// The process's pools, shared by every subsystem (hyper's client is
    /// made to be shared: one pool of connections per destination).
    pub fn shared() -> &'static Outbound {
        static SHARED: std::sync::OnceLock<Outbound> = std::sync::OnceLock::new();
        SHARED.get_or_init(Outbound::default)
    }

    /// Sends `request` to an outside URL (its URI is absolute, http or
    /// https; https is verified against the system's roots) and reads the
    /// answer, up to `limit` bytes, all within `timeout`.
    pub async fn fetch(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        let url = request.uri().to_string();
        if request.uri().scheme().is_none() || request.uri().authority().is_none() {
            return Err(FetchError::BadUrl {
                url,
                reason: "it needs a scheme and a host (https://host/path)".into(),
            });
        }
        let exchange = async {
            let response = self.external.request(request).await.map_err(|e| {
                let mut reason = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    reason = format!("{reason}: {source}");
                }
                FetchError::Unreachable {
                    url: url.clone(),
                    reason,
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| FetchError::BrokenAnswer {
                    url: url.clone(),
                    limit,
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(FetchError::Timeout { url, timeout }),
        }
    }

    /// Calls `service` as the directory has it now.
    pub async fn call(
        &self,
        directory: &ServiceDirectory,
        service: &str,
        call: Call,
    ) -> Result<Answer, CallError> {
        let handle = directory
            .load()
            .get(service)
            .cloned()
            .ok_or_else(|| CallError::NotRunning(service.to_string()))?;
        self.call_handle(&handle, call).await
    }

    /// Calls a running service.
    pub async fn call_handle(
        &self,
        handle: &Arc<ServiceHandle>,
        call: Call,
    ) -> Result<Answer, CallError> {
        let service = handle.name();
        let _in_flight = handle
            .try_track_request()
            .ok_or_else(|| CallError::Bulkhead {
                service: service.to_string(),
                limit: handle.config().max_concurrent,
            })?;
        let instance = handle
            .pick(None)
            .cloned()
            .ok_or_else(|| CallError::NoHealthyInstance(service.to_string()))?;
        let request = build(&instance, &call).map_err(|reason| CallError::BadRequest {
            service: service.to_string(),
            reason,
        })?;
        // Asked last, with nothing between it and its `record` that returns
        // early: an admitted probe must always be reported.
        let admission = handle
            .breaker()
            .admit()
            .ok_or_else(|| CallError::BreakerOpen(service.to_string()))?;
        let _load = instance.begin();
        let exchange = async {
            let sent = match &instance.tls {
                // An `h2` service's client negotiates HTTP/2 by ALPN.
                Some(tls) => tls.client.request(request).await,
                None if instance.protocol == UpstreamProtocol::H2c => {
                    self.h2c.request(request).await
                }
                None => self.plain.request(request).await,
            };
            let response = sent.map_err(|e| {
                let mut reason = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    reason = format!("{reason}: {source}");
                }
                CallError::Unreachable {
                    service: service.to_string(),
                    authority: instance.authority.to_string(),
                    reason,
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| CallError::BrokenAnswer {
                    service: service.to_string(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                instance: instance.index,
            })
        };
        let outcome = match tokio::time::timeout(call.timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CallError::Timeout {
                service: service.to_string(),
                timeout: call.timeout,
            }),
        };
        // A 4xx is the service working; only 5xx and no answer count
        // against it (as for gateway routes).
        let healthy = matches!(&outcome, Ok(answer) if !answer.status.is_server_error());
        handle.record(&instance, healthy);
        handle.breaker().record(admission, healthy);
        outcome
    }
}

fn build(instance: &Instance, call: &Call) -> Result<Request<Full<Bytes>>, String> {
    let uri = format!(
        "{}://{}{}",
        instance.scheme(),
        instance.authority,
        call.path
    );
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(uri)
        .body(Full::new(call.body.clone()))
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = call.headers.clone();
    request
        .headers_mut()
        .insert(http::header::HOST, instance.host_header.clone());
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_manifest::Service;

    /// A server that speaks HTTP/2 only (prior knowledge), as gRPC servers
    /// do, answering each request with the HTTP version it came in.
    async fn h2c_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", request.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(version),
                        )))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn calls_to_an_h2c_service_go_over_http2() {
        let addr = h2c_server().await;
        let mut config = Service::external(vec![format!("http://{addr}")]);
        config.protocol = UpstreamProtocol::H2c;
        let handle = crate::ServiceHandle::start("grpc-like", &config).unwrap();
        let call = Call {
            method: Method::POST,
            path: "/deliver".into(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            timeout: Duration::from_secs(5),
        };
        let answer = Outbound::default()
            .call_handle(&handle, call)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "HTTP/2.0");
    }
}
