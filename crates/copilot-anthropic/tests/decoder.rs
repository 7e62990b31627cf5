//! The SSE stream decoder under the fuzz target's checks (`fuzz/`, `scripts/fuzz`): its seed
//! corpus, cut into reads in several ways, and a line that never ends.

use copilot_http::stream_check;

#[test]
fn the_seed_corpus_decodes_the_same_however_it_is_cut() {
    stream_check::replay_seeds("anthropic_sse", |limit| {
        copilot_anthropic::StreamDecoder::with_line_limit("http://seed".into(), None, limit)
    });
}

#[test]
fn a_line_that_never_ends_fails_at_the_limit() {
    stream_check::assert_line_limit(b"data: ", copilot_anthropic::StreamDecoder::new("http://seed".into(), None));
}

/// The hand-written seed of a tool loop's answer tells its story through the SSE framing: thinking
/// with a signature in two pieces, redacted thinking, text, two calls numbered apart from the
/// other blocks, the tool_use stop reason and the cached input tokens.
#[test]
fn the_tool_use_seed_decodes_to_calls_thinking_and_usage() {
    use copilot_provider::{ChatEvent, FinishReason, ThinkingDelta, ToolCallDelta};

    // Read from this crate's checkout (the corpus reader's path is wherever copilot-http was built).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/anthropic_sse/ref-tool-use-and-thinking.sse");
    let input = &std::fs::read(path).expect("the seed");
    let events = stream_check::check(input, copilot_http::MAX_LINE_BYTES, || {
        copilot_anthropic::StreamDecoder::new("http://seed".into(), None)
    });
    let piece = |index, id: Option<&str>, name: Option<&str>, arguments: &str| {
        Ok(ChatEvent::tool_call(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
            signature: vec![],
        }))
    };
    let (last, events) = events.split_last().unwrap();
    assert_eq!(
        events,
        [
            Ok(ChatEvent::Thinking(ThinkingDelta::Text("Two calls.".into()))),
            Ok(ChatEvent::Thinking(ThinkingDelta::Signature(b"EqQBCkYIBRgC+/==".to_vec()))),
            Ok(ChatEvent::Thinking(ThinkingDelta::Redacted(b"EmwKAhgB".to_vec()))),
            Ok(ChatEvent::Delta("Checking.".into())),
            piece(0, Some("toolu_01A"), Some("get_weather"), ""),
            piece(0, None, None, r#"{"id":90071992"#),
            piece(0, None, None, r#"54740993,"x":1.0}"#),
            piece(1, Some("toolu_01B"), Some("now"), ""),
        ]
    );
    let Ok(ChatEvent::Done(done)) = last else { panic!("{last:?}") };
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);
    assert_eq!((done.usage.input_tokens, done.usage.cached_input_tokens, done.usage.output_tokens), (14, Some(4), 42));
}
