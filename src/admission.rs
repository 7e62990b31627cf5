//! A layer for checks that look at a call's headers and either let it through (perhaps adding to
//! its extensions) or answer it at once with a status, before any of its body is read: API keys
//! (`auth/layer.rs`) and the checks on request headers (`request_headers.rs`).

use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response};
use tonic::Status;

use crate::error::GatewayError;

/// One such check.
pub trait Admission {
    /// Lets the call through, or says why not.
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError>;
}

#[derive(Clone)]
pub struct AdmissionLayer<A> {
    admission: A,
}

impl<A> AdmissionLayer<A> {
    pub fn new(admission: A) -> Self {
        Self { admission }
    }
}

impl<A: Clone, S> tower::Layer<S> for AdmissionLayer<A> {
    type Service = Admitting<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitting { inner, admission: self.admission.clone() }
    }
}

#[derive(Clone)]
pub struct Admitting<A, S> {
    inner: S,
    admission: A,
}

impl<A, S, B> tower::Service<Request<B>> for Admitting<A, S>
where
    A: Admission,
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.admission.admit(&mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(std::future::ready(Ok(Status::from(error).into_http()))),
        }
    }
}
