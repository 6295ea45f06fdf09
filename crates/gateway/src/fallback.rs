//! Graceful degradation: a route's fallback answers when its service cannot.

use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::attempts::FALLBACK;
use crate::body::GatewayBody;
use crate::forwarding::strip_hop_by_hop;
use crate::problem::Problem;
use crate::proxy::{Gateway, Outcome};
use crate::router::{CompiledFallback, CompiledRoute};
use crate::split::Backend;
use crate::upstream::RequestBody;

impl Gateway {
    /// Answers with the route's fallback when it has one, otherwise with the
    /// problem. A fallback to another service gets the request only if its body
    /// is still available (it was not streamed away already).
    pub(crate) async fn fall_back(
        &self,
        route: &CompiledRoute,
        backend: &Backend,
        problem: Problem,
        detail: String,
        request: Option<Request<RequestBody>>,
        outcome: &mut Outcome<'_>,
    ) -> Response<GatewayBody> {
        let respond_problem = |outcome: &Outcome<'_>| {
            problem.respond(detail.clone(), outcome.path, outcome.request_id)
        };
        let response = match (&route.fallback, request) {
            (
                Some(CompiledFallback::Static {
                    status,
                    body,
                    content_type,
                }),
                _,
            ) => {
                backend.metrics.fallback(problem.reason());
                let mut response = Response::new(GatewayBody::local(body.clone()));
                *response.status_mut() = *status;
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
                response
                    .headers_mut()
                    .insert(FALLBACK, HeaderValue::from_static(problem.reason()));
                response
            }
            (Some(CompiledFallback::Service(service)), Some(mut request)) => {
                match service.pick(None) {
                    Some(instance) => {
                        backend.metrics.fallback(problem.reason());
                        request
                            .headers_mut()
                            .insert(header::HOST, instance.host_header.clone());
                        let in_flight = service.track_request();
                        let sent = tokio::time::timeout(
                            route.timeout,
                            self.inner.upstreams.send(instance, request),
                        )
                        .await;
                        match sent {
                            Ok(Ok(response)) => {
                                let (mut parts, body) = response.into_parts();
                                strip_hop_by_hop(&mut parts.headers);
                                parts
                                    .headers
                                    .insert(FALLBACK, HeaderValue::from_static(problem.reason()));
                                Response::from_parts(
                                    parts,
                                    GatewayBody::Upstream {
                                        body,
                                        guard: Some((in_flight, None)),
                                        tap: None,
                                        grpc: None,
                                    },
                                )
                            }
                            _ => respond_problem(outcome),
                        }
                    }
                    None => respond_problem(outcome),
                }
            }
            _ => respond_problem(outcome),
        };
        outcome.finish_ref(response, &backend.metrics)
    }
}
