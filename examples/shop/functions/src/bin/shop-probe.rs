//! A Lambda function for Gantry's tests of the Lambda Runtime API, on the
//! official `lambda_runtime` crate: it answers HTTP events by path.
//!
//! `/sleep` never answers in time, `/crash` exits the process, `/error`
//! returns an error, `/pid` says which process served it; anything else is
//! echoed. A CloudEvent is answered with its type and id.

// A function's stdout is its log (Gantry tags each line with the request).
#![allow(clippy::print_stdout)]

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn probe(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (event, context) = event.into_parts();
    if event.get("specversion").is_some() {
        println!("event {} {}", event["type"], event["id"]);
        return Ok(json!({ "got": event["type"], "id": event["id"], "data": event["data"] }));
    }
    let path = event["rawPath"].as_str().unwrap_or("/");
    match path {
        "/sleep" => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            Ok(json!({ "statusCode": 200, "body": "woke up" }))
        }
        "/crash" => std::process::exit(3),
        "/error" => Err("the probe was asked to fail".into()),
        "/pid" => Ok(json!({ "statusCode": 200, "body": std::process::id().to_string() })),
        _ => Ok(json!({
            "statusCode": 200,
            "headers": { "content-type": "application/json", "x-probe": "1" },
            "cookies": ["probe=1"],
            "body": json!({
                "path": path,
                "method": event["requestContext"]["http"]["method"],
                "query": event["queryStringParameters"],
                "body": event["body"],
                "request_id": context.request_id,
                "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
                "home_visible": std::env::var("HOME").is_ok(),
            }).to_string(),
        })),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(probe)).await
}
