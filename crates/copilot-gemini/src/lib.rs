//! The Copilot provider adapter for the Google Gemini API (Google AI Studio,
//! `generativelanguage.googleapis.com/v1beta`) and for Gemini on Vertex AI.
//!
//! [`GeminiProvider`] turns a [`ChatRequest`] into one `POST
//! /v1beta/models/{model}:streamGenerateContent?alt=sse` and the server-sent events of the reply
//! into [`ChatEvent`]s; `GET /v1beta/models[/{model}]` serves listing, description and health;
//! `:batchEmbedContents` serves embeddings (see **Embeddings** below). The
//! API key travels only in the `x-goog-api-key` header — never in the URL, where the `?key=` form
//! would put it into proxy logs and error messages. The wire formats live in `wire.rs`; this
//! module holds the endpoints, the credentials and Gemini's status rules, and sends through
//! `copilot_http`'s [`Upstream`].
//!
//! With [`GeminiAuth::Vertex`] the same bodies go to Vertex AI instead:
//! `POST {base}/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:streamGenerateContent?alt=sse`,
//! with `Authorization: Bearer <token>` from Application Default Credentials (see `auth.rs`: a
//! service-account key file or the metadata server, tokens cached and refreshed before they
//! expire) and `x-goog-user-project` when the credentials name a quota project. A 401 from Vertex
//! gets one fresh token and one retry. Vertex has no listing of the models a project can call
//! (its publisher catalog lists every Model Garden model), so listing returns the configured
//! models; a description comes from `GET {base}/v1beta1/publishers/google/models/{model}`, and
//! health is a valid token.
//!
//! Beyond text (wire shapes in `wire.rs`, the stream in `stream.rs`):
//! - **Tools**: `tools: [{functionDeclarations: [{name, description, parametersJsonSchema}]}]`,
//!   the schema sent as the client wrote it (`RawValue`); `strict` has no Gemini equivalent.
//!   Tool choice is `toolConfig.functionCallingConfig.mode`: auto `AUTO`, none `NONE`, required
//!   `ANY`, a named tool `ANY` with `allowedFunctionNames: [name]`.
//! - **Calls in the stream** are whole `functionCall` parts without an index, several in one chunk
//!   or one per chunk: each becomes one [`ToolCallDelta`](copilot_provider::ToolCallDelta)
//!   numbered by a running index, its `args` object passed on as the exact text Gemini wrote (a
//!   missing `args` is `{}`), its `id` only when Gemini gives one (Gemini 3; otherwise the server
//!   makes one up), and the `thoughtSignature` beside it as the delta's signature. `finishReason`
//!   is `STOP` with calls too and is reported as a stop (the server settles it into tool calls);
//!   `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL` and `TOO_MANY_TOOL_CALLS` end the stream as
//!   [`ProviderError::MidStream`] with Gemini's `finishMessage`. At most
//!   1,024 calls per answer; a call without a name, non-object `args` or a signature that is not
//!   base64 is [`ProviderError::Protocol`].
//! - **History**: an assistant message is one `model` turn, part for part: text, `functionCall
//!   {name, args (the arguments' text), id}` with its `thoughtSignature` beside it, thinking as
//!   `{text, thought: true, thoughtSignature}`. A thinking part with only a signature (Gemini's
//!   closing signature, which the stream reports after its part's text) goes back on the text part
//!   before it when that has none, else as Gemini's own `{text: "", thoughtSignature}` part.
//!   Anthropic's redacted thinking is left out (nothing Gemini can read). The `ROLE_TOOL` results
//!   of a step become one `user` turn of `functionResponse {name, response, id}` parts in the
//!   order of the calls (Gemini pairs them by position when there are no ids); `response` is the
//!   result when it is a JSON object, else `{"result": <text>}`. Ids go back only when Gemini
//!   wrote them: one Copilot made up (`call_` and 24 letters and digits) is left out.
//! - **Structured output**: `generationConfig.responseMimeType: "application/json"`, plus
//!   `responseJsonSchema` (the client's schema as written) for a JSON Schema; Gemini always
//!   constrains to it, so `strict` changes nothing.
//! - **Reasoning**: `generationConfig.thinkingConfig`. Off is `thinkingBudget: 0`; on asks for
//!   `includeThoughts` when thoughts are to be returned, an effort is `thinkingLevel`
//!   `LOW`/`MEDIUM`/`HIGH` on Gemini 3 and the effort's budget before it (2.5 has no levels), a
//!   budget is `thinkingBudget`, and the model's default is the dynamic budget `-1` before Gemini
//!   3 (2.5 Flash-Lite thinks only when asked) and nothing on Gemini 3. Parts with
//!   `thought: true` stream as thinking text; a `thoughtSignature` on any part but a call closes
//!   the thinking as its signature. `thoughtsTokenCount` is added to the output tokens and
//!   reported as reasoning tokens; `cachedContentTokenCount` as cached input tokens.
//! - **Images**: `inlineData {mimeType, data (base64)}` in the user turn. URLs are not declared
//!   (so the server refuses them): `fileData` takes only files Google stores (the Files API, or
//!   `gs://` on Vertex AI), not a URL Gemini would fetch.
//! - **What a model cannot do** comes back as Gemini's 400s and becomes
//!   [`ProviderError::Unsupported`] naming the feature: "Function calling is not enabled for
//!   models/…" (tools), "JSON mode is not enabled…" (JSON output), "Image input modality is not
//!   enabled…" (images), "…only works in thinking mode" (turning thinking off), "Thinking is not
//!   supported…" (thinking). Listings say what a listing does not: every `gemini-` chat model has
//!   `tools`, `json_object`, `json_schema` and `vision`; `thinking` comes from the model's own
//!   flag (on Vertex, from the name: 2.5 and 3).
//!
//! **Embeddings** ([`Provider::embed`]) on the Gemini API:
//! - `POST /v1beta/models/{model}:batchEmbedContents` with `{"requests": [{"model":
//!   "models/{model}", "content": {"parts": [{"text"}]}, "taskType"?, "outputDimensionality"?}]}`,
//!   one request per input, each naming the path's model (Gemini checks that they match), and
//!   `{"embeddings": [{"values"}]}` back. At most 100 requests per batch (Gemini's limit: "at most
//!   100 requests can be in one batch"): more inputs go as several batches, one after another,
//!   and the vectors are put back in input order; each batch must answer one vector per input
//!   (else [`ProviderError::Protocol`]), and any failing batch fails the call. The answer is read
//!   up to 32 MiB. Vectors are returned as Gemini gave them (only its full 3,072-dimension output
//!   is normalised; the server normalises).
//! - `task`: `taskType` `RETRIEVAL_QUERY` (query), `RETRIEVAL_DOCUMENT` (document),
//!   `SEMANTIC_SIMILARITY`, `CLASSIFICATION`, `CLUSTERING`; unspecified sends none (the model's
//!   default). `dimensions` is `outputDimensionality` (declared: [`Feature::EmbeddingDimensions`]).
//! - Usage: Gemini reports none for `batchEmbedContents`, so `input_tokens` is `None`, and no
//!   model name comes back.
//! - `truncate`: the Gemini API has no switch — it cuts inputs over the model's limit (2,048
//!   tokens for gemini-embedding-001) silently. With `truncate` the inputs go as they are. Without
//!   it, an input that is *surely* too long — more than 6 bytes per token of the limit (12,288
//!   bytes for gemini-embedding-001; ordinary text averages about 4) — is refused before sending
//!   as [`ProviderError::InvalidRequest`] naming its index and the limit; a shorter input that is
//!   still over the limit cannot be told without a tokenizer and is cut by Gemini. Models whose
//!   limit is not known here are not checked.
//! - A model that cannot embed: Gemini answers 404 "models/… is not found for API version v1beta,
//!   or is not supported for embedContent" alike for an unknown model and a chat model, so the
//!   model is then described: listed without `embedContent` → [`ProviderError::Unsupported`]
//!   (feature embeddings, naming its methods), else [`ProviderError::ModelNotFound`]. Other
//!   errors map as for chat. An embedding model asked to chat gets the same 404, told apart the
//!   same way (feature completion, listed without `generateContent`).
//! - Listings include models with `embedContent`, marked `embedding` (and no chat
//!   capabilities); `embedding_length` comes from the name, since the listing has no dimension
//!   (gemini-embedding-* 3,072; text-embedding-004/005, text-multilingual-embedding-002 and
//!   embedding-001 768; on Vertex AI, whose listing is the configured models, likewise).
//!
//! On Vertex AI, embeddings go to `POST …/publishers/google/models/{model}:predict` with
//! `{"instances": [{"content", "task_type"?}], "parameters": {"outputDimensionality"?,
//! "autoTruncate"}}` and come back as `{"predictions": [{"embeddings": {"values", "statistics":
//! {"token_count"}}}]}`: one instance per call for `gemini-embedding` models (Vertex: "batchSize
//! must be 1"), up to 250 for the text-embedding models, the calls one after another and each
//! checked to answer one vector per instance. `truncate` is Vertex's own `autoTruncate`, so an
//! over-long input without it is Vertex's INVALID_ARGUMENT ([`ProviderError::InvalidRequest`] in
//! its words). `input_tokens` is the sum of the `token_count`s (none if any is missing). A chat
//! model's "Gemini cannot be accessed through Vertex Predict/RawPredict API" is
//! [`ProviderError::Unsupported`] (embeddings); an unknown model Vertex's 404.
//!
//! The Gemini embedding models after gemini-embedding-001 (`gemini-embedding-2`,
//! `gemini-embedding-2-preview`, …) are not served through `:predict` on Vertex (it answers 400
//! FAILED_PRECONDITION "Precondition check failed."): they go to `POST
//! …/publishers/google/models/{model}:embedContent` with `{"content": {"parts": [{"text"}]},
//! "embedContentConfig": {"taskType"?, "outputDimensionality"?, "autoTruncate"}}` and come back as
//! `{"embedding": {"values"}, "usageMetadata": {"promptTokenCount"}, "truncated"?}`. The method is
//! chosen once, by name (`wire::vertex_embed_method`): `:embedContent` for `gemini-embedding-*`
//! other than `gemini-embedding-001`, `:predict` for everything else (text-embedding-*,
//! text-multilingual-embedding-*, gemini-embedding-001); a `:predict` model whose first call gets
//! that FAILED_PRECONDITION is sent, whole, to `:embedContent` instead. `:embedContent` takes one
//! input: the inputs go one per call, one after another (under the call's deadline), each answer
//! read up to the same limit and checked to hold a vector (else [`ProviderError::Protocol`]), the
//! vectors in input order. `task`, `dimensions` and `truncate` map as for `:predict`;
//! `input_tokens` is the sum of the `promptTokenCount`s (none if an answer has no
//! `usageMetadata`). Any failing call fails the whole call; a refusal
//! ([`ProviderError::InvalidRequest`], e.g. an over-long input without `truncate`) is prefixed
//! `input {i}: ` when there are several inputs, and nothing after it is sent.
//!
//! **Token counts** ([`Provider::count_tokens`], exact: Gemini's own tokenizer):
//! - Gemini API: `POST /v1beta/models/{model}:countTokens` with `{"generateContentRequest":
//!   {"model": "models/{model}", "contents", "systemInstruction"?, "tools"?}}`, the request mapped
//!   exactly as for chat (`GenerateBody` in `wire.rs`): the wrapped form is the one that counts the
//!   system instruction and the tools (a bare `contents` counts neither). `{"totalTokens"}` comes
//!   back; a missing count is 0 (proto3 JSON omits zeros). A 404 is told apart as for embeddings:
//!   a model listed without `countTokens` is [`ProviderError::Unsupported`] (feature
//!   `count_tokens`), else [`ProviderError::ModelNotFound`].
//! - Vertex AI: `POST …/publishers/google/models/{model}:countTokens` with the same fields flat
//!   (`{"contents", "systemInstruction"?, "tools"?}`), `{"totalTokens", "totalBillableCharacters"}`
//!   back; its 404 is the model's.
//! - Answers are read up to 64 KiB; other errors map as for chat.
//!
//! How the real API's quirks are handled:
//! - The stream has no `[DONE]`: it is complete once a chunk carried a `finishReason` (or the
//!   prompt was blocked). A body that ends before that is [`ProviderError::Interrupted`].
//! - A blocked prompt is HTTP 200 with `promptFeedback.blockReason` and no candidates: it ends as
//!   `Done` with [`FinishReason::ContentFilter`](copilot_provider::FinishReason) and no text (the
//!   gateway's callers see the policy outcome rather than an error or an empty "stop").
//! - An error after the stream started may come as bare, multi-line JSON outside any `data:` line;
//!   the SSE parser skips such lines, so the last bytes of the body are kept and searched for it
//!   when the body ends early ([`ProviderError::MidStream`]).
//! - An invalid key is HTTP 400 `INVALID_ARGUMENT` with `ErrorInfo.reason = API_KEY_INVALID`:
//!   mapped to [`ProviderError::Unauthorized`], like 401/403.
//! - 429 carries `google.rpc.RetryInfo.retryDelay` (`"30s"`) in its details; the longer of it and
//!   a `Retry-After` header becomes the `retry_after` hint.

mod auth;
mod stream;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use copilot_http::{Adapter, BaseUrlRules, FinishGrace, Reading, Refusal, StreamOptions, Upstream};
use copilot_provider::{
    ChatRequest, ChatStream, EmbedRequest, Embeddings, Feature, Features, HealthReport, ModelInfo, Provider,
    ProviderError, Secret, TokenCount,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;

pub use crate::auth::{CLOUD_PLATFORM_SCOPE, CredentialsError, DEFAULT_METADATA_HOST, GoogleCredentials};
#[doc(hidden)]
pub use crate::stream::StreamDecoder;

/// Where Google serves the Gemini API.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The API version every path is under.
const API_VERSION: &str = "v1beta";

/// The API version of every Vertex AI path (the one Google's SDKs use).
const VERTEX_API_VERSION: &str = "v1beta1";

/// The header Google's own SDKs send the key in.
const API_KEY_HEADER: &str = "x-goog-api-key";

/// The header naming the project Vertex bills quota to, when the credentials name one.
const USER_PROJECT_HEADER: &str = "x-goog-user-project";

/// `models.list` page size: the API's maximum, so a listing is usually one request.
const LIST_PAGE_SIZE: &str = "1000";

/// A listing stops after this many pages even if the server keeps offering more.
const MAX_LIST_PAGES: usize = 20;

/// The most an embeddings answer may hold: 100 vectors of 3,072 numbers at up to ~25 bytes each
/// is under 8 MiB.
const MAX_EMBED_RESPONSE_BYTES: usize = 32 << 20;

/// How to reach the Gemini API.
#[derive(Debug, Clone, PartialEq)]
pub struct GeminiConfig {
    /// Default [`DEFAULT_BASE_URL`]; point it at a proxy or a fake. A trailing slash is tolerated;
    /// `/v1beta/...` (Vertex: `/v1beta1/...`) is appended. With [`GeminiAuth::Vertex`], leaving it
    /// empty or at [`DEFAULT_BASE_URL`] means the location's Vertex AI host ([`vertex_base_url`]).
    pub base_url: String,
    /// How requests are authenticated, and so which API they go to.
    pub auth: GeminiAuth,
    /// TCP (and TLS) connect timeout for the HTTP client. Default 10 s.
    pub connect_timeout: Duration,
    /// Sent verbatim as `safetySettings` with every chat request. Empty (the default) sends none,
    /// so Google's default thresholds apply.
    pub safety_settings: Vec<SafetySetting>,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        GeminiConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            auth: GeminiAuth::None,
            connect_timeout: Duration::from_secs(10),
            safety_settings: Vec::new(),
        }
    }
}

/// Which API a [`GeminiProvider`] calls, and with what credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum GeminiAuth {
    /// The Gemini API (Google AI Studio), the key sent as `x-goog-api-key` on every request.
    ApiKey(Secret),
    /// The Gemini API without credentials (for a proxy that adds them).
    None,
    /// Gemini on Vertex AI, with OAuth access tokens from Google Cloud credentials.
    Vertex(VertexConfig),
}

/// Gemini on Vertex AI: where, and as whom.
#[derive(Debug, Clone, PartialEq)]
pub struct VertexConfig {
    /// The Google Cloud project whose Vertex AI serves (and bills) the calls.
    pub project: String,
    /// `global`, a region (`us-central1`, `europe-west4`, …) or a multi-region (`us`, `eu`).
    pub location: String,
    pub credentials: GoogleCredentials,
    /// What `list_models` answers with (typically the configured default model): Vertex cannot
    /// list the models a project may call.
    pub models: Vec<String>,
}

/// The Vertex AI host for `location`: `https://aiplatform.googleapis.com` for `global`,
/// `https://aiplatform.{us,eu}.rep.googleapis.com` for the multi-regions, else
/// `https://{location}-aiplatform.googleapis.com`.
pub fn vertex_base_url(location: &str) -> String {
    match location {
        "global" => "https://aiplatform.googleapis.com".to_owned(),
        "us" | "eu" => format!("https://aiplatform.{location}.rep.googleapis.com"),
        region => format!("https://{region}-aiplatform.googleapis.com"),
    }
}

/// One `safetySettings` entry, e.g. `HARM_CATEGORY_HARASSMENT` / `BLOCK_ONLY_HIGH`. Passed through
/// as given: Gemini itself rejects unknown categories or thresholds (as a 400 on each chat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetySetting {
    pub category: String,
    pub threshold: String,
}

/// Why a [`GeminiConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeminiConfigError {
    #[error("invalid Gemini base_url {value:?}: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    /// Never includes the key itself.
    #[error("invalid Gemini API key: {0}")]
    InvalidApiKey(&'static str),
    #[error("cannot build the HTTP client for Gemini: {0}")]
    HttpClient(String),
    #[error("invalid Vertex AI {field} {value:?}: {reason}")]
    InvalidVertex { field: &'static str, value: String, reason: &'static str },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// A [`Provider`] backed by the Gemini API. Cheap to share: all requests go through one HTTP
/// client, so connections are pooled and reused.
pub struct GeminiProvider {
    /// Holds the API key, if any, to mask it in upstream text that might echo it.
    upstream: Upstream,
    auth: Auth,
    /// `{base_url}/v1beta/` (Vertex: `{base_url}/v1beta1/projects/{p}/locations/{l}/publishers/google/`),
    /// to which a model's resource path is appended.
    api_root: String,
    /// Where a model is described: `api_root`, or Vertex's publisher catalog
    /// `{base_url}/v1beta1/publishers/google/`.
    describe_root: String,
    models_url: Url,
    safety_settings: Vec<SafetySetting>,
}

/// What each request carries, ready to send; header values are marked sensitive so `http`'s
/// `Debug` hides them too.
enum Auth {
    None,
    ApiKey(HeaderValue),
    Vertex {
        project: String,
        location: String,
        tokens: Arc<auth::TokenCache>,
        user_project: Option<HeaderValue>,
        models: Vec<String>,
    },
}

impl fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("GeminiProvider");
        debug.field("base_url", self.upstream.base_url());
        match &self.auth {
            Auth::None => debug.field("auth", &"none"),
            Auth::ApiKey(_) => debug.field("api_key", &self.upstream.secret()),
            Auth::Vertex { project, location, tokens, .. } => debug
                .field("vertex_project", project)
                .field("vertex_location", location)
                .field("credentials", tokens.source()),
        };
        debug.field("safety_settings", &self.safety_settings).finish_non_exhaustive()
    }
}

impl GeminiProvider {
    pub fn new(config: GeminiConfig) -> Result<Self, GeminiConfigError> {
        // Vertex's project and location, checked first: they go into the host name and paths.
        let vertex = match &config.auth {
            GeminiAuth::Vertex(vertex) => {
                let project = check_vertex_field("project", &vertex.project, |b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                })?;
                let location = check_vertex_field("location", &vertex.location, |b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
                })?;
                Some((project, location))
            }
            _ => None,
        };
        let raw_base_url = match &vertex {
            Some((_, location)) if is_default_base_url(&config.base_url) => vertex_base_url(location),
            _ => config.base_url.clone(),
        };
        let invalid = |reason: String| GeminiConfigError::InvalidBaseUrl { value: raw_base_url.clone(), reason };
        let base_url = copilot_http::check_base_url(&raw_base_url, &BASE_URL_RULES).map_err(invalid)?;
        let (api_root, describe_root, models_url) = match &vertex {
            None => {
                let api_root = format!("{base_url}/{API_VERSION}/");
                let models_url = format!("{api_root}models");
                (api_root.clone(), api_root, models_url)
            }
            Some((project, location)) => {
                let api_root = format!(
                    "{base_url}/{VERTEX_API_VERSION}/projects/{project}/locations/{location}/publishers/google/"
                );
                let describe_root = format!("{base_url}/{VERTEX_API_VERSION}/publishers/google/");
                let models_url = format!("{describe_root}models");
                (api_root, describe_root, models_url)
            }
        };
        let models_url = Url::parse(&models_url).map_err(|e| invalid(e.to_string()))?;

        // No redirects: Google does not redirect API calls, and following one would carry the key
        // header to wherever it points.
        let user_agent = concat!("copilot-gemini/", env!("CARGO_PKG_VERSION"));
        let client = copilot_http::adapter_client(user_agent, config.connect_timeout, HeaderMap::new(), |builder| {
            builder.redirect(reqwest::redirect::Policy::none())
        })
        .map_err(GeminiConfigError::HttpClient)?;

        let mut vertex_fields = vertex;
        let (auth, api_key) = match config.auth {
            GeminiAuth::None => (Auth::None, None),
            GeminiAuth::ApiKey(key) => (Auth::ApiKey(api_key_header(&key)?), Some(key)),
            GeminiAuth::Vertex(vertex) => {
                let source = auth::Source::resolve(&vertex.credentials, |name| std::env::var(name).ok())?;
                // A quota project that cannot be a header value is left out rather than refused:
                // Vertex then bills the credentials' own project.
                let user_project = source.quota_project().and_then(|p| HeaderValue::from_str(p.trim()).ok());
                let tokens = Arc::new(auth::TokenCache::new(source, client.clone()));
                let models =
                    vertex.models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).map(String::from).collect();
                let (project, location) = vertex_fields.take().unwrap_or_default();
                (Auth::Vertex { project, location, tokens, user_project, models }, None)
            }
        };

        Ok(GeminiProvider {
            upstream: Upstream::new(client, base_url, Some("Gemini"), api_key).with_reply_source("Gemini"),
            auth,
            api_root,
            describe_root,
            models_url,
            safety_settings: config.safety_settings,
        })
    }

    /// On Vertex AI, where the credentials come from (`service account x@p.iam.gserviceaccount.com
    /// (key file /path)`, `the metadata server at metadata.google.internal`): for a start-up log
    /// line. `None` for the Gemini API.
    pub fn vertex_credentials(&self) -> Option<String> {
        match &self.auth {
            Auth::Vertex { tokens, .. } => Some(tokens.source().to_string()),
            _ => None,
        }
    }

    fn is_vertex(&self) -> bool {
        matches!(self.auth, Auth::Vertex { .. })
    }

    /// The API's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
    }

    /// `{base}/v1beta/models/{model}{suffix}` (or the Vertex path); the model name is escaped so it
    /// stays one segment.
    fn model_url(&self, model: &str, suffix: &str) -> Result<Url, ProviderError> {
        self.url_under(&self.api_root, model, suffix)
    }

    /// Embeddings on Vertex AI: `:predict` or `:embedContent` by the model
    /// ([`wire::vertex_embed_method`]; see the module docs).
    async fn vertex_embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        match wire::vertex_embed_method(&request.model) {
            wire::VertexEmbedMethod::EmbedContent => self.vertex_embed_content(&request).await,
            wire::VertexEmbedMethod::Predict => self.vertex_predict(request).await,
        }
    }

    /// Embeddings through Vertex AI's `:predict`; a model that Vertex serves only through
    /// `:embedContent` (its FAILED_PRECONDITION on the first call) goes there instead.
    async fn vertex_predict(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        let url = self.model_url(&request.model, ":predict")?;
        let mut vectors = Vec::with_capacity(request.inputs.len());
        let mut tokens = Some(0u64);
        for piece in request.inputs.chunks(wire::vertex_embed_batch(&request.model)) {
            let body = wire::PredictBody::new(piece, request.task, request.dimensions, request.truncate);
            let post = copilot_http::with_headers(self.upstream.post(url.clone()), &request.trace_context).json(&body);
            let parsed: wire::PredictResponse = match self
                .upstream
                .fetch_json_within(self, post, Some(&request.model), "embeddings", MAX_EMBED_RESPONSE_BYTES)
                .await
            {
                Ok(parsed) => parsed,
                // Nothing embedded yet: the whole call goes the other way.
                Err(err) if vectors.is_empty() && wire::predict_wants_embed_content(&err) => {
                    return self.vertex_embed_content(&request).await;
                }
                Err(err) => return Err(wire::vertex_cannot_embed(err)),
            };
            let (got, counted) = parsed.into_parts();
            if got.len() != piece.len() {
                return Err(ProviderError::Protocol(format!(
                    "Vertex AI returned {} embeddings for a batch of {} inputs",
                    got.len(),
                    piece.len()
                )));
            }
            tokens = tokens.zip(counted).map(|(sum, count)| sum.saturating_add(count));
            vectors.extend(got);
        }
        let input_tokens = tokens.map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        Ok(Embeddings { vectors, model: String::new(), input_tokens })
    }

    /// Embeddings through Vertex AI's `:embedContent`: one input per call, the calls one after
    /// another (under the call's deadline, as every request), the vectors in input order. Any
    /// failure fails the call; a refusal of the request names the input it was for.
    async fn vertex_embed_content(&self, request: &EmbedRequest) -> Result<Embeddings, ProviderError> {
        let url = self.model_url(&request.model, ":embedContent")?;
        let mut vectors = Vec::with_capacity(request.inputs.len());
        let mut tokens = Some(0u64);
        for (index, text) in request.inputs.iter().enumerate() {
            let body = wire::VertexEmbedContentBody::new(text, request.task, request.dimensions, request.truncate);
            let post = copilot_http::with_headers(self.upstream.post(url.clone()), &request.trace_context).json(&body);
            let parsed: wire::VertexEmbedContentResponse = self
                .upstream
                .fetch_json_within(self, post, Some(&request.model), "embeddings", MAX_EMBED_RESPONSE_BYTES)
                .await
                .map_err(|err| match wire::vertex_cannot_embed(err) {
                    ProviderError::InvalidRequest(message) if request.inputs.len() > 1 => {
                        ProviderError::InvalidRequest(format!("input {index}: {message}"))
                    }
                    err => err,
                })?;
            let (vector, counted) = parsed.into_parts();
            let Some(vector) = vector else {
                return Err(ProviderError::Protocol(format!("Vertex AI returned no embedding for input {index}")));
            };
            tokens = tokens.zip(counted).map(|(sum, count)| sum.saturating_add(count));
            vectors.push(vector);
        }
        let input_tokens = tokens.map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        Ok(Embeddings { vectors, model: String::new(), input_tokens })
    }

    /// Why Gemini answered a request for `model` with its 404 ("models/… is not found for API
    /// version v1beta, or is not supported for embedContent", or "… for generateContent"), which it
    /// gives alike to a model that does not exist and to one without that method: the model's
    /// description tells. `feature` is what the request needed: embeddings (`embedContent`), a
    /// token count (`countTokens`) or completions (`generateContent`).
    async fn not_found_or_cannot(&self, model: &str, feature: Feature) -> ProviderError {
        let Ok(url) = self.url_under(&self.describe_root, model, "") else {
            return ProviderError::ModelNotFound { model: model.to_owned() };
        };
        let (method, can) = match feature {
            Feature::Embeddings => ("embedContent", wire::Model::supports_embed_content as fn(&wire::Model) -> bool),
            Feature::CountTokens => ("countTokens", wire::Model::supports_count_tokens as fn(&wire::Model) -> bool),
            _ => ("generateContent", wire::Model::supports_generate_content as fn(&wire::Model) -> bool),
        };
        match self
            .upstream
            .fetch_json::<wire::Model, _>(self, self.upstream.get(url), Some(model), "model description")
            .await
        {
            Ok(found) if !can(&found) => ProviderError::Unsupported {
                feature,
                message: format!("Gemini lists the methods of {model} as [{}], without {method}", found.methods()),
            },
            _ => ProviderError::ModelNotFound { model: model.to_owned() },
        }
    }

    fn url_under(&self, root: &str, model: &str, suffix: &str) -> Result<Url, ProviderError> {
        Url::parse(&format!("{root}{}{suffix}", model_path(model, self.is_vertex())))
            .map_err(|e| ProviderError::InvalidRequest(format!("invalid Gemini model name {model:?}: {e}")))
    }
}

/// Gemini's status rules and credentials: a Google error's status and reason decide the error
/// ([`Failure`]); the key or a Vertex AI token goes on every request.
impl Adapter for GeminiProvider {
    fn refusal(&self, refusal: Refusal<'_>, model: Option<&str>) -> ProviderError {
        let status = refusal.status.as_u16();
        let header_delay = copilot_http::retry_after(refusal.headers, refusal.received);
        let error = wire::parse_error_body(refusal.body);
        let mut message = match &error {
            Some(error) => error.describe(),
            None => wire::fallback_message(refusal.body, self.upstream.secret()),
        };
        if message.is_empty() {
            message = refusal.reason().to_owned();
        }
        let mut message = self.upstream.redact(&message);
        if let Auth::Vertex { project, .. } = &self.auth {
            match status {
                401 => message.push_str(" (Vertex AI refused a freshly fetched access token too)"),
                403 => message.push_str(&format!(
                    " (the service account needs the role roles/aiplatform.user on project {project}, and the Vertex AI API must be enabled there)"
                )),
                _ => {}
            }
        }
        tracing::debug!(status, %message, base_url = %self.upstream.base_url(), "Gemini refused the request");
        let failure = Failure {
            status,
            message,
            retry_after: header_delay.max(error.as_ref().and_then(wire::ErrorStatus::retry_delay)),
            key_invalid: error.as_ref().and_then(wire::ErrorStatus::reason) == Some("API_KEY_INVALID"),
            google_error: error.is_some(),
        };
        failure.into_error(model)
    }

    /// With the credentials. On Vertex, a 401 gets one new access token and one retry.
    async fn transmit(
        &self,
        upstream: &Upstream,
        request: RequestBuilder,
        reading: Reading,
    ) -> Result<Response, ProviderError> {
        match &self.auth {
            Auth::None => upstream.transmit(request, reading).await,
            Auth::ApiKey(key) => upstream.transmit(request.header(API_KEY_HEADER, key.clone()), reading).await,
            Auth::Vertex { tokens, user_project, .. } => {
                let request = match user_project {
                    Some(project) => request.header(USER_PROJECT_HEADER, project.clone()),
                    None => request,
                };
                let token = tokens.get().await?;
                let retry = request.try_clone();
                let response = upstream.transmit(request.header(AUTHORIZATION, token.header.clone()), reading).await?;
                match retry {
                    Some(retry) if response.status() == StatusCode::UNAUTHORIZED => {
                        tracing::debug!(base_url = %upstream.base_url(), "Vertex AI refused the access token; fetching a new one");
                        drop(response);
                        let token = tokens.replace(&token).await?;
                        upstream.transmit(retry.header(AUTHORIZATION, token.header.clone()), reading).await
                    }
                    _ => Ok(response),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for GeminiProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        if request.options.stop.len() > wire::MAX_STOP_SEQUENCES {
            return Err(ProviderError::InvalidRequest(format!(
                "Gemini accepts at most {} stop sequences; the request has {}",
                wire::MAX_STOP_SEQUENCES,
                request.options.stop.len()
            )));
        }
        let url = self.model_url(&request.model, ":streamGenerateContent?alt=sse")?;
        // The body is serialised into the request here and not kept across the wait for the answer.
        let post = {
            let body = wire::GenerateBody::new(&request, &self.safety_settings)?;
            copilot_http::with_trace_context(self.upstream.post(url), &request).json(&body)
        };
        let mut response = match self.upstream.send(self, post, Some(&request.model), Reading::of(&request)).await {
            Ok(response) => response,
            // An embedding model asked to chat gets the same 404 as an unknown model.
            Err(ProviderError::ModelNotFound { model }) => {
                return Err(self.not_found_or_cannot(&model, Feature::Completion).await);
            }
            Err(err) => return Err(wire::model_cannot(err, &request)),
        };

        // Without `alt=sse` (a proxy that drops the query, say) Gemini streams a JSON array that an
        // SSE reader would silently find empty; say so instead.
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !content_type.is_empty() && !content_type.starts_with("text/event-stream") {
            let content_type = content_type.to_owned();
            let body = copilot_http::read_capped(&mut response, 512).await;
            let excerpt = copilot_http::excerpt(&body, 200, self.upstream.secret());
            return Err(ProviderError::Protocol(self.upstream.redact(&format!(
                "{} answered with {content_type} instead of an event stream: {excerpt}",
                self.upstream.name()
            ))));
        }
        let base_url = self.upstream.base_url();
        tracing::debug!(model = %request.model, %base_url, "Gemini accepted the chat request");
        let decoder = StreamDecoder::new(base_url.clone(), self.upstream.secret().cloned());
        let options = StreamOptions { whole_body: false, finish_grace: Some(FinishGrace::Total(FINISH_GRACE)) };
        Ok(self.upstream.chat_stream(response, decoder, options))
    }

    /// Tools, JSON and JSON Schema output, reasoning (on, off, effort or budget) and images as
    /// data. Not images by URL: Gemini's `fileData` takes only files it stores itself (the Files
    /// API, or `gs://` on Vertex AI), never an `https://` URL it would fetch. Embeddings, with
    /// `outputDimensionality`, on both APIs.
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
            Feature::CountTokens,
        ])
    }

    /// `:countTokens` with the request mapped as for chat (see the module docs); Gemini's count
    /// is its tokenizer's, so exact.
    async fn count_tokens(&self, request: ChatRequest) -> Result<TokenCount, ProviderError> {
        let url = self.model_url(&request.model, ":countTokens")?;
        let post = copilot_http::with_trace_context(self.upstream.post(url), &request);
        // Vertex AI takes the request's fields flat; the Gemini API wants them wrapped, with the model.
        let post = if self.is_vertex() {
            post.json(&wire::GenerateBody::new(&request, &[])?)
        } else {
            post.json(&wire::CountTokensBody::new(&request)?)
        };
        let model = Some(request.model.as_str());
        let parsed: wire::CountTokensResponse = match self
            .upstream
            .fetch_json_within(self, post, model, "token count", wire::MAX_COUNT_RESPONSE_BYTES)
            .await
        {
            Ok(parsed) => parsed,
            // Gemini's 404 is alike for an unknown model and one without countTokens.
            Err(ProviderError::ModelNotFound { model }) if !self.is_vertex() => {
                return Err(self.not_found_or_cannot(&model, Feature::CountTokens).await);
            }
            Err(err) => return Err(wire::model_cannot(err, &request)),
        };
        Ok(TokenCount { input_tokens: parsed.total()?, exact: true, model: String::new() })
    }

    /// `batchEmbedContents`, [`wire::MAX_EMBED_BATCH`] inputs at a time, the pieces one after
    /// another (on Vertex AI, `:predict`; see the module docs).
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        if self.is_vertex() {
            return self.vertex_embed(request).await;
        }
        if !request.truncate {
            wire::check_input_lengths(&request)?;
        }
        let url = self.model_url(&request.model, ":batchEmbedContents")?;
        let resource = wire::embed_model_resource(&request.model);
        let mut vectors = Vec::with_capacity(request.inputs.len());
        for piece in request.inputs.chunks(wire::MAX_EMBED_BATCH) {
            let body = wire::BatchEmbedBody::new(&resource, piece, request.task, request.dimensions);
            let post = copilot_http::with_headers(self.upstream.post(url.clone()), &request.trace_context).json(&body);
            let parsed: wire::BatchEmbedResponse = match self
                .upstream
                .fetch_json_within(self, post, Some(&request.model), "embeddings", MAX_EMBED_RESPONSE_BYTES)
                .await
            {
                Ok(parsed) => parsed,
                Err(ProviderError::ModelNotFound { model }) => {
                    return Err(self.not_found_or_cannot(&model, Feature::Embeddings).await);
                }
                Err(err) => return Err(err),
            };
            let got = parsed.into_vectors();
            // Checked per piece: a short piece and a long one would add up and shift the rest.
            if got.len() != piece.len() {
                return Err(ProviderError::Protocol(format!(
                    "Gemini returned {} embeddings for a batch of {} inputs",
                    got.len(),
                    piece.len()
                )));
            }
            vectors.extend(got);
        }
        Ok(Embeddings { vectors, model: String::new(), input_tokens: None })
    }

    /// Every model that supports `generateContent` or `embedContent` (image-only models are
    /// left out), following `nextPageToken` for at most [`MAX_LIST_PAGES`] pages.
    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        if let Auth::Vertex { models, .. } = &self.auth {
            return Ok(models
                .iter()
                .map(|m| wire::vertex_model_info(m.strip_prefix("models/").unwrap_or(m)))
                .collect());
        }
        let mut models = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut url = self.models_url.clone();
            url.query_pairs_mut().append_pair("pageSize", LIST_PAGE_SIZE);
            if let Some(token) = &page_token {
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let page: wire::ListModelsResponse =
                self.upstream.fetch_json(self, self.upstream.get(url), None, "model list").await?;
            models.extend(
                page.models
                    .into_iter()
                    .flatten()
                    .filter(|m| m.supports_generate_content() || m.supports_embed_content())
                    .map(wire::Model::into_info),
            );
            match page.next_page_token.filter(|t| !t.is_empty()) {
                // A server repeating a token would page forever.
                Some(token) if page_token.as_ref() != Some(&token) => page_token = Some(token),
                _ => return Ok(models),
            }
        }
        tracing::warn!(base_url = %self.upstream.base_url(), pages = MAX_LIST_PAGES, "Gemini's model list has more pages; listing only the first ones");
        Ok(models)
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        let url = self.url_under(&self.describe_root, model, "")?;
        if self.is_vertex() {
            let found: wire::PublisherModel =
                self.upstream.fetch_json(self, self.upstream.get(url), Some(model), "model description").await?;
            return Ok(found.into_info());
        }
        let found: wire::Model =
            self.upstream.fetch_json(self, self.upstream.get(url), Some(model), "model description").await?;
        Ok(found.into_info())
    }

    /// One model listed: the cheapest call that proves the key works. On Vertex, a valid access
    /// token (cached, so usually no request at all): it proves the credentials.
    async fn health(&self) -> Result<HealthReport, ProviderError> {
        if let Auth::Vertex { tokens, .. } = &self.auth {
            tokens.get().await?;
            return Ok(HealthReport { version: None });
        }
        let mut url = self.models_url.clone();
        url.query_pairs_mut().append_pair("pageSize", "1");
        let _: wire::ListModelsResponse =
            self.upstream.fetch_json(self, self.upstream.get(url), None, "model list").await?;
        Ok(HealthReport { version: None })
    }
}

/// The resource path of a model: a bare id (`gemini-2.5-flash`) gets `models/`; `models/…` and
/// (not on Vertex) `tunedModels/…` names are kept. The id is percent-encoded, so it cannot add
/// path segments or a `:method` of its own.
fn model_path(model: &str, vertex: bool) -> String {
    let (collection, id) = match model.split_once('/') {
        Some((collection @ "models", id)) => (collection, id),
        Some((collection @ "tunedModels", id)) if !vertex => (collection, id),
        _ => ("models", model),
    };
    let mut path = String::with_capacity(collection.len() + 1 + id.len());
    path.push_str(collection);
    path.push('/');
    // `.` and `..` would be resolved away as dot segments.
    let dots_only = id.bytes().all(|b| b == b'.');
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') || (byte == b'.' && !dots_only) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// What a base URL may be: an http(s) URL without a query, a fragment or credentials.
const BASE_URL_RULES: BaseUrlRules = BaseUrlRules {
    example: DEFAULT_BASE_URL,
    drop_suffix: None,
    query_hint: " (the key goes in `api_key`)",
    no_credentials: Some("a base URL cannot carry credentials"),
};

/// Whether a base URL is unset or the Gemini API's own, which on Vertex means "the location's".
fn is_default_base_url(base_url: &str) -> bool {
    let trimmed = base_url.trim().trim_end_matches('/');
    trimmed.is_empty() || trimmed == DEFAULT_BASE_URL
}

/// A project or location, trimmed, once every byte passes `allowed` (they go into the URL path).
fn check_vertex_field(
    field: &'static str,
    value: &str,
    allowed: impl Fn(u8) -> bool,
) -> Result<String, GeminiConfigError> {
    let trimmed = value.trim();
    let invalid = |reason| GeminiConfigError::InvalidVertex { field, value: value.to_owned(), reason };
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.len() > 100 || !trimmed.bytes().all(allowed) {
        return Err(invalid("it is not a Google Cloud project id or location"));
    }
    Ok(trimmed.to_owned())
}

/// The API key as a header value, once it is known to be one.
fn api_key_header(key: &Secret) -> Result<HeaderValue, GeminiConfigError> {
    if key.expose().trim().is_empty() {
        return Err(GeminiConfigError::InvalidApiKey("it is empty"));
    }
    copilot_http::secret_header(key.expose().trim())
        .ok_or(GeminiConfigError::InvalidApiKey("it holds characters that cannot be sent in an HTTP header"))
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// How long, after the chunk carrying `finishReason`, to wait for the end of the body (which
/// Google sends right after it). A chunk arriving meanwhile still counts (its usage included);
/// a body still open after this is dropped and the stream ends anyway.
const FINISH_GRACE: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Errors

/// What a non-2xx response said, before it is classified.
#[derive(Debug)]
struct Failure {
    status: u16,
    /// Already redacted.
    message: String,
    /// The longer of `Retry-After` and `RetryInfo.retryDelay`.
    retry_after: Option<Duration>,
    /// `ErrorInfo.reason` was `API_KEY_INVALID`.
    key_invalid: bool,
    /// The body was a Google error (as opposed to an HTML page or a proxy's text).
    google_error: bool,
}

impl Failure {
    fn into_error(self, model: Option<&str>) -> ProviderError {
        let Failure { status, message, retry_after, key_invalid, google_error } = self;
        match (status, model) {
            // Gemini answers a bad key with 400 INVALID_ARGUMENT; only the reason tells it apart.
            (400, _) if key_invalid => ProviderError::Unauthorized(message),
            (400 | 422, _) => ProviderError::InvalidRequest(message),
            (401 | 403, _) => ProviderError::Unauthorized(message),
            // A 404 that is not a Google error (an HTML page) means a wrong base URL, not a model.
            (404, Some(model)) if google_error => ProviderError::ModelNotFound { model: model.to_owned() },
            (429, _) => ProviderError::RateLimited { message, retry_after },
            (503, _) => ProviderError::Overloaded { message, retry_after },
            (status, _) => ProviderError::Upstream { status, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, key_invalid: bool, google_error: bool) -> Failure {
        Failure { status, message: "msg".into(), retry_after: None, key_invalid, google_error }
    }

    #[test]
    fn statuses_map_to_provider_errors() {
        let map = |status, model| failure(status, false, true).into_error(model);
        assert_eq!(map(400, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(422, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(failure(400, true, true).into_error(None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(401, Some("m")), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(403, None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(404, Some("gemini-x")), ProviderError::ModelNotFound { model: "gemini-x".into() });
        assert_eq!(map(404, None), ProviderError::Upstream { status: 404, message: "msg".into() });
        assert_eq!(
            failure(404, false, false).into_error(Some("m")),
            ProviderError::Upstream { status: 404, message: "msg".into() }
        );
        assert_eq!(map(429, None), ProviderError::RateLimited { message: "msg".into(), retry_after: None });
        assert_eq!(map(503, None), ProviderError::Overloaded { message: "msg".into(), retry_after: None });
        assert_eq!(map(500, Some("m")), ProviderError::Upstream { status: 500, message: "msg".into() });
        assert_eq!(map(504, Some("m")), ProviderError::Upstream { status: 504, message: "msg".into() });
    }

    #[test]
    fn retry_after_is_carried_on_429_and_503() {
        let wait = Some(Duration::from_secs(7));
        for status in [429, 503] {
            let f = Failure { retry_after: wait, ..failure(status, false, true) };
            assert_eq!(f.into_error(None).retry_after(), wait);
        }
    }

    #[test]
    fn model_paths_are_escaped() {
        assert_eq!(model_path("gemini-2.5-flash", false), "models/gemini-2.5-flash");
        assert_eq!(model_path("models/gemini-2.5-flash", false), "models/gemini-2.5-flash");
        assert_eq!(model_path("tunedModels/my-model-1", false), "tunedModels/my-model-1");
        assert_eq!(model_path("a:b/c d", false), "models/a%3Ab%2Fc%20d");
        assert_eq!(model_path("..", false), "models/%2E%2E");
        assert_eq!(model_path("x?key=1#f", false), "models/x%3Fkey%3D1%23f");
        assert_eq!(model_path("gemini-2.0-flash", true), "models/gemini-2.0-flash");
        assert_eq!(model_path("models/gemini-2.0-flash", true), "models/gemini-2.0-flash");
        assert_eq!(model_path("tunedModels/x", true), "models/tunedModels%2Fx");
    }

    fn config(base_url: &str) -> GeminiConfig {
        GeminiConfig {
            base_url: base_url.into(),
            auth: GeminiAuth::ApiKey(Secret::new("AIzaSyTest-key-123")),
            ..Default::default()
        }
    }

    #[test]
    fn base_url_is_validated_and_normalized() {
        let provider = GeminiProvider::new(config("http://localhost:8080/")).unwrap();
        assert_eq!(provider.base_url(), "http://localhost:8080");
        assert_eq!(provider.models_url.as_str(), "http://localhost:8080/v1beta/models");
        assert_eq!(
            provider.model_url("gemini-2.0-flash", ":streamGenerateContent?alt=sse").unwrap().as_str(),
            "http://localhost:8080/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        let provider = GeminiProvider::new(GeminiConfig::default()).unwrap();
        assert_eq!(provider.models_url.as_str(), "https://generativelanguage.googleapis.com/v1beta/models");
        let provider = GeminiProvider::new(config("https://proxy.example/gemini")).unwrap();
        assert_eq!(provider.model_url("m", "").unwrap().as_str(), "https://proxy.example/gemini/v1beta/models/m");

        for bad in ["localhost:8080", "ftp://host", "not a url", "", "http://host/?key=1", "https://u:p@host"] {
            let err = GeminiProvider::new(config(bad)).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    fn vertex(base_url: &str, project: &str, location: &str) -> Result<GeminiProvider, GeminiConfigError> {
        GeminiProvider::new(GeminiConfig {
            base_url: base_url.into(),
            auth: GeminiAuth::Vertex(VertexConfig {
                project: project.into(),
                location: location.into(),
                credentials: GoogleCredentials::MetadataServer { host: "127.0.0.1:1".into() },
                models: vec!["gemini-2.0-flash".into()],
            }),
            ..Default::default()
        })
    }

    #[test]
    fn vertex_urls_follow_the_location_unless_a_base_url_is_given() {
        let provider = vertex(DEFAULT_BASE_URL, "my-project", "us-central1").unwrap();
        assert_eq!(provider.base_url(), "https://us-central1-aiplatform.googleapis.com");
        assert_eq!(
            provider.model_url("gemini-2.0-flash", ":streamGenerateContent?alt=sse").unwrap().as_str(),
            "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            provider.url_under(&provider.describe_root, "models/gemini-2.0-flash", "").unwrap().as_str(),
            "https://us-central1-aiplatform.googleapis.com/v1beta1/publishers/google/models/gemini-2.0-flash"
        );
        assert_eq!(vertex("", "p-1", "global").unwrap().base_url(), "https://aiplatform.googleapis.com");
        assert_eq!(vertex("", "p-1", "eu").unwrap().base_url(), "https://aiplatform.eu.rep.googleapis.com");
        let explicit = vertex("http://127.0.0.1:9/", "p-1", "europe-west4").unwrap();
        assert_eq!(
            explicit.model_url("m", ":generateContent").unwrap().as_str(),
            "http://127.0.0.1:9/v1beta1/projects/p-1/locations/europe-west4/publishers/google/models/m:generateContent"
        );

        for (project, location, field) in [
            ("", "global", "project"),
            ("a/b", "global", "project"),
            ("p", "US Central", "location"),
            ("p", "", "location"),
        ] {
            let err = vertex("", project, location).unwrap_err();
            assert!(
                matches!(&err, GeminiConfigError::InvalidVertex { field: f, .. } if *f == field),
                "{project:?} {location:?}: {err}"
            );
        }
        let debug = format!("{:?}", vertex("", "my-project", "global").unwrap());
        assert!(debug.contains("my-project") && debug.contains("127.0.0.1:1"), "{debug}");
    }

    #[test]
    fn embeddings_are_declared_on_both_apis() {
        for provider in
            [GeminiProvider::new(config("http://localhost:1")).unwrap(), vertex("", "p-1", "global").unwrap()]
        {
            assert!(provider.features().contains(Feature::Embeddings));
            assert!(provider.features().contains(Feature::EmbeddingDimensions));
        }
    }

    #[test]
    fn api_keys_are_checked_without_being_shown() {
        for bad in ["", "  ", "bad\nkey-9876"] {
            let config = GeminiConfig { auth: GeminiAuth::ApiKey(Secret::new(bad)), ..Default::default() };
            let err = GeminiProvider::new(config).unwrap_err();
            assert!(matches!(err, GeminiConfigError::InvalidApiKey(_)), "{err}");
            assert!(!err.to_string().contains("9876"), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = config("http://localhost:1");
        assert!(!format!("{config:?}").contains("AIzaSyTest"), "{config:?}");
        let provider = GeminiProvider::new(config).unwrap();
        let debug = format!("{provider:?}");
        assert!(!debug.contains("AIzaSyTest"), "{debug}");
        assert!(debug.contains("http://localhost:1"), "{debug}");
    }
}
