//! Sagas: three-step workflow runs through Gantry's saga engine, and the same
//! three calls made directly as the floor.
//!
//! - `events-load saga`: starts runs of a workflow on Gantry's platform API
//!   (`POST /v1/workflows/{name}` with `{"id", "input": {"sent_ns"}}`, 201
//!   once the run is journaled) and serves the steps' calls on a small HTTP
//!   server of its own (`--listen`: `POST /reserve`, `/charge`, `/ship`,
//!   answered 200 with `{"id": ...}`). A run counts as completed when its
//!   `/ship` call arrives; start to finish = the start request sent -> `/ship`
//!   received. With `--admin`, once every `/ship` arrived, it also waits until
//!   the journal marks every run completed (the engine journals the last
//!   step's result after `/ship` answers).
//! - `events-load direct`: each starter makes the same three POSTs (same
//!   bodies, an `Idempotency-Key` each) one after the other to the same kind
//!   of server, with no Gantry in between; start to finish = the first
//!   request sent -> the third answered, and the "start ack" is the same
//!   moment (a direct caller is busy until its last call answers).
//!
//! Both use the publishers' loop of `workload` (one request outstanding per
//! starter, `--concurrency` starters, optional fixed rate) and its tracker;
//! the run id is `{bench run}-{seq}`, so the sink can tell which run a call
//! belongs to. The result is one line of JSON on stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::workload::{self, Payload, Plan, PublishError, Publisher, Receipt, Report, Tracker};

/// One request may take at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The steps of the workflow, in order: the sink's paths.
const STEPS: [&str; 3] = ["reserve", "charge", "ship"];
/// How often the journal is asked whether every run is marked completed.
const SETTLE_POLL: Duration = Duration::from_millis(10);
/// The journal gets at most this long, after the last `/ship`, to mark
/// every run completed (within `--timeout` too).
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Gantry: start runs on the platform API, serve their calls.
pub async fn run_gantry(
    api: &str,
    admin: Option<&str>,
    workflow: &str,
    listen: &str,
    plan: Plan,
) -> Result<SagaReport, String> {
    let authorities = api
        .split(',')
        .map(|api| host_port(api.trim(), "--api"))
        .collect::<Result<Vec<_>, _>>()?;
    let admin = admin.map(|a| host_port(a, "--admin")).transpose()?;
    let run = workload::run_id();
    let tracker = Arc::new(Tracker::new(&run, plan.count));
    let sink = Arc::new(Sink::new(Some(tracker.clone())));

    // The steps' calls must find the sink listening.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} for the steps' calls: {e}"))?;
    let server = tokio::spawn(crate::server::serve(
        listener,
        sink.clone(),
        |request, sink| async move { answer(request, &sink).await },
    ));

    let path = format!("/v1/workflows/{workflow}");
    let starters = (0..plan.concurrency)
        .map(|i| GantryStarter {
            connection: Connection::new(
                &authorities[i % authorities.len()],
                "gantry's platform API",
            ),
            path: path.clone(),
        })
        .collect();
    let started = Instant::now();
    let report = workload::measure("gantry", starters, &tracker, &run, &plan).await;
    let journal = match (&report, admin) {
        (Ok(report), Some(admin)) if report.complete => {
            let remaining = plan.timeout.saturating_sub(started.elapsed());
            Some(settle(&admin, workflow, plan.count, remaining.min(SETTLE_LIMIT)).await)
        }
        _ => None,
    };
    server.abort();
    Ok(SagaReport {
        base: report?,
        calls: sink.calls(),
        refused: sink.refused.load(Ordering::Relaxed),
        journal,
    })
}

/// The floor: the same three calls, made directly to our own sink.
pub async fn run_direct(listen: &str, plan: Plan) -> Result<SagaReport, String> {
    let run = workload::run_id();
    let tracker = Arc::new(Tracker::new(&run, plan.count));
    // Completion is recorded by the caller when `/ship` answers, not by the sink.
    let sink = Arc::new(Sink::new(None));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} for the calls: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?
        .to_string();
    let server = tokio::spawn(crate::server::serve(
        listener,
        sink.clone(),
        |request, sink| async move { answer(request, &sink).await },
    ));

    let starters = (0..plan.concurrency)
        .map(|_| DirectCaller {
            connection: Connection::new(&address, "the sink"),
            tracker: tracker.clone(),
        })
        .collect();
    let report = workload::measure("direct", starters, &tracker, &run, &plan).await;
    server.abort();
    Ok(SagaReport {
        base: report?,
        calls: sink.calls(),
        refused: sink.refused.load(Ordering::Relaxed),
        journal: None,
    })
}

/// `http://HOST:PORT` -> `HOST:PORT`.
fn host_port(url: &str, flag: &str) -> Result<String, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{flag} {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{flag} {url:?} must be an http:// URL"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{flag} {url:?} has no host"))?;
    if authority.port().is_none() {
        return Ok(format!("{}:80", authority.host()));
    }
    Ok(authority.to_string())
}

/// The workflow run id of message `seq` of bench run `run`.
fn run_id(run: &str, seq: u64) -> String {
    format!("{run}-{seq}")
}

/// `{bench run}-{seq}` -> (bench run, seq).
fn split_run_id(id: &str) -> Option<(&str, u64)> {
    let (run, seq) = id.rsplit_once('-')?;
    Some((run, seq.parse().ok()?))
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// One HTTP/1.1 keep-alive connection, one request at a time.
struct Connection {
    authority: String,
    what: &'static str,
    /// Opened on first use and again after an error.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    fn new(authority: &str, what: &'static str) -> Connection {
        Connection {
            authority: authority.to_string(),
            what,
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to {} at {}: {e}", self.what, self.authority))?;
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

    /// Sends one request and reads the whole answer, within `REQUEST_TIMEOUT`.
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange_once(method, path, headers, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                // The connection may still carry the late answer: drop it.
                self.sender = None;
                Err(format!(
                    "{} did not answer {path} within {REQUEST_TIMEOUT:?}",
                    self.what
                ))
            }
        }
    }

    async fn exchange_once(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| format!("connection to {} closed: {e}", self.what))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority.as_str());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.what))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer of {}: {e}", self.what))?
            .to_bytes();
        // Only a connection that completed an exchange is kept for the next one.
        self.sender = Some(sender);
        Ok((status, body))
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Starts one run per "publish": 201 once it is journaled (200 when a retry
/// finds the run already started).
struct GantryStarter {
    connection: Connection,
    path: String,
}

impl Publisher for GantryStarter {
    async fn publish(&mut self, payload: &Payload) -> Result<(), PublishError> {
        let body = json!({
            "id": run_id(&payload.run, payload.seq),
            "input": { "sent_ns": payload.sent_ns },
        });
        let (status, answer) = self
            .connection
            .exchange(
                Method::POST,
                &self.path,
                &[],
                Some(Bytes::from(body.to_string())),
            )
            .await
            .map_err(PublishError::Retry)?;
        match status {
            StatusCode::CREATED | StatusCode::OK => Ok(()),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Err(
                PublishError::Retry(format!("gantry answered {s}: {}", excerpt(&answer))),
            ),
            s => Err(PublishError::Fatal(format!(
                "gantry answered {s} to a start at {}: {}",
                self.path,
                excerpt(&answer)
            ))),
        }
    }
}

/// Makes a run's three calls itself, one after the other.
struct DirectCaller {
    connection: Connection,
    tracker: Arc<Tracker>,
}

impl Publisher for DirectCaller {
    async fn publish(&mut self, payload: &Payload) -> Result<(), PublishError> {
        let id = run_id(&payload.run, payload.seq);
        for step in STEPS {
            // The bodies the workflow's templates render.
            let body = if step == "charge" {
                json!({ "run": id })
            } else {
                json!({ "run": id, "sent": payload.sent_ns })
            };
            let key = format!("{id}/{step}");
            let (status, answer) = self
                .connection
                .exchange(
                    Method::POST,
                    &format!("/{step}"),
                    &[("idempotency-key", key.as_str())],
                    Some(Bytes::from(body.to_string())),
                )
                .await
                .map_err(PublishError::Retry)?;
            if !status.is_success() {
                return Err(PublishError::Fatal(format!(
                    "the sink answered {status} to /{step}: {}",
                    excerpt(&answer)
                )));
            }
        }
        // The third call answered: the run is complete.
        self.tracker
            .record_payload(payload)
            .map_err(PublishError::Fatal)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The sink: the service the steps call
// ---------------------------------------------------------------------------

/// What the sink counts; with a tracker, `/ship` completes a run.
struct Sink {
    tracker: Option<Arc<Tracker>>,
    calls: [AtomicU64; 3],
    /// Requests answered 4xx (unknown path, a body that is not ours).
    refused: AtomicU64,
}

/// A step call's body, as the workflow renders it.
#[derive(Debug, Deserialize)]
struct StepBody {
    run: String,
    sent: Option<u64>,
}

impl Sink {
    fn new(tracker: Option<Arc<Tracker>>) -> Sink {
        Sink {
            tracker,
            calls: Default::default(),
            refused: AtomicU64::new(0),
        }
    }

    fn calls(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.calls[i].load(Ordering::Relaxed))
    }

    /// Handles one call: (status, JSON body).
    fn handle(&self, path: &str, body: &[u8]) -> (StatusCode, String) {
        let Some(step) = STEPS.iter().position(|s| path == format!("/{s}")) else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "unknown step"}).to_string(),
            );
        };
        let parsed: StepBody = match serde_json::from_slice(body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("not a step body: {e}")}).to_string(),
                )
            }
        };
        self.calls[step].fetch_add(1, Ordering::Relaxed);
        if STEPS[step] == "ship" {
            if let Some(tracker) = &self.tracker {
                let (Some((run, seq)), Some(sent_ns)) = (split_run_id(&parsed.run), parsed.sent)
                else {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"error": "`run` must be RUN-SEQ and `sent` a number"}).to_string(),
                    );
                };
                let payload = Payload {
                    run: run.to_string(),
                    seq,
                    sent_ns,
                };
                match tracker.record_payload(&payload) {
                    Ok(Receipt::First | Receipt::Duplicate | Receipt::Foreign) => {}
                    Err(error) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            json!({ "error": error }).to_string(),
                        )
                    }
                }
            }
        }
        (
            StatusCode::OK,
            json!({ "id": format!("{}-{}", STEPS[step], parsed.run) }).to_string(),
        )
    }
}

async fn answer(request: Request<Incoming>, sink: &Sink) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let (status, body) = if request.method() != Method::POST {
        (StatusCode::METHOD_NOT_ALLOWED, String::new())
    } else {
        match request.into_body().collect().await {
            Ok(body) => sink.handle(&path, &body.to_bytes()),
            Err(_) => (StatusCode::BAD_REQUEST, String::new()),
        }
    };
    if status.is_client_error() && sink.refused.fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("events-load: refused a call to {path}: {status} {body}");
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

// ---------------------------------------------------------------------------
// The journal's view (Gantry's admin API)
// ---------------------------------------------------------------------------

/// What the journal said after the last `/ship`.
#[derive(Debug)]
pub struct Journal {
    /// From the moment every `/ship` had arrived to the first answer with no
    /// run of the workflow left `running` (polled every `SETTLE_POLL`).
    pub settle_ms: Option<f64>,
    /// Runs of the workflow in a state other than `completed` at the end.
    pub not_completed: Option<u64>,
    pub error: Option<String>,
}

/// Waits until no run of `workflow` is `running`, then counts the runs in
/// any state but `completed`.
async fn settle(admin: &str, workflow: &str, count: u64, limit: Duration) -> Journal {
    let mut connection = Connection::new(admin, "gantry's admin API");
    let started = Instant::now();
    let mut journal = Journal {
        settle_ms: None,
        not_completed: None,
        error: None,
    };
    loop {
        match runs(&mut connection, workflow, "running", 1).await {
            Ok(0) => {
                journal.settle_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            Ok(_) if started.elapsed() < limit => tokio::time::sleep(SETTLE_POLL).await,
            Ok(_) => {
                journal.error = Some(format!("runs still `running` after {limit:?}"));
                break;
            }
            Err(error) => {
                journal.error = Some(error);
                return journal;
            }
        }
    }
    let mut not_completed = 0;
    for state in [
        "running",
        "waiting",
        "compensating",
        "compensated",
        "failed",
        "needs_attention",
        "cancelled",
    ] {
        match runs(&mut connection, workflow, state, count).await {
            Ok(n) => not_completed += n,
            Err(error) => {
                journal.error = Some(error);
                return journal;
            }
        }
    }
    journal.not_completed = Some(not_completed);
    journal
}

/// How many runs of `workflow` are in `state` (at most `limit`).
async fn runs(
    connection: &mut Connection,
    workflow: &str,
    state: &str,
    limit: u64,
) -> Result<u64, String> {
    let path = format!("/v1/workflows?state={state}&workflow={workflow}&limit={limit}");
    let (status, body) = connection.exchange(Method::GET, &path, &[], None).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "{path}: gantry answered {status}: {}",
            excerpt(&body)
        ));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| format!("{path}: not JSON: {e}"))?;
    value["runs"]
        .as_array()
        .map(|runs| runs.len() as u64)
        .ok_or_else(|| format!("{path}: no `runs` list"))
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// The figures of one run, in saga words.
#[derive(Debug)]
pub struct SagaReport {
    pub base: Report,
    /// Calls the sink answered, per step.
    pub calls: [u64; 3],
    pub refused: u64,
    pub journal: Option<Journal>,
}

impl SagaReport {
    pub fn to_json(&self) -> String {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let b = &self.base;
        let mut value = json!({
            "system": b.system,
            "count": b.count,
            "concurrency": b.concurrency,
            "rate": b.rate,
            "complete": b.complete,
            "completed": b.delivered,
            "incomplete": b.count - b.delivered.min(b.count),
            "started_per_s": round(b.publish_per_s),
            "completed_per_s": round(b.deliver_per_s),
            "start_ack_p50_ms": round(b.ack_p50_ms),
            "start_ack_p99_ms": round(b.ack_p99_ms),
            "e2e_p50_ms": round(b.e2e_p50_ms),
            "e2e_p99_ms": round(b.e2e_p99_ms),
            "e2e_max_ms": round(b.e2e_max_ms),
            "duplicate_completions": b.duplicates,
            "foreign": b.foreign,
            "start_failed": b.publish_failed,
            "start_errors": b.publish_errors,
            "first_error": b.first_error,
            "max_lateness_ms": round(b.max_lateness_ms),
            "calls": { "reserve": self.calls[0], "charge": self.calls[1], "ship": self.calls[2] },
            "refused": self.refused,
        });
        if let Some(journal) = &self.journal {
            value["journal_settle_ms"] = json!(journal.settle_ms.map(round));
            value["journal_not_completed"] = json!(journal.not_completed);
            value["journal_error"] = json!(journal.error);
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_split_back() {
        let id = run_id("123-456", 7);
        assert_eq!(split_run_id(&id), Some(("123-456", 7)));
        assert_eq!(split_run_id("nodash"), None);
        assert_eq!(split_run_id("a-b"), None);
    }

    #[test]
    fn sink_completes_runs_on_ship() {
        let tracker = Arc::new(Tracker::new("r-1", 2));
        let sink = Sink::new(Some(tracker.clone()));
        let (status, _) = sink.handle("/reserve", br#"{"run": "r-1-0", "sent": 1}"#);
        assert_eq!(status, StatusCode::OK);
        let (status, _) = sink.handle("/charge", br#"{"run": "r-1-0"}"#);
        assert_eq!(status, StatusCode::OK);
        assert!(!tracker.is_complete());
        let (status, _) = sink.handle("/ship", br#"{"run": "r-1-0", "sent": 1}"#);
        assert_eq!(status, StatusCode::OK);
        let (status, _) = sink.handle("/ship", br#"{"run": "r-1-1", "sent": 1}"#);
        assert_eq!(status, StatusCode::OK);
        assert!(tracker.is_complete());
        assert_eq!(sink.calls(), [1, 1, 2]);
        assert_eq!(sink.handle("/other", b"{}").0, StatusCode::NOT_FOUND);
        assert_eq!(sink.handle("/ship", b"nope").0, StatusCode::BAD_REQUEST);
        assert_eq!(
            sink.handle("/ship", br#"{"run": "x"}"#).0,
            StatusCode::BAD_REQUEST
        );
    }
}
