//! The route's `max_body`: a body past it is refused with 413, before
//! anything reads it (a streamed body is cut off at the limit).

use std::ops::ControlFlow;

use super::{Exchange, Verdict};
use crate::attempts::limit_body;
use crate::problem::Problem;

pub(super) async fn apply(limit: u64, exchange: &mut Exchange<'_>) -> Verdict {
    let body = exchange.take_body();
    match limit_body(body, limit).await {
        Ok(body) => {
            exchange.body = body;
            ControlFlow::Continue(())
        }
        Err(None) => {
            let detail = format!(
                "route `{}` accepts request bodies of at most {limit} bytes",
                exchange.route.label
            );
            exchange.problem(Problem::BodyTooLarge, detail)
        }
        Err(Some(error)) => {
            let detail = format!("reading the request body failed: {error}");
            exchange.problem(Problem::BadRequestBody, detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Rig;
    use super::*;

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_and_others_pass_whole() {
        let rig =
            Rig::new("[[routes]]\nname = \"r\"\npath = \"/\"\nto = \"app\"\nmax_body = \"8B\"\n")
                .await;
        let mut small = rig.exchange("r", "POST", "/", &[], "12345678");
        assert!(apply(8, &mut small).await.is_continue());
        assert_eq!(rig.body_text(small).await, "12345678");
        let mut large = rig.exchange("r", "POST", "/", &[], "123456789");
        let ControlFlow::Break(response) = apply(8, &mut large).await else {
            panic!("a 9-byte body passed an 8-byte limit");
        };
        assert_eq!(response.status(), 413);
    }
}
