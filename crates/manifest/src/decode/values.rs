//! Typed accessors over a section (each reports a wrong type and yields
//! `None`) and the reporting helpers every decoder uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, Value};

use super::{Decoder, Section};
use crate::diagnostics::ErrorCode;

impl Decoder<'_> {
    // ---- typed accessors: each reports a wrong type and yields `None` ----

    pub(super) fn section<'t>(&mut self, item: &'t Item, name: String) -> Option<Section<'t>> {
        match item.as_table_like() {
            Some(table) => Some(Section {
                table,
                name,
                span: item.span(),
            }),
            None => {
                self.sink.push(
                    ErrorCode::WrongType,
                    item.span(),
                    format!("{name} must be a table, found {}", item.type_name()),
                    Some(format!(
                        "write it as a `{name}` section header with keys below it"
                    )),
                );
                None
            }
        }
    }

    pub(super) fn value<'t>(
        &mut self,
        s: &Section<'t>,
        key: &str,
        expected: &str,
    ) -> Option<&'t Value> {
        let (_, item) = s.table.get_key_value(key)?;
        match item.as_value() {
            Some(v) => Some(v),
            None => {
                self.wrong_type(s, key, expected, item.type_name());
                None
            }
        }
    }

    pub(super) fn string(&mut self, s: &Section<'_>, key: &str) -> Option<String> {
        let value = self.value(s, key, "a string")?;
        match value.as_str() {
            Some(text) => Some(text.to_string()),
            None => {
                self.wrong_type(s, key, "a string", value.type_name());
                None
            }
        }
    }

    pub(super) fn required_string(
        &mut self,
        s: &Section<'_>,
        key: &str,
        hint: &str,
    ) -> Option<String> {
        if !s.table.contains_key(key) {
            self.sink.push(
                ErrorCode::MissingKey,
                s.table_span(),
                format!("{} is missing `{key}`", s.name),
                Some(hint.to_string()),
            );
            return None;
        }
        self.string(s, key)
    }

    pub(super) fn boolean(&mut self, s: &Section<'_>, key: &str) -> Option<bool> {
        let value = self.value(s, key, "true or false")?;
        match value.as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(s, key, "true or false", value.type_name());
                None
            }
        }
    }

    pub(super) fn integer(
        &mut self,
        s: &Section<'_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = self.value(s, key, "an integer")?;
        match value.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.bad_value(
                    s,
                    key,
                    format!("`{key} = {n}` in {} is out of range", s.name),
                    format!("use a number from {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(s, key, "an integer", value.type_name());
                None
            }
        }
    }

    pub(super) fn duration(&mut self, s: &Section<'_>, key: &str) -> Option<Duration> {
        let text = self.string(s, key)?;
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.push_value(
                    s,
                    key,
                    ErrorCode::BadDuration,
                    format!("`{key}` in {} must be longer than zero", s.name),
                    "e.g. `5s`",
                );
                None
            }
            Err(why) => {
                self.push_value(
                    s,
                    key,
                    ErrorCode::BadDuration,
                    format!(
                        "`{text}` is not a duration ({why}) in `{key}` of {}",
                        s.name
                    ),
                    "write a number and a unit, e.g. `250ms`, `5s`, `1m 30s`",
                );
                None
            }
        }
    }

    pub(super) fn address(&mut self, s: &Section<'_>, key: &str) -> Option<SocketAddr> {
        let text = self.string(s, key)?;
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.bad_value(
                    s,
                    key,
                    format!("`{text}` is not an address to listen on"),
                    "write an IP and a port, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`",
                );
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, s: &Section<'_>, key: &str) -> Option<Vec<String>> {
        let value = self.value(s, key, "a list of strings")?;
        let Some(array) = value.as_array() else {
            self.wrong_type(s, key, "a list of strings", value.type_name());
            return None;
        };
        let mut out = Vec::new();
        for element in array.iter() {
            match element.as_str() {
                Some(text) => out.push(text.to_string()),
                None => self.sink.push(
                    ErrorCode::WrongType,
                    element.span(),
                    format!(
                        "`{key}` in {} must hold only strings, found {}",
                        s.name,
                        element.type_name()
                    ),
                    Some("put each element in double quotes".into()),
                ),
            }
        }
        Some(out)
    }

    pub(super) fn string_map(
        &mut self,
        s: &Section<'_>,
        key: &str,
    ) -> Option<BTreeMap<String, String>> {
        let (_, item) = s.table.get_key_value(key)?;
        let Some(table) = item.as_table_like() else {
            self.wrong_type(s, key, "a table of strings", item.type_name());
            return None;
        };
        let mut out = BTreeMap::new();
        for (name, value) in table.iter() {
            match value.as_str() {
                Some(text) => {
                    out.insert(name.to_string(), text.to_string());
                }
                None => self.sink.push(
                    ErrorCode::WrongType,
                    value.span(),
                    format!(
                        "`{key}.{name}` in {} must be a string, found {}",
                        s.name,
                        value.type_name()
                    ),
                    Some("put the value in double quotes".into()),
                ),
            }
        }
        Some(out)
    }

    // ---- reporting ----

    pub(super) fn unknown_keys(&mut self, s: &Section<'_>, known: &[&str]) {
        for (key, _) in s.table.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = s.table.key(key).and_then(|k| k.span());
            let hint = match suggest(key, known) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            self.sink.push(
                ErrorCode::UnknownKey,
                span,
                format!("unknown key `{key}` in {}", s.name),
                Some(hint),
            );
        }
    }

    pub(super) fn wrong_type(&mut self, s: &Section<'_>, key: &str, expected: &str, found: &str) {
        let hint = match expected {
            "a string" | "a list of strings" => "put text in double quotes",
            "an integer" => "write the number without quotes",
            "true or false" => "write `true` or `false` without quotes",
            _ => "see `gantry schema` for the expected shape",
        };
        self.push_value(
            s,
            key,
            ErrorCode::WrongType,
            format!("`{key}` in {} must be {expected}, found {found}", s.name),
            hint,
        );
    }

    pub(super) fn bad_value(
        &mut self,
        s: &Section<'_>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push_value(s, key, ErrorCode::BadValue, message, hint);
    }

    pub(super) fn push_value(
        &mut self,
        s: &Section<'_>,
        key: &str,
        code: ErrorCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let span = self.value_span(s, key);
        self.sink.push(code, span, message, Some(hint.into()));
    }

    pub(super) fn push_at_key(
        &mut self,
        s: &Section<'_>,
        key: &str,
        code: ErrorCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let span = s.table.key(key).and_then(|k| k.span());
        self.sink.push(code, span, message, Some(hint.into()));
    }

    pub(super) fn value_span(&self, s: &Section<'_>, key: &str) -> Option<Range<usize>> {
        let (k, item) = s.table.get_key_value(key)?;
        item.span().or_else(|| k.span())
    }

    pub(super) fn element_span(
        &self,
        s: &Section<'_>,
        key: &str,
        index: usize,
    ) -> Option<Range<usize>> {
        let (_, item) = s.table.get_key_value(key)?;
        item.as_array()
            .and_then(|a| a.get(index))
            .and_then(Value::span)
            .or_else(|| item.span())
    }
}

/// The known word closest to a typo, if one is close enough to be what was meant.
pub(crate) fn suggest<'k>(typo: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(typo, k), *k))
        .filter(|(distance, k)| *distance <= (k.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}
