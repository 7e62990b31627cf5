//! Anthropic's JSON on the wire: the `POST /v1/messages` body, the named SSE events of a streamed
//! reply, error bodies and the model listing.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! Response types declare only what is used and default every field: Anthropic adds fields and
//! event types over time, and clients are expected to ignore what they do not know.

use std::borrow::Cow;

use copilot_http::quote;
use copilot_provider::{ChatRequest, Completion, FinishReason, ModelInfo, ProviderError, Role, Secret, Usage};
use serde::{Deserialize, Serialize};

/// The highest `temperature` the Messages API accepts (the gateway allows up to 2).
pub(crate) const MAX_TEMPERATURE: f32 = 1.0;

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /v1/messages`, borrowing from the provider-independent request.
#[derive(Debug, Serialize)]
pub(crate) struct MessagesBody<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    pub stream: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    pub role: &'static str,
    pub content: Cow<'a, str>,
}

impl<'a> MessagesBody<'a> {
    /// Translates a request, or explains why Anthropic would refuse it.
    ///
    /// - System messages, wherever they are, become the top-level `system` string, joined by blank
    ///   lines.
    /// - Consecutive messages of the same role are merged into one turn (joined by blank lines),
    ///   so turns alternate as the API requires; empty messages are dropped from a merge.
    /// - The conversation must start with a user turn: one starting with an assistant turn is an
    ///   [`ProviderError::InvalidRequest`] (there is no neutral user turn to invent).
    /// - A final assistant turn is a prefill the model continues; its trailing whitespace is
    ///   trimmed because the API rejects a prefill ending in whitespace.
    /// - `seed` has no Anthropic equivalent and is ignored; a `temperature` above 1 is refused.
    pub fn new(request: &'a ChatRequest, default_max_tokens: u32) -> Result<Self, ProviderError> {
        let options = &request.options;
        if let Some(t) = options.temperature
            && t > MAX_TEMPERATURE
        {
            return Err(ProviderError::InvalidRequest(format!(
                "Anthropic models accept a temperature between 0 and {MAX_TEMPERATURE}, got {t}"
            )));
        }

        let mut system: Option<Cow<'a, str>> = None;
        let mut messages: Vec<WireMessage<'a>> = Vec::with_capacity(request.messages.len());
        let texts = request.messages.iter().flat_map(|message| {
            message.parts.iter().filter_map(move |part| match part {
                copilot_provider::Part::Text(text) => Some((message.role, text.as_str())),
                _ => None,
            })
        });
        for (role, content) in texts {
            match role {
                Role::System => append_paragraph(&mut system, content),
                role => {
                    let role = role.as_str();
                    match messages.last_mut() {
                        Some(last) if last.role == role => {
                            let mut merged = Some(std::mem::take(&mut last.content));
                            append_paragraph(&mut merged, content);
                            last.content = merged.unwrap_or_default();
                        }
                        _ => messages.push(WireMessage { role, content: Cow::Borrowed(content) }),
                    }
                }
            }
        }

        match messages.first() {
            None => {
                return Err(ProviderError::InvalidRequest(
                    "Anthropic needs at least one user message; the request has none besides system messages".into(),
                ));
            }
            Some(first) if first.role == Role::Assistant.as_str() => {
                return Err(ProviderError::InvalidRequest(
                    "Anthropic needs the conversation to start with a user message, but the first non-system \
                     message is from the assistant"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        if let Some(last) = messages.last_mut().filter(|m| m.role == Role::Assistant.as_str()) {
            trim_end(&mut last.content);
        }

        Ok(MessagesBody {
            model: &request.model,
            max_tokens: options.max_tokens.unwrap_or(default_max_tokens),
            messages,
            system,
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            stop_sequences: &options.stop,
            stream: true,
        })
    }
}

/// Appends `text` as a new paragraph (after a blank line); empty text adds nothing.
fn append_paragraph<'a>(target: &mut Option<Cow<'a, str>>, text: &'a str) {
    if text.is_empty() {
        return;
    }
    match target {
        Some(existing) if !existing.is_empty() => {
            let existing = existing.to_mut();
            existing.push_str("\n\n");
            existing.push_str(text);
        }
        _ => *target = Some(Cow::Borrowed(text)),
    }
}

fn trim_end(text: &mut Cow<'_, str>) {
    match text {
        Cow::Borrowed(s) => *s = s.trim_end(),
        Cow::Owned(s) => s.truncate(s.trim_end().len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `{"type":"error","error":{"type":"...","message":"..."},"request_id":"req_..."}`, the body of
/// every error response and the data of a mid-stream `error` event.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorDetail<'a>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    request_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    message: Option<Cow<'a, str>>,
}

/// What an error response said.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UpstreamError {
    /// Whether the body was an Anthropic error object (rather than, say, a proxy's HTML page).
    pub anthropic: bool,
    /// `error.type`, e.g. `overloaded_error`.
    pub kind: Option<String>,
    /// `error.message`, or the raw body (shortened) when it was not an Anthropic error object.
    pub message: String,
    pub request_id: Option<String>,
}

impl UpstreamError {
    pub fn parse(body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
            return UpstreamError {
                anthropic: true,
                kind: parsed.error.kind.map(Cow::into_owned),
                message: parsed.error.message.map(Cow::into_owned).unwrap_or_default(),
                request_id: parsed.request_id.map(Cow::into_owned),
            };
        }
        // Whole until `describe`, which masks the key before it shortens the text.
        UpstreamError { message: String::from_utf8_lossy(body).trim().to_owned(), ..Default::default() }
    }

    /// `message (error_type, request-id req_…)`, with the key masked (the request id may come
    /// from a header, which may echo it too) and the message shortened to 500 characters after.
    pub fn describe(&self, secret: Option<&Secret>, fallback: &str) -> String {
        let message = if self.message.is_empty() { fallback } else { &self.message };
        let mut text = copilot_http::quote(message, 500, secret);
        let kind = self.kind.as_deref().map(|kind| copilot_http::quote(kind, 100, secret));
        let request_id = self.request_id.as_deref().map(|id| copilot_http::quote(id, 200, secret));
        match (kind.as_deref(), request_id.as_deref()) {
            (None, None) => {}
            (Some(kind), None) => text.push_str(&format!(" ({kind})")),
            (None, Some(id)) => text.push_str(&format!(" (request-id {id})")),
            (Some(kind), Some(id)) => text.push_str(&format!(" ({kind}, request-id {id})")),
        }
        text
    }
}

// ---------------------------------------------------------------------------------------------
// The SSE chat stream

/// One streamed event's data. The fields of every event type share one struct so each event is
/// parsed once; text is borrowed from the event unless it contains JSON escapes.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    /// `message_start`.
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    /// `content_block_start`.
    #[serde(borrow, default)]
    content_block: Option<ContentBlock<'a>>,
    /// `content_block_delta` (a typed delta) and `message_delta` (stop reason).
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    /// `message_delta`.
    #[serde(default)]
    usage: Option<WireUsage>,
    /// `error`.
    #[serde(borrow, default)]
    error: Option<ErrorDetail<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "copilot_http::borrow_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl WireUsage {
    /// Total input: uncached plus cache writes plus cache reads; `None` if none is reported.
    fn input(&self) -> Option<u64> {
        let parts = [self.input_tokens, self.cache_creation_input_tokens, self.cache_read_input_tokens];
        parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum())
    }
}

/// What a stream has reported so far, for the final [`Completion`].
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    model: String,
    response_id: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    finish_reason: FinishReason,
    /// Whether any text has gone to the caller (decides how an `overloaded_error` is reported).
    emitted_text: bool,
    secret: Option<Secret>,
}

impl StreamState {
    pub fn new(secret: Option<Secret>) -> Self {
        StreamState { secret, ..Default::default() }
    }

    fn completion(&self) -> Completion {
        Completion {
            finish_reason: self.finish_reason,
            model: self.model.clone(),
            usage: Usage {
                input_tokens: saturate(self.input_tokens),
                output_tokens: saturate(self.output_tokens),
                ..Usage::default()
            },
            timings: Default::default(),
            response_id: self.response_id.clone(),
        }
    }
}

/// What one SSE event means for the stream.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Nothing for the caller (`ping`, block boundaries, thinking or tool-input deltas, unknown
    /// event types).
    Skip,
    Delta(String),
    /// `message_stop`: the reply is complete.
    Done(Completion),
    /// The stream failed; nothing after this event counts.
    Failed(ProviderError),
}

const KNOWN_EVENTS: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// Decodes one SSE event. The JSON `type` names the event; the SSE `event:` name is the fallback
/// for a server that leaves `type` out.
pub(crate) fn decode_event(name: &str, data: &str, state: &mut StreamState) -> Decoded {
    let event: StreamEvent = match serde_json::from_str(data) {
        Ok(event) => event,
        // Unknown event types may carry anything; only ours must be JSON.
        Err(_) if !KNOWN_EVENTS.contains(&name) && name != "message" => return Decoded::Skip,
        Err(err) => {
            let excerpt = quote(data.trim(), 200, state.secret.as_ref());
            return Decoded::Failed(ProviderError::Protocol(format!(
                "unparseable {name} event in Anthropic's stream ({err}): {excerpt}"
            )));
        }
    };
    let kind = event.kind.as_deref().unwrap_or(name);
    match kind {
        "content_block_delta" => {
            let Some(delta) = event.delta else { return Decoded::Skip };
            // thinking_delta, signature_delta, input_json_delta and citations_delta are not text.
            if delta.kind.as_deref() != Some("text_delta") {
                return Decoded::Skip;
            }
            text_delta(delta.text, state)
        }
        "message_start" => {
            if let Some(message) = event.message {
                if let Some(model) = message.model {
                    state.model = model.into_owned();
                }
                if let Some(id) = message.id {
                    state.response_id = Some(id.into_owned());
                }
                if let Some(usage) = message.usage {
                    state.input_tokens = usage.input().unwrap_or(state.input_tokens);
                    state.output_tokens = usage.output_tokens.unwrap_or(state.output_tokens);
                }
            }
            Decoded::Skip
        }
        // A text block may in principle start with text of its own.
        "content_block_start" => match event.content_block {
            Some(block) if block.kind.as_deref() == Some("text") => text_delta(block.text, state),
            _ => Decoded::Skip,
        },
        "message_delta" => {
            if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                state.finish_reason = finish_reason(&reason);
            }
            // Cumulative counts: the last value wins.
            if let Some(usage) = event.usage {
                state.input_tokens = usage.input().unwrap_or(state.input_tokens);
                state.output_tokens = usage.output_tokens.unwrap_or(state.output_tokens);
            }
            Decoded::Skip
        }
        "message_stop" => Decoded::Done(state.completion()),
        "error" => Decoded::Failed(stream_error(event.error, data, state)),
        _ => Decoded::Skip,
    }
}

fn text_delta(text: Option<Cow<'_, str>>, state: &mut StreamState) -> Decoded {
    match text {
        Some(text) if !text.is_empty() => {
            state.emitted_text = true;
            Decoded::Delta(text.into_owned())
        }
        _ => Decoded::Skip,
    }
}

/// An `error` event. Overload before any text reached the caller is reported as
/// [`ProviderError::Overloaded`], exactly like a 529 refusal, since nothing was produced and the
/// request can be retried as a whole; anything else is [`ProviderError::MidStream`].
fn stream_error(error: Option<ErrorDetail<'_>>, data: &str, state: &StreamState) -> ProviderError {
    let secret = state.secret.as_ref();
    let Some(error) = error else {
        let excerpt = quote(data.trim(), 200, secret);
        return ProviderError::MidStream(format!("Anthropic sent an error event: {excerpt}"));
    };
    let detail = UpstreamError {
        anthropic: true,
        kind: error.kind.map(Cow::into_owned),
        message: error.message.map(Cow::into_owned).unwrap_or_default(),
        request_id: None,
    };
    let message = detail.describe(secret, "no error message");
    if detail.kind.as_deref() == Some("overloaded_error") && !state.emitted_text {
        ProviderError::Overloaded { message, retry_after: None }
    } else {
        ProviderError::MidStream(message)
    }
}

/// `stop_reason` to a finish reason. Tool use and `pause_turn` end the text the gateway relays,
/// so they count as a normal stop; unknown future reasons do too.
pub(crate) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Models

/// One page of `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelsPage {
    #[serde(default)]
    pub data: Vec<WireModel>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// `GET /v1/models/{id}`, and one entry of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct WireModel {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A model as Anthropic's Models API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicModel {
    /// e.g. `claude-sonnet-4-5-20250929`: the name to send as `model`.
    pub id: String,
    /// e.g. `Claude Sonnet 4.5`; empty when not given.
    pub display_name: String,
    /// RFC 3339 release time, e.g. `2025-09-29T00:00:00Z`; empty when not given.
    pub created_at: String,
}

impl From<WireModel> for AnthropicModel {
    fn from(model: WireModel) -> Self {
        AnthropicModel {
            id: model.id,
            display_name: model.display_name.unwrap_or_default(),
            created_at: model.created_at.unwrap_or_default(),
        }
    }
}

impl AnthropicModel {
    /// The provider-independent view. The Models API reports no family, size or context window:
    /// the family is `claude` for Claude models, and every model served by the Messages API
    /// completes text.
    pub fn into_model_info(self) -> ModelInfo {
        let family = if self.id.starts_with("claude") { "claude" } else { "" };
        ModelInfo {
            name: self.id,
            family: family.to_owned(),
            capabilities: vec!["completion".to_owned()],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::{GenerationOptions, Message};
    use serde_json::json;

    fn request(messages: &[(Role, &str)], options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: messages.iter().map(|(role, content)| Message::text(*role, *content)).collect(),
            options,
            ..Default::default()
        }
    }

    fn body(messages: &[(Role, &str)], options: GenerationOptions) -> Result<serde_json::Value, ProviderError> {
        let req = request(messages, options);
        MessagesBody::new(&req, 4096).map(|b| serde_json::to_value(b).unwrap())
    }

    #[test]
    fn minimal_body_has_max_tokens_and_omits_unset_options() {
        let body = body(&[(Role::User, "Hi")], GenerationOptions { seed: Some(7), ..Default::default() }).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "Hi"}],
                "stream": true,
            })
        );
    }

    #[test]
    fn every_option_is_mapped() {
        let options = GenerationOptions {
            temperature: Some(0.5),
            max_tokens: Some(64),
            top_p: Some(0.25),
            top_k: Some(40),
            stop: vec!["END".into(), "\n\n".into()],
            seed: Some(1),
        };
        let body = body(&[(Role::User, "Hi")], options).unwrap();
        assert_eq!(body["max_tokens"], json!(64));
        assert_eq!(body["temperature"], json!(0.5));
        assert_eq!(body["top_p"], json!(0.25));
        assert_eq!(body["top_k"], json!(40));
        assert_eq!(body["stop_sequences"], json!(["END", "\n\n"]));
        assert!(body.get("seed").is_none(), "seed has no Anthropic equivalent: {body}");
    }

    #[test]
    fn system_messages_become_the_system_field() {
        let body = body(
            &[(Role::System, "Be terse."), (Role::User, "Hi"), (Role::System, ""), (Role::System, "Use French.")],
            GenerationOptions::default(),
        )
        .unwrap();
        assert_eq!(body["system"], json!("Be terse.\n\nUse French."));
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn consecutive_turns_of_one_role_are_merged() {
        let body = body(
            &[
                (Role::User, "a"),
                (Role::System, "sys"),
                (Role::User, "b"),
                (Role::User, ""),
                (Role::Assistant, "c"),
                (Role::Assistant, "d"),
                (Role::User, "e"),
            ],
            GenerationOptions::default(),
        )
        .unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "a\n\nb"},
                {"role": "assistant", "content": "c\n\nd"},
                {"role": "user", "content": "e"},
            ])
        );
    }

    #[test]
    fn a_final_assistant_prefill_loses_trailing_whitespace() {
        let prefill = body(&[(Role::User, "Q"), (Role::Assistant, "The answer is ")], Default::default()).unwrap();
        assert_eq!(prefill["messages"][1], json!({"role": "assistant", "content": "The answer is"}));
        let merged =
            body(&[(Role::User, "Q"), (Role::Assistant, "A \n"), (Role::Assistant, "B \n")], Default::default());
        assert_eq!(merged.unwrap()["messages"][1], json!({"role": "assistant", "content": "A \n\n\nB"}));
    }

    #[test]
    fn conversations_anthropic_cannot_take_are_refused_with_a_reason() {
        let Err(ProviderError::InvalidRequest(message)) =
            body(&[(Role::System, "s"), (Role::Assistant, "Hello"), (Role::User, "Hi")], Default::default())
        else {
            panic!("a leading assistant turn was accepted")
        };
        assert!(message.contains("start with a user message"), "{message}");

        let Err(ProviderError::InvalidRequest(message)) = body(&[(Role::System, "s")], Default::default()) else {
            panic!("a system-only request was accepted")
        };
        assert!(message.contains("at least one user message"), "{message}");

        let options = GenerationOptions { temperature: Some(1.5), ..Default::default() };
        let Err(ProviderError::InvalidRequest(message)) = body(&[(Role::User, "x")], options) else {
            panic!("temperature 1.5 was accepted")
        };
        assert!(message.contains("between 0 and 1") && message.contains("1.5"), "{message}");
        let options = GenerationOptions { temperature: Some(1.0), ..Default::default() };
        assert!(body(&[(Role::User, "x")], options).is_ok());
    }

    fn decode_all(events: &[(&str, serde_json::Value)]) -> Vec<Decoded> {
        let mut state = StreamState::new(None);
        events.iter().map(|(name, data)| decode_event(name, &data.to_string(), &mut state)).collect()
    }

    #[test]
    fn decodes_the_reference_stream() {
        let events = [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",
                       "model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,
                       "usage":{"input_tokens":18,"cache_creation_input_tokens":2,"cache_read_input_tokens":5,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            ("ping", json!({"type":"ping"})),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Te"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"al \"é\"\n"}}),
            ),
            ("content_block_stop", json!({"type":"content_block_stop","index":0})),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":4}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
        ];
        let decoded = decode_all(&events);
        let expected_done = Completion {
            finish_reason: FinishReason::Length,
            model: "claude-sonnet-4-5-20250929".into(),
            // Cache reads and writes count as input; output counts are cumulative, not summed.
            usage: Usage { input_tokens: 25, output_tokens: 4, ..Default::default() },
            timings: Default::default(),
            response_id: Some("msg_01".into()),
        };
        assert_eq!(
            decoded,
            [
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Delta("Te".into()),
                Decoded::Delta("al \"é\"\n".into()),
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Skip,
                Decoded::Done(expected_done),
            ]
        );
    }

    #[test]
    fn non_text_deltas_and_unknown_events_are_skipped() {
        let decoded = decode_all(&[
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":""}}),
            ),
            ("future_event", json!({"type":"future_event","x":[1,2]})),
        ]);
        assert!(decoded.iter().all(|d| *d == Decoded::Skip), "{decoded:?}");
        let mut state = StreamState::new(None);
        assert_eq!(decode_event("future_event", "not json at all", &mut state), Decoded::Skip);
    }

    #[test]
    fn a_text_block_may_start_with_text() {
        let decoded = decode_all(&[(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}),
        )]);
        assert_eq!(decoded, [Decoded::Delta("Hi".into())]);
    }

    #[test]
    fn the_json_type_wins_and_the_event_name_is_the_fallback() {
        let mut state = StreamState::new(None);
        let delta = r#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#;
        assert_eq!(decode_event("content_block_delta", delta, &mut state), Decoded::Delta("x".into()));
        let delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"y"}}"#;
        assert_eq!(decode_event("message", delta, &mut state), Decoded::Delta("y".into()));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("tool_use", FinishReason::Stop),
            ("pause_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
            ("something_new", FinishReason::Stop),
        ] {
            assert_eq!(finish_reason(reason), expected, "{reason}");
        }
    }

    #[test]
    fn missing_usage_and_model_leave_zeroes() {
        let decoded = decode_all(&[("message_stop", json!({"type":"message_stop"}))]);
        assert_eq!(decoded, [Decoded::Done(Completion::default())]);
    }

    #[test]
    fn an_error_event_is_overload_before_text_and_mid_stream_after() {
        let overloaded = json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}});
        let decoded = decode_all(&[("error", overloaded.clone())]);
        assert_eq!(
            decoded,
            [Decoded::Failed(ProviderError::Overloaded {
                message: "Overloaded (overloaded_error)".into(),
                retry_after: None
            })]
        );

        let decoded = decode_all(&[
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}),
            ),
            ("error", overloaded),
        ]);
        assert_eq!(decoded[1], Decoded::Failed(ProviderError::MidStream("Overloaded (overloaded_error)".into())));

        let decoded =
            decode_all(&[("error", json!({"type":"error","error":{"type":"api_error","message":"Internal"}}))]);
        assert_eq!(decoded, [Decoded::Failed(ProviderError::MidStream("Internal (api_error)".into()))]);
    }

    #[test]
    fn an_error_event_never_shows_the_key() {
        let key = Secret::new("sk-ant-api03-secret-value");
        let mut state = StreamState::new(Some(key.clone()));
        let data = json!({"type":"error","error":{"type":"api_error","message":format!("bad key {}", key.expose())}});
        let Decoded::Failed(err) = decode_event("error", &data.to_string(), &mut state) else { panic!("not failed") };
        assert!(!err.to_string().contains(key.expose()), "{err}");
    }

    #[test]
    fn malformed_events_are_protocol_errors_with_a_short_excerpt() {
        let mut state = StreamState::new(None);
        let long = format!("{{\"type\": \"content_block_delta\", {}", "x".repeat(5000));
        let Decoded::Failed(ProviderError::Protocol(message)) = decode_event("content_block_delta", &long, &mut state)
        else {
            panic!("not a protocol error")
        };
        assert!(message.contains("content_block_delta") && message.len() < 500, "{message}");
        // A field of the wrong type is malformed too.
        let wrong = r#"{"type":"message_delta","usage":{"output_tokens":"four"}}"#;
        assert!(matches!(
            decode_event("message_delta", wrong, &mut state),
            Decoded::Failed(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn error_bodies_are_parsed_and_described() {
        let body =
            br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-x"},"request_id":"req_1"}"#;
        let parsed = UpstreamError::parse(body);
        assert!(parsed.anthropic);
        assert_eq!(parsed.kind.as_deref(), Some("not_found_error"));
        assert_eq!(parsed.describe(None, "Not Found"), "model: claude-x (not_found_error, request-id req_1)");

        let parsed = UpstreamError::parse(b"  <html>502 Bad Gateway</html>\n");
        assert!(!parsed.anthropic);
        assert_eq!(parsed.describe(None, "Bad Gateway"), "<html>502 Bad Gateway</html>");
        assert_eq!(UpstreamError::parse(b"").describe(None, "Bad Gateway"), "Bad Gateway");
        let long = "é".repeat(600);
        assert_eq!(UpstreamError::parse(long.as_bytes()).describe(None, "").chars().count(), 501);

        let key = Secret::new("sk-ant-0123456789");
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-0123456789"}}"#;
        let described = UpstreamError::parse(body).describe(Some(&key), "");
        assert_eq!(described, "invalid x-api-key *** (authentication_error)");

        // Masked before it is shortened, wherever the key falls; in a request id too.
        let raw = "sk-ant-api03-Zq8Xw2Vb7Nm4Lk1Jh6Gf3Ds9Ap5Oi0Uy-Tr8Ee2Ww";
        let key = Secret::new(raw);
        for offset in [450, 480, 490, 499, 500] {
            let body = format!("{}{raw} is not a valid key", "x".repeat(offset));
            let mut error = UpstreamError::parse(body.as_bytes());
            error.request_id = Some(format!("req_{raw}"));
            let described = error.describe(Some(&key), "");
            let pieces: Vec<&str> =
                (0..raw.len() - 7).map(|i| &raw[i..i + 8]).filter(|p| described.contains(p)).collect();
            assert!(pieces.is_empty(), "offset {offset}: {pieces:?} in {described}");
            assert!(described.ends_with("(request-id req_***)"), "{described}");
        }
    }

    #[test]
    fn models_map_to_model_infos() {
        let page: ModelsPage = serde_json::from_value(json!({
            "data": [
                {"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},
                {"type":"model","id":"other"},
            ],
            "has_more": true, "first_id": "claude-sonnet-4-5-20250929", "last_id": "other",
        }))
        .unwrap();
        assert!(page.has_more);
        assert_eq!(page.last_id.as_deref(), Some("other"));
        let models: Vec<AnthropicModel> = page.data.into_iter().map(AnthropicModel::from).collect();
        assert_eq!(models[0].display_name, "Claude Sonnet 4.5");
        assert_eq!(models[1].created_at, "");
        let infos: Vec<ModelInfo> = models.into_iter().map(AnthropicModel::into_model_info).collect();
        assert_eq!(
            infos[0],
            ModelInfo {
                name: "claude-sonnet-4-5-20250929".into(),
                family: "claude".into(),
                capabilities: vec!["completion".into()],
                ..Default::default()
            }
        );
        assert_eq!(infos[1].family, "");
        let empty: ModelsPage = serde_json::from_value(json!({})).unwrap();
        assert!(empty.data.is_empty() && !empty.has_more);
    }
}
