//! Embeddings through `OllamaProvider` against the fake Ollama server's `/api/embed`: vectors in
//! order as Ollama gives them (the fake does not normalise, so neither may the adapter), one
//! request for any number of inputs, `dimensions`, `truncate`, usage, the refusals, and embedding
//! models in the listings.

use std::time::Duration;

use copilot_fakes::{FakeModel, FakeOllama, fake_embedding};
use copilot_ollama::{KeepAlive, OllamaConfig, OllamaProvider};
use copilot_provider::{ChatRequest, EmbedRequest, Embeddings, Feature, Message, Provider, ProviderError, Role};
use serde_json::json;

const MODEL: &str = "nomic-embed-text";
const LENGTH: u32 = 16;

async fn fake() -> FakeOllama {
    let fake = FakeOllama::start().await;
    let mut model = FakeModel::embedding(MODEL, LENGTH);
    model.context_length = 4;
    fake.add_model(model);
    fake.add_model(FakeModel::new("llama3.2"));
    fake
}

fn provider(fake: &FakeOllama, keep_alive: Option<KeepAlive>) -> OllamaProvider {
    OllamaProvider::new(OllamaConfig { base_url: fake.base_url(), keep_alive, connect_timeout: Duration::from_secs(2) })
        .unwrap()
}

fn request(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: MODEL.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        truncate: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn embeddings_come_back_in_order_as_ollama_gave_them() {
    let fake = fake().await;
    let provider = provider(&fake, None);
    assert!(provider.features().contains(Feature::Embeddings));
    assert!(provider.features().contains(Feature::EmbeddingDimensions));

    let embeddings = provider.embed(request(&["alpha", "beta gamma", "a much longer text"])).await.unwrap();
    assert_eq!(
        embeddings,
        Embeddings {
            vectors: ["alpha", "beta gamma", "a much longer text"]
                .map(|text| fake_embedding(text, LENGTH as usize))
                .to_vec(),
            model: MODEL.into(),
            input_tokens: Some(1 + 2 + 4),
        }
    );
    assert_eq!(
        fake.embed_requests(),
        vec![json!({"model": MODEL, "input": ["alpha", "beta gamma", "a much longer text"], "truncate": true})]
    );
}

#[tokio::test]
async fn many_inputs_go_in_one_request_in_order() {
    let fake = fake().await;
    let texts: Vec<String> = (0..300).map(|i| format!("text number {i}")).collect();
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = provider(&fake, None).embed(request(&inputs)).await.unwrap();
    let expected: Vec<Vec<f32>> = texts.iter().map(|text| fake_embedding(text, LENGTH as usize)).collect();
    assert_eq!(embeddings.vectors, expected);
    assert_eq!(fake.embed_requests().len(), 1, "Ollama has no batch limit");
}

#[tokio::test]
async fn dimensions_and_keep_alive_are_sent() {
    let fake = fake().await;
    let provider = provider(&fake, Some(KeepAlive::For(Duration::from_secs(60))));
    let embeddings = provider.embed(EmbedRequest { dimensions: Some(5), ..request(&["short"]) }).await.unwrap();
    assert_eq!(embeddings.vectors, vec![fake_embedding("short", 5)]);
    assert_eq!(
        fake.embed_requests(),
        vec![json!({"model": MODEL, "input": ["short"], "truncate": true, "dimensions": 5, "keep_alive": 60})]
    );
}

#[tokio::test]
async fn truncate_is_ollamas_switch_and_over_long_inputs_are_refused_without_it() {
    let fake = fake().await;
    let provider = provider(&fake, None);
    let long = "one two three four five six";
    let embeddings = provider.embed(request(&[long])).await.unwrap();
    assert_eq!(embeddings.vectors, vec![fake_embedding("one two three four", LENGTH as usize)]);
    assert_eq!(embeddings.input_tokens, Some(4));

    let err = provider.embed(EmbedRequest { truncate: false, ..request(&["fits", long]) }).await.unwrap_err();
    assert_eq!(err, ProviderError::InvalidRequest("the input length exceeds the context length".into()));
    assert_eq!(fake.embed_requests()[1]["truncate"], false, "truncate:false is always said");
}

#[tokio::test]
async fn a_model_that_cannot_embed_is_unsupported_and_an_embedding_model_cannot_chat() {
    let fake = fake().await;
    let provider = provider(&fake, None);
    let err = provider.embed(EmbedRequest { model: "llama3.2".into(), ..request(&["x"]) }).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Unsupported {
            feature: Feature::Embeddings,
            message: r#""llama3.2" does not support embeddings"#.into()
        }
    );
    let err = provider.embed(EmbedRequest { model: "missing".into(), ..request(&["x"]) }).await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "missing".into() });

    let chat =
        ChatRequest { model: MODEL.into(), messages: vec![Message::text(Role::User, "hi")], ..Default::default() };
    let err = provider.chat(chat).await.err().expect("an embedding model cannot chat");
    let message = format!("{MODEL:?} does not support chat");
    assert_eq!(err, ProviderError::Unsupported { feature: Feature::Completion, message });
}

#[tokio::test]
async fn upstream_failures_keep_their_meaning() {
    let fake = fake().await;
    let provider = provider(&fake, None);
    fake.fail_next(1, 429, Some(3));
    let err = provider.embed(request(&["x"])).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    fake.set_busy(true);
    assert!(matches!(provider.embed(request(&["x"])).await.unwrap_err(), ProviderError::Overloaded { .. }));
}

#[tokio::test]
async fn describe_marks_embedding_models_with_their_length() {
    let fake = fake().await;
    let provider = provider(&fake, None);
    let info = provider.describe_model(MODEL).await.unwrap();
    assert_eq!(info.capabilities, ["embedding"]);
    assert_eq!(info.embedding_length, Some(LENGTH));
    assert_eq!(info.context_length, Some(4));
    // A chat model's `embedding_length` in `model_info` is its hidden size: not given.
    assert_eq!(provider.describe_model("llama3.2").await.unwrap().embedding_length, None);
}
