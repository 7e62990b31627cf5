//! A fake of Ollama's native HTTP API (`/api/chat`, `/api/embed`, `/api/tags`, `/api/show`,
//! `/api/version`, `/`).
//!
//! It speaks the real wire format, as described in the project's Ollama reference notes: errors are
//! `{"error":"..."}` with a JSON content type, chat streams are NDJSON (`application/x-ndjson`)
//! written and flushed one line at a time and closed by a `done:true` line carrying statistics in
//! nanoseconds, and a failure after streaming has begun is a 200 whose last line is `{"error":...}`.
//!
//! Every model is scripted with a [`Reply`] (what it says) and a [`Behaviour`] (how the response
//! ends or fails), plus delays. The server counts how each chat stream ended — completed, or
//! abandoned by the client — so cancellation tests can assert that dropping a stream really closed
//! the upstream connection.
//!
//! `POST /api/embed` embeds with the script's [`FakeModel::embedding`] models, as described under
//! [`Fake::embed_requests`]. One difference is deliberate: **real Ollama L2-normalises its vectors,
//! and the fake does not**: it answers [`fake_embedding`] as it is, so that a test sees whether
//! the gateway normalises what an adapter returns. A model without an `embedding_length` cannot
//! embed, and an embedding model cannot chat (`"<model>" does not support chat`), as in Ollama.
//!
//! The streaming path is also what the `fake-ollama` benchmark binary runs, so it avoids per-chunk
//! work beyond formatting one line: no logging, one allocation per line.

use std::borrow::Cow;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::fake::{Fake, Wire};
use crate::format::{civil_from_days, json_kind, write_json_string};
use crate::harness::{Harness, Keyed, Models, Pieces, StreamGuard, broken_response, status_code, streamed_body};
pub use crate::script::{Behaviour, FakeModel, Reply};
use crate::script::{FakeToolCall, Piece};
use crate::script::{Generation, Step, fake_embedding};

/// The version `GET /api/version` reports.
pub const OLLAMA_VERSION: &str = "0.12.3";

/// The text Ollama sends with a 503 when its request queue is full.
pub const BUSY_MESSAGE: &str = "server busy, please try again.  maximum pending requests exceeded";

// Ollama answers through gin, whose JSON and string helpers add the charset parameter.
const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";
const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Synthetic prompt processing cost: prompts are not really evaluated, but `prompt_eval_duration`
/// should look like a real measurement rather than zero (which Ollama would omit).
const PROMPT_EVAL_NANOS_PER_TOKEN: u64 = 25_000;

/// A running fake Ollama server: [`Fake`] over Ollama's wire format.
pub type FakeOllama = Fake<Ollama>;

impl Fake<Ollama> {
    /// Adds a model, replacing one of the same name (a missing tag counts as `:latest`). Requests
    /// already in progress keep the script they started with.
    pub fn add_model(&self, model: FakeModel) {
        self.wire.models.add(ModelEntry::new(model));
    }

    /// Removes a model; returns whether it was there.
    pub fn remove_model(&self, name: &str) -> bool {
        self.wire.models.remove(&canonical_name(name))
    }

    /// Whether chat requests are checked against the model's capabilities as Ollama checks them:
    /// tools for a model without `tools` get `<name> does not support tools`, a truthy `think`
    /// for one without `thinking` gets `"<model>" does not support thinking`, images for one
    /// without `vision` get `this model is missing data required for image input` (all 400). Off
    /// by default, so that a [`FakeModel::new`] (listed with `completion` alone) plays any script.
    pub fn set_capability_checks(&self, check: bool) {
        self.wire.check_capabilities.store(check, Ordering::Relaxed);
    }

    /// The JSON body of every `/api/embed` request received (including refused ones), in order,
    /// while requests are recorded ([`Fake::set_record_requests`]).
    ///
    /// The fake's `/api/embed` checks a request as Ollama does: `model` is required; `input` is
    /// a string (an empty one embeds nothing) or an array of strings (anything else is 400
    /// `invalid input type`), and `input: []` is a 200 with `embeddings: []`; `truncate` (a bool,
    /// `true` when absent or null) and `dimensions` (an integer) are type-checked like Go's JSON
    /// binding. An unknown model is 404; a model that cannot embed is 400 `"<model>" does not
    /// support embeddings`. An input's tokens are its whitespace-separated words (at least one,
    /// as a tokenizer adds its own markers): past the model's `context_length`, `truncate:false`
    /// is 400 `the input length exceeds the context length`, and `truncate:true` embeds the text
    /// up to the end of its `context_length`-th word. Each vector is [`fake_embedding`] of that
    /// text, cut to `dimensions` when that is positive and below the model's length (a larger
    /// one is ignored, as in Ollama), and **never normalised**. `prompt_eval_count` is the tokens
    /// embedded. [`Fake::set_busy`] and [`Fake::fail_next`] apply as to chat.
    pub fn embed_requests(&self) -> Vec<Value> {
        self.wire.embed_requests.lock().unwrap().clone()
    }
}

/// Ollama's wire format, and the state its handle and request handlers share. A failure
/// scripted with [`Fake::fail_next`] is an Ollama error body (`{"error":...}`); a completed stream
/// is one that wrote its `done:true` line (or its `{"error"}` line, or the single object of a
/// `stream:false` request). Ollama's fake keeps request bodies but not headers. While
/// [`Fake::set_busy`] is on, `/api/chat` answers 503 with Ollama's queue-full error.
pub struct Ollama {
    models: Models<ModelEntry>,
    harness: Arc<Harness>,
    check_capabilities: AtomicBool,
    embed_requests: Mutex<Vec<Value>>,
}

impl Wire for Ollama {
    const NAME: &'static str = "Ollama";
    const BASE_PATH: &'static str = "";

    fn new(harness: Arc<Harness>) -> Self {
        Ollama {
            models: Models::new(),
            harness,
            check_capabilities: AtomicBool::new(false),
            embed_requests: Mutex::new(Vec::new()),
        }
    }

    fn router(shared: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(root))
            .route("/api/version", get(version))
            .route("/api/tags", get(tags))
            .route("/api/show", post(show))
            .route("/api/chat", post(chat))
            .route("/api/embed", post(embed))
            // gin answers unknown routes and wrong methods alike with a plain-text 404.
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            // Ollama has no request size limit; long chat histories must not trip axum's 2 MB default.
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(shared)
    }
}

impl Ollama {
    fn find_model(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.models.find(&canonical_name(name))
    }
}

/// A model as served: its script plus the metadata Ollama derives when a model is installed.
#[derive(Debug)]
struct ModelEntry {
    /// The name with its tag (`llama3.2` becomes `llama3.2:latest`).
    key: String,
    model: Arc<FakeModel>,
    modified_at: String,
    digest: String,
}

impl ModelEntry {
    fn new(model: FakeModel) -> Self {
        let key = canonical_name(&model.name);
        let mut modified_at = Vec::with_capacity(32);
        write_timestamp(&mut modified_at, SystemTime::now());
        ModelEntry {
            digest: fake_digest(&key),
            key,
            model: Arc::new(model),
            modified_at: String::from_utf8(modified_at).expect("timestamps are ASCII"),
        }
    }
}

impl Keyed for ModelEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

/// Ollama resolves a name without a tag to `:latest`; the namespace part may itself hold a `:`
/// (a registry port), so only the last path segment is looked at.
fn canonical_name(name: &str) -> String {
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    if last_segment.contains(':') { name.to_owned() } else { format!("{name}:latest") }
}

/// A stable, sha256-shaped (64 hex digits) digest, so listings look real and stay the same.
fn fake_digest(name: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut digest = String::with_capacity(64);
    for part in 0u8..4 {
        let mut hasher = std::hash::DefaultHasher::new();
        (part, name).hash(&mut hasher);
        digest.push_str(&format!("{:016x}", hasher.finish()));
    }
    digest
}

async fn root() -> Response {
    text_response(StatusCode::OK, "Ollama is running")
}

async fn not_found() -> Response {
    text_response(StatusCode::NOT_FOUND, "404 page not found")
}

async fn version() -> Response {
    json_value_response(StatusCode::OK, &json!({ "version": OLLAMA_VERSION }))
}

async fn tags(State(shared): State<Arc<Ollama>>) -> Response {
    let models = shared.models.read();
    let listing: Vec<Value> = models
        .iter()
        .map(|entry| {
            json!({
                "name": entry.key,
                "model": entry.key,
                "modified_at": entry.modified_at,
                "size": entry.model.size,
                "digest": entry.digest,
                "details": model_details(&entry.model),
            })
        })
        .collect();
    json_value_response(StatusCode::OK, &json!({ "models": listing }))
}

async fn show(State(shared): State<Arc<Ollama>>, body: Bytes) -> Response {
    let request = match parse_json_body(&body, "ShowRequest") {
        Ok(request) => request,
        Err(message) => return bad_request(&message),
    };
    // Older clients send `name`; Ollama uses it when `model` is empty.
    let mut name = "";
    for field in ["model", "name"] {
        match request.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(value)) if value.is_empty() => {}
            Some(Value::String(value)) => {
                name = value;
                break;
            }
            Some(other) => return bad_request(&type_error("ShowRequest", field, "string", other)),
        }
    }
    if name.is_empty() {
        return bad_request("model is required");
    }
    let Some(entry) = shared.find_model(name) else {
        return error_response(StatusCode::NOT_FOUND, &format!("model '{name}' not found"));
    };
    let model = &entry.model;

    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), json!(model.family));
    if let Some(count) = parameter_count(&model.parameter_size) {
        model_info.insert("general.parameter_count".into(), json!(count));
    }
    model_info.insert("general.quantization_version".into(), json!(2));
    model_info.insert(format!("{}.context_length", model.family), json!(model.context_length));
    // A chat model's `embedding_length` is its hidden size, which real Ollama lists too.
    let embedding_length = model.embedding_length.unwrap_or(FAKE_HIDDEN_SIZE);
    model_info.insert(format!("{}.embedding_length", model.family), json!(embedding_length));

    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM /root/.ollama/models/blobs/sha256-{}\nTEMPLATE \"{{{{ .Prompt }}}}\"\n",
        entry.key, entry.digest
    );
    json_value_response(
        StatusCode::OK,
        &json!({
            "modelfile": modelfile,
            "parameters": "stop                           \"<|eot_id|>\"",
            "template": "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}",
            "details": model_details(model),
            "model_info": model_info,
            "capabilities": model.capabilities,
            "modified_at": entry.modified_at,
        }),
    )
}

fn model_details(model: &FakeModel) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    })
}

/// The `<family>.embedding_length` `/api/show` gives a model that cannot embed: the hidden size
/// every real model lists, which is not the length of any vector it gives.
const FAKE_HIDDEN_SIZE: u32 = 3072;

/// `POST /api/embed`, as described under [`Fake::embed_requests`].
async fn embed(State(shared): State<Arc<Ollama>>, body: Bytes) -> Response {
    let received = Instant::now();
    let request = match parse_json_body(&body, "EmbedRequest") {
        Ok(request) => request,
        Err(message) => return bad_request(&message),
    };
    let params = embed_params(&request);
    if shared.harness.recording() {
        shared.embed_requests.lock().unwrap().push(request);
    }
    let params = match params {
        Ok(params) => params,
        Err(message) => return bad_request(&message),
    };
    let Some(entry) = shared.find_model(&params.model) else {
        let message = format!("model \"{}\" not found, try pulling it first", params.model);
        return error_response(StatusCode::NOT_FOUND, &message);
    };
    let Some(length) = entry.model.embedding_length else {
        return bad_request(&format!("{:?} does not support embeddings", params.model));
    };
    if shared.harness.busy() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE);
    }
    if let Some(failure) = shared.harness.take_failure() {
        let status = status_code(failure.status);
        let mut response = error_response(status, &format!("scripted failure ({})", failure.status));
        failure.add_retry_after(&mut response);
        return response;
    }
    let context = entry.model.context_length as usize;
    let mut dimensions = length as usize;
    if let Some(wanted) = params.dimensions.and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0) {
        dimensions = dimensions.min(wanted);
    }
    let mut embeddings = Vec::with_capacity(params.inputs.len());
    let mut tokens = 0usize;
    for input in &params.inputs {
        let (text, count) = match cut_to_words(input, context) {
            Some(cut) if params.truncate => (cut, context),
            Some(_) => return bad_request("the input length exceeds the context length"),
            None => (input.as_str(), input.split_whitespace().count().max(1)),
        };
        tokens += count;
        embeddings.push(fake_embedding(text, dimensions));
    }
    let responding = Instant::now();
    json_value_response(
        StatusCode::OK,
        &json!({
            "model": params.model,
            "embeddings": embeddings,
            "total_duration": nanos(responding - received) + tokens as u64 * PROMPT_EVAL_NANOS_PER_TOKEN,
            "load_duration": nanos(Duration::ZERO),
            "prompt_eval_count": tokens,
        }),
    )
}

/// What an embed request asks for, validated the way Ollama's handler does.
struct EmbedParams {
    model: String,
    inputs: Vec<String>,
    truncate: bool,
    dimensions: Option<i64>,
}

/// Reads an embed request; `Err` is the 400 message Ollama would answer with.
fn embed_params(request: &Value) -> Result<EmbedParams, String> {
    let model = match request.get("model") {
        None | Some(Value::Null) => "",
        Some(Value::String(model)) => model.as_str(),
        Some(other) => return Err(type_error("EmbedRequest", "model", "string", other)),
    };
    let truncate = match request.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(truncate)) => *truncate,
        Some(other) => return Err(type_error("EmbedRequest", "truncate", "bool", other)),
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_i64() {
            Some(dimensions) => Some(dimensions),
            None => return Err(type_error("EmbedRequest", "dimensions", "int", value)),
        },
    };
    if model.is_empty() {
        return Err("model is required".to_owned());
    }
    let inputs = match request.get("input") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(input)) if input.is_empty() => Vec::new(),
        Some(Value::String(input)) => vec![input.clone()],
        Some(Value::Array(items)) => {
            let mut inputs = Vec::with_capacity(items.len());
            for item in items {
                let Some(text) = item.as_str() else { return Err("invalid input type".to_owned()) };
                inputs.push(text.to_owned());
            }
            inputs
        }
        Some(_) => return Err("invalid input type".to_owned()),
    };
    Ok(EmbedParams { model: model.to_owned(), inputs, truncate, dimensions })
}

/// `text` up to the end of its `words`-th whitespace-separated word when it has more words than
/// that; `None` when it fits.
fn cut_to_words(text: &str, words: usize) -> Option<&str> {
    let mut seen = 0;
    let mut in_word = false;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word && seen == words {
                return text[at..].split_whitespace().next().map(|_| &text[..at]);
            }
            in_word = false;
        } else if !in_word {
            in_word = true;
            seen += 1;
            if seen > words {
                return Some(text[..at].trim_end());
            }
        }
    }
    None
}

/// `"3.2B"` → 3_200_000_000, `"494.03M"` → 494_030_000.
fn parameter_count(size: &str) -> Option<u64> {
    let (number, scale) = match size.as_bytes().last()? {
        b'B' | b'b' => (&size[..size.len() - 1], 1e9),
        b'M' | b'm' => (&size[..size.len() - 1], 1e6),
        b'K' | b'k' => (&size[..size.len() - 1], 1e3),
        _ => (size, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    Some((value * scale).round() as u64)
}

/// What a chat request asks for, validated the way Ollama's JSON binding would.
struct ChatParams {
    model: String,
    stream: bool,
    /// Content chunks allowed by `options.num_predict`; `usize::MAX` when unlimited.
    limit: usize,
    /// `prompt_eval_count`: whitespace-separated words over all messages, at least 1.
    prompt_words: usize,
    /// Content of the last user message, for [`Reply::Echo`].
    last_user: String,
    /// Whether the request turns thinking off (`think:false`); thinking models think otherwise.
    think_off: bool,
    /// What the request needs of the model: `tools`, `thinking`, `vision`.
    needs: Vec<&'static str>,
    /// Whether the conversation ends with tool results (the second turn of a tool loop).
    tool_result_last: bool,
}

async fn chat(State(shared): State<Arc<Ollama>>, body: Bytes) -> Response {
    let received = Instant::now();
    let request = match parse_json_body(&body, "ChatRequest") {
        Ok(request) => request,
        Err(message) => return bad_request(&message),
    };
    let params = chat_params(&request);
    if shared.harness.recording() {
        shared.harness.record(None, Some(request));
    }
    let params = match params {
        Ok(params) => params,
        Err(message) => return bad_request(&message),
    };
    let Some(entry) = shared.find_model(&params.model) else {
        let message = format!("model \"{}\" not found, try pulling it first", params.model);
        return error_response(StatusCode::NOT_FOUND, &message);
    };
    if entry.model.embedding_length.is_some() {
        return bad_request(&format!("{:?} does not support chat", params.model));
    }
    if shared.check_capabilities.load(Ordering::Relaxed) {
        let has = |capability: &str| entry.model.capabilities.iter().any(|c| c == capability);
        // In the order Ollama checks them.
        let wanted = ["thinking", "tools", "vision"].into_iter().filter(|need| params.needs.contains(need));
        if let Some(missing) = wanted.into_iter().find(|need| !has(need)) {
            // Ollama's own words: the resolved name for tools (from the capability check when the
            // model is scheduled), the requested one for thinking (checked first, in the
            // handler), and the runner's error for images.
            let message = match missing {
                "tools" => format!("registry.ollama.ai/library/{} does not support tools", entry.key),
                "thinking" => format!("{:?} does not support thinking", params.model),
                _ => "this model is missing data required for image input".to_owned(),
            };
            return bad_request(&message);
        }
    }
    if shared.harness.busy() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE);
    }
    if let Some(failure) = shared.harness.take_failure() {
        let status = status_code(failure.status);
        let mut response = error_response(status, &format!("scripted failure ({})", failure.status));
        failure.add_retry_after(&mut response);
        return response;
    }

    let guard = match shared.harness.begin_stream(&entry.model).await {
        Ok(guard) => guard,
        Err((status, message)) => return error_response(status_code(status), message),
    };
    let timing = Timing { received, responding: Instant::now() };
    // The second turn of a tool loop may be scripted apart.
    let model = entry.model.answering(params.tool_result_last);
    let mut generation = Generation::new(model, &params.last_user, params.limit);
    if !params.stream {
        generation.stop_at_context_length();
    }
    let prefix = line_prefix(&params.model);
    if params.stream {
        stream_response(ChatBody {
            generation,
            guard,
            prefix,
            timing,
            prompt_words: params.prompt_words,
            think_off: params.think_off,
            calls: 0,
            finished: false,
        })
    } else {
        aggregate_response(generation, guard, prefix, timing, params.prompt_words, params.think_off).await
    }
}

/// Reads what a chat request asks for; `Err` is the 400 message Ollama would answer with.
fn chat_params(request: &Value) -> Result<ChatParams, String> {
    let model = match request.get("model") {
        None | Some(Value::Null) => "",
        Some(Value::String(model)) => model.as_str(),
        Some(other) => return Err(type_error("ChatRequest", "model", "string", other)),
    };
    if model.is_empty() {
        return Err("model is required".to_owned());
    }

    let mut prompt_words = 0;
    let mut last_user = "";
    let mut needs = Vec::new();
    let mut tool_result_last = false;
    match request.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(messages)) => {
            for message in messages {
                if !message.is_object() {
                    return Err(type_error("ChatRequest", "messages", "api.Message", message));
                }
                let content = match message.get("content") {
                    None | Some(Value::Null) => "",
                    Some(Value::String(content)) => content.as_str(),
                    Some(other) => {
                        return Err(type_error("ChatRequest", "messages.content", "string", other));
                    }
                };
                prompt_words += content.split_whitespace().count();
                let role = message.get("role").and_then(Value::as_str);
                tool_result_last = role == Some("tool");
                // An echo after tool results repeats the last result.
                if role == Some("user") || tool_result_last {
                    last_user = content;
                }
                if check_images(message)? && !needs.contains(&"vision") {
                    needs.push("vision");
                }
                check_tool_calls(message)?;
                // Stricter than Ollama, which renders a result without its tool's name: the
                // templates that show results name the tool, so a client that leaves it out
                // gets worse answers, silently.
                if role == Some("tool") && message.get("tool_name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err("a tool message must name its tool (tool_name)".to_owned());
                }
            }
        }
        Some(other) => {
            return Err(type_error("ChatRequest", "messages", "[]api.Message", other));
        }
    }

    match request.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for tool in tools {
                let name = tool.pointer("/function/name");
                if !tool.is_object() || !name.is_none_or(Value::is_string) {
                    return Err(type_error("ChatRequest", "tools", "api.Tool", tool));
                }
                if name.and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err("a tool must have a function name".to_owned());
                }
            }
            if !tools.is_empty() {
                needs.push("tools");
            }
        }
        Some(other) => return Err(type_error("ChatRequest", "tools", "api.Tools", other)),
    }

    let think_off = match request.get("think") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(on)) => {
            if *on {
                needs.push("thinking");
            }
            !on
        }
        Some(Value::String(level)) if ["high", "medium", "low"].contains(&level.as_str()) => {
            needs.push("thinking");
            false
        }
        Some(Value::String(level)) => return Err(format!("invalid think value: {level:?}")),
        Some(_) => return Err("think must be a boolean or string (\"high\", \"medium\", \"low\")".to_owned()),
    };

    match request.get("format") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(Value::String(format)) if format.is_empty() || format == "json" => {}
        Some(other) => return Err(format!("invalid JSON schema in format: {other}")),
    }

    let stream = match request.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => return Err(type_error("ChatRequest", "stream", "bool", other)),
    };

    // Ollama treats num_predict <= 0 as "no limit" (-1 is the documented default). JSON numbers
    // reach Go as float64, which it accepts for integer options.
    let mut limit = usize::MAX;
    match request.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => match options.get("num_predict") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64);
                if n > 0 {
                    limit = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            Some(_) => {
                return Err("option \"num_predict\" must be of type integer".to_owned());
            }
        },
        Some(other) => {
            return Err(type_error("ChatRequest", "options", "map[string]interface {}", other));
        }
    }

    Ok(ChatParams {
        model: model.to_owned(),
        stream,
        limit,
        prompt_words: prompt_words.max(1),
        last_user: last_user.to_owned(),
        think_off,
        needs,
        tool_result_last,
    })
}

/// A message's `images`: base64 strings, as Go decodes `[]byte`. Returns whether there are any.
fn check_images(message: &Value) -> Result<bool, String> {
    use base64::Engine as _;
    match message.get("images") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Array(images)) => {
            for image in images {
                let Value::String(data) = image else {
                    return Err(type_error("ChatRequest", "messages.images", "api.ImageData", image));
                };
                if let Err(err) = base64::engine::general_purpose::STANDARD.decode(data) {
                    return Err(format!("illegal base64 data ({err})"));
                }
            }
            Ok(!images.is_empty())
        }
        Some(other) => Err(type_error("ChatRequest", "messages.images", "[]api.ImageData", other)),
    }
}

/// An assistant message's earlier calls: `{id?, function:{name, arguments:{object}}}`, where Go
/// decodes `arguments` into a map (so a JSON string, as OpenAI writes it, is refused).
fn check_tool_calls(message: &Value) -> Result<(), String> {
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(other) => return Err(type_error("ChatRequest", "messages.tool_calls", "[]api.ToolCall", other)),
    };
    for call in calls {
        match call.pointer("/function/arguments") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(other) => {
                return Err(type_error(
                    "ChatRequest",
                    "messages.tool_calls.function.arguments",
                    "api.ToolCallFunctionArguments",
                    other,
                ));
            }
        }
        if call.pointer("/function/name").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err("a tool call in the history has no function name".to_owned());
        }
    }
    Ok(())
}

/// Parses a request body as a JSON object; when it is not one, the 400 message Ollama's gin
/// binding would give.
fn parse_json_body(body: &[u8], go_type: &str) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing request body".to_owned());
    }
    match serde_json::from_slice::<Value>(body) {
        // Go decodes `null` into a zero struct, which then fails validation like `{}` does.
        Ok(Value::Null) => Ok(Value::Object(Map::new())),
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!("json: cannot unmarshal {} into Go value of type api.{go_type}", json_kind(&other))),
        Err(err) => Err(err.to_string()),
    }
}

fn type_error(go_type: &str, field: &str, field_type: &str, value: &Value) -> String {
    format!("json: cannot unmarshal {} into Go struct field {go_type}.{field} of type {field_type}", json_kind(value))
}

struct Timing {
    received: Instant,
    responding: Instant,
}

struct Stats {
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: usize,
    prompt_eval_duration: u64,
    eval_count: usize,
    eval_duration: u64,
}

impl Timing {
    fn stats(&self, prompt_words: usize, eval_count: usize) -> Stats {
        let now = Instant::now();
        // The wait before the headers stands in for loading the model.
        let load_duration = nanos(self.responding - self.received);
        let prompt_eval_duration = prompt_words as u64 * PROMPT_EVAL_NANOS_PER_TOKEN;
        let eval_duration = nanos(now - self.responding);
        let total_duration = nanos(now - self.received).max(load_duration + prompt_eval_duration + eval_duration);
        Stats {
            total_duration,
            load_duration,
            prompt_eval_count: prompt_words,
            prompt_eval_duration,
            eval_count,
            eval_duration,
        }
    }
}

/// Whole nanoseconds, at least 1: Ollama omits zero metrics, and these ones always exist.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// The response body of a streamed chat.
struct ChatBody {
    generation: Generation,
    guard: StreamGuard,
    prefix: Vec<u8>,
    timing: Timing,
    prompt_words: usize,
    think_off: bool,
    /// Tool calls written so far: Ollama numbers them across the response.
    calls: usize,
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
            return Some(Err(io::Error::other("fake Ollama server shut down")));
        }
        loop {
            return match self.generation.next().await {
                Step::Piece(piece) => match piece_line(&self.prefix, piece, self.think_off, &mut self.calls) {
                    Some(line) => Some(Ok(Bytes::from(line))),
                    // Nothing Ollama would write (a signature, or thinking turned off).
                    None => continue,
                },
                Step::Content(text) => Some(Ok(Bytes::from(content_line(&self.prefix, text, true)))),
                Step::Done(finish) => {
                    self.finished = true;
                    self.guard.finish(true);
                    let stats = self.timing.stats(self.prompt_words, self.generation.sent());
                    let line = final_line(&self.prefix, &Whole::default(), finish.reason(), &stats, true);
                    Some(Ok(Bytes::from(line)))
                }
                Step::Error(message) => {
                    self.finished = true;
                    self.guard.finish(true);
                    let mut line = error_body(message);
                    line.push(b'\n');
                    Some(Ok(Bytes::from(line)))
                }
                Step::EndWithoutDone => {
                    self.finished = true;
                    self.guard.finish(true);
                    None
                }
                Step::Abort => {
                    self.finished = true;
                    self.guard.finish(false);
                    Some(Err(io::Error::other("fake Ollama dropped the connection")))
                }
            };
        }
    }
}

fn stream_response(body: ChatBody) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, NDJSON_CONTENT_TYPE)
        .body(streamed_body(body))
        .expect("static response parts are valid")
}

/// `stream:false`: plays the whole script (with its delays), then answers with one object.
async fn aggregate_response(
    mut generation: Generation,
    mut guard: StreamGuard,
    prefix: Vec<u8>,
    timing: Timing,
    prompt_words: usize,
    think_off: bool,
) -> Response {
    let mut message = Whole::default();
    loop {
        match generation.next().await {
            Step::Piece(Piece::Thinking(text)) if !think_off => message.thinking.push_str(text),
            Step::Piece(Piece::ToolCalls(calls)) => {
                for call in calls {
                    message.calls.push(tool_call_object(call, message.calls.len()));
                }
            }
            Step::Piece(_) => {}
            Step::Content(text) => message.content.to_mut().push_str(text),
            Step::Done(finish) => {
                guard.finish(true);
                let stats = timing.stats(prompt_words, generation.sent());
                let object = final_line(&prefix, &message, finish.reason(), &stats, false);
                return json_response(StatusCode::OK, object);
            }
            Step::Error(message) => {
                guard.finish(true);
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, message);
            }
            Step::EndWithoutDone => {
                guard.finish(true);
                return json_response(StatusCode::OK, message_line(&prefix, &message, false));
            }
            Step::Abort => {
                guard.finish(false);
                return broken_response(JSON_CONTENT_TYPE, "fake Ollama dropped the connection");
            }
        }
    }
}

/// What an assistant message holds, as one streamed chunk carries it or a `stream:false` answer
/// gathers it.
#[derive(Default)]
struct Whole<'a> {
    content: Cow<'a, str>,
    thinking: String,
    /// Each call's object, written as Ollama writes it.
    calls: Vec<Vec<u8>>,
}

/// The chunk a piece of a turn is, or `None` where Ollama writes nothing: it has no thinking
/// signatures, and a model told `think:false` does not think.
fn piece_line(prefix: &[u8], piece: &Piece, think_off: bool, calls: &mut usize) -> Option<Vec<u8>> {
    let message = match piece {
        Piece::Text(text) => Whole { content: Cow::Borrowed(text), ..Whole::default() },
        Piece::Thinking(text) if !think_off => Whole { thinking: text.clone(), ..Whole::default() },
        Piece::Thinking(_) | Piece::ThinkingSignature(_) => return None,
        // Calls parsed together arrive whole, in one chunk, numbered across the response.
        Piece::ToolCalls(list) => Whole {
            calls: list
                .iter()
                .map(|call| {
                    *calls += 1;
                    tool_call_object(call, *calls - 1)
                })
                .collect(),
            ..Whole::default()
        },
    };
    Some(message_line(prefix, &message, true))
}

/// `{"id":…,"function":{"index":…,"name":…,"arguments":{…}}}`. Ollama re-encodes the arguments
/// from the object it parsed; the fake writes the script's text as it is, so that tests can tell
/// whether the adapter keeps it byte for byte. Calls without arguments get `{}`, as Go encodes an
/// empty map; ids are left out as servers before v0.12.10 do when the script gives none.
fn tool_call_object(call: &FakeToolCall, index: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(call.arguments.len() + call.name.len() + 64);
    out.push(b'{');
    if let Some(id) = &call.id {
        out.extend_from_slice(b"\"id\":");
        write_json_string(&mut out, id);
        out.push(b',');
    }
    let _ = write!(out, "\"function\":{{\"index\":{index},\"name\":");
    write_json_string(&mut out, &call.name);
    out.extend_from_slice(b",\"arguments\":");
    out.extend_from_slice(if call.arguments.trim().is_empty() { b"{}" } else { call.arguments.as_bytes() });
    out.extend_from_slice(b"}}");
    out
}

/// `{"model":"NAME","created_at":"` — the same for every line of a response, so built once.
fn line_prefix(model: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(model.len() + 32);
    prefix.extend_from_slice(b"{\"model\":");
    write_json_string(&mut prefix, model);
    prefix.extend_from_slice(b",\"created_at\":\"");
    prefix
}

fn content_line(prefix: &[u8], content: &str, newline: bool) -> Vec<u8> {
    message_line(prefix, &Whole { content: Cow::Borrowed(content), ..Whole::default() }, newline)
}

/// A `done:false` chunk carrying `message`.
fn message_line(prefix: &[u8], message: &Whole<'_>, newline: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(prefix.len() + message.content.len() + 96);
    line.extend_from_slice(prefix);
    write_timestamp(&mut line, SystemTime::now());
    write_message(&mut line, message);
    line.extend_from_slice(b",\"done\":false}");
    if newline {
        line.push(b'\n');
    }
    line
}

/// `","message":{…}` after the timestamp, with the fields in Go's order (`api.Message`) and the
/// empty ones left out (`omitempty`), `content` aside.
fn write_message(line: &mut Vec<u8>, message: &Whole<'_>) {
    line.extend_from_slice(b"\",\"message\":{\"role\":\"assistant\",\"content\":");
    write_json_string(line, &message.content);
    if !message.thinking.is_empty() {
        line.extend_from_slice(b",\"thinking\":");
        write_json_string(line, &message.thinking);
    }
    if !message.calls.is_empty() {
        line.extend_from_slice(b",\"tool_calls\":[");
        for (i, call) in message.calls.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(call);
        }
        line.push(b']');
    }
    line.push(b'}');
}

/// The `done:true` object, with fields in Ollama's order; a zero `eval_count` is left out, as
/// Go's `omitempty` does.
fn final_line(prefix: &[u8], message: &Whole<'_>, done_reason: &str, stats: &Stats, newline: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(prefix.len() + message.content.len() + 320);
    line.extend_from_slice(prefix);
    write_timestamp(&mut line, SystemTime::now());
    write_message(&mut line, message);
    line.extend_from_slice(b",\"done_reason\":");
    write_json_string(&mut line, done_reason);
    let _ = write!(
        line,
        ",\"done\":true,\"total_duration\":{},\"load_duration\":{},\"prompt_eval_count\":{},\"prompt_eval_duration\":{}",
        stats.total_duration, stats.load_duration, stats.prompt_eval_count, stats.prompt_eval_duration,
    );
    if stats.eval_count > 0 {
        let _ = write!(line, ",\"eval_count\":{}", stats.eval_count);
    }
    let _ = write!(line, ",\"eval_duration\":{}}}", stats.eval_duration);
    if newline {
        line.push(b'\n');
    }
    line
}

/// RFC 3339 in UTC with Go's `RFC3339Nano` fraction (trailing zeros trimmed), which is how
/// Ollama's `created_at` looks. Hand-rolled to keep a date library out of a per-line hot path.
fn write_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    let mut fraction = since_epoch.subsec_nanos();
    if fraction > 0 {
        let mut digits = 9;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{fraction:0digits$}");
    }
    out.push(b'Z');
}

fn error_body(message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 12);
    body.extend_from_slice(b"{\"error\":");
    write_json_string(&mut body, message);
    body.push(b'}');
    body
}

fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, error_body(message))
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

fn json_value_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("serializing a JSON value cannot fail");
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let content_type = HeaderValue::from_static(JSON_CONTENT_TYPE);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn text_response(status: StatusCode, text: &'static str) -> Response {
    let content_type = HeaderValue::from_static(TEXT_CONTENT_TYPE);
    (status, [(header::CONTENT_TYPE, content_type)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_nano_in_utc() {
        let format = |at: SystemTime| {
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = UNIX_EPOCH + Duration::new(1_767_607_200, 123_456_000);
        assert_eq!(format(at), "2026-01-05T10:00:00.123456Z");
        let leap_day = UNIX_EPOCH + Duration::new(951_782_400 + 86_399, 5);
        assert_eq!(format(leap_day), "2000-02-29T23:59:59.000000005Z");
    }

    #[test]
    fn names_without_tag_mean_latest() {
        assert_eq!(canonical_name("llama3.2"), "llama3.2:latest");
        assert_eq!(canonical_name("llama3.2:3b"), "llama3.2:3b");
        assert_eq!(canonical_name("host:5000/ns/model"), "host:5000/ns/model:latest");
    }

    #[test]
    fn inputs_are_cut_after_their_last_allowed_word() {
        assert_eq!(cut_to_words("one two three", 3), None);
        assert_eq!(cut_to_words("one two three  ", 3), None);
        assert_eq!(cut_to_words("one two three", 2), Some("one two"));
        assert_eq!(cut_to_words("  one\ttwo \n three four", 2), Some("  one\ttwo"));
        assert_eq!(cut_to_words("é ü ö", 1), Some("é"));
        assert_eq!(cut_to_words("", 0), None);
        assert_eq!(cut_to_words("a", 0), Some(""));
    }

    #[test]
    fn parameter_sizes_parse() {
        assert_eq!(parameter_count("3.2B"), Some(3_200_000_000));
        assert_eq!(parameter_count("494.03M"), Some(494_030_000));
        assert_eq!(parameter_count("big"), None);
    }
}
