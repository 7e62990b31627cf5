//! The handle of every provider fake: [`Fake<W>`] starts the server for a wire format `W` and
//! answers, once for all of them, what the harness knows (scripted failures, recorded requests,
//! how streams ended). Each wire format adds its own setters (`add_model`, `set_flavour`, …) in an
//! `impl Fake<Ollama>` beside its handlers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::harness::{Harness, LOOPBACK, Server};

/// A provider's wire format: the state its request handlers share, and its routes.
pub trait Wire: Send + Sync + Sized + 'static {
    /// Names the fake in logs and panics ("Ollama").
    const NAME: &'static str;
    /// What [`Fake::base_url`] appends to `http://IP:PORT`: the prefix an adapter's base URL
    /// carries for this provider (`/v1` for OpenAI), or nothing.
    const BASE_PATH: &'static str;

    /// The state of a fake with no models, its failures and records kept in `harness`.
    fn new(harness: Arc<Harness>) -> Self;

    /// The routes, served with this state.
    fn router(state: Arc<Self>) -> Router;
}

/// A running fake of one provider (`FakeOllama` is `Fake<Ollama>`). It stops accepting
/// connections, and ends the streams it is still writing, when dropped.
pub struct Fake<W> {
    server: Server,
    pub(crate) wire: Arc<W>,
}

impl<W: Wire> Fake<W> {
    /// Starts a server with no models (and, for a provider with keys, no key check) on
    /// `127.0.0.1` and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> Self {
        match Self::start_on(LOOPBACK).await {
            Ok(fake) => fake,
            Err(err) => panic!("bind a loopback port for the fake {} server: {err}", W::NAME),
        }
    }

    /// Starts a server with no models on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let harness = Harness::new();
        let wire = Arc::new(W::new(harness.clone()));
        let server = Server::start(addr, W::NAME, harness, W::router(wire.clone())).await?;
        Ok(Fake { server, wire })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://IP:PORT` and the provider's path prefix, if any, without a trailing slash: what an
    /// adapter's base URL is set to.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr(), W::BASE_PATH)
    }
}

impl<W> Fake<W> {
    fn harness(&self) -> &Harness {
        self.server.harness()
    }

    /// The next `count` chat requests (for any known model) fail with `status` and the
    /// provider's error body for it, with a `Retry-After: <seconds>` header when given (and what
    /// else the provider sends with a wait, see its fake); later requests behave as scripted.
    pub fn fail_next(&self, count: usize, status: u16, retry_after: Option<u64>) {
        self.harness().fail_next(count, status, retry_after);
    }

    /// Like [`fail_next`](Self::fail_next), with no `Retry-After` of its own but `headers` sent
    /// verbatim, e.g. `("retry-after", "18446744073709551615")` or `("retry-after-ms", "1e30")`.
    pub fn fail_next_with_headers(&self, count: usize, status: u16, headers: &[(&str, &str)]) {
        self.harness().fail_next_with_headers(count, status, None, headers);
    }

    /// While set, chat requests are refused the way the provider refuses them when it is
    /// overloaded (see its fake: Ollama's queue-full 503, Anthropic's 529, …).
    pub fn set_busy(&self, busy: bool) {
        self.harness().set_busy(busy);
    }

    /// TCP connections accepted so far: a client that pools connections opens one for calls made
    /// one after another.
    pub fn connections_accepted(&self) -> usize {
        self.harness().connections_accepted()
    }

    /// Whether to keep what chat requests carried (on by default). Long benchmark runs turn it
    /// off so memory stays flat.
    pub fn set_record_requests(&self, record: bool) {
        self.harness().set_record_requests(record);
    }

    /// The JSON body of every chat request received (including refused ones), in order. Bodies
    /// that were not valid JSON are not recorded.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.harness().chat_requests()
    }

    /// The headers of every chat request received (including refused ones), in order; none for
    /// Ollama, whose fake does not keep them.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        self.harness().request_headers()
    }

    /// Chat requests the client abandoned (closed the connection) after they were accepted and
    /// before their last piece was written — including during `header_delay`.
    pub fn disconnects(&self) -> usize {
        self.harness().disconnects()
    }

    /// Waits until [`disconnects`](Self::disconnects) reaches `n`; false if `timeout` passes first.
    pub async fn wait_for_disconnects(&self, n: usize, timeout: Duration) -> bool {
        self.harness().wait_for_disconnects(n, timeout).await
    }

    /// Chat responses that produced their last piece: the provider's final line or event, the
    /// error of [`Behaviour::ErrorAfter`](crate::Behaviour::ErrorAfter), the clean end of
    /// [`Behaviour::EndWithoutDone`](crate::Behaviour::EndWithoutDone), or the single object of a
    /// request that was not streamed. Counted when that piece is handed to the connection.
    pub fn completed_streams(&self) -> usize {
        self.harness().completed_streams()
    }

    /// Chat requests accepted (known model, not busy) and not yet finished or abandoned,
    /// including those still in their `header_delay`.
    pub fn active_streams(&self) -> usize {
        self.harness().active_streams()
    }
}

/// A wire format whose fake can require an API key (Ollama's has none).
pub trait KeyedWire: Wire {}

impl<W: KeyedWire> Fake<W> {
    /// Requires `key`, presented the provider's way (`Authorization: Bearer`, `x-api-key`,
    /// `x-goog-api-key` or `?key=`), on every request; `None` accepts anything, the default. A
    /// wrong or missing key gets the provider's 401 (see its fake).
    pub fn set_api_key(&self, key: Option<impl Into<String>>) {
        self.harness().set_api_key(key.map(Into::into));
    }

    /// [`set_api_key`](Self::set_api_key) as a builder.
    pub fn with_api_key(self, key: impl Into<String>) -> Self {
        self.set_api_key(Some(key));
        self
    }
}
