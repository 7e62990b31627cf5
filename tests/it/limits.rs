//! Request size limits: each refusal names the limit and the configuration key that sets it.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{ChatRequest, GenerateRequest, Message, Role};
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{Copilot, start_with_limits, within};

const LIMIT: Duration = Duration::from_secs(20);

fn chat(contents: &[&str]) -> ChatRequest {
    ChatRequest {
        model: "ollama/m".into(),
        messages: contents
            .iter()
            .map(|c| Message { role: Role::User as i32, content: c.to_string(), ..Default::default() })
            .collect(),
        options: None,
        ..Default::default()
    }
}

fn generate(prompt: &str) -> GenerateRequest {
    GenerateRequest { model: "ollama/m".into(), prompt: prompt.into(), ..Default::default() }
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_it_is_read() {
    let (fake, copilot) = start_with_limits("max_message_bytes = 1000").await;
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
    let (fake, copilot) = start_with_limits("max_messages = 3").await;
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
    let (fake, copilot) = start_with_limits("max_prompt_chars = 10").await;
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

/// The fakes' models for the reply-size tests, under `limits.max_response_bytes = 65536`.
async fn start_with_long_replies() -> (FakeOllama, Copilot) {
    let (fake, copilot) = start_with_limits("max_response_bytes = 65536").await;
    fake.add_model(FakeModel::new("endless").with_reply(Reply::Endless));
    // 1.1 MB in chunks well under the limit, and one chunk over it.
    fake.add_model(FakeModel::new("long").with_reply(Reply::Tokens(vec!["x".repeat(1000); 1100])));
    fake.add_model(FakeModel::new("lump").with_reply(Reply::Tokens(vec!["y".repeat(100_000)])));
    (fake, copilot)
}

fn generate_with(model: &str) -> GenerateRequest {
    GenerateRequest { model: format!("ollama/{model}"), ..generate("hi") }
}

fn assert_response_too_large(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "RESPONSE_TOO_LARGE");
    assert_eq!(info.metadata["limit_bytes"], "65536");
    assert_eq!(info.metadata["config_key"], "limits.max_response_bytes");
    assert!(
        status.message().contains(what)
            && status.message().contains("65536 bytes")
            && status.message().contains("limits.max_response_bytes"),
        "{}",
        status.message()
    );
}

/// What a Chat stream carried, and how it ended.
async fn drain(client: &mut CopilotClient<Channel>, model: &str) -> (usize, Result<(), Status>) {
    let request = ChatRequest { model: format!("ollama/{model}"), ..chat(&["hi"]) };
    let mut stream = match within(LIMIT, client.chat(request)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (0, Err(status)),
    };
    let mut bytes = 0;
    loop {
        match within(LIMIT, stream.message()).await {
            Ok(Some(response)) => bytes += response.content.len(),
            Ok(None) => return (bytes, Ok(())),
            Err(status) => return (bytes, Err(status)),
        }
    }
}

#[tokio::test]
async fn a_generate_reply_over_the_limit_ends_the_call_and_cancels_the_upstream() {
    let (fake, copilot) = start_with_long_replies().await;
    let mut client = copilot.client().await;
    // Under the limit, Generate is as it was.
    let reply = within(LIMIT, client.generate(generate("hello there"))).await.unwrap().into_inner();
    assert_eq!(reply.text, "You said: hello there");

    // An upstream that never stops: the call ends once the text would pass the limit, and the
    // upstream request is dropped rather than read on.
    let status = within(LIMIT, client.generate(generate_with("endless"))).await.unwrap_err();
    assert_response_too_large(&status, "Generate");
    assert!(fake.wait_for_disconnects(1, LIMIT).await, "the endless upstream request was never cancelled");

    // A finite reply far over the limit is refused too, not returned whole.
    let status = within(LIMIT, client.generate(generate_with("long"))).await.unwrap_err();
    assert_response_too_large(&status, "Generate");
}

#[tokio::test]
async fn a_chat_chunk_over_the_limit_ends_the_stream_but_a_long_stream_flows() {
    let (_fake, copilot) = start_with_long_replies().await;
    let mut client = copilot.client().await;
    // A stream is relayed, not held: its total is not capped, only each message.
    let (bytes, end) = drain(&mut client, "long").await;
    end.unwrap();
    assert_eq!(bytes, 1_100_000);

    let (bytes, end) = drain(&mut client, "lump").await;
    assert_eq!(bytes, 0);
    assert_response_too_large(&end.unwrap_err(), "single chunk of 100000 bytes");
}

fn with_header(request: GenerateRequest, bytes: usize) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert("x-big", "v".repeat(bytes).parse().unwrap());
    request
}

/// HTTP/2 answers a header block over its limit with a 431 that has no gRPC status, and past four
/// times it with a GOAWAY that fails every call on the connection; Copilot answers first.
#[tokio::test]
async fn oversized_metadata_fails_its_own_call_and_the_connection_lives_on() {
    let (fake, copilot) = start_with_limits("max_metadata_bytes = 8192").await;
    fake.add_model(FakeModel::new("endless").with_reply(Reply::Endless));
    // One connection: a stream in flight on it beside the oversized calls.
    let mut client = copilot.client().await;
    let request = ChatRequest { model: "ollama/endless".into(), ..chat(&["hi"]) };
    let mut stream = within(LIMIT, client.chat(request)).await.unwrap().into_inner();
    within(LIMIT, stream.message()).await.unwrap().expect("a first chunk");

    within(LIMIT, client.generate(with_header(generate("hi"), 6000))).await.unwrap();
    // Over the limit, past h2's default 16 KiB (431) and 64 KiB (GOAWAY), up to near its ceiling.
    for bytes in [9_000, 30_000, 100_000, 300_000, 1_000_000] {
        let status = within(LIMIT, client.generate(with_header(generate("hi"), bytes))).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{bytes}: {}", status.message());
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "METADATA_TOO_LARGE");
        assert_eq!(info.metadata["config_key"], "limits.max_metadata_bytes");
        assert_eq!(info.metadata["limit_bytes"], "8192");
        let largest = format!("`x-big`, {} bytes", 5 + bytes + 32);
        assert!(
            status.message().contains(&largest) && status.message().contains("at most 8192 bytes"),
            "{}",
            status.message()
        );
    }

    // The stream in flight still flows, and the connection takes new calls.
    for _ in 0..3 {
        within(LIMIT, stream.message()).await.unwrap().expect("more of the stream");
    }
    within(LIMIT, client.generate(generate("hi"))).await.unwrap();
    assert_eq!(fake.chat_requests().len(), 3, "the oversized calls never went upstream");
}
