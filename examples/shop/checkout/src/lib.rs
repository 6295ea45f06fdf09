//! What the checkout services share: honouring `Idempotency-Key`, and
//! serving on `PORT`.
//!
//! The checkout saga sends every call with an `Idempotency-Key` that stays
//! the same across retries and replays (after a crash, say). A service that
//! remembers the answer it gave for a key, and gives it again instead of
//! acting twice, never charges a card twice. These services keep the
//! answers in memory, which is enough for the example; a real service keeps
//! them in its database, in the same transaction as the effect.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;

/// Answers already given, by idempotency key.
#[derive(Debug, Default)]
pub struct Answers(Mutex<HashMap<String, (StatusCode, Value)>>);

impl Answers {
    /// Runs `act` unless the request's key was seen; then the first answer
    /// comes back and nothing happens again.
    pub fn once(
        &self,
        headers: &HeaderMap,
        act: impl FnOnce() -> (StatusCode, Value),
    ) -> (StatusCode, Json<Value>) {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(key) = &key {
            if let Some((status, body)) = self.0.lock().expect("answers lock").get(key) {
                return (*status, Json(body.clone()));
            }
        }
        let (status, body) = act();
        // Only successes are remembered: a failed attempt may be retried.
        if let (Some(key), true) = (key, status.is_success()) {
            self.0
                .lock()
                .expect("answers lock")
                .insert(key, (status, body.clone()));
        }
        (status, Json(body))
    }
}

/// Serves `app` on 127.0.0.1:`PORT` until the process is stopped.
pub async fn serve(app: axum::Router, default_port: u16) {
    let port = std::env::var("PORT").unwrap_or_else(|_| default_port.to_string());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("cannot bind PORT");
    axum::serve(listener, app).await.expect("server failed");
}
