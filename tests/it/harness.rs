//! Starts the real `copilot` binary on loopback and talks gRPC to it.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot_fakes::FakeOllama;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub type RawHttp2 =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>;

/// Variables a developer's shell might carry that would change what the binary under test does,
/// beside every vendor variable the configuration reads (`copilot::config::VENDOR_VARIABLES`).
const INHERITED_VARS: &[&str] = &[
    "GEMINI_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    "COPILOT_CONFIG",
    "COPILOT_ADDR",
    "COPILOT_LOG_FORMAT",
    "COPILOT_MODELS_DIR",
    "OLLAMA_MODELS",
    "RUST_LOG",
];

/// Removes from `command` every variable of the developer's shell that configures Copilot.
pub fn scrub_environment(command: &mut Command) {
    for var in INHERITED_VARS.iter().chain(copilot::config::VENDOR_VARIABLES.iter().map(|(var, _)| var)) {
        command.env_remove(var);
    }
}

pub struct Copilot {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    _config: Option<tempfile::NamedTempFile>,
}

/// A configuration with only an Ollama provider, for the tests that talk to a fake Ollama. No
/// retries and no circuit breaker, so each test sees the one behaviour it is about; the routing
/// tests exercise those.
pub const OLLAMA_ONLY: &str = "[providers.ollama]\nretries = 0\nbreaker_failures = 0\n";

impl Copilot {
    /// Starts copilot with only an Ollama provider, pointed at `fake`, plus `env`.
    pub async fn start(fake: &FakeOllama, env: &[(&str, &str)]) -> Copilot {
        let mut all = vec![("OLLAMA_HOST", fake.base_url())];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        Self::start_with(OLLAMA_ONLY, &all).await
    }

    /// Starts copilot with `config` as its configuration file, plus `env`.
    pub async fn start_with(config: &str, env: &[(&str, String)]) -> Copilot {
        let config_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config_file.path(), config).unwrap();
        Self::launch(Some(config_file), env).await
    }

    /// Starts copilot with no configuration file: the environment alone configures it (as a
    /// first user's `.env` does). The models directory is empty unless `env` names one.
    pub async fn start_env_only(env: &[(&str, String)]) -> Copilot {
        Self::launch(None, env).await
    }

    async fn launch(config_file: Option<tempfile::NamedTempFile>, env: &[(&str, String)]) -> Copilot {
        let mut command = Command::new(env!("CARGO_BIN_EXE_copilot"));
        command.args(["serve", "--addr", "127.0.0.1:0"]);
        if let Some(file) = &config_file {
            command.arg("--config").arg(file.path());
        }
        scrub_environment(&mut command);
        // Without a file the embedded provider and the local Ollama are configured too: keep
        // them away from the developer's models and Ollama.
        if config_file.is_none() {
            command.env("COPILOT_MODELS_DIR", std::env::temp_dir().join("copilot-it-no-models"));
            command.env("OLLAMA_MODELS", "/nonexistent");
            command.env("OLLAMA_HOST", "http://127.0.0.1:9");
        }
        command.env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.kill_on_drop(true).spawn().expect("spawn copilot");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("copilot listening on ").nth(1) {
                    // Text or JSON log lines: the address is what follows, up to a space or quote.
                    let addr: SocketAddr = rest.split([' ', '"']).next().unwrap().parse().unwrap();
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("copilot did not start; its log:\n{}", logs.lock().unwrap()),
        };
        Copilot { child, addr, logs, _config: config_file }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.expect("connect to copilot")
    }

    pub async fn client(&self) -> CopilotClient<Channel> {
        CopilotClient::new(self.channel().await)
    }

    /// A client that sends `grpc-timeout` but does not enforce it itself. tonic's `Channel`
    /// cancels locally when the timeout expires (reporting CANCELLED), which would hide the status
    /// the server sends; real clients in other languages see the server's DEADLINE_EXCEEDED.
    pub fn client_without_local_deadline(&self) -> CopilotClient<RawHttp2> {
        let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
        CopilotClient::with_origin(http2, self.url().parse().unwrap())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The Prometheus page of a copilot started with a metrics listener (`server.metrics_addr =
    /// "127.0.0.1:0"`): the whole HTTP response.
    pub async fn metrics_page(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let logs = self.logs();
        let addr = logs
            .lines()
            .find_map(|line| line.split("metrics listening on ").nth(1))
            .and_then(|rest| rest.split(['"', ' ']).next())
            .expect("the metrics listener's address in the log")
            .to_string();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut page = String::new();
        within(Duration::from_secs(20), stream.read_to_string(&mut page)).await.unwrap();
        page
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("copilot is running")
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("copilot is running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits for the process to exit (panics after `limit`: the server must never hang).
    pub async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("copilot did not exit within {limit:?}; its log:\n{}", self.logs()),
        }
    }
}

/// The sum of the samples of a Prometheus `page` whose line starts with `name` and holds every one
/// of `labels`; 0 when there is none.
pub fn sample(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `future`, failing the test instead of hanging if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| panic!("no result within {limit:?}"))
}

/// A tool from the environment variable `var`, else as [`installed_tool`] finds it.
pub fn tool(var: &str, installed: &str, fallback: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| installed_tool(installed, fallback))
}

/// The copy of a tool `scripts/test` installs under the repository (`installed`, a relative path),
/// else `fallback` from the PATH.
pub fn installed_tool(installed: &str, fallback: &str) -> String {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(installed);
    if local.exists() { local.display().to_string() } else { fallback.into() }
}

/// A raw request body for hand-made gRPC calls: some bytes, then the end of the body, or (a stalled
/// client) nothing more, ever.
pub struct RawBody {
    data: Option<bytes::Bytes>,
    then_stall: bool,
}

impl RawBody {
    /// One gRPC frame: `flag`, the big-endian length, `message`; then the body ends.
    pub fn frame(flag: u8, message: &[u8]) -> RawBody {
        let mut bytes = vec![flag];
        bytes.extend((message.len() as u32).to_be_bytes());
        bytes.extend(message);
        RawBody { data: Some(bytes.into()), then_stall: false }
    }

    /// The bytes this body sends.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.data.unwrap_or_default()
    }

    /// `bytes` as they are, then the end of the body: for bodies that are not one whole frame.
    pub fn raw(bytes: impl Into<bytes::Bytes>) -> RawBody {
        RawBody { data: Some(bytes.into()), then_stall: false }
    }

    /// `first`, then a stall: the body never ends.
    pub fn stalled_after(first: impl Into<bytes::Bytes>) -> RawBody {
        RawBody { data: Some(first.into()), then_stall: true }
    }
}

impl http_body::Body for RawBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.data.take() {
            Some(data) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            None if self.then_stall => std::task::Poll::Pending,
            None => std::task::Poll::Ready(None),
        }
    }
}

/// A fake Ollama serving model `m`, and Copilot in front of it alone with `limits` as its
/// `[limits]` section.
pub async fn start_with_limits(limits: &str) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(copilot_fakes::FakeModel::new("m"));
    let config = format!("{OLLAMA_ONLY}[limits]\n{limits}\n");
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    (fake, copilot)
}

/// A plain HTTP/2 connection to `copilot`, for calls a gRPC client would refuse to make.
pub async fn raw_connection(copilot: &Copilot) -> hyper::client::conn::http2::SendRequest<RawBody> {
    let tcp = tokio::net::TcpStream::connect(copilot.url().trim_start_matches("http://")).await.unwrap();
    let (connection, driver) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(driver);
    connection
}

/// One call to `/copilot.v1.Copilot/<method>` on `connection` with `body` and extra `headers`: its
/// status (from the trailers, or the headers of a trailers-only reply) and the message bytes
/// received.
pub async fn raw_call(
    connection: &hyper::client::conn::http2::SendRequest<RawBody>,
    method: &str,
    headers: &[(&str, &str)],
    body: RawBody,
) -> (tonic::Status, Vec<u8>) {
    raw_call_to(connection, &format!("/copilot.v1.Copilot/{method}"), headers, body).await
}

/// [`raw_call`] to any path (`/package.Service/Method`).
pub async fn raw_call_to(
    connection: &hyper::client::conn::http2::SendRequest<RawBody>,
    path: &str,
    headers: &[(&str, &str)],
    body: RawBody,
) -> (tonic::Status, Vec<u8>) {
    const LIMIT: Duration = Duration::from_secs(20);
    let mut request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within(LIMIT, connection.clone().send_request(request.body(body).unwrap())).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) =
        within(LIMIT, std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx))).await
    {
        let frame = frame.expect("the response ends with a status, not a reset");
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    let status = tonic::Status::from_header_map(trailers.as_ref().unwrap_or(&parts.headers)).expect("a grpc-status");
    (status, data)
}
