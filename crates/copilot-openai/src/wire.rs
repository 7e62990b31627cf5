//! The OpenAI chat-completions JSON on the wire: the request body, stream chunks, error bodies,
//! model listings, and the rate-limit headers' durations.
//!
//! Everything here is pure (no I/O). Response types default every field: the servers that speak
//! this protocol (OpenAI, vLLM, llama.cpp, LM Studio, Ollama) each leave out, null out or add
//! fields of their own.

use std::borrow::Cow;
use std::time::Duration;

use copilot_http::quote;
use copilot_provider::{
    ChatRequest, Effort, FinishReason, Image, ImageSource, Message, ModelInfo, Part, ProviderError, Reasoning,
    ReasoningAmount, ResponseFormat, Role, Secret, ToolChoice, UpstreamTimings, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::chunk_scan::ChunkHead;
use crate::{MaxTokensField, ThinkingOff};

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST {base}/chat/completions`, borrowing from the provider-independent request.
/// Unset options are left out so the server's (or the model's) defaults apply.
#[derive(Debug, Serialize)]
pub(crate) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<WireResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
    /// vLLM's, SGLang's and llama.cpp's way to reach the chat template: `enable_thinking: false`
    /// turns thinking off for Qwen3-style templates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<TemplateKwargs>,
}

/// One message. `content` is a plain string unless the message holds more than text (servers
/// that only take strings then keep working), and `null` for an assistant turn that only calls
/// tools.
#[derive(Debug, Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
    /// Earlier thinking, as DeepSeek, Kimi and llama.cpp take it back (DeepSeek and Kimi require
    /// it on turns that call tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<Cow<'a, str>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<ContentPart<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ContentPart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Debug, Serialize)]
pub(crate) struct ImageUrl<'a> {
    /// `https://…`, or the image itself as a `data:<mime>;base64,…` URL.
    pub url: Cow<'a, str>,
}

/// An earlier call, in assistant history: `arguments` is the JSON text, as the model wrote it.
#[derive(Debug, Serialize)]
pub(crate) struct WireToolCall<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: WireFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireFunctionCall<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

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
    /// Sent as the client wrote it: a number is not reformatted on the way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// `"auto"`, `"none"`, `"required"` or `{"type":"function","function":{"name":…}}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: FunctionName<'a>,
    },
}

#[derive(Debug, Serialize)]
pub(crate) struct FunctionName<'a> {
    pub name: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireResponseFormat<'a> {
    JsonObject,
    JsonSchema { json_schema: WireJsonSchema<'a> },
}

#[derive(Debug, Serialize)]
pub(crate) struct WireJsonSchema<'a> {
    pub name: &'a str,
    pub schema: Box<RawValue>,
    pub strict: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct TemplateKwargs {
    pub enable_thinking: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamOptions {
    pub include_usage: bool,
}

/// vLLM's `POST /tokenize` in its chat form: the conversation as `/v1/chat/completions` would send
/// it, rendered with the model's chat template (tools included, and the generation prompt a
/// completion starts with) and counted.
#[derive(Debug, Serialize)]
pub(crate) struct TokenizeBody<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    pub add_generation_prompt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<TemplateKwargs>,
}

impl<'a> TokenizeBody<'a> {
    pub fn new(request: &'a ChatRequest, settings: BodySettings) -> Result<Self, ProviderError> {
        let chat = ChatBody::new(request, settings)?;
        Ok(TokenizeBody {
            model: chat.model,
            messages: chat.messages,
            tools: chat.tools,
            add_generation_prompt: true,
            chat_template_kwargs: chat.chat_template_kwargs,
        })
    }
}

/// vLLM's answer to `/tokenize`: the count (the token ids and `max_model_len` that come with it
/// are not used).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeAnswer {
    pub count: u64,
}

/// llama.cpp's `POST /apply-template`: the conversation as a chat call sends it (messages, tools,
/// template arguments), which the server renders with the model's chat template and the
/// generation prompt, as it would for a chat call.
#[derive(Debug, Serialize)]
pub(crate) struct ApplyTemplateBody<'a> {
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<TemplateKwargs>,
}

impl<'a> ApplyTemplateBody<'a> {
    pub fn new(request: &'a ChatRequest, settings: BodySettings) -> Result<Self, ProviderError> {
        let chat = ChatBody::new(request, settings)?;
        Ok(ApplyTemplateBody {
            messages: chat.messages,
            tools: chat.tools,
            chat_template_kwargs: chat.chat_template_kwargs,
        })
    }
}

/// llama.cpp's answer to `/apply-template`: the rendered prompt.
#[derive(Debug, Deserialize)]
pub(crate) struct AppliedTemplate {
    pub prompt: String,
}

/// llama.cpp's `POST /tokenize` of a rendered chat prompt, with the flags its chat calls
/// tokenize with: the model's special tokens added (BOS) and the template's markers parsed as
/// the special tokens they are.
#[derive(Debug, Serialize)]
pub(crate) struct LlamaTokenizeBody<'a> {
    pub content: &'a str,
    pub add_special: bool,
    pub parse_special: bool,
}

impl<'a> LlamaTokenizeBody<'a> {
    pub fn for_chat(prompt: &'a str) -> Self {
        LlamaTokenizeBody { content: prompt, add_special: true, parse_special: true }
    }
}

/// llama.cpp's answer to `/tokenize`: the token ids (each a number, or with `with_pieces` an
/// object; only how many there are is used).
#[derive(Debug, Deserialize)]
pub(crate) struct LlamaTokenizeAnswer {
    pub tokens: Vec<serde::de::IgnoredAny>,
}

/// The request-shaping settings of one provider instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodySettings {
    pub max_tokens_field: MaxTokensField,
    pub include_usage: bool,
    pub send_top_k: bool,
    pub thinking_off: ThinkingOff,
}

impl<'a> ChatBody<'a> {
    /// `Err` only for JSON text that is not JSON, which the server's validation already refused.
    pub fn new(request: &'a ChatRequest, settings: BodySettings) -> Result<Self, ProviderError> {
        let options = &request.options;
        let (max_tokens, max_completion_tokens) = match settings.max_tokens_field {
            MaxTokensField::MaxTokens => (options.max_tokens, None),
            MaxTokensField::MaxCompletionTokens => (None, options.max_tokens),
        };
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                Ok(WireTool {
                    kind: "function",
                    function: WireFunction {
                        name: &tool.name,
                        description: &tool.description,
                        parameters: tool.parameters.as_deref().map(|s| raw_json(s, "tool parameters")).transpose()?,
                        strict: tool.strict,
                    },
                })
            })
            .collect::<Result<_, ProviderError>>()?;
        let tool_choice = request.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => WireToolChoice::Mode("auto"),
            ToolChoice::None => WireToolChoice::Mode("none"),
            ToolChoice::Required => WireToolChoice::Mode("required"),
            ToolChoice::Named(name) => WireToolChoice::Function { kind: "function", function: FunctionName { name } },
        });
        let response_format = match &request.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(WireResponseFormat::JsonObject),
            ResponseFormat::JsonSchema { name, schema, strict } => Some(WireResponseFormat::JsonSchema {
                json_schema: WireJsonSchema { name, schema: raw_json(schema, "JSON schema")?, strict: *strict },
            }),
        };
        let (reasoning_effort, chat_template_kwargs) = match request.reasoning {
            None | Some(Reasoning::On { amount: ReasoningAmount::Default, .. }) => (None, None),
            Some(Reasoning::On { amount: ReasoningAmount::Effort(effort), .. }) => (Some(effort.as_str()), None),
            Some(Reasoning::On { amount: ReasoningAmount::BudgetTokens(tokens), .. }) => {
                (Some(Effort::from_budget(tokens).as_str()), None)
            }
            Some(Reasoning::Off) => match settings.thinking_off {
                ThinkingOff::ReasoningEffortNone => (Some("none"), None),
                ThinkingOff::EnableThinkingFalse => (None, Some(TemplateKwargs { enable_thinking: false })),
                // Not declared as a feature, so never asked for.
                ThinkingOff::Unsupported => (None, None),
            },
        };
        Ok(ChatBody {
            model: &request.model,
            messages: request.messages.iter().map(chat_message).collect(),
            stream: true,
            stream_options: settings.include_usage.then_some(StreamOptions { include_usage: true }),
            temperature: options.temperature,
            top_p: options.top_p,
            max_tokens,
            max_completion_tokens,
            stop: &options.stop,
            seed: options.seed,
            top_k: options.top_k.filter(|_| settings.send_top_k),
            tools,
            tool_choice,
            response_format,
            reasoning_effort,
            chat_template_kwargs,
        })
    }
}

fn raw_json(text: &str, what: &str) -> Result<Box<RawValue>, ProviderError> {
    RawValue::from_string(text.to_owned())
        .map_err(|err| ProviderError::InvalidRequest(format!("the {what} are not valid JSON: {err}")))
}

/// One message as OpenAI writes it: text parts joined into a string unless images come with
/// them, earlier tool calls in `tool_calls`, earlier thinking in `reasoning_content`.
fn chat_message(message: &Message) -> ChatMessage<'_> {
    let has_images = message.parts.iter().any(|part| matches!(part, Part::Image(_)));
    let content = if has_images {
        Content::Parts(
            message
                .parts
                .iter()
                .filter_map(|part| match part {
                    Part::Text(text) => Some(ContentPart::Text { text }),
                    Part::Image(image) => Some(ContentPart::ImageUrl { image_url: ImageUrl { url: image_url(image) } }),
                    Part::ToolCall(_) | Part::Thinking(_) => None,
                })
                .collect(),
        )
    } else {
        Content::Text(message.content())
    };
    let tool_calls: Vec<WireToolCall<'_>> = message
        .tool_calls()
        .map(|call| WireToolCall {
            id: &call.id,
            kind: "function",
            function: WireFunctionCall { name: &call.name, arguments: &call.arguments },
        })
        .collect();
    let content = match content {
        Content::Text(text) if text.is_empty() && !tool_calls.is_empty() => None,
        content => Some(content),
    };
    let mut thinking = message.parts.iter().filter_map(|part| match part {
        Part::Thinking(thinking) if !thinking.redacted && !thinking.text.is_empty() => Some(thinking.text.as_str()),
        _ => None,
    });
    let reasoning_content = match (thinking.next(), thinking.next()) {
        (None, _) => None,
        (Some(only), None) => Some(Cow::Borrowed(only)),
        (Some(first), Some(second)) => {
            let mut joined = format!("{first}{second}");
            thinking.for_each(|more| joined.push_str(more));
            Some(Cow::Owned(joined))
        }
    };
    ChatMessage {
        role: message.role.as_str(),
        content,
        tool_calls,
        tool_call_id: message.tool_call_id.as_deref().filter(|_| message.role == Role::Tool),
        reasoning_content: reasoning_content.filter(|_| message.role == Role::Assistant),
    }
}

/// An image as `image_url` takes it: its URL, or its bytes as a `data:` URL.
fn image_url(image: &Image) -> Cow<'_, str> {
    match &image.source {
        ImageSource::Url(url) => Cow::Borrowed(url),
        ImageSource::Data(bytes) => {
            let mut url = String::with_capacity(image.mime_type.len() + 13 + bytes.len().div_ceil(3) * 4);
            url.push_str("data:");
            url.push_str(&image.mime_type);
            url.push_str(";base64,");
            base64_into(bytes, &mut url);
            Cow::Owned(url)
        }
    }
}

/// Standard base64 with padding, appended to `out`.
fn base64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
}
// ---------------------------------------------------------------------------------------------
// Errors

/// What an error body says. Servers disagree on its shape, so all of these are read:
/// OpenAI's `{"error":{"message","type","param","code"}}` (with a string or, from vLLM and
/// llama.cpp, an integer `code`), LM Studio's `{"error":"<text>"}`, older vLLM's flat
/// `{"object":"error","message",...}`, FastAPI's `{"detail":...}`, and anything else as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorDetails {
    pub message: String,
    /// `code`, as text when the server sent a number.
    pub code: Option<String>,
    pub kind: Option<String>,
    /// Whether the body was an API error object (as opposed to a proxy's page or a framework's
    /// default "Not Found"), which tells an unknown model from a wrong URL.
    pub structured: bool,
}

impl ErrorDetails {
    pub fn parse(body: &[u8]) -> ErrorDetails {
        if let Ok(value) = serde_json::from_slice::<Value>(body)
            && let Some(details) = ErrorDetails::from_value(&value)
        {
            return details;
        }
        ErrorDetails { message: String::from_utf8_lossy(body).trim().to_owned(), ..Default::default() }
    }

    /// The message as it may be shown: the key masked, then shortened to 500 characters. Until
    /// then the message is kept whole (an error body is capped, a stream's event too), so a key
    /// straddling the cut is masked whole before the cut is made.
    pub fn quoted(mut self, secret: Option<&Secret>) -> ErrorDetails {
        self.message = copilot_http::quote(&self.message, 500, secret);
        self.code = self.code.map(|code| copilot_http::quote(&code, 100, secret));
        self.kind = self.kind.map(|kind| copilot_http::quote(&kind, 100, secret));
        self
    }

    /// The error a JSON value describes, or `None` when it is no error object at all.
    pub fn from_value(value: &Value) -> Option<ErrorDetails> {
        let object = value.as_object()?;
        match object.get("error") {
            Some(Value::Object(error)) => return Some(ErrorDetails::from_fields(error)),
            Some(Value::String(message)) => {
                return Some(ErrorDetails { message: message.clone(), structured: true, ..Default::default() });
            }
            Some(Value::Null) | None => {}
            Some(other) => {
                return Some(ErrorDetails { message: compact(other), structured: true, ..Default::default() });
            }
        }
        if object.get("object").and_then(Value::as_str) == Some("error") {
            return Some(ErrorDetails::from_fields(object));
        }
        // FastAPI's default for unknown routes and its validation errors (vLLM, LiteLLM).
        let detail = object.get("detail")?;
        let message = detail.as_str().map_or_else(|| compact(detail), str::to_owned);
        Some(ErrorDetails { message, ..Default::default() })
    }

    fn from_fields(fields: &serde_json::Map<String, Value>) -> ErrorDetails {
        let text = |key: &str| match fields.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let message = match fields.get("message") {
            Some(Value::String(message)) => message.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => compact(other),
        };
        ErrorDetails { message, code: text("code"), kind: text("type"), structured: true }
    }

    /// OpenAI's "out of credit": a 429 that waiting will not cure.
    pub fn is_insufficient_quota(&self) -> bool {
        self.code.as_deref() == Some("insufficient_quota") || self.kind.as_deref() == Some("insufficient_quota")
    }

    /// Whether a 404 is about the model (rather than the URL).
    pub fn is_model_not_found(&self) -> bool {
        if self.code.as_deref() == Some("model_not_found") {
            return true;
        }
        // Servers answer an unknown path with a structured 404 too: OpenAI's "Invalid URL (POST
        // /v1/x)", llama.cpp's "File Not Found".
        let route_miss = self.message.starts_with("Invalid URL")
            || self.message.eq_ignore_ascii_case("File Not Found")
            || self.message.eq_ignore_ascii_case("Not Found");
        self.structured && !route_miss
    }
}

fn compact(value: &Value) -> String {
    value.to_string()
}

// ---------------------------------------------------------------------------------------------
// The chat stream

/// One chunk of a streamed chat completion (`chat.completion.chunk`), or the whole
/// non-streamed `chat.completion` a server may answer with instead. Only what the adapter uses
/// is read; unknown fields (`system_fingerprint`, `obfuscation`, `logprobs`, …) are skipped.
#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    model: Option<Cow<'a, str>>,
    /// Missing or `null` on some servers' usage chunk.
    #[serde(default, borrow)]
    choices: Option<FirstChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// llama.cpp's own measurements, on its final chunk.
    #[serde(default)]
    timings: Option<Timings>,
}

#[derive(Debug, Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    /// The whole answer of a non-streamed completion.
    #[serde(default, borrow)]
    message: Option<Delta<'a>>,
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    finish_reason: Option<Cow<'a, str>>,
}

/// What a choice adds: answer text, thinking (llama.cpp, DeepSeek and LM Studio call it
/// `reasoning_content`, vLLM and Ollama `reasoning`), a refusal, and pieces of tool calls.
#[derive(Debug, Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "copilot_http::borrow_str")]
    refusal: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<WireCallPiece>>,
}

/// A piece of a tool call (`delta.tool_calls[]`), or a whole one (`message.tool_calls[]`).
#[derive(Debug, Deserialize)]
struct WireCallPiece {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionPiece>,
}

#[derive(Debug, Deserialize)]
struct WireFunctionPiece {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "arguments_text")]
    arguments: Option<String>,
}

/// `arguments` is the JSON text in a string; a server that sends the object itself gets its
/// text taken as it came, so no number is reformatted.
fn arguments_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
    let Some(raw) = raw else { return Ok(None) };
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw.get()).map(Some).map_err(serde::de::Error::custom),
        Some(b'n') => Ok(None),
        _ => Ok(Some(raw.get().to_owned())),
    }
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Timings {
    #[serde(default)]
    prompt_ms: Option<f64>,
    #[serde(default)]
    predicted_ms: Option<f64>,
}

/// `choices`, of which only the first with index 0 is kept (the adapter never asks for `n > 1`);
/// the others are skipped without being built, and no list is allocated per chunk.
#[derive(Debug, Default)]
struct FirstChoice<'a> {
    choice: Option<Choice<'a>>,
    /// Whether the list had any element.
    any: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for ChoicesVisitor<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut first = FirstChoice::default();
                while let Some(choice) = seq.next_element::<Choice<'a>>()? {
                    first.any = true;
                    if first.choice.is_none() && choice.index.unwrap_or(0) == 0 {
                        first.choice = Some(choice);
                    }
                }
                Ok(first)
            }
        }
        deserializer.deserialize_seq(ChoicesVisitor(std::marker::PhantomData))
    }
}

/// What one SSE event (or a whole non-streamed body) contributes to the completion, borrowing
/// from its data where it can.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ChunkInfo<'a> {
    /// Answer text (never empty).
    pub content: Option<String>,
    /// Thinking text (never empty).
    pub thinking: Option<String>,
    /// The model's refusal text (never empty).
    pub refusal: Option<String>,
    /// Pieces of tool calls, in the order the chunk lists them.
    pub tool_calls: Vec<CallPiece>,
    /// The choice's `finish_reason`, already mapped.
    pub finish: Option<Finish>,
    pub usage: Option<Usage>,
    /// The `model` field, when present and not empty.
    pub model: Option<Cow<'a, str>>,
    /// The `id` field (the completion's id), when present and not empty.
    pub id: Option<Cow<'a, str>>,
    pub timings: Option<UpstreamTimings>,
}

/// A piece of a tool call as the upstream numbered it: `index` is the upstream's (a whole reply's
/// calls are numbered by position), `id` and `name` are there when it sent them (not empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallPiece {
    pub index: Option<u64>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// How the upstream said the choice ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Finish {
    Ended(FinishReason),
    /// `abort` / `error` (vLLM, SGLang): the server cut the generation short itself.
    Aborted(String),
}

/// What one event's `data` means.
#[derive(Debug, PartialEq)]
pub(crate) enum Payload<'a> {
    /// `[DONE]`: the stream is complete.
    Done,
    Chunk(ChunkInfo<'a>),
    /// An error object sent after the stream began.
    Error(ErrorDetails),
    /// Nothing to act on (an empty event, an unknown object).
    Skip,
}

/// Decodes one event's data; `Err` when it is not JSON or a field has the wrong type.
/// `head` is the head of the stream's last chunk ([`ChunkHead`]).
pub(crate) fn decode_data<'a>(
    data: &'a str,
    secret: Option<&Secret>,
    head: &mut ChunkHead,
) -> Result<Payload<'a>, ProviderError> {
    let data = data.trim();
    if data.is_empty() {
        return Ok(Payload::Skip);
    }
    if data == "[DONE]" {
        return Ok(Payload::Done);
    }
    if let Some(info) = crate::chunk_scan::chunk(data, head) {
        #[cfg(debug_assertions)]
        check_scan(data, &info);
        return Ok(Payload::Chunk(info));
    }
    let chunk = match serde_json::from_str::<Chunk>(data) {
        Ok(chunk) => chunk,
        Err(err) => {
            // An error object may not fit the chunk shape (`"error"` is not one of its fields,
            // but a wrongly typed `choices` next to it would fail); look for one before failing.
            if let Some(details) = error_in(data) {
                return Ok(Payload::Error(details));
            }
            return Err(ProviderError::Protocol(format!(
                "unexpected chunk in the chat stream ({err}): {}",
                quote(data, 200, secret)
            )));
        }
    };
    // Errors are rare, so the data is only searched for one when the chunk carries nothing else.
    if chunk.choices.as_ref().is_none_or(|c| !c.any)
        && chunk.usage.is_none()
        && let Some(details) = error_in(data)
    {
        return Ok(Payload::Error(details));
    }
    Ok(Payload::Chunk(chunk_info(chunk)))
}

/// What the fast path made of `data` is what serde_json makes of it: checked on every chunk the
/// scan accepts in builds with debug assertions (the tests, the fuzzers).
#[cfg(any(test, debug_assertions))]
pub(crate) fn check_scan(data: &str, scanned: &ChunkInfo<'_>) {
    match serde_json::from_str::<Chunk>(data) {
        Ok(chunk) => {
            let choice = chunk.choices.as_ref().is_some_and(|c| c.any);
            // Without either, serde_json's path looks for an error object first.
            assert!(choice || chunk.usage.is_some(), "the scan took a chunk without choices or usage: {data}");
            assert_eq!(&chunk_info(chunk), scanned, "the scan and serde_json disagree on {data}");
        }
        Err(err) => panic!("the scan took a chunk serde_json refuses ({err}): {data}"),
    }
}

/// The error object in an event's data, if it is one: `{"error":...}` or vLLM's old flat form.
fn error_in(data: &str) -> Option<ErrorDetails> {
    let value = serde_json::from_str::<Value>(data).ok()?;
    let object = value.as_object()?;
    let is_error = object.get("error").is_some_and(|e| !e.is_null())
        || object.get("object").and_then(Value::as_str) == Some("error");
    if is_error { ErrorDetails::from_value(&value) } else { None }
}

/// A whole non-streamed `chat.completion` body.
pub(crate) fn decode_completion<'a>(body: &'a [u8], secret: Option<&Secret>) -> Result<Payload<'a>, ProviderError> {
    match serde_json::from_slice::<Chunk>(body) {
        Ok(chunk) if chunk.choices.as_ref().is_some_and(|c| c.any) => Ok(Payload::Chunk(chunk_info(chunk))),
        _ => {
            let text = String::from_utf8_lossy(body);
            match error_in(&text) {
                Some(details) => Ok(Payload::Error(details)),
                None => Err(ProviderError::Protocol(format!(
                    "unexpected chat completion: {}",
                    quote(text.trim(), 200, secret)
                ))),
            }
        }
    }
}

fn chunk_info(chunk: Chunk<'_>) -> ChunkInfo<'_> {
    let mut info = ChunkInfo {
        model: chunk.model.filter(|m| !m.is_empty()),
        id: chunk.id.filter(|id| !id.is_empty()),
        usage: chunk.usage.map(|u| Usage {
            input_tokens: saturate(u.prompt_tokens),
            output_tokens: saturate(u.completion_tokens),
            // Both are already counted in the totals, as `Usage` counts them.
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens).map(|n| saturate(Some(n))),
            cached_input_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).map(|n| saturate(Some(n))),
        }),
        timings: chunk.timings.map(|t| UpstreamTimings {
            prompt_eval: t.prompt_ms.and_then(millis),
            generation: t.predicted_ms.and_then(millis),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(choice) = chunk.choices.and_then(|c| c.choice) {
        info.finish = choice.finish_reason.map(|reason| map_finish_reason(&reason));
        let whole = choice.delta.is_none() && choice.message.is_some();
        let Some(delta) = choice.delta.or(choice.message) else { return info };
        let text = |field: Option<Cow<'_, str>>| field.filter(|t| !t.is_empty()).map(Cow::into_owned);
        info.content = text(delta.content);
        // Servers in between renames send both, with the same text.
        info.thinking = text(delta.reasoning_content).or_else(|| text(delta.reasoning));
        info.refusal = text(delta.refusal);
        info.tool_calls = delta
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(position, piece)| {
                let (name, arguments) = piece.function.map_or((None, None), |f| (f.name, f.arguments));
                CallPiece {
                    // A whole call is a call of its own, whatever its (often missing) index says.
                    index: if whole { Some(position as u64) } else { piece.index },
                    id: piece.id.filter(|id| !id.is_empty()),
                    name: name.filter(|name| !name.is_empty()),
                    arguments: arguments.unwrap_or_default(),
                }
            })
            .collect();
    }
    info
}

/// `stop`, `length`, `content_filter` and `tool_calls` (or the older `function_call`) as such.
/// Unknown values (servers add their own, like `eos`) count as a normal stop, except the ones
/// that say the server gave up.
pub(crate) fn map_finish_reason(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Ended(FinishReason::Length),
        "content_filter" => Finish::Ended(FinishReason::ContentFilter),
        "abort" | "error" => Finish::Aborted(reason.to_owned()),
        "tool_calls" | "function_call" => Finish::Ended(FinishReason::ToolCalls),
        "stop" => Finish::Ended(FinishReason::Stop),
        other => {
            tracing::debug!(finish_reason = other, "unknown finish_reason, taken as a normal stop");
            Finish::Ended(FinishReason::Stop)
        }
    }
}

pub(crate) fn saturate(count: Option<u64>) -> u32 {
    count.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A server-reported time in milliseconds; `None` for one no `Duration` can hold (negative, NaN,
/// or absurdly large).
fn millis(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

// ---------------------------------------------------------------------------------------------
// Model listing

/// `GET {base}/models`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelList {
    #[serde(default)]
    data: Option<Vec<ModelCard>>,
}

#[derive(Debug, Deserialize)]
struct ModelCard {
    #[serde(default)]
    id: Option<String>,
    /// vLLM.
    #[serde(default)]
    max_model_len: Option<u64>,
    /// llama.cpp.
    #[serde(default)]
    meta: Option<LlamaCppMeta>,
}

#[derive(Debug, Deserialize)]
struct LlamaCppMeta {
    #[serde(default)]
    n_ctx_train: Option<u64>,
    #[serde(default)]
    n_params: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
}

impl ModelList {
    pub fn into_models(self) -> Vec<ModelInfo> {
        self.data.unwrap_or_default().into_iter().filter_map(ModelCard::into_model).collect()
    }
}

impl ModelCard {
    fn into_model(self) -> Option<ModelInfo> {
        let name = self.id.filter(|id| !id.is_empty())?;
        let embedding_length = known_embedding_length(&name);
        let meta = self.meta;
        let context = self.max_model_len.or_else(|| meta.as_ref().and_then(|m| m.n_ctx_train));
        Some(ModelInfo {
            name,
            context_length: context.and_then(|n| u32::try_from(n).ok()),
            parameter_size: meta.as_ref().and_then(|m| m.n_params).map(parameter_size).unwrap_or_default(),
            size_bytes: meta.and_then(|m| m.size),
            capabilities: embedding_length.map(|_| vec!["embedding".to_owned()]).unwrap_or_default(),
            embedding_length,
            ..Default::default()
        })
    }
}

/// `8030261248` → `"8.0B"`, `494032768` → `"494M"`, as model listings usually write it.
fn parameter_size(count: u64) -> String {
    let count = count as f64;
    if count >= 1e9 {
        format!("{:.1}B", count / 1e9)
    } else if count >= 1e6 {
        format!("{:.0}M", count / 1e6)
    } else {
        format!("{count}")
    }
}

/// The model of that name in a listing: an exact match, or else (for Ollama's `/v1`, which
/// lists tagged names) the name with `:latest`.
pub(crate) fn find_model(models: Vec<ModelInfo>, name: &str) -> Option<ModelInfo> {
    let mut latest = None;
    for model in models {
        if model.name == name {
            return Some(model);
        }
        if latest.is_none() && model.name.strip_suffix(":latest") == Some(name) {
            latest = Some(model);
        }
    }
    latest
}

// ---------------------------------------------------------------------------------------------
// Rate-limit headers

/// A Go-style duration as OpenAI's `x-ratelimit-reset-*` headers carry it: `12ms`, `1s`,
/// `6m0s`, `1h2m3.5s`, as a wait: at most [`copilot_provider::MAX_RETRY_AFTER`]. `None` for
/// anything else.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    copilot_provider::retry_after_from_secs_f64(total)
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The body of `POST {base}/embeddings`.
#[derive(Debug, Serialize)]
pub(crate) struct EmbedBody<'a> {
    pub model: &'a str,
    pub input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// `"base64"` (little-endian f32, a quarter of the bytes of JSON numbers) or `"float"`.
    pub encoding_format: &'static str,
    /// vLLM's switch to cut over-long inputs; `-1` is the model's own limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_prompt_tokens: Option<i32>,
}

/// An embeddings response: `{object:"list", data:[{object:"embedding", index, embedding}], model,
/// usage}`. Only what the adapter uses is read.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbedResponse {
    #[serde(default)]
    data: Option<Vec<EmbedItem>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<EmbedUsage>,
}

#[derive(Debug, Deserialize)]
struct EmbedItem {
    #[serde(default)]
    index: Option<u64>,
    embedding: Vector,
}

#[derive(Debug, Deserialize)]
struct EmbedUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

/// One vector, as JSON numbers or as base64 of little-endian f32s, whichever the server sent
/// (some ignore `encoding_format`).
#[derive(Debug, PartialEq)]
struct Vector(Vec<f32>);

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vector;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers or a base64 string")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vector, A::Error> {
                // The hint is the server's word: bounded, so it cannot make a huge allocation.
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(value) = seq.next_element::<f32>()? {
                    values.push(value);
                }
                Ok(Vector(values))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vector, E> {
                let bytes = base64_decode(text).ok_or_else(|| E::custom("an embedding is not valid base64"))?;
                if bytes.len() % 4 != 0 {
                    return Err(E::custom(format!(
                        "a base64 embedding holds {} bytes, not a whole number of 4-byte floats",
                        bytes.len()
                    )));
                }
                Ok(Vector(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The vectors of an embeddings response, placed by `index` (servers need not keep the order),
/// for `count` inputs; the answering model's name; the prompt tokens, when reported.
#[derive(Debug, PartialEq)]
pub(crate) struct EmbedAnswer {
    pub vectors: Vec<Vec<f32>>,
    pub model: String,
    pub prompt_tokens: Option<u64>,
}

impl EmbedResponse {
    /// `Err` says how the answer breaks the protocol: a missing, repeated or out-of-range index.
    pub fn into_answer(self, count: usize) -> Result<EmbedAnswer, String> {
        let items = self.data.unwrap_or_default();
        let mut slots: Vec<Option<Vec<f32>>> = (0..count).map(|_| None).collect();
        for (position, item) in items.into_iter().enumerate() {
            let index = item.index.ok_or_else(|| format!("embedding {position} of the answer has no index"))?;
            let slot = usize::try_from(index)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .ok_or_else(|| format!("an embedding has index {index}, but {count} inputs were sent"))?;
            if slot.is_some() {
                return Err(format!("two embeddings have index {index}"));
            }
            *slot = Some(item.embedding.0);
        }
        let vectors = slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| slot.ok_or_else(|| format!("no embedding came back for input {index}")))
            .collect::<Result<_, _>>()?;
        Ok(EmbedAnswer {
            vectors,
            model: self.model.unwrap_or_default(),
            prompt_tokens: self.usage.and_then(|u| u.prompt_tokens),
        })
    }
}

/// Standard base64 (padding optional); `None` for anything else.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &c in text {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // A single leftover character (6 bits) cannot end base64.
    (bits < 6).then_some(out)
}

/// What OpenAI's own listing does not say: the embedding models it serves and their lengths.
pub(crate) fn known_embedding_length(model: &str) -> Option<u32> {
    match model {
        "text-embedding-3-small" | "text-embedding-ada-002" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::{GenerationOptions, Message, Role};
    use serde_json::json;

    fn request(options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, "Hi"),
                Message::text(Role::Assistant, "Hello"),
            ],
            options,
            ..Default::default()
        }
    }

    const DEFAULTS: BodySettings = BodySettings {
        max_tokens_field: MaxTokensField::MaxTokens,
        include_usage: true,
        send_top_k: false,
        thinking_off: ThinkingOff::Unsupported,
    };

    fn body(options: GenerationOptions, settings: BodySettings) -> Value {
        serde_json::to_value(ChatBody::new(&request(options), settings).unwrap()).unwrap()
    }

    #[test]
    fn chat_body_omits_unset_options() {
        assert_eq!(
            body(GenerationOptions::default(), DEFAULTS),
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let without_usage = BodySettings { include_usage: false, ..DEFAULTS };
        assert!(body(GenerationOptions::default(), without_usage).get("stream_options").is_none());
    }

    const SCHEMA: &str = r#"{"type":"object","properties":{"id":{"type":"integer","maximum":9007199254740993},"x":{"type":"number","multipleOf":1.0}},"required":["id","x"],"additionalProperties":false}"#;

    fn tool_call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall(copilot_provider::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            signature: vec![],
        })
    }

    fn tool_request() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![
                Message::text(Role::User, "Weather in Paris and Oslo?"),
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Text("Checking.".into()),
                        tool_call("call_a", "get_weather", r#"{"city":"Paris","id":9007199254740993}"#),
                    ],
                    tool_call_id: None,
                },
                Message::tool_result("call_a", "18C"),
                Message {
                    role: Role::Assistant,
                    parts: vec![tool_call("call_b", "get_weather", r#"{"city":"Oslo","x":1.0}"#)],
                    tool_call_id: None,
                },
                Message::tool_result("call_b", "3C"),
            ],
            tools: vec![
                copilot_provider::Tool {
                    name: "get_weather".into(),
                    description: "Current weather".into(),
                    parameters: Some(SCHEMA.into()),
                    strict: true,
                },
                copilot_provider::Tool { name: "now".into(), ..Default::default() },
            ],
            tool_choice: Some(ToolChoice::Named("get_weather".into())),
            response_format: ResponseFormat::JsonSchema { name: "weather".into(), schema: SCHEMA.into(), strict: true },
            ..Default::default()
        }
    }

    #[test]
    fn tools_history_and_schemas_go_out_as_openai_writes_them() {
        let request = tool_request();
        let text = serde_json::to_string(&ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
        // The schemas go out byte for byte: no number reformatted.
        assert_eq!(text.matches(SCHEMA).count(), 2, "{text}");
        let sent: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"id\":9007199254740993}"}}]},
                {"role": "tool", "content": "18C", "tool_call_id": "call_a"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"x\":1.0}"}}]},
                {"role": "tool", "content": "3C", "tool_call_id": "call_b"},
            ])
        );
        assert_eq!(sent["tools"][0]["type"], "function");
        assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(sent["tools"][0]["function"]["description"], "Current weather");
        assert_eq!(sent["tools"][0]["function"]["strict"], true);
        // A tool without parameters or description sends neither.
        assert_eq!(sent["tools"][1], json!({"type": "function", "function": {"name": "now"}}));
        assert_eq!(sent["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
        assert_eq!(sent["response_format"]["type"], "json_schema");
        assert_eq!(sent["response_format"]["json_schema"]["name"], "weather");
        assert_eq!(sent["response_format"]["json_schema"]["strict"], true);
        assert!(sent.get("reasoning_effort").is_none() && sent.get("chat_template_kwargs").is_none());

        for (choice, wire) in
            [(ToolChoice::Auto, "auto"), (ToolChoice::None, "none"), (ToolChoice::Required, "required")]
        {
            let request = ChatRequest { tool_choice: Some(choice), ..tool_request() };
            let sent = serde_json::to_value(ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
            assert_eq!(sent["tool_choice"], wire);
        }
        let request = ChatRequest { response_format: ResponseFormat::JsonObject, ..tool_request() };
        let sent = serde_json::to_value(ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
        assert_eq!(sent["response_format"], json!({"type": "json_object"}));
        let request = ChatRequest { tools: vec![], tool_choice: None, ..request };
        let sent = serde_json::to_value(ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
        assert!(sent.get("tools").is_none() && sent.get("tool_choice").is_none());
    }

    #[test]
    fn json_that_is_not_json_is_refused_not_sent() {
        let request = ChatRequest {
            response_format: ResponseFormat::JsonSchema { name: "x".into(), schema: "{".into(), strict: false },
            ..tool_request()
        };
        assert!(matches!(ChatBody::new(&request, DEFAULTS), Err(ProviderError::InvalidRequest(_))));
    }

    #[test]
    fn reasoning_maps_to_an_effort_and_off_to_the_configured_field() {
        let sent = |reasoning: Option<Reasoning>, thinking_off: ThinkingOff| {
            let request = ChatRequest { reasoning, ..request(GenerationOptions::default()) };
            serde_json::to_value(ChatBody::new(&request, BodySettings { thinking_off, ..DEFAULTS }).unwrap()).unwrap()
        };
        let on = |amount| Some(Reasoning::On { amount, include_thoughts: true });
        let effort = |body: Value| body.get("reasoning_effort").cloned();
        assert_eq!(
            effort(sent(on(ReasoningAmount::Effort(Effort::High)), ThinkingOff::Unsupported)),
            Some(json!("high"))
        );
        assert_eq!(effort(sent(on(ReasoningAmount::BudgetTokens(1024)), ThinkingOff::Unsupported)), Some(json!("low")));
        assert_eq!(
            effort(sent(on(ReasoningAmount::BudgetTokens(4096)), ThinkingOff::Unsupported)),
            Some(json!("medium"))
        );
        assert_eq!(
            effort(sent(on(ReasoningAmount::BudgetTokens(32768)), ThinkingOff::Unsupported)),
            Some(json!("high"))
        );
        assert_eq!(effort(sent(on(ReasoningAmount::Default), ThinkingOff::Unsupported)), None);
        assert_eq!(effort(sent(None, ThinkingOff::Unsupported)), None);
        assert_eq!(effort(sent(Some(Reasoning::Off), ThinkingOff::ReasoningEffortNone)), Some(json!("none")));
        let off = sent(Some(Reasoning::Off), ThinkingOff::EnableThinkingFalse);
        assert_eq!(off["chat_template_kwargs"], json!({"enable_thinking": false}));
        assert!(off.get("reasoning_effort").is_none());
    }

    #[test]
    fn thinking_goes_back_as_reasoning_content() {
        let thinking = |text: &str, redacted| {
            Part::Thinking(copilot_provider::Thinking { text: text.into(), signature: b"sig".to_vec(), redacted })
        };
        let request = ChatRequest {
            messages: vec![
                Message::text(Role::User, "Hi"),
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        thinking("First, ", false),
                        thinking("opaque", true),
                        thinking("then.", false),
                        tool_call("c1", "f", "{}"),
                    ],
                    tool_call_id: None,
                },
                Message::tool_result("c1", "ok"),
            ],
            ..Default::default()
        };
        let sent = serde_json::to_value(ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
        assert_eq!(sent["messages"][1]["reasoning_content"], "First, then.");
        assert_eq!(sent["messages"][1]["content"], Value::Null);
        assert!(sent["messages"][0].get("reasoning_content").is_none());
    }

    #[test]
    fn images_make_content_parts_and_text_alone_stays_a_string() {
        let image = |source| Part::Image(Image { source, mime_type: "image/png".into() });
        let request = ChatRequest {
            messages: vec![
                Message::text(Role::System, "Describe."),
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Text("What is this?".into()),
                        image(ImageSource::Data(b"\x89PNG\r\n".to_vec())),
                        image(ImageSource::Url("https://example.com/cat.png".into())),
                    ],
                    tool_call_id: None,
                },
            ],
            ..Default::default()
        };
        let sent = serde_json::to_value(ChatBody::new(&request, DEFAULTS).unwrap()).unwrap();
        assert_eq!(sent["messages"][0], json!({"role": "system", "content": "Describe."}));
        assert_eq!(
            sent["messages"][1]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ])
        );
    }

    #[test]
    fn base64_as_rfc_4648_writes_it() {
        for (input, expected) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            let mut out = String::new();
            base64_into(input.as_bytes(), &mut out);
            assert_eq!(out, expected, "{input:?}");
        }
        let mut out = String::new();
        base64_into(&[0xfb, 0xff, 0xbf], &mut out);
        assert_eq!(out, "+/+/");
    }

    #[test]
    fn decodes_tool_call_pieces_thinking_and_refusals() {
        let first = chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}));
        assert_eq!(
            first.tool_calls,
            [CallPiece { index: Some(0), id: Some("call_1".into()), name: Some("f".into()), arguments: String::new() }]
        );
        // vLLM: two indexes in one chunk, no `arguments` on the first piece.
        let two = chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"function":{"arguments":"{}"}},
            {"index":1,"id":"chatcmpl-tool-9","type":"function","function":{"name":"g"}}]}}]}));
        assert_eq!(two.tool_calls[0], CallPiece { index: Some(0), arguments: "{}".into(), ..Default::default() });
        assert_eq!(two.tool_calls[1].arguments, "");
        assert_eq!(two.tool_calls[1].id.as_deref(), Some("chatcmpl-tool-9"));
        // `tool_calls: null` and empty ids are nothing.
        assert!(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":null}}]})).tool_calls.is_empty());
        let empty_id =
            chunk(json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"","function":{"arguments":"1"}}]}}]}));
        assert_eq!(empty_id.tool_calls[0].id, None);

        let thinking = chunk(json!({"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}));
        assert_eq!(thinking.thinking.as_deref(), Some("hmm"));
        let vllm = chunk(json!({"choices":[{"delta":{"reasoning":"new field"}}]}));
        assert_eq!(vllm.thinking.as_deref(), Some("new field"));
        let both = chunk(json!({"choices":[{"delta":{"reasoning":"same","reasoning_content":"same"}}]}));
        assert_eq!(both.thinking.as_deref(), Some("same"));
        let refusal = chunk(json!({"choices":[{"delta":{"refusal":"I can't help with that."}}]}));
        assert_eq!(refusal.refusal.as_deref(), Some("I can't help with that."));
        assert_eq!(refusal.content, None);
    }

    #[test]
    fn whole_replies_carry_whole_calls_numbered_by_position() {
        let body = json!({"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,
            "message":{"role":"assistant","content":null,"reasoning_content":"think","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1.0}"}},
                {"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]},
            "finish_reason":"tool_calls"}]})
        .to_string();
        let Payload::Chunk(info) = decode_completion(body.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(info.finish, Some(Finish::Ended(FinishReason::ToolCalls)));
        assert_eq!(info.thinking.as_deref(), Some("think"));
        assert_eq!(info.content, None);
        let calls: Vec<_> =
            info.tool_calls.iter().map(|c| (c.index, c.name.as_deref(), c.arguments.as_str())).collect();
        assert_eq!(calls, [(Some(0), Some("f"), r#"{"a":1.0}"#), (Some(1), Some("g"), "{}")]);
        // A server that writes the arguments as an object: its text, as it came.
        let object = r#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":{"id":9007199254740993, "x":1.0}}}]},"finish_reason":"stop"}]}"#;
        let Payload::Chunk(info) = decode_completion(object.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(info.tool_calls[0].arguments, r#"{"id":9007199254740993, "x":1.0}"#);
    }

    #[test]
    fn chat_body_maps_every_option() {
        let options = GenerationOptions {
            temperature: Some(0.5),
            max_tokens: Some(128),
            top_p: Some(0.25),
            top_k: Some(40),
            stop: vec!["\n\n".into(), "END".into()],
            seed: Some(42),
        };
        let sent = body(options.clone(), DEFAULTS);
        assert_eq!(sent["temperature"], json!(0.5));
        assert_eq!(sent["top_p"], json!(0.25));
        assert_eq!(sent["max_tokens"], json!(128));
        assert_eq!(sent["stop"], json!(["\n\n", "END"]));
        assert_eq!(sent["seed"], json!(42));
        // Hosted OpenAI rejects top_k, so it is only sent when allowed.
        assert!(sent.get("top_k").is_none() && sent.get("max_completion_tokens").is_none());

        let settings =
            BodySettings { max_tokens_field: MaxTokensField::MaxCompletionTokens, send_top_k: true, ..DEFAULTS };
        let sent = body(options, settings);
        assert_eq!(sent["max_completion_tokens"], json!(128));
        assert_eq!(sent["top_k"], json!(40));
        assert!(sent.get("max_tokens").is_none());
    }

    fn chunk(data: Value) -> ChunkInfo<'static> {
        let owned = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        match decode_data(&data.to_string(), None, &mut ChunkHead::default()).unwrap() {
            Payload::Chunk(info) => ChunkInfo {
                content: info.content,
                thinking: info.thinking,
                refusal: info.refusal,
                tool_calls: info.tool_calls,
                finish: info.finish,
                usage: info.usage,
                model: owned(info.model),
                id: owned(info.id),
                timings: info.timings,
            },
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[test]
    fn decodes_openai_chunks() {
        let first = chunk(
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",
            "system_fingerprint":"fp_x","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],
            "usage":null,"obfuscation":"ab"}),
        );
        assert_eq!(
            first,
            ChunkInfo {
                model: Some("gpt-4o-mini-2024-07-18".into()),
                id: Some("chatcmpl-1".into()),
                ..Default::default()
            }
        );

        let text =
            chunk(json!({"model":"m","choices":[{"index":0,"delta":{"content":"Hel\"lo\n"},"finish_reason":null}]}));
        assert_eq!(text.content.as_deref(), Some("Hel\"lo\n"));
        assert_eq!(text.finish, None);

        let finish = chunk(json!({"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}));
        assert_eq!(finish.finish, Some(Finish::Ended(FinishReason::Stop)));
        assert_eq!(finish.content, None);

        let usage =
            chunk(json!({"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,
            "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}));
        assert_eq!(
            usage.usage,
            Some(Usage { input_tokens: 12, output_tokens: 3, reasoning_tokens: Some(0), cached_input_tokens: Some(0) })
        );
    }

    #[test]
    fn tolerates_the_known_deviations() {
        // Usage chunk with choices missing or null.
        let info = chunk(json!({"usage":{"prompt_tokens":1,"completion_tokens":2}}));
        assert_eq!(info.usage, Some(Usage { input_tokens: 1, output_tokens: 2, ..Default::default() }));
        let info = chunk(json!({"choices":null,"usage":{"prompt_tokens":1}}));
        assert_eq!(info.usage, Some(Usage { input_tokens: 1, output_tokens: 0, ..Default::default() }));
        // Usage and timings riding on the finish chunk (llama.cpp).
        let info = chunk(json!({"model":"qwen","choices":[{"index":0,"delta":{},"finish_reason":"length"}],
            "usage":{"prompt_tokens":5,"completion_tokens":7},"timings":{"prompt_n":5,"prompt_ms":12.5,"predicted_n":7,"predicted_ms":70.0}}));
        assert_eq!(info.finish, Some(Finish::Ended(FinishReason::Length)));
        assert_eq!(info.usage, Some(Usage { input_tokens: 5, output_tokens: 7, ..Default::default() }));
        let timings = info.timings.unwrap();
        assert_eq!(timings.prompt_eval, Some(Duration::from_micros(12_500)));
        assert_eq!(timings.generation, Some(Duration::from_millis(70)));
        // Role-only first delta with null content (llama.cpp).
        assert_eq!(
            chunk(json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]})),
            ChunkInfo::default()
        );
        // Reasoning deltas carry no answer text.
        let info = chunk(json!({"choices":[{"index":0,"delta":{"reasoning_content":"hmm","content":null}}]}));
        assert_eq!(info.content, None);
        let info = chunk(json!({"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"hmm"}}]}));
        assert_eq!(info.content, None);
        // Other choices than the first are ignored.
        let info =
            chunk(json!({"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine"}}]}));
        assert_eq!(info.content.as_deref(), Some("mine"));
        // An empty model name is no model name.
        assert_eq!(chunk(json!({"model":"","choices":[]})).model, None);
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(map_finish_reason("stop"), Finish::Ended(FinishReason::Stop));
        assert_eq!(map_finish_reason("length"), Finish::Ended(FinishReason::Length));
        assert_eq!(map_finish_reason("content_filter"), Finish::Ended(FinishReason::ContentFilter));
        assert_eq!(map_finish_reason("tool_calls"), Finish::Ended(FinishReason::ToolCalls));
        assert_eq!(map_finish_reason("function_call"), Finish::Ended(FinishReason::ToolCalls));
        assert_eq!(map_finish_reason("eos"), Finish::Ended(FinishReason::Stop));
        assert_eq!(map_finish_reason("abort"), Finish::Aborted("abort".into()));
    }

    #[test]
    fn done_and_empty_events() {
        assert_eq!(decode_data("[DONE]", None, &mut ChunkHead::default()).unwrap(), Payload::Done);
        assert_eq!(decode_data(" [DONE] ", None, &mut ChunkHead::default()).unwrap(), Payload::Done);
        assert_eq!(decode_data("", None, &mut ChunkHead::default()).unwrap(), Payload::Skip);
        assert_eq!(decode_data("{}", None, &mut ChunkHead::default()).unwrap(), Payload::Chunk(ChunkInfo::default()));
    }

    #[test]
    fn error_events_in_every_shape() {
        let error = |data: &str| match decode_data(data, None, &mut ChunkHead::default()).unwrap() {
            Payload::Error(details) => details,
            other => panic!("not an error: {other:?}"),
        };
        let details = error(r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#);
        assert_eq!((details.message.as_str(), details.kind.as_deref()), ("boom", Some("server_error")));
        let details = error(r#"{"error":{"code":500,"message":"llama boom","type":"server_error"}}"#);
        assert_eq!((details.message.as_str(), details.code.as_deref()), ("llama boom", Some("500")));
        assert_eq!(
            error(r#"{"object":"error","message":"old vllm","type":"BadRequestError","code":400}"#).message,
            "old vllm"
        );
        assert_eq!(error(r#"{"error":"lm studio"}"#).message, "lm studio");
        // An error next to a malformed chunk field still reads as the error.
        assert_eq!(error(r#"{"error":{"message":"x"},"choices":"bad"}"#).message, "x");
        // `"error": null` is no error.
        assert!(matches!(
            decode_data(r#"{"error":null,"choices":[]}"#, None, &mut ChunkHead::default()).unwrap(),
            Payload::Chunk(_)
        ));
    }

    #[test]
    fn malformed_chunks_are_protocol_errors_with_a_short_excerpt() {
        let Err(ProviderError::Protocol(message)) =
            decode_data("<html>bad gateway</html>", None, &mut ChunkHead::default())
        else {
            panic!()
        };
        assert!(message.contains("<html>bad gateway</html>"), "{message}");
        let long = format!("{{\"choices\": {}", "x".repeat(5000));
        let Err(ProviderError::Protocol(message)) = decode_data(&long, None, &mut ChunkHead::default()) else {
            panic!()
        };
        assert!(message.len() < 400, "{}", message.len());
        assert!(matches!(
            decode_data(r#"{"choices":[{"delta":{"content":5}}]}"#, None, &mut ChunkHead::default()),
            Err(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn non_streamed_completions_decode() {
        let body = json!({"id":"chatcmpl-abc","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello!","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}});
        let body = body.to_string();
        let Payload::Chunk(info) = decode_completion(body.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(info.content.as_deref(), Some("Hello!"));
        assert_eq!(info.finish, Some(Finish::Ended(FinishReason::Stop)));
        assert_eq!(info.usage, Some(Usage { input_tokens: 12, output_tokens: 3, ..Default::default() }));
        assert_eq!(info.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert!(matches!(decode_completion(br#"{"error":{"message":"x"}}"#, None).unwrap(), Payload::Error(_)));
        assert!(decode_completion(b"nope", None).is_err());
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let openai = ErrorDetails::parse(
            br#"{"error":{"message":"Incorrect API key provided: sk-ab****. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert!(openai.message.starts_with("Incorrect API key provided"));
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        assert!(openai.structured);

        let quota = ErrorDetails::parse(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert!(quota.is_insufficient_quota());
        let rate = ErrorDetails::parse(
            br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert!(!rate.is_insufficient_quota());

        let vllm = ErrorDetails::parse(
            br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#,
        );
        assert_eq!(vllm.code.as_deref(), Some("404"));
        assert!(vllm.is_model_not_found());
        let old_vllm = ErrorDetails::parse(
            br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#,
        );
        assert_eq!(old_vllm.message, "bad");
        let lm_studio = ErrorDetails::parse(br#"{"error":"No models loaded. Please load a model first."}"#);
        assert!(lm_studio.is_model_not_found());

        // A wrong base URL, as vLLM's FastAPI, OpenAI and a plain proxy say it: not a model error.
        assert!(!ErrorDetails::parse(br#"{"detail":"Not Found"}"#).is_model_not_found());
        assert_eq!(ErrorDetails::parse(br#"{"detail":"Not Found"}"#).message, "Not Found");
        let invalid_url = ErrorDetails::parse(
            br#"{"error":{"message":"Invalid URL (POST /chat/completions)","type":"invalid_request_error","param":null,"code":null}}"#,
        );
        assert!(!invalid_url.is_model_not_found());
        let llama_cpp =
            ErrorDetails::parse(br#"{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}"#);
        assert!(!llama_cpp.is_model_not_found());
        let page = ErrorDetails::parse(b"  404 page not found\n");
        assert_eq!(page.message, "404 page not found");
        assert!(!page.is_model_not_found());
        assert_eq!(ErrorDetails::parse("é".repeat(600).as_bytes()).quoted(None).message.chars().count(), 501);
    }

    #[test]
    fn model_listings_from_each_server() {
        let body = json!({"object":"list","data":[
            {"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},
            {"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","owned_by":"vllm","root":"x","max_model_len":32768,"permission":[]},
            {"id":"qwen2.5-0.5b","object":"model","owned_by":"llamacpp",
             "meta":{"vocab_type":2,"n_vocab":151936,"n_ctx_train":32768,"n_embd":896,"n_params":494032768,"size":397821319}},
            {"object":"model"},
        ]});
        let models = serde_json::from_value::<ModelList>(body).unwrap().into_models();
        assert_eq!(
            models,
            [
                ModelInfo { name: "gpt-4o-mini".into(), ..Default::default() },
                ModelInfo {
                    name: "meta-llama/Llama-3.1-8B-Instruct".into(),
                    context_length: Some(32768),
                    ..Default::default()
                },
                ModelInfo {
                    name: "qwen2.5-0.5b".into(),
                    context_length: Some(32768),
                    parameter_size: "494M".into(),
                    size_bytes: Some(397821319),
                    ..Default::default()
                },
            ]
        );
        assert!(serde_json::from_value::<ModelList>(json!({"data":null})).unwrap().into_models().is_empty());
        assert_eq!(parameter_size(8_030_261_248), "8.0B");
    }

    #[test]
    fn find_model_prefers_an_exact_match() {
        let named = |name: &str| ModelInfo { name: name.into(), ..Default::default() };
        let models = || vec![named("llama3.2:latest"), named("llama3.2"), named("qwen:7b")];
        assert_eq!(find_model(models(), "llama3.2").unwrap().name, "llama3.2");
        assert_eq!(find_model(vec![named("llama3.2:latest")], "llama3.2").unwrap().name, "llama3.2:latest");
        assert!(find_model(models(), "qwen").is_none());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("2m3.5s"), Some(Duration::from_millis(123_500)));
        assert_eq!(parse_go_duration("0.5s"), Some(Duration::from_millis(500)));
        for bad in ["", "5", "s", "1x", "-1s", "1.2.3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        let cap = copilot_provider::MAX_RETRY_AFTER;
        for huge in ["1h2m3.5s", "2h", "18446744073709551615s", "99999999999999999999999999h1s"] {
            assert_eq!(parse_go_duration(huge), Some(cap), "{huge:?}");
        }
        let digits = "9".repeat(400) + "s"; // infinity as an f64
        assert_eq!(parse_go_duration(&digits), Some(cap));
    }

    #[test]
    fn server_timings_that_fit_no_duration_are_dropped() {
        assert_eq!(millis(70.0), Some(Duration::from_millis(70)));
        for bad in [1e30, f64::INFINITY, f64::NAN, -1.0] {
            assert_eq!(millis(bad), None, "{bad}");
        }
    }

    fn answer(body: Value, count: usize) -> Result<EmbedAnswer, String> {
        serde_json::from_value::<EmbedResponse>(body).map_err(|e| e.to_string())?.into_answer(count)
    }

    #[test]
    fn embeddings_decode_from_floats_and_base64_by_index() {
        // [1.0, -2.5] as little-endian f32 bytes, base64.
        let b64 = {
            let mut out = String::new();
            let bytes: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
            base64_into(&bytes, &mut out);
            out
        };
        let body = json!({"object":"list","model":"text-embedding-3-small",
            "usage":{"prompt_tokens":8,"total_tokens":8},
            "data":[{"object":"embedding","index":1,"embedding":b64},
                    {"object":"embedding","index":0,"embedding":[0.0023,-0.0093]}]});
        let answer = answer(body, 2).unwrap();
        assert_eq!(answer.vectors, [vec![0.0023, -0.0093], vec![1.0, -2.5]]);
        assert_eq!((answer.model.as_str(), answer.prompt_tokens), ("text-embedding-3-small", Some(8)));
        // No usage, no model: left empty.
        let answer = self::answer(json!({"data":[{"index":0,"embedding":[1]}]}), 1).unwrap();
        assert_eq!((answer.model.as_str(), answer.prompt_tokens), ("", None));
    }

    #[test]
    fn broken_embedding_answers_are_refused_with_a_reason() {
        let cases = [
            (json!({"data":[{"index":0,"embedding":[1]}]}), 2, "no embedding came back for input 1"),
            (
                json!({"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[2]}]}),
                2,
                "two embeddings have index 0",
            ),
            (json!({"data":[{"index":5,"embedding":[1]}]}), 1, "index 5, but 1 inputs"),
            (json!({"data":[{"embedding":[1]}]}), 1, "has no index"),
            (json!({"data":[{"index":0,"embedding":"AAA"}]}), 1, "not a whole number"),
            (json!({"data":[{"index":0,"embedding":"!!!!"}]}), 1, "not valid base64"),
            (json!({"data":[{"index":0,"embedding":["x"]}]}), 1, "invalid type"),
            (json!({"data":[{"index":0,"embedding":{"a":1}}]}), 1, "an array of numbers or a base64 string"),
            (json!({"data":null}), 1, "no embedding came back for input 0"),
        ];
        for (body, count, expected) in cases {
            let err = answer(body.clone(), count).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn base64_round_trips() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let mut text = String::new();
            base64_into(&bytes, &mut text);
            assert_eq!(base64_decode(&text).as_deref(), Some(&bytes[..]), "{text}");
            assert_eq!(base64_decode(text.trim_end_matches('=')).as_deref(), Some(&bytes[..]), "{text}");
        }
        assert_eq!(base64_decode("A"), None);
        assert_eq!(base64_decode("AA=A"), None);
        assert_eq!(base64_decode("A A="), None);
    }

    #[test]
    fn embed_bodies() {
        let inputs = ["a".to_owned(), "b".to_owned()];
        let body = EmbedBody {
            model: "m",
            input: &inputs,
            dimensions: None,
            encoding_format: "base64",
            truncate_prompt_tokens: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"model":"m","input":["a","b"],"encoding_format":"base64"})
        );
        let body =
            EmbedBody { dimensions: Some(256), encoding_format: "float", truncate_prompt_tokens: Some(-1), ..body };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"model":"m","input":["a","b"],"dimensions":256,"encoding_format":"float","truncate_prompt_tokens":-1})
        );
    }
}
