//! The Copilot provider adapter for Ollama's native HTTP API (`/api/chat`, `/api/embed`,
//! `/api/tags`, `/api/show`, `/api/version`).
//!
//! [`OllamaProvider`] turns a [`ChatRequest`] into one streamed `POST /api/chat` and the NDJSON
//! reply into [`ChatEvent`](copilot_provider::ChatEvent)s. The wire formats live in `wire.rs`; this module holds the endpoints
//! and Ollama's status rules, and sends through `copilot_http`'s [`Upstream`].
//!
//! # Beyond text: what maps to what
//! | Copilot | Ollama |
//! |---|---|
//! | `tools` | `tools: [{type:"function", function:{name, description, parameters}}]`, the schema as the client wrote it; a tool without one gets `{"type":"object","properties":{}}` |
//! | tool choice `auto` / unset | every tool offered |
//! | tool choice `none` | no tool offered (Ollama has no `tool_choice`) |
//! | tool choice naming a tool | that tool alone is offered: the model may still answer in text, which Ollama cannot prevent |
//! | tool choice `required` | every tool offered, and nothing more: Ollama cannot force a call |
//! | streamed calls | `message.tool_calls: [{id?, function:{index, name, arguments:{…}}}]`, whole calls, one or several per chunk: each gets the next index of a count kept here (Ollama's own `index` restarts with some parsers), `arguments` is the object's text byte for byte (`RawValue`), no `id` before v0.12.10 (the server makes one up) |
//! | finish | `done_reason` `stop` stays [`FinishReason::Stop`](copilot_provider::FinishReason) after calls (the server settles `TOOL_CALLS`), `length` is `Length` |
//! | assistant history | `{role:"assistant", content, thinking?, tool_calls:[{id, function:{name, arguments:{…}}}]}`, arguments sent as the client's text so numbers keep their digits |
//! | `ROLE_TOOL` result | `{role:"tool", content, tool_name, tool_call_id}`: the name of the call it answers (the templates render the name; `tool_call_id` is read since v0.12.10 and ignored before) |
//! | `json_object` / `json_schema` | `format: "json"` / `format: <schema>` (`strict` adds nothing: Ollama always constrains by grammar) |
//! | reasoning off | `think: false` |
//! | reasoning on, default amount | `think: true` |
//! | reasoning on, effort | `think: "low" \| "medium" \| "high"`: gpt-oss takes the level, other thinking models take any level as on (some older servers refused a level for them) |
//! | reasoning on, token budget | the nearest level ([`Effort::from_budget`](copilot_provider::Effort::from_budget)): Ollama takes no budget |
//! | streamed thinking | `message.thinking` → thinking text, passed on only with `include_thoughts` (Ollama has no signatures); thinking tokens are inside `eval_count`, not counted apart |
//! | thinking in history | the `thinking` field of the assistant message (redacted blocks and signatures from other providers are dropped) |
//! | images | `images: ["<raw base64>"]` on the message; image URLs are not declared (Ollama fetches none) |
//! | "model cannot" refusals | `<name> does not support tools` and `"<model>" does not support thinking` (400), `this model is missing data required for image input` (400 or 500) → [`ProviderError::Unsupported`] with the feature |
//! | capabilities | `/api/show`'s (`completion`, `tools`, `thinking`, `vision`, `insert`, `embedding`), plus `json_object` and `json_schema` for every completion model (`format` works on any) |
//! | an embedding model asked to chat | `"<model>" does not support chat` (400) → [`ProviderError::Unsupported`] with [`Feature::Completion`] |
//!
//! # Embeddings: what maps to what
//! | Copilot | Ollama |
//! |---|---|
//! | [`EmbedRequest`] | one `POST /api/embed {model, input: [..], truncate, dimensions?, keep_alive?}`: Ollama has no batch limit, so every input goes in one request |
//! | vectors | `embeddings: [[..]]`, one per input in order, passed on as they come. Ollama L2-normalises them itself; the gateway normalises (again) whatever an adapter returns |
//! | `dimensions` | `dimensions` (declared as [`Feature::EmbeddingDimensions`]): Ollama cuts the vectors to that length and normalises again; a value above the model's length is ignored, which the gateway's length check then sees |
//! | `truncate` | `truncate`, always sent (Ollama's default is `true`): `false` makes an over-long input a 400 `the input length exceeds the context length` → [`ProviderError::InvalidRequest`] with Ollama's words |
//! | task | not sent: Ollama has no task type (a model that wants a prefix such as `search_query: ` gets it from the caller's text) |
//! | usage | `prompt_eval_count` → `input_tokens` |
//! | model | the answer's `model` |
//! | a model that cannot embed | `"<model>" does not support embeddings` (400) → [`ProviderError::Unsupported`] with [`Feature::Embeddings`] |
//! | `ListModels` / `DescribeModel` | the `embedding` capability as Ollama lists it; `/api/show`'s `<architecture>.embedding_length` as `embedding_length`, for models with that capability only (a chat model's is its hidden size) |
//! | answer size | at most 1 MiB plus 384 KiB per input (room for 16,384 components a vector as JSON text); more is a [`ProviderError::Protocol`], a connection lost while reading it [`ProviderError::Interrupted`] |

mod stream;
mod wire;

use std::time::Duration;

use copilot_http::{Adapter, BaseUrlRules, Reading, Refusal, StreamOptions, Upstream};
use copilot_provider::{
    ChatRequest, ChatStream, EmbedRequest, Embeddings, Feature, Features, HealthReport, ModelInfo, Provider,
    ProviderError, Reasoning,
};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};

#[doc(hidden)]
pub use crate::stream::StreamDecoder;

/// How to reach one Ollama server.
#[derive(Debug, Clone, PartialEq)]
pub struct OllamaConfig {
    /// e.g. `"http://localhost:11434"`; a trailing slash is tolerated.
    pub base_url: String,
    /// Sent as `keep_alive` with every chat and embed request when set; Ollama's own default (5 minutes)
    /// applies otherwise.
    pub keep_alive: Option<KeepAlive>,
    /// TCP connect timeout for the HTTP client.
    pub connect_timeout: Duration,
}

/// How long Ollama keeps a model in memory after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload this long after the request; `For(Duration::ZERO)` unloads right away.
    For(Duration),
    /// Never unload.
    Forever,
}

impl KeepAlive {
    /// The wire form: whole seconds, or -1 for forever. A fraction of a second rounds up so a
    /// short non-zero keep-alive never turns into "unload now".
    fn as_wire_seconds(self) -> i64 {
        match self {
            KeepAlive::Forever => -1,
            KeepAlive::For(d) => {
                let seconds = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
                i64::try_from(seconds).unwrap_or(i64::MAX)
            }
        }
    }
}

/// Why an [`OllamaConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OllamaConfigError {
    #[error("invalid Ollama base_url {value:?}: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    #[error("cannot build the HTTP client for Ollama: {0}")]
    HttpClient(String),
}

/// A [`Provider`] backed by one Ollama server. Cheap to share: all requests go through one HTTP
/// client, so connections are pooled and reused.
#[derive(Debug)]
pub struct OllamaProvider {
    upstream: Upstream,
    keep_alive: Option<i64>,
    chat_url: Url,
    embed_url: Url,
    tags_url: Url,
    show_url: Url,
    version_url: Url,
}

impl OllamaProvider {
    pub fn new(config: OllamaConfig) -> Result<Self, OllamaConfigError> {
        let invalid = |reason: String| OllamaConfigError::InvalidBaseUrl { value: config.base_url.clone(), reason };
        let base_url = copilot_http::check_base_url(&config.base_url, &BASE_URL_RULES).map_err(invalid)?;
        let user_agent = concat!("copilot-ollama/", env!("CARGO_PKG_VERSION"));
        let client =
            copilot_http::adapter_client(user_agent, config.connect_timeout, HeaderMap::new(), |builder| builder)
                .map_err(OllamaConfigError::HttpClient)?;
        let upstream = Upstream::new(client, base_url, Some("Ollama"), None).with_reply_source("Ollama");
        let endpoint = |path| upstream.endpoint(path).map_err(invalid);
        Ok(OllamaProvider {
            keep_alive: config.keep_alive.map(KeepAlive::as_wire_seconds),
            chat_url: endpoint("/api/chat")?,
            embed_url: endpoint("/api/embed")?,
            tags_url: endpoint("/api/tags")?,
            show_url: endpoint("/api/show")?,
            version_url: endpoint("/api/version")?,
            upstream,
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
    }
}

/// The most an `/api/embed` answer for `inputs` inputs may hold: 1 MiB, plus room for a vector of
/// 16,384 components written as JSON text (24 bytes each at most) per input.
fn embed_answer_cap(inputs: usize) -> usize {
    (1usize << 20).saturating_add(inputs.saturating_mul(16_384 * 24))
}

#[async_trait::async_trait]
impl Provider for OllamaProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        // The body is serialised into the request here and not kept across the wait for the answer.
        let post = {
            let body = wire::ChatBody::new(&request, self.keep_alive)?;
            copilot_http::with_trace_context(self.upstream.post(self.chat_url.clone()), &request).json(&body)
        };
        let response = self.upstream.send(self, post, Some(&request.model), Reading::of(&request)).await?;
        let base_url = self.upstream.base_url();
        tracing::debug!(model = %request.model, %base_url, "Ollama accepted the chat request");
        let mut decoder = StreamDecoder::new(base_url.clone());
        if !matches!(request.reasoning, Some(Reasoning::On { include_thoughts: true, .. })) {
            decoder = decoder.without_thoughts();
        }
        Ok(self.upstream.chat_stream(response, decoder, StreamOptions::default()))
    }

    /// Every input in one `/api/embed` request (Ollama has no batch limit), the vectors as
    /// Ollama gives them.
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        let body = wire::EmbedBody::new(&request, self.keep_alive);
        let post =
            copilot_http::with_headers(self.upstream.post(self.embed_url.clone()), &request.trace_context).json(&body);
        let cap = embed_answer_cap(request.inputs.len());
        let parsed: wire::EmbedResponse =
            self.upstream.fetch_json_within(self, post, Some(&request.model), "embeddings", cap).await?;
        let embeddings = parsed.into_embeddings();
        tracing::debug!(model = %request.model, vectors = embeddings.vectors.len(), "Ollama embedded the inputs");
        Ok(embeddings)
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let tags: wire::TagsResponse =
            self.upstream.fetch_json(self, self.upstream.get(self.tags_url.clone()), None, "model list").await?;
        Ok(tags.into_models())
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        let request = self.upstream.post(self.show_url.clone()).json(&wire::ShowBody { model });
        let show: wire::ShowResponse =
            self.upstream.fetch_json(self, request, Some(model), "model description").await?;
        Ok(show.into_model(model))
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        let version: wire::VersionResponse =
            self.upstream.fetch_json(self, self.upstream.get(self.version_url.clone()), None, "version").await?;
        Ok(HealthReport { version: version.version })
    }

    /// Everything but image URLs: Ollama takes images as data only. Whether a model can is
    /// Ollama's to say (`does not support tools`, `does not support embeddings`, …), which comes
    /// back as `Unsupported`.
    fn features(&self) -> Features {
        Features::of(&[
            Feature::Tools,
            Feature::JsonObject,
            Feature::JsonSchema,
            Feature::Thinking,
            Feature::ThinkingOff,
            Feature::Images,
            Feature::Embeddings,
            Feature::EmbeddingDimensions,
        ])
    }
}

/// Ollama's status rules: the message is Ollama's `error` field (or the body); the status alone
/// decides the error.
impl Adapter for OllamaProvider {
    fn refusal(&self, refusal: Refusal<'_>, model: Option<&str>) -> ProviderError {
        let retry_after = copilot_http::retry_after(refusal.headers, refusal.received);
        let mut message = wire::error_message(refusal.body);
        if message.is_empty() {
            message = refusal.reason().to_owned();
        }
        tracing::debug!(status = refusal.status.as_u16(), %message, "Ollama refused the request");
        status_error(refusal.status, message, retry_after, model)
    }
}

/// What a base URL may be: any http(s) URL without a query or fragment.
const BASE_URL_RULES: BaseUrlRules =
    BaseUrlRules { example: "http://localhost:11434", drop_suffix: None, query_hint: "", no_credentials: None };

// ---------------------------------------------------------------------------------------------
// Errors

fn status_error(
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    model: Option<&str>,
) -> ProviderError {
    if let Some(feature) = unsupported_feature(status, &message) {
        return ProviderError::Unsupported { feature, message };
    }
    match (status.as_u16(), model) {
        (400 | 422, _) => ProviderError::InvalidRequest(message),
        (401 | 403, _) => ProviderError::Unauthorized(message),
        // Ollama's wording of "not found" varies by version and endpoint; the status does not.
        (404, Some(model)) => ProviderError::ModelNotFound { model: model.to_owned() },
        (429, _) => ProviderError::RateLimited { message, retry_after },
        (503, _) => ProviderError::Overloaded { message, retry_after },
        (status, _) => ProviderError::Upstream { status, message },
    }
}

/// The feature a refusal says the model lacks. Ollama checks the model's capabilities before
/// running it: `<name> does not support tools` (400), `"<model>" does not support thinking` (400),
/// `"<model>" does not support embeddings` (400, a chat model asked to embed), `"<model>" does not
/// support chat` (400, an embedding model asked to chat);
/// images reach a model without a vision projector and fail in its runner with `this model is
/// missing data required for image input` (400 or 500, by version).
fn unsupported_feature(status: StatusCode, message: &str) -> Option<Feature> {
    if !matches!(status.as_u16(), 400 | 500) {
        return None;
    }
    if message.contains("does not support tools") {
        Some(Feature::Tools)
    } else if message.contains("does not support thinking") {
        Some(Feature::Thinking)
    } else if message.contains("does not support embeddings") {
        Some(Feature::Embeddings)
    } else if message.contains("does not support chat") {
        Some(Feature::Completion)
    } else if message.contains("does not support vision") || message.contains("missing data required for image input") {
        Some(Feature::Images)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn statuses_map_to_provider_errors() {
        let map = |code, model| status_error(status(code), "msg".into(), None, model);
        assert_eq!(map(400, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(422, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(401, Some("m")), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(403, None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(404, Some("llama3:8b")), ProviderError::ModelNotFound { model: "llama3:8b".into() });
        // A 404 from an endpoint that names no model means the URL is not an Ollama API.
        assert_eq!(map(404, None), ProviderError::Upstream { status: 404, message: "msg".into() });
        assert_eq!(map(429, None), ProviderError::RateLimited { message: "msg".into(), retry_after: None });
        assert_eq!(map(503, None), ProviderError::Overloaded { message: "msg".into(), retry_after: None });
        assert_eq!(map(500, Some("m")), ProviderError::Upstream { status: 500, message: "msg".into() });
        assert_eq!(map(502, Some("m")), ProviderError::Upstream { status: 502, message: "msg".into() });
    }

    #[test]
    fn a_model_that_cannot_is_unsupported_naming_the_feature() {
        let map = |code, message: &str| status_error(status(code), message.into(), None, Some("m"));
        let unsupported = |feature, message: &str| ProviderError::Unsupported { feature, message: message.into() };
        let tools = "registry.ollama.ai/library/gemma3:1b does not support tools";
        assert_eq!(map(400, tools), unsupported(Feature::Tools, tools));
        let thinking = r#""gemma3:1b" does not support thinking"#;
        assert_eq!(map(400, thinking), unsupported(Feature::Thinking, thinking));
        let vision = "this model is missing data required for image input";
        assert_eq!(map(500, vision), unsupported(Feature::Images, vision));
        assert_eq!(map(400, vision), unsupported(Feature::Images, vision));
        let vision = "registry.ollama.ai/library/qwen3:8b does not support vision";
        assert_eq!(map(400, vision), unsupported(Feature::Images, vision));
        // Other statuses keep their meaning whatever the text says.
        assert_eq!(map(503, tools), ProviderError::Overloaded { message: tools.into(), retry_after: None });
        assert_eq!(
            map(400, "does not support generate"),
            ProviderError::InvalidRequest("does not support generate".into())
        );
    }

    #[test]
    fn embedding_refusals_map_to_precise_errors() {
        let map = |code, message: &str| status_error(status(code), message.into(), None, Some("m"));
        let embeddings = r#""llama3.2:latest" does not support embeddings"#;
        assert_eq!(
            map(400, embeddings),
            ProviderError::Unsupported { feature: Feature::Embeddings, message: embeddings.into() }
        );
        let chat = r#""nomic-embed-text" does not support chat"#;
        assert_eq!(map(400, chat), ProviderError::Unsupported { feature: Feature::Completion, message: chat.into() });
        let too_long = "the input length exceeds the context length";
        assert_eq!(map(400, too_long), ProviderError::InvalidRequest(too_long.into()));
    }

    #[test]
    fn embed_answers_are_bounded_by_their_input_count() {
        assert_eq!(embed_answer_cap(0), 1 << 20);
        assert_eq!(embed_answer_cap(2), (1 << 20) + 2 * 16_384 * 24);
        assert_eq!(embed_answer_cap(usize::MAX), usize::MAX);
    }

    #[test]
    fn retry_after_is_carried_on_429_and_503() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(status_error(status(429), "m".into(), wait, None).retry_after(), wait);
        assert_eq!(status_error(status(503), "m".into(), wait, None).retry_after(), wait);
    }

    #[test]
    fn keep_alive_wire_forms() {
        assert_eq!(KeepAlive::For(Duration::ZERO).as_wire_seconds(), 0);
        assert_eq!(KeepAlive::Forever.as_wire_seconds(), -1);
        assert_eq!(KeepAlive::For(Duration::from_secs(300)).as_wire_seconds(), 300);
        assert_eq!(KeepAlive::For(Duration::from_millis(1500)).as_wire_seconds(), 2);
        assert_eq!(KeepAlive::For(Duration::from_millis(1)).as_wire_seconds(), 1);
    }

    fn config(base_url: &str) -> OllamaConfig {
        OllamaConfig { base_url: base_url.into(), keep_alive: None, connect_timeout: Duration::from_secs(1) }
    }

    #[test]
    fn base_url_is_validated_and_normalized() {
        let provider = OllamaProvider::new(config("http://localhost:11434/")).unwrap();
        assert_eq!(provider.base_url(), "http://localhost:11434");
        assert_eq!(provider.chat_url.as_str(), "http://localhost:11434/api/chat");
        assert_eq!(provider.embed_url.as_str(), "http://localhost:11434/api/embed");
        let provider = OllamaProvider::new(config("https://gpu-box.example/ollama")).unwrap();
        assert_eq!(provider.version_url.as_str(), "https://gpu-box.example/ollama/api/version");

        for bad in ["localhost:11434", "ftp://host", "not a url", "", "http://host/?x=1"] {
            let err = OllamaProvider::new(config(bad)).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
