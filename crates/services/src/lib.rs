//! Service instances: where a service's traffic can go, and whether it should.
//!
//! A [`ServiceHandle`] is built from one `[services.NAME]` of the manifest. For a
//! `command` service it runs the processes (each with its own port in `PORT`),
//! captures their output into Gantry's log, restarts them with exponential
//! backoff when they exit, and stops them with SIGTERM then SIGKILL. For a
//! `urls` service it only tracks the given addresses. Either way it health-checks
//! the instances and hands the gateway a healthy one, round-robin, through
//! [`ServiceHandle::pick`].
//!
//! Handles are shared (`Arc`) between gateway snapshots, so a reload that leaves
//! a service unchanged keeps its processes running.

mod health;
mod instance;
pub mod outbound;
mod process;
pub mod resilience;
mod service;

pub use instance::{Instance, InstanceLoad, InstanceStatus, UpstreamTls};
pub use service::{InFlight, ServiceHandle, ServiceStatus, StartError};

/// Every running service by name, as the latest reload left them: what event
/// deliveries, saga steps and functions' grants resolve a service name with.
/// The app swaps in a new map with each reload.
pub type ServiceDirectory = std::sync::Arc<
    arc_swap::ArcSwap<std::collections::HashMap<String, std::sync::Arc<ServiceHandle>>>,
>;
