//! A fake of an OpenAI-compatible chat API (`/v1/chat/completions`, `/v1/models`), as described
//! in the project's OpenAI reference notes.
//!
//! By default it is hosted OpenAI to the byte: `chat.completion.chunk` events
//! (`data: {json}\n\n`, with `id`, `created`, `model`, `system_fingerprint` and
//! `choices[{index, delta, logprobs, finish_reason}]`), a first chunk holding only the role, a
//! `finish_reason` chunk with an empty delta, a usage chunk with `choices: []` when the request
//! set `stream_options.include_usage`, then `data: [DONE]`; errors are
//! `{"error":{"message","type","param","code"}}`. Its routes live under `/v1`, so
//! [`FakeOpenAi::base_url`] ends in `/v1`, as an adapter's base URL does.
//!
//! A [`Flavour`] switches it to one of the compatible servers and the ways each deviates (no usage
//! at all, usage on the finish chunk, no `[DONE]`, bare `error:` lines, integer error codes,
//! reasoning deltas, …), so an adapter's tolerance of each can be tested. Models are scripted
//! with the same [`Reply`] and [`Behaviour`] as every fake; here they mean:
//! - [`Behaviour::ErrorAfter`]: 200, some chunks, then the flavour's mid-stream error (a
//!   `data: {"error":...}` event, or llama.cpp's older `error: {...}` line) and the end of the
//!   body (vLLM sends `data: [DONE]` after it). Without streaming: a 500.
//! - [`Behaviour::EndWithoutDone`]: some chunks, then a clean end of body with neither a
//!   `finish_reason` nor `[DONE]`.
//! - [`Behaviour::DropConnectionAfter`]: some chunks, then the connection breaks.
//! - [`Behaviour::HttpError`]: that status and the flavour's error body.
//!
//! A [`Reply::Turn`] is written the way each server writes it: [`Piece::ToolCalls`] as
//! `delta.tool_calls` (OpenAI and llama.cpp one call after another, the first piece with `id`,
//! `type`, `name` and `arguments: ""`, then the fragments; vLLM without `arguments` on the first
//! piece and with the next call's first piece in the chunk of the previous call's last fragment;
//! Ollama each call whole), ids made up in the server's shape when the script gives none, and
//! `finish_reason: "tool_calls"` (OpenAI says `stop` when `tool_choice` named the function);
//! [`Piece::Thinking`] as `reasoning` (vLLM, Ollama) or `reasoning_content` (llama.cpp,
//! DeepSeek, and the OpenAI flavours: hosted OpenAI sends none, the OpenAI-style services that do
//! use this field), counted in `reasoning_tokens`; without streaming, one `message` with
//! `tool_calls`. Requests are checked as the servers check them where it is cheap: tool calls in
//! history answered by tool messages for every id, `tool_choice` naming one of `tools`, tool
//! names, `response_format` (and OpenAI's "json" rule), `reasoning_effort` values, images only in
//! user messages as valid `data:` URLs of a type the server decodes (or URLs where it fetches
//! them). [`Fake::set_unsupported`] makes the model refuse a capability in its server's words.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::fake::{Fake, KeyedWire, Wire};
use crate::format::write_json_string;
use crate::harness::{
    FailNext, Harness, Keyed, Models, Pieces, StreamGuard, broken_response, status_code, streamed_body,
};
pub use crate::script::{Behaviour, FakeModel, Reply};
use crate::script::{FakeToolCall, Finish, Generation, Piece, Step, fake_token_count, flush_point};

/// Which server the fake plays, with that server's deviations from hosted OpenAI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// Hosted OpenAI, exactly: usage chunk with `choices: []` when asked, `[DONE]`, mid-stream
    /// error as a `data: {"error":...}` event; `top_k` is rejected; `x-request-id` headers.
    #[default]
    OpenAi,
    /// OpenAI's framing, but no usage is ever sent, whatever the request asks (servers that
    /// ignore `stream_options`).
    NoUsage,
    /// Current llama.cpp `llama-server`: a first chunk with only the role (`content: null`), a
    /// `reasoning_content` delta before the answer, usage and `timings` on the `finish_reason`
    /// chunk (no separate usage chunk), `[DONE]`; mid-stream errors as `data: {"error":...}`;
    /// error bodies with integer `code`s; serves its one model whatever `model` says.
    LlamaCpp,
    /// Older llama.cpp: as [`Flavour::LlamaCpp`], but a mid-stream error is a bare
    /// `error: {json}` line, and the stream ends after the `finish_reason` chunk without
    /// `data: [DONE]`.
    LlamaCppOldErrors,
    /// vLLM: error bodies with an exception-class `type` and an integer `code`; a mid-stream error
    /// is a `data: {"error":...}` event followed by `data: [DONE]`; models list `max_model_len`;
    /// unknown routes get FastAPI's `{"detail":"Not Found"}`.
    Vllm,
    /// DeepSeek (and Kimi): OpenAI's framing and errors, thinking in `reasoning_content`, and a
    /// 400 for an assistant message with `tool_calls` sent back without its `reasoning_content`.
    DeepSeek,
    /// Ollama's `/v1`: `system_fingerprint: "fp_ollama"`, thinking in a `reasoning` delta,
    /// `max_completion_tokens` ignored, errors with `type` but `code: null`, plain-text 404 for
    /// unknown routes; no API key is checked.
    Ollama,
}

impl Flavour {
    fn usage_mode(self) -> UsageMode {
        match self {
            Flavour::OpenAi | Flavour::DeepSeek | Flavour::Vllm | Flavour::Ollama => UsageMode::SeparateChunk,
            Flavour::NoUsage => UsageMode::Never,
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => UsageMode::OnFinishChunk,
        }
    }

    fn sends_done(self) -> bool {
        self != Flavour::LlamaCppOldErrors
    }

    fn is_llama_cpp(self) -> bool {
        matches!(self, Flavour::LlamaCpp | Flavour::LlamaCppOldErrors)
    }

    fn is_openai(self) -> bool {
        matches!(self, Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek)
    }

    fn reasoning_field(self) -> Option<&'static str> {
        match self {
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => Some("reasoning_content"),
            Flavour::Ollama => Some("reasoning"),
            _ => None,
        }
    }

    /// Where a [`Piece::Thinking`] goes: vLLM's current field and Ollama's is `reasoning`, the
    /// others' `reasoning_content`. Hosted OpenAI itself sends no reasoning text on chat
    /// completions, so a script that thinks makes the OpenAI flavours the OpenAI-style services
    /// that do (DeepSeek's field, which most copy); the thinking counts in `reasoning_tokens`
    /// either way.
    fn thinking_field(self) -> &'static str {
        match self {
            Flavour::Vllm | Flavour::Ollama => "reasoning",
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek | Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                "reasoning_content"
            }
        }
    }

    /// A tool call's id as the server makes them up.
    fn tool_call_id(self, shared: &OpenAi) -> String {
        match self {
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => shared.new_id("call_", 24),
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => shared.new_id("", 32),
            Flavour::Vllm => shared.new_id("chatcmpl-tool-", 32),
            Flavour::Ollama => shared.new_id("call_", 8),
        }
    }

    fn system_fingerprint(self) -> Option<&'static str> {
        match self {
            Flavour::OpenAi | Flavour::NoUsage => Some("fp_560af6e559"),
            Flavour::DeepSeek => Some("fp_8802369eaa_prod0623_fp8_kvcache"),
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => Some("b6153-0b5c7d5c"),
            Flavour::Ollama => Some("fp_ollama"),
            Flavour::Vllm => None,
        }
    }

    fn owned_by(self) -> &'static str {
        match self {
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => "system",
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => "llamacpp",
            Flavour::Vllm => "vllm",
            Flavour::Ollama => "library",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UsageMode {
    SeparateChunk,
    OnFinishChunk,
    Never,
}

/// The reasoning text the llama.cpp and Ollama flavours send before the answer.
pub const REASONING_TEXT: &str = "Let me think.";

const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// A running fake OpenAI-compatible server: [`Fake`] over the OpenAI wire format.
pub type FakeOpenAi = Fake<OpenAi>;

impl Fake<OpenAi> {
    /// Adds a model, replacing one of the same name. Requests already in progress keep the
    /// script they started with.
    pub fn add_model(&self, model: FakeModel) {
        self.wire.models.add(ModelEntry { created: unix_now(), model: Arc::new(model) });
    }

    /// Removes a model; returns whether it was there.
    pub fn remove_model(&self, name: &str) -> bool {
        self.wire.models.remove(name)
    }

    /// Makes `alias` name the model `target`, the way `gpt-4o-mini` names a dated snapshot:
    /// requests for the alias are served by the target, and every chunk's `model` field says
    /// the target's name. Listed in `/v1/models` too.
    pub fn add_alias(&self, alias: &str, target: &str) {
        self.wire.aliases.write().unwrap().insert(alias.to_owned(), target.to_owned());
    }

    pub fn set_flavour(&self, flavour: Flavour) {
        *self.wire.flavour.write().unwrap() = flavour;
    }

    pub fn flavour(&self) -> Flavour {
        self.wire.flavour()
    }

    /// While set, chat requests get OpenAI's 429 `insufficient_quota` (billing, not rate).
    pub fn set_quota_exhausted(&self, exhausted: bool) {
        self.wire.quota_exhausted.store(exhausted, Ordering::Relaxed);
    }

    /// While set, a request with `max_tokens` is refused the way OpenAI's reasoning models
    /// refuse it (400 `unsupported_parameter`: use `max_completion_tokens`).
    pub fn set_require_max_completion_tokens(&self, require: bool) {
        self.wire.require_max_completion_tokens.store(require, Ordering::Relaxed);
    }

    /// While set, a request carrying `stream_options` is refused with older vLLM's flat 400
    /// (`extra_forbidden`), like servers that predate the field.
    pub fn set_reject_stream_options(&self, reject: bool) {
        self.wire.reject_stream_options.store(reject, Ordering::Relaxed);
    }

    /// While set, an SSE comment (`: ping`) goes before every event, as proxies and keep-alive
    /// timers send them.
    pub fn set_keepalive_comments(&self, on: bool) {
        self.wire.keepalive_comments.store(on, Ordering::Relaxed);
    }

    /// While set, chat requests are refused the way a misbehaving proxy in front of the server
    /// refuses them: a 401 with a `text/plain` body that quotes the bearer key it was sent, whole,
    /// after `offset` characters of other text (to put it across the 500 characters a client may
    /// cut an error to), and an `x-request-id` header that echoes the key too. `None` turns it off.
    pub fn set_echo_key(&self, offset: Option<usize>) {
        *self.wire.echo_key.write().unwrap() = offset;
    }

    /// Makes every model refuse requests that use these capabilities (`"tools"`, `"vision"`,
    /// `"thinking"`, `"json_schema"`) the way the flavour's server refuses a model that cannot
    /// (Ollama's "does not support tools", vLLM without `--enable-auto-tool-choice`, llama.cpp
    /// without `--jinja` or `--mmproj`, OpenAI's models without vision or reasoning).
    pub fn set_unsupported(&self, capabilities: &[&str]) {
        *self.wire.unsupported.write().unwrap() = capabilities.iter().map(|c| (*c).to_owned()).collect();
    }

    /// Prompt tokens reported as read from the prompt cache (`prompt_tokens_details.cached_tokens`).
    pub fn set_cached_prompt_tokens(&self, tokens: usize) {
        self.wire.cached_tokens.store(tokens as u64, Ordering::Relaxed);
    }

    /// The JSON body of every embeddings request received (including refused ones), in order.
    pub fn embed_requests(&self) -> Vec<Value> {
        self.wire.embed_requests.lock().unwrap().clone()
    }

    /// The JSON body of every `/tokenize` request received (vLLM's and llama.cpp's flavours), in
    /// order.
    pub fn tokenize_requests(&self) -> Vec<Value> {
        self.wire.tokenize_requests.lock().unwrap().clone()
    }

    /// The JSON body of every `/apply-template` request received (llama.cpp's flavours), in order.
    pub fn template_requests(&self) -> Vec<Value> {
        self.wire.template_requests.lock().unwrap().clone()
    }

    /// While set, `encoding_format: "base64"` is refused with a 400, as by a server that writes
    /// only JSON numbers and checks the field (a plausible server, not one of the flavours: they
    /// all take base64, or ignore the field as [`Flavour::LlamaCppOldErrors`] does).
    pub fn set_reject_base64(&self, reject: bool) {
        self.wire.reject_base64.store(reject, Ordering::Relaxed);
    }

    /// While set, `dimensions` is refused the way the flavour refuses a model that cannot shorten
    /// (OpenAI's text-embedding-ada-002, vLLM's models without Matryoshka); llama.cpp ignores the
    /// field either way.
    pub fn set_refuse_dimensions(&self, refuse: bool) {
        self.wire.refuse_dimensions.store(refuse, Ordering::Relaxed);
    }

    /// While set, an embeddings response lists its vectors last input first (with the right
    /// `index`es), which a client must put back in order.
    pub fn set_embeddings_reversed(&self, reversed: bool) {
        self.wire.embeddings_reversed.store(reversed, Ordering::Relaxed);
    }

    /// The images chat requests carried, in order: `data:` URLs decoded, other URLs as sent.
    pub fn received_images(&self) -> Vec<FakeImage> {
        self.wire.images.lock().unwrap().clone()
    }
}

/// An image a chat request carried in an `image_url` part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeImage {
    /// A `data:<mime>;base64,…` URL, decoded.
    Data { mime_type: String, bytes: Vec<u8> },
    /// A URL the server would fetch.
    Url(String),
}

/// The image types the servers decode: OpenAI's list; llama.cpp's stb_image reads no WebP.
fn image_type_allowed(flavour: Flavour, mime_type: &str) -> bool {
    match mime_type {
        "image/png" | "image/jpeg" | "image/gif" => true,
        "image/webp" => !flavour.is_llama_cpp(),
        _ => false,
    }
}

struct ModelEntry {
    created: u64,
    model: Arc<FakeModel>,
}

impl Keyed for ModelEntry {
    fn key(&self) -> &str {
        &self.model.name
    }
}

/// The OpenAI wire format, in its [`Flavour`]s, and the state its handle and request handlers
/// share. A failure scripted with [`Fake::fail_next`] is the flavour's error body (a 429 is
/// OpenAI's `rate_limit_exceeded`, and with a wait comes with exhausted `x-ratelimit-*-requests`
/// headers); a completed stream is one that wrote `[DONE]` (or the finish chunk, for a flavour
/// without it). A key set with [`Fake::set_api_key`] is required as `Authorization: Bearer <key>`
/// (except with [`Flavour::Ollama`], which ignores keys). While [`Fake::set_busy`] is on, chat
/// requests get the flavour's 503 (OpenAI's "overloaded", llama.cpp's "Loading model").
pub struct OpenAi {
    models: Models<ModelEntry>,
    aliases: RwLock<HashMap<String, String>>,
    flavour: RwLock<Flavour>,
    quota_exhausted: AtomicBool,
    require_max_completion_tokens: AtomicBool,
    reject_stream_options: AtomicBool,
    keepalive_comments: AtomicBool,
    /// [`Fake::set_echo_key`].
    echo_key: RwLock<Option<usize>>,
    /// [`Fake::set_unsupported`].
    unsupported: RwLock<Vec<String>>,
    /// [`Fake::set_cached_prompt_tokens`].
    cached_tokens: AtomicU64,
    /// [`Fake::received_images`].
    images: Mutex<Vec<FakeImage>>,
    /// [`Fake::embed_requests`].
    embed_requests: Mutex<Vec<Value>>,
    /// [`Fake::tokenize_requests`].
    tokenize_requests: Mutex<Vec<Value>>,
    /// [`Fake::template_requests`].
    template_requests: Mutex<Vec<Value>>,
    /// [`Fake::set_reject_base64`].
    reject_base64: AtomicBool,
    /// [`Fake::set_refuse_dimensions`].
    refuse_dimensions: AtomicBool,
    /// [`Fake::set_embeddings_reversed`].
    embeddings_reversed: AtomicBool,
    harness: Arc<Harness>,
    /// Makes ids unique within a run.
    next_id: AtomicU64,
}

impl Wire for OpenAi {
    const NAME: &'static str = "OpenAI";
    const BASE_PATH: &'static str = "/v1";

    fn new(harness: Arc<Harness>) -> Self {
        OpenAi {
            models: Models::new(),
            aliases: RwLock::new(HashMap::new()),
            flavour: RwLock::new(Flavour::OpenAi),
            quota_exhausted: AtomicBool::new(false),
            require_max_completion_tokens: AtomicBool::new(false),
            reject_stream_options: AtomicBool::new(false),
            keepalive_comments: AtomicBool::new(false),
            echo_key: RwLock::new(None),
            unsupported: RwLock::new(Vec::new()),
            cached_tokens: AtomicU64::new(0),
            images: Mutex::new(Vec::new()),
            embed_requests: Mutex::new(Vec::new()),
            tokenize_requests: Mutex::new(Vec::new()),
            template_requests: Mutex::new(Vec::new()),
            reject_base64: AtomicBool::new(false),
            refuse_dimensions: AtomicBool::new(false),
            embeddings_reversed: AtomicBool::new(false),
            harness,
            next_id: AtomicU64::new(1),
        }
    }

    fn router(shared: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(list_models))
            .route("/v1/embeddings", post(embeddings))
            .route("/embeddings", post(llama_cpp_embeddings))
            .route("/v1/models/{*id}", get(get_model))
            // llama.cpp serves its API with and without the /v1 prefix.
            .route("/chat/completions", post(llama_cpp_chat))
            .route("/models", get(llama_cpp_models))
            // vLLM's and llama.cpp's, at their root.
            .route("/tokenize", post(tokenize))
            .route("/apply-template", post(apply_template))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(shared)
    }
}

impl KeyedWire for OpenAi {}

impl OpenAi {
    fn flavour(&self) -> Flavour {
        *self.flavour.read().unwrap()
    }

    /// The model serving `name`, following aliases. A llama.cpp server has one model and serves
    /// it whatever the request names.
    fn find_model(&self, name: &str, flavour: Flavour) -> Option<Arc<ModelEntry>> {
        let target = self.aliases.read().unwrap().get(name).cloned();
        let name = target.as_deref().unwrap_or(name);
        let models = self.models.read();
        let found = models.iter().find(|m| m.model.name == name).cloned();
        if found.is_none() && flavour.is_llama_cpp() {
            return models.first().cloned();
        }
        found
    }

    /// A fresh id of `len` hex-ish characters, stable in shape, unique within a run.
    fn new_id(&self, prefix: &str, len: usize) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ unix_now().rotate_left(17);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut state = seed | 1;
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            id.push(alphabet[(state % alphabet.len() as u64) as usize] as char);
        }
        id
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Errors, in each flavour's shape

/// What went wrong, independent of how the flavour words it.
struct ApiError {
    status: StatusCode,
    message: String,
    /// OpenAI's `type`.
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        let status = status_code(status);
        let kind = match status.as_u16() {
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The error object (what goes under `"error"`) as the flavour writes it.
    fn object(&self, flavour: Flavour) -> Value {
        let status = self.status.as_u16();
        match flavour {
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => {
                json!({"message": self.message, "type": self.kind, "param": self.param, "code": self.code})
            }
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                let kind = match status {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    501 => "not_supported_error",
                    503 => "unavailable_error",
                    400..=499 => "invalid_request_error",
                    _ => "server_error",
                };
                json!({"code": status, "message": self.message, "type": kind})
            }
            Flavour::Vllm => {
                let kind = match status {
                    400 | 422 => "BadRequestError",
                    401 => "AuthenticationError",
                    404 => "NotFoundError",
                    429 => "RateLimitError",
                    _ => "InternalServerError",
                };
                json!({"message": self.message, "type": kind, "param": self.param, "code": status})
            }
            Flavour::Ollama => {
                let kind = match status {
                    400 => "invalid_request_error",
                    404 => "not_found_error",
                    _ => "api_error",
                };
                json!({"message": self.message, "type": kind, "param": null, "code": null})
            }
        }
    }

    fn response(&self, flavour: Flavour) -> Response {
        json_response(self.status, &json!({ "error": self.object(flavour) }))
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("serializing a JSON value cannot fail");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE))], body).into_response()
}

/// Adds what every response of the flavour carries.
fn finish_response(shared: &OpenAi, flavour: Flavour, mut response: Response) -> Response {
    if flavour.is_openai() {
        let id = shared.new_id("req_", 32);
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response.headers_mut().insert("openai-version", HeaderValue::from_static("2020-10-01"));
    }
    response
}

async fn not_found(State(shared): State<Arc<OpenAi>>, method: Method, uri: Uri) -> Response {
    let flavour = shared.flavour();
    let response = match flavour {
        Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => {
            ApiError::new(404, format!("Invalid URL ({method} {})", uri.path())).response(flavour)
        }
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => ApiError::new(404, "File Not Found").response(flavour),
        Flavour::Vllm => json_response(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
        Flavour::Ollama => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
            "404 page not found",
        )
            .into_response(),
    };
    finish_response(&shared, flavour, response)
}

/// The flavour's answer to a missing or wrong API key, if the request must be refused.
fn check_auth(shared: &OpenAi, flavour: Flavour, headers: &HeaderMap) -> Option<Response> {
    let expected = shared.harness.api_key()?;
    if flavour == Flavour::Ollama {
        return None;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given == Some(expected.as_str()) {
        return None;
    }
    let response = match flavour {
        Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => {
            let error = match given {
                None | Some("") => ApiError::new(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                ),
                Some(key) => ApiError::new(
                    401,
                    format!(
                        "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                        mask_key(key)
                    ),
                )
                .code("invalid_api_key"),
            };
            error.response(flavour)
        }
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => ApiError::new(401, "Invalid API Key").response(flavour),
        // vLLM's API-key middleware answers with a bare string.
        Flavour::Vllm => json_response(StatusCode::UNAUTHORIZED, &json!({"error": "Unauthorized"})),
        Flavour::Ollama => return None,
    };
    Some(finish_response(shared, flavour, response))
}

/// [`Fake::set_echo_key`]'s refusal: the bearer key quoted whole at `offset` characters
/// into a plain-text body, and echoed in `x-request-id`.
fn key_echo(headers: &HeaderMap, offset: usize) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let lead = "401 Unauthorized: this proxy does not accept the credentials it was given. ";
    let mut body: String = lead.chars().cycle().take(offset).collect();
    body.push_str(&key);
    body.push_str(" is not a key this proxy knows; ask its administrator for one.\n");
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))],
        body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("req_{key}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// `sk-ab****wxyz`: how OpenAI echoes a wrong key (never the whole key).
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return format!("{}****", chars.iter().take(2).collect::<String>());
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

// ---------------------------------------------------------------------------------------------
// Models

fn model_card(entry: &ModelEntry, id: &str, flavour: Flavour) -> Value {
    let model = &entry.model;
    let mut card = json!({"id": id, "object": "model", "created": entry.created, "owned_by": flavour.owned_by()});
    match flavour {
        Flavour::Vllm => {
            card["root"] = json!(model.name);
            card["parent"] = Value::Null;
            card["max_model_len"] = json!(model.context_length);
            card["permission"] = json!([{
                "id": format!("modelperm-{}", id.len()), "object": "model_permission", "created": entry.created,
                "allow_create_engine": false, "allow_sampling": true, "allow_logprobs": true,
                "allow_search_indices": false, "allow_view": true, "allow_fine_tuning": false,
                "organization": "*", "group": null, "is_blocking": false,
            }]);
        }
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
            card["meta"] = json!({
                "vocab_type": 2, "n_vocab": 128_256, "n_ctx_train": model.context_length, "n_embd": 3072,
                "n_params": parameter_count(&model.parameter_size), "size": model.size,
            });
        }
        _ => {}
    }
    card
}

/// `"3.2B"` → 3_200_000_000, `"494.03M"` → 494_030_000.
fn parameter_count(size: &str) -> Option<u64> {
    let (number, scale) = match size.as_bytes().last()? {
        b'B' | b'b' => (&size[..size.len() - 1], 1e9),
        b'M' | b'm' => (&size[..size.len() - 1], 1e6),
        _ => (size, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    Some((value * scale).round() as u64)
}

fn all_cards(shared: &OpenAi, flavour: Flavour) -> Vec<(String, Value)> {
    let models = shared.models.read();
    let mut cards: Vec<(String, Value)> =
        models.iter().map(|e| (e.model.name.clone(), model_card(e, &e.model.name, flavour))).collect();
    let mut aliases: Vec<_> = shared.aliases.read().unwrap().clone().into_iter().collect();
    aliases.sort();
    for (alias, target) in aliases {
        if let Some(entry) = models.iter().find(|m| m.model.name == target) {
            cards.push((alias.clone(), model_card(entry, &alias, flavour)));
        }
    }
    cards
}

async fn list_models(State(shared): State<Arc<OpenAi>>, headers: HeaderMap) -> Response {
    let flavour = shared.flavour();
    if let Some(refusal) = check_auth(&shared, flavour, &headers) {
        return refusal;
    }
    let data: Vec<Value> = all_cards(&shared, flavour).into_iter().map(|(_, card)| card).collect();
    finish_response(&shared, flavour, json_response(StatusCode::OK, &json!({"object": "list", "data": data})))
}

async fn llama_cpp_chat(
    State(shared): State<Arc<OpenAi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.flavour().is_llama_cpp() {
        chat(State(shared), headers, body).await
    } else {
        not_found(State(shared), method, uri).await
    }
}

async fn llama_cpp_models(State(shared): State<Arc<OpenAi>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if shared.flavour().is_llama_cpp() {
        list_models(State(shared), headers).await
    } else {
        not_found(State(shared), method, uri).await
    }
}

async fn get_model(
    State(shared): State<Arc<OpenAi>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let flavour = shared.flavour();
    // Only OpenAI and Ollama serve single model cards.
    if !matches!(flavour, Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek | Flavour::Ollama) {
        return not_found(State(shared), method, uri).await;
    }
    if let Some(refusal) = check_auth(&shared, flavour, &headers) {
        return refusal;
    }
    let response = match all_cards(&shared, flavour).into_iter().find(|(name, _)| *name == id) {
        Some((_, card)) => json_response(StatusCode::OK, &card),
        None if flavour == Flavour::Ollama => ApiError::new(404, format!("model \"{id}\" not found")).response(flavour),
        None => ApiError::new(404, format!("The model '{id}' does not exist"))
            .param("model")
            .code("model_not_found")
            .response(flavour),
    };
    finish_response(&shared, flavour, response)
}

// ---------------------------------------------------------------------------------------------
// Chat

/// What a chat request asks for, validated the way the flavour's server would.
struct ChatParams {
    model: String,
    stream: bool,
    include_usage: bool,
    /// Content chunks allowed by the token limit; `usize::MAX` when unlimited.
    limit: usize,
    /// `prompt_tokens`: whitespace-separated words over all messages, at least 1.
    prompt_words: usize,
    /// The last user message's text, for [`Reply::Echo`].
    last_user: String,
    /// Whether `tool_choice` names a function (OpenAI then finishes with `stop`, not
    /// `tool_calls`).
    forced_function: bool,
    /// Whether the conversation ends with tool results ([`FakeModel::after_tool_result`]).
    tool_result_last: bool,
}

async fn chat(State(shared): State<Arc<OpenAi>>, headers: HeaderMap, body: Bytes) -> Response {
    let flavour = shared.flavour();
    if let Some(offset) = *shared.echo_key.read().unwrap() {
        return key_echo(&headers, offset);
    }
    let response = chat_response(&shared, flavour, &headers, body).await;
    finish_response(&shared, flavour, response)
}

/// What a chat call and a chat-form `/tokenize` check alike: the key, the messages as a chat call
/// takes them, and the model; else the refusal.
fn checked_chat(
    shared: &OpenAi,
    flavour: Flavour,
    headers: &HeaderMap,
    request: &Value,
) -> Result<(ChatParams, Arc<ModelEntry>), Box<Response>> {
    if let Some(refusal) = check_auth(shared, flavour, headers) {
        return Err(Box::new(refusal));
    }
    let params = chat_params(shared, flavour, request).map_err(|error| Box::new(error.response(flavour)))?;
    let Some(entry) = shared.find_model(&params.model, flavour) else {
        return Err(Box::new(model_not_found(flavour, &params.model).response(flavour)));
    };
    Ok((params, entry))
}

async fn chat_response(shared: &Arc<OpenAi>, flavour: Flavour, headers: &HeaderMap, body: Bytes) -> Response {
    let received = Instant::now();
    let request = match serde_json::from_slice::<Value>(&body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return ApiError::new(400, "Invalid request body: expected a JSON object").response(flavour),
        Err(err) => {
            let message = format!(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.) ({err})"
            );
            return ApiError::new(400, message).response(flavour);
        }
    };
    if shared.harness.recording() {
        shared.harness.record(Some(headers.clone()), Some(request.clone()));
    }
    let (params, entry) = match checked_chat(shared, flavour, headers, &request) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    if entry.model.embedding_length.is_some() {
        return not_a_chat_model(flavour, &entry.model.name).response(flavour);
    }
    if shared.quota_exhausted.load(Ordering::Relaxed) {
        return ApiError::new(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        )
        .kind("insufficient_quota")
        .code("insufficient_quota")
        .response(flavour);
    }
    if shared.harness.busy() {
        let message =
            if flavour.is_llama_cpp() { "Loading model" } else { "The server is overloaded or not ready yet." };
        return ApiError::new(503, message).response(flavour);
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure, flavour, &entry.model.name);
    }

    let guard = match shared.harness.begin_stream(&entry.model).await {
        Ok(guard) => guard,
        Err((status, message)) => return ApiError::new(status, message).response(flavour),
    };
    let responding = Instant::now();
    let served_as = entry.model.name.clone();
    // The second turn of a tool loop may be scripted apart.
    let model = entry.model.answering(params.tool_result_last);
    let mut generation = Generation::new(model.clone(), &params.last_user, params.limit);
    if !params.stream {
        generation.stop_at_context_length();
    }
    let chunks = ChunkWriter {
        prefix: chunk_prefix(shared, flavour, &served_as),
        flavour,
        include_usage: params.include_usage,
        comments: shared.keepalive_comments.load(Ordering::Relaxed),
        shared: shared.clone(),
    };
    let finish =
        FinishWords { calls_tools: generation.calls_tools(), forced_function: params.forced_function, flavour };
    let auto_reasoning = !matches!(model.reply, Reply::Turn(_));
    let cached_tokens = (shared.cached_tokens.load(Ordering::Relaxed) as usize).min(params.prompt_words);
    let timing = Timing { received, responding, prompt_words: params.prompt_words, cached_tokens };
    if params.stream {
        stream_response(SseBody {
            generation,
            guard,
            chunks,
            timing,
            queue: VecDeque::new(),
            started: false,
            finished: false,
            finish,
            auto_reasoning,
            thinking_pieces: 0,
        })
    } else {
        whole_response(shared, flavour, generation, guard, &served_as, timing, finish).await
    }
}

fn scripted_failure(failure: FailNext, flavour: Flavour, model: &str) -> Response {
    let error = match failure.status {
        429 => ApiError::new(
            429,
            format!(
                "Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {}s. Visit https://platform.openai.com/account/rate-limits to learn more.",
                failure.retry_after.unwrap_or(20)
            ),
        )
        .kind("requests")
        .code("rate_limit_exceeded"),
        503 => ApiError::new(503, "The server is overloaded or not ready yet."),
        status => ApiError::new(status, format!("scripted failure ({status})")),
    };
    let mut response = error.response(flavour);
    failure.add_retry_after(&mut response);
    if let Some(seconds) = failure.retry_after {
        let headers = response.headers_mut();
        if failure.status == 429 {
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("3"));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
            if let Ok(value) = HeaderValue::from_str(&format!("{seconds}s")) {
                headers.insert("x-ratelimit-reset-requests", value);
            }
        }
    }
    response
}

/// The flavour's answer to a request for a model it does not have.
fn model_not_found(flavour: Flavour, model: &str) -> ApiError {
    match flavour {
        Flavour::Vllm => ApiError::new(404, format!("The model `{model}` does not exist.")).param("model"),
        Flavour::Ollama => ApiError::new(404, format!("model \"{model}\" not found, try pulling it first")),
        _ => ApiError::new(404, format!("The model `{model}` does not exist or you do not have access to it."))
            .code("model_not_found"),
    }
}

/// The flavour's answer to a chat request for an embedding model.
fn not_a_chat_model(flavour: Flavour, model: &str) -> ApiError {
    match flavour {
        Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => ApiError::new(
            404,
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?",
        )
        .param("model"),
        Flavour::Vllm => ApiError::new(400, "The model does not support Chat Completions API"),
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
            ApiError::new(501, "This server does not support completions. Start it without `--embeddings`")
        }
        Flavour::Ollama => ApiError::new(400, format!("\"{model}\" does not support chat")),
    }
}

/// The flavour's answer to an embeddings request for a model that cannot embed.
fn cannot_embed(flavour: Flavour) -> ApiError {
    match flavour {
        Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => {
            ApiError::new(403, "You are not allowed to generate embeddings from this model")
                .kind("invalid_request_error")
        }
        Flavour::Vllm => ApiError::new(400, "The model does not support Embeddings API"),
        // Ollama passes on its runner's (llama.cpp's) words.
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors | Flavour::Ollama => {
            ApiError::new(501, "This server does not support embeddings. Start it with `--embeddings`")
        }
    }
}

/// OpenAI's limit of inputs per embeddings request (the other flavours are held to it too).
pub const MAX_EMBED_INPUTS: usize = 2048;

async fn llama_cpp_embeddings(
    State(shared): State<Arc<OpenAi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.flavour().is_llama_cpp() {
        embeddings(State(shared), headers, body).await
    } else {
        not_found(State(shared), method, uri).await
    }
}

/// `POST /tokenize`. vLLM's, in its chat form, `{model, messages, tools?, add_generation_prompt}`,
/// is answered `{count, max_model_len, tokens}`: the count is what a chat call's `prompt_tokens`
/// would be for the same messages (their words), and what [`fake_token_count`] adds for each tool,
/// as a template that renders the tools would. The messages are checked as a chat call's are.
/// llama.cpp's takes text, `{content, add_special?, parse_special?}`, and answers `{tokens}` as
/// [`fake_llama_cpp_tokens`] splits it. The other flavours have no such route.
async fn tokenize(
    State(shared): State<Arc<OpenAi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let flavour = shared.flavour();
    let response = match flavour {
        Flavour::Vllm => tokenize_response(&shared, flavour, &headers, &body),
        Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
            llama_cpp_tokenize_response(&shared, flavour, &headers, &body)
        }
        _ => return not_found(State(shared), method, uri).await,
    };
    finish_response(&shared, flavour, response)
}

/// A request body that must be one JSON object (else a 400 saying `invalid`), kept in `log` while
/// the fake records requests.
fn recorded_object(
    shared: &OpenAi,
    flavour: Flavour,
    body: &[u8],
    log: &Mutex<Vec<Value>>,
    invalid: &str,
) -> Result<Value, Box<Response>> {
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(ApiError::new(400, invalid).response(flavour)));
    };
    if shared.harness.recording() {
        log.lock().unwrap().push(request.clone());
    }
    Ok(request)
}

fn tokenize_response(shared: &OpenAi, flavour: Flavour, headers: &HeaderMap, body: &[u8]) -> Response {
    let invalid = "Invalid request body: expected a JSON object";
    let request = match recorded_object(shared, flavour, body, &shared.tokenize_requests, invalid) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let (params, entry) = match checked_chat(shared, flavour, headers, &request) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    let tools = request.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let descriptions =
        tools.iter().map(|tool| tool.pointer("/function/description").and_then(Value::as_str).unwrap_or(""));
    let count = fake_token_count(params.prompt_words, 0, descriptions);
    let tokens: Vec<usize> = (0..count).collect();
    axum::Json(json!({"count": count, "max_model_len": entry.model.context_length, "tokens": tokens})).into_response()
}

/// The template llama.cpp's fake renders conversations with (ChatML, as Qwen's models use).
const TEMPLATE_START: &str = "<|im_start|>";
const TEMPLATE_END: &str = "<|im_end|>";

/// llama.cpp's `POST /apply-template`: `{messages, tools?, chat_template_kwargs?}` rendered with a
/// ChatML template and the generation prompt, answered `{prompt}`. Tools are rendered into a system
/// turn first (name and description); `enable_thinking: false` closes an empty think block after
/// the generation prompt, as Qwen3's template does. No model is named: the server has one.
async fn apply_template(
    State(shared): State<Arc<OpenAi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let flavour = shared.flavour();
    if !flavour.is_llama_cpp() {
        return not_found(State(shared), method, uri).await;
    }
    let response = apply_template_response(&shared, flavour, &headers, &body);
    finish_response(&shared, flavour, response)
}

fn apply_template_response(shared: &OpenAi, flavour: Flavour, headers: &HeaderMap, body: &[u8]) -> Response {
    let request = match authorized_object(shared, flavour, headers, body, &shared.template_requests) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return ApiError::new(400, "'messages' is required").response(flavour);
    };
    let mut prompt = String::new();
    let tools = request.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if !tools.is_empty() {
        prompt.push_str(TEMPLATE_START);
        prompt.push_str("system\n# Tools\n");
        for tool in tools {
            let name = tool.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
            let description = tool.pointer("/function/description").and_then(Value::as_str).unwrap_or("");
            prompt.push_str(&format!("{name}: {description}\n"));
        }
        prompt.push_str(TEMPLATE_END);
        prompt.push('\n');
    }
    for message in messages {
        let Some(role) = message.get("role").and_then(Value::as_str) else {
            return ApiError::new(400, "Missing 'role' in message").response(flavour);
        };
        let text = match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        };
        prompt.push_str(&format!("{TEMPLATE_START}{role}\n{text}{TEMPLATE_END}\n"));
    }
    prompt.push_str(TEMPLATE_START);
    prompt.push_str("assistant\n");
    if request.pointer("/chat_template_kwargs/enable_thinking") == Some(&Value::Bool(false)) {
        prompt.push_str("<think>\n\n</think>\n\n");
    }
    axum::Json(json!({ "prompt": prompt })).into_response()
}

fn llama_cpp_tokenize_response(shared: &OpenAi, flavour: Flavour, headers: &HeaderMap, body: &[u8]) -> Response {
    let request = match authorized_object(shared, flavour, headers, body, &shared.tokenize_requests) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let Some(content) = request.get("content").and_then(Value::as_str) else {
        return ApiError::new(400, "\"content\" must be provided").response(flavour);
    };
    let flag = |name: &str| request.get(name).and_then(Value::as_bool).unwrap_or(false);
    let tokens = fake_llama_cpp_tokens(content, flag("add_special"), flag("parse_special"));
    axum::Json(json!({ "tokens": tokens })).into_response()
}

/// A llama.cpp request body that is one JSON object (recorded in `log`), from a caller with the
/// key; else llama.cpp's refusal.
fn authorized_object(
    shared: &OpenAi,
    flavour: Flavour,
    headers: &HeaderMap,
    body: &[u8],
    log: &Mutex<Vec<Value>>,
) -> Result<Value, Box<Response>> {
    let request = recorded_object(shared, flavour, body, log, "invalid JSON body")?;
    match check_auth(shared, flavour, headers) {
        Some(refusal) => Err(Box::new(refusal)),
        None => Ok(request),
    }
}

/// How llama.cpp's fake tokenizes `content`: a BOS token (id 1) first with `add_special`; each
/// template marker (`<|…|>`) one special token with `parse_special`, else plain text; and one
/// token per whitespace-separated word of the text.
pub fn fake_llama_cpp_tokens(content: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
    const BOS: u32 = 1;
    const MARKER: u32 = 2;
    let words = |text: &str, tokens: &mut Vec<u32>| {
        tokens.extend(text.split_whitespace().map(|word| 1000 + word.len() as u32));
    };
    let mut tokens = Vec::new();
    if add_special {
        tokens.push(BOS);
    }
    let mut rest = content;
    while let Some(start) = rest.find("<|").filter(|_| parse_special) {
        let Some(length) = rest[start..].find("|>") else { break };
        words(&rest[..start], &mut tokens);
        tokens.push(MARKER);
        rest = &rest[start + length + 2..];
    }
    words(rest, &mut tokens);
    tokens
}

/// `POST /v1/embeddings`: `fake_embedding` per input (its text cut to the model's context where
/// the request asks vLLM to cut), shortened to `dimensions`, as JSON numbers or base64.
async fn embeddings(State(shared): State<Arc<OpenAi>>, headers: HeaderMap, body: Bytes) -> Response {
    let flavour = shared.flavour();
    let response = embeddings_response(&shared, flavour, &headers, &body);
    finish_response(&shared, flavour, response)
}

fn embeddings_response(shared: &OpenAi, flavour: Flavour, headers: &HeaderMap, body: &[u8]) -> Response {
    let invalid = "We could not parse the JSON body of your request.";
    let request = match recorded_object(shared, flavour, body, &shared.embed_requests, invalid) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    if let Some(refusal) = check_auth(shared, flavour, headers) {
        return refusal;
    }
    let invalid_input = || {
        let message = match flavour {
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                "\"input\" must be a string or an array of strings".to_owned()
            }
            _ => {
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
                    .to_owned()
            }
        };
        ApiError::new(400, message).param("input").response(flavour)
    };
    let model_name = request.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => {
            let mut inputs = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(text) => inputs.push(text.clone()),
                    _ => return invalid_input(),
                }
            }
            inputs
        }
        _ => return invalid_input(),
    };
    if inputs.is_empty() || inputs.iter().any(String::is_empty) {
        if flavour.is_llama_cpp() {
            return ApiError::new(400, "Input content cannot be empty").response(flavour);
        }
        return invalid_input();
    }
    if inputs.len() > MAX_EMBED_INPUTS {
        return ApiError::new(
            400,
            format!(
                "Invalid 'input': array too long. Expected an array with maximum length {MAX_EMBED_INPUTS}, but got an array with length {} instead.",
                inputs.len()
            ),
        )
        .param("input")
        .code("array_above_max_length")
        .response(flavour);
    }
    // Older llama.cpp ignores the field and always writes numbers.
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => {
            if shared.reject_base64.load(Ordering::Relaxed) {
                return ApiError::new(400, "Invalid value for 'encoding_format': only \"float\" is supported.")
                    .param("encoding_format")
                    .response(flavour);
            }
            flavour != Flavour::LlamaCppOldErrors
        }
        Some(other) if flavour != Flavour::LlamaCppOldErrors => {
            return ApiError::new(
                400,
                format!("Invalid value for 'encoding_format': {other}. Supported values are: 'float' and 'base64'."),
            )
            .param("encoding_format")
            .response(flavour);
        }
        Some(_) => false,
    };
    let truncate = request.get("truncate_prompt_tokens").filter(|v| !v.is_null());
    if truncate.is_some() && flavour.is_openai() {
        return ApiError::new(400, "Unrecognized request argument supplied: truncate_prompt_tokens").response(flavour);
    }
    let Some(entry) = shared.find_model(&model_name, flavour) else {
        return model_not_found(flavour, &model_name).response(flavour);
    };
    let model = &entry.model;
    let Some(native) = model.embedding_length else {
        return cannot_embed(flavour).response(flavour);
    };
    if shared.harness.busy() {
        let message =
            if flavour.is_llama_cpp() { "Loading model" } else { "The server is overloaded or not ready yet." };
        return ApiError::new(503, message).response(flavour);
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure, flavour, &model.name);
    }
    let mut dimensions = native as usize;
    // llama.cpp ignores the field.
    if let Some(asked) = request.get("dimensions").filter(|v| !v.is_null())
        && !flavour.is_llama_cpp()
    {
        if shared.refuse_dimensions.load(Ordering::Relaxed) {
            let message = match flavour {
                Flavour::Vllm => format!(
                    "Model \"{}\" does not support matryoshka representation, changing output dimensions will lead to poor results.",
                    model.name
                ),
                _ => "This model does not support specifying dimensions.".to_owned(),
            };
            return ApiError::new(400, message).param("dimensions").response(flavour);
        }
        match asked.as_u64() {
            Some(asked @ 1..) if asked <= u64::from(native) => dimensions = asked as usize,
            _ => {
                return ApiError::new(
                    400,
                    format!("Invalid value for 'dimensions' = {asked}. Must be between 1 and {native}."),
                )
                .param("dimensions")
                .response(flavour);
            }
        }
    }
    // vLLM cuts to the model's context (-1) or to the number given.
    let cut_to = truncate
        .filter(|_| flavour == Flavour::Vllm)
        .and_then(Value::as_i64)
        .map(|n| if n < 0 { model.context_length as usize } else { n as usize });
    let context = model.context_length as usize;
    let mut prompt_tokens = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let words: Vec<&str> = input.split_whitespace().collect();
        let mut text = input.clone();
        let mut tokens = words.len().max(1);
        let limit = cut_to.or((flavour == Flavour::Ollama).then_some(context));
        if let Some(limit) = limit.filter(|&limit| tokens > limit) {
            // Ollama's /v1 cuts silently (its truncate defaults to true).
            text = words[..limit].join(" ");
            tokens = limit;
        } else if tokens > context {
            let error = match flavour {
                Flavour::Vllm => ApiError::new(
                    400,
                    format!(
                        "This model's maximum context length is {context} tokens. However, you requested {tokens} tokens in the input for embedding generation. Please reduce the length of the input."
                    ),
                ),
                Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                    ApiError::new(500, "input is too large to process. increase the physical batch size")
                }
                _ => ApiError::new(
                    400,
                    format!(
                        "This model's maximum context length is {context} tokens, however you requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). Please reduce your prompt; or completion length."
                    ),
                ),
            };
            return error.response(flavour);
        }
        prompt_tokens += tokens;
        let mut vector = crate::script::fake_embedding(&text, native as usize);
        vector.truncate(dimensions);
        let embedding = if base64 {
            use base64::Engine as _;
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(vector)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    if shared.embeddings_reversed.load(Ordering::Relaxed) {
        data.reverse();
    }
    let mut object = json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    if flavour == Flavour::Vllm {
        object["id"] = json!(shared.new_id("embd-", 32));
        object["created"] = json!(unix_now());
    }
    json_response(StatusCode::OK, &object)
}

/// Reads and checks a chat request; `Err` is the 400 the flavour's server would answer.
fn chat_params(shared: &OpenAi, flavour: Flavour, request: &Value) -> Result<ChatParams, ApiError> {
    let model = match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        // llama.cpp serves its one model whatever (or whether) `model` says.
        None | Some(Value::Null) if flavour.is_llama_cpp() => String::new(),
        None | Some(Value::Null) => return Err(ApiError::new(400, "you must provide a model parameter")),
        Some(_) => return Err(ApiError::new(400, "Invalid type for 'model': expected a string.").param("model")),
    };

    let Some(Value::Array(messages)) = request.get("messages") else {
        return Err(ApiError::new(400, "Missing required parameter: 'messages'.").param("messages"));
    };
    if messages.is_empty() {
        return Err(ApiError::new(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }
    let mut prompt_words = 0;
    let mut last_user = String::new();
    // The calls of the latest assistant message not yet answered by a tool message.
    let mut unanswered: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::new(
                400,
                format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
            )
            .param("messages.role")
            .code("invalid_value"));
        }
        if role == "tool" {
            let id = message.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
            match unanswered.iter().position(|call| call == id) {
                Some(at) => {
                    unanswered.remove(at);
                }
                None => {
                    return Err(ApiError::new(
                        400,
                        format!("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'. (messages.[{position}], tool_call_id {id:?})"),
                    )
                    .param("messages.role"));
                }
            }
        } else if !unanswered.is_empty() {
            return Err(unanswered_calls(position - 1, &unanswered));
        }
        let calls = match message.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(calls)) if role == "assistant" => calls.clone(),
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "Invalid 'messages.tool_calls': only assistant messages take an array of tool calls.",
                )
                .param("messages.tool_calls")
                .code("invalid_type"));
            }
        };
        let reasoning = message.get("reasoning_content").filter(|r| !r.is_null());
        if flavour == Flavour::DeepSeek && !calls.is_empty() && reasoning.is_none() {
            return Err(ApiError::new(400, format!("Missing `reasoning_content` field in the assistant message at message index {position}. For more information, please refer to https://api-docs.deepseek.com/guides/thinking_mode#tool-calls"))
                .param("messages"));
        }
        for call in &calls {
            let function = call.get("function");
            let (Some(id), Some("function"), Some(_), Some(arguments)) = (
                call.get("id").and_then(Value::as_str),
                call.get("type").and_then(Value::as_str),
                function.and_then(|f| f.get("name")).and_then(Value::as_str),
                function.and_then(|f| f.get("arguments")),
            ) else {
                return Err(ApiError::new(400, format!("Invalid 'messages[{position}].tool_calls': each needs an id, type 'function' and a function with a name and arguments."))
                    .param("messages.tool_calls"));
            };
            if !arguments.is_string() {
                return Err(ApiError::new(400, format!("Invalid type for 'messages[{position}].tool_calls.function.arguments': expected a string, but got an object instead."))
                    .param("messages.tool_calls.function.arguments")
                    .code("invalid_type"));
            }
            unanswered.push(id.to_owned());
        }
        let text = match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => texts.extend(part.get("text").and_then(Value::as_str)),
                        Some("image_url") if role != "user" => {
                            return Err(ApiError::new(400, format!("Image URLs are only allowed for messages with role 'user', but this message with role '{role}' contains an image URL."))
                                .param("messages")
                                .code("invalid_value"));
                        }
                        Some("image_url") => {
                            let url = part.get("image_url").and_then(|i| i.get("url")).and_then(Value::as_str);
                            images.push(image(flavour, url.unwrap_or(""))?);
                        }
                        _ => {
                            return Err(ApiError::new(
                                400,
                                "Invalid 'messages.content': each part needs a type of 'text' or 'image_url'.",
                            )
                            .param("messages.content")
                            .code("invalid_value"));
                        }
                    }
                }
                texts.join(" ")
            }
            // Only an assistant message that calls tools may say nothing.
            None | Some(Value::Null) if role == "assistant" && !calls.is_empty() => String::new(),
            _ => {
                return Err(ApiError::new(
                    400,
                    "Invalid type for 'messages.content': expected one of a string or an array of objects.",
                )
                .param("messages.content")
                .code("invalid_type"));
            }
        };
        prompt_words += text.split_whitespace().count();
        let tool_result_last = role == "tool" && position + 1 == messages.len();
        // An echo after tool results repeats the last result.
        if role == "user" || tool_result_last {
            last_user = text;
        }
    }
    let tool_result_last = messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("tool");
    if !unanswered.is_empty() {
        return Err(unanswered_calls(messages.len() - 1, &unanswered));
    }
    let forced_function = check_tools(flavour, request)?;
    check_response_format(flavour, request, messages)?;
    check_reasoning(flavour, request)?;
    check_supported(shared, flavour, request, &model, !images.is_empty())?;
    if shared.harness.recording() {
        shared.images.lock().unwrap().extend(images);
    }

    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = request.get("stream_options").filter(|v| !v.is_null());
    if stream_options.is_some() {
        if shared.reject_stream_options.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                400,
                "[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are not permitted', 'input': {'include_usage': True}}]",
            )
            .param("stream_options"));
        }
        if !stream && flavour != Flavour::Ollama {
            return Err(ApiError::new(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
                .param("stream_options"));
        }
    }
    let include_usage = stream_options.and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);

    if flavour.is_openai() && request.get("top_k").is_some() {
        return Err(ApiError::new(400, "Unrecognized request argument supplied: top_k"));
    }
    if shared.require_max_completion_tokens.load(Ordering::Relaxed) && request.get("max_tokens").is_some() {
        return Err(ApiError::new(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        )
        .param("max_tokens")
        .code("unsupported_parameter"));
    }
    match request.get("stop") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if flavour.is_openai() && stops.len() > 4 {
                return Err(ApiError::new(400, format!("Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {} instead.", stops.len()))
                    .param("stop")
                    .code("array_above_max_length"));
            }
        }
        Some(_) => return Err(ApiError::new(400, "Invalid type for 'stop'.").param("stop").code("invalid_type")),
    }
    for field in ["temperature", "top_p"] {
        if let Some(value) = request.get(field).filter(|v| !v.is_null())
            && !value.is_number()
        {
            return Err(
                ApiError::new(400, format!("Invalid type for '{field}': expected a decimal.")).code("invalid_type")
            );
        }
    }

    // Ollama ignores max_completion_tokens; the others take either (the newer one first).
    let limit_fields: &[&str] =
        if flavour == Flavour::Ollama { &["max_tokens"] } else { &["max_completion_tokens", "max_tokens"] };
    let mut limit = usize::MAX;
    for field in limit_fields {
        match request.get(*field) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
                limit = usize::try_from(n.as_u64().unwrap()).unwrap_or(usize::MAX);
                break;
            }
            Some(_) => {
                return Err(ApiError::new(400, format!("Invalid '{field}': expected a positive integer."))
                    .code("invalid_value"));
            }
        }
    }

    Ok(ChatParams {
        model,
        stream,
        include_usage,
        limit,
        prompt_words: prompt_words.max(1),
        last_user,
        forced_function,
        tool_result_last,
    })
}

/// OpenAI's 400 for tool calls the next messages do not answer.
fn unanswered_calls(position: usize, ids: &[String]) -> ApiError {
    ApiError::new(
        400,
        format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {} (messages.[{position}])",
            ids.join(", ")
        ),
    )
    .param("messages")
}

/// An `image_url`'s URL: a `data:` URL of an image type the server decodes, with valid base64,
/// or (where the server fetches them) an `http(s)` URL.
fn image(flavour: Flavour, url: &str) -> Result<FakeImage, ApiError> {
    use base64::Engine as _;
    let invalid = |why: &str| {
        ApiError::new(
            400,
            format!(
                "Invalid image_url: {why}. You uploaded an unsupported image. Please make sure your image is valid."
            ),
        )
        .param("messages.content.image_url")
        .code("invalid_image_format")
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((mime_type, data)) = rest.split_once(";base64,") else { return Err(invalid("not a base64 data URL")) };
        if !image_type_allowed(flavour, mime_type) {
            return Err(invalid(&format!("{mime_type} is not a supported image type")));
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| invalid("bad base64"))?;
        return Ok(FakeImage::Data { mime_type: mime_type.to_owned(), bytes });
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid("expected a data URL or an http(s) URL"));
    }
    // Ollama's /v1 takes images as data URLs only.
    if flavour == Flavour::Ollama {
        return Err(ApiError::new(400, "invalid image input").param("messages.content.image_url"));
    }
    Ok(FakeImage::Url(url.to_owned()))
}

/// `tools` and `tool_choice` as OpenAI checks them; returns whether the choice names a function.
fn check_tools(flavour: Flavour, request: &Value) -> Result<bool, ApiError> {
    let tools = match request.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools.clone(),
        Some(_) => return Err(ApiError::new(400, "Invalid type for 'tools': expected an array.").param("tools")),
    };
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or("");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(
                ApiError::new(400, format!("Invalid value for 'tools[{i}].type': expected 'function'.")).param("tools")
            );
        }
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ApiError::new(400, format!("Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."))
                .param("tools.function.name")
                .code("invalid_value"));
        }
        if let Some(parameters) = function.and_then(|f| f.get("parameters"))
            && !parameters.is_object()
        {
            return Err(ApiError::new(
                400,
                format!("Invalid type for 'tools[{i}].function.parameters': expected an object."),
            )
            .param("tools.function.parameters"));
        }
        names.push(name.to_owned());
    }
    let choice = request.get("tool_choice").filter(|c| !c.is_null());
    if choice.is_some() && tools.is_empty() && flavour.is_openai() {
        return Err(ApiError::new(
            400,
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
        .param("tool_choice"));
    }
    match choice {
        None => Ok(false),
        Some(Value::String(mode)) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(false),
        Some(choice @ Value::Object(_)) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or("");
            if !names.iter().any(|known| known == name) {
                return Err(ApiError::new(
                    400,
                    format!("Invalid value for 'tool_choice': function '{name}' is not one of the 'tools'."),
                )
                .param("tool_choice")
                .code("invalid_value"));
            }
            Ok(true)
        }
        Some(_) => Err(ApiError::new(
            400,
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a named function.",
        )
        .param("tool_choice")
        .code("invalid_value")),
    }
}

/// `response_format` as OpenAI checks it (a `json_object` answer needs the word "json" in the
/// messages there).
fn check_response_format(flavour: Flavour, request: &Value, messages: &[Value]) -> Result<(), ApiError> {
    let Some(format) = request.get("response_format").filter(|f| !f.is_null()) else { return Ok(()) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some("json_object") => {
            let says_json = messages.iter().any(|m| m.to_string().to_ascii_lowercase().contains("json"));
            if flavour.is_openai() && !says_json {
                return Err(ApiError::new(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.")
                    .param("messages"));
            }
            Ok(())
        }
        Some("json_schema") => {
            let schema = format.get("json_schema");
            let name = schema.and_then(|s| s.get("name")).and_then(Value::as_str).unwrap_or("");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(ApiError::new(400, "Invalid 'response_format.json_schema.name': expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.")
                    .param("response_format.json_schema.name"));
            }
            if !schema.and_then(|s| s.get("schema")).is_some_and(Value::is_object) {
                return Err(ApiError::new(
                    400,
                    "Invalid type for 'response_format.json_schema.schema': expected an object.",
                )
                .param("response_format.json_schema.schema"));
            }
            Ok(())
        }
        _ => Err(ApiError::new(
            400,
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
        )
        .param("response_format.type")),
    }
}

/// `reasoning_effort` and `chat_template_kwargs` as the servers check them.
fn check_reasoning(flavour: Flavour, request: &Value) -> Result<(), ApiError> {
    if let Some(effort) = request.get("reasoning_effort").filter(|e| !e.is_null())
        && !matches!(effort.as_str(), Some("none" | "minimal" | "low" | "medium" | "high"))
    {
        return Err(ApiError::new(400, format!("Invalid value for 'reasoning_effort': {effort}. Supported values are: 'none', 'minimal', 'low', 'medium', and 'high'."))
            .param("reasoning_effort")
            .code("invalid_value"));
    }
    if flavour.is_openai() && request.get("chat_template_kwargs").is_some() {
        return Err(ApiError::new(400, "Unrecognized request argument supplied: chat_template_kwargs"));
    }
    Ok(())
}

/// [`Fake::set_unsupported`]'s refusals, in each server's words.
fn check_supported(
    shared: &OpenAi,
    flavour: Flavour,
    request: &Value,
    model: &str,
    images: bool,
) -> Result<(), ApiError> {
    let unsupported = shared.unsupported.read().unwrap();
    let lacks = |capability: &str| unsupported.iter().any(|c| c == capability);
    let has = |field: &str| request.get(field).is_some_and(|v| !v.is_null());
    if lacks("tools") && has("tools") {
        let message = match flavour {
            Flavour::Ollama => format!("registry.ollama.ai/library/{model} does not support tools"),
            Flavour::Vllm => "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set".to_owned(),
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => "tools param requires --jinja flag".to_owned(),
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => "tools is not supported in this model. For a list of supported models, refer to https://platform.openai.com/docs/guides/function-calling#models-supporting-function-calling.".to_owned(),
        };
        return Err(ApiError::new(400, message));
    }
    if lacks("vision") && images {
        let message = match flavour {
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
                    .to_owned()
            }
            Flavour::Ollama => format!("registry.ollama.ai/library/{model} does not support image input"),
            _ => "Invalid content type. image_url is only supported by certain models.".to_owned(),
        };
        return Err(ApiError::new(400, message).param("messages"));
    }
    if lacks("thinking") && has("reasoning_effort") {
        let message = match flavour {
            Flavour::Ollama => format!("\"{model}\" does not support thinking"),
            _ => "Unsupported parameter: 'reasoning_effort' is not supported with this model.".to_owned(),
        };
        return Err(ApiError::new(400, message).param("reasoning_effort").code("unsupported_parameter"));
    }
    let schema =
        request.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) == Some("json_schema");
    if lacks("json_schema") && schema {
        return Err(ApiError::new(
            400,
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
        )
        .param("response_format"));
    }
    Ok(())
}

struct Timing {
    received: Instant,
    responding: Instant,
    prompt_words: usize,
    /// [`Fake::set_cached_prompt_tokens`], at most the prompt.
    cached_tokens: usize,
}

impl Timing {
    /// Counts as OpenAI does: the cached and reasoning tokens are part of the totals. OpenAI
    /// details both; llama.cpp only the cached tokens; vLLM and Ollama neither.
    fn usage(&self, flavour: Flavour, completion_tokens: usize, reasoning_tokens: usize) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.prompt_words,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_words + completion_tokens,
        });
        match flavour {
            Flavour::OpenAi | Flavour::NoUsage | Flavour::DeepSeek => {
                usage["prompt_tokens_details"] = json!({"cached_tokens": self.cached_tokens, "audio_tokens": 0});
                usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning_tokens, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0});
            }
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                usage["prompt_tokens_details"] = json!({"cached_tokens": self.cached_tokens});
            }
            Flavour::Vllm => usage["prompt_tokens_details"] = Value::Null,
            Flavour::Ollama => {}
        }
        usage
    }

    /// llama.cpp's `timings`: the header wait stands in for prompt processing.
    fn llama_cpp_timings(&self, predicted: usize) -> Value {
        let prompt_ms = (self.responding - self.received).as_secs_f64() * 1000.0;
        let predicted_ms = self.responding.elapsed().as_secs_f64() * 1000.0;
        let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 };
        json!({
            "cache_n": 0,
            "prompt_n": self.prompt_words,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": if self.prompt_words > 0 { prompt_ms / self.prompt_words as f64 } else { 0.0 },
            "prompt_per_second": per_second(self.prompt_words, prompt_ms),
            "predicted_n": predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": if predicted > 0 { predicted_ms / predicted as f64 } else { 0.0 },
            "predicted_per_second": per_second(predicted, predicted_ms),
        })
    }
}

/// Writes the events of one response in the flavour's shape.
struct ChunkWriter {
    /// `{"id":...,"object":"chat.completion.chunk","created":...,"model":...,` and the
    /// flavour's fingerprint fields: the same for every chunk of a response.
    prefix: Vec<u8>,
    flavour: Flavour,
    include_usage: bool,
    comments: bool,
    /// For the ids of tool calls.
    shared: Arc<OpenAi>,
}

/// How a reply's `finish_reason` is worded.
#[derive(Clone, Copy)]
struct FinishWords {
    calls_tools: bool,
    forced_function: bool,
    flavour: Flavour,
}

impl FinishWords {
    /// `tool_calls` after calls, except that OpenAI says `stop` when `tool_choice` named the
    /// function.
    fn reason(self, finish: Finish) -> &'static str {
        let forced_on_openai = self.forced_function && self.flavour.is_openai();
        match finish {
            Finish::Stop if self.calls_tools && !forced_on_openai => "tool_calls",
            finish => finish.reason(),
        }
    }
}

fn chunk_prefix(shared: &OpenAi, flavour: Flavour, model: &str) -> Vec<u8> {
    let id = shared.new_id("chatcmpl-", 29);
    let mut prefix = Vec::with_capacity(160);
    let _ =
        write!(prefix, "{{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":", unix_now());
    write_json_string(&mut prefix, model);
    prefix.push(b',');
    if flavour.is_openai() {
        prefix.extend_from_slice(b"\"service_tier\":\"default\",");
    }
    if let Some(fingerprint) = flavour.system_fingerprint() {
        let _ = write!(prefix, "\"system_fingerprint\":\"{fingerprint}\",");
    }
    prefix
}

impl ChunkWriter {
    /// One `data: {chunk}\n\n` event. `delta` is the delta object's JSON; `extra` is appended
    /// inside the chunk object (`,"usage":{...}`).
    fn event(&self, delta: &[u8], finish_reason: Option<&str>, extra: &[u8]) -> Bytes {
        let mut event = Vec::with_capacity(self.prefix.len() + delta.len() + extra.len() + 120);
        if self.comments {
            event.extend_from_slice(b": ping\n\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&self.prefix);
        event.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":");
        event.extend_from_slice(delta);
        event.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(reason) => write_json_string(&mut event, reason),
            None => event.extend_from_slice(b"null"),
        }
        event.extend_from_slice(b"}]");
        // With include_usage, OpenAI puts `"usage":null` on every chunk but the usage chunk.
        if self.include_usage && self.flavour.usage_mode() == UsageMode::SeparateChunk && extra.is_empty() {
            event.extend_from_slice(b",\"usage\":null");
        }
        event.extend_from_slice(extra);
        if self.flavour.is_openai() {
            // OpenAI pads chunks with a random `obfuscation` string; clients must ignore it.
            event.extend_from_slice(b",\"obfuscation\":\"x9Kq\"");
        }
        event.extend_from_slice(b"}\n\n");
        Bytes::from(event)
    }

    /// The first chunk: the role only.
    fn role(&self) -> Bytes {
        let delta: &[u8] = if self.flavour.is_llama_cpp() {
            b"{\"role\":\"assistant\",\"content\":null}"
        } else if self.flavour.is_openai() {
            b"{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}"
        } else {
            b"{\"role\":\"assistant\",\"content\":\"\"}"
        };
        self.event(delta, None, b"")
    }

    fn reasoning(&self, field: &str) -> Bytes {
        let mut delta = Vec::new();
        let _ = write!(delta, "{{\"content\":null,\"{field}\":");
        write_json_string(&mut delta, REASONING_TEXT);
        delta.push(b'}');
        self.event(&delta, None, b"")
    }

    /// A [`Piece::Thinking`], in the flavour's field (one it has).
    fn thinking(&self, field: &str, text: &str) -> Bytes {
        let mut delta = Vec::with_capacity(text.len() + 40);
        let _ = write!(delta, "{{\"content\":null,\"{field}\":");
        write_json_string(&mut delta, text);
        delta.push(b'}');
        self.event(&delta, None, b"")
    }

    /// A [`Piece::ToolCalls`], as the flavour streams it: OpenAI and llama.cpp one call after
    /// the other, the first piece with id, type, name and empty arguments, then the fragments;
    /// vLLM the same without `arguments` on the first piece, and the next call's first piece in
    /// the chunk of the previous call's last fragment; Ollama each call whole, in a chunk of its
    /// own.
    fn tool_calls(&self, calls: &[FakeToolCall], out: &mut VecDeque<Bytes>) {
        let piece = |index: usize, id: Option<&str>, name: Option<&str>, arguments: Option<&str>| {
            let mut function = serde_json::Map::new();
            if let Some(name) = name {
                function.insert("name".into(), json!(name));
            }
            if let Some(arguments) = arguments {
                function.insert("arguments".into(), json!(arguments));
            }
            let mut piece = json!({"index": index});
            if let Some(id) = id {
                piece["id"] = json!(id);
                piece["type"] = json!("function");
            }
            piece["function"] = Value::Object(function);
            piece
        };
        let event = |pieces: Vec<Value>| {
            let delta = json!({"tool_calls": pieces});
            self.event(&serde_json::to_vec(&delta).expect("serializing a JSON value cannot fail"), None, b"")
        };
        let flavour = self.flavour;
        let mut carried: Vec<Value> = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            let id = call.id.clone().unwrap_or_else(|| flavour.tool_call_id(&self.shared));
            match flavour {
                Flavour::Ollama => {
                    out.push_back(event(vec![piece(index, Some(&id), Some(&call.name), Some(&call.arguments))]));
                }
                Flavour::Vllm => {
                    carried.push(piece(index, Some(&id), Some(&call.name), None));
                    out.push_back(event(std::mem::take(&mut carried)));
                    let mut fragments: Vec<&str> = call.fragments().into_iter().filter(|f| !f.is_empty()).collect();
                    // The last fragment shares a chunk with the next call's first piece.
                    let held = if index + 1 < calls.len() { fragments.pop() } else { None };
                    for fragment in fragments {
                        out.push_back(event(vec![piece(index, None, None, Some(fragment))]));
                    }
                    carried.extend(held.map(|fragment| piece(index, None, None, Some(fragment))));
                }
                _ => {
                    out.push_back(event(vec![piece(index, Some(&id), Some(&call.name), Some(""))]));
                    for fragment in call.fragments().into_iter().filter(|f| !f.is_empty()) {
                        out.push_back(event(vec![piece(index, None, None, Some(fragment))]));
                    }
                }
            }
        }
    }

    fn content(&self, text: &str) -> Bytes {
        let mut delta = Vec::with_capacity(text.len() + 40);
        if self.flavour == Flavour::Ollama {
            // Ollama repeats the role on every chunk.
            delta.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
        } else {
            delta.extend_from_slice(b"{\"content\":");
        }
        write_json_string(&mut delta, text);
        delta.push(b'}');
        self.event(&delta, None, b"")
    }

    /// The events that end a complete reply: the `finish_reason` chunk, the usage chunk and
    /// `[DONE]`, as the flavour sends them.
    fn ending(&self, finish_reason: &str, timing: &Timing, sent: usize, reasoning: usize, out: &mut VecDeque<Bytes>) {
        let usage = timing.usage(self.flavour, sent, reasoning);
        match self.flavour.usage_mode() {
            UsageMode::OnFinishChunk => {
                let mut extra = Vec::new();
                extra.extend_from_slice(b",\"usage\":");
                serde_json::to_writer(&mut extra, &usage).expect("serializing into memory cannot fail");
                extra.extend_from_slice(b",\"timings\":");
                serde_json::to_writer(&mut extra, &timing.llama_cpp_timings(sent))
                    .expect("serializing into memory cannot fail");
                out.push_back(self.event(b"{\"content\":\"\"}", Some(finish_reason), &extra));
            }
            UsageMode::SeparateChunk => {
                out.push_back(self.event(b"{}", Some(finish_reason), b""));
                if self.include_usage {
                    out.push_back(self.usage_chunk(&usage));
                }
            }
            UsageMode::Never => out.push_back(self.event(b"{}", Some(finish_reason), b"")),
        }
        if self.flavour.sends_done() {
            out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    }

    fn usage_chunk(&self, usage: &Value) -> Bytes {
        let mut event = Vec::with_capacity(self.prefix.len() + 300);
        if self.comments {
            event.extend_from_slice(b": ping\n\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&self.prefix);
        event.extend_from_slice(b"\"choices\":[],\"usage\":");
        serde_json::to_writer(&mut event, usage).expect("serializing into memory cannot fail");
        if self.flavour.is_openai() {
            event.extend_from_slice(b",\"obfuscation\":\"Pq3\"");
        }
        event.extend_from_slice(b"}\n\n");
        Bytes::from(event)
    }

    /// A failure after streaming began, as the flavour reports it.
    fn error(&self, message: &str, out: &mut VecDeque<Bytes>) {
        let object = ApiError::new(500, message).object(self.flavour);
        let json = serde_json::to_string(&object).expect("serializing a JSON value cannot fail");
        match self.flavour {
            Flavour::LlamaCppOldErrors => out.push_back(Bytes::from(format!("error: {json}\n\n"))),
            _ => out.push_back(Bytes::from(format!("data: {}\n\n", json!({ "error": object })))),
        }
        if self.flavour == Flavour::Vllm {
            out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    }
}

/// The response body of a streamed chat.
struct SseBody {
    generation: Generation,
    guard: StreamGuard,
    chunks: ChunkWriter,
    timing: Timing,
    /// Events ready to go out, ahead of the generation.
    queue: VecDeque<Bytes>,
    started: bool,
    finished: bool,
    finish: FinishWords,
    /// Whether the flavour's canned reasoning goes first (not for a [`Reply::Turn`], which
    /// scripts its own).
    auto_reasoning: bool,
    /// [`Piece::Thinking`]s sent, counted as reasoning tokens.
    thinking_pieces: usize,
}

impl Pieces for SseBody {
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(event) = self.queue.pop_front() {
            if self.queue.is_empty() && self.finished {
                self.guard.finish(true);
            }
            flush_point().await;
            return Some(Ok(event));
        }
        if self.finished {
            return None;
        }
        if self.guard.shutting_down() {
            self.finished = true;
            self.guard.finish(false);
            return Some(Err(io::Error::other("fake OpenAI server shut down")));
        }
        if !self.started {
            self.started = true;
            if let Some(field) = self.chunks.flavour.reasoning_field().filter(|_| self.auto_reasoning) {
                self.queue.push_back(self.chunks.reasoning(field));
            }
            return Some(Ok(self.chunks.role()));
        }
        match self.generation.next().await {
            Step::Piece(Piece::Thinking(text)) => {
                self.thinking_pieces += 1;
                Some(Ok(self.chunks.thinking(self.chunks.flavour.thinking_field(), text)))
            }
            // No signatures in this protocol.
            Step::Piece(Piece::ThinkingSignature(_)) => Some(Ok(Bytes::from_static(b": signature\n\n"))),
            Step::Piece(Piece::ToolCalls(calls)) => {
                self.chunks.tool_calls(calls, &mut self.queue);
                self.queue.pop_front().map(Ok)
            }
            Step::Piece(Piece::Text(text)) => Some(Ok(self.chunks.content(text))),
            Step::Content(text) => Some(Ok(self.chunks.content(text))),
            Step::Done(finish) => {
                self.finished = true;
                let sent = self.generation.sent();
                let reason = self.finish.reason(finish);
                self.chunks.ending(reason, &self.timing, sent, self.thinking_pieces, &mut self.queue);
                self.next_queued()
            }
            Step::Error(message) => {
                self.finished = true;
                let message = message.to_owned();
                self.chunks.error(&message, &mut self.queue);
                self.next_queued()
            }
            Step::EndWithoutDone => {
                self.finished = true;
                self.guard.finish(true);
                None
            }
            Step::Abort => {
                self.finished = true;
                self.guard.finish(false);
                Some(Err(io::Error::other("fake OpenAI server dropped the connection")))
            }
        }
    }
}

impl SseBody {
    fn next_queued(&mut self) -> Option<io::Result<Bytes>> {
        let event = self.queue.pop_front();
        if self.queue.is_empty() {
            self.guard.finish(true);
        }
        event.map(Ok)
    }
}

fn stream_response(body: SseBody) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, SSE_CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(streamed_body(body))
        .expect("static response parts are valid")
}

/// A non-streamed request: plays the whole script, then answers with one `chat.completion`.
async fn whole_response(
    shared: &OpenAi,
    flavour: Flavour,
    mut generation: Generation,
    mut guard: StreamGuard,
    model: &str,
    timing: Timing,
    finish: FinishWords,
) -> Response {
    let mut content = String::new();
    let mut thinking = String::new();
    let mut thinking_pieces = 0;
    let mut calls = Vec::new();
    let finish_reason = loop {
        match generation.next().await {
            Step::Piece(Piece::Thinking(text)) => {
                thinking.push_str(text);
                thinking_pieces += 1;
            }
            Step::Piece(Piece::ThinkingSignature(_)) => {}
            Step::Piece(Piece::ToolCalls(made)) => {
                for call in made {
                    let id = call.id.clone().unwrap_or_else(|| flavour.tool_call_id(shared));
                    calls.push(json!({"id": id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}));
                }
            }
            Step::Piece(Piece::Text(text)) => content.push_str(text),
            Step::Content(text) => content.push_str(text),
            Step::Done(done) => break finish.reason(done),
            Step::Error(message) => {
                guard.finish(true);
                return ApiError::new(500, message).response(flavour);
            }
            // A server that stops early without streaming can only fail the request.
            Step::EndWithoutDone => {
                guard.finish(true);
                return ApiError::new(500, "The server had an error while processing your request.").response(flavour);
            }
            Step::Abort => {
                guard.finish(false);
                return broken_response(JSON_CONTENT_TYPE, "fake OpenAI server dropped the connection");
            }
        }
    };
    guard.finish(true);
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        if content.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(calls);
    }
    if !thinking.is_empty() {
        message[flavour.thinking_field()] = json!(thinking);
    }
    if flavour.is_openai() {
        message["refusal"] = Value::Null;
        message["annotations"] = json!([]);
    }
    let mut object = json!({
        "id": shared.new_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": timing.usage(flavour, generation.sent(), thinking_pieces),
    });
    if let Some(fingerprint) = flavour.system_fingerprint() {
        object["system_fingerprint"] = json!(fingerprint);
    }
    if flavour.is_llama_cpp() {
        object["timings"] = timing.llama_cpp_timings(generation.sent());
    }
    json_response(StatusCode::OK, &object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_like_openai_masks_them() {
        assert_eq!(mask_key("sk-abcdefghijklmnop1234"), "sk-ab****1234");
        assert_eq!(mask_key("short"), "sh****");
    }

    #[test]
    fn parameter_sizes_parse() {
        assert_eq!(parameter_count("3.2B"), Some(3_200_000_000));
        assert_eq!(parameter_count("494.03M"), Some(494_030_000));
        assert_eq!(parameter_count("big"), None);
    }

    #[test]
    fn ids_are_unique_and_shaped_like_openais() {
        let shared = <OpenAi as Wire>::new(Harness::new());
        let a = shared.new_id("chatcmpl-", 29);
        let b = shared.new_id("chatcmpl-", 29);
        assert_ne!(a, b);
        assert_eq!(a.len(), "chatcmpl-".len() + 29);
        assert!(a["chatcmpl-".len()..].chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
