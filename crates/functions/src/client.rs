//! A small HTTP/1.1 client for reaching a function's loopback listener from
//! inside Gantry (the admin API's invoke, schedules).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Sends one request to `base` (`http://127.0.0.1:PORT`) on a new connection.
pub(crate) async fn send(
    base: &str,
    method: Method,
    path: &str,
    content_type: HeaderValue,
    body: Bytes,
) -> Result<Response<Incoming>, String> {
    send_with(base, method, path, &[("content-type", content_type)], body).await
}

pub(crate) async fn send_with(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&'static str, HeaderValue)],
    body: Bytes,
) -> Result<Response<Incoming>, String> {
    let authority = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        })
        .header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
