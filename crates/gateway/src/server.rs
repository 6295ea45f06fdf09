//! The gateway's listeners: HTTP/1.1 and HTTP/2 on one port, in cleartext
//! (h2 by prior knowledge) or over TLS (h2 by ALPN), with graceful drain on
//! shutdown; and the plain-HTTP listener that redirects to https.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use gantry_tls::ServerTls;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forwarding::{Peer, TlsSession};
use crate::proxy::Gateway;

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until it ends, or until `shutdown` fires: then it
/// is asked to finish gracefully and served until it has.
macro_rules! drive {
    ($connection:expr, $shutdown:expr) => {{
        let connection = $connection;
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = $shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    }};
}

/// Serves `gateway` on `listener` until `shutdown` fires, then stops accepting
/// and gives in-flight requests up to `drain` to finish. With `tls`, every
/// connection is TLS (certificates chosen by SNI, reloaded when their files
/// change).
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that opens a connection and never sends a request head is dropped.
        .header_read_timeout(Duration::from_secs(30));
    // HTTP/2 (by ALPN over TLS, or prior knowledge): a bounded number of
    // streams per connection, and pings that drop connections whose peer
    // has gone away.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // Every connection is a tracked task: at shutdown each is asked to finish
    // (hyper's graceful shutdown: in-flight requests complete, keep-alive
    // ends), and the drain time bounds the wait. Connections are served
    // with upgrades, so WebSocket handshakes can hand their socket over.
    let connections = TaskTracker::new();
    while let Some((stream, client)) = accept(&listener, &shutdown).await {
        let builder = builder.clone();
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let peer = Peer::new(client);
            let result = match tls {
                None => {
                    let service = service(gateway, peer);
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    drive!(connection, shutdown)
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(target: "gantry::tls", %client, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(target: "gantry::tls", %client, "TLS handshake timed out");
                            return;
                        }
                    };
                    let session = TlsSession {
                        client: gantry_tls::client_identity(stream.get_ref().1),
                    };
                    let service = service(gateway, peer.with_tls(session));
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    drive!(connection, shutdown)
                }
            };
            if let Err(error) = result {
                tracing::debug!(target: "gantry::gateway", %client, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let started = tokio::time::Instant::now();
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(target: "gantry::gateway", ?drain, "drain time is over; closing the remaining connections");
        }
    }
    // WebSockets outlive their connections' requests: they get what is
    // left of the drain time, then a close frame.
    gateway
        .close_sockets(drain.saturating_sub(started.elapsed()))
        .await;
}

async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, client));
                }
                Err(error) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(target: "gantry::gateway", %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// One connection's requests, handed to the gateway with the connection's peer.
#[derive(Clone)]
struct GatewayService {
    gateway: Gateway,
    /// Shared by the connection's requests: cloned per request as a pointer.
    peer: std::sync::Arc<Peer>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for GatewayService {
    type Response = Response<crate::GatewayBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let gateway = self.gateway.clone();
        let peer = self.peer.clone();
        Box::pin(async move { Ok(gateway.handle(request, &peer).await) })
    }
}

fn service(gateway: Gateway, peer: Peer) -> GatewayService {
    GatewayService {
        gateway,
        peer: std::sync::Arc::new(peer),
    }
}

/// Answers every plain-HTTP request on `listener` with a 308 to the same
/// host, path and query on https at `https_port`, until `shutdown` fires.
pub async fn redirect_to_https(
    listener: TcpListener,
    https_port: u16,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    while let Some((stream, _)) = accept(&listener, &shutdown).await {
        let service = service_fn(
            move |request: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(redirect(&request, https_port))
            },
        );
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}

/// The 308 for one request; 400 when it names no usable host.
fn redirect<B>(request: &http::Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host());
    let host = host.and_then(|h| {
        // The port the client used is replaced by the https one.
        let name = if h.starts_with('[') {
            h.find(']').map_or(h, |end| &h[..=end])
        } else {
            match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            }
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
        valid.then_some(name)
    });
    let Some(host) = host else {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"this address only redirects to https, and the request has no valid Host header\n",
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if !path.starts_with('/') {
        // `OPTIONS *` and the like have no https equivalent to point to.
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"this address only redirects requests for a path to https\n",
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    }
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, target: &str, port: u16) -> Option<String> {
        let request = http::Request::builder()
            .uri(target)
            .header(header::HOST, host)
            .body(())
            .unwrap();
        let response = redirect(&request, port);
        response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string())
    }

    #[test]
    fn redirects_keep_host_path_and_query_on_the_https_port() {
        assert_eq!(
            location("shop.test:8080", "/a/b?x=1", 8443).as_deref(),
            Some("https://shop.test:8443/a/b?x=1")
        );
        assert_eq!(
            location("shop.test", "/", 443).as_deref(),
            Some("https://shop.test/")
        );
        assert_eq!(
            location("[::1]:80", "/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(location("evil.test/x", "/", 443), None);
        assert_eq!(location("", "/", 443), None);
        assert_eq!(location("shop.test", "*", 443), None);
    }
}
