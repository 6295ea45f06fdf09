//! Span attributes: a short list of OpenTelemetry key/value pairs.
//!
//! Built on the request path for every span, so it is a `Vec` (a span has a
//! handful of attributes: a linear `get` beats a map) with `'static` keys:
//! recording a span allocates only the values that are not static. Keys read
//! back from the store are owned. It serializes as a JSON object, as the admin
//! API and the store show it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An attribute's value: OpenTelemetry's string, integer, double or boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An HTTP method: the standard ones without copying.
    pub fn method(method: &str) -> AttrValue {
        const STANDARD: [&str; 9] = [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
        ];
        match STANDARD.iter().find(|m| **m == method) {
            Some(m) => AttrValue::Str(Cow::Borrowed(m)),
            None => AttrValue::Str(Cow::Owned(method.to_string())),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&'static str> for AttrValue {
    /// A static string: kept as a reference, nothing is copied.
    fn from(s: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(s))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Cow::Owned(s))
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

macro_rules! int_attr {
    ($($t:ty),*) => {$(
        impl From<$t> for AttrValue {
            fn from(i: $t) -> Self {
                AttrValue::Int(i64::try_from(i).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_attr!(u16, u32, u64, usize, i32, i64);

/// A span's attributes, in the order they were set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes(Vec<(Cow<'static, str>, AttrValue)>);

impl Attributes {
    pub fn new() -> Attributes {
        Attributes(Vec::with_capacity(8))
    }

    /// Sets `key` (replacing a value it had).
    pub fn insert(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((Cow::Borrowed(key), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl IntoIterator for Attributes {
    type Item = (Cow<'static, str>, AttrValue);
    type IntoIter = std::vec::IntoIter<(Cow<'static, str>, AttrValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for AttrValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AttrValue::Str(s) => serializer.serialize_str(s),
            AttrValue::Int(i) => serializer.serialize_i64(*i),
            AttrValue::Double(d) => serializer.serialize_f64(*d),
            AttrValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key.as_ref(), value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Attributes;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of span attributes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    let value = match value {
                        serde_json::Value::String(s) => AttrValue::Str(Cow::Owned(s)),
                        serde_json::Value::Bool(b) => AttrValue::Bool(b),
                        serde_json::Value::Number(n) => match n.as_i64() {
                            Some(i) => AttrValue::Int(i),
                            None => AttrValue::Double(n.as_f64().unwrap_or_default()),
                        },
                        other => AttrValue::Str(Cow::Owned(other.to_string())),
                    };
                    out.push((Cow::Owned(key), value));
                }
                Ok(Attributes(out))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_json_in_order() {
        let mut a = Attributes::new();
        a.insert("http.route", "place-order");
        a.insert("http.response.status_code", 503u16);
        a.insert("gantry.instance", String::from("127.0.0.1:9000"));
        a.insert("faas.coldstart", true);
        a.insert("http.route", "checkout");
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(
            text,
            r#"{"http.route":"checkout","http.response.status_code":503,"gantry.instance":"127.0.0.1:9000","faas.coldstart":true}"#
        );
        let back: Attributes = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
        assert_eq!(
            back.get("http.response.status_code")
                .and_then(AttrValue::as_i64),
            Some(503)
        );
        assert_eq!(
            back.get("http.route").and_then(AttrValue::as_str),
            Some("checkout")
        );
        assert_eq!(back.len(), 4);
    }
}
