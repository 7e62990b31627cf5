//! Request size limits: each refusal names the limit and the configuration key that sets it.

use std::time::Duration;

use copilot::proto::v1::{ChatRequest, GenerateRequest, Message, Role};
use copilot_fakes::{FakeModel, FakeOllama};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, OLLAMA_ONLY, within};

const LIMIT: Duration = Duration::from_secs(20);

async fn start(limits: &str) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let config = format!("{OLLAMA_ONLY}[limits]\n{limits}\n");
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    (fake, copilot)
}

fn chat(contents: &[&str]) -> ChatRequest {
    ChatRequest {
        model: "ollama/m".into(),
        messages: contents.iter().map(|c| Message { role: Role::User as i32, content: c.to_string() }).collect(),
        options: None,
    }
}

fn generate(prompt: &str) -> GenerateRequest {
    GenerateRequest { model: "ollama/m".into(), prompt: prompt.into(), ..Default::default() }
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_it_is_read() {
    let (fake, copilot) = start("max_message_bytes = 1000").await;
    let mut client = copilot.client().await;
    within(LIMIT, client.generate(generate(&"a".repeat(900)))).await.unwrap();

    let status = within(LIMIT, client.generate(generate(&"a".repeat(5000)))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert_eq!(status.get_details_error_info().unwrap().reason, "MESSAGE_TOO_LARGE");
    assert!(
        status.message().contains("1000 bytes") && status.message().contains("limits.max_message_bytes"),
        "{}",
        status.message()
    );
    let status = within(LIMIT, client.chat(chat(&[&"a".repeat(5000)]))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert_eq!(fake.chat_requests().len(), 1);
}

#[tokio::test]
async fn too_many_messages_are_refused_with_the_limit_named() {
    let (fake, copilot) = start("max_messages = 3").await;
    let mut client = copilot.client().await;
    within(LIMIT, client.chat(chat(&["a", "b", "c"]))).await.unwrap();

    let status = within(LIMIT, client.chat(chat(&["a", "b", "c", "d"]))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violation = &status.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "messages");
    assert!(violation.description.contains("4 messages") && violation.description.contains("at most 3"));
    assert!(status.message().contains("limits.max_messages"), "{}", status.message());
    assert_eq!(fake.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_prompt_too_long_is_refused_with_the_limit_named() {
    let (fake, copilot) = start("max_prompt_chars = 10").await;
    let mut client = copilot.client().await;
    // Ten characters (in twenty bytes) are within the limit.
    within(LIMIT, client.generate(generate("éééééééééé"))).await.unwrap();

    let status = within(LIMIT, client.generate(generate("abcdefghijk"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violation = &status.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "prompt");
    assert!(violation.description.contains("11 characters") && violation.description.contains("at most 10"));
    assert!(status.message().contains("limits.max_prompt_chars"), "{}", status.message());

    // In a chat, the limit is on all messages together.
    let status = within(LIMIT, client.chat(chat(&["abcdef", "ghijkl"]))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "messages");
    assert_eq!(fake.chat_requests().len(), 1);
}
