//! HTTP plumbing shared by the Copilot provider adapters (Ollama, OpenAI-compatible, Gemini,
//! Anthropic): one [`Upstream`] per server, which sends, checks statuses, fetches JSON, reads
//! error bodies and masks the key; the HTTP client they all build, `Retry-After` headers, turning
//! a decoder into a [`ChatStream`], the text of errors and excerpts, and the SSE decoder ([`sse`]).
//!
//! Only what every adapter does the same way lives here; how a protocol's errors map to
//! [`ProviderError`]s ([`Adapter`]), and what the messages say, stays in each adapter.

mod client;
mod direct;
pub mod sse;
mod stream;
#[cfg(feature = "stream-check")]
#[doc(hidden)]
pub mod stream_check;
mod upstream;

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

#[cfg(doc)]
use copilot_provider::ChatStream;
use copilot_provider::{ChatRequest, ProviderError, Secret};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, Url};

pub use client::HttpClient;
pub use direct::{Reading, SendError};
pub use stream::{ChatStreamDecoder, FinishGrace, StreamOptions};
pub use upstream::{Adapter, BaseUrlRules, MAX_JSON_BYTES, Refusal, Upstream, check_base_url, secret_header};

/// A client builder with what every adapter sets: a connect timeout, no Nagle delay, and the
/// adapter's `User-Agent` (`"copilot-ollama/0.1.0"`). There is no overall timeout: generations run
/// for minutes, and the gateway applies its own deadlines.
///
/// reqwest is built without a default TLS crypto provider and panics if none is installed; this
/// installs ring's. Whoever installs first wins; an already installed provider is fine.
pub fn client_builder(user_agent: &'static str, connect_timeout: Duration) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .user_agent(user_agent)
        // The gateway decides about retries (with backoff, budgets and fallback); reqwest's own
        // would also clone every request in case it retried.
        .retry(reqwest::retry::never().max_retries_per_request(0))
}

/// An adapter's [`HttpClient`]: [`client_builder`]'s settings and `default_headers` (its API key,
/// marked sensitive), then what `configure` adds (a redirect policy). Plain-HTTP requests are sent
/// with the same headers by hyper's own client (see `direct.rs`). `Err` is the [`root_cause`] of
/// why it cannot be built.
pub fn adapter_client(
    user_agent: &'static str,
    connect_timeout: Duration,
    default_headers: HeaderMap,
    configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
) -> Result<HttpClient, String> {
    let direct = direct::Direct::new(user_agent, default_headers.clone(), connect_timeout);
    HttpClient::new(
        move || configure(client_builder(user_agent, connect_timeout).default_headers(default_headers.clone())),
        direct,
    )
    .map_err(|e| root_cause(&e))
}

/// Parses the base URL an adapter is configured with (already trimmed as the adapter wants it),
/// which must be http or https. `Err` says why it cannot be used, pointing at `example`, a base
/// URL that would do.
pub fn parse_base_url(base_url: &str, example: &str) -> Result<Url, String> {
    let url = Url::parse(base_url).map_err(|e| format!("{e} (expected e.g. {example})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme must be http or https, not {:?} (expected e.g. {example})", url.scheme()));
    }
    Ok(url)
}

/// How much of an error response's body is read. An error body is a small JSON object; the cap
/// guards against a proxy's endless HTML page.
pub const MAX_ERROR_BODY: usize = 16 * 1024;

/// The body of an error response, up to about [`MAX_ERROR_BODY`] bytes; what arrives before a
/// broken connection, if it breaks.
pub(crate) async fn read_error_body(response: &mut Response) -> Vec<u8> {
    read_capped(response, MAX_ERROR_BODY).await
}

/// The start of a response's body: chunks until the end of the body, a failure, or `cap` bytes
/// (the chunk that crosses the cap is kept whole).
pub async fn read_capped(response: &mut Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= cap {
            break;
        }
    }
    body
}

/// A response header's value as text for a log line or a message, with `secret` masked: an
/// upstream may echo the key in a header (a request id made from it, say). `None` when the
/// header is missing or not text.
pub fn header_text(headers: &HeaderMap, name: &str, secret: Option<&Secret>) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(redact(value, secret))
}

/// Adds the caller's W3C trace context (`traceparent`, `tracestate`) to an upstream request, so an
/// instrumented upstream joins the caller's trace.
pub fn with_trace_context(builder: RequestBuilder, request: &ChatRequest) -> RequestBuilder {
    with_headers(builder, &request.trace_context)
}

/// `builder` with these headers (a request's W3C trace context, for one that is not a chat).
pub fn with_headers(builder: RequestBuilder, headers: &[(String, String)]) -> RequestBuilder {
    headers.iter().fold(builder, |builder, (name, value)| builder.header(name.as_str(), value.as_str()))
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    copilot_provider::parse_retry_after(value, now)
}

/// The wait a `retry-after-ms` header asks for (milliseconds, possibly fractional), which OpenAI
/// and Anthropic send and their SDKs prefer to `Retry-After`. Both are capped at
/// [`copilot_provider::MAX_RETRY_AFTER`].
pub fn retry_after_ms(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after-ms")?.to_str().ok()?;
    copilot_provider::parse_retry_after_ms(value)
}

/// The longest line (NDJSON) or event (SSE) a chat stream may hold. Real chunks are a few hundred
/// bytes; the limit only stops an upstream that never ends a line from growing a buffer without
/// bound.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// The error of a stream whose `upstream` ("Ollama at http://…") sent a line or event past `limit`.
pub fn line_too_long(upstream: &str, limit: usize) -> ProviderError {
    ProviderError::Protocol(format!("{upstream} sent a line longer than {limit} bytes; the stream was stopped"))
}

/// For `#[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]` on an
/// `Option<Cow<'a, str>>` field: borrowed from the input unless the string has escapes. serde
/// borrows a bare `Cow<str>` field, but an `Option` of one is always copied — an allocation per
/// field per stream chunk.
pub fn borrow_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
    Ok(<Option<Borrowed<'a>> as serde::Deserialize>::deserialize(deserializer)?.map(|b| b.0))
}

/// The innermost cause of an error. reqwest's and hyper's own messages ("error sending request
/// for url", "client error (Connect)") say where a request failed, not why.
pub fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// At most `max` characters of `text`, marked with an ellipsis when cut. Upstream text is
/// shortened only through [`quote`] or [`excerpt`], which mask the key first.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `text` with every occurrence of `secret` masked ([`Secret::redact`]).
pub fn redact(text: &str, secret: Option<&Secret>) -> String {
    match secret {
        Some(secret) => secret.redact(text),
        None => text.to_owned(),
    }
}

/// Upstream text for an error message or a log line: `secret` masked, then cut to at most `max`
/// characters (marked with an ellipsis). In that order: a key that straddled the cut would
/// survive in part, where masking no longer finds it.
pub fn quote(text: &str, max: usize, secret: Option<&Secret>) -> String {
    truncate_chars(&redact(text, secret), max)
}

/// Up to `max` characters of a body (or a line of one) for an error message: decoded leniently,
/// trimmed, `secret` masked, and marked with an ellipsis when cut ([`quote`]).
pub fn excerpt(body: &[u8], max: usize, secret: Option<&Secret>) -> String {
    quote(String::from_utf8_lossy(body).trim(), max, secret)
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use reqwest::header::HeaderValue;

    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|inner| inner as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn optional_strings_are_borrowed_unless_escaped() {
        #[derive(serde::Deserialize)]
        struct Field<'a> {
            #[serde(borrow, default, deserialize_with = "borrow_str")]
            text: Option<std::borrow::Cow<'a, str>>,
        }
        let parse = |json: &'static str| serde_json::from_str::<Field>(json).unwrap().text;
        assert!(matches!(parse(r#"{"text":"plain"}"#), Some(std::borrow::Cow::Borrowed("plain"))));
        assert!(matches!(parse(r#"{"text":"a\nb"}"#), Some(std::borrow::Cow::Owned(t)) if t == "a\nb"));
        assert!(parse(r#"{"text":null}"#).is_none());
        assert!(parse("{}").is_none());
    }

    #[test]
    fn the_root_cause_is_the_innermost_error() {
        let err = Layer(
            "error sending request",
            Some(Box::new(Layer("client error", Some(Box::new(Layer("refused", None)))))),
        );
        assert_eq!(root_cause(&err), "refused");
        assert_eq!(root_cause(&Layer("alone", None)), "alone");
    }

    #[test]
    fn excerpts_are_trimmed_and_cut_on_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(excerpt(b"  <html>\n", 200, None), "<html>");
        assert_eq!(excerpt(b"abcdef", 3, None), "abc…");
        assert_eq!(excerpt(b"\xffok", 10, None), "\u{fffd}ok");
    }

    /// Every run of 8 characters of `key` that `text` contains.
    fn leaked_pieces(text: &str, key: &str) -> Vec<String> {
        let key: Vec<char> = key.chars().collect();
        key.windows(8).map(|w| w.iter().collect::<String>()).filter(|piece| text.contains(piece.as_str())).collect()
    }

    #[test]
    fn a_key_straddling_the_cut_is_masked_before_it() {
        let raw = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZab";
        let key = Secret::new(raw);
        for offset in 440..=500 {
            let body = format!("{}Incorrect API key provided: {raw}. You can find your key at …", "x".repeat(offset));
            let quoted = quote(&body, 500, Some(&key));
            assert_eq!(leaked_pieces(&quoted, raw), Vec::<String>::new(), "offset {offset}: {quoted}");
            let excerpted = excerpt(body.as_bytes(), 500, Some(&key));
            assert_eq!(leaked_pieces(&excerpted, raw), Vec::<String>::new(), "offset {offset}: {excerpted}");
        }
        let short = quote(&format!("key {raw} rejected"), 500, Some(&key));
        assert_eq!(short, "key *** rejected");
        // The order matters: cutting first leaves a piece masking cannot find.
        let cut_first = key.redact(&truncate_chars(&format!("{}{raw}", "x".repeat(470)), 500));
        assert!(!leaked_pieces(&cut_first, raw).is_empty(), "{cut_first}");
    }

    #[test]
    fn header_values_echoing_the_key_are_masked() {
        let key = Secret::new("sk-live-0123456789abcdef");
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("req_sk-live-0123456789abcdef_1"));
        headers.insert("x-other", HeaderValue::from_static("req_42"));
        assert_eq!(header_text(&headers, "x-request-id", Some(&key)).as_deref(), Some("req_***_1"));
        assert_eq!(header_text(&headers, "x-other", Some(&key)).as_deref(), Some("req_42"));
        assert_eq!(header_text(&headers, "x-missing", Some(&key)), None);
        assert_eq!(header_text(&headers, "x-request-id", None).as_deref(), Some("req_sk-live-0123456789abcdef_1"));
    }

    #[test]
    fn base_urls_must_be_http() {
        assert_eq!(parse_base_url("https://h/v1", "http://x").unwrap().as_str(), "https://h/v1");
        let err = parse_base_url("ftp://h", "http://x").unwrap_err();
        assert_eq!(err, "the scheme must be http or https, not \"ftp\" (expected e.g. http://x)");
        let err = parse_base_url("localhost:80", "http://x").unwrap_err();
        assert!(err.ends_with(" (expected e.g. http://x)"), "{err}");
    }

    #[test]
    fn retry_after_headers() {
        let now = SystemTime::UNIX_EPOCH;
        let mut headers = HeaderMap::new();
        assert_eq!((retry_after(&headers, now), retry_after_ms(&headers)), (None, None));
        headers.insert("retry-after", HeaderValue::from_static(" 7 "));
        headers.insert("retry-after-ms", HeaderValue::from_static(" 1500.5"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_ms(&headers), Some(Duration::from_micros(1_500_500)));
        for bad in ["soon", "-1", "NaN", "-inf"] {
            headers.insert("retry-after-ms", HeaderValue::from_static(bad));
            assert_eq!(retry_after_ms(&headers), None, "{bad}");
        }
        // Absurd asks are capped rather than trusted (they used to panic the first Instant sum).
        headers.insert("retry-after", HeaderValue::from_static("18446744073709551615"));
        headers.insert("retry-after-ms", HeaderValue::from_static("1e30"));
        assert_eq!(retry_after(&headers, now), Some(copilot_provider::MAX_RETRY_AFTER));
        assert_eq!(retry_after_ms(&headers), Some(copilot_provider::MAX_RETRY_AFTER));
    }
}
