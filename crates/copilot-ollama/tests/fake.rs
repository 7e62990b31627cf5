//! Tools, structured output, reasoning and images through `OllamaProvider`, against the fake
//! Ollama server speaking Ollama's NDJSON (whole tool calls, `thinking` beside `content`) and
//! checking requests as Ollama does (capabilities, `tool_name` on results, arguments as objects).

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeModel, FakeOllama, FakeToolCall, Piece, Reply};
use copilot_ollama::{OllamaConfig, OllamaProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, Effort, Feature, FinishReason, Image, ImageSource, Message, Part, Provider, ProviderError,
    Reasoning, ReasoningAmount, ResponseFormat, Role, Thinking, ThinkingDelta, Tool, ToolCall, ToolCallDelta,
    ToolChoice,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// A 64-bit integer above 2^53, `1.0`, escapes and a non-ASCII character.
const ARGS: &str = r#"{"city":"Zürich","id":9007199254740993,"scale":1.0,"note":"a \"b\"\n"}"#;
const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"},"id":{"type":"integer"}},"required":["city"]}"#;

/// A fake checking capabilities as Ollama does, with one model that can do everything but
/// `lacking`.
async fn fake(name: &str, pieces: Vec<Piece>, lacking: &[&str]) -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.set_capability_checks(true);
    // After tool results, it repeats the last one.
    let mut model = FakeModel::new(name).with_reply(Reply::Turn(pieces)).with_reply_after_tool_result(Reply::Echo);
    model.capabilities = ["completion", "tools", "thinking", "vision"]
        .into_iter()
        .filter(|c| !lacking.contains(c))
        .map(String::from)
        .collect();
    fake.add_model(model);
    fake
}

fn provider(fake: &FakeOllama) -> OllamaProvider {
    OllamaProvider::new(OllamaConfig {
        base_url: fake.base_url(),
        keep_alive: None,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            description: "The weather in a city.".into(),
            parameters: Some(WEATHER_SCHEMA.into()),
            strict: false,
        },
        Tool { name: "get_time".into(), description: "The time.".into(), parameters: None, strict: false },
    ]
}

fn request(model: &str, messages: Vec<Message>) -> ChatRequest {
    ChatRequest { model: model.into(), messages, tools: tools(), ..Default::default() }
}

async fn events(fake: &FakeOllama, request: ChatRequest) -> Vec<Result<ChatEvent, ProviderError>> {
    let stream = provider(fake).chat(request).await.expect("the fake accepted the request");
    tokio::time::timeout(Duration::from_secs(10), stream.collect()).await.expect("the stream ended")
}

fn call(index: u32, id: Option<&str>, name: &str, arguments: &str) -> Result<ChatEvent, ProviderError> {
    Ok(ChatEvent::tool_call(ToolCallDelta {
        index,
        id: id.map(String::from),
        name: Some(name.into()),
        arguments: arguments.into(),
        signature: vec![],
    }))
}

fn done(events: &[Result<ChatEvent, ProviderError>]) -> FinishReason {
    match events.last() {
        Some(Ok(ChatEvent::Done(completion))) => completion.finish_reason,
        other => panic!("the stream did not finish: {other:?}"),
    }
}

fn last_body(fake: &FakeOllama) -> Value {
    fake.chat_requests().pop().expect("the fake received the request")
}

#[tokio::test]
async fn a_single_call_comes_whole_with_its_id_and_arguments_as_written() {
    let pieces = vec![
        Piece::Text("Let me check.".into()),
        Piece::ToolCalls(vec![FakeToolCall::new("call_x1", "get_weather", ARGS)]),
    ];
    let fake = fake("qwen3", pieces, &[]).await;
    let events = events(&fake, request("qwen3", vec![Message::text(Role::User, "Weather in Zürich?")])).await;
    assert_eq!(
        events[..2],
        [Ok(ChatEvent::Delta("Let me check.".into())), call(0, Some("call_x1"), "get_weather", ARGS)]
    );
    // Ollama says `stop`; the server settles TOOL_CALLS from the calls.
    assert_eq!(done(&events), FinishReason::Stop);
    assert_eq!(events.len(), 3);

    let body = last_body(&fake);
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
             "parameters": serde_json::from_str::<Value>(WEATHER_SCHEMA).unwrap()}},
            {"type": "function", "function": {"name": "get_time", "description": "The time.",
             "parameters": {"type": "object", "properties": {}}}},
        ])
    );
}

#[tokio::test]
async fn parallel_calls_get_running_indexes_and_calls_without_ids_get_none() {
    let second = r#"{"tz":"Europe/Zurich","precise":true}"#;
    let pieces = vec![
        Piece::ToolCalls(vec![
            FakeToolCall::new("c1", "get_weather", ARGS),
            FakeToolCall::new("c2", "get_time", second).without_id(),
        ]),
        Piece::ToolCalls(vec![FakeToolCall::new("c3", "get_weather", r#"{"city":"Bern"}"#)]),
    ];
    let fake = fake("qwen3", pieces, &[]).await;
    let events = events(&fake, request("qwen3", vec![Message::text(Role::User, "q")])).await;
    assert_eq!(
        events[..3],
        [
            call(0, Some("c1"), "get_weather", ARGS),
            // Servers before 0.12.10 send no id: the server makes one up, the adapter does not.
            call(1, None, "get_time", second),
            call(2, Some("c3"), "get_weather", r#"{"city":"Bern"}"#),
        ]
    );
    assert_eq!(done(&events), FinishReason::Stop);
}

#[tokio::test]
async fn a_call_without_arguments_comes_as_an_empty_object() {
    let fake = fake("qwen3", vec![Piece::ToolCalls(vec![FakeToolCall::new("c1", "get_time", "")])], &[]).await;
    let events = events(&fake, request("qwen3", vec![Message::text(Role::User, "time?")])).await;
    assert_eq!(events[0], call(0, Some("c1"), "get_time", "{}"));
}

#[tokio::test]
async fn an_error_after_a_call_ends_the_stream_with_it() {
    let fake = FakeOllama::start().await;
    fake.add_model(
        FakeModel::new("broken")
            .with_reply(Reply::Turn(vec![
                Piece::Text("Checking".into()),
                Piece::ToolCalls(vec![FakeToolCall::new("c1", "get_weather", ARGS)]),
                Piece::Text("never".into()),
            ]))
            .with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "backend exploded".into() }),
    );
    let events = events(&fake, request("broken", vec![Message::text(Role::User, "q")])).await;
    assert_eq!(
        events,
        [
            Ok(ChatEvent::Delta("Checking".into())),
            call(0, Some("c1"), "get_weather", ARGS),
            Err(ProviderError::MidStream("backend exploded".into())),
        ]
    );
}

/// The first turn's calls, then the results over a second turn: the history reaches Ollama with
/// the calls' arguments as objects (numbers as written) and each result naming its tool.
#[tokio::test]
async fn tool_results_round_trip_over_two_turns() {
    let fake = fake(
        "qwen3",
        vec![Piece::ToolCalls(vec![
            FakeToolCall::new("c1", "get_weather", ARGS),
            FakeToolCall::new("c2", "get_time", "{}").without_id(),
        ])],
        &[],
    )
    .await;
    let question = Message::text(Role::User, "Weather and time in Zürich?");
    let first = events(&fake, request("qwen3", vec![question.clone()])).await;
    // What a client keeps of the turn, with the id the server would have made up for the second.
    let calls: Vec<ToolCall> = first
        .iter()
        .filter_map(|event| match event {
            Ok(ChatEvent::ToolCall(delta)) => Some(ToolCall {
                id: delta.id.clone().unwrap_or_else(|| format!("call_made_up_{}", delta.index)),
                name: delta.name.clone().unwrap(),
                arguments: delta.arguments.clone(),
                signature: vec![],
            }),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2);

    let assistant = Message {
        role: Role::Assistant,
        parts: calls.iter().cloned().map(Part::ToolCall).collect(),
        tool_call_id: None,
    };
    let messages = vec![
        question,
        assistant,
        Message::tool_result(&calls[1].id, "09:41"),
        Message::tool_result(&calls[0].id, "18C"),
    ];
    let second = events(&fake, request("qwen3", messages)).await;
    let text: String =
        second.iter().filter_map(|e| if let Ok(ChatEvent::Delta(t)) = e { Some(t.as_str()) } else { None }).collect();
    assert_eq!(text, "You said: 18C", "the second turn answers the results");
    assert_eq!(done(&second), FinishReason::Stop);

    let body = last_body(&fake);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(
        messages[1]["tool_calls"],
        json!([
            {"id": "c1", "function": {"name": "get_weather", "arguments": serde_json::from_str::<Value>(ARGS).unwrap()}},
            {"id": "call_made_up_1", "function": {"name": "get_time", "arguments": {}}},
        ])
    );
    assert_eq!(
        messages[2..],
        [
            json!({"role": "tool", "content": "09:41", "tool_name": "get_time", "tool_call_id": "call_made_up_1"}),
            json!({"role": "tool", "content": "18C", "tool_name": "get_weather", "tool_call_id": "c1"}),
        ]
    );
    // serde_json's `Value` keeps integers and `1.0` as they were, so the text shows the digits.
    let raw = body.to_string();
    assert!(raw.contains("9007199254740993") && raw.contains("1.0"), "{raw}");
}

#[tokio::test]
async fn a_forced_choice_offers_that_tool_alone_and_none_offers_none() {
    let fake = fake("qwen3", vec![Piece::ToolCalls(vec![FakeToolCall::new("c1", "get_time", "{}")])], &[]).await;
    let forced = ChatRequest {
        tool_choice: Some(ToolChoice::Named("get_time".into())),
        ..request("qwen3", vec![Message::text(Role::User, "time?")])
    };
    let events = events(&fake, forced).await;
    assert_eq!(events[0], call(0, Some("c1"), "get_time", "{}"));
    let names: Vec<Value> =
        last_body(&fake)["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].clone()).collect();
    assert_eq!(names, [json!("get_time")]);

    let none = ChatRequest {
        tool_choice: Some(ToolChoice::None),
        ..request("qwen3", vec![Message::text(Role::User, "time?")])
    };
    let _ = self::events(&fake, none).await;
    assert_eq!(last_body(&fake).get("tools"), None);
}

#[tokio::test]
async fn structured_output_goes_as_format() {
    let answer = r#"{"intent":"tariff"}"#;
    let fake = fake("qwen3", vec![Piece::Text(answer[..9].into()), Piece::Text(answer[9..].into())], &[]).await;
    let schema = r#"{"type":"object","properties":{"intent":{"type":"string","enum":["tariff","outage"]}},"required":["intent"]}"#;
    let request = ChatRequest {
        model: "qwen3".into(),
        messages: vec![Message::text(Role::User, "How much is a kWh at night?")],
        response_format: ResponseFormat::JsonSchema { name: "intent".into(), schema: schema.into(), strict: true },
        ..Default::default()
    };
    let events = events(&fake, request.clone()).await;
    let text: String =
        events.iter().filter_map(|e| if let Ok(ChatEvent::Delta(t)) = e { Some(t.as_str()) } else { None }).collect();
    assert_eq!(text, answer);
    assert_eq!(last_body(&fake)["format"], serde_json::from_str::<Value>(schema).unwrap());

    let json_object = ChatRequest { response_format: ResponseFormat::JsonObject, ..request };
    let _ = self::events(&fake, json_object).await;
    assert_eq!(last_body(&fake)["format"], json!("json"));
}

fn thinking(include_thoughts: bool) -> Option<Reasoning> {
    Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::High), include_thoughts })
}

const THINKER: fn() -> Vec<Piece> = || {
    vec![
        Piece::Thinking("The user asks".into()),
        Piece::Thinking(" about tariffs.".into()),
        // Ollama has no signatures: the fake writes nothing for this one.
        Piece::ThinkingSignature(b"sig".to_vec()),
        Piece::Text("Night".into()),
        Piece::Text(" is cheaper.".into()),
    ]
};

#[tokio::test]
async fn thinking_streams_before_the_text_when_asked_for() {
    let fake = fake("qwen3", THINKER(), &[]).await;
    let request =
        ChatRequest { reasoning: thinking(true), ..request("qwen3", vec![Message::text(Role::User, "Night or day?")]) };
    let events = events(&fake, request).await;
    assert_eq!(
        events[..4],
        [
            Ok(ChatEvent::Thinking(ThinkingDelta::Text("The user asks".into()))),
            Ok(ChatEvent::Thinking(ThinkingDelta::Text(" about tariffs.".into()))),
            Ok(ChatEvent::Delta("Night".into())),
            Ok(ChatEvent::Delta(" is cheaper.".into())),
        ]
    );
    assert_eq!(done(&events), FinishReason::Stop);
    assert_eq!(last_body(&fake)["think"], json!("high"));
}

#[tokio::test]
async fn thinking_not_asked_for_is_dropped_and_thinking_off_is_sent() {
    let fake = fake("qwen3", THINKER(), &[]).await;
    let ask =
        |reasoning| ChatRequest { reasoning, ..request("qwen3", vec![Message::text(Role::User, "Night or day?")]) };
    for reasoning in [thinking(false), None, Some(Reasoning::Off)] {
        let events = events(&fake, ask(reasoning)).await;
        assert!(events.iter().all(|e| !matches!(e, Ok(ChatEvent::Thinking(_)))), "{reasoning:?}: {events:?}");
        assert_eq!(events.len(), 3, "{reasoning:?}: {events:?}");
    }
    assert_eq!(last_body(&fake)["think"], json!(false));
}

#[tokio::test]
async fn earlier_thinking_goes_back_in_the_thinking_field() {
    let fake = fake("qwen3", vec![Piece::Text("Because.".into())], &[]).await;
    let assistant = Message {
        role: Role::Assistant,
        parts: vec![
            Part::Thinking(Thinking { text: "Night is off-peak.".into(), signature: vec![], redacted: false }),
            Part::Text("Night.".into()),
        ],
        tool_call_id: None,
    };
    let messages = vec![Message::text(Role::User, "Night or day?"), assistant, Message::text(Role::User, "Why?")];
    let _ = events(&fake, ChatRequest { reasoning: thinking(true), ..request("qwen3", messages) }).await;
    assert_eq!(
        last_body(&fake)["messages"][1],
        json!({"role": "assistant", "content": "Night.", "thinking": "Night is off-peak."})
    );
}

#[tokio::test]
async fn an_image_reaches_ollama_as_raw_base64() {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR tiny";
    let fake = fake("llava", vec![Piece::Text("A tiny image.".into())], &[]).await;
    let message = Message {
        role: Role::User,
        parts: vec![
            Part::Text("What is this?".into()),
            Part::Image(Image { source: ImageSource::Data(PNG.to_vec()), mime_type: "image/png".into() }),
        ],
        tool_call_id: None,
    };
    let events =
        events(&fake, ChatRequest { model: "llava".into(), messages: vec![message], ..Default::default() }).await;
    assert_eq!(events[0], Ok(ChatEvent::Delta("A tiny image.".into())));
    assert_eq!(
        last_body(&fake)["messages"][0],
        json!({"role": "user", "content": "What is this?", "images": ["iVBORw0KGgoAAAANSUhEUiB0aW55"]})
    );
}

/// A model that cannot do what the request asks is refused by Ollama in its own words, which
/// come back as `Unsupported` naming the feature.
#[tokio::test]
async fn what_a_model_cannot_do_is_unsupported() {
    let user = || vec![Message::text(Role::User, "hi")];
    let image = Part::Image(Image { source: ImageSource::Data(b"GIF89a".to_vec()), mime_type: "image/gif".into() });
    let cases = [
        (
            "tools",
            request("gemma3:1b", user()),
            Feature::Tools,
            "registry.ollama.ai/library/gemma3:1b does not support tools",
        ),
        (
            "thinking",
            ChatRequest {
                model: "gemma3:1b".into(),
                messages: user(),
                reasoning: thinking(true),
                ..Default::default()
            },
            Feature::Thinking,
            r#""gemma3:1b" does not support thinking"#,
        ),
        (
            "vision",
            ChatRequest {
                model: "gemma3:1b".into(),
                messages: vec![Message { role: Role::User, parts: vec![image], tool_call_id: None }],
                ..Default::default()
            },
            Feature::Images,
            "this model is missing data required for image input",
        ),
    ];
    for (capability, request, feature, message) in cases {
        let fake = fake("gemma3:1b", vec![Piece::Text("no".into())], &[capability]).await;
        let Err(error) = provider(&fake).chat(request).await else { panic!("{capability}: accepted") };
        assert_eq!(error, ProviderError::Unsupported { feature, message: message.into() }, "{capability}");
    }

    // Turning thinking off is fine for any model.
    let fake = fake("gemma3:1b", vec![Piece::Text("ok".into())], &["thinking"]).await;
    let request = ChatRequest {
        model: "gemma3:1b".into(),
        messages: user(),
        reasoning: Some(Reasoning::Off),
        ..Default::default()
    };
    assert_eq!(done(&events(&fake, request).await), FinishReason::Stop);
}

#[tokio::test]
async fn model_capabilities_add_structured_output_to_ollamas_own() {
    let fake = fake("qwen3", vec![], &["vision"]).await;
    let info = provider(&fake).describe_model("qwen3").await.unwrap();
    assert_eq!(info.capabilities, ["completion", "tools", "thinking", "json_object", "json_schema"]);
}
