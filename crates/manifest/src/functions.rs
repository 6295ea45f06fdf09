//! `[functions.NAME]`, `[schedules.NAME]` and `[buckets.NAME]`: the serverless
//! part of the manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// The name routes, subscriptions and schedules use for a function:
/// `function:NAME`. The gateway and the event bus see a function as a service
/// of that name.
pub fn function_target(name: &str) -> String {
    format!("function:{name}")
}

/// The function a `function:NAME` target names, if it is one.
pub fn function_of(target: &str) -> Option<&str> {
    target.strip_prefix("function:")
}

/// The bucket a `bucket:NAME` target names, if it is one.
pub fn bucket_of(target: &str) -> Option<&str> {
    target.strip_prefix("bucket:")
}

/// `[functions.NAME]`: code Gantry runs per request, with nothing it was not granted.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// A WebAssembly file: a component exporting `wasi:http/incoming-handler`,
    /// or with `executor = "wagi"` a WASI preview 1 command module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// How a `component` is run: `wasi-http` (the default) or `wagi` (request
    /// in environment variables and stdin, CGI-style response on stdout).
    #[serde(default)]
    pub executor: Executor,
    /// A program speaking the AWS Lambda Runtime API (with `runtime = "lambda"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The protocol of a `command`: `lambda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Longest an invocation may run, CPU-bound guests included.
    #[serde(default = "defaults::timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Most linear memory a wasm instance may grow to (`128MiB`).
    #[serde(default = "defaults::memory")]
    pub memory: u64,
    /// Invocations at once; more wait in a bounded queue.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: u32,
    /// Invocations that may wait for a free slot; beyond it the answer is 429.
    #[serde(default = "defaults::queue")]
    pub queue: u32,
    /// Longest an invocation waits in the queue before the answer is 503.
    #[serde(default = "defaults::queue_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub queue_timeout: Duration,
    /// Lambda processes kept running while idle.
    #[serde(default)]
    pub min_instances: u32,
    /// An idle Lambda process above `min_instances` stops after this long.
    #[serde(default = "defaults::idle_timeout", with = "duration_text")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Environment variables the function sees (and no others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where outbound HTTP may go, e.g. `["http://127.0.0.1:9000", "https://api.example.com"]`;
    /// `*` as the host or port allows any. Nothing is allowed by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Services the function may call as `http://SERVICE/...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Topics the function may publish to, through `http://gantry/v1/publish/TOPIC`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// The directory a Lambda process runs in (the manifest's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
}

impl Function {
    /// What kind of function this is.
    pub fn kind(&self) -> FunctionKind<'_> {
        match (&self.component, self.executor) {
            (Some(path), Executor::WasiHttp) => FunctionKind::Component { path },
            (Some(path), Executor::Wagi) => FunctionKind::Wagi { path },
            (None, _) => FunctionKind::Lambda {
                command: &self.command,
            },
        }
    }
}

/// The three ways a function runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FunctionKind<'a> {
    /// A wasi:http component, a fresh instance per request.
    Component { path: &'a PathBuf },
    /// A WASI preview 1 module run CGI-style per request.
    Wagi { path: &'a PathBuf },
    /// A pool of processes speaking the Lambda Runtime API.
    Lambda { command: &'a [String] },
}

/// How a wasm `component` is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Executor {
    #[default]
    WasiHttp,
    Wagi,
}

/// `[schedules.NAME]`: invoke a function on a cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// When: `sec min hour day-of-month month day-of-week` (a 5-field
    /// expression gets `0` seconds), e.g. `0 0 2 * * *` for 02:00 daily.
    pub cron: String,
    /// The time zone `cron` is read in (IANA name, e.g. `Europe/Paris`).
    #[serde(default = "defaults::timezone")]
    pub timezone: String,
    /// The function to invoke: `function:NAME`.
    pub to: String,
    /// What to do about runs missed while Gantry was down: `skip` (the
    /// default) or `catch_up` (run once now for all of them).
    #[serde(default)]
    pub missed: Missed,
    /// Whether a run may start while the previous one is still going.
    #[serde(default)]
    pub overlap: bool,
    /// JSON sent as the `data` of the schedule event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The policy for runs missed while Gantry was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    #[default]
    Skip,
    CatchUp,
}

/// `[buckets.NAME]`: objects uploaded through a `to = "bucket:NAME"` route.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// The largest object accepted (`10MiB`); a bigger upload gets 413.
    #[serde(default = "defaults::max_object_size")]
    pub max_size: u64,
    /// The topic an `object.created` event goes to for each stored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `webhook = { ... }` on a route: requests must carry a valid HMAC signature.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPolicy {
    /// `github` (`X-Hub-Signature-256: sha256=HEX`) or `stripe`
    /// (`Stripe-Signature: t=TS,v1=HEX` over `TS.BODY`).
    pub style: WebhookStyle,
    /// The name of the environment variable of the Gantry process holding the secret.
    pub secret_env: String,
    /// How old a signed timestamp may be (Stripe style), against replays.
    #[serde(default = "defaults::webhook_tolerance", with = "duration_text")]
    #[schemars(with = "String")]
    pub tolerance: Duration,
}

/// The signature scheme of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStyle {
    Github,
    Stripe,
}

pub(crate) mod defaults {
    use std::time::Duration;

    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn memory() -> u64 {
        128 * 1024 * 1024
    }
    pub fn max_concurrency() -> u32 {
        100
    }
    pub fn queue() -> u32 {
        100
    }
    pub fn queue_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn timezone() -> String {
        "UTC".into()
    }
    pub fn max_object_size() -> u64 {
        10 * 1024 * 1024
    }
    pub fn webhook_tolerance() -> Duration {
        Duration::from_secs(300)
    }
}
