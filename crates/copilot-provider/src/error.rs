//! The one error type adapters return. The server maps it to a gRPC status in one place.

use std::time::Duration;

/// Why a provider call failed, in terms the server can act on (retry, fall back, map to a status).
///
/// Messages must never contain secrets (API keys, auth headers); adapters pass upstream error
/// text through only after making sure of that.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The upstream rejected the request as malformed or unsupported (HTTP 400-class).
    #[error("the upstream rejected the request: {0}")]
    InvalidRequest(String),

    /// The named model does not exist at this upstream (HTTP 404).
    #[error("model '{model}' not found")]
    ModelNotFound { model: String },

    /// The upstream refused our credentials (HTTP 401/403).
    #[error("the upstream refused the gateway's credentials: {0}")]
    Unauthorized(String),

    /// Rate limited (HTTP 429).
    #[error("rate limited by the upstream: {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },

    /// The upstream is up but cannot take more work now (HTTP 503, queue full, model loading).
    #[error("the upstream is overloaded: {message}")]
    Overloaded { message: String, retry_after: Option<Duration> },

    /// The provider has no capacity left for this request (every slot busy, queue full).
    #[error("the provider is at capacity: {message}")]
    CapacityExhausted { message: String, retry_after: Option<Duration> },

    /// The model exists but cannot be used: a corrupt or truncated file, a load failure.
    #[error("the model cannot be used: {0}")]
    ModelUnusable(String),

    /// The upstream could not be reached or the connection failed before a response.
    #[error("cannot reach the upstream: {0}")]
    Unreachable(String),

    /// The upstream answered with a server error (HTTP 5xx other than 503).
    #[error("the upstream failed with HTTP {status}: {message}")]
    Upstream { status: u16, message: String },

    /// The upstream reported an error inside a stream that had already started.
    #[error("the upstream failed mid-stream: {0}")]
    MidStream(String),

    /// The connection dropped or the stream ended before the upstream said it was done.
    #[error("the upstream stream ended early: {0}")]
    Interrupted(String),

    /// The upstream sent something that does not follow its own protocol.
    #[error("the upstream sent a malformed response: {0}")]
    Protocol(String),

    /// The model cannot do what the request asks (the upstream said so, e.g. Ollama's "does not
    /// support tools"): `message` says it in the upstream's words.
    #[error("the model cannot do {}: {message}", .feature.describe())]
    Unsupported { feature: crate::Feature, message: String },
}

impl ProviderError {
    /// The same error with `key` masked in its message, which may carry upstream text. A
    /// backstop: upstream text is masked where it is quoted, before it is shortened
    /// (`copilot_http::quote`), since a key cut in two by the shortening is no longer found.
    pub fn redacted(self, key: Option<&crate::Secret>) -> ProviderError {
        let Some(key) = key else { return self };
        match self {
            ProviderError::InvalidRequest(message) => ProviderError::InvalidRequest(key.redact(&message)),
            ProviderError::ModelNotFound { model } => ProviderError::ModelNotFound { model: key.redact(&model) },
            ProviderError::Unauthorized(message) => ProviderError::Unauthorized(key.redact(&message)),
            ProviderError::RateLimited { message, retry_after } => {
                ProviderError::RateLimited { message: key.redact(&message), retry_after }
            }
            ProviderError::Overloaded { message, retry_after } => {
                ProviderError::Overloaded { message: key.redact(&message), retry_after }
            }
            ProviderError::CapacityExhausted { message, retry_after } => {
                ProviderError::CapacityExhausted { message: key.redact(&message), retry_after }
            }
            ProviderError::ModelUnusable(message) => ProviderError::ModelUnusable(key.redact(&message)),
            ProviderError::Unreachable(message) => ProviderError::Unreachable(key.redact(&message)),
            ProviderError::Upstream { status, message } => {
                ProviderError::Upstream { status, message: key.redact(&message) }
            }
            ProviderError::MidStream(message) => ProviderError::MidStream(key.redact(&message)),
            ProviderError::Interrupted(message) => ProviderError::Interrupted(key.redact(&message)),
            ProviderError::Protocol(message) => ProviderError::Protocol(key.redact(&message)),
            ProviderError::Unsupported { feature, message } => {
                ProviderError::Unsupported { feature, message: key.redact(&message) }
            }
        }
    }

    /// The Retry-After hint the upstream gave, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Overloaded { retry_after, .. }
            | ProviderError::CapacityExhausted { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    #[test]
    fn redacted_masks_the_key_in_every_message() {
        let key = Secret::new("sk-very-secret");
        let mid = ProviderError::MidStream("bad key sk-very-secret".into()).redacted(Some(&key));
        assert_eq!(mid, ProviderError::MidStream("bad key ***".into()));
        let protocol = ProviderError::Protocol("echo sk-very-secret".into()).redacted(Some(&key));
        assert_eq!(protocol, ProviderError::Protocol("echo ***".into()));
        let upstream = ProviderError::Upstream { status: 502, message: "sk-very-secret".into() };
        assert_eq!(upstream.redacted(Some(&key)), ProviderError::Upstream { status: 502, message: "***".into() });
        let limited = ProviderError::RateLimited { message: "k=sk-very-secret".into(), retry_after: None };
        assert_eq!(limited.redacted(Some(&key)).to_string(), "rate limited by the upstream: k=***");
        let other = ProviderError::Unreachable("no route".into());
        assert_eq!(other.clone().redacted(Some(&key)), other);
        let unkeyed = ProviderError::MidStream("sk-very-secret".into());
        assert_eq!(unkeyed.clone().redacted(None), unkeyed);
    }
}
