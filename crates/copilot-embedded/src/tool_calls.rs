//! Tool calls in the model's own words: Qwen-style templates (Hermes format) teach the model to
//! answer a call as
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! possibly several blocks in a row. [`ToolCallParser`] reads the answer as it streams: text outside
//! the blocks passes through as text, a block is held back until it closes and then becomes one
//! [`ToolCallDelta`] with the arguments' JSON text sliced out of what the model wrote (never
//! re-serialized). Ids are left to the server.
//!
//! What is not a call stays text, as the model wrote it (tags included): a block whose JSON does
//! not parse, names a tool the request did not offer, or has arguments that are not an object, and
//! a block still open when the answer ends (cut by `max_tokens`). A block that grows past
//! [`MAX_CALL_BYTES`] without closing is an error.

use copilot_provider::{ProviderError, ToolCallDelta};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::grammar::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

/// The most text one `<tool_call>` block may hold.
pub const MAX_CALL_BYTES: usize = 256 * 1024;

/// The most calls in one answer; later blocks stay text.
pub const MAX_CALLS: u32 = 128;

/// What the parser makes of the answer so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Text(String),
    Call(ToolCallDelta),
}

#[derive(Debug)]
pub struct ToolCallParser {
    /// The tools the request offered: a block naming another is text.
    names: Vec<String>,
    /// Text not yet classified: a possible start of `<tool_call>`, or an open block's body.
    buffer: String,
    in_call: bool,
    calls: u32,
    /// Whitespace outside the blocks, held: dropped around calls, kept inside text.
    whitespace: String,
}

#[derive(Deserialize)]
struct CallBody<'a> {
    name: String,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

impl ToolCallParser {
    pub fn new(names: Vec<String>) -> Self {
        Self { names, buffer: String::new(), in_call: false, calls: 0, whitespace: String::new() }
    }

    /// Whether a call was parsed.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// Takes the next piece of the answer.
    pub fn push(&mut self, text: &str, out: &mut Vec<Parsed>) -> Result<(), ProviderError> {
        self.buffer.push_str(text);
        loop {
            if self.in_call {
                let Some(end) = self.buffer.find(TOOL_CALL_CLOSE) else {
                    if self.buffer.len() > MAX_CALL_BYTES {
                        return Err(ProviderError::Protocol(format!(
                            "the model's {TOOL_CALL_OPEN} block passed {MAX_CALL_BYTES} bytes without a \
                             {TOOL_CALL_CLOSE}"
                        )));
                    }
                    return Ok(());
                };
                let block: String = self.buffer.drain(..end + TOOL_CALL_CLOSE.len()).collect();
                self.in_call = false;
                self.close_block(&block[..end], &block, out);
            } else {
                match self.buffer.find(TOOL_CALL_OPEN) {
                    Some(start) => {
                        let before: String = self.buffer.drain(..start + TOOL_CALL_OPEN.len()).collect();
                        self.text(&before[..start], out);
                        self.in_call = true;
                    }
                    None => {
                        // Keep what could still become `<tool_call>`.
                        let keep = partial_suffix(&self.buffer, TOOL_CALL_OPEN);
                        let done: String = self.buffer.drain(..self.buffer.len() - keep).collect();
                        self.text(&done, out);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The answer ended: what is still held back.
    pub fn finish(&mut self, out: &mut Vec<Parsed>) {
        let rest = std::mem::take(&mut self.buffer);
        if self.in_call {
            self.in_call = false;
            self.flush_whitespace(out);
            push_text(out, format!("{TOOL_CALL_OPEN}{rest}"));
        } else {
            self.text(&rest, out);
        }
        if !self.called() {
            let whitespace = std::mem::take(&mut self.whitespace);
            push_text(out, whitespace);
        }
    }

    /// `body` is the block's text between the tags; `whole` the block with them.
    fn close_block(&mut self, body: &str, whole: &str, out: &mut Vec<Parsed>) {
        match self.call(body) {
            Some(call) => {
                self.whitespace.clear();
                out.push(Parsed::Call(call));
                self.calls += 1;
            }
            None => {
                self.flush_whitespace(out);
                push_text(out, format!("{TOOL_CALL_OPEN}{whole}"));
            }
        }
    }

    fn call(&self, body: &str) -> Option<ToolCallDelta> {
        if self.calls >= MAX_CALLS {
            return None;
        }
        let parsed: CallBody = serde_json::from_str(body.trim()).ok()?;
        if !self.names.contains(&parsed.name) {
            return None;
        }
        let arguments = match parsed.arguments {
            Some(raw) if raw.get().starts_with('{') => raw.get().to_owned(),
            // The server writes `{}` for a call without arguments.
            Some(raw) if raw.get() == "null" => String::new(),
            None => String::new(),
            Some(_) => return None,
        };
        Some(ToolCallDelta { index: self.calls, name: Some(parsed.name), arguments, ..ToolCallDelta::default() })
    }

    /// Text outside the blocks; whitespace alone is held until it is known not to border a call.
    fn text(&mut self, text: &str, out: &mut Vec<Parsed>) {
        if text.is_empty() {
            return;
        }
        if text.trim().is_empty() {
            self.whitespace.push_str(text);
            return;
        }
        self.flush_whitespace(out);
        push_text(out, text.to_owned());
    }

    fn flush_whitespace(&mut self, out: &mut Vec<Parsed>) {
        let whitespace = std::mem::take(&mut self.whitespace);
        push_text(out, whitespace);
    }
}

fn push_text(out: &mut Vec<Parsed>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Parsed::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Parsed::Text(text));
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> ToolCallParser {
        ToolCallParser::new(vec!["get_weather".into(), "get_time".into()])
    }

    fn parse_in_pieces(text: &str, cuts: &[usize]) -> Vec<Parsed> {
        let mut parser = parser();
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            parser.push(&text[at..cut], &mut out).unwrap();
            at = cut;
        }
        parser.finish(&mut out);
        // Adjacent texts from separate pushes are one text to the client.
        let mut merged: Vec<Parsed> = Vec::new();
        for item in out {
            match (merged.last_mut(), item) {
                (Some(Parsed::Text(last)), Parsed::Text(text)) => last.push_str(&text),
                (_, item) => merged.push(item),
            }
        }
        merged
    }

    fn call(index: u32, name: &str, arguments: &str) -> Parsed {
        Parsed::Call(ToolCallDelta {
            index,
            name: Some(name.into()),
            arguments: arguments.into(),
            ..ToolCallDelta::default()
        })
    }

    #[test]
    fn one_call_split_at_every_byte_keeps_its_arguments_byte_exact() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"id\":9007199254740993,\"x\":1.0, \"city\": \"Zürich\"}}\n</tool_call>";
        let expected = vec![call(0, "get_weather", "{\"id\":9007199254740993,\"x\":1.0, \"city\": \"Zürich\"}")];
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            assert_eq!(parse_in_pieces(text, &[cut]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn parallel_calls_are_indexed_in_order_and_text_outside_passes_through() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(
            parse_in_pieces(text, &[3, 20, 40]),
            vec![
                Parsed::Text("Let me check.\n".into()),
                call(0, "get_weather", "{\"city\": \"Paris\"}"),
                call(1, "get_time", "{}"),
            ]
        );
    }

    #[test]
    fn plain_text_is_untouched_including_a_lone_angle_bracket() {
        let text = "a < b and <tool is not a call\n";
        assert_eq!(parse_in_pieces(text, &[10, 11, 12]), vec![Parsed::Text(text.into())]);
    }

    #[test]
    fn malformed_unknown_and_unclosed_blocks_stay_text() {
        for text in [
            "<tool_call>\nnot json\n</tool_call>",
            "<tool_call>\n{\"name\": \"launch_rockets\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{}\"}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"argu",
        ] {
            assert_eq!(parse_in_pieces(text, &[5]), vec![Parsed::Text(text.into())], "{text}");
        }
    }

    #[test]
    fn a_call_without_arguments_leaves_them_to_the_server() {
        let text = "<tool_call>\n{\"name\": \"get_time\"}\n</tool_call>";
        assert_eq!(parse_in_pieces(text, &[]), vec![call(0, "get_time", "")]);
    }

    #[test]
    fn an_endless_block_is_an_error() {
        let mut parser = parser();
        let mut out = Vec::new();
        parser.push("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"x\": \"", &mut out).unwrap();
        let chunk = "a".repeat(4096);
        let err = (0..100).find_map(|_| parser.push(&chunk, &mut out).err()).expect("bounded");
        assert!(matches!(&err, ProviderError::Protocol(m) if m.contains("without a </tool_call>")), "{err:?}");
    }

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("abc<tool_", "<tool_call>"), 6);
        assert_eq!(partial_suffix("abc<", "<tool_call>"), 1);
        assert_eq!(partial_suffix("abc", "<tool_call>"), 0);
        assert_eq!(partial_suffix("é", "<tool_call>"), 0);
    }
}
