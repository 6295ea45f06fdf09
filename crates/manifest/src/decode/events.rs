//! Decoding of `[topics.NAME]`, `[[subscriptions]]` and a service's `outbox`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::Item;

use super::{resolve, Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::events::{
    defaults, Compatibility, DeliveryRetry, Endpoint, Outbox, StartAt, Subscription,
    SubscriptionSpans, Topic,
};

pub(crate) const TOPIC_KEYS: &[&str] = &[
    "schema",
    "compatibility",
    "retention",
    "max_bytes",
    "dedup_window",
    "max_event_size",
];
pub(crate) const SUBSCRIPTION_KEYS: &[&str] = &[
    "name",
    "topic",
    "to",
    "filter",
    "ordering_key",
    "max_in_flight",
    "timeout",
    "retry",
    "dead_letter",
    "start_at",
];
const DELIVERY_RETRY_KEYS: &[&str] = &["max_attempts", "initial", "max", "multiplier"];
const OUTBOX_KEYS: &[&str] = &["database", "table", "poll"];
/// The largest `max_event_size` allowed.
const MAX_EVENT_SIZE: u64 = 16 * 1024 * 1024;

impl Decoder<'_> {
    pub(super) fn topics(&mut self, item: &Item, base_dir: &Path) -> BTreeMap<String, Topic> {
        let mut topics = BTreeMap::new();
        let Some(all) = self.section(item, "[topics]".into()) else {
            return topics;
        };
        for (name, item) in all.table.iter() {
            let span = all.table.key(name).and_then(|k| k.span());
            if !is_topic_name(name) {
                self.sink.push(
                    ErrorCode::BadValue,
                    span,
                    format!("topic name `{name}` is not allowed"),
                    Some(
                        "use lowercase letters, digits, `.`, `-` and `_`, e.g. `order.placed`"
                            .into(),
                    ),
                );
            }
            if let Some(section) = self.section(item, format!("[topics.\"{name}\"]")) {
                topics.insert(name.to_string(), self.topic(&section, base_dir));
            }
        }
        topics
    }

    fn topic(&mut self, s: &Section<'_>, base_dir: &Path) -> Topic {
        self.unknown_keys(s, TOPIC_KEYS);
        let schema = self.string(s, "schema").map(PathBuf::from);
        let schema = schema.map(|path| {
            let path = resolve(base_dir, &path);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(error) = serde_json::from_str::<serde_json::Value>(&text) {
                        self.bad_value(
                            s,
                            "schema",
                            format!("schema file {} is not JSON: {error}", path.display()),
                            "a schema is a JSON Schema document",
                        );
                    }
                }
                Err(error) => self.bad_value(
                    s,
                    "schema",
                    format!("cannot read schema file {}: {error}", path.display()),
                    "the path is relative to the manifest's directory",
                ),
            }
            path
        });
        let compatibility = match self.string(s, "compatibility").as_deref() {
            None => Compatibility::default(),
            Some("backward") => Compatibility::Backward,
            Some("forward") => Compatibility::Forward,
            Some("full") => Compatibility::Full,
            Some("none") => Compatibility::None,
            Some(other) => {
                self.bad_value(
                    s,
                    "compatibility",
                    format!("unknown compatibility `{other}`"),
                    "use `backward` (the default), `forward`, `full` or `none`",
                );
                Compatibility::default()
            }
        };
        let max_event_size = self
            .size(s, "max_event_size")
            .unwrap_or_else(defaults::max_event_size);
        if max_event_size == 0 || max_event_size > MAX_EVENT_SIZE {
            self.bad_value(
                s,
                "max_event_size",
                format!(
                    "`max_event_size` in {} must be from 1 byte to 16MiB",
                    s.name
                ),
                "large payloads belong in object storage; publish a link to them",
            );
        }
        Topic {
            schema,
            compatibility,
            retention: self
                .duration(s, "retention")
                .unwrap_or_else(defaults::retention),
            max_bytes: self.size(s, "max_bytes"),
            dedup_window: self
                .duration(s, "dedup_window")
                .unwrap_or_else(defaults::dedup_window),
            max_event_size,
        }
    }

    pub(super) fn subscription(&mut self, s: &Section<'_>) -> Option<Subscription> {
        self.unknown_keys(s, SUBSCRIPTION_KEYS);
        let topic = self.required_string(s, "topic", "add `topic = \"order.placed\"`");
        let to_text = self.required_string(
            s,
            "to",
            "add `to = \"SERVICE:/path\"`, e.g. `to = \"notifications:/events\"`",
        );
        let to = to_text.and_then(|text| match parse_endpoint(&text) {
            Some(endpoint) => Some(endpoint),
            None => {
                self.bad_value(
                    s,
                    "to",
                    format!("`{text}` is not a service endpoint"),
                    "write `SERVICE:/path`, e.g. `notifications:/events`, `function:NAME` or `workflow:NAME`",
                );
                None
            }
        });
        let filter = self.string_map(s, "filter").unwrap_or_default();
        for attribute in filter.keys() {
            if !is_attribute_name(attribute) {
                self.bad_value(
                    s,
                    "filter",
                    format!("`{attribute}` is not a CloudEvents attribute name"),
                    "attributes are lowercase letters and digits: `type`, `source`, `subject`, or an extension",
                );
            }
        }
        let ordering_key = self.string(s, "ordering_key");
        if let Some(pointer) = &ordering_key {
            if !pointer.starts_with('/') {
                self.bad_value(
                    s,
                    "ordering_key",
                    format!("`{pointer}` is not a JSON pointer"),
                    "point into the event from its root, e.g. `/data/order_id` or `/subject`",
                );
            }
        }
        let start_at = match self.string(s, "start_at").as_deref() {
            None | Some("latest") => StartAt::Latest,
            Some("earliest") => StartAt::Earliest,
            Some(text) => match humantime::parse_rfc3339_weak(text) {
                Ok(time) => StartAt::Time(time),
                Err(_) => {
                    self.bad_value(
                        s,
                        "start_at",
                        format!("`{text}` is not `latest`, `earliest` or a time"),
                        "write a time as RFC 3339, e.g. `2026-01-31T12:00:00Z`",
                    );
                    StartAt::Latest
                }
            },
        };
        let retry = self.delivery_retry(s);
        let name = self.string(s, "name");
        if let Some(name) = &name {
            if !is_topic_name(name) {
                self.bad_value(
                    s,
                    "name",
                    format!("subscription name `{name}` is not allowed"),
                    "use lowercase letters, digits, `.`, `-` and `_`",
                );
            }
        }
        let (topic, to) = (topic?, to?);
        Some(Subscription {
            name: name.unwrap_or_else(|| format!("{}.{}", to.owner(), topic)),
            spans: SubscriptionSpans {
                topic: self.value_span(s, "topic"),
                to: self.value_span(s, "to"),
                name: self.value_span(s, "name").or_else(|| s.table_span()),
            },
            topic,
            to,
            filter,
            ordering_key,
            max_in_flight: self
                .integer(s, "max_in_flight", 1, 10_000)
                .map_or_else(defaults::max_in_flight, |n| n as u32),
            timeout: self
                .duration(s, "timeout")
                .unwrap_or_else(defaults::delivery_timeout),
            retry,
            dead_letter: self.boolean(s, "dead_letter").unwrap_or(true),
            start_at,
        })
    }

    fn delivery_retry(&mut self, subscription: &Section<'_>) -> DeliveryRetry {
        let Some(s) = self.nested(subscription, "retry") else {
            return DeliveryRetry::default();
        };
        self.unknown_keys(&s, DELIVERY_RETRY_KEYS);
        let d = DeliveryRetry::default();
        let retry = DeliveryRetry {
            max_attempts: self
                .integer(&s, "max_attempts", 1, 1000)
                .map_or(d.max_attempts, |n| n as u32),
            initial: self.duration(&s, "initial").unwrap_or(d.initial),
            max: self.duration(&s, "max").unwrap_or(d.max),
            multiplier: match self.value(&s, "multiplier", "a number") {
                None => d.multiplier,
                Some(value) => match value.as_float().or(value.as_integer().map(|n| n as f64)) {
                    Some(x) if (1.0..=10.0).contains(&x) => x,
                    _ => {
                        self.bad_value(
                            &s,
                            "multiplier",
                            format!("`multiplier` in {} must be a number from 1 to 10", s.name),
                            "e.g. `multiplier = 2` doubles each wait",
                        );
                        d.multiplier
                    }
                },
            },
        };
        if retry.initial > retry.max {
            self.bad_value(
                &s,
                "initial",
                format!("`initial` is longer than `max` in {}", s.name),
                "make `max` at least as long as `initial`",
            );
        }
        retry
    }

    pub(super) fn outbox(&mut self, service: &Section<'_>, base_dir: &Path) -> Option<Outbox> {
        let s = self.nested(service, "outbox")?;
        self.unknown_keys(&s, OUTBOX_KEYS);
        let database = self.required_string(
            &s,
            "database",
            "add `database = \"orders.db\"`: the service's SQLite file",
        )?;
        let table = self
            .string(&s, "table")
            .unwrap_or_else(defaults::outbox_table);
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.bad_value(
                &s,
                "table",
                format!("`{table}` is not a plain table name"),
                "use letters, digits and `_`",
            );
        }
        Some(Outbox {
            database: resolve(base_dir, Path::new(&database)),
            table,
            poll: self
                .duration(&s, "poll")
                .unwrap_or_else(defaults::outbox_poll),
        })
    }
}

/// `SERVICE:/path` or `workflow:NAME`.
fn parse_endpoint(text: &str) -> Option<Endpoint> {
    let (service, path) = text.split_once(':')?;
    if service == "function" && !path.starts_with('/') {
        return is_topic_name(path).then(|| Endpoint::Service {
            service: crate::functions::function_target(path),
            path: "/".to_string(),
        });
    }
    if service == "workflow" && !path.starts_with('/') {
        return is_topic_name(path).then(|| Endpoint::Workflow {
            name: path.to_string(),
        });
    }
    let valid_service = !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid_service || !path.starts_with('/') || path.contains(char::is_whitespace) {
        return None;
    }
    Some(Endpoint::Service {
        service: service.to_string(),
        path: path.to_string(),
    })
}

pub(crate) fn is_topic_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 128
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_'
        })
}

fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}
