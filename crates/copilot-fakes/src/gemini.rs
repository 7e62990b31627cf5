//! A fake of the Google Gemini API (`generativelanguage.googleapis.com/v1beta`):
//! `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, `GET /v1beta/models` (paged) and
//! `GET /v1beta/models/{model}`.
//!
//! It speaks the real wire format, as described in the project's Gemini reference notes:
//! - Chat streams are `text/event-stream`, one `data: <GenerateContentResponse>` per chunk with
//!   CRLF framing (`\r\n\r\n`), flushed one event at a time. There is no `[DONE]`: the chunk that
//!   carries the last text also carries `finishReason` (`STOP`, or `MAX_TOKENS` when
//!   `generationConfig.maxOutputTokens` is reached), then the body ends. Every chunk carries
//!   `usageMetadata` as running totals: `promptTokenCount` = words in all parts of the request,
//!   `candidatesTokenCount` = chunks sent so far (omitted while zero, as proto3 JSON does).
//! - Errors are `google.rpc.Status` bodies, pretty-printed like Google's:
//!   `{"error": {"code", "message", "status", "details"}}`. A 429 carries `google.rpc.RetryInfo`
//!   (`"retryDelay": "7s"`) when a delay is scripted, next to the `Retry-After` header.
//! - Keys ([`Fake::with_api_key`]) are read from `x-goog-api-key` or `?key=`. No key is 403
//!   `PERMISSION_DENIED`; a wrong key is 400 `INVALID_ARGUMENT` with `ErrorInfo.reason:
//!   "API_KEY_INVALID"`, as Google answers. Unlike Google, the message repeats the presented key in
//!   full, so a test can prove that an adapter scrubs it from its errors.
//! - The request is validated the way Google's JSON binding does it where adapters tend to go
//!   wrong: unknown fields (e.g. snake_case `max_tokens`) are a 400 `Unknown name`, roles other than
//!   `user`/`model`, empty `contents`, empty text parts, a seed outside int32, more than five stop
//!   sequences and unknown safety categories or thresholds are 400s too.
//! - Tools, structured output and thinking are checked where Gemini checks them: parts are one
//!   of `text`/`inlineData`/`functionCall`/`functionResponse`/… (unknown fields are 400s), a
//!   `thoughtSignature` must be base64, a turn of `functionCall` parts must follow a user turn and
//!   the user turn after it must hold exactly one `functionResponse` per call ("Please ensure that
//!   the number of function response parts is equal to the number of function call parts…"), a
//!   function response must be an object, declarations need valid names and not both
//!   `parameters` and `parametersJsonSchema`, `allowedFunctionNames` need mode `ANY` and declared
//!   names, `responseJsonSchema` needs `responseMimeType: application/json`, `thinkingConfig`
//!   takes a budget or a level, not both; images (`inlineData`) must be base64 PNG, JPEG, WebP,
//!   HEIC or HEIF. Per model: Gemma refuses tools ("Function calling is not enabled for
//!   models/…") and JSON mode; `thinkingConfig` is refused by Gemma, Gemini 1.x and 2.0
//!   ("Thinking is not supported for this model."), `thinkingLevel` needs a `gemini-3` model, and budget 0 is refused by `-pro` models ("This model
//!   only works in thinking mode"); a `gemini-3` model refuses a history whose steps' first calls
//!   lack their `thoughtSignature` ("Function call is missing a thought_signature"). Bodies are
//!   kept as sent ([`Fake::request_bodies`]) for byte-exact checks.
//! - [`Reply::Turn`] pieces are written as Gemini does: thinking as `{"text", "thought": true}`
//!   parts (only when `thinkingConfig.includeThoughts` is set; they count as
//!   `thoughtsTokenCount` either way), a thinking signature as Gemini's closing
//!   `{"text": "", "thoughtSignature"}` part, and tool calls as whole `functionCall` parts (all
//!   the calls of a piece in one chunk, `args` as the scripted text, left out when empty, `id`
//!   when scripted, `thoughtSignature` beside a call that has one). The finish is `STOP` after
//!   calls too: Gemini has no tool-calls finish. Unary `generateContent` is not served, so there
//!   is no whole-response form.
//! - A blocked prompt ([`Fake::set_block_prompt`]) is HTTP 200 with one event holding
//!   `promptFeedback.blockReason: "SAFETY"` and no candidates.
//! - Unknown paths get Google's front-end HTML 404 page.
//! - Embeddings: `POST /v1beta/models/{model}:batchEmbedContents` (`{"requests": [{"model",
//!   "content": {"parts": [{"text"}]}, "taskType"?, "title"?, "outputDimensionality"?}]}` →
//!   `{"embeddings": [{"values"}]}`) and `:embedContent` (one request, its `model` optional →
//!   `{"embedding": {"values"}}`), each vector [`fake_embedding`] of the parts' text, cut to
//!   `outputDimensionality`; no usage (Gemini reports none). Checked as Gemini does: more than
//!   [`MAX_EMBED_BATCH`] requests ("at most 100 requests can be in one batch"), no requests, a
//!   request `model` other than the path's, empty parts or text, a text that is not a string,
//!   unknown fields, an unknown `taskType` and an `outputDimensionality` that is not positive or
//!   is over the model's length are 400s; a model that cannot embed (a chat model, or none) is
//!   Gemini's 404 "models/… is not found for API version v1beta, or is not supported for
//!   embedContent" (for `batchEmbedContents` too, naming that method). Scripted failures
//!   ([`Fake::fail_next`]), [`Fake::set_busy`], a model's `header_delay` and its
//!   [`Behaviour::HttpError`] apply to embeddings too; bodies are kept
//!   ([`Fake::embed_requests`]), apart from the chat requests. On Vertex AI, `:predict` with
//!   `{"instances": [{"content", "task_type"?}], "parameters": {"outputDimensionality"?,
//!   "autoTruncate"?}}` → `{"predictions": [{"embeddings": {"values", "statistics":
//!   {"token_count", "truncated"}}}]}`, tokens counted as words against the model's
//!   `context_length`: over it, the text is cut (`autoTruncate`, the default) or refused (400);
//!   one instance per call for `gemini-embedding` models, else [`VERTEX_MAX_INSTANCES`]; a chat
//!   model answers [`VERTEX_PREDICT_CHAT_MESSAGE`] (400), an unknown one Vertex's 404. The Gemini
//!   embedding models after gemini-embedding-001 (`gemini-embedding-*` otherwise, or a model with
//!   the [`VERTEX_EMBED_CONTENT_CAPABILITY`]) answer `:predict` with Vertex's 400
//!   FAILED_PRECONDITION [`VERTEX_PRECONDITION_MESSAGE`] and embed through `:embedContent`: one
//!   input, `{"content": {"parts": [{"text"}]}, "embedContentConfig": {"taskType"?, "title"?,
//!   "outputDimensionality"?, "autoTruncate"?}}` (the settings also read at the top) →
//!   `{"embedding": {"values"}, "usageMetadata": {"promptTokenCount"}, "truncated"?}`, checked as
//!   `:predict` is (an over-long input without `autoTruncate` is 400, unknown fields 400); any
//!   other model there is 400 "Publisher Model `…` is not supported in the embedContent API.", an
//!   unknown one Vertex's 404. Bodies are kept with the other embedding requests.
//! - Token counts: `POST /v1beta/models/{model}:countTokens` with `{"contents"}` (the turns alone)
//!   or `{"generateContentRequest": {"model", "contents", "systemInstruction"?, "tools"?, …}}`,
//!   never both (400), the inner `model` required and equal to the path's (400), the conversation
//!   checked as a chat's; on Vertex AI the same fields flat (`{"contents", "systemInstruction"?,
//!   "tools"?, "generationConfig"?}`, unknown names 400). The answer is `{"totalTokens",
//!   "promptTokensDetails"}` (Vertex adds `totalBillableCharacters`), the count
//!   [`fake_token_count`] of the text words, the turns and the tools, so a count of the bare
//!   `contents` leaves the system instruction and the tools out, as Gemini's does. An unknown or
//!   embedding model is the 404 of chat ("… or is not supported for countTokens"; Vertex's
//!   "Publisher Model … was not found"). Scripted failures, [`Fake::set_busy`] and
//!   [`Behaviour::HttpError`] apply; bodies are kept ([`Fake::count_requests`]).
//!
//! [`Behaviour`]s map onto Gemini like this:
//! - `ErrorAfter`: `tokens` chunks, then the error as bare multi-line JSON (no `data:` prefix) —
//!   the form Google uses once a stream has started — `{"error": {"code": 500, "message",
//!   "status": "INTERNAL"}}`, then a clean end of body.
//! - `EndWithoutDone`: `tokens` chunks (none with a `finishReason`), then a clean end of body.
//! - `DropConnectionAfter`: `tokens` chunks, then the connection is aborted.
//! - `HttpError`: that status with a Google error body (the status name matching the code).
//!
//! Vertex AI mode ([`Fake::require_vertex_auth`]) serves the same models and behaviours on
//! Vertex's paths (`/v1beta1/projects/{p}/locations/{l}/publishers/google/models/{m}:…`), with
//! bearer tokens from a [`FakeGoogleAuth`] instead of keys, and Vertex's errors: 401
//! `UNAUTHENTICATED`, 403 `PERMISSION_DENIED` for another project, and 404 "Publisher Model `…`
//! was not found".
//!
//! Deviation: only `alt=sse` streaming is served. Without `alt=sse` the real API would stream a
//! JSON array; the fake answers 400 saying so. Unary `generateContent` is not served either.

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::fake::{Fake, KeyedWire, Wire};
use crate::format::{form_value, json_kind, write_json_string};
use crate::google::{FakeGoogleAuth, IssuedTokens, TokenCheck};
use crate::harness::{FailNext, Harness, Models, Pieces, StreamGuard, status_code, streamed_body};
pub use crate::script::{Behaviour, FakeModel, Reply};
use crate::script::{Finish, Generation, Piece, Step, fake_embedding, fake_token_count};

/// The message of the 503 that [`Fake::set_busy`] turns on (Google's wording).
pub const OVERLOADED_MESSAGE: &str = "The model is overloaded. Please try again later.";

/// The message of a scripted 429 (Google's wording).
pub const QUOTA_MESSAGE: &str = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.";

const INTERNAL_MESSAGE: &str = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting";
const MISSING_KEY_MESSAGE: &str = "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";
const INVALID_KEY_MESSAGE: &str = "API key not valid. Please pass a valid API key.";

const JSON_CONTENT_TYPE: &str = "application/json; charset=UTF-8";
const SSE_CONTENT_TYPE: &str = "text/event-stream";
const HTML_CONTENT_TYPE: &str = "text/html; charset=UTF-8";

/// `models.list` page sizes: the default, and the most one page holds.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// What Gemini accepts in a `GenerateContentRequest` (both JSON spellings are accepted by Google).
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "tools",
    "toolConfig",
    "tool_config",
    "cachedContent",
    "cached_content",
];

const GENERATION_CONFIG_FIELDS: &[&str] = &[
    "temperature",
    "topP",
    "top_p",
    "topK",
    "top_k",
    "maxOutputTokens",
    "max_output_tokens",
    "stopSequences",
    "stop_sequences",
    "candidateCount",
    "candidate_count",
    "seed",
    "presencePenalty",
    "presence_penalty",
    "frequencyPenalty",
    "frequency_penalty",
    "responseMimeType",
    "response_mime_type",
    "responseSchema",
    "response_schema",
    "responseJsonSchema",
    "response_json_schema",
    "responseLogprobs",
    "response_logprobs",
    "logprobs",
    "thinkingConfig",
    "thinking_config",
    "responseModalities",
    "response_modalities",
];

const HARM_CATEGORIES: &[&str] = &[
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_CIVIC_INTEGRITY",
];

const THRESHOLDS: &[&str] = &[
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
    "BLOCK_LOW_AND_ABOVE",
    "BLOCK_MEDIUM_AND_ABOVE",
    "BLOCK_ONLY_HIGH",
    "BLOCK_NONE",
    "OFF",
];

/// A running fake Gemini API: [`Fake`] over Gemini's wire format.
pub type FakeGemini = Fake<Gemini>;

impl Fake<Gemini> {
    /// Serves Vertex AI's Gemini paths from now on, for `project`:
    /// `POST /v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:streamGenerateContent?alt=sse`
    /// (the same bodies and streams as the Gemini API) and `GET
    /// /v1beta1/publishers/google/models/{model}` (a publisher model). Each request needs
    /// `Authorization: Bearer <token>` with a current token `auth` issued: none is 401
    /// `UNAUTHENTICATED` (`CREDENTIALS_MISSING`), an unknown, revoked or expired one 401 too
    /// (`ACCESS_TOKEN_TYPE_UNSUPPORTED` / `ACCESS_TOKEN_EXPIRED`); another project in the path is
    /// 403 `PERMISSION_DENIED`. The location is not checked. Without this, those paths are 404s.
    pub fn require_vertex_auth(&self, auth: &FakeGoogleAuth, project: &str) {
        *self.wire.vertex.write().unwrap() = Some(VertexAuth { tokens: auth.issued(), project: project.to_owned() });
    }

    /// [`require_vertex_auth`](Self::require_vertex_auth), builder style.
    pub fn with_vertex_auth(self, auth: &FakeGoogleAuth, project: &str) -> Self {
        self.require_vertex_auth(auth, project);
        self
    }

    /// Adds a model, replacing one of the same name (`gemini-x` and `models/gemini-x` are the
    /// same). A model whose capabilities include `"embedding"` is listed with `embedContent`
    /// only, and refuses chat with a 404 like Google's embedding models; one with `"thinking"` is
    /// listed with `"thinking": true`. Requests in progress keep the script they started with.
    pub fn add_model(&self, model: FakeModel) {
        let mut model = model;
        model.name = model_id(&model.name).to_owned();
        self.wire.models.add(model);
    }

    /// Removes a model; returns whether it was there.
    pub fn remove_model(&self, name: &str) -> bool {
        self.wire.models.remove(model_id(name))
    }

    /// While set, every chat is refused as a blocked prompt: HTTP 200 and one event with
    /// `promptFeedback.blockReason: "SAFETY"`, prompt usage and no candidates.
    pub fn set_block_prompt(&self, block: bool) {
        self.wire.block_prompt.store(block, Ordering::Relaxed);
    }

    /// Caps `models.list` pages at `size` models whatever `pageSize` asks for (Google may also
    /// return fewer than asked), to exercise pagination with few models. `0` removes the cap.
    pub fn set_page_size_cap(&self, size: usize) {
        self.wire.page_size_cap.store(size, Ordering::Relaxed);
    }

    /// The path and query of every chat request received, in order.
    pub fn request_uris(&self) -> Vec<String> {
        self.wire.request_uris.lock().unwrap().clone()
    }

    /// The body of every chat request received, in order, exactly as sent (where
    /// [`chat_requests`](Fake::chat_requests) parses them, and so rewrites their numbers).
    pub fn request_bodies(&self) -> Vec<String> {
        self.wire.request_bodies.lock().unwrap().clone()
    }

    /// The JSON body of every `:batchEmbedContents` and `:embedContent` request received
    /// (including refused ones), in order; they are not among [`chat_requests`](Fake::chat_requests).
    pub fn embed_requests(&self) -> Vec<Value> {
        self.wire.embed_requests.lock().unwrap().clone()
    }

    /// The JSON body of every `:countTokens` request received (including refused ones), on
    /// either API, in order; they are not among [`chat_requests`](Fake::chat_requests).
    pub fn count_requests(&self) -> Vec<Value> {
        self.wire.count_requests.lock().unwrap().clone()
    }
}

/// `models/gemini-x` → `gemini-x`.
fn model_id(name: &str) -> &str {
    name.strip_prefix("models/").unwrap_or(name)
}

/// Gemini's wire format, and the state its handle and request handlers share. A failure scripted
/// with [`Fake::fail_next`] is a Google error body (and, on a 429 with a wait, `RetryInfo` with the
/// same delay); a completed stream is one that sent its chunk with `finishReason`, the blocked
/// prompt's event, or its bare error. A key set with [`Fake::set_api_key`] is read from
/// `x-goog-api-key` or `?key=`. While [`Fake::set_busy`] is on, chat answers 503 `UNAVAILABLE`
/// "The model is overloaded", as Gemini does.
pub struct Gemini {
    models: Models<FakeModel>,
    block_prompt: AtomicBool,
    page_size_cap: AtomicUsize,
    /// Recorded next to the harness's headers and bodies.
    request_uris: Mutex<Vec<String>>,
    /// The chat bodies as sent, for what a parsed `Value` would reformat (numbers).
    request_bodies: Mutex<Vec<String>>,
    /// The JSON bodies of `:batchEmbedContents` / `:embedContent` requests, in order.
    embed_requests: Mutex<Vec<Value>>,
    /// The JSON bodies of `:countTokens` requests, in order.
    count_requests: Mutex<Vec<Value>>,
    harness: Arc<Harness>,
    responses: AtomicU64,
    /// Set by [`Fake::require_vertex_auth`]: the Vertex AI paths are served.
    vertex: RwLock<Option<VertexAuth>>,
}

/// What the Vertex AI paths require: a bearer token the fake auth server issued, and the project.
struct VertexAuth {
    tokens: Arc<IssuedTokens>,
    project: String,
}

impl Wire for Gemini {
    const NAME: &'static str = "Gemini";
    const BASE_PATH: &'static str = "";

    fn new(harness: Arc<Harness>) -> Self {
        Gemini {
            models: Models::new(),
            block_prompt: AtomicBool::new(false),
            page_size_cap: AtomicUsize::new(0),
            request_uris: Mutex::new(Vec::new()),
            request_bodies: Mutex::new(Vec::new()),
            embed_requests: Mutex::new(Vec::new()),
            count_requests: Mutex::new(Vec::new()),
            harness,
            responses: AtomicU64::new(0),
            vertex: RwLock::new(None),
        }
    }

    fn router(shared: Arc<Self>) -> Router {
        Router::new()
            .route("/v1beta/models", get(list_models))
            .route("/v1beta/models/{name}", get(get_model).post(model_method))
            .route(
                "/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{name}",
                post(vertex_model_method),
            )
            .route("/v1beta1/publishers/google/models/{name}", get(vertex_get_model))
            // Google's front end answers unknown paths and wrong methods with an HTML page.
            .fallback(not_found_page)
            .method_not_allowed_fallback(not_found_page)
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(shared)
    }
}

impl KeyedWire for Gemini {}

impl Gemini {
    fn find_model(&self, name: &str) -> Option<Arc<FakeModel>> {
        self.models.find(model_id(name))
    }

    /// `None` when the request may proceed; otherwise Google's refusal.
    fn check_key(&self, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
        let expected = self.harness.api_key()?;
        let presented = match headers.get("x-goog-api-key") {
            Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            None => query_param(uri, "key"),
        };
        match presented {
            None => Some(google_error(StatusCode::FORBIDDEN, MISSING_KEY_MESSAGE, Vec::new())),
            Some(key) if key == expected => None,
            Some(key) => {
                let message = format!("{INVALID_KEY_MESSAGE} (fake Gemini: the key presented was \"{key}\")");
                let details = vec![
                    json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                           "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}),
                    json!({"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                           "message": INVALID_KEY_MESSAGE}),
                ];
                Some(google_error(StatusCode::BAD_REQUEST, &message, details))
            }
        }
    }
}

impl Gemini {
    fn record_count(&self, parsed: &Result<Value, serde_json::Error>) {
        if self.harness.recording()
            && let Ok(value) = parsed
        {
            self.count_requests.lock().unwrap().push(value.clone());
        }
    }

    /// `None` when a Vertex AI request may proceed; otherwise Vertex's refusal (or, with Vertex
    /// mode off, Google's 404 page). `project` is the one in the path, if it has one.
    fn check_vertex(&self, headers: &HeaderMap, project: Option<&str>, resource: &str) -> Option<Response> {
        let vertex = self.vertex.read().unwrap();
        let Some(vertex) = vertex.as_ref() else {
            return Some(not_found_html(resource));
        };
        let bearer =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = bearer else {
            return Some(unauthenticated(VERTEX_MISSING_CREDENTIALS_MESSAGE, "CREDENTIALS_MISSING"));
        };
        match vertex.tokens.check(token) {
            TokenCheck::Valid => {}
            TokenCheck::Expired => {
                return Some(unauthenticated(VERTEX_INVALID_CREDENTIALS_MESSAGE, "ACCESS_TOKEN_EXPIRED"));
            }
            TokenCheck::Unknown => {
                return Some(unauthenticated(VERTEX_INVALID_CREDENTIALS_MESSAGE, "ACCESS_TOKEN_TYPE_UNSUPPORTED"));
            }
        }
        if let Some(project) = project
            && project != vertex.project
        {
            let message = format!(
                "Permission 'aiplatform.endpoints.predict' denied on resource '//aiplatform.googleapis.com/{resource}' (or it may not exist)."
            );
            let details = vec![
                json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                "domain": "aiplatform.googleapis.com",
                "metadata": {"permission": "aiplatform.endpoints.predict", "resource": format!("projects/{project}")}}),
            ];
            return Some(google_error(StatusCode::FORBIDDEN, &message, details));
        }
        None
    }
}

const VERTEX_MISSING_CREDENTIALS_MESSAGE: &str = "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
const VERTEX_INVALID_CREDENTIALS_MESSAGE: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// Vertex's 401: `UNAUTHENTICATED` with an `ErrorInfo` giving the reason.
fn unauthenticated(message: &str, reason: &str) -> Response {
    let details = vec![json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
        "domain": "googleapis.com", "metadata": {"service": "aiplatform.googleapis.com"}})];
    let mut response = google_error(StatusCode::UNAUTHORIZED, message, details);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""));
    response
}

async fn not_found_page(uri: Uri) -> Response {
    not_found_html(uri.path())
}

/// Google's front end's 404 page for `path`.
fn not_found_html(path_text: &str) -> Response {
    let mut path = String::new();
    for c in path_text.chars() {
        match c {
            '<' => path.push_str("&lt;"),
            '>' => path.push_str("&gt;"),
            '&' => path.push_str("&amp;"),
            c => path.push(c),
        }
    }
    let page = format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <meta name=viewport content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n  <title>Error 404 (Not Found)!!1</title>\n  <a href=//www.google.com/><span id=logo aria-label=Google></span></a>\n  <p><b>404.</b> <ins>That’s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not found on this server.  <ins>That’s all we know.</ins>\n"
    );
    let content_type = HeaderValue::from_static(HTML_CONTENT_TYPE);
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, content_type)], page).into_response()
}

// ---------------------------------------------------------------------------------------------
// Models

async fn list_models(State(shared): State<Arc<Gemini>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(refusal) = shared.check_key(&headers, &uri) {
        return refusal;
    }
    let mut page_size = match query_param(&uri, "pageSize").map(|s| s.parse::<i64>()) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if n <= 0 => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) => usize::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        Some(Err(_)) => {
            let value = query_param(&uri, "pageSize").unwrap_or_default();
            let message = format!("Invalid value at 'page_size' (TYPE_INT32), \"{value}\"");
            return google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
        }
    };
    let cap = shared.page_size_cap.load(Ordering::Relaxed);
    if cap > 0 {
        page_size = page_size.min(cap);
    }
    let models = shared.models.read().clone();
    let offset = match query_param(&uri, "pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => match parse_page_token(&token) {
            Some(offset) if offset <= models.len() => offset,
            _ => return google_error(StatusCode::BAD_REQUEST, "Invalid page token.", Vec::new()),
        },
    };
    let end = offset.saturating_add(page_size).min(models.len());
    let mut body = Map::new();
    body.insert("models".into(), Value::Array(models[offset..end].iter().map(|m| model_resource(m)).collect()));
    if end < models.len() {
        body.insert("nextPageToken".into(), Value::String(page_token(end)));
    }
    pretty_json(StatusCode::OK, &Value::Object(body))
}

/// Opaque-looking, and holding characters (`/`, `+`, `=`) a client must escape in a query.
fn page_token(offset: usize) -> String {
    format!("Cg/{offset}+=")
}

fn parse_page_token(token: &str) -> Option<usize> {
    token.strip_prefix("Cg/")?.strip_suffix("+=")?.parse().ok()
}

async fn get_model(
    State(shared): State<Arc<Gemini>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if name.contains(':') {
        return not_found_page(uri).await;
    }
    if let Some(refusal) = shared.check_key(&headers, &uri) {
        return refusal;
    }
    match shared.find_model(&name) {
        Some(model) => pretty_json(StatusCode::OK, &model_resource(&model)),
        None => google_error(
            StatusCode::NOT_FOUND,
            &format!(
                "models/{name} is not found for API version v1beta, or is not supported for get. Call ListModels to see the list of available models and their supported methods."
            ),
            Vec::new(),
        ),
    }
}

/// `GET /v1beta1/publishers/google/models/{model}`: Model Garden's entry for a Google model.
async fn vertex_get_model(
    State(shared): State<Arc<Gemini>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if name.contains(':') {
        return not_found_page(uri).await;
    }
    let resource = format!("publishers/google/models/{name}");
    if let Some(refusal) = shared.check_vertex(&headers, None, &resource) {
        return refusal;
    }
    match shared.find_model(&name) {
        Some(model) => pretty_json(
            StatusCode::OK,
            &json!({
                "name": format!("publishers/google/models/{}", model.name),
                "versionId": "001",
                "openSourceCategory": "PROPRIETARY",
                "launchStage": "GA",
                "versionState": "VERSION_STATE_STABLE",
                "publisherModelTemplate": format!("projects/{{project}}/locations/{{location}}/publishers/google/models/{}@001", model.name),
            }),
        ),
        None => google_error(StatusCode::NOT_FOUND, &format!("Publisher Model `{resource}` not found."), Vec::new()),
    }
}

fn is_embedding(model: &FakeModel) -> bool {
    model.capabilities.iter().any(|c| c == "embedding")
}

/// A `Model` resource as `models.get` and `models.list` describe it.
fn model_resource(model: &FakeModel) -> Value {
    let embedding = is_embedding(model);
    let mut resource = json!({
        "name": format!("models/{}", model.name),
        "version": "001",
        "displayName": display_name(&model.name),
        "description": format!("A fake {} served by copilot-fakes", display_name(&model.name)),
        "inputTokenLimit": model.context_length,
    });
    let fields = resource.as_object_mut().expect("built as an object");
    if embedding {
        fields.insert("outputTokenLimit".into(), json!(1));
        fields.insert("supportedGenerationMethods".into(), json!(["embedContent"]));
    } else {
        fields.insert("outputTokenLimit".into(), json!(65_536));
        fields.insert(
            "supportedGenerationMethods".into(),
            json!(["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]),
        );
        fields.insert("temperature".into(), json!(1));
        fields.insert("topP".into(), json!(0.95));
        fields.insert("topK".into(), json!(64));
        fields.insert("maxTemperature".into(), json!(2));
    }
    if model.capabilities.iter().any(|c| c == "thinking") {
        fields.insert("thinking".into(), json!(true));
    }
    resource
}

/// `gemini-2.0-flash` → `Gemini 2.0 Flash`.
fn display_name(id: &str) -> String {
    let words: Vec<String> = id
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
        })
        .collect();
    words.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Chat

async fn model_method(
    State(shared): State<Arc<Gemini>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body);
    if let Some((model_name, method @ ("batchEmbedContents" | "embedContent"))) = name.rsplit_once(':') {
        if shared.harness.recording()
            && let Ok(value) = &parsed
        {
            shared.embed_requests.lock().unwrap().push(value.clone());
        }
        if let Some(refusal) = shared.check_key(&headers, &uri) {
            return refusal;
        }
        return embed(&shared, model_name, method == "batchEmbedContents", parsed).await;
    }
    if let Some((model_name, "countTokens")) = name.rsplit_once(':') {
        shared.record_count(&parsed);
        if let Some(refusal) = shared.check_key(&headers, &uri) {
            return refusal;
        }
        return count_tokens(&shared, Api::Studio, model_name, parsed).await;
    }
    if shared.harness.recording() {
        shared.harness.record(Some(headers.clone()), parsed.as_ref().ok().cloned());
        shared.request_uris.lock().unwrap().push(uri.path_and_query().map_or_else(String::new, |pq| pq.to_string()));
        shared.request_bodies.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
    }
    let Some((model_name, method)) = name.rsplit_once(':') else {
        return not_found_page(uri).await;
    };
    if let Some(refusal) = shared.check_key(&headers, &uri) {
        return refusal;
    }
    generate(&shared, Api::Studio, model_name, method, &uri, parsed).await
}

/// `POST /v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}`:
/// Vertex AI's Gemini, with the same bodies and streams as the Gemini API.
async fn vertex_model_method(
    State(shared): State<Arc<Gemini>>,
    Path((project, location, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body);
    if let Some((model_name, method @ ("predict" | "embedContent" | "countTokens"))) = name.rsplit_once(':') {
        if method == "countTokens" {
            shared.record_count(&parsed);
        } else if shared.harness.recording()
            && let Ok(value) = &parsed
        {
            shared.embed_requests.lock().unwrap().push(value.clone());
        }
        let resource = format!("projects/{project}/locations/{location}/publishers/google/models/{model_name}");
        if let Some(refusal) = shared.check_vertex(&headers, Some(&project), &resource) {
            return refusal;
        }
        return match method {
            "predict" => vertex_predict(&shared, &resource, model_name, parsed).await,
            "embedContent" => vertex_embed_content(&shared, &resource, model_name, parsed).await,
            _ => count_tokens(&shared, Api::Vertex { resource: &resource }, model_name, parsed).await,
        };
    }
    if shared.harness.recording() {
        shared.harness.record(Some(headers.clone()), parsed.as_ref().ok().cloned());
        shared.request_uris.lock().unwrap().push(uri.path_and_query().map_or_else(String::new, |pq| pq.to_string()));
        shared.request_bodies.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
    }
    let Some((model_name, method)) = name.rsplit_once(':') else {
        return not_found_page(uri).await;
    };
    let resource = format!("projects/{project}/locations/{location}/publishers/google/models/{model_name}");
    if let Some(refusal) = shared.check_vertex(&headers, Some(&project), &resource) {
        return refusal;
    }
    generate(&shared, Api::Vertex { resource: &resource }, model_name, method, &uri, parsed).await
}

/// Which API a generation request came through: what its errors say.
#[derive(Clone, Copy)]
enum Api<'a> {
    Studio,
    /// With the model's full resource name.
    Vertex {
        resource: &'a str,
    },
}

/// A model method (`streamGenerateContent`) once the caller is authenticated.
async fn generate(
    shared: &Arc<Gemini>,
    api: Api<'_>,
    model_name: &str,
    method: &str,
    uri: &Uri,
    parsed: Result<Value, serde_json::Error>,
) -> Response {
    if method != "streamGenerateContent" {
        let message = format!("the fake Gemini serves only streamGenerateContent, not {method}");
        return google_error(StatusCode::NOT_FOUND, &message, Vec::new());
    }
    if query_param(uri, "alt").as_deref() != Some("sse") {
        let message = "the fake Gemini serves only alt=sse streams (without it, Gemini streams a JSON array)";
        return google_error(StatusCode::BAD_REQUEST, message, Vec::new());
    }
    let request = match parsed {
        Ok(request) => request,
        Err(err) => {
            let message = format!("Invalid JSON payload received. {err}");
            return google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
        }
    };
    let params = match chat_params(&request) {
        Ok(params) => params,
        Err(message) => return google_error(StatusCode::BAD_REQUEST, &message, Vec::new()),
    };
    let Some(model) = shared.find_model(model_name).filter(|m| !is_embedding(m)) else {
        let message = match api {
            Api::Studio => format!(
                "models/{model_name} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
            ),
            Api::Vertex { resource } => format!(
                "Publisher Model `{resource}` was not found or your project does not have access to it. Please ensure you are using a valid model version. For more information, see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
            ),
        };
        return google_error(StatusCode::NOT_FOUND, &message, Vec::new());
    };
    let tool_result_last = params.turns.last().is_some_and(|(role, seen)| *role == "user" && seen.others == 0);
    let model = model.answering(tool_result_last);
    if let Err(message) = check_for_model(&params, &model) {
        return google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
    }
    if shared.harness.busy() {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED_MESSAGE, Vec::new());
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure);
    }

    let mut guard = match shared.harness.begin_stream(&model).await {
        Ok(guard) => guard,
        Err((status, message)) => return google_error(status_code(status), message, Vec::new()),
    };

    let response_id = format!("fake-{:012x}", shared.responses.fetch_add(1, Ordering::Relaxed));
    let mut suffix = Vec::with_capacity(model.name.len() + 64);
    suffix.extend_from_slice(b",\"modelVersion\": ");
    write_json_string(&mut suffix, &model.name);
    suffix.extend_from_slice(b",\"responseId\": ");
    write_json_string(&mut suffix, &response_id);
    suffix.extend_from_slice(b"}\r\n\r\n");

    if shared.block_prompt.load(Ordering::Relaxed) {
        guard.finish(true);
        let event = blocked_event(params.prompt_words, &suffix);
        return sse_response(Body::from(event));
    }

    let generation = Generation::new(model, &params.last_user, params.limit);
    let include_thoughts = params.thinking.as_ref().is_some_and(|t| t.include_thoughts);
    let stream = ChatBody {
        generation,
        guard,
        prompt_words: params.prompt_words,
        include_thoughts,
        thoughts: 0,
        suffix,
        finished: false,
    };
    sse_response(streamed_body(stream))
}

// ---------------------------------------------------------------------------------------------
// Token counts

/// The fields of Vertex AI's flat `CountTokensRequest`.
const VERTEX_COUNT_FIELDS: &[&str] = &[
    "model",
    "instances",
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "generationConfig",
    "generation_config",
];

/// `POST …/models/{model}:countTokens` once the caller is authenticated. The Gemini API takes
/// `contents` alone (the turns only) or `generateContentRequest` (a whole `GenerateContentRequest`
/// naming its `model`), never both; Vertex AI takes the fields flat. Either way the conversation is
/// checked as a chat's is, and counted with [`fake_token_count`].
async fn count_tokens(
    shared: &Arc<Gemini>,
    api: Api<'_>,
    model_name: &str,
    parsed: Result<Value, serde_json::Error>,
) -> Response {
    let bad = |message: String| google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return bad(format!("Invalid JSON payload received. {err}")),
    };
    let Value::Object(fields) = &request else {
        return bad(format!("Invalid JSON payload received. Expected an object, got {}.", json_kind(&request)));
    };
    let counted = match api {
        Api::Studio => {
            const FIELDS: &[&str] = &["contents", "generateContentRequest", "generate_content_request"];
            if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return bad(format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
            }
            let wrapped = field(fields, "generateContentRequest", "generate_content_request");
            match (fields.get("contents").filter(|c| !c.is_null()), wrapped) {
                (Some(_), Some(_)) => {
                    return bad(
                        "* CountTokensRequest: contents and generate_content_request cannot both be set.\n".into()
                    );
                }
                (Some(contents), None) => json!({ "contents": contents }),
                (None, Some(generate)) => {
                    let path_model = format!("models/{}", model_id(model_name));
                    match generate.get("model") {
                        Some(Value::String(model)) if model == &path_model => {}
                        Some(Value::String(model)) => {
                            return bad(format!(
                                "* CountTokensRequest.generate_content_request.model: the model in the request ({model}) must match the model in the URL ({path_model}).\n"
                            ));
                        }
                        _ => {
                            return bad(
                                "* CountTokensRequest.generate_content_request.model: model is required.\n".into()
                            );
                        }
                    }
                    generate.clone()
                }
                (None, None) => return bad("* CountTokensRequest.contents: contents is not specified\n".into()),
            }
        }
        Api::Vertex { .. } => {
            if let Some(unknown) = fields.keys().find(|k| !VERTEX_COUNT_FIELDS.contains(&k.as_str())) {
                return bad(format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
            }
            request.clone()
        }
    };
    let params = match chat_params(&counted) {
        Ok(params) => params,
        Err(message) => return bad(message),
    };
    let Some(model) = shared.find_model(model_name).filter(|m| !is_embedding(m)) else {
        let message = match api {
            Api::Studio => format!(
                "models/{model_name} is not found for API version v1beta, or is not supported for countTokens. Call ListModels to see the list of available models and their supported methods."
            ),
            Api::Vertex { resource } => format!(
                "Publisher Model `{resource}` was not found or your project does not have access to it. Please ensure you are using a valid model version. For more information, see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
            ),
        };
        return google_error(StatusCode::NOT_FOUND, &message, Vec::new());
    };
    if shared.harness.busy() {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED_MESSAGE, Vec::new());
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure);
    }
    if let Behaviour::HttpError { status, message } = &model.behaviour {
        return google_error(status_code(*status), message, Vec::new());
    }
    let descriptions = declarations(&counted).filter_map(|d| d.get("description").and_then(Value::as_str));
    let total = fake_token_count(params.words, params.turns.len(), descriptions);
    let details = json!([{"modality": "TEXT", "tokenCount": total}]);
    let body = match api {
        Api::Studio => json!({"totalTokens": total, "promptTokensDetails": details}),
        Api::Vertex { .. } => {
            json!({"totalTokens": total, "totalBillableCharacters": params.characters, "promptTokensDetails": details})
        }
    };
    pretty_json(StatusCode::OK, &body)
}

/// Every function declaration of a request's tools.
fn declarations(request: &Value) -> impl Iterator<Item = &Value> {
    let tools = request.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    tools
        .iter()
        .filter_map(|tool| tool.get("functionDeclarations").or_else(|| tool.get("function_declarations")))
        .filter_map(Value::as_array)
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// Gemini refuses a `batchEmbedContents` with more requests than this.
pub const MAX_EMBED_BATCH: usize = 100;

/// What Gemini accepts in an `EmbedContentRequest` (both JSON spellings).
const EMBED_FIELDS: &[&str] =
    &["model", "content", "taskType", "task_type", "title", "outputDimensionality", "output_dimensionality"];

const TASK_TYPES: &[&str] = &[
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
];

/// `POST /v1beta/models/{model}:batchEmbedContents` (`batch`) or `:embedContent`, once the caller
/// is authenticated.
async fn embed(
    shared: &Arc<Gemini>,
    model_name: &str,
    batch: bool,
    parsed: Result<Value, serde_json::Error>,
) -> Response {
    let bad = |message: String| google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return bad(format!("Invalid JSON payload received. {err}")),
    };
    let method = if batch { "batchEmbedContents" } else { "embedContent" };
    let Some(model) = shared.find_model(model_name).filter(|m| m.embedding_length.is_some()) else {
        return google_error(
            StatusCode::NOT_FOUND,
            &format!(
                "models/{model_name} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
            ),
            Vec::new(),
        );
    };
    let path_model = format!("models/{}", model_id(model_name));
    let requests: Vec<(String, &Value)> = if batch {
        let Some(object) = request.as_object() else {
            return bad(format!("Invalid JSON payload received. Expected an object, got {}.", json_kind(&request)));
        };
        if let Some(unknown) = object.keys().find(|k| k.as_str() != "requests") {
            return bad(format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
        }
        match object.get("requests") {
            Some(Value::Array(requests)) if requests.len() > MAX_EMBED_BATCH => {
                return bad(format!(
                    "* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch\n"
                ));
            }
            Some(Value::Array(requests)) if !requests.is_empty() => {
                requests.iter().enumerate().map(|(i, r)| (format!("requests[{i}]"), r)).collect()
            }
            Some(Value::Array(_)) | None | Some(Value::Null) => {
                return bad("* BatchEmbedContentsRequest.requests: requests must not be empty.\n".to_owned());
            }
            Some(other) => {
                return bad(format!(
                    "Invalid value at 'requests' (type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentRequest), {other}"
                ));
            }
        }
    } else {
        vec![(String::new(), &request)]
    };
    let native = model.embedding_length.unwrap_or_default() as usize;
    let mut vectors = Vec::with_capacity(requests.len());
    for (at, one) in &requests {
        match embed_request(one, at, &path_model, batch, native) {
            Ok((text, dimensions)) => vectors.push(fake_embedding(&text, dimensions)),
            Err(message) => return bad(message),
        }
    }
    if shared.harness.busy() {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED_MESSAGE, Vec::new());
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure);
    }
    if !model.header_delay.is_zero() {
        tokio::time::sleep(model.header_delay).await;
    }
    if let Behaviour::HttpError { status, message } = &model.behaviour {
        return google_error(status_code(*status), message, Vec::new());
    }
    let embedding = |values: Vec<f32>| json!({ "values": values });
    let body = if batch {
        json!({ "embeddings": vectors.into_iter().map(embedding).collect::<Vec<_>>() })
    } else {
        json!({ "embedding": vectors.into_iter().next().map(embedding) })
    };
    pretty_json(StatusCode::OK, &body)
}

/// What Vertex AI's chat models answer on `:predict`.
pub const VERTEX_PREDICT_CHAT_MESSAGE: &str = "Gemini cannot be accessed through Vertex Predict/RawPredict API. Please follow https://cloud.google.com/vertex-ai/docs/generative-ai/start/quickstarts/quickstart-multimodal for Gemini usage.";

/// Vertex AI's text-embedding models take at most this many instances per `:predict`.
pub const VERTEX_MAX_INSTANCES: usize = 250;

/// `POST …/publishers/google/models/{model}:predict` on Vertex AI, once the caller is
/// authenticated: text embeddings.
async fn vertex_predict(
    shared: &Arc<Gemini>,
    resource: &str,
    model_name: &str,
    parsed: Result<Value, serde_json::Error>,
) -> Response {
    let bad = |message: String| google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return bad(format!("Invalid JSON payload received. {err}")),
    };
    let Some(model) = shared.find_model(model_name) else {
        return google_error(StatusCode::NOT_FOUND, &format!("Publisher Model `{resource}` not found."), Vec::new());
    };
    let Some(native) = model.embedding_length.map(|d| d as usize) else {
        return google_error(StatusCode::BAD_REQUEST, VERTEX_PREDICT_CHAT_MESSAGE, Vec::new());
    };
    if vertex_embeds_by_embed_content(&model) {
        return google_error_named(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", VERTEX_PRECONDITION_MESSAGE);
    }
    let instances = match request.get("instances") {
        Some(Value::Array(instances)) if !instances.is_empty() => instances,
        _ => return bad("Instances field is required and must be a non-empty list.".to_owned()),
    };
    let most = if model.name.starts_with("gemini-embedding") { 1 } else { VERTEX_MAX_INSTANCES };
    if instances.len() > most {
        return bad(format!(
            "Unable to submit request because the model supports at most {most} instances per request; batchSize must be {most}."
        ));
    }
    let parameters = request.get("parameters").cloned().unwrap_or(Value::Null);
    let truncate = match parameters.get("autoTruncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return bad(format!("Invalid value at 'parameters.autoTruncate' (TYPE_BOOL), {other}")),
    };
    let dimensions = match parameters.get("outputDimensionality") {
        None | Some(Value::Null) => native,
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 && n as usize <= native => n as usize,
            _ => return bad(format!("Value of outputDimensionality must be between 1 and {native}, got {value}.")),
        },
    };
    let limit = model.context_length as usize;
    let mut predictions = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        let text = match instance.get("content") {
            Some(Value::String(text)) if !text.is_empty() => text,
            _ => return bad(format!("The content of instance {i} must be a non-empty string.")),
        };
        if let Some(task) = instance.get("task_type")
            && !task.as_str().is_some_and(|t| TASK_TYPES.contains(&t))
        {
            return bad(format!("Unsupported task_type {task} in instance {i}."));
        }
        // Tokens are words here.
        let words: Vec<&str> = text.split_whitespace().collect();
        let (embedded, truncated) = if words.len() > limit {
            if !truncate {
                return bad(format!(
                    "Unable to submit request because the input token count is {} but the model supports up to {limit}. Reduce the input token count and try again. You can also enable auto truncation.",
                    words.len()
                ));
            }
            (words[..limit].join(" "), true)
        } else {
            (text.clone(), false)
        };
        let tokens = words.len().min(limit);
        predictions.push(json!({"embeddings": {
            "values": fake_embedding(&embedded, dimensions),
            "statistics": {"token_count": tokens as f64, "truncated": truncated},
        }}));
    }
    if shared.harness.busy() {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED_MESSAGE, Vec::new());
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure);
    }
    if let Behaviour::HttpError { status, message } = &model.behaviour {
        return google_error(status_code(*status), message, Vec::new());
    }
    let characters: usize = instances.iter().filter_map(|i| i["content"].as_str()).map(|t| t.chars().count()).sum();
    pretty_json(
        StatusCode::OK,
        &json!({"predictions": predictions, "metadata": {"billableCharacterCount": characters}}),
    )
}

/// What Vertex AI answers (400 FAILED_PRECONDITION) on `:predict` for a model it serves only
/// through `:embedContent`.
pub const VERTEX_PRECONDITION_MESSAGE: &str = "Precondition check failed.";

/// The capability that makes the Vertex fake serve an embedding model through `:embedContent`
/// only, whatever its name (otherwise the name decides: `gemini-embedding-*` other than
/// `gemini-embedding-001`).
pub const VERTEX_EMBED_CONTENT_CAPABILITY: &str = "vertex_embed_content";

/// Whether Vertex serves this embedding model through `:embedContent` (and refuses `:predict`).
fn vertex_embeds_by_embed_content(model: &FakeModel) -> bool {
    let by_name = model.name.strip_prefix("gemini-embedding-").is_some_and(|rest| !rest.starts_with("001"));
    by_name || model.capabilities.iter().any(|c| c == VERTEX_EMBED_CONTENT_CAPABILITY)
}

/// What Vertex's `EmbedContentRequest` takes, at the top and in `embedContentConfig`.
const VERTEX_EMBED_FIELDS: &[&str] =
    &["model", "content", "title", "taskType", "outputDimensionality", "autoTruncate", "embedContentConfig"];
const VERTEX_EMBED_CONFIG_FIELDS: &[&str] = &["title", "taskType", "outputDimensionality", "autoTruncate"];

/// `POST …/publishers/google/models/{model}:embedContent` on Vertex AI, once the caller is
/// authenticated: one input, `{"content": {"parts": [{"text"}]}, "embedContentConfig":
/// {"taskType"?, "title"?, "outputDimensionality"?, "autoTruncate"?}}` → `{"embedding":
/// {"values"}, "usageMetadata": {"promptTokenCount"}, "truncated"?}` (tokens are words, as on
/// `:predict`; `truncated` only when true, as proto3 JSON leaves `false` out).
async fn vertex_embed_content(
    shared: &Arc<Gemini>,
    resource: &str,
    model_name: &str,
    parsed: Result<Value, serde_json::Error>,
) -> Response {
    let bad = |message: String| google_error(StatusCode::BAD_REQUEST, &message, Vec::new());
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return bad(format!("Invalid JSON payload received. {err}")),
    };
    let Some(model) = shared.find_model(model_name) else {
        return google_error(StatusCode::NOT_FOUND, &format!("Publisher Model `{resource}` not found."), Vec::new());
    };
    let native = match model.embedding_length {
        Some(native) if vertex_embeds_by_embed_content(&model) => native as usize,
        _ => return bad(format!("Publisher Model `{resource}` is not supported in the embedContent API.")),
    };
    let Some(object) = request.as_object() else {
        return bad(format!("Invalid JSON payload received. Expected an object, got {}.", json_kind(&request)));
    };
    if let Some(unknown) = object.keys().find(|k| !VERTEX_EMBED_FIELDS.contains(&k.as_str())) {
        return bad(format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
    }
    let config = object.get("embedContentConfig").cloned().unwrap_or(Value::Null);
    if let Some(unknown) =
        config.as_object().and_then(|c| c.keys().find(|k| !VERTEX_EMBED_CONFIG_FIELDS.contains(&k.as_str())))
    {
        return bad(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at 'embed_content_config': Cannot find field."
        ));
    }
    // A setting in `embedContentConfig`, else at the top.
    let setting = |name: &str| config.get(name).or_else(|| object.get(name)).filter(|v| !v.is_null());
    let parts = object.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array);
    let texts: Option<Vec<&str>> =
        parts.and_then(|parts| parts.iter().map(|p| p.get("text").and_then(Value::as_str)).collect());
    let text = match texts {
        Some(texts) if !texts.is_empty() && texts.iter().all(|t| !t.is_empty()) => texts.join(" "),
        _ => return bad("content.parts must hold at least one non-empty text part.".to_owned()),
    };
    if let Some(task) = setting("taskType")
        && !task.as_str().is_some_and(|t| TASK_TYPES.contains(&t))
    {
        return bad(format!(
            "Invalid value at 'embed_content_config.task_type' (type.googleapis.com/google.cloud.aiplatform.v1beta1.EmbedContentRequest.EmbeddingTaskType), {task}"
        ));
    }
    let truncate = match setting("autoTruncate") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return bad(format!("Invalid value at 'embed_content_config.auto_truncate' (TYPE_BOOL), {other}"));
        }
    };
    let dimensions = match setting("outputDimensionality") {
        None => native,
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 && n as usize <= native => n as usize,
            _ => return bad(format!("Value of outputDimensionality must be between 1 and {native}, got {value}.")),
        },
    };
    let limit = model.context_length as usize;
    let words: Vec<&str> = text.split_whitespace().collect();
    let (embedded, truncated) = if words.len() > limit {
        if !truncate {
            return bad(format!(
                "Unable to submit request because the input token count is {} but the model supports up to {limit}. Reduce the input token count and try again. You can also enable auto truncation.",
                words.len()
            ));
        }
        (words[..limit].join(" "), true)
    } else {
        (text.clone(), false)
    };
    if shared.harness.busy() {
        return google_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED_MESSAGE, Vec::new());
    }
    if let Some(failure) = shared.harness.take_failure() {
        return scripted_failure(failure);
    }
    if !model.header_delay.is_zero() {
        tokio::time::sleep(model.header_delay).await;
    }
    if let Behaviour::HttpError { status, message } = &model.behaviour {
        return google_error(status_code(*status), message, Vec::new());
    }
    let mut body = json!({
        "embedding": {"values": fake_embedding(&embedded, dimensions)},
        "usageMetadata": {"promptTokenCount": words.len().min(limit)},
    });
    if truncated {
        body["truncated"] = json!(true);
    }
    pretty_json(StatusCode::OK, &body)
}

/// One `EmbedContentRequest` checked as Gemini does (`at` is its place, e.g. `requests[3]`, empty
/// for `embedContent`): the text of its parts and the vector length it asks for.
fn embed_request(
    request: &Value,
    at: &str,
    path_model: &str,
    batch: bool,
    native: usize,
) -> Result<(String, usize), String> {
    let prefix = if at.is_empty() { String::new() } else { format!("{at}.") };
    let Some(object) = request.as_object() else {
        return Err(format!(
            "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentRequest), {request}"
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !EMBED_FIELDS.contains(&k.as_str())) {
        let place = if at.is_empty() { String::new() } else { format!(" at '{at}'") };
        return Err(format!("Invalid JSON payload received. Unknown name \"{unknown}\"{place}: Cannot find field."));
    }
    match object.get("model") {
        Some(Value::String(model)) if model == path_model => {}
        None if !batch => {}
        Some(Value::String(model)) => {
            return Err(format!(
                "* BatchEmbedContentsRequest.{prefix}model: the model in the request ({model}) must match the model in the URL ({path_model}).\n"
            ));
        }
        None | Some(Value::Null) => {
            return Err(format!("* BatchEmbedContentsRequest.{prefix}model: model is required.\n"));
        }
        Some(other) => return Err(format!("Invalid value at '{prefix}model' (TYPE_STRING), {other}")),
    }
    let parts = match object.get("content").and_then(|c| c.get("parts")) {
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        _ => return Err(format!("* EmbedContentRequest.{prefix}content.parts: contents.parts must not be empty.\n")),
    };
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        match part.get("text") {
            Some(Value::String(piece)) if !piece.is_empty() => text.push_str(piece),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(format!(
                    "* EmbedContentRequest.{prefix}content.parts[{i}].data: required oneof field 'data' must have one initialized field\n"
                ));
            }
            Some(other) => {
                return Err(format!("Invalid value at '{prefix}content.parts[{i}].text' (TYPE_STRING), {other}"));
            }
        }
    }
    if let Some(task) = object.get("taskType").or_else(|| object.get("task_type"))
        && !task.as_str().is_some_and(|t| TASK_TYPES.contains(&t))
    {
        return Err(format!(
            "Invalid value at '{prefix}task_type' (type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), {task}"
        ));
    }
    let dimensions = match object.get("outputDimensionality").or_else(|| object.get("output_dimensionality")) {
        None | Some(Value::Null) => native,
        Some(value) => match value.as_i64() {
            Some(n) if n > 0 && n as usize <= native => n as usize,
            Some(n) if n > 0 => {
                return Err(format!(
                    "* EmbedContentRequest.{prefix}output_dimensionality: outputDimensionality must be at most {native}, not {n}.\n"
                ));
            }
            Some(n) => {
                return Err(format!(
                    "* EmbedContentRequest.{prefix}output_dimensionality: outputDimensionality must be positive, not {n}.\n"
                ));
            }
            None => return Err(format!("Invalid value at '{prefix}output_dimensionality' (TYPE_INT32), {value}")),
        },
    };
    Ok((text, dimensions))
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, SSE_CONTENT_TYPE)
        .header(header::CONTENT_DISPOSITION, "attachment")
        .body(body)
        .expect("static response parts are valid")
}

fn scripted_failure(failure: FailNext) -> Response {
    let status = status_code(failure.status);
    let (message, details) = match failure.status {
        429 => {
            let mut details = vec![
                json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                    "quotaValue": "15"}]}),
                json!({"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
            ];
            if let Some(seconds) = failure.retry_after {
                details.push(
                    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}),
                );
            }
            (QUOTA_MESSAGE.to_owned(), details)
        }
        503 => (OVERLOADED_MESSAGE.to_owned(), Vec::new()),
        500 => (INTERNAL_MESSAGE.to_owned(), Vec::new()),
        other => (format!("scripted failure ({other})"), Vec::new()),
    };
    let mut response = google_error(status, &message, details);
    failure.add_retry_after(&mut response);
    response
}

/// What a chat request asks for, validated the way Gemini's JSON binding would.
#[derive(Debug)]
struct ChatParams {
    /// Content chunks allowed by `maxOutputTokens`; `usize::MAX` when unset.
    limit: usize,
    /// `promptTokenCount`: whitespace-separated words over all text parts, at least 1.
    prompt_words: usize,
    /// The same words, counted from 0 (for a token count).
    words: usize,
    /// Characters of all text parts (Vertex AI's billable characters).
    characters: usize,
    /// The text of the last `user` turn, for [`Reply::Echo`].
    last_user: String,
    /// Each content's role and what its parts hold.
    turns: Vec<(&'static str, PartsSeen)>,
    /// Function declarations were sent.
    has_tools: bool,
    /// `responseMimeType` is `application/json`.
    json_mode: bool,
    thinking: Option<ThinkingSeen>,
}

/// What `generationConfig.thinkingConfig` asked for.
#[derive(Debug, Default)]
struct ThinkingSeen {
    include_thoughts: bool,
    budget: Option<i64>,
    level: bool,
}

/// Both JSON spellings of a field, as Google's parser accepts them.
fn field<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake)).filter(|v| !v.is_null())
}

/// An integer as proto3 JSON allows it: a number or a decimal string.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads what a chat request asks for; `Err` is the 400 message Gemini would answer with.
fn chat_params(request: &Value) -> Result<ChatParams, String> {
    let Value::Object(request) = request else {
        return Err(format!("Invalid JSON payload received. Expected an object, got {}.", json_kind(request)));
    };
    if let Some(unknown) = request.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Err(format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."));
    }

    let mut prompt_words = 0;
    let mut characters = 0;
    let mut last_user = String::new();
    let mut turns = Vec::new();
    let contents = match request.get("contents") {
        Some(Value::Array(contents)) if !contents.is_empty() => contents,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err("* GenerateContentRequest.contents: contents is not specified\n".to_owned());
        }
        Some(other) => {
            return Err(format!(
                "Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), {other}"
            ));
        }
    };
    for (i, content) in contents.iter().enumerate() {
        let Value::Object(content) = content else {
            return Err(format!(
                "Invalid value at 'contents[{i}]' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), {content}"
            ));
        };
        let role = match content.get("role") {
            None | Some(Value::Null) => "user",
            Some(Value::String(role)) if role.is_empty() || role == "user" => "user",
            Some(Value::String(role)) if role == "model" => "model",
            Some(_) => return Err("Please use a valid role: user, model.".to_owned()),
        };
        let seen = check_parts(content, &format!("contents[{i}]"))?;
        prompt_words += seen.words;
        characters += seen.text.chars().count();
        if role == "user" && seen.others > 0 {
            last_user.clone_from(&seen.text);
        }
        // An echo after tool results repeats the last result.
        if role == "user" && seen.others == 0 && i + 1 == contents.len() {
            last_user.clone_from(&seen.last_result);
        }
        turns.push((role, seen));
    }
    check_turns(&turns)?;
    if let Some(system) = field(request, "systemInstruction", "system_instruction") {
        let Value::Object(system) = system else {
            return Err(format!(
                "Invalid value at 'system_instruction' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content), {system}"
            ));
        };
        let seen = check_parts(system, "system_instruction")?;
        prompt_words += seen.words;
        characters += seen.text.chars().count();
    }

    let mut limit = usize::MAX;
    if let Some(config) = field(request, "generationConfig", "generation_config") {
        let Value::Object(config) = config else {
            return Err(format!(
                "Invalid value at 'generation_config' (type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig), {config}"
            ));
        };
        if let Some(unknown) = config.keys().find(|k| !GENERATION_CONFIG_FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\" at 'generation_config': Cannot find field."
            ));
        }
        for (camel, snake) in [("temperature", "temperature"), ("topP", "top_p")] {
            if let Some(value) = field(config, camel, snake).filter(|v| !v.is_number()) {
                return Err(format!("Invalid value at 'generation_config.{snake}' (TYPE_FLOAT), {value}"));
            }
        }
        if let Some(value) = field(config, "topK", "top_k")
            && integer(value).is_none_or(|n| i32::try_from(n).is_err())
        {
            return Err(format!("Invalid value at 'generation_config.top_k' (TYPE_INT32), {value}"));
        }
        if let Some(value) = field(config, "seed", "seed")
            && integer(value).is_none_or(|n| i32::try_from(n).is_err())
        {
            return Err(format!("Invalid value at 'generation_config.seed' (TYPE_INT32), {value}"));
        }
        if let Some(value) = field(config, "maxOutputTokens", "max_output_tokens") {
            match integer(value).map(i32::try_from) {
                Some(Ok(n)) if n > 0 => limit = n as usize,
                Some(Ok(_)) => {}
                _ => {
                    return Err(format!(
                        "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {value}"
                    ));
                }
            }
        }
        if let Some(value) = field(config, "stopSequences", "stop_sequences") {
            let Some(stops) = value.as_array().filter(|s| s.iter().all(Value::is_string)) else {
                return Err(format!("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING), {value}"));
            };
            if stops.len() > 5 {
                return Err("* GenerateContentRequest.generation_config.stop_sequences: the number of stop_sequences must not exceed 5\n".to_owned());
            }
        }
    }

    if let Some(settings) = field(request, "safetySettings", "safety_settings") {
        let Some(settings) = settings.as_array() else {
            return Err(format!(
                "Invalid value at 'safety_settings' (type.googleapis.com/google.ai.generativelanguage.v1beta.SafetySetting), {settings}"
            ));
        };
        for (i, setting) in settings.iter().enumerate() {
            for (name, allowed, enum_type) in [
                ("category", HARM_CATEGORIES, "HarmCategory"),
                ("threshold", THRESHOLDS, "SafetySetting.HarmBlockThreshold"),
            ] {
                let value = setting.get(name).unwrap_or(&Value::Null);
                if !value.as_str().is_some_and(|v| allowed.contains(&v)) {
                    return Err(format!(
                        "Invalid value at 'safety_settings[{i}].{name}' (type.googleapis.com/google.ai.generativelanguage.v1beta.{enum_type}), {value}"
                    ));
                }
            }
        }
    }

    let (has_tools, declared) = check_tools(request)?;
    let mut json_mode = false;
    let mut thinking = None;
    if let Some(Value::Object(config)) = field(request, "generationConfig", "generation_config") {
        json_mode = check_output_format(config)?;
        thinking = check_thinking(config)?;
    }
    check_tool_config(request, &declared)?;
    Ok(ChatParams {
        limit,
        prompt_words: prompt_words.max(1),
        words: prompt_words,
        characters,
        last_user,
        turns,
        has_tools,
        json_mode,
        thinking,
    })
}

/// What a `Content`'s parts hold, once each part is valid.
#[derive(Debug, Default)]
struct PartsSeen {
    /// The text parts (thoughts aside), joined.
    text: String,
    /// Whitespace-separated words in them, counted part by part.
    words: usize,
    /// Each `functionCall` part: its name, and whether a `thoughtSignature` is beside it.
    calls: Vec<(String, bool)>,
    /// `functionResponse` parts.
    responses: usize,
    /// The last function response: its `result` text, or its JSON.
    last_result: String,
    /// Parts other than function responses (text, data, calls).
    others: usize,
    /// `inlineData` parts.
    images: usize,
}

/// The part fields Gemini's `Part` has (both JSON spellings).
const PART_FIELDS: &[&str] = &[
    "text",
    "thought",
    "thoughtSignature",
    "thought_signature",
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "functionCall",
    "function_call",
    "functionResponse",
    "function_response",
    "executableCode",
    "executable_code",
    "codeExecutionResult",
    "code_execution_result",
    "videoMetadata",
    "video_metadata",
    "partMetadata",
    "part_metadata",
];

/// The image types Gemini reads.
const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"];

/// What Gemini accepts in place of a signature, for history made elsewhere.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Checks a `Content`'s parts as Gemini's JSON binding and validation do; `at` names the content
/// in error messages.
fn check_parts(content: &Map<String, Value>, at: &str) -> Result<PartsSeen, String> {
    let parts = match content.get("parts") {
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        _ => return Err(format!("* GenerateContentRequest.{at}.parts: contents.parts must not be empty.\n")),
    };
    let mut seen = PartsSeen::default();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}.parts[{j}]");
        let Value::Object(part) = part else {
            return Err(format!(
                "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Part), {part}"
            ));
        };
        if let Some(unknown) = part.keys().find(|k| !PART_FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
            ));
        }
        let signature = field(part, "thoughtSignature", "thought_signature");
        if let Some(value) = signature {
            let valid = value.as_str().is_some_and(|s| s == SKIP_SIGNATURE || BASE64.decode(s).is_ok());
            if !valid {
                return Err(format!("Invalid value at '{at}.thought_signature' (TYPE_BYTES), {value}"));
            }
        }
        if let Some(value) = part.get("thought").filter(|v| !v.is_null() && !v.is_boolean()) {
            return Err(format!("Invalid value at '{at}.thought' (TYPE_BOOL), {value}"));
        }
        // The `data` oneof: exactly one of these. proto3 JSON: an empty text is no value.
        let mut data = Vec::new();
        match part.get("text") {
            Some(Value::String(text)) if !text.is_empty() => {
                data.push("text");
                if part.get("thought") != Some(&Value::Bool(true)) {
                    seen.text.push_str(text);
                    seen.words += text.split_whitespace().count();
                }
            }
            Some(Value::String(_)) | None | Some(Value::Null) => {}
            Some(other) => return Err(format!("Invalid value at '{at}.text' (TYPE_STRING), {other}")),
        }
        for (camel, snake) in [
            ("inlineData", "inline_data"),
            ("fileData", "file_data"),
            ("functionCall", "function_call"),
            ("functionResponse", "function_response"),
            ("executableCode", "executable_code"),
            ("codeExecutionResult", "code_execution_result"),
        ] {
            if field(part, camel, snake).is_some() {
                data.push(snake);
            }
        }
        match data.as_slice() {
            // Gemini's own `{"text": "", "thoughtSignature": …}` closing part.
            [] if signature.is_some() => {}
            [] => {
                return Err(format!(
                    "* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field\n"
                ));
            }
            [_] => {}
            [_, second, ..] => {
                return Err(format!(
                    "Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{second}' at '{at}'"
                ));
            }
        }
        if let Some(call) = field(part, "functionCall", "function_call") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                return Err(format!("* GenerateContentRequest.{at}.function_call.name: Name cannot be empty.\n"));
            }
            if let Some(args) = call.get("args").filter(|a| !a.is_null() && !a.is_object()) {
                return Err(format!(
                    "Invalid value at '{at}.function_call.args' (type.googleapis.com/google.protobuf.Struct), {args}"
                ));
            }
            seen.calls.push((name.to_owned(), signature.is_some()));
        }
        if let Some(response) = field(part, "functionResponse", "function_response") {
            if response.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(format!("* GenerateContentRequest.{at}.function_response.name: Name cannot be empty.\n"));
            }
            match response.get("response") {
                Some(Value::Object(_)) => {}
                None | Some(Value::Null) => {
                    return Err(format!(
                        "* GenerateContentRequest.{at}.function_response.response: response must be set.\n"
                    ));
                }
                Some(other) => {
                    return Err(format!(
                        "Invalid value at '{at}.function_response.response' (type.googleapis.com/google.protobuf.Struct), {other}"
                    ));
                }
            }
            seen.responses += 1;
            seen.last_result = match &response["response"] {
                Value::Object(fields) if fields.len() == 1 && fields.get("result").is_some_and(Value::is_string) => {
                    fields["result"].as_str().unwrap_or_default().to_owned()
                }
                other => other.to_string(),
            };
        } else {
            seen.others += 1;
        }
        if let Some(inline) = field(part, "inlineData", "inline_data") {
            let mime = inline.get("mimeType").or_else(|| inline.get("mime_type")).and_then(Value::as_str);
            let data = inline.get("data").and_then(Value::as_str);
            match (mime, data) {
                (Some(mime), _) if !IMAGE_TYPES.contains(&mime) => {
                    return Err(format!("Unsupported MIME type: {mime}"));
                }
                (Some(_), Some(data)) if BASE64.decode(data).is_ok() => seen.images += 1,
                _ => {
                    return Err(format!(
                        "Invalid value at '{at}.inline_data' (type.googleapis.com/google.ai.generativelanguage.v1beta.Blob), {inline}"
                    ));
                }
            }
        }
    }
    Ok(seen)
}

/// The function-calling rules Gemini checks across turns: a turn of calls follows a user turn,
/// and the user turn after it answers every call, in one `functionResponse` part each.
fn check_turns(turns: &[(&str, PartsSeen)]) -> Result<(), String> {
    for (i, (role, seen)) in turns.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &turns[p]);
        if !seen.calls.is_empty() && previous.is_some_and(|(role, _)| *role != "user") {
            return Err("Please ensure that function call turn comes immediately after a user turn or after a function response turn.".to_owned());
        }
        if seen.responses > 0 {
            let calls = match previous {
                Some((role, before)) if *role == "model" && !before.calls.is_empty() => before.calls.len(),
                _ => {
                    return Err(
                        "Please ensure that function response turn comes immediately after a function call turn."
                            .to_owned(),
                    );
                }
            };
            if *role != "user" || seen.responses != calls {
                return Err("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".to_owned());
            }
        }
    }
    Ok(())
}

/// Gemini 3's rule: in the current turn (since the last user turn that is not only function
/// responses), the first call of each step carries its `thoughtSignature`.
fn check_signatures(turns: &[(&str, PartsSeen)]) -> Result<(), String> {
    let start = turns.iter().rposition(|(role, seen)| *role == "user" && seen.others > 0).unwrap_or(0);
    let mut position = 0;
    for (role, seen) in &turns[start..] {
        if *role != "model" {
            position += 1;
            continue;
        }
        if let Some((name, false)) = seen.calls.first() {
            return Err(format!(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                position + 1
            ));
        }
        position += 1;
    }
    Ok(())
}

/// `tools`: function declarations, checked as Gemini does. Returns whether any were declared,
/// and their names.
fn check_tools(request: &Map<String, Value>) -> Result<(bool, Vec<String>), String> {
    let Some(tools) = field(request, "tools", "tools") else { return Ok((false, Vec::new())) };
    let Some(tools) = tools.as_array() else {
        return Err(format!(
            "Invalid value at 'tools' (type.googleapis.com/google.ai.generativelanguage.v1beta.Tool), {tools}"
        ));
    };
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let Some(declarations) = tool.get("functionDeclarations").or_else(|| tool.get("function_declarations")) else {
            continue;
        };
        for (j, declaration) in declarations.as_array().into_iter().flatten().enumerate() {
            let at = format!("tools[{i}].function_declarations[{j}]");
            let Value::Object(declaration) = declaration else {
                return Err(format!(
                    "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionDeclaration), {declaration}"
                ));
            };
            const FIELDS: &[&str] = &[
                "name",
                "description",
                "parameters",
                "parametersJsonSchema",
                "parameters_json_schema",
                "response",
                "responseJsonSchema",
                "response_json_schema",
                "behavior",
            ];
            if let Some(unknown) = declaration.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
                ));
            }
            let name = declaration.get("name").and_then(Value::as_str).unwrap_or_default();
            let valid = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
            if !valid {
                return Err(format!(
                    "* GenerateContentRequest.{at}.name: Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64.\n"
                ));
            }
            let schema = field(declaration, "parametersJsonSchema", "parameters_json_schema");
            if schema.is_some() && declaration.get("parameters").is_some() {
                return Err(format!(
                    "* GenerateContentRequest.{at}: parameters and parameters_json_schema cannot both be set.\n"
                ));
            }
            if let Some(schema) = schema.filter(|s| !s.is_object() && !s.is_boolean()) {
                return Err(format!(
                    "Invalid value at '{at}.parameters_json_schema' (type.googleapis.com/google.protobuf.Value), {schema}"
                ));
            }
            names.push(name.to_owned());
        }
    }
    Ok((!names.is_empty(), names))
}

/// `toolConfig.functionCallingConfig`: a known mode, and names only with `ANY`, each declared.
fn check_tool_config(request: &Map<String, Value>, declared: &[String]) -> Result<(), String> {
    let Some(config) = field(request, "toolConfig", "tool_config") else { return Ok(()) };
    let Some(calling) = config.get("functionCallingConfig").or_else(|| config.get("function_calling_config")) else {
        return Ok(());
    };
    let mode = calling.get("mode").and_then(Value::as_str).unwrap_or("MODE_UNSPECIFIED");
    if !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode) {
        return Err(format!(
            "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
        ));
    }
    if mode == "ANY" && declared.is_empty() {
        return Err("* GenerateContentRequest.tool_config.function_calling_config.mode: mode ANY requires function_declarations.\n".to_owned());
    }
    let allowed = calling.get("allowedFunctionNames").or_else(|| calling.get("allowed_function_names"));
    if let Some(allowed) = allowed.and_then(Value::as_array).filter(|a| !a.is_empty()) {
        if mode != "ANY" && mode != "VALIDATED" {
            return Err("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: allowed_function_names should only be set when mode is ANY.\n".to_owned());
        }
        if let Some(unknown) = allowed.iter().find(|n| !n.as_str().is_some_and(|n| declared.iter().any(|d| d == n))) {
            return Err(format!(
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: {unknown} is not the name of a function declaration.\n"
            ));
        }
    }
    Ok(())
}

/// `responseMimeType` and the schemas that need it; returns whether JSON output was asked for.
fn check_output_format(config: &Map<String, Value>) -> Result<bool, String> {
    let mime = field(config, "responseMimeType", "response_mime_type").and_then(Value::as_str).unwrap_or("text/plain");
    if !["text/plain", "application/json", "text/x.enum"].contains(&mime) {
        return Err(format!(
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, and `text/x.enum`, got {mime}.\n"
        ));
    }
    let json_schema = field(config, "responseJsonSchema", "response_json_schema");
    let schema = field(config, "responseSchema", "response_schema");
    if json_schema.is_some() && schema.is_some() {
        return Err("* GenerateContentRequest.generation_config: response_schema and response_json_schema cannot both be set.\n".to_owned());
    }
    if json_schema.is_some() && mime != "application/json" {
        return Err("* GenerateContentRequest.generation_config.response_mime_type: response_mime_type must be application/json when response_json_schema is set.\n".to_owned());
    }
    if let Some(value) = json_schema.filter(|s| !s.is_object() && !s.is_boolean()) {
        return Err(format!(
            "Invalid value at 'generation_config.response_json_schema' (type.googleapis.com/google.protobuf.Value), {value}"
        ));
    }
    Ok(mime == "application/json")
}

/// `thinkingConfig`: its fields, and not both a budget and a level.
fn check_thinking(config: &Map<String, Value>) -> Result<Option<ThinkingSeen>, String> {
    let Some(thinking) = field(config, "thinkingConfig", "thinking_config") else { return Ok(None) };
    let Value::Object(thinking) = thinking else {
        return Err(format!(
            "Invalid value at 'generation_config.thinking_config' (type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig), {thinking}"
        ));
    };
    const FIELDS: &[&str] = &[
        "includeThoughts",
        "include_thoughts",
        "thinkingBudget",
        "thinking_budget",
        "thinkingLevel",
        "thinking_level",
    ];
    if let Some(unknown) = thinking.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at 'generation_config.thinking_config': Cannot find field."
        ));
    }
    let budget = match field(thinking, "thinkingBudget", "thinking_budget") {
        None => None,
        Some(value) => match integer(value).filter(|n| i32::try_from(*n).is_ok()) {
            Some(n) => Some(n),
            None => {
                return Err(format!(
                    "Invalid value at 'generation_config.thinking_config.thinking_budget' (TYPE_INT32), {value}"
                ));
            }
        },
    };
    let level = match field(thinking, "thinkingLevel", "thinking_level") {
        None => false,
        Some(Value::String(level)) if ["LOW", "MEDIUM", "HIGH", "MINIMAL"].contains(&level.as_str()) => true,
        Some(value) => {
            return Err(format!(
                "Invalid value at 'generation_config.thinking_config.thinking_level' (type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel), {value}"
            ));
        }
    };
    if budget.is_some() && level {
        return Err("* GenerateContentRequest.generation_config.thinking_config: thinking_budget and thinking_level cannot both be set.\n".to_owned());
    }
    let include_thoughts = field(thinking, "includeThoughts", "include_thoughts") == Some(&Value::Bool(true));
    Ok(Some(ThinkingSeen { include_thoughts, budget, level }))
}

/// What the model itself refuses, in Gemini's words: Gemma has neither function calling nor JSON
/// mode; Gemma, Gemini 1.x and 2.0 do not think, levels need Gemini 3, a Pro model cannot stop
/// thinking; Gemini 3 wants its signatures back.
fn check_for_model(params: &ChatParams, model: &FakeModel) -> Result<(), String> {
    let name = &model.name;
    let gemma = name.starts_with("gemma");
    if params.has_tools && gemma {
        return Err(format!("Function calling is not enabled for models/{name}"));
    }
    if params.json_mode && gemma {
        return Err(format!("JSON mode is not enabled for models/{name}"));
    }
    if let Some(thinking) = &params.thinking {
        if ["gemini-1.", "gemini-2.0"].iter().any(|old| name.starts_with(old)) || gemma {
            return Err("Thinking is not supported for this model.".to_owned());
        }
        if thinking.level && !name.starts_with("gemini-3") {
            return Err("Thinking level is not supported for this model.".to_owned());
        }
        if thinking.budget == Some(0) && name.contains("-pro") {
            return Err("Budget 0 is invalid. This model only works in thinking mode.".to_owned());
        }
    }
    if name.starts_with("gemini-3") {
        check_signatures(&params.turns)?;
    }
    Ok(())
}

/// The response body of a streamed chat.
struct ChatBody {
    generation: Generation,
    guard: StreamGuard,
    prompt_words: usize,
    /// `thinkingConfig.includeThoughts`: thinking pieces are streamed as thought parts only when
    /// asked for (they are counted as thought tokens either way).
    include_thoughts: bool,
    /// Thinking pieces so far (`thoughtsTokenCount`).
    thoughts: usize,
    /// `,"modelVersion": …,"responseId": …}` and the event's blank line: the same for every event.
    suffix: Vec<u8>,
    finished: bool,
}

impl Pieces for ChatBody {
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        if self.guard.shutting_down() {
            self.finished = true;
            self.guard.finish(false);
            return Some(Err(io::Error::other("fake Gemini server shut down")));
        }
        let misbehaves = self.generation.misbehaves();
        loop {
            let mut event = event_start(self.suffix.len());
            let mut hidden = false;
            match self.generation.next().await {
                Step::Content(text) => write_text_part(&mut event, text),
                Step::Piece(Piece::Thinking(text)) if self.include_thoughts => {
                    self.thoughts += 1;
                    event.extend_from_slice(b"{\"text\": ");
                    write_json_string(&mut event, text);
                    event.extend_from_slice(b",\"thought\": true}");
                }
                Step::Piece(Piece::Thinking(_)) => {
                    self.thoughts += 1;
                    hidden = true;
                }
                // Gemini's closing part: no text, the signature.
                Step::Piece(Piece::ThinkingSignature(signature)) => {
                    event.extend_from_slice(b"{\"text\": \"\",\"thoughtSignature\": \"");
                    event.extend_from_slice(BASE64.encode(signature).as_bytes());
                    event.extend_from_slice(b"\"}");
                }
                // Whole calls, all in this chunk, the signature beside the call it came with.
                Step::Piece(Piece::ToolCalls(calls)) => {
                    for (i, call) in calls.iter().enumerate() {
                        if i > 0 {
                            event.push(b',');
                        }
                        event.extend_from_slice(b"{\"functionCall\": {\"name\": ");
                        write_json_string(&mut event, &call.name);
                        if !call.arguments.is_empty() {
                            event.extend_from_slice(b",\"args\": ");
                            event.extend_from_slice(call.arguments.as_bytes());
                        }
                        if let Some(id) = &call.id {
                            event.extend_from_slice(b",\"id\": ");
                            write_json_string(&mut event, id);
                        }
                        event.push(b'}');
                        if let Some(signature) = &call.signature {
                            event.extend_from_slice(b",\"thoughtSignature\": \"");
                            event.extend_from_slice(BASE64.encode(signature).as_bytes());
                            event.push(b'"');
                        }
                        event.push(b'}');
                    }
                }
                Step::Piece(Piece::Text(text)) => write_text_part(&mut event, text),
                // The reply ran out (or hit the limit) without a chunk to carry the reason: an
                // empty one carries it.
                Step::Done(finish) => {
                    write_text_part(&mut event, "");
                    let candidates = self.generation.sent() - self.thoughts;
                    let usage = (self.prompt_words, candidates, self.thoughts);
                    content_event_end(&mut event, Some(finish_reason(finish)), usage, &self.suffix);
                    self.finished = true;
                    self.guard.finish(true);
                    return Some(Ok(Bytes::from(event)));
                }
                Step::Error(message) => {
                    let mut body = google_error_body(StatusCode::INTERNAL_SERVER_ERROR, message, Vec::new());
                    body.push(b'\n');
                    self.finished = true;
                    self.guard.finish(true);
                    return Some(Ok(Bytes::from(body)));
                }
                Step::EndWithoutDone => {
                    self.finished = true;
                    self.guard.finish(true);
                    return None;
                }
                Step::Abort => {
                    self.finished = true;
                    self.guard.finish(false);
                    return Some(Err(io::Error::other("fake Gemini dropped the connection")));
                }
            }
            if hidden {
                if !self.generation.exhausted() && !self.generation.at_limit() {
                    continue;
                }
                // Hidden, and the last piece: the finish still needs a chunk.
                write_text_part(&mut event, "");
            }
            // Like Gemini, the chunk with the last piece is the one that says why generation
            // ended (STOP after calls too: Gemini has no tool-calls finish).
            let finish = if misbehaves {
                None
            } else if self.generation.exhausted() {
                Some(Finish::Stop)
            } else if self.generation.at_limit() {
                Some(Finish::Length)
            } else {
                None
            };
            let finish = finish.map(finish_reason);
            let usage = (self.prompt_words, self.generation.sent() - self.thoughts, self.thoughts);
            content_event_end(&mut event, finish, usage, &self.suffix);
            if finish.is_some() {
                self.finished = true;
                self.guard.finish(true);
            }
            return Some(Ok(Bytes::from(event)));
        }
    }
}

/// Gemini's `finishReason`.
fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
}

/// One `data:` event with one text part, laid out the way Gemini writes them.
#[cfg(test)]
fn content_event(text: &str, finish: Option<&str>, prompt: usize, candidates: usize, suffix: &[u8]) -> Vec<u8> {
    let mut event = event_start(suffix.len() + text.len());
    write_text_part(&mut event, text);
    content_event_end(&mut event, finish, (prompt, candidates, 0), suffix);
    event
}

/// An event up to its first part.
fn event_start(capacity: usize) -> Vec<u8> {
    let mut event = Vec::with_capacity(capacity + 320);
    event.extend_from_slice(b"data: {\"candidates\": [{\"content\": {\"parts\": [");
    event
}

fn write_text_part(event: &mut Vec<u8>, text: &str) {
    event.extend_from_slice(b"{\"text\": ");
    write_json_string(event, text);
    event.push(b'}');
}

/// The rest of an event after its parts; `usage` is (prompt, candidates, thoughts).
fn content_event_end(event: &mut Vec<u8>, finish: Option<&str>, usage: (usize, usize, usize), suffix: &[u8]) {
    event.extend_from_slice(b"],\"role\": \"model\"}");
    if let Some(reason) = finish {
        event.extend_from_slice(b",\"finishReason\": \"");
        event.extend_from_slice(reason.as_bytes());
        event.push(b'"');
    }
    event.extend_from_slice(b",\"index\": 0}]");
    write_usage(event, usage.0, usage.1, usage.2);
    event.extend_from_slice(suffix);
}

/// The single event of a blocked prompt: feedback and usage, no candidates.
fn blocked_event(prompt: usize, suffix: &[u8]) -> Vec<u8> {
    let mut event = Vec::with_capacity(suffix.len() + 512);
    event.extend_from_slice(b"data: {\"promptFeedback\": {\"blockReason\": \"SAFETY\",\"safetyRatings\": [");
    event.extend_from_slice(b"{\"category\": \"HARM_CATEGORY_SEXUALLY_EXPLICIT\",\"probability\": \"NEGLIGIBLE\"},");
    event.extend_from_slice(b"{\"category\": \"HARM_CATEGORY_HATE_SPEECH\",\"probability\": \"NEGLIGIBLE\"},");
    event.extend_from_slice(
        b"{\"category\": \"HARM_CATEGORY_HARASSMENT\",\"probability\": \"HIGH\",\"blocked\": true},",
    );
    event.extend_from_slice(b"{\"category\": \"HARM_CATEGORY_DANGEROUS_CONTENT\",\"probability\": \"NEGLIGIBLE\"}]}");
    write_usage(&mut event, prompt, 0, 0);
    event.extend_from_slice(suffix);
    event
}

/// `,"usageMetadata": {…}` with running totals; zero counts are omitted, as proto3 JSON does.
/// Thought tokens are apart from the candidates' but in the total, as Gemini counts them.
fn write_usage(out: &mut Vec<u8>, prompt: usize, candidates: usize, thoughts: usize) {
    let mut usage = String::with_capacity(160);
    let _ = write!(usage, ",\"usageMetadata\": {{\"promptTokenCount\": {prompt}");
    if candidates > 0 {
        let _ = write!(usage, ",\"candidatesTokenCount\": {candidates}");
    }
    if thoughts > 0 {
        let _ = write!(usage, ",\"thoughtsTokenCount\": {thoughts}");
    }
    let _ = write!(
        usage,
        ",\"totalTokenCount\": {},\"promptTokensDetails\": [{{\"modality\": \"TEXT\",\"tokenCount\": {prompt}}}]}}",
        prompt + candidates + thoughts
    );
    out.extend_from_slice(usage.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Errors and helpers

/// The canonical gRPC code name Google puts in `status` for an HTTP status.
fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// `{"error": {"code", "message", "status", "details"?}}`, pretty-printed as Google does.
fn google_error_body(status: StatusCode, message: &str, details: Vec<Value>) -> Vec<u8> {
    let mut error = Map::new();
    error.insert("code".into(), json!(status.as_u16()));
    error.insert("message".into(), json!(message));
    error.insert("status".into(), json!(status_name(status)));
    if !details.is_empty() {
        error.insert("details".into(), Value::Array(details));
    }
    let body = json!({ "error": error });
    serde_json::to_vec_pretty(&body).expect("serializing a JSON value cannot fail")
}

fn google_error(status: StatusCode, message: &str, details: Vec<Value>) -> Response {
    json_response(status, google_error_body(status, message, details))
}

/// A Google error whose canonical code is not the one its HTTP status usually carries (Vertex's
/// 400 FAILED_PRECONDITION).
fn google_error_named(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    json_response(status, serde_json::to_vec_pretty(&body).expect("serializing a JSON value cannot fail"))
}

fn pretty_json(status: StatusCode, value: &Value) -> Response {
    json_response(status, serde_json::to_vec_pretty(value).expect("serializing a JSON value cannot fail"))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let content_type = HeaderValue::from_static(JSON_CONTENT_TYPE);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The first value of a query parameter, percent-decoded (`+` is a space).
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    form_value(uri.query()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::percent_decode;

    #[test]
    fn query_parameters_are_decoded() {
        let uri: Uri = "/v1beta/models?pageSize=5&pageToken=Cg%2F50%2B%3D&key=a+b&x".parse().unwrap();
        assert_eq!(query_param(&uri, "pageSize").as_deref(), Some("5"));
        assert_eq!(query_param(&uri, "pageToken").as_deref(), Some("Cg/50+="));
        assert_eq!(query_param(&uri, "key").as_deref(), Some("a b"));
        assert_eq!(query_param(&uri, "x").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "missing"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(parse_page_token(&page_token(50)), Some(50));
    }

    #[test]
    fn display_names_capitalize_words() {
        assert_eq!(display_name("gemini-2.0-flash"), "Gemini 2.0 Flash");
    }

    #[test]
    fn requests_are_validated_like_gemini() {
        let ok = chat_params(&json!({
            "contents": [{"role": "user", "parts": [{"text": "Hi there"}]}, {"role": "model", "parts": [{"text": "Hello."}]},
                         {"parts": [{"text": "Name"}, {"text": "a colour"}]}],
            "systemInstruction": {"parts": [{"text": "Be terse."}]},
            "generationConfig": {"maxOutputTokens": "7", "seed": 2147483647, "stopSequences": ["END"], "temperature": 0.5},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
        }))
        .unwrap();
        assert_eq!(ok.limit, 7);
        assert_eq!(ok.prompt_words, 2 + 1 + 3 + 2);
        assert_eq!(ok.last_user, "Namea colour");

        let refused = |request: Value, expected: &str| {
            let message = chat_params(&request).unwrap_err();
            assert!(message.contains(expected), "{message}");
        };
        let user = json!([{"role": "user", "parts": [{"text": "hi"}]}]);
        refused(json!({}), "contents is not specified");
        refused(json!({"contents": []}), "contents is not specified");
        refused(json!({"contents": user, "max_tokens": 5}), "Unknown name \"max_tokens\"");
        refused(json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}), "valid role");
        refused(json!({"contents": [{"role": "user", "parts": []}]}), "parts must not be empty");
        refused(json!({"contents": [{"role": "user", "parts": [{"text": ""}]}]}), "required oneof field 'data'");
        refused(json!({"contents": user, "generationConfig": {"max_tokens": 5}}), "at 'generation_config'");
        refused(json!({"contents": user, "generationConfig": {"seed": 4294967296u64}}), "generation_config.seed");
        refused(
            json!({"contents": user, "generationConfig": {"stopSequences": ["a", "b", "c", "d", "e", "f"]}}),
            "exceed 5",
        );
        refused(
            json!({"contents": user, "safetySettings": [{"category": "HARM_CATEGORY_X", "threshold": "OFF"}]}),
            "safety_settings[0].category",
        );
        refused(json!([1]), "Expected an object");
    }

    #[test]
    fn function_calling_is_checked_like_gemini() {
        let user = json!({"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]});
        let calls = |signature: bool| {
            let mut first = json!({"functionCall": {"name": "w", "args": {"city": "Paris"}}});
            if signature {
                first["thoughtSignature"] = json!("c2ln");
            }
            json!({"role": "model", "parts": [first, {"functionCall": {"name": "w", "args": {"city": "Rome"}}}]})
        };
        let response = json!({"functionResponse": {"name": "w", "response": {"result": "sunny"}}});
        let answers = |n: usize| json!({"role": "user", "parts": vec![response.clone(); n]});
        let params = |contents: Value| chat_params(&json!({"contents": contents}));

        let ok = params(json!([user, calls(true), answers(2)])).unwrap();
        assert_eq!(ok.turns[1].1.calls, [("w".to_owned(), true), ("w".to_owned(), false)]);
        assert_eq!(ok.last_user, "sunny", "an echo after tool results repeats the last result");
        let short = params(json!([user, calls(true), answers(1)])).unwrap_err();
        assert!(short.contains("number of function response parts is equal"), "{short}");
        let orphan = params(json!([user, answers(1)])).unwrap_err();
        assert!(orphan.contains("comes immediately after a function call turn"), "{orphan}");
        let after_model =
            params(json!([user, {"role": "model", "parts": [{"text": "Hm."}]}, calls(true)])).unwrap_err();
        assert!(after_model.contains("function call turn comes immediately after a user turn"), "{after_model}");

        // Gemini 3 wants the first call's signature back; 2.5 does not check.
        let mut model = FakeModel::new("gemini-3-pro");
        let unsigned = params(json!([user, calls(false), answers(2)])).unwrap();
        let missing = check_for_model(&unsigned, &model).unwrap_err();
        assert!(missing.contains("missing a thought_signature") && missing.contains("default_api:w"), "{missing}");
        check_for_model(&params(json!([user, calls(true), answers(2)])).unwrap(), &model).unwrap();
        model.name = "gemini-2.5-flash".into();
        check_for_model(&unsigned, &model).unwrap();

        let refused = |part: Value, expected: &str| {
            let message = params(json!([{"role": "user", "parts": [part]}])).unwrap_err();
            assert!(message.contains(expected), "{message}");
        };
        refused(json!({"text": "a", "thoughtSignature": "not base64!"}), "thought_signature");
        refused(json!({"text": "a", "functionCall": {"name": "f"}}), "Oneof field 'data' is already set");
        refused(json!({"functionResponse": {"name": "f", "response": "text"}}), "function_response.response");
        refused(json!({"text": "a", "function_id": 1}), "Unknown name \"function_id\"");
        refused(json!({"inlineData": {"mimeType": "image/gif", "data": "R0lG"}}), "Unsupported MIME type");
        // Gemini's own closing part is accepted back.
        params(json!([{"role": "user", "parts": [{"text": "", "thoughtSignature": "c2ln"}]}])).unwrap();
    }

    #[test]
    fn tools_output_formats_and_thinking_are_checked() {
        let user = json!([{"role": "user", "parts": [{"text": "hi"}]}]);
        let refused = |extra: Value, expected: &str| {
            let mut request = json!({"contents": user});
            request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let message = chat_params(&request).unwrap_err();
            assert!(message.contains(expected), "{message}");
        };
        let tools = json!([{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}]);
        refused(json!({"tools": [{"functionDeclarations": [{"name": "1f"}]}]}), "Invalid function name");
        refused(
            json!({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {}, "parametersJsonSchema": {}}]}]}),
            "cannot both",
        );
        refused(
            json!({"tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}}}),
            "only be set when mode is ANY",
        );
        refused(
            json!({"tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}}}),
            "not the name",
        );
        refused(json!({"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}), "requires function_declarations");
        refused(json!({"generationConfig": {"responseJsonSchema": {"type": "object"}}}), "must be application/json");
        refused(
            json!({"generationConfig": {"thinkingConfig": {"thinkingBudget": 10, "thinkingLevel": "LOW"}}}),
            "cannot both",
        );
        refused(json!({"generationConfig": {"thinkingConfig": {"thinkingLevel": "low"}}}), "thinking_level");

        let request = json!({"contents": user, "tools": tools, "generationConfig": {"responseMimeType": "application/json", "thinkingConfig": {"includeThoughts": true, "thinkingBudget": 0}}});
        let params = chat_params(&request).unwrap();
        let model = |name: &str, caps: &[&str]| {
            let mut model = FakeModel::new(name);
            model.capabilities = caps.iter().map(|c| (*c).to_owned()).collect();
            model
        };
        assert!(
            check_for_model(&params, &model("gemma-3-27b-it", &["thinking"]))
                .unwrap_err()
                .contains("Function calling is not enabled")
        );
        assert!(
            check_for_model(&params, &model("gemini-2.0-flash", &[]))
                .unwrap_err()
                .contains("Thinking is not supported")
        );
        assert!(
            check_for_model(&params, &model("gemini-2.5-pro", &["thinking"]))
                .unwrap_err()
                .contains("only works in thinking mode")
        );
        check_for_model(&params, &model("gemini-2.5-flash", &["thinking"])).unwrap();
    }

    #[test]
    fn events_look_like_geminis() {
        let suffix = b",\"modelVersion\": \"m\",\"responseId\": \"r\"}\r\n\r\n";
        let event = String::from_utf8(content_event("a\"b", Some("STOP"), 4, 2, suffix)).unwrap();
        let json: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["candidates"][0]["content"]["parts"][0]["text"], "a\"b");
        assert_eq!(json["candidates"][0]["finishReason"], "STOP");
        assert_eq!(json["usageMetadata"]["candidatesTokenCount"], 2);
        assert_eq!(json["usageMetadata"]["totalTokenCount"], 6);
        assert!(event.ends_with("}\r\n\r\n"));

        let event = String::from_utf8(content_event("x", None, 4, 0, suffix)).unwrap();
        let json: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert!(json["candidates"][0].get("finishReason").is_none());
        assert!(json["usageMetadata"].get("candidatesTokenCount").is_none());

        let event = String::from_utf8(blocked_event(3, suffix)).unwrap();
        let json: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["promptFeedback"]["blockReason"], "SAFETY");
        assert!(json.get("candidates").is_none());
    }
}
