//! Decoding of `[functions.NAME]`, `[schedules.NAME]`, `[buckets.NAME]` and a
//! route's `webhook`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml_edit::Item;

use super::{resolve, Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::functions::{
    defaults, Bucket, Executor, Function, Missed, Schedule, WebhookPolicy, WebhookStyle,
};

pub(crate) const FUNCTION_KEYS: &[&str] = &[
    "component",
    "executor",
    "command",
    "runtime",
    "timeout",
    "memory",
    "max_concurrency",
    "queue",
    "queue_timeout",
    "min_instances",
    "idle_timeout",
    "env",
    "allowed_outbound_hosts",
    "services",
    "publish",
    "workdir",
];
const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "to", "missed", "overlap", "data"];
const BUCKET_KEYS: &[&str] = &["max_size", "topic"];
const WEBHOOK_KEYS: &[&str] = &["style", "secret_env", "tolerance"];
/// The largest linear memory a function may ask for.
const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

impl Decoder<'_> {
    /// A `[NAME.x]` family of tables, each decoded by `decode`.
    fn named_tables<T>(
        &mut self,
        item: &Item,
        family: &str,
        mut decode: impl FnMut(&mut Self, &Section<'_>) -> T,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let Some(all) = self.section(item, format!("[{family}]")) else {
            return out;
        };
        for (name, item) in all.table.iter() {
            let span = all.table.key(name).and_then(|k| k.span());
            self.service_name(name, span);
            if let Some(section) = self.section(item, format!("[{family}.{name}]")) {
                out.insert(name.to_string(), decode(self, &section));
            }
        }
        out
    }

    pub(super) fn functions(&mut self, item: &Item, base_dir: &Path) -> BTreeMap<String, Function> {
        self.named_tables(item, "functions", |d, s| d.function(s, base_dir))
    }

    pub(super) fn schedules(&mut self, item: &Item) -> BTreeMap<String, Schedule> {
        let mut out = BTreeMap::new();
        for (name, schedule) in self.named_tables(item, "schedules", |d, s| d.schedule(s)) {
            if let Some(schedule) = schedule {
                out.insert(name, schedule);
            }
        }
        out
    }

    pub(super) fn buckets(&mut self, item: &Item) -> BTreeMap<String, Bucket> {
        self.named_tables(item, "buckets", |d, s| {
            d.unknown_keys(s, BUCKET_KEYS);
            Bucket {
                max_size: d
                    .size(s, "max_size")
                    .unwrap_or_else(defaults::max_object_size),
                topic: d.string(s, "topic"),
            }
        })
    }

    fn function(&mut self, s: &Section<'_>, base_dir: &Path) -> Function {
        self.unknown_keys(s, FUNCTION_KEYS);
        let component = self.string(s, "component").map(PathBuf::from);
        let mut command = self.string_list(s, "command").unwrap_or_default();
        let runtime = self.string(s, "runtime");
        let has = |key: &str| s.table.contains_key(key);
        match (has("component"), has("command")) {
            (true, true) => self.push_at_key(
                s,
                "command",
                ErrorCode::Conflict,
                format!("{} has both `component` and `command`", s.name),
                "a function is either a wasm `component` or a `command` with `runtime = \"lambda\"`",
            ),
            (false, false) => self.sink.push(
                ErrorCode::MissingKey,
                s.table_span(),
                format!("{} needs `component` or `command`", s.name),
                Some(
                    "add `component = \"path/to/app.wasm\"`, or `command = [\"./handler\"]` \
                     with `runtime = \"lambda\"`"
                        .into(),
                ),
            ),
            (false, true) => {
                if runtime.as_deref() != Some("lambda") {
                    let hint = "add `runtime = \"lambda\"`: a command function speaks the AWS Lambda Runtime API";
                    match runtime {
                        Some(other) => self.bad_value(
                            s,
                            "runtime",
                            format!("runtime `{other}` is not supported"),
                            hint,
                        ),
                        None => self.push_at_key(
                            s,
                            "command",
                            ErrorCode::MissingKey,
                            format!("{} has a `command` but no `runtime`", s.name),
                            hint,
                        ),
                    }
                }
                if command.is_empty() {
                    self.bad_value(
                        s,
                        "command",
                        format!("`command` in {} is empty", s.name),
                        "give the program to run, then its arguments",
                    );
                }
            }
            (true, false) => {
                if has("runtime") {
                    self.push_at_key(
                        s,
                        "runtime",
                        ErrorCode::Conflict,
                        format!("`runtime` in {} only applies to `command`", s.name),
                        "a component runs on wasmtime; use `executor` to pick wasi-http or wagi",
                    );
                }
            }
        }
        let executor = match self.string(s, "executor").as_deref() {
            None | Some("wasi-http") => Executor::WasiHttp,
            Some("wagi") => Executor::Wagi,
            Some(other) => {
                self.bad_value(
                    s,
                    "executor",
                    format!("executor `{other}` is not known"),
                    "use `wasi-http` (a component exporting wasi:http/incoming-handler) or `wagi` (a WASI command module)",
                );
                Executor::WasiHttp
            }
        };
        if let Some(program) = command.first_mut() {
            if program.contains('/') {
                *program = resolve(base_dir, Path::new(program.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        }
        let memory = self.size(s, "memory").unwrap_or_else(defaults::memory);
        if !(64 * 1024..=MAX_MEMORY).contains(&memory) {
            self.bad_value(
                s,
                "memory",
                format!("`memory` in {} must be between 64KiB and 4GiB", s.name),
                "e.g. `memory = \"128MiB\"`",
            );
        }
        let env = self.string_map(s, "env").unwrap_or_default();
        let allowed_outbound_hosts = self
            .string_list(s, "allowed_outbound_hosts")
            .unwrap_or_default();
        for (i, host) in allowed_outbound_hosts.iter().enumerate() {
            if let Err(why) = check_outbound(host) {
                let span = self.element_span(s, "allowed_outbound_hosts", i);
                self.sink.push(
                    ErrorCode::BadValue,
                    span,
                    format!("`{host}` in {} {why}", s.name),
                    Some("write `SCHEME://HOST:PORT`, e.g. `https://api.example.com:443` or `http://127.0.0.1:*`".into()),
                );
            }
        }
        let timeout = self
            .duration(s, "timeout")
            .unwrap_or_else(defaults::timeout);
        let component = component.map(|p| resolve(base_dir, &p));
        if let Some(path) = &component {
            if !path.is_file() {
                self.bad_value(
                    s,
                    "component",
                    format!("`{}` does not exist", path.display()),
                    "build the function first; the path is relative to the manifest's directory",
                );
            }
        }
        Function {
            component,
            executor,
            command,
            runtime: self.string(s, "runtime"),
            timeout,
            memory,
            max_concurrency: self
                .integer(s, "max_concurrency", 1, 100_000)
                .map_or_else(defaults::max_concurrency, |n| n as u32),
            queue: self
                .integer(s, "queue", 0, 1_000_000)
                .map_or_else(defaults::queue, |n| n as u32),
            queue_timeout: self
                .duration(s, "queue_timeout")
                .unwrap_or_else(defaults::queue_timeout),
            min_instances: self
                .integer(s, "min_instances", 0, 1_000)
                .map_or(0, |n| n as u32),
            idle_timeout: self
                .duration(s, "idle_timeout")
                .unwrap_or_else(defaults::idle_timeout),
            env,
            allowed_outbound_hosts,
            services: self.string_list(s, "services").unwrap_or_default(),
            publish: self.string_list(s, "publish").unwrap_or_default(),
            workdir: Some(resolve(
                base_dir,
                &self
                    .string(s, "workdir")
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            )),
        }
    }

    fn schedule(&mut self, s: &Section<'_>) -> Option<Schedule> {
        self.unknown_keys(s, SCHEDULE_KEYS);
        let cron = self.required_string(
            s,
            "cron",
            "add `cron = \"0 0 2 * * *\"` (sec min hour day month weekday)",
        )?;
        let normalized = normalize_cron(&cron);
        if let Err(error) = cron::Schedule::from_str(&normalized) {
            self.bad_value(
                s,
                "cron",
                format!("`{cron}` is not a cron expression: {error}"),
                "write `sec min hour day-of-month month day-of-week`, e.g. `0 */5 * * * *` for every five minutes",
            );
        }
        let timezone = self
            .string(s, "timezone")
            .unwrap_or_else(defaults::timezone);
        if chrono_tz::Tz::from_str(&timezone).is_err() {
            self.bad_value(
                s,
                "timezone",
                format!("`{timezone}` is not a known time zone"),
                "use an IANA name such as `UTC`, `Europe/Paris` or `America/New_York`",
            );
        }
        let to = self.required_string(s, "to", "add `to = \"function:NAME\"`")?;
        if crate::functions::function_of(&to).is_none() {
            self.bad_value(
                s,
                "to",
                format!("`{to}` is not a function"),
                "schedules invoke functions: write `to = \"function:NAME\"`",
            );
        }
        let missed = match self.string(s, "missed").as_deref() {
            None | Some("skip") => Missed::Skip,
            Some("catch_up") => Missed::CatchUp,
            Some(other) => {
                self.bad_value(
                    s,
                    "missed",
                    format!("`missed = \"{other}\"` is not a policy"),
                    "use `skip` (missed runs are dropped) or `catch_up` (one run at start for all missed)",
                );
                Missed::Skip
            }
        };
        let data = s.table.get("data").map(super::workflows::item_to_json);
        Some(Schedule {
            cron: normalized,
            timezone,
            to,
            missed,
            overlap: self.boolean(s, "overlap").unwrap_or(false),
            data,
        })
    }

    pub(super) fn webhook(&mut self, route: &Section<'_>) -> Option<WebhookPolicy> {
        let s = self.nested(route, "webhook")?;
        self.unknown_keys(&s, WEBHOOK_KEYS);
        let style = match self
            .required_string(
                &s,
                "style",
                "add `style = \"github\"` or `style = \"stripe\"`",
            )?
            .as_str()
        {
            "github" => WebhookStyle::Github,
            "stripe" => WebhookStyle::Stripe,
            other => {
                self.bad_value(
                    &s,
                    "style",
                    format!("webhook style `{other}` is not known"),
                    "use `github` (X-Hub-Signature-256) or `stripe` (Stripe-Signature)",
                );
                return None;
            }
        };
        let secret_env = self.required_string(
            &s,
            "secret_env",
            "add `secret_env = \"WEBHOOK_SECRET\"`: the environment variable holding the signing secret",
        )?;
        Some(WebhookPolicy {
            style,
            secret_env,
            tolerance: self
                .duration(&s, "tolerance")
                .unwrap_or_else(defaults::webhook_tolerance),
        })
    }
}

/// Five fields (no seconds) get `0` seconds in front.
fn normalize_cron(text: &str) -> String {
    let fields = text.split_whitespace().count();
    if fields == 5 {
        format!("0 {}", text.trim())
    } else {
        text.trim().to_string()
    }
}

/// `SCHEME://HOST[:PORT]`, where HOST or PORT may be `*`.
fn check_outbound(text: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("has no scheme");
    };
    if !matches!(scheme, "http" | "https" | "*") {
        return Err("must use http or https");
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be a scheme, host and port, with no path");
    }
    Ok(())
}
