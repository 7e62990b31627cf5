//! The scaffolding every provider fake shares, whatever its protocol: the loopback server and its
//! graceful stop, the registry of models, scripted failures (`fail_next`), the requests recorded,
//! and the counters that say how each chat stream ended. A fake adds only its protocol on top.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::script::{Behaviour, FakeModel};

/// `127.0.0.1` with port 0: a free loopback port, where [`start`](crate::fake::Fake::start) puts
/// a fake.
pub(crate) const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// A fake's HTTP server. It stops accepting connections, and ends the streams still being
/// written, when dropped.
pub(crate) struct Server {
    addr: SocketAddr,
    harness: Arc<Harness>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Serves `app` on `addr` (port 0 picks a free port) until dropped; `name` ("Ollama") names
    /// the fake in logs.
    pub(crate) async fn start(
        addr: SocketAddr,
        name: &'static str,
        harness: Arc<Harness>,
        app: Router,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        // Real servers (Ollama is Go) disable Nagle; without it each small line or event after the
        // first could wait for the client's delayed ACK, which would distort streaming latencies.
        let counted = harness.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            counted.connections.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop.await;
            });
            if let Err(err) = server.await {
                tracing::warn!(%err, "fake {name} server stopped with an error");
            }
        });
        tracing::debug!(%addr, "fake {name} server listening");
        Ok(Server { addr, harness, shutdown: Some(shutdown) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn harness(&self) -> &Harness {
        &self.harness
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Graceful shutdown alone would wait forever on an Endless stream whose client is still
        // reading; the flag makes such streams abort at their next chunk.
        self.harness.shutting_down.store(true, Ordering::Relaxed);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Requests still to fail, set by a fake's `fail_next`.
#[derive(Clone)]
pub(crate) struct FailNext {
    remaining: usize,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
    /// Headers sent as given, after (and over) the ones the fake adds itself.
    headers: HeaderMap,
}

impl FailNext {
    /// Adds the `Retry-After: <seconds>` header, when the failure was scripted with one, and the
    /// headers it was scripted with verbatim.
    pub(crate) fn add_retry_after(&self, response: &mut Response) {
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in &self.headers {
            response.headers_mut().insert(name, value.clone());
        }
    }
}

/// What a fake records of the chat requests it receives.
#[derive(Default)]
struct Recorded {
    bodies: Vec<Value>,
    headers: Vec<HeaderMap>,
}

/// The state every fake keeps besides its protocol's: scripted failures, recorded requests, and
/// how chat streams ended. Shared by the fake's handle, its request handlers and the stream
/// guards. Public only so that [`Wire::new`](crate::fake::Wire::new) can take it: the module is
/// private, and so are its methods.
pub struct Harness {
    fail_next: Mutex<Option<FailNext>>,
    record_requests: AtomicBool,
    recorded: Mutex<Recorded>,
    // A watch channel rather than a counter so `wait_for_disconnects` can sleep until it changes.
    disconnects: watch::Sender<usize>,
    completed: AtomicUsize,
    active: AtomicUsize,
    shutting_down: AtomicBool,
    /// TCP connections accepted, to tell pooled connections from new ones.
    connections: AtomicUsize,
    /// While set, chat requests get the provider's answer when it is overloaded.
    busy: AtomicBool,
    /// The key every request must present; `None` checks none.
    api_key: RwLock<Option<String>>,
}

impl Harness {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Harness {
            fail_next: Mutex::new(None),
            record_requests: AtomicBool::new(true),
            recorded: Mutex::new(Recorded::default()),
            disconnects: watch::Sender::new(0),
            completed: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            api_key: RwLock::new(None),
        })
    }

    pub(crate) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub(crate) fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_api_key(&self, key: Option<String>) {
        *self.api_key.write().unwrap() = key;
    }

    pub(crate) fn api_key(&self) -> Option<String> {
        self.api_key.read().unwrap().clone()
    }

    pub(crate) fn connections_accepted(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The next `count` chat requests fail with `status` (and `Retry-After: retry_after`).
    pub(crate) fn fail_next(&self, count: usize, status: u16, retry_after: Option<u64>) {
        self.fail_next_with_headers(count, status, retry_after, &[]);
    }

    /// Like [`fail_next`](Self::fail_next), with `headers` (name, value) sent as they are: any
    /// `Retry-After` or `retry-after-ms` string an upstream might send. Panics on a name or value
    /// HTTP cannot carry (a test's mistake).
    pub(crate) fn fail_next_with_headers(
        &self,
        count: usize,
        status: u16,
        retry_after: Option<u64>,
        headers: &[(&str, &str)],
    ) {
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let name = header::HeaderName::try_from(*name).expect("a valid header name");
                (name, HeaderValue::from_str(value).expect("a valid header value"))
            })
            .collect();
        *self.fail_next.lock().unwrap() = Some(FailNext { remaining: count, status, retry_after, headers });
    }

    /// The failure this request must answer with, if any are left to script.
    pub(crate) fn take_failure(&self) -> Option<FailNext> {
        let mut pending = self.fail_next.lock().unwrap();
        let failure = pending.as_mut().filter(|f| f.remaining > 0)?;
        failure.remaining -= 1;
        Some(failure.clone())
    }

    pub(crate) fn set_record_requests(&self, record: bool) {
        self.record_requests.store(record, Ordering::Relaxed);
    }

    /// Whether chat requests are being recorded.
    pub(crate) fn recording(&self) -> bool {
        self.record_requests.load(Ordering::Relaxed)
    }

    /// Records what a chat request carried: its headers, and its body when it was valid JSON.
    /// Callers check [`recording`](Self::recording) first, so nothing is copied when it is off.
    pub(crate) fn record(&self, headers: Option<HeaderMap>, body: Option<Value>) {
        let mut recorded = self.recorded.lock().unwrap();
        recorded.headers.extend(headers);
        recorded.bodies.extend(body);
    }

    pub(crate) fn chat_requests(&self) -> Vec<Value> {
        self.recorded.lock().unwrap().bodies.clone()
    }

    pub(crate) fn request_headers(&self) -> Vec<HeaderMap> {
        self.recorded.lock().unwrap().headers.clone()
    }

    pub(crate) fn disconnects(&self) -> usize {
        *self.disconnects.borrow()
    }

    /// Waits until [`disconnects`](Self::disconnects) reaches `n`; false if `timeout` passes first.
    pub(crate) async fn wait_for_disconnects(&self, n: usize, timeout: Duration) -> bool {
        let mut changes = self.disconnects.subscribe();
        let reached = tokio::time::timeout(timeout, changes.wait_for(|&count| count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    pub(crate) fn completed_streams(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    pub(crate) fn active_streams(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Counts an accepted chat request as a stream from here on — a client that gives up, even
    /// while the "model loads", is a disconnect — and waits out the model's `header_delay`. A model
    /// scripted with [`Behaviour::HttpError`] is refused then: `Err` holds that status and message
    /// for the fake to answer with in its protocol's form.
    pub(crate) async fn begin_stream<'m>(
        self: &Arc<Self>,
        model: &'m FakeModel,
    ) -> Result<StreamGuard, (u16, &'m str)> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let mut guard = StreamGuard { harness: self.clone(), finished: false };
        if !model.header_delay.is_zero() {
            tokio::time::sleep(model.header_delay).await;
        }
        if let Behaviour::HttpError { status, message } = &model.behaviour {
            guard.finish(false);
            return Err((*status, message));
        }
        Ok(guard)
    }
}

/// Keeps the stream counters honest however a chat request ends: the handler or the response
/// body owns it, and hyper drops both when the client closes the connection, so a guard dropped
/// before [`finish`](Self::finish) is a client disconnect.
pub(crate) struct StreamGuard {
    harness: Arc<Harness>,
    finished: bool,
}

impl StreamGuard {
    /// The response produced its last piece; `completed` says whether that was a proper ending
    /// (as opposed to a refusal or a deliberate abort).
    pub(crate) fn finish(&mut self, completed: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Active drops first so that whoever sees the outcome counted also sees the stream gone.
        self.harness.active.fetch_sub(1, Ordering::SeqCst);
        if completed {
            self.harness.completed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The fake is being dropped: a stream should end at its next piece.
    pub(crate) fn shutting_down(&self) -> bool {
        self.harness.shutting_down.load(Ordering::Relaxed)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.harness.active.fetch_sub(1, Ordering::SeqCst);
            self.harness.disconnects.send_modify(|count| *count += 1);
        }
    }
}

/// What a model registry is keyed by: the name a request finds the entry under.
pub(crate) trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for FakeModel {
    fn key(&self) -> &str {
        &self.name
    }
}

/// The models a fake serves, in the order they were added.
pub(crate) struct Models<E> {
    entries: RwLock<Vec<Arc<E>>>,
}

impl<E: Keyed> Models<E> {
    pub(crate) fn new() -> Self {
        Models { entries: RwLock::new(Vec::new()) }
    }

    /// Adds an entry, replacing the one with the same key in its place. Requests already in
    /// progress keep the entry they started with.
    pub(crate) fn add(&self, entry: E) {
        let entry = Arc::new(entry);
        let mut entries = self.entries.write().unwrap();
        match entries.iter_mut().find(|e| e.key() == entry.key()) {
            Some(slot) => *slot = entry,
            None => entries.push(entry),
        }
    }

    /// Removes the entry with this key; returns whether it was there.
    pub(crate) fn remove(&self, key: &str) -> bool {
        let mut entries = self.entries.write().unwrap();
        let before = entries.len();
        entries.retain(|e| e.key() != key);
        entries.len() != before
    }

    pub(crate) fn find(&self, key: &str) -> Option<Arc<E>> {
        self.entries.read().unwrap().iter().find(|e| e.key() == key).cloned()
    }

    /// All entries, in the order they were added.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<E>>> {
        self.entries.read().unwrap()
    }
}

/// A response body produced one piece (a line, an event) at a time.
pub(crate) trait Pieces: Send + 'static {
    /// The next piece; `None` ends the body cleanly and `Err` breaks the connection.
    fn next_piece(&mut self) -> impl Future<Output = Option<io::Result<Bytes>>> + Send;
}

/// A streamed body of `pieces`, each handed to the connection as soon as it is produced.
pub(crate) fn streamed_body(pieces: impl Pieces) -> Body {
    Body::from_stream(futures::stream::unfold(pieces, |mut pieces| async move {
        let piece = pieces.next_piece().await?;
        Some((piece, pieces))
    }))
}

/// A 200 whose body breaks before its first byte: what [`Behaviour::DropConnectionAfter`] looks
/// like to a request that is not streamed. `reason` is the body's error (seen only in logs).
pub(crate) fn broken_response(content_type: &'static str, reason: &'static str) -> Response {
    let broken = futures::stream::once(async move { Err::<Bytes, _>(io::Error::other(reason)) });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(broken))
        .expect("static response parts are valid")
}

/// A scripted status as an HTTP status; one outside 100–999 becomes a 500.
pub(crate) fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
