//! Decoding of `[jwt]` and the route keys `auth`, `scopes`, `forward_claims`.

use std::path::Path;

use super::{resolve, suggest, Decoder, Section};
use crate::auth::{ApiKeySource, AuthMode, JwtConfig, JwtKey, ALGORITHMS};
use crate::diagnostics::ErrorCode;

pub(crate) const JWT_KEYS: &[&str] = &["issuer", "audience", "leeway", "jwks_url", "keys", "typ"];
const KEY_KEYS: &[&str] = &["kid", "algorithm", "secret_env", "secret", "pem_file"];

impl Decoder<'_> {
    pub(super) fn jwt(&mut self, s: &Section<'_>, base_dir: &Path) -> JwtConfig {
        self.unknown_keys(s, JWT_KEYS);
        let mut keys = Vec::new();
        if let Some((_, item)) = s.table.get_key_value("keys") {
            let tables: Vec<_> = match item {
                toml_edit::Item::ArrayOfTables(tables) => tables
                    .iter()
                    .map(|t| (t as &dyn toml_edit::TableLike, t.span()))
                    .collect(),
                toml_edit::Item::Value(toml_edit::Value::Array(array)) => array
                    .iter()
                    .filter_map(|v| {
                        v.as_inline_table()
                            .map(|t| (t as &dyn toml_edit::TableLike, t.span()))
                    })
                    .collect(),
                other => {
                    self.wrong_type(s, "keys", "a list of keys", other.type_name());
                    Vec::new()
                }
            };
            for (index, (table, span)) in tables.into_iter().enumerate() {
                let key = Section {
                    table,
                    name: format!("[[jwt.keys]] #{}", index + 1),
                    span,
                };
                if let Some(key) = self.jwt_key(&key, base_dir) {
                    keys.push(key);
                }
            }
        }
        let jwks_url = self.string(s, "jwks_url");
        if let Some(url) = &jwks_url {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                self.bad_value(
                    s,
                    "jwks_url",
                    format!("`{url}` is not an http:// or https:// URL"),
                    "e.g. `jwks_url = \"https://issuer.example/.well-known/jwks.json\"`",
                );
            }
        }
        if keys.is_empty() && jwks_url.is_none() {
            self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                "[jwt] has no keys".to_string(),
                Some("add `[[jwt.keys]]` entries or a `jwks_url`".into()),
            );
        }
        JwtConfig {
            issuer: self.string(s, "issuer"),
            audience: self.string(s, "audience"),
            leeway: self
                .duration(s, "leeway")
                .unwrap_or(std::time::Duration::from_secs(30)),
            jwks_url,
            keys,
            typ: self.string(s, "typ"),
        }
    }

    fn jwt_key(&mut self, s: &Section<'_>, base_dir: &Path) -> Option<JwtKey> {
        self.unknown_keys(s, KEY_KEYS);
        let algorithm = self.required_string(s, "algorithm", "e.g. `algorithm = \"RS256\"`")?;
        if !ALGORITHMS.contains(&algorithm.as_str()) {
            let hint = match suggest(&algorithm, ALGORITHMS) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("use one of {}", ALGORITHMS.join(", ")),
            };
            self.bad_value(
                s,
                "algorithm",
                format!("`{algorithm}` is not a supported JWT algorithm"),
                hint,
            );
            return None;
        }
        let shared = algorithm.starts_with("HS");
        let secret = self.string(s, "secret");
        let secret_env = self.string(s, "secret_env");
        let pem_file = self
            .string(s, "pem_file")
            .map(|p| resolve(base_dir, Path::new(&p)));
        match (shared, secret.is_some() || secret_env.is_some(), pem_file.is_some()) {
            (true, false, _) => self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                format!("{} ({algorithm}) needs `secret_env` (or `secret`)", s.name),
                Some("an HS key is a shared secret: `secret_env = \"JWT_SECRET\"` reads it from the environment".into()),
            ),
            (false, _, false) => self.sink.push(
                ErrorCode::MissingKey,
                s.span.clone(),
                format!("{} ({algorithm}) needs `pem_file`", s.name),
                Some("give the public key as a PEM file, e.g. `pem_file = \"keys/jwt.pub.pem\"`".into()),
            ),
            _ => {}
        }
        if let Some(path) = &pem_file {
            if !path.is_file() {
                self.bad_value(
                    s,
                    "pem_file",
                    format!("`{}` does not exist", path.display()),
                    "the path is relative to the manifest's directory",
                );
            }
        }
        Some(JwtKey {
            kid: self.string(s, "kid"),
            algorithm,
            secret_env,
            secret,
            pem_file,
        })
    }

    pub(super) fn api_key_source(&mut self, s: &Section<'_>) -> ApiKeySource {
        let Some(text) = self.string(s, "api_key_from") else {
            return ApiKeySource::default();
        };
        match text.split_once(':') {
            Some(("header", name)) if !name.trim().is_empty() => {
                ApiKeySource::Header(name.trim().to_ascii_lowercase())
            }
            Some(("query", name)) if !name.trim().is_empty() => {
                ApiKeySource::Query(name.trim().to_string())
            }
            _ => {
                self.bad_value(
                    s,
                    "api_key_from",
                    format!("`{text}` in {} is not a key source", s.name),
                    "write `header:x-api-key` or `query:api_key`",
                );
                ApiKeySource::default()
            }
        }
    }

    pub(super) fn auth_mode(&mut self, s: &Section<'_>) -> AuthMode {
        match self.string(s, "auth").as_deref() {
            None | Some("none") => AuthMode::None,
            Some("jwt") => AuthMode::Jwt,
            Some("api_key") => AuthMode::ApiKey,
            Some("mtls") => AuthMode::Mtls,
            Some(other) => {
                self.bad_value(
                    s,
                    "auth",
                    format!("unknown auth `{other}` in {}", s.name),
                    "use `jwt`, `api_key`, `mtls` or `none`",
                );
                AuthMode::None
            }
        }
    }
}
