//! `[jwt]`: how the gateway checks bearer tokens, and the per-route `auth`.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use crate::model::duration_text;

/// `[jwt]`: the keys and claims JSON Web Tokens are checked against. The
/// algorithms a token may use come from the keys, never from the token.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration_text")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// A JWKS document to load keys from (looked up by `kid`, refreshed when
    /// an unknown `kid` shows up, at most every 30 s). `https://` is verified against the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Keys written in the manifest (or files it names).
    #[serde(default)]
    pub keys: Vec<JwtKey>,
    /// Required `typ` header of tokens, e.g. `at+jwt` (RFC 9068), compared
    /// case-insensitively with or without `application/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// One verification key.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// Matched against the token's `kid`; a key without one serves tokens without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
    pub algorithm: String,
    /// The shared secret of an HS key, read from this environment variable
    /// (keeps the secret out of the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The shared secret written inline: for development only.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// A PEM public key file (RS, PS, ES, EdDSA), relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem_file: Option<PathBuf>,
}

/// A route's `auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may call the route.
    #[default]
    None,
    /// A valid JWT bearer token is required.
    Jwt,
    /// A valid API key (`gantry keys create`) is required.
    ApiKey,
    /// A client certificate verified against `[platform.tls] client_ca`.
    Mtls,
}

/// Where a route reads API keys from: `header:NAME` (default `header:x-api-key`) or `query:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeySource {
    Header(String),
    Query(String),
}

impl Default for ApiKeySource {
    fn default() -> Self {
        ApiKeySource::Header("x-api-key".into())
    }
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

pub(crate) const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];
