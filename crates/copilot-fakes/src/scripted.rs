//! A loopback HTTP/1.1 server that answers with scripted bytes, for the wire cases a provider
//! fake does not produce: events split at awkward boundaries, a body cut or reset mid-stream, a
//! status line or framing no real server sends. It parses only enough of each request (the head
//! and `Content-Length`) to know where it ends; everything it writes comes from the script.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the server does, in order, for one request.
#[derive(Debug)]
pub enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Hang up (a plain close) without writing more.
    Close,
    /// Reset the connection (SO_LINGER 0), so the client sees an error rather than EOF.
    Reset,
    /// Read until the client hangs up, then say so (when given a sender).
    AwaitClientClose(Option<oneshot::Sender<()>>),
}

impl Step {
    /// Writes `text` as it is.
    pub fn text(text: &str) -> Step {
        Step::Write(text.as_bytes().to_vec())
    }

    /// Writes one chunk of a chunked body, holding `data`.
    pub fn chunk(data: &str) -> Step {
        Step::text(&format!("{:x}\r\n{data}\r\n", data.len()))
    }

    /// Writes the last chunk of a chunked body.
    pub fn end_of_body() -> Step {
        Step::text("0\r\n\r\n")
    }
}

/// A request as the server read it.
#[derive(Clone, Debug)]
pub struct ScriptedRequest {
    pub method: String,
    /// The path and query.
    pub path: String,
    pub body: Vec<u8>,
}

/// A running scripted server; it keeps serving until the test's runtime ends.
pub struct ScriptedServer {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<ScriptedRequest>>>,
    connections: Arc<AtomicUsize>,
}

/// What happens on a connection after its script: another request, or only the client's close.
#[derive(Clone, Copy)]
enum AfterScript {
    NextRequest,
    AwaitClientClose,
}

impl ScriptedServer {
    /// Plays one script per request, in order, over however many connections the client opens; a
    /// connection whose script ends without closing it reads its next request.
    pub async fn start(scripts: Vec<Vec<Step>>) -> ScriptedServer {
        Self::serve(scripts, usize::MAX, AfterScript::NextRequest).await
    }

    /// Plays `script` to the first request on the first connection, and accepts no other
    /// connection; when the script ends without closing, the connection is held until the client
    /// closes it.
    pub async fn once(script: Vec<Step>) -> ScriptedServer {
        Self::serve(vec![script], 1, AfterScript::AwaitClientClose).await
    }

    async fn serve(scripts: Vec<Vec<Step>>, max_connections: usize, after: AfterScript) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port for a scripted server");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let scripts = Arc::new(Mutex::new(scripts.into_iter()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (recorded, accepted) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            // The listener is dropped after the last connection allowed: later ones are refused.
            for _ in 0..max_connections {
                let Ok((socket, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(socket, scripts.clone(), recorded.clone(), after));
            }
        });
        ScriptedServer { addr, requests, connections }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests read so far, in order.
    pub fn requests(&self) -> Vec<ScriptedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connections_accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve_connection(
    mut socket: TcpStream,
    scripts: Arc<Mutex<std::vec::IntoIter<Vec<Step>>>>,
    requests: Arc<Mutex<Vec<ScriptedRequest>>>,
    after: AfterScript,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else { return };
        requests.lock().unwrap().push(request);
        let script = scripts.lock().unwrap().next().expect("more requests than scripts");
        for step in script {
            match step {
                Step::Write(bytes) => {
                    if socket.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Pause(pause) => tokio::time::sleep(pause).await,
                Step::Close => return,
                Step::Reset => {
                    // Deprecated because a non-zero linger blocks the thread on drop; zero does not.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::AwaitClientClose(report) => {
                    drain(&mut socket).await;
                    if let Some(report) = report {
                        let _ = report.send(());
                    }
                    return;
                }
            }
        }
        if let AfterScript::AwaitClientClose = after {
            drain(&mut socket).await;
            return;
        }
    }
}

/// Reads and drops what the client sends until it hangs up.
async fn drain(socket: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Reads one request from `socket`, the head and then as much body as `Content-Length` says,
/// leaving in `buf` what came after it; `None` when the client hangs up first.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<ScriptedRequest> {
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(socket, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().ok()))
        .flatten()
        .unwrap_or(0usize);
    while buf.len() < header_end + length {
        read_more(socket, buf).await?;
    }
    let body = buf[header_end..header_end + length].to_vec();
    buf.drain(..header_end + length);
    Some(ScriptedRequest { method, path, body })
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = socket.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    (n > 0).then_some(())
}
