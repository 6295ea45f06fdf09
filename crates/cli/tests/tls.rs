//! HTTPS at the edge, through the real binary and real clients (curl,
//! `openssl s_client`, rustls): protocol versions, SNI, ALPN, certificate
//! rotation under load, client certificates, the http→https redirect, HSTS,
//! and upstreams over TLS.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_tls::rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::upstream::Lenient;
use support::{eventually, free_port, Gantry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A development CA and a certificate for `names`, in `dir`.
fn certs(dir: &Path, names: &[&str]) -> gantry_tls::DevCerts {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    gantry_tls::dev_certs(dir, &names).unwrap()
}

fn manifest(upstream: &Lenient, tls: &str, platform_extra: &str, routes: &str) -> String {
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false
{platform_extra}

[platform.tls]
{tls}

[services.app]
urls = ["http://{}"]
{routes}
[[routes]]
path = "/*"
to = "app"
"#,
        upstream.addr
    )
}

/// Runs curl against the gateway; (exit success, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        eprintln!(
            "curl {args:?}: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (output.status.success(), stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

// curl runs synchronously: the test upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_modern_tls_only_sni_alpn_and_hsts() {
    let upstream = Lenient::start().await;
    let gantry = Gantry::start_with(
        &manifest(
            &upstream,
            "hsts = \"365d\"\n[[platform.tls.certs]]\ncert = \"a/cert.pem\"\nkey = \"a/key.pem\"\n[[platform.tls.certs]]\ncert = \"b/cert.pem\"\nkey = \"b/key.pem\"",
            "",
            "",
        ),
        |dir| {
            certs(&dir.join("a"), &["a.test", "localhost"]);
            certs(&dir.join("b"), &["b.test"]);
        },
    )
    .await;
    let port = gantry.gateway.to_string();
    let ca_a = gantry.dir.path().join("a/ca.pem");
    let url = format!("https://localhost:{port}/hello");
    let resolve = format!("localhost:{port}:127.0.0.1");

    // HTTP/2 by ALPN, HTTP/1.1 when asked, TLS 1.2 and 1.3; HSTS on the answer.
    let (ok, out) = curl(&[
        "--cacert",
        path(&ca_a),
        "--resolve",
        &resolve,
        "--http2",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ]);
    assert!(ok, "{out}");
    assert!(out.ends_with('2'), "h2 by ALPN: {out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
    for (version, max) in [("--tlsv1.2", "1.2"), ("--tlsv1.3", "1.3")] {
        let (ok, out) = curl(&[
            "--cacert",
            path(&ca_a),
            "--resolve",
            &resolve,
            version,
            "--tls-max",
            max,
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &url,
        ]);
        assert!(ok, "TLS {max}: {out}");
        assert_eq!(out, "200 1.1", "TLS {max}");
    }
    // TLS 1.1 and 1.0 are refused by the server's alert (the client is told
    // to allow them, so the refusal cannot be its own).
    for flag in ["-tls1_1", "-tls1"] {
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), flag])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{flag} was accepted: {text}");
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{flag}: not refused by the server: {text}"
        );
    }
    // SNI picks the certificate; no SNI gets the first.
    for (name, expected) in [
        ("a.test", "DNS:a.test"),
        ("b.test", "DNS:b.test"),
        ("other.test", "DNS:a.test"),
    ] {
        let sans = served_names(&port, Some(name));
        assert!(sans.contains(expected), "{name}: {sans}");
    }
    // The plain-HTTP port answers nothing useful over cleartext.
    let (ok, _) = curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    assert!(!ok, "the TLS listener must not serve cleartext");
}

/// The SAN line of the certificate served for `sni`.
fn served_names(port: &str, sni: Option<&str>) -> String {
    let mut args = vec![
        "s_client".to_string(),
        "-connect".to_string(),
        format!("127.0.0.1:{port}"),
    ];
    if let Some(name) = sni {
        args.extend(["-servername".to_string(), name.to_string()]);
    }
    let output = Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&output.stdout)
        .unwrap();
    String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout).into_owned()
}

/// One request on a new TLS connection; the certificate the server presented.
async fn fetch_once(
    port: u16,
    config: Arc<gantry_tls::rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = gantry_tls::tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    tls.write_all(b"GET /load HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // A server may close without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(presented)
}

fn pem_cert(file: &Path) -> CertificateDer<'static> {
    use gantry_tls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(file).unwrap()
}

#[tokio::test]
async fn a_certificate_rotated_under_load_fails_no_request() {
    let upstream = Lenient::start().await;
    let gantry = Gantry::start_with(
        &manifest(
            &upstream,
            "cert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"",
            "",
            "",
        ),
        |dir| {
            certs(&dir.join("certs"), &["localhost"]);
        },
    )
    .await;
    let dir = gantry.dir.path().to_path_buf();
    let config =
        gantry_tls::client_config(Some(&dir.join("certs/ca.pem")), &[b"http/1.1"]).unwrap();
    let old = pem_cert(&dir.join("certs/cert.pem"));
    assert_eq!(
        fetch_once(gantry.gateway, config.clone()).await.unwrap(),
        old
    );

    // Load: four clients, each a new connection per request, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed, errors, config) = (
            stop.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
            config.clone(),
        );
        let port = gantry.gateway;
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match fetch_once(port, config.clone()).await {
                    Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    eventually("load is running", Duration::from_secs(10), || {
        let done = done.clone();
        async move { done.load(Ordering::SeqCst) > 20 }
    })
    .await;

    // A new certificate from the same CA, written beside the old one, then
    // renamed over it (the certificate first, then the key).
    std::fs::create_dir_all(dir.join("next")).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.join("certs").join(file), dir.join("next").join(file)).unwrap();
    }
    let next = certs(&dir.join("next"), &["localhost"]);
    assert!(!next.created_ca, "the CA is reused");
    let new = pem_cert(&next.cert);
    assert_ne!(new, old);
    std::fs::rename(&next.cert, dir.join("certs/cert.pem")).unwrap();
    std::fs::rename(&next.key, dir.join("certs/key.pem")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if fetch_once(gantry.gateway, config.clone()).await.unwrap() == new {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up:\n{}",
            gantry.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served_before = done.load(Ordering::SeqCst);
    eventually(
        "load continues on the new certificate",
        Duration::from_secs(10),
        || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) > served_before + 20 }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} requests failed during the rotation: {:?}",
        failed.load(Ordering::SeqCst),
        errors.lock().unwrap().iter().take(5).collect::<Vec<_>>()
    );
    assert!(gantry.log().contains("reloaded"), "{}", gantry.log());
}

// curl runs synchronously: the test upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_where_routes_ask_for_them() {
    let upstream = Lenient::start().await;
    let routes = r#"
[[routes]]
path = "/internal/*"
to = "app"
auth = "mtls"
forward_claims = { cn = "x-client-cn", san = "x-client-san" }
rate_limit = { requests = 100, per = "1m", key = "claim:cn" }
"#;
    let gantry = Gantry::start_with(
        &manifest(
            &upstream,
            "cert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"\nclient_ca = \"certs/ca.pem\"",
            "",
            routes,
        ),
        |dir| {
            certs(&dir.join("certs"), &["localhost"]);
            gantry_tls::client_cert_for_tests(dir, &dir.join("certs"), "billing").unwrap();
            // A client certificate from a CA Gantry does not trust.
            certs(&dir.join("rogue-ca"), &["localhost"]);
            gantry_tls::client_cert_for_tests(&dir.join("rogue"), &dir.join("rogue-ca"), "billing")
                .unwrap();
        },
    )
    .await;
    let dir = gantry.dir.path();
    let port = gantry.gateway;
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/internal/ledger");
    let ca = dir.join("certs/ca.pem");
    let client_cert = |within: &Path| -> (PathBuf, PathBuf) {
        (
            within.join("client-billing.pem"),
            within.join("client-billing-key.pem"),
        )
    };

    let (cert, key) = client_cert(dir);
    let (ok, out) = curl(&[
        "--cacert",
        path(&ca),
        "--resolve",
        &resolve,
        "--cert",
        path(&cert),
        "--key",
        path(&key),
        &url,
    ]);
    assert!(ok, "{out}");
    let echoed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echoed["headers"]["x-client-cn"], "billing");
    assert!(
        echoed["headers"]["x-client-san"]
            .as_str()
            .unwrap()
            .contains("spiffe://gantry.test/billing"),
        "{echoed}"
    );
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // No certificate: the connection works, the route refuses.
    let (ok, out) = curl(&[
        "--cacert",
        path(&ca),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    assert!(ok, "{out}");
    assert!(out.ends_with("401"), "{out}");
    assert!(out.contains("client certificate"), "{out}");
    // Routes without `mtls` do not need one.
    let (ok, out) = curl(&[
        "--cacert",
        path(&ca),
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://localhost:{port}/open"),
    ]);
    assert!(ok && out == "200", "{out}");
    // A certificate from another CA is refused at the handshake.
    let (cert, key) = client_cert(&dir.join("rogue"));
    let (ok, _) = curl(&[
        "--cacert",
        path(&ca),
        "--resolve",
        &resolve,
        "--cert",
        path(&cert),
        "--key",
        path(&key),
        &url,
    ]);
    assert!(!ok, "a certificate from an untrusted CA was accepted");
}

// curl runs synchronously: the test upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https() {
    let upstream = Lenient::start().await;
    let redirect = free_port();
    let gantry = Gantry::start_with(
        &manifest(
            &upstream,
            "cert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"",
            &format!("redirect_http = \"127.0.0.1:{redirect}\""),
            "",
        ),
        |dir| {
            certs(&dir.join("certs"), &["localhost"]);
        },
    )
    .await;
    let (ok, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://localhost:{redirect}/a/b?c=1"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!("308 https://localhost:{}/a/b?c=1", gantry.gateway)
    );
    // Followed, it arrives.
    let (ok, out) = curl(&[
        "-L",
        "--cacert",
        path(&gantry.dir.path().join("certs/ca.pem")),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://localhost:{redirect}/a/b?c=1"),
    ]);
    assert!(ok && out == "200", "{out}");
}

#[tokio::test]
async fn upstreams_over_https_are_verified() {
    let scratch = tempfile::tempdir().unwrap();
    let upstream_certs = certs(&scratch.path().join("up"), &["localhost"]);
    let tls = gantry_tls::ServerTls::load(&gantry_tls::ServerOptions {
        certs: vec![gantry_tls::CertFiles {
            cert: upstream_certs.cert.clone(),
            key: upstream_certs.key.clone(),
        }],
        client_ca: None,
    })
    .unwrap();
    let upstream = Lenient::start_tls(tls).await;
    let port = upstream.addr.port();
    let text = |extra: &str| {
        format!(
            r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false

[services.secure]
urls = ["https://localhost:{port}"]
{extra}

[[routes]]
path = "/*"
to = "secure"

[topics."order.placed"]

[[subscriptions]]
topic = "order.placed"
to = "secure:/events"
"#
        )
    };
    // Health checks go over TLS too.
    let ca = format!(
        "ca = \"{}\"\nhealth = \"/healthz\"",
        upstream_certs.ca_cert.display()
    );
    let gantry = Gantry::start(&text(&ca)).await;
    let c = support::client();
    let response = c.get(gantry.url("/over/tls")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["raw"], "/over/tls");
    // Event deliveries reach the service over TLS too.
    let published = c
        .post(gantry.api_url("/v1/publish/order.placed"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "tls-1")
        .header("ce-source", "/test")
        .header("ce-type", "order.placed")
        .header("content-type", "application/json")
        .body(r#"{"order_id": 1}"#)
        .send()
        .await
        .unwrap();
    assert!(published.status().is_success(), "{}", published.status());
    let seen = upstream.seen.clone();
    eventually(
        "the event is delivered over https",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move { seen.lock().unwrap().iter().any(|p| p == "/events") }
        },
    )
    .await;
    drop(gantry);
    upstream.seen.lock().unwrap().clear();

    // Against the system's roots the development CA is unknown: refused.
    let gantry = Gantry::start(&text("")).await;
    let response = c.get(gantry.url("/over/tls")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("certificate"),
        "{problem}"
    );
    assert!(
        upstream.seen.lock().unwrap().is_empty(),
        "nothing reaches an upstream that failed verification"
    );
}
