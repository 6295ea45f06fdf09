//! Headers only Gantry may set: those any route's `forward_claims` fills
//! from verified claims are removed from every request.

use std::ops::ControlFlow;

use super::{Exchange, Verdict};

pub(super) fn strip(exchange: &mut Exchange<'_>) -> Verdict {
    for header in &exchange.table.claim_headers {
        exchange.parts.headers.remove(header);
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Rig, JWT_SECTION};
    use super::*;

    #[tokio::test]
    async fn forged_claim_headers_are_removed_on_every_route() {
        let rig = Rig::new(
            &[
                JWT_SECTION,
                r#"
[[routes]]
name = "open"
path = "/open"
to = "app"

[[routes]]
name = "closed"
path = "/closed"
to = "app"
auth = "jwt"
forward_claims = { sub = "x-user-id" }
"#,
            ]
            .concat(),
        )
        .await;
        let mut exchange = rig.exchange("open", "GET", "/open", &[("x-user-id", "admin")], "");
        assert!(strip(&mut exchange).is_continue());
        assert!(!exchange.parts.headers.contains_key("x-user-id"));
    }
}
