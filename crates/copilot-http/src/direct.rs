//! Plain-HTTP upstreams (a local Ollama, vLLM or llama.cpp server) are sent with hyper's own
//! HTTP/1.1 client instead of reqwest's. Every streamed call holds one upstream connection for its
//! whole answer, and reqwest gives no say over what hyper keeps per connection: with it, a
//! connection held ~12 KiB more, and hyper's read buffer, left adaptive, reallocated at 16 KiB
//! whenever a chunk was still queued. Here a streamed answer's connection has a read buffer of an
//! exact, small size ([`READ_BUFFER`]); an answer wanted whole keeps hyper's adaptive one, which
//! reads a burst in one go ([`Reading`]). BENCHMARKS.md, "Memory per stream", has the measurements.
//!
//! Requests are still built with reqwest's builder and answers are still `reqwest::Response`s, so
//! the adapters do not know which client sent them. TLS, proxies and requests with a timeout of
//! their own stay with reqwest (see [`Direct::takes`]).

use std::future::Future;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::{ACCEPT, HOST, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Request, Response, ResponseBuilderExt, Url};
use url::Position;

/// hyper's read buffer per upstream connection of a streamed answer. Streams come in chunks of tens
/// to hundreds of bytes; a burst takes more reads of this size, never more memory.
const READ_BUFFER: usize = 2 * 1024;

/// How an upstream's answer will be read, which sets the read buffer of the connection it is sent
/// on (plain-HTTP requests only: reqwest keeps its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reading {
    /// Relayed as it comes, for as long as it lasts (`Chat`): a small, fixed buffer per
    /// connection ([`READ_BUFFER`]), so that thousands of open streams take little memory.
    #[default]
    Streamed,
    /// Wanted whole before anything is answered (`Generate`, embeddings, model lists): hyper's
    /// adaptive buffer (8 KiB, growing for large bodies), so an answer that arrives at once takes
    /// one read rather than several. Measured on a 5 KiB answer: 7 % fewer instructions per
    /// `Generate` and 2 fewer `recvfrom`s (BENCHMARKS.md, session 16).
    Whole,
}

impl Reading {
    /// How a chat request's answer is read: whole when the server collects it.
    pub fn of(request: &copilot_provider::ChatRequest) -> Reading {
        if request.collected { Reading::Whole } else { Reading::Streamed }
    }
}

/// How long an idle pooled connection is kept (reqwest's default too).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive probes, as reqwest sends them: a connection whose upstream vanished during a long
/// silent generation is found dead by the kernel, not only by the gateway's idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

/// Environment variables through which reqwest would send plain HTTP to a proxy.
const PROXY_VARIABLES: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

/// What reqwest's client adds to each request, added here for the requests sent directly.
#[derive(Clone, Debug)]
pub(crate) struct Direct {
    defaults: HeaderMap,
    connect_timeout: Duration,
    /// Off when the environment names a proxy: those requests must go through reqwest, which
    /// honours it.
    enabled: bool,
}

/// One thread's client (see [`crate::HttpClient`] for why there is one per thread).
pub(crate) type DirectClient = Client<HttpConnector, reqwest::Body>;

impl Direct {
    /// `defaults`: the adapter's default headers (its API key, marked sensitive); the
    /// `User-Agent` and `Accept: */*` are added as reqwest adds them.
    pub(crate) fn new(user_agent: &'static str, defaults: HeaderMap, connect_timeout: Duration) -> Self {
        Self::with_environment(user_agent, defaults, connect_timeout, |name| std::env::var_os(name))
    }

    fn with_environment(
        user_agent: &'static str,
        mut defaults: HeaderMap,
        connect_timeout: Duration,
        variable: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        defaults.entry(USER_AGENT).or_insert(HeaderValue::from_static(user_agent));
        defaults.entry(ACCEPT).or_insert(HeaderValue::from_static("*/*"));
        let proxied = PROXY_VARIABLES.iter().any(|name| variable(name).is_some_and(|value| !value.is_empty()));
        Direct { defaults, connect_timeout, enabled: !proxied }
    }

    /// Whether `request` is sent directly: plain HTTP, no proxy, and no timeout of its own (reqwest
    /// bounds such a request's body too; the gateway's own calls have their deadlines elsewhere).
    pub(crate) fn takes(&self, request: &Request) -> bool {
        self.enabled && request.url().scheme() == "http" && request.timeout().is_none()
    }

    pub(crate) fn client(&self, reading: Reading) -> DirectClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_keepalive(Some(KEEPALIVE));
        connector.set_keepalive_interval(Some(KEEPALIVE));
        connector.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE);
        if reading == Reading::Streamed {
            builder.http1_read_buf_exact_size(READ_BUFFER);
        }
        builder.build(connector)
    }

    /// Sends `request` on `client`, with the default headers it does not set itself. The request
    /// moves into hyper's (boxed) future now; nothing is sent before the returned future is polled.
    pub(crate) fn send(
        &self,
        client: &DirectClient,
        request: Request,
    ) -> impl Future<Output = Result<Response, SendError>> + Send + use<> {
        let url = request.url().clone();
        let sending = hyper::Request::try_from(request).map_err(SendError::Reqwest).map(|mut request| {
            let headers = request.headers_mut();
            for (name, value) in &self.defaults {
                if !headers.contains_key(name) {
                    headers.insert(name, value.clone());
                }
            }
            if !headers.contains_key(HOST)
                && let Some(host) = host_header(&url)
            {
                headers.insert(HOST, host);
            }
            client.request(request)
        });
        async move {
            let response = sending?.await.map_err(SendError::Direct)?;
            Ok(Response::from(with_url(response, url)))
        }
    }
}

/// The `Host` header for `url`, as hyper's client would set it: the host, and the port unless it
/// is the scheme's default. hyper formats it from the URI's parts (~2,300 instructions per request,
/// callgrind); the URL's serialization already holds it.
fn host_header(url: &Url) -> Option<HeaderValue> {
    HeaderValue::from_str(&url[Position::BeforeHost..Position::AfterPort]).ok()
}

/// `response` as reqwest takes it, with the URL it answers. Without the URL reqwest parses a
/// placeholder for every response (~3,300 instructions, callgrind).
fn with_url(response: hyper::Response<hyper::body::Incoming>, url: Url) -> hyper::Response<reqwest::Body> {
    let (mut parts, body) = response.into_parts();
    if let Ok(marked) = hyper::Response::builder().url(url).body(()) {
        parts.extensions.extend(marked.into_parts().0.extensions);
    }
    hyper::Response::from_parts(parts, reqwest::Body::wrap(body))
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// From reqwest: building the request, or sending it the usual way.
    Reqwest(reqwest::Error),
    /// From hyper's client, for a request sent directly.
    Direct(hyper_util::client::legacy::Error),
}

impl SendError {
    /// The server could not be reached at all (refused, unknown, connect timeout).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Reqwest(err) => err.is_connect(),
            SendError::Direct(err) => err.is_connect(),
        }
    }

    /// The request's own timeout passed (only reqwest applies one).
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendError::Reqwest(err) if err.is_timeout())
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Reqwest(err) => err.fmt(f),
            SendError::Direct(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Reqwest(err) => Some(err),
            SendError::Direct(err) => Some(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, timeout: Option<Duration>) -> Request {
        let mut request = crate::client_builder("test", Duration::from_secs(1)).build().unwrap().get(url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request.build().unwrap()
    }

    #[test]
    fn plain_http_goes_direct_and_tls_proxies_and_own_timeouts_go_through_reqwest() {
        let direct = Direct::with_environment("test", HeaderMap::new(), Duration::from_secs(1), |_| None);
        assert!(direct.takes(&request("http://127.0.0.1:11434/api/chat", None)));
        assert!(!direct.takes(&request("https://api.openai.com/v1/chat/completions", None)));
        assert!(!direct.takes(&request("http://metadata.google.internal/token", Some(Duration::from_secs(5)))));

        for variable in PROXY_VARIABLES {
            let proxied = Direct::with_environment("test", HeaderMap::new(), Duration::from_secs(1), |name| {
                (name == variable).then(|| "http://proxy.internal:3128".into())
            });
            assert!(!proxied.takes(&request("http://127.0.0.1:11434/api/chat", None)), "{variable}");
        }
        let empty = Direct::with_environment("test", HeaderMap::new(), Duration::from_secs(1), |_| Some("".into()));
        assert!(empty.takes(&request("http://127.0.0.1:11434/api/chat", None)), "an empty proxy variable is none");
    }

    #[test]
    fn the_host_header_is_the_host_and_a_port_that_is_not_the_default() {
        let host = |url: &str| host_header(&Url::parse(url).unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:11434/api/chat"), "127.0.0.1:11434");
        assert_eq!(host("http://ollama.internal/api/chat?x=1"), "ollama.internal");
        assert_eq!(host("http://ollama.internal:80/api/chat"), "ollama.internal");
        assert_eq!(host("http://user:secret@vllm.internal:8000/v1"), "vllm.internal:8000");
        assert_eq!(host("http://[::1]:8080/v1"), "[::1]:8080");
    }

    #[tokio::test]
    async fn a_server_sees_the_host_header_hyper_would_send() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0; 1];
                socket.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let direct = Direct::with_environment("test", HeaderMap::new(), Duration::from_secs(1), |_| None);
        let response = direct
            .send(&direct.client(Reading::Streamed), request(&format!("http://{address}/v1"), None))
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let head = server.await.unwrap().to_ascii_lowercase();
        assert_eq!(head.matches("\r\nhost: ").count(), 1, "{head}");
        assert!(head.contains(&format!("\r\nhost: {address}\r\n")), "{head}");
    }

    #[test]
    fn the_adapters_headers_come_first_then_reqwests_defaults() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("custom/1"));
        let direct = Direct::with_environment("copilot-test/0", headers, Duration::from_secs(1), |_| None);
        assert_eq!(direct.defaults[USER_AGENT], "custom/1");
        assert_eq!(direct.defaults[ACCEPT], "*/*");
        let direct = Direct::with_environment("copilot-test/0", HeaderMap::new(), Duration::from_secs(1), |_| None);
        assert_eq!(direct.defaults[USER_AGENT], "copilot-test/0");
    }
}
