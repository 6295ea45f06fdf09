//! Decoding of request shaping: header edits, body limits, CORS, deprecation.

use std::time::UNIX_EPOCH;

use super::{is_token_byte, Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::policy::{defaults, CorsPolicy, Deprecation, HeaderEdits, IdempotencyPolicy};

pub(crate) const HEADER_EDIT_KEYS: &[&str] = &["remove", "set", "add"];
pub(crate) const CORS_KEYS: &[&str] = &[
    "origins",
    "methods",
    "headers",
    "expose_headers",
    "credentials",
    "max_age",
];
pub(crate) const IDEMPOTENCY_KEYS: &[&str] = &["header", "required", "ttl", "max_body"];
pub(crate) const DEPRECATION_KEYS: &[&str] = &["since", "sunset", "link"];

impl Decoder<'_> {
    pub(super) fn header_edits(&mut self, route: &Section<'_>, key: &str) -> Option<HeaderEdits> {
        let (_, item) = route.table.get_key_value(key)?;
        let s = self.section(item, format!("`{key}` in {}", route.name))?;
        self.unknown_keys(&s, HEADER_EDIT_KEYS);
        let edits = HeaderEdits {
            remove: self.string_list(&s, "remove").unwrap_or_default(),
            set: self.string_map(&s, "set").unwrap_or_default(),
            add: self.string_map(&s, "add").unwrap_or_default(),
        };
        let names = edits
            .remove
            .iter()
            .chain(edits.set.keys())
            .chain(edits.add.keys());
        for name in names {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                self.sink.push(
                    ErrorCode::BadValue,
                    s.span.clone(),
                    format!("`{name}` in {} is not a valid header name", s.name),
                    Some("header names are letters, digits and `-`".into()),
                );
            }
        }
        let values = edits.set.values().chain(edits.add.values());
        for value in values {
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                self.sink.push(
                    ErrorCode::BadValue,
                    s.span.clone(),
                    format!("a header value in {} has control characters", s.name),
                    Some("header values are printable text".into()),
                );
            }
        }
        Some(edits)
    }

    pub(super) fn cors(&mut self, route: &Section<'_>) -> Option<CorsPolicy> {
        let (_, item) = route.table.get_key_value("cors")?;
        let s = self.section(item, format!("`cors` in {}", route.name))?;
        self.unknown_keys(&s, CORS_KEYS);
        let origins = self.string_list(&s, "origins").unwrap_or_default();
        if origins.is_empty() {
            self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                format!("{} needs `origins`", s.name),
                Some("list the origins browsers call from, e.g. `origins = [\"https://shop.example\"]`".into()),
            );
        }
        for origin in &origins {
            let valid = origin == "*"
                || ((origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin.ends_with('/'));
            if !valid {
                self.bad_value(&s, "origins", format!("`{origin}` is not an origin"), "an origin is a scheme and host, e.g. `https://shop.example` (no path, no trailing `/`), or `*`");
            }
        }
        let credentials = self.boolean(&s, "credentials").unwrap_or(false);
        if credentials && origins.iter().any(|o| o == "*") {
            self.push_at_key(
                &s,
                "credentials",
                ErrorCode::Conflict,
                format!("{} allows any origin (`*`) with credentials", s.name),
                "browsers refuse credentials with `*`: list the origins",
            );
        }
        Some(CorsPolicy {
            origins,
            methods: self
                .string_list(&s, "methods")
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            headers: self.string_list(&s, "headers").unwrap_or_default(),
            expose_headers: self.string_list(&s, "expose_headers").unwrap_or_default(),
            credentials,
            max_age: self
                .duration(&s, "max_age")
                .unwrap_or_else(defaults::cors_max_age),
        })
    }

    pub(super) fn idempotency(&mut self, route: &Section<'_>) -> Option<IdempotencyPolicy> {
        let (_, item) = route.table.get_key_value("idempotency")?;
        let s = self.section(item, format!("`idempotency` in {}", route.name))?;
        self.unknown_keys(&s, IDEMPOTENCY_KEYS);
        let header = self
            .string(&s, "header")
            .unwrap_or_else(defaults::idempotency_header);
        if header.is_empty() || !header.bytes().all(is_token_byte) {
            self.bad_value(
                &s,
                "header",
                format!("`{header}` is not a valid header name"),
                "e.g. `header = \"Idempotency-Key\"`",
            );
        }
        Some(IdempotencyPolicy {
            header: header.to_ascii_lowercase(),
            required: self.boolean(&s, "required").unwrap_or(false),
            ttl: self
                .duration(&s, "ttl")
                .unwrap_or_else(defaults::idempotency_ttl),
            max_body: self
                .size(&s, "max_body")
                .unwrap_or_else(defaults::shadow_max_body),
        })
    }

    pub(super) fn deprecation(&mut self, route: &Section<'_>) -> Option<Deprecation> {
        let (_, item) = route.table.get_key_value("deprecation")?;
        let s = self.section(item, format!("`deprecation` in {}", route.name))?;
        self.unknown_keys(&s, DEPRECATION_KEYS);
        let since = match self.date(&s, "since") {
            Some(since) => since,
            None if !s.table.contains_key("since") => {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.span.clone(),
                    format!("{} needs `since`", s.name),
                    Some(
                        "the date the version was deprecated, e.g. `since = \"2026-01-31\"`".into(),
                    ),
                );
                return None;
            }
            None => return None,
        };
        let sunset = self.date(&s, "sunset");
        if sunset.is_some_and(|sunset| sunset < since) {
            self.bad_value(
                &s,
                "sunset",
                format!("`sunset` is before `since` in {}", s.name),
                "a version is deprecated before it goes away",
            );
        }
        Some(Deprecation {
            since,
            sunset,
            link: self.string(&s, "link"),
        })
    }

    /// A date (`2026-12-31`) or RFC 3339 time, as Unix seconds.
    fn date(&mut self, s: &Section<'_>, key: &str) -> Option<u64> {
        let text = self.string(s, key)?;
        let full = if text.len() == 10 {
            format!("{text}T00:00:00Z")
        } else {
            text.clone()
        };
        match humantime::parse_rfc3339(&full) {
            Ok(time) => Some(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
            Err(_) => {
                self.bad_value(
                    s,
                    key,
                    format!("`{text}` in {} is not a date", s.name),
                    "write `2026-12-31` or `2026-12-31T12:00:00Z`",
                );
                None
            }
        }
    }
}
