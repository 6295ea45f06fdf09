//! Walks the parsed TOML tree into the manifest types, recording every mistake
//! with its location instead of stopping at the first.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::diagnostics::{DiagnosticSink, Diagnostics, ErrorCode};
use crate::model::{defaults, Manifest, Platform, Route, RouteSpans, Service};
use crate::pattern::PathPattern;

mod auth;
mod policies;
mod shaping;
mod values;

pub(crate) use values::suggest;

pub(crate) const TOP_KEYS: &[&str] = &["platform", "services", "routes", "jwt"];
pub(crate) const PLATFORM_KEYS: &[&str] = &[
    "name",
    "listen",
    "admin",
    "data_dir",
    "drain_timeout",
    "watch",
    "trusted_proxies",
];
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "owner",
    "urls",
    "command",
    "instances",
    "workdir",
    "env",
    "health",
    "health_interval",
    "health_timeout",
    "stop_grace",
    "max_concurrent",
    "retry_budget",
    "circuit_breaker",
    "load_balancer",
    "hash_on",
    "healthy_threshold",
    "unhealthy_threshold",
    "outlier_ejection",
];
pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "path",
    "methods",
    "host",
    "headers",
    "cookies",
    "to",
    "strip_prefix",
    "rewrite",
    "timeout",
    "attempt_timeout",
    "retry",
    "fallback",
    "sticky",
    "shadow",
    "rate_limit",
    "request_headers",
    "response_headers",
    "max_body",
    "cors",
    "deprecation",
    "auth",
    "scopes",
    "forward_claims",
    "idempotency",
    "api_key_from",
];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];
const MAX_INSTANCES: i64 = 256;

pub(crate) struct Decoder<'a> {
    source: &'a str,
    sink: DiagnosticSink<'a>,
}

/// One table being decoded, and how to name it in messages.
struct Section<'t> {
    table: &'t dyn TableLike,
    /// E.g. `[services.catalog]`.
    name: String,
    /// The table's header (or inline table) in the file, when it has one.
    span: Option<Range<usize>>,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(source: &'a str, origin: &Path) -> Self {
        Decoder {
            source,
            sink: DiagnosticSink::new(source, origin),
        }
    }

    pub(crate) fn finish(self) -> Diagnostics {
        self.sink.finish()
    }

    /// Decodes the whole manifest. `None` only when the TOML itself is broken;
    /// otherwise a best-effort manifest comes back beside the diagnostics so the
    /// cross-checks can still run.
    pub(crate) fn decode(&mut self, base_dir: &Path) -> Option<Manifest> {
        let doc = match ImDocument::parse(self.source) {
            Ok(doc) => doc,
            Err(err) => {
                let message = err.message().trim().to_string();
                self.sink.push(
                    ErrorCode::Syntax,
                    err.span(),
                    format!("invalid TOML: {message}"),
                    Some("fix the syntax first; the other checks run once the file parses".into()),
                );
                return None;
            }
        };
        let root = Section {
            table: doc.as_table(),
            name: "the top level".into(),
            span: None,
        };
        self.unknown_keys(&root, TOP_KEYS);

        let mut platform = match root.table.get_key_value("platform") {
            Some((_, item)) => match self.section(item, "[platform]".into()) {
                Some(section) => self.platform(&section),
                None => Platform::default(),
            },
            None => Platform::default(),
        };
        platform.data_dir = resolve(base_dir, &platform.data_dir);

        let mut services = BTreeMap::new();
        if let Some((_, item)) = root.table.get_key_value("services") {
            if let Some(all) = self.section(item, "[services]".into()) {
                for (name, item) in all.table.iter() {
                    let span = all.table.key(name).and_then(|k| k.span());
                    self.service_name(name, span);
                    if let Some(section) = self.section(item, format!("[services.{name}]")) {
                        services.insert(name.to_string(), self.service(&section, base_dir));
                    }
                }
            }
        }

        let mut routes = Vec::new();
        if let Some((_, item)) = root.table.get_key_value("routes") {
            for (index, table, span) in self.route_tables(item) {
                let section = Section {
                    table,
                    name: format!("[[routes]] #{}", index + 1),
                    span,
                };
                if let Some(route) = self.route(&section) {
                    routes.push(route);
                }
            }
        }

        let jwt = match root.table.get_key_value("jwt") {
            Some((_, item)) => self
                .section(item, "[jwt]".into())
                .map(|section| self.jwt(&section, base_dir)),
            None => None,
        };

        Some(Manifest {
            platform,
            services,
            routes,
            jwt,
            base_dir: base_dir.to_path_buf(),
        })
    }

    fn platform(&mut self, s: &Section<'_>) -> Platform {
        self.unknown_keys(s, PLATFORM_KEYS);
        let name = self.string(s, "name").unwrap_or_else(defaults::name);
        if name.trim().is_empty() {
            self.bad_value(
                s,
                "name",
                "the platform `name` is empty",
                "give the system a name",
            );
        }
        Platform {
            name,
            listen: self.address(s, "listen").unwrap_or_else(defaults::listen),
            admin: self.address(s, "admin").unwrap_or_else(defaults::admin),
            data_dir: self
                .string(s, "data_dir")
                .map(PathBuf::from)
                .unwrap_or_else(defaults::data_dir),
            drain_timeout: self
                .duration(s, "drain_timeout")
                .unwrap_or_else(defaults::drain_timeout),
            watch: self.boolean(s, "watch").unwrap_or(true),
            trusted_proxies: self.trusted_proxies(s),
        }
    }

    fn service_name(&mut self, name: &str, span: Option<Range<usize>>) {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            self.sink.push(
                ErrorCode::BadValue,
                span,
                format!("service name `{name}` is not allowed"),
                Some("use lowercase letters, digits, `-` and `_`, starting with a letter".into()),
            );
        }
    }

    fn service(&mut self, s: &Section<'_>, base_dir: &Path) -> Service {
        self.unknown_keys(s, SERVICE_KEYS);
        let urls = self.string_list(s, "urls").unwrap_or_default();
        let mut command = self.string_list(s, "command").unwrap_or_default();
        let instances = self.integer(s, "instances", 1, MAX_INSTANCES);

        let has = |key: &str| s.table.contains_key(key);
        match (has("urls"), has("command")) {
            (true, true) => self.push_at_key(
                s,
                "command",
                ErrorCode::Conflict,
                format!("{} has both `urls` and `command`", s.name),
                "use `command` for a service Gantry runs, or `urls` for one it only sends traffic to",
            ),
            (false, false) => self.sink.push(
                ErrorCode::MissingKey,
                s.table_span(),
                format!("{} needs `command` or `urls`", s.name),
                Some(
                    "add `command = [\"path/to/program\"]` for Gantry to run it, \
                     or `urls = [\"http://127.0.0.1:9000\"]`"
                        .into(),
                ),
            ),
            (true, false) => {
                if has("instances") {
                    self.push_at_key(
                        s,
                        "instances",
                        ErrorCode::Conflict,
                        format!("`instances` in {} only applies to `command`", s.name),
                        "list one URL per instance in `urls` instead",
                    );
                }
                if urls.is_empty() {
                    self.bad_value(s, "urls", format!("`urls` in {} is empty", s.name), "list at least one URL");
                }
            }
            (false, true) => {}
        }
        for (i, url) in urls.iter().enumerate() {
            if let Err(why) = check_upstream_url(url) {
                let span = self.element_span(s, "urls", i);
                self.sink.push(
                    ErrorCode::BadValue,
                    span,
                    format!("`{url}` in {} {why}", s.name),
                    Some("write a base URL such as `http://127.0.0.1:9000`".into()),
                );
            }
        }
        if has("command") && command.is_empty() {
            self.bad_value(
                s,
                "command",
                format!("`command` in {} is empty", s.name),
                "give the program to run, then its arguments",
            );
        }
        if let Some(program) = command.first_mut() {
            if program.contains('/') {
                *program = resolve(base_dir, Path::new(program.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        }

        let health = self.string(s, "health");
        if let Some(path) = &health {
            if !path.starts_with('/') {
                self.bad_value(
                    s,
                    "health",
                    format!("health path `{path}` must start with `/`"),
                    "e.g. `health = \"/healthz\"`",
                );
            }
        }
        let (load_balancer, hash_on) = self.balancing(s);
        let env = self.string_map(s, "env").unwrap_or_default();
        for key in env.keys() {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.bad_value(
                    s,
                    "env",
                    format!("`{key}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
        }
        Service {
            owner: self.string(s, "owner"),
            urls,
            command,
            instances: instances.unwrap_or(1) as u32,
            workdir: Some(resolve(
                base_dir,
                &self
                    .string(s, "workdir")
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            )),
            env,
            health,
            health_interval: self
                .duration(s, "health_interval")
                .unwrap_or_else(defaults::health_interval),
            health_timeout: self
                .duration(s, "health_timeout")
                .unwrap_or_else(defaults::health_timeout),
            stop_grace: self
                .duration(s, "stop_grace")
                .unwrap_or_else(defaults::stop_grace),
            max_concurrent: self
                .integer(s, "max_concurrent", 1, 1_000_000)
                .map_or_else(crate::policy::defaults::max_concurrent, |n| n as u32),
            retry_budget: self
                .ratio(s, "retry_budget")
                .unwrap_or_else(crate::policy::defaults::retry_budget),
            circuit_breaker: self.circuit_breaker(s),
            load_balancer,
            hash_on,
            healthy_threshold: self
                .integer(s, "healthy_threshold", 1, 100)
                .map_or_else(crate::policy::defaults::healthy_threshold, |n| n as u32),
            unhealthy_threshold: self
                .integer(s, "unhealthy_threshold", 1, 100)
                .map_or_else(crate::policy::defaults::unhealthy_threshold, |n| n as u32),
            outlier_ejection: self.outlier_ejection(s),
        }
    }

    /// `[[routes]]` is normally an array of tables; an inline array of tables works too.
    fn route_tables<'t>(
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

    fn route(&mut self, s: &Section<'_>) -> Option<Route> {
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
            pattern: pattern?,
            spans,
        })
    }
}

impl Section<'_> {
    /// Where the section starts: its header, or its first key for an implicit table.
    fn table_span(&self) -> Option<Range<usize>> {
        self.span.clone().or_else(|| {
            self.table
                .iter()
                .next()
                .and_then(|(k, _)| self.table.key(k).and_then(|k| k.span()))
        })
    }
}

pub(super) fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else if path.as_os_str().is_empty() {
        base_dir.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Upstream URLs are plain `http://host:port` bases.
fn check_upstream_url(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "uses https, which upstreams do not support yet"
        } else {
            "is not an http:// URL"
        });
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be a base URL with a host and port and no path");
    }
    Ok(())
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
