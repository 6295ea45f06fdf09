//! Decoding of `[workflows.NAME]` and its `[[workflows.NAME.steps]]`.

use std::collections::BTreeMap;

use toml_edit::{Item, Value};

use super::{Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::events::DeliveryRetry;
use crate::workflows::{defaults, Action, Step, StepSpans, Workflow};

pub(crate) const WORKFLOW_KEYS: &[&str] = &["steps"];
pub(crate) const STEP_KEYS: &[&str] = &[
    "name",
    "call",
    "body",
    "headers",
    "publish",
    "wait",
    "sleep",
    "compensate",
    "retry",
    "timeout",
    "retry_on",
    "success",
];
const ACTIONS: &[&str] = &["call", "publish", "wait", "sleep"];
const COMPENSATE_KEYS: &[&str] = &["call", "body", "headers", "publish"];
const PUBLISH_KEYS: &[&str] = &["topic", "type", "subject", "data"];
const WAIT_KEYS: &[&str] = &["topic", "type", "match"];
const RETRY_KEYS: &[&str] = &["max_attempts", "initial", "max", "multiplier"];
const CALL_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

impl Decoder<'_> {
    pub(super) fn workflows(&mut self, item: &Item) -> BTreeMap<String, Workflow> {
        let mut out = BTreeMap::new();
        let Some(all) = self.section(item, "[workflows]".into()) else {
            return out;
        };
        for (name, item) in all.table.iter() {
            let span = all.table.key(name).and_then(|k| k.span());
            if !super::events::is_topic_name(name) {
                self.sink.push(
                    ErrorCode::BadValue,
                    span.clone(),
                    format!("workflow name `{name}` is not allowed"),
                    Some("use lowercase letters, digits, `.`, `-` and `_`".into()),
                );
            }
            let Some(section) = self.section(item, format!("[workflows.{name}]")) else {
                continue;
            };
            self.unknown_keys(&section, WORKFLOW_KEYS);
            let mut steps = Vec::new();
            match section.table.get_key_value("steps") {
                None => self.sink.push(
                    ErrorCode::MissingKey,
                    span,
                    format!("workflow `{name}` has no steps"),
                    Some(format!(
                        "add steps as `[[workflows.{name}.steps]]` sections"
                    )),
                ),
                Some((_, item)) => {
                    for (index, table, span) in self.route_tables(item) {
                        let step = Section {
                            table,
                            name: format!("[[workflows.{name}.steps]] #{}", index + 1),
                            span,
                        };
                        if let Some(step) = self.step(&step) {
                            steps.push(step);
                        }
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            for step in &steps {
                if !seen.insert(step.name.clone()) {
                    self.sink.push(
                        ErrorCode::Conflict,
                        step.spans.table.clone(),
                        format!("workflow `{name}` has two steps named `{}`", step.name),
                        Some("step names are how templates and operators refer to steps; make them unique".into()),
                    );
                }
            }
            out.insert(name.to_string(), Workflow { steps });
        }
        out
    }

    fn step(&mut self, s: &Section<'_>) -> Option<Step> {
        self.unknown_keys(s, STEP_KEYS);
        let name = self.required_string(s, "name", "add `name = \"reserve\"`");
        if let Some(name) = &name {
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                self.bad_value(
                    s,
                    "name",
                    format!("step name `{name}` is not allowed"),
                    "use lowercase letters, digits, `-` and `_`, starting with a letter",
                );
            }
        }
        let present: Vec<&str> = ACTIONS
            .iter()
            .copied()
            .filter(|k| s.table.contains_key(k))
            .collect();
        let action = match present.as_slice() {
            [] => {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.table_span(),
                    format!("{} does nothing", s.name),
                    Some("give it one of `call`, `publish`, `wait` or `sleep`".into()),
                );
                None
            }
            [one] => self.action(s, one),
            [_, second, ..] => {
                self.push_at_key(
                    s,
                    second,
                    ErrorCode::Conflict,
                    format!("{} has both `{}` and `{second}`", s.name, present[0]),
                    "a step does one thing; split it into two steps",
                );
                None
            }
        };
        if !matches!(action, Some(Action::Call { .. })) {
            for key in ["body", "headers"] {
                if s.table.contains_key(key) {
                    self.push_at_key(
                        s,
                        key,
                        ErrorCode::Conflict,
                        format!("`{key}` in {} only applies to a `call`", s.name),
                        "remove it, or make the step a `call`",
                    );
                }
            }
        }
        let compensate = self.nested(s, "compensate").and_then(|c| {
            self.unknown_keys(&c, COMPENSATE_KEYS);
            match (c.table.contains_key("call"), c.table.contains_key("publish")) {
                (true, false) => self.action(&c, "call"),
                (false, true) => self.action(&c, "publish"),
                _ => {
                    self.sink.push(
                        ErrorCode::BadValue,
                        c.table_span(),
                        format!("{} needs exactly one of `call` or `publish`", c.name),
                        Some("e.g. `compensate = { call = \"inventory:DELETE /reservations/{{ steps.reserve.output.id }}\" }`".into()),
                    );
                    None
                }
            }
        });
        let retry = match self.nested(s, "retry") {
            None => defaults::retry(),
            Some(r) => {
                self.unknown_keys(&r, RETRY_KEYS);
                let d = defaults::retry();
                DeliveryRetry {
                    max_attempts: self
                        .integer(&r, "max_attempts", 1, 100)
                        .map_or(d.max_attempts, |n| n as u32),
                    initial: self.duration(&r, "initial").unwrap_or(d.initial),
                    max: self.duration(&r, "max").unwrap_or(d.max),
                    multiplier: d.multiplier,
                }
            }
        };
        let statuses = |this: &mut Self, key: &str| {
            this.integer_list(s, key, 100, 599)
                .map(|v| v.into_iter().map(|n| n as u16).collect::<Vec<_>>())
        };
        let retry_on = statuses(self, "retry_on").unwrap_or_else(defaults::retry_on);
        let success = statuses(self, "success").unwrap_or_default();
        let timeout = self
            .duration(s, "timeout")
            .unwrap_or_else(defaults::timeout);
        Some(Step {
            name: name?,
            spans: StepSpans {
                table: s.table_span(),
                action: present.first().and_then(|k| self.value_span(s, k)),
                compensate: self.value_span(s, "compensate"),
            },
            action: action?,
            compensate,
            retry,
            timeout,
            retry_on,
            success,
        })
    }

    /// The action under `key` of `s` (a step or a `compensate` table).
    fn action(&mut self, s: &Section<'_>, key: &str) -> Option<Action> {
        match key {
            "call" => {
                let text = self.string(s, "call")?;
                let parsed = text.split_once(':').and_then(|(service, rest)| {
                    let (method, path) = rest.trim().split_once(' ')?;
                    let method = method.to_ascii_uppercase();
                    let path = path.trim();
                    (!service.is_empty()
                        && CALL_METHODS.contains(&method.as_str())
                        && path.starts_with('/'))
                    .then(|| (service.to_string(), method, path.to_string()))
                });
                let Some((service, method, path)) = parsed else {
                    self.bad_value(
                        s,
                        "call",
                        format!("`{text}` is not a call"),
                        "write `SERVICE:METHOD /path`, e.g. `payments:POST /charges`",
                    );
                    return None;
                };
                let body = s.table.get("body").map(item_to_json);
                let headers = self.string_map(s, "headers").unwrap_or_default();
                Some(Action::Call {
                    service,
                    method,
                    path,
                    body,
                    headers,
                })
            }
            "publish" => {
                let p = self.nested(s, "publish")?;
                self.unknown_keys(&p, PUBLISH_KEYS);
                let topic = self.required_string(&p, "topic", "add `topic = \"order.completed\"`");
                let event_type = self.required_string(
                    &p,
                    "type",
                    "add the CloudEvents `type`, e.g. `type = \"order.completed\"`",
                );
                Some(Action::Publish {
                    topic: topic?,
                    event_type: event_type?,
                    subject: self.string(&p, "subject"),
                    data: p.table.get("data").map(item_to_json),
                })
            }
            "wait" => {
                let w = self.nested(s, "wait")?;
                self.unknown_keys(&w, WAIT_KEYS);
                let topic =
                    self.required_string(&w, "topic", "add `topic = \"shipment.dispatched\"`");
                let matches = self.string_map(&w, "match").unwrap_or_default();
                for pointer in matches.keys() {
                    if !pointer.starts_with('/') {
                        self.bad_value(
                            &w,
                            "match",
                            format!("`{pointer}` is not a JSON pointer"),
                            "point into the event from its root, e.g. `\"/data/order_id\"`",
                        );
                    }
                }
                if matches.is_empty() {
                    self.bad_value(
                        &w,
                        "match",
                        format!("{} matches every event of the topic", w.name),
                        "correlate the event with this workflow, e.g. `match = { \"/data/order_id\" = \"{{ input.order_id }}\" }`",
                    );
                }
                Some(Action::Wait {
                    topic: topic?,
                    event_type: self.string(&w, "type"),
                    matches,
                })
            }
            "sleep" => Some(Action::Sleep {
                duration: self.duration(s, "sleep")?,
            }),
            _ => None,
        }
    }
}

/// A TOML value as JSON (bodies and event data are written in TOML).
pub(super) fn item_to_json(item: &Item) -> serde_json::Value {
    match item {
        Item::Value(value) => value_to_json(value),
        Item::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.to_string(), item_to_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(tables) => serde_json::Value::Array(
            tables
                .iter()
                .map(|t| {
                    serde_json::Value::Object(
                        t.iter()
                            .map(|(k, v)| (k.to_string(), item_to_json(v)))
                            .collect(),
                    )
                })
                .collect(),
        ),
        Item::None => serde_json::Value::Null,
    }
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::String(s) => serde_json::Value::String(s.value().clone()),
        Value::Integer(n) => serde_json::Value::from(*n.value()),
        Value::Float(f) => serde_json::Value::from(*f.value()),
        Value::Boolean(b) => serde_json::Value::Bool(*b.value()),
        Value::Datetime(d) => serde_json::Value::String(d.value().to_string()),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(value_to_json).collect()),
        Value::InlineTable(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}
