//! The stream decoder on tool calls, thinking and refusals, as each server streams them: bytes in,
//! events out, no server needed.

use copilot_http::ChatStreamDecoder;
use copilot_openai::{MAX_TOOL_CALLS, StreamDecoder};
use copilot_provider::{ChatEvent, Completion, FinishReason, ProviderError, ThinkingDelta, ToolCallDelta};
use serde_json::{Value, json};

fn event(delta: Value) -> String {
    let chunk = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":null}]});
    format!("data: {chunk}\n\n")
}

fn finish(reason: &str) -> String {
    let chunk = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":reason}]});
    format!("data: {chunk}\n\ndata: [DONE]\n\n")
}

fn decode(body: &str, thoughts: bool) -> Vec<Result<ChatEvent, ProviderError>> {
    let mut decoder = StreamDecoder::new("http://test".into(), None).with_thoughts(thoughts);
    let mut events = Vec::new();
    // A byte at a time: no event may depend on where reads end.
    for byte in body.as_bytes() {
        decoder.push(std::slice::from_ref(byte));
        events.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.end();
    events.extend(std::iter::from_fn(|| decoder.next_event()));
    events
}

/// The calls the events make, put together by index as a client does: (id, name, arguments).
fn calls(events: &[Result<ChatEvent, ProviderError>]) -> Vec<(Option<String>, String, String)> {
    let mut calls: Vec<(Option<String>, String, String)> = Vec::new();
    for event in events {
        if let Ok(ChatEvent::ToolCall(delta)) = event {
            let index = delta.index as usize;
            if index == calls.len() {
                calls.push((
                    delta.id.clone(),
                    delta.name.clone().expect("a first piece names its tool"),
                    String::new(),
                ));
            } else {
                assert!(delta.id.is_none() && delta.name.is_none(), "only the first piece names the call: {delta:?}");
            }
            calls[index].2.push_str(&delta.arguments);
        }
    }
    calls
}

fn done(events: &[Result<ChatEvent, ProviderError>]) -> &Completion {
    match events.last() {
        Some(Ok(ChatEvent::Done(completion))) => completion,
        other => panic!("not done: {other:?}"),
    }
}

const ARGUMENTS: &str = r#"{"id":9007199254740993,"x":1.0,"s":"é\"\u00e9"}"#;

#[test]
fn arguments_survive_byte_exact_wherever_they_are_cut() {
    for at in 0..=ARGUMENTS.len() {
        let (head, tail) = ARGUMENTS.as_bytes().split_at(at);
        // A JSON string carries whole characters: cuts inside one are no cuts a server makes.
        let Ok(head) = std::str::from_utf8(head) else { continue };
        let tail = std::str::from_utf8(tail).unwrap();
        let body = [
            event(json!({"role":"assistant","content":null})),
            event(json!({"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"lookup","arguments":""}}]})),
            event(json!({"tool_calls":[{"index":0,"function":{"arguments":head}}]})),
            event(json!({"tool_calls":[{"index":0,"function":{"arguments":tail}}]})),
            finish("tool_calls"),
        ]
        .concat();
        let events = decode(&body, false);
        assert_eq!(calls(&events), [(Some("call_1".into()), "lookup".into(), ARGUMENTS.into())], "cut at {at}");
        assert_eq!(done(&events).finish_reason, FinishReason::ToolCalls);
        // The first piece is passed on as it came, with its (empty) arguments.
        assert_eq!(
            events[0],
            Ok(ChatEvent::tool_call(ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("lookup".into()),
                ..Default::default()
            }))
        );
    }
}

#[test]
fn parallel_calls_as_openai_and_vllm_stream_them() {
    // OpenAI and llama.cpp: one call after the other, text before them.
    let openai = [
        event(json!({"content":"Let me check."})),
        event(json!({"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}]})),
        event(json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]})),
        event(json!({"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]})),
        event(json!({"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"weather","arguments":""}}]})),
        event(json!({"tool_calls":[{"index":1,"function":{"arguments":"{\"city\":\"Oslo\"}"}}]})),
        finish("tool_calls"),
    ]
    .concat();
    // vLLM: two indexes in one chunk, no `arguments` on first pieces, pieces interleaved.
    let vllm = [
        event(
            json!({"tool_calls":[{"index":0,"id":"chatcmpl-tool-a","type":"function","function":{"name":"weather"}}]}),
        ),
        event(json!({"tool_calls":[
            {"index":0,"function":{"arguments":"{\"city\":"}},
            {"index":1,"id":"chatcmpl-tool-b","type":"function","function":{"name":"weather"}}]})),
        event(json!({"tool_calls":[{"index":1,"function":{"arguments":"{\"city\":\"Oslo\"}"}}]})),
        event(json!({"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]})),
        finish("tool_calls"),
    ]
    .concat();
    for (body, ids) in [(openai, ["call_a", "call_b"]), (vllm, ["chatcmpl-tool-a", "chatcmpl-tool-b"])] {
        let events = decode(&body, false);
        assert_eq!(
            calls(&events),
            [
                (Some(ids[0].into()), "weather".into(), r#"{"city":"Paris"}"#.into()),
                (Some(ids[1].into()), "weather".into(), r#"{"city":"Oslo"}"#.into()),
            ]
        );
        assert_eq!(done(&events).finish_reason, FinishReason::ToolCalls);
    }
}

#[test]
fn calls_numbered_oddly_are_renumbered_in_the_order_they_begin() {
    // Servers that number every call 0, or number from 1, or send no index at all.
    let all_zero = [
        event(json!({"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{\"n\":1}"}}]})),
        event(json!({"tool_calls":[{"index":0,"id":"b","function":{"name":"g","arguments":"{\"n\":"}}]})),
        event(json!({"tool_calls":[{"index":0,"function":{"arguments":"2}"}}]})),
        finish("tool_calls"),
    ]
    .concat();
    let from_one = [
        event(json!({"tool_calls":[{"index":1,"id":"a","function":{"name":"f","arguments":"{\"n\":1}"}}]})),
        event(json!({"tool_calls":[{"index":2,"id":"b","function":{"name":"g","arguments":"{\"n\":2}"}}]})),
        finish("tool_calls"),
    ]
    .concat();
    let no_index = [
        event(json!({"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"n\":1}"}}]})),
        event(json!({"tool_calls":[{"function":{"name":"g","arguments":"{\"n\":"}}]})),
        event(json!({"tool_calls":[{"function":{"arguments":"2}"}}]})),
        finish("stop"),
    ]
    .concat();
    for (name, body) in [("all zero", all_zero), ("from one", from_one), ("no index", no_index)] {
        let events = decode(&body, false);
        let found: Vec<(String, String)> = calls(&events).into_iter().map(|(_, n, a)| (n, a)).collect();
        assert_eq!(
            found,
            [("f".to_string(), r#"{"n":1}"#.to_string()), ("g".to_string(), r#"{"n":2}"#.to_string())],
            "{name}"
        );
    }
}

#[test]
fn a_call_without_arguments_is_passed_on_without_any() {
    let body = [
        event(json!({"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"now","arguments":""}}]})),
        finish("tool_calls"),
    ]
    .concat();
    let events = decode(&body, false);
    // The server core owes the client `{}` for it; the adapter invents nothing.
    assert_eq!(calls(&events), [(Some("call_1".into()), "now".into(), String::new())]);
    assert_eq!(events.len(), 2);
}

#[test]
fn an_error_in_the_middle_of_a_call_fails_the_stream() {
    let body = [
        event(json!({"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]})),
        "data: {\"error\":{\"message\":\"upstream crashed\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    let events = decode(&body, false);
    assert!(matches!(&events[0], Ok(ChatEvent::ToolCall(_))));
    assert!(matches!(&events[1], Err(ProviderError::MidStream(m)) if m.contains("upstream crashed")), "{events:?}");
    assert_eq!(events.len(), 2);
    // Cut off inside the call, without a finish_reason: interrupted, never a finished call.
    let cut = event(json!({"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{"}}]}));
    let events = decode(&cut, false);
    assert!(matches!(events.last(), Some(Err(ProviderError::Interrupted(_)))), "{events:?}");
}

#[test]
fn broken_calls_are_protocol_errors() {
    let nameless = event(json!({"tool_calls":[{"index":0,"id":"c","function":{"arguments":"{}"}}]}));
    let events = decode(&nameless, false);
    assert!(matches!(events.last(), Some(Err(ProviderError::Protocol(m))) if m.contains("without the tool's name")));

    let many: String = (0..=MAX_TOOL_CALLS)
        .map(|i| {
            event(json!({"tool_calls":[{"index":i,"id":format!("c{i}"),"function":{"name":"f","arguments":"{}"}}]}))
        })
        .collect();
    let mut decoder = StreamDecoder::new("http://test".into(), None);
    decoder.push(many.as_bytes());
    decoder.end();
    let events: Vec<_> = std::iter::from_fn(|| decoder.next_event()).collect();
    assert_eq!(events.len(), MAX_TOOL_CALLS + 1);
    assert!(matches!(events.last(), Some(Err(ProviderError::Protocol(m))) if m.contains("more than 256 tool calls")));
}

#[test]
fn thinking_streams_before_text_only_when_asked_for() {
    let body = [
        event(json!({"role":"assistant","content":null,"reasoning_content":"Let me "})),
        event(json!({"reasoning":"think."})),
        event(json!({"content":"Answer."})),
        finish("stop"),
    ]
    .concat();
    let events = decode(&body, true);
    assert_eq!(
        events[..3],
        [
            Ok(ChatEvent::Thinking(ThinkingDelta::Text("Let me ".into()))),
            Ok(ChatEvent::Thinking(ThinkingDelta::Text("think.".into()))),
            Ok(ChatEvent::Delta("Answer.".into())),
        ]
    );
    let events = decode(&body, false);
    assert_eq!(events[0], Ok(ChatEvent::Delta("Answer.".into())));
    assert_eq!(events.len(), 2);
}

#[test]
fn a_refusal_is_text_that_ends_as_withheld() {
    let body =
        [event(json!({"refusal":"I can't "})), event(json!({"refusal":"help with that."})), finish("stop")].concat();
    let events = decode(&body, false);
    assert_eq!(events[0], Ok(ChatEvent::Delta("I can't ".into())));
    assert_eq!(events[1], Ok(ChatEvent::Delta("help with that.".into())));
    assert_eq!(done(&events).finish_reason, FinishReason::ContentFilter);
}

#[test]
fn usage_reports_reasoning_and_cached_tokens() {
    let usage = json!({"id":"x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,
        "prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":30}}});
    let body = [
        event(json!({"content":"hi"})),
        finish("stop").replace("data: [DONE]\n\n", ""),
        format!("data: {usage}\n\ndata: [DONE]\n\n"),
    ]
    .concat();
    let usage = done(&decode(&body, false)).usage;
    assert_eq!((usage.input_tokens, usage.output_tokens), (100, 50));
    assert_eq!((usage.reasoning_tokens, usage.cached_input_tokens), (Some(30), Some(64)));
}

#[test]
fn a_whole_reply_gives_its_thinking_text_and_calls_in_order() {
    let body = json!({"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,
        "message":{"role":"assistant","content":"Calling.","reasoning_content":"Plan.","tool_calls":[
            {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1.0}"}},
            {"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]},
        "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2}})
    .to_string();
    let mut decoder = StreamDecoder::new("http://test".into(), None).with_thoughts(true);
    decoder.push_whole(body.as_bytes());
    let events: Vec<_> = std::iter::from_fn(|| decoder.next_event()).collect();
    assert_eq!(events[0], Ok(ChatEvent::Thinking(ThinkingDelta::Text("Plan.".into()))));
    assert_eq!(events[1], Ok(ChatEvent::Delta("Calling.".into())));
    assert_eq!(
        calls(&events),
        [(Some("call_1".into()), "f".into(), r#"{"a":1.0}"#.into()), (Some("call_2".into()), "g".into(), "{}".into())]
    );
    assert_eq!(done(&events).finish_reason, FinishReason::ToolCalls);
    assert!(decoder.is_finished());
}
