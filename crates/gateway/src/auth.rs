//! Bearer-token authentication: JWTs checked against keys from the manifest,
//! PEM files or a JWKS document, then scopes and forwarded claims.
//!
//! The algorithm a token may use is the one of the key it names: the token's
//! own `alg` is only compared with it, so `alg: none` and RS/HS confusion are
//! refused. `exp` is required; `nbf`, `iss` and `aud` are checked with a small
//! leeway. A token whose header lists `crit` extensions is refused (RFC 7515
//! §4.1.11: Gantry understands none), and `[jwt] typ` pins the header's `typ`.
//!
//! A token that verified is remembered by its SHA-256 digest, with its
//! claims, until its `exp` and for at most [`VERIFIED_FOR`]: a client sends
//! the same token with every request, and decoding and checking it again is
//! most of what the edge costs (Envoy's `jwt_authn` caches for the same
//! reason). Only the exact bytes that verified hit the cache; scopes are
//! checked per route every time; a JWKS refresh forgets every verdict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gantry_manifest::{JwtConfig, JwtKey};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::body::GatewayBody;
use crate::problem::Problem;

/// An unknown `kid` refetches the JWKS at most this often.
const JWKS_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How long a verified token's verdict is kept at most (less when it
/// expires sooner).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Verdicts kept at most; when full, the cache starts over.
const VERIFIED_MAX: usize = 8_192;

/// A token that verified: its claims, and until when (Unix seconds) that
/// holds.
struct Verified {
    claims: Map<String, Value>,
    until: u64,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks tokens. Built once per route table from `[jwt]`.
pub(crate) struct JwtVerifier {
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    /// The required `typ`, lowercase and without `application/`.
    typ: Option<String>,
    /// Tokens that verified, by SHA-256 of the token.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

struct Jwks {
    url: String,
    keys: RwLock<Arc<Vec<Key>>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a request was not let through.
#[derive(Debug)]
pub(crate) enum Denied {
    /// No usable credentials: 401.
    Unauthenticated { reason: String, token_given: bool },
    /// A valid token without the scopes the route needs: 403.
    Forbidden { missing: Vec<String> },
}

impl Denied {
    /// Whether the client sent a token at all.
    pub(crate) fn token_given(&self) -> bool {
        match self {
            Denied::Unauthenticated { token_given, .. } => *token_given,
            Denied::Forbidden { .. } => true,
        }
    }
}

impl JwtVerifier {
    pub(crate) fn new(config: &JwtConfig) -> Result<JwtVerifier, String> {
        let keys = config.keys.iter().map(load_key).collect::<Result<_, _>>()?;
        if let Some(url) = &config.jwks_url {
            let loopback = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string))
                .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
            if url.starts_with("http://") && !loopback {
                tracing::warn!(target: "gantry::auth", %url, "the JWKS is fetched over plain http: anyone on the path can substitute signing keys; serve it over https");
            }
        }
        Ok(JwtVerifier {
            keys,
            jwks: config.jwks_url.clone().map(|url| Jwks {
                url,
                keys: RwLock::new(Arc::new(Vec::new())),
                last_fetch: Mutex::new(None),
            }),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            typ: config.typ.as_deref().map(media_type),
            verified: Mutex::default(),
        })
    }

    /// Checks the `Authorization` header and the route's scopes; returns the claims.
    pub(crate) async fn check(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
    ) -> Result<Map<String, Value>, Denied> {
        let unauthenticated = |reason: &str, token_given: bool| Denied::Unauthenticated {
            reason: reason.to_string(),
            token_given,
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthenticated(
                "this route needs a bearer token in the Authorization header",
                false,
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthenticated("the Authorization header must be `Bearer <token>`", true)
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.remembered(&digest) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_token(token).await?;
                self.remember(digest, &claims);
                claims
            }
        };
        let granted = granted_scopes(&claims);
        let missing: Vec<String> = scopes
            .iter()
            .filter(|s| !granted.contains(&s.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Denied::Forbidden { missing });
        }
        Ok(claims)
    }

    /// The claims of a token that verified before, if its verdict holds.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Map<String, Value>> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let found = verified.get(digest)?;
        (unix_now() < found.until).then(|| found.claims.clone())
    }

    /// Keeps a verified token's claims until its `exp`, for at most
    /// [`VERIFIED_FOR`].
    fn remember(&self, digest: [u8; 32], claims: &Map<String, Value>) {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let until = exp.min(unix_now() + VERIFIED_FOR.as_secs());
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(
            digest,
            Verified {
                claims: claims.clone(),
                until,
            },
        );
    }

    /// Everything about a token but the route's scopes: its form, header,
    /// key, signature and claims.
    async fn verify_token(&self, token: &str) -> Result<Map<String, Value>, Denied> {
        let unauthenticated = |reason: &str, token_given: bool| Denied::Unauthenticated {
            reason: reason.to_string(),
            token_given,
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthenticated("the token is not a well-formed JWT", true))?;
        if let Some(extensions) = critical_extensions(token) {
            return Err(Denied::Unauthenticated {
                reason: format!(
                    "the token's header marks extensions as critical (`crit`: {extensions}), which Gantry does not understand"
                ),
                token_given: true,
            });
        }
        if let Some(wanted) = &self.typ {
            if header.typ.as_deref().map(media_type).as_ref() != Some(wanted) {
                return Err(Denied::Unauthenticated {
                    reason: format!("the token's `typ` header must be `{wanted}`"),
                    token_given: true,
                });
            }
        }
        self.verify(token, &header).await
    }

    async fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Map<String, Value>, Denied> {
        let invalid = |reason: String| Denied::Unauthenticated {
            reason,
            token_given: true,
        };
        let mut jwks_keys = self.jwks_keys();
        let mut found = find_key(&self.keys, &jwks_keys, header);
        if found.is_none() && header.kid.is_some() {
            // A key may have been rotated in: refetch the JWKS (rate-limited).
            if self.refresh_jwks(false).await {
                jwks_keys = self.jwks_keys();
                found = find_key(&self.keys, &jwks_keys, header);
            }
        }
        let key = found.ok_or_else(|| invalid("the token's key (`kid`) is not known".into()))?;
        if key.algorithm != header.alg {
            return Err(invalid(format!(
                "the token's algorithm {:?} is not the one of its key",
                header.alg
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                invalid(
                    match error.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired",
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                        ErrorKind::InvalidAudience => "the token is not meant for this audience",
                        ErrorKind::InvalidSignature => "the token's signature does not verify",
                        ErrorKind::MissingRequiredClaim(_) => "the token has no `exp` claim",
                        _ => "the token is not valid",
                    }
                    .to_string(),
                )
            })
    }

    fn jwks_keys(&self) -> Arc<Vec<Key>> {
        match &self.jwks {
            Some(jwks) => jwks.keys.read().unwrap_or_else(|e| e.into_inner()).clone(),
            None => Arc::new(Vec::new()),
        }
    }

    /// Fetches the JWKS again, unless an unknown `kid` already caused a fetch
    /// recently (`initial` loads skip that limit). `true` when keys were loaded.
    pub(crate) async fn refresh_jwks(&self, initial: bool) -> bool {
        let Some(jwks) = &self.jwks else { return false };
        if !initial {
            let mut last = jwks.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < JWKS_REFRESH_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match fetch_jwks(&jwks.url).await {
            Ok(keys) => {
                tracing::info!(target: "gantry::auth", url = %jwks.url, keys = keys.len(), "loaded JWKS");
                *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                // A key may have gone: verdicts made with it no longer hold.
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                true
            }
            Err(error) => {
                tracing::warn!(target: "gantry::auth", url = %jwks.url, %error, "cannot load the JWKS");
                false
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `crit` list of a token's protected header, if it has one (RFC 7515
/// §4.1.11). Gantry implements no extension, so any `crit` — even an empty or
/// malformed one — means the token must be refused.
fn critical_extensions(token: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    // The names are the client's: only token characters are echoed (they
    // end up in a quoted `WWW-Authenticate` parameter).
    let printable = |name: &str| -> String {
        name.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.+".contains(*c))
            .take(40)
            .collect()
    };
    header.get("crit").map(|crit| match crit {
        Value::Array(names) if !names.is_empty() => names
            .iter()
            .take(5)
            .map(|n| n.as_str().map_or_else(|| "?".to_string(), printable))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "malformed".to_string(),
    })
}

/// A `typ` compared as RFC 7515 §4.1.9 says: case-insensitive, and
/// `application/` may be left out.
fn media_type(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

fn find_key<'k>(
    keys: &'k [Key],
    jwks: &'k [Key],
    header: &jsonwebtoken::Header,
) -> Option<&'k Key> {
    let all = || keys.iter().chain(jwks.iter());
    match &header.kid {
        Some(kid) => all().find(|k| k.kid.as_deref() == Some(kid.as_str())),
        None => all().find(|k| k.kid.is_none() && k.algorithm == header.alg),
    }
}

fn load_key(key: &JwtKey) -> Result<Key, String> {
    let algorithm: Algorithm = key
        .algorithm
        .parse()
        .map_err(|_| format!("unknown JWT algorithm {}", key.algorithm))?;
    let name = key.kid.as_deref().unwrap_or("(no kid)");
    let decoding = if key.algorithm.starts_with("HS") {
        let secret = match (&key.secret_env, &key.secret) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                format!("JWT key {name}: the environment variable {var} is not set")
            })?,
            (None, Some(secret)) => secret.clone(),
            (None, None) => return Err(format!("JWT key {name}: no secret")),
        };
        DecodingKey::from_secret(secret.as_bytes())
    } else {
        let path = key
            .pem_file
            .as_ref()
            .ok_or_else(|| format!("JWT key {name}: no pem_file"))?;
        let pem = std::fs::read(path)
            .map_err(|e| format!("JWT key {name}: cannot read {}: {e}", path.display()))?;
        let parsed = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        };
        parsed.map_err(|e| {
            format!(
                "JWT key {name}: {} is not a usable {} public key: {e}",
                path.display(),
                key.algorithm
            )
        })?
    };
    Ok(Key {
        kid: key.kid.clone(),
        algorithm,
        key: decoding,
    })
}

async fn fetch_jwks(url: &str) -> Result<Vec<Key>, String> {
    let request = http::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| format!("`{url}` is not a usable URL: {e}"))?;
    let (status, body) = gantry_services::outbound::Outbound::shared()
        .fetch(request, Duration::from_secs(5), 1024 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    let set: JwkSet =
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse().ok())?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key: DecodingKey::from_jwk(jwk).ok()?,
            })
        })
        .collect())
}

/// Scopes granted by a token: OAuth's space-separated `scope`, or `scp` /
/// `scopes` as a list or a string.
fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    ["scope", "scp", "scopes"]
        .iter()
        .filter_map(|name| claims.get(*name))
        .flat_map(|value| match value {
            Value::String(text) => text.split_whitespace().collect::<Vec<_>>(),
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The claims of a verified client certificate, for `forward_claims` and
/// `claim:NAME` rate-limit keys: `sub` (the subject DN), `cn`, `san` (every
/// subject alternative name) and `fingerprint` (SHA-256 of the certificate).
pub(crate) fn certificate_claims(identity: &gantry_tls::ClientIdentity) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("sub".into(), identity.subject.clone().into());
    if let Some(cn) = &identity.common_name {
        claims.insert("cn".into(), cn.clone().into());
    }
    claims.insert(
        "san".into(),
        Value::Array(identity.sans.iter().cloned().map(Value::from).collect()),
    );
    claims.insert(
        "fingerprint".into(),
        identity.fingerprint_sha256.clone().into(),
    );
    claims
}

/// Puts the chosen claims in request headers (names compiled once).
pub(crate) fn forward_claims(
    headers: &mut HeaderMap,
    claims: &Map<String, Value>,
    forward: &[(String, HeaderName)],
) {
    for (claim, header) in forward {
        let text = match claims.get(claim) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Some(Value::Null) | None => continue,
            Some(other) => other.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(header.clone(), value);
        }
    }
}

/// The 401/403 answer, with `WWW-Authenticate` (RFC 6750); never echoes the token.
pub(crate) fn deny(denied: Denied, path: &str, request_id: &HeaderValue) -> Response<GatewayBody> {
    match denied {
        Denied::Unauthenticated {
            reason,
            token_given,
        } => {
            let challenge = if token_given {
                format!("Bearer realm=\"gantry\", error=\"invalid_token\", error_description=\"{reason}\"")
            } else {
                "Bearer realm=\"gantry\"".to_string()
            };
            let mut response = Problem::Unauthenticated.respond(reason, path, request_id);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            response
        }
        Denied::Forbidden { missing } => {
            let detail = format!(
                "the token lacks the scope(s) this route needs: {}",
                missing.join(" ")
            );
            let mut response = Problem::Forbidden.respond(detail, path, request_id);
            let challenge = format!(
                "Bearer realm=\"gantry\", error=\"insufficient_scope\", scope=\"{}\"",
                missing.join(" ")
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}
