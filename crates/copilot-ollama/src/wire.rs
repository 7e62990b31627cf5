//! Ollama's JSON on the wire: request bodies, response shapes, and the NDJSON chat stream decoder.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! Response types default every field because Ollama omits zero values (`omitempty`) and older
//! or newer servers add and drop fields freely.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use copilot_provider::{
    ChatRequest, Completion, FinishReason, GenerationOptions, ModelInfo, ProviderError, UpstreamTimings, Usage,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /api/chat`, borrowing from the provider-independent request.
#[derive(Debug, Serialize)]
pub(crate) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Options::is_empty")]
    pub options: Options<'a>,
    /// Seconds; negative keeps the model loaded forever. Ollama also takes duration strings,
    /// but a number is the one form every version understands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: std::borrow::Cow<'a, str>,
}

/// Ollama's `options` map. Unset fields are left out so the model's own defaults (from its
/// Modelfile) apply rather than ours.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl<'a> Options<'a> {
    pub fn from_generation(options: &'a GenerationOptions) -> Self {
        Options {
            temperature: options.temperature,
            num_predict: options.max_tokens,
            top_p: options.top_p,
            top_k: options.top_k,
            stop: &options.stop,
            seed: options.seed,
        }
    }

    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.num_predict.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop.is_empty()
            && self.seed.is_none()
    }
}

impl<'a> ChatBody<'a> {
    pub fn new(request: &'a ChatRequest, keep_alive: Option<i64>) -> Self {
        ChatBody {
            model: &request.model,
            messages: request
                .messages
                .iter()
                .map(|m| ChatMessage { role: m.role.as_str(), content: m.content() })
                .collect(),
            stream: true,
            options: Options::from_generation(&request.options),
            keep_alive,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ShowBody<'a> {
    pub model: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `{"error": "..."}`, the body of every Ollama error response and of a mid-stream failure line.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

/// The human-readable message of an error response: Ollama's `error` field, or the raw body
/// (shortened) when something in between (a proxy, a load balancer) answered instead.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error.into_owned();
    }
    copilot_http::excerpt(body, 500, None)
}

// ---------------------------------------------------------------------------------------------
// The NDJSON chat stream

/// Splits a byte stream into lines as chunks arrive. Chunk boundaries fall anywhere (mid-line,
/// mid-UTF-8 character), so bytes are held until their line's `\n` arrives; a line longer than
/// the limit fails, so an upstream that never ends its line cannot grow the buffer without bound.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`, so a long line arriving in many chunks is
    /// scanned once rather than once per chunk.
    searched: usize,
    limit: usize,
}

/// A line passed the splitter's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTooLong;

impl LineSplitter {
    pub fn with_limit(limit: usize) -> Self {
        LineSplitter { buf: BytesMut::new(), searched: 0, limit }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held for a line not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The next complete line (without its `\n`), skipping blank ones; `None` until more arrives.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        loop {
            let Some(offset) = memchr::memchr(b'\n', &self.buf[self.searched..]) else {
                self.searched = self.buf.len();
                return if self.buf.len() > self.limit { Err(LineTooLong) } else { Ok(None) };
            };
            if self.searched + offset > self.limit {
                return Err(LineTooLong);
            }
            // Splitting shares the buffer instead of copying the line out.
            let mut line = self.buf.split_to(self.searched + offset + 1);
            self.searched = 0;
            line.truncate(line.len() - 1);
            if !line.trim_ascii().is_empty() {
                return Ok(Some(line.freeze()));
            }
        }
    }

    /// At end of input: whatever followed the last `\n`, if it is not blank.
    pub fn finish(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        if self.buf.len() > self.limit {
            return Err(LineTooLong);
        }
        self.searched = 0;
        let rest = self.buf.split();
        Ok((!rest.trim_ascii().is_empty()).then(|| rest.freeze()))
    }
}

/// One line of a streamed `/api/chat` response. Only what we use is declared; `thinking`,
/// `tool_calls`, `created_at` and future fields are skipped by serde without allocating.
#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<ChunkMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    done_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    load_duration: Option<i64>,
    #[serde(default)]
    prompt_eval_duration: Option<i64>,
    #[serde(default)]
    eval_duration: Option<i64>,
    #[serde(default)]
    total_duration: Option<i64>,
}

#[derive(Deserialize)]
struct ChunkMessage<'a> {
    /// Borrowed straight from the line unless it contains JSON escapes.
    #[serde(borrow, default)]
    content: Cow<'a, str>,
}

/// What one NDJSON line means for the stream.
#[derive(Debug, PartialEq)]
pub(crate) enum LineEvent {
    /// Nothing to report (an empty delta, e.g. a thinking-only or tool-call chunk).
    Skip,
    Delta(String),
    /// The final chunk. `tail` is text carried on the final chunk itself, which streaming Ollama
    /// leaves empty but a compatible server might not.
    Done {
        tail: Option<String>,
        completion: Completion,
    },
    /// The stream failed; nothing after this line counts.
    Failed(ProviderError),
}

/// Decodes one non-blank NDJSON line of a chat stream.
pub(crate) fn decode_line(line: &[u8]) -> LineEvent {
    let chunk: ChatChunk = match serde_json::from_slice(line) {
        Ok(chunk) => chunk,
        Err(err) => {
            let excerpt = copilot_http::excerpt(line, 200, None);
            return LineEvent::Failed(ProviderError::Protocol(format!(
                "unparseable line in Ollama's chat stream ({err}): {excerpt}"
            )));
        }
    };
    // Ollama reports a failure after streaming began as a line of its own, with no `done`.
    if let Some(error) = chunk.error {
        return LineEvent::Failed(ProviderError::MidStream(error.into_owned()));
    }
    let content = chunk.message.map(|m| m.content).filter(|c| !c.is_empty()).map(Cow::into_owned);
    if !chunk.done {
        return content.map_or(LineEvent::Skip, LineEvent::Delta);
    }
    let finish_reason = match chunk.done_reason.as_deref() {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let completion = Completion {
        finish_reason,
        model: chunk.model.into_owned(),
        usage: Usage {
            input_tokens: saturate(chunk.prompt_eval_count),
            output_tokens: saturate(chunk.eval_count),
            ..Usage::default()
        },
        timings: UpstreamTimings {
            load: nanos(chunk.load_duration),
            prompt_eval: nanos(chunk.prompt_eval_duration),
            generation: nanos(chunk.eval_duration),
            total: nanos(chunk.total_duration),
        },
        // Ollama's native API has no response id.
        response_id: None,
    };
    LineEvent::Done { tail: content, completion }
}

fn saturate(count: Option<u64>) -> u32 {
    count.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Ollama's durations are Go `time.Duration`s: signed nanoseconds.
fn nanos(value: Option<i64>) -> Option<Duration> {
    value.and_then(|n| u64::try_from(n).ok()).map(Duration::from_nanos)
}

// ---------------------------------------------------------------------------------------------
// Model listing, description, version

#[derive(Debug, Default, Deserialize)]
struct Details {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    parameter_size: Option<String>,
    #[serde(default)]
    quantization_level: Option<String>,
}

/// `GET /api/tags`.
#[derive(Deserialize)]
pub(crate) struct TagsResponse {
    #[serde(default)]
    models: Option<Vec<TagsModel>>,
}

#[derive(Deserialize)]
struct TagsModel {
    #[serde(default)]
    name: Option<String>,
    /// Same as `name` on current servers; kept as a fallback for ones that send only this.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    details: Option<Details>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

impl TagsResponse {
    pub fn into_models(self) -> Vec<ModelInfo> {
        let models = self.models.unwrap_or_default();
        models
            .into_iter()
            .map(|m| model_info(m.name.or(m.model).unwrap_or_default(), m.details, m.capabilities, m.size, None))
            .collect()
    }
}

/// `POST /api/show`.
#[derive(Deserialize)]
pub(crate) struct ShowResponse {
    #[serde(default)]
    details: Option<Details>,
    #[serde(default)]
    model_info: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

impl ShowResponse {
    pub fn into_model(self, name: &str) -> ModelInfo {
        let context_length = self.model_info.as_ref().and_then(context_length);
        model_info(name.to_owned(), self.details, self.capabilities, None, context_length)
    }
}

/// The context window from `model_info`, which keys it by architecture
/// (`"llama.context_length"`). Any `*.context_length` key serves when the architecture is absent.
fn context_length(info: &serde_json::Map<String, serde_json::Value>) -> Option<u32> {
    let as_u32 = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let by_architecture = info
        .get("general.architecture")
        .and_then(|a| a.as_str())
        .and_then(|arch| info.get(&format!("{arch}.context_length")))
        .and_then(as_u32);
    by_architecture
        .or_else(|| info.iter().filter(|(key, _)| key.ends_with(".context_length")).find_map(|(_, v)| as_u32(v)))
}

fn model_info(
    name: String,
    details: Option<Details>,
    capabilities: Option<Vec<String>>,
    size_bytes: Option<u64>,
    context_length: Option<u32>,
) -> ModelInfo {
    let details = details.unwrap_or_default();
    ModelInfo {
        name,
        family: details.family.unwrap_or_default(),
        parameter_size: details.parameter_size.unwrap_or_default(),
        quantization: details.quantization_level.unwrap_or_default(),
        context_length,
        size_bytes,
        capabilities: capabilities.unwrap_or_default(),
    }
}

/// `GET /api/version`.
#[derive(Deserialize)]
pub(crate) struct VersionResponse {
    #[serde(default)]
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::{Message, Role};
    use serde_json::json;

    fn lines_of(chunks: &[&[u8]], finish: bool) -> Vec<String> {
        let mut splitter = LineSplitter::with_limit(1024);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk);
            while let Some(line) = splitter.next_line().unwrap() {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
            }
        }
        if finish {
            lines.extend(splitter.finish().unwrap().map(|l| String::from_utf8(l.to_vec()).unwrap()));
        }
        lines
    }

    #[test]
    fn splitter_joins_a_line_split_across_chunks() {
        assert_eq!(lines_of(&[b"{\"a\":", b"1", b"}\n"], false), ["{\"a\":1}"]);
        // A line is not released before its newline arrives.
        assert!(lines_of(&[b"{\"a\":", b"1}"], false).is_empty());
    }

    #[test]
    fn splitter_splits_a_chunk_holding_several_lines() {
        assert_eq!(lines_of(&[b"one\ntwo\nthr", b"ee\n"], false), ["one", "two", "three"]);
    }

    #[test]
    fn splitter_keeps_a_final_line_without_newline() {
        assert_eq!(lines_of(&[b"one\ntwo"], true), ["one", "two"]);
        assert_eq!(lines_of(&[b"one\n"], true), ["one"]);
    }

    #[test]
    fn splitter_skips_blank_lines() {
        assert_eq!(lines_of(&[b"\none\n\n  \r\n", b"\ntwo\r\n", b"\n \n"], true), ["one", "two\r"]);
    }

    #[test]
    fn splitter_handles_utf8_split_across_chunks() {
        let text = "{\"c\":\"héllo\"}\n".as_bytes();
        let (a, b) = text.split_at(8); // inside the two-byte 'é'
        assert_eq!(lines_of(&[a, b], false), ["{\"c\":\"héllo\"}"]);
    }

    #[test]
    fn splitter_refuses_a_line_past_its_limit_however_it_arrives() {
        let mut splitter = LineSplitter::with_limit(8);
        splitter.push(b"12345678\n123456789\n");
        assert_eq!(splitter.next_line().unwrap().as_deref(), Some(&b"12345678"[..]));
        assert_eq!(splitter.next_line(), Err(LineTooLong));
        // Without its newline, it fails once it holds more than the limit.
        let mut splitter = LineSplitter::with_limit(8);
        splitter.push(b"12345678");
        assert_eq!(splitter.next_line(), Ok(None));
        splitter.push(b"9");
        assert_eq!(splitter.next_line(), Err(LineTooLong));
        assert_eq!(splitter.finish(), Err(LineTooLong));
    }

    #[test]
    fn decodes_a_delta() {
        let line = br#"{"model":"llama3.2","created_at":"2026-01-05T10:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}"#;
        assert_eq!(decode_line(line), LineEvent::Delta("Hel".into()));
        // Escapes are decoded, not passed through.
        let line = br#"{"message":{"role":"assistant","content":"a\n\"b\" \u00e9"},"done":false}"#;
        assert_eq!(decode_line(line), LineEvent::Delta("a\n\"b\" é".into()));
    }

    #[test]
    fn skips_empty_and_thinking_only_chunks() {
        assert_eq!(decode_line(br#"{"message":{"role":"assistant","content":""},"done":false}"#), LineEvent::Skip);
        assert_eq!(
            decode_line(br#"{"message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}"#),
            LineEvent::Skip
        );
        let tool_call = br#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":0,"name":"f","arguments":{"city":"Tokyo"}}}]},"done":false}"#;
        assert_eq!(decode_line(tool_call), LineEvent::Skip);
    }

    #[test]
    fn decodes_the_final_chunk_with_statistics_in_nanoseconds() {
        let line = br#"{"model":"llama3.2:latest","created_at":"x","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":2500000000,"load_duration":12000000,"prompt_eval_count":26,"prompt_eval_duration":130000000,"eval_count":120,"eval_duration":2300000000}"#;
        let expected = Completion {
            finish_reason: FinishReason::Stop,
            model: "llama3.2:latest".into(),
            usage: Usage { input_tokens: 26, output_tokens: 120, ..Default::default() },
            timings: UpstreamTimings {
                load: Some(Duration::from_millis(12)),
                prompt_eval: Some(Duration::from_millis(130)),
                generation: Some(Duration::from_millis(2300)),
                total: Some(Duration::from_millis(2500)),
            },
            response_id: None,
        };
        assert_eq!(decode_line(line), LineEvent::Done { tail: None, completion: expected });
    }

    #[test]
    fn final_chunk_tolerates_missing_statistics() {
        // Zero values are omitted by Ollama (Go omitempty), and very old servers send no done_reason.
        let line = br#"{"model":"m","done":true,"eval_count":3}"#;
        let LineEvent::Done { tail: None, completion } = decode_line(line) else { panic!("not done") };
        assert_eq!(completion.finish_reason, FinishReason::Stop);
        assert_eq!(completion.usage, Usage { input_tokens: 0, output_tokens: 3, ..Default::default() });
        assert_eq!(completion.timings, UpstreamTimings::default());
    }

    #[test]
    fn done_reason_length_maps_to_length() {
        let line = br#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#;
        let LineEvent::Done { completion, .. } = decode_line(line) else { panic!("not done") };
        assert_eq!(completion.finish_reason, FinishReason::Length);
    }

    #[test]
    fn final_chunk_keeps_text_it_carries() {
        let line = br#"{"model":"m","message":{"role":"assistant","content":"end"},"done":true}"#;
        let LineEvent::Done { tail, .. } = decode_line(line) else { panic!("not done") };
        assert_eq!(tail.as_deref(), Some("end"));
    }

    #[test]
    fn an_error_line_fails_the_stream() {
        let line = br#"{"error":"model runner has unexpectedly stopped"}"#;
        assert_eq!(
            decode_line(line),
            LineEvent::Failed(ProviderError::MidStream("model runner has unexpectedly stopped".into()))
        );
    }

    #[test]
    fn malformed_json_is_a_protocol_error_with_a_short_excerpt() {
        let LineEvent::Failed(ProviderError::Protocol(message)) = decode_line(b"<html>bad gateway</html>") else {
            panic!("not a protocol error")
        };
        assert!(message.contains("<html>bad gateway</html>"), "{message}");

        let long = format!("{{\"message\": {}", "x".repeat(5000));
        let LineEvent::Failed(ProviderError::Protocol(message)) = decode_line(long.as_bytes()) else {
            panic!("not a protocol error")
        };
        assert!(message.len() < 400, "excerpt not shortened: {} bytes", message.len());
    }

    #[test]
    fn a_wrongly_typed_field_is_a_protocol_error() {
        assert!(matches!(decode_line(br#"{"done":"yes"}"#), LineEvent::Failed(ProviderError::Protocol(_))));
    }

    #[test]
    fn error_message_prefers_ollamas_error_field() {
        assert_eq!(error_message(br#"{"error":"model 'x' not found"}"#), "model 'x' not found");
        assert_eq!(error_message(b"  502 Bad Gateway\n"), "502 Bad Gateway");
        let long = "é".repeat(600);
        let message = error_message(long.as_bytes());
        assert_eq!(message.chars().count(), 501, "500 characters plus the ellipsis");
    }

    fn request(options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "llama3.2".into(),
            messages: vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "hi")],
            options,
            ..Default::default()
        }
    }

    #[test]
    fn chat_body_omits_unset_options() {
        let req = request(GenerationOptions::default());
        let body = serde_json::to_value(ChatBody::new(&req, None)).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "llama3.2",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
            })
        );

        let req = request(GenerationOptions { max_tokens: Some(64), ..Default::default() });
        let body = serde_json::to_value(ChatBody::new(&req, None)).unwrap();
        assert_eq!(body["options"], json!({"num_predict": 64}));
    }

    #[test]
    fn chat_body_maps_every_option() {
        let req = request(GenerationOptions {
            temperature: Some(0.5),
            max_tokens: Some(128),
            top_p: Some(0.25),
            top_k: Some(40),
            stop: vec!["\n\n".into(), "END".into()],
            seed: Some(42),
        });
        let body = serde_json::to_value(ChatBody::new(&req, Some(300))).unwrap();
        assert_eq!(
            body["options"],
            json!({"temperature": 0.5, "num_predict": 128, "top_p": 0.25, "top_k": 40, "stop": ["\n\n", "END"], "seed": 42})
        );
        assert_eq!(body["keep_alive"], json!(300));
    }

    #[test]
    fn tags_map_to_model_infos_tolerating_missing_fields() {
        let body = json!({"models": [
            {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189,
             "details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
             "capabilities": ["completion", "tools"]},
            {"model": "bare:1b", "details": null},
        ]});
        let models = serde_json::from_value::<TagsResponse>(body).unwrap().into_models();
        assert_eq!(
            models,
            [
                ModelInfo {
                    name: "llama3.2:latest".into(),
                    family: "llama".into(),
                    parameter_size: "3.2B".into(),
                    quantization: "Q4_K_M".into(),
                    context_length: None,
                    size_bytes: Some(2019393189),
                    capabilities: vec!["completion".into(), "tools".into()],
                },
                ModelInfo { name: "bare:1b".into(), ..Default::default() },
            ]
        );
        assert!(serde_json::from_value::<TagsResponse>(json!({})).unwrap().into_models().is_empty());
    }

    #[test]
    fn show_reads_context_length_by_architecture() {
        let body = json!({
            "details": {"family": "llama", "parameter_size": "8B", "quantization_level": "Q4_0"},
            "model_info": {"general.architecture": "llama", "aaa.context_length": 1, "llama.context_length": 8192},
            "capabilities": ["completion"],
        });
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("llama3");
        assert_eq!(info.name, "llama3");
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.family, "llama");
        assert_eq!(info.quantization, "Q4_0");
        assert_eq!(info.capabilities, ["completion"]);

        let body = json!({"model_info": {"qwen2.context_length": 32768}});
        let info = serde_json::from_value::<ShowResponse>(body).unwrap().into_model("q");
        assert_eq!(info.context_length, Some(32768));

        let info = serde_json::from_value::<ShowResponse>(json!({})).unwrap().into_model("q");
        assert_eq!(info.context_length, None);
    }
}
