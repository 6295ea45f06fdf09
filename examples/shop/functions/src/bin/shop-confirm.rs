//! Sends the order confirmation when an order is placed: subscribed to
//! `order.placed`, it receives each event's CloudEvent JSON as a Lambda event.
//! Built on the official `lambda_runtime` crate; Gantry runs it as a Lambda
//! function (scaled to zero when idle).

// A function's stdout is its log (Gantry tags each line with the request).
#![allow(clippy::print_stdout)]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn confirm(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, context) = event.into_parts();
    let order = &event["data"]["order_id"];
    if order.is_null() {
        return Err(format!("event {} has no data.order_id", event["id"]).into());
    }
    let to = event["data"]["email"].as_str().unwrap_or("the customer");
    println!(
        "order {order}: confirmation sent to {to} (event {}, request {})",
        event["id"], context.request_id
    );
    Ok(json!({ "confirmed": order }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(confirm)).await
}
