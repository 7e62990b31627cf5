//! The pure half of a streamed `/api/chat` response: response-body bytes in, [`ChatEvent`]s out,
//! with no I/O. The adapter reads the body and feeds it here; the fuzz targets and benches drive
//! the same decoder with bytes of their own.

use std::collections::VecDeque;
use std::sync::Arc;

use copilot_http::ChatStreamDecoder;
use copilot_provider::{ChatEvent, ProviderError, ThinkingDelta, ToolCallDelta};

use crate::wire::{self, LineSplitter, LineTooLong};

/// Decodes one NDJSON chat stream. Feed it the body with [`push`](Self::push) and
/// [`end`](Self::end), and take events with [`next_event`](Self::next_event) after each push.
/// The last event is always a [`ChatEvent::Done`] or an error; nothing follows it.
#[derive(Debug)]
pub struct StreamDecoder {
    lines: LineSplitter,
    body_ended: bool,
    /// The final line was decoded, or the stream failed: nothing more is read.
    finished: bool,
    /// Events of a line already decoded, not yet taken (one line may say several things).
    pending: VecDeque<ChatEvent>,
    /// The index the next tool call gets: Ollama sends calls whole, one or more per chunk, and
    /// its own `index` is not reliable across chunks.
    next_call: u32,
    /// Whether thinking is passed on; when it is not asked for, it is dropped.
    thoughts: bool,
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
            pending: VecDeque::new(),
            next_call: 0,
            thoughts: true,
            base_url,
        }
    }

    /// Drops the model's thinking instead of passing it on (the request did not ask for it).
    pub fn without_thoughts(mut self) -> Self {
        self.thoughts = false;
        self
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

    /// Queues what a decoded line says.
    fn queue(&mut self, line: wire::Line) -> Result<(), ProviderError> {
        if let Some(text) = line.thinking.filter(|_| self.thoughts) {
            self.pending.push_back(ChatEvent::Thinking(ThinkingDelta::Text(text)));
        }
        if let Some(text) = line.content {
            self.pending.push_back(ChatEvent::Delta(text));
        }
        for call in line.calls {
            let index = self.next_call;
            self.next_call = index
                .checked_add(1)
                .ok_or_else(|| ProviderError::Protocol("Ollama sent more tool calls than can be counted".into()))?;
            self.pending.push_back(ChatEvent::tool_call(ToolCallDelta {
                index,
                id: call.id,
                name: Some(call.name),
                arguments: call.arguments,
                signature: Vec::new(),
            }));
        }
        if let Some(completion) = line.done {
            self.finished = true;
            self.pending.push_back(ChatEvent::done(completion));
        }
        Ok(())
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
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
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
            if let Err(err) = wire::decode_line(&line).and_then(|decoded| self.queue(decoded)) {
                // What the line said before its fault is not passed on: the line as a whole is bad.
                self.pending.clear();
                return self.fail(err);
            }
        }
    }

    fn buffered(&self) -> usize {
        self.lines.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: StreamDecoder, reads: &[&[u8]]) -> Vec<Result<ChatEvent, ProviderError>> {
        let mut decoder = decoder;
        let mut events = Vec::new();
        for read in reads {
            decoder.push(read);
            events.extend(std::iter::from_fn(|| decoder.next_event()));
        }
        decoder.end();
        events.extend(std::iter::from_fn(|| decoder.next_event()));
        events
    }

    fn decoder() -> StreamDecoder {
        StreamDecoder::new("http://test".into())
    }

    const THINK_CALL_CALL_DONE: &str = concat!(
        r#"{"model":"q","message":{"role":"assistant","content":"","thinking":"Need the weather."},"done":false}"#,
        "\n",
        r#"{"model":"q","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_a","function":{"index":0,"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":false}"#,
        "\n",
        r#"{"model":"q","message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}},{"function":{"index":1,"name":"now","arguments":{}}}]},"done":false}"#,
        "\n",
        r#"{"model":"q","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":9}"#,
        "\n",
    );

    fn call(index: u32, id: Option<&str>, name: &str, arguments: &str) -> Result<ChatEvent, ProviderError> {
        Ok(ChatEvent::tool_call(ToolCallDelta {
            index,
            id: id.map(String::from),
            name: Some(name.into()),
            arguments: arguments.into(),
            signature: vec![],
        }))
    }

    #[test]
    fn calls_get_a_running_index_across_chunks_and_thinking_comes_first() {
        let events = decode(decoder(), &[THINK_CALL_CALL_DONE.as_bytes()]);
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[0], Ok(ChatEvent::Thinking(ThinkingDelta::Text("Need the weather.".into()))));
        assert_eq!(events[1], call(0, Some("call_a"), "get_weather", r#"{"city":"Tokyo"}"#));
        // Ollama restarted its own index; ours goes on.
        assert_eq!(events[2], call(1, None, "get_weather", r#"{"city":"Paris"}"#));
        assert_eq!(events[3], call(2, None, "now", "{}"));
        let Ok(ChatEvent::Done(done)) = &events[4] else { panic!("{events:?}") };
        // Ollama says stop; the server settles TOOL_CALLS from the calls.
        assert_eq!(done.finish_reason, copilot_provider::FinishReason::Stop);
    }

    #[test]
    fn thinking_is_dropped_when_not_asked_for() {
        let events = decode(decoder().without_thoughts(), &[THINK_CALL_CALL_DONE.as_bytes()]);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events.iter().all(|e| !matches!(e, Ok(ChatEvent::Thinking(_)))));
    }

    #[test]
    fn arguments_survive_byte_exact_wherever_the_body_is_cut() {
        let arguments = r#"{"id":9007199254740993,"x":1.0,"s":"\u00e9\"q\"","n":[1e400,-0.0]}"#;
        let body = format!(
            "{}\n{}\n",
            format_args!(
                r#"{{"message":{{"content":"","tool_calls":[{{"id":"c","function":{{"name":"f","arguments":{arguments}}}}}]}},"done":false}}"#
            ),
            r#"{"message":{"content":""},"done":true}"#
        );
        let expected = call(0, Some("c"), "f", arguments);
        for at in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(at);
            let events = decode(decoder(), &[a, b]);
            assert_eq!(events.len(), 2, "cut at {at}: {events:?}");
            assert_eq!(events[0], expected, "cut at {at}");
        }
    }

    #[test]
    fn an_error_after_a_call_fails_the_stream_after_it() {
        let body = concat!(
            r#"{"message":{"content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},"done":false}"#,
            "\n",
            r#"{"error":"an error was encountered while running the model: unexpected EOF"}"#,
            "\n",
        );
        let events = decode(decoder(), &[body.as_bytes()]);
        assert_eq!(
            events,
            [
                call(0, None, "f", r#"{"a":1}"#),
                Err(ProviderError::MidStream(
                    "an error was encountered while running the model: unexpected EOF".into()
                )),
            ]
        );
    }

    #[test]
    fn a_bad_call_in_a_line_drops_the_whole_line() {
        let body = concat!(
            r#"{"message":{"content":"text","tool_calls":[{"function":{"name":"f","arguments":{}}},{"function":{"name":"g","arguments":7}}]},"done":false}"#,
            "\n",
        );
        let events = decode(decoder(), &[body.as_bytes()]);
        let [Err(ProviderError::Protocol(message))] = &events[..] else { panic!("{events:?}") };
        assert!(message.contains("\"g\""), "{message}");
    }

    #[test]
    fn a_final_chunk_with_text_and_a_call_gives_both_before_done() {
        let body = concat!(
            r#"{"message":{"content":"ok","tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":true,"done_reason":"stop"}"#,
            "\n",
        );
        let events = decode(decoder(), &[body.as_bytes()]);
        assert_eq!(events[..2], [Ok(ChatEvent::Delta("ok".into())), call(0, None, "f", "{}")]);
        assert!(matches!(events[2..], [Ok(ChatEvent::Done(_))]), "{events:?}");
    }
}
