//! Tools and structured output through `OpenAiProvider` against the fake OpenAI-compatible
//! server, in each flavour: what goes on the wire, how each server streams calls back, and how
//! the servers' refusals come out.

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeModel, FakeOpenAi, FakeToolCall, Flavour, Piece, Reply};
use copilot_openai::{OpenAiConfig, OpenAiProvider};
use copilot_provider::{
    AssembledTurn, ChatEvent, ChatRequest, Completion, Feature, FinishReason, Message, Part, Provider, ProviderError,
    ResponseFormat, Role, Tool, ToolCall, ToolChoice,
};
use futures::StreamExt;
use serde_json::{Value, json};

const ALL_FLAVOURS: [Flavour; 6] =
    [Flavour::OpenAi, Flavour::NoUsage, Flavour::LlamaCpp, Flavour::LlamaCppOldErrors, Flavour::Vllm, Flavour::Ollama];

/// Numbers a float or a double would change: a 64-bit id and `1.0`.
const ARGUMENTS: &str = r#"{"id":9007199254740993,"x":1.0,"city":"Zürich \"centre\""}"#;

const SCHEMA: &str = r#"{"type":"object","properties":{"city":{"type":"string"},"id":{"type":"integer"}},"required":["city","id"],"additionalProperties":false}"#;

async fn fake_with(flavour: Flavour, reply: Reply) -> (FakeOpenAi, OpenAiProvider) {
    let fake = FakeOpenAi::start().await;
    fake.set_flavour(flavour);
    fake.add_model(FakeModel::new("m").with_reply(reply));
    let config =
        OpenAiConfig { base_url: fake.base_url(), connect_timeout: Duration::from_secs(2), ..Default::default() };
    let provider = OpenAiProvider::new(config).expect("valid config");
    (fake, provider)
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "The weather in a city".into(),
        parameters: Some(SCHEMA.into()),
        strict: false,
    }
}

fn tool_request(user: &str) -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![Message::text(Role::User, user)],
        tools: vec![weather_tool(), Tool { name: "now".into(), ..Default::default() }],
        ..Default::default()
    }
}

fn calls(calls: Vec<FakeToolCall>) -> Reply {
    Reply::Turn(vec![Piece::ToolCalls(calls)])
}

/// A stream read to its end: the turn its events make, and how it ended.
async fn run(provider: &OpenAiProvider, request: ChatRequest) -> (AssembledTurn, Result<Completion, ProviderError>) {
    let mut turn = AssembledTurn::default();
    let mut stream = match provider.chat(request).await {
        Ok(stream) => stream,
        Err(err) => return (turn, Err(err)),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) => turn.text(&text),
            Ok(ChatEvent::ToolCall(delta)) => turn.tool_call(&delta),
            Ok(ChatEvent::Thinking(delta)) => turn.thinking(&delta),
            Ok(ChatEvent::Done(completion)) => {
                assert!(stream.next().await.is_none(), "events after Done");
                return (turn, Ok(*completion));
            }
            Err(err) => {
                assert!(stream.next().await.is_none(), "events after an error");
                return (turn, Err(err));
            }
        }
    }
    panic!("the stream ended without Done or an error");
}

fn tool_calls(turn: &AssembledTurn) -> Vec<ToolCall> {
    turn.parts()
        .iter()
        .filter_map(|part| match part {
            Part::ToolCall(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_single_call_comes_back_whole_from_every_flavour() {
    for flavour in ALL_FLAVOURS {
        let call = FakeToolCall::new("call_1", "get_weather", ARGUMENTS).split_at(&[1, 7, 20, 33]);
        let reply = Reply::Turn(vec![Piece::Text("Checking.".into()), Piece::ToolCalls(vec![call])]);
        let (fake, provider) = fake_with(flavour, reply).await;
        let (turn, completion) = run(&provider, tool_request("Weather in Zürich?")).await;
        let completion = completion.unwrap_or_else(|e| panic!("{flavour:?}: {e}"));
        assert_eq!(completion.finish_reason, FinishReason::ToolCalls, "{flavour:?}");
        assert_eq!(
            turn.parts(),
            [
                Part::Text("Checking.".into()),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: ARGUMENTS.into(),
                    signature: vec![]
                }),
            ],
            "{flavour:?}"
        );
        let sent = &fake.chat_requests()[0];
        assert_eq!(
            sent["tools"][0],
            json!({"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                "parameters": serde_json::from_str::<Value>(SCHEMA).unwrap()}}),
            "{flavour:?}"
        );
        assert!(sent.get("tool_choice").is_none());
    }
}

#[tokio::test]
async fn parallel_calls_keep_their_order_ids_and_arguments() {
    for flavour in ALL_FLAVOURS {
        let reply = calls(vec![
            FakeToolCall::new("call_a", "get_weather", r#"{"city":"Paris"}"#).split_at(&[4, 9]),
            // A server-made id, in the flavour's own shape.
            FakeToolCall::new("", "get_weather", r#"{"city":"Oslo"}"#).without_id().split_at(&[2]),
            FakeToolCall::new("call_c", "now", "{}"),
        ]);
        let (_fake, provider) = fake_with(flavour, reply).await;
        let (turn, completion) = run(&provider, tool_request("Paris, Oslo, and the time?")).await;
        assert_eq!(completion.unwrap().finish_reason, FinishReason::ToolCalls, "{flavour:?}");
        let made = tool_calls(&turn);
        let summary: Vec<(&str, &str)> = made.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(
            summary,
            [("get_weather", r#"{"city":"Paris"}"#), ("get_weather", r#"{"city":"Oslo"}"#), ("now", "{}")],
            "{flavour:?}"
        );
        assert_eq!((made[0].id.as_str(), made[2].id.as_str()), ("call_a", "call_c"), "{flavour:?}");
        let made_up = &made[1].id;
        let expected_len = match flavour {
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => 32,
            Flavour::Vllm => "chatcmpl-tool-".len() + 32,
            Flavour::Ollama => "call_".len() + 8,
            _ => "call_".len() + 24,
        };
        assert_eq!(made_up.len(), expected_len, "{flavour:?}: {made_up}");
    }
}

#[tokio::test]
async fn arguments_are_byte_exact_wherever_the_server_cuts_them() {
    for flavour in [Flavour::OpenAi, Flavour::Vllm] {
        let (fake, provider) = fake_with(flavour, Reply::Tokens(vec![])).await;
        for at in 1..ARGUMENTS.len() {
            let reply = calls(vec![
                FakeToolCall::new("call_1", "get_weather", ARGUMENTS).split_at(&[at]),
                FakeToolCall::new("call_2", "get_weather", ARGUMENTS).split_at(&[at / 2, at]),
            ]);
            fake.add_model(FakeModel::new("m").with_reply(reply));
            let (turn, completion) = run(&provider, tool_request("x")).await;
            completion.unwrap_or_else(|e| panic!("{flavour:?}, cut at {at}: {e}"));
            let made = tool_calls(&turn);
            assert_eq!(made.len(), 2);
            assert!(made.iter().all(|c| c.arguments == ARGUMENTS), "{flavour:?}, cut at {at}: {made:?}");
        }
    }
}

#[tokio::test]
async fn a_tool_result_round_trips_over_two_turns() {
    for flavour in ALL_FLAVOURS {
        let (fake, provider) = fake_with(flavour, Reply::Tokens(vec![])).await;
        fake.add_model(
            FakeModel::new("m")
                .with_reply(calls(vec![FakeToolCall::new("call_1", "get_weather", ARGUMENTS)]))
                .with_reply_after_tool_result(Reply::Tokens(vec!["Sunny, 21C.".into()])),
        );
        let first = tool_request("Weather in Zürich?");
        let (turn, completion) = run(&provider, first.clone()).await;
        completion.unwrap();

        let mut second = first;
        second.messages.push(Message { role: Role::Assistant, parts: turn.into_parts(), tool_call_id: None });
        second.messages.push(Message::tool_result("call_1", r#"{"temp":21}"#));
        let (answer, completion) = run(&provider, second).await;
        assert_eq!(completion.unwrap_or_else(|e| panic!("{flavour:?}: {e}")).finish_reason, FinishReason::Stop);
        assert_eq!(answer.parts(), [Part::Text("Sunny, 21C.".into())]);

        let sent = &fake.chat_requests()[1];
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
            ]),
            "{flavour:?}"
        );
    }
}

#[tokio::test]
async fn history_with_an_unanswered_call_is_refused_as_openai_refuses_it() {
    let (_fake, provider) = fake_with(Flavour::OpenAi, Reply::Tokens(vec!["x".into()])).await;
    let mut request = tool_request("Weather?");
    request.messages.push(Message {
        role: Role::Assistant,
        parts: vec![
            Part::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{}".into(),
                ..Default::default()
            }),
            Part::ToolCall(ToolCall {
                id: "call_2".into(),
                name: "now".into(),
                arguments: "{}".into(),
                ..Default::default()
            }),
        ],
        tool_call_id: None,
    });
    request.messages.push(Message::tool_result("call_1", "rain"));
    let (_, result) = run(&provider, request).await;
    match result {
        Err(ProviderError::InvalidRequest(message)) => {
            assert!(message.contains("did not have response messages: call_2"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_forced_choice_names_the_tool_and_openai_finishes_with_stop() {
    for flavour in [Flavour::OpenAi, Flavour::Vllm] {
        let reply = calls(vec![FakeToolCall::new("call_1", "get_weather", r#"{"city":"Oslo"}"#)]);
        let (fake, provider) = fake_with(flavour, reply).await;
        let request = ChatRequest { tool_choice: Some(ToolChoice::Named("get_weather".into())), ..tool_request("x") };
        let (turn, completion) = run(&provider, request).await;
        assert_eq!(tool_calls(&turn).len(), 1);
        // Reported as the server says it; the server core settles it from the calls.
        let expected = if flavour == Flavour::OpenAi { FinishReason::Stop } else { FinishReason::ToolCalls };
        assert_eq!(completion.unwrap().finish_reason, expected, "{flavour:?}");
        assert_eq!(
            fake.chat_requests()[0]["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
    }
    // A choice that names no tool of the request: the server's 400.
    let (_fake, provider) = fake_with(Flavour::OpenAi, Reply::Tokens(vec![])).await;
    let request = ChatRequest { tool_choice: Some(ToolChoice::Named("nope".into())), ..tool_request("x") };
    let (_, result) = run(&provider, request).await;
    assert!(matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("'nope'")), "{result:?}");
    for (choice, wire) in [(ToolChoice::Required, "required"), (ToolChoice::None, "none"), (ToolChoice::Auto, "auto")] {
        let (fake, provider) = fake_with(Flavour::OpenAi, Reply::Tokens(vec!["ok".into()])).await;
        let (_, result) = run(&provider, ChatRequest { tool_choice: Some(choice), ..tool_request("x") }).await;
        result.unwrap();
        assert_eq!(fake.chat_requests()[0]["tool_choice"], wire);
    }
}

#[tokio::test]
async fn json_schema_and_json_object_requests() {
    let (fake, provider) = fake_with(Flavour::OpenAi, Reply::Tokens(vec![r#"{"city":"Oslo","id":1}"#.into()])).await;
    let request = ChatRequest {
        model: "m".into(),
        messages: vec![Message::text(Role::User, "Where?")],
        response_format: ResponseFormat::JsonSchema { name: "place".into(), schema: SCHEMA.into(), strict: true },
        ..Default::default()
    };
    let (turn, completion) = run(&provider, request.clone()).await;
    completion.unwrap();
    assert_eq!(turn.parts(), [Part::Text(r#"{"city":"Oslo","id":1}"#.into())]);
    assert_eq!(
        fake.chat_requests()[0]["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "place", "strict": true,
            "schema": serde_json::from_str::<Value>(SCHEMA).unwrap()}})
    );

    // OpenAI wants the word "json" in the messages for json_object.
    let object = ChatRequest { response_format: ResponseFormat::JsonObject, ..request };
    let (_, result) = run(&provider, object.clone()).await;
    assert!(matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("'json'")), "{result:?}");
    let mut asks_json = object;
    asks_json.messages = vec![Message::text(Role::User, "Answer in JSON.")];
    let (_, result) = run(&provider, asks_json).await;
    result.unwrap();
    assert_eq!(fake.chat_requests().last().unwrap()["response_format"], json!({"type": "json_object"}));
}

#[tokio::test]
async fn an_error_after_a_call_fails_the_stream_with_the_call_already_out() {
    for flavour in [Flavour::OpenAi, Flavour::LlamaCppOldErrors, Flavour::Vllm] {
        let (fake, provider) = fake_with(flavour, Reply::Tokens(vec![])).await;
        fake.add_model(
            FakeModel::new("m")
                .with_reply(Reply::Turn(vec![
                    Piece::ToolCalls(vec![FakeToolCall::new("call_1", "get_weather", ARGUMENTS).split_at(&[5])]),
                    Piece::Text("never".into()),
                ]))
                .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "runner crashed".into() }),
        );
        let (turn, result) = run(&provider, tool_request("x")).await;
        assert!(
            matches!(&result, Err(ProviderError::MidStream(m)) if m.contains("runner crashed")),
            "{flavour:?}: {result:?}"
        );
        assert_eq!(tool_calls(&turn).len(), 1);
    }
    // Cut off after the call, before any finish: interrupted.
    let (fake, provider) = fake_with(Flavour::OpenAi, Reply::Tokens(vec![])).await;
    fake.add_model(
        FakeModel::new("m")
            .with_reply(calls(vec![FakeToolCall::new("call_1", "now", "{}")]))
            .with_behaviour(Behaviour::EndWithoutDone { tokens: 1 }),
    );
    let (_, result) = run(&provider, tool_request("x")).await;
    assert!(matches!(result, Err(ProviderError::Interrupted(_))), "{result:?}");
}

#[tokio::test]
async fn a_call_without_arguments_finishes_as_a_call() {
    for flavour in ALL_FLAVOURS {
        let (_fake, provider) = fake_with(flavour, calls(vec![FakeToolCall::new("call_1", "now", "")])).await;
        let (turn, completion) = run(&provider, tool_request("What time is it?")).await;
        assert_eq!(completion.unwrap().finish_reason, FinishReason::ToolCalls, "{flavour:?}");
        // No argument text: the server core owes the client `{}`, the adapter makes none up.
        assert_eq!(
            tool_calls(&turn),
            [ToolCall { id: "call_1".into(), name: "now".into(), arguments: String::new(), signature: vec![] }],
            "{flavour:?}"
        );
    }
}

#[tokio::test]
async fn a_model_that_cannot_is_reported_as_unsupported() {
    for flavour in ALL_FLAVOURS {
        let (fake, provider) = fake_with(flavour, Reply::Tokens(vec!["x".into()])).await;
        fake.set_unsupported(&["tools", "json_schema"]);
        let (_, result) = run(&provider, tool_request("x")).await;
        match result {
            Err(ProviderError::Unsupported { feature: Feature::Tools, message }) => assert!(!message.is_empty()),
            other => panic!("{flavour:?}: {other:?}"),
        }
        // The same words about a feature the request does not use stay a plain refusal.
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "x")],
            response_format: ResponseFormat::JsonSchema { name: "p".into(), schema: SCHEMA.into(), strict: false },
            ..Default::default()
        };
        let (_, result) = run(&provider, request).await;
        assert!(
            matches!(result, Err(ProviderError::Unsupported { feature: Feature::JsonSchema, .. })),
            "{flavour:?}: {result:?}"
        );
    }
}

#[test]
fn the_adapter_declares_what_it_translates() {
    let provider = OpenAiProvider::new(OpenAiConfig::default()).unwrap();
    let features = provider.features();
    for feature in [
        Feature::Tools,
        Feature::JsonObject,
        Feature::JsonSchema,
        Feature::Thinking,
        Feature::Images,
        Feature::ImageUrls,
    ] {
        assert!(features.contains(feature), "{feature:?}");
    }
    // No one field turns thinking off everywhere: only when configured.
    assert!(!features.contains(Feature::ThinkingOff));
    let configured = OpenAiProvider::new(OpenAiConfig::default())
        .unwrap()
        .with_thinking_off(copilot_openai::ThinkingOff::EnableThinkingFalse)
        .with_image_urls(false);
    assert!(configured.features().contains(Feature::ThinkingOff));
    assert!(!configured.features().contains(Feature::ImageUrls));
}
