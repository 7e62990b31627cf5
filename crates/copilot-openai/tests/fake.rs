//! `OpenAiProvider` against the fake OpenAI-compatible server, in every flavour the fake plays:
//! what goes on the wire, how each server's way of streaming and failing comes out, and the
//! mapping of refusals to provider errors.

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeModel, FakeOpenAi, Flavour, Reply};
use copilot_openai::{MaxTokensField, OpenAiConfig, OpenAiProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, Completion, FinishReason, GenerationOptions, Message, Provider, ProviderError, Role,
    Secret, Usage,
};
use futures::StreamExt;
use serde_json::json;

const ALL_FLAVOURS: [Flavour; 6] =
    [Flavour::OpenAi, Flavour::NoUsage, Flavour::LlamaCpp, Flavour::LlamaCppOldErrors, Flavour::Vllm, Flavour::Ollama];

fn tokens(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

async fn fake_with(model: FakeModel) -> FakeOpenAi {
    let fake = FakeOpenAi::start().await;
    fake.add_model(model);
    fake
}

fn config(fake: &FakeOpenAi) -> OpenAiConfig {
    OpenAiConfig { base_url: fake.base_url(), connect_timeout: Duration::from_secs(2), ..Default::default() }
}

fn provider(config: OpenAiConfig) -> OpenAiProvider {
    OpenAiProvider::new(config).expect("valid config")
}

fn request(model: &str, user: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message::text(Role::System, "Be brief."), Message::text(Role::User, user)],
        options: GenerationOptions::default(),
        ..Default::default()
    }
}

/// Reads a stream to its end: the text, and how it ended. Checks that `Done` is last.
async fn collect(provider: &OpenAiProvider, request: ChatRequest) -> (String, Result<Completion, ProviderError>) {
    let mut stream = match provider.chat(request).await {
        Ok(stream) => stream,
        Err(err) => return (String::new(), Err(err)),
    };
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ChatEvent::Delta(delta)) => {
                assert!(!delta.is_empty(), "empty delta");
                text.push_str(&delta);
            }
            Ok(ChatEvent::Done(completion)) => {
                assert!(stream.next().await.is_none(), "items after Done");
                return (text, Ok(*completion));
            }
            Ok(other) => panic!("a text stream produced {other:?}"),
            Err(err) => {
                assert!(stream.next().await.is_none(), "items after an error");
                return (text, Err(err));
            }
        }
    }
    panic!("the stream ended without Done or an error (text so far: {text:?})");
}

#[tokio::test]
async fn streams_text_usage_and_the_answering_model() {
    let fake = fake_with(FakeModel::new("gpt-4o-mini-2024-07-18").with_reply(tokens(&["Hel", "lo", "!"]))).await;
    fake.add_alias("gpt-4o-mini", "gpt-4o-mini-2024-07-18");
    let provider = provider(config(&fake));

    let (text, completion) = collect(&provider, request("gpt-4o-mini", "hi there")).await;
    let completion = completion.unwrap();
    assert_eq!(text, "Hello!");
    assert_eq!(completion.finish_reason, FinishReason::Stop);
    // The chunks name the dated snapshot that answered, not the alias asked for.
    assert_eq!(completion.model, "gpt-4o-mini-2024-07-18");
    // prompt_tokens is the fake's word count over all messages: "Be brief." + "hi there".
    assert_eq!(
        completion.usage,
        Usage { input_tokens: 4, output_tokens: 3, reasoning_tokens: Some(0), cached_input_tokens: Some(0) }
    );

    let sent = &fake.chat_requests()[0];
    assert_eq!(
        sent,
        &json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    // No key configured: no Authorization header at all.
    let headers = &fake.request_headers()[0];
    assert!(headers.get("authorization").is_none());
    assert!(headers.get("openai-organization").is_none());
    assert_eq!(headers["accept"], "text/event-stream");
    assert_eq!(fake.completed_streams(), 1);
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn every_flavour_completes_with_the_same_text() {
    for flavour in ALL_FLAVOURS {
        let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["a", " b", " c"]))).await;
        fake.set_flavour(flavour);
        let provider = provider(config(&fake));
        let (text, completion) = collect(&provider, request("m", "x")).await;
        let completion = completion.unwrap_or_else(|e| panic!("{flavour:?}: {e}"));
        assert_eq!(text, "a b c", "{flavour:?}");
        assert_eq!(completion.finish_reason, FinishReason::Stop, "{flavour:?}");
        assert_eq!(completion.model, "m", "{flavour:?}");
        let expected_usage = match flavour {
            // Never sends usage: zeros, and no failure.
            Flavour::NoUsage => Usage::default(),
            // OpenAI details the cached and reasoning tokens, llama.cpp the cached ones.
            Flavour::OpenAi => {
                Usage { input_tokens: 3, output_tokens: 3, reasoning_tokens: Some(0), cached_input_tokens: Some(0) }
            }
            Flavour::LlamaCpp | Flavour::LlamaCppOldErrors => {
                Usage { input_tokens: 3, output_tokens: 3, cached_input_tokens: Some(0), ..Default::default() }
            }
            _ => Usage { input_tokens: 3, output_tokens: 3, ..Default::default() },
        };
        assert_eq!(completion.usage, expected_usage, "{flavour:?}");
        // llama.cpp reports its own timings on the finish chunk.
        let has_timings = completion.timings.generation.is_some();
        assert_eq!(has_timings, matches!(flavour, Flavour::LlamaCpp | Flavour::LlamaCppOldErrors), "{flavour:?}");
    }
}

#[tokio::test]
async fn without_include_usage_no_stream_options_are_sent() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["ok"]))).await;
    // A server that predates stream_options refuses the field outright.
    fake.set_reject_stream_options(true);
    let (_, refused) = collect(&provider(config(&fake)), request("m", "x")).await;
    let Err(ProviderError::InvalidRequest(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("extra_forbidden"), "{message}");

    let provider = provider(OpenAiConfig { include_usage: false, ..config(&fake) });
    let (text, completion) = collect(&provider, request("m", "x")).await;
    assert_eq!(text, "ok");
    assert_eq!(completion.unwrap().usage, Usage::default());
    assert!(fake.chat_requests()[1].get("stream_options").is_none());
}

#[tokio::test]
async fn the_api_key_and_organization_go_in_headers() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["ok"]))).await;
    fake.set_api_key(Some("sk-test-0123456789abcdef"));
    let provider = provider(OpenAiConfig {
        api_key: Some(Secret::new("sk-test-0123456789abcdef")),
        organization: Some("org-123".into()),
        ..config(&fake)
    });
    let (text, completion) = collect(&provider, request("m", "x")).await;
    completion.unwrap();
    assert_eq!(text, "ok");
    let headers = &fake.request_headers()[0];
    assert_eq!(headers["authorization"], "Bearer sk-test-0123456789abcdef");
    assert_eq!(headers["openai-organization"], "org-123");
    assert!(provider.health().await.is_ok());
    assert_eq!(provider.list_models().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_unauthorized() {
    let fake = fake_with(FakeModel::new("m")).await;
    fake.set_api_key(Some("sk-right-0123456789"));

    let wrong = provider(OpenAiConfig { api_key: Some(Secret::new("sk-wrong-0123456789")), ..config(&fake) });
    let (_, result) = collect(&wrong, request("m", "x")).await;
    let Err(ProviderError::Unauthorized(message)) = result else { panic!("{result:?}") };
    assert!(message.starts_with("Incorrect API key provided: sk-wr****6789."), "{message}");
    assert!(!message.contains("sk-wrong-0123456789"));
    assert!(matches!(wrong.health().await, Err(ProviderError::Unauthorized(_))));
    assert!(matches!(wrong.list_models().await, Err(ProviderError::Unauthorized(_))));

    let missing = provider(config(&fake));
    let (_, result) = collect(&missing, request("m", "x")).await;
    let Err(ProviderError::Unauthorized(message)) = result else { panic!("{result:?}") };
    assert!(message.starts_with("You didn't provide an API key"), "{message}");

    // llama.cpp and vLLM word it their own way; the mapping is the same.
    for flavour in [Flavour::LlamaCpp, Flavour::Vllm] {
        fake.set_flavour(flavour);
        let (_, result) = collect(&wrong, request("m", "x")).await;
        assert!(matches!(result, Err(ProviderError::Unauthorized(_))), "{flavour:?}: {result:?}");
    }
}

#[tokio::test]
async fn the_token_limit_field_is_configurable() {
    let fake = fake_with(FakeModel::new("o4-mini").with_reply(Reply::Endless)).await;
    fake.set_require_max_completion_tokens(true);
    let mut limited = request("o4-mini", "go");
    limited.options.max_tokens = Some(3);

    // A reasoning model refuses the old field...
    let (_, refused) = collect(&provider(config(&fake)), limited.clone()).await;
    let Err(ProviderError::InvalidRequest(message)) = refused else { panic!("{refused:?}") };
    assert!(message.contains("max_completion_tokens"), "{message}");

    // ...and takes the new one; the limit is reached: Length.
    let provider = provider(OpenAiConfig { max_tokens_field: MaxTokensField::MaxCompletionTokens, ..config(&fake) });
    let (text, completion) = collect(&provider, limited).await;
    let completion = completion.unwrap();
    assert_eq!(text, "tok tok tok");
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.usage.output_tokens, 3);
    let sent = &fake.chat_requests()[1];
    assert_eq!(sent["max_completion_tokens"], 3);
    assert!(sent.get("max_tokens").is_none());
}

#[tokio::test]
async fn top_k_is_sent_only_when_allowed() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["ok"]))).await;
    let mut sampled = request("m", "x");
    sampled.options = GenerationOptions {
        temperature: Some(0.2),
        top_p: Some(0.9),
        top_k: Some(40),
        seed: Some(7),
        ..Default::default()
    };
    sampled.options.stop = vec!["\n\n".into()];

    // Default: top_k left out, so hosted OpenAI accepts the request.
    let (_, completion) = collect(&provider(config(&fake)), sampled.clone()).await;
    completion.unwrap();
    let sent = &fake.chat_requests()[0];
    assert!(sent.get("top_k").is_none());
    assert_eq!(sent["temperature"].as_f64().unwrap() as f32, 0.2);
    assert_eq!(sent["top_p"].as_f64().unwrap() as f32, 0.9);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["stop"], json!(["\n\n"]));

    let with_top_k = provider(OpenAiConfig { send_top_k: true, ..config(&fake) });
    let (_, refused) = collect(&with_top_k, sampled.clone()).await;
    let Err(ProviderError::InvalidRequest(message)) = refused else { panic!("{refused:?}") };
    assert_eq!(message, "Unrecognized request argument supplied: top_k");

    fake.set_flavour(Flavour::Vllm);
    let (_, completion) = collect(&with_top_k, sampled).await;
    completion.unwrap();
    assert_eq!(fake.chat_requests()[2]["top_k"], 40);
}

#[tokio::test]
async fn mid_stream_errors_in_every_form_fail_the_stream() {
    for flavour in ALL_FLAVOURS {
        let script = Behaviour::ErrorAfter { tokens: 2, message: "CUDA out of memory".into() };
        let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["a", "b", "c"])).with_behaviour(script)).await;
        fake.set_flavour(flavour);
        let (text, result) = collect(&provider(config(&fake)), request("m", "x")).await;
        assert_eq!(text, "ab", "{flavour:?}");
        assert_eq!(result, Err(ProviderError::MidStream("CUDA out of memory".into())), "{flavour:?}");
    }
}

#[tokio::test]
async fn a_stream_that_stops_before_finishing_is_interrupted() {
    for flavour in ALL_FLAVOURS {
        let fake = fake_with(
            FakeModel::new("m")
                .with_reply(tokens(&["a", "b", "c"]))
                .with_behaviour(Behaviour::EndWithoutDone { tokens: 1 }),
        )
        .await;
        fake.set_flavour(flavour);
        let (text, result) = collect(&provider(config(&fake)), request("m", "x")).await;
        assert_eq!(text, "a");
        let Err(ProviderError::Interrupted(message)) = result else { panic!("{flavour:?}: {result:?}") };
        assert!(message.contains("no finish_reason, no [DONE]"), "{message}");
    }

    let fake = fake_with(
        FakeModel::new("m")
            .with_reply(tokens(&["a", "b"]))
            .with_behaviour(Behaviour::DropConnectionAfter { tokens: 1 }),
    )
    .await;
    let (text, result) = collect(&provider(config(&fake)), request("m", "x")).await;
    assert_eq!(text, "a");
    assert!(matches!(result, Err(ProviderError::Interrupted(_))), "{result:?}");
}

#[tokio::test]
async fn keep_alive_comments_are_skipped() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["x", "y"]))).await;
    fake.set_keepalive_comments(true);
    let (text, completion) = collect(&provider(config(&fake)), request("m", "q")).await;
    assert_eq!(text, "xy");
    assert_eq!(completion.unwrap().usage.output_tokens, 2);
}

#[tokio::test]
async fn unknown_models_are_not_found() {
    for flavour in [Flavour::OpenAi, Flavour::Vllm, Flavour::Ollama] {
        let fake = fake_with(FakeModel::new("m")).await;
        fake.set_flavour(flavour);
        let provider = provider(config(&fake));
        let (_, result) = collect(&provider, request("nope", "x")).await;
        assert_eq!(result, Err(ProviderError::ModelNotFound { model: "nope".into() }), "{flavour:?}");
        assert_eq!(
            provider.describe_model("nope").await,
            Err(ProviderError::ModelNotFound { model: "nope".into() }),
            "{flavour:?}"
        );
    }
    // A single-model llama.cpp server answers whatever the name, and says which model it is.
    let fake = fake_with(FakeModel::new("qwen2.5-0.5b-instruct-q4_k_m.gguf").with_reply(tokens(&["hi"]))).await;
    fake.set_flavour(Flavour::LlamaCpp);
    let (_, completion) = collect(&provider(config(&fake)), request("anything", "x")).await;
    assert_eq!(completion.unwrap().model, "qwen2.5-0.5b-instruct-q4_k_m.gguf");
}

#[tokio::test]
async fn a_base_url_without_the_version_path_is_explained() {
    for flavour in [Flavour::OpenAi, Flavour::Vllm, Flavour::Ollama] {
        let fake = fake_with(FakeModel::new("m")).await;
        fake.set_flavour(flavour);
        let base_url = fake.base_url().trim_end_matches("/v1").to_owned();
        let provider = provider(OpenAiConfig { base_url: base_url.clone(), ..config(&fake) });
        let (_, result) = collect(&provider, request("m", "x")).await;
        let Err(ProviderError::Upstream { status: 404, message }) = result else { panic!("{flavour:?}: {result:?}") };
        assert!(message.contains(&base_url) && message.contains("/v1"), "{flavour:?}: {message}");
        assert!(matches!(provider.list_models().await, Err(ProviderError::Upstream { status: 404, .. })));
    }
    // llama.cpp serves its API both with and without /v1.
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["ok"]))).await;
    fake.set_flavour(Flavour::LlamaCpp);
    let provider = provider(OpenAiConfig { base_url: fake.base_url().replace("/v1", ""), ..config(&fake) });
    assert_eq!(collect(&provider, request("m", "x")).await.0, "ok");
    assert_eq!(provider.list_models().await.unwrap().len(), 1);
}

#[tokio::test]
async fn quota_rate_limits_and_overload() {
    let fake = fake_with(FakeModel::new("m")).await;
    let provider = provider(config(&fake));

    fake.set_quota_exhausted(true);
    let (_, result) = collect(&provider, request("m", "x")).await;
    let Err(ProviderError::RateLimited { message, retry_after: None }) = result else { panic!("{result:?}") };
    assert!(message.starts_with("You exceeded your current quota"), "{message}");
    fake.set_quota_exhausted(false);

    fake.fail_next(1, 429, Some(7));
    let (_, result) = collect(&provider, request("m", "x")).await;
    let Err(ProviderError::RateLimited { message, retry_after }) = result else { panic!("{result:?}") };
    assert!(message.starts_with("Rate limit reached for m"), "{message}");
    assert_eq!(retry_after, Some(Duration::from_secs(7)));

    fake.fail_next(1, 503, Some(2));
    let (_, result) = collect(&provider, request("m", "x")).await;
    assert_eq!(result.unwrap_err().retry_after(), Some(Duration::from_secs(2)));

    fake.fail_next(1, 500, None);
    let (_, result) = collect(&provider, request("m", "x")).await;
    assert_eq!(result, Err(ProviderError::Upstream { status: 500, message: "scripted failure (500)".into() }));

    // llama.cpp while its model loads.
    fake.set_flavour(Flavour::LlamaCpp);
    fake.set_busy(true);
    let (_, result) = collect(&provider, request("m", "x")).await;
    assert_eq!(result, Err(ProviderError::Overloaded { message: "Loading model".into(), retry_after: None }));
    fake.set_busy(false);

    // And it all recovers.
    let (_, completion) = collect(&provider, request("m", "x")).await;
    completion.unwrap();
}

#[tokio::test]
async fn scripted_http_errors_map_by_status() {
    let fake = FakeOpenAi::start().await;
    let refusing = |status: u16| {
        FakeModel::new("m").with_behaviour(Behaviour::HttpError { status, message: format!("no ({status})") })
    };
    let provider = provider(config(&fake));
    for flavour in ALL_FLAVOURS {
        fake.set_flavour(flavour);
        fake.add_model(refusing(400));
        assert_eq!(
            collect(&provider, request("m", "x")).await.1,
            Err(ProviderError::InvalidRequest("no (400)".into()))
        );
        fake.add_model(refusing(502));
        assert_eq!(
            collect(&provider, request("m", "x")).await.1,
            Err(ProviderError::Upstream { status: 502, message: "no (502)".into() })
        );
    }
}

#[tokio::test]
async fn models_are_listed_with_what_each_server_tells() {
    let fake = FakeOpenAi::start().await;
    let mut llama = FakeModel::new("llama-3.2-3b");
    llama.context_length = 8192;
    fake.add_model(llama);
    fake.add_model(FakeModel::new("qwen"));
    let provider = provider(config(&fake));

    let models = provider.list_models().await.unwrap();
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["llama-3.2-3b", "qwen"]);
    assert_eq!(models[0].context_length, None, "hosted OpenAI says nothing but the id");

    fake.set_flavour(Flavour::Vllm);
    let model = provider.describe_model("llama-3.2-3b").await.unwrap();
    assert_eq!(model.context_length, Some(8192));

    fake.set_flavour(Flavour::LlamaCpp);
    let model = provider.describe_model("llama-3.2-3b").await.unwrap();
    assert_eq!(model.context_length, Some(8192));
    assert_eq!(model.parameter_size, "3.2B");
    assert_eq!(model.size_bytes, Some(2_019_393_189));

    assert_eq!(provider.health().await.unwrap().version, None);
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_request() {
    let fake =
        fake_with(FakeModel::new("m").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(5))).await;
    let provider = provider(config(&fake));
    let mut stream = provider.chat(request("m", "x")).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Delta(_)))));
    }
    drop(stream);
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await, "the fake never saw the client go");
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn connections_are_reused_between_requests() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["a"]))).await;
    let provider = provider(config(&fake));
    for _ in 0..3 {
        collect(&provider, request("m", "x")).await.1.unwrap();
    }
    // Each finished stream read its body to the end, so it could go back to the pool; the fake
    // saw no client give up.
    assert_eq!(fake.completed_streams(), 3);
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn an_unreachable_server_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let provider = provider(OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    let (_, result) = collect(&provider, request("m", "x")).await;
    let Err(ProviderError::Unreachable(message)) = result else { panic!("{result:?}") };
    assert!(message.contains(&format!("127.0.0.1:{port}/v1")), "{message}");
    assert!(matches!(provider.health().await, Err(ProviderError::Unreachable(_))));
}
