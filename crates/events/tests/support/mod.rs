//! A real HTTP subscriber and a bus wired to it, for the event bus tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use gantry_events::EventBus;
use gantry_manifest::Manifest;
use gantry_services::ServiceDirectory;
use gantry_services::ServiceHandle;

/// One delivery as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Delivery {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// What the subscriber answers to a delivery.
pub type Behaviour = Arc<dyn Fn(&Delivery) -> Answer + Send + Sync>;

pub enum Answer {
    Status(u16),
    /// Wait, then answer 200.
    SlowOk(Duration),
    /// Never answer.
    Hang,
}

#[derive(Clone)]
pub struct Subscriber {
    pub url: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
    behaviour: Arc<ArcSwap<Behaviour>>,
    in_flight: Arc<Mutex<(usize, usize)>>,
}

impl Subscriber {
    pub async fn start() -> Subscriber {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ok: Behaviour = Arc::new(|_| Answer::Status(200));
        let subscriber = Subscriber {
            url,
            seen: Arc::default(),
            behaviour: Arc::new(ArcSwap::from_pointee(ok)),
            in_flight: Arc::default(),
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(subscriber.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        subscriber
    }

    pub fn behave(&self, behaviour: impl Fn(&Delivery) -> Answer + Send + Sync + 'static) {
        self.behaviour.store(Arc::new(Arc::new(behaviour)));
    }

    pub fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// Most deliveries that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }

    /// Waits until `n` deliveries arrived (or panics after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries arrived within {limit:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(State(s): State<Subscriber>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delivery = Delivery {
        headers,
        body,
        at: Instant::now(),
    };
    {
        let mut counts = s.in_flight.lock().unwrap();
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
    }
    s.seen.lock().unwrap().push(delivery.clone());
    let answer = (s.behaviour.load())(&delivery);
    let status = match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::SlowOk(wait) => {
            tokio::time::sleep(wait).await;
            StatusCode::OK
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
    };
    s.in_flight.lock().unwrap().0 -= 1;
    status
}

/// A bus on a fresh data directory, with the manifest's services started.
pub struct TestBus {
    pub bus: EventBus,
    pub dir: tempfile::TempDir,
    pub directory: ServiceDirectory,
}

/// Parses manifest text written in a test; `{SUB}` is replaced by the subscriber's URL.
pub fn manifest(text: &str, subscriber: &Subscriber, dir: &std::path::Path) -> Manifest {
    let text = text.replace("{SUB}", &subscriber.url);
    gantry_manifest::parse(&text, std::path::Path::new("test.toml"), dir)
        .unwrap_or_else(|e| panic!("{e}"))
}

impl TestBus {
    pub async fn start(manifest: &Manifest, dir: tempfile::TempDir) -> TestBus {
        let directory: ServiceDirectory = Arc::default();
        let mut services = HashMap::new();
        for (name, config) in &manifest.services {
            services.insert(name.clone(), ServiceHandle::start(name, config).unwrap());
        }
        directory.store(Arc::new(services));
        let bus = EventBus::open(dir.path(), directory.clone(), None).unwrap();
        bus.apply(manifest).await.unwrap();
        TestBus {
            bus,
            dir,
            directory,
        }
    }

    /// Stops this bus and opens a new one on the same data directory, as a restart would.
    pub async fn restart(self, manifest: &Manifest) -> TestBus {
        self.bus.stop().await;
        let TestBus {
            bus,
            dir,
            directory,
        } = self;
        drop(bus);
        // The writer thread of the old store exits once its last sender is gone.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bus = EventBus::open(dir.path(), directory.clone(), None).unwrap();
        bus.apply(manifest).await.unwrap();
        TestBus {
            bus,
            dir,
            directory,
        }
    }
}

pub fn event(id: &str, data: serde_json::Value) -> gantry_events::CloudEvent {
    gantry_events::CloudEvent::from_json(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests",
        "type": "order.placed",
        "data": data,
    }))
    .unwrap()
}
