//! `GeminiProvider` in Vertex AI mode against `FakeGemini`'s Vertex paths and `FakeGoogleAuth`
//! (a token endpoint that verifies the service account's signed JWTs, and a metadata server):
//! the paths and headers sent, how tokens are fetched, cached, refreshed and replaced after a 401,
//! and what refused or unreachable credentials turn into.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use copilot_fakes::google::{
    CLOUD_PLATFORM_SCOPE, TEST_PRIVATE_KEY_PEM, TEST_SERVICE_ACCOUNT, UNKNOWN_PRIVATE_KEY_PEM,
};
use copilot_fakes::{FakeGemini, FakeGoogleAuth, FakeModel, Reply};
use copilot_gemini::{GeminiAuth, GeminiConfig, GeminiProvider, GoogleCredentials, VertexConfig};
use copilot_provider::{ChatEvent, ChatRequest, Message, Provider, ProviderError, Role};
use futures::StreamExt;

const PROJECT: &str = "test-project";
const LOCATION: &str = "us-central1";
const MODEL: &str = "gemini-2.0-flash";
const CHAT_PATH: &str = "/v1beta1/projects/test-project/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse";

/// A fake token endpoint and a fake Vertex AI that trusts its tokens, serving [`MODEL`].
struct Google {
    auth: FakeGoogleAuth,
    vertex: FakeGemini,
    dir: tempfile::TempDir,
}

impl Google {
    async fn start() -> Google {
        let auth = FakeGoogleAuth::start().await;
        let vertex = FakeGemini::start().await.with_vertex_auth(&auth, PROJECT);
        vertex.add_model(FakeModel::new(MODEL).with_reply(Reply::Tokens(vec!["Hel".into(), "lo".into()])));
        Google { auth, vertex, dir: tempfile::tempdir().unwrap() }
    }

    /// A key file for the fake service account, signed by `key`.
    fn key_file(&self, key: &str, quota_project: Option<&str>) -> PathBuf {
        let path = self.dir.path().join(format!("key-{}.json", quota_project.unwrap_or("none")));
        std::fs::write(&path, self.auth.service_account_json(key, quota_project)).unwrap();
        path
    }

    fn provider(&self, credentials: GoogleCredentials) -> GeminiProvider {
        provider(self.vertex.base_url(), credentials)
    }

    fn service_account_provider(&self) -> GeminiProvider {
        self.provider(GoogleCredentials::ServiceAccountFile(self.key_file(TEST_PRIVATE_KEY_PEM, None)))
    }

    /// The `Authorization` header of every request Vertex received.
    fn bearer_tokens(&self) -> Vec<String> {
        self.vertex
            .request_headers()
            .iter()
            .map(|h| h.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default())
            .collect()
    }
}

fn provider(base_url: String, credentials: GoogleCredentials) -> GeminiProvider {
    GeminiProvider::new(GeminiConfig {
        base_url,
        auth: GeminiAuth::Vertex(VertexConfig {
            project: PROJECT.into(),
            location: LOCATION.into(),
            credentials,
            models: vec![MODEL.into()],
        }),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap()
}

fn user(model: &str, content: &str) -> ChatRequest {
    ChatRequest { model: model.into(), messages: vec![Message::text(Role::User, content)], ..Default::default() }
}

/// The whole answer, or the error the call or the stream ended with.
async fn chat(provider: &GeminiProvider, model: &str) -> Result<String, ProviderError> {
    let mut stream = provider.chat(user(model, "Hi there")).await?;
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("stream stalled") {
            Some(Ok(ChatEvent::Delta(delta))) => text.push_str(&delta),
            Some(Ok(ChatEvent::Done(_))) => return Ok(text),
            Some(Ok(other)) => panic!("a text stream produced {other:?}"),
            Some(Err(err)) => return Err(err),
            None => panic!("stream ended without Done"),
        }
    }
}

/// A loopback address nothing listens on.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn chat_goes_to_the_vertex_path_with_a_service_account_token_fetched_once() {
    let google = Google::start().await;
    let provider = google.service_account_provider();

    assert_eq!(chat(&provider, MODEL).await.unwrap(), "Hello");
    assert_eq!(chat(&provider, &format!("models/{MODEL}")).await.unwrap(), "Hello");

    assert_eq!(google.vertex.request_uris(), vec![CHAT_PATH, CHAT_PATH]);
    assert_eq!(google.auth.token_requests(), 1, "the token is cached across calls");
    let tokens = google.bearer_tokens();
    assert!(tokens[0].starts_with("Bearer ya29."), "{tokens:?}");
    assert_eq!(tokens[0], tokens[1]);
    assert!(google.auth.is_valid(tokens[0].strip_prefix("Bearer ").unwrap()));
    for headers in google.vertex.request_headers() {
        assert!(headers.get("x-goog-api-key").is_none());
        assert!(headers.get("x-goog-user-project").is_none(), "the key file names no quota project");
    }

    // The JWT the fake verified (RS256 against the test key) asked for the right things.
    let claims = google.auth.assertion_claims();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["iss"], TEST_SERVICE_ACCOUNT);
    assert_eq!(claims[0]["aud"], google.auth.token_uri());
    assert_eq!(claims[0]["scope"], CLOUD_PLATFORM_SCOPE);
    let (iat, exp) = (claims[0]["iat"].as_i64().unwrap(), claims[0]["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 3600);
}

#[tokio::test]
async fn concurrent_first_calls_share_one_token_fetch() {
    let google = Google::start().await;
    let provider = Arc::new(google.service_account_provider());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { chat(&provider, MODEL).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "Hello");
    }
    assert_eq!(google.auth.token_requests(), 1);
    assert_eq!(google.vertex.request_uris().len(), 8);
}

#[tokio::test]
async fn a_token_near_its_expiry_is_replaced_before_it_is_used() {
    let google = Google::start().await;
    // Four seconds: the adapter replaces it after half its life (two seconds are plenty for the
    // first two calls, even on a busy machine).
    google.auth.set_expires_in(4);
    let provider = google.service_account_provider();

    chat(&provider, MODEL).await.unwrap();
    chat(&provider, MODEL).await.unwrap();
    assert_eq!(google.auth.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    chat(&provider, MODEL).await.unwrap();
    assert_eq!(google.auth.token_requests(), 2, "a token with under half its life left is replaced");
    let tokens = google.bearer_tokens();
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
}

#[tokio::test]
async fn a_401_from_vertex_gets_one_fresh_token_and_one_retry() {
    let google = Google::start().await;
    let provider = google.service_account_provider();
    chat(&provider, MODEL).await.unwrap();

    // The cached token is still within its lifetime, but Vertex no longer accepts it.
    google.auth.revoke_all();
    assert_eq!(chat(&provider, MODEL).await.unwrap(), "Hello");
    assert_eq!(google.auth.token_requests(), 2);
    let tokens = google.bearer_tokens();
    assert_eq!(tokens.len(), 3, "the first call, the refused try and its retry");
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);

    // Refused again after the fresh token: one retry only, then the error.
    google.vertex.fail_next(2, 401, None);
    let err = chat(&provider, MODEL).await.unwrap_err();
    let ProviderError::Unauthorized(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("freshly fetched access token"), "{message}");
    assert_eq!(google.auth.token_requests(), 3);
    assert_eq!(google.vertex.request_uris().len(), 5);
}

#[tokio::test]
async fn refused_grants_are_unauthorized_with_what_to_do_and_no_secret() {
    let google = Google::start().await;
    google.auth.refuse_grants(Some("Invalid grant: account not found"));
    let provider = google.service_account_provider();

    let err = chat(&provider, MODEL).await.unwrap_err();
    let ProviderError::Unauthorized(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("invalid_grant: Invalid grant: account not found"), "{message}");
    assert!(message.contains(TEST_SERVICE_ACCOUNT), "{message}");
    assert!(message.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{message}");
    assert!(google.vertex.request_uris().is_empty(), "no call without a token");

    // A key Google does not know (deleted, or another account's) fails the signature check.
    let unknown =
        google.provider(GoogleCredentials::ServiceAccountFile(google.key_file(UNKNOWN_PRIVATE_KEY_PEM, None)));
    google.auth.refuse_grants(None);
    let err = chat(&unknown, MODEL).await.unwrap_err();
    let ProviderError::Unauthorized(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("Invalid JWT Signature."), "{message}");

    // Health says the same, and nothing secret is in any of it.
    let health = unknown.health().await.unwrap_err();
    assert!(matches!(health, ProviderError::Unauthorized(_)), "{health:?}");
    for text in [format!("{err}"), format!("{err:?}"), format!("{health}"), format!("{unknown:?}")] {
        assert!(!text.contains("PRIVATE KEY") && !text.contains("MII"), "{text}");
        assert!(!text.contains("assertion") && !text.contains("eyJ"), "{text}");
    }
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_unreachable() {
    let google = Google::start().await;
    let mut key: serde_json::Value =
        serde_json::from_str(&google.auth.service_account_json(TEST_PRIVATE_KEY_PEM, None)).unwrap();
    let closed = closed_port().await;
    key["token_uri"] = format!("http://{closed}/token").into();
    let path = google.dir.path().join("closed.json");
    std::fs::write(&path, key.to_string()).unwrap();

    let provider = google.provider(GoogleCredentials::ServiceAccountFile(path));
    let err = chat(&provider, MODEL).await.unwrap_err();
    let ProviderError::Unreachable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains(&format!("http://{closed}/token")), "{message}");
}

#[tokio::test]
async fn the_metadata_server_hands_out_tokens_and_they_are_cached() {
    let google = Google::start().await;
    let provider = google.provider(GoogleCredentials::MetadataServer { host: google.auth.metadata_host() });

    assert_eq!(chat(&provider, MODEL).await.unwrap(), "Hello");
    assert_eq!(chat(&provider, MODEL).await.unwrap(), "Hello");
    assert_eq!(google.auth.metadata_requests(), 1);
    assert_eq!(google.auth.token_requests(), 0);
    assert_eq!(google.auth.metadata_scopes(), vec![Some(CLOUD_PLATFORM_SCOPE.to_owned())]);
    assert!(google.bearer_tokens()[0].starts_with("Bearer ya29.m-"));

    // The real header is required: without it, the metadata server refuses.
    let url =
        format!("http://{}/computeMetadata/v1/instance/service-accounts/default/token", google.auth.metadata_host());
    rustls::crypto::ring::default_provider().install_default().ok();
    let refused = reqwest::Client::new().get(url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(google.auth.metadata_requests(), 2);
}

#[tokio::test]
async fn no_metadata_server_says_how_to_authenticate() {
    let google = Google::start().await;
    let provider = google.provider(GoogleCredentials::MetadataServer { host: closed_port().await });
    let err = chat(&provider, MODEL).await.unwrap_err();
    let ProviderError::Unreachable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("metadata server"), "{message}");
    assert!(message.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{message}");
    assert!(message.contains("Cloud Run/GKE"), "{message}");
    assert!(matches!(provider.health().await, Err(ProviderError::Unreachable(_))));
}

#[tokio::test]
async fn a_quota_project_in_the_key_file_is_sent_as_x_goog_user_project() {
    let google = Google::start().await;
    let path = google.key_file(TEST_PRIVATE_KEY_PEM, Some("billing-project"));
    let provider = google.provider(GoogleCredentials::ServiceAccountFile(path));
    chat(&provider, MODEL).await.unwrap();
    let headers = google.vertex.request_headers();
    assert_eq!(headers[0].get("x-goog-user-project").unwrap(), "billing-project");
}

#[tokio::test]
async fn vertex_refusals_map_to_provider_errors() {
    let google = Google::start().await;
    let provider = google.service_account_provider();

    let err = chat(&provider, "gemini-nope").await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "gemini-nope".into() });

    // Another project than the one the credentials may use: 403, with the role to grant.
    let other = GeminiProvider::new(GeminiConfig {
        base_url: google.vertex.base_url(),
        auth: GeminiAuth::Vertex(VertexConfig {
            project: "someone-elses".into(),
            location: LOCATION.into(),
            credentials: GoogleCredentials::ServiceAccountFile(google.key_file(TEST_PRIVATE_KEY_PEM, None)),
            models: Vec::new(),
        }),
        ..Default::default()
    })
    .unwrap();
    let err = chat(&other, MODEL).await.unwrap_err();
    let ProviderError::Unauthorized(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("PERMISSION_DENIED"), "{message}");
    assert!(message.contains("roles/aiplatform.user on project someone-elses"), "{message}");
}

#[tokio::test]
async fn models_are_the_configured_ones_described_by_vertex_and_health_is_a_token() {
    let google = Google::start().await;
    let provider = google.service_account_provider();

    let listed = provider.list_models().await.unwrap();
    assert_eq!(listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), vec![MODEL]);
    assert_eq!(listed[0].family, "gemini");
    assert_eq!(google.auth.token_requests(), 0, "listing needs no call");

    let described = provider.describe_model(MODEL).await.unwrap();
    assert_eq!(described.name, MODEL);
    assert_eq!(described.capabilities, vec!["completion", "tools", "json_object", "json_schema", "vision"]);
    assert_eq!(
        provider.describe_model("gemini-nope").await.unwrap_err(),
        ProviderError::ModelNotFound { model: "gemini-nope".into() }
    );
    provider.health().await.unwrap();
    assert_eq!(google.auth.token_requests(), 1);
}

#[tokio::test]
async fn embeddings_go_to_predict_one_instance_at_a_time_for_gemini_embedding() {
    use copilot_fakes::script::fake_embedding;
    use copilot_provider::{EmbedRequest, EmbeddingTask, Feature};
    use serde_json::json;

    let google = Google::start().await;
    google.vertex.add_model(FakeModel::embedding("gemini-embedding-001", 8));
    let mut text_embedding = FakeModel::embedding("text-embedding-005", 8);
    text_embedding.context_length = 2;
    google.vertex.add_model(text_embedding);
    let provider = google.service_account_provider();
    assert!(provider.features().contains(Feature::Embeddings));

    let inputs = vec!["one two".to_owned(), "three".to_owned(), "four five six".to_owned()];
    let request = EmbedRequest {
        model: "gemini-embedding-001".into(),
        inputs: inputs.clone(),
        dimensions: Some(4),
        task: EmbeddingTask::Document,
        truncate: false,
        ..Default::default()
    };
    let embeddings = provider.embed(request).await.unwrap();
    let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, 4)).collect();
    assert_eq!(embeddings.vectors, expected);
    // Vertex counts tokens (the fake: words).
    assert_eq!(embeddings.input_tokens, Some(6));
    let bodies = google.vertex.embed_requests();
    assert_eq!(bodies.len(), 3, "gemini-embedding-001 takes one instance per call");
    assert_eq!(
        bodies[0],
        json!({"instances": [{"content": "one two", "task_type": "RETRIEVAL_DOCUMENT"}],
               "parameters": {"outputDimensionality": 4, "autoTruncate": false}})
    );
    assert!(google.vertex.request_uris().is_empty(), "embeddings are not chats");

    // text-embedding models take many per call; truncate is autoTruncate, and without it an
    // over-long input is Vertex's INVALID_ARGUMENT in its words.
    let mut request = EmbedRequest { model: "text-embedding-005".into(), inputs: inputs.clone(), ..Default::default() };
    let err = provider.embed(request.clone()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidRequest(m) if m.contains("supports up to 2") && m.contains("auto truncation")),
        "{err:?}"
    );
    request.truncate = true;
    let embeddings = provider.embed(request).await.unwrap();
    assert_eq!(embeddings.vectors.len(), 3);
    // Cut by Vertex to its limit (the fake's: two words).
    assert_eq!(embeddings.vectors[2], fake_embedding("four five", 8));
    let last = google.vertex.embed_requests().pop().unwrap();
    assert_eq!(last["instances"].as_array().unwrap().len(), 3);
    assert_eq!(last["parameters"], json!({"autoTruncate": true}));

    // A chat model cannot embed; an unknown model is not found.
    let chat = EmbedRequest { model: MODEL.into(), inputs: vec!["hi".into()], ..Default::default() };
    let err = provider.embed(chat).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unsupported { feature: Feature::Embeddings, .. }), "{err:?}");
    let unknown = EmbedRequest { model: "nope-embedding".into(), inputs: vec!["hi".into()], ..Default::default() };
    let err = provider.embed(unknown).await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "nope-embedding".into() });
}

#[tokio::test]
async fn newer_gemini_embedding_models_go_to_embed_content_one_input_per_call() {
    use copilot_fakes::gemini::VERTEX_EMBED_CONTENT_CAPABILITY;
    use copilot_fakes::script::fake_embedding;
    use copilot_provider::{EmbedRequest, EmbeddingTask};
    use serde_json::json;

    let google = Google::start().await;
    let mut newer = FakeModel::embedding("gemini-embedding-2", 8);
    newer.context_length = 3;
    google.vertex.add_model(newer);
    let provider = google.service_account_provider();

    let inputs = vec!["one two".to_owned(), "three".to_owned(), "four five six".to_owned()];
    let request = EmbedRequest {
        model: "gemini-embedding-2".into(),
        inputs: inputs.clone(),
        dimensions: Some(4),
        task: EmbeddingTask::Query,
        truncate: false,
        ..Default::default()
    };
    let embeddings = provider.embed(request.clone()).await.unwrap();
    let expected: Vec<Vec<f32>> = inputs.iter().map(|t| fake_embedding(t, 4)).collect();
    assert_eq!(embeddings.vectors, expected, "in input order");
    assert_eq!(embeddings.input_tokens, Some(6), "usageMetadata.promptTokenCount summed");
    let bodies = google.vertex.embed_requests();
    assert_eq!(bodies.len(), 3, "one input per :embedContent call");
    for (body, text) in bodies.iter().zip(&inputs) {
        assert_eq!(
            body,
            &json!({"content": {"parts": [{"text": text}]},
                    "embedContentConfig": {"taskType": "RETRIEVAL_QUERY", "outputDimensionality": 4, "autoTruncate": false}})
        );
    }

    // An over-long input without truncate fails the whole call, naming the input, after the
    // inputs before it went (nothing after it is sent).
    let mut long = request.clone();
    long.inputs = vec!["a".into(), "b c d e".into(), "f".into()];
    let err = provider.embed(long.clone()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidRequest(m) if m.starts_with("input 1: INVALID_ARGUMENT: ") && m.contains("supports up to 3")),
        "{err:?}"
    );
    assert_eq!(google.vertex.embed_requests().len(), 5);
    // With truncate it is Vertex's autoTruncate: cut to the limit.
    long.truncate = true;
    let embeddings = provider.embed(long).await.unwrap();
    assert_eq!(embeddings.vectors[1], fake_embedding("b c d", 4));
    assert_eq!(embeddings.input_tokens, Some(5));

    // Unknown: Vertex's 404.
    let unknown = EmbedRequest { model: "gemini-embedding-9".into(), inputs: vec!["hi".into()], ..Default::default() };
    assert_eq!(
        provider.embed(unknown).await.unwrap_err(),
        ProviderError::ModelNotFound { model: "gemini-embedding-9".into() }
    );

    // A model the adapter would send to :predict but that Vertex serves only through
    // :embedContent: its FAILED_PRECONDITION sends the whole call there.
    let mut other = FakeModel::embedding("text-embedding-next", 8);
    other.capabilities.push(VERTEX_EMBED_CONTENT_CAPABILITY.into());
    google.vertex.add_model(other);
    let before = google.vertex.embed_requests().len();
    let request = EmbedRequest { model: "text-embedding-next".into(), inputs: inputs.clone(), ..Default::default() };
    let embeddings = provider.embed(request).await.unwrap();
    assert_eq!(embeddings.vectors, inputs.iter().map(|t| fake_embedding(t, 8)).collect::<Vec<_>>());
    let sent = &google.vertex.embed_requests()[before..];
    assert_eq!(sent.len(), 4, "one refused :predict, then three :embedContent calls");
    assert!(sent[0].get("instances").is_some(), "{:?}", sent[0]);
    assert!(sent[1..].iter().all(|b| b.get("content").is_some()), "{sent:?}");
}
