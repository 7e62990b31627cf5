//! The pure half of a streamed chat completion: response-body bytes in, [`ChatEvent`]s out, with
//! no I/O. The adapter reads the body and feeds it here; the fuzz targets and benches drive the
//! same decoder with bytes of their own.

use std::collections::VecDeque;
use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_http::sse::{SseBody, SseItem};
use copilot_provider::{
    ChatEvent, Completion, FinishReason, ProviderError, Secret, ThinkingDelta, ToolCallDelta, UpstreamTimings, Usage,
};

use crate::chunk_scan::ChunkHead;
use crate::wire::{self, CallPiece, ErrorDetails, Finish, Payload};

/// Most tool calls one answer may make (as many as the server passes on): far above what models
/// do, low enough that a runaway upstream cannot grow the decoder's state without bound.
pub const MAX_TOOL_CALLS: usize = 256;

/// Decodes one chat stream's server-sent events. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    body: SseBody,
    answer: Answer,
    /// Events decoded from one chunk (text, thinking and tool calls may share one), not yet taken.
    pending: VecDeque<ChatEvent>,
    /// How a reply sent whole ended, once its events are taken.
    whole_end: Option<Result<Completion, ProviderError>>,
}

/// What the chunks so far said about the completion.
#[derive(Debug)]
pub(crate) struct Answer {
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    model: String,
    response_id: Option<String>,
    timings: UpstreamTimings,
    base_url: Arc<str>,
    api_key: Option<Secret>,
    /// Whether thinking text goes out (the request asked for thoughts).
    thoughts: bool,
    /// The calls begun so far, by our index: the upstream's index and id for each.
    calls: Vec<CallSlot>,
    /// Whether the model refused (OpenAI's `refusal`): the answer then ends as filtered.
    refused: bool,
    /// The last chunk's head, which the next chunk likely repeats.
    head: ChunkHead,
}

#[derive(Debug)]
struct CallSlot {
    upstream_index: Option<u64>,
    id: Option<String>,
}

/// What to do after one decoded item.
enum Step {
    Continue,
    Complete,
    Fail(ProviderError),
}

impl StreamDecoder {
    /// `base_url` names the server in error messages; `api_key` is scrubbed from any upstream
    /// text they quote.
    pub fn new(base_url: Arc<str>, api_key: Option<Secret>) -> Self {
        StreamDecoder::with_line_limit(base_url, api_key, copilot_http::MAX_LINE_BYTES)
    }

    /// Like [`new`](Self::new), with lines and events limited to `limit` bytes (the fuzz targets
    /// use a small one to reach the limit quickly).
    pub fn with_line_limit(base_url: Arc<str>, api_key: Option<Secret>, limit: usize) -> Self {
        StreamDecoder {
            body: SseBody::with_limit(limit),
            answer: Answer {
                finish: None,
                usage: None,
                model: String::new(),
                response_id: None,
                timings: UpstreamTimings::default(),
                base_url,
                api_key,
                thoughts: false,
                calls: Vec::new(),
                refused: false,
                head: ChunkHead::default(),
            },
            pending: VecDeque::new(),
            whole_end: None,
        }
    }

    /// Passes the model's thinking on as [`ChatEvent::Thinking`] (when the request asked for
    /// thoughts); without it, thinking deltas are dropped.
    pub fn with_thoughts(mut self, thoughts: bool) -> Self {
        self.answer.thoughts = thoughts;
        self
    }

    /// Whether the last event went out.
    pub fn is_finished(&self) -> bool {
        self.body.is_finished() && self.pending.is_empty() && self.whole_end.is_none()
    }

    /// Whether a chunk carried a `finish_reason`: the answer is complete, only the usage chunk
    /// and `[DONE]` may follow.
    fn saw_finish_reason(&self) -> bool {
        self.answer.finish.is_some()
    }

    /// The final event, now: for a stream whose answer is complete but whose `[DONE]` never came.
    fn complete(&mut self) -> ChatEvent {
        self.body.finish();
        ChatEvent::done(self.answer.completion())
    }
}

impl Answer {
    fn handle_item(&mut self, item: SseItem<'_>, out: &mut VecDeque<ChatEvent>) -> Step {
        let data = match item {
            SseItem::ErrorLine(text) => return Step::Fail(self.mid_stream(error_line_details(&text))),
            SseItem::Event { event: Some("error"), data } => {
                return Step::Fail(self.mid_stream(error_line_details(&data)));
            }
            SseItem::Event { data, .. } => data,
        };
        let payload = wire::decode_data(&data, self.api_key.as_ref(), &mut self.head);
        match payload {
            Ok(Payload::Done) => Step::Complete,
            Ok(Payload::Skip) => Step::Continue,
            Ok(Payload::Error(details)) => Step::Fail(self.mid_stream(details)),
            Ok(Payload::Chunk(info)) => self.absorb(info, out),
            Err(err) => Step::Fail(self.scrub(err)),
        }
    }

    /// A whole `chat.completion` body: its events go to `out`; returns how it ended.
    fn whole(&mut self, body: &[u8], out: &mut VecDeque<ChatEvent>) -> Result<Completion, ProviderError> {
        match wire::decode_completion(body, self.api_key.as_ref()) {
            Ok(Payload::Chunk(info)) => {
                if let Step::Fail(err) = self.absorb(info, out) {
                    out.clear();
                    return Err(err);
                }
            }
            Ok(Payload::Error(details)) => return Err(self.mid_stream(details)),
            Ok(Payload::Done | Payload::Skip) => {}
            Err(err) => return Err(self.scrub(err)),
        }
        Ok(self.completion())
    }

    /// Takes what a chunk says about the completion; its thinking, text and tool-call pieces go
    /// to `out`, in that order (the order a model produces them in).
    fn absorb(&mut self, info: wire::ChunkInfo<'_>, out: &mut VecDeque<ChatEvent>) -> Step {
        // Every chunk repeats them: copied only when they change.
        if let Some(model) = info.model
            && self.model != model
        {
            self.model = model.into_owned();
        }
        if let Some(id) = info.id
            && self.response_id.as_deref() != Some(&*id)
        {
            self.response_id = Some(id.into_owned());
        }
        // The last report wins: vLLM's continuous usage repeats it on every chunk.
        if let Some(usage) = info.usage {
            self.usage = Some(usage);
        }
        if let Some(timings) = info.timings {
            self.timings = timings;
        }
        if let Some(thinking) = info.thinking.filter(|_| self.thoughts) {
            out.push_back(ChatEvent::Thinking(ThinkingDelta::Text(thinking)));
        }
        if let Some(text) = info.content {
            out.push_back(ChatEvent::Delta(text));
        }
        // A refusal is the model's answer, so it is passed on as text, and the answer ends as
        // withheld (below) so a client expecting JSON knows why it got prose.
        if let Some(refusal) = info.refusal {
            self.refused = true;
            out.push_back(ChatEvent::Delta(refusal));
        }
        for piece in info.tool_calls {
            match self.tool_call(piece) {
                Ok(Some(delta)) => out.push_back(ChatEvent::tool_call(delta)),
                Ok(None) => {}
                Err(err) => return Step::Fail(err),
            }
        }
        match info.finish {
            Some(Finish::Ended(reason)) => self.finish = Some(reason),
            Some(Finish::Aborted(reason)) => {
                return Step::Fail(ProviderError::MidStream(format!(
                    "{} stopped the generation (finish_reason \"{reason}\")",
                    self.base_url
                )));
            }
            None => {}
        }
        Step::Continue
    }

    /// A piece of a tool call, numbered as calls begin. The upstream's own index usually says
    /// which call a piece continues; a piece with a new id under a known index begins another
    /// call (servers that number every call 0), and a piece without an index continues the
    /// latest call unless its id is new.
    fn tool_call(&mut self, piece: CallPiece) -> Result<Option<ToolCallDelta>, ProviderError> {
        let same_call = |slot: &CallSlot| match (&piece.id, &slot.id) {
            (Some(new), Some(old)) => new == old,
            _ => true,
        };
        let found = match piece.index {
            Some(index) => self.calls.iter().rposition(|slot| slot.upstream_index == Some(index)),
            // Without an index, a name begins a call (unless it repeats the latest call's id).
            None if piece.name.is_some() && piece.id.is_none() => None,
            None => self.calls.len().checked_sub(1),
        }
        .filter(|&at| same_call(&self.calls[at]));
        let index = match found {
            Some(at) => {
                if piece.arguments.is_empty() {
                    return Ok(None);
                }
                at
            }
            None => {
                if self.calls.len() == MAX_TOOL_CALLS {
                    return Err(ProviderError::Protocol(format!(
                        "{} sent more than {MAX_TOOL_CALLS} tool calls in one answer",
                        self.base_url
                    )));
                }
                if piece.name.is_none() {
                    return Err(ProviderError::Protocol(format!(
                        "{} began a tool call without the tool's name",
                        self.base_url
                    )));
                }
                self.calls.push(CallSlot { upstream_index: piece.index, id: piece.id.clone() });
                self.calls.len() - 1
            }
        };
        let first = found.is_none();
        Ok(Some(ToolCallDelta {
            index: index as u32,
            id: piece.id.filter(|_| first),
            name: piece.name.filter(|_| first),
            arguments: piece.arguments,
            signature: Vec::new(),
        }))
    }

    fn completion(&mut self) -> Completion {
        let mut finish_reason = self.finish.unwrap_or_default();
        if self.refused && finish_reason == FinishReason::Stop {
            finish_reason = FinishReason::ContentFilter;
        }
        Completion {
            finish_reason,
            model: std::mem::take(&mut self.model),
            usage: self.usage.unwrap_or_default(),
            timings: self.timings,
            response_id: self.response_id.take(),
        }
    }

    fn mid_stream(&self, details: ErrorDetails) -> ProviderError {
        let details = details.quoted(self.api_key.as_ref());
        let message = if details.message.is_empty() { "unknown error".to_owned() } else { details.message };
        self.scrub(ProviderError::MidStream(message))
    }

    fn scrub(&self, err: ProviderError) -> ProviderError {
        err.redacted(self.api_key.as_ref())
    }
}

impl ChatStreamDecoder for StreamDecoder {
    fn push(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn end(&mut self) {
        self.body.end();
    }

    fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        if let Some(event) = self.pending.pop_front() {
            return Some(Ok(event));
        }
        if let Some(end) = self.whole_end.take() {
            self.body.finish();
            return Some(end.map(ChatEvent::done));
        }
        if self.body.is_finished() {
            return None;
        }
        while let Some(item) = self.body.next_item() {
            let step = match item {
                Ok(item) => self.answer.handle_item(item, &mut self.pending),
                Err(too_long) => Step::Fail(copilot_http::line_too_long(&self.answer.base_url, too_long.limit)),
            };
            match step {
                Step::Continue => {
                    if let Some(event) = self.pending.pop_front() {
                        return Some(Ok(event));
                    }
                }
                // `[DONE]` carries nothing, and what came before it has been taken.
                Step::Complete => return Some(Ok(self.complete())),
                Step::Fail(err) => {
                    // What the failing chunk held is dropped with it: the error ends the stream.
                    self.pending.clear();
                    self.body.finish();
                    return Some(Err(err));
                }
            }
        }
        if !self.body.ended() {
            return None;
        }
        if self.saw_finish_reason() {
            tracing::debug!(base_url = %self.answer.base_url, "stream ended after its finish_reason without [DONE]");
            return Some(Ok(self.complete()));
        }
        self.body.finish();
        Some(Err(ProviderError::Interrupted(format!(
            "{} ended the stream before it finished (no finish_reason, no [DONE])",
            self.answer.base_url
        ))))
    }

    fn buffered(&self) -> usize {
        self.body.buffered()
    }

    fn push_whole(&mut self, body: &[u8]) {
        if !self.body.is_finished() && self.whole_end.is_none() {
            self.whole_end = Some(self.answer.whole(body, &mut self.pending));
        }
    }

    fn answer_complete(&self) -> bool {
        self.saw_finish_reason()
    }

    /// The rest of the body stalled or broke after the `finish_reason`: only usage or `[DONE]`
    /// is lost.
    fn finish_now(&mut self) -> Option<ChatEvent> {
        if !self.saw_finish_reason() {
            return None;
        }
        tracing::debug!(base_url = %self.answer.base_url, "no [DONE] after the finish_reason; completing");
        Some(self.complete())
    }
}

/// llama.cpp's bare `error: {json}` line, or the data of an `event: error`: an error object,
/// wrapped in `{"error": ...}` or not, or plain text.
pub(crate) fn error_line_details(text: &str) -> ErrorDetails {
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let from_json = value.as_ref().and_then(|v| {
        ErrorDetails::from_value(v).or_else(|| {
            // `{"code":500,"message":"...","type":"server_error"}`: the error object itself.
            let message = v.get("message")?.as_str()?;
            Some(ErrorDetails { message: message.to_owned(), structured: true, ..Default::default() })
        })
    });
    // Shortened, after the key is masked, by `Answer::mid_stream`.
    from_json.unwrap_or_else(|| ErrorDetails { message: text.trim().to_owned(), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_as_llama_cpp_writes_them() {
        assert_eq!(error_line_details(r#"{"code":500,"message":"boom","type":"server_error"}"#).message, "boom");
        assert_eq!(error_line_details(r#"{"error":{"message":"wrapped"}}"#).message, "wrapped");
        assert_eq!(error_line_details(" plain text ").message, "plain text");
    }
}
