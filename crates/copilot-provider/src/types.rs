//! Provider-independent request and response types.

use std::time::Duration;

/// A validated chat request addressed to one provider. `model` is the provider's own model name
/// (the part after `provider/` in a client's model name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub options: GenerationOptions,
    /// W3C trace context headers (`traceparent`, `tracestate`) that HTTP adapters send upstream,
    /// so an instrumented upstream joins the caller's trace. Empty when tracing is off.
    pub trace_context: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The lowercase name most chat APIs use on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Sampling and length controls. `None` means "the model's own default"; values were range-checked
/// by the server before an adapter sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

/// One item of a [`crate::ChatStream`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Text the model added since the previous event (never empty).
    Delta(String),
    /// The end of a successful completion; always the last item.
    Done(Completion),
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
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
}

/// The answer to a health probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// The upstream's version, when it says.
    pub version: Option<String>,
}
