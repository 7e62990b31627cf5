//! One upstream server as an adapter reaches it: the HTTP client, the base URL, the name messages
//! give it and the key to mask in them. Sending, status checks, JSON fetches, error bodies and
//! redaction are written here once; an adapter brings its wire mapping and its status rules
//! ([`Adapter`]).

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use copilot_provider::{ProviderError, Secret};
use futures::TryFutureExt;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{IntoUrl, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::{HttpClient, Reading, excerpt, read_error_body, root_cause};

/// What an adapter adds to its [`Upstream`]: how its protocol's refusals map to errors and, when
/// its credentials are not fixed headers, how a request is sent.
pub trait Adapter: Sync {
    /// The error for a non-2xx response. `model` is the model the request concerned, if any: a
    /// 404 about it is [`ProviderError::ModelNotFound`] where the protocol says so.
    fn refusal(&self, refusal: Refusal<'_>, model: Option<&str>) -> ProviderError;

    /// Sends `request` as it is; Vertex AI adds a fresh token here, and retries once with another.
    fn transmit(
        &self,
        upstream: &Upstream,
        request: RequestBuilder,
        reading: Reading,
    ) -> impl Future<Output = Result<Response, ProviderError>> + Send {
        upstream.transmit(request, reading)
    }
}

/// A non-2xx response, read, for [`Adapter::refusal`].
#[derive(Debug)]
pub struct Refusal<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    /// The start of the body, up to about [`crate::MAX_ERROR_BODY`] bytes.
    pub body: &'a [u8],
    /// When the response arrived: a `Retry-After` date counts from then.
    pub received: SystemTime,
}

impl Refusal<'_> {
    /// What a refusal whose body says nothing is called: the status's reason phrase.
    pub fn reason(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("no error message")
    }
}

/// One upstream server. Cheap to clone (the client's pool and the strings are shared).
#[derive(Debug, Clone)]
pub struct Upstream {
    client: HttpClient,
    /// Without a trailing slash.
    base_url: Arc<str>,
    /// `"Ollama at http://…"`; an OpenAI-compatible server is its base URL alone.
    name: Arc<str>,
    /// How a reply that is not the JSON expected names its source (`"unexpected model list from
    /// …"`): the name, unless the adapter words it otherwise.
    reply_source: Arc<str>,
    /// Masked in every message that quotes upstream text.
    secret: Option<Secret>,
}

impl Upstream {
    /// `label` names the protocol (`"Ollama"`): messages say `"Ollama at {base_url}"`, or just the
    /// base URL without one.
    pub fn new(
        client: HttpClient,
        base_url: impl Into<Arc<str>>,
        label: Option<&'static str>,
        secret: Option<Secret>,
    ) -> Self {
        let base_url: Arc<str> = base_url.into();
        let name: Arc<str> = match label {
            Some(label) => format!("{label} at {base_url}").into(),
            None => base_url.clone(),
        };
        Upstream { client, base_url, reply_source: name.clone(), name, secret }
    }

    /// Names the source of an unexpected reply `source` instead of the upstream's name.
    pub fn with_reply_source(mut self, source: &str) -> Self {
        self.reply_source = source.into();
        self
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The base URL, without a trailing slash; shared with the streams, which name it.
    pub fn base_url(&self) -> &Arc<str> {
        &self.base_url
    }

    /// `"Ollama at http://…"`, as messages name the server.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// `base_url` + `path`, e.g. `/api/chat`; `Err` says why that is no URL.
    pub fn endpoint(&self, path: &str) -> Result<Url, String> {
        Url::parse(&format!("{}{path}", self.base_url)).map_err(|e| e.to_string())
    }

    pub fn get(&self, url: impl IntoUrl) -> RequestBuilder {
        self.client.get(url)
    }

    pub fn post(&self, url: impl IntoUrl) -> RequestBuilder {
        self.client.post(url)
    }

    /// `text` with the key masked.
    pub fn redact(&self, text: &str) -> String {
        crate::redact(text, self.secret.as_ref())
    }

    /// Upstream text for a message: the key masked, then cut to `max` characters ([`crate::quote`]).
    pub fn quote(&self, text: &str, max: usize) -> String {
        crate::quote(text, max, self.secret.as_ref())
    }

    /// Sends `request` as it is, for an answer read as `reading` says; `Err` when no response came
    /// at all (the server is down, unknown, or hung up).
    pub fn transmit(
        &self,
        request: RequestBuilder,
        reading: Reading,
    ) -> impl Future<Output = Result<Response, ProviderError>> + Send {
        self.client.send(request, reading).map_err(|err| {
            let cause = self.redact(&root_cause(&err));
            if err.is_connect() {
                ProviderError::Unreachable(format!("cannot connect to {}: {cause}", self.name))
            } else {
                ProviderError::Unreachable(format!("request to {} failed: {cause}", self.name))
            }
        })
    }

    /// Sends `request` the adapter's way and checks its status ([`check`](Self::check)). The
    /// request goes to the adapter's `transmit` now, so the future holds it once, not at every
    /// level it passes through (an `async` block would also keep a second copy of the transmitting
    /// future beside the one it awaits).
    pub fn send<'a, A: Adapter>(
        &'a self,
        adapter: &'a A,
        request: RequestBuilder,
        model: Option<&'a str>,
        reading: Reading,
    ) -> impl Future<Output = Result<Response, ProviderError>> + Send + 'a {
        adapter.transmit(self, request, reading).and_then(move |response| self.check(adapter, response, model))
    }

    /// A successful response as it is; any other, read and mapped by the adapter's rules.
    pub async fn check<A: Adapter>(
        &self,
        adapter: &A,
        mut response: Response,
        model: Option<&str>,
    ) -> Result<Response, ProviderError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let received = SystemTime::now();
        let body = read_error_body(&mut response).await;
        let refusal = Refusal { status: response.status(), headers: response.headers(), body: &body, received };
        Err(adapter.refusal(refusal, model))
    }

    /// A whole (non-streamed) JSON response, at most [`MAX_JSON_BYTES`]; `what` names it in error
    /// messages.
    pub async fn fetch_json<T: DeserializeOwned, A: Adapter>(
        &self,
        adapter: &A,
        request: RequestBuilder,
        model: Option<&str>,
        what: &str,
    ) -> Result<T, ProviderError> {
        self.fetch_json_within(adapter, request, model, what, MAX_JSON_BYTES).await
    }

    /// As [`fetch_json`](Self::fetch_json), for an answer of at most `max_bytes` (an embedding
    /// answer's bound grows with its inputs). A larger answer is not read: its declared length or
    /// the bytes so far decide, before it could take the memory.
    pub async fn fetch_json_within<T: DeserializeOwned, A: Adapter>(
        &self,
        adapter: &A,
        request: RequestBuilder,
        model: Option<&str>,
        what: &str,
        max_bytes: usize,
    ) -> Result<T, ProviderError> {
        let response = self.send(adapter, request, model, Reading::Whole).await?;
        let body = self.read_within(response, what, max_bytes).await?;
        serde_json::from_slice(&body).map_err(|error| {
            let excerpt = excerpt(&body, 200, self.secret.as_ref());
            ProviderError::Protocol(
                self.redact(&format!("unexpected {what} from {} ({error}): {excerpt}", self.reply_source)),
            )
        })
    }

    /// A whole response body of at most `max_bytes`.
    async fn read_within(
        &self,
        mut response: Response,
        what: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let too_large = || {
            ProviderError::Protocol(format!("{} sent {what} larger than {max_bytes} bytes; it was not read", self.name))
        };
        if response.content_length().is_some_and(|length| length > max_bytes as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len().saturating_add(chunk.len()) > max_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(err) => {
                    return Err(ProviderError::Interrupted(self.redact(&format!(
                        "connection lost to {} while reading {what}: {}",
                        self.name,
                        root_cause(&err)
                    ))));
                }
            }
        }
    }
}

/// The most a whole JSON answer (a model list, a model's description) may hold: far above any
/// real one (a listing of a thousand models is under 1 MiB), low enough that a hostile upstream
/// cannot take the server's memory with one.
pub const MAX_JSON_BYTES: usize = 16 << 20;

/// What an adapter's base URL must be beyond an http(s) URL.
#[derive(Debug, Clone, Copy)]
pub struct BaseUrlRules {
    /// A base URL that would do, for the messages.
    pub example: &'static str,
    /// A last path segment that is tolerated and dropped (Anthropic's `/v1`: paths add their own).
    pub drop_suffix: Option<&'static str>,
    /// Added to the refusal of a query or fragment (`" (the key goes in `api_key`)"`).
    pub query_hint: &'static str,
    /// Why a base URL may not carry a user or password; `None` lets it.
    pub no_credentials: Option<&'static str>,
}

/// The base URL as given minus surrounding white space and any trailing slash (and
/// [`BaseUrlRules::drop_suffix`]), once it passes `rules`: http or https ([`crate::parse_base_url`]),
/// no query or fragment, and credentials only where allowed. `Err` says why it cannot be used.
pub fn check_base_url<'a>(raw: &'a str, rules: &BaseUrlRules) -> Result<&'a str, String> {
    let mut trimmed = raw.trim().trim_end_matches('/');
    if let Some(without) = rules.drop_suffix.and_then(|suffix| trimmed.strip_suffix(suffix)) {
        trimmed = without.trim_end_matches('/');
    }
    let url = crate::parse_base_url(trimmed, rules.example)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("a base URL cannot carry a query or fragment{}", rules.query_hint));
    }
    if let Some(reason) = rules.no_credentials
        && (!url.username().is_empty() || url.password().is_some())
    {
        return Err(reason.to_owned());
    }
    Ok(trimmed)
}

/// A credential as a header value, marked sensitive so reqwest's and hyper's `Debug` output hide
/// it; `None` when it cannot be sent in a header (the caller words why, without the value).
pub fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        let strict = BaseUrlRules {
            example: "http://x",
            drop_suffix: None,
            query_hint: " (hint)",
            no_credentials: Some("no users"),
        };
        assert_eq!(check_base_url(" https://h/v1/ ", &strict).unwrap(), "https://h/v1");
        let anthropic = BaseUrlRules { drop_suffix: Some("/v1"), ..strict };
        assert_eq!(check_base_url("https://h/v1//", &anthropic).unwrap(), "https://h");
        assert_eq!(check_base_url("https://h/p/", &anthropic).unwrap(), "https://h/p");
        assert_eq!(
            check_base_url("http://h/?k=1", &strict).unwrap_err(),
            "a base URL cannot carry a query or fragment (hint)"
        );
        assert_eq!(
            check_base_url("http://h/#f", &strict).unwrap_err(),
            "a base URL cannot carry a query or fragment (hint)"
        );
        assert_eq!(check_base_url("http://u:p@h", &strict).unwrap_err(), "no users");
        let lenient = BaseUrlRules { no_credentials: None, ..strict };
        assert!(check_base_url("http://u:p@h", &lenient).is_ok());
        assert!(check_base_url("ftp://h", &lenient).unwrap_err().ends_with("(expected e.g. http://x)"));
    }

    #[test]
    fn secret_headers_are_sensitive() {
        assert!(secret_header("sk-1").unwrap().is_sensitive());
        assert!(secret_header("sk\n1").is_none());
    }
}
