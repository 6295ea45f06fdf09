//! Indexes product photos as they are uploaded: subscribed to the `uploads`
//! topic, it receives each `object.created` CloudEvent of the `photos` bucket.

// A function's stdout is its log (Gantry tags each line with the request).
#![allow(clippy::print_stdout)]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn index(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, _) = event.into_parts();
    let object = &event["data"];
    let key = object["key"]
        .as_str()
        .ok_or("not an object.created event")?;
    println!(
        "indexed photo {key}: {} bytes of {}, sha256 {}",
        object["size"], object["content_type"], object["sha256"]
    );
    Ok(json!({ "indexed": key }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(index)).await
}
