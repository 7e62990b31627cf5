//! `GeminiProvider::embed` against `FakeGemini`'s `batchEmbedContents`: what goes on the wire
//! (one request per input, each naming the path's model, `taskType`, `outputDimensionality`),
//! batches split at Gemini's 100 and put back in order, and the errors.

use std::time::Duration;

use copilot_fakes::gemini::MAX_EMBED_BATCH;
use copilot_fakes::script::fake_embedding;
use copilot_fakes::{Behaviour, FakeGemini, FakeModel};
use copilot_gemini::{GeminiAuth, GeminiConfig, GeminiProvider};
use copilot_provider::{EmbedRequest, EmbeddingTask, Feature, Provider, ProviderError, Secret};
use serde_json::{Value, json};

const KEY: &str = "AIzaSyFake-test-key-0123456789";
const MODEL: &str = "gemini-embedding-001";
const DIMS: u32 = 16;

async fn fake() -> FakeGemini {
    let fake = FakeGemini::start().await.with_api_key(KEY);
    fake.add_model(FakeModel::embedding(MODEL, DIMS));
    fake.add_model(FakeModel::new("gemini-2.5-flash"));
    fake
}

fn provider(fake: &FakeGemini) -> GeminiProvider {
    GeminiProvider::new(GeminiConfig {
        base_url: fake.base_url(),
        auth: GeminiAuth::ApiKey(Secret::new(KEY)),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap()
}

fn request(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest { model: MODEL.into(), inputs: inputs.iter().map(|s| (*s).to_owned()).collect(), ..Default::default() }
}

#[tokio::test]
async fn vectors_come_back_in_order_as_gemini_gave_them() {
    let fake = fake().await;
    let inputs = ["first", "the second input", "3"];
    let embeddings = provider(&fake).embed(request(&inputs)).await.unwrap();
    let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, DIMS as usize)).collect();
    assert_eq!(embeddings.vectors, expected);
    // Gemini reports no usage and no model for batchEmbedContents.
    assert_eq!(embeddings.input_tokens, None);
    assert_eq!(embeddings.model, "");

    let bodies = fake.embed_requests();
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0],
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "first"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "the second input"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "3"}]}},
        ]})
    );
    // Embeddings are not chat requests.
    assert!(fake.chat_requests().is_empty());
    // The `models/` form names the same model, in the path and in every request.
    let mut prefixed = request(&["x"]);
    prefixed.model = format!("models/{MODEL}");
    provider(&fake).embed(prefixed).await.unwrap();
    assert_eq!(fake.embed_requests()[1]["requests"][0]["model"], "models/gemini-embedding-001");
}

#[tokio::test]
async fn more_inputs_than_a_batch_are_split_and_put_back_in_order() {
    let fake = fake().await;
    let inputs: Vec<String> = (0..2 * MAX_EMBED_BATCH + 5).map(|i| format!("input number {i}")).collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let embeddings = provider(&fake).embed(request(&refs)).await.unwrap();
    let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, DIMS as usize)).collect();
    assert_eq!(embeddings.vectors, expected);

    let sizes: Vec<usize> = fake.embed_requests().iter().map(|b| b["requests"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [100, 100, 5]);
    let texts: Vec<String> = fake
        .embed_requests()
        .iter()
        .flat_map(|b| b["requests"].as_array().unwrap().clone())
        .map(|r| r["content"]["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, inputs);
}

#[tokio::test]
async fn the_fake_refuses_a_batch_over_100_as_gemini_does() {
    let fake = fake().await;
    let requests: Vec<Value> = (0..101)
        .map(|i| json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": format!("t{i}")}]}}))
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .post(format!("{}/v1beta/models/{MODEL}:batchEmbedContents", fake.base_url()))
        .header("x-goog-api-key", KEY)
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 100 requests can be in one batch"), "{body}");
}

#[tokio::test]
async fn task_types_and_dimensions_go_on_every_request() {
    let fake = fake().await;
    let provider = provider(&fake);
    assert!(provider.features().contains(Feature::Embeddings));
    assert!(provider.features().contains(Feature::EmbeddingDimensions));
    let tasks = [
        (EmbeddingTask::Unspecified, None),
        (EmbeddingTask::Query, Some("RETRIEVAL_QUERY")),
        (EmbeddingTask::Document, Some("RETRIEVAL_DOCUMENT")),
        (EmbeddingTask::SemanticSimilarity, Some("SEMANTIC_SIMILARITY")),
        (EmbeddingTask::Classification, Some("CLASSIFICATION")),
        (EmbeddingTask::Clustering, Some("CLUSTERING")),
    ];
    for (i, (task, wire)) in tasks.into_iter().enumerate() {
        let request = EmbedRequest { task, dimensions: Some(4), ..request(&["a", "b"]) };
        let embeddings = provider.embed(request).await.unwrap();
        // Shortened by Gemini, and left as it gave them (the server normalises).
        assert_eq!(embeddings.vectors, [fake_embedding("a", 4), fake_embedding("b", 4)]);
        let body = &fake.embed_requests()[i];
        for one in body["requests"].as_array().unwrap() {
            assert_eq!(one.get("taskType").and_then(Value::as_str), wire, "{task:?}: {one}");
            assert_eq!(one["outputDimensionality"], 4);
        }
    }
}

#[tokio::test]
async fn truncate_sends_as_is_and_without_it_surely_too_long_inputs_are_refused() {
    let fake = fake().await;
    let provider = provider(&fake);
    // gemini-embedding-001 takes 2,048 tokens; 6 bytes per token is surely over.
    let long = "word ".repeat(2048 * 6 / 5 + 1);
    let ok = "word ".repeat(2000);

    let err = provider.embed(request(&["short", &long])).await.unwrap_err();
    let ProviderError::InvalidRequest(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("input 1") && message.contains("2048") && message.contains("truncate"), "{message}");
    assert!(fake.embed_requests().is_empty(), "refused before anything was sent");

    // Not surely over: sent, and Gemini (which cuts silently) answers.
    provider.embed(request(&[&ok])).await.unwrap();
    // With truncate, the body is the same as without: Gemini has no switch.
    let truncating = EmbedRequest { truncate: true, ..request(&[&ok, &long]) };
    let embeddings = provider.embed(truncating).await.unwrap();
    assert_eq!(embeddings.vectors.len(), 2);
    let bodies = fake.embed_requests();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["requests"][0], bodies[1]["requests"][0]);
}

#[tokio::test]
async fn a_chat_model_cannot_embed_and_an_unknown_model_is_not_found() {
    let fake = fake().await;
    let provider = provider(&fake);
    let err = provider.embed(EmbedRequest { model: "gemini-2.5-flash".into(), ..request(&["hi"]) }).await.unwrap_err();
    let ProviderError::Unsupported { feature: Feature::Embeddings, message } = &err else { panic!("{err:?}") };
    assert!(message.contains("gemini-2.5-flash") && message.contains("generateContent"), "{message}");

    let err = provider.embed(EmbedRequest { model: "gemini-nope".into(), ..request(&["hi"]) }).await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "gemini-nope".into() });
}

#[tokio::test]
async fn an_embedding_model_is_listed_and_cannot_chat() {
    let fake = fake().await;
    let provider = provider(&fake);
    let info = provider.describe_model(MODEL).await.unwrap();
    assert_eq!(info.capabilities, ["embedding"]);
    assert_eq!(info.embedding_length, Some(3072));
    let names: Vec<String> = provider.list_models().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, [MODEL, "gemini-2.5-flash"]);

    let chat = copilot_provider::ChatRequest {
        model: MODEL.into(),
        messages: vec![copilot_provider::Message::text(copilot_provider::Role::User, "hi")],
        ..Default::default()
    };
    // Gemini's 404 is the same as for an unknown model; the model's methods tell them apart.
    let err = provider.chat(chat).await.err().unwrap();
    assert!(
        matches!(&err, ProviderError::Unsupported { feature: copilot_provider::Feature::Completion, message }
            if message.contains("without generateContent")),
        "{err:?}"
    );
}

#[tokio::test]
async fn upstream_errors_map_like_chat_and_fail_the_whole_call() {
    let fake = fake().await;
    let provider = provider(&fake);
    fake.fail_next(1, 429, Some(7));
    let err = provider.embed(request(&["a"])).await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    fake.set_busy(true);
    let err = provider.embed(request(&["a"])).await.unwrap_err();
    assert!(matches!(err, ProviderError::Overloaded { .. }), "{err:?}");
    fake.set_busy(false);

    // The second piece fails: no partial answer.
    let inputs: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let model =
        FakeModel::embedding(MODEL, DIMS).with_behaviour(Behaviour::HttpError { status: 500, message: "boom".into() });
    fake.add_model(model);
    let err = provider.embed(request(&refs)).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Upstream { status: 500, message } if message.contains("boom")), "{err:?}");

    // A wrong key: Gemini's 400 API_KEY_INVALID, the key masked.
    let other = GeminiProvider::new(GeminiConfig {
        base_url: fake.base_url(),
        auth: GeminiAuth::ApiKey(Secret::new("AIzaSyWrong-key-9876")),
        ..Default::default()
    })
    .unwrap();
    let err = other.embed(request(&["a"])).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(m) if !m.contains("9876")), "{err:?}");
}

#[tokio::test]
async fn the_fake_checks_requests_as_gemini_does() {
    let fake = fake().await;
    let url = format!("{}/v1beta/models/{MODEL}:batchEmbedContents", fake.base_url());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let request = client.post(&url).header("x-goog-api-key", KEY).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let text = |t: Value| json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}});
    let cases = [
        (json!({"requests": []}), "must not be empty"),
        (json!({"requests": [text(json!(""))]}), "required oneof field 'data'"),
        (json!({"requests": [text(json!(5))]}), "(TYPE_STRING), 5"),
        (json!({"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}), "must match"),
        (
            json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "taskType": "NOPE"}]}),
            "TaskType",
        ),
        (
            json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 17}]}),
            "at most 16",
        ),
        (json!({"requests": [text(json!("a"))], "extra": 1}), "Unknown name \"extra\""),
    ];
    for (body, words) in cases {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(words), "{body}: {answer}");
    }
    // embedContent: one request, `model` optional.
    let response = client
        .post(format!("{}/v1beta/models/{MODEL}:embedContent", fake.base_url()))
        .header("x-goog-api-key", KEY)
        .json(&json!({"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let values: Vec<f32> =
        answer["embedding"]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(values, fake_embedding("hi", 3));
}

#[tokio::test]
async fn a_short_answer_is_a_protocol_error_not_a_panic() {
    use copilot_fakes::scripted::{ScriptedServer, Step};
    // One vector for two inputs, garbage, nothing, and numbers that are not numbers.
    for answer in [r#"{"embeddings":[{"values":[1,2]}]}"#, "not json", "{}", r#"{"embeddings":[{"values":["x"]}]}"#] {
        let script = vec![
            Step::Write(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .into_bytes(),
            ),
            Step::Close,
        ];
        let base_url = ScriptedServer::once(script).await.base_url();
        let provider = GeminiProvider::new(GeminiConfig {
            base_url,
            auth: GeminiAuth::ApiKey(Secret::new(KEY)),
            ..Default::default()
        })
        .unwrap();
        let err = provider.embed(request(&["a", "b"])).await.unwrap_err();
        assert!(matches!(err, ProviderError::Protocol(_)), "{answer}: {err:?}");
    }
    // An answer declared larger than 32 MiB is not read.
    let script = vec![
        Step::Write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40000000\r\nconnection: close\r\n\r\n{"
                .to_vec(),
        ),
        Step::Close,
    ];
    let base_url = ScriptedServer::once(script).await.base_url();
    let provider = GeminiProvider::new(GeminiConfig {
        base_url,
        auth: GeminiAuth::ApiKey(Secret::new(KEY)),
        ..Default::default()
    })
    .unwrap();
    let err = provider.embed(request(&["a"])).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Protocol(m) if m.contains("larger than")), "{err:?}");
}
