//! Decoding of the reliability policies: `retry`, `circuit_breaker`, `fallback`.

use super::{suggest, Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::model::{Target, WeightedService};
use crate::policy::{
    defaults, CircuitBreakerPolicy, Fallback, HashKey, LoadBalancer, OutlierEjection, RateLimitKey,
    RateLimitPolicy, RetryPolicy, ShadowPolicy,
};
use crate::policy::{GrpcCode, RetryOn, UpstreamProtocol, WebSocketPolicy};

pub(crate) const RETRY_KEYS: &[&str] = &["attempts", "on", "backoff", "max_backoff", "max_body"];
pub(crate) const BREAKER_KEYS: &[&str] = &[
    "enabled",
    "failure_ratio",
    "min_requests",
    "consecutive_failures",
    "window",
    "open_for",
];
pub(crate) const EJECTION_KEYS: &[&str] = &["enabled", "consecutive_failures", "base", "max"];
pub(crate) const SHADOW_KEYS: &[&str] = &[
    "to",
    "percent",
    "compare_headers",
    "ignore_fields",
    "unsafe_methods",
    "max_body",
];
pub(crate) const RATE_LIMIT_KEYS: &[&str] = &["requests", "per", "burst", "key"];
pub(crate) const WEBSOCKET_KEYS: &[&str] = &["enabled", "idle_timeout", "max_duration"];
pub(crate) const FALLBACK_KEYS: &[&str] = &["to", "status", "body", "content_type"];

impl Decoder<'_> {
    /// A table nested under `key`, e.g. `retry = { attempts = 3 }`.
    pub(super) fn nested<'t>(&mut self, s: &Section<'t>, key: &str) -> Option<Section<'t>> {
        let (_, item) = s.table.get_key_value(key)?;
        self.section(item, format!("`{key}` in {}", s.name))
    }

    pub(super) fn retry(&mut self, route: &Section<'_>) -> RetryPolicy {
        let Some(s) = self.nested(route, "retry") else {
            return RetryPolicy::connect_failures_only();
        };
        self.unknown_keys(&s, RETRY_KEYS);
        let written = RetryPolicy::written();
        let on = self.retry_on(&s).unwrap_or(written.on);
        let policy = RetryPolicy {
            attempts: self
                .integer(&s, "attempts", 1, 10)
                .map_or(written.attempts, |n| n as u32),
            on,
            backoff: self.duration(&s, "backoff").unwrap_or(written.backoff),
            max_backoff: self
                .duration(&s, "max_backoff")
                .unwrap_or(written.max_backoff),
            max_body: self.size(&s, "max_body").unwrap_or(written.max_body),
        };
        if policy.backoff > policy.max_backoff {
            self.bad_value(
                &s,
                "backoff",
                format!("`backoff` is longer than `max_backoff` in {}", s.name),
                "make `max_backoff` at least as long as `backoff`",
            );
        }
        policy
    }

    pub(super) fn circuit_breaker(&mut self, service: &Section<'_>) -> CircuitBreakerPolicy {
        let Some(s) = self.nested(service, "circuit_breaker") else {
            return CircuitBreakerPolicy::default();
        };
        self.unknown_keys(&s, BREAKER_KEYS);
        let d = CircuitBreakerPolicy::default();
        CircuitBreakerPolicy {
            enabled: self.boolean(&s, "enabled").unwrap_or(d.enabled),
            failure_ratio: self.ratio(&s, "failure_ratio").unwrap_or(d.failure_ratio),
            min_requests: self
                .integer(&s, "min_requests", 1, 1_000_000)
                .map_or(d.min_requests, |n| n as u32),
            consecutive_failures: self
                .integer(&s, "consecutive_failures", 0, 1_000_000)
                .map_or(d.consecutive_failures, |n| n as u32),
            window: self.duration(&s, "window").unwrap_or(d.window),
            open_for: self.duration(&s, "open_for").unwrap_or(d.open_for),
        }
    }

    pub(super) fn outlier_ejection(&mut self, service: &Section<'_>) -> OutlierEjection {
        let Some(s) = self.nested(service, "outlier_ejection") else {
            return OutlierEjection::default();
        };
        self.unknown_keys(&s, EJECTION_KEYS);
        let d = OutlierEjection::default();
        OutlierEjection {
            enabled: self.boolean(&s, "enabled").unwrap_or(d.enabled),
            consecutive_failures: self
                .integer(&s, "consecutive_failures", 1, 1_000_000)
                .map_or(d.consecutive_failures, |n| n as u32),
            base: self.duration(&s, "base").unwrap_or(d.base),
            max: self.duration(&s, "max").unwrap_or(d.max),
        }
    }

    /// `websocket = false`, or `websocket = { idle_timeout = "5m", max_duration = "1h" }`.
    pub(super) fn websocket(&mut self, route: &Section<'_>) -> WebSocketPolicy {
        let d = WebSocketPolicy::default();
        if let Some(enabled) = route.table.get("websocket").and_then(|item| item.as_bool()) {
            return WebSocketPolicy { enabled, ..d };
        }
        let Some(s) = self.nested(route, "websocket") else {
            return d;
        };
        self.unknown_keys(&s, WEBSOCKET_KEYS);
        let policy = WebSocketPolicy {
            enabled: self.boolean(&s, "enabled").unwrap_or(d.enabled),
            idle_timeout: self.duration(&s, "idle_timeout").unwrap_or(d.idle_timeout),
            max_duration: self.duration(&s, "max_duration"),
        };
        if policy.idle_timeout.is_zero() {
            self.bad_value(
                &s,
                "idle_timeout",
                format!("`idle_timeout` in {} is zero", s.name),
                "give a duration such as \"5m\", or `websocket = false` to pass no upgrades",
            );
        }
        policy
    }

    /// `retry.on`: HTTP statuses and gRPC status names.
    fn retry_on(&mut self, s: &Section<'_>) -> Option<Vec<RetryOn>> {
        let value = self.value(s, "on", "a list of statuses")?;
        let Some(array) = value.as_array() else {
            self.wrong_type(s, "on", "a list of statuses", value.type_name());
            return None;
        };
        let mut out = Vec::new();
        for element in array.iter() {
            if let Some(n) = element.as_integer() {
                if (100..=599).contains(&n) {
                    out.push(RetryOn::Status(n as u16));
                    continue;
                }
            } else if let Some(name) = element.as_str() {
                if let Some(code) = GrpcCode::from_name(name) {
                    out.push(RetryOn::Grpc(code));
                    continue;
                }
                let names: Vec<&str> = GrpcCode::ALL.iter().map(|c| c.name()).collect();
                let hint = match suggest(&name.to_ascii_lowercase(), &names) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("gRPC statuses are {}", names.join(", ")),
                };
                self.sink.push(
                    ErrorCode::BadValue,
                    element.span(),
                    format!("`{name}` in `on` in {} is not a gRPC status", s.name),
                    Some(hint),
                );
                continue;
            }
            self.sink.push(
                ErrorCode::BadValue,
                element.span(),
                format!(
                    "`on` in {} must hold HTTP statuses from 100 to 599 or gRPC status names",
                    s.name
                ),
                Some("e.g. `on = [502, 503, 504]` or `on = [\"unavailable\"]`".into()),
            );
        }
        Some(out)
    }

    /// `protocol` of a service, checked against its urls.
    pub(super) fn protocol(&mut self, s: &Section<'_>, urls: &[String]) -> UpstreamProtocol {
        const NAMES: &[&str] = &["http1", "h2", "h2c"];
        let protocol = match self.string(s, "protocol").as_deref() {
            None | Some("http1") => return UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                let hint = match suggest(other, NAMES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("use one of {}", NAMES.join(", ")),
                };
                self.bad_value(
                    s,
                    "protocol",
                    format!("unknown protocol `{other}` in {}", s.name),
                    hint,
                );
                return UpstreamProtocol::Http1;
            }
        };
        let plain = urls.iter().any(|u| u.starts_with("http://"));
        let tls = urls.iter().any(|u| u.starts_with("https://"));
        match protocol {
            UpstreamProtocol::H2 if plain || urls.is_empty() => self.bad_value(
                s,
                "protocol",
                format!(
                    "`protocol = \"h2\"` in {} is HTTP/2 over TLS, for `https://` urls",
                    s.name
                ),
                "use `protocol = \"h2c\"` for plain `http://` instances and processes Gantry runs",
            ),
            UpstreamProtocol::H2c if tls => self.bad_value(
                s,
                "protocol",
                format!(
                    "`protocol = \"h2c\"` in {} is HTTP/2 without TLS, and it has `https://` urls",
                    s.name
                ),
                "use `protocol = \"h2\"` for `https://` instances",
            ),
            _ => {}
        }
        protocol
    }

    /// `load_balancer` and `hash_on`, which go together.
    pub(super) fn balancing(&mut self, s: &Section<'_>) -> (LoadBalancer, Option<HashKey>) {
        const NAMES: &[&str] = &["round_robin", "least_requests", "consistent_hash"];
        let balancer = match self.string(s, "load_balancer").as_deref() {
            None | Some("round_robin") => LoadBalancer::RoundRobin,
            Some("least_requests") => LoadBalancer::LeastRequests,
            Some("consistent_hash") => LoadBalancer::ConsistentHash,
            Some(other) => {
                let hint = match suggest(other, NAMES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("use one of {}", NAMES.join(", ")),
                };
                self.bad_value(
                    s,
                    "load_balancer",
                    format!("unknown load balancer `{other}` in {}", s.name),
                    hint,
                );
                LoadBalancer::RoundRobin
            }
        };
        let hash_on = self.hash_key(s, "hash_on");
        if balancer == LoadBalancer::ConsistentHash
            && hash_on.is_none()
            && !s.table.contains_key("hash_on")
        {
            self.push_at_key(
                s,
                "load_balancer",
                ErrorCode::MissingKey,
                format!("`consistent_hash` in {} needs `hash_on`", s.name),
                "add e.g. `hash_on = \"header:x-user-id\"` or `hash_on = \"cookie:session\"`",
            );
        }
        (balancer, hash_on)
    }

    /// `header:NAME` or `cookie:NAME`.
    pub(super) fn hash_key(&mut self, s: &Section<'_>, key: &str) -> Option<HashKey> {
        let text = self.string(s, key)?;
        let parsed = HashKey::parse(&text);
        if parsed.is_none() {
            self.bad_value(
                s,
                key,
                format!("`{text}` in {} is not a key source", s.name),
                "write `header:NAME` or `cookie:NAME`",
            );
        }
        parsed
    }

    /// `to`: a service name or a weighted split.
    pub(super) fn target(&mut self, s: &Section<'_>) -> Option<Target> {
        let Some((_, item)) = s.table.get_key_value("to") else {
            self.sink.push(
                ErrorCode::MissingKey,
                s.table_span(),
                format!("{} is missing `to`", s.name),
                Some("add `to = \"SERVICE\"` naming a service from [services]".into()),
            );
            return None;
        };
        if let Some(name) = item.as_str() {
            return Some(Target::Service(name.to_string()));
        }
        let Some(array) = item.as_array() else {
            self.wrong_type(
                s,
                "to",
                "a service name or a list of { service, weight }",
                item.type_name(),
            );
            return None;
        };
        let mut split = Vec::new();
        for element in array.iter() {
            let Some(table) = element.as_inline_table() else {
                self.sink.push(
                    ErrorCode::WrongType,
                    element.span(),
                    format!("each part of the split `to` in {} must be a table", s.name),
                    Some("write `{ service = \"catalog\", weight = 10 }`".into()),
                );
                continue;
            };
            let part = Section {
                table,
                name: format!("a part of `to` in {}", s.name),
                span: element.span(),
            };
            self.unknown_keys(&part, &["service", "weight"]);
            let service = self.string(&part, "service");
            let weight = self.integer(&part, "weight", 0, 1_000_000);
            match (service, weight) {
                (Some(service), Some(weight)) => split.push(WeightedService {
                    service,
                    weight: weight as u32,
                }),
                (None, _) if !part.table.contains_key("service") => self.sink.push(
                    ErrorCode::MissingKey,
                    element.span(),
                    format!("{} is missing `service`", part.name),
                    Some("write `{ service = \"catalog\", weight = 10 }`".into()),
                ),
                (_, None) if !part.table.contains_key("weight") => self.sink.push(
                    ErrorCode::MissingKey,
                    element.span(),
                    format!("{} is missing `weight`", part.name),
                    Some("write `{ service = \"catalog\", weight = 10 }`".into()),
                ),
                _ => {}
            }
        }
        if split.is_empty() || split.iter().all(|b| b.weight == 0) {
            self.bad_value(
                s,
                "to",
                format!("the split in {} sends traffic nowhere", s.name),
                "give at least one service a weight above 0",
            );
        }
        let mut names: Vec<&str> = split.iter().map(|b| b.service.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            self.bad_value(
                s,
                "to",
                format!("a service appears twice in the split of {}", s.name),
                "list each service once, with its whole weight",
            );
        }
        Some(Target::Split(split))
    }

    pub(super) fn shadow(&mut self, route: &Section<'_>) -> Option<ShadowPolicy> {
        let s = self.nested(route, "shadow")?;
        self.unknown_keys(&s, SHADOW_KEYS);
        let to = self.required_string(
            &s,
            "to",
            "add `to = \"SERVICE\"`: the service that gets the copies",
        )?;
        let percent = match s.table.get("percent").and_then(|i| i.as_value()) {
            Some(value) => match value
                .as_float()
                .or_else(|| value.as_integer().map(|n| n as f64))
            {
                Some(p) if (0.0..=100.0).contains(&p) => p,
                _ => {
                    self.bad_value(
                        &s,
                        "percent",
                        format!("`percent` in {} must be a number from 0 to 100", s.name),
                        "e.g. `percent = 10` mirrors one request in ten",
                    );
                    defaults::shadow_percent()
                }
            },
            None => defaults::shadow_percent(),
        };
        let ignore_fields = self.string_list(&s, "ignore_fields").unwrap_or_default();
        for field in &ignore_fields {
            if !field.starts_with('/') {
                self.bad_value(
                    &s,
                    "ignore_fields",
                    format!("`{field}` in {} is not a JSON pointer", s.name),
                    "JSON pointers start with `/`, e.g. `/generated_at` or `/items/0/price`",
                );
            }
        }
        Some(ShadowPolicy {
            to,
            percent,
            compare_headers: self
                .string_list(&s, "compare_headers")
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ignore_fields,
            unsafe_methods: self.boolean(&s, "unsafe_methods").unwrap_or(false),
            max_body: self
                .size(&s, "max_body")
                .unwrap_or_else(defaults::shadow_max_body),
        })
    }

    pub(super) fn rate_limit(&mut self, route: &Section<'_>) -> Option<RateLimitPolicy> {
        self.rate_limit_at(route, "rate_limit")
    }

    /// A `{ requests, per, burst, key }` table at `name` in `parent`.
    pub(super) fn rate_limit_at(
        &mut self,
        parent: &Section<'_>,
        name: &str,
    ) -> Option<RateLimitPolicy> {
        let s = self.nested(parent, name)?;
        self.unknown_keys(&s, RATE_LIMIT_KEYS);
        let requests = if s.table.contains_key("requests") {
            self.integer(&s, "requests", 1, 1_000_000_000)? as u32
        } else {
            self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                format!("{} is missing `requests`", s.name),
                Some("e.g. `rate_limit = { requests = 100, per = \"1m\" }`".into()),
            );
            return None;
        };
        let per = self
            .duration(&s, "per")
            .unwrap_or(std::time::Duration::from_secs(1));
        let burst = self
            .integer(&s, "burst", 1, 1_000_000_000)
            .map_or(requests, |n| n as u32);
        let key = match self.string(&s, "key").as_deref() {
            None | Some("ip") => RateLimitKey::Ip,
            Some(text) if text.starts_with("claim:") && text.len() > 6 => {
                RateLimitKey::Claim(text[6..].trim().to_string())
            }
            Some(text) => match text.strip_prefix("header:").map(str::trim) {
                Some(name) if !name.is_empty() && name.bytes().all(super::is_token_byte) => {
                    RateLimitKey::Header(name.to_ascii_lowercase())
                }
                _ => {
                    self.bad_value(
                        &s,
                        "key",
                        format!("`{text}` in {} is not a rate-limit key", s.name),
                        "use `ip`, `header:NAME` or `claim:NAME`",
                    );
                    RateLimitKey::Ip
                }
            },
        };
        Some(RateLimitPolicy {
            requests,
            per,
            burst,
            key,
        })
    }

    /// `trusted_proxies`: IP addresses or CIDR ranges.
    pub(super) fn trusted_proxies(&mut self, s: &Section<'_>) -> Vec<String> {
        let list = self.string_list(s, "trusted_proxies").unwrap_or_default();
        for entry in &list {
            let valid = entry.parse::<std::net::IpAddr>().is_ok()
                || entry.split_once('/').is_some_and(|(ip, bits)| {
                    let bits: Option<u8> = bits.parse().ok();
                    match ip.parse::<std::net::IpAddr>() {
                        Ok(std::net::IpAddr::V4(_)) => bits.is_some_and(|b| b <= 32),
                        Ok(std::net::IpAddr::V6(_)) => bits.is_some_and(|b| b <= 128),
                        Err(_) => false,
                    }
                });
            if !valid {
                self.bad_value(
                    s,
                    "trusted_proxies",
                    format!("`{entry}` is not an IP address or CIDR range"),
                    "e.g. `10.0.0.0/8` or `192.168.1.10`",
                );
            }
        }
        list
    }

    /// `fallback`, and where its `to` is, for the cross-check against services.
    pub(super) fn fallback(&mut self, route: &Section<'_>) -> Option<Fallback> {
        let s = self.nested(route, "fallback")?;
        self.unknown_keys(&s, FALLBACK_KEYS);
        if s.table.contains_key("to") {
            for key in ["status", "body", "content_type"] {
                if s.table.contains_key(key) {
                    self.push_at_key(
                        &s,
                        key,
                        ErrorCode::Conflict,
                        format!("{} has both `to` and `{key}`", s.name),
                        "a fallback is either another service (`to`) or a static answer (`status`, `body`, `content_type`)",
                    );
                }
            }
            return self.string(&s, "to").map(|to| Fallback::Service { to });
        }
        Some(Fallback::Static {
            status: self
                .integer(&s, "status", 100, 599)
                .map_or(defaults::fallback_status(), |n| n as u16),
            body: self.string(&s, "body").unwrap_or_default(),
            content_type: self
                .string(&s, "content_type")
                .unwrap_or_else(defaults::content_type),
        })
    }

    /// A number between 0 (exclusive) and 1 (inclusive).
    pub(super) fn ratio(&mut self, s: &Section<'_>, key: &str) -> Option<f64> {
        let value = self.value(s, key, "a number")?;
        let number = value
            .as_float()
            .or_else(|| value.as_integer().map(|n| n as f64));
        match number {
            Some(x) if x > 0.0 && x <= 1.0 => Some(x),
            Some(x) => {
                self.bad_value(
                    s,
                    key,
                    format!("`{key} = {x}` in {} is not a ratio", s.name),
                    "use a number above 0 and at most 1, e.g. 0.2 for 20%",
                );
                None
            }
            None => {
                self.wrong_type(s, key, "a number", value.type_name());
                None
            }
        }
    }

    /// A byte size: an integer, or text such as `64KiB`, `1MiB`, `512`.
    pub(super) fn size(&mut self, s: &Section<'_>, key: &str) -> Option<u64> {
        let value = self.value(s, key, "a size")?;
        if let Some(n) = value.as_integer() {
            if n >= 0 {
                return Some(n as u64);
            }
        }
        let parsed = value.as_str().and_then(parse_size);
        if parsed.is_none() {
            self.push_value(
                s,
                key,
                ErrorCode::BadValue,
                format!("`{key}` in {} is not a size", s.name),
                "write bytes as a number, or with a unit: `64KiB`, `1MiB`",
            );
        }
        parsed
    }

    pub(super) fn integer_list(
        &mut self,
        s: &Section<'_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<Vec<i64>> {
        let value = self.value(s, key, "a list of numbers")?;
        let Some(array) = value.as_array() else {
            self.wrong_type(s, key, "a list of numbers", value.type_name());
            return None;
        };
        let mut out = Vec::new();
        for element in array.iter() {
            match element.as_integer() {
                Some(n) if (min..=max).contains(&n) => out.push(n),
                _ => self.sink.push(
                    ErrorCode::BadValue,
                    element.span(),
                    format!(
                        "`{key}` in {} must hold numbers from {min} to {max}",
                        s.name
                    ),
                    Some(format!("e.g. `{key} = [502, 503, 504]`")),
                ),
            }
        }
        Some(out)
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(multiplier)
}
