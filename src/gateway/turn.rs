//! Makes every provider's tool calls look the same to clients, once, here: the first piece of a
//! call always carries its index, id and name (an id is made up when the upstream gave none), later
//! pieces carry neither, a call whose arguments never came gets `{}`, and the finish reason is
//! worked out from the calls rather than taken from upstreams that disagree (Gemini and Ollama
//! say `stop`, vLLM says `tool_calls` even after a cut or with no call at all).

use copilot_provider::{FinishReason, ProviderError, ToolCallDelta};

/// Most tool calls one answer may make: far above what models do (a handful), low enough that a
/// runaway upstream cannot make the server track unbounded state.
pub const MAX_TOOL_CALLS: usize = 256;

/// What the answer's tool calls have been so far.
#[derive(Debug, Default)]
pub struct Turn {
    /// Per call, in index order: whether any argument text came.
    calls: Vec<bool>,
}

impl Turn {
    /// The piece as clients get it, or the upstream's protocol breach.
    pub fn tool_call(&mut self, mut delta: Box<ToolCallDelta>) -> Result<Box<ToolCallDelta>, ProviderError> {
        let index = delta.index as usize;
        if index < self.calls.len() {
            // Only the first piece names the call.
            delta.id = None;
            delta.name = None;
        } else if index == self.calls.len() {
            if index == MAX_TOOL_CALLS {
                return Err(ProviderError::Protocol(format!("the answer makes more than {MAX_TOOL_CALLS} tool calls")));
            }
            if delta.name.as_deref().is_none_or(str::is_empty) {
                return Err(ProviderError::Protocol(format!("tool call {index} began without the tool's name")));
            }
            if delta.id.as_deref().is_none_or(str::is_empty) {
                delta.id = Some(made_up_id());
            }
            self.calls.push(false);
        } else {
            return Err(ProviderError::Protocol(format!(
                "tool call {index} began before call {} (calls are numbered from 0 in order)",
                self.calls.len()
            )));
        }
        if !delta.arguments.is_empty() {
            self.calls[index] = true;
        }
        Ok(delta)
    }

    /// At the end of the answer: the pieces still owed (`{}` for calls without arguments), and
    /// the finish reason settled from the calls.
    pub fn finish(&self, reported: FinishReason) -> (Vec<ToolCallDelta>, FinishReason) {
        let owed = self
            .calls
            .iter()
            .enumerate()
            .filter(|(_, had_arguments)| !**had_arguments)
            .map(|(index, _)| ToolCallDelta { index: index as u32, arguments: "{}".into(), ..Default::default() })
            .collect();
        let reason = match (reported, self.calls.is_empty()) {
            (FinishReason::Stop | FinishReason::ToolCalls, false) => FinishReason::ToolCalls,
            (FinishReason::ToolCalls, true) => FinishReason::Stop,
            (other, _) => other,
        };
        (owed, reason)
    }
}

/// `call_` and 24 random letters and digits: unique in any conversation, and within every
/// provider's id rules (Anthropic's `^[a-zA-Z0-9_-]+$` is the strictest).
fn made_up_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut random = [0u8; 24];
    // The OS's generator does not fail on the systems we run on; were it to, a clock-based id is
    // still unique enough within one conversation.
    if getrandom::fill(&mut random).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        random.iter_mut().enumerate().for_each(|(i, b)| *b = (nanos >> (i % 16 * 8)) as u8 ^ i as u8);
    }
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    id.extend(random.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Box<ToolCallDelta> {
        Box::new(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_first_piece_names_the_call_and_later_ones_do_not() {
        let mut turn = Turn::default();
        let first = turn.tool_call(delta(0, Some("call_1"), Some("get_weather"), "")).unwrap();
        assert_eq!(first, delta(0, Some("call_1"), Some("get_weather"), ""));
        // Some upstreams repeat the id and name on every piece: clients see them once.
        let next = turn.tool_call(delta(0, Some("call_1"), Some("get_weather"), "{\"city\"")).unwrap();
        assert_eq!(next, delta(0, None, None, "{\"city\""));
    }

    #[test]
    fn a_call_without_an_id_gets_one_unique_in_the_conversation() {
        let mut turn = Turn::default();
        let a = turn.tool_call(delta(0, None, Some("f"), "{}")).unwrap().id.unwrap();
        let b = turn.tool_call(delta(1, Some(""), Some("f"), "{}")).unwrap().id.unwrap();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(id.starts_with("call_") && id.len() == 29, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{id}");
        }
    }

    #[test]
    fn calls_without_arguments_get_an_empty_object() {
        let mut turn = Turn::default();
        turn.tool_call(delta(0, Some("a"), Some("now"), "")).unwrap();
        turn.tool_call(delta(1, Some("b"), Some("f"), "{\"x\":1}")).unwrap();
        turn.tool_call(delta(2, Some("c"), Some("g"), "")).unwrap();
        let (owed, _) = turn.finish(FinishReason::Stop);
        assert_eq!(owed, [*delta(0, None, None, "{}"), *delta(2, None, None, "{}")]);
    }

    #[test]
    fn the_finish_reason_follows_the_calls() {
        let mut with_call = Turn::default();
        with_call.tool_call(delta(0, Some("a"), Some("f"), "{}")).unwrap();
        assert_eq!(with_call.finish(FinishReason::Stop).1, FinishReason::ToolCalls);
        assert_eq!(with_call.finish(FinishReason::ToolCalls).1, FinishReason::ToolCalls);
        // A cut stays a cut: the arguments may be incomplete.
        assert_eq!(with_call.finish(FinishReason::Length).1, FinishReason::Length);
        assert_eq!(with_call.finish(FinishReason::ContentFilter).1, FinishReason::ContentFilter);
        let without = Turn::default();
        assert_eq!(without.finish(FinishReason::ToolCalls).1, FinishReason::Stop);
        assert_eq!(without.finish(FinishReason::Stop).1, FinishReason::Stop);
    }

    #[test]
    fn broken_numbering_and_nameless_calls_are_protocol_errors() {
        let mut turn = Turn::default();
        let err = turn.tool_call(delta(1, Some("a"), Some("f"), "")).unwrap_err();
        assert!(err.to_string().contains("tool call 1 began before call 0"), "{err}");
        let err = turn.tool_call(delta(0, Some("a"), None, "{}")).unwrap_err();
        assert!(err.to_string().contains("without the tool's name"), "{err}");
    }

    #[test]
    fn the_number_of_calls_is_bounded() {
        let mut turn = Turn::default();
        for index in 0..MAX_TOOL_CALLS as u32 {
            turn.tool_call(delta(index, None, Some("f"), "{}")).unwrap();
        }
        let err = turn.tool_call(delta(MAX_TOOL_CALLS as u32, None, Some("f"), "{}")).unwrap_err();
        assert!(matches!(err, ProviderError::Protocol(_)), "{err}");
    }
}
