//! WebSockets through the gateway, with a real client and server
//! (tokio-tungstenite on both ends, Gantry's relay between them): messages
//! both ways over ws and wss, auth refused at the handshake, the idle timeout,
//! a reload that leaves open sockets alone, and the close frame (1001) an
//! open socket gets when Gantry shuts down.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{client, Gantry};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SECRET_KEY: &str = "websocket-test-secret";

/// An echo server: every text and binary message comes back as it came.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_text() || message.is_binary())
                        && socket.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn token() -> String {
    support::hs256_token(SECRET_KEY, "ws-client")
}

fn manifest(upstream: SocketAddr, platform_extra: &str, extra_route: &str) -> String {
    manifest_with(upstream, platform_extra, extra_route, "")
}

/// `chat_extra` goes in `[services.chat]`; `[services.stable]` is the same
/// upstream under another name, which reloads leave as it is.
fn manifest_with(
    upstream: SocketAddr,
    platform_extra: &str,
    extra_route: &str,
    chat_extra: &str,
) -> String {
    let jwt = support::jwt_section(SECRET_KEY);
    format!(
        r#"
[platform]
listen = "127.0.0.1:{{GATEWAY}}"
admin = "127.0.0.1:{{ADMIN}}"
watch = false
drain_timeout = "1s"
{platform_extra}

{jwt}
[services.chat]
urls = ["http://{upstream}"]
{chat_extra}

[services.stable]
urls = ["http://{upstream}"]

[[routes]]
path = "/stable/*"
to = "stable"

[[routes]]
path = "/private/*"
to = "chat"
auth = "jwt"

[[routes]]
path = "/idle/*"
to = "chat"
websocket = {{ idle_timeout = "300ms" }}

[[routes]]
path = "/plain/*"
to = "chat"
websocket = false
{extra_route}
[[routes]]
path = "/*"
to = "chat"
"#
    )
}

type Socket<S> = WebSocketStream<S>;

/// Opens a socket over `stream` to `path`, with `headers`; the handshake's
/// HTTP status when it is refused.
async fn open_over<S>(
    stream: S,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<Socket<S>, u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("handshake failed: {error}"),
    }
}

async fn open(
    gantry: &Gantry,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<Socket<TcpStream>, u16> {
    let stream = TcpStream::connect(("127.0.0.1", gantry.gateway))
        .await
        .unwrap();
    open_over(stream, path, headers).await
}

/// Sends `message` and expects it back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut Socket<S>, message: Message) {
    socket.send(message.clone()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an answer within 5 s")
        .expect("the socket is open")
        .unwrap();
    assert_eq!(echoed, message);
}

/// Waits for the close frame Gantry sends, and returns its code.
async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut Socket<S>) -> CloseCode {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a close frame within 10 s");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn messages_pass_both_ways_with_auth_at_the_handshake_and_an_idle_timeout() {
    let upstream = echo_server().await;
    let gantry = Gantry::start(&manifest(upstream, "", "")).await;

    // Text and binary both ways, a message longer than 64 KiB included
    // (its frame has the 8-byte length).
    let mut socket = open(&gantry, "/chat", &[]).await.unwrap();
    round_trip(&mut socket, Message::text("hello")).await;
    round_trip(&mut socket, Message::binary(vec![7u8; 70_000])).await;
    round_trip(&mut socket, Message::text("and back again")).await;
    socket.close(None).await.unwrap();

    // The route's auth runs at the handshake.
    assert_eq!(open(&gantry, "/private/chat", &[]).await.err(), Some(401));
    let bearer = [("authorization", format!("Bearer {}", token()))];
    let mut private = open(&gantry, "/private/chat", &bearer).await.unwrap();
    round_trip(&mut private, Message::text("admitted")).await;

    // `websocket = false`: the upgrade never reaches the upstream, which
    // answers the plain GET it gets with an error.
    assert!(open(&gantry, "/plain/chat", &[]).await.is_err());

    // A socket with nothing to say is closed after the idle timeout, with
    // 1001, while an active one on another route stays open.
    let mut idle = open(&gantry, "/idle/chat", &[]).await.unwrap();
    assert_eq!(close_code(&mut idle).await, CloseCode::Away);
    round_trip(&mut private, Message::text("still here")).await;

    let metrics = gantry.metrics().await;
    for needle in [
        r#"gantry_websocket_connections_closed_total{route="/idle/*",reason="idle_timeout"} 1"#,
        r#"gantry_websocket_connections_opened_total{route="/*"} 1"#,
        r#"gantry_websocket_connections_open{route="/private/*"} 1"#,
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
}

#[tokio::test]
async fn reloads_leave_sockets_to_kept_services_alone_and_shutdown_says_going_away() {
    let upstream = echo_server().await;
    let mut gantry = Gantry::start(&manifest(upstream, "", "")).await;
    let mut chat = open(&gantry, "/chat", &[]).await.unwrap();
    let mut stable = open(&gantry, "/stable/chat", &[]).await.unwrap();
    round_trip(&mut chat, Message::text("before the reload")).await;
    round_trip(&mut stable, Message::text("before the reload")).await;
    let reload = || async {
        let response = client()
            .post(gantry.admin_url("/v1/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    };

    // A reload that adds a route and keeps both services: sockets carry on.
    gantry.rewrite_manifest(&manifest(
        upstream,
        "",
        "[[routes]]\npath = \"/new/*\"\nto = \"chat\"\n",
    ));
    reload().await;
    round_trip(&mut chat, Message::text("after the reload")).await;
    round_trip(&mut stable, Message::text("after the reload")).await;
    let mut fresh = open(&gantry, "/new/chat", &[]).await.unwrap();
    round_trip(&mut fresh, Message::text("on the new route")).await;

    // A reload that replaces `chat`: its sockets get the drain time (1 s),
    // then 1001; the socket to `stable` is not touched.
    gantry.rewrite_manifest(&manifest_with(upstream, "", "", "owner = \"team-b\""));
    reload().await;
    round_trip(&mut stable, Message::text("still here")).await;
    assert_eq!(close_code(&mut chat).await, CloseCode::Away);
    assert_eq!(close_code(&mut fresh).await, CloseCode::Away);
    round_trip(&mut stable, Message::text("still here after the drain")).await;

    // Shutdown: open sockets get the drain time, then a close frame (1001).
    gantry.signal("TERM");
    assert_eq!(close_code(&mut stable).await, CloseCode::Away);
    let status = gantry.child.take().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "gantry exited with {status}:\n{}",
        gantry.log()
    );
    let log = gantry.log();
    assert!(log.contains("they close after the drain time"), "{log}");
}

#[tokio::test]
async fn sockets_pass_over_tls_at_the_edge() {
    let upstream = echo_server().await;
    let tls = "[platform.tls]\ncert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"";
    let gantry = Gantry::start_with(&manifest(upstream, tls, ""), |dir| {
        gantry_tls::dev_certs(&dir.join("certs"), &["localhost".to_string()]).unwrap();
    })
    .await;
    let ca = gantry.dir.path().join("certs/ca.pem");
    let config = gantry_tls::client_config(Some(&ca), &[b"http/1.1"]).unwrap();
    let connector = gantry_tls::tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(("127.0.0.1", gantry.gateway))
        .await
        .unwrap();
    let name = gantry_tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls_stream = connector.connect(name, tcp).await.unwrap();
    let mut socket = open_over(tls_stream, "/chat", &[]).await.unwrap();
    round_trip(&mut socket, Message::text("over wss")).await;
    round_trip(&mut socket, Message::binary(vec![1u8; 200])).await;
}
