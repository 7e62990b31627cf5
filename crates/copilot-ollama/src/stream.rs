//! The pure half of a streamed `/api/chat` response: response-body bytes in, [`ChatEvent`]s out,
//! with no I/O. The adapter reads the body and feeds it here; the fuzz targets and benches drive
//! the same decoder with bytes of their own.

use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_provider::{ChatEvent, Completion, ProviderError};

use crate::wire::{self, LineEvent, LineSplitter, LineTooLong};

/// Decodes one NDJSON chat stream. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    lines: LineSplitter,
    body_ended: bool,
    /// The final line was decoded, or the stream failed: nothing more is read.
    finished: bool,
    /// A final chunk that also carried text: the text goes out first, then this.
    pending_done: Option<Completion>,
    base_url: Arc<str>,
}

impl StreamDecoder {
    /// `base_url` names the server in error messages.
    pub fn new(base_url: Arc<str>) -> Self {
        StreamDecoder::with_line_limit(base_url, copilot_http::MAX_LINE_BYTES)
    }

    /// Like [`new`](Self::new), with lines limited to `limit` bytes (the fuzz targets use a small
    /// one to reach the limit quickly).
    pub fn with_line_limit(base_url: Arc<str>, limit: usize) -> Self {
        StreamDecoder {
            lines: LineSplitter::with_limit(limit),
            body_ended: false,
            finished: false,
            pending_done: None,
            base_url,
        }
    }

    /// Whether the final line was decoded or the stream failed (a `Done` may still be pending).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn fail(&mut self, err: ProviderError) -> Option<Result<ChatEvent, ProviderError>> {
        self.finished = true;
        Some(Err(err))
    }

    fn too_long(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        let limit = self.lines.limit();
        self.fail(copilot_http::line_too_long(&format!("Ollama at {}", self.base_url), limit))
    }
}

impl ChatStreamDecoder for StreamDecoder {
    fn push(&mut self, chunk: &[u8]) {
        if !self.finished {
            self.lines.push(chunk);
        }
    }

    fn end(&mut self) {
        self.body_ended = true;
    }

    fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        if let Some(completion) = self.pending_done.take() {
            return Some(Ok(ChatEvent::Done(completion)));
        }
        if self.finished {
            return None;
        }
        loop {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) if !self.body_ended => return None,
                Ok(None) => match self.lines.finish() {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        return self.fail(ProviderError::Interrupted(format!(
                            "Ollama at {} ended the response before its final chunk",
                            self.base_url
                        )));
                    }
                    Err(LineTooLong) => return self.too_long(),
                },
                Err(LineTooLong) => return self.too_long(),
            };
            match wire::decode_line(&line) {
                LineEvent::Skip => {}
                LineEvent::Delta(text) => return Some(Ok(ChatEvent::Delta(text))),
                LineEvent::Done { tail, completion } => {
                    self.finished = true;
                    return Some(Ok(match tail {
                        Some(text) => {
                            self.pending_done = Some(completion);
                            ChatEvent::Delta(text)
                        }
                        None => ChatEvent::Done(completion),
                    }));
                }
                LineEvent::Failed(err) => return self.fail(err),
            }
        }
    }

    fn buffered(&self) -> usize {
        self.lines.buffered()
    }
}
