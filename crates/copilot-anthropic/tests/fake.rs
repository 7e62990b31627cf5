//! End-to-end checks of `AnthropicProvider` against `FakeAnthropic`, which speaks the Messages API
//! over real HTTP: what goes on the wire, how each scripted behaviour comes out, error mapping,
//! cancellation, and the Models API.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use copilot_anthropic::{AnthropicConfig, AnthropicProvider};
use copilot_fakes::anthropic::OVERLOADED_MESSAGE;
use copilot_fakes::{Behaviour, FakeAnthropic, FakeModel, Reply};
use copilot_provider::{
    ChatEvent, ChatRequest, Completion, FinishReason, GenerationOptions, Message, Provider, ProviderError, Role,
    Secret, Usage,
};
use futures::StreamExt;
use serde_json::json;

const KEY: &str = "sk-ant-api03-test-key-0123456789abcdef";
const MODEL: &str = "claude-test-4-5";

fn tokens(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

async fn fake_with(model: FakeModel) -> FakeAnthropic {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    fake.add_model(model);
    fake
}

fn provider_with_key(fake: &FakeAnthropic, key: Option<&str>) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig {
        base_url: fake.base_url(),
        api_key: key.map(Secret::new),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .expect("valid config")
}

fn provider(fake: &FakeAnthropic) -> AnthropicProvider {
    provider_with_key(fake, Some(KEY))
}

fn user(content: &str) -> Message {
    Message::text(Role::User, content)
}

fn request(messages: Vec<Message>, options: GenerationOptions) -> ChatRequest {
    ChatRequest { model: MODEL.into(), messages, options, ..Default::default() }
}

fn simple_request() -> ChatRequest {
    request(vec![user("Hi there")], GenerationOptions::default())
}

async fn chat_events(provider: &AnthropicProvider, request: ChatRequest) -> Vec<Result<ChatEvent, ProviderError>> {
    provider.chat(request).await.expect("chat accepted").collect().await
}

/// The deltas of a stream, and how it ended (its last item).
fn split(events: Vec<Result<ChatEvent, ProviderError>>) -> (Vec<String>, Result<Completion, ProviderError>) {
    let mut deltas = Vec::new();
    let mut end = None;
    for event in events {
        assert!(end.is_none(), "an item followed the end of the stream: {event:?}");
        match event {
            Ok(ChatEvent::Delta(text)) => deltas.push(text),
            Ok(ChatEvent::Done(completion)) => end = Some(Ok(*completion)),
            Ok(other) => panic!("a text stream produced {other:?}"),
            Err(err) => end = Some(Err(err)),
        }
    }
    (deltas, end.expect("the stream ended with neither Done nor an error"))
}

#[tokio::test]
async fn streams_deltas_then_done_with_usage_and_sends_the_right_request() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(tokens(&["Te", "al", ", of course."]))).await;
    let req = request(
        vec![
            Message::text(Role::System, "Be terse."),
            user("Name a colour"),
            Message::text(Role::Assistant, "Which kind?"),
            user("Any"),
        ],
        GenerationOptions { temperature: Some(0.5), top_k: Some(40), seed: Some(9), ..Default::default() },
    );
    let (deltas, end) = split(chat_events(&provider(&fake), req).await);

    assert_eq!(deltas, ["Te", "al", ", of course."]);
    let done = end.expect("completed");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.model, MODEL);
    // 2 + 3 + 2 + 1 words in, 3 chunks out.
    assert_eq!(
        done.usage,
        Usage { input_tokens: 8, output_tokens: 3, reasoning_tokens: None, cached_input_tokens: Some(0) }
    );

    assert_eq!(
        fake.chat_requests(),
        [json!({
            "model": MODEL,
            "max_tokens": 4096,
            "system": "Be terse.",
            "messages": [
                {"role": "user", "content": "Name a colour"},
                {"role": "assistant", "content": "Which kind?"},
                {"role": "user", "content": "Any"},
            ],
            "temperature": 0.5,
            "top_k": 40,
            "stream": true,
        })]
    );
    let headers = &fake.request_headers()[0];
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("anthropic-beta").is_none());
    assert_eq!(fake.completed_streams(), 1);
}

#[tokio::test]
async fn configured_version_beta_and_default_max_tokens_are_sent() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = AnthropicProvider::new(AnthropicConfig {
        base_url: format!("{}/v1/", fake.base_url()),
        api_key: Some(Secret::new(KEY)),
        version: "2023-01-01".into(),
        beta: vec!["feature-a".into(), "feature-b".into()],
        default_max_tokens: 77,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let (_, end) = split(chat_events(&provider, simple_request()).await);
    end.expect("completed");
    let headers = &fake.request_headers()[0];
    assert_eq!(headers["anthropic-version"], "2023-01-01");
    assert_eq!(headers["anthropic-beta"], "feature-a,feature-b");
    assert_eq!(fake.chat_requests()[0]["max_tokens"], json!(77));
}

#[tokio::test]
async fn echo_sees_merged_user_turns() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Echo)).await;
    let req = request(vec![user("hello"), user("world")], GenerationOptions::default());
    let (deltas, end) = split(chat_events(&provider(&fake), req).await);
    assert_eq!(deltas.concat(), "You said: hello\n\nworld");
    assert_eq!(end.unwrap().usage.output_tokens, deltas.len() as u32);
    assert_eq!(fake.chat_requests()[0]["messages"], json!([{"role": "user", "content": "hello\n\nworld"}]));
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless)).await;
    let req = request(vec![user("go")], GenerationOptions { max_tokens: Some(3), ..Default::default() });
    let (deltas, end) = split(chat_events(&provider(&fake), req).await);
    assert_eq!(deltas, ["tok", " tok", " tok"]);
    let done = end.unwrap();
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.usage.output_tokens, 3);
    assert_eq!(fake.chat_requests()[0]["max_tokens"], json!(3));
}

#[tokio::test]
async fn stop_sequences_are_sent_and_end_the_reply() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(tokens(&["a", "bENDc", "d"]))).await;
    let req = request(vec![user("go")], GenerationOptions { stop: vec!["END".into()], ..Default::default() });
    let (deltas, end) = split(chat_events(&provider(&fake), req).await);
    assert_eq!(deltas, ["a", "b"]);
    assert_eq!(end.unwrap().finish_reason, FinishReason::Stop);
    assert_eq!(fake.chat_requests()[0]["stop_sequences"], json!(["END"]));
}

#[tokio::test]
async fn an_error_event_after_text_is_a_mid_stream_failure() {
    let behaviour = Behaviour::ErrorAfter { tokens: 2, message: "boom".into() };
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless).with_behaviour(behaviour)).await;
    let (deltas, end) = split(chat_events(&provider(&fake), simple_request()).await);
    assert_eq!(deltas.len(), 2);
    let Err(ProviderError::MidStream(message)) = end else { panic!("expected MidStream, got {end:?}") };
    assert!(message.contains("boom") && message.contains("api_error"), "{message}");
}

#[tokio::test]
async fn overload_before_any_text_is_overloaded_and_after_text_is_mid_stream() {
    let early = Behaviour::ErrorAfter { tokens: 0, message: OVERLOADED_MESSAGE.into() };
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless).with_behaviour(early)).await;
    let (deltas, end) = split(chat_events(&provider(&fake), simple_request()).await);
    assert!(deltas.is_empty());
    assert!(matches!(&end, Err(ProviderError::Overloaded { .. })), "{end:?}");

    let late = Behaviour::ErrorAfter { tokens: 1, message: OVERLOADED_MESSAGE.into() };
    fake.add_model(FakeModel::new(MODEL).with_reply(Reply::Endless).with_behaviour(late));
    let (deltas, end) = split(chat_events(&provider(&fake), simple_request()).await);
    assert_eq!(deltas.len(), 1);
    assert!(matches!(&end, Err(ProviderError::MidStream(m)) if m.contains("overloaded_error")), "{end:?}");
}

#[tokio::test]
async fn a_stream_without_message_stop_is_interrupted() {
    let behaviour = Behaviour::EndWithoutDone { tokens: 1 };
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless).with_behaviour(behaviour)).await;
    let (deltas, end) = split(chat_events(&provider(&fake), simple_request()).await);
    assert_eq!(deltas, ["tok"]);
    let Err(ProviderError::Interrupted(message)) = end else { panic!("expected Interrupted, got {end:?}") };
    assert!(message.contains("message_stop") && message.contains(&fake.base_url()), "{message}");
}

#[tokio::test]
async fn a_dropped_connection_is_interrupted() {
    let behaviour = Behaviour::DropConnectionAfter { tokens: 2 };
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless).with_behaviour(behaviour)).await;
    let (deltas, end) = split(chat_events(&provider(&fake), simple_request()).await);
    assert_eq!(deltas.len(), 2);
    assert!(matches!(&end, Err(ProviderError::Interrupted(_))), "{end:?}");
}

#[tokio::test]
async fn http_errors_map_by_status_without_the_key() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = provider(&fake);
    type Check = fn(&ProviderError) -> bool;
    let cases: [(u16, Check); 5] = [
        (400, |e| matches!(e, ProviderError::InvalidRequest(_))),
        (413, |e| matches!(e, ProviderError::InvalidRequest(_))),
        (403, |e| matches!(e, ProviderError::Unauthorized(_))),
        (500, |e| matches!(e, ProviderError::Upstream { status: 500, .. })),
        (504, |e| matches!(e, ProviderError::Upstream { status: 504, .. })),
    ];
    for (status, expected) in cases {
        // The scripted message echoes the whole key, which the adapter must scrub.
        let message = format!("kaput {status} for key {KEY}");
        fake.add_model(FakeModel::new(MODEL).with_behaviour(Behaviour::HttpError { status, message }));
        let err = provider.chat(simple_request()).await.err().expect("refused");
        assert!(expected(&err), "{status}: {err:?}");
        let text = err.to_string();
        assert!(!text.contains(KEY), "{status}: the key leaked: {text}");
        assert!(text.contains(&format!("kaput {status}")) && text.contains("request-id req_"), "{text}");
    }
}

#[tokio::test]
async fn a_mid_stream_error_never_shows_the_key() {
    let behaviour = Behaviour::ErrorAfter { tokens: 1, message: format!("runner failed for {KEY}") };
    let fake = fake_with(FakeModel::new(MODEL).with_behaviour(behaviour)).await;
    let (_, end) = split(chat_events(&provider(&fake), simple_request()).await);
    let err = end.expect_err("failed");
    assert!(matches!(err, ProviderError::MidStream(_)) && !err.to_string().contains(KEY), "{err}");
}

#[tokio::test]
async fn an_unknown_model_is_model_not_found() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let mut req = simple_request();
    req.model = "claude-nope".into();
    let err = provider(&fake).chat(req).await.err().expect("refused");
    assert_eq!(err, ProviderError::ModelNotFound { model: "claude-nope".into() });
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_then_clear() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    fake.fail_next(1, 429, Some(7));
    let provider = provider(&fake);
    let err = provider.chat(simple_request()).await.err().expect("rate limited");
    let ProviderError::RateLimited { message, retry_after } = &err else { panic!("expected RateLimited, got {err:?}") };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert!(message.contains("rate_limit_error"), "{message}");
    let (_, end) = split(chat_events(&provider, simple_request()).await);
    end.expect("the next request goes through");
}

#[tokio::test]
async fn overload_is_overloaded_with_retry_after() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = provider(&fake);
    fake.set_busy(true);
    let err = provider.chat(simple_request()).await.err().expect("busy");
    let ProviderError::Overloaded { message, retry_after: None } = &err else { panic!("expected Overloaded: {err:?}") };
    assert!(message.contains(OVERLOADED_MESSAGE) && message.contains("overloaded_error"), "{message}");
    fake.set_busy(false);

    for status in [529, 503] {
        fake.fail_next(1, status, Some(2));
        let err = provider.chat(simple_request()).await.err().expect("overloaded");
        assert!(matches!(err, ProviderError::Overloaded { .. }), "{status}: {err:?}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)), "{status}");
    }
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_unauthorized_without_the_key() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let wrong = "sk-ant-api03-wrong-key-999999999999";
    let err = provider_with_key(&fake, Some(wrong)).chat(simple_request()).await.err().expect("refused");
    let ProviderError::Unauthorized(message) = &err else { panic!("expected Unauthorized, got {err:?}") };
    assert!(message.contains("invalid x-api-key") && message.contains("authentication_error"), "{message}");
    assert!(!err.to_string().contains(wrong), "the key leaked: {err}");
    assert_eq!(fake.request_headers()[0]["x-api-key"], wrong);

    let err = provider_with_key(&fake, None).health().await.expect_err("refused");
    let ProviderError::Unauthorized(message) = &err else { panic!("expected Unauthorized, got {err:?}") };
    assert!(message.contains("no api_key is configured"), "{message}");
}

#[tokio::test]
async fn dropping_the_stream_disconnects_from_the_upstream() {
    let model = FakeModel::new(MODEL).with_reply(Reply::Endless).with_token_delay(Duration::from_millis(5));
    let fake = fake_with(model).await;
    let mut stream = provider(&fake).chat(simple_request()).await.expect("accepted");
    for _ in 0..2 {
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Delta(_)))));
    }
    assert_eq!(fake.active_streams(), 1);
    drop(stream);
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await, "the fake never saw the disconnect");
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.completed_streams(), 0);
}

#[tokio::test]
async fn refused_requests_are_not_sent() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = provider(&fake);
    let hot = request(vec![user("x")], GenerationOptions { temperature: Some(1.5), ..Default::default() });
    assert!(matches!(provider.chat(hot).await, Err(ProviderError::InvalidRequest(_))));
    let assistant_first =
        request(vec![Message::text(Role::Assistant, "Hello"), user("Hi")], GenerationOptions::default());
    assert!(matches!(provider.chat(assistant_first).await, Err(ProviderError::InvalidRequest(_))));
    assert!(fake.chat_requests().is_empty());
}

#[tokio::test]
async fn models_are_listed_described_and_health_checked() {
    let fake = FakeAnthropic::start().await.with_api_key(KEY);
    for name in ["claude-a-1-20250101", "claude-b-2", "other-model"] {
        fake.add_model(FakeModel::new(name));
    }
    let provider = provider(&fake);

    let models = provider.list_models().await.unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    // Newest first, as the API lists them.
    assert_eq!(names, ["other-model", "claude-b-2", "claude-a-1-20250101"]);
    assert_eq!(models[1].family, "claude");
    assert_eq!(models[0].family, "");
    let detailed = provider.models().await.unwrap();
    assert_eq!(detailed[2].display_name, "Claude A 1");
    assert!(detailed[2].created_at.ends_with('Z'), "{:?}", detailed[2]);

    let described = provider.describe_model("claude-b-2").await.unwrap();
    assert_eq!(described.name, "claude-b-2");
    assert_eq!(described.family, "claude");
    assert_eq!(
        provider.describe_model("claude-zzz").await,
        Err(ProviderError::ModelNotFound { model: "claude-zzz".into() })
    );
    assert_eq!(provider.health().await.unwrap().version, None);

    let wrong = provider_with_key(&fake, Some("sk-ant-api03-not-the-key"));
    assert!(matches!(wrong.list_models().await, Err(ProviderError::Unauthorized(_))));
    assert!(matches!(wrong.health().await, Err(ProviderError::Unauthorized(_))));
}

#[tokio::test]
async fn the_model_list_follows_pagination() {
    let fake = FakeAnthropic::start().await;
    // More than one page of the API's maximum size (1000).
    for i in 0..1005 {
        fake.add_model(FakeModel::new(&format!("claude-{i:04}")));
    }
    let models = provider_with_key(&fake, None).list_models().await.unwrap();
    assert_eq!(models.len(), 1005);
    assert_eq!(models[0].name, "claude-1004");
    assert_eq!(models[1004].name, "claude-0000");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unreachable() {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let provider = AnthropicProvider::new(AnthropicConfig {
        base_url: base_url.clone(),
        api_key: Some(Secret::new(KEY)),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap();
    let err = provider.chat(simple_request()).await.err().expect("unreachable");
    let ProviderError::Unreachable(message) = &err else { panic!("expected Unreachable, got {err:?}") };
    assert!(message.contains(&base_url), "{message}");
    assert!(matches!(provider.health().await, Err(ProviderError::Unreachable(_))));
}

#[tokio::test]
async fn describing_an_empty_name_is_refused_locally() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    // `GET /v1/models/` would be the listing, not a model.
    let err = provider(&fake).describe_model("").await.expect_err("refused");
    assert!(matches!(err, ProviderError::InvalidRequest(_)), "{err:?}");
}
