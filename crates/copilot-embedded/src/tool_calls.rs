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
//! Small models often leave the tags out and answer with the call object alone, bare or in a
//! ` ```json ` fence (Qwen2.5-Coder 0.5B does, given tools and a free choice). As llama.cpp's own
//! parser for this format does, an answer that is nothing but such an object is taken as a call
//! when the object is exactly `{"name": <a tool offered>, "arguments": {...}}`; any other object,
//! or one followed by more text, is text. An answer that opens with `{` or a fence is therefore
//! held back until it ends or shows it is not a lone call.
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
    /// Nothing but whitespace seen yet: the answer may be a call without tags.
    at_start: bool,
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
        Self { names, buffer: String::new(), in_call: false, at_start: true, calls: 0, whitespace: String::new() }
    }

    /// Whether a call was parsed.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// Takes the next piece of the answer.
    pub fn push(&mut self, text: &str, out: &mut Vec<Parsed>) -> Result<(), ProviderError> {
        self.buffer.push_str(text);
        if self.at_start && !self.untagged_call(false, out) {
            return Ok(());
        }
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
        if self.at_start {
            self.untagged_call(true, out);
            // Tagged blocks held back behind the start: parsed now. A block too long stays text.
            let _ = self.push("", out);
        }
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

    /// Looks for a call without tags at the start of the answer; returns false while it cannot
    /// tell yet (the text stays held). A call found is taken out of the buffer.
    fn untagged_call(&mut self, finished: bool, out: &mut Vec<Parsed>) -> bool {
        match self.scan_untagged(finished) {
            Untagged::NeedMore => return false,
            Untagged::No => {}
            Untagged::Call { consumed, call } => {
                self.buffer.drain(..consumed);
                self.whitespace.clear();
                out.push(Parsed::Call(call));
                self.calls += 1;
            }
        }
        self.at_start = false;
        true
    }

    fn scan_untagged(&self, finished: bool) -> Untagged {
        let more = if finished { Untagged::No } else { Untagged::NeedMore };
        let text = self.buffer.as_str();
        let start = text.len() - text.trim_start().len();
        let rest = &text[start..];
        if rest.is_empty() {
            return more;
        }
        let (fenced, object_at) = if let Some(fence) = rest.strip_prefix("```") {
            let Some(newline) = fence.find('\n') else {
                return if fence.len() > 8 { Untagged::No } else { more };
            };
            if !matches!(fence[..newline].trim(), "" | "json" | "JSON") {
                return Untagged::No;
            }
            let after = &fence[newline + 1..];
            if after.trim_start().is_empty() {
                return more;
            }
            (true, start + 3 + newline + 1 + (after.len() - after.trim_start().len()))
        } else if "```".starts_with(rest) {
            return more;
        } else {
            (false, start)
        };
        if !text[object_at..].starts_with('{') {
            return Untagged::No;
        }
        let Some(length) = json_object_length(&text[object_at..]) else {
            return if text.len() > MAX_CALL_BYTES { Untagged::No } else { more };
        };
        let Some(call) = self.call(&text[object_at..object_at + length]) else { return Untagged::No };
        let mut rest = text[object_at + length..].trim_start();
        if fenced {
            match rest.strip_prefix("```") {
                Some(after) => rest = after,
                // The answer ended before the fence closed: the object alone is still a lone call.
                None if rest.is_empty() && finished => {}
                None if "```".starts_with(rest) => return more,
                // More inside the fence than the object: not a lone call.
                None => return Untagged::No,
            }
        }
        // A model that goes on after the object (restating a call and its result, say) is
        // writing about a call, not making one.
        match rest.trim().is_empty() {
            false => Untagged::No,
            true if !finished => Untagged::NeedMore,
            true => Untagged::Call { consumed: text.len(), call },
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

/// What the start of an answer says about a call without tags.
enum Untagged {
    NeedMore,
    No,
    /// A call, taking the first `consumed` bytes of the answer.
    Call {
        consumed: usize,
        call: ToolCallDelta,
    },
}

/// The length of the JSON object that `text` starts with, once it closes.
fn json_object_length(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, byte) in text.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
    }
    None
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
        for &cut in cuts.iter().filter(|&&cut| cut <= text.len()).chain([text.len()].iter()) {
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
    fn a_call_without_tags_bare_or_fenced_split_anywhere() {
        let expected = vec![call(0, "get_weather", "{\"city\": \"Paris\", \"note\": \"{not} \\\"a\\\" brace\"}")];
        for text in [
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": \"{not} \\\"a\\\" brace\"}}",
            "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Paris\", \"note\": \"{not} \\\"a\\\" brace\"}\n}\n```",
            "\n```\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": \"{not} \\\"a\\\" brace\"}}\n",
        ] {
            for cut in 0..=text.len() {
                assert_eq!(parse_in_pieces(text, &[cut]), expected, "{text:?} cut at {cut}");
            }
        }
        // An object followed by more is text, and a tagged call after it still a call.
        let text = "{\"name\": \"get_time\", \"arguments\": {}}\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(
            parse_in_pieces(text, &[7]),
            vec![Parsed::Text("{\"name\": \"get_time\", \"arguments\": {}}\n".into()), call(0, "get_weather", "{}")]
        );
    }

    #[test]
    fn a_tagged_call_behind_an_unclosed_object_is_still_found_at_the_end() {
        let text = "{\"x\": \"<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(parse_in_pieces(text, &[3]), vec![Parsed::Text("{\"x\": \"".into()), call(0, "get_time", "{}")]);
    }

    #[test]
    fn objects_that_are_not_lone_calls_stay_text() {
        for text in [
            "{\"city\": \"Paris\"}",
            "{\"name\": \"launch_rockets\", \"arguments\": {}}",
            "```json\n{\"name\": \"get_time\", \"arguments\": {}}\n{\"more\": 1}\n```",
            "{\"name\": \"get_time\", \"arguments\": {}}\n{\"temperature\": 31}",
            "```json\n{\"name\": \"get_time\", \"arguments\": {}}\n```\nThat is the call.",
            "```python\nprint({\"name\": 1})\n```",
            "Sure: {\"name\": \"get_time\", \"arguments\": {}}",
            "{\"name\": \"get_time\", \"arguments\": {\"zone\": \"cut off",
            "``",
            "{\"unclosed\": \"object <tool_call>",
        ] {
            assert_eq!(parse_in_pieces(text, &[1, 9]), vec![Parsed::Text(text.into())], "{text}");
        }
    }

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("abc<tool_", "<tool_call>"), 6);
        assert_eq!(partial_suffix("abc<", "<tool_call>"), 1);
        assert_eq!(partial_suffix("abc", "<tool_call>"), 0);
        assert_eq!(partial_suffix("é", "<tool_call>"), 0);
    }
}
