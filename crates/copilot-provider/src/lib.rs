//! The contract between the Copilot server and its provider adapters.
//!
//! An adapter translates one upstream wire protocol (Ollama, OpenAI-compatible, Gemini, …) into these
//! types. Everything that does not depend on the protocol — validation, routing, deadlines, retries,
//! error mapping to gRPC — lives in the server, so an adapter stays a plain translation.

mod assemble;
mod content;
mod error;
mod retry_after;
mod secret;
mod types;

pub use assemble::AssembledTurn;
pub use content::*;
pub use error::ProviderError;
pub use retry_after::{
    MAX_RETRY_AFTER, clamp_retry_after, parse_retry_after, parse_retry_after_ms, retry_after_from_secs_f64,
};
pub use secret::Secret;
pub use types::*;

pub use async_trait::async_trait;
use futures::stream::BoxStream;

/// A streamed chat completion: text deltas, then exactly one [`ChatEvent::Done`] as the last item.
///
/// The stream owns the upstream request: dropping it must cancel the upstream work (for HTTP
/// upstreams, by dropping the response body so the connection closes).
pub type ChatStream = BoxStream<'static, Result<ChatEvent, ProviderError>>;

/// One upstream an adapter talks to (an Ollama host, a vLLM cluster, an embedded engine, …).
///
/// Implementations must be cheap to share (`Arc<dyn Provider>`) and safe to call concurrently.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Starts a chat completion. Returns once the upstream has accepted the request (HTTP status
    /// received), so that refusals (unknown model, overload) surface here rather than in the stream.
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError>;

    /// Every model this upstream can serve now, with whatever details the listing carries cheaply.
    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError>;

    /// Everything known about one model (context length, family, quantization, capabilities).
    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError>;

    /// A cheap liveness probe of the upstream.
    async fn health(&self) -> Result<HealthReport, ProviderError>;

    /// What this adapter can translate beyond text. The server refuses (or, for an alias, skips)
    /// a request needing anything else, so [`chat`](Self::chat) never sees one; a model that
    /// cannot do what its adapter can is refused by the upstream, which the adapter reports as
    /// [`ProviderError::Unsupported`] where it can tell.
    fn features(&self) -> Features {
        Features::NONE
    }

    /// Why this adapter lacks `feature`, when there is more to say than that it cannot translate
    /// it (e.g. "Anthropic has no embeddings API"): the refusal's message.
    fn lacking(&self, feature: Feature) -> Option<&'static str> {
        let _ = feature;
        None
    }

    /// Embeds the request's inputs, splitting them into the upstream's own batch limit and
    /// returning one vector per input, in order. Called only for adapters that declare
    /// [`Feature::Embeddings`].
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported {
            feature: Feature::Embeddings,
            message: "this provider has no embeddings API".into(),
        })
    }

    /// Counts the input tokens `request` (its messages, system prompt and tools; it carries no
    /// generation options) would take on `request.model`, with the upstream's own counting
    /// endpoint. Called only for adapters that declare [`Feature::CountTokens`]; an adapter
    /// without such an endpoint keeps this default rather than guess.
    async fn count_tokens(&self, request: ChatRequest) -> Result<TokenCount, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported {
            feature: Feature::CountTokens,
            message: "this provider has no token-counting endpoint".into(),
        })
    }
}
