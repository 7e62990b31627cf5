//! `Embed` through the real binary against every provider's fake (issue 17): vectors in input
//! order and of unit length whatever the upstream returned, batches larger than a provider's own
//! limit split and put back together, dimensions and tasks reaching the upstream, a chat model
//! asked to embed refused precisely, Anthropic's refusal without a request, the default embedding
//! model, and token budgets charged by the upstream's count.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{EmbedRequest, EmbedResponse, EmbeddingTask, GetModelRequest};
use copilot_fakes::{FakeModel, fake_embedding};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(20);
const DIMENSIONS: u32 = 16;

/// A fake upstream of any provider that embeds, as the scenarios use it.
trait Upstream {
    fn add(&self, model: FakeModel);
    /// The embedding requests' bodies, in order.
    fn embed_bodies(&self) -> Vec<Value>;
}

macro_rules! upstream {
    ($($fake:ty),*) => {$(
        impl Upstream for $fake {
            fn add(&self, model: FakeModel) {
                self.add_model(model);
            }
            fn embed_bodies(&self) -> Vec<Value> {
                self.embed_requests()
            }
        }
    )*};
}

upstream!(copilot_fakes::FakeOllama, copilot_fakes::FakeOpenAi, copilot_fakes::FakeGemini);

fn request(model: &str, inputs: &[String]) -> EmbedRequest {
    EmbedRequest { model: model.into(), inputs: inputs.to_vec(), ..Default::default() }
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("document number {i} {}", "x".repeat(i % 7))).collect()
}

/// Whether a request body asks, anywhere in it, for vectors of `dimensions`.
fn asks_for(body: &Value, dimensions: u64) -> bool {
    match body {
        Value::Object(fields) => fields.iter().any(|(key, value)| {
            (matches!(key.as_str(), "dimensions" | "outputDimensionality") && value.as_u64() == Some(dimensions))
                || asks_for(value, dimensions)
        }),
        Value::Array(items) => items.iter().any(|item| asks_for(item, dimensions)),
        _ => false,
    }
}

/// `vector` scaled to unit length.
fn unit(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    vector.iter().map(|v| (f64::from(*v) / norm) as f32).collect()
}

/// Each vector is the fake's vector for its own input (so in order), at unit length.
fn assert_vectors(response: &EmbedResponse, inputs: &[String], dimensions: usize, full: usize) {
    assert_eq!(response.embeddings.len(), inputs.len());
    assert_eq!(response.dimensions as usize, dimensions);
    for (input, embedding) in inputs.iter().zip(&response.embeddings) {
        let expected = unit(&fake_embedding(input, full)[..dimensions]);
        assert_eq!(embedding.values.len(), dimensions, "{input}");
        let norm: f64 = embedding.values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{input}: norm {norm}");
        for (got, want) in embedding.values.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-5, "{input}: {:?} vs {expected:?}", embedding.values);
        }
    }
}

struct Case<'a> {
    upstream: &'a dyn Upstream,
    client: CopilotClient<Channel>,
}

async fn vectors_come_back_in_order_at_unit_length(mut case: Case<'_>) {
    case.upstream.add(FakeModel::embedding("embedder", DIMENSIONS));
    let inputs = vec!["short".to_string(), "a longer text, with more in it".into(), "x".into()];
    let response = within(LIMIT, case.client.embed(request("up/embedder", &inputs))).await.unwrap().into_inner();
    assert_vectors(&response, &inputs, DIMENSIONS as usize, DIMENSIONS as usize);
    assert!(response.model.starts_with("up/embedder"), "{}", response.model);
    assert_eq!(case.upstream.embed_bodies().len(), 1);
}

/// 250 inputs: more than Gemini's 100 per batch, so it splits; every provider puts them back in order.
async fn a_large_batch_comes_back_in_order(mut case: Case<'_>) {
    case.upstream.add(FakeModel::embedding("embedder", DIMENSIONS));
    let inputs = texts(250);
    let response = within(LIMIT, case.client.embed(request("up/embedder", &inputs))).await.unwrap().into_inner();
    assert_vectors(&response, &inputs, DIMENSIONS as usize, DIMENSIONS as usize);
}

async fn dimensions_shorten_the_vectors(mut case: Case<'_>) {
    case.upstream.add(FakeModel::embedding("embedder", DIMENSIONS));
    let inputs = texts(3);
    let shortened = EmbedRequest { dimensions: Some(8), ..request("up/embedder", &inputs) };
    let response = within(LIMIT, case.client.embed(shortened)).await.unwrap().into_inner();
    assert_vectors(&response, &inputs, 8, DIMENSIONS as usize);
    // In the provider's own field: `dimensions` (Ollama, OpenAI) or `outputDimensionality` (Gemini).
    let body = case.upstream.embed_bodies().pop().unwrap();
    assert!(asks_for(&body, 8), "the upstream was not asked for 8 dimensions: {body}");
}

/// A chat model asked to embed: the upstream's own refusal, as FEATURE_UNSUPPORTED.
async fn a_chat_model_cannot_embed(mut case: Case<'_>) {
    case.upstream.add(FakeModel::new("chatty"));
    let status = within(LIMIT, case.client.embed(request("up/chatty", &texts(1)))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.metadata["feature"].as_str()), ("FEATURE_UNSUPPORTED", "embedding"));
}

/// An embedding model asked to chat: the upstream's own refusal, as FEATURE_UNSUPPORTED naming
/// `completion`.
async fn an_embedding_model_cannot_chat(mut case: Case<'_>) {
    use copilot::proto::v1::{ChatRequest, Message, Role};
    case.upstream.add(FakeModel::embedding("embedder", DIMENSIONS));
    let message = Message { role: Role::User as i32, content: "hi".into(), ..Default::default() };
    let chat = ChatRequest { model: "up/embedder".into(), messages: vec![message], ..Default::default() };
    let status = within(LIMIT, case.client.chat(chat)).await.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.metadata["feature"].as_str()), ("FEATURE_UNSUPPORTED", "completion"));
}

/// Every upstream call goes through the server's checks: too many inputs, empty ones.
async fn bad_requests_never_reach_the_upstream(mut case: Case<'_>) {
    case.upstream.add(FakeModel::embedding("embedder", DIMENSIONS));
    for (inputs, field) in [(vec![], "inputs"), (vec!["ok".to_string(), " ".into()], "inputs[1]")] {
        let status = within(LIMIT, case.client.embed(request("up/embedder", &inputs))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, field);
    }
    assert!(case.upstream.embed_bodies().is_empty());
}

/// `name`: a model the provider's listing says embeds (OpenAI-compatible listings say nothing, so
/// the adapter knows OpenAI's own embedding models by name).
async fn the_listing_marks_embedding_models(mut case: Case<'_>, name: &str) {
    case.upstream.add(FakeModel::embedding(name, DIMENSIONS));
    let model = within(LIMIT, case.client.get_model(GetModelRequest { model: format!("up/{name}") }))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert!(model.capabilities.iter().any(|c| c == "embedding"), "{model:?}");
}

macro_rules! embeddings {
    ($module:ident, $fake:ty, $kind:literal, $listed:literal) => {
        mod $module {
            use super::*;

            async fn run(scenario: impl AsyncFnOnce(Case<'_>)) {
                let fake = <$fake>::start().await;
                let key = if $kind == "ollama" { "" } else { "api_key_env = \"EMBED_KEY\"\n" };
                let config = format!(
                    "[providers.up]\nkind = \"{}\"\nbase_url = \"{}\"\n{key}retries = 0\nbreaker_failures = 0\n",
                    $kind,
                    fake.base_url()
                );
                let copilot = Copilot::start_with(&config, &[("EMBED_KEY", "k".into())]).await;
                let client = copilot.client().await;
                scenario(Case { upstream: &fake, client }).await;
            }

            #[tokio::test]
            async fn vectors_come_back_in_order_at_unit_length() {
                run(super::vectors_come_back_in_order_at_unit_length).await;
            }

            #[tokio::test]
            async fn a_large_batch_comes_back_in_order() {
                run(super::a_large_batch_comes_back_in_order).await;
            }

            #[tokio::test]
            async fn dimensions_shorten_the_vectors() {
                run(super::dimensions_shorten_the_vectors).await;
            }

            #[tokio::test]
            async fn a_chat_model_cannot_embed() {
                run(super::a_chat_model_cannot_embed).await;
            }

            #[tokio::test]
            async fn an_embedding_model_cannot_chat() {
                run(super::an_embedding_model_cannot_chat).await;
            }

            #[tokio::test]
            async fn bad_requests_never_reach_the_upstream() {
                run(super::bad_requests_never_reach_the_upstream).await;
            }

            #[tokio::test]
            async fn the_listing_marks_embedding_models() {
                run(async |case| super::the_listing_marks_embedding_models(case, $listed).await).await;
            }
        }
    };
}

embeddings!(ollama, copilot_fakes::FakeOllama, "ollama", "embedder");
embeddings!(openai, copilot_fakes::FakeOpenAi, "openai", "text-embedding-3-small");
embeddings!(gemini, copilot_fakes::FakeGemini, "gemini", "embedder");

/// Gemini embeds differently per task: the task reaches it as its `taskType`.
#[tokio::test]
async fn the_task_reaches_gemini() {
    let fake = copilot_fakes::FakeGemini::start().await;
    fake.add_model(FakeModel::embedding("embedder", DIMENSIONS));
    let config = format!(
        "[providers.up]\nkind = \"gemini\"\nbase_url = \"{}\"\napi_key_env = \"EMBED_KEY\"\nretries = 0\n",
        fake.base_url()
    );
    let copilot = Copilot::start_with(&config, &[("EMBED_KEY", "k".into())]).await;
    let mut client = copilot.client().await;
    let query = EmbedRequest { task: EmbeddingTask::Query as i32, ..request("up/embedder", &texts(2)) };
    within(LIMIT, client.embed(query)).await.unwrap();
    let body = fake.embed_requests().pop().unwrap();
    assert_eq!(body["requests"][1]["taskType"], "RETRIEVAL_QUERY", "{body}");
}

/// Anthropic has no embeddings API: refused with that said, and nothing sent.
#[tokio::test]
async fn anthropic_says_it_has_no_embeddings() {
    let fake = copilot_fakes::FakeAnthropic::start().await;
    let config = format!(
        "[providers.up]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"EMBED_KEY\"\nretries = 0\n",
        fake.base_url()
    );
    let copilot = Copilot::start_with(&config, &[("EMBED_KEY", "k".into())]).await;
    let mut client = copilot.client().await;
    let status = within(LIMIT, client.embed(request("up/claude-sonnet-4-5", &texts(1)))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("Anthropic has no embeddings API"), "{}", status.message());
    assert!(fake.chat_requests().is_empty());
}

/// An `Embed` without a model goes to `routing.default_embedding_model`; without one configured
/// it is MODEL_REQUIRED.
#[tokio::test]
async fn the_default_embedding_model_is_used_when_none_is_named() {
    let fake = copilot_fakes::FakeOllama::start().await;
    fake.add_model(FakeModel::embedding("embedder", DIMENSIONS));
    let without = Copilot::start_with(&format!("[providers.ollama]\nbase_url = \"{}\"\n", fake.base_url()), &[]).await;
    let status = within(LIMIT, without.client().await.embed(request("", &texts(1)))).await.unwrap_err();
    assert_eq!(status.get_details_error_info().unwrap().reason, "MODEL_REQUIRED");

    let config = format!(
        "[providers.ollama]\nbase_url = \"{}\"\n[routing]\ndefault_embedding_model = \"ollama/embedder\"\n",
        fake.base_url()
    );
    let with = Copilot::start_with(&config, &[]).await;
    let inputs = texts(2);
    let response = within(LIMIT, with.client().await.embed(request("", &inputs))).await.unwrap().into_inner();
    assert_vectors(&response, &inputs, DIMENSIONS as usize, DIMENSIONS as usize);
}

/// A key may embed only with the models it may use, and what it embeds is charged to its token
/// budget: a budget of 10 tokens admits one call of a few words, then refuses the next.
#[tokio::test]
async fn keys_limit_embeddings_as_they_limit_chats() {
    const KEY: &str = "cpk_alpha_test_key";
    const KEY_HASH: &str = "sha256:4d63903d956a1bdd30396662a5d2e3ef5b6b3244b1f41395b23e718b725b3838";
    let fake = copilot_fakes::FakeOllama::start().await;
    fake.add_model(FakeModel::embedding("embedder", DIMENSIONS));
    fake.add_model(FakeModel::embedding("other", DIMENSIONS));
    let config = format!(
        "[providers.ollama]\nbase_url = \"{}\"\nretries = 0\n[auth]\nenabled = true\n\
         [[auth.keys]]\nname = \"alpha\"\nhash = \"{KEY_HASH}\"\nmodels = [\"ollama/embedder\"]\n\
         tokens_per_minute = 10\n",
        fake.base_url()
    );
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;
    let with_key = |model: &str, inputs: Vec<String>| {
        let mut call = tonic::Request::new(request(model, &inputs));
        call.metadata_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        call
    };
    let status = within(LIMIT, client.embed(with_key("ollama/other", texts(1)))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    within(LIMIT, client.embed(with_key("ollama/embedder", vec!["three small words".into()]))).await.unwrap();
    let long = vec!["a text long enough to need many more tokens than the budget has left".to_string()];
    let status = within(LIMIT, client.embed(with_key("ollama/embedder", long))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "KEY_TOKEN_LIMIT");
}

/// An `Embed` attempt is an `embeddings {model}` span with the conventions' attributes, and the
/// client metrics carry `gen_ai.operation.name = embeddings`.
#[tokio::test]
async fn an_embed_call_is_an_embeddings_span() {
    use copilot_fakes::otlp::{AttrValue, FakeCollector};
    let collector = FakeCollector::start().await;
    let fake = copilot_fakes::FakeOllama::start().await;
    fake.add_model(FakeModel::embedding("embedder", DIMENSIONS));
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())];
    let copilot =
        Copilot::start_with(&format!("[providers.ollama]\nbase_url = \"{}\"\nretries = 0\n", fake.base_url()), &env)
            .await;
    within(LIMIT, copilot.client().await.embed(request("ollama/embedder", &texts(3)))).await.unwrap();
    let span = collector.wait_for_span(LIMIT, |s| s.name == "embeddings embedder").await.unwrap();
    assert_eq!(span.str_attr("gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(span.attr("gen_ai.embeddings.dimension.count"), Some(&AttrValue::Int(i64::from(DIMENSIONS))));
    assert_eq!(span.attr("copilot.embeddings.inputs"), Some(&AttrValue::Int(3)));
    let server = collector.wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/Embed").await;
    assert!(server.is_some(), "the call's server span");
}
