//! One instance of a service: an address plus what Gantry knows about it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

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
    healthy: AtomicBool,
    pid: AtomicU32,
    restarts: AtomicU32,
    state: Mutex<&'static str>,
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
}

impl Instance {
    pub(crate) fn new(
        index: u32,
        authority: Authority,
        healthy: bool,
        state: &'static str,
    ) -> Self {
        let host_header = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Instance {
            index,
            host_header,
            authority,
            healthy: AtomicBool::new(healthy),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            state: Mutex::new(state),
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
        }
    }
}
