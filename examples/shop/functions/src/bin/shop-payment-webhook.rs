//! The payment provider's webhook: Gantry checks the `Stripe-Signature`
//! before the request gets here, so this function only sees genuine events,
//! as an API Gateway HTTP API (payload format 2.0) event.

// A function's stdout is its log (Gantry tags each line with the request).
#![allow(clippy::print_stdout)]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn webhook(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, _) = event.into_parts();
    let body: Value = serde_json::from_str(event["body"].as_str().unwrap_or("{}"))?;
    let kind = body["type"].as_str().unwrap_or("unknown");
    let order = &body["data"]["object"]["metadata"]["order_id"];
    println!("payment provider says {kind} for order {order}");
    Ok(json!({
        "statusCode": 200,
        "headers": { "content-type": "application/json" },
        "body": json!({ "received": kind, "order_id": order }).to_string(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(webhook)).await
}
