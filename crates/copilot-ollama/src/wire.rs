//! Ollama's JSON on the wire: request bodies, response shapes, and the NDJSON chat stream decoder.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! Response types default every field because Ollama omits zero values (`omitempty`) and older
//! or newer servers add and drop fields freely.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use copilot_provider::{
    ChatRequest, Completion, Effort, EmbedRequest, Embeddings, Feature, FinishReason, GenerationOptions, Image,
    ImageSource, Message, ModelInfo, Part, ProviderError, Reasoning, ReasoningAmount, ResponseFormat, Role, ToolChoice,
    UpstreamTimings, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /api/chat`, borrowing from the provider-independent request.
#[derive(Debug, Serialize)]
pub(crate) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    /// `"json"`, or a JSON Schema object the answer is constrained to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,
    #[serde(skip_serializing_if = "Options::is_empty")]
    pub options: Options<'a>,
    /// Seconds; negative keeps the model loaded forever. Ollama also takes duration strings,
    /// but a number is the one form every version understands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: Cow<'a, str>,
    /// Raw base64 (no `data:` prefix): the only form `/api/chat` takes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCall<'a>>,
    /// A tool result's tool, which Ollama's templates render (most name the tool, not the id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<&'a str>,
    /// Taken by servers that know call ids (v0.12.10 on); older ones ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
}

/// `{"type":"function","function":{name, description, parameters}}`.
#[derive(Debug, Serialize)]
pub(crate) struct WireTool<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireFunction<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub description: &'a str,
    /// The client's schema as it wrote it.
    pub parameters: &'a RawValue,
}

/// An earlier call in an assistant message: `arguments` is an object on Ollama's wire, sent as
/// the client's text so that numbers keep their digits.
#[derive(Debug, Serialize)]
pub(crate) struct WireToolCall<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub id: &'a str,
    pub function: WireCallFunction<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireCallFunction<'a> {
    pub name: &'a str,
    pub arguments: &'a RawValue,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Format<'a> {
    Json(&'static str),
    Schema(&'a RawValue),
}

/// `think`: a switch, or a level (`"low"`, `"medium"`, `"high"`) for models that take one;
/// others treat any level as on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Think {
    Switch(bool),
    Level(&'static str),
}

/// The schema of a tool that takes no arguments.
const NO_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

/// Ollama's `options` map. Unset fields are left out so the model's own defaults (from its
/// Modelfile) apply rather than ours.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl<'a> Options<'a> {
    pub fn from_generation(options: &'a GenerationOptions) -> Self {
        Options {
            temperature: options.temperature,
            num_predict: options.max_tokens,
            top_p: options.top_p,
            top_k: options.top_k,
            stop: &options.stop,
            seed: options.seed,
        }
    }

    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.num_predict.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop.is_empty()
            && self.seed.is_none()
    }
}

impl<'a> ChatBody<'a> {
    /// The request in Ollama's terms. Fails only on what the server's validation already rules
    /// out (JSON text that does not parse, a result answering no call, an image URL), so that
    /// such a request is refused here rather than sent half-translated.
    pub fn new(request: &'a ChatRequest, keep_alive: Option<i64>) -> Result<Self, ProviderError> {
        let messages = request.messages.iter().map(|m| message(request, m)).collect::<Result<_, _>>()?;
        Ok(ChatBody {
            model: &request.model,
            messages,
            stream: true,
            tools: tools(request)?,
            format: match &request.response_format {
                ResponseFormat::Text => None,
                ResponseFormat::JsonObject => Some(Format::Json("json")),
                // Ollama constrains every schema it is given by grammar, so `strict` adds nothing.
                ResponseFormat::JsonSchema { schema, .. } => {
                    Some(Format::Schema(json_text(schema, "response schema")?))
                }
            },
            think: request.reasoning.map(think),
            options: Options::from_generation(&request.options),
            keep_alive,
        })
    }
}

/// The tools the model is offered. Ollama has no tool choice: `none` offers no tool, a named
/// choice offers that tool alone, and `required` offers them all — the model may still answer in
/// text, which Ollama cannot prevent.
fn tools(request: &ChatRequest) -> Result<Vec<WireTool<'_>>, ProviderError> {
    let offered = request.tools.iter().filter(|tool| match &request.tool_choice {
        Some(ToolChoice::None) => false,
        Some(ToolChoice::Named(name)) => tool.name == *name,
        Some(ToolChoice::Auto | ToolChoice::Required) | None => true,
    });
    offered
        .map(|tool| {
            let parameters = tool.parameters.as_deref().unwrap_or(NO_PARAMETERS);
            Ok(WireTool {
                kind: "function",
                function: WireFunction {
                    name: &tool.name,
                    description: &tool.description,
                    parameters: json_text(parameters, "tool schema")?,
                },
            })
        })
        .collect()
}

fn think(reasoning: Reasoning) -> Think {
    match reasoning {
        Reasoning::Off => Think::Switch(false),
        Reasoning::On { amount: ReasoningAmount::Default, .. } => Think::Switch(true),
        Reasoning::On { amount: ReasoningAmount::Effort(effort), .. } => Think::Level(effort.as_str()),
        // Ollama takes levels, not budgets: the nearest level.
        Reasoning::On { amount: ReasoningAmount::BudgetTokens(tokens), .. } => {
            Think::Level(Effort::from_budget(tokens).as_str())
        }
    }
}

fn message<'a>(request: &'a ChatRequest, message: &'a Message) -> Result<ChatMessage<'a>, ProviderError> {
    let mut wire = ChatMessage {
        role: message.role.as_str(),
        content: message.content(),
        images: Vec::new(),
        thinking: None,
        tool_calls: Vec::new(),
        tool_name: None,
        tool_call_id: None,
    };
    let mut thinking: Vec<&str> = Vec::new();
    for part in &message.parts {
        match part {
            Part::Text(_) => {}
            Part::Image(Image { source: ImageSource::Data(bytes), .. }) => wire.images.push(base64(bytes)),
            Part::Image(Image { source: ImageSource::Url(_), .. }) => {
                return Err(ProviderError::Unsupported {
                    feature: Feature::ImageUrls,
                    message: "Ollama takes images as data, not URLs".into(),
                });
            }
            Part::ToolCall(call) => wire.tool_calls.push(WireToolCall {
                id: &call.id,
                function: WireCallFunction {
                    name: &call.name,
                    // A call that came without arguments may be kept with none.
                    arguments: json_text(
                        if call.arguments.trim().is_empty() { "{}" } else { &call.arguments },
                        "tool arguments",
                    )?,
                },
            }),
            // Ollama's thinking has no signature; a redacted block has no text to give back.
            Part::Thinking(block) if !block.redacted && !block.text.is_empty() => thinking.push(&block.text),
            Part::Thinking(_) => {}
        }
    }
    wire.thinking = match thinking[..] {
        [] => None,
        [only] => Some(Cow::Borrowed(only)),
        ref several => Some(Cow::Owned(several.concat())),
    };
    if message.role == Role::Tool {
        let id = message.tool_call_id.as_deref().unwrap_or_default();
        let Some(name) = request.tool_name_of(id) else {
            return Err(ProviderError::InvalidRequest(format!("the tool result for {id:?} answers no earlier call")));
        };
        wire.tool_name = Some(name);
        wire.tool_call_id = Some(id);
    }
    Ok(wire)
}

/// JSON text the client wrote, checked to parse, to be sent as it is.
fn json_text<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, ProviderError> {
    serde_json::from_str(text)
        .map_err(|err| ProviderError::InvalidRequest(format!("the {what} is not valid JSON: {err}")))
}

/// Standard base64 with padding, as Go's `[]byte` JSON encoding reads it.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let digits = group.len() + 1;
        for i in 0..4 {
            out.push(if i < digits { char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]) } else { '=' });
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub(crate) struct ShowBody<'a> {
    pub model: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `{"error": "..."}`, the body of every Ollama error response and of a mid-stream failure line.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

/// The human-readable message of an error response: Ollama's `error` field, or the raw body
/// (shortened) when something in between (a proxy, a load balancer) answered instead.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error.into_owned();
    }
    copilot_http::excerpt(body, 500, None)
}

// ---------------------------------------------------------------------------------------------
// The NDJSON chat stream

/// Splits a byte stream into lines as chunks arrive. Chunk boundaries fall anywhere (mid-line,
/// mid-UTF-8 character), so bytes are held until their line's `\n` arrives; a line longer than
/// the limit fails, so an upstream that never ends its line cannot grow the buffer without bound.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`, so a long line arriving in many chunks is
    /// scanned once rather than once per chunk.
    searched: usize,
    limit: usize,
}

/// A line passed the splitter's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTooLong;

impl LineSplitter {
    pub fn with_limit(limit: usize) -> Self {
        LineSplitter { buf: BytesMut::new(), searched: 0, limit }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held for a line not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The next complete line (without its `\n`), skipping blank ones; `None` until more arrives.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        loop {
            let Some(offset) = memchr::memchr(b'\n', &self.buf[self.searched..]) else {
                self.searched = self.buf.len();
                return if self.buf.len() > self.limit { Err(LineTooLong) } else { Ok(None) };
            };
            if self.searched + offset > self.limit {
                return Err(LineTooLong);
            }
            // Splitting shares the buffer instead of copying the line out.
            let mut line = self.buf.split_to(self.searched + offset + 1);
            self.searched = 0;
            line.truncate(line.len() - 1);
            if !line.trim_ascii().is_empty() {
                return Ok(Some(line.freeze()));
            }
        }
    }

    /// At end of input: whatever followed the last `\n`, if it is not blank.
    pub fn finish(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        if self.buf.len() > self.limit {
            return Err(LineTooLong);
        }
        self.searched = 0;
        let rest = self.buf.split();
        Ok((!rest.trim_ascii().is_empty()).then(|| rest.freeze()))
    }
}

/// One line of a streamed `/api/chat` response. Only what we use is declared; `created_at`,
/// `logprobs` and future fields are skipped by serde without allocating.
#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<ChunkMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    done_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    load_duration: Option<i64>,
    #[serde(default)]
    prompt_eval_duration: Option<i64>,
    #[serde(default)]
    eval_duration: Option<i64>,
    #[serde(default)]
    total_duration: Option<i64>,
}

#[derive(Deserialize)]
struct ChunkMessage<'a> {
    /// Borrowed straight from the line unless it contains JSON escapes.
    #[serde(borrow, default)]
    content: Cow<'a, str>,
    #[serde(borrow, default)]
    thinking: Cow<'a, str>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ChunkToolCall<'a>>>,
}

/// A whole call: `{id?, function:{index?, name, arguments:{...}}}`. Ollama's `index` is not
/// used: some of its parsers restart it at 0 in every chunk, so the decoder counts for itself.
#[derive(Deserialize)]
struct ChunkToolCall<'a> {
    /// Sent since v0.12.10.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: ChunkFunction<'a>,
}

#[derive(Deserialize)]
struct ChunkFunction<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    /// The object's text exactly as Ollama wrote it.
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// What one NDJSON line says, in the order a client should see it: thinking, text, tool calls,
/// then (on the final line) the end.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Line {
    pub thinking: Option<String>,
    pub content: Option<String>,
    pub calls: Vec<WholeCall>,
    /// The final chunk's summary.
    pub done: Option<Completion>,
}

/// A tool call as Ollama sends it: whole, in one chunk.
#[derive(Debug, PartialEq)]
pub(crate) struct WholeCall {
    pub id: Option<String>,
    pub name: String,
    /// The arguments object's text; empty when Ollama sent none.
    pub arguments: String,
}

/// Decodes one non-blank NDJSON line of a chat stream; `Err` fails the stream (nothing after
/// this line counts).
pub(crate) fn decode_line(line: &[u8]) -> Result<Line, ProviderError> {
    let chunk: ChatChunk = serde_json::from_slice(line).map_err(|err| {
        let excerpt = copilot_http::excerpt(line, 200, None);
        ProviderError::Protocol(format!("unparseable line in Ollama's chat stream ({err}): {excerpt}"))
    })?;
    // Ollama reports a failure after streaming began as a line of its own, with no `done`.
    if let Some(error) = chunk.error {
        return Err(ProviderError::MidStream(error.into_owned()));
    }
    let not_empty = |text: Cow<'_, str>| (!text.is_empty()).then(|| text.into_owned());
    let mut decoded = Line::default();
    if let Some(message) = chunk.message {
        decoded.thinking = not_empty(message.thinking);
        decoded.content = not_empty(message.content);
        for call in message.tool_calls.unwrap_or_default() {
            decoded.calls.push(whole_call(call)?);
        }
    }
    if chunk.done {
        decoded.done = Some(Completion {
            // Ollama says `stop` after tool calls too; the server settles the reason from the calls.
            finish_reason: match chunk.done_reason.as_deref() {
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            },
            model: chunk.model.into_owned(),
            usage: Usage {
                input_tokens: saturate(chunk.prompt_eval_count),
                // Thinking tokens are among these; Ollama does not count them apart.
                output_tokens: saturate(chunk.eval_count),
                ..Usage::default()
            },
            timings: UpstreamTimings {
                load: nanos(chunk.load_duration),
                prompt_eval: nanos(chunk.prompt_eval_duration),
                generation: nanos(chunk.eval_duration),
                total: nanos(chunk.total_duration),
            },
            // Ollama's native API has no response id.
            response_id: None,
        });
    }
    Ok(decoded)
}

fn whole_call(call: ChunkToolCall<'_>) -> Result<WholeCall, ProviderError> {
    let name = call.function.name;
    if name.is_empty() {
        return Err(ProviderError::Protocol("Ollama sent a tool call without the tool's name".into()));
    }
    let arguments = match call.function.arguments.map(RawValue::get) {
        None | Some("null") => String::new(),
        Some(text) if text.starts_with('{') => text.to_owned(),
        Some(text) => {
            let excerpt = copilot_http::excerpt(text.as_bytes(), 100, None);
            return Err(ProviderError::Protocol(format!(
                "Ollama sent arguments for tool call {name:?} that are not a JSON object: {excerpt}"
            )));
        }
    };
    Ok(WholeCall { id: call.id.filter(|id| !id.is_empty()).map(Cow::into_owned), name: name.into_owned(), arguments })
}

fn saturate(count: Option<u64>) -> u32 {
    count.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Ollama's durations are Go `time.Duration`s: signed nanoseconds.
fn nanos(value: Option<i64>) -> Option<Duration> {
    value.and_then(|n| u64::try_from(n).ok()).map(Duration::from_nanos)
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The body of `POST /api/embed`. `truncate` is always sent: Ollama's default is `true`, and a
/// request that did not ask for truncation must be refused, not silently cut.
#[derive(Debug, Serialize)]
pub(crate) struct EmbedBody<'a> {
    pub model: &'a str,
    pub input: &'a [String],
    pub truncate: bool,
    /// Ollama truncates its vectors to this many components and normalises them again; a value
    /// above the model's own length is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<i64>,
}

impl<'a> EmbedBody<'a> {
    pub fn new(request: &'a EmbedRequest, keep_alive: Option<i64>) -> Self {
        EmbedBody {
            model: &request.model,
            input: &request.inputs,
            truncate: request.truncate,
            dimensions: request.dimensions,
            keep_alive,
        }
    }
}

/// The answer of `POST /api/embed`: `{model, embeddings, total_duration, load_duration,
/// prompt_eval_count}`. The vectors are taken as they come; their count and lengths are the
/// server's to check.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbedResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    embeddings: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
}

impl EmbedResponse {
    pub fn into_embeddings(self) -> Embeddings {
        Embeddings {
            vectors: self.embeddings.unwrap_or_default(),
            model: self.model.unwrap_or_default(),
            input_tokens: self.prompt_eval_count.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model listing, description, version

#[derive(Debug, Default, Deserialize)]
struct Details {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    parameter_size: Option<String>,
    #[serde(default)]
    quantization_level: Option<String>,
}

/// `GET /api/tags`.
#[derive(Deserialize)]
pub(crate) struct TagsResponse {
    #[serde(default)]
    models: Option<Vec<TagsModel>>,
}

#[derive(Deserialize)]
struct TagsModel {
    #[serde(default)]
    name: Option<String>,
    /// Same as `name` on current servers; kept as a fallback for ones that send only this.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    details: Option<Details>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

impl TagsResponse {
    pub fn into_models(self) -> Vec<ModelInfo> {
        let models = self.models.unwrap_or_default();
        models
            .into_iter()
            .map(|m| model_info(m.name.or(m.model).unwrap_or_default(), m.details, m.capabilities, m.size, None))
            .collect()
    }
}

/// `POST /api/show`.
#[derive(Deserialize)]
pub(crate) struct ShowResponse {
    #[serde(default)]
    details: Option<Details>,
    #[serde(default)]
    model_info: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

impl ShowResponse {
    pub fn into_model(self, name: &str) -> ModelInfo {
        let context_length = self.model_info.as_ref().and_then(|info| architecture_field(info, "context_length"));
        // Every model's `model_info` has `<arch>.embedding_length` (a chat model's hidden size):
        // it is the vectors' length only for a model that can embed.
        let embeds = self.capabilities.as_ref().is_some_and(|c| c.iter().any(|c| c == "embedding"));
        let embedding_length = if embeds {
            self.model_info.as_ref().and_then(|info| architecture_field(info, "embedding_length"))
        } else {
            None
        };
        let mut info = model_info(name.to_owned(), self.details, self.capabilities, None, context_length);
        info.embedding_length = embedding_length;
        info
    }
}

/// A number `model_info` keys by architecture (`"llama.context_length"`,
/// `"nomic-bert.embedding_length"`). Any `*.<field>` key serves when the architecture is absent.
fn architecture_field(info: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<u32> {
    let as_u32 = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let by_architecture = info
        .get("general.architecture")
        .and_then(|a| a.as_str())
        .and_then(|arch| info.get(&format!("{arch}.{field}")))
        .and_then(as_u32);
    let suffix = format!(".{field}");
    by_architecture.or_else(|| info.iter().filter(|(key, _)| key.ends_with(&suffix)).find_map(|(_, v)| as_u32(v)))
}

fn model_info(
    name: String,
    details: Option<Details>,
    capabilities: Option<Vec<String>>,
    size_bytes: Option<u64>,
    context_length: Option<u32>,
) -> ModelInfo {
    let details = details.unwrap_or_default();
    ModelInfo {
        name,
        family: details.family.unwrap_or_default(),
        parameter_size: details.parameter_size.unwrap_or_default(),
        quantization: details.quantization_level.unwrap_or_default(),
        context_length,
        size_bytes,
        capabilities: capabilities.map(with_formats).unwrap_or_default(),
        ..Default::default()
    }
}

/// Ollama's own capabilities (`completion`, `tools`, `thinking`, `vision`, `insert`,
/// `embedding`), plus the structured output every completion model has: `format` constrains any
/// model's sampling by grammar.
fn with_formats(mut capabilities: Vec<String>) -> Vec<String> {
    if capabilities.iter().any(|c| c == "completion") {
        for format in [Feature::JsonObject, Feature::JsonSchema] {
            if !capabilities.iter().any(|c| c == format.as_str()) {
                capabilities.push(format.as_str().to_owned());
            }
        }
    }
    capabilities
}

/// `GET /api/version`.
#[derive(Deserialize)]
pub(crate) struct VersionResponse {
    #[serde(default)]
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::{Message, Role};
    use serde_json::json;

    fn lines_of(chunks: &[&[u8]], finish: bool) -> Vec<String> {
        let mut splitter = LineSplitter::with_limit(1024);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk);
            while let Some(line) = splitter.next_line().unwrap() {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
            }
        }
        if finish {
            lines.extend(splitter.finish().unwrap().map(|l| String::from_utf8(l.to_vec()).unwrap()));
        }
        lines
    }

    #[test]
    fn splitter_joins_a_line_split_across_chunks() {
        assert_eq!(lines_of(&[b"{\"a\":", b"1", b"}\n"], false), ["{\"a\":1}"]);
        // A line is not released before its newline arrives.
        assert!(lines_of(&[b"{\"a\":", b"1}"], false).is_empty());
    }

    #[test]
    fn splitter_splits_a_chunk_holding_several_lines() {
        assert_eq!(lines_of(&[b"one\ntwo\nthr", b"ee\n"], false), ["one", "two", "three"]);
    }

    #[test]
    fn splitter_keeps_a_final_line_without_newline() {
        assert_eq!(lines_of(&[b"one\ntwo"], true), ["one", "two"]);
        assert_eq!(lines_of(&[b"one\n"], true), ["one"]);
    }

    #[test]
    fn splitter_skips_blank_lines() {
        assert_eq!(lines_of(&[b"\none\n\n  \r\n", b"\ntwo\r\n", b"\n \n"], true), ["one", "two\r"]);
    }

    #[test]
    fn splitter_handles_utf8_split_across_chunks() {
        let text = "{\"c\":\"héllo\"}\n".as_bytes();
        let (a, b) = text.split_at(8); // inside the two-byte 'é'
        assert_eq!(lines_of(&[a, b], false), ["{\"c\":\"héllo\"}"]);
    }

    #[test]
    fn splitter_refuses_a_line_past_its_limit_however_it_arrives() {
        let mut splitter = LineSplitter::with_limit(8);
        splitter.push(b"12345678\n123456789\n");
        assert_eq!(splitter.next_line().unwrap().as_deref(), Some(&b"12345678"[..]));
        assert_eq!(splitter.next_line(), Err(LineTooLong));
        // Without its newline, it fails once it holds more than the limit.
        let mut splitter = LineSplitter::with_limit(8);
        splitter.push(b"12345678");
        assert_eq!(splitter.next_line(), Ok(None));
        splitter.push(b"9");
        assert_eq!(splitter.next_line(), Err(LineTooLong));
        assert_eq!(splitter.finish(), Err(LineTooLong));
    }

    fn text(content: &str) -> Line {
        Line { content: Some(content.into()), ..Line::default() }
    }

    #[test]
    fn decodes_a_delta() {
        let line = br#"{"model":"llama3.2","created_at":"2026-01-05T10:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}"#;
        assert_eq!(decode_line(line), Ok(text("Hel")));
        // Escapes are decoded, not passed through.
        let line = br#"{"message":{"role":"assistant","content":"a\n\"b\" \u00e9"},"done":false}"#;
        assert_eq!(decode_line(line), Ok(text("a\n\"b\" é")));
    }

    #[test]
    fn an_empty_chunk_says_nothing() {
        let line = br#"{"message":{"role":"assistant","content":""},"done":false}"#;
        assert_eq!(decode_line(line), Ok(Line::default()));
    }

    #[test]
    fn decodes_thinking_beside_content() {
        let line = br#"{"message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}"#;
        assert_eq!(decode_line(line), Ok(Line { thinking: Some("hmm".into()), ..Line::default() }));
        let line = br#"{"message":{"role":"assistant","content":"so","thinking":"\u00e9"},"done":false}"#;
        assert_eq!(
            decode_line(line),
            Ok(Line { thinking: Some("é".into()), content: Some("so".into()), ..Line::default() })
        );
    }

    #[test]
    fn decodes_whole_tool_calls_with_their_arguments_as_written() {
        let line = br#"{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_ab12cd34","function":{"index":0,"name":"get_weather","arguments":{"city":"Tokyo","id":9007199254740993,"x":1.0, "e":"\u00e9"}}},{"function":{"index":1,"name":"now","arguments":{}}}]},"done":false}"#;
        let decoded = decode_line(line).unwrap();
        assert_eq!(
            decoded.calls,
            [
                WholeCall {
                    id: Some("call_ab12cd34".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Tokyo","id":9007199254740993,"x":1.0, "e":"\u00e9"}"#.into(),
                },
                WholeCall { id: None, name: "now".into(), arguments: "{}".into() },
            ]
        );
    }

    #[test]
    fn a_call_without_arguments_has_empty_arguments() {
        for call in [r#"{"function":{"name":"f"}}"#, r#"{"id":"","function":{"name":"f","arguments":null}}"#] {
            let line = format!(r#"{{"message":{{"content":"","tool_calls":[{call}]}},"done":false}}"#);
            let decoded = decode_line(line.as_bytes()).unwrap();
            assert_eq!(decoded.calls, [WholeCall { id: None, name: "f".into(), arguments: String::new() }], "{call}");
        }
    }

    #[test]
    fn a_malformed_tool_call_is_a_protocol_error() {
        for (call, says) in [
            (r#"{"function":{"name":"","arguments":{}}}"#, "without the tool's name"),
            (r#"{"function":{"arguments":{}}}"#, "without the tool's name"),
            (r#"{"function":{"name":"f","arguments":"{\"a\":1}"}}"#, "not a JSON object"),
            (r#"{"function":{"name":"f","arguments":[1]}}"#, "not a JSON object"),
            (r#"{"id":"x"}"#, "missing field"),
        ] {
            let line = format!(r#"{{"message":{{"content":"","tool_calls":[{call}]}},"done":false}}"#);
            let Err(ProviderError::Protocol(message)) = decode_line(line.as_bytes()) else {
                panic!("{call} was accepted")
            };
            assert!(message.contains(says), "{call}: {message}");
        }
    }

    #[test]
    fn decodes_the_final_chunk_with_statistics_in_nanoseconds() {
        let line = br#"{"model":"llama3.2:latest","created_at":"x","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":2500000000,"load_duration":12000000,"prompt_eval_count":26,"prompt_eval_duration":130000000,"eval_count":120,"eval_duration":2300000000}"#;
        let expected = Completion {
            finish_reason: FinishReason::Stop,
            model: "llama3.2:latest".into(),
            usage: Usage { input_tokens: 26, output_tokens: 120, ..Default::default() },
            timings: UpstreamTimings {
                load: Some(Duration::from_millis(12)),
                prompt_eval: Some(Duration::from_millis(130)),
                generation: Some(Duration::from_millis(2300)),
                total: Some(Duration::from_millis(2500)),
            },
            response_id: None,
        };
        assert_eq!(decode_line(line), Ok(Line { done: Some(expected), ..Line::default() }));
    }

    fn done(line: &[u8]) -> Completion {
        decode_line(line).unwrap().done.expect("not done")
    }

    #[test]
    fn final_chunk_tolerates_missing_statistics() {
        // Zero values are omitted by Ollama (Go omitempty), and very old servers send no done_reason.
        let completion = done(br#"{"model":"m","done":true,"eval_count":3}"#);
        assert_eq!(completion.finish_reason, FinishReason::Stop);
        assert_eq!(completion.usage, Usage { input_tokens: 0, output_tokens: 3, ..Default::default() });
        assert_eq!(completion.timings, UpstreamTimings::default());
    }

    #[test]
    fn done_reason_length_maps_to_length() {
        let line = br#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#;
        assert_eq!(done(line).finish_reason, FinishReason::Length);
    }

    #[test]
    fn final_chunk_keeps_text_it_carries() {
        let line = br#"{"model":"m","message":{"role":"assistant","content":"end"},"done":true}"#;
        assert_eq!(decode_line(line).unwrap().content.as_deref(), Some("end"));
    }

    #[test]
    fn an_error_line_fails_the_stream() {
        let line = br#"{"error":"model runner has unexpectedly stopped"}"#;
        assert_eq!(decode_line(line), Err(ProviderError::MidStream("model runner has unexpectedly stopped".into())));
    }

    #[test]
    fn malformed_json_is_a_protocol_error_with_a_short_excerpt() {
        let Err(ProviderError::Protocol(message)) = decode_line(b"<html>bad gateway</html>") else {
            panic!("not a protocol error")
        };
        assert!(message.contains("<html>bad gateway</html>"), "{message}");

        let long = format!("{{\"message\": {}", "x".repeat(5000));
        let Err(ProviderError::Protocol(message)) = decode_line(long.as_bytes()) else {
            panic!("not a protocol error")
        };
        assert!(message.len() < 400, "excerpt not shortened: {} bytes", message.len());
    }

    #[test]
    fn a_wrongly_typed_field_is_a_protocol_error() {
        assert!(matches!(decode_line(br#"{"done":"yes"}"#), Err(ProviderError::Protocol(_))));
    }

    #[test]
    fn error_message_prefers_ollamas_error_field() {
        assert_eq!(error_message(br#"{"error":"model 'x' not found"}"#), "model 'x' not found");
        assert_eq!(error_message(b"  502 Bad Gateway\n"), "502 Bad Gateway");
        let long = "é".repeat(600);
        let message = error_message(long.as_bytes());
        assert_eq!(message.chars().count(), 501, "500 characters plus the ellipsis");
    }

    fn request(options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "llama3.2".into(),
            messages: vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "hi")],
            options,
            ..Default::default()
        }
    }

    #[test]
    fn chat_body_omits_unset_options() {
        let req = request(GenerationOptions::default());
        let body = serde_json::to_value(ChatBody::new(&req, None).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "llama3.2",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
            })
        );

        let req = request(GenerationOptions { max_tokens: Some(64), ..Default::default() });
        let body = serde_json::to_value(ChatBody::new(&req, None).unwrap()).unwrap();
        assert_eq!(body["options"], json!({"num_predict": 64}));
    }

    #[test]
    fn chat_body_maps_every_option() {
        let req = request(GenerationOptions {
            temperature: Some(0.5),
            max_tokens: Some(128),
            top_p: Some(0.25),
            top_k: Some(40),
            stop: vec!["\n\n".into(), "END".into()],
            seed: Some(42),
        });
        let body = serde_json::to_value(ChatBody::new(&req, Some(300)).unwrap()).unwrap();
        assert_eq!(
            body["options"],
            json!({"temperature": 0.5, "num_predict": 128, "top_p": 0.25, "top_k": 40, "stop": ["\n\n", "END"], "seed": 42})
        );
        assert_eq!(body["keep_alive"], json!(300));
    }

    #[test]
    fn tags_map_to_model_infos_tolerating_missing_fields() {
        let body = json!({"models": [
            {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189,
             "details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
             "capabilities": ["completion", "tools"]},
            {"model": "bare:1b", "details": null},
        ]});
        let models = serde_json::from_value::<TagsResponse>(body).unwrap().into_models();
        assert_eq!(
            models,
            [
                ModelInfo {
                    name: "llama3.2:latest".into(),
                    family: "llama".into(),
                    parameter_size: "3.2B".into(),
                    quantization: "Q4_K_M".into(),
                    context_length: None,
                    size_bytes: Some(2019393189),
                    capabilities: ["completion", "tools", "json_object", "json_schema"].map(String::from).to_vec(),
                    ..Default::default()
                },
                ModelInfo { name: "bare:1b".into(), ..Default::default() },
            ]
        );
        assert!(serde_json::from_value::<TagsResponse>(json!({})).unwrap().into_models().is_empty());
    }

    #[test]
    fn show_reads_context_length_by_architecture() {
        let body = json!({
            "details": {"family": "llama", "parameter_size": "8B", "quantization_level": "Q4_0"},
            "model_info": {"general.architecture": "llama", "aaa.context_length": 1, "llama.context_length": 8192},
            "capabilities": ["completion"],
        });
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("llama3");
        assert_eq!(info.name, "llama3");
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.family, "llama");
        assert_eq!(info.quantization, "Q4_0");
        // Every completion model takes `format`.
        assert_eq!(info.capabilities, ["completion", "json_object", "json_schema"]);

        let body = json!({"model_info": {"qwen2.context_length": 32768}});
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("q");
        assert_eq!(info.context_length, Some(32768));

        let info = serde_json::from_value::<ShowResponse>(json!({})).unwrap().into_model("q");
        assert_eq!(info.context_length, None);

        let body = json!({"capabilities": ["embedding"]});
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("e");
        assert_eq!(info.capabilities, ["embedding"], "an embedding model has no answer to shape");
        let body = json!({"capabilities": ["completion", "vision", "tools", "thinking", "json_schema"]});
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("q");
        assert_eq!(info.capabilities, ["completion", "vision", "tools", "thinking", "json_schema", "json_object"]);
    }

    #[test]
    fn show_gives_the_embedding_length_of_embedding_models_only() {
        let body = json!({
            "model_info": {"general.architecture": "nomic-bert", "nomic-bert.embedding_length": 768,
                           "nomic-bert.context_length": 2048},
            "capabilities": ["embedding"],
        });
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("nomic-embed-text");
        assert_eq!((info.embedding_length, info.context_length), (Some(768), Some(2048)));
        // A chat model's `embedding_length` is its hidden size, not a vector length it gives.
        let body = json!({
            "model_info": {"general.architecture": "llama", "llama.embedding_length": 4096},
            "capabilities": ["completion"],
        });
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("llama3");
        assert_eq!(info.embedding_length, None);
        // Without an architecture, any `*.embedding_length` serves; a bad value is no length.
        let body = json!({"model_info": {"bert.embedding_length": 384}, "capabilities": ["embedding"]});
        assert_eq!(serde_json::from_value::<ShowResponse>(body).unwrap().into_model("e").embedding_length, Some(384));
        let body = json!({"model_info": {"bert.embedding_length": -1}, "capabilities": ["embedding"]});
        assert_eq!(serde_json::from_value::<ShowResponse>(body).unwrap().into_model("e").embedding_length, None);
    }

    fn embed_request(dimensions: Option<u32>, truncate: bool) -> EmbedRequest {
        EmbedRequest {
            model: "nomic-embed-text".into(),
            inputs: vec!["a".into(), "b c".into()],
            dimensions,
            truncate,
            ..Default::default()
        }
    }

    #[test]
    fn embed_bodies_always_say_truncate_and_carry_dimensions_and_keep_alive() {
        let text =
            |request: &EmbedRequest, keep_alive| serde_json::to_value(EmbedBody::new(request, keep_alive)).unwrap();
        assert_eq!(
            text(&embed_request(None, false), None),
            json!({"model": "nomic-embed-text", "input": ["a", "b c"], "truncate": false})
        );
        assert_eq!(
            text(&embed_request(Some(64), true), Some(-1)),
            json!({"model": "nomic-embed-text", "input": ["a", "b c"], "truncate": true, "dimensions": 64,
                   "keep_alive": -1})
        );
    }

    #[test]
    fn embed_responses_map_vectors_in_order_with_usage() {
        let body = json!({"model": "nomic-embed-text", "embeddings": [[1.0, -0.5], [0.25, 2.0]],
                          "total_duration": 14_143_917, "load_duration": 1_019_500, "prompt_eval_count": 8});
        let embeddings = serde_json::from_value::<EmbedResponse>(body).unwrap().into_embeddings();
        assert_eq!(
            embeddings,
            Embeddings {
                vectors: vec![vec![1.0, -0.5], vec![0.25, 2.0]],
                model: "nomic-embed-text".into(),
                input_tokens: Some(8)
            }
        );
        // Fields Ollama leaves out stay empty; a count too large for u32 saturates.
        let embeddings = serde_json::from_value::<EmbedResponse>(json!({"prompt_eval_count": 1u64 << 40}))
            .unwrap()
            .into_embeddings();
        assert_eq!(embeddings, Embeddings { input_tokens: Some(u32::MAX), ..Default::default() });
        // A component that is not a number is a malformed answer, not a panic.
        assert!(serde_json::from_value::<EmbedResponse>(json!({"embeddings": [[1.0, null]]})).is_err());
        assert!(serde_json::from_value::<EmbedResponse>(json!({"embeddings": [["x"]]})).is_err());
    }

    // -----------------------------------------------------------------------------------------
    // Requests beyond text

    use copilot_provider::{Thinking, Tool, ToolCall};

    fn body_text(request: &ChatRequest) -> String {
        serde_json::to_string(&ChatBody::new(request, None).unwrap()).unwrap()
    }

    fn body(request: &ChatRequest) -> serde_json::Value {
        serde_json::from_str(&body_text(request)).unwrap()
    }

    fn weather_tools() -> Vec<Tool> {
        vec![
            Tool {
                name: "get_weather".into(),
                description: "The weather in a city".into(),
                parameters: Some(
                    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into(),
                ),
                strict: false,
            },
            Tool { name: "now".into(), description: String::new(), parameters: None, strict: true },
        ]
    }

    fn with_tools(choice: Option<ToolChoice>) -> ChatRequest {
        ChatRequest { tools: weather_tools(), tool_choice: choice, ..request(GenerationOptions::default()) }
    }

    #[test]
    fn tools_are_offered_as_functions_with_the_clients_schema() {
        let body = body(&with_tools(None));
        assert_eq!(
            body["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
            ])
        );
        // The schema's text goes out as the client wrote it.
        let text = body_text(&with_tools(None));
        assert!(
            text.contains(
                r#""parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
            )
        );
    }

    #[test]
    fn tool_choice_decides_which_tools_are_offered() {
        let names = |choice| {
            let body = body(&with_tools(choice));
            body.get("tools").map_or(vec![], |tools| {
                tools.as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap().to_owned()).collect()
            })
        };
        assert_eq!(names(Some(ToolChoice::Auto)), ["get_weather", "now"]);
        assert_eq!(names(Some(ToolChoice::Required)), ["get_weather", "now"]);
        assert_eq!(names(Some(ToolChoice::Named("now".into()))), ["now"]);
        assert!(names(Some(ToolChoice::None)).is_empty(), "no tools key at all");
    }

    #[test]
    fn response_formats_map_to_format() {
        let mut req = request(GenerationOptions::default());
        assert_eq!(body(&req).get("format"), None);
        req.response_format = ResponseFormat::JsonObject;
        assert_eq!(body(&req)["format"], json!("json"));
        let schema = r#"{"type":"object","properties":{"n":{"type":"integer","maximum":1.0e2}},"required":["n"]}"#;
        req.response_format = ResponseFormat::JsonSchema { name: "answer".into(), schema: schema.into(), strict: true };
        assert!(body_text(&req).contains(&format!(r#""format":{schema}"#)), "{}", body_text(&req));
    }

    #[test]
    fn reasoning_maps_to_think() {
        let think = |reasoning| {
            let req = ChatRequest { reasoning, ..request(GenerationOptions::default()) };
            body(&req).get("think").cloned()
        };
        let on = |amount| Some(Reasoning::On { amount, include_thoughts: true });
        assert_eq!(think(None), None);
        assert_eq!(think(Some(Reasoning::Off)), Some(json!(false)));
        assert_eq!(think(on(ReasoningAmount::Default)), Some(json!(true)));
        assert_eq!(think(on(ReasoningAmount::Effort(Effort::Low))), Some(json!("low")));
        assert_eq!(think(on(ReasoningAmount::Effort(Effort::High))), Some(json!("high")));
        assert_eq!(think(on(ReasoningAmount::BudgetTokens(4096))), Some(json!("medium")));
        assert_eq!(think(on(ReasoningAmount::BudgetTokens(100_000))), Some(json!("high")));
    }

    fn assistant_turn() -> Message {
        Message {
            role: Role::Assistant,
            parts: vec![
                Part::Thinking(Thinking { text: "Tokyo, so ".into(), signature: vec![], redacted: false }),
                Part::Thinking(Thinking { text: "call it".into(), signature: b"sig".to_vec(), redacted: false }),
                Part::Thinking(Thinking { text: String::new(), signature: b"opaque".to_vec(), redacted: true }),
                Part::Text("Checking.".into()),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Tokyo","id":9007199254740993,"x":1.0}"#.into(),
                    signature: vec![],
                }),
                Part::ToolCall(ToolCall {
                    id: "call_2".into(),
                    name: "now".into(),
                    arguments: String::new(),
                    signature: vec![],
                }),
            ],
            tool_call_id: None,
        }
    }

    fn tool_loop() -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::text(Role::User, "Weather in Tokyo?"),
                assistant_turn(),
                Message::tool_result("call_2", "10:00"),
                Message::tool_result("call_1", "sunny"),
            ],
            ..with_tools(None)
        }
    }

    #[test]
    fn history_carries_calls_thinking_and_results_as_ollama_takes_them() {
        let body = body(&tool_loop());
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "Weather in Tokyo?"},
                {"role": "assistant", "content": "Checking.", "thinking": "Tokyo, so call it",
                 "tool_calls": [
                    {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo", "id": 9007199254740993u64, "x": 1.0}}},
                    {"id": "call_2", "function": {"name": "now", "arguments": {}}},
                 ]},
                {"role": "tool", "content": "10:00", "tool_name": "now", "tool_call_id": "call_2"},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_1"},
            ])
        );
        // Arguments go back as an object, with the model's own digits.
        let text = body_text(&tool_loop());
        assert!(text.contains(r#""arguments":{"city":"Tokyo","id":9007199254740993,"x":1.0}"#), "{text}");
    }

    #[test]
    fn a_result_answering_no_call_is_refused_before_sending() {
        let mut req = tool_loop();
        req.messages.push(Message::tool_result("call_9", "?"));
        assert!(matches!(ChatBody::new(&req, None), Err(ProviderError::InvalidRequest(m)) if m.contains("call_9")));
    }

    #[test]
    fn json_that_does_not_parse_is_refused_before_sending() {
        let mut req = with_tools(None);
        req.tools[0].parameters = Some("{not json".into());
        assert!(
            matches!(ChatBody::new(&req, None), Err(ProviderError::InvalidRequest(m)) if m.contains("tool schema"))
        );
    }

    #[test]
    fn images_go_as_raw_base64_on_their_message() {
        let image = |source| Part::Image(Image { source, mime_type: "image/png".into() });
        let mut req = request(GenerationOptions::default());
        req.messages[1].parts.push(image(ImageSource::Data(b"\x89PNG\r\n".to_vec())));
        req.messages[1].parts.push(image(ImageSource::Data(vec![0xff, 0xfe])));
        assert_eq!(body(&req)["messages"][1], json!({"role": "user", "content": "hi", "images": ["iVBORw0K", "//4="]}));
        req.messages[1].parts.push(image(ImageSource::Url("https://example.com/a.png".into())));
        let Err(ProviderError::Unsupported { feature: Feature::ImageUrls, .. }) = ChatBody::new(&req, None) else {
            panic!("an image URL was accepted")
        };
    }

    #[test]
    fn base64_follows_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }
}
