//! `[workflows.NAME]`: sagas, an ordered list of steps with compensations.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::events::DeliveryRetry;
use crate::model::duration_text;

/// `[workflows.NAME]`: steps run in order; when one fails for good, the
/// completed steps' compensations run in reverse order.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// `[[workflows.NAME.steps]]`, in order.
    pub steps: Vec<Step>,
}

/// One step: exactly one of `call`, `publish`, `wait` or `sleep`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The step's name, unique in the workflow; templates read its output as
    /// `{{ steps.NAME.output... }}`.
    pub name: String,
    /// What the step does.
    #[serde(flatten)]
    #[schemars(with = "serde_json::Value")]
    pub action: Action,
    /// What undoes the step (a `call` or a `publish`), run if a later step fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub compensate: Option<Action>,
    /// Retries of a failed attempt (calls and publishes; compensations too).
    #[serde(default = "defaults::retry")]
    pub retry: DeliveryRetry,
    /// How long one attempt may take; for `wait`, how long to wait in all.
    #[serde(default = "defaults::timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Statuses that are worth retrying; any other non-success status fails
    /// the step at once (a declined payment is not retried).
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<u16>,
    /// Statuses that count as success besides 2xx (e.g. 404 for a
    /// compensation that deletes what may already be gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<u16>,
    #[serde(skip)]
    #[schemars(skip)]
    pub spans: StepSpans,
}

/// Where a step's parts are written, for messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepSpans {
    pub table: Option<Range<usize>>,
    pub action: Option<Range<usize>>,
    pub compensate: Option<Range<usize>>,
}

/// What a step (or a compensation) does. Strings may hold templates:
/// `{{ input.order_id }}`, `{{ steps.reserve.output.id }}`, `{{ workflow.id }}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `call = "SERVICE:METHOD /path"`, with `body` (any TOML value, sent as
    /// JSON) and `headers`.
    Call {
        service: String,
        method: String,
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<serde_json::Value>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// `publish = { topic, type, data, subject }`.
    Publish {
        topic: String,
        event_type: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    /// `wait = { topic, type, match = { "/data/order_id" = "{{ input.order_id }}" } }`:
    /// until an event on `topic` (of `type`) whose values at the JSON
    /// pointers equal the templates; `timeout` bounds the wait.
    Wait {
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_type: Option<String>,
        matches: BTreeMap<String, String>,
    },
    /// `sleep = "10m"`: a durable timer.
    Sleep {
        #[serde(with = "duration_text")]
        duration: Duration,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Call { .. } => "call",
            Action::Publish { .. } => "publish",
            Action::Wait { .. } => "wait",
            Action::Sleep { .. } => "sleep",
        }
    }

    /// Every template-bearing string of the action, for validation.
    pub fn texts(&self) -> Vec<&str> {
        fn walk<'v>(value: &'v serde_json::Value, out: &mut Vec<&'v str>) {
            match value {
                serde_json::Value::String(s) => out.push(s),
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        match self {
            Action::Call {
                path,
                body,
                headers,
                ..
            } => {
                out.push(path.as_str());
                if let Some(body) = body {
                    walk(body, &mut out);
                }
                out.extend(headers.values().map(String::as_str));
            }
            Action::Publish { subject, data, .. } => {
                out.extend(subject.as_deref());
                if let Some(data) = data {
                    walk(data, &mut out);
                }
            }
            Action::Wait { matches, .. } => out.extend(matches.values().map(String::as_str)),
            Action::Sleep { .. } => {}
        }
        out
    }
}

pub(crate) mod defaults {
    use std::time::Duration;

    use crate::events::DeliveryRetry;

    pub fn retry() -> DeliveryRetry {
        DeliveryRetry {
            max_attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn retry_on() -> Vec<u16> {
        vec![408, 425, 429, 500, 502, 503, 504]
    }
}
