//! The response body the gateway sends: an upstream's body streamed through, or
//! a small body Gantry wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gantry_services::{InFlight, InstanceLoad};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::metrics::RouteMetrics;
use crate::shadow::{poll_tapped, Tap};
use crate::upstream::UpstreamBody;

/// A response body, streamed without buffering.
#[derive(Debug)]
pub enum GatewayBody {
    /// An upstream response body. Holds the service's in-flight guard until the
    /// last byte is sent, so a reload does not stop a process mid-response.
    Upstream {
        body: UpstreamBody,
        guard: Option<(InFlight, Option<InstanceLoad>)>,
        /// Copies the body for a shadow comparison.
        tap: Option<Box<Tap>>,
        /// For a gRPC call: where its status is counted when the trailers
        /// carrying it pass.
        grpc: Option<Box<RouteMetrics>>,
    },
    /// A body written by Gantry (problem details, mostly).
    Local(Full<Bytes>),
}

impl GatewayBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Local(Full::new(bytes.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Upstream {
                body,
                guard,
                tap,
                grpc,
            } => {
                let polled = poll_tapped(Pin::new(body), tap, cx);
                if let (Some(metrics), Poll::Ready(Some(Ok(frame)))) = (grpc.as_ref(), &polled) {
                    if let Some(code) = frame.trailers_ref().and_then(crate::grpc::status_in) {
                        metrics.record_grpc(code);
                    }
                }
                if let Poll::Ready(None) = polled {
                    guard.take();
                }
                polled
            }
            GatewayBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Upstream { body, .. } => body.is_end_stream(),
            GatewayBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Upstream { body, .. } => body.size_hint(),
            GatewayBody::Local(full) => full.size_hint(),
        }
    }
}
