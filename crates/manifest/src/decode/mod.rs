//! Walks the parsed TOML tree into the manifest types, recording every mistake
//! with its location instead of stopping at the first.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, TableLike};

use crate::diagnostics::{DiagnosticSink, Diagnostics, ErrorCode};
use crate::model::{
    defaults, CertFiles, EscapedSlashes, EventsSync, Manifest, Platform, Service, TlsConfig,
};

mod auth;
mod cluster;
mod events;
mod functions;
mod policies;
mod route;
mod shaping;
mod slo;
mod values;
mod workflows;

pub(crate) use values::suggest;

pub(crate) const TOP_KEYS: &[&str] = &[
    "platform",
    "services",
    "routes",
    "jwt",
    "topics",
    "subscriptions",
    "workflows",
    "functions",
    "schedules",
    "buckets",
    "slos",
    "alerting",
    "telemetry",
    "cluster",
];
pub(crate) const PLATFORM_KEYS: &[&str] = &[
    "name",
    "listen",
    "admin",
    "api",
    "data_dir",
    "drain_timeout",
    "watch",
    "trusted_proxies",
    "normalize_path",
    "escaped_slashes",
    "auth_failure_limit",
    "redirect_http",
    "tls",
    "events_sync",
];
pub(crate) const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "certs",
    "client_ca",
    "hsts",
    "hsts_subdomains",
];
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "owner",
    "urls",
    "ca",
    "protocol",
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
    "outbox",
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
    "webhook",
    "websocket",
];
pub(super) const METHODS: &[&str] = &[
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
                Some(section) => self.platform(&section, base_dir),
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

        let topics = match root.table.get_key_value("topics") {
            Some((_, item)) => self.topics(item, base_dir),
            None => BTreeMap::new(),
        };
        let mut subscriptions = Vec::new();
        if let Some((_, item)) = root.table.get_key_value("subscriptions") {
            for (index, table, span) in self.route_tables(item) {
                let section = Section {
                    table,
                    name: format!("[[subscriptions]] #{}", index + 1),
                    span,
                };
                if let Some(subscription) = self.subscription(&section) {
                    subscriptions.push(subscription);
                }
            }
        }

        let workflows = match root.table.get_key_value("workflows") {
            Some((_, item)) => self.workflows(item),
            None => BTreeMap::new(),
        };

        let functions = match root.table.get_key_value("functions") {
            Some((_, item)) => self.functions(item, base_dir),
            None => BTreeMap::new(),
        };
        let schedules = match root.table.get_key_value("schedules") {
            Some((_, item)) => self.schedules(item),
            None => BTreeMap::new(),
        };
        let buckets = match root.table.get_key_value("buckets") {
            Some((_, item)) => self.buckets(item),
            None => BTreeMap::new(),
        };

        let slos = match root.table.get_key_value("slos") {
            Some((_, item)) => self.slos(item),
            None => BTreeMap::new(),
        };
        let telemetry = match root.table.get_key_value("telemetry") {
            Some((_, item)) => self.telemetry(item),
            None => Default::default(),
        };
        let alerting = match root.table.get_key_value("alerting") {
            Some((_, item)) => self.alerting(item),
            None => Default::default(),
        };
        let cluster = match root.table.get_key_value("cluster") {
            Some((_, item)) => self.cluster(item),
            None => None,
        };

        Some(Manifest {
            platform,
            services,
            routes,
            jwt,
            topics,
            subscriptions,
            workflows,
            functions,
            schedules,
            buckets,
            slos: slos
                .iter()
                .map(|(k, (slo, _))| (k.clone(), slo.clone()))
                .collect(),
            slo_spans: slos.into_iter().map(|(k, (_, span))| (k, span)).collect(),
            alerting,
            telemetry,
            cluster,
            base_dir: base_dir.to_path_buf(),
        })
    }

    fn platform(&mut self, s: &Section<'_>, base_dir: &Path) -> Platform {
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
        let tls = self.tls(s, base_dir);
        let redirect_http = self.address(s, "redirect_http");
        if redirect_http.is_some() && tls.is_none() {
            self.bad_value(
                s,
                "redirect_http",
                "`redirect_http` redirects to https, but the gateway has no `[platform.tls]`",
                "add `[platform.tls]` with a certificate, or remove `redirect_http`",
            );
        }
        Platform {
            name,
            listen: self.address(s, "listen").unwrap_or_else(defaults::listen),
            admin: self.address(s, "admin").unwrap_or_else(defaults::admin),
            api: self.address(s, "api").unwrap_or_else(defaults::api),
            data_dir: self
                .string(s, "data_dir")
                .map(PathBuf::from)
                .unwrap_or_else(defaults::data_dir),
            drain_timeout: self
                .duration(s, "drain_timeout")
                .unwrap_or_else(defaults::drain_timeout),
            watch: self.boolean(s, "watch").unwrap_or(true),
            trusted_proxies: self.trusted_proxies(s),
            normalize_path: self.boolean(s, "normalize_path").unwrap_or(true),
            escaped_slashes: self.escaped_slashes(s),
            auth_failure_limit: self.auth_failure_limit(s),
            redirect_http,
            tls,
            events_sync: self.events_sync(s),
        }
    }

    fn events_sync(&mut self, s: &Section<'_>) -> EventsSync {
        match self.string(s, "events_sync").as_deref() {
            None | Some("always") => EventsSync::Always,
            Some("batch") => EventsSync::Batch,
            Some(other) => {
                self.bad_value(
                    s,
                    "events_sync",
                    format!("`{other}` is not an `events_sync` mode"),
                    "use `always` (the default: every acknowledged event is on disk) or `batch` (on disk at the next checkpoint; a machine crash can lose the last events)",
                );
                EventsSync::Always
            }
        }
    }

    fn escaped_slashes(&mut self, s: &Section<'_>) -> EscapedSlashes {
        match self.string(s, "escaped_slashes").as_deref() {
            None | Some("reject") => EscapedSlashes::Reject,
            Some("keep") => EscapedSlashes::Keep,
            Some("decode") => EscapedSlashes::Decode,
            Some(other) => {
                self.bad_value(
                    s,
                    "escaped_slashes",
                    format!("`{other}` is not an `escaped_slashes` action"),
                    "use `reject` (the default), `keep` or `decode`",
                );
                EscapedSlashes::Reject
            }
        }
    }

    /// `auth_failure_limit = { requests, per }`, or `false` to turn it off.
    fn auth_failure_limit(&mut self, s: &Section<'_>) -> Option<crate::policy::RateLimitPolicy> {
        match s.table.get("auth_failure_limit") {
            None => Some(defaults::auth_failure_limit()),
            Some(item) if item.as_bool() == Some(false) => None,
            Some(_) => {
                let policy = self.rate_limit_at(s, "auth_failure_limit")?;
                if policy.key != crate::policy::RateLimitKey::Ip {
                    self.bad_value(
                        s,
                        "auth_failure_limit",
                        "`auth_failure_limit` always counts by client address",
                        "remove `key`",
                    );
                }
                Some(policy)
            }
        }
    }

    /// `[platform.tls]`: `cert` + `key`, or `[[platform.tls.certs]]`.
    fn tls(&mut self, platform: &Section<'_>, base_dir: &Path) -> Option<TlsConfig> {
        let (_, item) = platform.table.get_key_value("tls")?;
        let s = self.section(item, "[platform.tls]".into())?;
        self.unknown_keys(&s, TLS_KEYS);
        let mut certs = Vec::new();
        let single = self.cert_files(
            &s,
            base_dir,
            s.table.contains_key("cert") || s.table.contains_key("key"),
        );
        certs.extend(single);
        if let Some((_, item)) = s.table.get_key_value("certs") {
            for (index, table, span) in self.route_tables(item) {
                let entry = Section {
                    table,
                    name: format!("[[platform.tls.certs]] #{}", index + 1),
                    span,
                };
                self.unknown_keys(&entry, &["cert", "key"]);
                certs.extend(self.cert_files(&entry, base_dir, true));
            }
        }
        if certs.is_empty() && !s.table.contains_key("cert") && !s.table.contains_key("certs") {
            self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                "[platform.tls] has no certificate".to_string(),
                Some("add `cert = \"cert.pem\"` and `key = \"key.pem\"` (`gantry certs dev` makes a local pair), or `[[platform.tls.certs]]` entries".into()),
            );
        }
        let client_ca = self.existing_file(&s, "client_ca", base_dir);
        let hsts = self.duration(&s, "hsts");
        Some(TlsConfig {
            certs,
            client_ca,
            hsts,
            hsts_subdomains: self.boolean(&s, "hsts_subdomains").unwrap_or(false),
        })
    }

    /// `cert` and `key` of a section, both required when `wanted`.
    fn cert_files(&mut self, s: &Section<'_>, base_dir: &Path, wanted: bool) -> Option<CertFiles> {
        if !wanted {
            return None;
        }
        for key in ["cert", "key"] {
            if !s.table.contains_key(key) {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.table_span(),
                    format!("{} needs `{key}`", s.name),
                    Some("give both `cert` (the PEM certificate chain) and `key` (its PEM private key)".into()),
                );
            }
        }
        let cert = self.existing_file(s, "cert", base_dir);
        let key = self.existing_file(s, "key", base_dir);
        Some(CertFiles {
            cert: cert?,
            key: key?,
        })
    }

    /// A file path relative to the manifest's directory that must exist.
    fn existing_file(&mut self, s: &Section<'_>, key: &str, base_dir: &Path) -> Option<PathBuf> {
        let path = resolve(base_dir, Path::new(&self.string(s, key)?));
        if !path.is_file() {
            self.bad_value(
                s,
                key,
                format!("`{}` does not exist", path.display()),
                "the path is relative to the manifest's directory",
            );
        }
        Some(path)
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

        let protocol = self.protocol(s, &urls);
        let health = self.string(s, "health");
        if let Some(path) = &health {
            if path == "grpc" {
                if !protocol.is_h2() {
                    self.bad_value(
                        s,
                        "health",
                        format!("`health = \"grpc\"` in {} needs an HTTP/2 service", s.name),
                        "add `protocol = \"h2c\"` (or `\"h2\"` for https urls), or give an HTTP health path",
                    );
                }
            } else if !path.starts_with('/') {
                self.bad_value(
                    s,
                    "health",
                    format!("health path `{path}` must start with `/`"),
                    "e.g. `health = \"/healthz\"`, or `health = \"grpc\"` for a gRPC service",
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
        let ca = self.existing_file(s, "ca", base_dir);
        if ca.is_some() && !urls.iter().any(|u| u.starts_with("https://")) {
            self.bad_value(
                s,
                "ca",
                format!(
                    "`ca` in {} applies to `https://` urls, and it has none",
                    s.name
                ),
                "use `https://` in `urls`, or remove `ca`",
            );
        }
        Service {
            owner: self.string(s, "owner"),
            urls,
            ca,
            protocol,
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
            outbox: self.outbox(s, base_dir),
        }
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

/// Upstream URLs are `http://host:port` or `https://host:port` bases.
fn check_upstream_url(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err("is not an http:// or https:// URL");
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be a base URL with a host and port and no path");
    }
    Ok(())
}
