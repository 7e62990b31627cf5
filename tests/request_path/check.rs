//! The gRPC request path in-process, shared by the `grpc_request` fuzz target
//! (`fuzz/fuzz_targets/grpc_request.rs` includes this file) and the `request_path` test that
//! replays its seeds: arbitrary bytes become one call of the Copilot API — a method, a request body
//! framed as a client would (or not quite), a caller — sent through the service stack the server
//! assembles (tracing, the header checks and API keys, the request-body guards, tonic's routes with
//! the lean codec, the handlers, validation, routing, the gateway), and the answer is checked
//! against the API's promises about errors: every call ends with a gRPC status; a request, however
//! broken, is never answered INTERNAL or UNKNOWN (the codes kept for the server's own faults);
//! every error carries an `ErrorInfo` in the `copilot.v1` domain; no status message is longer than
//! [`MAX_MESSAGE_BYTES`]. A broken promise panics, which is what the fuzzer looks for.
//!
//! The providers answer in-process (no network), so a call takes microseconds and goes as deep as
//! a request can: `echo` answers every completion, `down` is unreachable, and an alias spans both.
//!
//! An input is a header byte, then the payload (see [`Call::from_input`]):
//!
//! | header bits | meaning |
//! |---|---|
//! | 0–1 | method: Generate, Chat, ListModels, GetModel |
//! | 2–3 | framing: the payload as one frame; a frame whose length field is the payload's first four bytes; one frame sent in two chunks split where the payload's first byte says; a frame cut short by the payload's first byte |
//! | 4–5 | caller: no API keys configured; a valid key; no key; an unknown key |
//!
//! The frames this makes have the compressed flag 0, but a declared length shorter than the
//! message turns its rest into more frames with any flag: a set flag without `grpc-encoding` is
//! INTERNAL by the gRPC compression spec, which the check accepts for such a body only, and only
//! with `ErrorInfo` `MALFORMED_REQUEST`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use copilot_provider::{
    ChatEvent, ChatRequest, ChatStream, Completion, HealthReport, ModelInfo, Provider, ProviderError, Usage,
};
use http_body::{Body, Frame};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::ServiceExt;

use copilot::auth::{Auth, KeyHash};
use copilot::config::{AliasTarget, ApiKeyConfig, AuthConfig, DefaultOptions, LimitsConfig, ProviderPolicy};
use copilot::error::{ERROR_DOMAIN, MAX_MESSAGE_BYTES};
use copilot::gateway::Gateway;
use copilot::grpc::CopilotApi;
use copilot::grpc_routes::GrpcRoutes;
use copilot::proto::v1 as pb;
use copilot::proto::v1::copilot_server::CopilotServer;
use copilot::request_buffers::{BufferBudget, BufferScope, ConnectionBuffers};
use copilot::router::{Instance, InstanceState, Labels, Router};
use copilot::telemetry::rpc_trace::TracedBody;

/// The key the "valid key" caller presents; the keyed service accepts only it.
const KEY: &str = "cpk_fuzz";
/// The keyed service's key may use these models: `down/…` is refused PERMISSION_DENIED.
const KEY_MODELS: [&str; 2] = ["echo/*", "fast"];
/// The largest request message: small enough that a declared length reaches it easily.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Limits small enough that inputs of a few KiB reach them (the server's defaults are MiBs).
// `..default()` even when every field is set, so that limits added later keep their defaults.
#[allow(clippy::needless_update)]
fn limits() -> LimitsConfig {
    LimitsConfig {
        max_message_bytes: MAX_MESSAGE,
        max_messages: 8,
        max_prompt_chars: 2048,
        max_response_bytes: 4096,
        ..LimitsConfig::default()
    }
}
/// Longer than any call takes here; past it the call counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The API method an input calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Generate,
    Chat,
    ListModels,
    GetModel,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Generate, Method::Chat, Method::ListModels, Method::GetModel];

    fn name(self) -> &'static str {
        match self {
            Method::Generate => "Generate",
            Method::Chat => "Chat",
            Method::ListModels => "ListModels",
            Method::GetModel => "GetModel",
        }
    }
}

/// How the request message is put into the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One well-formed frame around the payload.
    Whole,
    /// The payload's first four bytes are the frame's length field (big-endian), whatever the
    /// rest's length: shorter or longer than the message, or past the message limit.
    DeclaredLength,
    /// One well-formed frame around the payload after its first byte, sent in two body chunks
    /// split at that byte (modulo the frame's length).
    Split,
    /// One well-formed frame around the payload after its first byte, less its last bytes (as
    /// many as that byte says, modulo the frame's length): a message, or a header, cut short.
    Truncated,
}

impl Framing {
    pub const ALL: [Framing; 4] = [Framing::Whole, Framing::DeclaredLength, Framing::Split, Framing::Truncated];
}

/// Who makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The server has no API keys configured.
    Open,
    /// API keys are on and the caller presents the valid one.
    ValidKey,
    /// API keys are on and the caller sends no `authorization`.
    NoKey,
    /// API keys are on and the caller presents a key nobody configured.
    UnknownKey,
}

impl Caller {
    pub const ALL: [Caller; 4] = [Caller::Open, Caller::ValidKey, Caller::NoKey, Caller::UnknownKey];
}

/// One call, as an input describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub framing: Framing,
    pub caller: Caller,
    /// What follows the header byte: the message (after the framing's own bytes, if any).
    pub payload: Vec<u8>,
}

impl Call {
    /// Reads an input: its first byte is the header (an empty input is a Generate with an empty
    /// message), the rest the payload.
    pub fn from_input(input: &[u8]) -> Call {
        let (header, payload) = input.split_first().map_or((0, &[][..]), |(h, p)| (*h, p));
        Call {
            method: Method::ALL[usize::from(header & 3)],
            framing: Framing::ALL[usize::from((header >> 2) & 3)],
            caller: Caller::ALL[usize::from((header >> 4) & 3)],
            payload: payload.to_vec(),
        }
    }

    /// The input that describes this call (what [`Call::from_input`] reads back).
    pub fn to_input(&self) -> Vec<u8> {
        let index = |i: Option<usize>| i.expect("listed in ALL") as u8;
        let header = index(Method::ALL.iter().position(|m| *m == self.method))
            | index(Framing::ALL.iter().position(|f| *f == self.framing)) << 2
            | index(Caller::ALL.iter().position(|c| *c == self.caller)) << 4;
        [&[header][..], &self.payload].concat()
    }

    /// The request body's chunks.
    pub fn body(&self) -> VecDeque<Bytes> {
        let frame = |message: &[u8]| {
            let mut bytes = vec![0];
            bytes.extend((message.len() as u32).to_be_bytes());
            bytes.extend(message);
            bytes
        };
        let (first, rest) = self.payload.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        match self.framing {
            Framing::Whole => VecDeque::from([Bytes::from(frame(&self.payload))]),
            Framing::DeclaredLength => {
                let mut length = [0; 4];
                let n = self.payload.len().min(4);
                length[..n].copy_from_slice(&self.payload[..n]);
                let bytes = [&[0][..], &length, &self.payload[n..]].concat();
                VecDeque::from([Bytes::from(bytes)])
            }
            Framing::Split => {
                let mut bytes = Bytes::from(frame(rest));
                let tail = bytes.split_off(usize::from(first) % (bytes.len() + 1));
                VecDeque::from([bytes, tail])
            }
            Framing::Truncated => {
                let mut bytes = frame(rest);
                bytes.truncate(bytes.len() - usize::from(first) % (bytes.len() + 1));
                VecDeque::from([Bytes::from(bytes)])
            }
        }
    }

    /// The HTTP/2 request a gRPC client sends.
    fn request(&self) -> http::Request<Chunks> {
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://copilot.fuzz/copilot.v1.Copilot/{}", self.method.name()))
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        request = match self.caller {
            Caller::Open | Caller::NoKey => request,
            Caller::ValidKey => request.header(http::header::AUTHORIZATION, format!("Bearer {KEY}")),
            Caller::UnknownKey => request.header(http::header::AUTHORIZATION, "Bearer cpk_nobody"),
        };
        request.body(Chunks(self.body())).expect("a well-formed request")
    }
}

/// A request body of the given chunks, then its end.
pub struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a call ended, once it kept every promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    /// The `ErrorInfo` reason (`None` for OK).
    pub reason: Option<String>,
    /// Response messages received before the status.
    pub messages: usize,
}

/// What the request body holds, frame by frame, as the server reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyShape {
    /// Whole frames before the first that stops the server (or the end).
    pub frames: usize,
    /// A frame header with a flag other than 0 (the compression spec's INTERNAL).
    pub flagged: bool,
    /// The body ends inside a frame header or message.
    pub cut_short: bool,
}

impl BodyShape {
    fn of(body: &[u8], max_message: usize) -> BodyShape {
        let mut shape = BodyShape::default();
        let mut rest = body;
        while !rest.is_empty() {
            let Some(([flag, length @ ..], after)) = rest.split_first_chunk::<5>() else {
                shape.cut_short = true;
                break;
            };
            if *flag != 0 {
                shape.flagged = true;
                break;
            }
            let length = u32::from_be_bytes(*length) as usize;
            // Refused at its header: nothing after it is read.
            if length > max_message {
                break;
            }
            if after.len() < length {
                shape.cut_short = true;
                break;
            }
            shape.frames += 1;
            rest = &after[length..];
        }
        shape
    }
}

/// The server's service stack (`server::guarded`), around the API alone (health and reflection
/// are tonic's) with the given gateway, limits and keys.
pub fn api_service(
    gateway: Arc<Gateway>,
    limits: &LimitsConfig,
    auth: Option<Arc<Auth>>,
    hard_stop: CancellationToken,
) -> impl tower::Service<
    http::Request<Chunks>,
    Response = http::Response<TracedBody<tonic::body::Body>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ use<> {
    let routes = GrpcRoutes::new(
        CopilotServer::new(CopilotApi::new(gateway, limits.clone()))
            .max_decoding_message_size(limits.max_message_bytes),
    );
    let connection_buffer_bytes = limits.connection_buffer_bytes();
    let service = copilot::server::guarded(routes, limits, auth, hard_stop);
    // Each call as if on a connection of its own, with that connection's budget of partly
    // received request bytes.
    tower::ServiceExt::map_request(service, move |mut request: http::Request<Chunks>| {
        request
            .extensions_mut()
            .insert(ConnectionBuffers(BufferBudget::new(BufferScope::Connection, connection_buffer_bytes)));
        request
    })
}

/// The request path with its providers, on a runtime of its own: build once, check many inputs.
pub struct RequestPath {
    runtime: tokio::runtime::Runtime,
    open:
        tower::util::BoxCloneService<http::Request<Chunks>, http::Response<TracedBody<tonic::body::Body>>, Infallible>,
    keyed:
        tower::util::BoxCloneService<http::Request<Chunks>, http::Response<TracedBody<tonic::body::Body>>, Infallible>,
}

impl Default for RequestPath {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestPath {
    pub fn new() -> RequestPath {
        // One thread, as the fuzzer runs one input at a time; the calls' own tasks run on it too.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let _entered = runtime.enter();
        let hard_stop = CancellationToken::new();
        let aliases = BTreeMap::from([(
            "fast".to_string(),
            vec![AliasTarget::Model("down/fast".into()), AliasTarget::Replicas { replicas: vec!["echo/fast".into()] }],
        )]);
        let router = Router::new(
            vec![instance("echo", Arc::new(Echo)), instance("down", Arc::new(Down))],
            Some("echo".into()),
            Some("echo/default".into()),
            aliases,
        );
        let gateway = Arc::new(Gateway::new(router, hard_stop.clone()));
        let auth = Auth::from_config(
            &AuthConfig {
                enabled: true,
                keys: vec![ApiKeyConfig {
                    name: "fuzz".into(),
                    hash: KeyHash::of(KEY),
                    models: Some(KEY_MODELS.map(String::from).to_vec()),
                    requests_per_minute: None,
                    // Large, so calls are rarely refused for it; a completion's reservation is still
                    // taken and settled on every call.
                    tokens_per_minute: Some(1_000_000_000),
                }],
                ..AuthConfig::default()
            },
            None,
        );
        assert!(auth.is_some(), "the fuzz key is accepted");
        let open = api_service(gateway.clone(), &limits(), None, hard_stop.clone());
        let keyed = api_service(gateway, &limits(), auth, hard_stop);
        drop(_entered);
        RequestPath {
            runtime,
            open: tower::util::BoxCloneService::new(open),
            keyed: tower::util::BoxCloneService::new(keyed),
        }
    }

    /// Makes the call `input` describes and checks the answer; panics, saying which promise was
    /// broken and what the answer was, when one was.
    pub fn check(&self, input: &[u8]) -> Answer {
        let call = Call::from_input(input);
        let service = match call.caller {
            Caller::Open => self.open.clone(),
            _ => self.keyed.clone(),
        };
        let request = call.request();
        let shape = BodyShape::of(&call.body().iter().flatten().copied().collect::<Vec<u8>>(), MAX_MESSAGE);
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, async {
                let response = service.oneshot(request).await.unwrap_or_else(|never| match never {});
                read_response(call.method, shape, response).await
            })
            .await
        });
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(broken)) => panic!("{broken}\n  call: {call:?}\n  body: {shape:?}"),
            Err(_) => panic!("no answer within {CALL_TIMEOUT:?}\n  call: {call:?}\n  body: {shape:?}"),
        }
    }
}

/// Reads the whole response and checks it.
async fn read_response(
    method: Method,
    shape: BodyShape,
    response: http::Response<TracedBody<tonic::body::Body>>,
) -> Result<Answer, String> {
    let (parts, body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(format!("HTTP status {} (gRPC answers 200 with a grpc-status)", parts.status));
    }
    // Trailers-only: the status is in the headers and the body is empty.
    let mut status = Status::from_header_map(&parts.headers);
    let mut data = Vec::new();
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| format!("the response body failed: {e}"))?;
        match frame.into_data() {
            Ok(mut chunk) => data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining())),
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref()
                    && status.is_none()
                {
                    status = Status::from_header_map(trailers);
                }
            }
        }
    }
    let status = status.ok_or("the response has no grpc-status, in the headers or the trailers")?;
    let messages = decode_messages(method, &data)?;
    check_status(&status, messages, shape)
}

/// Splits the response body into its frames and decodes each as the method's response type.
fn decode_messages(method: Method, mut data: &[u8]) -> Result<usize, String> {
    let mut count = 0;
    while !data.is_empty() {
        let [flag, a, b, c, d, rest @ ..] = data else {
            return Err(format!("a response frame header cut short: {data:?}"));
        };
        let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if *flag != 0 || rest.len() < length {
            return Err(format!("a malformed response frame: flag {flag}, length {length}, {} bytes left", rest.len()));
        }
        let message = &rest[..length];
        let decoded = match method {
            Method::Generate => pb::GenerateResponse::decode(message).map(drop),
            Method::Chat => pb::ChatResponse::decode(message).map(drop),
            Method::ListModels => pb::ListModelsResponse::decode(message).map(drop),
            Method::GetModel => pb::GetModelResponse::decode(message).map(drop),
        };
        decoded.map_err(|e| format!("a response message that is not a {}Response: {e}", method.name()))?;
        data = &rest[length..];
        count += 1;
    }
    Ok(count)
}

/// The API's promises about a call's status, given what its request body held.
pub fn check_status(status: &Status, messages: usize, shape: BodyShape) -> Result<Answer, String> {
    let code = status.code();
    let shown = || format!("{:?}: {:?}", code, status.message());
    // The compression spec's case, which the request-body guards answer with MALFORMED_REQUEST.
    let spec_internal = code == Code::Internal
        && shape.flagged
        && status.get_details_error_info().is_some_and(|info| info.reason == "MALFORMED_REQUEST");
    if matches!(code, Code::Internal | Code::Unknown) && !spec_internal {
        return Err(format!("a request was answered {}, a code kept for the server's own faults", shown()));
    }
    if status.message().len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "a status message of {} bytes (at most {MAX_MESSAGE_BYTES}): {}",
            status.message().len(),
            shown()
        ));
    }
    if code == Code::Ok {
        if messages == 0 {
            return Err("OK without a response message".into());
        }
        return Ok(Answer { code, reason: None, messages });
    }
    let info = status.get_details_error_info().ok_or_else(|| format!("no ErrorInfo in the details of {}", shown()))?;
    if info.domain != ERROR_DOMAIN || info.reason.is_empty() {
        return Err(format!("ErrorInfo {{ reason: {:?}, domain: {:?} }} on {}", info.reason, info.domain, shown()));
    }
    Ok(Answer { code, reason: Some(info.reason), messages })
}

fn instance(name: &str, provider: Arc<dyn Provider>) -> Instance {
    let timeout = Duration::from_secs(5);
    let policy = ProviderPolicy {
        first_token_timeout: timeout,
        idle_timeout: timeout,
        list_timeout: timeout,
        // No retries and no breaker: every call's answer depends on the call alone.
        retries: 0,
        retry_backoff: Duration::ZERO,
        retry_backoff_max: Duration::ZERO,
        breaker_failures: 0,
        breaker_cooldown: Duration::ZERO,
        max_concurrency: None,
        health_interval: timeout,
        ..ProviderPolicy::default()
    };
    Instance {
        name: name.into(),
        provider,
        endpoint: format!("in-process://{name}"),
        labels: Labels { gen_ai_provider: "fuzz", in_process: true, server_address: None, server_port: None },
        state: InstanceState::new(&policy),
        policy,
        defaults: DefaultOptions::default(),
    }
}

/// Answers every completion at once with one word, and knows every model.
struct Echo;

#[copilot_provider::async_trait]
impl Provider for Echo {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let done = Completion {
            model: request.model,
            usage: Usage { input_tokens: 1, output_tokens: 1, ..Default::default() },
            ..Default::default()
        };
        Ok(Box::pin(futures::stream::iter([Ok(ChatEvent::Delta("echo".into())), Ok(ChatEvent::done(done))])))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        Ok(vec![ModelInfo { name: "default".into(), ..Default::default() }])
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        Ok(ModelInfo { name: model.into(), ..Default::default() })
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        Ok(HealthReport::default())
    }
}

/// An upstream that cannot be reached.
struct Down;

#[copilot_provider::async_trait]
impl Provider for Down {
    async fn chat(&self, _: ChatRequest) -> Result<ChatStream, ProviderError> {
        Err(ProviderError::Unreachable("connection refused".into()))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        Err(ProviderError::Unreachable("connection refused".into()))
    }

    async fn describe_model(&self, _: &str) -> Result<ModelInfo, ProviderError> {
        Err(ProviderError::Unreachable("connection refused".into()))
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        Err(ProviderError::Unreachable("connection refused".into()))
    }
}
