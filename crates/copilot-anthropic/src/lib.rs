//! The Copilot provider adapter for Anthropic's Messages API (`/v1/messages`, `/v1/models`).
//!
//! [`AnthropicProvider`] turns a [`ChatRequest`] into one streamed `POST /v1/messages` and the
//! server-sent events of the reply into [`ChatEvent`]s. The wire formats live in `wire.rs`; this
//! module holds the endpoints and Anthropic's status rules, and sends through `copilot_http`'s
//! [`Upstream`].
//!
//! Choices where the Messages API and the gateway's model differ:
//! - System messages become the top-level `system` string (joined by blank lines); consecutive
//!   messages of one role are merged (joined by blank lines) so turns alternate.
//! - A conversation whose first non-system message is from the assistant is refused with
//!   [`ProviderError::InvalidRequest`] before anything is sent. A final assistant message is sent
//!   as a prefill (the model continues it), without its trailing whitespace, which the API rejects.
//! - `max_tokens` is required by the API: the request's value, else
//!   [`AnthropicConfig::default_max_tokens`].
//! - `seed` has no equivalent and is ignored. A `temperature` above 1 (the API's maximum; the
//!   gateway allows 2) is refused with [`ProviderError::InvalidRequest`].
//! - A stream `error` event of type `overloaded_error` that arrives before anything went to the
//!   caller is reported as [`ProviderError::Overloaded`] (nothing was produced, so it is as
//!   retryable as a 529); any other error event is [`ProviderError::MidStream`].
//!
//! Beyond text ([`Provider::features`]: tools, JSON Schema output, thinking on and off, images as
//! data and as URLs):
//! - **Tools**: each [`Tool`](copilot_provider::Tool) is `{name, description, input_schema,
//!   strict}`, the schema sent exactly as the client wrote it (raw JSON, never re-serialised); a
//!   tool without parameters gets `{"type":"object","properties":{}}`. Tool choice: auto →
//!   `{type:auto}`, none → `{type:none}`, required → `{type:any}`, a named tool → `{type:tool,
//!   name}`.
//! - **Calls in the stream**: `content_block_start {type:tool_use,id,name,input:{}}` is the first
//!   piece of a call (its id and name), each `input_json_delta.partial_json` the next piece of its
//!   arguments, exactly as sent (a call without arguments sends only `""`: the server makes it
//!   `{}`). Calls are numbered from 0 in the order their blocks start: Anthropic's block `index`
//!   also counts text and thinking blocks, so it is not the call's index. `stop_reason: tool_use`
//!   is [`FinishReason::ToolCalls`](copilot_provider::FinishReason::ToolCalls).
//! - **History**: an assistant message's parts become its content blocks in order — `thinking
//!   {thinking, signature}`, `redacted_thinking {data}`, `text`, `tool_use {id, name, input}`
//!   (the arguments as raw JSON, so `1.0` and 64-bit integers are untouched). `ROLE_TOOL` results
//!   become `tool_result {tool_use_id, content}` blocks that start the next user message, in the
//!   order of the calls, followed by any user text of that step (one message, as the API
//!   requires). Ids outside `^[a-zA-Z0-9_-]+$` (another provider's, like `functions.f:0`) are
//!   rewritten the same way in the `tool_use` and its `tool_result`: each other character becomes
//!   `_`, and an FNV-1a hash of the whole id is appended so distinct ids stay distinct.
//! - **Structured output**: `json_schema` is the native `output_config: {format: {type:
//!   json_schema, schema}}` (the schema as written; Anthropic's output is always constrained, so
//!   `strict` changes nothing). `json_object` is not offered: Anthropic has no JSON mode and its
//!   schemas need `additionalProperties: false` on every object, so "any object" cannot be said,
//!   and the server refuses it (FEATURE_UNSUPPORTED) rather than have it answered wrongly.
//! - **Reasoning**: on is `thinking: {type: enabled, budget_tokens}` — the request's budget, or
//!   [`Effort::budget_tokens`](copilot_provider::Effort::budget_tokens) for an effort (medium
//!   when unset); off is `{type: disabled}`, said outright because the newest models think
//!   unless told not to; unset sends nothing. A budget below Anthropic's minimum of 1,024 is
//!   refused with [`ProviderError::InvalidRequest`], not raised. `max_tokens` (which counts the
//!   thinking) must exceed the budget: without one it is the budget plus
//!   [`AnthropicConfig::default_max_tokens`]; with one at or below it, a budget from an effort
//!   shrinks to `max_tokens - 1` (not below 1,024) and a budget the client chose is refused.
//!   Thoughts not asked for (`include_thoughts` false) are `display: omitted`: Anthropic then
//!   sends the signature alone, which stays valid on the next turn (text stripped here would
//!   not). A forced tool choice with thinking on is refused, as Anthropic refuses it.
//! - **Adaptive thinking**: the newest models refuse budgets ("`thinking.type.enabled` is not
//!   supported for this model. Use `thinking.type.adaptive` and `output_config.effort`"). On
//!   that refusal the request is sent again, once, as `thinking: {type: adaptive}` with
//!   `output_config.effort` (the effort, or the budget's nearest one; none for the default), and
//!   the model is remembered so later requests go adaptive straight away.
//! - **What a model cannot do**: a 400 saying the model does not support thinking, structured
//!   output, images or tools is [`ProviderError::Unsupported`] naming that feature.
//! - **Thinking in the stream**: a `thinking` block's `thinking_delta`s are
//!   [`ThinkingDelta::Text`](copilot_provider::ThinkingDelta::Text), its `signature_delta`s
//!   (joined) one [`ThinkingDelta::Signature`](copilot_provider::ThinkingDelta::Signature) when
//!   the block stops; a `redacted_thinking` block is one
//!   [`ThinkingDelta::Redacted`](copilot_provider::ThinkingDelta::Redacted) with its `data`.
//!   Signatures and data are the UTF-8 bytes of Anthropic's strings, sent back unchanged;
//!   thinking without a signature (another provider's) is refused, since Anthropic refuses it.
//! - **Usage**: `input_tokens` adds `cache_read_input_tokens` and `cache_creation_input_tokens`,
//!   which Anthropic counts apart; `cached_input_tokens` is `cache_read_input_tokens`. Anthropic
//!   reports no separate thinking count.
//! - **Images**: data as `{type: image, source: {type: base64, media_type, data}}`, URLs as
//!   `source: {type: url, url}`, which Anthropic fetches; in user messages and tool results.
//! - **Token counts** ([`Provider::count_tokens`]): `POST /v1/messages/count_tokens` with the
//!   request translated exactly as for a chat (system, merged turns, tool results, tools) minus
//!   `max_tokens` and `stream`, `{"input_tokens"}` back (read up to 64 KiB). Anthropic calls the
//!   count an estimate, so it is reported as not exact. Errors map as for chat (an unknown
//!   model is its 404).
//! - **Models**: every Claude model calls tools; the Models API's `capabilities` add `vision`
//!   and `image_urls` (`image_input`), `json_schema` (`structured_outputs`) and `thinking`, and
//!   `max_input_tokens` is the context length.

mod stream;
mod wire;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use copilot_http::{Adapter, BaseUrlRules, Reading, Refusal, StreamOptions, Upstream};
use copilot_provider::{
    ChatRequest, ChatStream, Feature, Features, HealthReport, ModelInfo, Provider, ProviderError, Reasoning, Secret,
    TokenCount,
};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

#[doc(hidden)]
pub use crate::stream::StreamDecoder;
pub use crate::wire::AnthropicModel;
use crate::wire::{ThinkingStyle, UpstreamError};

/// Anthropic's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header value; the only version the official SDKs send.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` for requests that set none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// How to reach Anthropic's Messages API (or a server that speaks it).
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicConfig {
    /// Default [`DEFAULT_BASE_URL`]. A trailing slash, and a trailing `/v1` (an OpenAI-style base
    /// URL), are tolerated: paths are appended as `/v1/messages`, `/v1/models`.
    pub base_url: String,
    /// Sent as `x-api-key`. `None` sends no key (for a proxy that adds its own credentials).
    pub api_key: Option<Secret>,
    /// The `anthropic-version` header; default [`DEFAULT_VERSION`].
    pub version: String,
    /// Beta features, sent as one comma-separated `anthropic-beta` header when not empty.
    pub beta: Vec<String>,
    /// `max_tokens` for requests that set none; default [`DEFAULT_MAX_TOKENS`]. Must be at least 1.
    pub default_max_tokens: u32,
    /// TCP (and TLS) connect timeout for the HTTP client; default 10 s.
    pub connect_timeout: Duration,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            version: DEFAULT_VERSION.to_owned(),
            beta: Vec::new(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an [`AnthropicConfig`] cannot be used. Never contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum AnthropicConfigError {
    #[error("invalid Anthropic base_url {value:?}: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    #[error("invalid Anthropic api_key: it cannot be sent as an HTTP header (it holds a control character)")]
    InvalidApiKey,
    #[error("invalid Anthropic {field} {value:?}: {reason}")]
    InvalidHeader { field: &'static str, value: String, reason: String },
    #[error("invalid Anthropic default_max_tokens: it must be at least 1")]
    InvalidMaxTokens,
    #[error("cannot build the HTTP client for Anthropic: {0}")]
    HttpClient(String),
}

/// A [`Provider`] backed by Anthropic's Messages API. Cheap to share: all requests go through one
/// HTTP client, so connections are pooled and reused. Its `Debug` output never shows the key.
#[derive(Debug)]
pub struct AnthropicProvider {
    /// Its client sends `x-api-key` (marked sensitive), `anthropic-version` and `anthropic-beta`
    /// with every request; it keeps the key only to mask it in upstream text.
    upstream: Upstream,
    default_max_tokens: u32,
    messages_url: Url,
    count_tokens_url: Url,
    models_url: Url,
    /// Models that refused budgeted thinking and take adaptive thinking only (the newest ones),
    /// learned from their refusals so each costs one retry, once.
    adaptive_thinking: Mutex<HashSet<String>>,
}

/// The most a `count_tokens` answer may hold (it is one number).
const MAX_COUNT_RESPONSE_BYTES: usize = 64 << 10;

/// Most models remembered as taking adaptive thinking only: a bound on what refusals can grow.
const MAX_ADAPTIVE_MODELS: usize = 1024;

impl AnthropicProvider {
    pub fn new(config: AnthropicConfig) -> Result<Self, AnthropicConfigError> {
        let invalid = |reason: String| AnthropicConfigError::InvalidBaseUrl { value: config.base_url.clone(), reason };
        let base_url = copilot_http::check_base_url(&config.base_url, &BASE_URL_RULES).map_err(invalid)?;
        if config.default_max_tokens == 0 {
            return Err(AnthropicConfigError::InvalidMaxTokens);
        }

        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let value = copilot_http::secret_header(key.expose()).ok_or(AnthropicConfigError::InvalidApiKey)?;
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        headers.insert(HeaderName::from_static("anthropic-version"), header_value("version", &config.version)?);
        if !config.beta.is_empty() {
            headers.insert(HeaderName::from_static("anthropic-beta"), header_value("beta", &config.beta.join(","))?);
        }
        let user_agent = concat!("copilot-anthropic/", env!("CARGO_PKG_VERSION"));
        let client = copilot_http::adapter_client(user_agent, config.connect_timeout, headers, |builder| builder)
            .map_err(AnthropicConfigError::HttpClient)?;

        let upstream = Upstream::new(client, base_url, Some("Anthropic"), config.api_key);
        let endpoint = |path| upstream.endpoint(path).map_err(invalid);
        Ok(AnthropicProvider {
            messages_url: endpoint("/v1/messages")?,
            count_tokens_url: endpoint("/v1/messages/count_tokens")?,
            models_url: endpoint("/v1/models")?,
            default_max_tokens: config.default_max_tokens,
            upstream,
            adaptive_thinking: Mutex::new(HashSet::new()),
        })
    }

    async fn send_chat(&self, request: &ChatRequest, style: ThinkingStyle) -> Result<reqwest::Response, ProviderError> {
        // The body is serialised into the request here and not kept across the wait for the answer.
        let post = {
            let body = wire::MessagesBody::new(request, self.default_max_tokens, style)?;
            copilot_http::with_trace_context(self.upstream.post(self.messages_url.clone()), request).json(&body)
        };
        self.upstream.send(self, post, Some(&request.model), Reading::of(request)).await
    }

    fn remember_adaptive(&self, model: &str) {
        let mut models = self.adaptive_models();
        if models.len() < MAX_ADAPTIVE_MODELS {
            models.insert(model.to_owned());
        }
    }

    fn adaptive_models(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set holds no invariant a panic elsewhere could break.
        self.adaptive_thinking.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The API's base URL, without a trailing slash or `/v1`.
    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
    }

    /// Every model the key can use, as the Models API describes them (newest first), following
    /// `has_more`/`last_id` pagination.
    pub async fn models(&self) -> Result<Vec<AnthropicModel>, ProviderError> {
        /// The API's maximum page size.
        const PAGE: &str = "1000";
        /// A guard against a server whose pagination never ends.
        const MAX_PAGES: usize = 100;

        let mut models = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.models_url.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", PAGE);
                if let Some(after) = &after {
                    query.append_pair("after_id", after);
                }
            }
            let page: wire::ModelsPage =
                self.upstream.fetch_json(self, self.upstream.get(url), None, "model list").await?;
            let empty = page.data.is_empty();
            models.extend(page.data.into_iter().map(AnthropicModel::from));
            match page.last_id {
                Some(last) if page.has_more && !empty && after.as_deref() != Some(last.as_str()) => after = Some(last),
                _ => return Ok(models),
            }
        }
        tracing::warn!(base_url = %self.upstream.base_url(), "Anthropic's model list did not end after {MAX_PAGES} pages");
        Ok(models)
    }
}

/// Anthropic's status rules: the status first, then `error.type` where the status says nothing
/// specific ([`status_error`]).
impl Adapter for AnthropicProvider {
    fn refusal(&self, refusal: Refusal<'_>, model: Option<&str>) -> ProviderError {
        let (status, secret) = (refusal.status, self.upstream.secret());
        let retry_after = retry_after(refusal.headers, refusal.received);
        let mut error = UpstreamError::parse(refusal.body);
        if error.request_id.is_none() {
            error.request_id = copilot_http::header_text(refusal.headers, "request-id", secret);
        }
        let mut message = error.describe(secret, refusal.reason());
        if status == StatusCode::UNAUTHORIZED && secret.is_none() {
            message.push_str("; no api_key is configured for this provider");
        }
        if status == StatusCode::NOT_FOUND && !error.anthropic {
            message.push_str(&format!("; is {} an Anthropic API base URL?", self.upstream.base_url()));
        }
        tracing::debug!(status = status.as_u16(), %message, "Anthropic refused the request");
        if status == StatusCode::BAD_REQUEST
            && let Some(feature) = wire::unsupported_feature(&error.message)
        {
            return ProviderError::Unsupported { feature, message };
        }
        status_error(status, &error, message, retry_after, model)
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    /// A model that refuses budgeted thinking ("use thinking.type.adaptive") is asked again,
    /// once, with adaptive thinking, and remembered as taking only that.
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let thinks = matches!(request.reasoning, Some(Reasoning::On { .. }));
        let known = thinks && self.adaptive_models().contains(&request.model);
        let style = if known { ThinkingStyle::Adaptive } else { ThinkingStyle::Budget };
        let response = match self.send_chat(&request, style).await {
            Err(ProviderError::InvalidRequest(message))
                if thinks && !known && wire::wants_adaptive_thinking(&message) =>
            {
                tracing::debug!(model = %request.model, "Anthropic wants adaptive thinking for this model; asking again");
                self.remember_adaptive(&request.model);
                self.send_chat(&request, ThinkingStyle::Adaptive).await?
            }
            other => other?,
        };
        let base_url = self.upstream.base_url();
        check_event_stream(response.headers().get(CONTENT_TYPE), base_url)?;
        tracing::debug!(model = %request.model, %base_url, "Anthropic accepted the chat request");
        let decoder = StreamDecoder::new(base_url.clone(), self.upstream.secret().cloned());
        Ok(self.upstream.chat_stream(response, decoder, StreamOptions::default()))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        Ok(self.models().await?.into_iter().map(AnthropicModel::into_model_info).collect())
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        if model.is_empty() {
            return Err(ProviderError::InvalidRequest("an empty model name cannot be described".into()));
        }
        let mut url = self.models_url.clone();
        // Pushing a segment percent-encodes whatever the name holds. Every http(s) URL has path
        // segments (the base URL was checked at start-up); an error rather than a panic regardless.
        match url.path_segments_mut() {
            Ok(mut segments) => {
                segments.push(model);
            }
            Err(()) => return Err(ProviderError::Unreachable(format!("{} cannot take a model name", self.models_url))),
        }
        let found: wire::WireModel =
            self.upstream.fetch_json(self, self.upstream.get(url), Some(model), "model description").await?;
        Ok(AnthropicModel::from(found).into_model_info())
    }

    /// `GET /v1/models?limit=1`: the cheapest call that checks both reachability and the key.
    /// JSON objects without a schema are missing: Anthropic has no such mode (see the module
    /// docs).
    fn features(&self) -> Features {
        Features::of(&[
            Feature::Tools,
            Feature::JsonSchema,
            Feature::Thinking,
            Feature::ThinkingOff,
            Feature::Images,
            Feature::ImageUrls,
            Feature::CountTokens,
        ])
    }

    /// `POST /v1/messages/count_tokens` with the request translated as for a chat; Anthropic
    /// calls its count an estimate, so it is not exact.
    async fn count_tokens(&self, request: ChatRequest) -> Result<TokenCount, ProviderError> {
        let body = wire::CountTokensBody::new(&request)?;
        let post =
            copilot_http::with_trace_context(self.upstream.post(self.count_tokens_url.clone()), &request).json(&body);
        let answer: wire::TokenCountAnswer = self
            .upstream
            .fetch_json_within(self, post, Some(&request.model), "token count", MAX_COUNT_RESPONSE_BYTES)
            .await?;
        Ok(TokenCount { input_tokens: answer.input_tokens, exact: false, model: String::new() })
    }

    fn lacking(&self, feature: Feature) -> Option<&'static str> {
        (feature == Feature::Embeddings).then_some(
            "Anthropic has no embeddings API; embed with another provider (Anthropic's own docs point to Voyage AI, \
             reachable as an OpenAI-compatible provider)",
        )
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        let mut url = self.models_url.clone();
        url.query_pairs_mut().append_pair("limit", "1");
        let _: wire::ModelsPage = self.upstream.fetch_json(self, self.upstream.get(url), None, "model list").await?;
        // The API reports no server version.
        Ok(HealthReport { version: None })
    }
}

fn header_value(field: &'static str, value: &str) -> Result<HeaderValue, AnthropicConfigError> {
    HeaderValue::from_str(value).map_err(|e| AnthropicConfigError::InvalidHeader {
        field,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

/// What a base URL may be: an http(s) URL without a query or fragment; a trailing `/v1` (an
/// OpenAI-style base URL) is dropped.
const BASE_URL_RULES: BaseUrlRules =
    BaseUrlRules { example: DEFAULT_BASE_URL, drop_suffix: Some("/v1"), query_hint: "", no_credentials: None };

/// A 200 to a streamed request must be an event stream; a server that ignores `stream: true`
/// (or a proxy's page) would otherwise look like a stream that ended before `message_stop`.
fn check_event_stream(content_type: Option<&HeaderValue>, base_url: &str) -> Result<(), ProviderError> {
    let Some(value) = content_type else { return Ok(()) };
    let value = value.to_str().unwrap_or_default();
    let essence = value.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("text/event-stream") {
        return Ok(());
    }
    Err(ProviderError::Protocol(format!(
        "Anthropic at {base_url} answered a streamed request with {value:?} instead of text/event-stream"
    )))
}

/// How long the upstream asks us to wait: `retry-after-ms` (which Anthropic's SDKs prefer), else
/// `retry-after` (seconds or an HTTP date).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    copilot_http::retry_after_ms(headers).or_else(|| copilot_http::retry_after(headers, now))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Maps an error response by its status, then by Anthropic's `error.type` for statuses that say
/// nothing specific (e.g. a `billing_error` on 402, an `overloaded_error` behind a proxy's 502).
fn status_error(
    status: StatusCode,
    error: &UpstreamError,
    message: String,
    retry_after: Option<Duration>,
    model: Option<&str>,
) -> ProviderError {
    match (status.as_u16(), model) {
        (400 | 413 | 422, _) => ProviderError::InvalidRequest(message),
        (401 | 403, _) => ProviderError::Unauthorized(message),
        // A 404 that is not an Anthropic error object comes from something else at that URL.
        (404, Some(model)) if error.anthropic => ProviderError::ModelNotFound { model: model.to_owned() },
        (429, _) => ProviderError::RateLimited { message, retry_after },
        (503 | 529, _) => ProviderError::Overloaded { message, retry_after },
        (status, _) => match error.kind.as_deref() {
            Some("overloaded_error") => ProviderError::Overloaded { message, retry_after },
            Some("rate_limit_error") => ProviderError::RateLimited { message, retry_after },
            Some("authentication_error" | "permission_error" | "billing_error") => ProviderError::Unauthorized(message),
            Some("invalid_request_error" | "request_too_large") if (400..500).contains(&status) => {
                ProviderError::InvalidRequest(message)
            }
            _ => ProviderError::Upstream { status, message },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    fn anthropic_error(kind: &str) -> UpstreamError {
        UpstreamError { anthropic: true, kind: Some(kind.into()), message: "msg".into(), request_id: None }
    }

    #[test]
    fn statuses_map_to_provider_errors() {
        let map =
            |code, kind: &str, model| status_error(status(code), &anthropic_error(kind), "msg".into(), None, model);
        let m = Some("claude-x");
        assert_eq!(map(400, "invalid_request_error", m), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(413, "request_too_large", m), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(401, "authentication_error", m), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(403, "permission_error", None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(402, "billing_error", None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(404, "not_found_error", m), ProviderError::ModelNotFound { model: "claude-x".into() });
        assert_eq!(map(404, "not_found_error", None), ProviderError::Upstream { status: 404, message: "msg".into() });
        assert_eq!(
            map(429, "rate_limit_error", None),
            ProviderError::RateLimited { message: "msg".into(), retry_after: None }
        );
        assert_eq!(
            map(529, "overloaded_error", m),
            ProviderError::Overloaded { message: "msg".into(), retry_after: None }
        );
        assert_eq!(map(503, "api_error", m), ProviderError::Overloaded { message: "msg".into(), retry_after: None });
        assert_eq!(
            map(502, "overloaded_error", m),
            ProviderError::Overloaded { message: "msg".into(), retry_after: None }
        );
        assert_eq!(map(500, "api_error", m), ProviderError::Upstream { status: 500, message: "msg".into() });
        assert_eq!(map(504, "timeout_error", m), ProviderError::Upstream { status: 504, message: "msg".into() });
        // Not an Anthropic body: a 404 says nothing about the model.
        let page = UpstreamError { message: "<html>".into(), ..Default::default() };
        assert_eq!(
            status_error(status(404), &page, "x".into(), None, m),
            ProviderError::Upstream { status: 404, message: "x".into() }
        );
    }

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds() {
        let now = SystemTime::UNIX_EPOCH;
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500.5"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_micros(1_500_500)));
        headers.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let wait = Some(Duration::from_secs(3));
        let limited = status_error(status(429), &anthropic_error("rate_limit_error"), "m".into(), wait, None);
        assert_eq!(limited.retry_after(), wait);
        let overloaded = status_error(status(529), &anthropic_error("overloaded_error"), "m".into(), wait, None);
        assert_eq!(overloaded.retry_after(), wait);
    }

    fn config(base_url: &str) -> AnthropicConfig {
        AnthropicConfig { base_url: base_url.into(), ..Default::default() }
    }

    #[test]
    fn base_url_is_validated_and_normalized() {
        let provider = AnthropicProvider::new(AnthropicConfig::default()).unwrap();
        assert_eq!(provider.base_url(), "https://api.anthropic.com");
        assert_eq!(provider.messages_url.as_str(), "https://api.anthropic.com/v1/messages");
        for given in ["https://api.anthropic.com/", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/"] {
            assert_eq!(AnthropicProvider::new(config(given)).unwrap().base_url(), "https://api.anthropic.com");
        }
        let provider = AnthropicProvider::new(config("http://proxy.internal:8080/anthropic")).unwrap();
        assert_eq!(provider.models_url.as_str(), "http://proxy.internal:8080/anthropic/v1/models");

        for bad in ["api.anthropic.com", "ftp://host", "not a url", "", "http://host/?x=1"] {
            let err = AnthropicProvider::new(config(bad)).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_key_stays_out_of_debug_output_and_config_errors() {
        let key = "sk-ant-api03-very-secret";
        let config = AnthropicConfig { api_key: Some(Secret::new(key)), ..Default::default() };
        assert!(!format!("{config:?}").contains(key));
        let provider = AnthropicProvider::new(config).unwrap();
        let debug = format!("{provider:?}");
        // The header is there, but its value is not shown.
        assert!(debug.contains("x-api-key") && !debug.contains(key), "{debug}");

        let bad = AnthropicConfig { api_key: Some(Secret::new("sk-ant\nsecret-part")), ..Default::default() };
        let err = AnthropicProvider::new(bad).unwrap_err().to_string();
        assert!(!err.contains("secret-part"), "{err}");
    }

    #[test]
    fn other_config_values_are_checked() {
        let zero = AnthropicConfig { default_max_tokens: 0, ..Default::default() };
        assert!(matches!(AnthropicProvider::new(zero), Err(AnthropicConfigError::InvalidMaxTokens)));
        let version = AnthropicConfig { version: "2023\n".into(), ..Default::default() };
        assert!(matches!(AnthropicProvider::new(version), Err(AnthropicConfigError::InvalidHeader { .. })));
    }

    #[test]
    fn a_streamed_reply_must_be_an_event_stream() {
        let check = |value: &'static str| check_event_stream(Some(&HeaderValue::from_static(value)), "http://h");
        assert!(check("text/event-stream").is_ok());
        assert!(check("text/event-stream; charset=utf-8").is_ok());
        assert!(check("Text/Event-Stream").is_ok());
        assert!(check_event_stream(None, "http://h").is_ok());
        let Err(ProviderError::Protocol(message)) = check("application/json") else { panic!("accepted JSON") };
        assert!(message.contains("application/json") && message.contains("http://h"), "{message}");
    }
}
