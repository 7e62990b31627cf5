//! The tower layer in front of the routes: identifies the caller by API key, applies the key's
//! request and token budgets, and hands the key to the handlers in the request's extensions.
//! With auth off it is a pass-through that costs one branch.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::Either;
use http::{Request, Response};
use tonic::Status;

use super::{Auth, Caller};
use crate::error::GatewayError;
use crate::rpc_trace::API_PREFIX;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIX: &str = "/grpc.reflection.";
/// The span attribute naming the key a call came with (the rpc span of `rpc_trace.rs`).
pub const KEY_NAME_ATTRIBUTE: &str = "copilot.api_key.name";

#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Auth>>,
}

impl AuthLayer {
    pub fn new(auth: Option<Arc<Auth>>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
}

impl<S, B> tower::Service<Request<B>> for AuthService<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth
            && let Err(error) = auth.admit(&mut request)
        {
            return Either::Left(std::future::ready(Ok(Status::from(error).into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

impl Auth {
    /// Lets the call through, with its caller attached, or says why not.
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let path = request.uri().path();
        // Only completions spend tokens; every call of the API spends a request.
        let api_call = path.strip_prefix(API_PREFIX).map(|method| matches!(method, "Generate" | "Chat"));
        if api_call.is_none()
            && ((self.open_health && path.starts_with(HEALTH_PREFIX))
                || (self.open_reflection && path.starts_with(REFLECTION_PREFIX)))
        {
            return Ok(());
        }
        let key = self.identify(request.headers().get(http::header::AUTHORIZATION))?;
        tracing::Span::current().record(KEY_NAME_ATTRIBUTE, key.name.as_str());
        if let Some(uses_tokens) = api_call {
            key.admit(uses_tokens, Instant::now())?;
        }
        let caller = Caller(key.clone());
        request.extensions_mut().insert(caller);
        Ok(())
    }
}
