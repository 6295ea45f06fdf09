//! Real HTTP upstreams and a real gateway on loopback ports, for the proxy tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gantry_gateway::{Gateway, GatewayMetrics, RouteTable};
use gantry_services::ServiceHandle;
use gantry_telemetry::Metrics;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a test upstream answers.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// JSON with the method, path and headers it received; `POST /stream`
    /// echoes the body back as it arrives; `GET /bytes/N` sends N bytes.
    Echo,
    /// Accepts the connection, then closes it without answering.
    Reset,
    /// Waits this long before answering.
    Slow(Duration),
    /// Answers 500 to everything, `/healthz` included.
    Failing,
    /// The first `failures` requests get `status`, later ones are echoed.
    FailFirst { failures: usize, status: u16 },
    /// The first `slow` requests wait `delay`, later ones answer at once.
    SlowFirst { slow: usize, delay: Duration },
    /// Answers with the status held in the switch (0: echo), changeable at run time.
    Switch,
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    /// For [`Behaviour::Switch`]: the status to answer with, 0 to echo.
    pub switch: Arc<std::sync::atomic::AtomicU16>,
    /// Health checks (`GET /healthz`) answered so far.
    pub health_checks: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let switch = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let (conns, reqs, status, checks) = (
            connections.clone(),
            requests.clone(),
            switch.clone(),
            health_checks.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                if let Behaviour::Reset = behaviour {
                    drop(stream);
                    continue;
                }
                let (reqs, status, checks) = (reqs.clone(), status.clone(), checks.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        // Health checks are not counted as traffic.
                        let seen = if request.uri().path() == "/healthz" {
                            checks.fetch_add(1, Ordering::SeqCst);
                            usize::MAX
                        } else {
                            reqs.fetch_add(1, Ordering::SeqCst)
                        };
                        answer(
                            behaviour,
                            addr,
                            request,
                            seen,
                            status.load(Ordering::SeqCst),
                        )
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            requests,
            switch,
            health_checks,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests (not health checks) this upstream has answered.
    pub fn seen(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn answer(
    behaviour: Behaviour,
    me: SocketAddr,
    request: Request<Incoming>,
    seen: usize,
    switch: u16,
) -> Result<Response<UpstreamBody>, Infallible> {
    match behaviour {
        Behaviour::Failing => return Ok(full(500, "broken")),
        Behaviour::Slow(delay) => tokio::time::sleep(delay).await,
        Behaviour::FailFirst { failures, status } if seen < failures => {
            return Ok(full(status, "failing on purpose"))
        }
        Behaviour::SlowFirst { slow, delay } if seen < slow => tokio::time::sleep(delay).await,
        Behaviour::Switch if switch != 0 => return Ok(full(switch, "switched to fail")),
        _ => {}
    }
    let path = request.uri().path().to_string();
    if request.method() == hyper::Method::POST && path == "/stream" {
        // Echo the body frame by frame: nothing is buffered here.
        return Ok(Response::new(request.into_body().boxed()));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = (0..n.div_ceil(chunk.len())).map(move |i| {
            let len = chunk.len().min(n - i * chunk.len());
            Ok::<_, hyper::Error>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    let headers: HashMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = serde_json::json!({
        "upstream": me.to_string(),
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    });
    let mut response = full(200, &body.to_string());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the gateway must not pass on to the client.
    response
        .headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    Ok(response)
}

fn full(status: u16, text: &str) -> Response<UpstreamBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}

/// A gateway serving a manifest, on a free loopback port.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    services: Vec<Arc<ServiceHandle>>,
}

impl TestGateway {
    /// Starts the services and routes of `manifest` (TOML text).
    pub async fn start(manifest: &str) -> TestGateway {
        let data = std::env::temp_dir().join(format!(
            "gantry-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        TestGateway::start_in(manifest, &data).await
    }

    /// Like [`TestGateway::start`], keeping state (idempotency records) in `data_dir`.
    pub async fn start_in(manifest: &str, data_dir: &Path) -> TestGateway {
        std::fs::create_dir_all(data_dir).unwrap();
        let manifest = gantry_manifest::parse(manifest, Path::new("test.toml"), Path::new("/tmp"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut services = HashMap::new();
        for (name, config) in &manifest.services {
            services.insert(name.clone(), ServiceHandle::start(name, config).unwrap());
        }
        for service in services.values() {
            service.wait_ready(Duration::from_secs(2)).await;
        }
        let metrics = Metrics::new();
        let gateway_metrics = GatewayMetrics::register(&metrics);
        let table = RouteTable::build(&manifest.routes, &services, &gateway_metrics, None)
            .unwrap()
            .with_platform(&manifest.platform, None)
            .with_jwt(manifest.jwt.as_ref())
            .await
            .unwrap();
        let parts = gantry_gateway::GatewayParts {
            idempotency: Some(gantry_gateway::IdempotencyStore::open(data_dir).unwrap()),
            ..Default::default()
        };
        let gateway = Gateway::with_parts(table, gateway_metrics, parts);
        gateway.register_saturation(&metrics);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(gantry_gateway::serve(
            gateway.clone(),
            listener,
            None,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        TestGateway {
            addr,
            gateway,
            metrics,
            shutdown,
            services: services.into_values().collect(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts a graceful shutdown of the listener.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client with a connection pool, like a browser or SDK.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
