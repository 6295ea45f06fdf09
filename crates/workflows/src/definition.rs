//! A workflow definition as the engine stores it: the manifest's steps,
//! versioned, so a running workflow keeps the definition it started with.

use std::collections::BTreeMap;

use gantry_manifest::template::{self, Piece, Root};
use gantry_manifest::{Action, Step, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub workflow: String,
    #[serde(default)]
    pub version: u32,
    pub steps: Vec<StepDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub name: String,
    pub action: ActionDef,
    pub compensate: Option<ActionDef>,
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    pub timeout_ms: u64,
    pub retry_on: Vec<u16>,
    pub success: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionDef {
    Call {
        service: String,
        method: String,
        path: String,
        body: Option<Value>,
        headers: BTreeMap<String, String>,
    },
    Publish {
        topic: String,
        event_type: String,
        subject: Option<String>,
        data: Option<Value>,
    },
    Wait {
        topic: String,
        event_type: Option<String>,
        matches: BTreeMap<String, String>,
    },
    Sleep {
        ms: u64,
    },
}

impl Definition {
    pub fn from_manifest(name: &str, workflow: &Workflow) -> Definition {
        Definition {
            workflow: name.to_string(),
            version: 0,
            steps: workflow.steps.iter().map(StepDef::from_manifest).collect(),
        }
    }

    /// The definition without its version, for comparing with stored ones.
    pub fn same_steps(&self, other: &Definition) -> bool {
        self.workflow == other.workflow && self.steps == other.steps
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Topics the workflow waits on: their positions are noted at start so
    /// an event published before the wait begins is still seen.
    pub fn waited_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                ActionDef::Wait { topic, .. } => Some(topic.as_str()),
                _ => None,
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

impl StepDef {
    fn from_manifest(step: &Step) -> StepDef {
        StepDef {
            name: step.name.clone(),
            action: ActionDef::from_manifest(&step.action),
            compensate: step.compensate.as_ref().map(ActionDef::from_manifest),
            max_attempts: step.retry.max_attempts,
            initial_ms: step.retry.initial.as_millis() as u64,
            max_ms: step.retry.max.as_millis() as u64,
            multiplier: step.retry.multiplier,
            timeout_ms: step.timeout.as_millis() as u64,
            retry_on: step.retry_on.clone(),
            success: step.success.clone(),
        }
    }

    /// The longest wait before the attempt after `attempt`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(32) as i32;
        let ms = self.initial_ms as f64 * self.multiplier.powi(exponent);
        ms.min(self.max_ms as f64) as u64
    }
}

impl ActionDef {
    fn from_manifest(action: &Action) -> ActionDef {
        match action.clone() {
            Action::Call {
                service,
                method,
                path,
                body,
                headers,
            } => ActionDef::Call {
                service,
                method,
                path,
                body,
                headers,
            },
            Action::Publish {
                topic,
                event_type,
                subject,
                data,
            } => ActionDef::Publish {
                topic,
                event_type,
                subject,
                data,
            },
            Action::Wait {
                topic,
                event_type,
                matches,
            } => ActionDef::Wait {
                topic,
                event_type,
                matches,
            },
            Action::Sleep { duration } => ActionDef::Sleep {
                ms: duration.as_millis() as u64,
            },
        }
    }
}

/// What templates can read.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub id: &'a str,
    pub input: &'a Value,
    /// Outputs of the steps that completed, by name.
    pub outputs: &'a BTreeMap<String, Value>,
}

/// Renders every template in a JSON value.
pub fn render(value: &Value, ctx: &Context<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => render_text(text, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Renders a string: one bare template keeps the JSON type it points at;
/// text around templates makes text.
pub fn render_text(text: &str, ctx: &Context<'_>) -> Result<Value, String> {
    let pieces = template::parse(text)?;
    if let [Piece::Ref(reference)] = pieces.as_slice() {
        return lookup(reference, ctx);
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Ref(reference) => match lookup(&reference, ctx)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Renders a string that must end up as text (paths, headers).
pub fn render_string(text: &str, ctx: &Context<'_>) -> Result<String, String> {
    Ok(match render_text(text, ctx)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

fn lookup(reference: &template::Reference, ctx: &Context<'_>) -> Result<Value, String> {
    let (mut value, mut shown) = match &reference.root {
        Root::WorkflowId => return Ok(Value::String(ctx.id.to_string())),
        Root::Input => (ctx.input, "input".to_string()),
        Root::Step(name) => (
            ctx.outputs
                .get(name)
                .ok_or_else(|| format!("step `{name}` has no output yet"))?,
            format!("steps.{name}.output"),
        ),
    };
    for field in &reference.path {
        let next = match value {
            Value::Object(map) => map.get(field),
            Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        shown = format!("{shown}.{field}");
        value = next.ok_or_else(|| format!("`{shown}` does not exist"))?;
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_keep_types_when_alone_and_make_text_otherwise() {
        let input = json!({"order_id": 42, "items": [{"sku": "a"}]});
        let mut outputs = BTreeMap::new();
        outputs.insert("reserve".to_string(), json!({"id": "r-1"}));
        let ctx = Context {
            id: "wf-1",
            input: &input,
            outputs: &outputs,
        };
        let body = json!({
            "order": "{{ input.order_id }}",
            "first": "{{ input.items.0.sku }}",
            "note": "order {{ input.order_id }} in {{ workflow.id }}",
            "reservation": "{{ steps.reserve.output.id }}",
        });
        assert_eq!(
            render(&body, &ctx).unwrap(),
            json!({"order": 42, "first": "a", "note": "order 42 in wf-1", "reservation": "r-1"})
        );
        let missing = render_text("{{ input.nope }}", &ctx).unwrap_err();
        assert!(missing.contains("`input.nope` does not exist"), "{missing}");
    }
}
