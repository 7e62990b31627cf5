//! The server's error type, and the one place where errors become gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` (reason + domain + metadata) so clients can
//! branch on a stable reason rather than on message text; INVALID_ARGUMENT adds `BadRequest`
//! field violations and retryable upstream errors add `RetryInfo` when the upstream gave a delay.

use std::collections::HashMap;
use std::time::Duration;

use crate::request_buffers::{BufferFull, BufferScope};
use copilot_provider::{Feature, ProviderError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetail, ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error this server produces.
pub const ERROR_DOMAIN: &str = "copilot.v1";

/// Longest status message sent, in bytes (UTF-8): longer ones are cut on a character boundary and
/// end with an ellipsis. Requests and upstreams can put text of any length into an error (a model
/// name, a 20 KB upstream error body); the status travels in HTTP/2 trailers, which clients cap at
/// 8–16 KiB (grpc-java 8 KiB, grpc-go and tonic 16 KiB) and then fail the call with
/// RESOURCE_EXHAUSTED instead of showing the error.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Longest string in the error details (ErrorInfo metadata values, BadRequest fields and
/// descriptions, QuotaFailure entries), cut like the message.
pub const MAX_DETAIL_BYTES: usize = 256;

/// Longest BadRequest field path (`messages[3].content`), in bytes.
const MAX_FIELD_PATH_BYTES: usize = 128;

/// Most BadRequest field violations sent; the message lists more, up to its own cap.
pub const MAX_FIELD_VIOLATIONS: usize = 5;

// Worst case with every cap reached: the message percent-encodes to at most 3 KiB, the details
// (base64) to under 4 KiB: the trailers stay under 8 KiB (a test builds that case).

/// Which provider and model a failed call was routed to.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetName {
    pub provider: String,
    pub model: String,
    /// Where the provider lives (base URL), for messages an operator can act on.
    pub endpoint: String,
}

impl TargetName {
    pub fn routable_name(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request failed validation; one entry per offending field.
    #[error("invalid request: {}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),

    /// The request left `model` empty and no default model is configured.
    #[error("no model was named and no default model is configured")]
    NoDefaultModel,

    /// An `Embed` call left `model` empty and no default embedding model is configured.
    #[error("no model was named and no default embedding model is configured")]
    NoDefaultEmbeddingModel,

    /// The provider failed. `chunks_sent` tells whether the client already received output.
    #[error("{}: {error}", target.routable_name())]
    Provider { target: Box<TargetName>, error: ProviderError, chunks_sent: usize },

    /// The caller's deadline (`grpc-timeout`) expired.
    #[error("{}: the call's deadline expired", target.routable_name())]
    DeadlineExceeded { target: Box<TargetName>, budget: Duration, phase: Phase },

    /// The provider went quiet for longer than its configured timeout.
    #[error("{}: silent for {}", target.routable_name(), humantime::format_duration(*timeout))]
    UpstreamTimeout { target: Box<TargetName>, timeout: Duration, phase: Phase },

    /// The instance's circuit breaker is open after repeated failures.
    #[error("{}: circuit breaker open", target.routable_name())]
    CircuitOpen { target: Box<TargetName> },

    /// Every target of an alias failed; `last` decides the status.
    #[error("every target of alias '{alias}' failed")]
    AllTargetsFailed { alias: String, earlier: Vec<GatewayError>, last: Box<GatewayError> },

    /// Listing models failed at every provider.
    #[error("no provider answered ListModels")]
    NoProviderAnswered(Vec<(String, String)>),

    /// The server is shutting down and the call outlived the grace period.
    #[error("the server is shutting down")]
    ShuttingDown,

    /// The server requires an API key and the call came without a valid one.
    #[error("unauthenticated: {0:?}")]
    Unauthenticated(AuthFailure),

    /// The caller's key may not use this model (`model` as the key's allow-list names it).
    #[error("key '{key}' may not use model '{model}'")]
    ModelNotAllowed { key: String, model: String },

    /// A request message is larger than `limits.max_message_bytes`.
    #[error("a request message of {size} bytes is over the limit of {limit}")]
    MessageTooLarge { size: u64, limit: usize },

    /// The upstream's reply outgrew `limits.max_response_bytes`: the text `Generate` collects
    /// (`chunk_bytes` None), or one chunk of a `Chat` stream (its size). The upstream request
    /// was cancelled.
    #[error("{}: the reply is over the limit of {limit} bytes", target.routable_name())]
    ResponseTooLarge { target: Box<TargetName>, limit: usize, chunk_bytes: Option<usize> },

    /// A request message could not be decoded: its bytes are not a `message_type` message, or a
    /// string field holds invalid UTF-8 (`detail` is prost's description).
    #[error("the request is not a valid {message_type}: {detail}")]
    MalformedRequest { message_type: String, detail: String },

    /// The request body is not what the method takes: it ended inside a message, held none, or
    /// held more than one for a method that takes one (`problem` says which).
    #[error("the request body {problem}")]
    MalformedBody { problem: String },

    /// A request message frame has its compressed flag set (or a flag other than 0 and 1) but the
    /// call named no `grpc-encoding`, so it cannot be read.
    #[error("a request message frame has compressed-flag {flag} but the call has no grpc-encoding")]
    CompressedWithoutEncoding { flag: u8 },

    /// The request's header block (metadata) is `size` bytes, over `limits.max_metadata_bytes`;
    /// `largest` is its largest field and that field's size.
    #[error("the request metadata of {size} bytes is over the limit of {limit}")]
    MetadataTooLarge { size: usize, limit: usize, largest: Option<(String, usize)> },

    /// The call named a `grpc-encoding` (compression) other than identity, which this server does
    /// not read.
    #[error("the request's grpc-encoding '{encoding}' is not supported")]
    EncodingUnsupported { encoding: String },

    /// The request did not arrive whole within `limits.request_read_timeout` (`bytes_received`
    /// of it did).
    #[error("the request did not arrive whole within {}", humantime::format_duration(*timeout))]
    RequestReadTimeout { timeout: Duration, bytes_received: u64 },

    /// The call's deadline (`budget`) expired while its request was still arriving.
    #[error("the call's deadline expired while its request was arriving")]
    RequestDeadline { budget: Duration },

    /// A request message's bytes would not fit the connection's or the server's request buffers.
    #[error("the request buffers ({}) are full", .0.scope.config_key())]
    RequestBuffersFull(BufferFull),

    /// A partial request message received nothing for `stalled_for` while the server was short of
    /// request buffers, and was dropped to make room.
    #[error("a partial request message stalled for {}", humantime::format_duration(*stalled_for))]
    RequestStalled { stalled_for: Duration, held: usize },

    /// The caller's key is over one of its per-minute budgets.
    #[error("key '{key}' is over its {limit}")]
    KeyLimited { key: String, limit: KeyLimit, retry_after: Duration },

    /// The shared Redis that holds the keys' budgets failed, and `state.on_error = "closed"`
    /// refuses calls it cannot check. `problem` names no password.
    #[error("the shared key budgets are unavailable: {problem}")]
    StateUnavailable { problem: String },

    /// The call set `CacheControl.mode` (`mode`, as the proto names it) and the response cache is off.
    #[error("the call asks the response cache for {mode} and it is off")]
    CacheDisabled { mode: &'static str },

    /// A `CACHE_MODE_ONLY_IF_CACHED` call found no stored answer.
    #[error("no stored answer for a call that asked for one only")]
    CacheMiss,

    /// The caller's deadline expired while the call waited for the answer of an identical call
    /// in flight (`cache.coalesce`).
    #[error("the call's deadline expired waiting for an identical call's answer")]
    DeadlineWaitingForIdentical { budget: Duration },
}

/// Why a call's credentials were refused. Never carries the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <key>`.
    Malformed,
    /// No configured key has this key's hash.
    Unknown,
}

/// A per-key budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLimit {
    RequestsPerMinute(u32),
    TokensPerMinute(u64),
}

impl std::fmt::Display for KeyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyLimit::RequestsPerMinute(n) => write!(f, "limit of {n} requests per minute"),
            KeyLimit::TokensPerMinute(n) => write!(f, "budget of {n} tokens per minute"),
        }
    }
}

/// What the call was waiting for when time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a place on the provider instance (its `max_concurrency` and `max_queue`).
    Queue,
    /// Waiting for the upstream to accept the request (includes a model load on the upstream).
    Response,
    /// Waiting for the first or the next chunk of output.
    Output { chunks_sent: usize },
}

impl Phase {
    fn describe(self) -> String {
        match self {
            Phase::Queue => "waiting for a free place on the provider instance (its max_concurrency)".to_string(),
            Phase::Response => "waiting for the provider to start answering".to_string(),
            Phase::Output { chunks_sent: 0 } => "waiting for the first token".to_string(),
            Phase::Output { chunks_sent } => format!("after {chunks_sent} chunks of output"),
        }
    }
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Status {
        bounded(to_status(error))
    }
}

/// At most `max` bytes of `text`, cut on a character boundary; a cut text ends with `…` (counted
/// in the `max` bytes).
pub fn truncate_bytes(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    const ELLIPSIS: &str = "…";
    let mut cut = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..cut]).into()
}

fn cap(text: &mut String, max: usize) {
    if text.len() > max {
        *text = truncate_bytes(text, max).into_owned();
    }
}

/// `status` with its message and every string of its details within the caps above, so that no
/// request or upstream text can make the trailers too large for a client to read.
fn bounded(status: Status) -> Status {
    let message = truncate_bytes(status.message(), MAX_MESSAGE_BYTES).into_owned();
    let mut details = status.get_error_details_vec();
    for detail in &mut details {
        match detail {
            ErrorDetail::ErrorInfo(info) => {
                cap(&mut info.reason, MAX_DETAIL_BYTES);
                cap(&mut info.domain, MAX_DETAIL_BYTES);
                info.metadata = std::mem::take(&mut info.metadata)
                    .into_iter()
                    .map(|(mut k, mut v)| {
                        cap(&mut k, MAX_DETAIL_BYTES);
                        cap(&mut v, MAX_DETAIL_BYTES);
                        (k, v)
                    })
                    .collect();
            }
            ErrorDetail::BadRequest(bad_request) => {
                bad_request.field_violations.truncate(MAX_FIELD_VIOLATIONS);
                for violation in &mut bad_request.field_violations {
                    cap(&mut violation.field, MAX_FIELD_PATH_BYTES);
                    cap(&mut violation.description, MAX_DETAIL_BYTES);
                }
            }
            ErrorDetail::QuotaFailure(quota) => {
                for violation in &mut quota.violations {
                    cap(&mut violation.subject, MAX_DETAIL_BYTES);
                    cap(&mut violation.description, MAX_DETAIL_BYTES);
                }
            }
            _ => {}
        }
    }
    let mut bounded = Status::with_error_details_vec(status.code(), message, details);
    *bounded.metadata_mut() = status.metadata().clone();
    bounded
}

fn details(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    details
}

fn target_metadata(target: &TargetName) -> HashMap<String, String> {
    HashMap::from([("provider".to_string(), target.provider.clone()), ("model".to_string(), target.model.clone())])
}

fn to_status(error: GatewayError) -> Status {
    match error {
        GatewayError::InvalidArgument(violations) => {
            let message = format!("invalid request: {}", describe_violations(&violations));
            let mut d = details("INVALID_ARGUMENT", HashMap::new());
            d.set_bad_request(violations);
            Status::with_error_details(Code::InvalidArgument, message, d)
        }
        GatewayError::NoDefaultModel => {
            let message = "no model was named and no default model is configured: set `model` \
                           (ListModels shows the names you can use), or configure routing.default_model \
                           (or OLLAMA_MODEL) on the server";
            let mut d = details("MODEL_REQUIRED", HashMap::new());
            d.add_bad_request_violation("model", "required: no default model is configured");
            Status::with_error_details(Code::InvalidArgument, message, d)
        }
        GatewayError::NoDefaultEmbeddingModel => {
            let message = "no model was named and no default embedding model is configured: set `model` to an \
                           embedding model (ListModels marks them `embedding`), or configure \
                           routing.default_embedding_model on the server";
            let mut d = details("MODEL_REQUIRED", HashMap::new());
            d.add_bad_request_violation("model", "required: no default embedding model is configured");
            Status::with_error_details(Code::InvalidArgument, message, d)
        }
        GatewayError::Provider { target, error, chunks_sent } => provider_status(&target, error, chunks_sent),
        GatewayError::DeadlineExceeded { target, budget, phase } => {
            let message = format!(
                "the call's deadline of {} expired {} from {}; raise the deadline or ask for fewer tokens",
                humantime::format_duration(budget),
                phase.describe(),
                target.routable_name()
            );
            Status::with_error_details(
                Code::DeadlineExceeded,
                message,
                details("DEADLINE_EXCEEDED", target_metadata(&target)),
            )
        }
        GatewayError::UpstreamTimeout { target, timeout, phase } => {
            let message = format!(
                "provider '{}' at {} sent nothing for {} while {}: it may be overloaded or loading the model; \
                 retry, or raise the provider's timeout on the server",
                target.provider,
                target.endpoint,
                humantime::format_duration(timeout),
                phase.describe()
            );
            Status::with_error_details(
                Code::DeadlineExceeded,
                message,
                details("UPSTREAM_TIMEOUT", target_metadata(&target)),
            )
        }
        GatewayError::NoProviderAnswered(failures) => {
            let list = failures.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; ");
            let message = format!("no provider could list its models ({list}); check that they are running");
            let metadata = failures.into_iter().collect();
            Status::with_error_details(Code::Unavailable, message, details("NO_PROVIDER_AVAILABLE", metadata))
        }
        GatewayError::CircuitOpen { target } => {
            let message = format!(
                "provider '{}' at {} is failing repeatedly, so calls to it are paused (circuit breaker open); \
                 retry shortly",
                target.provider, target.endpoint
            );
            let mut d = details("CIRCUIT_OPEN", target_metadata(&target));
            d.set_retry_info(Some(Duration::from_secs(1)));
            Status::with_error_details(Code::Unavailable, message, d)
        }
        GatewayError::AllTargetsFailed { alias, earlier, last } => {
            let last = to_status(*last);
            let tried: Vec<String> = earlier.iter().map(ToString::to_string).collect();
            let message = format!("every target of '{alias}' failed: {}; last: {}", tried.join("; "), last.message());
            Status::with_details(last.code(), message, last.details().to_vec().into())
        }
        GatewayError::ShuttingDown => Status::with_error_details(
            Code::Unavailable,
            "this server is shutting down; retry the call, it will go to another replica",
            details("SHUTTING_DOWN", HashMap::new()),
        ),
        GatewayError::Unauthenticated(failure) => {
            let (reason, message) = match failure {
                AuthFailure::Missing => (
                    "API_KEY_MISSING",
                    "this server requires an API key: send it in the `authorization` metadata as `Bearer <key>`",
                ),
                AuthFailure::Malformed => (
                    "API_KEY_MALFORMED",
                    "the `authorization` metadata must be `Bearer <key>` (the word Bearer, a space, then the key)",
                ),
                AuthFailure::Unknown => (
                    "API_KEY_INVALID",
                    "the API key is not valid on this server (unknown or revoked); check the key the client sends",
                ),
            };
            Status::with_error_details(Code::Unauthenticated, message, details(reason, HashMap::new()))
        }
        GatewayError::ModelNotAllowed { key, model } => {
            let message = format!(
                "the API key '{key}' may not use model '{model}'; ListModels shows the models it may use, or ask the \
                 server's operator to add the model to the key's `models`"
            );
            let metadata = HashMap::from([("key_name".to_string(), key), ("model".to_string(), model)]);
            Status::with_error_details(Code::PermissionDenied, message, details("MODEL_NOT_ALLOWED", metadata))
        }
        GatewayError::MessageTooLarge { size, limit } => {
            let message = format!(
                "the request message is {size} bytes; this server accepts at most {limit} bytes (its \
                 limits.max_message_bytes): send a shorter prompt or conversation"
            );
            let metadata = HashMap::from([("limit_bytes".to_string(), limit.to_string())]);
            Status::with_error_details(Code::ResourceExhausted, message, details("MESSAGE_TOO_LARGE", metadata))
        }
        GatewayError::MalformedRequest { message_type, detail } => {
            let message = format!(
                "the request is not a valid {message_type} protobuf message ({detail}): send the message \
                 encoded from this server's proto/copilot/v1/copilot.proto, with UTF-8 text in every string field"
            );
            let metadata = HashMap::from([("message_type".to_string(), message_type)]);
            Status::with_error_details(Code::InvalidArgument, message, details("MALFORMED_REQUEST", metadata))
        }
        GatewayError::MalformedBody { problem } => {
            let message = format!(
                "the request body {problem}: send exactly one length-prefixed message (a 5-byte frame header, then \
                 the message) and end the stream"
            );
            Status::with_error_details(Code::InvalidArgument, message, details("MALFORMED_REQUEST", HashMap::new()))
        }
        // The gRPC compression spec: such a message "MUST fail with INTERNAL status, its associated
        // description indicating the invalid Compressed-Flag condition".
        GatewayError::CompressedWithoutEncoding { flag } => {
            let message = format!(
                "protocol error: a request message frame has compressed-flag {flag} but the call sent no \
                 grpc-encoding header naming its compression; send the message uncompressed (flag 0), or \
                 name the encoding in grpc-encoding"
            );
            let metadata = HashMap::from([("compressed_flag".to_string(), flag.to_string())]);
            Status::with_error_details(Code::Internal, message, details("MALFORMED_REQUEST", metadata))
        }
        GatewayError::ResponseTooLarge { target, limit, chunk_bytes } => {
            let name = target.routable_name();
            let message = match chunk_bytes {
                None => format!(
                    "{name}'s reply grew past {limit} bytes, the most this server collects for a Generate \
                     reply (its limits.max_response_bytes); the upstream request was cancelled: ask for \
                     fewer tokens (max_tokens), stream the reply with Chat, or raise \
                     limits.max_response_bytes"
                ),
                Some(size) => format!(
                    "{name} sent a single chunk of {size} bytes, more than the {limit} bytes this server \
                     relays in one message (its limits.max_response_bytes); the upstream request was \
                     cancelled: raise limits.max_response_bytes to accept it"
                ),
            };
            let mut metadata = target_metadata(&target);
            metadata.insert("limit_bytes".to_string(), limit.to_string());
            metadata.insert("config_key".to_string(), "limits.max_response_bytes".to_string());
            Status::with_error_details(Code::ResourceExhausted, message, details("RESPONSE_TOO_LARGE", metadata))
        }
        GatewayError::MetadataTooLarge { size, limit, largest } => {
            let largest = largest
                .map(|(name, size)| format!(" (the largest is `{}`, {size} bytes)", truncate_bytes(&name, 64)))
                .unwrap_or_default();
            let message = format!(
                "the call's metadata (its request headers) is {size} bytes as HTTP/2 counts it{largest}; this \
                 server accepts at most {limit} bytes (its limits.max_metadata_bytes): send less metadata"
            );
            let metadata = HashMap::from([
                ("limit_bytes".to_string(), limit.to_string()),
                ("config_key".to_string(), "limits.max_metadata_bytes".to_string()),
            ]);
            Status::with_error_details(Code::ResourceExhausted, message, details("METADATA_TOO_LARGE", metadata))
        }
        GatewayError::EncodingUnsupported { encoding } => {
            let message = format!(
                "this server reads uncompressed request messages only, and the call's grpc-encoding is '{}': \
                 send the messages uncompressed, without grpc-encoding (or with grpc-encoding: identity)",
                truncate_bytes(&encoding, 64)
            );
            let metadata = HashMap::from([("encoding".to_string(), encoding)]);
            let mut status =
                Status::with_error_details(Code::Unimplemented, message, details("ENCODING_UNSUPPORTED", metadata));
            // What the gRPC compression spec asks an UNIMPLEMENTED encoding answer to carry.
            status
                .metadata_mut()
                .insert("grpc-accept-encoding", tonic::metadata::MetadataValue::from_static("identity"));
            status
        }
        GatewayError::RequestReadTimeout { timeout, bytes_received } => {
            let message = format!(
                "the request did not arrive whole within {} (this server's limits.request_read_timeout; {bytes_received} \
                 bytes of it arrived): the client stalled while sending it; send the request without pausing",
                humantime::format_duration(timeout)
            );
            let metadata = HashMap::from([
                ("timeout".to_string(), humantime::format_duration(timeout).to_string()),
                ("config_key".to_string(), "limits.request_read_timeout".to_string()),
            ]);
            Status::with_error_details(Code::DeadlineExceeded, message, details("REQUEST_READ_TIMEOUT", metadata))
        }
        GatewayError::RequestDeadline { budget } => {
            let message = format!(
                "the call's deadline of {} expired while its request was still arriving; raise the deadline, or send \
                 the request without pausing",
                humantime::format_duration(budget)
            );
            Status::with_error_details(Code::DeadlineExceeded, message, details("DEADLINE_EXCEEDED", HashMap::new()))
        }
        GatewayError::RequestBuffersFull(BufferFull { scope, limit }) => {
            let whose = match scope {
                BufferScope::Connection => "this connection's partly received request messages already hold",
                BufferScope::Server => "the partly received request messages of all clients already hold",
            };
            let message = format!(
                "{whose} close to {limit} bytes (this server's {}), so this message cannot be received now; retry \
                 shortly{}",
                scope.config_key(),
                if scope == BufferScope::Connection { ", or send it on another connection" } else { "" }
            );
            let metadata = HashMap::from([
                ("limit_bytes".to_string(), limit.to_string()),
                ("config_key".to_string(), scope.config_key().to_string()),
            ]);
            let mut d = details("REQUEST_BUFFERS_FULL", metadata);
            d.set_retry_info(Some(crate::request_body::STALL_UNDER_PRESSURE));
            Status::with_error_details(Code::ResourceExhausted, message, d)
        }
        GatewayError::RequestStalled { stalled_for, held } => {
            let message = format!(
                "the request stalled: {held} bytes of a message arrived, then nothing for {} while this server was \
                 short of request buffers (over half of limits.max_buffered_request_bytes held), so the call was \
                 ended to make room; send the request without pausing",
                humantime::format_duration(stalled_for)
            );
            let metadata = HashMap::from([("config_key".to_string(), "limits.max_buffered_request_bytes".to_string())]);
            let mut d = details("REQUEST_STALLED", metadata);
            d.set_retry_info(Some(crate::request_body::STALL_UNDER_PRESSURE));
            Status::with_error_details(Code::ResourceExhausted, message, d)
        }
        GatewayError::KeyLimited { key, limit, retry_after } => {
            let retry_after = copilot_provider::clamp_retry_after(retry_after);
            let reason = match limit {
                KeyLimit::RequestsPerMinute(_) => "KEY_REQUEST_LIMIT",
                KeyLimit::TokensPerMinute(_) => "KEY_TOKEN_LIMIT",
            };
            let message = format!(
                "the API key '{key}' is over its {limit}; retry in {} (see RetryInfo)",
                humantime::format_duration(retry_after)
            );
            let mut d = details(reason, HashMap::from([("key_name".to_string(), key.clone())]));
            d.set_retry_info(Some(retry_after));
            d.add_quota_failure_violation(format!("key:{key}"), limit.to_string());
            Status::with_error_details(Code::ResourceExhausted, message, d)
        }
        GatewayError::StateUnavailable { problem } => {
            let message = format!(
                "this call's API key budget cannot be checked: the shared Redis (state.redis_url) failed ({problem}), \
                 and state.on_error = \"closed\" refuses such calls; retry shortly"
            );
            let metadata = HashMap::from([("config_key".to_string(), "state.on_error".to_string())]);
            let mut d = details("STATE_UNAVAILABLE", metadata);
            d.set_retry_info(Some(Duration::from_secs(1)));
            Status::with_error_details(Code::Unavailable, message, d)
        }
        GatewayError::CacheDisabled { mode } => {
            let message = format!(
                "the call's CacheControl.mode is {mode}, and this server's response cache is off (its \
                 cache.enabled): leave CacheControl unset, or ask the server's operator to enable the cache"
            );
            let metadata = HashMap::from([
                ("mode".to_string(), mode.to_string()),
                ("config_key".to_string(), "cache.enabled".to_string()),
            ]);
            Status::with_error_details(Code::FailedPrecondition, message, details("CACHE_DISABLED", metadata))
        }
        GatewayError::CacheMiss => Status::with_error_details(
            Code::NotFound,
            "the response cache holds no answer for this call, which asked for a cached answer only \
             (CACHE_MODE_ONLY_IF_CACHED); the model was not called: call without it to have the model answer",
            details("CACHE_MISS", HashMap::new()),
        ),
        GatewayError::DeadlineWaitingForIdentical { budget } => {
            let message = format!(
                "the call's deadline of {} expired while it waited for the answer of an identical call in \
                 flight (the response cache answers identical calls once: cache.coalesce); raise the \
                 deadline, or set CacheControl.mode to CACHE_MODE_SKIP to call the model yourself",
                humantime::format_duration(budget)
            );
            let metadata = HashMap::from([("config_key".to_string(), "cache.coalesce".to_string())]);
            Status::with_error_details(Code::DeadlineExceeded, message, details("DEADLINE_EXCEEDED", metadata))
        }
    }
}

fn provider_status(target: &TargetName, error: ProviderError, chunks_sent: usize) -> Status {
    let name = target.routable_name();
    let provider = &target.provider;
    let endpoint = &target.endpoint;
    let retry_after = error.retry_after();
    let mut unsupported = None;
    let (code, reason, message) = match error {
        ProviderError::InvalidRequest(msg) => (
            Code::InvalidArgument,
            "UPSTREAM_REJECTED_REQUEST",
            format!("provider '{provider}' rejected the request for {name}: {msg}"),
        ),
        ProviderError::ModelNotFound { .. } => (
            Code::NotFound,
            "MODEL_NOT_FOUND",
            format!(
                "model '{name}' not found: provider '{provider}' does not have '{}'; call ListModels for the models \
                 you can use ({})",
                target.model,
                if endpoint == crate::providers::IN_PROCESS {
                    format!("for the embedded engine, `copilot models fetch {}` adds a catalog model", target.model)
                } else {
                    format!("for Ollama, `ollama pull {}` adds it", target.model)
                }
            ),
        ),
        ProviderError::Unauthorized(msg) => (
            Code::Unavailable,
            "UPSTREAM_UNAUTHORIZED",
            format!(
                "provider '{provider}' refused this server's credentials ({msg}); the operator must fix its API key"
            ),
        ),
        ProviderError::RateLimited { message, .. } => (
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
            format!("provider '{provider}' is rate-limiting requests for {name}: {message}; retry later"),
        ),
        ProviderError::Overloaded { message, .. } => (
            Code::Unavailable,
            "UPSTREAM_OVERLOADED",
            format!("provider '{provider}' is too busy to take the request for {name}: {message}; retry with backoff"),
        ),
        ProviderError::CapacityExhausted { message, .. } => (
            Code::ResourceExhausted,
            "PROVIDER_AT_CAPACITY",
            format!("provider '{provider}' is at capacity for {name}: {message}; retry after a short wait"),
        ),
        ProviderError::ModelUnusable(msg) => (
            Code::FailedPrecondition,
            "MODEL_UNUSABLE",
            format!("model '{name}' cannot be used: {msg}; the server's operator must replace or fix the model file"),
        ),
        ProviderError::Unreachable(msg) => (
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE",
            format!("provider '{provider}' at {endpoint} cannot be reached ({msg}); check that it is running"),
        ),
        ProviderError::Upstream { status, message } => (
            Code::Unavailable,
            "UPSTREAM_ERROR",
            format!("provider '{provider}' failed with HTTP {status} for {name}: {message}"),
        ),
        ProviderError::MidStream(msg) => (
            Code::Unavailable,
            "UPSTREAM_FAILED_MID_STREAM",
            format!(
                "provider '{provider}' failed after {chunks_sent} chunks of output for {name}: {msg}; the output is \
                 incomplete, retry the call"
            ),
        ),
        ProviderError::Interrupted(msg) => (
            Code::Unavailable,
            "UPSTREAM_STREAM_INTERRUPTED",
            format!(
                "the stream from provider '{provider}' for {name} ended early after {chunks_sent} chunks ({msg}); the \
                 output is incomplete, retry the call"
            ),
        ),
        ProviderError::Protocol(msg) => (
            Code::Internal,
            "UPSTREAM_PROTOCOL_ERROR",
            format!("provider '{provider}' sent a response this server cannot read for {name}: {msg}"),
        ),
        // Counting is the provider's endpoint, not a model capability: no listing marks it.
        ProviderError::Unsupported { feature: feature @ Feature::CountTokens, message } => {
            unsupported = Some(feature);
            (
                Code::FailedPrecondition,
                "FEATURE_UNSUPPORTED",
                format!(
                    "model '{name}' cannot do token counting ({message}); send CountTokens to a model of a provider \
                     that counts, such as the embedded engine's chat models, Gemini (also on Vertex AI) or Anthropic"
                ),
            )
        }
        ProviderError::Unsupported { feature, message } => {
            unsupported = Some(feature);
            (
                Code::FailedPrecondition,
                "FEATURE_UNSUPPORTED",
                format!(
                    "model '{name}' cannot do {} ({message}); call GetModel for what it supports, and send the request \
                     to a model whose capabilities list '{}'",
                    feature.describe(),
                    feature.as_str()
                ),
            )
        }
    };
    let mut metadata = target_metadata(target);
    if let Some(feature) = unsupported {
        metadata.insert("feature".into(), feature.as_str().into());
    }
    metadata.insert("chunks_sent".into(), chunks_sent.to_string());
    let mut d = details(reason, metadata);
    if let Some(delay) = retry_after {
        // Adapters cap what upstreams ask for already; this cap holds for every provider.
        d.set_retry_info(Some(copilot_provider::clamp_retry_after(delay)));
    }
    Status::with_error_details(code, message, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetName {
        TargetName { provider: "ollama".into(), model: "llama3.2".into(), endpoint: "http://localhost:11434".into() }
    }

    fn status_of(error: ProviderError) -> Status {
        GatewayError::Provider { target: Box::new(target()), error, chunks_sent: 0 }.into()
    }

    #[test]
    fn provider_errors_map_to_precise_codes() {
        let cases = [
            (ProviderError::ModelNotFound { model: "x".into() }, Code::NotFound, "MODEL_NOT_FOUND"),
            (ProviderError::InvalidRequest("bad".into()), Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST"),
            (
                ProviderError::RateLimited { message: "slow".into(), retry_after: None },
                Code::ResourceExhausted,
                "UPSTREAM_RATE_LIMITED",
            ),
            (
                ProviderError::Overloaded { message: "busy".into(), retry_after: None },
                Code::Unavailable,
                "UPSTREAM_OVERLOADED",
            ),
            (ProviderError::Unreachable("refused".into()), Code::Unavailable, "UPSTREAM_UNREACHABLE"),
            (
                ProviderError::CapacityExhausted { message: "full".into(), retry_after: None },
                Code::ResourceExhausted,
                "PROVIDER_AT_CAPACITY",
            ),
            (ProviderError::ModelUnusable("truncated".into()), Code::FailedPrecondition, "MODEL_UNUSABLE"),
            (ProviderError::MidStream("crash".into()), Code::Unavailable, "UPSTREAM_FAILED_MID_STREAM"),
            (ProviderError::Interrupted("eof".into()), Code::Unavailable, "UPSTREAM_STREAM_INTERRUPTED"),
            (ProviderError::Protocol("junk".into()), Code::Internal, "UPSTREAM_PROTOCOL_ERROR"),
            (ProviderError::Upstream { status: 500, message: "oops".into() }, Code::Unavailable, "UPSTREAM_ERROR"),
        ];
        for (error, code, reason) in cases {
            let status = status_of(error);
            assert_eq!(status.code(), code, "{}", status.message());
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata["provider"], "ollama");
        }
    }

    #[test]
    fn retry_after_becomes_retry_info() {
        let status = status_of(ProviderError::RateLimited {
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_info_is_capped_whoever_asks() {
        let cap = Some(copilot_provider::MAX_RETRY_AFTER);
        for error in [
            ProviderError::RateLimited { message: "m".into(), retry_after: Some(Duration::MAX) },
            ProviderError::Overloaded { message: "m".into(), retry_after: Some(Duration::from_secs(u64::MAX)) },
            ProviderError::CapacityExhausted { message: "m".into(), retry_after: Some(Duration::from_secs(3601)) },
        ] {
            assert_eq!(status_of(error).get_details_retry_info().unwrap().retry_delay, cap);
        }
        let status: Status = GatewayError::KeyLimited {
            key: "k".into(),
            limit: KeyLimit::RequestsPerMinute(1),
            retry_after: Duration::MAX,
        }
        .into();
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, cap);
        assert!(status.message().contains("retry in 1h"), "{}", status.message());
    }

    #[test]
    fn invalid_argument_lists_field_violations() {
        let status: Status = GatewayError::InvalidArgument(vec![
            FieldViolation::new("options.temperature", "must be between 0 and 2, got -1"),
            FieldViolation::new("prompt", "must not be empty"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("options.temperature") && status.message().contains("prompt"));
        let bad_request = status.get_details_bad_request().unwrap();
        assert_eq!(bad_request.field_violations.len(), 2);
    }

    #[test]
    fn truncation_cuts_on_char_boundaries_within_the_limit() {
        assert_eq!(truncate_bytes("hello", 5), "hello");
        assert_eq!(truncate_bytes("hello!", 5), "he…");
        // "é" is 2 bytes, "…" 3: 6 bytes leave 3 for text, which would split the second "é".
        assert_eq!(truncate_bytes("éééé", 6), "é…");
        assert_eq!(truncate_bytes("éééé", 7), "éé…");
        assert_eq!(truncate_bytes("éééé", 8), "éééé");
        // A 4-byte character is never split, whatever the limit.
        for max in 0..20 {
            let cut = truncate_bytes("a😀😀😀😀b", max);
            assert!(cut.len() <= max.max(3), "{max}: {cut:?}");
        }
        assert_eq!(truncate_bytes("😀😀😀", 8), "😀…");
    }

    #[test]
    fn long_upstream_text_is_cut_in_message_and_details() {
        let long = "é".repeat(10_000);
        let mut target = target();
        target.model = "m".repeat(10_000);
        let status: Status = GatewayError::Provider {
            target: Box::new(target),
            error: ProviderError::Upstream { status: 500, message: long },
            chunks_sent: 0,
        }
        .into();
        assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{}", status.message().len());
        assert!(status.message().ends_with('…') && status.message().contains("HTTP 500"), "{}", status.message());
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "UPSTREAM_ERROR");
        assert!(info.metadata.values().all(|v| v.len() <= MAX_DETAIL_BYTES), "{:?}", info.metadata);
        assert!(info.metadata["model"].starts_with("mmm"));
    }

    /// The size of the trailers `status` is sent as, counted as HTTP/2 limits count them (name +
    /// value + 32 per entry).
    fn trailer_bytes(status: &Status) -> usize {
        let mut headers = tonic::metadata::MetadataMap::new().into_headers();
        status.add_header(&mut headers).unwrap();
        headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
    }

    #[test]
    fn trailers_stay_small_with_every_cap_reached() {
        let huge = "€".repeat(20_000);
        let violations = (0..100).map(|i| FieldViolation::new(format!("{i}{huge}"), huge.clone())).collect();
        let status: Status = GatewayError::InvalidArgument(violations).into();
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        let bad_request = status.get_details_bad_request().unwrap();
        assert_eq!(bad_request.field_violations.len(), MAX_FIELD_VIOLATIONS);
        assert!(
            bad_request
                .field_violations
                .iter()
                .all(|v| v.field.len() <= MAX_FIELD_PATH_BYTES && v.description.len() <= MAX_DETAIL_BYTES)
        );
        let size = trailer_bytes(&status);
        assert!(size < 8 * 1024, "trailers of {size} bytes");

        let alias = GatewayError::AllTargetsFailed {
            alias: huge.clone(),
            earlier: vec![GatewayError::ModelNotAllowed { key: huge.clone(), model: huge.clone() }],
            last: Box::new(GatewayError::ModelNotAllowed { key: huge.clone(), model: huge }),
        };
        let status: Status = alias.into();
        assert_eq!(status.code(), Code::PermissionDenied);
        let size = trailer_bytes(&status);
        assert!(size < 8 * 1024, "trailers of {size} bytes");
    }

    /// Every `ErrorInfo.reason` this file can send is in the API's contract (the proto's comment)
    /// and in the README's tables.
    #[test]
    fn every_reason_is_documented() {
        let source = include_str!("error.rs");
        let proto = include_str!("../proto/copilot/v1/copilot.proto");
        let readme = include_str!("../README.md");
        let mut reasons = std::collections::BTreeSet::new();
        for (start, _) in source.match_indices('"') {
            let rest = &source[start + 1..];
            let end = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(0);
            if end > 4 && rest[..end].contains('_') && rest[end..].starts_with('"') {
                reasons.insert(&rest[..end]);
            }
        }
        assert!(reasons.len() > 30, "only {} reasons found: {reasons:?}", reasons.len());
        for reason in reasons {
            let quoted = format!("`{reason}`");
            assert!(proto.contains(&quoted), "{reason} is not in the proto's list of errors");
            assert!(readme.contains(&quoted), "{reason} is not in the README");
        }
    }
}
