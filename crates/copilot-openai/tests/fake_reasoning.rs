//! Reasoning through `OpenAiProvider` against the fake OpenAI-compatible server: effort on the
//! wire, thinking streamed apart from the answer in each server's field, thinking sent back in
//! history (DeepSeek refuses a tool loop without it), turning thinking off, and usage.

use std::time::Duration;

use copilot_fakes::{FakeModel, FakeOpenAi, FakeToolCall, Flavour, Piece, Reply};
use copilot_openai::{OpenAiConfig, OpenAiProvider, ThinkingOff};
use copilot_provider::{
    AssembledTurn, ChatEvent, ChatRequest, Completion, Effort, Feature, Message, Part, Provider, ProviderError,
    Reasoning, ReasoningAmount, Role, Thinking, Tool,
};
use futures::StreamExt;
use serde_json::json;

async fn start(flavour: Flavour, model: FakeModel) -> (FakeOpenAi, OpenAiProvider) {
    let fake = FakeOpenAi::start().await;
    fake.set_flavour(flavour);
    fake.add_model(model);
    let config =
        OpenAiConfig { base_url: fake.base_url(), connect_timeout: Duration::from_secs(2), ..Default::default() };
    (fake, OpenAiProvider::new(config).expect("valid config"))
}

fn thinking_then_text() -> Reply {
    Reply::Turn(vec![
        Piece::Thinking("Let me ".into()),
        Piece::Thinking("think.".into()),
        Piece::Text("Forty-two.".into()),
    ])
}

fn request(reasoning: Option<Reasoning>) -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![Message::text(Role::User, "The answer?")],
        reasoning,
        ..Default::default()
    }
}

fn thoughts(amount: ReasoningAmount) -> Option<Reasoning> {
    Some(Reasoning::On { amount, include_thoughts: true })
}

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
            Ok(ChatEvent::Done(completion)) => return (turn, Ok(*completion)),
            Err(err) => return (turn, Err(err)),
        }
    }
    panic!("the stream ended without Done or an error");
}

#[tokio::test]
async fn thinking_streams_before_the_text_in_each_servers_field() {
    for flavour in [Flavour::OpenAi, Flavour::LlamaCpp, Flavour::Vllm, Flavour::Ollama, Flavour::DeepSeek] {
        let (fake, provider) = start(flavour, FakeModel::new("m").with_reply(thinking_then_text())).await;
        let (turn, completion) = run(&provider, request(thoughts(ReasoningAmount::Effort(Effort::High)))).await;
        completion.unwrap_or_else(|e| panic!("{flavour:?}: {e}"));
        assert_eq!(
            turn.parts(),
            [
                Part::Thinking(Thinking { text: "Let me think.".into(), ..Default::default() }),
                Part::Text("Forty-two.".into()),
            ],
            "{flavour:?}"
        );
        assert_eq!(fake.chat_requests()[0]["reasoning_effort"], "high", "{flavour:?}");
    }
}

#[tokio::test]
async fn thoughts_not_asked_for_are_not_passed_on() {
    for reasoning in [None, Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts: false })] {
        let (fake, provider) = start(Flavour::LlamaCpp, FakeModel::new("m").with_reply(thinking_then_text())).await;
        let (turn, completion) = run(&provider, request(reasoning)).await;
        completion.unwrap();
        assert_eq!(turn.parts(), [Part::Text("Forty-two.".into())]);
        // The model's default amount: no effort sent.
        assert!(fake.chat_requests()[0].get("reasoning_effort").is_none());
    }
}

#[tokio::test]
async fn a_budget_is_sent_as_the_nearest_effort() {
    for (budget, effort) in [(512, "low"), (8_192, "medium"), (100_000, "high")] {
        let (fake, provider) = start(Flavour::Vllm, FakeModel::new("m").with_reply(thinking_then_text())).await;
        run(&provider, request(thoughts(ReasoningAmount::BudgetTokens(budget)))).await.1.unwrap();
        assert_eq!(fake.chat_requests()[0]["reasoning_effort"], effort, "{budget}");
    }
}

#[tokio::test]
async fn reasoning_and_cached_prompt_tokens_are_counted() {
    let (fake, provider) = start(Flavour::OpenAi, FakeModel::new("m").with_reply(thinking_then_text())).await;
    fake.set_cached_prompt_tokens(2);
    let (turn, completion) = run(&provider, request(thoughts(ReasoningAmount::Effort(Effort::Low)))).await;
    assert_eq!(turn.parts()[1], Part::Text("Forty-two.".into()));
    let usage = completion.unwrap().usage;
    // Three pieces out, two of them thinking; "The answer?" is two words, both cached.
    assert_eq!((usage.input_tokens, usage.output_tokens), (2, 3));
    assert_eq!((usage.reasoning_tokens, usage.cached_input_tokens), (Some(2), Some(2)));
}

#[tokio::test]
async fn thinking_goes_back_with_the_tool_calls_it_led_to() {
    let model = FakeModel::new("m")
        .with_reply(Reply::Turn(vec![
            Piece::Thinking("I need the weather.".into()),
            Piece::ToolCalls(vec![FakeToolCall::new("call_1", "get_weather", r#"{"city":"Oslo"}"#)]),
        ]))
        .with_reply_after_tool_result(Reply::Tokens(vec!["Cold.".into()]));
    let (fake, provider) = start(Flavour::DeepSeek, model).await;
    let first = ChatRequest {
        tools: vec![Tool { name: "get_weather".into(), ..Default::default() }],
        ..request(thoughts(ReasoningAmount::Default))
    };
    let (turn, completion) = run(&provider, first.clone()).await;
    completion.unwrap();
    let parts = turn.into_parts();
    assert!(matches!(&parts[0], Part::Thinking(t) if t.text == "I need the weather."), "{parts:?}");

    let mut second = first.clone();
    second.messages.push(Message { role: Role::Assistant, parts: parts.clone(), tool_call_id: None });
    second.messages.push(Message::tool_result("call_1", "-3C"));
    let (answer, completion) = run(&provider, second).await;
    completion.unwrap();
    assert_eq!(answer.parts(), [Part::Text("Cold.".into())]);
    assert_eq!(
        fake.chat_requests()[1]["messages"][1],
        json!({"role": "assistant", "content": null, "reasoning_content": "I need the weather.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]})
    );

    // Without the thinking (a client that did not keep it), DeepSeek refuses the loop.
    let mut forgetful = first;
    let calls_only: Vec<Part> = parts.into_iter().filter(|p| matches!(p, Part::ToolCall(_))).collect();
    forgetful.messages.push(Message { role: Role::Assistant, parts: calls_only, tool_call_id: None });
    forgetful.messages.push(Message::tool_result("call_1", "-3C"));
    let (_, result) = run(&provider, forgetful).await;
    assert!(matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("reasoning_content")), "{result:?}");
}

#[tokio::test]
async fn thinking_is_turned_off_the_configured_way() {
    let (fake, provider) = start(Flavour::Vllm, FakeModel::new("m").with_reply(thinking_then_text())).await;
    let provider = provider.with_thinking_off(ThinkingOff::EnableThinkingFalse);
    assert!(provider.features().contains(Feature::ThinkingOff));
    run(&provider, request(Some(Reasoning::Off))).await.1.unwrap();
    let sent = &fake.chat_requests()[0];
    assert_eq!(sent["chat_template_kwargs"], json!({"enable_thinking": false}));
    assert!(sent.get("reasoning_effort").is_none());

    let (fake, provider) = start(Flavour::OpenAi, FakeModel::new("m").with_reply(thinking_then_text())).await;
    let provider = provider.with_thinking_off(ThinkingOff::ReasoningEffortNone);
    run(&provider, request(Some(Reasoning::Off))).await.1.unwrap();
    assert_eq!(fake.chat_requests()[0]["reasoning_effort"], "none");
    // Hosted OpenAI knows no chat_template_kwargs: the choice is the operator's, per server.
    let provider = provider.with_thinking_off(ThinkingOff::EnableThinkingFalse);
    let (_, result) = run(&provider, request(Some(Reasoning::Off))).await;
    assert!(matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("chat_template_kwargs")));
}

#[tokio::test]
async fn a_model_that_cannot_think_is_reported_as_unsupported() {
    for flavour in [Flavour::OpenAi, Flavour::Ollama] {
        let (fake, provider) = start(flavour, FakeModel::new("m").with_reply(thinking_then_text())).await;
        fake.set_unsupported(&["thinking"]);
        let (_, result) = run(&provider, request(thoughts(ReasoningAmount::Effort(Effort::Medium)))).await;
        assert!(
            matches!(result, Err(ProviderError::Unsupported { feature: Feature::Thinking, .. })),
            "{flavour:?}: {result:?}"
        );
    }
}
