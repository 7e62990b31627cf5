//! The Copilot provider adapter for OpenAI-compatible chat APIs: hosted OpenAI and the many
//! servers that copy it — vLLM, llama.cpp's `llama-server`, LM Studio, Ollama's `/v1`, and hosted
//! OpenAI-style services.
//!
//! [`OpenAiProvider`] turns a [`ChatRequest`] into one streamed `POST {base_url}/chat/completions`
//! and the server-sent events that come back into [`ChatEvent`]s; models come from
//! `GET {base_url}/models`. `base_url` includes the API version path (`http://localhost:8000/v1`).
//!
//! One adapter serves servers that each bend the protocol a little, so the stream decoder is
//! lenient where they differ and strict only where the answer would otherwise be wrong:
//! - usage may come in its own `choices: []` chunk (OpenAI), on the chunk with the
//!   `finish_reason` (llama.cpp), on every chunk (vLLM's continuous usage), or not at all (zeros);
//! - the stream may end with `data: [DONE]` or, after a `finish_reason`, without it;
//! - a mid-stream failure may be a `data: {"error":...}` event or a bare `error: ...` line
//!   (older llama.cpp), and fails the stream with [`ProviderError::MidStream`];
//! - only a stream that ends with neither a `finish_reason` nor `[DONE]` is
//!   [`ProviderError::Interrupted`];
//! - `role`-only deltas, SSE comments and unknown fields are skipped.
//!
//! # Beyond text: what maps to what
//! | Copilot | request | answer |
//! |---|---|---|
//! | [`Tool`](copilot_provider::Tool) | `tools[{type:"function",function:{name,description,parameters,strict}}]`, the schema as the client wrote it | — |
//! | [`ToolChoice`](copilot_provider::ToolChoice) | `tool_choice`: `"auto"`, `"none"`, `"required"`, `{type:"function",function:{name}}` | — |
//! | a call in an assistant message | `tool_calls[{id,type:"function",function:{name,arguments}}]`, `content: null` when it says nothing else | `delta.tool_calls[{index,id?,function:{name?,arguments?}}]`, or a whole reply's `message.tool_calls` |
//! | a `ROLE_TOOL` result | `{role:"tool",tool_call_id,content}`, one per call | — |
//! | [`ResponseFormat`](copilot_provider::ResponseFormat) | `response_format`: `{type:"json_object"}` or `{type:"json_schema",json_schema:{name,schema,strict}}` | the text |
//! | reasoning on | `reasoning_effort` `low`/`medium`/`high` (a budget becomes the nearest level) | `delta.reasoning_content` (llama.cpp, DeepSeek, LM Studio) or `delta.reasoning` (vLLM, Ollama), passed on only with `include_thoughts` |
//! | reasoning off | as configured ([`ThinkingOff`]): `reasoning_effort:"none"` or `chat_template_kwargs.enable_thinking:false`; otherwise refused | — |
//! | thinking in history | `reasoning_content` on the assistant message (DeepSeek and Kimi require it on tool-call turns); signatures and redacted blocks (other providers') are not sent | — |
//! | an image | a content part `{type:"image_url",image_url:{url}}`: bytes as a `data:<mime>;base64,` URL, or the client's `http(s)` URL; content is an array of parts only when a message has an image | — |
//! | finish | — | `tool_calls` / `function_call` → [`FinishReason::ToolCalls`](copilot_provider::FinishReason) |
//! | usage | — | `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens` (both already in the totals) |
//!
//! Tool calls are numbered as they begin: the upstream's `index` says which call a piece
//! continues, but a new `id` under a known index begins another call (servers that number every
//! call 0), and pieces without an index continue the latest call. Argument text is passed on as
//! it came, never parsed, so it survives byte for byte; ids are passed on as the server made
//! them (the server core makes one up where a server gave none). A `refusal` is the model's
//! answer: it is passed on as text, and the answer then finishes as
//! [`FinishReason::ContentFilter`](copilot_provider::FinishReason), so a client that asked for
//! JSON knows why it got prose. A refusal that says the *model* cannot (Ollama's "does not
//! support tools", vLLM without `--enable-auto-tool-choice`, llama.cpp without `--jinja` or an
//! `mmproj`, OpenAI's "not supported with this model") is
//! [`ProviderError::Unsupported`](copilot_provider::ProviderError) for the feature it names.
//!
//! # Embeddings
//! [`Provider::embed`] posts `{model, input: [..], dimensions?, encoding_format}` to
//! `{base_url}/embeddings`, at most [`with_embed_batch`](OpenAiProvider::with_embed_batch) inputs
//! (OpenAI's 2,048 by default) per request, the requests one after another and their vectors
//! reassembled in input order (any failure fails the call).
//! | Copilot | request | answer |
//! |---|---|---|
//! | vectors | `encoding_format: "base64"` (little-endian f32, a quarter of the bytes; what the Python SDK asks for); after one refusal that names `encoding_format`/`base64`, `"float"` from then on | `data[].embedding`, numbers or base64 whichever came (older llama.cpp ignores the field), placed by `data[].index`: a missing, repeated or out-of-range index is [`ProviderError::Protocol`] |
//! | `dimensions` | `dimensions` ([`Feature::EmbeddingDimensions`]) | OpenAI's "does not support specifying dimensions" (ada-002) and vLLM's "does not support matryoshka representation" are [`ProviderError::Unsupported`]; so is a vector of another length (llama.cpp ignores the field) |
//! | `truncate` | vLLM's `truncate_prompt_tokens: -1` (cut to the model's context) | hosted OpenAI's "Unrecognized request argument" becomes a refusal that says the server cannot cut; Ollama's `/v1` cuts whatever is asked (use the Ollama adapter to be refused instead), llama.cpp refuses long inputs either way |
//! | over-long input, no `truncate` | — | the upstream's 400 ("This model's maximum context length is 8192 tokens, however you requested …"), [`ProviderError::InvalidRequest`] with its words (llama.cpp: a 500, "input is too large to process") |
//! | a model that cannot embed | — | [`ProviderError::Unsupported`] for [`Feature::Embeddings`]: OpenAI's 403 "You are not allowed to generate embeddings from this model", vLLM's "The model does not support Embeddings API", llama.cpp's (and Ollama's runner's) 501 "This server does not support embeddings", llama.cpp's "Pooling type 'none' is not OAI compatible", Azure's "The embeddings operation does not work with the specified model" |
//! | `task` | not sent: these models take no task | — |
//! | usage | — | `usage.prompt_tokens`, summed over the requests (none if any lacks it) |
//!
//! Vectors are passed on as they came (the server checks and normalises them). Each response is
//! read up to 1 MiB plus 384 KiB per input (16,384 components as JSON text), like Ollama's. Listings do not say which models embed, except that
//! OpenAI's own `text-embedding-3-small`/`-large`/`ada-002` are marked (`embedding`, with their
//! lengths). A chat request for an embedding model gets OpenAI's 404 "This is not a chat model",
//! reported as the model lacking [`Feature::Completion`] (`FEATURE_UNSUPPORTED`), not as an
//! unknown model.

mod chunk_scan;
mod stream;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use copilot_http::{Adapter, BaseUrlRules, FinishGrace, Reading, Refusal, StreamOptions, Upstream};
use copilot_provider::{
    ChatRequest, ChatStream, EmbedRequest, Embeddings, Feature, Features, HealthReport, ModelInfo, Part, Provider,
    ProviderError, Reasoning, Secret, TokenCount,
};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};

#[doc(hidden)]
pub use crate::stream::{MAX_TOOL_CALLS, StreamDecoder};
use crate::wire::{BodySettings, ErrorDetails};

/// The default base URL: hosted OpenAI.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Which request field carries the output token limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_tokens`: what vLLM, llama.cpp, LM Studio and Ollama understand (Ollama ignores the
    /// other one), and what older OpenAI models accept.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: required by OpenAI's reasoning models (o-series, gpt-5), which
    /// reject `max_tokens`.
    MaxCompletionTokens,
}

/// How a server is told not to think, for models that think by default. No one field does it
/// everywhere, so [`Feature::ThinkingOff`] is declared only when one is chosen
/// ([`OpenAiProvider::with_thinking_off`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ThinkingOff {
    /// The server cannot be told: requests that turn thinking off are refused before they are
    /// sent.
    #[default]
    Unsupported,
    /// `reasoning_effort: "none"`: OpenAI's gpt-5.1 and later, and servers that follow it.
    ReasoningEffortNone,
    /// `chat_template_kwargs: {"enable_thinking": false}`: vLLM, SGLang and llama.cpp serving
    /// Qwen3-style templates.
    EnableThinkingFalse,
}

/// How to reach one OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The API root including its version path, e.g. `http://localhost:8000/v1` (vLLM),
    /// `http://localhost:8080/v1` (llama.cpp), `http://localhost:1234/v1` (LM Studio),
    /// `http://localhost:11434/v1` (Ollama). A trailing slash is tolerated.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set; local servers usually need none.
    pub api_key: Option<Secret>,
    /// Sent as `OpenAI-Organization` when set.
    pub organization: Option<String>,
    /// TCP connect timeout for the HTTP client.
    pub connect_timeout: Duration,
    pub max_tokens_field: MaxTokensField,
    /// Asks for the token usage chunk (`stream_options.include_usage`). Turn it off for servers
    /// that reject `stream_options`; usage is then reported only if the server sends it anyway.
    pub include_usage: bool,
    /// Sends `top_k` when a request sets it. Off by default: hosted OpenAI rejects the field;
    /// vLLM and llama.cpp accept it.
    pub send_top_k: bool,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            organization: None,
            connect_timeout: Duration::from_secs(10),
            max_tokens_field: MaxTokensField::default(),
            include_usage: true,
            send_top_k: false,
        }
    }
}

/// Why an [`OpenAiConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiConfigError {
    #[error("invalid OpenAI-compatible base_url {value:?}: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    #[error("invalid {what}: it must be visible ASCII without line breaks")]
    InvalidHeader { what: &'static str },
    #[error("cannot build the HTTP client for the OpenAI-compatible server: {0}")]
    HttpClient(String),
}

/// A [`Provider`] backed by one OpenAI-compatible server. Cheap to share: all requests go
/// through one HTTP client, so connections are pooled and reused.
#[derive(Debug)]
pub struct OpenAiProvider {
    /// Named by its base URL alone; masks the key in upstream text that might echo it.
    upstream: Upstream,
    chat_url: Url,
    models_url: Url,
    embeddings_url: Url,
    body: BodySettings,
    /// Inputs per embeddings request ([`OpenAiProvider::with_embed_batch`]).
    embed_batch: usize,
    /// Set once the server refused `encoding_format: "base64"`: floats are asked for from then on.
    embed_floats: AtomicBool,
    /// Whether the server fetches `http(s)` image URLs itself.
    image_urls: bool,
    /// How `CountTokens` counts, when it is on ([`OpenAiProvider::with_vllm_tokenize`],
    /// [`OpenAiProvider::with_llama_cpp_tokenize`]).
    counting: Option<Counting>,
}

/// The endpoints a server that can count tokens counts them with, at its root.
#[derive(Debug)]
enum Counting {
    /// vLLM's `/tokenize`, which takes the conversation itself.
    Vllm { tokenize: Url },
    /// llama.cpp's `/apply-template` (the conversation rendered by the model's chat template)
    /// then `/tokenize` of the rendered prompt.
    LlamaCpp { apply_template: Url, tokenize: Url },
}

impl OpenAiProvider {
    pub fn new(config: OpenAiConfig) -> Result<Self, OpenAiConfigError> {
        let invalid = |reason: String| OpenAiConfigError::InvalidBaseUrl { value: config.base_url.clone(), reason };
        let base_url = copilot_http::check_base_url(&config.base_url, &BASE_URL_RULES).map_err(invalid)?;

        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let value = copilot_http::secret_header(&format!("Bearer {}", key.expose()))
                .ok_or(OpenAiConfigError::InvalidHeader { what: "API key" })?;
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Some(organization) = config.organization.as_deref().filter(|o| !o.trim().is_empty()) {
            let value = HeaderValue::from_str(organization.trim())
                .map_err(|_| OpenAiConfigError::InvalidHeader { what: "organization" })?;
            headers.insert("openai-organization", value);
        }
        let user_agent = concat!("copilot-openai/", env!("CARGO_PKG_VERSION"));
        let client = copilot_http::adapter_client(user_agent, config.connect_timeout, headers, |builder| builder)
            .map_err(OpenAiConfigError::HttpClient)?;

        let upstream = Upstream::new(client, base_url, None, config.api_key);
        let endpoint = |path| upstream.endpoint(path).map_err(invalid);
        Ok(OpenAiProvider {
            chat_url: endpoint("/chat/completions")?,
            models_url: endpoint("/models")?,
            embeddings_url: endpoint("/embeddings")?,
            embed_batch: MAX_EMBED_BATCH,
            embed_floats: AtomicBool::new(false),
            body: BodySettings {
                max_tokens_field: config.max_tokens_field,
                include_usage: config.include_usage,
                send_top_k: config.send_top_k,
                thinking_off: ThinkingOff::Unsupported,
            },
            image_urls: true,
            counting: None,
            upstream,
        })
    }

    /// Counts tokens (`CountTokens`, exact) with vLLM's `POST /tokenize`, which vLLM serves at its
    /// root: a base URL's trailing `/v1` is dropped. Declares [`Feature::CountTokens`]; other
    /// OpenAI-compatible servers have no such endpoint, so it is opt-in.
    pub fn with_vllm_tokenize(mut self) -> Result<Self, OpenAiConfigError> {
        self.counting = Some(Counting::Vllm { tokenize: self.root_endpoint("tokenize")? });
        Ok(self)
    }

    /// Counts tokens (`CountTokens`, exact) as llama.cpp's server would for a chat call: the
    /// conversation rendered by `POST /apply-template`, then the prompt tokenized by `POST
    /// /tokenize` with the special tokens a chat call adds and parses. Both are at the server's
    /// root (a base URL's trailing `/v1` is dropped). Opt-in, as for vLLM.
    pub fn with_llama_cpp_tokenize(mut self) -> Result<Self, OpenAiConfigError> {
        self.counting = Some(Counting::LlamaCpp {
            apply_template: self.root_endpoint("apply-template")?,
            tokenize: self.root_endpoint("tokenize")?,
        });
        Ok(self)
    }

    /// `path` at the server's root: vLLM and llama.cpp serve their own endpoints there, beside
    /// the `/v1` of the OpenAI-compatible ones.
    fn root_endpoint(&self, path: &str) -> Result<Url, OpenAiConfigError> {
        let base_url = self.upstream.base_url();
        let root = base_url.trim_end_matches('/');
        let root = root.strip_suffix("/v1").unwrap_or(root);
        Url::parse(&format!("{root}/{path}")).map_err(|e| OpenAiConfigError::InvalidBaseUrl {
            value: base_url.to_string(),
            reason: format!("no /{path} URL can be made from it: {e}"),
        })
    }

    /// How to turn thinking off on this server; anything but [`ThinkingOff::Unsupported`]
    /// declares [`Feature::ThinkingOff`].
    pub fn with_thinking_off(mut self, thinking_off: ThinkingOff) -> Self {
        self.body.thinking_off = thinking_off;
        self
    }

    /// Whether the server fetches images given as `http(s)` URLs (OpenAI, vLLM and llama.cpp
    /// do, the default; Ollama's `/v1` does not). Without it, such requests are refused before
    /// they are sent; images given as bytes always go, as `data:` URLs.
    pub fn with_image_urls(mut self, fetches: bool) -> Self {
        self.image_urls = fetches;
        self
    }

    /// Inputs per embeddings request, at most OpenAI's 2,048 (the default); a larger call is
    /// split into requests of this many and reassembled in order. Lower it for a server with a
    /// smaller limit, or to hold fewer vectors in memory at a time.
    pub fn with_embed_batch(mut self, inputs: usize) -> Self {
        self.embed_batch = inputs.clamp(1, MAX_EMBED_BATCH);
        self
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
    }
}

/// The OpenAI-compatible status rules: the message from whichever error shape the server uses,
/// the wait from whichever header it sets.
impl Adapter for OpenAiProvider {
    fn refusal(&self, refusal: Refusal<'_>, model: Option<&str>) -> ProviderError {
        let (status, base_url) = (refusal.status, self.upstream.base_url());
        let retry_after = retry_after(refusal.headers, status, refusal.received);
        let secret = self.upstream.secret();
        // Some servers and proxies echo what they were sent in headers: masked like the body.
        let request_id = copilot_http::header_text(refusal.headers, "x-request-id", secret);
        let mut details = ErrorDetails::parse(refusal.body).quoted(secret);
        if details.message.is_empty() {
            details.message = refusal.reason().to_owned();
        }
        tracing::debug!(
            status = status.as_u16(),
            message = %details.message,
            code = details.code.as_deref(),
            request_id = request_id.as_deref(),
            %base_url,
            "the OpenAI-compatible server refused the request"
        );
        status_error(status, details, retry_after, model, base_url)
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        // The body is serialised into the request here and not kept across the wait for the answer.
        let post = {
            let body = wire::ChatBody::new(&request, self.body)?;
            copilot_http::with_trace_context(self.upstream.post(self.chat_url.clone()), &request)
                .header(header::ACCEPT, "text/event-stream")
                .json(&body)
        };
        let response = self
            .upstream
            .send(self, post, Some(&request.model), Reading::of(&request))
            .await
            .map_err(|err| model_cannot(err, request.needs()))?;
        let base_url = self.upstream.base_url();
        tracing::debug!(model = %request.model, %base_url, "the OpenAI-compatible server accepted the chat request");
        // A server that ignored `stream: true` answers with one `chat.completion` object.
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let whole_body = content_type.trim_start().to_ascii_lowercase().starts_with("application/json");
        let options = StreamOptions { whole_body, finish_grace: Some(FinishGrace::EachRead(FINISH_GRACE)) };
        let thoughts = matches!(request.reasoning, Some(Reasoning::On { include_thoughts: true, .. }));
        let decoder = StreamDecoder::new(base_url.clone(), self.upstream.secret().cloned()).with_thoughts(thoughts);
        Ok(self.upstream.chat_stream(response, decoder, options))
    }

    /// One request per [`with_embed_batch`](OpenAiProvider::with_embed_batch) inputs, one after
    /// another, the vectors reassembled in input order (see the module docs for the mapping).
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        let mut vectors = Vec::with_capacity(request.inputs.len());
        let mut model = String::new();
        let mut tokens = Some(0u64);
        for inputs in request.inputs.chunks(self.embed_batch) {
            let answer = self.embed_batch_of(&request, inputs).await?;
            if let Some(dimensions) = request.dimensions
                && let Some(other) = answer.vectors.iter().map(Vec::len).find(|&len| len != dimensions as usize)
            {
                return Err(ProviderError::Unsupported {
                    feature: Feature::EmbeddingDimensions,
                    message: format!(
                        "{} ignored dimensions: {dimensions} were asked for and a vector of {other} came back",
                        self.upstream.base_url()
                    ),
                });
            }
            vectors.extend(answer.vectors);
            if model.is_empty() {
                model = answer.model;
            }
            tokens = tokens.zip(answer.prompt_tokens).map(|(sum, more)| sum.saturating_add(more));
        }
        let base_url = self.upstream.base_url();
        tracing::debug!(model = %request.model, inputs = vectors.len(), %base_url, "the OpenAI-compatible server embedded");
        Ok(Embeddings { vectors, model, input_tokens: tokens.map(|t| u32::try_from(t).unwrap_or(u32::MAX)) })
    }

    /// Tools, both JSON formats, reasoning and images (as `data:` URLs) always; images by URL
    /// and turning thinking off as configured. Whether the *model* can is the server's to say
    /// (a refusal that says the model cannot is [`ProviderError::Unsupported`]).
    fn features(&self) -> Features {
        let mut features = Features::of(&[
            Feature::Tools,
            Feature::JsonObject,
            Feature::JsonSchema,
            Feature::Thinking,
            Feature::Images,
            Feature::Embeddings,
            Feature::EmbeddingDimensions,
        ]);
        if self.image_urls {
            features = features.with(Feature::ImageUrls);
        }
        if self.body.thinking_off != ThinkingOff::Unsupported {
            features = features.with(Feature::ThinkingOff);
        }
        if self.counting.is_some() {
            features = features.with(Feature::CountTokens);
        }
        features
    }

    fn lacking(&self, feature: Feature) -> Option<&'static str> {
        (feature == Feature::CountTokens).then_some(
            "OpenAI-compatible servers have no token-counting endpoint, except vLLM's and llama.cpp's own: set \
             count_tokens = \"vllm\" or \"llama_cpp\" on a provider that is such a server",
        )
    }

    async fn count_tokens(&self, request: ChatRequest) -> Result<TokenCount, ProviderError> {
        let input_tokens = match &self.counting {
            None => {
                return Err(ProviderError::Unsupported {
                    feature: Feature::CountTokens,
                    message: "this provider counts tokens only with vLLM's or llama.cpp's /tokenize (count_tokens = \
                              \"vllm\" or \"llama_cpp\")"
                        .into(),
                });
            }
            Some(Counting::Vllm { tokenize }) => {
                let body = wire::TokenizeBody::new(&request, self.body)?;
                let answer: wire::TokenizeAnswer = self.fetch_count(&request, tokenize, &body, "vllm").await?;
                answer.count
            }
            Some(Counting::LlamaCpp { apply_template, tokenize }) => {
                if request
                    .messages
                    .iter()
                    .any(|message| message.parts.iter().any(|part| matches!(part, Part::Image(_))))
                {
                    return Err(ProviderError::Unsupported {
                        feature: Feature::CountTokens,
                        message: "llama.cpp's /tokenize counts text: a conversation with images cannot be counted \
                                  there"
                            .into(),
                    });
                }
                let body = wire::ApplyTemplateBody::new(&request, self.body)?;
                let rendered: wire::AppliedTemplate =
                    self.fetch_count(&request, apply_template, &body, "llama_cpp").await?;
                let body = wire::LlamaTokenizeBody::for_chat(&rendered.prompt);
                let answer: wire::LlamaTokenizeAnswer =
                    self.fetch_count(&request, tokenize, &body, "llama_cpp").await?;
                answer.tokens.len() as u64
            }
        };
        Ok(TokenCount {
            input_tokens: u32::try_from(input_tokens).unwrap_or(u32::MAX),
            exact: true,
            model: String::new(),
        })
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let request = self.upstream.get(self.models_url.clone());
        let list: wire::ModelList = self.upstream.fetch_json(self, request, None, "model list").await?;
        Ok(list.into_models())
    }

    /// From the model listing: `GET /models/{id}` is not served by vLLM or llama.cpp, and the
    /// listing already holds all an OpenAI-style server says about a model.
    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        let models = self.list_models().await?;
        wire::find_model(models, model).ok_or_else(|| ProviderError::ModelNotFound { model: model.to_owned() })
    }

    /// `GET /models`: the one cheap endpoint every compatible server has, and one that checks
    /// the API key too.
    async fn health(&self) -> Result<HealthReport, ProviderError> {
        let response =
            self.upstream.send(self, self.upstream.get(self.models_url.clone()), None, Reading::Whole).await?;
        // The body is not needed; reading it lets the connection go back to the pool.
        let _ = response.bytes().await;
        Ok(HealthReport { version: None })
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// OpenAI's limit of inputs per embeddings request.
pub const MAX_EMBED_BATCH: usize = 2048;

/// The most of a token-count answer read: vLLM's and llama.cpp's `/tokenize` send every token id,
/// so the answer grows with the prompt (~8 bytes a token: a 1M-token prompt in 8 MiB), and
/// llama.cpp's `/apply-template` sends the whole rendered prompt back.
const MAX_TOKENIZE_RESPONSE_BYTES: usize = 8 << 20;

impl OpenAiProvider {
    /// One JSON exchange of a token count with `url`; a 404 means the server has no such endpoint
    /// (an unknown model is `ModelNotFound`), so counting is unsupported as configured
    /// (`count_tokens = "{setting}"`).
    async fn fetch_count<T: serde::de::DeserializeOwned>(
        &self,
        request: &ChatRequest,
        url: &Url,
        body: &impl serde::Serialize,
        setting: &str,
    ) -> Result<T, ProviderError> {
        let post = copilot_http::with_trace_context(self.upstream.post(url.clone()), request).json(body);
        self.upstream
            .fetch_json_within(self, post, Some(&request.model), "token count", MAX_TOKENIZE_RESPONSE_BYTES)
            .await
            .map_err(|err| match err {
                ProviderError::Upstream { status: 404, .. } => ProviderError::Unsupported {
                    feature: Feature::CountTokens,
                    message: format!(
                        "{url} answered 404: the server has no {} (count_tokens = \"{setting}\" expects one at its \
                         root); remove count_tokens from this provider's configuration or set the kind of server it is",
                        url.path()
                    ),
                },
                other => other,
            })
    }
}

/// The most an embeddings answer for `inputs` inputs may hold (as for Ollama's): 1 MiB, plus
/// room for a vector of 16,384 components written as JSON text (24 bytes each at most) per input.
/// Base64 takes under a quarter of that.
fn embed_answer_cap(inputs: usize) -> usize {
    (1usize << 20).saturating_add(inputs.saturating_mul(16_384 * 24))
}

impl OpenAiProvider {
    /// One request's worth of inputs: base64 asked for until the server refuses it, then floats.
    async fn embed_batch_of(
        &self,
        request: &EmbedRequest,
        inputs: &[String],
    ) -> Result<wire::EmbedAnswer, ProviderError> {
        let base64 = !self.embed_floats.load(Ordering::Relaxed);
        match self.post_embeddings(request, inputs, base64).await {
            Err(err) if base64 && refuses_base64(&err) => {
                tracing::debug!(base_url = %self.upstream.base_url(), %err, "the server refused base64 embeddings; asking for floats");
                self.embed_floats.store(true, Ordering::Relaxed);
                self.post_embeddings(request, inputs, false).await
            }
            other => other,
        }
    }

    async fn post_embeddings(
        &self,
        request: &EmbedRequest,
        inputs: &[String],
        base64: bool,
    ) -> Result<wire::EmbedAnswer, ProviderError> {
        let body = wire::EmbedBody {
            model: &request.model,
            input: inputs,
            dimensions: request.dimensions,
            encoding_format: if base64 { "base64" } else { "float" },
            truncate_prompt_tokens: request.truncate.then_some(-1),
        };
        let post = copilot_http::with_headers(self.upstream.post(self.embeddings_url.clone()), &request.trace_context)
            .json(&body);
        let parsed: wire::EmbedResponse = self
            .upstream
            .fetch_json_within(self, post, Some(&request.model), "embeddings", embed_answer_cap(inputs.len()))
            .await
            .map_err(|err| embed_refusal(err, request))?;
        parsed.into_answer(inputs.len()).map_err(|why| {
            ProviderError::Protocol(format!("unexpected embeddings from {}: {why}", self.upstream.base_url()))
        })
    }
}

/// Whether a refusal is about `encoding_format: "base64"` (a server that only writes floats).
fn refuses_base64(err: &ProviderError) -> bool {
    let ProviderError::InvalidRequest(message) = err else { return false };
    let lower = message.to_ascii_lowercase();
    lower.contains("encoding_format") || lower.contains("base64")
}

/// An embeddings refusal in the terms the request can act on: the model cannot embed
/// ([`Feature::Embeddings`]), cannot shorten ([`Feature::EmbeddingDimensions`]), or the server
/// cannot cut inputs; anything else unchanged.
fn embed_refusal(err: ProviderError, request: &EmbedRequest) -> ProviderError {
    let message = match &err {
        ProviderError::InvalidRequest(message)
        | ProviderError::Unauthorized(message)
        | ProviderError::Upstream { status: 500 | 501, message } => message,
        _ => return err,
    };
    let lower = message.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    // OpenAI (403): "You are not allowed to generate embeddings from this model"; vLLM: "The model
    // does not support Embeddings API"; llama.cpp and Ollama's runner: "This server does not
    // support embeddings. Start it with `--embeddings`"; llama.cpp with `--pooling none`:
    // "Pooling type 'none' is not OAI compatible"; Azure: "The embeddings operation does not work
    // with the specified model".
    if has("generate embeddings from this model")
        || has("does not support embeddings")
        || has("pooling type 'none' is not oai compatible")
        || has("embeddings operation does not work")
    {
        return ProviderError::Unsupported { feature: Feature::Embeddings, message: message.clone() };
    }
    // OpenAI's text-embedding-ada-002: "This model does not support specifying dimensions."; vLLM:
    // "Model \"x\" does not support matryoshka representation, ...".
    if request.dimensions.is_some() && (has("specifying dimensions") || has("matryoshka")) {
        return ProviderError::Unsupported { feature: Feature::EmbeddingDimensions, message: message.clone() };
    }
    // Hosted OpenAI: "Unrecognized request argument supplied: truncate_prompt_tokens".
    if request.truncate && matches!(err, ProviderError::InvalidRequest(_)) && has("truncate_prompt_tokens") {
        return ProviderError::InvalidRequest(format!(
            "this server cannot cut over-long inputs (it does not take vLLM's truncate_prompt_tokens): {message}"
        ));
    }
    err
}

/// What a base URL may be: an http(s) URL without a query, a fragment or credentials.
const BASE_URL_RULES: BaseUrlRules = BaseUrlRules {
    example: "http://localhost:8000/v1",
    drop_suffix: None,
    query_hint: "",
    no_credentials: Some("credentials go in api_key, not in the URL"),
};

// ---------------------------------------------------------------------------------------------
// Streaming

/// How long to wait after a `finish_reason` for the usage chunk and `[DONE]`. Servers send them
/// right away; the wait only bounds a server that leaves the stream open after finishing.
const FINISH_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Errors

fn status_error(
    status: StatusCode,
    details: ErrorDetails,
    retry_after: Option<Duration>,
    model: Option<&str>,
    base_url: &str,
) -> ProviderError {
    let not_found = |message: String| ProviderError::Upstream {
        status: 404,
        message: format!(
            "{message} (no such endpoint at {base_url}: base_url must include the API version path, e.g. http://localhost:8000/v1)"
        ),
    };
    // An embedding model asked to chat, in each server's words: OpenAI's 404 "This is not a chat
    // model…", vLLM's "The model does not support Chat Completions API", Ollama's `"m" does not
    // support chat`, llama.cpp's 501 "This server does not support completions". The model exists;
    // it cannot chat.
    let lower = details.message.to_ascii_lowercase();
    if matches!(status.as_u16(), 400 | 404 | 501)
        && ["not a chat model", "does not support chat", "does not support completions"]
            .iter()
            .any(|w| lower.contains(w))
    {
        return ProviderError::Unsupported { feature: Feature::Completion, message: details.message };
    }
    match status.as_u16() {
        400 | 413 | 422 if details.code.as_deref() == Some("model_not_found") => match model {
            Some(model) => ProviderError::ModelNotFound { model: model.to_owned() },
            None => ProviderError::InvalidRequest(details.message),
        },
        400 | 413 | 422 => ProviderError::InvalidRequest(details.message),
        401 | 403 => ProviderError::Unauthorized(details.message),
        404 => match model {
            Some(model) if details.is_model_not_found() => ProviderError::ModelNotFound { model: model.to_owned() },
            _ => not_found(details.message),
        },
        // Out of credit: waiting will not help, so no hint to wait.
        429 if details.is_insufficient_quota() => {
            ProviderError::RateLimited { message: details.message, retry_after: None }
        }
        429 => ProviderError::RateLimited { message: details.message, retry_after },
        503 => ProviderError::Overloaded { message: details.message, retry_after },
        status => ProviderError::Upstream { status, message: details.message },
    }
}

/// A refusal that says the *model* (or the server as started) cannot do something the request
/// needs, as [`ProviderError::Unsupported`]; anything else unchanged. Each server words it its own
/// way, so this reads the known wordings, and only for features the request does use.
fn model_cannot(err: ProviderError, needs: Features) -> ProviderError {
    let message = match &err {
        ProviderError::InvalidRequest(message) => message,
        ProviderError::Upstream { status: 500 | 501, message } => message,
        _ => return err,
    };
    let feature = match cannot_feature(message) {
        // An image given by URL that the server would not fetch.
        Some(Feature::Images) if !needs.contains(Feature::Images) => Some(Feature::ImageUrls),
        other => other,
    };
    match feature.filter(|feature| needs.contains(*feature)) {
        Some(feature) => ProviderError::Unsupported { feature, message: message.clone() },
        None => err,
    }
}

/// The feature an upstream's refusal says the model cannot serve, if it says one. Only words
/// about the model (or the server as started) count: a refusal of the client's own schema ("'allOf'
/// is not supported") stays a plain invalid request.
fn cannot_feature(message: &str) -> Option<Feature> {
    let lower = message.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    let about_the_model =
        ["with this model", "in this model", "by this model", "certain models"].iter().any(|words| has(words));
    // Ollama: "registry.ollama.ai/library/gemma:2b does not support tools"; vLLM without
    // --enable-auto-tool-choice; llama.cpp without --jinja; OpenAI: "tools is not supported in
    // this model".
    if has("does not support tools")
        || has("enable-auto-tool-choice")
        || has("requires --jinja")
        || (has("tools") && about_the_model)
    {
        return Some(Feature::Tools);
    }
    // Ollama: "\"qwen2.5\" does not support thinking"; OpenAI: "Unsupported parameter:
    // 'reasoning_effort' is not supported with this model."
    if has("does not support thinking")
        || (has("reasoning_effort") && (about_the_model || has("unrecognized request argument")))
    {
        return Some(Feature::Thinking);
    }
    // OpenAI: "image_url is only supported by certain models"; llama.cpp: "image input is not
    // supported - hint: ... you may need to provide the mmproj"; Ollama: "does not support image
    // input"; vLLM: "... is not a multimodal model".
    if has("image") && (about_the_model || has("mmproj") || has("does not support") || has("not a multimodal")) {
        return Some(Feature::Images);
    }
    if has("json_schema") && about_the_model {
        return Some(Feature::JsonSchema);
    }
    if has("json_object") && about_the_model {
        return Some(Feature::JsonObject);
    }
    None
}

/// The wait the server asks for: `retry-after-ms` (OpenAI), then `Retry-After`, then, on a 429,
/// the reset time of whichever `x-ratelimit-*` budget is used up.
fn retry_after(headers: &HeaderMap, status: StatusCode, now: SystemTime) -> Option<Duration> {
    if let Some(wait) = copilot_http::retry_after_ms(headers).or_else(|| copilot_http::retry_after(headers, now)) {
        return Some(wait);
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    ["requests", "tokens"]
        .into_iter()
        .filter(|budget| get(&format!("x-ratelimit-remaining-{budget}")) == Some("0"))
        .filter_map(|budget| get(&format!("x-ratelimit-reset-{budget}")).and_then(wire::parse_go_duration))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    fn details(body: &str) -> ErrorDetails {
        ErrorDetails::parse(body.as_bytes())
    }

    const OPENAI_ERROR: &str = r#"{"error":{"message":"msg","type":"invalid_request_error","param":null,"code":null}}"#;

    #[test]
    fn statuses_map_to_provider_errors() {
        let base = "http://h/v1";
        let map = |code, model| status_error(status(code), details(OPENAI_ERROR), None, model, base);
        assert_eq!(map(400, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(422, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(401, Some("m")), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(403, None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(404, Some("gpt-x")), ProviderError::ModelNotFound { model: "gpt-x".into() });
        assert_eq!(map(429, None), ProviderError::RateLimited { message: "msg".into(), retry_after: None });
        assert_eq!(map(503, None), ProviderError::Overloaded { message: "msg".into(), retry_after: None });
        assert_eq!(map(500, Some("m")), ProviderError::Upstream { status: 500, message: "msg".into() });
        assert_eq!(map(502, Some("m")), ProviderError::Upstream { status: 502, message: "msg".into() });

        // A 404 that is not about the model: the base URL lacks /v1, or names no API at all.
        for body in [
            r#"{"detail":"Not Found"}"#,
            "404 page not found",
            r#"{"error":{"message":"Invalid URL (POST /chat/completions)"}}"#,
        ] {
            let err = status_error(status(404), details(body), None, Some("m"), base);
            let ProviderError::Upstream { status: 404, message } = err else { panic!("{body}: {err:?}") };
            assert!(message.contains("http://h/v1") && message.contains("/v1"), "{message}");
        }
        let err = status_error(status(404), details(OPENAI_ERROR), None, None, base);
        assert!(matches!(err, ProviderError::Upstream { status: 404, .. }), "{err:?}");
        let coded = r#"{"error":{"message":"x","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(
            status_error(status(400), details(coded), None, Some("m"), base),
            ProviderError::ModelNotFound { model: "m".into() }
        );
    }

    #[test]
    fn insufficient_quota_is_rate_limited_without_a_wait() {
        let wait = Some(Duration::from_secs(7));
        let quota = details(
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        let err = status_error(status(429), quota, wait, None, "b");
        assert_eq!(
            err,
            ProviderError::RateLimited { message: "You exceeded your current quota".into(), retry_after: None }
        );
        let rate = details(r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#);
        assert_eq!(status_error(status(429), rate, wait, None, "b").retry_after(), wait);
        assert_eq!(status_error(status(503), details("{}"), wait, None, "b").retry_after(), wait);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn refusals_that_say_the_model_cannot_name_the_feature() {
        let all = Features::of(&Feature::ALL);
        let cannot = |message: &str| match model_cannot(ProviderError::InvalidRequest(message.into()), all) {
            ProviderError::Unsupported { feature, .. } => Some(feature),
            _ => None,
        };
        assert_eq!(cannot("registry.ollama.ai/library/gemma:2b does not support tools"), Some(Feature::Tools));
        assert_eq!(
            cannot("\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set"),
            Some(Feature::Tools)
        );
        assert_eq!(cannot("tools param requires --jinja flag"), Some(Feature::Tools));
        assert_eq!(
            cannot("Unsupported parameter: 'reasoning_effort' is not supported with this model."),
            Some(Feature::Thinking)
        );
        assert_eq!(
            cannot("Invalid content type. image_url is only supported by certain models."),
            Some(Feature::Images)
        );
        assert_eq!(
            cannot("Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."),
            Some(Feature::JsonSchema)
        );
        // The client's own schema or request at fault: a plain refusal.
        assert_eq!(cannot("Invalid schema for function 'f': In context=(), 'allOf' is not supported."), None);
        assert_eq!(cannot("Invalid 'tools[0].function.name': string does not match pattern."), None);
        // Only for what the request uses; an image by URL the server will not fetch is about URLs.
        let urls = Features::of(&[Feature::ImageUrls]);
        let err = ProviderError::InvalidRequest("image input is not supported - you may need the mmproj".into());
        assert!(matches!(
            model_cannot(err.clone(), urls),
            ProviderError::Unsupported { feature: Feature::ImageUrls, .. }
        ));
        assert_eq!(model_cannot(err.clone(), Features::NONE), err);
        let other = ProviderError::RateLimited { message: "does not support tools".into(), retry_after: None };
        assert_eq!(model_cannot(other.clone(), all), other);
    }

    #[test]
    fn retry_after_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let too_many = status(429);
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")]), too_many, now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "9")]), too_many, now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "9")]), status(503), now), Some(Duration::from_secs(9)));
        let limits = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "1000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        // Only the exhausted budget counts.
        assert_eq!(retry_after(&limits, too_many, now), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&limits, status(503), now), None);
        let both = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "2.5s"),
        ]);
        assert_eq!(retry_after(&both, too_many, now), Some(Duration::from_millis(2500)));
        assert_eq!(retry_after(&headers(&[("x-ratelimit-reset-requests", "1s")]), too_many, now), None);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "soon")]), too_many, now), None);
        // However far away the server says, the wait is capped.
        let cap = copilot_provider::MAX_RETRY_AFTER;
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1e30")]), too_many, now), Some(cap));
        assert_eq!(retry_after(&headers(&[("retry-after", "18446744073709551615")]), status(503), now), Some(cap));
        let far = headers(&[("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "99999999999h")]);
        assert_eq!(retry_after(&far, too_many, now), Some(cap));
    }

    fn config(base_url: &str) -> OpenAiConfig {
        OpenAiConfig { base_url: base_url.into(), ..Default::default() }
    }

    #[test]
    fn base_url_is_validated_and_normalized() {
        let provider = OpenAiProvider::new(config("http://localhost:8000/v1/")).unwrap();
        assert_eq!(provider.base_url(), "http://localhost:8000/v1");
        assert_eq!(provider.chat_url.as_str(), "http://localhost:8000/v1/chat/completions");
        assert_eq!(provider.models_url.as_str(), "http://localhost:8000/v1/models");
        let provider = OpenAiProvider::new(OpenAiConfig::default()).unwrap();
        assert_eq!(provider.chat_url.as_str(), "https://api.openai.com/v1/chat/completions");

        for bad in ["localhost:8000", "ftp://host/v1", "not a url", "", "http://host/v1?x=1", "http://user:pw@host/v1"]
        {
            let err = OpenAiProvider::new(config(bad)).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn vllm_tokenize_is_at_the_servers_root_and_declares_counting() {
        let plain = OpenAiProvider::new(config("http://localhost:8000/v1")).unwrap();
        assert!(!plain.features().contains(Feature::CountTokens));
        for (base, tokenize) in [
            ("http://localhost:8000/v1", "http://localhost:8000/tokenize"),
            ("http://localhost:8000/v1/", "http://localhost:8000/tokenize"),
            ("http://gpu-box/vllm/v1", "http://gpu-box/vllm/tokenize"),
            ("http://gpu-box:9000", "http://gpu-box:9000/tokenize"),
        ] {
            let provider = OpenAiProvider::new(config(base)).unwrap().with_vllm_tokenize().unwrap();
            let Some(Counting::Vllm { tokenize: url }) = &provider.counting else { panic!("{base}: not vLLM's") };
            assert_eq!(url.as_str(), tokenize, "{base}");
            assert!(provider.features().contains(Feature::CountTokens));
        }
    }

    #[test]
    fn llama_cpp_counting_endpoints_are_at_the_servers_root() {
        for (base, root) in [
            ("http://localhost:8080/v1", "http://localhost:8080"),
            ("http://box/llama/v1/", "http://box/llama"),
            ("http://box:9000", "http://box:9000"),
        ] {
            let provider = OpenAiProvider::new(config(base)).unwrap().with_llama_cpp_tokenize().unwrap();
            let Some(Counting::LlamaCpp { apply_template, tokenize }) = &provider.counting else {
                panic!("{base}: not llama.cpp's")
            };
            assert_eq!(apply_template.as_str(), format!("{root}/apply-template"), "{base}");
            assert_eq!(tokenize.as_str(), format!("{root}/tokenize"), "{base}");
            assert!(provider.features().contains(Feature::CountTokens));
        }
    }

    #[test]
    fn keys_and_organizations_must_be_header_safe() {
        let with_key = |key: &str| OpenAiConfig { api_key: Some(Secret::new(key)), ..config("http://h/v1") };
        assert!(OpenAiProvider::new(with_key("sk-abc")).is_ok());
        let err = OpenAiProvider::new(with_key("sk-abc\nX-Evil: 1")).unwrap_err();
        assert!(!err.to_string().contains("sk-abc"), "{err}");
        let org = OpenAiConfig { organization: Some("org\r\n".into()), ..config("http://h/v1") };
        // Surrounding whitespace is trimmed; what is left is fine.
        assert!(OpenAiProvider::new(org).is_ok());
        let org = OpenAiConfig { organization: Some("o\nrg".into()), ..config("http://h/v1") };
        assert!(OpenAiProvider::new(org).is_err());
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let provider = OpenAiProvider::new(OpenAiConfig {
            api_key: Some(Secret::new("sk-live-abcdef123456")),
            ..config("http://h/v1")
        })
        .unwrap();
        let debug = format!("{provider:?}");
        assert!(!debug.contains("sk-live-abcdef123456"), "{debug}");
    }

    #[test]
    fn embedding_refusals_name_what_cannot_be_done() {
        let plain = EmbedRequest::default();
        let shorten = EmbedRequest { dimensions: Some(256), ..Default::default() };
        let cut = EmbedRequest { truncate: true, ..Default::default() };
        let feature = |err: ProviderError, request: &EmbedRequest| match embed_refusal(err, request) {
            ProviderError::Unsupported { feature, .. } => Some(feature),
            _ => None,
        };
        for err in [
            ProviderError::Unauthorized("You are not allowed to generate embeddings from this model".into()),
            ProviderError::InvalidRequest("The model does not support Embeddings API".into()),
            ProviderError::Upstream {
                status: 501,
                message: "This server does not support embeddings. Start it with `--embeddings`".into(),
            },
            ProviderError::InvalidRequest(
                "Pooling type 'none' is not OAI compatible. Please use a different pooling type".into(),
            ),
            ProviderError::InvalidRequest(
                "The embeddings operation does not work with the specified model, gpt-35-turbo.".into(),
            ),
        ] {
            assert_eq!(feature(err.clone(), &plain), Some(Feature::Embeddings), "{err:?}");
        }
        let ada = ProviderError::InvalidRequest("This model does not support specifying dimensions.".into());
        assert_eq!(feature(ada.clone(), &shorten), Some(Feature::EmbeddingDimensions));
        assert_eq!(embed_refusal(ada.clone(), &plain), ada);
        let vllm = ProviderError::InvalidRequest(
            "Model \"BAAI/bge-m3\" does not support matryoshka representation, changing output dimensions will lead to poor results.".into(),
        );
        assert_eq!(feature(vllm, &shorten), Some(Feature::EmbeddingDimensions));
        let unknown =
            ProviderError::InvalidRequest("Unrecognized request argument supplied: truncate_prompt_tokens".into());
        let ProviderError::InvalidRequest(message) = embed_refusal(unknown, &cut) else { panic!() };
        assert!(message.starts_with("this server cannot cut over-long inputs"), "{message}");
        // A bad key stays a bad key; an over-long input stays the upstream's refusal.
        let key = ProviderError::Unauthorized("Incorrect API key provided".into());
        assert_eq!(embed_refusal(key.clone(), &plain), key);
        let long = ProviderError::InvalidRequest("This model's maximum context length is 8192 tokens".into());
        assert_eq!(embed_refusal(long.clone(), &cut), long);
        assert!(refuses_base64(&ProviderError::InvalidRequest("Invalid value for 'encoding_format'".into())));
        assert!(!refuses_base64(&ProviderError::Upstream { status: 500, message: "base64".into() }));
    }

    #[test]
    fn a_chat_request_for_an_embedding_model_is_not_an_unknown_model() {
        let body = r#"{"error":{"message":"This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?","type":"invalid_request_error","param":"model","code":null}}"#;
        let err = status_error(status(404), details(body), None, Some("text-embedding-3-small"), "http://h/v1");
        assert!(
            matches!(err, ProviderError::Unsupported { feature: Feature::Completion, ref message } if message.contains("not a chat model")),
            "{err:?}"
        );
    }
}
