//! gRPC through the gateway, with a real client and server (Python's grpcio,
//! `tools/grpc_peer.py`): HTTP/2 to the upstream (h2c), unary and streaming
//! calls with trailers, over h2c and over TLS with ALPN at the edge; the
//! call's deadline shortened on its way; Gantry's refusals as gRPC statuses;
//! retries on UNAVAILABLE; the gRPC health checking protocol.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{client, eventually, free_port, Gantry};

const SECRET_KEY: &str = "grpc-test-secret";

/// The Python with grpcio, from a venv under `target/guests` (made once).
fn python() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools");
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guests");
    let output = Command::new(tools.join("grpc-venv.sh"))
        .arg(&guests)
        .output()
        .expect("run grpc-venv.sh");
    assert!(
        output.status.success(),
        "installing grpcio failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/grpc_peer.py")
}

/// A grpcio server on a free port, stopped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(python: &Path) -> Server {
        let port = free_port();
        let mut child = Command::new(python)
            .arg(peer_script())
            .args(["server", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gRPC server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the gRPC server did not start");
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call with grpcio's client; its outcome as `{code, details, responses, trailing}`.
fn call(python: &Path, target: &str, method: &str, args: &[&str]) -> Value {
    let output = Command::new(python)
        .arg(peer_script())
        .args(["call", target, method])
        .args(args)
        .output()
        .expect("run the gRPC client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "the gRPC client printed no outcome: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn token() -> String {
    support::hs256_token(SECRET_KEY, "grpc-client")
}

fn manifest(server: u16, platform_extra: &str) -> String {
    let jwt = support::jwt_section(SECRET_KEY);
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false
{platform_extra}

{jwt}
[services.echo]
urls = ["http://127.0.0.1:{server}"]
protocol = "h2c"
health = "grpc"
health_interval = "1s"

# The same server behind a breaker that opens after two failures.
[services.fragile]
urls = ["http://127.0.0.1:{server}"]
protocol = "h2c"
circuit_breaker = {{ consecutive_failures = 2, open_for = "1m" }}

[[routes]]
path = "/test.Echo/*"
headers = {{ x-tenant = "secure" }}
to = "echo"
auth = "jwt"

[[routes]]
path = "/test.Echo/Unary"
to = "echo"
timeout = "2s"

[[routes]]
path = "/test.Echo/Slow"
to = "echo"
timeout = "300ms"

[[routes]]
path = "/test.Echo/Flaky"
to = "echo"
retry = {{ attempts = 3, on = ["unavailable"], backoff = "10ms" }}

[[routes]]
path = "/test.Echo/Fail"
to = "fragile"

[[routes]]
path = "/test.Echo/*"
to = "echo"
"#
    )
}

#[tokio::test]
async fn grpc_calls_pass_through_with_their_deadlines_statuses_and_retries() {
    let python = python();
    let server = Server::start(&python);
    let gantry = Gantry::start(&manifest(server.port, "")).await;
    let target = format!("127.0.0.1:{}", gantry.gateway);
    let (py, to, services_url) = (&python, &target, &gantry.admin_url("/v1/services"));

    // Gantry is ready only once echo passed its gRPC health check.
    eventually(
        "echo passes its gRPC health check",
        Duration::from_secs(10),
        || async move {
            let services: Value = client()
                .get(services_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            services.to_string().contains("\"healthy\":true")
                && call(py, to, "Unary", &["--data", "probe"])["code"] == "OK"
        },
    )
    .await;

    // Unary, with trailers from the server and the deadline shortened to the
    // route's 2 s although the client allowed 30 s.
    let unary = call(
        &python,
        &target,
        "Unary",
        &["--data", "ping", "--timeout", "30"],
    );
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["responses"], json!(["ping"]));
    let left: u64 = unary["trailing"]["time-left-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        left <= 2000 && left > 0,
        "the upstream saw {left} ms left: {unary}"
    );

    // Streaming both ways.
    let stream = call(
        &python,
        &target,
        "ServerStream",
        &["--data", "s", "--metadata", "count=4"],
    );
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["responses"], json!(["s:0", "s:1", "s:2", "s:3"]));
    let upload = call(
        &python,
        &target,
        "ClientStream",
        &["--data", "c", "--count", "3"],
    );
    assert_eq!(upload["code"], "OK", "{upload}");
    assert_eq!(upload["responses"], json!(["c:0c:1c:2"]));

    // The route's 300 ms deadline expires first (the client allowed 10 s and
    // the server answers after 2 s): DEADLINE_EXCEEDED, from Gantry or from
    // the server, whichever notices first, as both got the shortened deadline.
    let slow = call(&python, &target, "Slow", &["--timeout", "10"]);
    assert_eq!(slow["code"], "DEADLINE_EXCEEDED", "{slow}");

    // Auth refused at the edge: UNAUTHENTICATED, with a token OK.
    let refused = call(
        &python,
        &target,
        "Unary",
        &["--metadata", "x-tenant=secure"],
    );
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    let bearer = format!("authorization=Bearer {}", token());
    let admitted = call(
        &python,
        &target,
        "Unary",
        &["--metadata", "x-tenant=secure", "--metadata", &bearer],
    );
    assert_eq!(admitted["code"], "OK", "{admitted}");

    // UNAVAILABLE on the first try is retried; the client sees one success.
    let flaky = call(&python, &target, "Flaky", &["--data", "flaky-1"]);
    assert_eq!(flaky["code"], "OK", "{flaky}");
    assert_eq!(flaky["trailing"]["attempts-seen"], "2");

    // Two UNAVAILABLE answers open the breaker; then Gantry answers UNAVAILABLE
    // itself, without calling the server.
    for _ in 0..2 {
        let failed = call(&python, &target, "Fail", &[]);
        assert_eq!(failed["code"], "UNAVAILABLE", "{failed}");
        assert_eq!(failed["details"], "always fails");
    }
    let open = call(&python, &target, "Fail", &[]);
    assert_eq!(open["code"], "UNAVAILABLE", "{open}");
    assert!(
        open["details"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{open}"
    );

    // A method no route serves: UNIMPLEMENTED, from Gantry.
    let unrouted = call(&python, &target, "/other.Service/Call", &[]);
    assert_eq!(unrouted["code"], "UNIMPLEMENTED", "{unrouted}");
    assert!(
        unrouted["details"]
            .as_str()
            .unwrap()
            .contains("no route matches"),
        "{unrouted}"
    );

    // Statuses are counted by route and code.
    let metrics = gantry.metrics().await;
    for code in ["ok", "unavailable", "deadline_exceeded", "unauthenticated"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gantry_grpc_responses_total")
                    && l.contains(&format!("code=\"{code}\""))),
            "no {code} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn grpc_reaches_the_gateway_over_tls_with_alpn_h2() {
    let python = python();
    let server = Server::start(&python);
    let tls = "[platform.tls]\ncert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"";
    let gantry = Gantry::start_with(&manifest(server.port, tls), |dir| {
        gantry_tls::dev_certs(&dir.join("certs"), &["localhost".to_string()]).unwrap();
    })
    .await;
    let ca = gantry.dir.path().join("certs/ca.pem");
    let target = format!("127.0.0.1:{}", gantry.gateway);
    let tls_args = ["--ca", ca.to_str().unwrap(), "--authority", "localhost"];
    let (py, to, args) = (&python, &target, &tls_args);
    eventually("echo is healthy", Duration::from_secs(10), || async move {
        call(py, to, "Unary", args)["code"] == "OK"
    })
    .await;
    let stream = call(
        &python,
        &target,
        "ServerStream",
        &[&tls_args[..], &["--data", "t", "--metadata", "count=2"]].concat(),
    );
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["responses"], json!(["t:0", "t:1"]));
}
