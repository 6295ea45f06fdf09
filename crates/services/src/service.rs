//! A running service: its instances, their supervision, and instance choice.

use crate::resilience::{CircuitBreaker, RetryBudget};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_manifest::{LoadBalancer, Service, ServiceKind, UpstreamProtocol};
use http::uri::Authority;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Probe};
use crate::instance::{Instance, InstanceStatus, UpstreamTls};
use crate::process::{self, ProcessSpec};

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("service `{service}`: no free port for instance {instance}: {source}")]
    NoPort {
        service: String,
        instance: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("service `{service}`: `{url}` is not a usable address")]
    BadUrl { service: String, url: String },
    #[error("service `{service}`: {why}")]
    Tls { service: String, why: String },
}

/// One service and its instances. Shared by every gateway snapshot that routes
/// to it; [`ServiceHandle::stop`] ends its processes and checks.
#[derive(Debug)]
pub struct ServiceHandle {
    name: Arc<str>,
    config: Service,
    instances: Vec<Arc<Instance>>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// Shared by every caller: gateway routes, event deliveries, saga steps.
    breaker: CircuitBreaker,
    budget: RetryBudget,
}

/// A service as shown by `GET /v1/services`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `process` (Gantry runs it) or `external` (reached at `urls`).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// At least one instance is healthy.
    pub ready: bool,
    pub in_flight: usize,
    pub instances: Vec<InstanceStatus>,
}

impl ServiceHandle {
    /// Starts the service's processes (if any) and health checks. Must be called
    /// within a Tokio runtime.
    pub fn start(name: &str, config: &Service) -> Result<Arc<ServiceHandle>, StartError> {
        let name: Arc<str> = Arc::from(name);
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut instances = Vec::new();
        // `https://` instances are verified against the system's roots or `ca`.
        let alpn: &[&[u8]] = match config.protocol {
            UpstreamProtocol::H2 => &[b"h2"],
            _ => &[b"http/1.1"],
        };
        let tls_config = if config.urls.iter().any(|u| u.starts_with("https://")) {
            let config = gantry_tls::client_config(config.ca.as_deref(), alpn).map_err(|e| {
                StartError::Tls {
                    service: name.to_string(),
                    why: e.to_string(),
                }
            })?;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(std::time::Duration::from_secs(30))
                    .build(gantry_tls::https_connector_with(config.clone()));
            Some((config, client))
        } else {
            None
        };
        let probe_tls = tls_config.as_ref().map(|(c, _)| c.clone());
        let probe = config.health.clone().map(|path| {
            if path == "grpc" && config.protocol.is_h2() {
                Probe::Grpc {
                    client: Box::new(health::grpc_client(probe_tls.clone())),
                }
            } else {
                Probe::Http {
                    path,
                    client: Box::new(health::http_client(
                        probe_tls.clone(),
                        config.protocol.is_h2(),
                    )),
                }
            }
        });

        // The health-check loop of one instance.
        let thresholds = health::Thresholds {
            interval: config.health_interval,
            timeout: config.health_timeout,
            healthy: config.healthy_threshold,
            unhealthy: config.unhealthy_threshold,
        };
        let check = |instance: &Arc<Instance>, probe: Probe| {
            health::watch(
                name.clone(),
                instance.clone(),
                probe,
                thresholds,
                cancel.clone(),
            )
        };

        match config.kind() {
            ServiceKind::Process {
                command,
                instances: count,
            } => {
                for index in 0..count {
                    let port = free_port().map_err(|source| StartError::NoPort {
                        service: name.to_string(),
                        instance: index,
                        source,
                    })?;
                    let authority = Authority::try_from(format!("127.0.0.1:{port}"))
                        .expect("an IP and a port form an authority");
                    let instance = Arc::new(Instance::new(
                        index,
                        authority,
                        None,
                        config.protocol,
                        false,
                        "starting",
                    ));
                    let spec = ProcessSpec {
                        service: name.clone(),
                        command: command.to_vec(),
                        workdir: config.workdir.clone().unwrap_or_else(|| ".".into()),
                        env: config.env.clone(),
                        port,
                        stop_grace: config.stop_grace,
                    };
                    tasks.spawn(process::supervise(spec, instance.clone(), cancel.clone()));
                    let probe = probe.clone().unwrap_or(Probe::Tcp);
                    tasks.spawn(check(&instance, probe));
                    instances.push(instance);
                }
            }
            ServiceKind::External { urls } => {
                for (index, url) in urls.iter().enumerate() {
                    let bad_url = || StartError::BadUrl {
                        service: name.to_string(),
                        url: url.clone(),
                    };
                    let (secure, rest) = match url.strip_prefix("https://") {
                        Some(rest) => (true, rest),
                        None => (false, url.strip_prefix("http://").ok_or_else(bad_url)?),
                    };
                    let mut authority =
                        Authority::try_from(rest.trim_end_matches('/')).map_err(|_| bad_url())?;
                    if authority.port().is_none() {
                        // The scheme's port, as a browser would use.
                        let port = if secure { 443 } else { 80 };
                        authority = Authority::try_from(format!("{authority}:{port}"))
                            .map_err(|_| bad_url())?;
                    }
                    let tls = match (&tls_config, secure) {
                        (Some((config, client)), true) => {
                            let host = authority
                                .host()
                                .trim_start_matches('[')
                                .trim_end_matches(']');
                            let server_name = gantry_tls::rustls::pki_types::ServerName::try_from(
                                host.to_string(),
                            )
                            .map_err(|_| bad_url())?;
                            Some(UpstreamTls {
                                config: config.clone(),
                                server_name,
                                client: client.clone(),
                            })
                        }
                        _ => None,
                    };
                    // Without a health path an external instance is trusted to be up;
                    // failed requests to it surface as 502s.
                    let instance = Arc::new(Instance::new(
                        index as u32,
                        authority,
                        tls,
                        config.protocol,
                        probe.is_none(),
                        "external",
                    ));
                    if let Some(probe) = probe.clone() {
                        tasks.spawn(check(&instance, probe));
                    }
                    instances.push(instance);
                }
            }
        }
        Ok(Arc::new(ServiceHandle {
            breaker: CircuitBreaker::new(&name, config.circuit_breaker.clone()),
            budget: RetryBudget::new(config.retry_budget),
            name,
            config: config.clone(),
            instances,
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            cancel,
            tasks: Mutex::new(tasks),
        }))
    }

    /// The service's circuit breaker: ask it before sending, tell it how
    /// the call went.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The service's retry budget: retries add at most `retry_budget` of
    /// extra load, whoever makes them.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The manifest entry this handle was started from; a reload compares it to
    /// decide whether the service must restart.
    pub fn config(&self) -> &Service {
        &self.config
    }

    /// An instance for a request, by the service's load balancer; `None` when
    /// none is healthy. `key` is the request's affinity key (`hash_on`).
    ///
    /// Instances ejected by outlier detection are skipped, unless every
    /// healthy instance is ejected: then ejection is ignored rather than
    /// failing all traffic (Envoy's "panic mode").
    pub fn pick(&self, key: Option<&str>) -> Option<&Arc<Instance>> {
        let mut eligible: Vec<&Arc<Instance>> = self
            .instances
            .iter()
            .filter(|i| i.is_healthy() && !i.is_ejected())
            .collect();
        if eligible.is_empty() {
            eligible = self.instances.iter().filter(|i| i.is_healthy()).collect();
        }
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0]),
            n => Some(match (self.config.load_balancer, key) {
                (LoadBalancer::ConsistentHash, Some(key)) => rendezvous(&eligible, key),
                (LoadBalancer::LeastRequests, _) => {
                    let a = fastrand::usize(..n);
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    if eligible[b].load() < eligible[a].load() {
                        eligible[b]
                    } else {
                        eligible[a]
                    }
                }
                _ => eligible[self.next.fetch_add(1, Ordering::Relaxed) % n],
            }),
        }
    }

    /// Records how a request to `instance` went, for outlier ejection.
    pub fn record(&self, instance: &Instance, success: bool) {
        if let Some(length) = instance.record(success, &self.config.outlier_ejection) {
            tracing::warn!(target: "gantry::outlier", service = %self.name, instance = instance.index, ejected_for = ?length, "instance ejected after failing requests in a row");
        }
    }

    /// Whether at least one instance can take traffic.
    pub fn is_ready(&self) -> bool {
        self.instances.iter().any(|i| i.is_healthy())
    }

    /// Whether readiness of this service depends on a configured health check.
    pub fn has_health_check(&self) -> bool {
        self.config.health.is_some()
    }

    /// Waits until an instance is healthy, or `limit` passes.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Requests to it in flight now (what its bulkhead counts).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops; a service is
    /// only stopped after its last request finished (or a drain limit passed).
    pub fn track_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Like [`ServiceHandle::track_request`], but refuses (the bulkhead) when
    /// `max_concurrent` requests are already in flight.
    pub fn try_track_request(self: &Arc<Self>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.clone());
        (before < self.config.max_concurrent as usize).then_some(guard)
    }

    /// Stops health checks and processes: SIGTERM, then SIGKILL after
    /// `stop_grace`. Waits up to `drain` for in-flight requests first.
    pub async fn stop(&self, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        while self.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cancel.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }

    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name.to_string(),
            owner: self.config.owner.clone(),
            kind: match self.config.kind() {
                ServiceKind::Process { .. } => "process",
                ServiceKind::External { .. } => "external",
            },
            health: self.config.health.clone(),
            ready: self.is_ready(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            instances: self.instances.iter().map(|i| i.status()).collect(),
        }
    }
}

/// A request in flight to a service; see [`ServiceHandle::track_request`].
#[derive(Debug)]
pub struct InFlight(Arc<ServiceHandle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A port nobody listens on right now. The listener is closed before the
/// process binds it; the window is short and the kernel does not hand the same
/// ephemeral port out again at once.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Rendezvous (highest random weight) hashing: every key ranks the instances
/// by a hash of (key, instance) and takes the top one. When an instance comes
/// or goes, only the keys it ranked first move.
fn rendezvous<'i>(instances: &[&'i Arc<Instance>], key: &str) -> &'i Arc<Instance> {
    use std::hash::{Hash, Hasher};
    instances
        .iter()
        .max_by_key(|instance| {
            // Fixed keys: the same key picks the same instance in every process.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            instance.authority.as_str().hash(&mut hasher);
            hasher.finish()
        })
        .expect("called with at least one instance")
}
