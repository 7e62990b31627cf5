//! What a conversation holds beyond text, and what a request asks of the model beyond sampling:
//! message parts (images, tool calls, thinking), tools, tool choice, response format, reasoning.
//! JSON the model or the client wrote (arguments, schemas) stays text, exactly as written: parsing
//! it into values would lose what a 64-bit integer or `1.0` says.

/// One piece of a message, in the order the message holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A call the model made in an earlier turn (assistant messages only).
    ToolCall(ToolCall),
    /// Thinking the model did in an earlier turn (assistant messages only), with its signature.
    Thinking(Thinking),
}

/// An image in a user message. Validated at the edge: the MIME type is one of
/// [`IMAGE_MIME_TYPES`] and matches the bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    pub source: ImageSource,
    /// `image/png`, `image/jpeg`, `image/webp` or `image/gif`; for a URL, possibly empty.
    pub mime_type: String,
}

#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub enum ImageSource {
    /// The image file's bytes.
    Data(#[serde(serialize_with = "as_bytes")] Vec<u8>),
    /// An `http(s)://` URL the provider fetches itself.
    Url(String),
}

impl std::fmt::Debug for ImageSource {
    // Megabytes of image in a log line help nobody.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Data(bytes) => write!(f, "Data({} bytes)", bytes.len()),
            ImageSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
        }
    }
}

/// Bytes serialized as bytes (`serialize_bytes`), not as a sequence of numbers: the response
/// cache's key (`src/cache/key.rs` in the server) hashes them as they are.
fn as_bytes<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// The image types every provider that sees images accepts (llama.cpp's stb_image aside, which
/// reads no WebP).
pub const IMAGE_MIME_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/webp", "image/gif"];

/// A complete tool call.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ToolCall {
    /// Unique in the conversation: the upstream's, or made up by the server when it gave none.
    pub id: String,
    pub name: String,
    /// The arguments' JSON text, exactly as the model wrote it (`{}` for none).
    pub arguments: String,
    /// Gemini's `thoughtSignature` that came with the call; empty otherwise.
    #[serde(serialize_with = "as_bytes")]
    pub signature: Vec<u8>,
}

/// A block of the model's thinking.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Thinking {
    /// May be empty (thoughts withheld, or redacted).
    pub text: String,
    /// The provider's opaque signature, returned unchanged; empty when it gave none.
    #[serde(serialize_with = "as_bytes")]
    pub signature: Vec<u8>,
    /// Anthropic's `redacted_thinking`: the data is in `signature`.
    pub redacted: bool,
}

/// A tool the model may call. Validated at the edge: the name is 1–64 of `[A-Za-z0-9_-]`, unique
/// in the request, and `parameters` is a JSON object's text.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments, as the client wrote it; `None` when the tool takes none.
    pub parameters: Option<String>,
    pub strict: bool,
}

/// What the model must do with the request's tools.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ToolChoice {
    Auto,
    /// No tool calls: answer in text.
    None,
    /// At least one tool call.
    Required,
    /// A call of this tool (one of the request's).
    Named(String),
}

/// The shape of the answer's text.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against `schema` (a JSON Schema object's text, as the client wrote it).
    JsonSchema { name: String, schema: String, strict: bool },
}

/// Whether and how hard the model thinks. A request without one leaves it to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Reasoning {
    Off,
    On { amount: ReasoningAmount, include_thoughts: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum ReasoningAmount {
    /// The model's default.
    #[default]
    Default,
    Effort(Effort),
    /// At least 1.
    BudgetTokens(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Effort {
    Low,
    Medium,
    High,
}

impl Effort {
    /// As OpenAI's `reasoning_effort` and Gemini's `thinkingLevel` (lowercased) write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// A token budget for providers that take budgets rather than levels (Anthropic's minimum
    /// budget is 1,024).
    pub fn budget_tokens(self) -> u32 {
        match self {
            Effort::Low => 1_024,
            Effort::Medium => 8_192,
            Effort::High => 24_576,
        }
    }

    /// The level nearest a token budget, for providers that take levels.
    pub fn from_budget(tokens: u32) -> Effort {
        match tokens {
            0..=2_047 => Effort::Low,
            2_048..=16_383 => Effort::Medium,
            _ => Effort::High,
        }
    }
}

/// A piece of a tool call in a stream, as an adapter decodes it. The server turns these into what
/// clients get: the first piece of an index always with its id and name (making up an id when the
/// upstream gave none), later pieces without, and `{}` for a call whose arguments never came.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    /// Which call of the answer, from 0 in the order the calls began.
    pub index: u32,
    /// The upstream's id, on the piece that carried it.
    pub id: Option<String>,
    /// The tool's name, on the piece that carried it (the first piece of an index must).
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text, exactly as it came (may be empty).
    pub arguments: String,
    /// Gemini's `thoughtSignature` for this call, on the piece that carried it.
    pub signature: Vec<u8>,
}

/// A piece of thinking in a stream: text, or the signature that closes the block streamed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingDelta {
    Text(String),
    /// Closes the current block (or, with no text before it, is a block of its own).
    Signature(Vec<u8>),
    /// Anthropic's `redacted_thinking` block, whole: its opaque data.
    Redacted(Vec<u8>),
}

/// What a request asks of a model beyond text; each is one an adapter says it can translate
/// ([`Features`]), so a request is refused, not silently degraded, where one is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Tools,
    JsonObject,
    JsonSchema,
    Thinking,
    /// Turning thinking off for a model that thinks by default.
    ThinkingOff,
    Images,
    ImageUrls,
    /// Embedding texts (`Provider::embed`).
    Embeddings,
    /// Chat completions: every adapter translates them; only a model can lack them (an
    /// embedding-only model), which its upstream says.
    Completion,
    /// Embeddings shortened to a requested number of dimensions.
    EmbeddingDimensions,
    /// Counting a conversation's input tokens (`Provider::count_tokens`): a provider's counting
    /// endpoint, not an estimate made here.
    CountTokens,
}

impl Feature {
    pub const ALL: [Feature; 11] = [
        Feature::Tools,
        Feature::JsonObject,
        Feature::JsonSchema,
        Feature::Thinking,
        Feature::ThinkingOff,
        Feature::Images,
        Feature::ImageUrls,
        Feature::Embeddings,
        Feature::EmbeddingDimensions,
        Feature::Completion,
        Feature::CountTokens,
    ];

    /// The name in `Model.capabilities` and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Tools => "tools",
            Feature::JsonObject => "json_object",
            Feature::JsonSchema => "json_schema",
            Feature::Thinking => "thinking",
            Feature::ThinkingOff => "thinking_off",
            Feature::Images => "vision",
            Feature::ImageUrls => "image_urls",
            Feature::Embeddings => "embedding",
            Feature::EmbeddingDimensions => "embedding_dimensions",
            Feature::Completion => "completion",
            Feature::CountTokens => "count_tokens",
        }
    }

    /// What a person reads in an error: "tool calling", "images given as URLs", …
    pub fn describe(self) -> &'static str {
        match self {
            Feature::Tools => "tool calling",
            Feature::JsonObject => "JSON output (response_format json_object)",
            Feature::JsonSchema => "JSON Schema output (response_format json_schema)",
            Feature::Thinking => "reasoning (thinking)",
            Feature::ThinkingOff => "turning reasoning off",
            Feature::Images => "images",
            Feature::ImageUrls => "images given as URLs",
            Feature::Embeddings => "embeddings",
            Feature::EmbeddingDimensions => "embeddings of a chosen dimension",
            Feature::Completion => "chat completions",
            Feature::CountTokens => "token counting",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`Feature`]s: what an adapter can translate, or what a request needs.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(u16);

impl Features {
    /// Text only.
    pub const NONE: Features = Features(0);

    pub fn of(features: &[Feature]) -> Features {
        Features(features.iter().fold(0, |bits, f| bits | f.bit()))
    }

    pub fn with(self, feature: Feature) -> Features {
        Features(self.0 | feature.bit())
    }

    pub fn without(self, feature: Feature) -> Features {
        Features(self.0 & !feature.bit())
    }

    pub fn contains(self, feature: Feature) -> bool {
        self.0 & feature.bit() != 0
    }

    /// The first of `self`'s features `available` lacks.
    pub fn first_missing(self, available: Features) -> Option<Feature> {
        self.iter().find(|f| !available.contains(*f))
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Debug for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Feature::as_str)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_reports_what_another_lacks() {
        let asked = Features::of(&[Feature::Tools, Feature::Images]);
        assert_eq!(asked.first_missing(Features::of(&[Feature::Tools])), Some(Feature::Images));
        assert_eq!(asked.first_missing(asked.with(Feature::Thinking)), None);
        assert_eq!(Features::NONE.first_missing(Features::NONE), None);
        assert_eq!(format!("{asked:?}"), r#"{"tools", "vision"}"#);
        assert!(asked.without(Feature::Tools).without(Feature::Images).is_empty());
    }

    #[test]
    fn effort_and_budget_translate_both_ways() {
        for effort in [Effort::Low, Effort::Medium, Effort::High] {
            assert_eq!(Effort::from_budget(effort.budget_tokens()), effort);
        }
    }

    #[test]
    fn image_bytes_stay_out_of_debug_output() {
        let image = ImageSource::Data(vec![0; 1 << 20]);
        assert_eq!(format!("{image:?}"), "Data(1048576 bytes)");
    }
}
