//! WebAssembly functions on a real wasmtime: a Python wasi:http component
//! (componentize-py) and WAGI modules written in WAT, served on their
//! loopback listeners.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gantry_functions::Functions;

/// The Python component, built once per test run (cached under target/).
fn python_component() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = root.join("../../target/guests/app.wasm");
            let status = std::process::Command::new(root.join("tests/guests/build-python.sh"))
                .arg(&out)
                .status()
                .expect("run build-python.sh");
            assert!(status.success(), "building the Python guest failed");
            out
        })
        .clone()
}

/// A WAGI module that prints its request back, CGI-style.
const WAGI_HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\nX-Guest: wat\n\nhello from wagi\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 55))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

/// Never returns.
const WAGI_LOOP: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;

/// Grows its memory by 64 MiB at a time, forever.
const WAGI_GROW: &str = r#"
(module (memory (export "memory") 1)
  (func (export "_start") (loop $l (drop (memory.grow (i32.const 1024))) (br $l))))"#;

struct Setup {
    _dir: tempfile::TempDir,
    functions: Functions,
}

async fn setup(manifest: &str, wat: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in wat {
        std::fs::write(dir.path().join(name), wat::parse_str(text).unwrap()).unwrap();
    }
    let component = python_component();
    let text = manifest.replace("{COMPONENT}", &component.display().to_string());
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, text).unwrap();
    let manifest = gantry_manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let functions = Functions::new(&dir.path().join("data"));
    functions.apply(&manifest).await.unwrap();
    Setup {
        _dir: dir,
        functions,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_component_serves_requests_with_only_what_it_was_granted() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app =
            axum::Router::new().route("/data", axum::routing::get(|| async { "secret data" }));
        axum::serve(upstream, app).await.unwrap();
    });
    let setup = setup(
        &format!(
            r#"
[functions.hello]
component = "{{COMPONENT}}"
env = {{ GREETING = "hi there" }}
allowed_outbound_hosts = ["http://127.0.0.1:{upstream_port}"]
timeout = "1s"
memory = "96MiB"
"#
        ),
        &[],
    )
    .await;
    let base = setup.functions.url("hello").unwrap();
    let client = client();

    let response = client.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "hello from python, greeting=hi there"
    );

    let body = "x".repeat(200_000);
    let response = client
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), body);

    // Only the granted variable: nothing of the host's environment.
    let response = client.get(format!("{base}/env")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "GREETING");

    // Outbound: the allowed host works; another port, another host and a
    // Host-header trick are refused.
    let allowed = format!("http://127.0.0.1:{upstream_port}/data");
    let response = client
        .get(format!("{base}/fetch"))
        .query(&[("url", allowed.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "upstream said 200: secret data"
    );
    for url in [
        format!("http://127.0.0.1:{}/data", upstream_port + 1),
        format!("http://localhost:{upstream_port}/data"),
    ] {
        let response = client
            .get(format!("{base}/fetch"))
            .query(&[("url", url.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{url}");
        let text = response.text().await.unwrap();
        assert!(text.contains("refused"), "{url}: {text}");
    }
    let response = client
        .get(format!("{base}/fetch"))
        .query(&[("url", allowed.as_str()), ("host", "evil.example")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("cannot set header"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_or_greedy_guest_gets_a_clear_error_and_the_host_carries_on() {
    let setup = setup(
        r#"
[functions.py]
component = "{COMPONENT}"
timeout = "1s"
memory = "64MiB"

[functions.spin]
component = "loop.wasm"
executor = "wagi"
timeout = "300ms"

[functions.grow]
component = "grow.wasm"
executor = "wagi"
memory = "16MiB"
"#,
        &[("loop.wasm", WAGI_LOOP), ("grow.wasm", WAGI_GROW)],
    )
    .await;
    let client = client();
    let py = setup.functions.url("py").unwrap();

    let started = Instant::now();
    let response = client.get(format!("{py}/loop")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://gantry.dev/problems/function-timeout"
    );
    assert!(problem["detail"].as_str().unwrap().contains("timeout"));

    let response = client
        .get(format!("{py}/memory?mb=200"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://gantry.dev/problems/function-memory"
    );

    // The same function still serves after both.
    let response = client
        .get(format!("{py}/memory?mb=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let spin = setup.functions.url("spin").unwrap();
    let response = client.get(format!("{spin}/")).send().await.unwrap();
    assert_eq!(response.status(), 504);

    let grow = setup.functions.url("grow").unwrap();
    let response = client.get(format!("{grow}/")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://gantry.dev/problems/function-memory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wagi_modules_answer_cgi_style_and_concurrency_is_capped() {
    let setup = setup(
        r#"
[functions.hello]
component = "hello.wasm"
executor = "wagi"

[functions.narrow]
component = "loop.wasm"
executor = "wagi"
timeout = "3s"
max_concurrency = 1
queue = 1
queue_timeout = "1s"
"#,
        &[("hello.wasm", WAGI_HELLO), ("loop.wasm", WAGI_LOOP)],
    )
    .await;
    let client = client();
    let hello = setup.functions.url("hello").unwrap();
    let response = client.get(format!("{hello}/x?y=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-guest"], "wat");
    assert_eq!(response.text().await.unwrap(), "hello from wagi\n");

    // One runs (and times out after 3s), one waits 1s and gets 503, the
    // third finds the queue full and gets 429 at once.
    let narrow = setup.functions.url("narrow").unwrap();
    let state = || {
        let info = setup.functions.list();
        let narrow = info.iter().find(|f| f.name == "narrow").unwrap();
        (narrow.in_flight, narrow.queued)
    };
    let until = |want: (usize, usize)| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while state() != want {
            assert!(
                Instant::now() < deadline,
                "never reached {want:?}: {:?}",
                state()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let first = tokio::spawn(client.get(format!("{narrow}/")).send());
    until((1, 0)).await;
    let second = tokio::spawn(client.get(format!("{narrow}/")).send());
    until((1, 1)).await;
    let third = client.get(format!("{narrow}/")).send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(second.await.unwrap().unwrap().status(), 503);
    assert_eq!(first.await.unwrap().unwrap().status(), 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_artifact_is_deployed_without_failing_requests() {
    let setup = setup(
        r#"
[functions.hello]
component = "hello.wasm"
executor = "wagi"
"#,
        &[("hello.wasm", WAGI_HELLO)],
    )
    .await;
    let url = setup.functions.url("hello").unwrap();
    let path = setup._dir.path().join("hello.wasm");
    let client = client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let url = url.clone();
        let stop = stop.clone();
        let (seen, answered) = (seen.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.text().await.unwrap();
                seen.lock().unwrap().insert(body);
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Under load (20 answered) before the new version lands.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v2 = WAGI_HELLO.replace("hello from wagi\\n", "hello from v2!!\\n");
    std::fs::write(&path, wat::parse_str(&v2).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.functions.list()[0].deployments < 2 {
        assert!(
            Instant::now() < deadline,
            "the new version was not deployed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The load goes on until it has been answered by the new version too.
    while !seen.lock().unwrap().contains("hello from v2!!\n") {
        assert!(Instant::now() < deadline, "v2 never answered the load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains("hello from wagi\n"));
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "hello from v2!!\n");

    // A broken file is refused and the last good version keeps serving.
    std::fs::write(&path, b"not wasm").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "hello from v2!!\n");
}
