//! CloudEvents 1.0: reading events from HTTP (structured, binary and batch
//! modes), checking them, and writing them back as binary-mode HTTP requests.
//!
//! An event is kept in its structured JSON form (a JSON object with the
//! attributes and `data` or `data_base64`): that is what the log stores and
//! what `ordering_key` pointers and filters look at.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Content type of one event in structured mode.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Content type of a batch: a JSON array of structured events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Attributes every event must have.
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];
/// Optional attributes the spec defines, with string values.
const OPTIONAL: [&str; 4] = ["subject", "time", "datacontenttype", "dataschema"];

/// Why a request does not hold acceptable events. The message says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

fn bad(message: impl Into<String>) -> EventError {
    EventError(message.into())
}

/// A checked CloudEvent in structured form.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent(Map<String, Value>);

impl CloudEvent {
    /// Checks a structured-mode JSON object. Adds `time` (now) when absent.
    pub fn from_json(value: Value) -> Result<CloudEvent, EventError> {
        let Value::Object(mut map) = value else {
            return Err(bad("a CloudEvent must be a JSON object"));
        };
        for attribute in REQUIRED {
            match map.get(attribute) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::String(_)) => {
                    return Err(bad(format!("the `{attribute}` attribute is empty")))
                }
                Some(other) => {
                    return Err(bad(format!(
                        "the `{attribute}` attribute must be a string, found {}",
                        kind(other)
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "the required attribute `{attribute}` is missing; every event needs {}",
                        REQUIRED.join(", ")
                    )))
                }
            }
        }
        if map["specversion"] != "1.0" {
            return Err(bad(format!(
                "specversion {} is not supported; send \"1.0\"",
                map["specversion"]
            )));
        }
        for attribute in OPTIONAL {
            match map.get(attribute) {
                None | Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(bad(format!(
                        "the `{attribute}` attribute must be a string, found {}",
                        kind(other)
                    )))
                }
            }
        }
        match map.get("time").and_then(Value::as_str) {
            Some(time) => {
                if humantime::parse_rfc3339_weak(time).is_err() {
                    return Err(bad(format!(
                        "`time` is `{time}`, not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z"
                    )));
                }
            }
            None => {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                map.insert("time".into(), Value::String(now.to_string()));
            }
        }
        if map.contains_key("data") && map.contains_key("data_base64") {
            return Err(bad("an event has `data` or `data_base64`, not both"));
        }
        if let Some(encoded) = map.get("data_base64") {
            let valid = encoded
                .as_str()
                .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !valid {
                return Err(bad("`data_base64` must be a base64 string"));
            }
        }
        for (name, value) in &map {
            if REQUIRED.contains(&name.as_str())
                || OPTIONAL.contains(&name.as_str())
                || name == "data"
                || name == "data_base64"
            {
                continue;
            }
            check_extension_name(name)?;
            if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                return Err(bad(format!(
                    "extension `{name}` must be a string, number or boolean, found {}",
                    kind(value)
                )));
            }
        }
        Ok(CloudEvent(map))
    }

    /// Reads a binary-mode request: attributes in `ce-*` headers, the body is
    /// the data, `Content-Type` is its `datacontenttype`.
    pub fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, EventError> {
        let mut map = Map::new();
        for (name, value) in headers {
            let Some(attribute) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            let text = value
                .to_str()
                .map_err(|_| bad(format!("header `{name}` is not visible ASCII text")))?;
            let text = percent_decode(text)
                .ok_or_else(|| bad(format!("header `{name}` has a broken %-escape")))?;
            map.insert(attribute.to_string(), Value::String(text));
        }
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !body.is_empty() {
            let data = match content_type.as_deref() {
                Some(ct) if is_json(ct) => serde_json::from_slice::<Value>(&body).map_err(|e| {
                    bad(format!("the body is declared as {ct} but is not JSON: {e}"))
                })?,
                Some(ct) if ct.starts_with("text/") => match std::str::from_utf8(&body) {
                    Ok(text) => Value::String(text.to_string()),
                    Err(_) => {
                        return Err(bad(format!(
                            "the body is declared as {ct} but is not UTF-8"
                        )))
                    }
                },
                _ => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
                    map.insert("data_base64".into(), Value::String(encoded));
                    Value::Null
                }
            };
            if !data.is_null() || !map.contains_key("data_base64") {
                map.insert("data".into(), data);
            }
        }
        if let Some(ct) = content_type {
            map.insert("datacontenttype".into(), Value::String(ct));
        }
        CloudEvent::from_json(Value::Object(map))
    }

    pub fn id(&self) -> &str {
        self.0["id"].as_str().unwrap_or_default()
    }

    pub fn source(&self) -> &str {
        self.0["source"].as_str().unwrap_or_default()
    }

    pub fn event_type(&self) -> &str {
        self.0["type"].as_str().unwrap_or_default()
    }

    /// An attribute or extension as text, for filters.
    pub fn attribute(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The `data` member, when it is JSON.
    pub fn data(&self) -> Option<&Value> {
        self.0.get("data")
    }

    pub fn set_extension(&mut self, name: &str, value: &str) {
        self.0
            .insert(name.to_string(), Value::String(value.to_string()));
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The structured JSON form, as stored.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.0).expect("a JSON map always serializes"))
    }

    /// Reads back an event that was stored by [`CloudEvent::to_bytes`].
    pub fn from_stored(bytes: &[u8]) -> Result<CloudEvent, EventError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(CloudEvent(map)),
            _ => Err(bad("a stored event is not a JSON object")),
        }
    }

    /// The event as a binary-mode HTTP message: `ce-*` headers (values
    /// percent-encoded where the spec asks) and the data as the body.
    pub fn to_binary(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        let mut body = Bytes::new();
        for (name, value) in &self.0 {
            match name.as_str() {
                "data" => {
                    body = match value {
                        Value::String(text) if !self.is_json_data() => {
                            Bytes::from(text.clone().into_bytes())
                        }
                        other => {
                            Bytes::from(serde_json::to_vec(other).expect("JSON always serializes"))
                        }
                    };
                }
                "data_base64" => {
                    body = value
                        .as_str()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .map(Bytes::from)
                        .unwrap_or_default();
                }
                "datacontenttype" => {
                    if let Some(v) = value.as_str().and_then(|s| HeaderValue::from_str(s).ok()) {
                        headers.insert(http::header::CONTENT_TYPE, v);
                    }
                }
                attribute => {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let header = HeaderName::from_bytes(format!("ce-{attribute}").as_bytes());
                    let value = HeaderValue::from_str(&percent_encode(&text));
                    if let (Ok(header), Ok(value)) = (header, value) {
                        headers.insert(header, value);
                    }
                }
            }
        }
        if self.0.contains_key("data") && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        (headers, body)
    }

    fn is_json_data(&self) -> bool {
        self.0
            .get("datacontenttype")
            .and_then(Value::as_str)
            .is_none_or(is_json)
    }
}

/// Reads the events of one publish request, in whichever mode it was sent.
pub fn parse_request(headers: &HeaderMap, body: Bytes) -> Result<Vec<CloudEvent>, EventError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type == BATCH {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the batch is not valid JSON: {e}")))?;
        let Value::Array(items) = value else {
            return Err(bad("a batch must be a JSON array of events"));
        };
        if items.is_empty() {
            return Err(bad("the batch is empty"));
        }
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                CloudEvent::from_json(item)
                    .map_err(|e| bad(format!("event #{} of the batch: {e}", i + 1)))
            })
            .collect();
    }
    if media_type == STRUCTURED {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the event is not valid JSON: {e}")))?;
        return Ok(vec![CloudEvent::from_json(value)?]);
    }
    if headers.contains_key("ce-specversion") {
        return Ok(vec![CloudEvent::from_binary(headers, body)?]);
    }
    Err(bad(format!(
        "this is not a CloudEvent: send `Content-Type: {STRUCTURED}` with the event as JSON, \
         `{BATCH}` with a JSON array of events, or binary mode with `ce-specversion`, `ce-id`, \
         `ce-source` and `ce-type` headers and the data as the body"
    )))
}

fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media == "application/json" || media.ends_with("+json") || media == "text/json"
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_extension_name(name: &str) -> Result<(), EventError> {
    let valid = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(bad(format!(
            "`{name}` is not a valid attribute name: CloudEvents attribute names are lowercase \
             letters and digits, at most 20 characters"
        )))
    }
}

/// The HTTP binding percent-encodes space, `"`, `%` and anything outside
/// printable ASCII in header values.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "/orders", "type": "order.placed", "data": {"order_id": "o-1"}})
    }

    #[test]
    fn structured_events_get_a_time() {
        let e = CloudEvent::from_json(event()).unwrap();
        assert!(e.as_map().contains_key("time"));
        assert_eq!(e.event_type(), "order.placed");
    }

    #[test]
    fn missing_and_mistyped_attributes_are_named() {
        let mut v = event();
        v.as_object_mut().unwrap().remove("source");
        let err = CloudEvent::from_json(v).unwrap_err();
        assert!(err.0.contains("`source` is missing"), "{err}");

        let mut v = event();
        v["id"] = json!(7);
        assert!(CloudEvent::from_json(v)
            .unwrap_err()
            .0
            .contains("`id` attribute must be a string"));

        let mut v = event();
        v["specversion"] = json!("0.3");
        assert!(CloudEvent::from_json(v)
            .unwrap_err()
            .0
            .contains("not supported"));

        let mut v = event();
        v["Bad-Name"] = json!("x");
        assert!(CloudEvent::from_json(v)
            .unwrap_err()
            .0
            .contains("not a valid attribute name"));

        let mut v = event();
        v["time"] = json!("yesterday");
        assert!(CloudEvent::from_json(v).unwrap_err().0.contains("RFC 3339"));
    }

    #[test]
    fn binary_mode_round_trips() {
        let mut e = CloudEvent::from_json(event()).unwrap();
        e.set_extension(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        e.set_extension("comment", "a \"quoted\" 100% é");
        let (headers, body) = e.to_binary();
        assert_eq!(headers["ce-type"], "order.placed");
        assert_eq!(headers["content-type"], "application/json");
        let back = CloudEvent::from_binary(&headers, body).unwrap();
        assert_eq!(back.attribute("comment").unwrap(), "a \"quoted\" 100% é");
        assert_eq!(back.data(), e.data());
    }

    #[test]
    fn binary_mode_keeps_non_json_bodies() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "s"),
            ("ce-type", "t"),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        let e = CloudEvent::from_binary(&headers, Bytes::from_static(&[0, 159, 146, 150])).unwrap();
        assert!(e.has("data_base64"));
        let (_, body) = e.to_binary();
        assert_eq!(&body[..], &[0, 159, 146, 150]);

        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let e = CloudEvent::from_binary(&headers, Bytes::from_static(b"hello")).unwrap();
        assert_eq!(e.data(), Some(&json!("hello")));
        assert_eq!(&e.to_binary().1[..], b"hello");
    }

    #[test]
    fn requests_in_each_mode() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(BATCH));
        let batch = serde_json::to_vec(&json!([event(), event()])).unwrap();
        assert_eq!(parse_request(&headers, batch.into()).unwrap().len(), 2);

        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let err = parse_request(&headers, Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.0.contains("not a CloudEvent"), "{err}");

        headers.insert("content-type", HeaderValue::from_static(STRUCTURED));
        let err = parse_request(&headers, Bytes::from_static(b"{")).unwrap_err();
        assert!(err.0.contains("not valid JSON"), "{err}");
    }
}
