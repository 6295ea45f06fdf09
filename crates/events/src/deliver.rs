//! Sending one event to a subscriber: an HTTP POST in CloudEvents binary mode
//! to an instance of the target service.

use std::sync::{Arc, OnceLock};

use gantry_manifest::{Endpoint, Subscription};
use gantry_services::outbound::{Call, CallError, Outbound};
use gantry_services::ServiceDirectory;
use gantry_telemetry::context::TraceContext;
use http::{HeaderMap, HeaderValue, Method};

use crate::broker::Pending;
use crate::cloudevent::CloudEvent;

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

/// Delivers events through the services' outbound client (or starts workflows).
#[derive(Debug, Clone)]
pub(crate) struct Deliverer {
    outbound: Outbound,
    services: ServiceDirectory,
    pub starter: StarterSlot,
    /// Where delivery spans go.
    pub traces: Option<gantry_telemetry::traces::TraceStore>,
}

impl Deliverer {
    pub fn new(
        services: ServiceDirectory,
        traces: Option<gantry_telemetry::traces::TraceStore>,
    ) -> Deliverer {
        Deliverer {
            outbound: Outbound::shared().clone(),
            services,
            starter: StarterSlot::default(),
            traces,
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
        let event = CloudEvent::from_stored(&pending.event.json).map_err(|e| e.to_string())?;
        let (headers, body) = event.to_binary();
        let mut out = HeaderMap::new();
        out.extend(headers);
        let started = std::time::SystemTime::now();
        let publisher = event.attribute("traceparent");
        // The delivery is a child of the publish span the event carries.
        let delivery = publisher
            .as_deref()
            .and_then(|p| TraceContext::continued(p.as_bytes()));
        if let Some(context) = &delivery {
            if let Ok(value) = HeaderValue::from_bytes(&context.traceparent_bytes()) {
                out.insert("traceparent", value);
            }
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
        // The service's own bulkhead and breaker, shared with the gateway: a
        // delivery refused by them waits and is retried like a failed one.
        let call = Call {
            method: Method::POST,
            path: path.clone(),
            headers: out,
            body,
            timeout: subscription.timeout,
        };
        let outcome = match self.outbound.call(&self.services, service, call).await {
            Ok(answer) if answer.status.is_success() => Ok(()),
            Ok(answer) => {
                let excerpt = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]);
                Err(format!(
                    "{service} answered {}{}{}",
                    answer.status,
                    if excerpt.is_empty() { "" } else { ": " },
                    excerpt.trim()
                ))
            }
            Err(CallError::Timeout { .. }) => Err(format!(
                "{service} did not answer within {:?} (the subscription's `timeout`)",
                subscription.timeout
            )),
            Err(error) => Err(error.to_string()),
        };
        if let (Some(store), Some(delivery)) = (&self.traces, &delivery) {
            record_delivery(
                store,
                subscription,
                &event,
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
    delivery: &TraceContext,
    attempt: u32,
    started: std::time::SystemTime,
    outcome: &Result<(), String>,
) {
    let duration = started.elapsed().unwrap_or_default();
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
        trace_id: delivery.trace_id_hex(),
        span_id: delivery.span_id_hex(),
        parent_id: delivery.parent_id_hex(),
        name: format!("deliver {}", subscription.topic),
        kind: "producer",
        service: "events".into(),
        start_ns: gantry_telemetry::traces::unix_nanos(started),
        duration_ns: duration.as_nanos() as u64,
        error: outcome.is_err(),
        attributes,
        sampled: delivery.sampled(),
    });
}
