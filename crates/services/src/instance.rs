//! One instance of a service: an address plus what Gantry knows about it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_manifest::{OutlierEjection, UpstreamProtocol};

use http::uri::Authority;
use http::HeaderValue;
use serde::Serialize;

/// One place a service's requests can go.
#[derive(Debug)]
pub struct Instance {
    /// Position within the service, from 0; `GANTRY_INSTANCE` for processes.
    pub index: u32,
    /// `host:port` to connect to.
    pub authority: Authority,
    /// `authority` as a `Host` header value, made once.
    pub host_header: HeaderValue,
    /// Set for an `https://` instance: how to verify it.
    pub tls: Option<UpstreamTls>,
    /// The HTTP version its service speaks (`protocol` in the manifest).
    pub protocol: UpstreamProtocol,
    healthy: AtomicBool,
    pid: AtomicU32,
    restarts: AtomicU32,
    state: Mutex<&'static str>,
    /// Requests on their way to or from this instance (least-requests balancing).
    load: AtomicUsize,
    outlier: Mutex<Outlier>,
}

/// How Gantry talks TLS to an `https://` instance.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Roots (the system's, or the service's `ca`), ALPN `http/1.1`, or
    /// `h2` for a service with `protocol = "h2"`.
    pub config: Arc<gantry_tls::rustls::ClientConfig>,
    /// The name sent as SNI and checked against the certificate.
    pub server_name: gantry_tls::rustls::pki_types::ServerName<'static>,
    /// A pooled client verifying with `config`, for the callers that send
    /// whole bodies (event delivery, saga steps); one per service.
    pub client: TlsClient,
}

/// The pooled https client of a service with `https://` instances.
pub type TlsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Passive health: failures in a row, and the current ejection.
#[derive(Debug, Default)]
struct Outlier {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// A request using an instance; see [`Instance::begin`].
#[derive(Debug)]
pub struct InstanceLoad(Arc<Instance>);

impl Drop for InstanceLoad {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An instance as shown by `GET /v1/services`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub index: u32,
    pub address: String,
    pub healthy: bool,
    /// The process id, for instances Gantry runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// `starting`, `running`, `backoff`, `stopped` or `external`.
    pub state: &'static str,
    /// Requests in flight to this instance.
    pub load: usize,
    /// Milliseconds left of an outlier ejection, when ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
}

impl Instance {
    pub(crate) fn new(
        index: u32,
        authority: Authority,
        tls: Option<UpstreamTls>,
        protocol: UpstreamProtocol,
        healthy: bool,
        state: &'static str,
    ) -> Self {
        let host_header = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Instance {
            index,
            host_header,
            authority,
            tls,
            protocol,
            healthy: AtomicBool::new(healthy),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            state: Mutex::new(state),
            load: AtomicUsize::new(0),
            outlier: Mutex::new(Outlier::default()),
        }
    }

    /// `https` for an instance reached over TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Counts a request on this instance until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InstanceLoad {
        self.load.fetch_add(1, Ordering::Relaxed);
        InstanceLoad(self.clone())
    }

    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection right now.
    pub fn is_ejected(&self) -> bool {
        let outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        outlier
            .ejected_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records how a request to this instance went; returns the ejection time
    /// when this failure ejects it.
    pub(crate) fn record(&self, success: bool, policy: &OutlierEjection) -> Option<Duration> {
        let mut outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            outlier.consecutive_failures = 0;
            return None;
        }
        outlier.consecutive_failures += 1;
        let already_out = outlier
            .ejected_until
            .is_some_and(|until| Instant::now() < until);
        if !policy.enabled
            || already_out
            || outlier.consecutive_failures < policy.consecutive_failures
        {
            return None;
        }
        // Each ejection in a row lasts twice as long as the last.
        let factor = 1u32 << outlier.ejections.min(16);
        let length = policy.base.saturating_mul(factor).min(policy.max);
        outlier.ejections += 1;
        outlier.consecutive_failures = 0;
        outlier.ejected_until = Some(Instant::now() + length);
        Some(length)
    }

    /// A passing health check ends the streak of ejections.
    pub(crate) fn forgive(&self) {
        let mut outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        if outlier
            .ejected_until
            .is_none_or(|until| Instant::now() >= until)
        {
            outlier.ejections = 0;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub(crate) fn set_running(&self, pid: Option<u32>, state: &'static str) {
        self.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub(crate) fn is_running(&self) -> bool {
        matches!(self.state(), "running" | "external")
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> &'static str {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> InstanceStatus {
        let pid = self.pid.load(Ordering::Relaxed);
        InstanceStatus {
            index: self.index,
            address: self.authority.to_string(),
            healthy: self.is_healthy(),
            pid: (pid != 0).then_some(pid),
            restarts: self.restarts.load(Ordering::Relaxed),
            state: self.state(),
            load: self.load(),
            ejected_for_ms: {
                let outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
                outlier
                    .ejected_until
                    .and_then(|until| until.checked_duration_since(Instant::now()))
                    .map(|left| left.as_millis() as u64)
            },
        }
    }
}
