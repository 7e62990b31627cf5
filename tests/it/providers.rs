//! Each hosted-API adapter through the gRPC API against its fake: streaming with usage, a failure
//! in the middle of a stream, rate limiting with RetryInfo, overload, and an API key that never
//! shows up in a status or in Copilot's own (debug-level) log.

use std::time::Duration;

use copilot::proto::v1::{ChatRequest, FinishReason, GenerationOptions, ListModelsRequest, Message, Role};
use copilot_fakes::{Behaviour, FakeModel, Reply};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(20);
const KEY: &str = "sk-test-4f9a2c71e0d84b6b";

fn chat(model: &str, max_tokens: Option<u32>) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            Message { role: Role::System as i32, content: "Be brief.".into(), ..Default::default() },
            Message { role: Role::User as i32, content: "Tell me about the sea".into(), ..Default::default() },
        ],
        options: Some(GenerationOptions { max_tokens, temperature: Some(0.5), ..Default::default() }),
        ..Default::default()
    }
}

async fn collect(
    client: &mut copilot::proto::v1::copilot_client::CopilotClient<tonic::transport::Channel>,
    request: ChatRequest,
) -> Result<(String, Vec<copilot::proto::v1::ChatResponse>, Option<tonic::Status>), tonic::Status> {
    let mut stream = within(LIMIT, client.chat(request)).await?.into_inner();
    let mut text = String::new();
    let mut messages = Vec::new();
    loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(message)) => {
                text.push_str(&message.content);
                messages.push(message);
            }
            Some(Err(status)) => return Ok((text, messages, Some(status))),
            None => return Ok((text, messages, None)),
        }
    }
}

macro_rules! provider_tests {
    ($module:ident, $fake:ty, $kind:literal) => {
        mod $module {
            use super::*;

            async fn setup() -> ($fake, Copilot) {
                let fake = <$fake>::start().await.with_api_key(KEY);
                let words = Reply::Tokens(["The", " sea", " is", " vast"].map(String::from).to_vec());
                fake.add_model(FakeModel::new("m-1").with_reply(words.clone()));
                fake.add_model(
                    FakeModel::new("m-broken")
                        .with_reply(words)
                        .with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "backend exploded".into() }),
                );
                let config = format!(
                    "[providers.up]\nkind = \"{}\"\nbase_url = \"{}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nretries = 0\n\
                     breaker_failures = 0\n",
                    $kind,
                    fake.base_url()
                );
                let copilot =
                    Copilot::start_with(&config, &[("TEST_UPSTREAM_KEY", KEY.into()), ("RUST_LOG", "debug".into())]).await;
                (fake, copilot)
            }

            #[tokio::test]
            async fn streams_a_chat_with_usage() {
                let (fake, copilot) = setup().await;
                let mut client = copilot.client().await;
                let (text, messages, status) = collect(&mut client, chat("up/m-1", None)).await.unwrap();
                assert!(status.is_none(), "{status:?}");
                assert_eq!(text, "The sea is vast");
                let last = messages.last().unwrap();
                assert_eq!(last.finish_reason(), FinishReason::Stop);
                assert!(last.model.starts_with("up/m-1"), "{}", last.model);
                let usage = last.usage.unwrap();
                assert_eq!(usage.output_tokens, 4);
                assert!(usage.input_tokens > 0);
                // The system prompt reached the upstream in the protocol's own form.
                let sent = fake.chat_requests().pop().unwrap().to_string();
                assert!(sent.contains("Be brief."), "{sent}");

                let (_, messages, _) = collect(&mut client, chat("up/m-1", Some(2))).await.unwrap();
                assert_eq!(messages.last().unwrap().finish_reason(), FinishReason::Length);

                let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
                assert!(models.iter().any(|m| m.name == "up/m-1"), "{models:?}");
            }

            #[tokio::test]
            async fn a_mid_stream_failure_ends_the_stream_with_a_status() {
                let (_fake, copilot) = setup().await;
                let mut client = copilot.client().await;
                let (text, _, status) = collect(&mut client, chat("up/m-broken", None)).await.unwrap();
                assert_eq!(text, "The sea");
                let status = status.expect("the stream must not end OK");
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            }

            #[tokio::test]
            async fn rate_limits_and_overload_map_to_retryable_statuses() {
                let (fake, copilot) = setup().await;
                let mut client = copilot.client().await;
                fake.fail_next(1, 429, Some(7));
                let status = client.chat(chat("up/m-1", None)).await.unwrap_err();
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(7)));

                fake.set_busy(true);
                let status = client.chat(chat("up/m-1", None)).await.unwrap_err();
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                fake.set_busy(false);

                let status = client.chat(chat("up/no-such-model", None)).await.unwrap_err();
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
            }

            #[tokio::test]
            async fn the_api_key_never_leaks() {
                let (fake, copilot) = setup().await;
                let mut client = copilot.client().await;
                collect(&mut client, chat("up/m-1", None)).await.unwrap();
                // The upstream rejects the key and echoes it in its error body.
                fake.set_api_key(Some(String::from("another-key-entirely")));
                let status = client.chat(chat("up/m-1", None)).await.unwrap_err();
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.get_details_error_info().unwrap().reason == "UPSTREAM_UNAUTHORIZED");
                assert!(!status.message().contains(KEY), "the key leaked into a status: {}", status.message());
                // The details are protobuf bytes whose strings are stored as they are.
                assert!(!String::from_utf8_lossy(status.details()).contains(KEY), "the key leaked into the details");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let logs = copilot.logs();
                assert!(logs.contains("DEBUG"), "the log was not at debug level");
                assert!(!logs.contains(KEY), "the key leaked into the log:\n{logs}");
            }
        }
    };
}

provider_tests!(openai, copilot_fakes::FakeOpenAi, "openai");
provider_tests!(gemini, copilot_fakes::FakeGemini, "gemini");
provider_tests!(anthropic, copilot_fakes::FakeAnthropic, "anthropic");

/// Every run of 8 characters of `key` that `text` contains: a piece of a key is a leak too.
fn pieces_of(key: &str, text: &str) -> Vec<String> {
    let key: Vec<char> = key.chars().collect();
    key.windows(8).map(|w| w.iter().collect::<String>()).filter(|piece| text.contains(piece.as_str())).collect()
}

/// An upstream (here a proxy in front of the OpenAI-compatible server) that echoes the key in its
/// error body, across the point where the error text is cut, and in a response header: no piece
/// of the key reaches the status or Copilot's debug-level log.
#[tokio::test]
async fn openai_a_key_echoed_across_the_cut_and_in_a_header_never_leaks() {
    const LONG_KEY: &str = "sk-proj-Q7mZr2VxK9pLw4TnB8cYd1HsF6gJe3UaR5tNo0WkiXyCvPbMqLzD-Aq4Ej8sGh";
    let fake = copilot_fakes::FakeOpenAi::start().await.with_api_key(LONG_KEY);
    fake.add_model(FakeModel::new("m-1").with_reply(Reply::Tokens(vec!["Hi".into()])));
    let config = format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\nretries = 0\n\
         breaker_failures = 0\n",
        fake.base_url()
    );
    let copilot =
        Copilot::start_with(&config, &[("TEST_UPSTREAM_KEY", LONG_KEY.into()), ("RUST_LOG", "debug".into())]).await;
    let mut client = copilot.client().await;
    // Around the 500 characters an error message is cut to: the key starts before the cut and
    // ends after it, or starts right at it.
    for offset in [440, 465, 480, 490, 499, 500] {
        fake.set_echo_key(Some(offset));
        let status = client.chat(chat("up/m-1", None)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "UPSTREAM_UNAUTHORIZED");
        assert!(status.message().contains("this proxy does not accept"), "not the echoing body: {}", status.message());
        let shown = format!("{} {:?} {:?}", status.message(), status.get_error_details(), info);
        assert_eq!(pieces_of(LONG_KEY, &shown), Vec::<String>::new(), "offset {offset}: the key leaked: {shown}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = copilot.logs();
    assert!(logs.contains("DEBUG"), "the log was not at debug level");
    assert!(logs.contains("x-request-id") || logs.contains("request_id"), "the request id was not logged:\n{logs}");
    assert_eq!(pieces_of(LONG_KEY, &logs), Vec::<String>::new(), "the key leaked into the log:\n{logs}");
}
