//! Gantry: publish through the platform API, receive the subscription's
//! deliveries on our own HTTP server.
//!
//! Each publisher keeps one HTTP/1.1 keep-alive connection to the platform
//! API and sends one `application/cloudevents+json` request at a time; the
//! 200 answer means the event is durable. Deliveries arrive in CloudEvents
//! binary mode: the body is the event's `data`, our `Payload`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::workload::{self, Payload, Plan, PublishError, Publisher, Receipt, Report, Tracker};

/// One publish request may take at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(api: &str, topic: &str, listen: &str, plan: Plan) -> Result<Report, String> {
    let authority = api_authority(api)?;
    let run = workload::run_id();
    let tracker = Arc::new(Tracker::new(&run, plan.count));

    // The subscriber must be listening before the first event is published.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} for deliveries: {e}"))?;
    let server = tokio::spawn(crate::server::serve(
        listener,
        tracker.clone(),
        |request, tracker| async move { deliver(request, &tracker).await },
    ));

    let path = format!("/v1/publish/{topic}");
    let publishers = (0..plan.concurrency)
        .map(|_| GantryPublisher {
            authority: authority.clone(),
            path: path.clone(),
            connection: None,
        })
        .collect();
    let report = workload::measure("gantry", publishers, &tracker, &run, &plan).await;
    server.abort();
    report
}

/// `http://HOST:PORT` -> `HOST:PORT`.
fn api_authority(api: &str) -> Result<String, String> {
    let uri: Uri = api
        .parse()
        .map_err(|e| format!("--api {api:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--api {api:?} must be an http:// URL"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--api {api:?} has no host"))?;
    if authority.port().is_none() {
        return Ok(format!("{}:80", authority.host()));
    }
    Ok(authority.to_string())
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

struct GantryPublisher {
    authority: String,
    path: String,
    /// The keep-alive connection, opened on first use and again after an error.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl GantryPublisher {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to gantry's API at {}: {e}", self.authority))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.authority))?;
        // The connection runs on its own task; it ends when `sender` is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request and reads the whole answer.
    async fn exchange(&mut self, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let mut sender = match self.connection.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| format!("connection to gantry closed: {e}"))?;
        let request = Request::post(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/cloudevents+json")
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("publish request failed: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("cannot read gantry's answer: {e}"))?
            .to_bytes();
        // Only a connection that completed an exchange is kept for the next one.
        self.connection = Some(sender);
        Ok((status, body))
    }
}

impl Publisher for GantryPublisher {
    async fn publish(&mut self, payload: &Payload) -> Result<(), PublishError> {
        // The id is unique per run, so deduplication only ever removes our
        // own retries.
        let event = json!({
            "specversion": "1.0",
            "id": format!("{}-{}", payload.run, payload.seq),
            "source": "/bench/events-load",
            "type": "bench.event",
            "datacontenttype": "application/json",
            "data": payload,
        });
        let body = Bytes::from(event.to_string());
        let (status, answer) =
            match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(body)).await {
                Ok(Ok(exchanged)) => exchanged,
                Ok(Err(error)) => return Err(PublishError::Retry(error)),
                Err(_) => {
                    // The connection may still carry the late answer: drop it.
                    self.connection = None;
                    return Err(PublishError::Retry(format!(
                        "gantry did not answer a publish within {REQUEST_TIMEOUT:?}"
                    )));
                }
            };
        let text = || String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
        match status {
            StatusCode::OK => Ok(()),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Err(
                PublishError::Retry(format!("gantry answered {s}: {}", text())),
            ),
            s => Err(PublishError::Fatal(format!(
                "gantry answered {s} to a publish to {}: {}",
                self.path,
                text()
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------

/// One delivery: 204 acknowledges it, 400 refuses a body that is not ours.
async fn deliver(request: Request<Incoming>, tracker: &Tracker) -> Response<Full<Bytes>> {
    let status = match request.into_body().collect().await {
        Ok(body) => match tracker.record(&body.to_bytes()) {
            Ok(Receipt::First | Receipt::Duplicate | Receipt::Foreign) => StatusCode::NO_CONTENT,
            Err(error) => {
                eprintln!("events-load: refused a delivery: {error}");
                StatusCode::BAD_REQUEST
            }
        },
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
