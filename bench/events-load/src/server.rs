//! The HTTP/1.1 server both Gantry modes run to receive what Gantry sends
//! (event deliveries, saga step calls).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Accepts connections until aborted, answering each request with `handle`.
pub async fn serve<S, H, F>(listener: TcpListener, state: Arc<S>, handle: H)
where
    S: Send + Sync + 'static,
    H: Fn(Request<Incoming>, Arc<S>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("events-load: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handle(request, state.clone());
                async move { Ok::<_, Infallible>(answer.await) }
            });
            // A connection closed by the other side ends here; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
