//! Connections to service instances: HTTP/1.1, kept alive, pooled per
//! instance, and driven by the request that uses them; or, for services with
//! `protocol = "h2"` / `"h2c"`, one multiplexed HTTP/2 connection per instance
//! that every request to it shares (driven by a task of its own, as HTTP/2
//! must answer pings and window updates whoever is waiting).
//!
//! hyper-util's pooled client gives every upstream connection its own task and
//! passes each request and response through channels between that task and the
//! request's task. Here the request's own task polls the connection while it
//! waits for the response and while it streams the response body, then puts the
//! connection back in the pool. That saves two task hand-offs per request and
//! the client's per-request URI and pool-key work; see `bench/RESULTS.md` for
//! what it measured. It is a small, self-contained piece because no maintained
//! crate drives hyper connections this way.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_services::Instance;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed through as it arrives: sent once.
    Streaming(Incoming),
    /// A small body read ahead so the request can be sent again (retries).
    Buffered(Option<Bytes>),
    /// A body of unknown length (chunked, or HTTP/2 as gRPC sends it)
    /// streamed through while a copy is kept, up to a limit: the request can
    /// be sent again once the body has ended within the limit.
    Recorded {
        body: Incoming,
        record: Arc<Mutex<Record>>,
    },
}

/// The copy a [`RequestBody::Recorded`] keeps.
#[derive(Debug)]
pub(crate) struct Record {
    chunks: Vec<Bytes>,
    size: u64,
    limit: u64,
    state: Recording,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    Open,
    /// The whole body is in `chunks`.
    Complete,
    /// Past the limit (or with trailers): it cannot be sent again.
    Abandoned,
}

impl Record {
    fn observe(&mut self, frame: Option<&Frame<Bytes>>) {
        if self.state != Recording::Open {
            return;
        }
        match frame.map(Frame::data_ref) {
            None => self.state = Recording::Complete,
            Some(Some(data)) => {
                self.size += data.len() as u64;
                if self.size > self.limit {
                    self.state = Recording::Abandoned;
                    self.chunks = Vec::new();
                } else {
                    self.chunks.push(data.clone());
                }
            }
            Some(None) => {
                self.state = Recording::Abandoned;
                self.chunks = Vec::new();
            }
        }
    }
}

/// How a request's body is sent again: bytes read ahead, or the copy a
/// recorded body keeps (usable only once its body has ended).
#[derive(Debug)]
pub(crate) enum Replay {
    Bytes(Option<Bytes>),
    Record(Arc<Mutex<Record>>),
}

impl Replay {
    /// Whether [`Replay::body`] has a body to give now.
    pub(crate) fn ready(&self) -> bool {
        match self {
            Replay::Bytes(_) => true,
            Replay::Record(record) => {
                record.lock().unwrap_or_else(|e| e.into_inner()).state == Recording::Complete
            }
        }
    }

    /// The body for another attempt, if there is one to send.
    pub(crate) fn body(&self) -> Option<RequestBody> {
        match self {
            Replay::Bytes(bytes) => Some(RequestBody::Buffered(bytes.clone())),
            Replay::Record(record) => {
                let record = record.lock().unwrap_or_else(|e| e.into_inner());
                (record.state == Recording::Complete).then(|| {
                    let bytes = match record.chunks.as_slice() {
                        [] => None,
                        [one] => Some(one.clone()),
                        many => Some(Bytes::from(many.concat())),
                    };
                    RequestBody::Buffered(bytes)
                })
            }
        }
    }
}

impl RequestBody {
    /// Streams `body` through while keeping a copy of up to `limit` bytes.
    pub(crate) fn recorded(body: Incoming, limit: u64) -> RequestBody {
        let record = Record {
            chunks: Vec::new(),
            size: 0,
            limit,
            state: Recording::Open,
        };
        RequestBody::Recorded {
            body,
            record: Arc::new(Mutex::new(record)),
        }
    }

    /// A copy for another attempt, if this body can be sent again now.
    pub(crate) fn replay(&self) -> Option<RequestBody> {
        self.replay_later()?.body()
    }

    /// How this body can be sent again, perhaps only once it has ended.
    pub(crate) fn replay_later(&self) -> Option<Replay> {
        match self {
            RequestBody::Buffered(bytes) => Some(Replay::Bytes(bytes.clone())),
            RequestBody::Recorded { record, .. } => Some(Replay::Record(record.clone())),
            RequestBody::Streaming(_) => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Recorded { body, record } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let ended = body.is_end_stream();
                if let Poll::Ready(frame) = &polled {
                    let mut record = record.lock().unwrap_or_else(|e| e.into_inner());
                    match frame {
                        Some(Ok(frame)) => {
                            record.observe(Some(frame));
                            if ended {
                                record.observe(None);
                            }
                        }
                        Some(Err(_)) => record.state = Recording::Abandoned,
                        None => record.observe(None),
                    }
                }
                polled
            }
            RequestBody::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(body) | RequestBody::Recorded { body, .. } => {
                body.is_end_stream()
            }
            RequestBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(body) | RequestBody::Recorded { body, .. } => body.size_hint(),
            RequestBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A connection idle longer than this is not reused: upstreams close idle
/// connections on their own schedule, and an old one is likely gone.
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per instance; more are closed.
const MAX_IDLE_PER_INSTANCE: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not get a response from the upstream.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made. Nothing was sent, so the request comes
    /// back and may go to another instance.
    Connect(std::io::Error, Box<Request<RequestBody>>),
    /// The exchange failed after the request was (perhaps partly) sent.
    Http(hyper::Error),
}

/// One HTTP/1.1 connection: the handle to send on, and the state machine that
/// reads and writes the socket when polled.
struct Connection {
    sender: http1::SendRequest<RequestBody>,
    driver: http1::Connection<TokioIo<Stream>, RequestBody>,
    /// The driver finished: the connection is closed.
    closed: bool,
    idle_since: Instant,
}

impl Connection {
    /// Lets the connection make progress (read, write, notice a close).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.closed = true;
        }
    }
}

/// A connection's socket: plain TCP, or TLS to an `https://` instance.
enum Stream {
    Plain(TcpStream),
    Tls(Box<gantry_tls::tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Which pool a connection belongs to: its instance's address, and for TLS
/// the client configuration it was verified with (services with another `ca`
/// never share a connection).
type PoolKey = (Authority, usize);

/// Idle connections by instance address. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct UpstreamPool {
    // Boxed so a checkout moves a pointer, not the connection's large state.
    #[allow(clippy::vec_box)]
    idle: Arc<Mutex<HashMap<PoolKey, Vec<Box<Connection>>>>>,
    /// The HTTP/2 connection of each instance of an HTTP/2 service.
    shared: Arc<Mutex<HashMap<PoolKey, http2::SendRequest<RequestBody>>>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// Sends `request` (origin-form URI, `Host` set) to `instance` and waits
    /// for the response head. The returned body keeps driving the connection
    /// and gives it back to the pool when it ends.
    pub(crate) async fn send(
        &self,
        instance: &Instance,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let tls = instance
            .tls
            .as_ref()
            .map_or(0, |tls| Arc::as_ptr(&tls.config) as usize);
        let key: PoolKey = (instance.authority.clone(), tls);
        if request.headers().contains_key(http::header::UPGRADE) {
            return self.send_upgrade(instance, key, request).await;
        }
        if instance.protocol.is_h2() {
            return self.send_h2(instance, key, request).await;
        }
        // A pooled connection may have been closed by the upstream while idle;
        // if the request could not even be written, it is safe to resend it on
        // a fresh connection. A fresh connection is not retried.
        loop {
            let (mut connection, reused) = match self.checkout(&key).await {
                Some(connection) => (connection, true),
                None => match connect(instance).await {
                    Ok(connection) => (connection, false),
                    Err(error) => return Err(UpstreamError::Connect(error, Box::new(request))),
                },
            };
            let mut sending = Box::pin(connection.sender.try_send_request(request));
            let sent = std::future::poll_fn(|cx| {
                connection.drive(cx);
                sending.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let mut body = UpstreamBody {
                        body,
                        connection: Some(connection),
                        pool: self.clone(),
                        key: key.clone(),
                    };
                    if body.body.is_end_stream() {
                        // No body to stream (204, 304, HEAD, `Content-Length: 0`):
                        // the server may never poll it, so release the connection now.
                        std::future::poll_fn(|cx| {
                            body.release(cx);
                            Poll::Ready(())
                        })
                        .await;
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        }
    }

    /// Sends an upgrade request (a WebSocket handshake) on a new connection of
    /// its own: after a 101 the connection belongs to the socket, and the
    /// answer's extensions hold the upstream's side of the upgrade.
    async fn send_upgrade(
        &self,
        instance: &Instance,
        key: PoolKey,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let handshake = async {
            let stream = open(instance).await?;
            http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)
        };
        let (mut sender, driver) = match handshake.await {
            Ok(connection) => connection,
            Err(error) => return Err(UpstreamError::Connect(error, Box::new(request))),
        };
        tokio::spawn(async move {
            // Ends when the exchange ends, or hands the socket to the upgrade.
            let _ = driver.with_upgrades().await;
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Http)?;
        let (parts, body) = response.into_parts();
        let body = UpstreamBody {
            body,
            connection: None,
            pool: self.clone(),
            key,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Sends `request` on the instance's shared HTTP/2 connection, opening it
    /// when there is none (or it was closed, by a GOAWAY or an idle timeout).
    async fn send_h2(
        &self,
        instance: &Instance,
        key: PoolKey,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // HTTP/2 carries the scheme and authority as pseudo-headers; `Host`
        // would say the same thing twice.
        request.headers_mut().remove(http::header::HOST);
        *request.version_mut() = http::Version::HTTP_2;
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.scheme = Some(if instance.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        uri.authority = Some(instance.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = http::Uri::from_parts(uri).expect("scheme, authority and path");

        // A connection the upstream is closing (GOAWAY: HTTP/2 servers do
        // it every N requests) may refuse a request it never processed;
        // that request goes once more, on a new connection.
        let mut fresh = false;
        let response = loop {
            let mut sender = match self.h2_sender(instance, &key, fresh).await {
                Ok(sender) => sender,
                Err(error) => return Err(UpstreamError::Connect(error, Box::new(request))),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the HTTP/2 connection closed before the request was sent",
                    );
                    return Err(UpstreamError::Connect(error, Box::new(request)));
                }
                fresh = true;
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if !fresh => {
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        };
        let (parts, body) = response.into_parts();
        let body = UpstreamBody {
            body,
            connection: None,
            pool: self.clone(),
            key: (instance.authority.clone(), 0),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The instance's shared HTTP/2 connection; a new one when there is none
    /// open, or when `fresh` (the last one refused a request).
    async fn h2_sender(
        &self,
        instance: &Instance,
        key: &PoolKey,
        fresh: bool,
    ) -> std::io::Result<http2::SendRequest<RequestBody>> {
        if !fresh {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sender) = shared.get(key).filter(|s| !s.is_closed()) {
                return Ok(sender.clone());
            }
        }
        let sender = connect_h2(instance).await?;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        // Two requests may both have connected: keep the first, unless this
        // one is meant to replace it.
        match shared.get(key).filter(|s| !s.is_closed() && !fresh) {
            Some(other) => Ok(other.clone()),
            None => {
                shared.insert(key.clone(), sender.clone());
                Ok(sender)
            }
        }
    }

    /// An idle connection to `authority` that can take a request now.
    async fn checkout(&self, key: &PoolKey) -> Option<Box<Connection>> {
        loop {
            let mut connection = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(key)?.pop()?
            };
            if connection.idle_since.elapsed() > MAX_IDLE {
                continue;
            }
            // Poll once: this notices a close that arrived while it was idle
            // and moves a finished exchange to "ready for the next request".
            let usable = std::future::poll_fn(|cx| {
                connection.drive(cx);
                Poll::Ready(!connection.closed && connection.sender.poll_ready(cx).is_ready())
            })
            .await;
            if usable && connection.sender.is_ready() {
                return Some(connection);
            }
        }
    }

    fn give_back(&self, key: PoolKey, mut connection: Box<Connection>) {
        if connection.closed || connection.sender.is_closed() {
            return;
        }
        connection.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_INSTANCE {
            list.push(connection);
        }
    }
}

/// Opens an HTTP/2 connection to `instance` and starts the task that drives it.
async fn connect_h2(instance: &Instance) -> std::io::Result<http2::SendRequest<RequestBody>> {
    let stream = open(instance).await?;
    let (sender, driver) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        // A dead peer is noticed even while no request is waiting.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let authority = instance.authority.clone();
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            tracing::debug!(target: "gantry::proxy", %authority, %error, "HTTP/2 upstream connection ended");
        }
    });
    Ok(sender)
}

async fn connect(instance: &Instance) -> std::io::Result<Box<Connection>> {
    let stream = open(instance).await?;
    let (sender, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    // Boxed: the connection state is large and moves between the pool, the
    // request future and the response body.
    Ok(Box::new(Connection {
        sender,
        driver,
        closed: false,
        idle_since: Instant::now(),
    }))
}

/// A socket to `instance`: TCP, and TLS for an `https://` instance, within
/// the connect timeout.
async fn open(instance: &Instance) -> std::io::Result<Stream> {
    let opening = async {
        let tcp = TcpStream::connect(instance.authority.as_str()).await?;
        let _ = tcp.set_nodelay(true);
        match &instance.tls {
            None => Ok::<_, std::io::Error>(Stream::Plain(tcp)),
            Some(tls) => {
                let connector = gantry_tls::tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    };
    // The handshake counts against the connect timeout.
    tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// An upstream response body. Polling it also drives its connection; when the
/// body ends the connection goes back to the pool, and if the body is dropped
/// early (the client went away) the connection is closed.
pub struct UpstreamBody {
    body: Incoming,
    connection: Option<Box<Connection>>,
    pool: UpstreamPool,
    key: PoolKey,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("authority", &self.key.0)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The body is complete: the connection goes back to the pool.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut connection) = self.connection.take() {
            // Let the connection see the exchange is over before it idles.
            connection.drive(cx);
            self.pool.give_back(self.key.clone(), connection);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(connection) = &mut this.connection {
            connection.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // hyper stops polling a body that reports its end, so release the
        // connection on the last frame rather than waiting for a `None`.
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release(cx);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
