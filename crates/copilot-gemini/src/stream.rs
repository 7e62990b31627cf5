//! The pure half of a `streamGenerateContent?alt=sse` response: response-body bytes in,
//! [`ChatEvent`]s out, with no I/O. The adapter reads the body and feeds it here; the fuzz targets
//! and benches drive the same decoder with bytes of their own.

use std::collections::VecDeque;
use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_http::sse::{SseBody, SseItem};
use copilot_provider::{ChatEvent, ProviderError, Secret};

use crate::wire::{self, StreamState};

/// How much of the end of the body is kept to look for a bare-JSON error.
const TAIL_BYTES: usize = 16 * 1024;

/// Decodes one Gemini chat stream. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    body: SseBody,
    state: StreamState,
    /// Events of the last chunk not yet taken (a chunk may hold thinking, text and several calls).
    pending: VecDeque<ChatEvent>,
    /// The last bytes of the body, at least [`TAIL_BYTES`] of them once that many came: an error
    /// Google sends as bare JSON instead of an event is found in the last [`TAIL_BYTES`].
    tail: Vec<u8>,
    base_url: Arc<str>,
    api_key: Option<Secret>,
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
            state: StreamState::default(),
            pending: VecDeque::new(),
            tail: Vec::new(),
            base_url,
            api_key,
        }
    }

    /// Whether the last event went out.
    pub fn is_finished(&self) -> bool {
        self.body.is_finished()
    }

    /// Ends the stream on `err`, or with the answer if it was already complete.
    fn fail(&mut self, err: ProviderError) -> Result<ChatEvent, ProviderError> {
        if self.answer_complete() {
            return Ok(self.done());
        }
        self.body.finish();
        Err(err)
    }

    /// The final event, now.
    fn done(&mut self) -> ChatEvent {
        self.body.finish();
        if let Some(reason) = &self.state.block_reason {
            tracing::debug!(block_reason = %reason, base_url = %self.base_url, "Gemini blocked the prompt");
        }
        ChatEvent::done(self.state.completion())
    }

    /// The body ended cleanly without a `finishReason`: an error sent as bare JSON, or a cut.
    fn ended_early(&self) -> ProviderError {
        // Exactly the last bytes, so the answer does not depend on how the body was cut into reads.
        let tail = &self.tail[self.tail.len().saturating_sub(TAIL_BYTES)..];
        match wire::bare_error(tail) {
            Some(error) => ProviderError::MidStream(copilot_http::redact(&error.describe(), self.api_key.as_ref())),
            None => ProviderError::Interrupted(format!(
                "Gemini at {} ended the stream before any chunk carried a finishReason",
                self.base_url
            )),
        }
    }

    fn redact_error(&self, err: ProviderError) -> ProviderError {
        err.redacted(self.api_key.as_ref())
    }
}

impl ChatStreamDecoder for StreamDecoder {
    fn push(&mut self, chunk: &[u8]) {
        if self.body.is_finished() {
            return;
        }
        self.body.push(chunk);
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
    }

    fn end(&mut self) {
        self.body.end();
    }

    fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        if self.body.is_finished() {
            return None;
        }
        if let Some(event) = self.pending.pop_front() {
            return Some(Ok(event));
        }
        while let Some(item) = self.body.next_item() {
            let applied = match item {
                Ok(SseItem::Event { data, .. }) => self
                    .state
                    .apply(&data, self.api_key.as_ref(), &mut self.pending)
                    .map_err(|err| self.redact_error(err)),
                // Not a field of Gemini's streams: ignored, as the SSE rules say.
                Ok(SseItem::ErrorLine(_)) => continue,
                Err(too_long) => {
                    Err(copilot_http::line_too_long(&format!("Gemini at {}", self.base_url), too_long.limit))
                }
            };
            match applied {
                Ok(()) => {
                    if let Some(event) = self.pending.pop_front() {
                        return Some(Ok(event));
                    }
                }
                Err(err) => {
                    self.pending.clear();
                    return Some(self.fail(err));
                }
            }
        }
        if !self.body.ended() {
            return None;
        }
        if self.answer_complete() {
            return Some(Ok(self.done()));
        }
        let early = self.ended_early();
        Some(self.fail(early))
    }

    fn buffered(&self) -> usize {
        self.body.buffered()
    }

    /// A chunk said how the answer ends: from then on, a broken or odd end of the body does not
    /// undo it.
    fn answer_complete(&self) -> bool {
        self.state.finish.is_some()
    }

    fn finish_now(&mut self) -> Option<ChatEvent> {
        self.answer_complete().then(|| self.done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut decoder = StreamDecoder::new("http://g".into(), None);
        for i in 0..100u8 {
            decoder.push(&[i; 1000]);
        }
        assert!(decoder.tail.len() >= TAIL_BYTES && decoder.tail.len() <= 2 * TAIL_BYTES, "{}", decoder.tail.len());
        assert_eq!(decoder.tail.last(), Some(&99));
    }
}
