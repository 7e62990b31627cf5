//! `copilot-bench http`: the same load and report as `load`, against any OpenAI-compatible HTTP
//! endpoint (`POST {base}/chat/completions`, streamed as server-sent events), so other gateways in
//! front of the same upstream (LiteLLM's proxy, …) are measured the same way as Copilot. Also the
//! direct (no gateway) side of `overhead` when the upstream is OpenAI-compatible.

use std::borrow::Cow;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::BoxError;
use crate::loadgen::{self, Backend, CallError, ChunkClock, LoadArgs, Rpc, RunInfo};
use crate::report;

#[derive(clap::Args, Clone, Serialize)]
pub struct HttpCmd {
    /// The endpoint's base URL: requests go to BASE/chat/completions (LiteLLM's proxy listens on
    /// port 4000 and also serves /v1; fake-openai's base ends in /v1).
    #[arg(long, default_value = "http://127.0.0.1:4000/v1")]
    pub base_url: String,
    /// The model name to send, as the endpoint knows it.
    #[arg(long)]
    pub model: String,
    /// Sent as `Authorization: Bearer KEY` (e.g. LiteLLM's master key). Never written to reports.
    #[arg(long, env = "COPILOT_BENCH_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Speak HTTP/2 without TLS (prior knowledge, as to nginx's `listen … http2`): every caller on
    /// one connection, as a gRPC client does. The floor of a gateway's first hop.
    #[arg(long)]
    pub http2: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
}

/// A reqwest client for benchmark traffic (plain HTTP/1.1 to loopback servers, pooled).
/// How a run that POSTs to an HTTP API reads in reports: the API, and for streamed answers their
/// framing (`SSE`, `NDJSON`) and whether `Generate` collects them.
pub fn describe_post(url: &str, api: &str, framing: &str, rpc: Rpc, stream: bool, model: &str) -> String {
    let exchange = match (rpc, stream) {
        (_, false) => "stream: false".to_owned(),
        (Rpc::Generate, true) => format!("stream: true, {framing} collected"),
        (Rpc::Chat, true) => format!("stream: true, {framing}"),
        (Rpc::Embed, true) => "embeddings".to_owned(),
    };
    format!("HTTP/1.1 POST {url} ({api}, {exchange}), model {model}")
}

pub fn http_client() -> Result<reqwest::Client, BoxError> {
    build_client(reqwest::Client::builder())
}

fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, BoxError> {
    // reqwest is built without a TLS crypto provider and refuses to build a client until one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(builder.tcp_nodelay(true).build().map_err(|e| format!("cannot build an HTTP client: {e}"))?)
}

/// A request failure before any answer (connection refused, reset, …).
pub fn transport_error(error: reqwest::Error) -> CallError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    CallError::new("TRANSPORT", message)
}

/// A non-2xx answer: `HTTP nnn` and the start of its body.
pub async fn status_error(response: reqwest::Response) -> CallError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    CallError::new(format!("HTTP {status}"), body.chars().take(300).collect::<String>())
}

/// Sends every request to an OpenAI-compatible `/chat/completions`.
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    rpc: Rpc,
    /// Whether the upstream is asked for a stream: always for Chat; for Generate only when asked
    /// (then collected, as Copilot does).
    stream: bool,
    body: Bytes,
    /// The HTTP version every answer must come in (`--http2` makes it HTTP/2): checked per call,
    /// so a run reported as HTTP/2 was HTTP/2.
    version: reqwest::Version,
}

impl OpenAiBackend {
    /// `stream_generate`: ask for a stream for Generate too (see `OverheadCmd::direct_stream`).
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        load: &LoadArgs,
        stream_generate: bool,
    ) -> Result<Self, BoxError> {
        if load.rpc == Rpc::Embed {
            return Err("--rpc embed is measured against Ollama's /api/embed only (--upstream-kind ollama)".into());
        }
        let stream = load.rpc.streaming() || stream_generate;
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": load.scenario.prompt()}],
            "max_tokens": load.max_tokens,
            "temperature": load.temperature,
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let body = Bytes::from(body.to_string());
        Ok(OpenAiBackend {
            client: http_client()?,
            url,
            api_key,
            rpc: load.rpc,
            stream,
            body,
            version: reqwest::Version::HTTP_11,
        })
    }

    /// What it drives, for reports.
    pub fn describe(&self, model: &str) -> String {
        let described = describe_post(&self.url, "OpenAI-compatible", "SSE", self.rpc, self.stream, model);
        match self.version {
            reqwest::Version::HTTP_2 => described.replacen("HTTP/1.1", "HTTP/2", 1),
            _ => described,
        }
    }
}

impl Backend for OpenAiBackend {
    async fn call(&self, _seq: u64, clock: &mut ChunkClock) -> Result<Option<u64>, CallError> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_error)?;
        if response.version() != self.version {
            let message = format!("asked for {:?}, answered in {:?}", self.version, response.version());
            return Err(CallError::new("PROTOCOL", message));
        }
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        if !self.stream {
            let body = response.bytes().await.map_err(transport_error)?;
            return completion_tokens(&body);
        }
        let mut events = response.bytes_stream().eventsource();
        let mut stream = SseState::default();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| CallError::new("TRANSPORT", e.to_string()))?;
            if stream.event(&event.data)? && self.rpc.streaming() {
                clock.chunk();
            }
            if stream.done {
                break;
            }
        }
        stream.finish()
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    /// llama.cpp's and DeepSeek's thinking; vLLM's newer `reasoning`.
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Vec<serde::de::IgnoredAny>,
}

impl Delta<'_> {
    /// Whether the delta carries output: text, thinking or a piece of a tool call.
    fn has_output(&self) -> bool {
        let some = |text: &Option<Cow<'_, str>>| text.as_deref().is_some_and(|t| !t.is_empty());
        some(&self.content) || some(&self.reasoning_content) || some(&self.reasoning) || !self.tool_calls.is_empty()
    }
}

fn bad_response(what: &str, error: impl std::fmt::Display) -> CallError {
    CallError::new("BAD RESPONSE", format!("{what}: {error}"))
}

/// The output tokens of a whole (`stream: false`) completion.
fn completion_tokens(body: &[u8]) -> Result<Option<u64>, CallError> {
    let completion: Completion = serde_json::from_slice(body).map_err(|e| bad_response("completion", e))?;
    if completion.choices.is_empty() {
        return Err(bad_response("completion", "no choices"));
    }
    Ok(completion.usage.and_then(|u| u.completion_tokens))
}

/// What a chat completion stream has said so far.
#[derive(Debug, Default)]
struct SseState {
    /// A `finish_reason` arrived.
    finished: bool,
    /// `data: [DONE]` arrived: nothing more will.
    done: bool,
    completion_tokens: Option<u64>,
}

impl SseState {
    /// Takes in one event's data; true if it carried output (text, thinking or a tool-call piece).
    fn event(&mut self, data: &str) -> Result<bool, CallError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(false);
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| bad_response("stream chunk", e))?;
        if let Some(error) = chunk.error {
            let message =
                error.get("message").and_then(|m| m.as_str()).map_or_else(|| error.to_string(), str::to_owned);
            return Err(CallError::new("STREAM ERROR", message));
        }
        if let Some(tokens) = chunk.usage.and_then(|u| u.completion_tokens) {
            self.completion_tokens = Some(tokens);
        }
        let mut content = false;
        for choice in &chunk.choices {
            content |= choice.delta.as_ref().is_some_and(Delta::has_output);
            self.finished |= choice.finish_reason.is_some();
        }
        Ok(content)
    }

    /// The stream ended: complete if it said it finished (some servers send no `[DONE]`).
    fn finish(self) -> Result<Option<u64>, CallError> {
        if self.finished || self.done {
            Ok(self.completion_tokens)
        } else {
            Err(CallError::new("INCOMPLETE", "the stream ended without a finish_reason or [DONE]"))
        }
    }
}

pub async fn run(cmd: HttpCmd) -> Result<ExitCode, BoxError> {
    let started_unix_s = report::unix_now();
    let mut backend = OpenAiBackend::new(&cmd.base_url, &cmd.model, cmd.api_key.clone(), &cmd.load, false)?;
    if cmd.http2 {
        backend.client = build_client(reqwest::Client::builder().http2_prior_knowledge())?;
        backend.version = reqwest::Version::HTTP_2;
    }
    let backend = Arc::new(backend);
    let info = RunInfo { label: "http".to_owned(), target: backend.describe(&cmd.model), pid: cmd.load.pid };
    let run = loadgen::measure(backend, &cmd.load, info).await?;
    report::emit_single("http", started_unix_s, &cmd, &run, cmd.load.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hosted-OpenAI stream with `include_usage`, as fake-openai and LiteLLM send it.
    const OPENAI: [&str; 6] = [
        r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"You"},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" said \"hi\""},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        "[DONE]",
    ];

    #[test]
    fn reads_an_openai_stream() {
        let mut state = SseState::default();
        let content: Vec<bool> = OPENAI.iter().map(|data| state.event(data).unwrap()).collect();
        assert_eq!(content, [false, true, true, false, false, false]);
        assert!(state.done && state.finished);
        assert_eq!(state.finish(), Ok(Some(2)));
    }

    #[test]
    fn a_stream_without_usage_or_done_is_complete_once_finished() {
        let mut state = SseState::default();
        for data in &OPENAI[..4] {
            state.event(data).unwrap();
        }
        assert_eq!(state.finish(), Ok(None));
    }

    #[test]
    fn a_cut_stream_or_an_error_event_fails() {
        let mut state = SseState::default();
        state.event(OPENAI[1]).unwrap();
        assert_eq!(state.finish().unwrap_err().code, "INCOMPLETE");

        let error =
            SseState::default().event(r#"{"error":{"message":"overloaded","type":"server_error"}}"#).unwrap_err();
        assert_eq!(error, CallError::new("STREAM ERROR", "overloaded"));
        assert_eq!(SseState::default().event("not json").unwrap_err().code, "BAD RESPONSE");
    }

    #[test]
    fn reads_a_whole_completion() {
        let body = br#"{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":7,"total_tokens":8}}"#;
        assert_eq!(completion_tokens(body), Ok(Some(7)));
        assert_eq!(completion_tokens(br#"{"choices":[{}]}"#), Ok(None));
        assert_eq!(completion_tokens(br#"{"choices":[]}"#).unwrap_err().code, "BAD RESPONSE");
    }

    #[test]
    fn request_body_asks_for_usage_when_streaming() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let load = Cli::try_parse_from(["bench", "--rpc", "chat", "--max-tokens", "64"]).unwrap().load;
        let backend = OpenAiBackend::new("http://127.0.0.1:4000/v1/", "gpt-4o-mini", None, &load, false).unwrap();
        assert_eq!(backend.url, "http://127.0.0.1:4000/v1/chat/completions");
        let body: serde_json::Value = serde_json::from_slice(&backend.body).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["messages"][0]["content"].as_str().unwrap().split_whitespace().count(), 10);

        let load = Cli::try_parse_from(["bench", "--rpc", "generate"]).unwrap().load;
        let backend = OpenAiBackend::new("http://h/v1", "m", None, &load, false).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&backend.body).unwrap();
        assert_eq!((body["stream"].as_bool(), body.get("stream_options")), (Some(false), None));
    }
}
