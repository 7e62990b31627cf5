//! The Copilot provider adapter for Ollama's native HTTP API (`/api/chat`, `/api/tags`,
//! `/api/show`, `/api/version`).
//!
//! [`OllamaProvider`] turns a [`ChatRequest`] into one streamed `POST /api/chat` and the NDJSON
//! reply into [`ChatEvent`]s. The wire formats live in `wire.rs`; this module owns the HTTP client,
//! the mapping of HTTP failures to [`ProviderError`], and the lifetime of a streamed response.

mod stream;
mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use copilot_http::{BodyError, DecodedBody, root_cause};
use copilot_provider::{ChatRequest, ChatStream, HealthReport, ModelInfo, Provider, ProviderError};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use crate::stream::StreamDecoder;

/// How to reach one Ollama server.
#[derive(Debug, Clone, PartialEq)]
pub struct OllamaConfig {
    /// e.g. `"http://localhost:11434"`; a trailing slash is tolerated.
    pub base_url: String,
    /// Sent as `keep_alive` with every chat request when set; Ollama's own default (5 minutes)
    /// applies otherwise.
    pub keep_alive: Option<KeepAlive>,
    /// TCP connect timeout for the HTTP client.
    pub connect_timeout: Duration,
}

/// How long Ollama keeps a model in memory after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload this long after the request; `For(Duration::ZERO)` unloads right away.
    For(Duration),
    /// Never unload.
    Forever,
}

impl KeepAlive {
    /// The wire form: whole seconds, or -1 for forever. A fraction of a second rounds up so a
    /// short non-zero keep-alive never turns into "unload now".
    fn as_wire_seconds(self) -> i64 {
        match self {
            KeepAlive::Forever => -1,
            KeepAlive::For(d) => {
                let seconds = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
                i64::try_from(seconds).unwrap_or(i64::MAX)
            }
        }
    }
}

/// Why an [`OllamaConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OllamaConfigError {
    #[error("invalid Ollama base_url {value:?}: {reason}")]
    InvalidBaseUrl { value: String, reason: String },
    #[error("cannot build the HTTP client for Ollama: {0}")]
    HttpClient(String),
}

/// A [`Provider`] backed by one Ollama server. Cheap to share: all requests go through one HTTP
/// client, so connections are pooled and reused.
#[derive(Debug)]
pub struct OllamaProvider {
    client: copilot_http::HttpClient,
    /// Shared with every stream, which names the server in its error messages.
    base_url: Arc<str>,
    keep_alive: Option<i64>,
    chat_url: Url,
    tags_url: Url,
    show_url: Url,
    version_url: Url,
}

impl OllamaProvider {
    pub fn new(config: OllamaConfig) -> Result<Self, OllamaConfigError> {
        let base_url = validate_base_url(&config.base_url)?;
        let endpoint = |path: &str| {
            Url::parse(&format!("{base_url}{path}")).map_err(|e| OllamaConfigError::InvalidBaseUrl {
                value: config.base_url.clone(),
                reason: e.to_string(),
            })
        };
        let (chat_url, tags_url, show_url, version_url) =
            (endpoint("/api/chat")?, endpoint("/api/tags")?, endpoint("/api/show")?, endpoint("/api/version")?);

        let user_agent = concat!("copilot-ollama/", env!("CARGO_PKG_VERSION"));
        let connect_timeout = config.connect_timeout;
        let client = copilot_http::HttpClient::new(move || copilot_http::client_builder(user_agent, connect_timeout))
            .map_err(|e| OllamaConfigError::HttpClient(root_cause(&e)))?;

        Ok(OllamaProvider {
            client,
            base_url: base_url.into(),
            keep_alive: config.keep_alive.map(KeepAlive::as_wire_seconds),
            chat_url,
            tags_url,
            show_url,
            version_url,
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends a request and checks its status; the `model` it concerns turns a 404 into
    /// [`ProviderError::ModelNotFound`].
    async fn send(&self, request: RequestBuilder, model: Option<&str>) -> Result<Response, ProviderError> {
        let response = self.client.send(request).await.map_err(|e| self.send_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from_response(response, model).await)
    }

    /// A whole (non-streamed) JSON response; `what` names it in error messages.
    async fn fetch_json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        model: Option<&str>,
        what: &str,
    ) -> Result<T, ProviderError> {
        let response = self.send(request, model).await?;
        copilot_http::read_json(response, None).await.map_err(|err| match err {
            BodyError::Read(cause) => ProviderError::Interrupted(format!(
                "connection lost to Ollama at {} while reading {what}: {cause}",
                self.base_url
            )),
            BodyError::Parse { error, excerpt } => {
                ProviderError::Protocol(format!("unexpected {what} from Ollama ({error}): {excerpt}"))
            }
        })
    }

    /// A request that got no response at all: the server is down, unknown, or hung up.
    fn send_error(&self, err: &reqwest::Error) -> ProviderError {
        copilot_http::send_error(err, &format!("Ollama at {}", self.base_url), &root_cause(err))
    }
}

#[async_trait::async_trait]
impl Provider for OllamaProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let body = wire::ChatBody::new(&request, self.keep_alive);
        let response = self
            .send(
                copilot_http::with_trace_context(self.client.post(self.chat_url.clone()), &request).json(&body),
                Some(&request.model),
            )
            .await?;
        tracing::debug!(model = %request.model, base_url = %self.base_url, "Ollama accepted the chat request");
        let decoder = StreamDecoder::new(self.base_url.clone());
        Ok(copilot_http::chat_stream(DecodedBody::new(response, decoder, "Ollama", self.base_url.clone(), DRAIN_GRACE)))
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let tags: wire::TagsResponse =
            self.fetch_json(self.client.get(self.tags_url.clone()), None, "model list").await?;
        Ok(tags.into_models())
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        let request = self.client.post(self.show_url.clone()).json(&wire::ShowBody { model });
        let show: wire::ShowResponse = self.fetch_json(request, Some(model), "model description").await?;
        Ok(show.into_model(model))
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        let version: wire::VersionResponse =
            self.fetch_json(self.client.get(self.version_url.clone()), None, "version").await?;
        Ok(HealthReport { version: version.version })
    }
}

/// The base URL as given minus any trailing slash, once it is known to be an http(s) URL.
fn validate_base_url(raw: &str) -> Result<String, OllamaConfigError> {
    let invalid = |reason: String| OllamaConfigError::InvalidBaseUrl { value: raw.to_owned(), reason };
    let trimmed = raw.trim().trim_end_matches('/');
    let url = copilot_http::parse_base_url(trimmed, "http://localhost:11434").map_err(invalid)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL cannot carry a query or fragment".into()));
    }
    Ok(trimmed.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// How long to wait, after the final chunk, for the rest of the body (the end of the chunked
/// encoding, which Ollama sends right after). Reading it lets the connection go back to the pool;
/// dropping a body that is still open closes the connection instead.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Errors

/// Turns a non-2xx response into the matching [`ProviderError`].
async fn error_from_response(mut response: Response, model: Option<&str>) -> ProviderError {
    let status = response.status();
    let retry_after = copilot_http::retry_after(response.headers(), SystemTime::now());
    let body = copilot_http::read_error_body(&mut response).await;
    let mut message = wire::error_message(&body);
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no error message").to_owned();
    }
    tracing::debug!(status = status.as_u16(), %message, "Ollama refused the request");
    status_error(status, message, retry_after, model)
}

fn status_error(
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    model: Option<&str>,
) -> ProviderError {
    match (status.as_u16(), model) {
        (400 | 422, _) => ProviderError::InvalidRequest(message),
        (401 | 403, _) => ProviderError::Unauthorized(message),
        // Ollama's wording of "not found" varies by version and endpoint; the status does not.
        (404, Some(model)) => ProviderError::ModelNotFound { model: model.to_owned() },
        (429, _) => ProviderError::RateLimited { message, retry_after },
        (503, _) => ProviderError::Overloaded { message, retry_after },
        (status, _) => ProviderError::Upstream { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn statuses_map_to_provider_errors() {
        let map = |code, model| status_error(status(code), "msg".into(), None, model);
        assert_eq!(map(400, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(422, Some("m")), ProviderError::InvalidRequest("msg".into()));
        assert_eq!(map(401, Some("m")), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(403, None), ProviderError::Unauthorized("msg".into()));
        assert_eq!(map(404, Some("llama3:8b")), ProviderError::ModelNotFound { model: "llama3:8b".into() });
        // A 404 from an endpoint that names no model means the URL is not an Ollama API.
        assert_eq!(map(404, None), ProviderError::Upstream { status: 404, message: "msg".into() });
        assert_eq!(map(429, None), ProviderError::RateLimited { message: "msg".into(), retry_after: None });
        assert_eq!(map(503, None), ProviderError::Overloaded { message: "msg".into(), retry_after: None });
        assert_eq!(map(500, Some("m")), ProviderError::Upstream { status: 500, message: "msg".into() });
        assert_eq!(map(502, Some("m")), ProviderError::Upstream { status: 502, message: "msg".into() });
    }

    #[test]
    fn retry_after_is_carried_on_429_and_503() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(status_error(status(429), "m".into(), wait, None).retry_after(), wait);
        assert_eq!(status_error(status(503), "m".into(), wait, None).retry_after(), wait);
    }

    #[test]
    fn keep_alive_wire_forms() {
        assert_eq!(KeepAlive::For(Duration::ZERO).as_wire_seconds(), 0);
        assert_eq!(KeepAlive::Forever.as_wire_seconds(), -1);
        assert_eq!(KeepAlive::For(Duration::from_secs(300)).as_wire_seconds(), 300);
        assert_eq!(KeepAlive::For(Duration::from_millis(1500)).as_wire_seconds(), 2);
        assert_eq!(KeepAlive::For(Duration::from_millis(1)).as_wire_seconds(), 1);
    }

    fn config(base_url: &str) -> OllamaConfig {
        OllamaConfig { base_url: base_url.into(), keep_alive: None, connect_timeout: Duration::from_secs(1) }
    }

    #[test]
    fn base_url_is_validated_and_normalized() {
        let provider = OllamaProvider::new(config("http://localhost:11434/")).unwrap();
        assert_eq!(provider.base_url(), "http://localhost:11434");
        assert_eq!(provider.chat_url.as_str(), "http://localhost:11434/api/chat");
        let provider = OllamaProvider::new(config("https://gpu-box.example/ollama")).unwrap();
        assert_eq!(provider.version_url.as_str(), "https://gpu-box.example/ollama/api/version");

        for bad in ["localhost:11434", "ftp://host", "not a url", "", "http://host/?x=1"] {
            let err = OllamaProvider::new(config(bad)).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
