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
