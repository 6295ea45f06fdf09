//! The gateway's listener: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on
//! one port, with graceful drain on shutdown.

use std::convert::Infallible;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::forwarding::Peer;
use crate::proxy::Gateway;

/// Serves `gateway` on `listener` until `shutdown` fires, then stops accepting
/// and gives in-flight requests up to `drain` to finish.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that opens a connection and never sends a request head is dropped.
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(target: "gantry::gateway", %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let peer = Peer::new(client);
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request, &peer).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target: "gantry::gateway", %client, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(target: "gantry::gateway", ?drain, "drain time is over; closing the remaining connections");
        }
    }
}
