//! The pure half of a streamed Messages API response: response-body bytes in, [`ChatEvent`]s
//! out, with no I/O. The adapter reads the body and feeds it here; the fuzz targets and benches
//! drive the same decoder with bytes of their own.

use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_http::sse::{SseBody, SseItem};
use copilot_provider::{ChatEvent, ProviderError, Secret};

use crate::wire::{self, Decoded, StreamState};

/// Decodes one Anthropic chat stream. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    body: SseBody,
    state: StreamState,
    base_url: Arc<str>,
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
        StreamDecoder { body: SseBody::with_limit(limit), state: StreamState::new(api_key, limit), base_url }
    }

    /// Whether the last event went out.
    pub fn is_finished(&self) -> bool {
        self.body.is_finished()
    }

    fn fail(&mut self, err: ProviderError) -> Result<ChatEvent, ProviderError> {
        self.body.finish();
        Err(err)
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
        if self.body.is_finished() {
            return None;
        }
        while let Some(item) = self.body.next_item() {
            let decoded = match item {
                // The SSE rules' default event type, which a server that leaves out `event:` gets.
                Ok(SseItem::Event { event, data }) => {
                    wire::decode_event(event.unwrap_or("message"), &data, &mut self.state)
                }
                // Not a field of Anthropic's streams: ignored, as the SSE rules say.
                Ok(SseItem::ErrorLine(_)) => Decoded::Skip,
                Err(too_long) => Decoded::Failed(copilot_http::line_too_long(
                    &format!("Anthropic at {}", self.base_url),
                    too_long.limit,
                )),
            };
            match decoded {
                Decoded::Skip => {}
                Decoded::Delta(text) => return Some(Ok(ChatEvent::Delta(text))),
                Decoded::ToolCall(delta) => return Some(Ok(ChatEvent::tool_call(delta))),
                Decoded::Thinking(delta) => return Some(Ok(ChatEvent::Thinking(delta))),
                Decoded::Done(completion) => {
                    self.body.finish();
                    return Some(Ok(ChatEvent::done(completion)));
                }
                Decoded::Failed(err) => return Some(self.fail(err)),
            }
        }
        if !self.body.ended() {
            return None;
        }
        let err =
            ProviderError::Interrupted(format!("Anthropic at {} ended the stream without message_stop", self.base_url));
        Some(self.fail(err))
    }

    fn buffered(&self) -> usize {
        self.body.buffered()
    }
}
