//! Test upstreams for the edge tests: a lenient server that resolves paths
//! the way permissive frameworks do, over plain TCP or TLS, and a client that
//! sends request targets byte for byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An upstream that resolves paths the way permissive servers do: it
/// percent-decodes everything (`%2F` included), turns `\` into `/`, merges
/// slashes and resolves dot segments (clamping at the root). It answers
/// `SECRET` for anything under `/admin/`, and echoes the raw path and the
/// headers it received as JSON otherwise.
pub struct Lenient {
    pub addr: SocketAddr,
    /// Raw request targets, as received.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Lenient {
    pub async fn start() -> Lenient {
        Lenient::serve(None).await
    }

    /// The same upstream, speaking TLS with `tls`.
    pub async fn start_tls(tls: gantry_tls::ServerTls) -> Lenient {
        Lenient::serve(Some(tls)).await
    }

    async fn serve(tls: Option<gantry_tls::ServerTls>) -> Lenient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let raw = request
                        .uri()
                        .path_and_query()
                        .map_or("/".to_string(), |p| p.to_string());
                    log.lock().unwrap().push(raw.clone());
                    let resolved = resolve_leniently(request.uri().path());
                    let body = if resolved.starts_with("/admin/") {
                        "SECRET".to_string()
                    } else {
                        let headers: serde_json::Map<String, Value> = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), Value::from(v.to_str().unwrap_or_default()))
                            })
                            .collect();
                        json!({ "raw": raw, "resolved": resolved, "headers": headers }).to_string()
                    };
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, service).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve_connection(stream, service).await;
                            }
                        }
                    }
                });
            }
        });
        Lenient { addr, seen }
    }
}

fn resolve_leniently(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .replace('\\', "/");
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let trailing = if decoded.ends_with('/') && !kept.is_empty() {
        "/"
    } else {
        ""
    };
    format!("/{}{trailing}", kept.join("/"))
}

/// Sends one HTTP/1.1 request with `target` exactly as written (no client
/// library cleans it up) and returns the status and body.
pub async fn raw_request(port: u16, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

async fn serve_connection<S, F>(stream: S, service: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    F::Future: Send + 'static,
{
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
