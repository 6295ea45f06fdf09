//! Which service of a route gets a request: its only one, or one side of a
//! weighted split (strangler migrations, canaries), sticky per client when the
//! route asks, with weights an operator can change at run time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use gantry_manifest::HashKey;
use gantry_services::ServiceHandle;
use http::HeaderMap;
use serde::Serialize;

use crate::attempts::affinity_key;
use crate::metrics::RouteMetrics;

/// One service a route can send to.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) service: Arc<ServiceHandle>,
    pub(crate) metrics: RouteMetrics,
    /// The weight in the manifest.
    configured: u32,
    /// The weight in force: the manifest's, or an operator's override.
    weight: AtomicU32,
}

/// A route's services and how requests are shared between them.
#[derive(Debug)]
pub(crate) struct Backends {
    list: Vec<Backend>,
    sticky: Option<HashKey>,
    overridden: AtomicBool,
}

/// A split as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct Weight {
    pub service: String,
    pub weight: u32,
}

impl Backend {
    pub(crate) fn new(service: Arc<ServiceHandle>, metrics: RouteMetrics, weight: u32) -> Backend {
        Backend {
            service,
            metrics,
            configured: weight,
            weight: AtomicU32::new(weight),
        }
    }
}

impl Backends {
    pub(crate) fn new(list: Vec<Backend>, sticky: Option<HashKey>) -> Backends {
        Backends {
            list,
            sticky,
            overridden: AtomicBool::new(false),
        }
    }

    /// The backend for a request: by weight, and by the client's sticky key
    /// when the route has one (the same client lands on the same side while
    /// the weights stay).
    pub(crate) fn choose(&self, headers: &HeaderMap) -> &Backend {
        if self.list.len() == 1 {
            return &self.list[0];
        }
        let weights: Vec<u32> = self
            .list
            .iter()
            .map(|b| b.weight.load(Ordering::Relaxed))
            .collect();
        let total: u32 = weights.iter().sum();
        if total == 0 {
            return &self.list[0];
        }
        let key = self
            .sticky
            .as_ref()
            .and_then(|on| affinity_key(on, headers));
        let mut point = match key {
            Some(key) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % u64::from(total)) as u32
            }
            None => fastrand::u32(..total),
        };
        for (backend, weight) in self.list.iter().zip(weights) {
            if point < weight {
                return backend;
            }
            point -= weight;
        }
        &self.list[0]
    }

    /// Sets weights by service name; services not named keep theirs.
    pub(crate) fn set_weights(&self, weights: &[(String, u32)]) -> Result<(), String> {
        for (service, _) in weights {
            if !self.list.iter().any(|b| b.service.name() == service) {
                let names: Vec<&str> = self.list.iter().map(|b| b.service.name()).collect();
                return Err(format!(
                    "`{service}` is not a service of this route; it splits between {}",
                    names.join(", ")
                ));
            }
        }
        let total: u32 = self
            .list
            .iter()
            .map(|b| {
                weights
                    .iter()
                    .find(|(s, _)| s == b.service.name())
                    .map_or(b.weight.load(Ordering::Relaxed), |(_, w)| *w)
            })
            .sum();
        if total == 0 {
            return Err(
                "the weights would send traffic nowhere; give one service a weight above 0".into(),
            );
        }
        for backend in &self.list {
            if let Some((_, weight)) = weights.iter().find(|(s, _)| s == backend.service.name()) {
                backend.weight.store(*weight, Ordering::Relaxed);
            }
        }
        self.overridden.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Back to the manifest's weights.
    pub(crate) fn reset(&self) {
        for backend in &self.list {
            backend.weight.store(backend.configured, Ordering::Relaxed);
        }
        self.overridden.store(false, Ordering::Relaxed);
    }

    /// Keeps an operator's override across a reload, as long as the route
    /// still splits between the same services.
    pub(crate) fn carry_over(&self, previous: &Backends) {
        let same_services = self.list.len() == previous.list.len()
            && self
                .list
                .iter()
                .zip(&previous.list)
                .all(|(a, b)| a.service.name() == b.service.name());
        if same_services && previous.overridden.load(Ordering::Relaxed) {
            for (now, before) in self.list.iter().zip(&previous.list) {
                now.weight
                    .store(before.weight.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            self.overridden.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn weights(&self) -> (Vec<Weight>, bool) {
        let weights = self
            .list
            .iter()
            .map(|b| Weight {
                service: b.service.name().to_string(),
                weight: b.weight.load(Ordering::Relaxed),
            })
            .collect();
        (weights, self.overridden.load(Ordering::Relaxed))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.list.iter()
    }
}
