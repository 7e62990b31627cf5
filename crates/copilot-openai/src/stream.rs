//! The pure half of a streamed chat completion: response-body bytes in, [`ChatEvent`]s out, with
//! no I/O. The adapter reads the body and feeds it here; the fuzz targets and benches drive the
//! same decoder with bytes of their own.

use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_http::sse::{SseBody, SseItem};
use copilot_provider::{ChatEvent, Completion, FinishReason, ProviderError, Secret, UpstreamTimings, Usage};

use crate::wire::{self, ErrorDetails, Finish, Payload};

/// Decodes one chat stream's server-sent events. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    body: SseBody,
    answer: Answer,
    /// The events of a reply sent whole, not yet taken.
    whole: Option<WholeReply>,
}

/// A whole `chat.completion` body, decoded: its text, then how it ended.
#[derive(Debug)]
struct WholeReply {
    text: Option<String>,
    end: Result<Completion, ProviderError>,
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
}

/// What to do with one decoded item.
enum Step {
    Continue,
    Emit(String),
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
            },
            whole: None,
        }
    }

    /// Whether the last event went out.
    pub fn is_finished(&self) -> bool {
        self.body.is_finished()
    }

    /// Whether a chunk carried a `finish_reason`: the answer is complete, only the usage chunk
    /// and `[DONE]` may follow.
    fn saw_finish_reason(&self) -> bool {
        self.answer.finish.is_some()
    }

    /// The final event, now: for a stream whose answer is complete but whose `[DONE]` never came.
    fn complete(&mut self) -> ChatEvent {
        self.body.finish();
        ChatEvent::Done(self.answer.completion())
    }

    /// The next event of a reply sent whole: its text as one delta, then the completion.
    fn next_whole(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        if let Some(text) = self.whole.as_mut()?.text.take() {
            return Some(Ok(ChatEvent::Delta(text)));
        }
        let end = self.whole.take()?.end;
        self.body.finish();
        Some(end.map(ChatEvent::Done))
    }
}

impl Answer {
    fn handle_item(&mut self, item: SseItem<'_>) -> Step {
        let payload = match item {
            SseItem::ErrorLine(text) => return Step::Fail(self.mid_stream(error_line_details(&text))),
            SseItem::Event { event: Some("error"), data } => {
                return Step::Fail(self.mid_stream(error_line_details(data)));
            }
            SseItem::Event { data, .. } => wire::decode_data(data, self.api_key.as_ref()),
        };
        match payload {
            Ok(Payload::Done) => Step::Complete,
            Ok(Payload::Skip) => Step::Continue,
            Ok(Payload::Error(details)) => Step::Fail(self.mid_stream(details)),
            Ok(Payload::Chunk(info)) => self.absorb(info),
            Err(err) => Step::Fail(self.scrub(err)),
        }
    }

    /// A whole `chat.completion` body: its text, if any, and how it ended.
    fn whole(&mut self, body: &[u8]) -> WholeReply {
        let text = match wire::decode_completion(body, self.api_key.as_ref()) {
            Ok(Payload::Chunk(info)) => match self.absorb(info) {
                Step::Emit(text) => Some(text),
                Step::Fail(err) => return WholeReply { text: None, end: Err(err) },
                Step::Continue | Step::Complete => None,
            },
            Ok(Payload::Error(details)) => return WholeReply { text: None, end: Err(self.mid_stream(details)) },
            Ok(Payload::Done | Payload::Skip) => None,
            Err(err) => return WholeReply { text: None, end: Err(self.scrub(err)) },
        };
        WholeReply { text, end: Ok(self.completion()) }
    }

    /// Takes what a chunk says about the completion; returns its text, if any.
    fn absorb(&mut self, info: wire::ChunkInfo<'_>) -> Step {
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
        match info.content {
            Some(text) => Step::Emit(text),
            None => Step::Continue,
        }
    }

    fn completion(&mut self) -> Completion {
        Completion {
            finish_reason: self.finish.unwrap_or_default(),
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
        if self.whole.is_some() {
            return self.next_whole();
        }
        if self.body.is_finished() {
            return None;
        }
        while let Some(item) = self.body.next_item() {
            let step = match item {
                Ok(item) => self.answer.handle_item(item),
                Err(too_long) => Step::Fail(copilot_http::line_too_long(&self.answer.base_url, too_long.limit)),
            };
            match step {
                Step::Continue => {}
                Step::Emit(text) => return Some(Ok(ChatEvent::Delta(text))),
                Step::Complete => return Some(Ok(self.complete())),
                Step::Fail(err) => {
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
        if !self.body.is_finished() {
            self.whole = Some(self.answer.whole(body));
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
