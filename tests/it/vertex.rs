//! Gemini on Vertex AI, configured by environment alone as on Cloud Run: a project, a location and
//! Application Default Credentials (here a service-account key file whose `token_uri` is a fake
//! Google token endpoint), no API key and no configuration file.

use std::time::Duration;

use copilot::proto::v1::ListModelsRequest;
use copilot_fakes::google::TEST_PRIVATE_KEY_PEM;
use copilot_fakes::{FakeGemini, FakeGoogleAuth, FakeModel, Reply};

use crate::harness::{Copilot, scrub_environment, within};
use crate::requests::{chat, chat_text_and_model};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn chat_reaches_vertex_with_a_service_account_from_the_environment() {
    let auth = FakeGoogleAuth::start().await;
    let vertex = FakeGemini::start().await.with_vertex_auth(&auth, "test-project");
    vertex.add_model(FakeModel::new("gemini-2.0-flash").with_reply(Reply::Tokens(vec!["Ver".into(), "tex".into()])));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("service-account.json");
    std::fs::write(&key_file, auth.service_account_json(TEST_PRIVATE_KEY_PEM, None)).unwrap();

    let copilot = Copilot::start_env_only(&[
        ("LLM_PROVIDER", "gemini".into()),
        ("GEMINI_PROJECT_ID", "test-project".into()),
        ("GOOGLE_CLOUD_LOCATION", "us-central1".into()),
        ("GOOGLE_APPLICATION_CREDENTIALS", key_file.display().to_string()),
        ("GEMINI_BASE_URL", vertex.base_url()),
        ("GEMINI_MODEL", "gemini-2.0-flash".into()),
    ])
    .await;

    let mut client = copilot.client().await;
    for _ in 0..2 {
        let (text, model) = chat_text_and_model(&copilot, &mut client, chat("", "Which API is this?")).await;
        assert_eq!(text, "Vertex");
        assert_eq!(model, "gemini/gemini-2.0-flash");
    }

    // Both calls took the Vertex path with one token, fetched with the key file's JWT.
    let path = "/v1beta1/projects/test-project/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse";
    assert_eq!(vertex.request_uris(), vec![path, path]);
    assert_eq!(auth.token_requests(), 1, "the token is cached (health probes included)");
    let bearer = vertex.request_headers()[0].get("authorization").unwrap().to_str().unwrap().to_owned();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    assert!(auth.is_valid(token));

    let listed = within(LIMIT, client.list_models(ListModelsRequest::default())).await.unwrap().into_inner();
    assert!(listed.models.iter().any(|m| m.name == "gemini/gemini-2.0-flash"), "{listed:?}");

    // The log says which credentials are used, never the token or the key.
    let logs = copilot.logs();
    assert!(logs.contains("Gemini on Vertex AI"), "{logs}");
    assert!(logs.contains("copilot-test@copilot-fake-project.iam.gserviceaccount.com"), "{logs}");
    assert!(!logs.contains(token) && !logs.contains("PRIVATE KEY"), "{logs}");
}

/// A key file that `GOOGLE_APPLICATION_CREDENTIALS` names but that is not there stops the server
/// at start, naming the file (ADC has no fallback past a named file).
#[tokio::test]
async fn a_missing_key_file_stops_the_server_at_start() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot"));
    command.args(["serve", "--addr", "127.0.0.1:0"]);
    scrub_environment(&mut command);
    command
        .env("LLM_PROVIDER", "gemini")
        .env("GEMINI_PROJECT_ID", "test-project")
        .env("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/copilot-key.json")
        .env("COPILOT_MODELS_DIR", "/nonexistent")
        .env("OLLAMA_MODELS", "/nonexistent");
    let output = within(LIMIT, command.kill_on_drop(true).output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without its key file:\n{stderr}");
    assert!(stderr.contains("/nonexistent/copilot-key.json"), "{stderr}");
}

/// Copilot on Vertex AI, configured by environment alone, with `fake` behind it.
async fn vertex_copilot(auth: &FakeGoogleAuth, vertex: &FakeGemini, dir: &tempfile::TempDir) -> Copilot {
    let key_file = dir.path().join("service-account.json");
    std::fs::write(&key_file, auth.service_account_json(TEST_PRIVATE_KEY_PEM, None)).unwrap();
    Copilot::start_env_only(&[
        ("LLM_PROVIDER", "gemini".into()),
        ("GEMINI_PROJECT_ID", "test-project".into()),
        ("GOOGLE_CLOUD_LOCATION", "us-central1".into()),
        ("GOOGLE_APPLICATION_CREDENTIALS", key_file.display().to_string()),
        ("GEMINI_BASE_URL", vertex.base_url()),
        ("GEMINI_MODEL", "gemini-2.0-flash".into()),
    ])
    .await
}

/// gemini-embedding-2 on Vertex AI embeds through `:embedContent`, one input per call: the
/// vectors in input order (at unit length, as the server returns every vector), the usage the
/// sum of Vertex's `promptTokenCount`s, and dimensions, task and truncate in
/// `embedContentConfig`. An input Vertex refuses mid-batch fails the whole call with its
/// INVALID_ARGUMENT, naming the input, and nothing after it is sent.
#[tokio::test]
async fn newer_gemini_embedding_models_embed_through_embed_content() {
    use copilot::proto::v1::{EmbedRequest, EmbeddingTask};
    use copilot_fakes::fake_embedding;
    use serde_json::json;
    use tonic::Code;

    let auth = FakeGoogleAuth::start().await;
    let vertex = FakeGemini::start().await.with_vertex_auth(&auth, "test-project");
    let mut model = FakeModel::embedding("gemini-embedding-2", 16);
    model.context_length = 4;
    vertex.add_model(model);
    let dir = tempfile::tempdir().unwrap();
    let copilot = vertex_copilot(&auth, &vertex, &dir).await;
    let mut client = copilot.client().await;

    let inputs = vec!["the first text".to_owned(), "second".to_owned(), "and the third one".to_owned()];
    let request = EmbedRequest {
        model: "gemini/gemini-embedding-2".into(),
        inputs: inputs.clone(),
        dimensions: Some(8),
        task: EmbeddingTask::Document as i32,
        truncate: false,
        cache: None,
    };
    let response = within(LIMIT, client.embed(request.clone())).await.unwrap().into_inner();
    assert_eq!(response.embeddings.len(), 3);
    for (input, embedding) in inputs.iter().zip(&response.embeddings) {
        let raw = fake_embedding(input, 8);
        let norm = raw.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        for (got, want) in embedding.values.iter().zip(&raw) {
            assert!((f64::from(*got) - f64::from(*want) / norm).abs() < 1e-5, "{input}: {:?}", embedding.values);
        }
        assert_eq!(embedding.values.len(), 8, "{input}");
    }
    assert_eq!(response.usage.unwrap().input_tokens, 3 + 1 + 4, "promptTokenCount summed (the fake: words)");
    let bodies = vertex.embed_requests();
    assert_eq!(bodies.len(), 3, "one input per :embedContent call: {bodies:?}");
    for (body, input) in bodies.iter().zip(&inputs) {
        assert_eq!(
            body,
            &json!({"content": {"parts": [{"text": input}]},
                    "embedContentConfig": {"taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 8, "autoTruncate": false}})
        );
    }
    assert!(vertex.request_uris().is_empty(), "embeddings are not chats");

    // The second of three inputs is over the model's limit (4 tokens) without truncate.
    let over = EmbedRequest {
        inputs: vec!["fine".into(), "one two three four five".into(), "never sent".into()],
        ..request.clone()
    };
    let status = within(LIMIT, client.embed(over.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("input 1: INVALID_ARGUMENT")
            && status.message().contains("the model supports up to 4"),
        "{}",
        status.message()
    );
    let bodies = vertex.embed_requests();
    assert_eq!(bodies.len(), 5, "the third input is never sent: {bodies:?}");

    // With truncate, Vertex cuts it (autoTruncate) and counts the tokens it kept.
    let truncated = EmbedRequest { truncate: true, ..over };
    let response = within(LIMIT, client.embed(truncated)).await.unwrap().into_inner();
    assert_eq!(response.embeddings.len(), 3);
    assert_eq!(response.usage.unwrap().input_tokens, 1 + 4 + 2);
    assert_eq!(vertex.embed_requests().last().unwrap()["embedContentConfig"]["autoTruncate"], true);
}
