//! Topic schemas: checking events against them, and checking a new version
//! against the previous one.

pub mod compat;

use serde_json::Value;

/// A topic's compiled schema.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    pub version: u32,
    pub text: String,
    validator: jsonschema::Validator,
}

impl TopicSchema {
    /// Compiles a schema document; the error says what is wrong with it.
    pub fn compile(text: &str, version: u32) -> Result<TopicSchema, String> {
        let document: Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let validator = jsonschema::validator_for(&document)
            .map_err(|e| format!("the schema is not a valid JSON Schema: {e}"))?;
        Ok(TopicSchema {
            version,
            text: text.to_string(),
            validator,
        })
    }

    /// Checks an event's `data`. The error names the failing field as a JSON
    /// pointer into the event, e.g. `/data/amount`.
    pub fn check(&self, data: Option<&Value>) -> Result<(), String> {
        let Some(data) = data else {
            return Err(format!(
                "the event has no JSON `data`, but the topic's schema (version {}) requires it",
                self.version
            ));
        };
        let problems: Vec<String> = self
            .validator
            .iter_errors(data)
            .take(5)
            .map(|error| {
                let path = error.instance_path().as_str();
                format!("`/data{path}`: {error}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the event does not match the topic's schema (version {}): {}",
                self.version,
                problems.join("; ")
            ))
        }
    }

    pub fn document(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}
