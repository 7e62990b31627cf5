//! The gRPC services behind the listener, chosen by the service name in the request's path
//! (`/copilot.v1.Copilot/Generate`): what tonic's `Routes` does, without its axum router.
//!
//! tonic's `Routes` matches each path in an axum router and boxes each request body, response
//! body and future once more on the way through it. The API is the hot path, so it is called
//! directly, with the guarded body as it comes; health and reflection, called now and then, sit
//! behind one boxed service each. A path naming no service gets UNIMPLEMENTED, as from tonic.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::grpc::CopilotApi;
use crate::proto::v1::copilot_server::CopilotServer;

/// A service other than the API, boxed: it is called now and then.
type OtherService<B> = BoxCloneSyncService<Request<B>, Response<Body>, Infallible>;

/// The API and the other services a listener serves, for requests with bodies of type `B`.
pub struct GrpcRoutes<B> {
    api: CopilotServer<CopilotApi>,
    /// By service name (`grpc.health.v1.Health`): a handful, so a list.
    others: Vec<(&'static str, OtherService<B>)>,
}

impl<B> Clone for GrpcRoutes<B> {
    fn clone(&self) -> Self {
        Self { api: self.api.clone(), others: self.others.clone() }
    }
}

impl<B> GrpcRoutes<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    pub fn new(api: CopilotServer<CopilotApi>) -> Self {
        Self { api, others: Vec::new() }
    }

    /// Adds a generated service (health, reflection) under its own name.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.others.push((S::NAME, BoxCloneSyncService::new(service)));
        self
    }
}

impl<B> tower::Service<Request<B>> for GrpcRoutes<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    /// Always ready: the generated services are (they take no capacity), and the others are
    /// driven to readiness per call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let service = service_name(request.uri().path());
        if service == Some(<CopilotServer<CopilotApi> as NamedService>::NAME) {
            // The generated server is ready at all times and answers an unknown method itself.
            return self.api.call(request);
        }
        match self.others.iter().find(|(name, _)| Some(*name) == service) {
            Some((_, other)) => Box::pin(other.clone().oneshot(request)),
            None => Box::pin(std::future::ready(Ok(unimplemented()))),
        }
    }
}

/// `package.Service` from `/package.Service/Method`; `None` for any other shape of path.
fn service_name(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some(service)
}

/// What tonic answers to a path that names no service: UNIMPLEMENTED in a trailers-only response.
fn unimplemented() -> Response<Body> {
    let (parts, ()) = tonic::Status::unimplemented("").into_http::<()>().into_parts();
    Response::from_parts(parts, Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_first_segment_of_a_two_segment_path() {
        assert_eq!(service_name("/copilot.v1.Copilot/Generate"), Some("copilot.v1.Copilot"));
        assert_eq!(service_name("/grpc.health.v1.Health/Check"), Some("grpc.health.v1.Health"));
        assert_eq!(service_name("/copilot.v1.Copilot/"), None, "no method");
        assert_eq!(service_name("//Generate"), None, "no service");
        assert_eq!(service_name("/copilot.v1.Copilot"), None);
        assert_eq!(service_name("copilot.v1.Copilot/Generate"), None);
    }

    #[test]
    fn an_unknown_service_is_unimplemented_as_tonic_answers_it() {
        let response = unimplemented();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(response.headers()["content-type"], "application/grpc");
    }
}
