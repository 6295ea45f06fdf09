//! Decoding of `[[routes]]`: matching, rewriting and every per-route policy.

use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

use super::{is_token_byte, suggest, Decoder, Section, METHODS, ROUTE_KEYS};
use crate::diagnostics::ErrorCode;
use crate::model::{defaults, Route, RouteSpans};
use crate::pattern::PathPattern;

impl Decoder<'_> {
    /// `[[routes]]` is normally an array of tables; an inline array of tables works too.
    pub(super) fn route_tables<'t>(
        &mut self,
        item: &'t Item,
    ) -> Vec<(usize, &'t dyn TableLike, Option<Range<usize>>)> {
        match item {
            Item::ArrayOfTables(tables) => tables
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t as &dyn TableLike, t.span()))
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut out = Vec::new();
                for (i, value) in array.iter().enumerate() {
                    match value.as_inline_table() {
                        Some(t) => out.push((i, t as &dyn TableLike, t.span())),
                        None => self.sink.push(
                            ErrorCode::WrongType,
                            value.span(),
                            format!(
                                "route #{} must be a table, found {}",
                                i + 1,
                                value.type_name()
                            ),
                            Some("write each route as a `[[routes]]` section".into()),
                        ),
                    }
                }
                out
            }
            other => {
                self.sink.push(
                    ErrorCode::WrongType,
                    other.span(),
                    format!(
                        "`routes` must be a list of `[[routes]]` sections, found {}",
                        other.type_name()
                    ),
                    Some("write each route as a `[[routes]]` section".into()),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn route(&mut self, s: &Section<'_>) -> Option<Route> {
        self.unknown_keys(s, ROUTE_KEYS);
        let path = self.required_string(s, "path", "add `path = \"/api/*\"`");
        let to = self.target(s);
        let sticky = self.hash_key(s, "sticky");
        let pattern = path.as_ref().and_then(|p| match PathPattern::parse(p) {
            Ok(pattern) => Some(pattern),
            Err(why) => {
                let span = self.value_span(s, "path");
                self.sink.push(
                    ErrorCode::BadPath,
                    span,
                    why,
                    Some("patterns are exact (`/health`), prefix (`/api/*`) or have `{param}` segments".into()),
                );
                None
            }
        });

        let mut methods = Vec::new();
        for (i, method) in self
            .string_list(s, "methods")
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let upper = method.to_ascii_uppercase();
            if METHODS.contains(&upper.as_str()) {
                methods.push(upper);
            } else {
                let span = self.element_span(s, "methods", i);
                let hint = suggest(&upper, METHODS)
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| format!("use one of {}", METHODS.join(", ")));
                self.sink.push(
                    ErrorCode::BadValue,
                    span,
                    format!("unknown HTTP method `{method}` in {}", s.name),
                    Some(hint),
                );
            }
        }

        let headers = self.string_map(s, "headers").unwrap_or_default();
        for name in headers.keys() {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                self.bad_value(
                    s,
                    "headers",
                    format!("`{name}` is not a valid header name"),
                    "header names are letters, digits and `-`",
                );
            }
        }
        let cookies = self.string_map(s, "cookies").unwrap_or_default();
        for name in cookies.keys() {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                self.bad_value(
                    s,
                    "cookies",
                    format!("`{name}` is not a valid cookie name"),
                    "cookie names are letters, digits, `-` and `_`",
                );
            }
        }
        let host = self.string(s, "host").map(|h| h.to_ascii_lowercase());
        if host
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.contains('/'))
        {
            self.bad_value(
                s,
                "host",
                format!("`host` in {} is not a host name", s.name),
                "e.g. `host = \"api.example.com\"` or `\"*.example.com\"`",
            );
        }

        let strip_prefix = self.string(s, "strip_prefix");
        let rewrite = self.string(s, "rewrite");
        if strip_prefix.is_some() && rewrite.is_some() {
            self.push_at_key(
                s,
                "rewrite",
                ErrorCode::Conflict,
                format!("{} has both `strip_prefix` and `rewrite`", s.name),
                "`rewrite` already sets the whole upstream path; keep one of the two",
            );
        }
        if let (Some(prefix), Some(path)) = (&strip_prefix, &path) {
            let fits = prefix.starts_with('/')
                && !prefix.ends_with('/')
                && path.starts_with(prefix.as_str())
                && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'));
            if !fits {
                self.bad_value(s, "strip_prefix", format!("`strip_prefix = \"{prefix}\"` is not a leading part of the route path `{path}`"), "give whole leading segments of `path`, without a trailing `/`, e.g. `/api` for `/api/catalog/*`");
            }
        }
        if let (Some(template), Some(pattern)) = (&rewrite, &pattern) {
            if let Err(why) = check_rewrite(template, pattern) {
                self.bad_value(s, "rewrite", why, "`{name}` must be a parameter of `path`; `{*}` needs a prefix path ending in `/*`");
            }
        }
        let timeout = self
            .duration(s, "timeout")
            .unwrap_or_else(defaults::route_timeout);
        let name = self.string(s, "name");

        let attempt_timeout = self.duration(s, "attempt_timeout");
        if attempt_timeout.is_some_and(|a| a > timeout) {
            self.bad_value(
                s,
                "attempt_timeout",
                format!("`attempt_timeout` is longer than `timeout` in {}", s.name),
                "`timeout` bounds all attempts together; make `attempt_timeout` shorter",
            );
        }
        let retry = self.retry(s);
        let fallback = self.fallback(s);
        let shadow = self.shadow(s);
        let rate_limit = self.rate_limit(s);
        let request_headers = self.header_edits(s, "request_headers");
        let response_headers = self.header_edits(s, "response_headers");
        let max_body = self.size(s, "max_body");
        let cors = self.cors(s);
        let deprecation = self.deprecation(s);
        let idempotency = self.idempotency(s);
        let auth = self.auth_mode(s);
        let api_key_from = self.api_key_source(s);
        if auth == crate::auth::AuthMode::ApiKey && s.table.contains_key("scopes") {
            self.push_at_key(
                s,
                "scopes",
                ErrorCode::Conflict,
                format!("{} checks API keys, which carry no scopes", s.name),
                "use `auth = \"jwt\"` for scopes, or split the route",
            );
        }
        let scopes = self.string_list(s, "scopes").unwrap_or_default();
        let forward_claims = self.string_map(s, "forward_claims").unwrap_or_default();
        for header in forward_claims.values() {
            if header.is_empty() || !header.bytes().all(is_token_byte) {
                self.bad_value(
                    s,
                    "forward_claims",
                    format!("`{header}` is not a valid header name"),
                    "e.g. `forward_claims = { sub = \"x-user-id\" }`",
                );
            }
        }
        if auth == crate::auth::AuthMode::None && (!scopes.is_empty() || !forward_claims.is_empty())
        {
            self.push_at_key(
                s,
                "auth",
                ErrorCode::MissingKey,
                format!(
                    "{} has `scopes` or `forward_claims` but no `auth = \"jwt\"`",
                    s.name
                ),
                "add `auth = \"jwt\"`, or remove them",
            );
        }
        let webhook = self.webhook(s);
        let spans = RouteSpans {
            table: s.table_span(),
            path: self.value_span(s, "path"),
            to: self.value_span(s, "to"),
            fallback: self.value_span(s, "fallback"),
            shadow: self.value_span(s, "shadow"),
            auth: self.value_span(s, "auth"),
        };
        Some(Route {
            name,
            path: path?,
            methods,
            host,
            headers,
            cookies,
            to: to?,
            sticky,
            strip_prefix,
            rewrite,
            timeout,
            attempt_timeout,
            retry,
            fallback,
            shadow,
            rate_limit,
            request_headers,
            response_headers,
            max_body,
            cors,
            deprecation,
            auth,
            scopes,
            forward_claims,
            idempotency,
            api_key_from,
            webhook,
            websocket: self.websocket(s),
            pattern: pattern?,
            spans,
        })
    }
}

fn check_rewrite(template: &str, pattern: &PathPattern) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err(format!("`rewrite = \"{template}\"` must start with `/`"));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `rewrite = \"{template}\"`"))?;
        let name = &rest[open + 1..open + close];
        if name == "*" {
            if !pattern.is_prefix() {
                return Err(format!(
                    "`{{*}}` in `rewrite` needs a prefix path, but `{pattern}` is exact"
                ));
            }
        } else if !pattern.has_param(name) {
            return Err(format!(
                "`{{{name}}}` in `rewrite` is not a parameter of `{pattern}`"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}
