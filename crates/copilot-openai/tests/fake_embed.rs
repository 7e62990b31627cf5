//! `OpenAiProvider::embed` against the fake OpenAI-compatible server in its flavours: the body on
//! the wire, base64 and float answers, order by `index`, batch splitting, dimensions, truncation
//! and the refusals that say a model cannot embed.

use std::time::Duration;

use copilot_fakes::{FakeModel, FakeOpenAi, Flavour, fake_embedding};
use copilot_openai::{OpenAiConfig, OpenAiProvider};
use copilot_provider::{EmbedRequest, Feature, Provider, ProviderError};
use serde_json::json;

const ALL_FLAVOURS: [Flavour; 6] =
    [Flavour::OpenAi, Flavour::NoUsage, Flavour::LlamaCpp, Flavour::LlamaCppOldErrors, Flavour::Vllm, Flavour::Ollama];

async fn fake(flavour: Flavour) -> FakeOpenAi {
    let fake = FakeOpenAi::start().await;
    fake.set_flavour(flavour);
    fake.add_model(FakeModel::embedding("embedder", 8));
    fake
}

fn provider(fake: &FakeOpenAi) -> OpenAiProvider {
    let config =
        OpenAiConfig { base_url: fake.base_url(), connect_timeout: Duration::from_secs(2), ..Default::default() };
    OpenAiProvider::new(config).expect("valid config")
}

fn request(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: "embedder".into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn vectors_come_back_in_input_order_in_every_flavour() {
    for flavour in ALL_FLAVOURS {
        let fake = fake(flavour).await;
        let provider = provider(&fake);
        assert!(provider.features().contains(Feature::Embeddings));
        let inputs = ["first text", "the second, longer text", "3"];
        let embeddings = provider.embed(request(&inputs)).await.unwrap_or_else(|err| panic!("{flavour:?}: {err}"));
        let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, 8)).collect();
        assert_eq!(embeddings.vectors, expected, "{flavour:?}");
        assert_eq!(embeddings.model, "embedder");
        assert_eq!(embeddings.input_tokens, Some(2 + 4 + 1), "{flavour:?}");
        let sent = fake.embed_requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0], json!({"model": "embedder", "input": inputs, "encoding_format": "base64"}), "{flavour:?}");
    }
}

#[tokio::test]
async fn results_are_placed_by_index_not_by_position() {
    let fake = fake(Flavour::OpenAi).await;
    fake.set_embeddings_reversed(true);
    let embeddings = provider(&fake).embed(request(&["a", "bb", "ccc"])).await.unwrap();
    assert_eq!(embeddings.vectors, [fake_embedding("a", 8), fake_embedding("bb", 8), fake_embedding("ccc", 8)]);
}

#[tokio::test]
async fn a_server_that_refuses_base64_is_asked_for_floats_from_then_on() {
    let fake = fake(Flavour::Vllm).await;
    fake.set_reject_base64(true);
    let provider = provider(&fake);
    let embeddings = provider.embed(request(&["one", "two"])).await.unwrap();
    assert_eq!(embeddings.vectors, [fake_embedding("one", 8), fake_embedding("two", 8)]);
    provider.embed(request(&["three"])).await.unwrap();
    let formats: Vec<_> = fake.embed_requests().iter().map(|body| body["encoding_format"].clone()).collect();
    assert_eq!(formats, [json!("base64"), json!("float"), json!("float")]);
}

#[tokio::test]
async fn more_inputs_than_a_batch_are_split_and_reassembled_in_order() {
    let fake = fake(Flavour::OpenAi).await;
    let inputs: Vec<String> = (0..2100).map(|i| format!("text number {i}")).collect();
    let request = EmbedRequest { inputs: inputs.clone(), ..request(&[]) };
    let embeddings = provider(&fake).embed(request).await.unwrap();
    let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, 8)).collect();
    assert_eq!(embeddings.vectors, expected);
    assert_eq!(embeddings.input_tokens, Some(3 * 2100));
    let sizes: Vec<usize> = fake.embed_requests().iter().map(|body| body["input"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [2048, 52]);

    // A smaller batch, as configured.
    let fake = self::fake(Flavour::Vllm).await;
    let provider = provider(&fake).with_embed_batch(2);
    let embeddings = provider.embed(EmbedRequest { inputs: inputs[..5].to_vec(), ..self::request(&[]) }).await.unwrap();
    assert_eq!(embeddings.vectors, expected[..5]);
    let sizes: Vec<usize> = fake.embed_requests().iter().map(|body| body["input"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
}

#[tokio::test]
async fn the_fake_refuses_too_many_inputs_and_empty_ones() {
    let fake = fake(Flavour::OpenAi).await;
    // reqwest here has no TLS provider of its own: copilot-http's builder installs one.
    let client = copilot_http::client_builder("test", Duration::from_secs(5)).build().unwrap();
    let url = format!("{}/embeddings", fake.base_url());
    let many: Vec<String> = (0..2049).map(|i| i.to_string()).collect();
    for (input, words) in [
        (json!(many), "array too long"),
        (json!(["ok", ""]), "'$.input' is invalid"),
        (json!(["ok", 5]), "'$.input' is invalid"),
    ] {
        let response = client.post(&url).json(&json!({"model": "embedder", "input": input})).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(words), "{body}");
    }
}

#[tokio::test]
async fn dimensions_are_sent_and_refusals_of_them_are_unsupported() {
    for flavour in [Flavour::OpenAi, Flavour::Vllm, Flavour::Ollama] {
        let fake = fake(flavour).await;
        let provider = provider(&fake);
        assert!(provider.features().contains(Feature::EmbeddingDimensions));
        let request = EmbedRequest { dimensions: Some(3), ..request(&["shorten me"]) };
        let embeddings = provider.embed(request.clone()).await.unwrap();
        assert_eq!(embeddings.vectors, [fake_embedding("shorten me", 8)[..3].to_vec()], "{flavour:?}");
        assert_eq!(fake.embed_requests()[0]["dimensions"], json!(3));

        fake.set_refuse_dimensions(true);
        let err = provider.embed(request).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Unsupported { feature: Feature::EmbeddingDimensions, .. }),
            "{flavour:?}: {err:?}"
        );
    }
    // llama.cpp ignores `dimensions`: a vector of the wrong length is not passed on.
    let fake = fake(Flavour::LlamaCpp).await;
    let request = EmbedRequest { dimensions: Some(3), ..request(&["shorten me"]) };
    let err = provider(&fake).embed(request).await.unwrap_err();
    let ProviderError::Unsupported { feature: Feature::EmbeddingDimensions, message } = &err else { panic!("{err:?}") };
    assert!(message.contains("ignored dimensions"), "{message}");
}

#[tokio::test]
async fn truncate_maps_to_vllms_switch_and_over_long_inputs_are_refused() {
    let long = vec!["word"; 3000].join(" "); // 3,000 tokens in the fake; the model takes 2,048
    // vLLM: refused unless asked to cut; cut with truncate_prompt_tokens: -1.
    let fake = fake(Flavour::Vllm).await;
    let provider = provider(&fake);
    let err = provider.embed(request(&[&long])).await.unwrap_err();
    let ProviderError::InvalidRequest(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("maximum context length is 2048 tokens"), "{message}");
    let cut = provider.embed(EmbedRequest { truncate: true, ..request(&[&long]) }).await.unwrap();
    assert_eq!(cut.vectors, [fake_embedding(&vec!["word"; 2048].join(" "), 8)]);
    assert_eq!(cut.input_tokens, Some(2048));
    let sent = fake.embed_requests();
    assert!(sent[0].get("truncate_prompt_tokens").is_none());
    assert_eq!(sent[1]["truncate_prompt_tokens"], json!(-1));

    // Hosted OpenAI refuses long inputs, and has no switch to cut them: a precise refusal.
    let fake = self::fake(Flavour::OpenAi).await;
    let provider = self::provider(&fake);
    let err = provider.embed(request(&[&long])).await.unwrap_err();
    let ProviderError::InvalidRequest(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("maximum context length is 2048 tokens, however you requested 3000 tokens"), "{message}");
    let err = provider.embed(EmbedRequest { truncate: true, ..request(&[&long]) }).await.unwrap_err();
    let ProviderError::InvalidRequest(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("cannot cut over-long inputs"), "{message}");
}

#[tokio::test]
async fn a_chat_model_asked_to_embed_is_unsupported_in_every_flavour() {
    for flavour in ALL_FLAVOURS {
        let fake = FakeOpenAi::start().await;
        fake.set_flavour(flavour);
        fake.add_model(FakeModel::new("chatter"));
        let err =
            provider(&fake).embed(EmbedRequest { model: "chatter".into(), ..request(&["hi"]) }).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Unsupported { feature: Feature::Embeddings, .. }),
            "{flavour:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn unknown_models_and_failures_map_as_for_chat() {
    let fake = fake(Flavour::OpenAi).await;
    let provider = provider(&fake);
    let err = provider.embed(EmbedRequest { model: "nope".into(), ..request(&["hi"]) }).await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "nope".into() });
    fake.fail_next(1, 429, Some(3));
    let err = provider.embed(request(&["hi"])).await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { retry_after: Some(_), .. }), "{err:?}");
    fake.set_api_key(Some("sk-right"));
    let err = provider.embed(request(&["hi"])).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn an_embedding_model_asked_to_chat_is_refused() {
    use copilot_provider::{ChatRequest, Message, Role};
    for flavour in ALL_FLAVOURS {
        let fake = fake(flavour).await;
        let request = ChatRequest {
            model: "embedder".into(),
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };
        let err = match provider(&fake).chat(request).await {
            Err(err) => err,
            Ok(_) => panic!("{flavour:?}: an embedding model chatted"),
        };
        assert!(
            matches!(&err, ProviderError::Unsupported { feature: copilot_provider::Feature::Completion, .. }),
            "{flavour:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn openais_embedding_models_are_marked_in_the_listing() {
    let fake = FakeOpenAi::start().await;
    fake.add_model(FakeModel::embedding("text-embedding-3-small", 1536));
    fake.add_model(FakeModel::new("gpt-4o-mini"));
    let models = provider(&fake).list_models().await.unwrap();
    let small = models.iter().find(|m| m.name == "text-embedding-3-small").unwrap();
    assert_eq!((small.capabilities.as_slice(), small.embedding_length), (&["embedding".to_owned()][..], Some(1536)));
    let chat = models.iter().find(|m| m.name == "gpt-4o-mini").unwrap();
    assert_eq!(chat.embedding_length, None);
}
