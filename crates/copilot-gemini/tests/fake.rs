//! End-to-end checks of `GeminiProvider` against `FakeGemini`, a loopback server speaking the
//! Gemini wire protocol: what goes on the wire, how streams and their failures come out, error
//! mapping, key handling, cancellation, and the model endpoints.

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeGemini, FakeModel, Reply};
use copilot_gemini::{GeminiAuth, GeminiConfig, GeminiProvider, SafetySetting};
use copilot_provider::{
    ChatEvent, ChatRequest, ChatStream, Completion, FinishReason, GenerationOptions, Message, Provider, ProviderError,
    Role, Secret, Usage,
};
use futures::StreamExt;
use serde_json::json;

const KEY: &str = "AIzaSyFake-test-key-0123456789";
const MODEL: &str = "gemini-test";

async fn fake_with(model: FakeModel) -> FakeGemini {
    let fake = FakeGemini::start().await.with_api_key(KEY);
    fake.add_model(model);
    fake
}

fn config(base_url: String, key: Option<&str>) -> GeminiConfig {
    GeminiConfig {
        base_url,
        auth: key.map_or(GeminiAuth::None, |key| GeminiAuth::ApiKey(Secret::new(key))),
        connect_timeout: Duration::from_secs(2),
        safety_settings: Vec::new(),
    }
}

fn provider(fake: &FakeGemini) -> GeminiProvider {
    GeminiProvider::new(config(fake.base_url(), Some(KEY))).unwrap()
}

fn user(content: &str) -> ChatRequest {
    chat_request(MODEL, &[(Role::User, content)], GenerationOptions::default())
}

fn chat_request(model: &str, messages: &[(Role, &str)], options: GenerationOptions) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: messages.iter().map(|(role, content)| Message::text(*role, *content)).collect(),
        options,
        ..Default::default()
    }
}

fn tokens(tokens: &[&str]) -> Reply {
    Reply::Tokens(tokens.iter().map(|t| (*t).to_owned()).collect())
}

/// The deltas of a stream and how it ended; checks that nothing follows the last item.
async fn collect(mut stream: ChatStream) -> (Vec<String>, Result<Completion, ProviderError>) {
    let mut deltas = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("stream stalled") {
            Some(Ok(ChatEvent::Delta(text))) => {
                assert!(!text.is_empty(), "empty delta");
                deltas.push(text);
            }
            Some(Ok(ChatEvent::Done(completion))) => break Ok(*completion),
            Some(Ok(other)) => panic!("a text stream produced {other:?}"),
            Some(Err(err)) => break Err(err),
            None => panic!("stream ended without Done or an error"),
        }
    };
    assert!(stream.next().await.is_none(), "items after the end of the stream");
    (deltas, outcome)
}

async fn chat(provider: &GeminiProvider, request: ChatRequest) -> (Vec<String>, Result<Completion, ProviderError>) {
    collect(provider.chat(request).await.expect("chat accepted")).await
}

#[tokio::test]
async fn streams_deltas_then_done_with_usage_and_model() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(tokens(&["Te", "al", "."]))).await;
    let provider = provider(&fake);
    let request = chat_request(
        MODEL,
        &[(Role::System, "Be terse."), (Role::User, "Name a colour")],
        GenerationOptions::default(),
    );

    let (deltas, outcome) = chat(&provider, request).await;
    assert_eq!(deltas, ["Te", "al", "."]);
    let done = outcome.unwrap();
    assert!(done.response_id.as_deref().is_some_and(|id| id.starts_with("fake-")), "{done:?}");
    assert_eq!(
        done,
        Completion {
            finish_reason: FinishReason::Stop,
            model: MODEL.into(),
            usage: Usage { input_tokens: 5, output_tokens: 3, ..Default::default() },
            timings: Default::default(),
            response_id: done.response_id.clone(),
        }
    );
    assert_eq!(fake.completed_streams(), 1);
    assert_eq!(fake.active_streams(), 0);

    // Unset options and safety settings are left out; system text goes to systemInstruction.
    assert_eq!(
        fake.chat_requests(),
        [json!({
            "contents": [{"role": "user", "parts": [{"text": "Name a colour"}]}],
            "systemInstruction": {"parts": [{"text": "Be terse."}]},
        })]
    );
    // The key goes in the header, never in the URL.
    let headers = &fake.request_headers()[0];
    assert_eq!(headers.get("x-goog-api-key").unwrap(), KEY);
    assert_eq!(fake.request_uris(), ["/v1beta/models/gemini-test:streamGenerateContent?alt=sse"]);
}

#[tokio::test]
async fn turns_merge_and_echo_reaches_the_model() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = provider(&fake);
    let request = chat_request(
        MODEL,
        &[(Role::User, "hello there"), (Role::User, "anyone?"), (Role::Assistant, "Hi."), (Role::User, "how are you")],
        GenerationOptions::default(),
    );
    let (deltas, outcome) = chat(&provider, request).await;
    assert_eq!(deltas.concat(), "You said: how are you");
    assert_eq!(deltas.len(), 5, "{deltas:?}");
    let completion = outcome.unwrap();
    assert_eq!(completion.usage, Usage { input_tokens: 7, output_tokens: 5, ..Default::default() });
    assert_eq!(
        fake.chat_requests()[0]["contents"],
        json!([
            {"role": "user", "parts": [{"text": "hello there"}, {"text": "anyone?"}]},
            {"role": "model", "parts": [{"text": "Hi."}]},
            {"role": "user", "parts": [{"text": "how are you"}]},
        ])
    );
}

#[tokio::test]
async fn options_and_safety_settings_reach_the_wire() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(tokens(&["ok"]))).await;
    let mut config = config(fake.base_url(), Some(KEY));
    config.safety_settings = vec![
        SafetySetting { category: "HARM_CATEGORY_HARASSMENT".into(), threshold: "BLOCK_ONLY_HIGH".into() },
        SafetySetting { category: "HARM_CATEGORY_DANGEROUS_CONTENT".into(), threshold: "OFF".into() },
    ];
    let provider = GeminiProvider::new(config).unwrap();
    let options = GenerationOptions {
        temperature: Some(0.5),
        max_tokens: Some(64),
        top_p: Some(0.25),
        top_k: Some(40),
        stop: vec!["END".into(), "\n\n".into()],
        // Beyond int32: folded, so Gemini (and the fake) accept it.
        seed: Some((1 << 31) + 42),
    };
    let (deltas, outcome) = chat(&provider, chat_request(MODEL, &[(Role::User, "hi")], options)).await;
    assert_eq!(deltas, ["ok"]);
    assert_eq!(outcome.unwrap().finish_reason, FinishReason::Stop);
    let body = &fake.chat_requests()[0];
    assert_eq!(
        body["generationConfig"],
        json!({"temperature": 0.5, "topP": 0.25, "topK": 40, "maxOutputTokens": 64, "stopSequences": ["END", "\n\n"], "seed": 42})
    );
    assert_eq!(
        body["safetySettings"],
        json!([
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "OFF"},
        ])
    );
}

#[tokio::test]
async fn too_many_stop_sequences_are_refused_before_sending() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let options = GenerationOptions { stop: (0..6).map(|i| format!("s{i}")).collect(), ..Default::default() };
    let err = provider(&fake).chat(chat_request(MODEL, &[(Role::User, "hi")], options)).await.err().unwrap();
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("at most 5")), "{err:?}");
    assert!(fake.chat_requests().is_empty());
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless)).await;
    let options = GenerationOptions { max_tokens: Some(4), ..Default::default() };
    let (deltas, outcome) = chat(&provider(&fake), chat_request(MODEL, &[(Role::User, "go on")], options)).await;
    assert_eq!(deltas, ["tok", " tok", " tok", " tok"]);
    let completion = outcome.unwrap();
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.usage, Usage { input_tokens: 2, output_tokens: 4, ..Default::default() });
}

#[tokio::test]
async fn a_mid_stream_error_is_mid_stream() {
    let model = FakeModel::new(MODEL)
        .with_reply(tokens(&["a", "b", "c", "d"]))
        .with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "Internal error encountered.".into() });
    let fake = fake_with(model).await;
    let (deltas, outcome) = chat(&provider(&fake), user("hi")).await;
    assert_eq!(deltas, ["a", "b"]);
    assert_eq!(outcome, Err(ProviderError::MidStream("INTERNAL: Internal error encountered.".into())));
}

#[tokio::test]
async fn a_stream_without_finish_reason_is_interrupted() {
    let model = FakeModel::new(MODEL)
        .with_reply(tokens(&["a", "b", "c"]))
        .with_behaviour(Behaviour::EndWithoutDone { tokens: 2 });
    let fake = fake_with(model).await;
    let (deltas, outcome) = chat(&provider(&fake), user("hi")).await;
    assert_eq!(deltas, ["a", "b"]);
    assert!(matches!(&outcome, Err(ProviderError::Interrupted(m)) if m.contains("finishReason")), "{outcome:?}");

    // Also when the reply runs out before the cut: still no finishReason.
    let model =
        FakeModel::new(MODEL).with_reply(tokens(&["x"])).with_behaviour(Behaviour::EndWithoutDone { tokens: 5 });
    fake.add_model(model);
    let (deltas, outcome) = chat(&provider(&fake), user("hi")).await;
    assert_eq!(deltas, ["x"]);
    assert!(matches!(outcome, Err(ProviderError::Interrupted(_))), "{outcome:?}");
}

#[tokio::test]
async fn a_dropped_connection_is_interrupted() {
    let model = FakeModel::new(MODEL)
        .with_reply(tokens(&["a", "b", "c"]))
        .with_behaviour(Behaviour::DropConnectionAfter { tokens: 1 });
    let fake = fake_with(model).await;
    let provider = provider(&fake);
    let (deltas, outcome) = chat(&provider, user("hi")).await;
    assert_eq!(deltas, ["a"]);
    assert!(matches!(&outcome, Err(ProviderError::Interrupted(m)) if m.contains(provider.base_url())), "{outcome:?}");
}

#[tokio::test]
async fn http_errors_map_by_status() {
    let fake =
        fake_with(FakeModel::new(MODEL).with_behaviour(Behaviour::HttpError { status: 500, message: "kaput".into() }))
            .await;
    let provider = provider(&fake);
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert_eq!(err, ProviderError::Upstream { status: 500, message: "INTERNAL: kaput".into() });

    fake.add_model(FakeModel::new(MODEL).with_behaviour(Behaviour::HttpError { status: 400, message: "bad".into() }));
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert_eq!(err, ProviderError::InvalidRequest("INVALID_ARGUMENT: bad".into()));

    // A 429 without RetryInfo or Retry-After has no hint.
    fake.add_model(FakeModel::new(MODEL).with_behaviour(Behaviour::HttpError { status: 429, message: "slow".into() }));
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert_eq!(err, ProviderError::RateLimited { message: "RESOURCE_EXHAUSTED: slow".into(), retry_after: None });
}

#[tokio::test]
async fn unknown_models_are_not_found_and_embedding_models_cannot_chat() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let mut embedding = FakeModel::new("text-embedding-004");
    embedding.capabilities = vec!["embedding".into()];
    fake.add_model(embedding);
    let provider = provider(&fake);
    let chat = |model: &str| chat_request(model, &[(Role::User, "hi")], Default::default());
    let err = provider.chat(chat("gemini-nope")).await.err().unwrap();
    assert_eq!(err, ProviderError::ModelNotFound { model: "gemini-nope".into() });
    let err = provider.chat(chat("text-embedding-004")).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Unsupported { feature: copilot_provider::Feature::Completion, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn rate_limits_carry_the_retry_delay() {
    let fake = fake_with(FakeModel::new(MODEL).with_reply(tokens(&["ok"]))).await;
    let provider = provider(&fake);
    fake.fail_next(1, 429, Some(7));
    let err = provider.chat(user("hi")).await.err().unwrap();
    let ProviderError::RateLimited { message, retry_after } = &err else { panic!("{err:?}") };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert!(message.starts_with("RESOURCE_EXHAUSTED: You exceeded your current quota"), "{message}");
    // Only the next request failed.
    let (deltas, outcome) = chat(&provider, user("hi")).await;
    assert_eq!(deltas, ["ok"]);
    assert!(outcome.is_ok());
}

#[tokio::test]
async fn overload_is_overloaded() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = provider(&fake);
    fake.set_busy(true);
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert_eq!(
        err,
        ProviderError::Overloaded {
            message: "UNAVAILABLE: The model is overloaded. Please try again later.".into(),
            retry_after: None
        }
    );
    fake.set_busy(false);
    fake.fail_next(1, 503, Some(3));
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert!(matches!(err, ProviderError::Overloaded { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_never_shown() {
    let fake = FakeGemini::start().await.with_api_key("the-right-key");
    fake.add_model(FakeModel::new(MODEL));

    // The fake echoes the presented key, so the redaction below is really tested.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let raw = reqwest::Client::new()
        .get(format!("{}/v1beta/models", fake.base_url()))
        .header("x-goog-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.text().await.unwrap().contains(KEY));

    let provider = provider(&fake);
    let errors = [
        provider.chat(user("hi")).await.err().unwrap(),
        provider.list_models().await.unwrap_err(),
        provider.describe_model(MODEL).await.unwrap_err(),
        provider.health().await.unwrap_err(),
    ];
    for err in errors {
        let ProviderError::Unauthorized(message) = &err else { panic!("{err:?}") };
        assert!(message.contains("API key not valid"), "{message}");
        assert!(!err.to_string().contains(KEY), "{err}");
        assert!(!format!("{err:?}").contains(KEY), "{err:?}");
    }

    // No key at all: Google's 403.
    let keyless = GeminiProvider::new(config(fake.base_url(), None)).unwrap();
    let err = keyless.chat(user("hi")).await.err().unwrap();
    assert!(matches!(&err, ProviderError::Unauthorized(m) if m.starts_with("PERMISSION_DENIED")), "{err:?}");
}

#[tokio::test]
async fn a_blocked_prompt_ends_as_content_filter() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    fake.set_block_prompt(true);
    let (deltas, outcome) = chat(&provider(&fake), user("something bad here")).await;
    assert!(deltas.is_empty(), "{deltas:?}");
    let completion = outcome.unwrap();
    assert_eq!(completion.finish_reason, FinishReason::ContentFilter);
    assert_eq!(completion.usage, Usage { input_tokens: 3, output_tokens: 0, ..Default::default() });
    assert_eq!(completion.model, MODEL);
}

#[tokio::test]
async fn dropping_the_stream_disconnects_from_the_upstream() {
    let fake =
        fake_with(FakeModel::new(MODEL).with_reply(Reply::Endless).with_token_delay(Duration::from_millis(10))).await;
    let provider = provider(&fake);
    let mut stream = provider.chat(user("hi")).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Delta(_)))));
    }
    assert_eq!(fake.active_streams(), 1);
    drop(stream);
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await, "the fake never saw the client go");
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.completed_streams(), 0);
}

#[tokio::test]
async fn giving_up_during_the_header_delay_disconnects_too() {
    let fake = fake_with(FakeModel::new(MODEL).with_header_delay(Duration::from_secs(30))).await;
    let provider = provider(&fake);
    let attempt = tokio::time::timeout(Duration::from_millis(200), provider.chat(user("hi"))).await;
    assert!(attempt.is_err(), "chat returned before the headers");
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await);
}

fn model_named(name: &str, context_length: u32, capabilities: &[&str]) -> FakeModel {
    let mut model = FakeModel::new(name);
    model.context_length = context_length;
    model.capabilities = capabilities.iter().map(|c| (*c).to_owned()).collect();
    model
}

#[tokio::test]
async fn list_models_follows_pages_and_keeps_chat_and_embedding_models() {
    let fake = FakeGemini::start().await.with_api_key(KEY);
    fake.add_model(model_named("gemini-2.0-flash", 1_048_576, &["completion"]));
    fake.add_model(model_named("text-embedding-004", 2048, &["embedding"]));
    fake.add_model(model_named("gemini-2.5-pro", 1_048_576, &["completion", "thinking"]));
    fake.add_model(model_named("gemma-3-27b-it", 131_072, &["completion"]));
    fake.add_model(model_named("gemini-2.5-flash-lite", 1_000_000, &["completion"]));
    // Two per page: three requests, each with a page token a client must escape.
    fake.set_page_size_cap(2);

    let models = provider(&fake).list_models().await.unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["gemini-2.0-flash", "text-embedding-004", "gemini-2.5-pro", "gemma-3-27b-it", "gemini-2.5-flash-lite"]
    );
    assert_eq!(models[0].context_length, Some(1_048_576));
    assert_eq!(models[0].family, "gemini");
    assert_eq!(models[0].embedding_length, None);
    // What every Gemini model does (a listing does not say), and thinking where it says so.
    assert_eq!(models[0].capabilities, ["completion", "tools", "json_object", "json_schema", "vision"]);
    // `embedContent` only: an embedding model, its vector length from its name.
    assert_eq!(models[1].capabilities, ["embedding"]);
    assert_eq!(models[1].embedding_length, Some(768));
    assert_eq!(models[1].context_length, Some(2048));
    assert_eq!(models[2].capabilities, ["completion", "tools", "json_object", "json_schema", "vision", "thinking"]);
    assert_eq!(models[3].parameter_size, "27B");
    assert_eq!(models[3].capabilities, ["completion"]);
    assert_eq!(models[4].context_length, Some(1_000_000));
}

#[tokio::test]
async fn describe_and_health() {
    let fake = FakeGemini::start().await.with_api_key(KEY);
    fake.add_model(model_named("gemini-2.5-pro", 1_048_576, &["completion", "thinking"]));
    let provider = provider(&fake);

    let info = provider.describe_model("gemini-2.5-pro").await.unwrap();
    assert_eq!(info.name, "gemini-2.5-pro");
    assert_eq!(info.context_length, Some(1_048_576));
    assert_eq!(info.capabilities, ["completion", "tools", "json_object", "json_schema", "vision", "thinking"]);
    // The `models/` form names the same model.
    assert_eq!(provider.describe_model("models/gemini-2.5-pro").await.unwrap(), info);

    let err = provider.describe_model("gemini-nope").await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "gemini-nope".into() });

    assert_eq!(provider.health().await.unwrap().version, None);
}

#[tokio::test]
async fn a_wrong_base_url_is_not_a_missing_model() {
    let fake = fake_with(FakeModel::new(MODEL)).await;
    let provider = GeminiProvider::new(config(format!("{}/wrong/prefix", fake.base_url()), Some(KEY))).unwrap();
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert_eq!(err, ProviderError::Upstream { status: 404, message: "Error 404 (Not Found)!!1".into() });
    let err = provider.health().await.unwrap_err();
    assert!(matches!(err, ProviderError::Upstream { status: 404, .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let provider = GeminiProvider::new(config(base_url.clone(), Some(KEY))).unwrap();
    let err = provider.chat(user("hi")).await.err().unwrap();
    assert!(matches!(&err, ProviderError::Unreachable(m) if m.contains(&base_url)), "{err:?}");
    let err = provider.health().await.unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable(_)), "{err:?}");
}
