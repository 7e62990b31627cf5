//! Tools, structured output, reasoning and images, end to end against `FakeAnthropic`, which
//! writes them in the Messages API's own SSE events and checks requests the way the API does
//! (tool results first in the message after the calls, ids in `^[a-zA-Z0-9_-]+$`, thinking
//! budgets, signatures on earlier thinking).

use std::time::Duration;

use copilot_anthropic::{AnthropicConfig, AnthropicProvider};
use copilot_fakes::{Behaviour, FakeAnthropic, FakeModel, FakeToolCall, Piece, Reply};
use copilot_provider::{
    AssembledTurn, ChatEvent, ChatRequest, Completion, Effort, Feature, FinishReason, Image, ImageSource, Message,
    Part, Provider, ProviderError, Reasoning, ReasoningAmount, ResponseFormat, Role, Secret, ThinkingDelta, Tool,
    ToolCall, ToolCallDelta, ToolChoice,
};
use futures::StreamExt;
use serde_json::json;

const KEY: &str = "sk-ant-api03-test-key-0123456789abcdef";
const MODEL: &str = "claude-test-4-5";
/// Arguments a lossy translation would change: a 64-bit integer and `1.0`.
const ARGS: &str = r#"{"id":9007199254740993,"x":1.0}"#;
const SCHEMA: &str = r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;

async fn fake_with(reply: Vec<Piece>) -> FakeAnthropic {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    fake.add_model(FakeModel::new(MODEL).with_reply(Reply::Turn(reply)));
    fake
}

fn provider(fake: &FakeAnthropic) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig {
        base_url: fake.base_url(),
        api_key: Some(Secret::new(KEY)),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .expect("valid config")
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "The weather in a city".into(),
        parameters: Some(SCHEMA.into()),
        strict: false,
    }
}

fn request(messages: Vec<Message>) -> ChatRequest {
    ChatRequest { model: MODEL.into(), messages, tools: vec![weather_tool()], ..Default::default() }
}

fn ask(text: &str) -> ChatRequest {
    request(vec![Message::text(Role::User, text)])
}

/// Every item of a stream: the events, and how it ended.
async fn run(
    provider: &AnthropicProvider,
    request: ChatRequest,
) -> (Vec<ChatEvent>, Result<Completion, ProviderError>) {
    let items: Vec<_> = provider.chat(request).await.expect("chat accepted").collect().await;
    let mut events = Vec::new();
    for item in items {
        match item {
            Ok(ChatEvent::Done(done)) => return (events, Ok(*done)),
            Ok(event) => events.push(event),
            Err(err) => return (events, Err(err)),
        }
    }
    panic!("the stream ended with neither Done nor an error: {events:?}")
}

/// The events put together as the server does for `Generate`.
fn assemble(events: &[ChatEvent]) -> Vec<Part> {
    let mut turn = AssembledTurn::default();
    for event in events {
        match event {
            ChatEvent::Delta(text) => turn.text(text),
            ChatEvent::ToolCall(delta) => turn.tool_call(delta),
            ChatEvent::Thinking(delta) => turn.thinking(delta),
            ChatEvent::Done(_) => {}
        }
    }
    turn.into_parts()
}

fn first_piece(index: u32, id: &str, name: &str) -> ChatEvent {
    ChatEvent::tool_call(ToolCallDelta {
        index,
        id: Some(id.into()),
        name: Some(name.into()),
        arguments: String::new(),
        signature: vec![],
    })
}

fn fragment(index: u32, arguments: &str) -> ChatEvent {
    ChatEvent::tool_call(ToolCallDelta { index, arguments: arguments.into(), ..Default::default() })
}

#[tokio::test]
async fn a_single_call_streams_its_id_name_and_argument_fragments() {
    let call = FakeToolCall::new("toolu_01A", "get_weather", r#"{"city":"Paris"}"#).split_at(&[3, 10]);
    let fake = fake_with(vec![Piece::Text("Let me check.".into()), Piece::ToolCalls(vec![call])]).await;
    let (events, done) = run(&provider(&fake), ask("Weather in Paris?")).await;
    assert_eq!(
        events,
        [
            ChatEvent::Delta("Let me check.".into()),
            first_piece(0, "toolu_01A", "get_weather"),
            fragment(0, r#"{"c"#),
            fragment(0, r#"ity":"P"#),
            fragment(0, r#"aris"}"#),
        ]
    );
    // Anthropic's `tool_use` stop reason, reported as it is (the server settles it).
    assert_eq!(done.unwrap().finish_reason, FinishReason::ToolCalls);
    let sent = &fake.chat_requests()[0];
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "The weather in a city",
                "input_schema": serde_json::from_str::<serde_json::Value>(SCHEMA).unwrap()}])
    );
    assert!(sent.get("tool_choice").is_none());
}

#[tokio::test]
async fn parallel_calls_are_numbered_from_zero_whatever_blocks_come_before() {
    let calls = vec![
        FakeToolCall::new("toolu_01A", "get_weather", r#"{"city":"Paris"}"#).split_at(&[5]),
        FakeToolCall::new("toolu_01B", "get_weather", r#"{"city":"Rome"}"#),
    ];
    let reply = vec![
        Piece::Thinking("Two cities.".into()),
        Piece::ThinkingSignature(b"EqQBsig".to_vec()),
        Piece::Text("Checking both.".into()),
        Piece::ToolCalls(calls),
    ];
    let fake = fake_with(reply).await;
    let mut req = ask("Paris and Rome?");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::BudgetTokens(2048), include_thoughts: true });
    let (events, done) = run(&provider(&fake), req).await;
    let calls: Vec<&ChatEvent> = events.iter().filter(|e| matches!(e, ChatEvent::ToolCall(_))).collect();
    // Anthropic's block indexes are 2 and 3 here; the calls are 0 and 1.
    assert_eq!(
        calls,
        [
            &first_piece(0, "toolu_01A", "get_weather"),
            &fragment(0, r#"{"cit"#),
            &fragment(0, r#"y":"Paris"}"#),
            &first_piece(1, "toolu_01B", "get_weather"),
            &fragment(1, r#"{"city":"Rome"}"#),
        ]
    );
    assert_eq!(done.unwrap().finish_reason, FinishReason::ToolCalls);
}

#[tokio::test]
async fn arguments_reassemble_byte_exact_however_they_are_split() {
    let fake = fake_with(vec![]).await;
    let provider = provider(&fake);
    for at in 0..=ARGS.len() {
        let call = FakeToolCall::new("toolu_01A", "get_weather", ARGS).split_at(&[at, at + 3]);
        fake.add_model(FakeModel::new(MODEL).with_reply(Reply::Turn(vec![Piece::ToolCalls(vec![call])])));
        let (events, done) = run(&provider, ask("go")).await;
        done.expect("completed");
        let Some(Part::ToolCall(call)) = assemble(&events).pop() else { panic!("no call at {at}: {events:?}") };
        assert_eq!(call.arguments, ARGS, "split at {at}");
    }
}

#[tokio::test]
async fn a_call_without_arguments_sends_no_argument_text() {
    let fake = fake_with(vec![Piece::ToolCalls(vec![FakeToolCall::new("toolu_01N", "now", "")])]).await;
    let mut req = ask("What time is it?");
    req.tools.push(Tool { name: "now".into(), ..Default::default() });
    let (events, done) = run(&provider(&fake), req).await;
    // Anthropic sends `""` alone; the server turns a call without arguments into `{}`.
    assert_eq!(events, [first_piece(0, "toolu_01N", "now")]);
    assert_eq!(done.unwrap().finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        fake.chat_requests()[0]["tools"][1],
        json!({"name": "now", "input_schema": {"type": "object", "properties": {}}})
    );
}

#[tokio::test]
async fn tool_results_round_trip_over_two_turns() {
    let calls = vec![
        FakeToolCall::new("toolu_01A", "get_weather", r#"{"city":"Paris"}"#),
        FakeToolCall::new("toolu_01B", "get_weather", ARGS).split_at(&[7]),
    ];
    let fake = fake_with(vec![Piece::Text("Checking.".into()), Piece::ToolCalls(calls)]).await;
    let provider = provider(&fake);
    let (events, _) = run(&provider, ask("Paris and Rome?")).await;
    let answer = assemble(&events);

    fake.add_model(FakeModel::new(MODEL).with_reply(Reply::Turn(vec![Piece::Text("Sunny, then rain.".into())])));
    let second = request(vec![
        Message::text(Role::User, "Paris and Rome?"),
        Message { role: Role::Assistant, parts: answer, tool_call_id: None },
        // Results in another order than the calls, as a client running them in parallel may.
        Message::tool_result("toolu_01B", "rain"),
        Message::tool_result("toolu_01A", "sun"),
        Message::text(Role::User, "Summarise."),
    ]);
    let (events, done) = run(&provider, second).await;
    assert_eq!(events, [ChatEvent::Delta("Sunny, then rain.".into())]);
    assert_eq!(done.unwrap().finish_reason, FinishReason::Stop);

    let sent = &fake.chat_requests()[1]["messages"];
    assert_eq!(
        sent[1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"id": 9007199254740993u64, "x": 1.0}},
        ]})
    );
    assert_eq!(
        sent[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "sun"},
            {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "rain"},
            {"type": "text", "text": "Summarise."},
        ]})
    );
}

#[tokio::test]
async fn ids_from_other_providers_are_rewritten_so_anthropic_accepts_them() {
    let fake = fake_with(vec![Piece::Text("Done.".into())]).await;
    let call = ToolCall { id: "functions.get_weather:0".into(), name: "get_weather".into(), ..Default::default() };
    let req = request(vec![
        Message::text(Role::User, "Paris?"),
        Message { role: Role::Assistant, parts: vec![Part::ToolCall(call)], tool_call_id: None },
        Message::tool_result("functions.get_weather:0", "sun"),
    ]);
    let (_, done) = run(&provider(&fake), req).await;
    done.expect("the fake accepted the rewritten ids");
    let sent = &fake.chat_requests()[0]["messages"];
    let id = sent[1]["content"][0]["id"].as_str().unwrap();
    assert_eq!(sent[2]["content"][0]["tool_use_id"], id);
    assert!(id.starts_with("functions_get_weather_0_"), "{id}");
}

#[tokio::test]
async fn the_fake_refuses_results_that_do_not_answer_the_calls() {
    // What the API says when a result is missing: the adapter does not hide the upstream's word.
    let fake = fake_with(vec![Piece::Text("x".into())]).await;
    let call =
        ToolCall { id: "toolu_01A".into(), name: "get_weather".into(), arguments: "{}".into(), ..Default::default() };
    let req = request(vec![
        Message::text(Role::User, "Paris?"),
        Message { role: Role::Assistant, parts: vec![Part::ToolCall(call)], tool_call_id: None },
        Message::text(Role::User, "never mind"),
    ]);
    let err = provider(&fake).chat(req).await.err().expect("refused");
    let ProviderError::InvalidRequest(message) = &err else { panic!("expected InvalidRequest, got {err:?}") };
    assert!(message.contains("`tool_use` ids were found without `tool_result` blocks"), "{message}");
}

#[tokio::test]
async fn a_forced_tool_choice_is_sent_and_refused_with_thinking_on() {
    let fake = fake_with(vec![Piece::ToolCalls(vec![FakeToolCall::new("toolu_01A", "get_weather", "{}")])]).await;
    let provider = provider(&fake);
    let mut req = ask("Paris?");
    req.tool_choice = Some(ToolChoice::Named("get_weather".into()));
    let (_, done) = run(&provider, req.clone()).await;
    done.expect("completed");
    assert_eq!(fake.chat_requests()[0]["tool_choice"], json!({"type": "tool", "name": "get_weather"}));
    req.tool_choice = Some(ToolChoice::Required);
    run(&provider, req.clone()).await.1.expect("completed");
    assert_eq!(fake.chat_requests()[1]["tool_choice"], json!({"type": "any"}));

    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: true });
    let err = provider.chat(req).await.err().expect("refused");
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("while thinking is on")), "{err:?}");
    assert_eq!(fake.chat_requests().len(), 2, "a refused request is not sent");
}

#[tokio::test]
async fn json_schema_output_goes_in_output_config_as_written() {
    let fake = fake_with(vec![Piece::Text(r#"{"city":"Paris"}"#.into())]).await;
    let mut req = ask("Where is the Louvre?");
    req.tools.clear();
    let schema = r#"{"type":"object","properties":{"n":{"type":"number","default":1.0}},"additionalProperties":false}"#;
    req.response_format = ResponseFormat::JsonSchema { name: "place".into(), schema: schema.into(), strict: true };
    let (events, _) = run(&provider(&fake), req).await;
    assert_eq!(events, [ChatEvent::Delta(r#"{"city":"Paris"}"#.into())]);
    let sent = &fake.chat_requests()[0];
    assert_eq!(sent["output_config"]["format"]["type"], "json_schema");
    assert_eq!(sent["output_config"]["format"]["schema"], serde_json::from_str::<serde_json::Value>(schema).unwrap());
}

#[tokio::test]
async fn an_error_in_the_middle_of_a_tool_call_is_a_mid_stream_failure() {
    let call = FakeToolCall::new("toolu_01A", "get_weather", r#"{"city":"Paris"}"#).split_at(&[4]);
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    let reply = Reply::Turn(vec![Piece::ToolCalls(vec![call]), Piece::Text("never sent".into())]);
    let behaviour = Behaviour::ErrorAfter { tokens: 1, message: "boom".into() };
    fake.add_model(FakeModel::new(MODEL).with_reply(reply).with_behaviour(behaviour));
    let (events, done) = run(&provider(&fake), ask("Paris?")).await;
    assert_eq!(
        events,
        [first_piece(0, "toolu_01A", "get_weather"), fragment(0, r#"{"ci"#), fragment(0, r#"ty":"Paris"}"#)]
    );
    let Err(ProviderError::MidStream(message)) = done else { panic!("expected MidStream, got {done:?}") };
    assert!(message.contains("boom"), "{message}");
}

#[tokio::test]
async fn thinking_streams_before_text_and_its_signature_closes_it() {
    let reply = vec![
        Piece::Thinking("Let me ".into()),
        Piece::Thinking("think.".into()),
        Piece::ThinkingSignature(b"EqQBCkYIBRgCsig".to_vec()),
        Piece::Text("42.".into()),
    ];
    let fake = fake_with(reply).await;
    let mut req = ask("The answer?");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::Low), include_thoughts: true });
    req.options.max_tokens = Some(2000);
    let (events, done) = run(&provider(&fake), req).await;
    assert_eq!(
        events,
        [
            ChatEvent::Thinking(ThinkingDelta::Text("Let me ".into())),
            ChatEvent::Thinking(ThinkingDelta::Text("think.".into())),
            ChatEvent::Thinking(ThinkingDelta::Signature(b"EqQBCkYIBRgCsig".to_vec())),
            ChatEvent::Delta("42.".into()),
        ]
    );
    assert_eq!(done.unwrap().finish_reason, FinishReason::Stop);
    let sent = &fake.chat_requests()[0];
    assert_eq!(sent["thinking"], json!({"type": "enabled", "budget_tokens": 1024}));
    assert_eq!(sent["max_tokens"], 2000);
}

#[tokio::test]
async fn thoughts_not_asked_for_are_omitted_upstream_but_signed() {
    let reply =
        vec![Piece::Thinking("secret".into()), Piece::ThinkingSignature(b"sig".to_vec()), Piece::Text("Hi".into())];
    let fake = fake_with(reply).await;
    let mut req = ask("Hi");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: false });
    let (events, _) = run(&provider(&fake), req).await;
    assert_eq!(events, [ChatEvent::Thinking(ThinkingDelta::Signature(b"sig".to_vec())), ChatEvent::Delta("Hi".into())]);
    let sent = &fake.chat_requests()[0];
    assert_eq!(sent["thinking"], json!({"type": "enabled", "budget_tokens": 8192, "display": "omitted"}));
    assert_eq!(sent["max_tokens"], 8192 + 4096);
}

#[tokio::test]
async fn thinking_and_its_signature_round_trip_in_a_tool_loop() {
    let reply = vec![
        Piece::Thinking("Need the weather.".into()),
        Piece::ThinkingSignature(b"EqQBsig/+=".to_vec()),
        Piece::ToolCalls(vec![FakeToolCall::new("toolu_01A", "get_weather", r#"{"city":"Paris"}"#)]),
    ];
    let fake = fake_with(reply).await;
    let provider = provider(&fake);
    let mut first = ask("Paris?");
    first.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: true });
    let (events, _) = run(&provider, first.clone()).await;
    let answer = assemble(&events);

    fake.add_model(FakeModel::new(MODEL).with_reply(Reply::Turn(vec![Piece::Text("Sunny.".into())])));
    let mut second = first.clone();
    second.messages.push(Message { role: Role::Assistant, parts: answer.clone(), tool_call_id: None });
    second.messages.push(Message::tool_result("toolu_01A", "sun"));
    run(&provider, second).await.1.expect("the fake accepted the signed thinking");
    assert_eq!(
        fake.chat_requests()[1]["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "Need the weather.", "signature": "EqQBsig/+="})
    );

    // Without its signature, thinking is refused before anything is sent.
    let mut unsigned = first;
    let stripped: Vec<Part> = answer
        .into_iter()
        .map(|part| match part {
            Part::Thinking(mut thinking) => {
                thinking.signature.clear();
                Part::Thinking(thinking)
            }
            other => other,
        })
        .collect();
    unsigned.messages.push(Message { role: Role::Assistant, parts: stripped, tool_call_id: None });
    unsigned.messages.push(Message::tool_result("toolu_01A", "sun"));
    let err = provider.chat(unsigned).await.err().expect("refused");
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("without a signature")), "{err:?}");
    assert_eq!(fake.chat_requests().len(), 2);
}

#[tokio::test]
async fn a_thinking_budget_below_the_minimum_is_refused_before_sending() {
    let fake = fake_with(vec![]).await;
    let mut req = ask("x");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::BudgetTokens(500), include_thoughts: true });
    let err = provider(&fake).chat(req).await.err().expect("refused");
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("at least 1024")), "{err:?}");
    assert!(fake.chat_requests().is_empty());
}

#[tokio::test]
async fn images_reach_the_upstream_as_base64_and_url_sources() {
    let fake = fake_with(vec![Piece::Text("A cat.".into())]).await;
    let png = Image { source: ImageSource::Data(b"\x89PNG\r\n\x1a\n".to_vec()), mime_type: "image/png".into() };
    let url = Image { source: ImageSource::Url("https://example.com/cat.jpg".into()), mime_type: String::new() };
    let req = request(vec![Message {
        role: Role::User,
        parts: vec![Part::Text("What are these?".into()), Part::Image(png), Part::Image(url)],
        tool_call_id: None,
    }]);
    let (events, _) = run(&provider(&fake), req).await;
    assert_eq!(events, [ChatEvent::Delta("A cat.".into())]);
    assert_eq!(
        fake.chat_requests()[0]["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What are these?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
}

#[tokio::test]
async fn features_and_model_capabilities_say_what_is_supported() {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    let mut model = FakeModel::new("claude-vision-1");
    model.capabilities = vec!["completion".into(), "vision".into(), "thinking".into(), "json_schema".into()];
    model.context_length = 200_000;
    fake.add_model(model);
    let provider = provider(&fake);
    let features = provider.features();
    for feature in [
        Feature::Tools,
        Feature::JsonSchema,
        Feature::Thinking,
        Feature::ThinkingOff,
        Feature::Images,
        Feature::ImageUrls,
    ] {
        assert!(features.contains(feature), "{feature:?}");
    }
    assert!(!features.contains(Feature::JsonObject));
    let info = provider.describe_model("claude-vision-1").await.unwrap();
    assert_eq!(info.capabilities, ["completion", "tools", "vision", "image_urls", "json_schema", "thinking"]);
    assert_eq!(info.context_length, Some(200_000));
}

#[tokio::test]
async fn a_model_that_takes_adaptive_thinking_only_is_asked_again_and_remembered() {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    let mut model = FakeModel::new(MODEL).with_reply(Reply::Turn(vec![
        Piece::Thinking("Hm.".into()),
        Piece::ThinkingSignature(b"sig".to_vec()),
        Piece::Text("Yes.".into()),
    ]));
    model.capabilities.push(copilot_fakes::anthropic::ADAPTIVE_THINKING.into());
    fake.add_model(model);
    let provider = provider(&fake);
    let mut req = ask("Sure?");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::High), include_thoughts: true });
    for _ in 0..2 {
        let (events, done) = run(&provider, req.clone()).await;
        assert_eq!(done.unwrap().finish_reason, FinishReason::Stop);
        assert_eq!(events.last(), Some(&ChatEvent::Delta("Yes.".into())));
    }
    let sent = fake.chat_requests();
    let thinking: Vec<&serde_json::Value> = sent.iter().map(|body| &body["thinking"]).collect();
    // Refused once with a budget, then adaptive, and adaptive straight away the next time.
    assert_eq!(
        thinking,
        [
            &json!({"type": "enabled", "budget_tokens": 24576}),
            &json!({"type": "adaptive"}),
            &json!({"type": "adaptive"})
        ]
    );
    assert_eq!(sent[2]["output_config"], json!({"effort": "high"}));

    // Off is said outright: the newest models think unless told not to.
    req.reasoning = Some(Reasoning::Off);
    run(&provider, req).await.1.expect("completed");
    assert_eq!(fake.chat_requests()[3]["thinking"], json!({"type": "disabled"}));
}

#[tokio::test]
async fn a_model_that_cannot_think_is_unsupported_not_a_bad_request() {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    let message = format!("'{MODEL}' does not support thinking");
    fake.add_model(FakeModel::new(MODEL).with_behaviour(Behaviour::HttpError { status: 400, message }));
    let mut req = ask("x");
    req.reasoning = Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: true });
    let err = provider(&fake).chat(req).await.err().expect("refused");
    let ProviderError::Unsupported { feature: Feature::Thinking, message } = &err else {
        panic!("expected Unsupported thinking, got {err:?}")
    };
    assert!(message.contains("does not support thinking"), "{message}");
}
