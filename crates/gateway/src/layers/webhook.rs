//! Webhooks: the body must be signed with the route's secret
//! (`crate::webhook` verifies the signature schemes).

use std::ops::ControlFlow;

use super::{Exchange, Verdict};
use crate::problem::Problem;
use crate::upstream::RequestBody;
use crate::webhook::WebhookVerifier;

pub(super) async fn apply(verifier: &WebhookVerifier, exchange: &mut Exchange<'_>) -> Verdict {
    let limit = exchange
        .route
        .shaping
        .max_body
        .unwrap_or(crate::webhook::DEFAULT_MAX_BODY);
    let body = exchange.take_body();
    let bytes = match crate::attempts::read_body(body, limit).await {
        Ok(bytes) => bytes,
        Err(why) => return exchange.problem(Problem::BadRequestBody, why),
    };
    if let Err(why) = verifier.verify(
        &exchange.parts.headers,
        &bytes,
        std::time::SystemTime::now(),
    ) {
        tracing::warn!(target: "gantry::gateway", route = %exchange.route.label, request_id = ?exchange.request_id, "webhook refused: {why}");
        let detail = format!("webhook signature check failed: {why}");
        return exchange.problem(Problem::Unauthenticated, detail);
    }
    exchange.body = RequestBody::Buffered(Some(bytes));
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::Rig;
    use super::*;

    #[tokio::test]
    async fn only_signed_bodies_pass() {
        std::env::set_var("GANTRY_LAYER_TEST_WEBHOOK", "s3cret");
        let rig = Rig::new(
            "[[routes]]\nname = \"hook\"\npath = \"/hook\"\nto = \"app\"\nwebhook = { style = \"github\", secret_env = \"GANTRY_LAYER_TEST_WEBHOOK\" }\n",
        )
        .await;
        let verifier = rig.route("hook").webhook.clone().unwrap();
        let body = r#"{"ok":true}"#;
        let mut unsigned = rig.exchange("hook", "POST", "/hook", &[], body);
        let ControlFlow::Break(refused) = apply(&verifier, &mut unsigned).await else {
            panic!("an unsigned webhook passed");
        };
        assert_eq!(refused.status(), 401);
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut signed = rig.exchange(
            "hook",
            "POST",
            "/hook",
            &[
                ("x-hub-signature-256", &signature),
                ("x-github-delivery", "d-1"),
            ],
            body,
        );
        assert!(apply(&verifier, &mut signed).await.is_continue());
        assert_eq!(rig.body_text(signed).await, body);
    }
}
