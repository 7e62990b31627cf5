//! The three RPCs doing their job against a well-behaved upstream.

use std::time::Duration;

use copilot::proto::v1::{
    ChatRequest, FinishReason, GenerateRequest, GenerationOptions, ListModelsRequest, Message, Role,
};
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use futures::StreamExt;

use crate::harness::{Copilot, within};
use crate::requests::{prompt, user};

const LIMIT: Duration = Duration::from_secs(20);

fn tokens(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

#[tokio::test]
async fn generate_returns_the_whole_text_with_usage_and_timing() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b").with_reply(tokens(&["Hello", ",", " world", "!"])));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let response = within(
        LIMIT,
        client.generate(GenerateRequest {
            model: "ollama/llama3.2:3b".into(),
            prompt: "Say hello to the world".into(),
            system: "You are terse".into(),
            options: None,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();

    assert_eq!(response.text, "Hello, world!");
    assert_eq!(response.model, "ollama/llama3.2:3b");
    assert_eq!(response.finish_reason(), FinishReason::Stop);
    let usage = response.usage.unwrap();
    assert_eq!(usage.output_tokens, 4);
    assert_eq!(usage.input_tokens, 8, "the fake counts words over the system prompt and the prompt");
    let timing = response.timing.unwrap();
    assert!(timing.time_to_first_token.is_some());
    let total = timing.total_duration.unwrap();
    assert!(total.seconds > 0 || total.nanos > 0);
    assert!(timing.output_tokens_per_second > 0.0);
    assert!(timing.generation_duration.is_some() && timing.prompt_duration.is_some());

    // The system prompt went first, as a system message.
    let sent = fake.chat_requests().pop().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "You are terse");
    assert_eq!(sent["messages"][1]["role"], "user");
    assert_eq!(sent["stream"], true);
}

#[tokio::test]
async fn chat_streams_each_chunk_then_a_final_message() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b").with_reply(tokens(&["The", " sky", " is", " blue"])));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let request = ChatRequest {
        model: "ollama/llama3.2:3b".into(),
        messages: vec![
            Message { role: Role::System as i32, content: "Answer in one line".into(), ..Default::default() },
            user("What colour is the sky?"),
            Message { role: Role::Assistant as i32, content: "Do you mean by day?".into(), ..Default::default() },
            user("Yes"),
        ],
        options: None,
        ..Default::default()
    };
    let stream = within(LIMIT, client.chat(request)).await.unwrap().into_inner();
    let messages: Vec<_> = within(LIMIT, stream.collect::<Vec<_>>()).await;
    let messages: Vec<_> = messages.into_iter().map(|m| m.unwrap()).collect();

    let contents: Vec<_> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["The", " sky", " is", " blue", ""]);
    for chunk in &messages[..4] {
        assert_eq!(chunk.finish_reason(), FinishReason::Unspecified);
        assert!(chunk.usage.is_none());
    }
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason(), FinishReason::Stop);
    assert_eq!(last.model, "ollama/llama3.2:3b");
    assert_eq!(last.usage.unwrap().output_tokens, 4);
    assert!(last.timing.unwrap().time_to_first_token.is_some());

    let roles: Vec<_> = fake.chat_requests()[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}

#[tokio::test]
async fn options_are_mapped_to_ollama_and_keep_alive_is_sent() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let copilot = Copilot::start(&fake, &[("COPILOT_PROVIDERS__OLLAMA__KEEP_ALIVE", "10m")]).await;
    let mut client = copilot.client().await;

    client
        .generate(GenerateRequest {
            model: "ollama/llama3.2:3b".into(),
            prompt: "hi".into(),
            options: Some(GenerationOptions {
                temperature: Some(0.25),
                max_tokens: Some(64),
                top_p: Some(0.5),
                top_k: Some(20),
                stop: vec!["\n\n".into(), "END".into()],
                seed: Some(42),
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    let sent = fake.chat_requests().pop().unwrap();
    let options = &sent["options"];
    assert_eq!(options["temperature"], 0.25);
    assert_eq!(options["num_predict"], 64);
    assert_eq!(options["top_p"], 0.5);
    assert_eq!(options["top_k"], 20);
    assert_eq!(options["stop"], serde_json::json!(["\n\n", "END"]));
    assert_eq!(options["seed"], 42);
    assert_eq!(sent["keep_alive"], 600);
}

#[tokio::test]
async fn first_users_defaults_apply_when_the_request_leaves_options_unset() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("qwen2.5:0.5b"));
    let copilot = Copilot::start(
        &fake,
        &[("OLLAMA_MODEL", "qwen2.5:0.5b"), ("OLLAMA_TEMPERATURE", "0.1"), ("OLLAMA_MAX_TOKENS", "33")],
    )
    .await;
    let mut client = copilot.client().await;

    // Empty model: the configured default. An explicit option beats the configured default.
    let response = client
        .generate(GenerateRequest {
            prompt: "ping".into(),
            options: Some(GenerationOptions { temperature: Some(0.9), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model, "ollama/qwen2.5:0.5b");
    assert_eq!(response.text, "You said: ping");
    let sent = fake.chat_requests().pop().unwrap();
    assert_eq!(sent["model"], "qwen2.5:0.5b");
    assert_eq!(sent["options"]["temperature"], 0.9);
    assert_eq!(sent["options"]["num_predict"], 33);

    // A bare name goes to the default provider.
    let response = client.generate(prompt("qwen2.5:0.5b", "pong")).await.unwrap().into_inner();
    assert_eq!(response.text, "You said: pong");
}

#[tokio::test]
async fn max_tokens_ends_with_finish_reason_length() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b").with_reply(Reply::Endless));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let response = within(
        LIMIT,
        client.generate(GenerateRequest {
            model: "ollama/llama3.2:3b".into(),
            prompt: "go on forever".into(),
            options: Some(GenerationOptions { max_tokens: Some(5), ..Default::default() }),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(response.finish_reason(), FinishReason::Length);
    assert_eq!(response.usage.unwrap().output_tokens, 5);
    assert_eq!(response.text, "tok tok tok tok tok");
}

#[tokio::test]
async fn list_models_names_them_in_routable_form_with_details() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let mut qwen = FakeModel::new("qwen2.5:0.5b");
    qwen.family = "qwen2".into();
    qwen.parameter_size = "494.03M".into();
    qwen.quantization_level = "Q8_0".into();
    qwen.size = 531_000_000;
    fake.add_model(qwen);
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let mut models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    models.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["ollama/llama3.2:3b", "ollama/qwen2.5:0.5b"]);
    let qwen = &models[1];
    assert_eq!(qwen.provider, "ollama");
    assert_eq!(qwen.family, "qwen2");
    assert_eq!(qwen.parameter_size, "494.03M");
    assert_eq!(qwen.quantization, "Q8_0");
    assert_eq!(qwen.size_bytes, Some(531_000_000));

    // Every listed name is callable as is.
    let response = client.generate(prompt(&qwen.name, "hi")).await.unwrap();
    assert_eq!(response.into_inner().model, "ollama/qwen2.5:0.5b");
}

#[tokio::test]
async fn calls_one_after_another_reuse_one_upstream_connection() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b").with_reply(tokens(&["a", " b", " c"])));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;
    let chatting = client.clone();
    let chat = |round: usize| {
        let request = ChatRequest {
            model: "ollama/llama3.2:3b".into(),
            messages: vec![user("hi")],
            options: None,
            ..Default::default()
        };
        let mut client = chatting.clone();
        async move {
            let stream = within(LIMIT, client.chat(request)).await.unwrap().into_inner();
            let messages: Vec<_> = within(LIMIT, stream.collect::<Vec<_>>()).await;
            assert_eq!(messages.len(), 4, "round {round}: {messages:?}");
        }
    };
    // The start-up health probe may have a connection of its own, and streamed answers (Chat) and
    // answers collected whole (Generate) are read with different buffers, so each kind keeps
    // connections of its own: count from after one call of each.
    within(LIMIT, client.generate(prompt("ollama/llama3.2:3b", "hi"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_generate = fake.connections_accepted();
    chat(0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let opened = fake.connections_accepted();
    assert_eq!(opened, after_generate + 1, "a Chat stream does not take the idle connection a Generate read whole");
    for round in 1..=5 {
        chat(round).await;
        let request = prompt("ollama/llama3.2:3b", "hi");
        assert_eq!(within(LIMIT, client.generate(request)).await.unwrap().into_inner().text, "a b c");
        // The rest of each body (the end of the chunked encoding) is read after the final event.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.connections_accepted(), opened, "each finished response hands its connection back to the pool");
}
