//! A fake of Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`,
//! `GET /v1/models`, `GET /v1/models/{id}`).
//!
//! It speaks the real wire format, as described in the project's Anthropic reference notes:
//! - every request needs `anthropic-version` (400 otherwise) and, once a key is set with
//!   [`Fake::with_api_key`], the right `x-api-key` (401 `authentication_error` otherwise,
//!   whose message echoes the presented key partially, the way key-checking APIs do);
//! - errors are `{"type":"error","error":{"type":"…","message":"…"},"request_id":"req_…"}` with a
//!   `request-id` header, the error type following the status (`rate_limit_error` for 429,
//!   `overloaded_error` for 529, …); overload ([`Fake::set_busy`]) is a 529;
//! - request bodies are validated like the API does: `model`, `messages` and `max_tokens` are
//!   required, roles are `user`/`assistant`, `temperature` is 0 to 1, and unknown top-level fields
//!   (e.g. `seed`) are refused with "Extra inputs are not permitted";
//! - a streamed reply (`"stream": true`) is `text/event-stream` with named events, each written and
//!   flushed on its own: `message_start`, `content_block_start`, `ping`, one `content_block_delta`
//!   (`text_delta`) per chunk, `content_block_stop`, `message_delta` (stop reason and cumulative
//!   `output_tokens`), `message_stop`; without `stream` the reply is one `message` object.
//!
//! `POST /v1/messages/count_tokens` takes the same body without `max_tokens` and `stream` ("Extra
//! inputs are not permitted" for those and any other field it does not know), checks it as
//! `/v1/messages` does, and answers `{"input_tokens"}` counted by [`script::fake_token_count`]
//! (words of the system prompt and the messages, per message, per tool); an unknown model is the
//! same 404. Bodies are kept ([`Fake::count_requests`]).
//!
//! `max_tokens` is honoured (one chunk counts as one token; `stop_reason: "max_tokens"`), and so
//! are `stop_sequences` found within a chunk (the chunk is cut before it; `stop_reason:
//! "stop_sequence"`). Usage: `input_tokens` is the number of whitespace-separated words in the
//! system prompt and all messages (at least 1), `output_tokens` the number of chunks sent.
//!
//! [`Behaviour`]s on this protocol:
//! - [`Behaviour::ErrorAfter`]: the chunks, then an `event: error` whose error type is
//!   `overloaded_error` when the message is [`OVERLOADED_MESSAGE`] and `api_error` otherwise, then a
//!   clean end of body. Without `stream`, the matching error status (529 or 500) instead.
//! - [`Behaviour::EndWithoutDone`]: the chunks, then a clean end of body with no
//!   `content_block_stop`, `message_delta` or `message_stop`. Without `stream`, a message whose
//!   `stop_reason` is null.
//! - [`Behaviour::DropConnectionAfter`]: the chunks, then the connection is aborted.
//! - [`Behaviour::HttpError`]: that status with an Anthropic error body carrying the message.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::fake::{Fake, KeyedWire, Wire};
use crate::format::civil_from_days;
use crate::harness::{Harness, Keyed, Models, Pieces, StreamGuard, broken_response, status_code, streamed_body};
use crate::script::{self, Behaviour, FakeModel, Finish, Piece, Reply, Step, fake_token_count, flush_point};

/// The `anthropic-version` values the fake accepts (the two the API has ever had).
pub const ANTHROPIC_VERSIONS: [&str; 2] = ["2023-06-01", "2023-01-01"];

/// A [`FakeModel::capabilities`] entry that makes a model take adaptive thinking only, as the
/// newest models do: a request with `thinking.type: "enabled"` gets their 400.
pub const ADAPTIVE_THINKING: &str = "adaptive_thinking";

/// The message of Anthropic's overload errors (a 529 body, or a mid-stream `error` event).
pub const OVERLOADED_MESSAGE: &str = "Overloaded";

/// The API's request size limit; larger bodies get a 413 `request_too_large`.
const MAX_REQUEST_BYTES: usize = 32 << 20;

const JSON_CONTENT_TYPE: &str = "application/json";
const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// Top-level fields of `POST /v1/messages` the API knows; anything else is refused.
const KNOWN_FIELDS: [&str; 18] = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
];

/// A running fake Anthropic API: [`Fake`] over Anthropic's wire format.
pub type FakeAnthropic = Fake<Anthropic>;

impl Fake<Anthropic> {
    /// Adds a model, replacing one with the same id. Requests already in progress keep the script
    /// they started with. The listing shows the newest model first, like the API's.
    pub fn add_model(&self, model: FakeModel) {
        self.wire.models.add(ModelEntry::new(model));
    }

    /// Removes a model; returns whether it was there.
    pub fn remove_model(&self, id: &str) -> bool {
        self.wire.models.remove(id)
    }

    /// The JSON body of every `/v1/messages/count_tokens` request received (including refused
    /// ones), in order; they are not among [`chat_requests`](Fake::chat_requests).
    pub fn count_requests(&self) -> Vec<Value> {
        self.wire.count_requests.lock().unwrap().clone()
    }
}

/// Anthropic's wire format, and the state its handle and request handlers share. A failure
/// scripted with [`Fake::fail_next`] is an Anthropic error body of the matching type (with a
/// `retry-after` header when given a wait); a completed stream is one that sent `message_stop`,
/// the `error` event of [`Behaviour::ErrorAfter`], or the single object of a request that was not
/// streamed. A key set with [`Fake::set_api_key`] is required as `x-api-key`. While
/// [`Fake::set_busy`] is on, `/v1/messages` answers 529 `overloaded_error`.
pub struct Anthropic {
    models: Models<ModelEntry>,
    harness: Arc<Harness>,
    /// Source of message and request ids.
    next_id: AtomicU64,
    /// The JSON bodies of `count_tokens` requests, in order.
    count_requests: Mutex<Vec<Value>>,
}

impl Wire for Anthropic {
    const NAME: &'static str = "Anthropic";
    const BASE_PATH: &'static str = "";

    fn new(harness: Arc<Harness>) -> Self {
        Anthropic { models: Models::new(), harness, next_id: AtomicU64::new(1), count_requests: Mutex::new(Vec::new()) }
    }

    fn router(shared: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{id}", get(get_model))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            // The limit is checked in the handler so the refusal has Anthropic's body.
            .layer(DefaultBodyLimit::max(2 * MAX_REQUEST_BYTES))
            .with_state(shared)
    }
}

impl KeyedWire for Anthropic {}

impl Anthropic {
    fn find_model(&self, id: &str) -> Option<Arc<ModelEntry>> {
        self.models.find(id)
    }

    /// A fresh id with Anthropic's prefix and shape, e.g. `req_011CFakeAnthropic0000000007`.
    fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_011CFakeAnthropic{n:010}")
    }

    /// The checks every endpoint makes, in the API's order: the key, then the version header;
    /// `Some` is the refusal.
    fn check_headers(&self, headers: &HeaderMap, request_id: &str) -> Option<Response> {
        if let Some(expected) = self.harness.api_key().as_deref() {
            let presented = headers.get("x-api-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            match presented {
                None => {
                    return Some(error_response(401, "x-api-key header is required", request_id));
                }
                Some(key) if key != expected => {
                    let message = format!("invalid x-api-key: {}", mask_key(&key));
                    return Some(error_response(401, &message, request_id));
                }
                Some(_) => {}
            }
        }
        match headers.get("anthropic-version").map(HeaderValue::as_bytes) {
            None => Some(error_response(400, "anthropic-version: header is required", request_id)),
            Some(version) if !ANTHROPIC_VERSIONS.iter().any(|v| v.as_bytes() == version) => {
                let version = String::from_utf8_lossy(version);
                Some(error_response(400, &format!("anthropic-version: invalid version '{version}'"), request_id))
            }
            Some(_) => None,
        }
    }
}

/// `sk-ant-a***wxyz`: enough of a presented key to recognize it, as key-checking APIs echo it.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        let shown: String = chars.iter().take(chars.len() / 3).collect();
        return format!("{shown}***");
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

/// A model as served: its script plus what the Models API reports about it.
#[derive(Debug)]
struct ModelEntry {
    model: Arc<FakeModel>,
    display_name: String,
    created_at: String,
}

impl Keyed for ModelEntry {
    fn key(&self) -> &str {
        &self.model.name
    }
}

impl ModelEntry {
    fn new(model: FakeModel) -> Self {
        ModelEntry {
            display_name: display_name(&model.name),
            created_at: rfc3339(SystemTime::now()),
            model: Arc::new(model),
        }
    }

    /// With the `capabilities` object of the current API, from the model's capability names
    /// (`vision`, `json_schema`, `thinking`), and its context length as `max_input_tokens`.
    fn to_json(&self) -> Value {
        let has = |name: &str| json!({"supported": self.model.capabilities.iter().any(|c| c == name)});
        json!({
            "type": "model",
            "id": self.model.name,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "max_input_tokens": self.model.context_length,
            "capabilities": {
                "image_input": has("vision"),
                "structured_outputs": has("json_schema"),
                "thinking": {"supported": self.model.capabilities.iter().any(|c| c == "thinking"), "types": {}},
            },
        })
    }
}

/// `claude-sonnet-4-5-20250929` → `Claude Sonnet 4.5`: words capitalized, adjacent numbers joined
/// by dots, a trailing date dropped.
fn display_name(id: &str) -> String {
    let mut parts: Vec<&str> = id.split(['-', '_']).filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_digit())) {
        parts.pop();
    }
    let mut name = String::with_capacity(id.len());
    let mut previous_numeric = false;
    for part in parts {
        let numeric = part.bytes().all(|b| b.is_ascii_digit());
        if !name.is_empty() {
            name.push(if numeric && previous_numeric { '.' } else { ' ' });
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
        previous_numeric = numeric;
    }
    name
}

async fn not_found(State(shared): State<Arc<Anthropic>>) -> Response {
    error_response(404, "Not Found", &shared.new_id("req"))
}

// ---------------------------------------------------------------------------------------------
// Models

async fn list_models(State(shared): State<Arc<Anthropic>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let request_id = shared.new_id("req");
    if let Some(refusal) = shared.check_headers(&headers, &request_id) {
        return refusal;
    }
    let (mut limit, mut after_id, mut before_id) = (20usize, None, None);
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    let message = "limit: Input should be a valid integer between 1 and 1000";
                    return error_response(400, message, &request_id);
                }
            },
            "after_id" => after_id = Some(value),
            "before_id" => before_id = Some(value),
            _ => {}
        }
    }

    let models = shared.models.read();
    // Newest first.
    let ordered: Vec<&Arc<ModelEntry>> = models.iter().rev().collect();
    let position = |id: &str| ordered.iter().position(|m| m.model.name == id);
    let (start, end) = match (after_id.as_deref(), before_id.as_deref()) {
        (Some(after), _) => {
            let start = position(after).map_or(ordered.len(), |i| i + 1);
            (start, (start + limit).min(ordered.len()))
        }
        (None, Some(before)) => {
            let end = position(before).unwrap_or(0);
            (end.saturating_sub(limit), end)
        }
        (None, None) => (0, limit.min(ordered.len())),
    };
    let page = &ordered[start..end];
    let has_more = if before_id.is_some() && after_id.is_none() { start > 0 } else { end < ordered.len() };
    let data: Vec<Value> = page.iter().map(|m| m.to_json()).collect();
    let body = json!({
        "data": data,
        "has_more": has_more,
        "first_id": page.first().map(|m| m.model.name.clone()),
        "last_id": page.last().map(|m| m.model.name.clone()),
    });
    json_response(StatusCode::OK, &body, &request_id)
}

async fn get_model(State(shared): State<Arc<Anthropic>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let request_id = shared.new_id("req");
    if let Some(refusal) = shared.check_headers(&headers, &request_id) {
        return refusal;
    }
    match shared.find_model(&id) {
        Some(entry) => json_response(StatusCode::OK, &entry.to_json(), &request_id),
        None => error_response(404, &format!("model: {id}"), &request_id),
    }
}

/// `a=1&b=x%2Dy` as decoded pairs (`+` is a space, as in forms).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key), percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Messages

/// What a message request asks for, validated the way the API does.
struct ChatParams {
    model: String,
    stream: bool,
    /// `max_tokens`: chunks allowed.
    limit: usize,
    stop_sequences: Vec<String>,
    /// `input_tokens`: whitespace-separated words in the system prompt and all messages, at least 1.
    input_words: usize,
    /// Text of the last user message, for [`Reply::Echo`].
    last_user: String,
    /// `thinking.display: "omitted"`: thinking blocks carry their signature but no text.
    omit_thinking: bool,
    /// The last message holds tool results alone (see [`FakeModel::after_tool_result`]).
    tool_result_last: bool,
}

async fn messages(State(shared): State<Arc<Anthropic>>, headers: HeaderMap, body: Bytes) -> Response {
    let request_id = shared.new_id("req");
    let parsed = serde_json::from_slice::<Value>(&body);
    if shared.harness.recording() {
        shared.harness.record(Some(headers.clone()), parsed.as_ref().ok().cloned());
    }
    if let Some(refusal) = shared.check_headers(&headers, &request_id) {
        return refusal;
    }
    if body.len() > MAX_REQUEST_BYTES {
        return error_response(413, "Request exceeds the maximum allowed number of bytes.", &request_id);
    }
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return error_response(400, &format!("There was an error parsing the body: {err}"), &request_id),
    };
    let params = match chat_params(&request) {
        Ok(params) => params,
        Err(message) => return error_response(400, &message, &request_id),
    };
    let Some(entry) = shared.find_model(&params.model) else {
        return error_response(404, &format!("model: {}", params.model), &request_id);
    };
    // The newest models take adaptive thinking only.
    if entry.model.capabilities.iter().any(|c| c == ADAPTIVE_THINKING) && request["thinking"]["type"] == "enabled" {
        let message = "\"thinking.type.enabled\" is not supported for this model. Use \"thinking.type.adaptive\" and \
                       \"output_config.effort\" to control thinking behavior.";
        return error_response(400, message, &request_id);
    }
    if shared.harness.busy() {
        return error_response(529, OVERLOADED_MESSAGE, &request_id);
    }
    if let Some(failure) = shared.harness.take_failure() {
        let mut response = error_response(failure.status, default_message(failure.status), &request_id);
        failure.add_retry_after(&mut response);
        return response;
    }

    let guard = match shared.harness.begin_stream(&entry.model).await {
        Ok(guard) => guard,
        Err((status, message)) => return error_response(status, message, &request_id),
    };
    let message_id = shared.new_id("msg");
    let model = entry.model.answering(params.tool_result_last);
    let generation = Generation::new(model.clone(), &params);
    if params.stream {
        stream_response(
            StreamBody {
                generation,
                guard,
                queue: VecDeque::new(),
                started: false,
                finished: false,
                completes_with_queue: false,
                message_id,
                model: params.model,
                input_words: params.input_words,
                turn: matches!(model.reply, Reply::Turn(_)),
                omit_thinking: params.omit_thinking,
                block: None,
                blocks: 0,
            },
            &request_id,
        )
    } else {
        message_response(generation, guard, &message_id, &params, &request_id).await
    }
}

/// Top-level fields of `POST /v1/messages/count_tokens`: a messages request's without `max_tokens`,
/// `stream`, the sampling options and `metadata`; anything else is refused.
const COUNT_FIELDS: [&str; 9] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "mcp_servers",
    "context_management",
];

/// `POST /v1/messages/count_tokens`: the request checked as a message request is (minus
/// `max_tokens`, which is refused here like any field the endpoint does not take), then
/// `{"input_tokens"}`: [`fake_token_count`] of the system prompt's and the messages' words, the
/// messages and the tools. An unknown model is the 404 of `/v1/messages`.
async fn count_tokens(State(shared): State<Arc<Anthropic>>, headers: HeaderMap, body: Bytes) -> Response {
    let request_id = shared.new_id("req");
    let parsed = serde_json::from_slice::<Value>(&body);
    if shared.harness.recording()
        && let Ok(value) = &parsed
    {
        shared.count_requests.lock().unwrap().push(value.clone());
    }
    if let Some(refusal) = shared.check_headers(&headers, &request_id) {
        return refusal;
    }
    if body.len() > MAX_REQUEST_BYTES {
        return error_response(413, "Request exceeds the maximum allowed number of bytes.", &request_id);
    }
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return error_response(400, &format!("There was an error parsing the body: {err}"), &request_id),
    };
    let (model, count) = match count_params(&request) {
        Ok(counted) => counted,
        Err(message) => return error_response(400, &message, &request_id),
    };
    let Some(entry) = shared.find_model(&model) else {
        return error_response(404, &format!("model: {model}"), &request_id);
    };
    if shared.harness.busy() {
        return error_response(529, OVERLOADED_MESSAGE, &request_id);
    }
    if let Some(failure) = shared.harness.take_failure() {
        let mut response = error_response(failure.status, default_message(failure.status), &request_id);
        failure.add_retry_after(&mut response);
        return response;
    }
    if let Behaviour::HttpError { status, message } = &entry.model.behaviour {
        return error_response(*status, message, &request_id);
    }
    json_response(StatusCode::OK, &json!({ "input_tokens": count }), &request_id)
}

/// A count request's model and count; `Err` is the 400 message the API would answer with.
fn count_params(request: &Value) -> Result<(String, usize), String> {
    let Value::Object(fields) = request else {
        return Err("Input should be a valid dictionary or object to extract fields from".to_owned());
    };
    if let Some(extra) = fields.keys().find(|k| !COUNT_FIELDS.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    let model = match fields.get("model") {
        None => return Err("model: Field required".to_owned()),
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(_) => return Err("model: Input should be a valid, non-empty string".to_owned()),
    };
    let mut words = match fields.get("system") {
        None | Some(Value::Null) => 0,
        Some(system) => count_words(&text_of(system, "system")?),
    };
    let messages = match fields.get("messages") {
        None => return Err("messages: Field required".to_owned()),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err("messages: Input should be a valid list".to_owned()),
    };
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message.get("role").and_then(Value::as_str), Some("user" | "assistant")) {
            return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
        }
        let Some(content) = message.get("content") else {
            return Err(format!("messages.{i}.content: Field required"));
        };
        words += count_words(&text_of(content, &format!("messages.{i}.content"))?);
    }
    check_beyond_text(fields, usize::MAX)?;
    let tools = fields.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let descriptions = tools.iter().map(|tool| tool.get("description").and_then(Value::as_str).unwrap_or_default());
    Ok((model, fake_token_count(words, messages.len(), descriptions)))
}

/// Reads what a message request asks for; `Err` is the 400 message the API would answer with.
fn chat_params(request: &Value) -> Result<ChatParams, String> {
    let Value::Object(fields) = request else {
        return Err("Input should be a valid dictionary or object to extract fields from".to_owned());
    };
    if let Some(extra) = fields.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    let model = match fields.get("model") {
        None => return Err("model: Field required".to_owned()),
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(_) => return Err("model: Input should be a valid, non-empty string".to_owned()),
    };
    let limit = match fields.get("max_tokens") {
        None => return Err("max_tokens: Field required".to_owned()),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(n), _) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            (Some(_), _) | (None, Some(_)) => {
                return Err("max_tokens: Input should be greater than or equal to 1".to_owned());
            }
            (None, None) => return Err("max_tokens: Input should be a valid integer".to_owned()),
        },
        Some(_) => return Err("max_tokens: Input should be a valid integer".to_owned()),
    };
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err("stream: Input should be a valid boolean".to_owned()),
    };
    for (field, max) in [("temperature", 1.0), ("top_p", 1.0)] {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_f64().is_some_and(|v| (0.0..=max).contains(&v)) => {}
            Some(Value::Number(_)) => return Err(format!("{field}: Input should be between 0 and {max}")),
            Some(_) => return Err(format!("{field}: Input should be a valid number")),
        }
    }
    match fields.get("top_k") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() => {}
        Some(_) => return Err("top_k: Input should be a valid non-negative integer".to_owned()),
    }
    let stop_sequences = match fields.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut sequences = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => sequences.push(s.clone()),
                    _ => return Err(format!("stop_sequences.{i}: Input should be a valid string")),
                }
            }
            sequences
        }
        Some(_) => return Err("stop_sequences: Input should be a valid list".to_owned()),
    };

    let mut input_words = match fields.get("system") {
        None | Some(Value::Null) => 0,
        Some(system) => count_words(&text_of(system, "system")?),
    };
    let mut last_user = String::new();
    let mut tool_result_last = false;
    match fields.get("messages") {
        None => return Err("messages: Field required".to_owned()),
        Some(Value::Array(messages)) => {
            for (i, message) in messages.iter().enumerate() {
                let role = message.get("role").and_then(Value::as_str);
                if !matches!(role, Some("user" | "assistant")) {
                    return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
                }
                let Some(content) = message.get("content") else {
                    return Err(format!("messages.{i}.content: Field required"));
                };
                let text = text_of(content, &format!("messages.{i}.content"))?;
                input_words += count_words(&text);
                if role == Some("user") {
                    last_user = text;
                }
                // A message of tool results alone ends the second turn of a tool loop: an echo
                // repeats the last result.
                let results: Vec<&Value> = match content {
                    Value::Array(blocks) if blocks.iter().all(|b| b["type"] == "tool_result") => {
                        blocks.iter().collect()
                    }
                    _ => Vec::new(),
                };
                tool_result_last = !results.is_empty();
                if let Some(result) = results.last() {
                    last_user = match &result["content"] {
                        Value::Null => String::new(),
                        content => text_of(content, &format!("messages.{i}.content"))?,
                    };
                }
            }
        }
        Some(_) => return Err("messages: Input should be a valid list".to_owned()),
    }

    let omit_thinking = check_beyond_text(fields, limit)?;
    Ok(ChatParams {
        model,
        stream,
        limit,
        stop_sequences,
        input_words: input_words.max(1),
        last_user,
        omit_thinking,
        tool_result_last,
    })
}

/// The API's checks of tools, tool choice, thinking, structured output and content blocks, in
/// its words where known (the ones clients trip over: tool results that do not start the message
/// after the calls, ids outside `^[a-zA-Z0-9_-]+$`, a thinking budget under 1,024 or not under
/// `max_tokens`, thinking in history without its signature, a forced tool with thinking on).
/// `Ok` says whether thinking text is to be omitted.
fn check_beyond_text(fields: &serde_json::Map<String, Value>, max_tokens: usize) -> Result<bool, String> {
    let mut tool_names = Vec::new();
    match fields.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                match tool.get("name").and_then(Value::as_str) {
                    Some(name) if is_id(name) && name.len() <= 128 => tool_names.push(name.to_owned()),
                    _ => {
                        return Err(format!(
                            "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                        ));
                    }
                }
                match tool.get("input_schema") {
                    Some(schema @ Value::Object(_)) if schema["type"] == "object" => {}
                    Some(Value::Object(_)) => {
                        return Err(format!("tools.{i}.custom.input_schema.type: Input should be 'object'"));
                    }
                    _ => return Err(format!("tools.{i}.custom.input_schema: Field required")),
                }
            }
        }
        Some(_) => return Err("tools: Input should be a valid list".to_owned()),
    }
    let forced = match fields.get("tool_choice") {
        None | Some(Value::Null) => false,
        Some(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("auto" | "none") => false,
            Some("any") => true,
            Some("tool") => match choice.get("name").and_then(Value::as_str) {
                Some(name) if tool_names.iter().any(|n| n == name) => true,
                _ => return Err("tool_choice.tool.name: the named tool is not one of `tools`".to_owned()),
            },
            _ => return Err("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'".to_owned()),
        },
    };
    let mut omit_thinking = false;
    if let Some(thinking) = fields.get("thinking").filter(|t| !t.is_null()) {
        match thinking.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                let budget = thinking.get("budget_tokens").and_then(Value::as_u64);
                let Some(budget) = budget else {
                    return Err("thinking.enabled.budget_tokens: Field required".to_owned());
                };
                if budget < 1024 {
                    return Err(
                        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".to_owned()
                    );
                }
                if budget as usize >= max_tokens {
                    return Err("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our \
                                documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                        .to_owned());
                }
                if forced {
                    return Err("Thinking may not be enabled when tool_choice forces tool use.".to_owned());
                }
                match thinking.get("display").and_then(Value::as_str) {
                    None | Some("summarized") => {}
                    Some("omitted") => omit_thinking = true,
                    Some(_) => {
                        return Err("thinking.enabled.display: Input should be 'summarized' or 'omitted'".to_owned());
                    }
                }
            }
            Some("adaptive") => {
                if forced {
                    return Err("Thinking may not be enabled when tool_choice forces tool use.".to_owned());
                }
                omit_thinking = thinking.get("display").and_then(Value::as_str) == Some("omitted");
            }
            Some("disabled") => {}
            _ => return Err("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'".to_owned()),
        }
    }
    if let Some(config) = fields.get("output_config") {
        if let Some(format) = config.get("format") {
            if format["type"] != "json_schema" {
                return Err("output_config.format.type: Input should be 'json_schema'".to_owned());
            }
            if !format["schema"].is_object() {
                return Err("output_config.format.schema: Input should be a valid dictionary".to_owned());
            }
        }
        match config.get("effort").map(|e| e.as_str()) {
            None | Some(Some("low" | "medium" | "high" | "max")) => {}
            Some(_) => return Err("output_config.effort: Input should be 'low', 'medium', 'high' or 'max'".to_owned()),
        }
    }
    if let Some(Value::Array(messages)) = fields.get("messages") {
        check_blocks(messages)?;
    }
    Ok(omit_thinking)
}

/// Whether `id` matches `^[a-zA-Z0-9_-]+$`, the API's pattern for tool-use ids and tool names.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The content blocks of every message, and the pairing of tool results with the calls before.
fn check_blocks(messages: &[Value]) -> Result<(), String> {
    let empty = Vec::new();
    let blocks_of = |message: &Value| message.get("content").and_then(Value::as_array).unwrap_or(&empty).clone();
    let mut open_calls: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let blocks = blocks_of(message);
        // The results that start this message answer the previous message's calls, all of them.
        let leading: Vec<String> = blocks
            .iter()
            .take_while(|b| b["type"] == "tool_result")
            .map(|b| b["tool_use_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !open_calls.is_empty() {
            let missing: Vec<&str> = open_calls.iter().filter(|id| !leading.contains(id)).map(String::as_str).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each \
                     `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i - 1,
                    missing.join(", ")
                ));
            }
        }
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match block["type"].as_str().unwrap_or_default() {
                "tool_use" => {
                    if !block["id"].as_str().is_some_and(is_id) {
                        return Err(format!("{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"));
                    }
                    if !block["input"].is_object() {
                        return Err(format!("{at}.tool_use.input: Input should be a valid dictionary"));
                    }
                }
                "tool_result" => {
                    let id = block["tool_use_id"].as_str().unwrap_or_default();
                    if !is_id(id) {
                        return Err(format!(
                            "{at}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                        ));
                    }
                    if j >= leading.len() {
                        return Err(format!(
                            "messages.{i}: messages following `tool_use` blocks must begin with a matching number of \
                             `tool_result` blocks"
                        ));
                    }
                    if !open_calls.iter().any(|call| call == id) {
                        return Err(format!(
                            "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` \
                             block must have a corresponding `tool_use` block in the previous message."
                        ));
                    }
                }
                "thinking" if block["signature"].as_str().is_none_or(str::is_empty) => {
                    return Err(format!("{at}.thinking.signature: Field required"));
                }
                "redacted_thinking" if block["data"].as_str().is_none_or(str::is_empty) => {
                    return Err(format!("{at}.redacted_thinking.data: Field required"));
                }
                "image" => check_image(&block["source"], &at)?,
                _ => {}
            }
        }
        open_calls = blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
            .collect();
    }
    Ok(())
}

/// An image block's `source`: base64 data of an accepted type, or a URL the API fetches.
fn check_image(source: &Value, at: &str) -> Result<(), String> {
    match source["type"].as_str() {
        Some("base64") => {
            let media_type = source["media_type"].as_str().unwrap_or_default();
            if !["image/jpeg", "image/png", "image/gif", "image/webp"].contains(&media_type) {
                return Err(format!(
                    "{at}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or \
                     'image/webp'"
                ));
            }
            let data = source["data"].as_str().unwrap_or_default();
            let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
            if data.is_empty() || !data.len().is_multiple_of(4) || !data.bytes().all(base64) {
                return Err(format!("{at}.image.source.base64.data: The image data is not valid base64"));
            }
            Ok(())
        }
        Some("url")
            if source["url"].as_str().is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")) =>
        {
            Ok(())
        }
        Some("url") => Err(format!("{at}.image.source.url.url: Input should be a valid URL")),
        _ => Err(format!("{at}.image.source: Input tag should be 'base64' or 'url'")),
    }
}

/// The text of a `content` or `system` value: a string, or the `text` of its text blocks.
fn text_of(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                let Some(kind) = block.get("type").and_then(Value::as_str) else {
                    return Err(format!("{field}.{i}.type: Field required"));
                };
                if kind == "text" {
                    match block.get("text") {
                        Some(Value::String(part)) => {
                            if !text.is_empty() {
                                text.push(' ');
                            }
                            text.push_str(part);
                        }
                        _ => return Err(format!("{field}.{i}.text: Field required")),
                    }
                }
            }
            Ok(text)
        }
        _ => Err(format!("{field}: Input should be a valid string or list of content blocks")),
    }
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Why a reply ended, as `stop_reason` and `stop_sequence` say it.
#[derive(Clone, Copy)]
struct Stop<'a> {
    reason: &'static str,
    sequence: Option<&'a str>,
}

/// The model's script for one request (see [`script::Generation`]), cut short by the request's
/// `stop_sequences`. Shared by the streaming and non-streaming paths so both tell the same story.
struct Generation {
    script: script::Generation,
    stop_sequences: Vec<String>,
    /// The stop sequence found in the last chunk sent, which ends the reply next.
    stopped_by: Option<usize>,
}

impl Generation {
    fn new(model: Arc<FakeModel>, params: &ChatParams) -> Self {
        Generation {
            script: script::Generation::new(model, &params.last_user, params.limit),
            stop_sequences: params.stop_sequences.clone(),
            stopped_by: None,
        }
    }

    /// Content chunks sent so far: the `output_tokens`.
    fn sent(&self) -> usize {
        self.script.sent()
    }

    /// Produces the next step; must not be called again after a step other than `Content`.
    async fn next(&mut self) -> Step<'_, Stop<'_>> {
        if let Some(index) = self.stopped_by {
            flush_point().await;
            return self.script.ending(Stop { reason: "stop_sequence", sequence: Some(&self.stop_sequences[index]) });
        }
        let chunk = match self.script.next_chunk().await {
            Ok(chunk) => chunk,
            Err(Finish::Stop) => return self.script.ending(Stop { reason: "end_turn", sequence: None }),
            Err(Finish::Length) => return self.script.ending(Stop { reason: "max_tokens", sequence: None }),
        };
        // A turn's pieces other than text (thinking, signatures, calls) are not searched for stop
        // sequences, as the API does not.
        if matches!(chunk, script::Chunk::Piece(_)) {
            match self.script.take_step::<Stop<'_>>(chunk) {
                Step::Content(text) => {
                    let stop = find_stop(&self.stop_sequences, text);
                    if let Some((index, _)) = stop {
                        self.stopped_by = Some(index);
                    }
                    return Step::Content(stop.map_or(text, |(_, at)| &text[..at]));
                }
                Step::Piece(piece) => return Step::Piece(piece),
                _ => unreachable!("take_step gives content or a piece"),
            }
        }
        let stop = find_stop(&self.stop_sequences, self.script.text(chunk));
        if let Some((index, at)) = stop {
            self.stopped_by = Some(index);
            if at == 0 {
                let sequence = Some(self.stop_sequences[index].as_str());
                return self.script.ending(Stop { reason: "stop_sequence", sequence });
            }
        }
        let text = self.script.take(chunk);
        Step::Content(stop.map_or(text, |(_, at)| &text[..at]))
    }

    /// Whether the reply makes tool calls (it then stops with `tool_use`).
    fn calls_tools(&self) -> bool {
        self.script.calls_tools()
    }
}

/// The earliest stop sequence in `text`: its index and where it starts.
fn find_stop(stop_sequences: &[String], text: &str) -> Option<(usize, usize)> {
    stop_sequences
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .filter_map(|(i, s)| text.find(s.as_str()).map(|at| (i, at)))
        .min_by_key(|&(_, at)| at)
}

/// The kind of the content block a stream has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    ToolUse,
}

/// The body of a streamed reply.
struct StreamBody {
    generation: Generation,
    guard: StreamGuard,
    /// Events ready to go out before the next generation step (the opening and closing ones).
    queue: VecDeque<Bytes>,
    started: bool,
    /// No more generation steps: only the queue is left.
    finished: bool,
    /// The queue ends with `message_stop`: the stream completes when it has been handed over.
    completes_with_queue: bool,
    message_id: String,
    model: String,
    input_words: usize,
    /// A [`Reply::Turn`]: blocks open as its pieces come, rather than one text block up front.
    turn: bool,
    omit_thinking: bool,
    /// The open content block: its index and kind. A block stays open until the next one
    /// starts or the message ends, so an error can cut one short, as it does on the API.
    block: Option<(usize, BlockKind)>,
    /// Blocks started so far: the next block's index.
    blocks: usize,
}

impl StreamBody {
    fn close_block(&mut self) {
        if let Some((index, _)) = self.block.take() {
            self.queue
                .push_back(named_event("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
        }
    }

    fn start_block(&mut self, kind: BlockKind, content_block: Value) -> usize {
        self.close_block();
        let index = self.blocks;
        self.blocks += 1;
        self.block = Some((index, kind));
        self.queue.push_back(named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    /// The open block if it is of `kind`, else a new one.
    fn block_of(&mut self, kind: BlockKind) -> usize {
        match self.block {
            Some((index, open)) if open == kind => index,
            _ => self.start_block(
                kind,
                match kind {
                    BlockKind::Text => json!({"type": "text", "text": ""}),
                    BlockKind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    BlockKind::ToolUse => unreachable!("tool_use blocks are started with their call"),
                },
            ),
        }
    }

    fn block_delta(&mut self, index: usize, delta: Value) {
        self.queue.push_back(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    /// A piece of a turn, as the API streams it: text and thinking in their blocks, a signature
    /// closing its thinking block, each tool call a `tool_use` block whose input streams in
    /// `input_json_delta` fragments (`""` alone for a call without arguments).
    fn queue_piece(&mut self, piece: &Piece) {
        match piece {
            Piece::Text(text) => {
                let index = self.block_of(BlockKind::Text);
                self.block_delta(index, json!({"type": "text_delta", "text": text}));
            }
            Piece::Thinking(text) => {
                let index = self.block_of(BlockKind::Thinking);
                if !self.omit_thinking {
                    self.block_delta(index, json!({"type": "thinking_delta", "thinking": text}));
                }
            }
            Piece::ThinkingSignature(signature) => {
                let index = self.block_of(BlockKind::Thinking);
                let signature = String::from_utf8_lossy(signature);
                self.block_delta(index, json!({"type": "signature_delta", "signature": signature}));
                self.close_block();
            }
            Piece::ToolCalls(calls) => {
                for call in calls {
                    let id = call.id.clone().unwrap_or_else(|| format!("toolu_01FakeAnthropic{:010}", self.blocks));
                    let index = self.start_block(
                        BlockKind::ToolUse,
                        json!({"type": "tool_use", "id": id, "name": call.name, "input": {}}),
                    );
                    for fragment in call.fragments() {
                        self.block_delta(index, json!({"type": "input_json_delta", "partial_json": fragment}));
                    }
                }
            }
        }
    }
}

impl Pieces for StreamBody {
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if !self.started {
            self.started = true;
            self.queue.push_back(named_event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_words, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 1},
                }}),
            ));
            if !self.turn {
                self.block_of(BlockKind::Text);
            }
            self.queue.push_back(named_event("ping", &json!({"type": "ping"})));
        }
        if let Some(event) = self.queue.pop_front() {
            flush_point().await;
            if self.queue.is_empty() && self.completes_with_queue {
                self.guard.finish(true);
            }
            return Some(Ok(event));
        }
        if self.finished {
            return None;
        }
        if self.guard.shutting_down() {
            self.finished = true;
            self.guard.finish(false);
            return Some(Err(io::Error::other("fake Anthropic server shut down")));
        }
        // The generation hands control back to the runtime before each step.
        match self.generation.next().await {
            // Plain replies keep to their one text block, written directly.
            Step::Content(text) if !self.turn => Some(Ok(delta_event(text))),
            Step::Content(text) => {
                let piece = Piece::Text(text.to_owned());
                self.queue_piece(&piece);
                self.queue.pop_front().map(Ok)
            }
            Step::Piece(piece) => {
                let piece = piece.clone();
                self.queue_piece(&piece);
                self.queue.pop_front().map(Ok)
            }
            Step::Done(stop) => {
                let (mut reason, sequence) = (stop.reason, stop.sequence.map(str::to_owned));
                if reason == "end_turn" && self.generation.calls_tools() {
                    reason = "tool_use";
                }
                self.close_block();
                self.queue.extend([
                    named_event(
                        "message_delta",
                        &json!({"type": "message_delta",
                                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                "usage": {"output_tokens": self.generation.sent()}}),
                    ),
                    named_event("message_stop", &json!({"type": "message_stop"})),
                ]);
                self.finished = true;
                self.completes_with_queue = true;
                self.queue.pop_front().map(Ok)
            }
            Step::Error(message) => {
                let event = error_event(message);
                self.finished = true;
                self.guard.finish(true);
                Some(Ok(event))
            }
            Step::EndWithoutDone => {
                self.finished = true;
                self.guard.finish(true);
                None
            }
            Step::Abort => {
                self.finished = true;
                self.guard.finish(false);
                Some(Err(io::Error::other("fake Anthropic dropped the connection")))
            }
        }
    }
}

fn stream_response(body: StreamBody, request_id: &str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, SSE_CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", request_id)
        .body(streamed_body(body))
        .expect("static response parts are valid")
}

/// Without `stream`: plays the whole script (with its delays), then answers with one message
/// whose content blocks are what the stream would have held.
async fn message_response(
    mut generation: Generation,
    mut guard: StreamGuard,
    message_id: &str,
    params: &ChatParams,
    request_id: &str,
) -> Response {
    let mut content: Vec<Value> = Vec::new();
    let stop = loop {
        match generation.next().await {
            Step::Content(text) => match content.last_mut() {
                Some(Value::Object(block)) if block["type"] == "text" => {
                    let joined = format!("{}{text}", block["text"].as_str().unwrap_or_default());
                    block.insert("text".into(), Value::String(joined));
                }
                _ => content.push(json!({"type": "text", "text": text})),
            },
            Step::Piece(Piece::Thinking(text)) => {
                let text = if params.omit_thinking { "" } else { text.as_str() };
                match content.last_mut() {
                    Some(Value::Object(block)) if block["type"] == "thinking" && block["signature"] == "" => {
                        let joined = format!("{}{text}", block["thinking"].as_str().unwrap_or_default());
                        block.insert("thinking".into(), Value::String(joined));
                    }
                    _ => content.push(json!({"type": "thinking", "thinking": text, "signature": ""})),
                }
            }
            Step::Piece(Piece::ThinkingSignature(signature)) => {
                let signature = Value::String(String::from_utf8_lossy(signature).into_owned());
                match content.last_mut() {
                    Some(Value::Object(block)) if block["type"] == "thinking" && block["signature"] == "" => {
                        block.insert("signature".into(), signature);
                    }
                    _ => content.push(json!({"type": "thinking", "thinking": "", "signature": signature})),
                }
            }
            Step::Piece(Piece::ToolCalls(calls)) => {
                for call in calls {
                    let id = call.id.clone().unwrap_or_else(|| format!("toolu_01FakeAnthropic{:010}", content.len()));
                    let input = serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| json!({}));
                    content.push(json!({"type": "tool_use", "id": id, "name": call.name, "input": input}));
                }
            }
            Step::Piece(Piece::Text(text)) => content.push(json!({"type": "text", "text": text})),
            Step::Done(stop) => break Some((stop.reason, stop.sequence.map(str::to_owned))),
            Step::EndWithoutDone => break None,
            Step::Error(message) => {
                guard.finish(true);
                let status = if message == OVERLOADED_MESSAGE { 529 } else { 500 };
                return error_response(status, message, request_id);
            }
            Step::Abort => {
                guard.finish(false);
                return broken_response(JSON_CONTENT_TYPE, "fake Anthropic dropped the connection");
            }
        }
    };
    guard.finish(true);
    if content.is_empty() {
        content.push(json!({"type": "text", "text": ""}));
    }
    let (mut stop_reason, stop_sequence) = stop.map_or((None, None), |(reason, sequence)| (Some(reason), sequence));
    if stop_reason == Some("end_turn") && generation.calls_tools() {
        stop_reason = Some("tool_use");
    }
    let body = json!({
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": params.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": params.input_words, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": generation.sent()},
    });
    json_response(StatusCode::OK, &body, request_id)
}

/// `event: NAME\ndata: JSON\n\n`.
fn named_event(name: &str, data: &Value) -> Bytes {
    let mut event = Vec::with_capacity(96);
    let _ = write!(event, "event: {name}\ndata: ");
    serde_json::to_writer(&mut event, data).expect("serializing a JSON value into memory cannot fail");
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// One `content_block_delta`; the hot path, so written directly with one allocation.
fn delta_event(text: &str) -> Bytes {
    const HEAD: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":";
    let mut event = Vec::with_capacity(HEAD.len() + text.len() + 16);
    event.extend_from_slice(HEAD);
    serde_json::to_writer(&mut event, text).expect("serializing a string into memory cannot fail");
    event.extend_from_slice(b"}}\n\n");
    Bytes::from(event)
}

/// The mid-stream `error` event of [`Behaviour::ErrorAfter`].
fn error_event(message: &str) -> Bytes {
    let kind = if message == OVERLOADED_MESSAGE { "overloaded_error" } else { "api_error" };
    named_event("error", &json!({"type": "error", "error": {"type": kind, "message": message}}))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The `error.type` the API uses with each status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// What the API says for a status when a test does not script the message.
fn default_message(status: u16) -> &'static str {
    match error_type(status) {
        "authentication_error" => "invalid x-api-key",
        "billing_error" => "Your credit balance is too low to access the Anthropic API.",
        "permission_error" => "Your API key does not have permission to use the specified resource.",
        "not_found_error" => "Not Found",
        "request_too_large" => "Request exceeds the maximum allowed number of bytes.",
        "rate_limit_error" => "Number of request tokens has exceeded your per-minute rate limit.",
        "overloaded_error" => OVERLOADED_MESSAGE,
        "timeout_error" => "Request timed out.",
        "invalid_request_error" => "Invalid request.",
        _ => "Internal server error",
    }
}

fn error_response(status: u16, message: &str, request_id: &str) -> Response {
    let code = status_code(status);
    let body = json!({
        "type": "error",
        "error": {"type": error_type(code.as_u16()), "message": message},
        "request_id": request_id,
    });
    json_response(code, &body, request_id)
}

fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response {
    let body = serde_json::to_vec(body).expect("serializing a JSON value cannot fail");
    let mut response =
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE))], body).into_response();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", id);
    }
    response
}

/// RFC 3339 in UTC with whole seconds, as the Models API writes `created_at`.
fn rfc3339(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::script::Behaviour;

    const KEY: &str = "sk-ant-api03-fake-test-key-abcdef";

    fn client() -> reqwest::Client {
        // reqwest is built without a TLS crypto provider and will not build a client until one is
        // installed, even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().build().expect("build an HTTP client")
    }

    async fn fake_with(model: FakeModel) -> FakeAnthropic {
        let fake = FakeAnthropic::start().await.with_api_key(KEY);
        fake.add_model(model);
        fake
    }

    fn tokens(words: &[&str]) -> Reply {
        Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
    }

    async fn post(fake: &FakeAnthropic, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}/v1/messages", fake.base_url()))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("send")
    }

    async fn get(fake: &FakeAnthropic, path_and_query: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path_and_query}", fake.base_url()))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .expect("send")
    }

    fn body(model: &str, stream: bool) -> Value {
        json!({"model": model, "max_tokens": 100, "stream": stream,
               "system": "Be terse.", "messages": [{"role": "user", "content": "Say hi please"}]})
    }

    /// The events of an SSE body as (name, data), and whether the body ended cleanly.
    async fn read_events(mut response: reqwest::Response) -> (Vec<(String, Value)>, bool) {
        let mut text = Vec::new();
        let clean = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        let text = String::from_utf8(text).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "body ended mid-event: {text:?}");
        let events = text
            .split_terminator("\n\n")
            .map(|event| {
                let (name_line, data_line) = event.split_once('\n').expect("two lines per event");
                let name = name_line.strip_prefix("event: ").expect("an event line").to_owned();
                let data: Value = serde_json::from_str(data_line.strip_prefix("data: ").expect("a data line")).unwrap();
                assert_eq!(data["type"], json!(name), "the JSON type matches the event name");
                (name, data)
            })
            .collect();
        (events, clean)
    }

    async fn error_of(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        assert_eq!(response.headers()[header::CONTENT_TYPE], JSON_CONTENT_TYPE);
        assert!(response.headers().contains_key("request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert!(body["request_id"].as_str().unwrap().starts_with("req_"), "{body}");
        (status, body["error"].clone())
    }

    #[tokio::test]
    async fn a_streamed_reply_has_the_real_event_sequence() {
        let fake = fake_with(FakeModel::new("claude-x").with_reply(tokens(&["Hi", " there"]))).await;
        let response = post(&fake, &body("claude-x", true)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], SSE_CONTENT_TYPE);
        let (events, clean) = read_events(response).await;
        assert!(clean);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &events[0].1["message"];
        assert_eq!(start["model"], "claude-x");
        assert!(start["id"].as_str().unwrap().starts_with("msg_"));
        // "Be terse." and "Say hi please".
        assert_eq!(start["usage"]["input_tokens"], 5);
        assert_eq!(events[3].1["delta"], json!({"type": "text_delta", "text": "Hi"}));
        assert_eq!(events[4].1["delta"]["text"], " there");
        assert_eq!(events[6].1["delta"], json!({"stop_reason": "end_turn", "stop_sequence": null}));
        assert_eq!(events[6].1["usage"], json!({"output_tokens": 2}));
        assert_eq!(fake.completed_streams(), 1);
        assert_eq!(fake.active_streams(), 0);
        assert_eq!(fake.chat_requests(), [body("claude-x", true)]);
        assert_eq!(fake.request_headers()[0]["x-api-key"], KEY);
    }

    #[tokio::test]
    async fn limits_and_stop_sequences_end_the_reply() {
        let fake = fake_with(FakeModel::new("claude-x").with_reply(Reply::Endless)).await;
        let mut request = body("claude-x", true);
        request["max_tokens"] = json!(3);
        let (events, _) = read_events(post(&fake, &request).await).await;
        let deltas = events.iter().filter(|(name, _)| name == "content_block_delta").count();
        assert_eq!(deltas, 3);
        assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "max_tokens");

        fake.add_model(FakeModel::new("claude-y").with_reply(tokens(&["a", "b##c", "d"])));
        let mut request = body("claude-y", true);
        request["stop_sequences"] = json!(["##"]);
        let (events, _) = read_events(post(&fake, &request).await).await;
        let texts: Vec<&str> = events.iter().filter_map(|(_, data)| data["delta"]["text"].as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(events[events.len() - 2].1["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": "##"}));
    }

    #[tokio::test]
    async fn a_non_streamed_reply_is_one_message() {
        let fake = fake_with(FakeModel::new("claude-x")).await;
        let response = post(&fake, &body("claude-x", false)).await;
        assert_eq!(response.status(), 200);
        let message: Value = response.json().await.unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"], json!([{"type": "text", "text": "You said: Say hi please"}]));
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(message["usage"]["input_tokens"], 5);
        // "You", " said:", " Say", " hi", " please".
        assert_eq!(message["usage"]["output_tokens"], 5);
    }

    #[tokio::test]
    async fn behaviours_map_to_anthropic_failures() {
        let error = Behaviour::ErrorAfter { tokens: 1, message: OVERLOADED_MESSAGE.into() };
        let fake = fake_with(FakeModel::new("err").with_behaviour(error)).await;
        let (events, clean) = read_events(post(&fake, &body("err", true)).await).await;
        assert!(clean);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(data["error"], json!({"type": "overloaded_error", "message": "Overloaded"}));

        fake.add_model(FakeModel::new("err").with_behaviour(Behaviour::ErrorAfter { tokens: 0, message: "x".into() }));
        let (events, _) = read_events(post(&fake, &body("err", true)).await).await;
        assert_eq!(events.last().unwrap().1["error"]["type"], "api_error");

        fake.add_model(FakeModel::new("cut").with_behaviour(Behaviour::EndWithoutDone { tokens: 2 }));
        let (events, clean) = read_events(post(&fake, &body("cut", true)).await).await;
        assert!(clean);
        assert_eq!(events.last().unwrap().0, "content_block_delta");
        assert_eq!(events.len(), 5);

        fake.add_model(FakeModel::new("drop").with_behaviour(Behaviour::DropConnectionAfter { tokens: 1 }));
        let (events, clean) = read_events(post(&fake, &body("drop", true)).await).await;
        assert!(!clean, "the connection should break");
        assert_eq!(events.last().unwrap().0, "content_block_delta");

        let http = Behaviour::HttpError { status: 500, message: "kaput".into() };
        fake.add_model(FakeModel::new("http").with_behaviour(http));
        let (status, error) = error_of(post(&fake, &body("http", true)).await).await;
        assert_eq!((status, error), (500, json!({"type": "api_error", "message": "kaput"})));
    }

    #[tokio::test]
    async fn refusals_have_anthropic_error_bodies() {
        let fake = fake_with(FakeModel::new("claude-x")).await;

        let (status, error) = error_of(post(&fake, &body("nope", true)).await).await;
        assert_eq!((status, error), (404, json!({"type": "not_found_error", "message": "model: nope"})));

        let mut extra = body("claude-x", true);
        extra["seed"] = json!(1);
        let (status, error) = error_of(post(&fake, &extra).await).await;
        assert_eq!((status, error["type"].as_str()), (400, Some("invalid_request_error")));
        assert_eq!(error["message"], "seed: Extra inputs are not permitted");

        let mut no_max = body("claude-x", true);
        no_max.as_object_mut().unwrap().remove("max_tokens");
        let (status, error) = error_of(post(&fake, &no_max).await).await;
        assert_eq!((status, error["message"].as_str()), (400, Some("max_tokens: Field required")));

        let mut hot = body("claude-x", true);
        hot["temperature"] = json!(1.5);
        assert_eq!(error_of(post(&fake, &hot).await).await.0, 400);

        let mut system_role = body("claude-x", true);
        system_role["messages"] = json!([{"role": "system", "content": "x"}]);
        assert_eq!(error_of(post(&fake, &system_role).await).await.0, 400);

        fake.set_busy(true);
        let (status, error) = error_of(post(&fake, &body("claude-x", true)).await).await;
        assert_eq!((status, error), (529, json!({"type": "overloaded_error", "message": "Overloaded"})));
        fake.set_busy(false);

        fake.fail_next(1, 429, Some(7));
        let response = post(&fake, &body("claude-x", true)).await;
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let (status, error) = error_of(response).await;
        assert_eq!((status, error["type"].as_str()), (429, Some("rate_limit_error")));
        let (events, clean) = read_events(post(&fake, &body("claude-x", true)).await).await;
        assert!(clean && events.last().unwrap().0 == "message_stop");
        assert_eq!(fake.active_streams(), 0);
    }

    #[tokio::test]
    async fn keys_and_versions_are_checked() {
        let fake = fake_with(FakeModel::new("claude-x")).await;
        let url = format!("{}/v1/messages", fake.base_url());
        let send = |key: Option<&str>, version: Option<&str>| {
            let mut request = client().post(&url).json(&body("claude-x", true));
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            if let Some(version) = version {
                request = request.header("anthropic-version", version);
            }
            request.send()
        };

        let (status, error) = error_of(send(None, Some("2023-06-01")).await.unwrap()).await;
        assert_eq!((status, error["type"].as_str()), (401, Some("authentication_error")));
        assert_eq!(error["message"], "x-api-key header is required");

        let wrong = "sk-ant-api03-wrong-key-0000000000";
        let (status, error) = error_of(send(Some(wrong), Some("2023-06-01")).await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(error["message"], "invalid x-api-key: sk-ant-a***0000");

        let (status, error) = error_of(send(Some(KEY), None).await.unwrap()).await;
        assert_eq!((status, error["message"].as_str()), (400, Some("anthropic-version: header is required")));
        assert_eq!(error_of(send(Some(KEY), Some("2099-01-01")).await.unwrap()).await.0, 400);
        assert_eq!(send(Some(KEY), Some("2023-06-01")).await.unwrap().status(), 200);

        // Refused requests are recorded too, headers included.
        assert_eq!(fake.request_headers().len(), 5);
        assert_eq!(fake.request_headers()[1]["x-api-key"], wrong);
    }

    #[tokio::test]
    async fn dropping_a_stream_counts_as_a_disconnect() {
        let model = FakeModel::new("claude-x").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(5));
        let fake = fake_with(model).await;
        let mut response = post(&fake, &body("claude-x", true)).await;
        response.chunk().await.unwrap();
        assert_eq!(fake.active_streams(), 1);
        drop(response);
        assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await);
        assert_eq!((fake.active_streams(), fake.completed_streams()), (0, 0));
    }

    #[tokio::test]
    async fn models_are_listed_newest_first_with_pagination() {
        let fake = FakeAnthropic::start().await.with_api_key(KEY);
        for name in ["claude-a", "claude-b", "claude-c"] {
            fake.add_model(FakeModel::new(name));
        }
        let page: Value = get(&fake, "/v1/models?limit=2").await.json().await.unwrap();
        let ids: Vec<&str> = page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["claude-c", "claude-b"]);
        assert_eq!((page["has_more"].as_bool(), page["last_id"].as_str()), (Some(true), Some("claude-b")));
        assert_eq!(page["data"][0]["type"], "model");
        assert_eq!(page["data"][0]["display_name"], "Claude C");

        let page: Value = get(&fake, "/v1/models?limit=2&after_id=claude-b").await.json().await.unwrap();
        assert_eq!(page["data"][0]["id"], "claude-a");
        assert_eq!((page["has_more"].as_bool(), page["first_id"].as_str()), (Some(false), Some("claude-a")));

        let page: Value = get(&fake, "/v1/models?before_id=claude-a&limit=1").await.json().await.unwrap();
        assert_eq!((page["data"][0]["id"].as_str(), page["has_more"].as_bool()), (Some("claude-b"), Some(true)));

        let model: Value = get(&fake, "/v1/models/claude-b").await.json().await.unwrap();
        assert_eq!(model["id"], "claude-b");
        let (status, error) = error_of(get(&fake, "/v1/models/claude-z").await).await;
        assert_eq!((status, error["type"].as_str()), (404, Some("not_found_error")));
        assert_eq!(error_of(get(&fake, "/v1/models?limit=0").await).await.0, 400);
        assert_eq!(error_of(get(&fake, "/v2/whatever").await).await.0, 404);
    }

    fn turn_model(pieces: Vec<Piece>) -> FakeModel {
        FakeModel::new("claude-x").with_reply(Reply::Turn(pieces))
    }

    fn thinking_then_calls() -> Vec<Piece> {
        use crate::script::FakeToolCall;
        vec![
            Piece::Thinking("Two cities.".into()),
            Piece::ThinkingSignature(b"EqQBsig".to_vec()),
            Piece::Text("Checking.".into()),
            Piece::ToolCalls(vec![
                FakeToolCall::new("toolu_a", "w", r#"{"city":"Paris"}"#).split_at(&[4]),
                FakeToolCall::new("toolu_b", "now", ""),
            ]),
        ]
    }

    #[tokio::test]
    async fn a_turn_streams_thinking_text_and_tool_use_blocks() {
        let fake = fake_with(turn_model(thinking_then_calls())).await;
        let (events, clean) = read_events(post(&fake, &body("claude-x", true)).await).await;
        assert!(clean);
        let summary: Vec<String> = events
            .iter()
            .map(|(name, data)| match name.as_str() {
                "content_block_start" => format!("start {} {}", data["index"], data["content_block"]),
                "content_block_delta" => format!("delta {} {}", data["index"], data["delta"]),
                "content_block_stop" => format!("stop {}", data["index"]),
                "message_delta" => format!("message_delta {}", data["delta"]["stop_reason"]),
                other => other.to_owned(),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "message_start",
                "ping",
                r#"start 0 {"signature":"","thinking":"","type":"thinking"}"#,
                r#"delta 0 {"thinking":"Two cities.","type":"thinking_delta"}"#,
                r#"delta 0 {"signature":"EqQBsig","type":"signature_delta"}"#,
                "stop 0",
                r#"start 1 {"text":"","type":"text"}"#,
                r#"delta 1 {"text":"Checking.","type":"text_delta"}"#,
                "stop 1",
                r#"start 2 {"id":"toolu_a","input":{},"name":"w","type":"tool_use"}"#,
                r#"delta 2 {"partial_json":"{\"ci","type":"input_json_delta"}"#,
                r#"delta 2 {"partial_json":"ty\":\"Paris\"}","type":"input_json_delta"}"#,
                "stop 2",
                r#"start 3 {"id":"toolu_b","input":{},"name":"now","type":"tool_use"}"#,
                r#"delta 3 {"partial_json":"","type":"input_json_delta"}"#,
                "stop 3",
                r#"message_delta "tool_use""#,
                "message_stop",
            ]
        );
    }

    #[tokio::test]
    async fn omitted_thinking_keeps_its_signature_and_a_whole_message_holds_every_block() {
        let fake = fake_with(turn_model(thinking_then_calls())).await;
        let mut request = body("claude-x", true);
        request["max_tokens"] = json!(3000);
        request["thinking"] = json!({"type": "enabled", "budget_tokens": 1024, "display": "omitted"});
        let (events, _) = read_events(post(&fake, &request).await).await;
        assert!(events.iter().all(|(_, data)| data["delta"]["type"] != "thinking_delta"));
        assert!(events.iter().any(|(_, data)| data["delta"]["type"] == "signature_delta"));

        let message: Value = post(&fake, &body("claude-x", false)).await.json().await.unwrap();
        assert_eq!(
            message["content"],
            json!([
                {"type": "thinking", "thinking": "Two cities.", "signature": "EqQBsig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}},
            ])
        );
        assert_eq!(message["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn an_error_can_cut_a_tool_call_short() {
        use crate::script::FakeToolCall;
        let call = FakeToolCall::new("toolu_a", "w", r#"{"city":"Paris"}"#);
        let model = turn_model(vec![Piece::ToolCalls(vec![call]), Piece::Text("never".into())])
            .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "x".into() });
        let fake = fake_with(model).await;
        let (events, _) = read_events(post(&fake, &body("claude-x", true)).await).await;
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["message_start", "ping", "content_block_start", "content_block_delta", "error"]);
    }

    fn history(messages: Value) -> Value {
        json!({"model": "claude-x", "max_tokens": 100, "messages": messages})
    }

    fn call_turn(id: &str) -> Value {
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": id, "name": "w", "input": {}},
        ]})
    }

    async fn refused(fake: &FakeAnthropic, request: &Value) -> String {
        let (status, error) = error_of(post(fake, request).await).await;
        assert_eq!((status, error["type"].as_str()), (400, Some("invalid_request_error")), "{error}");
        error["message"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn requests_are_checked_as_the_api_does() {
        let fake = fake_with(FakeModel::new("claude-x")).await;
        let ask = json!({"role": "user", "content": "Paris?"});
        let result = |id: &str| json!({"type": "tool_result", "tool_use_id": id, "content": "sun"});

        let fine = history(
            json!([ask, call_turn("toolu_a"), {"role": "user", "content": [result("toolu_a"), {"type": "text", "text": "ok"}]}]),
        );
        assert_eq!(post(&fake, &fine).await.status(), 200);

        let text_first = history(
            json!([ask, call_turn("toolu_a"), {"role": "user", "content": [{"type": "text", "text": "ok"}, result("toolu_a")]}]),
        );
        let message = refused(&fake, &text_first).await;
        assert!(message.contains("`tool_use` ids were found without `tool_result` blocks"), "{message}");
        let stray = history(
            json!([ask, call_turn("toolu_a"), {"role": "user", "content": [result("toolu_a"), {"type": "text", "text": "ok"}, result("toolu_a")]}]),
        );
        assert!(refused(&fake, &stray).await.contains("must begin with a matching number of `tool_result` blocks"));
        let unknown = history(
            json!([ask, call_turn("toolu_a"), {"role": "user", "content": [result("toolu_a"), result("toolu_z")]}]),
        );
        assert!(refused(&fake, &unknown).await.contains("unexpected `tool_use_id`"));
        let bad_id =
            history(json!([ask, call_turn("functions.w:0"), {"role": "user", "content": [result("functions.w:0")]}]));
        assert!(refused(&fake, &bad_id).await.contains("tool_use.id: String should match pattern"));

        let unsigned = history(
            json!([ask, {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]}, {"role": "user", "content": "go"}]),
        );
        assert!(refused(&fake, &unsigned).await.contains("thinking.signature: Field required"));

        let mut thinking = body("claude-x", true);
        thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 512});
        assert!(refused(&fake, &thinking).await.contains("greater than or equal to 1024"));
        thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
        assert!(refused(&fake, &thinking).await.contains("`max_tokens` must be greater than `thinking.budget_tokens`"));
        thinking["max_tokens"] = json!(2000);
        thinking["tools"] = json!([{"name": "w", "input_schema": {"type": "object"}}]);
        thinking["tool_choice"] = json!({"type": "any"});
        assert!(refused(&fake, &thinking).await.contains("tool_choice forces tool use"));

        let mut image = body("claude-x", true);
        image["messages"] = json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"}}]}]);
        assert!(refused(&fake, &image).await.contains("media_type"));
        let mut tool = body("claude-x", true);
        tool["tools"] = json!([{"name": "w"}]);
        assert!(refused(&fake, &tool).await.contains("input_schema: Field required"));
    }

    #[tokio::test]
    async fn after_tool_results_a_model_may_answer_differently() {
        let model = turn_model(thinking_then_calls()).with_reply_after_tool_result(Reply::Echo);
        let fake = fake_with(model).await;
        let request = history(json!([
            {"role": "user", "content": "Paris?"},
            call_turn("toolu_a"),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"}]},
        ]));
        let message: Value = post(&fake, &request).await.json().await.unwrap();
        assert_eq!(message["content"], json!([{"type": "text", "text": "You said: sunny"}]));
        assert_eq!(message["stop_reason"], "end_turn");
    }

    #[test]
    fn helpers() {
        assert_eq!(mask_key("sk-ant-api03-abcdefgh-WXYZ"), "sk-ant-a***WXYZ");
        assert_eq!(mask_key("short-key"), "sho***");
        assert_eq!(display_name("claude-sonnet-4-5-20250929"), "Claude Sonnet 4.5");
        assert_eq!(display_name("claude-3-5-haiku-latest"), "Claude 3.5 Haiku Latest");
        assert_eq!(percent_decode("a%2Db+c%zz%4"), "a-b c%zz%4");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399)), "2000-02-29T23:59:59Z");
    }
}
