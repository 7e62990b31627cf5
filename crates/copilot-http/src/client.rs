//! An adapter's HTTP client, one per thread.
//!
//! A pooled upstream connection is driven by a task on the runtime of the thread that opened it.
//! Shared across threads, a call on one thread could pick a connection another thread drives, and
//! every chunk of its answer would then cross threads (a futex wake-up, and a slow wake of an idle
//! core) — what the server's per-connection threads exist to avoid. So each thread builds its own
//! client from the adapter's settings the first time it sends through reqwest, and its connections
//! serve its calls. Plain-HTTP requests go through hyper's own client instead ([`crate::direct`]),
//! also one per thread; a thread that only sends those never builds a reqwest client (building one
//! parses the system's root certificates: ~19 million instructions, and ~1 MiB kept, per thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::{FutureExt, TryFutureExt, future};
use reqwest::{IntoUrl, RequestBuilder, Response};

use crate::direct::{Direct, DirectClient, Reading, SendError};

/// Builds an adapter's client, the same way each time.
type Build = Arc<dyn Fn() -> reqwest::ClientBuilder + Send + Sync>;

/// An adapter's HTTP client: `get` and `post` use this thread's own `reqwest::Client`.
#[derive(Clone)]
pub struct HttpClient {
    id: u64,
    build: Build,
    /// Built up front, so that settings that cannot make a client fail at start-up; also what
    /// requests are built with, and what a thread uses should building its own ever fail.
    first: reqwest::Client,
    /// How plain-HTTP requests are sent without reqwest.
    direct: Direct,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CLIENTS: RefCell<HashMap<u64, reqwest::Client>> = RefCell::new(HashMap::new());
    /// By adapter and by how answers are read: the two kinds of connection are pooled apart.
    static DIRECT_CLIENTS: RefCell<HashMap<(u64, Reading), DirectClient>> = RefCell::new(HashMap::new());
    /// Connections of this thread whose answer is complete but which are not back in their pool
    /// yet (see [`crate::release_body`]).
    static RETURNING: Arc<AtomicUsize> = Arc::new(AtomicUsize::new(0));
}

/// The most scheduler turns a request waits for connections on their way back to the pool.
const MAX_POOL_WAIT_TURNS: usize = 4;

/// One connection on its way back to this thread's pool, counted until dropped (on whatever
/// thread that happens).
pub(crate) struct Returning(Arc<AtomicUsize>);

impl Returning {
    pub(crate) fn new() -> Self {
        let count = RETURNING.with(Arc::clone);
        count.fetch_add(1, Ordering::Relaxed);
        Returning(count)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits while connections are on their way back to this thread's pool, a few scheduler turns at
/// most (see [`HttpClient::send`]).
async fn returning_connections() {
    for _ in 0..MAX_POOL_WAIT_TURNS {
        if RETURNING.with(|returning| returning.load(Ordering::Relaxed)) == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
}

impl HttpClient {
    /// `build` returns the adapter's configured builder (see [`crate::client_builder`]); `direct`
    /// has the same default headers and connect timeout.
    pub(crate) fn new(
        build: impl Fn() -> reqwest::ClientBuilder + Send + Sync + 'static,
        direct: Direct,
    ) -> Result<Self, reqwest::Error> {
        let first = build().build()?;
        Ok(HttpClient { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), build: Arc::new(build), first, direct })
    }

    /// A request to send with [`send`](Self::send), which picks the client that carries it.
    pub fn get<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.first.get(url)
    }

    /// A request to send with [`send`](Self::send), which picks the client that carries it.
    pub fn post<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.first.post(url)
    }

    /// Sends `request`, after letting connections on their way back to this thread's pool get
    /// there (a few scheduler turns at most). When many answers end at once and their callers ask
    /// again at once, the new requests would otherwise run before the pool has its connections
    /// back, and each open one of its own (~25 KiB inside hyper, kept until idle too long).
    ///
    /// The request is built and handed to its client before the returned future is first polled
    /// (neither client starts sending before that), so the future holds the client's own small
    /// future and not the request too: thousands of calls wait here at once when many start
    /// together, and each copy of a request is ~270 bytes (BENCHMARKS.md, "Memory per stream").
    ///
    /// `reading` says how the answer will be read, which picks the connection a plain-HTTP request
    /// goes on ([`Reading`]).
    pub fn send(
        &self,
        request: RequestBuilder,
        reading: Reading,
    ) -> impl Future<Output = Result<Response, SendError>> + Send + use<> {
        let (_, request) = request.build_split();
        let sending = request.map_err(SendError::Reqwest).map(|request| {
            if self.direct.takes(&request) {
                let direct = DIRECT_CLIENTS.with_borrow_mut(|clients| {
                    clients.entry((self.id, reading)).or_insert_with(|| self.direct.client(reading)).clone()
                });
                self.direct.send(&direct, request).left_future()
            } else {
                self.this_thread().execute(request).map_err(SendError::Reqwest).right_future()
            }
        });
        // Not an `async` block: that would keep `sending` twice, as its capture and as what it awaits.
        returning_connections().then(move |()| future::ready(sending).try_flatten())
    }

    /// This thread's client (a cheap handle: clones share the pool).
    fn this_thread(&self) -> reqwest::Client {
        CLIENTS.with_borrow_mut(|clients| {
            clients
                .entry(self.id)
                .or_insert_with(|| (self.build)().build().unwrap_or_else(|_| self.first.clone()))
                .clone()
        })
    }
}

/// As reqwest shows a client: header values marked sensitive (the API keys) are masked.
impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("id", &self.id)
            .field("client", &self.first)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use reqwest::header::HeaderMap;

    use super::*;

    /// The address a client's pooled connection came from, per request, as a server sees it.
    async fn peer_ports(client: &HttpClient, url: &str, calls: usize) -> Vec<u16> {
        let mut ports = Vec::new();
        for _ in 0..calls {
            // Through `send`: a plain-HTTP request takes the direct client, one per thread too.
            let body = client.send(client.get(url), Reading::Streamed).await.unwrap().text().await.unwrap();
            ports.push(body.parse().unwrap());
        }
        ports
    }

    /// Runs `calls` requests on a thread of its own, with its own runtime, then meets `called`;
    /// the thread (with its runtime and pooled connection) lives on until `release`.
    fn calls_on_a_thread(
        client: &HttpClient,
        url: &str,
        calls: usize,
        called: Arc<Barrier>,
        release: Arc<Barrier>,
    ) -> std::thread::JoinHandle<Vec<u16>> {
        let (client, url) = (client.clone(), url.to_owned());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let ports = peer_ports(&client, &url, calls).await;
                // The runtime goes on driving the connection while the thread waits.
                tokio::task::spawn_blocking(move || {
                    called.wait();
                    release.wait();
                })
                .await
                .unwrap();
                ports
            })
        })
    }

    /// A tiny HTTP/1.1 server on `listener`: it counts the connections it accepts and answers
    /// every request on them with `body(the client's address)`.
    async fn answering(
        listener: tokio::net::TcpListener,
        body: fn(std::net::SocketAddr) -> String,
        connections: Arc<AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, peer)) = listener.accept().await else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = body(peer);
                        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    /// An HTTP/1.1 server on its own thread: `/start` redirects (307) to `/elsewhere`, which
    /// answers `arrived`.
    fn redirecting_server() -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                            line.clear();
                        }
                        let reply = if request_line.starts_with("GET /start") {
                            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\narrived"
                        };
                        if writer.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn plain_http_is_sent_directly_and_its_redirects_are_not_followed() {
        let base = redirecting_server();
        let client =
            crate::adapter_client("test", Duration::from_secs(5), HeaderMap::new(), |builder| builder).unwrap();
        let start = format!("{base}/start");
        // The direct client answers with the redirect itself; the key never goes elsewhere.
        let direct = client.send(client.get(&start), Reading::Streamed).await.unwrap();
        assert_eq!(direct.status(), 307);
        // It reports the URL it answers, as reqwest's own responses do.
        assert_eq!(direct.url().as_str(), start);
        // A request with its own timeout goes through reqwest, which follows it.
        let through_reqwest =
            client.send(client.get(&start).timeout(Duration::from_secs(5)), Reading::Streamed).await.unwrap();
        assert_eq!(through_reqwest.status(), 200);
        assert_eq!(through_reqwest.text().await.unwrap(), "arrived");
    }

    #[test]
    fn a_thread_that_sends_only_plain_http_builds_no_reqwest_client() {
        let base = redirecting_server();
        let client =
            crate::adapter_client("test", Duration::from_secs(5), HeaderMap::new(), |builder| builder).unwrap();
        let clients_built = |client: &HttpClient, request: fn(&HttpClient, String) -> RequestBuilder| {
            let (client, url) = (client.clone(), format!("{base}/elsewhere"));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let answer =
                    runtime.block_on(async { client.send(request(&client, url), Reading::Streamed).await }).unwrap();
                assert_eq!(answer.status(), 200);
                CLIENTS.with_borrow(HashMap::len)
            })
            .join()
            .unwrap()
        };
        assert_eq!(clients_built(&client, |client, url| client.get(url)), 0);
        // A request reqwest carries (it has a timeout of its own) makes the thread's client.
        assert_eq!(clients_built(&client, |client, url| client.get(url).timeout(Duration::from_secs(5))), 1);
    }

    /// `send` builds the request before its future is polled; that must not start anything. A
    /// future dropped unpolled (a `select!` that chose another branch) opens no connection on
    /// either client: the only connection the server sees is the request that was awaited.
    #[tokio::test]
    async fn a_send_dropped_before_it_is_polled_opens_no_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        tokio::spawn(answering(listener, |_| "ok".into(), connections.clone()));
        let client =
            crate::adapter_client("test", Duration::from_secs(5), HeaderMap::new(), |builder| builder).unwrap();
        drop(client.send(client.get(&url), Reading::Streamed));
        drop(client.send(client.get(&url).timeout(Duration::from_secs(5)), Reading::Streamed));
        let answer = client.send(client.get(&url), Reading::Streamed).await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "only the awaited request connected");
    }

    /// A streamed answer's connection reads at most 2 KiB at a time (little memory per open
    /// stream); an answer wanted whole that arrives at once is read in one piece. The pieces are
    /// the chunks hyper hands on, one per read.
    #[tokio::test]
    async fn an_answer_wanted_whole_is_read_in_larger_pieces_than_a_streamed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(answering(listener, |_| "x".repeat(6_000), Arc::new(AtomicUsize::new(0))));
        let client =
            crate::adapter_client("test", Duration::from_secs(5), HeaderMap::new(), |builder| builder).unwrap();
        let mut largest = HashMap::new();
        for reading in [Reading::Streamed, Reading::Whole, Reading::Streamed, Reading::Whole] {
            let mut answer = client.send(client.get(&url), reading).await.unwrap();
            let mut length = 0;
            while let Some(chunk) = answer.chunk().await.unwrap() {
                length += chunk.len();
                let piece = largest.entry(reading).or_insert(0);
                *piece = chunk.len().max(*piece);
            }
            assert_eq!(length, 6_000);
        }
        assert!(largest[&Reading::Streamed] <= 2_048, "{largest:?}");
        assert!(largest[&Reading::Whole] > 2_048, "{largest:?}");
    }

    #[test]
    fn debug_output_masks_the_keys_in_default_headers_on_both_clients() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", crate::secret_header("sk-ant-secret-0123456789").unwrap());
        let client = crate::adapter_client("test", Duration::from_secs(5), headers, |builder| builder).unwrap();
        let shown = format!("{client:?}");
        assert!(shown.contains("direct") && shown.contains("x-api-key"), "{shown}");
        assert!(!shown.contains("0123456789"), "{shown}");
    }

    #[test]
    fn each_thread_has_its_own_pool_and_reuses_it() {
        // A tiny HTTP/1.1 server, on a runtime of its own, that answers each request with the
        // client's source port.
        let server = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        server.spawn(answering(listener, |peer| peer.port().to_string(), Arc::new(AtomicUsize::new(0))));

        let client =
            crate::adapter_client("test", Duration::from_secs(5), HeaderMap::new(), |builder| builder).unwrap();
        // The first thread calls, then keeps its runtime (and its idle pooled connection) alive
        // while the second calls.
        let (first_called, second_called) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let release = Arc::new(Barrier::new(3));
        let first = calls_on_a_thread(&client, &url, 3, first_called.clone(), release.clone());
        first_called.wait();
        let second = calls_on_a_thread(&client, &url, 3, second_called.clone(), release.clone());
        second_called.wait();
        release.wait();
        let (here, there) = (first.join().unwrap(), second.join().unwrap());
        assert!(here.iter().all(|port| *port == here[0]), "one thread reuses its connection: {here:?}");
        assert!(there.iter().all(|port| *port == there[0]), "{there:?}");
        assert_ne!(here[0], there[0], "another thread opens its own connection, not the first thread's");
    }
}
