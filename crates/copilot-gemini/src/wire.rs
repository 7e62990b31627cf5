//! Gemini's JSON on the wire: the `GenerateContentRequest` body, the streamed
//! `GenerateContentResponse` chunks, `google.rpc.Status` error bodies and model listings.
//!
//! Everything here is pure (no I/O), so the protocol details can be tested without a server.
//! The REST API uses the proto3 JSON mapping: lowerCamelCase fields, enums as strings, and unset
//! (zero) fields omitted — so every response field here is optional or defaulted.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use copilot_http::quote;
use copilot_provider::{
    ChatRequest, Completion, FinishReason, GenerationOptions, ModelInfo, ProviderError, Role, Secret, Usage,
};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::SafetySetting;

/// Gemini rejects a request with more stop sequences than this.
pub(crate) const MAX_STOP_SEQUENCES: usize = 5;

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /v1beta/models/{model}:streamGenerateContent`, borrowing from the request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateBody<'a> {
    pub contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<SystemInstruction<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    pub generation_config: GenerationConfig<'a>,
    /// Empty means Google's default thresholds.
    #[serde(skip_serializing_if = "<[SafetySetting]>::is_empty")]
    pub safety_settings: &'a [SafetySetting],
}

/// One turn: `user` or `model`, with one text part per message of that turn.
#[derive(Debug, Serialize)]
pub(crate) struct Content<'a> {
    pub role: &'static str,
    pub parts: Vec<Part<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Part<'a> {
    pub text: &'a str,
}

/// A `Content` without a role (Gemini ignores the role of a system instruction).
#[derive(Debug, Serialize)]
pub(crate) struct SystemInstruction<'a> {
    pub parts: Vec<Part<'a>>,
}

/// Unset fields are left out so the model's own defaults apply.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i32>,
}

impl<'a> GenerationConfig<'a> {
    pub fn from_options(options: &'a GenerationOptions) -> Self {
        GenerationConfig {
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            max_output_tokens: options.max_tokens,
            stop_sequences: &options.stop,
            seed: options.seed.map(wire_seed),
        }
    }

    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
    }
}

/// Gemini's `seed` is an int32 (a larger value is a 400). Seeds that fit pass unchanged; larger
/// ones are folded into `0..=i32::MAX` (modulo 2^31), so the same seed still means the same
/// upstream seed.
pub(crate) fn wire_seed(seed: u64) -> i32 {
    i32::try_from(seed).unwrap_or((seed % (1 << 31)) as i32)
}

impl<'a> GenerateBody<'a> {
    /// System messages, wherever they appear, become the parts of `systemInstruction` (in order);
    /// the others become `contents`, assistant as `model`. Consecutive messages of the same role
    /// are merged into one turn with one part each (Gemini expects alternating turns, and parts
    /// keep the message boundaries). Empty messages are dropped: Gemini refuses an empty text part.
    pub fn new(request: &'a ChatRequest, safety_settings: &'a [SafetySetting]) -> Self {
        let mut contents: Vec<Content<'a>> = Vec::with_capacity(request.messages.len());
        let mut system = Vec::new();
        for message in &request.messages {
            for part in &message.parts {
                let copilot_provider::Part::Text(text) = part else { continue };
                if text.is_empty() {
                    continue;
                }
                let part = Part { text };
                let role = match message.role {
                    Role::System => {
                        system.push(part);
                        continue;
                    }
                    Role::User | Role::Tool => "user",
                    Role::Assistant => "model",
                };
                match contents.last_mut() {
                    Some(turn) if turn.role == role => turn.parts.push(part),
                    _ => contents.push(Content { role, parts: vec![part] }),
                }
            }
        }
        GenerateBody {
            contents,
            system_instruction: (!system.is_empty()).then_some(SystemInstruction { parts: system }),
            generation_config: GenerationConfig::from_options(&request.options),
            safety_settings,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The streamed response

/// One SSE `data:` payload. Only what we use is declared; `safetyRatings`, `citationMetadata`,
/// `responseId`, `*TokensDetails` and future fields are skipped without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamChunk<'a> {
    /// Only the first candidate: we never ask for more than one.
    #[serde(borrow, default)]
    candidates: Option<First<Candidate<'a>>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    /// An error reported inside a `data:` event (the bare-JSON form is handled in `bare_error`).
    #[serde(default)]
    error: Option<ErrorStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Option<PartsText<'a>>,
}

#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    text: Option<Cow<'a, str>>,
    /// A thought summary (only sent with `includeThoughts`), not part of the answer.
    #[serde(default)]
    thought: bool,
}

/// Running totals; any field is omitted when zero.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    /// Thinking tokens, billed as output.
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    /// Prompt tokens read from the context cache, included in `promptTokenCount`.
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default, deserialize_with = "copilot_http::borrow_str")]
    block_reason: Option<Cow<'a, str>>,
}

/// The first element of a JSON array; the others are skipped without being built.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(PhantomData))
    }
}

/// The concatenated text of a `parts` array, thought parts skipped. A single text part (the
/// usual case) stays borrowed from the input when it has no escapes.
struct PartsText<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for PartsText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PartsVisitor<'a> {
            type Value = PartsText<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of parts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PartsText<'a>, A::Error> {
                let mut text: Option<Cow<'a, str>> = None;
                while let Some(part) = seq.next_element::<PartIn<'a>>()? {
                    let Some(piece) = part.text.filter(|_| !part.thought) else { continue };
                    match &mut text {
                        None => text = Some(piece),
                        Some(joined) => joined.to_mut().push_str(&piece),
                    }
                }
                Ok(PartsText(text))
            }
        }
        deserializer.deserialize_seq(PartsVisitor(PhantomData))
    }
}

/// What a stream has said so far about how it ends. Chunks only ever add to it.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// Set by the chunk carrying a `finishReason`, or by a blocked prompt.
    pub finish: Option<FinishReason>,
    /// From the last chunk that carried `usageMetadata` (they are running totals).
    usage: Usage,
    model: String,
    response_id: Option<String>,
    /// `promptFeedback.blockReason` when the prompt itself was refused.
    pub block_reason: Option<String>,
}

impl StreamState {
    /// Reads one `data:` payload; returns the text it adds, if any (never empty).
    /// `secret` is masked in the excerpt of a chunk that is not JSON.
    pub fn apply(&mut self, data: &str, secret: Option<&Secret>) -> Result<Option<String>, ProviderError> {
        let chunk: StreamChunk = serde_json::from_str(data).map_err(|e| {
            ProviderError::Protocol(format!("unexpected stream chunk from Gemini ({e}): {}", quote(data, 200, secret)))
        })?;
        if let Some(error) = chunk.error {
            return Err(ProviderError::MidStream(error.describe()));
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Usage {
                input_tokens: saturate(usage.prompt_token_count.unwrap_or(0)),
                output_tokens: saturate(
                    usage.candidates_token_count.unwrap_or(0).saturating_add(usage.thoughts_token_count.unwrap_or(0)),
                ),
                reasoning_tokens: usage.thoughts_token_count.map(saturate),
                cached_input_tokens: usage.cached_content_token_count.map(saturate),
            };
        }
        if let Some(model) = chunk.model_version
            && self.model != model
        {
            self.model = model.into_owned();
        }
        if let Some(id) = chunk.response_id
            && self.response_id.as_deref() != Some(&*id)
        {
            self.response_id = Some(id.into_owned());
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            // HTTP 200 and no candidates: the prompt was refused, nothing will be generated.
            self.finish = Some(FinishReason::ContentFilter);
            self.block_reason = Some(reason.into_owned());
        }
        let Some(candidate) = chunk.candidates.and_then(|c| c.0) else { return Ok(None) };
        if let Some(reason) = candidate.finish_reason {
            self.finish = Some(finish_reason(&reason));
        }
        let text = candidate.content.and_then(|c| c.parts).and_then(|p| p.0);
        Ok(text.filter(|t| !t.is_empty()).map(Cow::into_owned))
    }

    pub fn completion(&self) -> Completion {
        Completion {
            finish_reason: self.finish.unwrap_or_default(),
            model: self.model.clone(),
            usage: self.usage,
            timings: Default::default(),
            response_id: self.response_id.clone(),
        }
    }
}

/// Gemini's `finishReason` in provider-independent terms. Policy stops (safety, recitation,
/// blocklists, PII, unsupported language, their image variants) are content filtering; the
/// others (`OTHER`, tool-call failures, unknown future values) count as a plain stop.
pub(crate) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A `google.rpc.Status` as JSON: `{"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
/// "details": [...]}`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorStatus {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    /// The canonical gRPC code name.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub details: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorStatus,
}

impl ErrorStatus {
    /// `"STATUS: message"`, or whichever of the two is there.
    pub fn describe(&self) -> String {
        let message = self.message.as_deref().map(str::trim).unwrap_or_default();
        match (self.status.as_deref().filter(|s| !s.is_empty()), message.is_empty()) {
            (Some(status), false) => format!("{status}: {message}"),
            (Some(status), true) => status.to_owned(),
            (None, false) => message.to_owned(),
            (None, true) => match self.code {
                Some(code) => format!("error {code}"),
                None => "unspecified error".to_owned(),
            },
        }
    }

    fn detail(&self, type_name: &str) -> impl Iterator<Item = &serde_json::Value> {
        self.details.iter().flatten().filter(move |d| {
            d.get("@type").and_then(|t| t.as_str()).is_some_and(|t| t.rsplit('/').next() == Some(type_name))
        })
    }

    /// `google.rpc.RetryInfo.retryDelay`, e.g. `"30s"`.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.detail("google.rpc.RetryInfo").find_map(|d| d.get("retryDelay")?.as_str().and_then(parse_duration))
    }

    /// `google.rpc.ErrorInfo.reason`, e.g. `"API_KEY_INVALID"`.
    pub fn reason(&self) -> Option<&str> {
        self.detail("google.rpc.ErrorInfo").find_map(|d| d.get("reason")?.as_str())
    }
}

/// An error response body: the usual object, or the one-element array the non-SSE streaming
/// endpoint wraps it in.
pub(crate) fn parse_error_body(body: &[u8]) -> Option<ErrorStatus> {
    // Checked first: serde would also read a struct from an array, field by position.
    if body.trim_ascii_start().starts_with(b"[") {
        let list = serde_json::from_slice::<Vec<ErrorEnvelope>>(body).ok()?;
        return list.into_iter().next().map(|e| e.error);
    }
    serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error)
}

/// The human-readable message of an error body that is not a Google error: an HTML page's title
/// (Google's front end answers unknown paths with one), or the raw text, shortened.
pub(crate) fn fallback_message(body: &[u8], secret: Option<&Secret>) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.starts_with('<')
        && let Some(start) = text.find("<title>")
        && let Some(len) = text[start + 7..].find("</title>")
    {
        return quote(text[start + 7..start + 7 + len].trim(), 200, secret);
    }
    quote(text, 500, secret)
}

/// A proto3 JSON `Duration` as a wait (`RetryInfo.retryDelay`): seconds with up to nine fractional
/// digits and an `s` suffix, read exactly; other numbers of seconds (`1e30s`, `.5s`) read as
/// floats. At most [`copilot_provider::MAX_RETRY_AFTER`]; `None` for a negative, NaN or unreadable
/// value.
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let number = value.trim().strip_suffix('s')?;
    let (seconds, fraction) = number.split_once('.').unwrap_or((number, ""));
    let canonical = !seconds.is_empty()
        && seconds.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return copilot_provider::retry_after_from_secs_f64(number.parse().ok()?);
    }
    let nanos =
        if fraction.is_empty() { 0 } else { fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32) };
    // More digits than a u64 holds is still a (very) long wait.
    let seconds = seconds.parse::<u64>().unwrap_or(u64::MAX);
    Some(copilot_provider::clamp_retry_after(Duration::new(seconds, nanos)))
}

/// An error that arrived after the stream began as bare JSON rather than a `data:` event (an SSE
/// parser skips such lines as unknown fields), found in the last bytes of the body. It may span
/// several lines; it starts at a line that begins with `{`.
pub(crate) fn bare_error(tail: &[u8]) -> Option<ErrorStatus> {
    let text = String::from_utf8_lossy(tail);
    let bytes = text.as_bytes();
    let starts = (0..bytes.len())
        .filter(|&i| bytes[i] == b'{' && (i == 0 || matches!(bytes[i - 1], b'\n' | b'\r')))
        .collect::<Vec<_>>();
    starts.into_iter().rev().find_map(|start| {
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<ErrorEnvelope>();
        values.next()?.ok().map(|e| e.error)
    })
}

// ---------------------------------------------------------------------------------------------
// Models

/// `GET /v1beta/models`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListModelsResponse {
    #[serde(default)]
    pub models: Option<Vec<Model>>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One `Model` resource (`GET /v1beta/models/{model}` returns it alone).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Model {
    /// `models/gemini-2.5-flash`.
    #[serde(default)]
    name: String,
    #[serde(default)]
    input_token_limit: Option<u64>,
    #[serde(default)]
    supported_generation_methods: Option<Vec<String>>,
    #[serde(default)]
    thinking: Option<bool>,
}

impl Model {
    /// Whether chat can be routed to it (embedding and image models lack `generateContent`).
    pub fn supports_generate_content(&self) -> bool {
        self.supported_generation_methods.iter().flatten().any(|m| m == "generateContent")
    }

    pub fn into_info(self) -> ModelInfo {
        let name = match self.name.strip_prefix("models/") {
            Some(id) => id.to_owned(),
            None => self.name,
        };
        let methods = self.supported_generation_methods.unwrap_or_default();
        let mut capabilities = Vec::new();
        if methods.iter().any(|m| m == "generateContent") {
            capabilities.push("completion".to_owned());
        }
        if methods.iter().any(|m| m == "embedContent") {
            capabilities.push("embedding".to_owned());
        }
        if self.thinking == Some(true) {
            capabilities.push("thinking".to_owned());
        }
        ModelInfo {
            family: family(&name),
            parameter_size: parameter_size(&name),
            context_length: self.input_token_limit.map(saturate),
            capabilities,
            name,
            ..Default::default()
        }
    }
}

/// A Vertex AI publisher model (`GET /v1beta1/publishers/google/models/{model}`): Model Garden's
/// catalog entry, which has no token limits or generation methods.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublisherModel {
    /// `publishers/google/models/gemini-2.0-flash`.
    #[serde(default)]
    name: String,
}

impl PublisherModel {
    pub fn into_info(self) -> ModelInfo {
        let id = self.name.rsplit('/').next().unwrap_or(&self.name);
        vertex_model_info(id)
    }
}

/// What is known of a Vertex model from its name alone.
pub(crate) fn vertex_model_info(id: &str) -> ModelInfo {
    let capability = if id.contains("embedding") { "embedding" } else { "completion" };
    ModelInfo {
        name: id.to_owned(),
        family: family(id),
        parameter_size: parameter_size(id),
        capabilities: vec![capability.to_owned()],
        ..Default::default()
    }
}

/// The name's leading words, up to the first one that starts with a digit:
/// `gemini-2.5-flash` → `gemini`, `text-embedding-004` → `text-embedding`.
fn family(name: &str) -> String {
    let id = name.rsplit('/').next().unwrap_or(name);
    let words: Vec<&str> = id.split('-').take_while(|w| !w.starts_with(|c: char| c.is_ascii_digit())).collect();
    words.join("-")
}

/// A parameter count spelled in the name, as open models do: `gemma-3-27b-it` → `27B`.
fn parameter_size(name: &str) -> String {
    name.split(['-', '/'])
        .find(|w| {
            w.len() > 1 && w.ends_with(['b', 'B', 'm', 'M']) && w[..w.len() - 1].parse::<f64>().is_ok_and(|n| n > 0.0)
        })
        .map(str::to_ascii_uppercase)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::Message;
    use serde_json::json;

    fn request(messages: &[(Role, &str)], options: GenerationOptions) -> ChatRequest {
        ChatRequest {
            model: "gemini-2.5-flash".into(),
            messages: messages.iter().map(|(role, content)| Message::text(*role, *content)).collect(),
            options,
            ..Default::default()
        }
    }

    #[test]
    fn body_maps_roles_and_system_instruction_and_omits_unset_options() {
        let req = request(&[(Role::System, "You are terse."), (Role::User, "Hi")], GenerationOptions::default());
        let body = serde_json::to_value(GenerateBody::new(&req, &[])).unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
            })
        );
    }

    #[test]
    fn body_merges_consecutive_turns_and_drops_empty_messages() {
        let req = request(
            &[
                (Role::User, "one"),
                (Role::User, "two"),
                (Role::Assistant, "Hello."),
                (Role::System, "late rule"),
                (Role::Assistant, ""),
                (Role::Assistant, "More."),
                (Role::User, "three"),
                (Role::System, ""),
            ],
            GenerationOptions::default(),
        );
        let body = serde_json::to_value(GenerateBody::new(&req, &[])).unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
                    {"role": "model", "parts": [{"text": "Hello."}, {"text": "More."}]},
                    {"role": "user", "parts": [{"text": "three"}]},
                ],
                "systemInstruction": {"parts": [{"text": "late rule"}]},
            })
        );
    }

    #[test]
    fn body_maps_every_option_and_passes_safety_settings_through() {
        let req = request(
            &[(Role::User, "Hi")],
            GenerationOptions {
                temperature: Some(0.5),
                max_tokens: Some(256),
                top_p: Some(0.25),
                top_k: Some(40),
                stop: vec!["END".into()],
                seed: Some(7),
            },
        );
        let safety =
            [SafetySetting { category: "HARM_CATEGORY_HARASSMENT".into(), threshold: "BLOCK_ONLY_HIGH".into() }];
        let body = serde_json::to_value(GenerateBody::new(&req, &safety)).unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.5, "topP": 0.25, "topK": 40, "maxOutputTokens": 256, "stopSequences": ["END"], "seed": 7})
        );
        assert_eq!(
            body["safetySettings"],
            json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])
        );
        assert!(body.get("systemInstruction").is_none());

        let req = request(&[(Role::User, "Hi")], GenerationOptions { max_tokens: Some(5), ..Default::default() });
        let body = serde_json::to_value(GenerateBody::new(&req, &[])).unwrap();
        assert_eq!(body["generationConfig"], json!({"maxOutputTokens": 5}));
    }

    #[test]
    fn seeds_fold_into_int32() {
        assert_eq!(wire_seed(0), 0);
        assert_eq!(wire_seed(7), 7);
        assert_eq!(wire_seed(i32::MAX as u64), i32::MAX);
        assert_eq!(wire_seed(1 << 31), 0);
        assert_eq!(wire_seed((1 << 31) + 5), 5);
        assert_eq!(wire_seed(u64::MAX), i32::MAX);
    }

    fn apply_all(chunks: &[&str]) -> (Vec<String>, StreamState) {
        let mut state = StreamState::default();
        let deltas = chunks.iter().filter_map(|c| state.apply(c, None).unwrap()).collect();
        (deltas, state)
    }

    #[test]
    fn decodes_the_reference_stream() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Te"}]},"index":0}],"usageMetadata":{"promptTokenCount":18,"totalTokenCount":18},"modelVersion":"gemini-2.5-flash","responseId":"a1b2c3"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"al."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":18,"candidatesTokenCount":2,"totalTokenCount":20},"modelVersion":"gemini-2.5-flash","responseId":"a1b2c3"}"#,
        ]);
        assert_eq!(deltas, ["Te", "al."]);
        assert_eq!(
            state.completion(),
            Completion {
                finish_reason: FinishReason::Stop,
                model: "gemini-2.5-flash".into(),
                usage: Usage { input_tokens: 18, output_tokens: 2, ..Default::default() },
                timings: Default::default(),
                response_id: Some("a1b2c3".into()),
            }
        );
    }

    #[test]
    fn joins_text_parts_and_skips_thoughts() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"a\n\"b\""},{"text":" é"},{"inlineData":{}}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"only thinking","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#,
        ]);
        assert_eq!(deltas, ["a\n\"b\" é"]);
        assert_eq!(state.finish, Some(FinishReason::Stop));
    }

    #[test]
    fn usage_keeps_the_last_totals_and_counts_thoughts_as_output() {
        let (_, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1,"thoughtsTokenCount":30}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"b"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"thoughtsTokenCount":40,"totalTokenCount":53}}"#,
            // A later chunk without usageMetadata does not reset it.
            r#"{"candidates":[{"content":{"parts":[{"text":"c"}]},"finishReason":"MAX_TOKENS"}]}"#,
        ]);
        assert_eq!(state.completion().usage, Usage { input_tokens: 9, output_tokens: 44, ..Default::default() });
        assert_eq!(state.completion().finish_reason, FinishReason::Length);
        assert_eq!(state.completion().model, "");
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason("STOP"), FinishReason::Stop);
        assert_eq!(finish_reason("MAX_TOKENS"), FinishReason::Length);
        for filtered in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY"]
        {
            assert_eq!(finish_reason(filtered), FinishReason::ContentFilter, "{filtered}");
        }
        for other in ["OTHER", "MALFORMED_FUNCTION_CALL", "FINISH_REASON_UNSPECIFIED", "SOMETHING_NEW"] {
            assert_eq!(finish_reason(other), FinishReason::Stop, "{other}");
        }
    }

    #[test]
    fn a_safety_stop_without_content_is_a_content_filter() {
        let (deltas, state) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Sure"}]}}]}"#,
            r#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_HARASSMENT","probability":"HIGH","blocked":true}]}]}"#,
        ]);
        assert_eq!(deltas, ["Sure"]);
        assert_eq!(state.finish, Some(FinishReason::ContentFilter));
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_with_prompt_usage() {
        let (deltas, state) = apply_all(&[
            r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT","safetyRatings":[]},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.0-flash"}"#,
        ]);
        assert!(deltas.is_empty());
        assert_eq!(state.finish, Some(FinishReason::ContentFilter));
        assert_eq!(state.block_reason.as_deref(), Some("PROHIBITED_CONTENT"));
        assert_eq!(state.completion().usage, Usage { input_tokens: 7, output_tokens: 0, ..Default::default() });
        assert_eq!(state.completion().model, "gemini-2.0-flash");
    }

    #[test]
    fn only_the_first_candidate_counts() {
        let (deltas, _) = apply_all(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"first"}]}},{"content":{"parts":[{"text":"second"}]}}]}"#,
            r#"{"candidates":[]}"#,
            r#"{"candidates":null,"usageMetadata":null}"#,
        ]);
        assert_eq!(deltas, ["first"]);
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let mut state = StreamState::default();
        let err =
            state.apply(r#"{"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}"#, None);
        assert_eq!(err, Err(ProviderError::MidStream("INTERNAL: Internal error encountered.".into())));
    }

    #[test]
    fn malformed_chunks_are_protocol_errors_with_a_short_excerpt() {
        let mut state = StreamState::default();
        let Err(ProviderError::Protocol(message)) = state.apply("<html>bad gateway</html>", None) else { panic!() };
        assert!(message.contains("<html>bad gateway</html>"), "{message}");
        let long = format!("{{\"candidates\": {}", "x".repeat(5000));
        let Err(ProviderError::Protocol(message)) = state.apply(&long, None) else { panic!() };
        assert!(message.len() < 500, "excerpt not shortened: {} bytes", message.len());
        assert!(matches!(state.apply(r#"{"candidates":[{"finishReason":7}]}"#, None), Err(ProviderError::Protocol(_))));
    }

    #[test]
    fn error_bodies_parse_with_details() {
        let body = br#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED",
          "details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m","quotaId":"q"}]},
                     {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"15s"}]}}"#;
        let status = parse_error_body(body).unwrap();
        assert_eq!(status.describe(), "RESOURCE_EXHAUSTED: You exceeded your current quota.");
        assert_eq!(status.retry_delay(), Some(Duration::from_secs(15)));
        assert_eq!(status.reason(), None);

        let body = br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
          "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#;
        let status = parse_error_body(body).unwrap();
        assert_eq!(status.reason(), Some("API_KEY_INVALID"));
        assert_eq!(status.retry_delay(), None);

        assert_eq!(parse_error_body(b"Bad Gateway"), None);
        assert_eq!(parse_error_body(br#"{"error":"flat string"}"#), None);
        assert_eq!(ErrorStatus { code: Some(502), ..Default::default() }.describe(), "error 502");
    }

    #[test]
    fn fallback_messages_use_html_titles() {
        let page = b"<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title><p>...";
        assert_eq!(fallback_message(page, None), "Error 404 (Not Found)!!1");
        assert_eq!(fallback_message(b"  upstream connect error \n", None), "upstream connect error");
        assert_eq!(fallback_message("é".repeat(600).as_bytes(), None).chars().count(), 501);
    }

    #[test]
    fn durations_parse_like_proto3_json() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.000001s"), Some(Duration::from_micros(1)));
        assert_eq!(parse_duration("53.123456789s"), Some(Duration::new(53, 123_456_789)));
        assert_eq!(parse_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5e1s"), Some(Duration::from_secs(15)));
        for bad in ["", "s", "30", "-1s", "1.s5", "abc s", "NaNs", "-infs", "-1e30s", "1e30"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn absurd_retry_delays_are_capped() {
        let cap = copilot_provider::MAX_RETRY_AFTER;
        for huge in ["3601s", "1e30s", "infs", "18446744073709551615.999999999s", "99999999999999999999999999s"] {
            assert_eq!(parse_duration(huge), Some(cap), "{huge:?}");
        }
        let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                     {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e30s"}]}}"#;
        assert_eq!(parse_error_body(body.as_bytes()).unwrap().retry_delay(), Some(cap));
    }

    #[test]
    fn bare_errors_are_found_in_the_tail_of_the_body() {
        let tail = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\r\n\r\n{\n  \"error\": {\n    \"code\": 500,\n    \"message\": \"Internal error encountered.\",\n    \"status\": \"INTERNAL\",\n    \"details\": [\n      {\"@type\": \"x\"}\n    ]\n  }\n}\n";
        let status = bare_error(tail).unwrap();
        assert_eq!(status.describe(), "INTERNAL: Internal error encountered.");
        assert_eq!(
            bare_error(br#"{"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}"#).unwrap().code,
            Some(503)
        );
        assert_eq!(bare_error(b"data: {\"candidates\": []}\r\n\r\n"), None);
        assert_eq!(bare_error(b"{\n  \"error\": {\n    \"code\": 500,"), None, "a cut-off error is not an error");
    }

    #[test]
    fn models_map_to_model_infos() {
        let body = json!({"models": [
            {"name": "models/gemini-2.5-flash", "version": "001", "displayName": "Gemini 2.5 Flash",
             "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
             "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"], "thinking": true},
            {"name": "models/text-embedding-004", "inputTokenLimit": 2048, "supportedGenerationMethods": ["embedContent"]},
            {"name": "models/gemma-3-27b-it", "supportedGenerationMethods": ["generateContent"]},
        ], "nextPageToken": "abc"});
        let list: ListModelsResponse = serde_json::from_value(body).unwrap();
        assert_eq!(list.next_page_token.as_deref(), Some("abc"));
        let models = list.models.unwrap();
        assert_eq!(models.iter().map(Model::supports_generate_content).collect::<Vec<_>>(), [true, false, true]);
        let infos: Vec<ModelInfo> = models.into_iter().map(Model::into_info).collect();
        assert_eq!(
            infos[0],
            ModelInfo {
                name: "gemini-2.5-flash".into(),
                family: "gemini".into(),
                context_length: Some(1_048_576),
                capabilities: vec!["completion".into(), "thinking".into()],
                ..Default::default()
            }
        );
        assert_eq!(infos[1].family, "text-embedding");
        assert_eq!(infos[1].capabilities, ["embedding"]);
        assert_eq!(infos[2].parameter_size, "27B");
        assert_eq!(infos[2].family, "gemma");
        assert_eq!(infos[2].context_length, None);

        let empty: ListModelsResponse = serde_json::from_value(json!({})).unwrap();
        assert!(empty.models.is_none() && empty.next_page_token.is_none());
    }
}
