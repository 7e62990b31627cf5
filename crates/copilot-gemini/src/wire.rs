//! Gemini's JSON on the wire: the `GenerateContentRequest` body, the streamed
//! `GenerateContentResponse` chunks, `google.rpc.Status` error bodies and model listings.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! The REST API uses the proto3 JSON mapping: lowerCamelCase fields, enums as strings, and unset
//! (zero) fields omitted — so every response field here is optional or defaulted.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use copilot_http::quote;
use copilot_provider::{
    ChatEvent, ChatRequest, Completion, Effort, EmbedRequest, EmbeddingTask, Feature, FinishReason, GenerationOptions,
    Image, ImageSource, Message, ModelInfo, ProviderError, Reasoning, ReasoningAmount, ResponseFormat, Role, Secret,
    ThinkingDelta, ToolCallDelta, ToolChoice, Usage,
};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::SafetySetting;

/// Gemini rejects a request with more stop sequences than this.
pub(crate) const MAX_STOP_SEQUENCES: usize = 5;

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /v1beta/models/{model}:streamGenerateContent`, borrowing from the request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateBody<'a> {
    pub contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<SystemInstruction<'a>>,
    /// One `Tool` holding every declaration (Gemini groups functions; one group is enough).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolGroup<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    pub generation_config: GenerationConfig<'a>,
    /// Empty means Google's default thresholds.
    #[serde(skip_serializing_if = "<[SafetySetting]>::is_empty")]
    pub safety_settings: &'a [SafetySetting],
}

/// One turn: `user` or `model`, its parts in order.
#[derive(Debug, Serialize)]
pub(crate) struct Content<'a> {
    pub role: &'static str,
    pub parts: Vec<Part<'a>>,
}

/// A `Part`: one of `text`, `inlineData`, `functionCall`, `functionResponse`, with `thought` and
/// `thoughtSignature` beside it.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub thought: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<InlineData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse<'a>>,
    /// Base64, as proto3 JSON writes `bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

impl<'a> Part<'a> {
    fn text(text: &'a str) -> Self {
        Part { text: Some(text), ..Default::default() }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InlineData<'a> {
    pub mime_type: &'a str,
    /// Base64.
    pub data: String,
}

/// An earlier call, sent back: `args` is the call's own JSON text, so its numbers stay as written.
#[derive(Debug, Serialize)]
pub(crate) struct FunctionCall<'a> {
    pub name: &'a str,
    pub args: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct FunctionResponse<'a> {
    pub name: &'a str,
    pub response: ToolResult<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
}

/// A tool's result as Gemini's `response` (a `Struct`, so an object): a result that is a JSON
/// object goes as written; anything else as `{"result": <the text>}`, the key Google's SDKs use.
#[derive(Debug)]
pub(crate) enum ToolResult<'a> {
    Object(&'a RawValue),
    /// A result of several text parts, joined.
    OwnedObject(Box<RawValue>),
    Text(Cow<'a, str>),
}

impl Serialize for ToolResult<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ToolResult::Object(raw) => raw.serialize(serializer),
            ToolResult::OwnedObject(raw) => raw.serialize(serializer),
            ToolResult::Text(text) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("result", text)?;
                map.end()
            }
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolGroup<'a> {
    pub function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FunctionDeclaration<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub description: &'a str,
    /// The client's JSON Schema as written (`parametersJsonSchema` takes full JSON Schema, where
    /// `parameters` takes only Google's OpenAPI subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolConfig<'a> {
    pub function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FunctionCallingConfig<'a> {
    /// `AUTO`, `ANY` (at least one call) or `NONE`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<&'a str>,
}

/// A `Content` without a role (Gemini ignores the role of a system instruction).
#[derive(Debug, Serialize)]
pub(crate) struct SystemInstruction<'a> {
    pub parts: Vec<Part<'a>>,
}

/// Unset fields are left out so the model's own defaults apply.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i32>,
    /// `application/json` for JSON output (with or without a schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    /// The client's JSON Schema as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
}

#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_thoughts: Option<bool>,
    /// Tokens; `0` turns thinking off, `-1` lets the model decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<i64>,
    /// `LOW`, `MEDIUM` or `HIGH` (Gemini 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_level: Option<&'static str>,
}

impl ThinkingConfig {
    /// Off is a zero budget. On: an effort is Gemini 3's `thinkingLevel`, and a budget (or, before
    /// Gemini 3, which has no levels, the effort's budget) is `thinkingBudget`; on by default is
    /// the dynamic budget `-1` before Gemini 3 (2.5 Flash-Lite does not think unless asked) and
    /// nothing on Gemini 3, which always thinks.
    fn new(reasoning: Reasoning, model: &str) -> Option<Self> {
        let (amount, include_thoughts) = match reasoning {
            Reasoning::Off => return Some(ThinkingConfig { thinking_budget: Some(0), ..Default::default() }),
            Reasoning::On { amount, include_thoughts } => (amount, include_thoughts),
        };
        let mut config = ThinkingConfig { include_thoughts: include_thoughts.then_some(true), ..Default::default() };
        match amount {
            ReasoningAmount::Default if !is_gemini_3(model) => config.thinking_budget = Some(-1),
            ReasoningAmount::Default => {}
            ReasoningAmount::Effort(effort) if is_gemini_3(model) => {
                config.thinking_level = Some(match effort {
                    Effort::Low => "LOW",
                    Effort::Medium => "MEDIUM",
                    Effort::High => "HIGH",
                })
            }
            ReasoningAmount::Effort(effort) => config.thinking_budget = Some(i64::from(effort.budget_tokens())),
            ReasoningAmount::BudgetTokens(tokens) => config.thinking_budget = Some(i64::from(tokens)),
        }
        (config != ThinkingConfig::default()).then_some(config)
    }
}

/// Whether a model is of the Gemini 3 generation: thinking levels, call ids, and signatures
/// that must come back with its calls.
pub(crate) fn is_gemini_3(model: &str) -> bool {
    model.rsplit('/').next().unwrap_or(model).starts_with("gemini-3")
}

impl<'a> GenerationConfig<'a> {
    pub fn from_options(options: &'a GenerationOptions) -> Self {
        GenerationConfig {
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            max_output_tokens: options.max_tokens,
            stop_sequences: &options.stop,
            seed: options.seed.map(wire_seed),
            ..Default::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}

/// Gemini's `seed` is an int32 (a larger value is a 400). Seeds that fit pass unchanged; larger
/// ones are folded into `0..=i32::MAX` (modulo 2^31), so the same seed still means the same
/// upstream seed.
pub(crate) fn wire_seed(seed: u64) -> i32 {
    i32::try_from(seed).unwrap_or((seed % (1 << 31)) as i32)
}

/// JSON text the client wrote (a schema, arguments, a result), as a raw value sent unchanged.
fn raw_json<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, ProviderError> {
    serde_json::from_str(text.trim()).map_err(|e| {
        ProviderError::InvalidRequest(format!("{what} is not valid JSON ({e}), so Gemini cannot be sent it"))
    })
}

/// Whether an id is one Copilot made up (`call_` and 24 letters and digits) because the upstream
/// gave none: Gemini before 3 writes no ids, and is sent back none.
fn is_made_up_id(id: &str) -> bool {
    id.len() == 29 && id.starts_with("call_") && id.bytes().skip(5).all(|b| b.is_ascii_alphanumeric())
}

fn signature(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| BASE64.encode(bytes))
}

impl<'a> GenerateBody<'a> {
    /// System messages, wherever they appear, become the parts of `systemInstruction` (in order);
    /// the others become `contents`, assistant as `model` and tool results as `user`.
    /// Consecutive messages of the same role are merged into one turn (Gemini expects alternating
    /// turns; parts keep the message boundaries), so the results of one step's calls become the
    /// one user turn of `functionResponse` parts Gemini requires, put in the order of the calls
    /// (Gemini pairs results with calls by position when calls have no id). Empty text is dropped:
    /// Gemini refuses an empty text part.
    pub fn new(request: &'a ChatRequest, safety_settings: &'a [SafetySetting]) -> Result<Self, ProviderError> {
        let mut contents: Vec<Content<'a>> = Vec::with_capacity(request.messages.len());
        let mut system = Vec::new();
        let messages = &request.messages;
        let mut at = 0;
        while at < messages.len() {
            let message = &messages[at];
            at += 1;
            let (role, parts) = match message.role {
                Role::System => {
                    system.extend(texts(message).map(Part::text));
                    continue;
                }
                Role::User => ("user", user_parts(message)?),
                Role::Assistant => ("model", model_parts(message)?),
                Role::Tool => {
                    let run = messages[at - 1..].iter().take_while(|m| m.role == Role::Tool).count();
                    let parts = function_responses(request, &messages[at - 1..at - 1 + run])?;
                    at += run - 1;
                    ("user", parts)
                }
            };
            if parts.is_empty() {
                continue;
            }
            match contents.last_mut() {
                Some(turn) if turn.role == role => turn.parts.extend(parts),
                _ => contents.push(Content { role, parts }),
            }
        }

        let mut generation_config = GenerationConfig::from_options(&request.options);
        match &request.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => generation_config.response_mime_type = Some("application/json"),
            // Gemini has no `strict`: a `responseJsonSchema` always constrains the output.
            ResponseFormat::JsonSchema { schema, .. } => {
                generation_config.response_mime_type = Some("application/json");
                generation_config.response_json_schema = Some(raw_json(schema, "the response JSON Schema")?);
            }
        }
        generation_config.thinking_config = request.reasoning.and_then(|r| ThinkingConfig::new(r, &request.model));

        let declarations = request
            .tools
            .iter()
            .map(|tool| {
                Ok(FunctionDeclaration {
                    name: &tool.name,
                    description: &tool.description,
                    parameters_json_schema: match &tool.parameters {
                        Some(schema) => {
                            Some(raw_json(schema, &format!("the parameters schema of tool {:?}", tool.name))?)
                        }
                        None => None,
                    },
                })
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        let tools =
            if declarations.is_empty() { Vec::new() } else { vec![ToolGroup { function_declarations: declarations }] };
        let tool_config = request.tool_choice.as_ref().map(|choice| {
            let (mode, allowed_function_names) = match choice {
                ToolChoice::Auto => ("AUTO", Vec::new()),
                ToolChoice::None => ("NONE", Vec::new()),
                ToolChoice::Required => ("ANY", Vec::new()),
                ToolChoice::Named(name) => ("ANY", vec![name.as_str()]),
            };
            ToolConfig { function_calling_config: FunctionCallingConfig { mode, allowed_function_names } }
        });

        Ok(GenerateBody {
            contents,
            system_instruction: (!system.is_empty()).then_some(SystemInstruction { parts: system }),
            tools,
            tool_config,
            generation_config,
            safety_settings,
        })
    }
}

/// A message's non-empty text parts.
fn texts(message: &Message) -> impl Iterator<Item = &str> {
    message.parts.iter().filter_map(|part| match part {
        copilot_provider::Part::Text(text) if !text.is_empty() => Some(text.as_str()),
        _ => None,
    })
}

/// The image types Gemini reads (no GIF, which Copilot's clients may send).
const GEMINI_IMAGE_TYPES: [&str; 5] = ["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"];

/// A user message: text, and images as `inlineData`.
fn user_parts(message: &Message) -> Result<Vec<Part<'_>>, ProviderError> {
    let mut parts = Vec::with_capacity(message.parts.len());
    for part in &message.parts {
        match part {
            copilot_provider::Part::Text(text) if text.is_empty() => {}
            copilot_provider::Part::Text(text) => parts.push(Part::text(text)),
            copilot_provider::Part::Image(Image { source: ImageSource::Data(bytes), mime_type }) => {
                if !GEMINI_IMAGE_TYPES.contains(&mime_type.as_str()) {
                    return Err(ProviderError::Unsupported {
                        feature: Feature::Images,
                        message: format!("Gemini reads PNG, JPEG, WebP, HEIC and HEIF images, not {mime_type}"),
                    });
                }
                parts.push(Part {
                    inline_data: Some(InlineData { mime_type, data: BASE64.encode(bytes) }),
                    ..Default::default()
                });
            }
            // Not declared (see `features`): the server refuses these before they get here.
            copilot_provider::Part::Image(Image { source: ImageSource::Url(_), .. }) => {
                return Err(ProviderError::InvalidRequest(
                    "Gemini takes images as data, not as URLs (it fetches only gs:// files, on Vertex AI)".into(),
                ));
            }
            copilot_provider::Part::ToolCall(_) | copilot_provider::Part::Thinking(_) => {
                return Err(ProviderError::InvalidRequest(
                    "a user message holds a tool call or thinking, which only the assistant writes".into(),
                ));
            }
        }
    }
    Ok(parts)
}

/// An assistant message, part for part, signatures where Gemini put them: a call's beside its
/// `functionCall`; thinking as a `thought` part with its own; a signature that came alone (Gemini
/// puts one on the last part of an answer without calls, and the stream reports it after that
/// part's text) back on the text part before it when that one has none, else on a
/// `{"text": "", "thoughtSignature": …}` part of its own, as Gemini itself sends it.
fn model_parts(message: &Message) -> Result<Vec<Part<'_>>, ProviderError> {
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(message.parts.len());
    for part in &message.parts {
        match part {
            copilot_provider::Part::Text(text) if text.is_empty() => {}
            copilot_provider::Part::Text(text) => parts.push(Part::text(text)),
            copilot_provider::Part::ToolCall(call) => {
                let args = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
                parts.push(Part {
                    function_call: Some(FunctionCall {
                        name: &call.name,
                        args: raw_json(args, &format!("the arguments of call {:?}", call.id))?,
                        id: Some(call.id.as_str()).filter(|id| !id.is_empty() && !is_made_up_id(id)),
                    }),
                    thought_signature: signature(&call.signature),
                    ..Default::default()
                });
            }
            // Anthropic's opaque block: nothing Gemini can read.
            copilot_provider::Part::Thinking(thinking) if thinking.redacted => {}
            copilot_provider::Part::Thinking(thinking) if !thinking.text.is_empty() => parts.push(Part {
                text: Some(&thinking.text),
                thought: true,
                thought_signature: signature(&thinking.signature),
                ..Default::default()
            }),
            copilot_provider::Part::Thinking(thinking) if thinking.signature.is_empty() => {}
            copilot_provider::Part::Thinking(thinking) => match parts.last_mut() {
                Some(last) if last.text.is_some() && last.thought_signature.is_none() => {
                    last.thought_signature = signature(&thinking.signature)
                }
                _ => parts.push(Part {
                    text: Some(""),
                    thought_signature: signature(&thinking.signature),
                    ..Default::default()
                }),
            },
            copilot_provider::Part::Image(_) => {
                return Err(ProviderError::InvalidRequest(
                    "an assistant message holds an image, which Gemini does not take back".into(),
                ));
            }
        }
    }
    Ok(parts)
}

/// A run of tool results: one `functionResponse` each, in the order of the calls they answer.
/// The id goes with it only when the call had Gemini's own.
fn function_responses<'a>(request: &'a ChatRequest, results: &'a [Message]) -> Result<Vec<Part<'a>>, ProviderError> {
    let mut answered = Vec::with_capacity(results.len());
    for result in results {
        let id = result.tool_call_id.as_deref().unwrap_or_default();
        let found = request.messages.iter().rev().find_map(|m| m.tool_calls().enumerate().find(|(_, c)| c.id == id));
        let Some((position, call)) = found else {
            return Err(ProviderError::InvalidRequest(format!("the tool result for {id:?} answers no earlier call")));
        };
        let content = result.content();
        let trimmed = content.trim();
        let object = trimmed.starts_with('{') && serde_json::from_str::<&RawValue>(trimmed).is_ok();
        let response = match content {
            Cow::Borrowed(text) if object => ToolResult::Object(raw_json(text, "a tool result")?),
            Cow::Owned(text) if object => ToolResult::OwnedObject(
                RawValue::from_string(text.trim().to_owned())
                    .map_err(|e| ProviderError::InvalidRequest(format!("a tool result is not valid JSON ({e})")))?,
            ),
            content => ToolResult::Text(content),
        };
        let id = Some(call.id.as_str()).filter(|id| !id.is_empty() && !is_made_up_id(id));
        answered.push((
            position,
            Part { function_response: Some(FunctionResponse { name: &call.name, response, id }), ..Default::default() },
        ));
    }
    answered.sort_by_key(|(position, _)| *position);
    Ok(answered.into_iter().map(|(_, part)| part).collect())
}

// ---------------------------------------------------------------------------------------------
// The streamed response

/// Calls one answer may make; a stream with more is refused (every call is an event, so an
/// endless stream of them must end somewhere).
pub(crate) const MAX_TOOL_CALLS: u32 = 1024;

/// One SSE `data:` payload. Only what we use is declared; `safetyRatings`, `citationMetadata`,
/// `*TokensDetails` and future fields are skipped without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamChunk<'a> {
    /// Only the first candidate: we never ask for more than one.
    #[serde(borrow, default)]
    candidates: Option<First<Candidate<'a>>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    /// An error reported inside a `data:` event (the bare-JSON form is handled in `bare_error`).
    #[serde(default)]
    error: Option<ErrorStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    finish_message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Option<Vec<PartIn<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartIn<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
    /// A thought summary (only sent with `includeThoughts`), not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(borrow, default)]
    function_call: Option<FunctionCallIn<'a>>,
    /// Base64.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    thought_signature: Option<Cow<'a, str>>,
}

/// A whole call: Gemini never splits one across chunks.
#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    name: Option<Cow<'a, str>>,
    /// An object; kept as the text Gemini wrote, so its numbers reach the client unchanged.
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
    /// Only Gemini 3 writes one.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
}

/// Running totals; any field is omitted when zero.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    /// Thinking tokens, billed as output.
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    /// Prompt tokens read from the context cache, included in `promptTokenCount`.
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    block_reason: Option<Cow<'a, str>>,
}

/// The first element of a JSON array; the others are skipped without being built.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(PhantomData))
    }
}

/// What a stream has said so far about how it ends. Chunks only ever add to it.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// Set by the chunk carrying a `finishReason`, or by a blocked prompt.
    pub finish: Option<FinishReason>,
    /// From the last chunk that carried `usageMetadata` (they are running totals).
    usage: Usage,
    model: String,
    response_id: Option<String>,
    /// `promptFeedback.blockReason` when the prompt itself was refused.
    pub block_reason: Option<String>,
    /// Calls so far: the next call's index (Gemini's calls carry none).
    calls: u32,
}

impl StreamState {
    /// Reads one `data:` payload and adds the events it holds to `events`, in the order of its
    /// parts: thought text as thinking, text as one delta per run of text parts, each
    /// `functionCall` as a whole call with the next index, and a `thoughtSignature` beside a call
    /// as that call's signature, elsewhere as a thinking signature after its part's text.
    /// `secret` is masked in the excerpt of a chunk that is not JSON.
    pub fn apply(
        &mut self,
        data: &str,
        secret: Option<&Secret>,
        events: &mut VecDeque<ChatEvent>,
    ) -> Result<(), ProviderError> {
        let protocol = |what: String| {
            ProviderError::Protocol(format!(
                "unexpected stream chunk from Gemini ({what}): {}",
                quote(data, 200, secret)
            ))
        };
        let chunk: StreamChunk = serde_json::from_str(data).map_err(|e| protocol(e.to_string()))?;
        if let Some(error) = chunk.error {
            return Err(ProviderError::MidStream(error.describe()));
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Usage {
                input_tokens: saturate(usage.prompt_token_count.unwrap_or(0)),
                output_tokens: saturate(
                    usage.candidates_token_count.unwrap_or(0).saturating_add(usage.thoughts_token_count.unwrap_or(0)),
                ),
                reasoning_tokens: usage.thoughts_token_count.map(saturate),
                cached_input_tokens: usage.cached_content_token_count.map(saturate),
            };
        }
        if let Some(model) = chunk.model_version
            && self.model != model
        {
            self.model = model.into_owned();
        }
        if let Some(id) = chunk.response_id
            && self.response_id.as_deref() != Some(&*id)
        {
            self.response_id = Some(id.into_owned());
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            // HTTP 200 and no candidates: the prompt was refused, nothing will be generated.
            self.finish = Some(FinishReason::ContentFilter);
            self.block_reason = Some(reason.into_owned());
        }
        let Some(candidate) = chunk.candidates.and_then(|c| c.0) else { return Ok(()) };
        if let Some(reason) = candidate.finish_reason.as_deref()
            && let Some(failure) = tool_call_failure(reason)
        {
            let detail = candidate.finish_message.as_deref().map(str::trim).filter(|m| !m.is_empty());
            let message = match detail {
                Some(detail) => format!("Gemini stopped with {reason} ({failure}): {detail}"),
                None => format!("Gemini stopped with {reason} ({failure})"),
            };
            return Err(ProviderError::MidStream(message));
        }
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            let signature = match part.thought_signature.as_deref().filter(|s| !s.is_empty()) {
                Some(encoded) => Some(
                    decode_bytes(encoded).ok_or_else(|| protocol("a thoughtSignature that is not base64".into()))?,
                ),
                None => None,
            };
            if let Some(call) = part.function_call {
                let name = call
                    .name
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| protocol("a functionCall without a name".into()))?;
                let arguments = match call.args.map(RawValue::get) {
                    None | Some("null") => "{}".to_owned(),
                    Some(args) if args.starts_with('{') => args.to_owned(),
                    Some(_) => return Err(protocol(format!("the args of functionCall {name:?} are not an object"))),
                };
                if self.calls >= MAX_TOOL_CALLS {
                    return Err(protocol(format!("more than {MAX_TOOL_CALLS} function calls in one answer")));
                }
                events.push_back(ChatEvent::tool_call(ToolCallDelta {
                    index: self.calls,
                    id: call.id.filter(|id| !id.is_empty()).map(Cow::into_owned),
                    name: Some(name.into_owned()),
                    arguments,
                    signature: signature.unwrap_or_default(),
                }));
                self.calls += 1;
                continue;
            }
            match part.text.filter(|t| !t.is_empty()) {
                Some(text) if part.thought => {
                    events.push_back(ChatEvent::Thinking(ThinkingDelta::Text(text.into_owned())))
                }
                Some(text) => match events.back_mut() {
                    Some(ChatEvent::Delta(joined)) => joined.push_str(&text),
                    _ => events.push_back(ChatEvent::Delta(text.into_owned())),
                },
                None => {}
            }
            if let Some(signature) = signature {
                events.push_back(ChatEvent::Thinking(ThinkingDelta::Signature(signature)));
            }
        }
        // Last: a failure above leaves the answer unfinished.
        if let Some(reason) = candidate.finish_reason {
            self.finish = Some(finish_reason(&reason));
        }
        Ok(())
    }

    pub fn completion(&self) -> Completion {
        Completion {
            finish_reason: self.finish.unwrap_or_default(),
            model: self.model.clone(),
            usage: self.usage,
            timings: Default::default(),
            response_id: self.response_id.clone(),
        }
    }
}

/// A proto3 JSON `bytes` value: base64, standard or URL-safe, padded or not (Google writes the
/// standard form; its parsers take all four).
fn decode_bytes(encoded: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [BASE64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|engine| engine.decode(encoded).ok())
}

/// The finish reasons that say a tool call went wrong, and what each means: the answer is then a
/// failure ([`ProviderError::MidStream`], as the upstream failed after the stream began), not a
/// stop with calls missing.
fn tool_call_failure(reason: &str) -> Option<&'static str> {
    match reason {
        "MALFORMED_FUNCTION_CALL" => Some("the model wrote a function call that does not parse"),
        "UNEXPECTED_TOOL_CALL" => Some("the model called a tool although none was available to it"),
        "TOO_MANY_TOOL_CALLS" => Some("the model made more tool calls than Gemini allows in one turn"),
        _ => None,
    }
}

/// Gemini's `finishReason` in provider-independent terms. Policy stops (safety, recitation,
/// blocklists, PII, unsupported language, their image variants) are content filtering; `STOP` is
/// a stop even after calls (the server settles that into a tool-calls finish); the others
/// (`OTHER`, unknown future values) count as a plain stop.
pub(crate) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A `google.rpc.Status` as JSON: `{"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
/// "details": [...]}`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorStatus {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    /// The canonical gRPC code name.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub details: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorStatus,
}

impl ErrorStatus {
    /// `"STATUS: message"`, or whichever of the two is there.
    pub fn describe(&self) -> String {
        let message = self.message.as_deref().map(str::trim).unwrap_or_default();
        match (self.status.as_deref().filter(|s| !s.is_empty()), message.is_empty()) {
            (Some(status), false) => format!("{status}: {message}"),
            (Some(status), true) => status.to_owned(),
            (None, false) => message.to_owned(),
            (None, true) => match self.code {
                Some(code) => format!("error {code}"),
                None => "unspecified error".to_owned(),
            },
        }
    }

    fn detail(&self, type_name: &str) -> impl Iterator<Item = &serde_json::Value> {
        self.details.iter().flatten().filter(move |d| {
            d.get("@type").and_then(|t| t.as_str()).is_some_and(|t| t.rsplit('/').next() == Some(type_name))
        })
    }

    /// `google.rpc.RetryInfo.retryDelay`, e.g. `"30s"`.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.detail("google.rpc.RetryInfo").find_map(|d| d.get("retryDelay")?.as_str().and_then(parse_duration))
    }

    /// `google.rpc.ErrorInfo.reason`, e.g. `"API_KEY_INVALID"`.
    pub fn reason(&self) -> Option<&str> {
        self.detail("google.rpc.ErrorInfo").find_map(|d| d.get("reason")?.as_str())
    }
}

/// A refusal in which Gemini says the model cannot do what the request asks, as
/// [`ProviderError::Unsupported`] naming the feature: "Function calling is not enabled for
/// models/gemma-3-27b-it", "JSON mode is not enabled for …", "Image input modality is not enabled
/// for …", "Budget 0 is invalid. This model only works in thinking mode.", "Thinking is not
/// supported for this model." (and the same for `thinking_level`). Other errors pass unchanged.
pub(crate) fn model_cannot(err: ProviderError, request: &ChatRequest) -> ProviderError {
    let ProviderError::InvalidRequest(message) = err else { return err };
    let lower = message.to_ascii_lowercase();
    let feature = if lower.contains("function calling is not enabled") {
        Some(Feature::Tools)
    } else if lower.contains("json mode is not enabled") {
        Some(match request.response_format {
            ResponseFormat::JsonSchema { .. } => Feature::JsonSchema,
            _ => Feature::JsonObject,
        })
    } else if lower.contains("image input modality is not enabled") {
        Some(Feature::Images)
    } else if lower.contains("only works in thinking mode") {
        Some(Feature::ThinkingOff)
    } else if lower.contains("thinking is not supported")
        || lower.contains("thinking is not enabled")
        || lower.contains("thinking level is not supported")
        || lower.contains("thinking_level is not supported")
    {
        Some(Feature::Thinking)
    } else {
        None
    };
    match feature {
        Some(feature) => ProviderError::Unsupported { feature, message },
        None => ProviderError::InvalidRequest(message),
    }
}

/// An error response body: the usual object, or the one-element array the non-SSE streaming
/// endpoint wraps it in.
pub(crate) fn parse_error_body(body: &[u8]) -> Option<ErrorStatus> {
    // Checked first: serde would also read a struct from an array, field by position.
    if body.trim_ascii_start().starts_with(b"[") {
        let list = serde_json::from_slice::<Vec<ErrorEnvelope>>(body).ok()?;
        return list.into_iter().next().map(|e| e.error);
    }
    serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error)
}

/// The human-readable message of an error body that is not a Google error: an HTML page's title
/// (Google's front end answers unknown paths with one), or the raw text, shortened.
pub(crate) fn fallback_message(body: &[u8], secret: Option<&Secret>) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.starts_with('<')
        && let Some(start) = text.find("<title>")
        && let Some(len) = text[start + 7..].find("</title>")
    {
        return quote(text[start + 7..start + 7 + len].trim(), 200, secret);
    }
    quote(text, 500, secret)
}

/// A proto3 JSON `Duration` as a wait (`RetryInfo.retryDelay`): seconds with up to nine fractional
/// digits and an `s` suffix, read exactly; other numbers of seconds (`1e30s`, `.5s`) read as
/// floats. At most [`copilot_provider::MAX_RETRY_AFTER`]; `None` for a negative, NaN or unreadable
/// value.
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let number = value.trim().strip_suffix('s')?;
    let (seconds, fraction) = number.split_once('.').unwrap_or((number, ""));
    let canonical = !seconds.is_empty()
        && seconds.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return copilot_provider::retry_after_from_secs_f64(number.parse().ok()?);
    }
    let nanos =
        if fraction.is_empty() { 0 } else { fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32) };
    // More digits than a u64 holds is still a (very) long wait.
    let seconds = seconds.parse::<u64>().unwrap_or(u64::MAX);
    Some(copilot_provider::clamp_retry_after(Duration::new(seconds, nanos)))
}

/// An error that arrived after the stream began as bare JSON rather than a `data:` event (an SSE
/// parser skips such lines as unknown fields), found in the last bytes of the body. It may span
/// several lines; it starts at a line that begins with `{`.
pub(crate) fn bare_error(tail: &[u8]) -> Option<ErrorStatus> {
    let text = String::from_utf8_lossy(tail);
    let bytes = text.as_bytes();
    let starts = (0..bytes.len())
        .filter(|&i| bytes[i] == b'{' && (i == 0 || matches!(bytes[i - 1], b'\n' | b'\r')))
        .collect::<Vec<_>>();
    starts.into_iter().rev().find_map(|start| {
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<ErrorEnvelope>();
        values.next()?.ok().map(|e| e.error)
    })
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// Gemini refuses a `batchEmbedContents` with more requests than this ("at most 100 requests can
/// be in one batch").
pub(crate) const MAX_EMBED_BATCH: usize = 100;

/// The body of `POST /v1beta/models/{model}:batchEmbedContents`.
#[derive(Debug, Serialize)]
pub(crate) struct BatchEmbedBody<'a> {
    requests: Vec<EmbedContentRequest<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentRequest<'a> {
    /// `models/{model}`: must be the model in the path.
    model: &'a str,
    content: EmbedContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Debug, Serialize)]
struct EmbedContent<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Debug, Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

impl<'a> BatchEmbedBody<'a> {
    /// One request per input, each naming `model` (the resource name, `models/…`).
    pub fn new(model: &'a str, inputs: &'a [String], task: EmbeddingTask, dimensions: Option<u32>) -> Self {
        let task_type = task_type(task);
        BatchEmbedBody {
            requests: inputs
                .iter()
                .map(|text| EmbedContentRequest {
                    model,
                    content: EmbedContent { parts: [TextPart { text }] },
                    task_type,
                    output_dimensionality: dimensions,
                })
                .collect(),
        }
    }
}

/// Gemini's `taskType` for a task; none for [`EmbeddingTask::Unspecified`] (the model's default).
pub(crate) fn task_type(task: EmbeddingTask) -> Option<&'static str> {
    match task {
        EmbeddingTask::Unspecified => None,
        EmbeddingTask::Query => Some("RETRIEVAL_QUERY"),
        EmbeddingTask::Document => Some("RETRIEVAL_DOCUMENT"),
        EmbeddingTask::SemanticSimilarity => Some("SEMANTIC_SIMILARITY"),
        EmbeddingTask::Classification => Some("CLASSIFICATION"),
        EmbeddingTask::Clustering => Some("CLUSTERING"),
    }
}

/// The model's resource name as a request inside a batch names it: a bare id gets `models/`;
/// `models/…` and `tunedModels/…` are kept.
pub(crate) fn embed_model_resource(model: &str) -> String {
    if model.starts_with("models/") || model.starts_with("tunedModels/") {
        model.to_owned()
    } else {
        format!("models/{model}")
    }
}

/// The answer to `batchEmbedContents`: `{"embeddings": [{"values": [...]}]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchEmbedResponse {
    #[serde(default)]
    embeddings: Option<Vec<ContentEmbedding>>,
}

#[derive(Debug, Deserialize)]
struct ContentEmbedding {
    #[serde(default)]
    values: Option<Vec<f32>>,
}

impl BatchEmbedResponse {
    /// The vectors in order (one missing its `values` is empty, which the server refuses).
    pub fn into_vectors(self) -> Vec<Vec<f32>> {
        self.embeddings.into_iter().flatten().map(|e| e.values.unwrap_or_default()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Token counts

/// The most a `countTokens` answer may hold: a count and a short list per modality.
pub(crate) const MAX_COUNT_RESPONSE_BYTES: usize = 64 << 10;

/// The body of `POST /v1beta/models/{model}:countTokens` on the Gemini API: the whole
/// `generateContentRequest` (the form that counts the system instruction and the tools; a bare
/// `contents` counts neither), mapped exactly as a chat request is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CountTokensBody<'a> {
    pub generate_content_request: CountedRequest<'a>,
}

/// A `GenerateContentRequest` with the `model` it must name inside a count request.
#[derive(Debug, Serialize)]
pub(crate) struct CountedRequest<'a> {
    /// `models/{model}`.
    pub model: String,
    #[serde(flatten)]
    pub body: GenerateBody<'a>,
}

impl<'a> CountTokensBody<'a> {
    pub fn new(request: &'a ChatRequest) -> Result<Self, ProviderError> {
        let body = GenerateBody::new(request, &[])?;
        Ok(CountTokensBody {
            generate_content_request: CountedRequest { model: embed_model_resource(&request.model), body },
        })
    }
}

/// The answer to `countTokens` on either API: `{"totalTokens": N, …}` (Vertex AI adds
/// `totalBillableCharacters`). proto3 JSON leaves a zero out, so a missing count is 0.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CountTokensResponse {
    #[serde(default)]
    total_tokens: i64,
}

impl CountTokensResponse {
    /// The count, which must be a non-negative int32 as the API declares it.
    pub fn total(&self) -> Result<u32, ProviderError> {
        u32::try_from(self.total_tokens)
            .map_err(|_| ProviderError::Protocol(format!("a token count of {} is not a count", self.total_tokens)))
    }
}

/// The body of Vertex AI's `POST …/publishers/google/models/{model}:predict` for text embeddings.
#[derive(Debug, Serialize)]
pub(crate) struct PredictBody<'a> {
    instances: Vec<PredictInstance<'a>>,
    parameters: PredictParameters,
}

#[derive(Debug, Serialize)]
struct PredictInstance<'a> {
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PredictParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
    auto_truncate: bool,
}

impl<'a> PredictBody<'a> {
    pub fn new(inputs: &'a [String], task: EmbeddingTask, dimensions: Option<u32>, truncate: bool) -> Self {
        let task_type = task_type(task);
        PredictBody {
            instances: inputs.iter().map(|content| PredictInstance { content, task_type }).collect(),
            parameters: PredictParameters { output_dimensionality: dimensions, auto_truncate: truncate },
        }
    }
}

/// Instances per `:predict` call: Vertex's gemini-embedding models take one ("batchSize must be
/// 1"), its text-embedding models up to 250.
pub(crate) fn vertex_embed_batch(model: &str) -> usize {
    let id = model.rsplit('/').next().unwrap_or(model);
    if id.starts_with("gemini-embedding") { 1 } else { 250 }
}

/// The answer to `:predict`: `{"predictions": [{"embeddings": {"values", "statistics":
/// {"token_count", "truncated"}}}]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct PredictResponse {
    #[serde(default)]
    predictions: Option<Vec<Prediction>>,
}

#[derive(Debug, Deserialize)]
struct Prediction {
    #[serde(default)]
    embeddings: Option<PredictEmbedding>,
}

#[derive(Debug, Deserialize)]
struct PredictEmbedding {
    #[serde(default)]
    values: Option<Vec<f32>>,
    #[serde(default)]
    statistics: Option<PredictStatistics>,
}

#[derive(Debug, Deserialize)]
struct PredictStatistics {
    /// A JSON number (Vertex writes it as a float).
    #[serde(default)]
    token_count: Option<f64>,
}

impl PredictResponse {
    /// The vectors in order, and the tokens they took when every one says.
    pub fn into_parts(self) -> (Vec<Vec<f32>>, Option<u64>) {
        let mut tokens = Some(0u64);
        let vectors = self
            .predictions
            .into_iter()
            .flatten()
            .map(|p| {
                let embedding = p.embeddings.unwrap_or(PredictEmbedding { values: None, statistics: None });
                let count = embedding.statistics.and_then(|s| s.token_count).filter(|c| c.is_finite() && *c >= 0.0);
                tokens = match (tokens, count) {
                    (Some(sum), Some(count)) => Some(sum.saturating_add(count as u64)),
                    _ => None,
                };
                embedding.values.unwrap_or_default()
            })
            .collect();
        (vectors, tokens)
    }
}

/// Vertex's refusal of a chat model on `:predict` ("Gemini cannot be accessed through Vertex
/// Predict/RawPredict API") as [`ProviderError::Unsupported`] embeddings; other errors unchanged.
pub(crate) fn vertex_cannot_embed(err: ProviderError) -> ProviderError {
    match err {
        ProviderError::InvalidRequest(message)
            if message.to_ascii_lowercase().contains("cannot be accessed through vertex predict") =>
        {
            ProviderError::Unsupported { feature: Feature::Embeddings, message }
        }
        err => err,
    }
}

/// How Vertex AI embeds with a model: the method is chosen once, here, by the model's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VertexEmbedMethod {
    /// `:predict`, many instances per call (text-embedding-*, text-multilingual-embedding-*,
    /// gemini-embedding-001 and anything not named below).
    Predict,
    /// `:embedContent`, one input per call: the Gemini embedding models after
    /// gemini-embedding-001 (gemini-embedding-2, gemini-embedding-2-preview, …), for which Vertex
    /// no longer serves `:predict` (it answers 400 FAILED_PRECONDITION "Precondition check
    /// failed.").
    EmbedContent,
}

/// The Vertex AI method for `model` (a bare id or a resource name): `:embedContent` for
/// `gemini-embedding-*` other than `gemini-embedding-001`, `:predict` otherwise.
pub(crate) fn vertex_embed_method(model: &str) -> VertexEmbedMethod {
    let id = model.rsplit('/').next().unwrap_or(model);
    match id.strip_prefix("gemini-embedding-") {
        Some(rest) if !rest.starts_with("001") => VertexEmbedMethod::EmbedContent,
        _ => VertexEmbedMethod::Predict,
    }
}

/// Whether a `:predict` refusal is Vertex's answer for a model served only through
/// `:embedContent`: 400 FAILED_PRECONDITION "Precondition check failed." (its whole message).
pub(crate) fn predict_wants_embed_content(err: &ProviderError) -> bool {
    matches!(err, ProviderError::InvalidRequest(message)
        if message.trim_end_matches('.').eq_ignore_ascii_case("FAILED_PRECONDITION: Precondition check failed"))
}

/// The body of Vertex AI's `POST …/publishers/google/models/{model}:embedContent`: one input.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VertexEmbedContentBody<'a> {
    content: EmbedContent<'a>,
    embed_content_config: EmbedContentConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
    auto_truncate: bool,
}

impl<'a> VertexEmbedContentBody<'a> {
    pub fn new(text: &'a str, task: EmbeddingTask, dimensions: Option<u32>, truncate: bool) -> Self {
        VertexEmbedContentBody {
            content: EmbedContent { parts: [TextPart { text }] },
            embed_content_config: EmbedContentConfig {
                task_type: task_type(task),
                output_dimensionality: dimensions,
                auto_truncate: truncate,
            },
        }
    }
}

/// The answer to Vertex's `:embedContent`: `{"embedding": {"values"}, "usageMetadata":
/// {"promptTokenCount"}, "truncated"?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VertexEmbedContentResponse {
    #[serde(default)]
    embedding: Option<ContentEmbedding>,
    #[serde(default)]
    usage_metadata: Option<EmbedUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmbedUsage {
    /// proto3 JSON leaves a zero out.
    #[serde(default)]
    prompt_token_count: i64,
}

impl VertexEmbedContentResponse {
    /// The vector (`None` when the answer has none) and the tokens it took (`None` without
    /// `usageMetadata`, or with a count that is not one).
    pub fn into_parts(self) -> (Option<Vec<f32>>, Option<u64>) {
        let tokens = self.usage_metadata.and_then(|u| u64::try_from(u.prompt_token_count).ok());
        (self.embedding.and_then(|e| e.values), tokens)
    }
}

/// Input token limits of Gemini's embedding models, where known: Gemini cuts longer inputs
/// silently.
pub(crate) fn embedding_input_limit(model: &str) -> Option<u32> {
    let id = model.rsplit('/').next().unwrap_or(model);
    match id {
        "gemini-embedding-001" | "text-embedding-004" | "embedding-001" => Some(2048),
        _ => None,
    }
}

/// Bytes per token above which an input is surely longer than its model's limit: no tokenizer
/// Gemini uses packs more than this into a token of ordinary text (English averages about 4,
/// other scripts fewer bytes).
pub(crate) const SURE_BYTES_PER_TOKEN: usize = 6;

/// Without `truncate`: refuses an input that is surely over the model's input limit
/// ([`SURE_BYTES_PER_TOKEN`] bytes per token), since Gemini would cut it silently. Shorter inputs
/// (and every input of a model whose limit is unknown) go as they are.
pub(crate) fn check_input_lengths(request: &EmbedRequest) -> Result<(), ProviderError> {
    let Some(limit) = embedding_input_limit(&request.model) else { return Ok(()) };
    let max_bytes = limit as usize * SURE_BYTES_PER_TOKEN;
    match request.inputs.iter().position(|input| input.len() > max_bytes) {
        None => Ok(()),
        Some(index) => Err(ProviderError::InvalidRequest(format!(
            "input {index} is too long for {}: {} bytes is more than its {limit} input tokens (Gemini would cut it silently); shorten it or set truncate",
            request.model,
            request.inputs[index].len()
        ))),
    }
}

/// Vector lengths of Gemini's embedding models when no `outputDimensionality` is asked for (the
/// listing does not say).
fn embedding_length(id: &str) -> Option<u32> {
    match id {
        "text-embedding-004" | "text-embedding-005" | "text-multilingual-embedding-002" | "embedding-001" => Some(768),
        id if id.starts_with("gemini-embedding") => Some(3072),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Models

/// `GET /v1beta/models`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListModelsResponse {
    #[serde(default)]
    pub models: Option<Vec<Model>>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One `Model` resource (`GET /v1beta/models/{model}` returns it alone).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Model {
    /// `models/gemini-2.5-flash`.
    #[serde(default)]
    name: String,
    #[serde(default)]
    input_token_limit: Option<u64>,
    #[serde(default)]
    supported_generation_methods: Option<Vec<String>>,
    #[serde(default)]
    thinking: Option<bool>,
}

impl Model {
    /// Whether chat can be routed to it (embedding and image models lack `generateContent`).
    pub fn supports_generate_content(&self) -> bool {
        self.supported_generation_methods.iter().flatten().any(|m| m == "generateContent")
    }

    /// Whether it embeds (Gemini's embedding models list `embedContent`).
    pub fn supports_embed_content(&self) -> bool {
        self.supported_generation_methods.iter().flatten().any(|m| m == "embedContent")
    }

    /// Whether its tokens can be counted (`countTokens`: chat models list it).
    pub fn supports_count_tokens(&self) -> bool {
        self.supported_generation_methods.iter().flatten().any(|m| m == "countTokens")
    }

    /// Its methods, for a message: `generateContent, countTokens`.
    pub fn methods(&self) -> String {
        self.supported_generation_methods.iter().flatten().map(String::as_str).collect::<Vec<_>>().join(", ")
    }

    pub fn into_info(self) -> ModelInfo {
        let name = match self.name.strip_prefix("models/") {
            Some(id) => id.to_owned(),
            None => self.name,
        };
        let methods = self.supported_generation_methods.unwrap_or_default();
        let mut capabilities = Vec::new();
        if methods.iter().any(|m| m == "generateContent") {
            capabilities.push("completion".to_owned());
            capabilities.extend(gemini_capabilities(&name).iter().map(|c| (*c).to_owned()));
        }
        let embeds = methods.iter().any(|m| m == "embedContent");
        if embeds {
            capabilities.push("embedding".to_owned());
        }
        if self.thinking == Some(true) {
            capabilities.push("thinking".to_owned());
        }
        ModelInfo {
            family: family(&name),
            parameter_size: parameter_size(&name),
            context_length: self.input_token_limit.map(saturate),
            capabilities,
            embedding_length: if embeds { embedding_length(&name) } else { None },
            name,
            ..Default::default()
        }
    }
}

/// A Vertex AI publisher model (`GET /v1beta1/publishers/google/models/{model}`): Model Garden's
/// catalog entry, which has no token limits or generation methods.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublisherModel {
    /// `publishers/google/models/gemini-2.0-flash`.
    #[serde(default)]
    name: String,
}

impl PublisherModel {
    pub fn into_info(self) -> ModelInfo {
        let id = self.name.rsplit('/').next().unwrap_or(&self.name);
        vertex_model_info(id)
    }
}

/// What is known of a Vertex model from its name alone.
pub(crate) fn vertex_model_info(id: &str) -> ModelInfo {
    let mut capabilities = Vec::new();
    if id.contains("embedding") {
        capabilities.push("embedding".to_owned());
    } else {
        capabilities.push("completion".to_owned());
        capabilities.extend(gemini_capabilities(id).iter().map(|c| (*c).to_owned()));
        if id.starts_with("gemini-2.5") || is_gemini_3(id) {
            capabilities.push("thinking".to_owned());
        }
    }
    ModelInfo {
        name: id.to_owned(),
        family: family(id),
        parameter_size: parameter_size(id),
        capabilities,
        embedding_length: if id.contains("embedding") { embedding_length(id) } else { None },
        ..Default::default()
    }
}

/// What every Gemini chat model does and a listing does not say (Google documents function
/// calling, JSON Schema output and image input for the whole `gemini-` family; Gemma models on the
/// API have neither tools nor JSON mode, so they get none of these).
fn gemini_capabilities(id: &str) -> &'static [&'static str] {
    if id.starts_with("gemini-") { &["tools", "json_object", "json_schema", "vision"] } else { &[] }
}

/// The name's leading words, up to the first one that starts with a digit:
/// `gemini-2.5-flash` → `gemini`, `text-embedding-004` → `text-embedding`.
fn family(name: &str) -> String {
    let id = name.rsplit('/').next().unwrap_or(name);
    let words: Vec<&str> = id.split('-').take_while(|w| !w.starts_with(|c: char| c.is_ascii_digit())).collect();
    words.join("-")
}

/// A parameter count spelled in the name, as open models do: `gemma-3-27b-it` → `27B`.
fn parameter_size(name: &str) -> String {
    name.split(['-', '/'])
        .find(|w| {
            w.len() > 1 && w.ends_with(['b', 'B', 'm', 'M']) && w[..w.len() - 1].parse::<f64>().is_ok_and(|n| n > 0.0)
        })
        .map(str::to_ascii_uppercase)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::Message;
    use serde_json::json;

    fn request(messages: &[(Role, &str)], options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "gemini-2.5-flash".into(),
            messages: messages.iter().map(|(role, content)| Message::text(*role, *content)).collect(),
            options,
            ..Default::default()
        }
    }

    #[test]
    fn body_maps_roles_and_system_instruction_and_omits_unset_options() {
        let req = request(&[(Role::System, "You are terse."), (Role::User, "Hi")], GenerationOptions::default());
        let body = serde_json::to_value(GenerateBody::new(&req, &[]).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
            })
        );
    }

    #[test]
    fn a_count_wraps_the_chat_body_with_its_model() {
        let mut req = request(&[(Role::System, "Be brief."), (Role::User, "Hi")], GenerationOptions::default());
        req.tools = vec![copilot_provider::Tool {
            name: "lookup".into(),
            description: "Looks up.".into(),
            parameters: Some(r#"{"type":"object"}"#.into()),
            strict: false,
        }];
        let body = serde_json::to_value(CountTokensBody::new(&req).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"generateContentRequest": {
                "model": "models/gemini-2.5-flash",
                "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "tools": [{"functionDeclarations": [
                    {"name": "lookup", "description": "Looks up.", "parametersJsonSchema": {"type": "object"}}
                ]}],
            }})
        );
        req.model = "models/gemini-2.5-flash".into();
        let body = serde_json::to_value(CountTokensBody::new(&req).unwrap()).unwrap();
        assert_eq!(body["generateContentRequest"]["model"], "models/gemini-2.5-flash");
    }

    #[test]
    fn count_answers_are_read_as_proto3_json() {
        let read = |text: &str| serde_json::from_str::<CountTokensResponse>(text).unwrap().total();
        assert_eq!(
            read(r#"{"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]}"#),
            Ok(31)
        );
        assert_eq!(read(r#"{"totalTokens": 7, "totalBillableCharacters": 20}"#), Ok(7));
        assert_eq!(read("{}"), Ok(0));
        assert!(matches!(read(r#"{"totalTokens": -1}"#), Err(ProviderError::Protocol(_))));
    }

    #[test]
    fn body_merges_consecutive_turns_and_drops_empty_messages() {
        let req = request(
            &[
                (Role::User, "one"),
                (Role::User, "two"),
                (Role::Assistant, "Hello."),
                (Role::System, "late rule"),
                (Role::Assistant, ""),
                (Role::Assistant, "More."),
                (Role::User, "three"),
                (Role::System, ""),
            ],
            GenerationOptions::default(),
        );
        let body = serde_json::to_value(GenerateBody::new(&req, &[]).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
                    {"role": "model", "parts": [{"text": "Hello."}, {"text": "More."}]},
                    {"role": "user", "parts": [{"text": "three"}]},
                ],
                "systemInstruction": {"parts": [{"text": "late rule"}]},
            })
        );
    }

    #[test]
    fn body_maps_every_option_and_passes_safety_settings_through() {
        let req = request(
            &[(Role::User, "Hi")],
            GenerationOptions {
                temperature: Some(0.5),
                max_tokens: Some(256),
                top_p: Some(0.25),
                top_k: Some(40),
                stop: vec!["END".into()],
                seed: Some(7),
            },
        );
        let safety =
            [SafetySetting { category: "HARM_CATEGORY_HARASSMENT".into(), threshold: "BLOCK_ONLY_HIGH".into() }];
        let body = serde_json::to_value(GenerateBody::new(&req, &safety).unwrap()).unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.5, "topP": 0.25, "topK": 40, "maxOutputTokens": 256, "stopSequences": ["END"], "seed": 7})
        );
        assert_eq!(
            body["safetySettings"],
            json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])
        );
        assert!(body.get("systemInstruction").is_none());

        let req = request(&[(Role::User, "Hi")], GenerationOptions { max_tokens: Some(5), ..Default::default() });
        let body = serde_json::to_value(GenerateBody::new(&req, &[]).unwrap()).unwrap();
        assert_eq!(body["generationConfig"], json!({"maxOutputTokens": 5}));
    }

    #[test]
    fn seeds_fold_into_int32() {
        assert_eq!(wire_seed(0), 0);
        assert_eq!(wire_seed(7), 7);
        assert_eq!(wire_seed(i32::MAX as u64), i32::MAX);
        assert_eq!(wire_seed(1 << 31), 0);
        assert_eq!(wire_seed((1 << 31) + 5), 5);
        assert_eq!(wire_seed(u64::MAX), i32::MAX);
    }

    fn apply_all(chunks: &[&str]) -> (Vec<String>, StreamState) {
        let (events, state) = events_of_state(StreamState::default(), chunks);
        let deltas = events
            .into_iter()
            .filter_map(|e| match e {
                ChatEvent::Delta(text) => Some(text),
                _ => None,
            })
            .collect();
        (deltas, state)
    }

    #[test]
    fn decodes_the_reference_stream() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Te"}]},"index":0}],"usageMetadata":{"promptTokenCount":18,"totalTokenCount":18},"modelVersion":"gemini-2.5-flash","responseId":"a1b2c3"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"al."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":18,"candidatesTokenCount":2,"totalTokenCount":20},"modelVersion":"gemini-2.5-flash","responseId":"a1b2c3"}"#,
        ]);
        assert_eq!(deltas, ["Te", "al."]);
        assert_eq!(
            state.completion(),
            Completion {
                finish_reason: FinishReason::Stop,
                model: "gemini-2.5-flash".into(),
                usage: Usage { input_tokens: 18, output_tokens: 2, ..Default::default() },
                timings: Default::default(),
                response_id: Some("a1b2c3".into()),
            }
        );
    }

    #[test]
    fn joins_text_parts_and_skips_thoughts() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"a\n\"b\""},{"text":" é"},{"inlineData":{}}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"only thinking","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#,
        ]);
        assert_eq!(deltas, ["a\n\"b\" é"]);
        assert_eq!(state.finish, Some(FinishReason::Stop));
    }

    #[test]
    fn usage_keeps_the_last_totals_and_counts_thoughts_as_output() {
        let (_, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1,"thoughtsTokenCount":30}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"b"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"thoughtsTokenCount":40,"totalTokenCount":53}}"#,
            // A later chunk without usageMetadata does not reset it.
            r#"{"candidates":[{"content":{"parts":[{"text":"c"}]},"finishReason":"MAX_TOKENS"}]}"#,
        ]);
        assert_eq!(
            state.completion().usage,
            Usage { input_tokens: 9, output_tokens: 44, reasoning_tokens: Some(40), cached_input_tokens: None }
        );
        assert_eq!(state.completion().finish_reason, FinishReason::Length);
        assert_eq!(state.completion().model, "");
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason("STOP"), FinishReason::Stop);
        assert_eq!(finish_reason("MAX_TOKENS"), FinishReason::Length);
        for filtered in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY"]
        {
            assert_eq!(finish_reason(filtered), FinishReason::ContentFilter, "{filtered}");
        }
        for other in ["OTHER", "MALFORMED_FUNCTION_CALL", "FINISH_REASON_UNSPECIFIED", "SOMETHING_NEW"] {
            assert_eq!(finish_reason(other), FinishReason::Stop, "{other}");
        }
    }

    #[test]
    fn a_safety_stop_without_content_is_a_content_filter() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Sure"}]}}]}"#,
            r#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_HARASSMENT","probability":"HIGH","blocked":true}]}]}"#,
        ]);
        assert_eq!(deltas, ["Sure"]);
        assert_eq!(state.finish, Some(FinishReason::ContentFilter));
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_with_prompt_usage() {
        let (deltas, state) = apply_all(&[
            r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT","safetyRatings":[]},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.0-flash"}"#,
        ]);
        assert!(deltas.is_empty());
        assert_eq!(state.finish, Some(FinishReason::ContentFilter));
        assert_eq!(state.block_reason.as_deref(), Some("PROHIBITED_CONTENT"));
        assert_eq!(state.completion().usage, Usage { input_tokens: 7, output_tokens: 0, ..Default::default() });
        assert_eq!(state.completion().model, "gemini-2.0-flash");
    }

    #[test]
    fn only_the_first_candidate_counts() {
        let (deltas, _) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"first"}]}},{"content":{"parts":[{"text":"second"}]}}]}"#,
            r#"{"candidates":[]}"#,
            r#"{"candidates":null,"usageMetadata":null}"#,
        ]);
        assert_eq!(deltas, ["first"]);
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let mut state = StreamState::default();
        let err = state.apply(
            r#"{"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}"#,
            None,
            &mut VecDeque::new(),
        );
        assert_eq!(err, Err(ProviderError::MidStream("INTERNAL: Internal error encountered.".into())));
    }

    #[test]
    fn malformed_chunks_are_protocol_errors_with_a_short_excerpt() {
        let mut state = StreamState::default();
        let Err(ProviderError::Protocol(message)) = state.apply("<html>bad gateway</html>", None, &mut VecDeque::new())
        else {
            panic!()
        };
        assert!(message.contains("<html>bad gateway</html>"), "{message}");
        let long = format!("{{\"candidates\": {}", "x".repeat(5000));
        let Err(ProviderError::Protocol(message)) = state.apply(&long, None, &mut VecDeque::new()) else { panic!() };
        assert!(message.len() < 500, "excerpt not shortened: {} bytes", message.len());
        assert!(matches!(
            state.apply(r#"{"candidates":[{"finishReason":7}]}"#, None, &mut VecDeque::new()),
            Err(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn error_bodies_parse_with_details() {
        let body = br#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED",
          "details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m","quotaId":"q"}]},
                     {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"15s"}]}}"#;
        let status = parse_error_body(body).unwrap();
        assert_eq!(status.describe(), "RESOURCE_EXHAUSTED: You exceeded your current quota.");
        assert_eq!(status.retry_delay(), Some(Duration::from_secs(15)));
        assert_eq!(status.reason(), None);

        let body = br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
          "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#;
        let status = parse_error_body(body).unwrap();
        assert_eq!(status.reason(), Some("API_KEY_INVALID"));
        assert_eq!(status.retry_delay(), None);

        assert_eq!(parse_error_body(b"Bad Gateway"), None);
        assert_eq!(parse_error_body(br#"{"error":"flat string"}"#), None);
        assert_eq!(ErrorStatus { code: Some(502), ..Default::default() }.describe(), "error 502");
    }

    #[test]
    fn fallback_messages_use_html_titles() {
        let page = b"<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title><p>...";
        assert_eq!(fallback_message(page, None), "Error 404 (Not Found)!!1");
        assert_eq!(fallback_message(b"  upstream connect error \n", None), "upstream connect error");
        assert_eq!(fallback_message("é".repeat(600).as_bytes(), None).chars().count(), 501);
    }

    #[test]
    fn durations_parse_like_proto3_json() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.000001s"), Some(Duration::from_micros(1)));
        assert_eq!(parse_duration("53.123456789s"), Some(Duration::new(53, 123_456_789)));
        assert_eq!(parse_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5e1s"), Some(Duration::from_secs(15)));
        for bad in ["", "s", "30", "-1s", "1.s5", "abc s", "NaNs", "-infs", "-1e30s", "1e30"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn absurd_retry_delays_are_capped() {
        let cap = copilot_provider::MAX_RETRY_AFTER;
        for huge in ["3601s", "1e30s", "infs", "18446744073709551615.999999999s", "99999999999999999999999999s"] {
            assert_eq!(parse_duration(huge), Some(cap), "{huge:?}");
        }
        let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                     {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e30s"}]}}"#;
        assert_eq!(parse_error_body(body.as_bytes()).unwrap().retry_delay(), Some(cap));
    }

    #[test]
    fn bare_errors_are_found_in_the_tail_of_the_body() {
        let tail = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\r\n\r\n{\n  \"error\": {\n    \"code\": 500,\n    \"message\": \"Internal error encountered.\",\n    \"status\": \"INTERNAL\",\n    \"details\": [\n      {\"@type\": \"x\"}\n    ]\n  }\n}\n";
        let status = bare_error(tail).unwrap();
        assert_eq!(status.describe(), "INTERNAL: Internal error encountered.");
        assert_eq!(
            bare_error(br#"{"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}"#).unwrap().code,
            Some(503)
        );
        assert_eq!(bare_error(b"data: {\"candidates\": []}\r\n\r\n"), None);
        assert_eq!(bare_error(b"{\n  \"error\": {\n    \"code\": 500,"), None, "a cut-off error is not an error");
    }

    #[test]
    fn models_map_to_model_infos() {
        let body = json!({"models": [
            {"name": "models/gemini-2.5-flash", "version": "001", "displayName": "Gemini 2.5 Flash",
             "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
             "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"], "thinking": true},
            {"name": "models/text-embedding-004", "inputTokenLimit": 2048, "supportedGenerationMethods": ["embedContent"]},
            {"name": "models/gemma-3-27b-it", "supportedGenerationMethods": ["generateContent"]},
        ], "nextPageToken": "abc"});
        let list: ListModelsResponse = serde_json::from_value(body).unwrap();
        assert_eq!(list.next_page_token.as_deref(), Some("abc"));
        let models = list.models.unwrap();
        assert_eq!(models.iter().map(Model::supports_generate_content).collect::<Vec<_>>(), [true, false, true]);
        let infos: Vec<ModelInfo> = models.into_iter().map(Model::into_info).collect();
        assert_eq!(
            infos[0],
            ModelInfo {
                name: "gemini-2.5-flash".into(),
                family: "gemini".into(),
                context_length: Some(1_048_576),
                capabilities: ["completion", "tools", "json_object", "json_schema", "vision", "thinking"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            }
        );
        assert_eq!(infos[1].family, "text-embedding");
        assert_eq!(infos[1].capabilities, ["embedding"]);
        assert_eq!(infos[2].parameter_size, "27B");
        assert_eq!(infos[2].capabilities, ["completion"], "Gemma has no tools or JSON mode on the API");
        assert_eq!(infos[2].family, "gemma");
        assert_eq!(infos[2].context_length, None);

        let empty: ListModelsResponse = serde_json::from_value(json!({})).unwrap();
        assert!(empty.models.is_none() && empty.next_page_token.is_none());
    }

    // ---- tools, structured output, reasoning, images ----

    use copilot_provider::{Part as P, Thinking, Tool, ToolCall};

    fn call(id: &str, name: &str, arguments: &str, signature: &[u8]) -> P {
        P::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
            signature: signature.to_vec(),
        })
    }

    fn assistant(parts: Vec<P>) -> Message {
        Message { role: Role::Assistant, parts, tool_call_id: None }
    }

    fn body_of(request: &ChatRequest) -> serde_json::Value {
        serde_json::to_value(GenerateBody::new(request, &[]).unwrap()).unwrap()
    }

    /// The body as the adapter writes it, as text (what `serde_json::Value` would reformat).
    fn body_text(request: &ChatRequest) -> String {
        serde_json::to_string(&GenerateBody::new(request, &[]).unwrap()).unwrap()
    }

    #[test]
    fn tools_and_tool_choice_map_to_declarations_and_function_calling_config() {
        let schema = r#"{"type":"object","properties":{"id":{"type":"integer","maximum":9007199254740993},"x":{"type":"number","default":1.0}}}"#;
        let mut req = request(&[(Role::User, "Hi")], GenerationOptions::default());
        req.tools = vec![
            Tool {
                name: "lookup".into(),
                description: "Looks up.".into(),
                parameters: Some(schema.into()),
                strict: true,
            },
            Tool { name: "now".into(), description: String::new(), parameters: None, strict: false },
        ];
        let body = body_of(&req);
        assert_eq!(body["tools"][0]["functionDeclarations"][1], json!({"name": "now"}));
        assert_eq!(body["tools"][0]["functionDeclarations"][0]["description"], "Looks up.");
        assert!(body.get("toolConfig").is_none());
        assert!(
            body_text(&req).contains(&format!(r#""parametersJsonSchema":{schema}"#)),
            "the schema is sent as written"
        );

        for (choice, expected) in [
            (ToolChoice::Auto, json!({"mode": "AUTO"})),
            (ToolChoice::None, json!({"mode": "NONE"})),
            (ToolChoice::Required, json!({"mode": "ANY"})),
            (ToolChoice::Named("now".into()), json!({"mode": "ANY", "allowedFunctionNames": ["now"]})),
        ] {
            req.tool_choice = Some(choice);
            assert_eq!(body_of(&req)["toolConfig"], json!({"functionCallingConfig": expected}));
        }
    }

    #[test]
    fn response_formats_map_to_mime_type_and_json_schema() {
        let mut req = request(&[(Role::User, "Hi")], GenerationOptions::default());
        req.response_format = ResponseFormat::JsonObject;
        assert_eq!(body_of(&req)["generationConfig"], json!({"responseMimeType": "application/json"}));
        let schema = r#"{"type": "object", "properties": {"n": {"type": "number", "minimum": 1.0}}}"#;
        req.response_format = ResponseFormat::JsonSchema { name: "answer".into(), schema: schema.into(), strict: true };
        assert_eq!(body_of(&req)["generationConfig"]["responseMimeType"], "application/json");
        assert!(body_text(&req).contains(&format!(r#""responseJsonSchema":{schema}"#)), "{}", body_text(&req));
    }

    #[test]
    fn tool_history_goes_back_as_calls_and_one_turn_of_responses_in_call_order() {
        let made_up = "call_0123456789abcdefABCDEFgh";
        let mut req = request(&[(Role::User, "Weather?")], GenerationOptions::default());
        req.messages.push(assistant(vec![
            P::Text("Checking.".into()),
            call(made_up, "weather", r#"{"id":9007199254740993,"x":1.0}"#, b"sig-1"),
            call("call_b", "time", "", b""),
        ]));
        // Results in another order than the calls: they go back in the calls' order.
        req.messages.push(Message::tool_result("call_b", "12:00"));
        req.messages.push(Message::tool_result(made_up, r#"{"temp": 21.50, "ok": true}"#));
        req.messages.push(Message::text(Role::User, "Thanks"));
        let body = body_of(&req);
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(body["contents"][1]["parts"][0], json!({"text": "Checking."}));
        assert_eq!(
            body["contents"][1]["parts"][1],
            json!({"functionCall": {"name": "weather", "args": {"id": 9007199254740993u64, "x": 1.0}}, "thoughtSignature": "c2lnLTE="})
        );
        assert_eq!(
            body["contents"][1]["parts"][2],
            json!({"functionCall": {"name": "time", "args": {}, "id": "call_b"}})
        );
        assert_eq!(
            body["contents"][2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 21.50, "ok": true}}},
                {"functionResponse": {"name": "time", "response": {"result": "12:00"}, "id": "call_b"}},
                {"text": "Thanks"},
            ]})
        );
        let text = body_text(&req);
        assert!(text.contains(r#""args":{"id":9007199254740993,"x":1.0}"#), "{text}");
        assert!(text.contains(r#""response":{"temp": 21.50, "ok": true}"#), "{text}");
    }

    #[test]
    fn non_object_results_are_wrapped() {
        let mut req = request(&[(Role::User, "Go")], GenerationOptions::default());
        req.messages.push(assistant(vec![
            call("a", "f", "{}", b""),
            call("b", "f", "{}", b""),
            call("c", "f", "{}", b""),
        ]));
        req.messages.push(Message::tool_result("a", "[1, 2]"));
        req.messages.push(Message::tool_result("b", "{not json"));
        req.messages.push(Message {
            parts: vec![P::Text("{\"a\":".into()), P::Text("1}".into())],
            ..Message::tool_result("c", "")
        });
        let body = body_of(&req);
        let responses: Vec<_> = body["contents"][2]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["functionResponse"]["response"].clone())
            .collect();
        assert_eq!(responses, [json!({"result": "[1, 2]"}), json!({"result": "{not json"}), json!({"a": 1})]);
    }

    #[test]
    fn thinking_goes_back_as_thought_parts_with_signatures_where_they_came() {
        let mut req = request(&[(Role::User, "Q")], GenerationOptions::default());
        req.messages.push(assistant(vec![
            P::Thinking(Thinking { text: "Let me think.".into(), signature: b"t-sig".to_vec(), redacted: false }),
            P::Text("Answer.".into()),
            // A signature that came alone, after the answer's text: back on that text.
            P::Thinking(Thinking { text: String::new(), signature: b"last".to_vec(), redacted: false }),
            P::Thinking(Thinking { text: String::new(), signature: b"opaque".to_vec(), redacted: true }),
        ]));
        req.messages.push(Message::text(Role::User, "More"));
        req.messages.push(assistant(vec![P::Thinking(Thinking {
            text: String::new(),
            signature: b"alone".to_vec(),
            redacted: false,
        })]));
        let body = body_of(&req);
        assert_eq!(
            body["contents"][1]["parts"],
            json!([
                {"text": "Let me think.", "thought": true, "thoughtSignature": "dC1zaWc="},
                {"text": "Answer.", "thoughtSignature": "bGFzdA=="},
            ])
        );
        assert_eq!(body["contents"][3]["parts"], json!([{"text": "", "thoughtSignature": "YWxvbmU="}]));
    }

    #[test]
    fn reasoning_maps_to_thinking_config() {
        let config = |model: &str, reasoning| {
            let mut req = request(&[(Role::User, "Q")], GenerationOptions::default());
            req.model = model.into();
            req.reasoning = Some(reasoning);
            body_of(&req)["generationConfig"].get("thinkingConfig").cloned()
        };
        let on = |amount, include_thoughts| Reasoning::On { amount, include_thoughts };
        assert_eq!(config("gemini-2.5-flash", Reasoning::Off), Some(json!({"thinkingBudget": 0})));
        assert_eq!(
            config("gemini-2.5-flash", on(ReasoningAmount::Default, true)),
            Some(json!({"includeThoughts": true, "thinkingBudget": -1}))
        );
        assert_eq!(config("gemini-3-pro-preview", on(ReasoningAmount::Default, false)), None);
        assert_eq!(
            config("gemini-3-pro-preview", on(ReasoningAmount::Default, true)),
            Some(json!({"includeThoughts": true}))
        );
        assert_eq!(
            config("models/gemini-3-flash", on(ReasoningAmount::Effort(Effort::Low), false)),
            Some(json!({"thinkingLevel": "LOW"}))
        );
        assert_eq!(
            config("gemini-3-flash", on(ReasoningAmount::Effort(Effort::High), true)),
            Some(json!({"includeThoughts": true, "thinkingLevel": "HIGH"}))
        );
        assert_eq!(
            config("gemini-2.5-pro", on(ReasoningAmount::Effort(Effort::Medium), false)),
            Some(json!({"thinkingBudget": 8192}))
        );
        assert_eq!(
            config("gemini-3-flash", on(ReasoningAmount::BudgetTokens(512), false)),
            Some(json!({"thinkingBudget": 512}))
        );
    }

    #[test]
    fn images_go_as_inline_data() {
        let mut req = request(&[], GenerationOptions::default());
        req.messages.push(Message {
            role: Role::User,
            parts: vec![
                P::Text("What is this?".into()),
                P::Image(Image {
                    source: ImageSource::Data(vec![0x89, b'P', b'N', b'G', 0, 255]),
                    mime_type: "image/png".into(),
                }),
            ],
            tool_call_id: None,
        });
        assert_eq!(
            body_of(&req)["contents"][0]["parts"],
            json!([{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORwD/"}}])
        );
        req.messages[0].parts[1] =
            P::Image(Image { source: ImageSource::Data(vec![b'G']), mime_type: "image/gif".into() });
        assert!(matches!(
            GenerateBody::new(&req, &[]),
            Err(ProviderError::Unsupported { feature: Feature::Images, message }) if message.contains("image/gif")
        ));
        req.messages[0].parts[1] =
            P::Image(Image { source: ImageSource::Url("https://x/y.png".into()), mime_type: String::new() });
        assert!(matches!(GenerateBody::new(&req, &[]), Err(ProviderError::InvalidRequest(_))));
    }

    fn events_of(chunks: &[&str]) -> (Vec<ChatEvent>, StreamState) {
        events_of_state(StreamState::default(), chunks)
    }

    /// The events of each chunk, taken before the next is read (as the decoder does).
    fn events_of_state(mut state: StreamState, chunks: &[&str]) -> (Vec<ChatEvent>, StreamState) {
        let mut events = Vec::new();
        for chunk in chunks {
            let mut queue = VecDeque::new();
            state.apply(chunk, None, &mut queue).unwrap();
            events.extend(queue);
        }
        (events, state)
    }

    fn tool(index: u32, id: Option<&str>, name: &str, arguments: &str, signature: &[u8]) -> ChatEvent {
        ChatEvent::tool_call(ToolCallDelta {
            index,
            id: id.map(String::from),
            name: Some(name.into()),
            arguments: arguments.into(),
            signature: signature.to_vec(),
        })
    }

    #[test]
    fn calls_get_a_running_index_whether_in_one_chunk_or_several() {
        let (events, state) = events_of(&[
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Let me look."},{"functionCall":{"name":"a","args":{"id":9007199254740993,"x":1.0}},"thoughtSignature":"c2ln"},{"functionCall":{"name":"b","args":{ "q" : "é\u00e9" }}}]}}]}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"c","id":"fc-3"}}]},"finishReason":"STOP"}]}"#,
        ]);
        assert_eq!(
            events,
            [
                ChatEvent::Delta("Let me look.".into()),
                tool(0, None, "a", r#"{"id":9007199254740993,"x":1.0}"#, b"sig"),
                tool(1, None, "b", r#"{ "q" : "é\u00e9" }"#, b""),
                tool(2, Some("fc-3"), "c", "{}", b""),
            ]
        );
        assert_eq!(state.completion().finish_reason, FinishReason::Stop, "Gemini says STOP; the server settles it");
    }

    #[test]
    fn thoughts_stream_as_thinking_and_signatures_close_them() {
        let (events, state) = events_of(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Hmm, ","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"ok.","thought":true,"thoughtSignature":"dDE="},{"text":"Answer"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"!","thoughtSignature":"bGFzdA=="}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"thoughtsTokenCount":7,"cachedContentTokenCount":3}}"#,
        ]);
        assert_eq!(
            events,
            [
                ChatEvent::Thinking(ThinkingDelta::Text("Hmm, ".into())),
                ChatEvent::Thinking(ThinkingDelta::Text("ok.".into())),
                ChatEvent::Thinking(ThinkingDelta::Signature(b"t1".to_vec())),
                ChatEvent::Delta("Answer".into()),
                ChatEvent::Delta("!".into()),
                ChatEvent::Thinking(ThinkingDelta::Signature(b"last".to_vec())),
            ]
        );
        assert_eq!(
            state.completion().usage,
            Usage { input_tokens: 5, output_tokens: 9, reasoning_tokens: Some(7), cached_input_tokens: Some(3) }
        );
    }

    #[test]
    fn tool_call_failures_are_errors_and_bad_calls_protocol_errors() {
        let mut state = StreamState::default();
        let mut events = VecDeque::new();
        for (reason, says) in
            [("MALFORMED_FUNCTION_CALL", "does not parse"), ("UNEXPECTED_TOOL_CALL", "none was available")]
        {
            let chunk = format!(
                r#"{{"candidates":[{{"finishReason":"{reason}","finishMessage":"Malformed function call: print(x"}}]}}"#
            );
            let Err(ProviderError::MidStream(message)) = state.apply(&chunk, None, &mut events) else {
                panic!("{reason}")
            };
            assert!(message.contains(reason) && message.contains(says) && message.contains("print(x"), "{message}");
            assert_eq!(state.finish, None);
        }
        for (bad, says) in [
            (r#"{"functionCall":{"args":{}}}"#, "without a name"),
            (r#"{"functionCall":{"name":"f","args":[1]}}"#, "not an object"),
            (r#"{"functionCall":{"name":"f"},"thoughtSignature":"!!"}"#, "not base64"),
        ] {
            let chunk = format!(r#"{{"candidates":[{{"content":{{"parts":[{bad}]}}}}]}}"#);
            let Err(ProviderError::Protocol(message)) = state.apply(&chunk, None, &mut events) else { panic!("{bad}") };
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn signatures_decode_in_every_base64_form() {
        for encoded in ["+/8=", "+/8", "-_8=", "-_8"] {
            assert_eq!(decode_bytes(encoded), Some(vec![0xfb, 0xff]), "{encoded}");
        }
        assert_eq!(decode_bytes("!!"), None);
    }

    #[test]
    fn the_number_of_calls_is_bounded() {
        let mut state = StreamState::default();
        let mut events = VecDeque::new();
        let chunk = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]}}]}"#;
        for _ in 0..MAX_TOOL_CALLS {
            state.apply(chunk, None, &mut events).unwrap();
        }
        assert!(
            matches!(state.apply(chunk, None, &mut events), Err(ProviderError::Protocol(m)) if m.contains("more than"))
        );
    }

    #[test]
    fn model_cannot_errors_name_the_feature() {
        let req = request(&[(Role::User, "Q")], GenerationOptions::default());
        let cannot = |message: &str| model_cannot(ProviderError::InvalidRequest(message.into()), &req);
        assert!(matches!(
            cannot("INVALID_ARGUMENT: Function calling is not enabled for models/gemma-3-27b-it"),
            ProviderError::Unsupported { feature: Feature::Tools, .. }
        ));
        assert!(matches!(
            cannot("INVALID_ARGUMENT: JSON mode is not enabled for models/gemma-3-27b-it"),
            ProviderError::Unsupported { feature: Feature::JsonObject, .. }
        ));
        assert!(matches!(
            cannot("INVALID_ARGUMENT: Budget 0 is invalid. This model only works in thinking mode."),
            ProviderError::Unsupported { feature: Feature::ThinkingOff, .. }
        ));
        assert!(matches!(
            cannot("INVALID_ARGUMENT: Thinking is not supported for this model."),
            ProviderError::Unsupported { feature: Feature::Thinking, .. }
        ));
        assert_eq!(cannot("INVALID_ARGUMENT: other"), ProviderError::InvalidRequest("INVALID_ARGUMENT: other".into()));
        assert_eq!(
            model_cannot(ProviderError::Unauthorized("x".into()), &req),
            ProviderError::Unauthorized("x".into())
        );
    }

    #[test]
    fn embed_bodies_name_the_model_and_carry_task_and_dimensions() {
        let inputs = vec!["a \"quoted\" text".to_owned(), "b".to_owned()];
        let body = BatchEmbedBody::new("models/gemini-embedding-001", &inputs, EmbeddingTask::Query, Some(768));
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a \"quoted\" text"}]},
                 "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 768},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]},
                 "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 768},
            ]})
        );
        let plain = BatchEmbedBody::new("models/m", &inputs[1..], EmbeddingTask::Unspecified, None);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"requests": [{"model": "models/m", "content": {"parts": [{"text": "b"}]}}]})
        );
        assert_eq!(task_type(EmbeddingTask::Document), Some("RETRIEVAL_DOCUMENT"));
        assert_eq!(task_type(EmbeddingTask::SemanticSimilarity), Some("SEMANTIC_SIMILARITY"));
        assert_eq!(task_type(EmbeddingTask::Classification), Some("CLASSIFICATION"));
        assert_eq!(task_type(EmbeddingTask::Clustering), Some("CLUSTERING"));
        assert_eq!(embed_model_resource("gemini-embedding-001"), "models/gemini-embedding-001");
        assert_eq!(embed_model_resource("models/gemini-embedding-001"), "models/gemini-embedding-001");
        assert_eq!(embed_model_resource("tunedModels/mine"), "tunedModels/mine");
    }

    #[test]
    fn embed_answers_keep_order_and_never_panic() {
        let parsed: BatchEmbedResponse =
            serde_json::from_str(r#"{"embeddings":[{"values":[1,2.5]},{},{"values":[-3e-2]}]}"#).unwrap();
        assert_eq!(parsed.into_vectors(), [vec![1.0, 2.5], vec![], vec![-0.03]]);
        let empty: BatchEmbedResponse = serde_json::from_str("{}").unwrap();
        assert!(empty.into_vectors().is_empty());
        // Out of f32's range is infinite (which the server refuses) or, where serde_json parses
        // floats exactly (its float_roundtrip feature, which a test dependency turns on in
        // workspace builds), a parse error: never a panic.
        match serde_json::from_str::<BatchEmbedResponse>(r#"{"embeddings":[{"values":[1e300]}]}"#) {
            Ok(huge) => assert!(huge.into_vectors()[0][0].is_infinite()),
            Err(error) => assert!(error.to_string().contains("out of range"), "{error}"),
        }
    }

    #[test]
    fn only_surely_over_long_inputs_are_refused_without_truncate() {
        let request = |model: &str, input: String| EmbedRequest {
            model: model.into(),
            inputs: vec!["short".into(), input],
            ..Default::default()
        };
        let limit = 2048 * SURE_BYTES_PER_TOKEN;
        assert!(check_input_lengths(&request("gemini-embedding-001", "x".repeat(limit))).is_ok());
        let err = check_input_lengths(&request("models/gemini-embedding-001", "x".repeat(limit + 1))).unwrap_err();
        assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("input 1")), "{err:?}");
        // A model whose limit is unknown is not checked.
        assert!(check_input_lengths(&request("gemini-embedding-9", "x".repeat(10 * limit))).is_ok());
    }

    #[test]
    fn embedding_models_are_marked_with_their_length() {
        let model = |name: &str, methods: &[&str]| Model {
            name: format!("models/{name}"),
            input_token_limit: Some(2048),
            supported_generation_methods: Some(methods.iter().map(|m| (*m).to_owned()).collect()),
            thinking: None,
        };
        let info = model("gemini-embedding-001", &["embedContent", "countTokens"]).into_info();
        assert_eq!((info.capabilities.as_slice(), info.embedding_length), (&["embedding".to_owned()][..], Some(3072)));
        assert_eq!(model("text-embedding-004", &["embedContent"]).into_info().embedding_length, Some(768));
        assert_eq!(model("new-embedder", &["embedContent"]).into_info().embedding_length, None);
        // On Vertex, from the name alone.
        assert_eq!(vertex_model_info("text-embedding-005").embedding_length, Some(768));
        assert_eq!(vertex_model_info("gemini-embedding-001").capabilities, ["embedding"]);
        assert_eq!(vertex_model_info("gemini-2.5-flash").embedding_length, None);
        let chat = model("gemini-2.5-flash", &["generateContent"]);
        assert!(!chat.supports_embed_content());
        assert_eq!(chat.methods(), "generateContent");
        assert_eq!(chat.into_info().embedding_length, None);
    }

    #[test]
    fn vertex_predict_bodies_and_answers() {
        let inputs = vec!["a".to_owned(), "b".to_owned()];
        let body = PredictBody::new(&inputs, EmbeddingTask::Query, Some(256), false);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"instances": [{"content": "a", "task_type": "RETRIEVAL_QUERY"}, {"content": "b", "task_type": "RETRIEVAL_QUERY"}],
                   "parameters": {"outputDimensionality": 256, "autoTruncate": false}})
        );
        let plain = PredictBody::new(&inputs[..1], EmbeddingTask::Unspecified, None, true);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"instances": [{"content": "a"}], "parameters": {"autoTruncate": true}})
        );
        assert_eq!(vertex_embed_batch("gemini-embedding-001"), 1);
        assert_eq!(vertex_embed_batch("models/gemini-embedding-001"), 1);
        assert_eq!(vertex_embed_batch("text-embedding-005"), 250);

        let answer: PredictResponse = serde_json::from_str(
            r#"{"predictions":[{"embeddings":{"values":[1,2],"statistics":{"token_count":2.0,"truncated":false}}},
                               {"embeddings":{"values":[3],"statistics":{"token_count":5}}}]}"#,
        )
        .unwrap();
        assert_eq!(answer.into_parts(), (vec![vec![1.0, 2.0], vec![3.0]], Some(7)));
        // A count missing (or nonsense) anywhere: no usage rather than a wrong one.
        let answer: PredictResponse = serde_json::from_str(
            r#"{"predictions":[{"embeddings":{"values":[1],"statistics":{"token_count":-1}}},{}]}"#,
        )
        .unwrap();
        assert_eq!(answer.into_parts(), (vec![vec![1.0], vec![]], None));

        let chat = ProviderError::InvalidRequest(
            "INVALID_ARGUMENT: Gemini cannot be accessed through Vertex Predict/RawPredict API.".into(),
        );
        assert!(matches!(vertex_cannot_embed(chat), ProviderError::Unsupported { feature: Feature::Embeddings, .. }));
        let other = ProviderError::InvalidRequest("input too long".into());
        assert_eq!(vertex_cannot_embed(other.clone()), other);
    }

    #[test]
    fn vertex_embed_method_is_chosen_by_model() {
        use VertexEmbedMethod::{EmbedContent, Predict};
        for model in [
            "text-embedding-005",
            "text-multilingual-embedding-002",
            "gemini-embedding-001",
            "publishers/google/models/gemini-embedding-001",
            "textembedding-gecko@003",
            "gemini-2.5-flash",
        ] {
            assert_eq!(vertex_embed_method(model), Predict, "{model}");
        }
        for model in ["gemini-embedding-2", "gemini-embedding-2-preview", "models/gemini-embedding-3"] {
            assert_eq!(vertex_embed_method(model), EmbedContent, "{model}");
        }
        // Vertex's refusal of `:predict` for such a model, as the error mapping words it.
        let refusal = ProviderError::InvalidRequest("FAILED_PRECONDITION: Precondition check failed.".into());
        assert!(predict_wants_embed_content(&refusal));
        for other in [
            ProviderError::InvalidRequest("INVALID_ARGUMENT: Precondition check failed for quota".into()),
            ProviderError::Upstream { status: 412, message: "FAILED_PRECONDITION: Precondition check failed.".into() },
        ] {
            assert!(!predict_wants_embed_content(&other), "{other:?}");
        }
    }

    #[test]
    fn vertex_embed_content_bodies_and_answers() {
        let body = VertexEmbedContentBody::new("a b", EmbeddingTask::Document, Some(256), false);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"content": {"parts": [{"text": "a b"}]},
                   "embedContentConfig": {"taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 256, "autoTruncate": false}})
        );
        let plain = VertexEmbedContentBody::new("a", EmbeddingTask::Unspecified, None, true);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"content": {"parts": [{"text": "a"}]}, "embedContentConfig": {"autoTruncate": true}})
        );

        let answer: VertexEmbedContentResponse = serde_json::from_str(
            r#"{"embedding":{"values":[0.5,-1]},"usageMetadata":{"promptTokenCount":3},"truncated":true}"#,
        )
        .unwrap();
        assert_eq!(answer.into_parts(), (Some(vec![0.5, -1.0]), Some(3)));
        // proto3 JSON leaves a zero count out; no usage at all is no count.
        let answer: VertexEmbedContentResponse =
            serde_json::from_str(r#"{"embedding":{"values":[1]},"usageMetadata":{}}"#).unwrap();
        assert_eq!(answer.into_parts(), (Some(vec![1.0]), Some(0)));
        let answer: VertexEmbedContentResponse = serde_json::from_str(r#"{"embedding":{"values":[1]}}"#).unwrap();
        assert_eq!(answer.into_parts(), (Some(vec![1.0]), None));
        let answer: VertexEmbedContentResponse =
            serde_json::from_str(r#"{"embedding":{"values":[1]},"usageMetadata":{"promptTokenCount":-2}}"#).unwrap();
        assert_eq!(answer.into_parts(), (Some(vec![1.0]), None));
        let answer: VertexEmbedContentResponse = serde_json::from_str(r#"{"embedding":{}}"#).unwrap();
        assert_eq!(answer.into_parts(), (None, None));
    }
}
