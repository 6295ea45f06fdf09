//! Webhook routes: a request must carry a valid HMAC-SHA256 signature of its
//! body, made with the route's secret, or it gets 401 before it reaches the
//! function or service.
//!
//! - GitHub style: `X-Hub-Signature-256: sha256=HEX` over the body. GitHub
//!   signs no timestamp, so replays are refused by remembering each
//!   `X-GitHub-Delivery` id for `tolerance`.
//! - Stripe style: `Stripe-Signature: t=UNIX,v1=HEX[,v1=HEX...]` over
//!   `UNIX.BODY`; a timestamp further than `tolerance` from now is refused.
//!
//! Signatures are compared in constant time (`Mac::verify_slice`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_manifest::{WebhookPolicy, WebhookStyle};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The largest webhook body read for verification when the route sets no `max_body`.
pub(crate) const DEFAULT_MAX_BODY: u64 = 5 * 1024 * 1024;

/// Checks the signatures of one route.
#[derive(Debug)]
pub(crate) struct WebhookVerifier {
    pub(crate) policy: WebhookPolicy,
    /// `None` when the variable is not set: every request is refused.
    secret: Option<Vec<u8>>,
    /// GitHub delivery ids seen, with when.
    seen: Mutex<HashMap<String, Instant>>,
}

impl WebhookVerifier {
    /// Reads the secret from the environment variable the policy names. A
    /// missing or empty one is logged, and the route then refuses every
    /// request (it fails closed) rather than keeping Gantry from starting.
    pub(crate) fn new(policy: &WebhookPolicy, route: &str) -> WebhookVerifier {
        let secret = std::env::var(&policy.secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes);
        if secret.is_none() {
            tracing::warn!(target: "gantry::gateway", route, variable = %policy.secret_env, "the webhook secret is not set in Gantry's environment; the route refuses every request until it is (then restart)");
        }
        WebhookVerifier {
            policy: policy.clone(),
            secret,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` when `body` is signed with the secret; `Err` says what is wrong.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), String> {
        if self.secret.is_none() {
            return Err(format!(
                "the route's secret (`{}`) is not set in Gantry's environment, so no signature can be checked",
                self.policy.secret_env
            ));
        }
        match self.policy.style {
            WebhookStyle::Github => self.github(headers, body),
            WebhookStyle::Stripe => self.stripe(headers, body, now),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        let key = self.secret.as_deref().unwrap_or_default();
        HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable_key())
    }

    fn github(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let header = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .ok_or("the request has no X-Hub-Signature-256 header")?;
        let hex_signature = header
            .strip_prefix("sha256=")
            .ok_or("X-Hub-Signature-256 must be `sha256=HEX`")?;
        let signature = hex::decode(hex_signature).map_err(|_| "X-Hub-Signature-256 is not hex")?;
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&signature)
            .map_err(|_| "the signature does not match the body".to_string())?;
        if let Some(delivery) = headers
            .get("x-github-delivery")
            .and_then(|v| v.to_str().ok())
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let tolerance = self.policy.tolerance;
            seen.retain(|_, at| at.elapsed() < tolerance);
            if seen.insert(delivery.to_string(), Instant::now()).is_some() {
                return Err(format!(
                    "delivery {delivery} was already received (a replay)"
                ));
            }
        }
        Ok(())
    }

    fn stripe(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), String> {
        let header = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or("the request has no Stripe-Signature header")?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
                Some(("v1", v)) => signatures.push(v),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or("Stripe-Signature has no valid `t=` timestamp")?;
        if signatures.is_empty() {
            return Err("Stripe-Signature has no `v1=` signature".into());
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let skew = Duration::from_secs(now.abs_diff(timestamp));
        if skew > self.policy.tolerance {
            return Err(format!(
                "the signed timestamp is {}s away from now, more than the tolerance of {}s (a replay?)",
                skew.as_secs(),
                self.policy.tolerance.as_secs()
            ));
        }
        let matches = signatures.iter().any(|candidate| {
            let Ok(signature) = hex::decode(candidate) else {
                return false;
            };
            let mut mac = self.mac();
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        });
        if matches {
            Ok(())
        } else {
            Err("no signature matches the body".into())
        }
    }
}

#[cold]
fn unreachable_key() -> HmacSha256 {
    // `Hmac::new_from_slice` accepts every key length; keep a defined path anyway.
    HmacSha256::new_from_slice(b"\0").expect("a one-byte key is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(style: WebhookStyle) -> WebhookVerifier {
        WebhookVerifier {
            policy: WebhookPolicy {
                style,
                secret_env: "UNUSED".into(),
                tolerance: Duration::from_secs(300),
            },
            secret: Some(b"whsec_test".to_vec()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn sign(payload: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(b"whsec_test").unwrap();
        mac.update(payload);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn github_signatures_and_replays() {
        let v = verifier(WebhookStyle::Github);
        let body = br#"{"action":"opened"}"#;
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            format!("sha256={}", sign(body)).parse().unwrap(),
        );
        headers.insert("x-github-delivery", "d-1".parse().unwrap());
        assert!(v.verify(&headers, body, SystemTime::now()).is_ok());
        let replay = v.verify(&headers, body, SystemTime::now()).unwrap_err();
        assert!(replay.contains("replay"), "{replay}");
        headers.insert("x-github-delivery", "d-2".parse().unwrap());
        assert!(v.verify(&headers, b"tampered", SystemTime::now()).is_err());
        assert!(v
            .verify(&HeaderMap::new(), body, SystemTime::now())
            .is_err());
    }

    #[test]
    fn stripe_signatures_and_timestamps() {
        let v = verifier(WebhookStyle::Stripe);
        let body = br#"{"type":"charge.succeeded"}"#;
        let now = SystemTime::now();
        let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let header = |t: u64, body: &[u8]| {
            let payload = [t.to_string().as_bytes(), b".", body].concat();
            let mut headers = HeaderMap::new();
            headers.insert(
                "stripe-signature",
                format!("t={t},v1=00,v1={}", sign(&payload))
                    .parse()
                    .unwrap(),
            );
            headers
        };
        assert!(v.verify(&header(t, body), body, now).is_ok());
        assert!(v.verify(&header(t, body), b"other", now).is_err());
        let old = v.verify(&header(t - 600, body), body, now).unwrap_err();
        assert!(old.contains("tolerance"), "{old}");
    }
}
