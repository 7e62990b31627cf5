//! An answer's stream put back together: the parts of the assistant message it was, in the order
//! the model produced them. `Generate` returns this, telemetry records it, and a client that
//! streams does the same to keep the turn for its next request.

use crate::content::{Part, Thinking, ThinkingDelta, ToolCall, ToolCallDelta};

/// Room a text part starts with: an answer comes a few bytes at a time, and a part sized to its
/// first piece would be reallocated at each doubling on the way to a sentence.
const TEXT_START: usize = 256;

/// The parts of an answer so far. Text pieces join into one text part until something else
/// comes; thinking pieces join into one thinking part until its signature closes it; tool-call
/// pieces join by index (the first piece of an index carries its id and name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembledTurn {
    parts: Vec<Part>,
    /// Where each call's part is, by index.
    calls: Vec<usize>,
}

impl AssembledTurn {
    pub fn text(&mut self, text: &str) {
        match self.parts.last_mut() {
            Some(Part::Text(last)) => last.push_str(text),
            _ => {
                let mut part = String::with_capacity(text.len().max(TEXT_START));
                part.push_str(text);
                self.parts.push(Part::Text(part));
            }
        }
    }

    pub fn tool_call(&mut self, delta: &ToolCallDelta) {
        let index = delta.index as usize;
        if let Some(Part::ToolCall(call)) = self.calls.get(index).and_then(|&at| self.parts.get_mut(at)) {
            call.arguments.push_str(&delta.arguments);
            if !delta.signature.is_empty() {
                call.signature.clone_from(&delta.signature);
            }
            return;
        }
        self.calls.resize(index, usize::MAX);
        self.calls.push(self.parts.len());
        self.parts.push(Part::ToolCall(ToolCall {
            id: delta.id.clone().unwrap_or_default(),
            name: delta.name.clone().unwrap_or_default(),
            arguments: delta.arguments.clone(),
            signature: delta.signature.clone(),
        }));
    }

    pub fn thinking(&mut self, delta: &ThinkingDelta) {
        let open = match self.parts.last_mut() {
            Some(Part::Thinking(last)) if last.signature.is_empty() && !last.redacted => Some(last),
            _ => None,
        };
        match (delta, open) {
            (ThinkingDelta::Text(text), Some(open)) => open.text.push_str(text),
            (ThinkingDelta::Text(text), None) => {
                self.parts.push(Part::Thinking(Thinking { text: text.clone(), ..Default::default() }))
            }
            (ThinkingDelta::Signature(signature), Some(open)) => open.signature.clone_from(signature),
            (ThinkingDelta::Signature(signature), None) => {
                self.parts.push(Part::Thinking(Thinking { signature: signature.clone(), ..Default::default() }))
            }
            (ThinkingDelta::Redacted(data), _) => self.parts.push(Part::Thinking(Thinking {
                text: String::new(),
                signature: data.clone(),
                redacted: true,
            })),
        }
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<Part> {
        self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_into_parts_in_order() {
        let mut turn = AssembledTurn::default();
        turn.thinking(&ThinkingDelta::Text("Let me ".into()));
        turn.thinking(&ThinkingDelta::Text("think.".into()));
        turn.thinking(&ThinkingDelta::Signature(b"sig1".to_vec()));
        turn.text("Calling");
        turn.text(" tools.");
        let first = |id: &str, name: &str, args: &str| ToolCallDelta {
            index: if id == "a" { 0 } else { 1 },
            id: Some(id.into()),
            name: Some(name.into()),
            arguments: args.into(),
            signature: Vec::new(),
        };
        turn.tool_call(&first("a", "f", "{\"x\":"));
        turn.tool_call(&first("b", "g", ""));
        turn.tool_call(&ToolCallDelta { index: 0, arguments: "1}".into(), ..Default::default() });
        turn.tool_call(&ToolCallDelta {
            index: 1,
            arguments: "{}".into(),
            signature: b"s".to_vec(),
            ..Default::default()
        });
        turn.thinking(&ThinkingDelta::Redacted(b"opaque".to_vec()));
        assert_eq!(
            turn.into_parts(),
            [
                Part::Thinking(Thinking { text: "Let me think.".into(), signature: b"sig1".to_vec(), redacted: false }),
                Part::Text("Calling tools.".into()),
                Part::ToolCall(ToolCall {
                    id: "a".into(),
                    name: "f".into(),
                    arguments: "{\"x\":1}".into(),
                    signature: vec![]
                }),
                Part::ToolCall(ToolCall {
                    id: "b".into(),
                    name: "g".into(),
                    arguments: "{}".into(),
                    signature: b"s".to_vec()
                }),
                Part::Thinking(Thinking { text: String::new(), signature: b"opaque".to_vec(), redacted: true }),
            ]
        );
    }

    #[test]
    fn a_signature_alone_is_a_block_and_text_after_a_signed_block_starts_another() {
        let mut turn = AssembledTurn::default();
        turn.thinking(&ThinkingDelta::Signature(b"only".to_vec()));
        turn.thinking(&ThinkingDelta::Text("more".into()));
        assert_eq!(
            turn.parts(),
            [
                Part::Thinking(Thinking { signature: b"only".to_vec(), ..Default::default() }),
                Part::Thinking(Thinking { text: "more".into(), ..Default::default() }),
            ]
        );
    }
}
