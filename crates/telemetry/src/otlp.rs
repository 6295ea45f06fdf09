//! Export of the trace store's kept spans over OTLP, to an OpenTelemetry
//! Collector, Jaeger, Tempo... The messages are the official ones
//! (`opentelemetry-proto`); spans are batched (up to 512, or every second)
//! and grouped by `service.name`. Two transports, as the OTLP specification
//! defines them:
//! - HTTP/protobuf (default): `POST ENDPOINT/v1/traces`;
//! - gRPC: the unary `TraceService/Export` call over HTTP/2 (cleartext, prior
//!   knowledge), framed by hand: one 5-byte prefix and the message, then the
//!   `grpc-status` trailer. A gRPC stack (tonic) would add a second HTTP/2
//!   client and code generation for one call.
//!
//! A failing collector costs nothing but the batch (logged); shutdown sends
//! what is left within two seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::traces::{AttrValue, Span};

const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);
const QUEUE: usize = 8192;

/// The gRPC method spans are exported with.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The full URL requests go to.
    pub url: String,
    /// gRPC rather than HTTP/protobuf.
    pub grpc: bool,
}

/// Where spans go: `[telemetry] otlp_endpoint` / `otlp_protocol`, or else the
/// variables the OpenTelemetry specification defines:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces` over HTTP), and
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`
/// (`http/protobuf` or `grpc`).
pub fn target(configured: Option<&str>, grpc: Option<bool>) -> Option<Target> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let grpc = grpc.unwrap_or_else(|| {
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .is_some_and(|p| p == "grpc")
    });
    let url = match configured {
        Some(base) => signal_url(base, grpc),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) if grpc => signal_url(&url, true),
            Some(url) => url,
            None => signal_url(&env("OTEL_EXPORTER_OTLP_ENDPOINT")?, grpc),
        },
    };
    Some(Target { url, grpc })
}

fn signal_url(base: &str, grpc: bool) -> String {
    let base = base.trim_end_matches('/');
    let path = if grpc { GRPC_PATH } else { "/v1/traces" };
    if base.ends_with(path) {
        base.to_string()
    } else {
        format!("{base}{path}")
    }
}

/// Starts the exporter; spans sent to the returned channel are exported
/// until `stop`, then flushed. Await the handle to wait for the flush.
pub fn start(
    target: Target,
    system: String,
    stop: CancellationToken,
) -> (mpsc::Sender<Span>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(target, system, receiver, stop));
    (sender, task)
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn run(
    target: Target,
    system: String,
    mut receiver: mpsc::Receiver<Span>,
    stop: CancellationToken,
) {
    // `https://` collectors are verified against the system's roots; gRPC
    // offers ALPN `h2`, which gRPC servers over TLS require.
    let connector = if target.grpc {
        match gantry_tls::client_config(None, &[b"h2"]) {
            Ok(config) => gantry_tls::https_connector_with(config),
            Err(error) => {
                tracing::warn!(target: "gantry::traces", %error, "https collectors cannot be verified");
                gantry_tls::https_connector()
            }
        }
    } else {
        gantry_tls::https_connector()
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(target.grpc)
        .build(connector);
    let url = &target;
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            received = receiver.recv() => match received {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= BATCH {
                        send(&client, url, &system, std::mem::take(&mut batch)).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    send(&client, url, &system, std::mem::take(&mut batch)).await;
                }
            }
        }
    }
    // Shutdown: what is queued goes out in one last batch, bounded in time.
    while let Ok(span) = receiver.try_recv() {
        batch.push(span);
    }
    if !batch.is_empty() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), send(&client, url, &system, batch)).await;
    }
}

async fn send(client: &HttpClient, target: &Target, system: &str, spans: Vec<Span>) {
    let count = spans.len();
    let url = target.url.as_str();
    let message = request(system, spans).encode_to_vec();
    let (content_type, body) = if target.grpc {
        ("application/grpc", grpc_frame(&message))
    } else {
        ("application/x-protobuf", Bytes::from(message))
    };
    let mut builder = http::Request::post(url).header("content-type", content_type);
    if target.grpc {
        builder = builder.header("te", "trailers");
    }
    let request = match builder.body(Full::new(body)) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(target: "gantry::traces", %url, %error, "the OTLP endpoint is not a usable URL");
            return;
        }
    };
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        if !target.grpc {
            return Ok(());
        }
        // gRPC reports in `grpc-status`: in the head (trailers-only) or the
        // trailers after the (ignored) response message.
        let head = response.headers().clone();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| head.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match field("grpc-status").as_deref() {
            Some("0") => Ok(()),
            Some(code) => Err(format!(
                "gRPC status {code}: {}",
                field("grpc-message").unwrap_or_default()
            )),
            None => Err("the answer carries no grpc-status".into()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(target: "gantry::traces", %url, %error, spans = count, "the OTLP endpoint did not take a batch; it is dropped (the spans stay in the local store)")
        }
        Err(_) => {
            tracing::warn!(target: "gantry::traces", %url, spans = count, "the OTLP endpoint did not answer in 5s")
        }
    }
}

/// A gRPC length-prefixed message: not compressed, 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// The protobuf request for `spans`: one resource per service.
pub fn request(system: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<String, Vec<OtlpSpan>> = BTreeMap::new();
    for span in spans {
        by_service
            .entry(span.service.clone())
            .or_default()
            .push(convert(span));
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        string("service.name", &service),
                        string("service.namespace", system),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "gantry".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn convert(span: Span) -> OtlpSpan {
    let kind = match span.kind {
        "server" => span::SpanKind::Server,
        "client" => span::SpanKind::Client,
        "producer" => span::SpanKind::Producer,
        "consumer" => span::SpanKind::Consumer,
        _ => span::SpanKind::Internal,
    };
    OtlpSpan {
        trace_id: hex_bytes(&span.trace_id),
        span_id: hex_bytes(&span.span_id),
        parent_span_id: span.parent_id.as_deref().map(hex_bytes).unwrap_or_default(),
        name: span.name,
        kind: kind as i32,
        start_time_unix_nano: span.start_ns,
        end_time_unix_nano: span.start_ns + span.duration_ns,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.into_owned(),
                value: Some(AnyValue {
                    value: Some(match value {
                        AttrValue::Str(s) => any_value::Value::StringValue(s.into_owned()),
                        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
                        AttrValue::Int(i) => any_value::Value::IntValue(i),
                        AttrValue::Double(d) => any_value::Value::DoubleValue(d),
                    }),
                }),
                ..Default::default()
            })
            .collect(),
        status: Some(Status {
            code: if span.error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_otlp_messages_grouped_by_service() {
        let mut attributes = crate::traces::Attributes::new();
        attributes.insert("http.route", "hello");
        attributes.insert("http.response.status_code", 502u16);
        let span = Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_id: None,
            name: "GET hello".into(),
            kind: "server",
            service: "gateway".into(),
            start_ns: 1_000,
            duration_ns: 500,
            error: true,
            attributes,
            sampled: true,
        };
        let request = request("shop", vec![span]);
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let resource = &decoded.resource_spans[0];
        assert_eq!(
            resource.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let span = &resource.scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(
            span.span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.end_time_unix_nano, 1_500);
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn the_endpoint_follows_the_specification() {
        let http = |base: &str| target(Some(base), Some(false)).unwrap();
        assert_eq!(http("http://c:4318").url, "http://c:4318/v1/traces");
        assert_eq!(
            http("http://c:4318/v1/traces/").url,
            "http://c:4318/v1/traces"
        );
        let grpc = target(Some("http://c:4317"), Some(true)).unwrap();
        assert!(grpc.grpc);
        assert_eq!(
            grpc.url,
            "http://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
    }

    #[test]
    fn grpc_messages_are_length_prefixed() {
        let framed = grpc_frame(&[1, 2, 3]);
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, 1, 2, 3]);
    }
}
