//! A layer for checks that look at a call's headers and either let it through (perhaps adding to
//! its extensions) or answer it at once with a status, before any of its body is read: API keys
//! (`auth/layer.rs`) and the checks on request headers (`request_headers.rs`). A check may also
//! answer later (the key budgets kept in Redis): then the call waits for it, still before its body
//! is read, and only such calls pay for the boxed future.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use http::{Request, Response};
use tonic::Status;

use crate::error::GatewayError;

/// A check's answer: now, or once a future resolves.
pub enum Admit {
    Now(Result<(), GatewayError>),
    Later(BoxFuture<'static, Result<(), GatewayError>>),
}

impl From<Result<(), GatewayError>> for Admit {
    fn from(result: Result<(), GatewayError>) -> Admit {
        Admit::Now(result)
    }
}

/// One such check.
pub trait Admission {
    /// Lets the call through, or says why not.
    fn admit<B>(&self, request: &mut Request<B>) -> Admit;
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

type Refused<S, B> =
    std::future::Ready<Result<<S as tower::Service<Request<B>>>::Response, <S as tower::Service<Request<B>>>::Error>>;
type Waited<S, B> =
    BoxFuture<'static, Result<<S as tower::Service<Request<B>>>::Response, <S as tower::Service<Request<B>>>::Error>>;

impl<A, S, B> tower::Service<Request<B>> for Admitting<A, S>
where
    A: Admission,
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Refused<S, B>, Either<S::Future, Waited<S, B>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.admission.admit(&mut request) {
            Admit::Now(Ok(())) => Either::Right(Either::Left(self.inner.call(request))),
            Admit::Now(Err(error)) => Either::Left(refuse::<S, B>(error)),
            Admit::Later(check) => {
                // The service made ready by `poll_ready` goes with the call; a clone stays for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Right(Box::pin(async move {
                    match check.await {
                        Ok(()) => inner.call(request).await,
                        Err(error) => Ok(Status::from(error).into_http()),
                    }
                })))
            }
        }
    }
}

fn refuse<S, B>(error: GatewayError) -> Refused<S, B>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    std::future::ready(Ok(Status::from(error).into_http()))
}
