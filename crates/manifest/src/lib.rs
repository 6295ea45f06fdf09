//! The `gantry.toml` manifest: the one file that declares a Gantry system.
//!
//! This crate owns the plain configuration types ([`Manifest`], [`Platform`],
//! [`Service`], [`Route`]) and turns a manifest file into them. It never starts
//! anything: the runtime crates build their own values from these types.
//!
//! Loading happens in two passes so that a user sees every mistake at once:
//! 1. the TOML is parsed with `toml_edit`, which keeps the byte span of every key
//!    and value;
//! 2. a hand-written decoder walks that tree, collecting a [`Diagnostic`] (with a
//!    stable code, a `file:line:col` location and a hint) for each problem instead
//!    of stopping at the first, then cross-checks routes against services.
//!
//! Serde is not used for decoding because it stops at the first error; it is used
//! to serialize the types (admin API listings) and, through `schemars`, to print
//! the JSON Schema of the manifest (`gantry schema`).

mod auth;
mod cluster;
mod decode;
mod diagnostics;
mod events;
mod functions;
mod model;
mod pattern;
mod policy;
mod slo;
pub mod template;
mod validate;
mod workflows;

pub use auth::{ApiKeySource, AuthMode, JwtConfig, JwtKey};
pub use cluster::{Cluster, PostgresUrl};
pub use diagnostics::{Diagnostic, Diagnostics, ErrorCode};
pub use events::{
    Compatibility, DeliveryRetry, Endpoint, Outbox, StartAt, Subscription, SubscriptionSpans, Topic,
};
pub use functions::{
    bucket_of, function_of, function_target, Bucket, Executor, Function, FunctionKind, Missed,
    Schedule, WebhookPolicy, WebhookStyle,
};
pub use model::{
    CertFiles, EscapedSlashes, EventsSync, Manifest, Platform, Route, Service, ServiceKind, Target,
    TlsConfig, WeightedService,
};
pub use pattern::{PathMatch, PathPattern};
pub use policy::{
    CircuitBreakerPolicy, CorsPolicy, Deprecation, Fallback, GrpcCode, HashKey, HeaderEdits,
    IdempotencyPolicy, LoadBalancer, OutlierEjection, RateLimitKey, RateLimitPolicy, RetryOn,
    RetryPolicy, ShadowPolicy, UpstreamProtocol, WebSocketPolicy,
};
pub use slo::{Alerting, OtlpProtocol, Slo, SloTarget, Telemetry};
pub use workflows::{Action, Step, StepSpans, Workflow};

use std::path::{Path, PathBuf};

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source} (check the path given with -f)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid manifest.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates the manifest at `path`.
///
/// Relative paths inside it resolve against the directory that holds it.
pub fn load(path: &Path) -> Result<Manifest, LoadError> {
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    parse(&source, path, &base_dir).map_err(LoadError::Invalid)
}

/// Validates manifest text. `origin` names the file in error messages;
/// `base_dir` is where relative paths resolve.
pub fn parse(source: &str, origin: &Path, base_dir: &Path) -> Result<Manifest, Diagnostics> {
    let mut decoder = decode::Decoder::new(source, origin);
    let manifest = decoder.decode(base_dir);
    let mut diagnostics = decoder.finish();
    if let Some(manifest) = &manifest {
        validate::cross_check(manifest, source, &mut diagnostics);
    }
    match manifest {
        Some(manifest) if diagnostics.is_empty() => Ok(manifest),
        _ => Err(diagnostics),
    }
}

/// The JSON Schema of the manifest, as printed by `gantry schema`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).expect("a schema always serializes")
}
