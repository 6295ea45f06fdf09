//! Sending one event to a subscriber: an HTTP POST in CloudEvents binary mode
//! to an instance of the target service.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use gantry_manifest::{Endpoint, Subscription};
use gantry_services::ServiceHandle;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::broker::Pending;
use crate::cloudevent::CloudEvent;

/// The services events can be delivered to, as the app's latest reload left them.
pub type ServiceDirectory = Arc<ArcSwap<HashMap<String, Arc<ServiceHandle>>>>;

/// Header with the attempt number (1 for the first delivery of an event).
pub const ATTEMPT_HEADER: &str = "gantry-delivery-attempt";
/// Header naming the subscription a delivery belongs to.
pub const SUBSCRIPTION_HEADER: &str = "gantry-subscription";
/// Header with the event's sequence number in its topic.
pub const SEQUENCE_HEADER: &str = "gantry-sequence";

/// Starts a workflow run per event, for subscriptions with
/// `to = "workflow:NAME"`. The workflow engine implements it; the bus only
/// knows this seam (the engine depends on the bus, not the other way).
#[async_trait::async_trait]
pub trait WorkflowStarter: Send + Sync + std::fmt::Debug {
    /// Starts `workflow` with run id `id` (the same id again must be a no-op).
    async fn start_from_event(
        &self,
        workflow: &str,
        id: &str,
        input: serde_json::Value,
        traceparent: Option<&str>,
    ) -> Result<(), String>;
}

/// Where the workflow engine is, once the app has wired it.
pub(crate) type StarterSlot = Arc<OnceLock<Arc<dyn WorkflowStarter>>>;

/// Delivers events over pooled HTTP/1.1 connections (or starts workflows).
#[derive(Debug, Clone)]
pub(crate) struct Deliverer {
    client: Client<HttpConnector, Full<Bytes>>,
    services: ServiceDirectory,
    pub starter: StarterSlot,
    /// Where delivery spans go, once the app has wired it.
    pub traces: Arc<OnceLock<gantry_telemetry::traces::TraceStore>>,
}

impl Deliverer {
    pub fn new(services: ServiceDirectory) -> Deliverer {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Deliverer {
            client,
            services,
            starter: StarterSlot::default(),
            traces: Arc::default(),
        }
    }

    /// A run of `workflow` per event: the event's id names the run (so a
    /// redelivery starts nothing new) and its data is the input.
    async fn start_workflow(&self, workflow: &str, pending: &Pending) -> Result<(), String> {
        let starter = self
            .starter
            .get()
            .ok_or("the workflow engine is not running")?;
        let event = CloudEvent::from_stored(&pending.event.json).map_err(|e| e.to_string())?;
        let id = format!("{}-{}", pending.event.topic, event.id()).replace('/', "_");
        let input = event.data().cloned().unwrap_or(serde_json::Value::Null);
        let traceparent = event.attribute("traceparent");
        starter
            .start_from_event(workflow, &id, input, traceparent.as_deref())
            .await
    }

    /// One delivery attempt. `Err` carries the reason, for retries and the
    /// dead-letter queue.
    pub async fn send(
        &self,
        subscription: &Subscription,
        pending: &Pending,
        attempt: u32,
    ) -> Result<(), String> {
        let (service, path) = match &subscription.to {
            Endpoint::Service { service, path } => (service, path),
            Endpoint::Workflow { name } => return self.start_workflow(name, pending).await,
        };
        let handle = self
            .services
            .load()
            .get(service)
            .cloned()
            .ok_or_else(|| format!("service `{service}` is not running"))?;
        let instance = handle
            .pick(None)
            .cloned()
            .ok_or_else(|| format!("no healthy instance of service `{service}`"))?;
        let _in_flight = handle.track_request();
        let _load = instance.begin();

        let event = CloudEvent::from_stored(&pending.event.json).map_err(|e| e.to_string())?;
        let (headers, body) = event.to_binary();
        let uri = format!("{}://{}{}", instance.scheme(), instance.authority, path);
        let mut request = Request::post(uri)
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let out = request.headers_mut();
        out.extend(headers);
        out.insert(http::header::HOST, instance.host_header.clone());
        let started = std::time::SystemTime::now();
        let publisher = event.attribute("traceparent");
        let delivery = publisher.as_deref().and_then(child_span);
        if let Some(parent) = &delivery {
            out.insert("traceparent", parent.clone());
        }
        if let Some(state) = event
            .attribute("tracestate")
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            out.insert("tracestate", state);
        }
        out.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        out.insert(SEQUENCE_HEADER, HeaderValue::from(pending.event.seq));
        if let Ok(name) = HeaderValue::from_str(&subscription.name) {
            out.insert(SUBSCRIPTION_HEADER, name);
        }

        let exchange = async {
            let sent = match &instance.tls {
                Some(tls) => tls.client.request(request),
                None => self.client.request(request),
            };
            let response = sent.await.map_err(|e| {
                let mut reason = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    reason = format!("{reason}: {source}");
                }
                format!("cannot reach {service} at {}: {reason}", instance.authority)
            })?;
            let status = response.status();
            // Read the body so the connection can be reused; keep a little of
            // it for the error message.
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]);
                Err(format!(
                    "{service} answered {status}{}{}",
                    if excerpt.is_empty() { "" } else { ": " },
                    excerpt.trim()
                ))
            }
        };
        let outcome = match tokio::time::timeout(subscription.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{service} did not answer within {:?} (the subscription's `timeout`)",
                subscription.timeout
            )),
        };
        handle.record(&instance, outcome.is_ok());
        if let (Some(store), Some(publisher), Some(delivery)) =
            (self.traces.get(), publisher.as_deref(), &delivery)
        {
            record_delivery(
                store,
                subscription,
                &event,
                publisher,
                delivery,
                attempt,
                started,
                &outcome,
            );
        }
        outcome
    }
}

/// A span for one delivery attempt, a child of the publisher's span, parent
/// of whatever the subscriber records.
#[allow(clippy::too_many_arguments)]
fn record_delivery(
    store: &gantry_telemetry::traces::TraceStore,
    subscription: &Subscription,
    event: &CloudEvent,
    publisher: &str,
    delivery: &HeaderValue,
    attempt: u32,
    started: std::time::SystemTime,
    outcome: &Result<(), String>,
) {
    let mut ours = delivery.to_str().unwrap_or_default().split('-').skip(1);
    let (Some(trace_id), Some(span_id)) = (ours.next(), ours.next()) else {
        return;
    };
    let parent_id = publisher.split('-').nth(2).map(str::to_string);
    let mut attributes = gantry_telemetry::traces::Attributes::new();
    attributes.insert("messaging.system", "gantry");
    attributes.insert("messaging.operation.type", "deliver");
    attributes.insert("messaging.destination.name", subscription.topic.clone());
    attributes.insert("messaging.consumer.group.name", subscription.name.clone());
    attributes.insert(
        "messaging.message.id",
        event.attribute("id").unwrap_or_default(),
    );
    attributes.insert("gantry.delivery.attempt", attempt);
    attributes.insert("gantry.to", subscription.to.to_string());
    if let Err(error) = outcome {
        attributes.insert("error.message", error.clone());
    }
    store.record(gantry_telemetry::traces::Span {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
        parent_id,
        name: format!("deliver {}", subscription.topic),
        kind: "producer",
        service: "events".into(),
        start_ns: gantry_telemetry::traces::unix_nanos(started),
        duration_ns: started.elapsed().unwrap_or_default().as_nanos() as u64,
        error: outcome.is_err(),
        attributes,
    });
}

/// A `traceparent` for the delivery hop: the publisher's trace id with a new
/// span id, so the delivery shows as a child of the publish.
fn child_span(parent: &str) -> Option<HeaderValue> {
    let mut parts = parent.split('-');
    let (version, trace, _span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let span = format!("{:016x}", fastrand::u64(1..));
    HeaderValue::from_str(&format!("{version}-{trace}-{span}-{flags}")).ok()
}
