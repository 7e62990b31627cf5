//! `copilot-bench overhead`: what Copilot adds. One run sends the same load (a) straight to a fake
//! upstream over HTTP, then (b) through Copilot's gRPC API to that same fake, and prints, per
//! percentile, the latency Copilot adds (b − a) and its throughput as a ratio (b / a).
//!
//! It starts what is not given: the fake (`fake-ollama`, or `fake-openai` with
//! `--upstream-kind openai`) on a free port, and a Copilot on a free port whose only provider is
//! that fake (retries off), reading where each listens from its output, and stops both at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::ValueEnum;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{OpenAiBackend, describe_post, http_client, status_error, transport_error};
use crate::load::GrpcBackend;
use crate::loadgen::{self, Backend, CallError, ChunkClock, LoadArgs, Rpc, RunInfo};
use crate::procs::{self, Process};
use crate::report::{self, Comparison, RunReport};
use crate::{BoxError, Target};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Ollama's native API (`/api/chat`, NDJSON): fake-ollama, or a real Ollama.
    Ollama,
    /// An OpenAI-compatible API (`/chat/completions`, SSE): fake-openai, vLLM, llama.cpp, …
    Openai,
}

impl UpstreamKind {
    fn fake_binary(self) -> &'static str {
        match self {
            UpstreamKind::Ollama => "fake-ollama",
            UpstreamKind::Openai => "fake-openai",
        }
    }

    fn api(self) -> &'static str {
        match self {
            UpstreamKind::Ollama => "Ollama native API",
            UpstreamKind::Openai => "OpenAI-compatible API",
        }
    }

    /// A model the fakes serve that answers with exactly `--max-tokens` chunks, so the answer's
    /// length is the benchmark's choice rather than the prompt's.
    fn default_model(self) -> &'static str {
        "endless"
    }

    /// The provider name in the Copilot config we write (the prefix of its model names).
    fn provider(self) -> &'static str {
        match self {
            UpstreamKind::Ollama => "ollama",
            UpstreamKind::Openai => "openai",
        }
    }
}

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct OverheadCmd {
    /// The upstream's API: ollama (fake-ollama) or openai (fake-openai, base URL ending in /v1).
    #[arg(long, value_enum, default_value_t = UpstreamKind::Ollama)]
    pub upstream_kind: UpstreamKind,
    /// An upstream already running (e.g. http://127.0.0.1:11434, or http://127.0.0.1:8000/v1 for
    /// openai); default: start the fake.
    #[arg(long)]
    pub upstream: Option<String>,
    /// The fake to start (default: target/release/fake-ollama, else target/debug/fake-ollama;
    /// fake-openai for --upstream-kind openai).
    #[arg(long)]
    pub fake_bin: Option<PathBuf>,
    /// The started fake's pause before each streamed chunk, in milliseconds (its --token-delay-ms).
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// The started fake's pause before answering, a simulated time to first token (its
    /// --header-delay-ms), in milliseconds.
    #[arg(long, alias = "header-delay-ms", default_value_t = 0)]
    pub ttft_delay_ms: u64,
    /// A Copilot already running whose routes lead to --upstream (required with it); default: start one.
    #[arg(long, requires = "upstream")]
    pub addr: Option<String>,
    /// The Copilot to start (default: target/release/copilot, else target/debug/copilot).
    #[arg(long)]
    pub copilot_bin: Option<PathBuf>,
    /// The model as the upstream names it (default: `endless`, which the fakes answer with exactly
    /// --max-tokens chunks; their `llama3.2:3b` / `gpt-4o-mini` echo the prompt instead).
    #[arg(long)]
    pub model: Option<String>,
    /// The model as Copilot routes it (default: PROVIDER/MODEL, PROVIDER being ollama or openai).
    #[arg(long)]
    pub copilot_model: Option<String>,
    /// For Generate: (a) asks the upstream for a stream too (`stream: true`) and collects it, the
    /// exchange Copilot itself has with the upstream for a Generate; the difference is then
    /// Copilot's hop alone. Default: (a) asks for a whole answer (`stream: false`), as a direct
    /// unary caller would.
    #[arg(long)]
    pub direct_stream: bool,
    /// HTTP/2 connections (b) spreads its calls over, round robin (Copilot serves each connection
    /// on one thread by default, so one connection uses one of its cores).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
}

/// Sends every request straight to Ollama's native `/api/chat`.
pub struct OllamaBackend {
    client: reqwest::Client,
    url: String,
    rpc: Rpc,
    /// Whether the upstream is asked for a stream: always for Chat, for Generate with --direct-stream.
    stream: bool,
    body: Bytes,
}

impl OllamaBackend {
    pub fn new(base_url: &str, model: &str, load: &LoadArgs, stream_generate: bool) -> Result<Self, BoxError> {
        let base_url = base_url.trim_end_matches('/');
        if load.rpc == Rpc::Embed {
            let inputs = vec![load.scenario.prompt(); load.embed_batch as usize];
            let body = json!({"model": model, "input": inputs, "truncate": false});
            return Ok(OllamaBackend {
                client: http_client()?,
                url: format!("{base_url}/api/embed"),
                rpc: load.rpc,
                stream: false,
                body: Bytes::from(body.to_string()),
            });
        }
        let stream = load.rpc.streaming() || stream_generate;
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": load.scenario.prompt()}],
            "stream": stream,
            "options": {"num_predict": load.max_tokens, "temperature": load.temperature},
        });
        if load.thinking {
            body["think"] = json!(true);
        }
        Ok(OllamaBackend {
            client: http_client()?,
            url: format!("{base_url}/api/chat"),
            rpc: load.rpc,
            stream,
            body: Bytes::from(body.to_string()),
        })
    }

    fn describe(&self, model: &str) -> String {
        describe_post(&self.url, "Ollama native API", "NDJSON", self.rpc, self.stream, model)
    }
}

impl Backend for OllamaBackend {
    async fn call(&self, _seq: u64, clock: &mut ChunkClock) -> Result<Option<u64>, CallError> {
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        if self.rpc == Rpc::Embed {
            let body = response.bytes().await.map_err(transport_error)?;
            let answer: EmbedAnswer = serde_json::from_slice(&body)
                .map_err(|e| CallError::new("BAD RESPONSE", format!("embed answer: {e}")))?;
            return Ok(Some(answer.embeddings.len() as u64));
        }
        let mut state = NdjsonState::default();
        if !self.stream {
            let body = response.bytes().await.map_err(transport_error)?;
            state.line(&body)?;
            return state.finish();
        }
        let mut body = response.bytes_stream();
        let mut lines = Lines::default();
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(transport_error)?;
            lines.push(&bytes, |line| {
                if state.line(line)? && self.rpc.streaming() {
                    clock.chunk();
                }
                Ok(())
            })?;
        }
        lines.finish(|line| state.line(line).map(drop))?;
        state.finish()
    }
}

/// An `/api/embed` answer: only how many vectors came.
#[derive(Deserialize)]
struct EmbedAnswer {
    embeddings: Vec<serde::de::IgnoredAny>,
}

/// Splits a byte stream into lines, whatever the chunk boundaries.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `bytes` and hands each complete, non-blank line to `each`.
    fn push(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8]) -> Result<(), CallError>) -> Result<(), CallError> {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(at) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + at];
            if !line.trim_ascii().is_empty() {
                each(line)?;
            }
            start += at + 1;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Hands a last line without a newline to `each`.
    fn finish(self, mut each: impl FnMut(&[u8]) -> Result<(), CallError>) -> Result<(), CallError> {
        if self.pending.trim_ascii().is_empty() { Ok(()) } else { each(&self.pending) }
    }
}

#[derive(Deserialize)]
struct OllamaLine<'a> {
    #[serde(borrow)]
    message: Option<OllamaMessage<'a>>,
    #[serde(default)]
    done: bool,
    eval_count: Option<u64>,
    #[serde(borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OllamaMessage<'a> {
    #[serde(default, borrow)]
    content: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    thinking: std::borrow::Cow<'a, str>,
    #[serde(default)]
    tool_calls: Vec<serde::de::IgnoredAny>,
}

/// What an Ollama chat answer has said so far.
#[derive(Debug, Default)]
struct NdjsonState {
    done: bool,
    eval_count: Option<u64>,
}

impl NdjsonState {
    /// Takes in one JSON line; true if it carried output: text, thinking or tool calls.
    fn line(&mut self, line: &[u8]) -> Result<bool, CallError> {
        let line: OllamaLine =
            serde_json::from_slice(line).map_err(|e| CallError::new("BAD RESPONSE", format!("NDJSON line: {e}")))?;
        if let Some(error) = line.error {
            return Err(CallError::new("STREAM ERROR", error.into_owned()));
        }
        if line.done {
            self.done = true;
            // Ollama leaves out a zero eval_count.
            self.eval_count = Some(line.eval_count.unwrap_or(0));
        }
        Ok(line.message.is_some_and(|m| !m.content.is_empty() || !m.thinking.is_empty() || !m.tool_calls.is_empty()))
    }

    fn finish(self) -> Result<Option<u64>, CallError> {
        if self.done {
            Ok(self.eval_count)
        } else {
            Err(CallError::new("INCOMPLETE", "the answer ended without its done:true line"))
        }
    }
}

/// Where the upstream is and whether we started it.
#[derive(Debug, Serialize)]
struct UpstreamInfo {
    kind: UpstreamKind,
    url: String,
    model: String,
    /// The fake binary started, with its delays; `None` for one given with --upstream.
    started: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct CopilotInfo {
    addr: String,
    model: String,
    /// The Copilot binary started and its pid; `None` for one given with --addr.
    started: Option<PathBuf>,
    pid: Option<u32>,
}

#[derive(Serialize)]
struct OverheadReport<'a> {
    mode: &'static str,
    started_unix_s: u64,
    config: &'a OverheadCmd,
    upstream: &'a UpstreamInfo,
    copilot: &'a CopilotInfo,
    /// (a): the load sent straight to the upstream over HTTP.
    direct: &'a RunReport,
    /// (b): the same load through Copilot's gRPC API.
    through_copilot: &'a RunReport,
    comparison: &'a Comparison,
}

/// The Copilot configuration: one provider, the upstream, with retries off so a failure shows.
pub fn copilot_config(kind: UpstreamKind, upstream: &str) -> String {
    let mut text = format!("[providers.{}]\n", kind.provider());
    if kind == UpstreamKind::Openai {
        text.push_str("kind = \"openai\"\n");
    }
    text.push_str(&format!("base_url = {}\nretries = 0\n", toml_string(upstream)));
    text
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

pub async fn run(cmd: OverheadCmd) -> Result<ExitCode, BoxError> {
    let mut started = Vec::new();
    let mut config_file = None;
    let result = run_with(&cmd, &mut started, &mut config_file).await;
    for process in started {
        process.stop().await;
    }
    if let Some(path) = config_file {
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn run_with(
    cmd: &OverheadCmd,
    started: &mut Vec<Process>,
    config_file: &mut Option<PathBuf>,
) -> Result<ExitCode, BoxError> {
    let started_unix_s = report::unix_now();
    let kind = cmd.upstream_kind;
    let model = match (&cmd.model, &cmd.upstream) {
        (Some(model), _) => model.clone(),
        (None, None) => kind.default_model().to_owned(),
        (None, Some(_)) => return Err("--model is required with --upstream (a model that upstream serves)".into()),
    };

    let upstream = match &cmd.upstream {
        Some(url) => {
            UpstreamInfo { kind, url: url.trim_end_matches('/').to_owned(), model: model.clone(), started: None }
        }
        None => {
            let (process, url, binary) = start_fake(cmd).await?;
            eprintln!("started {} (pid {}) at {url}", binary.display(), process.pid);
            started.push(process);
            UpstreamInfo { kind, url, model: model.clone(), started: Some(binary) }
        }
    };

    let copilot_model = cmd.copilot_model.clone().unwrap_or_else(|| format!("{}/{model}", kind.provider()));
    let copilot = match &cmd.addr {
        Some(addr) => {
            CopilotInfo { addr: procs::with_scheme(addr), model: copilot_model, started: None, pid: cmd.load.pid }
        }
        None => {
            let binary = procs::find_binary(cmd.copilot_bin.as_deref(), "copilot")?;
            let path = std::env::temp_dir().join(format!("copilot-bench-{}.toml", std::process::id()));
            std::fs::write(&path, copilot_config(kind, &upstream.url))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            *config_file = Some(path.clone());
            let (process, addr) = procs::start_copilot(&binary, &path, None).await?;
            eprintln!(
                "started {} (pid {}) at {addr}, routing {copilot_model} to {}",
                binary.display(),
                process.pid,
                upstream.url
            );
            let pid = process.pid;
            started.push(process);
            CopilotInfo { addr: procs::with_scheme(&addr), model: copilot_model, started: Some(binary), pid: Some(pid) }
        }
    };

    // (a) straight to the upstream.
    let fake_name = if upstream.started.is_some() { kind.fake_binary() } else { "upstream" };
    let (a, b) = ("(a) direct".to_owned(), "(b) through Copilot".to_owned());
    let direct = match kind {
        UpstreamKind::Ollama => {
            let backend = Arc::new(OllamaBackend::new(&upstream.url, &model, &cmd.load, cmd.direct_stream)?);
            let target = format!("{}\n  path: client → {fake_name} (no gateway)", backend.describe(&model));
            loadgen::measure(backend, &cmd.load, RunInfo { label: a, target, pid: None }).await?
        }
        UpstreamKind::Openai => {
            let backend = Arc::new(OpenAiBackend::new(&upstream.url, &model, None, &cmd.load, cmd.direct_stream)?);
            let target = format!("{}\n  path: client → {fake_name} (no gateway)", backend.describe(&model));
            loadgen::measure(backend, &cmd.load, RunInfo { label: a, target, pid: None }).await?
        }
    };

    // (b) the same load through Copilot.
    let target = Target { addr: copilot.addr.clone(), model: copilot.model.clone(), api_key: None };
    let backend = Arc::new(GrpcBackend::connect(&target, cmd.connections, &cmd.load).await?);
    let description = format!(
        "{}, over {} HTTP/2 connection(s)\n  path: client → Copilot (gRPC) → the same {fake_name} at {} ({})",
        GrpcBackend::describe(&target, cmd.load.rpc),
        cmd.connections,
        upstream.url,
        kind.api()
    );
    let info = RunInfo { label: b, target: description, pid: copilot.pid };
    let through_copilot = loadgen::measure(backend, &cmd.load, info).await?;

    let comparison = Comparison::of(&direct.summary, &through_copilot.summary);
    println!("{}", describe_setup(cmd, &upstream, &copilot));
    println!("{}", report::render_run(&direct));
    println!("{}", report::render_run(&through_copilot));
    print!("{}", report::render_comparison(&direct, &through_copilot, &comparison));
    if let Some(path) = &cmd.load.json {
        let json = OverheadReport {
            mode: "overhead",
            started_unix_s,
            config: cmd,
            upstream: &upstream,
            copilot: &copilot,
            direct: &direct,
            through_copilot: &through_copilot,
            comparison: &comparison,
        };
        report::write_json(path, &json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if direct.summary.ok == 0 || through_copilot.summary.ok == 0 {
        eprintln!("copilot-bench: every request of a run failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_setup(cmd: &OverheadCmd, upstream: &UpstreamInfo, copilot: &CopilotInfo) -> String {
    let fake = match &upstream.started {
        Some(binary) => format!(
            "{} started here, --token-delay-ms {} --header-delay-ms {}",
            binary.display(),
            cmd.token_delay_ms,
            cmd.ttft_delay_ms
        ),
        None => "given with --upstream".to_owned(),
    };
    let gateway = match (&copilot.started, copilot.pid) {
        (Some(binary), Some(pid)) => {
            let debug = if binary.components().any(|c| c.as_os_str() == "debug") {
                "; a DEBUG build: its overhead is many times a release build's"
            } else {
                ""
            };
            format!("{} started here (pid {pid}), retries = 0{debug}", binary.display())
        }
        _ => "given with --addr".to_owned(),
    };
    format!(
        "copilot-bench overhead: the same load (a) straight to the upstream, then (b) through Copilot to it\n\
         upstream: {} at {} ({fake})\n\
         Copilot: {} ({gateway})\n",
        upstream.kind.api(),
        upstream.url,
        copilot.addr
    )
}

/// Starts the fake upstream on a free loopback port: (process, base URL, binary).
async fn start_fake(cmd: &OverheadCmd) -> Result<(Process, String, PathBuf), BoxError> {
    let name = cmd.upstream_kind.fake_binary();
    let binary = procs::find_binary(cmd.fake_bin.as_deref(), name)?;
    let flags = [("--token-delay-ms", cmd.token_delay_ms), ("--header-delay-ms", cmd.ttft_delay_ms)];
    let (process, url) = procs::start_fake(&binary, name, &flags).await?;
    Ok((process, url, binary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_whatever_the_chunks() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        for piece in [&b"{\"a\":1}\n{\"b\""[..], b":2}\n\n", b"{\"c\":3}\n{\"d\":4}"] {
            lines
                .push(piece, |line| {
                    seen.push(String::from_utf8(line.to_vec()).unwrap());
                    Ok(())
                })
                .unwrap();
        }
        lines
            .finish(|line| {
                seen.push(String::from_utf8(line.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"]);
    }

    #[test]
    fn reads_an_ollama_stream() {
        let mut state = NdjsonState::default();
        let lines = [
            r#"{"model":"llama3.2:3b","created_at":"t","message":{"role":"assistant","content":"You"},"done":false}"#,
            r#"{"model":"llama3.2:3b","created_at":"t","message":{"role":"assistant","content":" said \"x\""},"done":false}"#,
            r#"{"model":"llama3.2:3b","created_at":"t","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":1,"eval_count":2}"#,
        ];
        let content: Vec<bool> = lines.iter().map(|l| state.line(l.as_bytes()).unwrap()).collect();
        assert_eq!(content, [true, true, false]);
        assert_eq!(state.finish(), Ok(Some(2)));
    }

    #[test]
    fn an_ollama_stream_without_done_or_with_an_error_fails() {
        let mut state = NdjsonState::default();
        state.line(br#"{"message":{"content":"a"},"done":false}"#).unwrap();
        assert_eq!(state.finish().unwrap_err().code, "INCOMPLETE");
        let error = NdjsonState::default().line(br#"{"error":"model crashed"}"#).unwrap_err();
        assert_eq!(error, CallError::new("STREAM ERROR", "model crashed"));
        // A done line without eval_count: zero tokens (Ollama leaves a zero out).
        let mut state = NdjsonState::default();
        state.line(br#"{"message":{"content":""},"done":true}"#).unwrap();
        assert_eq!(state.finish(), Ok(Some(0)));
    }

    #[test]
    fn copilot_config_points_one_provider_at_the_upstream() {
        assert_eq!(
            copilot_config(UpstreamKind::Ollama, "http://127.0.0.1:4000"),
            "[providers.ollama]\nbase_url = \"http://127.0.0.1:4000\"\nretries = 0\n"
        );
        assert_eq!(
            copilot_config(UpstreamKind::Openai, "http://127.0.0.1:8000/v1"),
            "[providers.openai]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\nretries = 0\n"
        );
        assert_eq!(procs::with_scheme("127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(procs::with_scheme("https://h:5"), "https://h:5");
    }
}
