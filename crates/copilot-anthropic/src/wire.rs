//! Anthropic's JSON on the wire: the `POST /v1/messages` body, the named SSE events of a streamed
//! reply, error bodies and the model listing.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! Response types declare only what is used and default every field: Anthropic adds fields and
//! event types over time, and clients are expected to ignore what they do not know.

use std::borrow::Cow;

use copilot_http::quote;
use copilot_provider::{
    ChatRequest, Completion, Effort, Feature, FinishReason, Image, ImageSource as ImageSourceData, Message, ModelInfo,
    Part, ProviderError, Reasoning, ReasoningAmount, ResponseFormat, Role, Secret, Thinking, ThinkingDelta, Tool,
    ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The highest `temperature` the Messages API accepts (the gateway allows up to 2).
pub(crate) const MAX_TEMPERATURE: f32 = 1.0;

// ---------------------------------------------------------------------------------------------
// Requests

/// The smallest `thinking.budget_tokens` the API accepts.
pub(crate) const MIN_THINKING_BUDGET: u32 = 1_024;

/// The schema of a tool that takes no arguments (the API requires one).
const NO_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

/// The body of `POST /v1/messages`, borrowing from the provider-independent request.
#[derive(Debug, Serialize)]
pub(crate) struct MessagesBody<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<WireThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<OutputConfig<'a>>,
    pub stream: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    pub role: &'static str,
    pub content: Content<'a>,
}

/// A message's (or a tool result's) content: a string when it is only text, else blocks.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        /// The arguments exactly as the model wrote them: parsed as raw JSON, never as values.
        input: &'a RawValue,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<Content<'a>>,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: String },
    Url { url: &'a str },
}

#[derive(Debug, Serialize)]
pub(crate) struct WireTool<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub description: &'a str,
    /// The client's JSON Schema text, unchanged.
    pub input_schema: &'a RawValue,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireToolChoice<'a> {
    Auto,
    Any,
    None,
    Tool { name: &'a str },
}

/// How a model takes thinking: a token budget (`enabled`), or, on the newest models, which
/// refuse budgets, `adaptive` with an `output_config.effort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ThinkingStyle {
    #[default]
    Budget,
    Adaptive,
}

/// Whether an upstream refusal says the model takes adaptive thinking only ("\"thinking.type.enabled\"
/// is not supported for this model. Use \"thinking.type.adaptive\" and \"output_config.effort\" …").
pub(crate) fn wants_adaptive_thinking(message: &str) -> bool {
    message.contains("thinking.type.enabled") && message.contains("thinking.type.adaptive")
}

/// The feature a refusal says the model lacks ("… does not support thinking", "… is not
/// supported for this model"), so the server reports the model, not the request, as the cause;
/// `None` for any other refusal, and for the adaptive-thinking one, which the adapter answers
/// by asking again.
pub(crate) fn unsupported_feature(message: &str) -> Option<Feature> {
    let lower = message.to_ascii_lowercase();
    let cannot = lower.contains("does not support") || lower.contains("not supported for this model");
    if !cannot || wants_adaptive_thinking(message) {
        return None;
    }
    if lower.contains("thinking") {
        Some(Feature::Thinking)
    } else if ["output_config", "output_format", "structured output", "json schema"].iter().any(|k| lower.contains(k)) {
        Some(Feature::JsonSchema)
    } else if lower.contains("image") {
        Some(Feature::Images)
    } else if lower.contains("tool") {
        Some(Feature::Tools)
    } else {
        None
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct WireThinking {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u32>,
    /// `omitted` when the client does not want the thoughts: Anthropic then sends the signature
    /// alone, which (unlike thinking text the gateway would strip) is still valid on the next turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct OutputConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat<'a>>,
    /// With adaptive thinking: how hard the model thinks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effort: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutputFormat<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: &'a RawValue,
}

/// A turn being built: its blocks, and (for a user turn after tool calls) the tool results,
/// which go first, in the order of the calls they answer.
struct TurnBuilder<'a> {
    role: &'static str,
    results: Vec<(usize, Block<'a>)>,
    blocks: Vec<Block<'a>>,
    /// An assistant turn's call ids, in order.
    calls: Vec<&'a str>,
}

impl<'a> TurnBuilder<'a> {
    fn new(role: &'static str) -> Self {
        TurnBuilder { role, results: Vec::new(), blocks: Vec::new(), calls: Vec::new() }
    }

    /// The turn as the API takes it: text alone as one string (paragraphs joined by blank
    /// lines), anything else as blocks with the tool results first.
    fn finish(mut self) -> WireMessage<'a> {
        let only_text = self.results.is_empty() && self.blocks.iter().all(|b| matches!(b, Block::Text { .. }));
        if only_text {
            let mut text: Option<Cow<'a, str>> = None;
            for block in self.blocks {
                if let Block::Text { text: piece } = block {
                    append_paragraph(&mut text, piece);
                }
            }
            return WireMessage { role: self.role, content: Content::Text(text.unwrap_or_default()) };
        }
        // A stable sort: results the previous turn did not ask for (the server refuses those)
        // would keep their order at the end.
        self.results.sort_by_key(|(order, _)| *order);
        let mut blocks: Vec<Block<'a>> = self.results.into_iter().map(|(_, block)| block).collect();
        blocks.extend(self.blocks.into_iter().filter(|b| !matches!(b, Block::Text { text } if text.is_empty())));
        WireMessage { role: self.role, content: Content::Blocks(blocks) }
    }
}

impl<'a> MessagesBody<'a> {
    /// Translates a request, or explains why Anthropic would refuse it.
    ///
    /// - System messages, wherever they are, become the top-level `system` string, joined by blank
    ///   lines.
    /// - Consecutive messages of the same role are merged into one turn (text joined by blank
    ///   lines, other parts as blocks), so turns alternate as the API requires; empty text is
    ///   dropped from a merge.
    /// - `ROLE_TOOL` results become `tool_result` blocks of the user turn after the calls, before
    ///   anything else in it, in the order of the calls (the API's rule).
    /// - Tool-call ids outside `^[a-zA-Z0-9_-]+$` are rewritten ([`wire_id`]) the same way in the
    ///   `tool_use` and its `tool_result`.
    /// - The conversation must start with a user turn: one starting with an assistant turn is an
    ///   [`ProviderError::InvalidRequest`] (there is no neutral user turn to invent).
    /// - A final assistant turn is a prefill the model continues; its trailing whitespace is
    ///   trimmed because the API rejects a prefill ending in whitespace.
    /// - `seed` has no Anthropic equivalent and is ignored; a `temperature` above 1 is refused.
    pub fn new(request: &'a ChatRequest, default_max_tokens: u32, style: ThinkingStyle) -> Result<Self, ProviderError> {
        let options = &request.options;
        if let Some(t) = options.temperature
            && t > MAX_TEMPERATURE
        {
            return Err(ProviderError::InvalidRequest(format!(
                "Anthropic models accept a temperature between 0 and {MAX_TEMPERATURE}, got {t}"
            )));
        }

        let mut system: Option<Cow<'a, str>> = None;
        let mut turns: Vec<TurnBuilder<'a>> = Vec::with_capacity(request.messages.len());
        for (i, message) in request.messages.iter().enumerate() {
            if message.role == Role::System {
                for part in &message.parts {
                    if let Part::Text(text) = part {
                        append_paragraph(&mut system, Cow::Borrowed(text));
                    }
                }
                continue;
            }
            let role = if message.role == Role::Assistant { "assistant" } else { "user" };
            if turns.last().is_none_or(|turn| turn.role != role) {
                turns.push(TurnBuilder::new(role));
            }
            // The calls a tool result answers are those of the turn before this one.
            let order = match (message.role, turns.len()) {
                (Role::Tool, n) if n >= 2 => {
                    let id = message.tool_call_id.as_deref().unwrap_or_default();
                    turns[n - 2].calls.iter().position(|call| *call == id).unwrap_or(usize::MAX)
                }
                _ => usize::MAX,
            };
            let Some(turn) = turns.last_mut() else { continue };
            if message.role == Role::Tool {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let content = tool_result_content(message, i)?;
                turn.results.push((order, Block::ToolResult { tool_use_id: wire_id(id), content }));
                continue;
            }
            for part in &message.parts {
                let block = match part {
                    Part::Text(text) => Block::Text { text: Cow::Borrowed(text) },
                    Part::Image(image) => image_block(image),
                    Part::ToolCall(call) => {
                        turn.calls.push(&call.id);
                        Block::ToolUse { id: wire_id(&call.id), name: &call.name, input: arguments(call, i)? }
                    }
                    Part::Thinking(thinking) => thinking_block(thinking, i)?,
                };
                turn.blocks.push(block);
            }
        }
        let mut messages: Vec<WireMessage<'a>> = turns.into_iter().map(TurnBuilder::finish).collect();

        match messages.first() {
            None => {
                return Err(ProviderError::InvalidRequest(
                    "Anthropic needs at least one user message; the request has none besides system messages".into(),
                ));
            }
            Some(first) if first.role == Role::Assistant.as_str() => {
                return Err(ProviderError::InvalidRequest(
                    "Anthropic needs the conversation to start with a user message, but the first non-system \
                     message is from the assistant"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        if let Some(last) = messages.last_mut().filter(|m| m.role == Role::Assistant.as_str()) {
            match &mut last.content {
                Content::Text(text) => trim_end(text),
                Content::Blocks(blocks) => {
                    if let Some(Block::Text { text }) = blocks.last_mut() {
                        trim_end(text);
                    }
                }
            }
        }

        let ThinkingPlan { thinking, max_tokens, effort } = thinking(request, default_max_tokens, style)?;
        let tool_choice = match (&request.tool_choice, request.tools.is_empty()) {
            (_, true) | (None, _) => None,
            (Some(ToolChoice::Auto), _) => Some(WireToolChoice::Auto),
            (Some(ToolChoice::None), _) => Some(WireToolChoice::None),
            (Some(forced @ (ToolChoice::Required | ToolChoice::Named(_))), _) => {
                if thinking.as_ref().is_some_and(|t| t.kind != "disabled") {
                    return Err(ProviderError::InvalidRequest(
                        "Anthropic cannot force a tool call (tool_choice required or a named tool) while thinking \
                         is on: use tool_choice auto, or turn reasoning off"
                            .into(),
                    ));
                }
                Some(match forced {
                    ToolChoice::Named(name) => WireToolChoice::Tool { name },
                    _ => WireToolChoice::Any,
                })
            }
        };
        let tools = request.tools.iter().map(wire_tool).collect::<Result<Vec<_>, _>>()?;
        let format = match &request.response_format {
            ResponseFormat::Text => None,
            // Anthropic has no JSON mode, and its schemas need `additionalProperties: false` on
            // every object, so "any object" cannot be said: the adapter does not declare
            // `Feature::JsonObject` and the server refuses such requests before they get here.
            ResponseFormat::JsonObject => {
                return Err(ProviderError::InvalidRequest(
                    "Anthropic has no JSON-object mode: ask for a JSON Schema (response_format json_schema)".into(),
                ));
            }
            ResponseFormat::JsonSchema { schema, .. } => {
                Some(OutputFormat { kind: "json_schema", schema: raw_json(schema, "response_format.json_schema")? })
            }
        };
        let output_config = (format.is_some() || effort.is_some()).then_some(OutputConfig { format, effort });

        Ok(MessagesBody {
            model: &request.model,
            max_tokens,
            messages,
            system,
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            stop_sequences: &options.stop,
            tools,
            tool_choice,
            thinking,
            output_config,
            stream: true,
        })
    }
}

/// The body of `POST /v1/messages/count_tokens`: a messages body without `max_tokens` and
/// `stream`, which the endpoint does not take (nor the sampling options, which a count request
/// has none of).
#[derive(Debug, Serialize)]
pub(crate) struct CountTokensBody<'a> {
    pub model: &'a str,
    pub messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<WireThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<OutputConfig<'a>>,
}

impl<'a> CountTokensBody<'a> {
    /// The request translated exactly as for a chat ([`MessagesBody::new`]: system prompt, merged
    /// turns, tool results, tools), so the count is of what a chat would send.
    pub fn new(request: &'a ChatRequest) -> Result<Self, ProviderError> {
        let body = MessagesBody::new(request, 1, ThinkingStyle::Budget)?;
        Ok(CountTokensBody {
            model: body.model,
            messages: body.messages,
            system: body.system,
            tools: body.tools,
            tool_choice: body.tool_choice,
            thinking: body.thinking,
            output_config: body.output_config,
        })
    }
}

/// The answer to `count_tokens`: `{"input_tokens": N}`.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenCountAnswer {
    pub input_tokens: u32,
}

/// What a request's reasoning becomes: `thinking`, the `max_tokens` that goes with it, and the
/// effort of adaptive thinking.
struct ThinkingPlan {
    thinking: Option<WireThinking>,
    max_tokens: u32,
    effort: Option<&'static str>,
}

/// Off is `{type: disabled}`: the newest models think unless told not to. On, with
/// [`ThinkingStyle::Budget`], is `{type: enabled, budget_tokens}`: the request's `budget_tokens`,
/// or [`Effort::budget_tokens`] for an effort (medium by default). The budget must be at least
/// [`MIN_THINKING_BUDGET`] and below `max_tokens`:
/// - a `budget_tokens` below the minimum is refused (raising it would spend what the client
///   capped);
/// - without a `max_tokens`, it is the budget plus the default, so the answer keeps its room;
/// - with one at or below the budget, a budget from an effort shrinks to fit (down to the
///   minimum), and a `budget_tokens` the client chose is refused.
///
/// With [`ThinkingStyle::Adaptive`] it is `{type: adaptive}` and `output_config.effort` (a
/// budget as the nearest effort; none for the model's default), `max_tokens` as for no thinking.
fn thinking(
    request: &ChatRequest,
    default_max_tokens: u32,
    style: ThinkingStyle,
) -> Result<ThinkingPlan, ProviderError> {
    let asked_max = request.options.max_tokens;
    let (amount, include_thoughts) = match request.reasoning {
        None => {
            return Ok(ThinkingPlan {
                thinking: None,
                max_tokens: asked_max.unwrap_or(default_max_tokens),
                effort: None,
            });
        }
        Some(Reasoning::Off) => {
            let off = WireThinking { kind: "disabled", budget_tokens: None, display: None };
            return Ok(ThinkingPlan {
                thinking: Some(off),
                max_tokens: asked_max.unwrap_or(default_max_tokens),
                effort: None,
            });
        }
        Some(Reasoning::On { amount, include_thoughts }) => (amount, include_thoughts),
    };
    let display = (!include_thoughts).then_some("omitted");
    if style == ThinkingStyle::Adaptive {
        let effort = match amount {
            ReasoningAmount::Default => None,
            ReasoningAmount::Effort(effort) => Some(effort.as_str()),
            ReasoningAmount::BudgetTokens(tokens) => Some(Effort::from_budget(tokens).as_str()),
        };
        let thinking = WireThinking { kind: "adaptive", budget_tokens: None, display };
        return Ok(ThinkingPlan {
            thinking: Some(thinking),
            max_tokens: asked_max.unwrap_or(default_max_tokens),
            effort,
        });
    }
    let (budget, chosen) = match amount {
        ReasoningAmount::Default => (Effort::Medium.budget_tokens(), false),
        ReasoningAmount::Effort(effort) => (effort.budget_tokens(), false),
        ReasoningAmount::BudgetTokens(tokens) => (tokens, true),
    };
    if budget < MIN_THINKING_BUDGET {
        return Err(ProviderError::InvalidRequest(format!(
            "Anthropic's thinking budget is at least {MIN_THINKING_BUDGET} tokens; the request asks for {budget}"
        )));
    }
    let (budget, max_tokens) = match asked_max {
        None => (budget, budget.saturating_add(default_max_tokens)),
        Some(max) if max > budget => (budget, max),
        Some(max) if !chosen && max > MIN_THINKING_BUDGET => (max - 1, max),
        Some(max) => {
            return Err(ProviderError::InvalidRequest(format!(
                "Anthropic needs max_tokens above the thinking budget (which it counts in): max_tokens is {max} and \
                 the budget {budget}; raise max_tokens above {}",
                budget.max(MIN_THINKING_BUDGET)
            )));
        }
    };
    let thinking = WireThinking { kind: "enabled", budget_tokens: Some(budget), display };
    Ok(ThinkingPlan { thinking: Some(thinking), max_tokens, effort: None })
}

fn wire_tool(tool: &Tool) -> Result<WireTool<'_>, ProviderError> {
    let schema = tool.parameters.as_deref().unwrap_or(NO_PARAMETERS);
    Ok(WireTool {
        name: &tool.name,
        description: &tool.description,
        input_schema: raw_json(schema, &format!("the parameters of tool '{}'", tool.name))?,
        strict: tool.strict,
    })
}

/// JSON text as a raw value, so it is sent exactly as written (numbers are not reformatted).
fn raw_json<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, ProviderError> {
    serde_json::from_str(text).map_err(|err| ProviderError::InvalidRequest(format!("{what} is not valid JSON: {err}")))
}

/// A call's arguments for its `tool_use.input`: an object the API requires (`{}` for none).
fn arguments(call: &ToolCall, message: usize) -> Result<&RawValue, ProviderError> {
    let text = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
    raw_json(text, &format!("the arguments of tool call '{}' in message {message}", call.id))
}

fn image_block(image: &Image) -> Block<'_> {
    let source = match &image.source {
        ImageSourceData::Data(bytes) => ImageSource::Base64 { media_type: &image.mime_type, data: base64(bytes) },
        ImageSourceData::Url(url) => ImageSource::Url { url },
    };
    Block::Image { source }
}

/// Earlier thinking, as Anthropic wrote it: the signature (the UTF-8 text Anthropic sent, kept
/// as bytes) unchanged. Anthropic refuses thinking without one, such as another provider's, so
/// that is refused here, saying which message holds it.
fn thinking_block(thinking: &Thinking, message: usize) -> Result<Block<'_>, ProviderError> {
    let signature = std::str::from_utf8(&thinking.signature).map_err(|_| {
        ProviderError::InvalidRequest(format!(
            "message {message} holds thinking whose signature is not Anthropic's (it is not text)"
        ))
    })?;
    if thinking.redacted {
        return Ok(Block::RedactedThinking { data: signature });
    }
    if signature.is_empty() {
        return Err(ProviderError::InvalidRequest(format!(
            "message {message} holds thinking without a signature; Anthropic accepts earlier thinking only with the \
             signature it came with (thinking from another provider cannot be sent back)"
        )));
    }
    Ok(Block::Thinking { thinking: &thinking.text, signature })
}

/// A tool result's content: its text as a string, or blocks when it holds images.
fn tool_result_content(message: &Message, index: usize) -> Result<Option<Content<'_>>, ProviderError> {
    if message.parts.iter().all(|part| matches!(part, Part::Text(_))) {
        let text = message.content();
        return Ok((!text.is_empty()).then_some(Content::Text(text)));
    }
    let mut blocks = Vec::with_capacity(message.parts.len());
    for part in &message.parts {
        match part {
            Part::Text(text) if text.is_empty() => {}
            Part::Text(text) => blocks.push(Block::Text { text: Cow::Borrowed(text) }),
            Part::Image(image) => blocks.push(image_block(image)),
            Part::ToolCall(_) | Part::Thinking(_) => {
                return Err(ProviderError::InvalidRequest(format!(
                    "message {index} is a tool result holding a tool call or thinking, which Anthropic cannot take"
                )));
            }
        }
    }
    Ok(Some(Content::Blocks(blocks)))
}

/// A tool-call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`). Ids from Anthropic, and those
/// the gateway makes up, pass unchanged. Others (`functions.Bash:0` from another provider) get
/// each other character replaced by `_` and a hash of the whole id appended, so two ids that
/// differ only in those characters stay apart; the same id always maps to the same text, so a
/// `tool_use` and its `tool_result` still match.
pub(crate) fn wire_id(id: &str) -> Cow<'_, str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(allowed) {
        return Cow::Borrowed(id);
    }
    // FNV-1a: stable across runs and builds, unlike the standard library's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut rewritten: String = id.chars().map(|c| if allowed(c) { c } else { '_' }).collect();
    rewritten.push_str(&format!("_{hash:016x}"));
    Cow::Owned(rewritten)
}

/// Standard base64 with padding, as `source.data` takes it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Appends `text` as a new paragraph (after a blank line); empty text adds nothing.
fn append_paragraph<'a>(target: &mut Option<Cow<'a, str>>, text: Cow<'a, str>) {
    if text.is_empty() {
        return;
    }
    match target {
        Some(existing) if !existing.is_empty() => {
            let existing = existing.to_mut();
            existing.push_str("\n\n");
            existing.push_str(&text);
        }
        _ => *target = Some(text),
    }
}

fn trim_end(text: &mut Cow<'_, str>) {
    match text {
        Cow::Borrowed(s) => *s = s.trim_end(),
        Cow::Owned(s) => s.truncate(s.trim_end().len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `{"type":"error","error":{"type":"...","message":"..."},"request_id":"req_..."}`, the body of
/// every error response and the data of a mid-stream `error` event.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorDetail<'a>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    request_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    message: Option<Cow<'a, str>>,
}

/// What an error response said.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UpstreamError {
    /// Whether the body was an Anthropic error object (rather than, say, a proxy's HTML page).
    pub anthropic: bool,
    /// `error.type`, e.g. `overloaded_error`.
    pub kind: Option<String>,
    /// `error.message`, or the raw body (shortened) when it was not an Anthropic error object.
    pub message: String,
    pub request_id: Option<String>,
}

impl UpstreamError {
    pub fn parse(body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
            return UpstreamError {
                anthropic: true,
                kind: parsed.error.kind.map(Cow::into_owned),
                message: parsed.error.message.map(Cow::into_owned).unwrap_or_default(),
                request_id: parsed.request_id.map(Cow::into_owned),
            };
        }
        // Whole until `describe`, which masks the key before it shortens the text.
        UpstreamError { message: String::from_utf8_lossy(body).trim().to_owned(), ..Default::default() }
    }

    /// `message (error_type, request-id req_…)`, with the key masked (the request id may come
    /// from a header, which may echo it too) and the message shortened to 500 characters after.
    pub fn describe(&self, secret: Option<&Secret>, fallback: &str) -> String {
        let message = if self.message.is_empty() { fallback } else { &self.message };
        let mut text = copilot_http::quote(message, 500, secret);
        let kind = self.kind.as_deref().map(|kind| copilot_http::quote(kind, 100, secret));
        let request_id = self.request_id.as_deref().map(|id| copilot_http::quote(id, 200, secret));
        match (kind.as_deref(), request_id.as_deref()) {
            (None, None) => {}
            (Some(kind), None) => text.push_str(&format!(" ({kind})")),
            (None, Some(id)) => text.push_str(&format!(" (request-id {id})")),
            (Some(kind), Some(id)) => text.push_str(&format!(" ({kind}, request-id {id})")),
        }
        text
    }
}

// ---------------------------------------------------------------------------------------------
// The SSE chat stream

/// One streamed event's data. The fields of every event type share one struct so each event is
/// parsed once; text is borrowed from the event unless it contains JSON escapes.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    /// `content_block_*`: which block of the message.
    #[serde(default)]
    index: Option<u64>,
    /// `message_start`.
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    /// `content_block_start`.
    #[serde(borrow, default)]
    content_block: Option<ContentBlock<'a>>,
    /// `content_block_delta` (a typed delta) and `message_delta` (stop reason).
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    /// `message_delta`.
    #[serde(default)]
    usage: Option<WireUsage>,
    /// `error`.
    #[serde(borrow, default)]
    error: Option<ErrorDetail<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    /// `text`.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
    /// `tool_use`.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    name: Option<Cow<'a, str>>,
    /// `tool_use`: `{}` when the input streams in `input_json_delta`s, as it always does from
    /// Anthropic; kept as raw text in case a proxy sends the whole input here.
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// `thinking`.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    signature: Option<Cow<'a, str>>,
    /// `redacted_thinking`.
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl WireUsage {
    /// Total input: uncached plus cache writes plus cache reads (Anthropic counts them apart);
    /// `None` if none is reported.
    fn input(&self) -> Option<u64> {
        let parts = [self.input_tokens, self.cache_creation_input_tokens, self.cache_read_input_tokens];
        parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum())
    }
}

/// The content block open in the stream. Anthropic's blocks never overlap: each starts, takes
/// its deltas and stops before the next starts, so one is all there is to track.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OpenBlock {
    /// Anthropic's index of the block (it counts text and thinking blocks too).
    index: Option<u64>,
    kind: BlockKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BlockKind {
    Text,
    /// A tool call: its index among the answer's calls.
    ToolUse(u32),
    Thinking,
    /// A block the gateway does not relay (a server tool's, say).
    Other,
}

/// What a stream has reported so far, for the final [`Completion`].
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    model: String,
    response_id: Option<String>,
    input_tokens: u64,
    cached_input_tokens: Option<u64>,
    output_tokens: u64,
    finish_reason: FinishReason,
    /// Whether anything has gone to the caller (decides how an `overloaded_error` is reported).
    emitted: bool,
    block: Option<OpenBlock>,
    /// `tool_use` blocks so far: the next call's index.
    tool_calls: u32,
    /// The open thinking block's signature, sent when the block stops (it may come in pieces).
    signature: String,
    /// The longest signature accepted: the stream's line limit.
    limit: usize,
    secret: Option<Secret>,
}

impl StreamState {
    pub fn new(secret: Option<Secret>, limit: usize) -> Self {
        StreamState { secret, limit, ..Default::default() }
    }

    fn completion(&self) -> Completion {
        Completion {
            finish_reason: self.finish_reason,
            model: self.model.clone(),
            usage: Usage {
                input_tokens: saturate(self.input_tokens),
                output_tokens: saturate(self.output_tokens),
                reasoning_tokens: None,
                cached_input_tokens: self.cached_input_tokens.map(saturate),
            },
            timings: Default::default(),
            response_id: self.response_id.clone(),
        }
    }

    fn usage(&mut self, usage: WireUsage) {
        self.input_tokens = usage.input().unwrap_or(self.input_tokens);
        self.output_tokens = usage.output_tokens.unwrap_or(self.output_tokens);
        if usage.cache_read_input_tokens.is_some() {
            self.cached_input_tokens = usage.cache_read_input_tokens;
        }
    }

    /// The open block a delta for block `index` belongs to, or the protocol breach it is.
    fn block_for(&self, index: Option<u64>, delta: &str) -> Result<BlockKind, ProviderError> {
        match self.block {
            Some(open) if index.is_none() || open.index.is_none() || open.index == index => Ok(open.kind),
            _ => Err(ProviderError::Protocol(format!(
                "Anthropic sent a {delta} for content block {} that is not open",
                index.map_or_else(|| "?".to_owned(), |i| i.to_string())
            ))),
        }
    }
}

/// What one SSE event means for the stream.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Nothing for the caller (`ping`, block boundaries, unknown event types).
    Skip,
    Delta(String),
    ToolCall(ToolCallDelta),
    Thinking(ThinkingDelta),
    /// `message_stop`: the reply is complete.
    Done(Completion),
    /// The stream failed; nothing after this event counts.
    Failed(ProviderError),
}

impl Decoded {
    fn emits(&self) -> bool {
        matches!(self, Decoded::Delta(_) | Decoded::ToolCall(_) | Decoded::Thinking(_))
    }
}

const KNOWN_EVENTS: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// Decodes one SSE event. The JSON `type` names the event; the SSE `event:` name is the fallback
/// for a server that leaves `type` out.
pub(crate) fn decode_event(name: &str, data: &str, state: &mut StreamState) -> Decoded {
    let event: StreamEvent = match serde_json::from_str(data) {
        Ok(event) => event,
        // Unknown event types may carry anything; only ours must be JSON.
        Err(_) if !KNOWN_EVENTS.contains(&name) && name != "message" => return Decoded::Skip,
        Err(err) => {
            let excerpt = quote(data.trim(), 200, state.secret.as_ref());
            return Decoded::Failed(ProviderError::Protocol(format!(
                "unparseable {name} event in Anthropic's stream ({err}): {excerpt}"
            )));
        }
    };
    let kind = event.kind.as_deref().unwrap_or(name);
    let decoded = match kind {
        "content_block_delta" => match event.delta {
            Some(delta) => block_delta(event.index, delta, state),
            None => Decoded::Skip,
        },
        "content_block_start" => match event.content_block {
            Some(block) => block_start(event.index, block, state),
            None => Decoded::Skip,
        },
        "content_block_stop" => match state.block.take() {
            Some(OpenBlock { kind: BlockKind::Thinking, .. }) if !state.signature.is_empty() => {
                Decoded::Thinking(ThinkingDelta::Signature(std::mem::take(&mut state.signature).into_bytes()))
            }
            _ => Decoded::Skip,
        },
        "message_start" => {
            if let Some(message) = event.message {
                if let Some(model) = message.model {
                    state.model = model.into_owned();
                }
                if let Some(id) = message.id {
                    state.response_id = Some(id.into_owned());
                }
                if let Some(usage) = message.usage {
                    state.usage(usage);
                }
            }
            Decoded::Skip
        }
        "message_delta" => {
            if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                state.finish_reason = finish_reason(&reason);
            }
            // Cumulative counts: the last value wins.
            if let Some(usage) = event.usage {
                state.usage(usage);
            }
            Decoded::Skip
        }
        "message_stop" if !state.signature.is_empty() => Decoded::Failed(ProviderError::Protocol(
            "Anthropic ended the message before the thinking block carrying a signature stopped".into(),
        )),
        "message_stop" => Decoded::Done(state.completion()),
        "error" => Decoded::Failed(stream_error(event.error, data, state)),
        _ => Decoded::Skip,
    };
    if decoded.emits() {
        state.emitted = true;
    }
    decoded
}

fn block_start(index: Option<u64>, block: ContentBlock<'_>, state: &mut StreamState) -> Decoded {
    if !state.signature.is_empty() {
        return Decoded::Failed(ProviderError::Protocol(
            "Anthropic started a content block before the thinking block carrying a signature stopped".into(),
        ));
    }
    let kind = match block.kind.as_deref() {
        Some("text") => BlockKind::Text,
        Some("tool_use") => BlockKind::ToolUse(state.tool_calls),
        Some("thinking") => BlockKind::Thinking,
        _ => BlockKind::Other,
    };
    state.block = Some(OpenBlock { index, kind });
    match (kind, block.kind.as_deref()) {
        // A text block may in principle start with text of its own.
        (BlockKind::Text, _) => text_delta(block.text),
        (BlockKind::ToolUse(call), _) => {
            state.tool_calls = state.tool_calls.saturating_add(1);
            // `{}` (always, from Anthropic) means the input streams next; anything else is the
            // whole input, which a proxy may put here.
            let arguments = match block.input {
                Some(raw) if raw.get().bytes().filter(|b| !b.is_ascii_whitespace()).ne(*b"{}") => raw.get().to_owned(),
                _ => String::new(),
            };
            Decoded::ToolCall(ToolCallDelta {
                index: call,
                id: block.id.map(Cow::into_owned),
                name: block.name.map(Cow::into_owned),
                arguments,
                signature: Vec::new(),
            })
        }
        (BlockKind::Thinking, _) => {
            if let Some(signature) = block.signature {
                state.signature.push_str(&signature);
            }
            match block.thinking {
                Some(text) if !text.is_empty() => Decoded::Thinking(ThinkingDelta::Text(text.into_owned())),
                _ => Decoded::Skip,
            }
        }
        // Whole when it starts: its data is what goes back on the next turn.
        (BlockKind::Other, Some("redacted_thinking")) => match block.data {
            Some(data) if !data.is_empty() => {
                Decoded::Thinking(ThinkingDelta::Redacted(data.into_owned().into_bytes()))
            }
            _ => {
                Decoded::Failed(ProviderError::Protocol("Anthropic sent a redacted_thinking block without data".into()))
            }
        },
        (BlockKind::Other, _) => Decoded::Skip,
    }
}

fn block_delta(index: Option<u64>, delta: EventDelta<'_>, state: &mut StreamState) -> Decoded {
    let Some(kind) = delta.kind.as_deref() else { return Decoded::Skip };
    match kind {
        // Text is relayed whatever block it is in, as it always was.
        "text_delta" => text_delta(delta.text),
        "input_json_delta" => match state.block_for(index, kind) {
            Ok(BlockKind::ToolUse(call)) => match delta.partial_json {
                // A call without arguments sends `""` alone: the server makes it `{}`.
                Some(json) if !json.is_empty() => {
                    Decoded::ToolCall(ToolCallDelta { index: call, arguments: json.into_owned(), ..Default::default() })
                }
                _ => Decoded::Skip,
            },
            // A server tool's input: not a call for the client to run.
            Ok(BlockKind::Other) => Decoded::Skip,
            Ok(other) => wrong_block(kind, other),
            Err(err) => Decoded::Failed(err),
        },
        "thinking_delta" | "signature_delta" => match state.block_for(index, kind) {
            Ok(BlockKind::Thinking) => {
                if kind == "thinking_delta" {
                    return match delta.thinking {
                        Some(text) if !text.is_empty() => Decoded::Thinking(ThinkingDelta::Text(text.into_owned())),
                        _ => Decoded::Skip,
                    };
                }
                let piece = delta.signature.unwrap_or_default();
                if state.signature.len() + piece.len() > state.limit {
                    return Decoded::Failed(ProviderError::Protocol(format!(
                        "Anthropic sent a thinking signature longer than {} bytes",
                        state.limit
                    )));
                }
                state.signature.push_str(&piece);
                Decoded::Skip
            }
            Ok(other) => wrong_block(kind, other),
            Err(err) => Decoded::Failed(err),
        },
        // citations_delta and whatever comes next.
        _ => Decoded::Skip,
    }
}

fn wrong_block(delta: &str, block: BlockKind) -> Decoded {
    Decoded::Failed(ProviderError::Protocol(format!("Anthropic sent a {delta} inside a {block:?} block")))
}

fn text_delta(text: Option<Cow<'_, str>>) -> Decoded {
    match text {
        Some(text) if !text.is_empty() => Decoded::Delta(text.into_owned()),
        _ => Decoded::Skip,
    }
}

/// An `error` event. Overload before anything reached the caller is reported as
/// [`ProviderError::Overloaded`], exactly like a 529 refusal, since nothing was produced and the
/// request can be retried as a whole; anything else is [`ProviderError::MidStream`].
fn stream_error(error: Option<ErrorDetail<'_>>, data: &str, state: &StreamState) -> ProviderError {
    let secret = state.secret.as_ref();
    let Some(error) = error else {
        let excerpt = quote(data.trim(), 200, secret);
        return ProviderError::MidStream(format!("Anthropic sent an error event: {excerpt}"));
    };
    let detail = UpstreamError {
        anthropic: true,
        kind: error.kind.map(Cow::into_owned),
        message: error.message.map(Cow::into_owned).unwrap_or_default(),
        request_id: None,
    };
    let message = detail.describe(secret, "no error message");
    if detail.kind.as_deref() == Some("overloaded_error") && !state.emitted {
        ProviderError::Overloaded { message, retry_after: None }
    } else {
        ProviderError::MidStream(message)
    }
}

/// `stop_reason` to a finish reason: `tool_use` is [`FinishReason::ToolCalls`] (the server
/// settles it from the calls); `pause_turn` (a server tool's long turn) ends the text the
/// gateway relays, so it counts as a normal stop, as do unknown future reasons.
pub(crate) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        "tool_use" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Models

/// One page of `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelsPage {
    #[serde(default)]
    pub data: Vec<WireModel>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// `GET /v1/models/{id}`, and one entry of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct WireModel {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    #[serde(default)]
    pub capabilities: Option<WireCapabilities>,
}

/// The parts of `capabilities` the gateway reports (each `{"supported": bool, ...}`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireCapabilities {
    #[serde(default)]
    image_input: Option<Supported>,
    #[serde(default)]
    structured_outputs: Option<Supported>,
    #[serde(default)]
    thinking: Option<Supported>,
}

#[derive(Debug, Default, Deserialize)]
struct Supported {
    #[serde(default)]
    supported: bool,
}

/// A model as Anthropic's Models API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicModel {
    /// e.g. `claude-sonnet-4-5-20250929`: the name to send as `model`.
    pub id: String,
    /// e.g. `Claude Sonnet 4.5`; empty when not given.
    pub display_name: String,
    /// RFC 3339 release time, e.g. `2025-09-29T00:00:00Z`; empty when not given.
    pub created_at: String,
    /// The context window (`max_input_tokens`), when the API reports it.
    pub context_length: Option<u32>,
    /// What the model can do beyond text, in `ModelInfo.capabilities` names, as far as the
    /// API's `capabilities` object says (`vision` and `image_urls`, `json_schema`, `thinking`).
    pub capabilities: Vec<String>,
}

impl From<WireModel> for AnthropicModel {
    fn from(model: WireModel) -> Self {
        let reported = model.capabilities.unwrap_or_default();
        let supported = |capability: &Option<Supported>| capability.as_ref().is_some_and(|c| c.supported);
        let mut capabilities = Vec::new();
        if supported(&reported.image_input) {
            capabilities.extend([Feature::Images.as_str().to_owned(), Feature::ImageUrls.as_str().to_owned()]);
        }
        if supported(&reported.structured_outputs) {
            capabilities.push(Feature::JsonSchema.as_str().to_owned());
        }
        if supported(&reported.thinking) {
            capabilities.push(Feature::Thinking.as_str().to_owned());
        }
        AnthropicModel {
            id: model.id,
            display_name: model.display_name.unwrap_or_default(),
            created_at: model.created_at.unwrap_or_default(),
            context_length: model.max_input_tokens.map(saturate),
            capabilities,
        }
    }
}

impl AnthropicModel {
    /// The provider-independent view. The family is `claude` for Claude models, which all call
    /// tools; every model served by the Messages API completes text; the rest is what the API's
    /// `capabilities` say, when it says.
    pub fn into_model_info(self) -> ModelInfo {
        let claude = self.id.starts_with("claude");
        let mut capabilities = vec!["completion".to_owned()];
        if claude {
            capabilities.push(Feature::Tools.as_str().to_owned());
        }
        capabilities.extend(self.capabilities);
        ModelInfo {
            name: self.id,
            family: if claude { "claude" } else { "" }.to_owned(),
            context_length: self.context_length,
            capabilities,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::{GenerationOptions, Message};
    use serde_json::json;

    fn request(messages: &[(Role, &str)], options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: messages.iter().map(|(role, content)| Message::text(*role, *content)).collect(),
            options,
            ..Default::default()
        }
    }

    fn body(messages: &[(Role, &str)], options: GenerationOptions) -> Result<serde_json::Value, ProviderError> {
        let req = request(messages, options);
        MessagesBody::new(&req, 4096, ThinkingStyle::Budget).map(|b| serde_json::to_value(b).unwrap())
    }

    #[test]
    fn a_count_is_the_messages_body_without_max_tokens_or_stream() {
        let mut req = request(
            &[(Role::System, "Be brief."), (Role::User, "Hi"), (Role::User, "there"), (Role::Assistant, "Well ")],
            GenerationOptions::default(),
        );
        req.tools =
            vec![Tool { name: "lookup".into(), description: "Looks up.".into(), parameters: None, strict: false }];
        let body = serde_json::to_value(CountTokensBody::new(&req).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "messages": [
                    {"role": "user", "content": "Hi\n\nthere"},
                    {"role": "assistant", "content": "Well"},
                ],
                "system": "Be brief.",
                "tools": [{"name": "lookup", "description": "Looks up.", "input_schema": {"type": "object", "properties": {}}}],
            })
        );
        let only_assistant = request(&[(Role::Assistant, "Hi")], GenerationOptions::default());
        assert!(matches!(CountTokensBody::new(&only_assistant), Err(ProviderError::InvalidRequest(_))));
        let answer: TokenCountAnswer = serde_json::from_str(r#"{"input_tokens": 14}"#).unwrap();
        assert_eq!(answer.input_tokens, 14);
        assert!(serde_json::from_str::<TokenCountAnswer>(r#"{"tokens": 14}"#).is_err());
    }

    #[test]
    fn minimal_body_has_max_tokens_and_omits_unset_options() {
        let body = body(&[(Role::User, "Hi")], GenerationOptions { seed: Some(7), ..Default::default() }).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "Hi"}],
                "stream": true,
            })
        );
    }

    #[test]
    fn every_option_is_mapped() {
        let options = GenerationOptions {
            temperature: Some(0.5),
            max_tokens: Some(64),
            top_p: Some(0.25),
            top_k: Some(40),
            stop: vec!["END".into(), "\n\n".into()],
            seed: Some(1),
        };
        let body = body(&[(Role::User, "Hi")], options).unwrap();
        assert_eq!(body["max_tokens"], json!(64));
        assert_eq!(body["temperature"], json!(0.5));
        assert_eq!(body["top_p"], json!(0.25));
        assert_eq!(body["top_k"], json!(40));
        assert_eq!(body["stop_sequences"], json!(["END", "\n\n"]));
        assert!(body.get("seed").is_none(), "seed has no Anthropic equivalent: {body}");
    }

    #[test]
    fn system_messages_become_the_system_field() {
        let body = body(
            &[(Role::System, "Be terse."), (Role::User, "Hi"), (Role::System, ""), (Role::System, "Use French.")],
            GenerationOptions::default(),
        )
        .unwrap();
        assert_eq!(body["system"], json!("Be terse.\n\nUse French."));
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn consecutive_turns_of_one_role_are_merged() {
        let body = body(
            &[
                (Role::User, "a"),
                (Role::System, "sys"),
                (Role::User, "b"),
                (Role::User, ""),
                (Role::Assistant, "c"),
                (Role::Assistant, "d"),
                (Role::User, "e"),
            ],
            GenerationOptions::default(),
        )
        .unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "a\n\nb"},
                {"role": "assistant", "content": "c\n\nd"},
                {"role": "user", "content": "e"},
            ])
        );
    }

    #[test]
    fn a_final_assistant_prefill_loses_trailing_whitespace() {
        let prefill = body(&[(Role::User, "Q"), (Role::Assistant, "The answer is ")], Default::default()).unwrap();
        assert_eq!(prefill["messages"][1], json!({"role": "assistant", "content": "The answer is"}));
        let merged =
            body(&[(Role::User, "Q"), (Role::Assistant, "A \n"), (Role::Assistant, "B \n")], Default::default());
        assert_eq!(merged.unwrap()["messages"][1], json!({"role": "assistant", "content": "A \n\n\nB"}));
    }

    #[test]
    fn conversations_anthropic_cannot_take_are_refused_with_a_reason() {
        let Err(ProviderError::InvalidRequest(message)) =
            body(&[(Role::System, "s"), (Role::Assistant, "Hello"), (Role::User, "Hi")], Default::default())
        else {
            panic!("a leading assistant turn was accepted")
        };
        assert!(message.contains("start with a user message"), "{message}");

        let Err(ProviderError::InvalidRequest(message)) = body(&[(Role::System, "s")], Default::default()) else {
            panic!("a system-only request was accepted")
        };
        assert!(message.contains("at least one user message"), "{message}");

        let options = GenerationOptions { temperature: Some(1.5), ..Default::default() };
        let Err(ProviderError::InvalidRequest(message)) = body(&[(Role::User, "x")], options) else {
            panic!("temperature 1.5 was accepted")
        };
        assert!(message.contains("between 0 and 1") && message.contains("1.5"), "{message}");
        let options = GenerationOptions { temperature: Some(1.0), ..Default::default() };
        assert!(body(&[(Role::User, "x")], options).is_ok());
    }

    fn decode_all(events: &[(&str, serde_json::Value)]) -> Vec<Decoded> {
        let mut state = StreamState::new(None, 1 << 20);
        events.iter().map(|(name, data)| decode_event(name, &data.to_string(), &mut state)).collect()
    }

    #[test]
    fn decodes_the_reference_stream() {
        let events = [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",
                       "model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,
                       "usage":{"input_tokens":18,"cache_creation_input_tokens":2,"cache_read_input_tokens":5,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            ("ping", json!({"type":"ping"})),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Te"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"al \"é\"\n"}}),
            ),
            ("content_block_stop", json!({"type":"content_block_stop","index":0})),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":4}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
        ];
        let decoded = decode_all(&events);
        let expected_done = Completion {
            finish_reason: FinishReason::Length,
            model: "claude-sonnet-4-5-20250929".into(),
            // Cache reads and writes count as input; output counts are cumulative, not summed.
            usage: Usage { input_tokens: 25, output_tokens: 4, reasoning_tokens: None, cached_input_tokens: Some(5) },
            timings: Default::default(),
            response_id: Some("msg_01".into()),
        };
        assert_eq!(
            decoded,
            [
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Delta("Te".into()),
                Decoded::Delta("al \"é\"\n".into()),
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Done(expected_done),
            ]
        );
    }

    #[test]
    fn unknown_blocks_deltas_and_events_are_skipped() {
        let decoded = decode_all(&[
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}),
            ),
            ("content_block_stop", json!({"type":"content_block_stop","index":0})),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":""}}),
            ),
            ("future_event", json!({"type":"future_event","x":[1,2]})),
        ]);
        assert!(decoded.iter().all(|d| *d == Decoded::Skip), "{decoded:?}");
        let mut state = StreamState::new(None, 1 << 20);
        assert_eq!(decode_event("future_event", "not json at all", &mut state), Decoded::Skip);
    }

    #[test]
    fn a_text_block_may_start_with_text() {
        let decoded = decode_all(&[(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}),
        )]);
        assert_eq!(decoded, [Decoded::Delta("Hi".into())]);
    }

    #[test]
    fn the_json_type_wins_and_the_event_name_is_the_fallback() {
        let mut state = StreamState::new(None, 1 << 20);
        let delta = r#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#;
        assert_eq!(decode_event("content_block_delta", delta, &mut state), Decoded::Delta("x".into()));
        let delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"y"}}"#;
        assert_eq!(decode_event("message", delta, &mut state), Decoded::Delta("y".into()));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("tool_use", FinishReason::ToolCalls),
            ("pause_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
            ("something_new", FinishReason::Stop),
        ] {
            assert_eq!(finish_reason(reason), expected, "{reason}");
        }
    }

    #[test]
    fn missing_usage_and_model_leave_zeroes() {
        let decoded = decode_all(&[("message_stop", json!({"type":"message_stop"}))]);
        assert_eq!(decoded, [Decoded::Done(Completion::default())]);
    }

    #[test]
    fn an_error_event_is_overload_before_text_and_mid_stream_after() {
        let overloaded = json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}});
        let decoded = decode_all(&[("error", overloaded.clone())]);
        assert_eq!(
            decoded,
            [Decoded::Failed(ProviderError::Overloaded {
                message: "Overloaded (overloaded_error)".into(),
                retry_after: None
            })]
        );

        let decoded = decode_all(&[
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}),
            ),
            ("error", overloaded),
        ]);
        assert_eq!(decoded[1], Decoded::Failed(ProviderError::MidStream("Overloaded (overloaded_error)".into())));

        let decoded =
            decode_all(&[("error", json!({"type":"error","error":{"type":"api_error","message":"Internal"}}))]);
        assert_eq!(decoded, [Decoded::Failed(ProviderError::MidStream("Internal (api_error)".into()))]);
    }

    #[test]
    fn an_error_event_never_shows_the_key() {
        let key = Secret::new("sk-ant-api03-secret-value");
        let mut state = StreamState::new(Some(key.clone()), 1 << 20);
        let data = json!({"type":"error","error":{"type":"api_error","message":format!("bad key {}", key.expose())}});
        let Decoded::Failed(err) = decode_event("error", &data.to_string(), &mut state) else { panic!("not failed") };
        assert!(!err.to_string().contains(key.expose()), "{err}");
    }

    #[test]
    fn malformed_events_are_protocol_errors_with_a_short_excerpt() {
        let mut state = StreamState::new(None, 1 << 20);
        let long = format!("{{\"type\": \"content_block_delta\", {}", "x".repeat(5000));
        let Decoded::Failed(ProviderError::Protocol(message)) = decode_event("content_block_delta", &long, &mut state)
        else {
            panic!("not a protocol error")
        };
        assert!(message.contains("content_block_delta") && message.len() < 500, "{message}");
        // A field of the wrong type is malformed too.
        let wrong = r#"{"type":"message_delta","usage":{"output_tokens":"four"}}"#;
        assert!(matches!(
            decode_event("message_delta", wrong, &mut state),
            Decoded::Failed(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn error_bodies_are_parsed_and_described() {
        let body =
            br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-x"},"request_id":"req_1"}"#;
        let parsed = UpstreamError::parse(body);
        assert!(parsed.anthropic);
        assert_eq!(parsed.kind.as_deref(), Some("not_found_error"));
        assert_eq!(parsed.describe(None, "Not Found"), "model: claude-x (not_found_error, request-id req_1)");

        let parsed = UpstreamError::parse(b"  <html>502 Bad Gateway</html>\n");
        assert!(!parsed.anthropic);
        assert_eq!(parsed.describe(None, "Bad Gateway"), "<html>502 Bad Gateway</html>");
        assert_eq!(UpstreamError::parse(b"").describe(None, "Bad Gateway"), "Bad Gateway");
        let long = "é".repeat(600);
        assert_eq!(UpstreamError::parse(long.as_bytes()).describe(None, "").chars().count(), 501);

        let key = Secret::new("sk-ant-0123456789");
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-0123456789"}}"#;
        let described = UpstreamError::parse(body).describe(Some(&key), "");
        assert_eq!(described, "invalid x-api-key *** (authentication_error)");

        // Masked before it is shortened, wherever the key falls; in a request id too.
        let raw = "sk-ant-api03-Zq8Xw2Vb7Nm4Lk1Jh6Gf3Ds9Ap5Oi0Uy-Tr8Ee2Ww";
        let key = Secret::new(raw);
        for offset in [450, 480, 490, 499, 500] {
            let body = format!("{}{raw} is not a valid key", "x".repeat(offset));
            let mut error = UpstreamError::parse(body.as_bytes());
            error.request_id = Some(format!("req_{raw}"));
            let described = error.describe(Some(&key), "");
            let pieces: Vec<&str> =
                (0..raw.len() - 7).map(|i| &raw[i..i + 8]).filter(|p| described.contains(p)).collect();
            assert!(pieces.is_empty(), "offset {offset}: {pieces:?} in {described}");
            assert!(described.ends_with("(request-id req_***)"), "{described}");
        }
    }

    #[test]
    fn models_map_to_model_infos() {
        let page: ModelsPage = serde_json::from_value(json!({
            "data": [
                {"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},
                {"type":"model","id":"other"},
            ],
            "has_more": true, "first_id": "claude-sonnet-4-5-20250929", "last_id": "other",
        }))
        .unwrap();
        assert!(page.has_more);
        assert_eq!(page.last_id.as_deref(), Some("other"));
        let models: Vec<AnthropicModel> = page.data.into_iter().map(AnthropicModel::from).collect();
        assert_eq!(models[0].display_name, "Claude Sonnet 4.5");
        assert_eq!(models[1].created_at, "");
        let infos: Vec<ModelInfo> = models.into_iter().map(AnthropicModel::into_model_info).collect();
        assert_eq!(
            infos[0],
            ModelInfo {
                name: "claude-sonnet-4-5-20250929".into(),
                family: "claude".into(),
                capabilities: vec!["completion".into(), "tools".into()],
                ..Default::default()
            }
        );
        assert_eq!(infos[1].family, "");
        let empty: ModelsPage = serde_json::from_value(json!({})).unwrap();
        assert!(empty.data.is_empty() && !empty.has_more);
    }

    // -----------------------------------------------------------------------------------------
    // Tools, structured output, reasoning and images

    const ARGS: &str = r#"{"id":9007199254740993,"x":1.0}"#;

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall(ToolCall { id: id.into(), name: name.into(), arguments: arguments.into(), signature: vec![] })
    }

    fn msg(role: Role, parts: Vec<Part>) -> Message {
        Message { role, parts, tool_call_id: None }
    }

    fn chat(messages: Vec<Message>) -> ChatRequest {
        ChatRequest { model: "claude-x".into(), messages, ..Default::default() }
    }

    fn wire(request: &ChatRequest) -> Result<(serde_json::Value, String), ProviderError> {
        let body = MessagesBody::new(request, 4096, ThinkingStyle::Budget)?;
        let text = serde_json::to_string(&body).unwrap();
        Ok((serde_json::from_str(&text).unwrap(), text))
    }

    fn refusal(request: &ChatRequest) -> String {
        match MessagesBody::new(request, 4096, ThinkingStyle::Budget) {
            Err(ProviderError::InvalidRequest(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn tools_tool_choice_and_schemas_are_sent_as_the_client_wrote_them() {
        let schema = r#"{"type":"object","properties":{"n":{"type":"number","default":1.0}}}"#;
        let mut request = chat(vec![Message::text(Role::User, "weather?")]);
        request.tools = vec![
            Tool {
                name: "get_weather".into(),
                description: "Weather".into(),
                parameters: Some(schema.into()),
                strict: true,
            },
            Tool { name: "now".into(), description: String::new(), parameters: None, strict: false },
        ];
        request.response_format =
            ResponseFormat::JsonSchema { name: "answer".into(), schema: schema.into(), strict: true };
        let (body, text) = wire(&request).unwrap();
        assert_eq!(
            body["tools"],
            json!([
                {"name": "get_weather", "description": "Weather", "input_schema": serde_json::from_str::<serde_json::Value>(schema).unwrap(), "strict": true},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        // Byte for byte: `1.0` stays `1.0`, in the tool and in the output format.
        assert_eq!(text.matches(schema).count(), 2, "{text}");
        assert_eq!(body["output_config"]["format"]["type"], "json_schema");
        assert!(body.get("tool_choice").is_none());

        for (choice, expected) in [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::None, json!({"type": "none"})),
            (ToolChoice::Required, json!({"type": "any"})),
            (ToolChoice::Named("now".into()), json!({"type": "tool", "name": "now"})),
        ] {
            request.tool_choice = Some(choice);
            assert_eq!(wire(&request).unwrap().0["tool_choice"], expected);
        }

        request.response_format = ResponseFormat::JsonObject;
        assert!(refusal(&request).contains("json_schema"));
    }

    #[test]
    fn tool_results_start_the_next_user_turn_in_call_order() {
        let signed =
            Part::Thinking(Thinking { text: "Two calls.".into(), signature: b"c2ln".to_vec(), redacted: false });
        let redacted = Part::Thinking(Thinking { text: String::new(), signature: b"opaque".to_vec(), redacted: true });
        let request = chat(vec![
            Message::text(Role::User, "Weather in Paris and Rome?"),
            msg(
                Role::Assistant,
                vec![
                    signed,
                    redacted,
                    Part::Text("Checking.".into()),
                    call("toolu_a", "w", ARGS),
                    call("toolu_b", "w", ""),
                ],
            ),
            Message::tool_result("toolu_b", "rain"),
            Message::text(Role::System, "Be brief."),
            Message::tool_result("toolu_a", "sun"),
            Message::text(Role::User, "Thanks"),
        ]);
        let (body, text) = wire(&request).unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two calls.", "signature": "c2ln"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {"id": 9007199254740993u64, "x": 1.0}},
                    {"type": "tool_use", "id": "toolu_b", "name": "w", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sun"},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "content": "rain"},
                    {"type": "text", "text": "Thanks"},
                ]},
            ])
        );
        assert!(text.contains(&format!(r#""input":{ARGS}"#)), "arguments not byte-exact: {text}");
        assert_eq!(body["system"], "Be brief.");
    }

    #[test]
    fn ids_outside_anthropics_alphabet_are_rewritten_the_same_in_call_and_result() {
        let request = chat(vec![
            Message::text(Role::User, "go"),
            msg(Role::Assistant, vec![call("functions.Bash:0", "Bash", "{}"), call("functions.Bash:1", "Bash", "{}")]),
            Message::tool_result("functions.Bash:1", "b"),
            Message::tool_result("functions.Bash:0", "a"),
        ]);
        let (body, _) = wire(&request).unwrap();
        let uses: Vec<&str> =
            body["messages"][1]["content"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
        let results: Vec<&str> = body["messages"][2]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["tool_use_id"].as_str().unwrap())
            .collect();
        assert_eq!(uses, results);
        assert_ne!(uses[0], uses[1]);
        for id in uses {
            assert!(
                id.starts_with("functions_Bash_")
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
        }
        assert_eq!(wire_id("toolu_01-AbC"), "toolu_01-AbC");
        assert_eq!(wire_id("a.b"), wire_id("a.b"));
        assert_ne!(wire_id("a.b"), wire_id("a:b"));
        assert!(!wire_id("").is_empty());
    }

    fn thinking_request(amount: ReasoningAmount, include_thoughts: bool, max_tokens: Option<u32>) -> ChatRequest {
        let mut request = chat(vec![Message::text(Role::User, "think")]);
        request.reasoning = Some(Reasoning::On { amount, include_thoughts });
        request.options.max_tokens = max_tokens;
        request
    }

    #[test]
    fn reasoning_becomes_a_thinking_budget_below_max_tokens() {
        let body = |amount, include, max| wire(&thinking_request(amount, include, max)).unwrap().0;
        let on = body(ReasoningAmount::BudgetTokens(2000), true, Some(5000));
        assert_eq!(on["thinking"], json!({"type": "enabled", "budget_tokens": 2000}));
        assert_eq!(on["max_tokens"], 5000);
        // Without max_tokens the answer keeps the default on top of the budget.
        let default = body(ReasoningAmount::Default, false, None);
        assert_eq!(default["thinking"], json!({"type": "enabled", "budget_tokens": 8192, "display": "omitted"}));
        assert_eq!(default["max_tokens"], 8192 + 4096);
        let high = body(ReasoningAmount::Effort(Effort::High), true, None);
        assert_eq!(high["thinking"]["budget_tokens"], 24_576);
        // A budget from an effort shrinks to fit a small max_tokens.
        let fitted = body(ReasoningAmount::Effort(Effort::Medium), true, Some(3000));
        assert_eq!(
            (fitted["thinking"]["budget_tokens"].as_u64(), fitted["max_tokens"].as_u64()),
            (Some(2999), Some(3000))
        );

        let mut off = chat(vec![Message::text(Role::User, "x")]);
        off.reasoning = Some(Reasoning::Off);
        assert_eq!(wire(&off).unwrap().0["thinking"], json!({"type": "disabled"}));

        let message = refusal(&thinking_request(ReasoningAmount::BudgetTokens(512), true, None));
        assert!(message.contains("at least 1024") && message.contains("512"), "{message}");
        let message = refusal(&thinking_request(ReasoningAmount::BudgetTokens(4000), true, Some(4000)));
        assert!(message.contains("max_tokens is 4000") && message.contains("budget 4000"), "{message}");
        let message = refusal(&thinking_request(ReasoningAmount::Effort(Effort::Low), true, Some(1024)));
        assert!(message.contains("max_tokens is 1024"), "{message}");

        let mut forced = thinking_request(ReasoningAmount::Default, true, None);
        forced.tools = vec![Tool { name: "f".into(), ..Default::default() }];
        forced.tool_choice = Some(ToolChoice::Named("f".into()));
        assert!(refusal(&forced).contains("cannot force a tool call"));
        forced.tool_choice = Some(ToolChoice::Required);
        assert!(refusal(&forced).contains("while thinking is on"));
        forced.tool_choice = Some(ToolChoice::Auto);
        assert_eq!(wire(&forced).unwrap().0["tool_choice"], json!({"type": "auto"}));
    }

    #[test]
    fn thinking_without_anthropics_signature_is_refused() {
        let unsigned = Part::Thinking(Thinking { text: "hmm".into(), ..Default::default() });
        let request = chat(vec![
            Message::text(Role::User, "a"),
            msg(Role::Assistant, vec![unsigned]),
            Message::text(Role::User, "b"),
        ]);
        let message = refusal(&request);
        assert!(message.contains("message 1") && message.contains("without a signature"), "{message}");
    }

    #[test]
    fn images_go_as_base64_or_url_sources() {
        let png = Part::Image(Image {
            source: ImageSourceData::Data(b"\x89PNG\r\n".to_vec()),
            mime_type: "image/png".into(),
        });
        let url = Part::Image(Image {
            source: ImageSourceData::Url("https://example.com/a.jpg".into()),
            mime_type: String::new(),
        });
        let request = chat(vec![msg(Role::User, vec![Part::Text("What is this?".into()), png, url])]);
        assert_eq!(
            wire(&request).unwrap().0["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ])
        );
        for (raw, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("\u{ff}", "w78=")]
        {
            assert_eq!(base64(raw.as_bytes()), encoded, "{raw:?}");
        }
    }

    fn start(index: u64, block: serde_json::Value) -> (&'static str, serde_json::Value) {
        ("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": block}))
    }

    fn delta(index: u64, delta: serde_json::Value) -> (&'static str, serde_json::Value) {
        ("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
    }

    fn stop(index: u64) -> (&'static str, serde_json::Value) {
        ("content_block_stop", json!({"type": "content_block_stop", "index": index}))
    }

    fn piece(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Decoded {
        Decoded::ToolCall(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
            signature: vec![],
        })
    }

    #[test]
    fn tool_use_blocks_become_calls_numbered_apart_from_other_blocks() {
        let decoded = decode_all(&[
            start(0, json!({"type": "thinking", "thinking": "", "signature": ""})),
            delta(0, json!({"type": "thinking_delta", "thinking": "Two calls"})),
            delta(0, json!({"type": "signature_delta", "signature": "EqQB"})),
            stop(0),
            start(1, json!({"type": "text", "text": ""})),
            delta(1, json!({"type": "text_delta", "text": "Checking."})),
            stop(1),
            start(2, json!({"type": "tool_use", "id": "toolu_a", "name": "w", "input": {}})),
            delta(2, json!({"type": "input_json_delta", "partial_json": "{\"ci"})),
            delta(2, json!({"type": "input_json_delta", "partial_json": "ty\":1.0}"})),
            stop(2),
            start(3, json!({"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}})),
            delta(3, json!({"type": "input_json_delta", "partial_json": ""})),
            stop(3),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]);
        let events: Vec<&Decoded> = decoded.iter().filter(|d| **d != Decoded::Skip).collect();
        assert_eq!(
            events,
            [
                &Decoded::Thinking(ThinkingDelta::Text("Two calls".into())),
                &Decoded::Thinking(ThinkingDelta::Signature(b"EqQB".to_vec())),
                &Decoded::Delta("Checking.".into()),
                &piece(0, Some("toolu_a"), Some("w"), ""),
                &piece(0, None, None, "{\"ci"),
                &piece(0, None, None, "ty\":1.0}"),
                &piece(1, Some("toolu_b"), Some("now"), ""),
                &Decoded::Done(Completion {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Usage { output_tokens: 9, ..Default::default() },
                    ..Default::default()
                }),
            ]
        );
    }

    #[test]
    fn arguments_split_at_any_byte_reassemble_exactly() {
        let arguments = r#"{"id":9007199254740993,"x":1.0,"s":"é\"\\"}"#;
        for at in 0..=arguments.len() {
            if !arguments.is_char_boundary(at) {
                continue;
            }
            let decoded = decode_all(&[
                start(0, json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})),
                delta(0, json!({"type": "input_json_delta", "partial_json": &arguments[..at]})),
                delta(0, json!({"type": "input_json_delta", "partial_json": &arguments[at..]})),
                stop(0),
            ]);
            let joined: String = decoded
                .iter()
                .filter_map(|d| if let Decoded::ToolCall(c) = d { Some(c.arguments.as_str()) } else { None })
                .collect();
            assert_eq!(joined, arguments, "split at {at}");
        }
    }

    #[test]
    fn a_whole_input_at_the_start_is_kept_and_redacted_thinking_is_whole() {
        let decoded = decode_all(&[
            start(0, json!({"type": "redacted_thinking", "data": "EmwKAhgBEgy"})),
            stop(0),
            start(1, json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}})),
            stop(1),
        ]);
        assert_eq!(decoded[0], Decoded::Thinking(ThinkingDelta::Redacted(b"EmwKAhgBEgy".to_vec())));
        assert_eq!(decoded[2], piece(0, Some("toolu_1"), Some("f"), r#"{"a":1}"#));
    }

    #[test]
    fn deltas_outside_their_blocks_are_protocol_errors() {
        let failed = |events: &[(&str, serde_json::Value)]| match decode_all(events).pop() {
            Some(Decoded::Failed(ProviderError::Protocol(message))) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        };
        let message = failed(&[delta(4, json!({"type": "input_json_delta", "partial_json": "{"}))]);
        assert!(message.contains("content block 4 that is not open"), "{message}");
        let message =
            failed(&[start(0, json!({"type": "text"})), delta(0, json!({"type": "thinking_delta", "thinking": "x"}))]);
        assert!(message.contains("thinking_delta inside a Text block"), "{message}");
        let message = failed(&[
            start(0, json!({"type": "thinking"})),
            delta(0, json!({"type": "signature_delta", "signature": "s"})),
            start(1, json!({"type": "text"})),
        ]);
        assert!(message.contains("before the thinking block"), "{message}");
        let message = failed(&[start(0, json!({"type": "redacted_thinking"}))]);
        assert!(message.contains("without data"), "{message}");

        let mut state = StreamState::new(None, 8);
        decode_event(
            "content_block_start",
            &json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking"}}).to_string(),
            &mut state,
        );
        let long =
            json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"123456789"}});
        assert!(
            matches!(decode_event("content_block_delta", &long.to_string(), &mut state), Decoded::Failed(ProviderError::Protocol(m)) if m.contains("longer than 8"))
        );
    }

    #[test]
    fn models_report_what_the_capabilities_object_says() {
        let model: WireModel = serde_json::from_value(json!({
            "id": "claude-opus-4-5", "max_input_tokens": 200000,
            "capabilities": {"image_input": {"supported": true}, "structured_outputs": {"supported": true},
                             "thinking": {"supported": true, "types": {}}, "batch": {"supported": true}},
        }))
        .unwrap();
        let info = AnthropicModel::from(model).into_model_info();
        assert_eq!(info.context_length, Some(200_000));
        assert_eq!(info.capabilities, ["completion", "tools", "vision", "image_urls", "json_schema", "thinking"]);
    }

    #[test]
    fn adaptive_thinking_is_effort_and_refusals_name_what_the_model_lacks() {
        let mut request = thinking_request(ReasoningAmount::BudgetTokens(20_000), false, None);
        let body = |request: &ChatRequest| {
            serde_json::to_value(MessagesBody::new(request, 4096, ThinkingStyle::Adaptive).unwrap()).unwrap()
        };
        let adaptive = body(&request);
        assert_eq!(adaptive["thinking"], json!({"type": "adaptive", "display": "omitted"}));
        assert_eq!(adaptive["output_config"], json!({"effort": "high"}));
        assert_eq!(adaptive["max_tokens"], 4096);
        request.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: true });
        request.response_format = ResponseFormat::JsonSchema { name: "a".into(), schema: "{}".into(), strict: true };
        let adaptive = body(&request);
        assert_eq!(adaptive["thinking"], json!({"type": "adaptive"}));
        assert_eq!(adaptive["output_config"], json!({"format": {"type": "json_schema", "schema": {}}}));

        let refusal = "\"thinking.type.enabled\" is not supported for this model. Use \"thinking.type.adaptive\" and \
                       \"output_config.effort\" to control thinking behavior.";
        assert!(wants_adaptive_thinking(refusal));
        assert_eq!(unsupported_feature(refusal), None);
        assert_eq!(unsupported_feature("'claude-3-haiku' does not support thinking"), Some(Feature::Thinking));
        assert_eq!(
            unsupported_feature("output_config.format is not supported for this model"),
            Some(Feature::JsonSchema)
        );
        assert_eq!(unsupported_feature("messages.0: max_tokens: Field required"), None);
    }
}
