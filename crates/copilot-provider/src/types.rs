//! Provider-independent request and response types.

use std::time::Duration;

use crate::content::*;

/// A validated chat request addressed to one provider. `model` is the provider's own model name
/// (the part after `provider/` in a client's model name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub options: GenerationOptions,
    /// Tools the model may call (names unique, schemas JSON objects).
    pub tools: Vec<Tool>,
    /// `None` leaves it to the provider (auto, when there are tools). Names a tool of `tools`.
    pub tool_choice: Option<ToolChoice>,
    pub response_format: ResponseFormat,
    /// `None` leaves it to the model.
    pub reasoning: Option<Reasoning>,
    /// W3C trace context headers (`traceparent`, `tracestate`) that HTTP adapters send upstream,
    /// so an instrumented upstream joins the caller's trace. Empty when tracing is off.
    pub trace_context: Vec<(String, String)>,
    /// The server collects the whole answer before it replies (`Generate`) rather than relaying
    /// it as it comes (`Chat`): an adapter may read the upstream's answer in larger pieces.
    pub collected: bool,
}

impl ChatRequest {
    /// What the request asks beyond text: an adapter lacking one of these must not see it.
    pub fn needs(&self) -> Features {
        features_needed(&self.messages, &self.tools, self.tool_choice.as_ref(), &self.response_format, self.reasoning)
    }

    /// The name of the tool call `id` answers: the call in an earlier assistant message (the
    /// server checked that there is one).
    pub fn tool_name_of(&self, id: &str) -> Option<&str> {
        self.messages.iter().flat_map(Message::tool_calls).find(|call| call.id == id).map(|call| call.name.as_str())
    }
}

/// What a request made of these asks beyond text (see [`ChatRequest::needs`]; the server asks it
/// of its own validated request before there is a `ChatRequest`).
pub fn features_needed(
    messages: &[Message],
    tools: &[Tool],
    tool_choice: Option<&ToolChoice>,
    response_format: &ResponseFormat,
    reasoning: Option<Reasoning>,
) -> Features {
    let mut needs = Features::NONE;
    if !tools.is_empty() || tool_choice.is_some() {
        needs = needs.with(Feature::Tools);
    }
    match response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => needs = needs.with(Feature::JsonObject),
        ResponseFormat::JsonSchema { .. } => needs = needs.with(Feature::JsonSchema),
    }
    match reasoning {
        None => {}
        Some(Reasoning::Off) => needs = needs.with(Feature::ThinkingOff),
        Some(Reasoning::On { .. }) => needs = needs.with(Feature::Thinking),
    }
    for message in messages {
        if message.role == Role::Tool {
            needs = needs.with(Feature::Tools);
        }
        for part in &message.parts {
            needs = match part {
                Part::Text(_) => needs,
                Part::ToolCall(_) => needs.with(Feature::Tools),
                Part::Thinking(_) => needs.with(Feature::Thinking),
                Part::Image(Image { source: ImageSource::Data(_), .. }) => needs.with(Feature::Images),
                Part::Image(Image { source: ImageSource::Url(_), .. }) => needs.with(Feature::ImageUrls),
            };
        }
    }
    needs
}

/// One message of a conversation: its parts in order. A plain text message is one text part.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// [`Role::Tool`] only: the id of the call this result answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of plain text.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message { role, parts: vec![Part::Text(text.into())], tool_call_id: None }
    }

    /// A tool's result, answering the call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: Role::Tool, parts: vec![Part::Text(content.into())], tool_call_id: Some(id.into()) }
    }

    /// The message's text: its text parts, joined (borrowed when there is one).
    pub fn content(&self) -> std::borrow::Cow<'_, str> {
        let mut texts = self.parts.iter().filter_map(|part| match part {
            Part::Text(text) => Some(text.as_str()),
            _ => None,
        });
        match (texts.next(), texts.next()) {
            (None, _) => std::borrow::Cow::Borrowed(""),
            (Some(only), None) => std::borrow::Cow::Borrowed(only),
            (Some(first), Some(second)) => {
                let mut joined = String::from(first);
                joined.push_str(second);
                texts.for_each(|text| joined.push_str(text));
                std::borrow::Cow::Owned(joined)
            }
        }
    }

    /// Whether the message is nothing but text.
    pub fn is_text_only(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Text(_)))
    }

    /// The tool calls among its parts (an assistant message's).
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.parts.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(call),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result ([`Message::tool_call_id`] names the call).
    Tool,
}

impl Role {
    /// The lowercase name most chat APIs use on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Sampling and length controls. `None` means "the model's own default"; values were range-checked
/// by the server before an adapter sees them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationOptions {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

/// One item of a [`crate::ChatStream`]. The rare large variants are boxed, so the common one, a
/// text delta, moves through every stream of the relay as 40 bytes rather than 144.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Text the model added since the previous event (never empty).
    Delta(String),
    /// A piece of a tool call.
    ToolCall(Box<ToolCallDelta>),
    /// A piece of thinking.
    Thinking(ThinkingDelta),
    /// The end of a successful completion; always the last item.
    Done(Box<Completion>),
}

impl ChatEvent {
    /// The final event of a completion.
    pub fn done(completion: Completion) -> Self {
        Self::Done(Box::new(completion))
    }

    /// A piece of a tool call.
    pub fn tool_call(delta: ToolCallDelta) -> Self {
        Self::ToolCall(Box::new(delta))
    }
}

/// How a completion ended, and what it cost, as the upstream reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub finish_reason: FinishReason,
    /// The model that actually answered, as the upstream names it (may differ from the request,
    /// e.g. a resolved tag or dated snapshot). Empty when the upstream does not say.
    pub model: String,
    pub usage: Usage,
    pub timings: UpstreamTimings,
    /// The upstream's id for this response (OpenAI's chunk id, Anthropic's message id, Gemini's
    /// `responseId`), when it gives one.
    pub response_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FinishReason {
    /// The model stopped on its own, or on a stop sequence.
    #[default]
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The upstream withheld output for safety or policy reasons.
    ContentFilter,
    /// The model stopped for its tool calls to be run. Adapters report what the upstream said;
    /// the server settles it from the calls themselves.
    ToolCalls,
}

/// Token counts. `input_tokens` includes cached ones and `output_tokens` thinking ones, whatever
/// the upstream's own convention (adapters add them up where it counts them apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Of `output_tokens`, those spent thinking, when the upstream reports them.
    pub reasoning_tokens: Option<u32>,
    /// Of `input_tokens`, those read from the upstream's prompt cache, when it reports them.
    pub cached_input_tokens: Option<u32>,
}

/// Durations the upstream measured itself (Ollama reports these in its final chunk). Each is
/// `None` when the upstream does not report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamTimings {
    /// Time spent loading the model before this request could run.
    pub load: Option<Duration>,
    /// Time spent evaluating the prompt.
    pub prompt_eval: Option<Duration>,
    /// Time spent generating output tokens.
    pub generation: Option<Duration>,
    /// The upstream's own wall time for the whole request.
    pub total: Option<Duration>,
}

/// What a provider knows about one model. Fields an upstream does not report stay empty / `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// The provider's own name for the model (without the `provider/` prefix).
    pub name: String,
    pub family: String,
    /// Human-readable parameter count, e.g. `"3.2B"`.
    pub parameter_size: String,
    /// e.g. `"Q4_K_M"`.
    pub quantization: String,
    pub context_length: Option<u32>,
    pub size_bytes: Option<u64>,
    /// e.g. `"completion"`, `"tools"`, `"vision"`, `"thinking"`, `"embedding"`.
    pub capabilities: Vec<String>,
    /// For an embedding model: its vectors' length, when the upstream says.
    pub embedding_length: Option<u32>,
}

/// A validated embedding request addressed to one provider: `model` is the provider's own name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    /// At least one, none empty.
    pub inputs: Vec<String>,
    /// Shorten the vectors to this many dimensions (at least 1); only sent to adapters that
    /// declare [`Feature::EmbeddingDimensions`].
    pub dimensions: Option<u32>,
    pub task: EmbeddingTask,
    /// Cut over-long inputs to the model's context instead of failing.
    pub truncate: bool,
    /// As [`ChatRequest::trace_context`].
    pub trace_context: Vec<(String, String)>,
}

/// What embedding vectors are for (Gemini embeds differently per task; others ignore it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub enum EmbeddingTask {
    #[default]
    Unspecified,
    Query,
    Document,
    SemanticSimilarity,
    Classification,
    Clustering,
}

/// The vectors of an embedding call, one per input in order, as the upstream gave them (the
/// server checks their count and lengths and normalises them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// The model that answered, as the upstream names it; empty when it does not say.
    pub model: String,
    /// Input tokens, when the upstream reports them.
    pub input_tokens: Option<u32>,
}

/// How many input tokens a conversation takes, as an upstream's counting endpoint said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenCount {
    pub input_tokens: u32,
    /// The upstream says its count is exact (false: it says the count is an estimate).
    pub exact: bool,
    /// The model that counted, as the upstream names it; empty when it does not say.
    pub model: String,
}

/// The answer to a health probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// The upstream's version, when it says.
    pub version: Option<String>,
}
