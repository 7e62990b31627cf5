//! A server span per call of the Copilot API (gRPC `rpc.*` conventions), parented on the caller's
//! W3C `traceparent` so Copilot joins the caller's trace, plus the RPC metrics. The span stays open
//! until the response body ends — the whole stream for `Chat` — and records the final gRPC status
//! from the trailers (CANCELLED when the client went away first). The trace id goes back to the
//! client in the `x-trace-id` response metadata so it can find its trace.
//!
//! Health checks and reflection are not traced: probes every few seconds would drown the traces.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use opentelemetry::KeyValue;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::metrics::metrics;
use crate::telemetry::metrics_enabled;

pub const API_PREFIX: &str = "/copilot.v1.Copilot/";
pub const TRACE_ID_HEADER: &str = "x-trace-id";

#[derive(Clone)]
pub struct RpcTraceLayer;

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

#[derive(Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RpcTrace<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(method) = request.uri().path().strip_prefix(API_PREFIX).and_then(api_method) else {
            return Box::pin(async move { Ok(inner.call(request).await?.map(TracedBody::untraced)) });
        };
        let span = tracing::info_span!(
            "rpc",
            otel.name = method.span_name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = "copilot.v1.Copilot",
            rpc.method = method.name,
            rpc.grpc.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            copilot.api_key.name = tracing::field::Empty,
            copilot.cache = tracing::field::Empty,
        );
        // Without trace export the span is disabled: no context to extract or report.
        let mut trace_id = None;
        if !span.is_disabled() {
            let parent =
                opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
            // Must happen before the span is first entered, or it is ignored.
            let _ = span.set_parent(parent);
            let context = span.context().span().span_context().clone();
            trace_id = context.is_valid().then(|| context.trace_id().to_string());
            if let Some(id) = &trace_id {
                span.record("trace_id", id.as_str());
            }
        }
        let started = Instant::now();
        if metrics_enabled() {
            metrics().active_requests.add(1, &[KeyValue::new("rpc.method", method.name)]);
        }
        let call_span = span.clone();
        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                if let Some(id) = trace_id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
                    response.headers_mut().insert(TRACE_ID_HEADER, id);
                }
                // A status in the headers means a trailers-only response: the call failed at once.
                let status = grpc_status(response.headers());
                Ok(response.map(|body| TracedBody::traced(body, span, method, started, status)))
            }
            .instrument(call_span),
        )
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

pin_project_lite::pin_project! {
    /// The response body, holding the call's span until the body ends.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
    }

    impl<B> PinnedDrop for TracedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish();
            }
        }
    }
}

/// A method of the API, named as the conventions want it, without allocating per call.
#[derive(Clone, Copy)]
struct ApiMethod {
    name: &'static str,
    span_name: &'static str,
}

fn api_method(name: &str) -> Option<ApiMethod> {
    let (name, span_name) = match name {
        "Generate" => ("Generate", "copilot.v1.Copilot/Generate"),
        "Chat" => ("Chat", "copilot.v1.Copilot/Chat"),
        "ListModels" => ("ListModels", "copilot.v1.Copilot/ListModels"),
        "GetModel" => ("GetModel", "copilot.v1.Copilot/GetModel"),
        "Embed" => ("Embed", "copilot.v1.Copilot/Embed"),
        "CountTokens" => ("CountTokens", "copilot.v1.Copilot/CountTokens"),
        // Unknown methods get UNIMPLEMENTED from the router; nothing to trace.
        _ => return None,
    };
    Some(ApiMethod { name, span_name })
}

struct CallRecord {
    span: tracing::Span,
    method: ApiMethod,
    started: Instant,
    /// The status seen so far; none when the client went away before the trailers.
    status: Option<i32>,
}

impl CallRecord {
    fn finish(self) {
        // No trailers: the client cancelled or disconnected.
        let code = self.status.unwrap_or(tonic::Code::Cancelled as i32);
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code);
        // The conventions count only these as server errors; the rest are the caller's.
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
            self.span.record("otel.status_code", "ERROR");
        }
        if code != 0 {
            self.span.record("error.type", name);
        }
        if !metrics_enabled() {
            return;
        }
        let m = metrics();
        let method = KeyValue::new("rpc.method", self.method.name);
        let attributes = [
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "copilot.v1.Copilot"),
            method.clone(),
            KeyValue::new("rpc.grpc.status_code", i64::from(code)),
        ];
        m.rpc_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        if code != 0 {
            m.rpc_errors.add(1, &attributes);
        }
        m.active_requests.add(-1, &[method]);
    }
}

impl<B> TracedBody<B> {
    fn untraced(inner: B) -> Self {
        Self { inner, call: None }
    }

    fn traced(inner: B, span: tracing::Span, method: ApiMethod, started: Instant, status: Option<i32>) -> Self {
        Self { inner, call: Some(CallRecord { span, method, started, status }) }
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(call) = this.call.as_mut()
        {
            call.status = grpc_status(trailers).or(call.status);
        }
        if let Poll::Ready(None) = &polled
            && let Some(call) = this.call.take()
        {
            call.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The canonical name of a gRPC status code, as `error.type` wants it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}
