//! Every provider configured by environment alone, with no configuration file, as the first users'
//! `.env` files do: the two example profiles in `examples/env/` start a working server, and so do
//! the OpenAI and Anthropic variables.

use std::time::Duration;

use copilot::proto::v1::{ChatRequest, GenerationOptions, ListModelsRequest};
use copilot_fakes::{FakeAnthropic, FakeGemini, FakeModel, FakeOllama, FakeOpenAi, Reply};

use crate::harness::{Copilot, scrub_environment, within};
use crate::requests::{chat_text_and_model, user};

const LIMIT: Duration = Duration::from_secs(20);
const KEY: &str = "test-key-7d1f0c9a2b";

/// The `KEY=value` lines of an example `.env` file.
fn env_file(name: &str) -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/env").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=value");
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The example file's variables, with the ones `replace` names set to test values instead.
fn profile(name: &str, replace: &[(&str, String)]) -> Vec<(String, String)> {
    let mut vars = env_file(name);
    for (key, value) in replace {
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_string(), value.clone()));
    }
    vars
}

fn words(text: &[&str]) -> Reply {
    Reply::Tokens(text.iter().map(|s| s.to_string()).collect())
}

/// Streams a chat with an empty `model` (the configured default) and returns its text and the
/// model the server answered with.
async fn chat_with_the_default_model(copilot: &Copilot) -> (String, String) {
    let mut client = copilot.client().await;
    let request = ChatRequest {
        model: String::new(),
        messages: vec![user("How much energy did we use?")],
        options: Some(GenerationOptions { max_tokens: Some(16), ..Default::default() }),
        ..Default::default()
    };
    chat_text_and_model(copilot, &mut client, request).await
}

async fn start(vars: &[(String, String)]) -> Copilot {
    let env: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Copilot::start_env_only(&env).await
}

#[tokio::test]
async fn the_production_profile_serves_gemini_with_no_file() {
    let gemini = FakeGemini::start().await.with_api_key(KEY);
    gemini.add_model(FakeModel::new("gemini-2.0-flash-exp").with_reply(words(&["About", " 42", " kWh"])));
    let vars = profile(
        "production.env",
        &[
            ("GEMINI_API_KEY", KEY.into()),
            ("GEMINI_BASE_URL", gemini.base_url()),
            ("OLLAMA_HOST", "127.0.0.1:9".into()),
        ],
    );
    let copilot = start(&vars).await;
    let (text, model) = chat_with_the_default_model(&copilot).await;
    assert_eq!(text, "About 42 kWh");
    assert_eq!(model, "gemini/gemini-2.0-flash-exp");
    // GEMINI_TEMPERATURE reached the upstream as the default of a request that set none.
    let sent = gemini.chat_requests().pop().expect("a request reached the fake");
    let temperature = sent["generationConfig"]["temperature"].as_f64().expect("temperature sent");
    assert!((temperature - 0.3).abs() < 1e-6, "{sent}");
    let models = copilot.client().await.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert!(models.iter().any(|m| m.name == "gemini/gemini-2.0-flash-exp"), "{models:?}");
}

#[tokio::test]
async fn the_development_profile_serves_ollama_with_no_file() {
    let ollama = FakeOllama::start().await;
    ollama.add_model(FakeModel::new("llama3.2:3b").with_reply(words(&["Twelve", " kWh"])));
    let vars = profile("development.env", &[("OLLAMA_HOST", ollama.base_url())]);
    let copilot = start(&vars).await;
    let (text, model) = chat_with_the_default_model(&copilot).await;
    assert_eq!(text, "Twelve kWh");
    assert_eq!(model, "ollama/llama3.2:3b");
}

#[tokio::test]
async fn openai_compatible_servers_by_environment_alone() {
    let openai = FakeOpenAi::start().await.with_api_key(KEY);
    openai.add_model(FakeModel::new("Qwen/Qwen2.5-7B-Instruct").with_reply(words(&["Seven", " kWh"])));
    let vars = [
        ("LLM_PROVIDER", "openai".to_string()),
        ("OPENAI_API_KEY", KEY.into()),
        ("OPENAI_BASE_URL", openai.base_url()),
        ("OPENAI_MODEL", "Qwen/Qwen2.5-7B-Instruct".into()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let copilot = start(&vars).await;
    let (text, model) = chat_with_the_default_model(&copilot).await;
    assert_eq!(text, "Seven kWh");
    assert_eq!(model, "openai/Qwen/Qwen2.5-7B-Instruct");
}

#[tokio::test]
async fn anthropic_by_environment_alone() {
    let anthropic = FakeAnthropic::start().await.with_api_key(KEY);
    anthropic.add_model(FakeModel::new("claude-haiku-4-5").with_reply(words(&["Nine", " kWh"])));
    let vars = [
        ("LLM_PROVIDER", "anthropic".to_string()),
        ("ANTHROPIC_API_KEY", KEY.into()),
        ("ANTHROPIC_BASE_URL", anthropic.base_url()),
        ("ANTHROPIC_MODEL", "claude-haiku-4-5".into()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let copilot = start(&vars).await;
    let (text, model) = chat_with_the_default_model(&copilot).await;
    assert_eq!(text, "Nine kWh");
    assert_eq!(model, "anthropic/claude-haiku-4-5");
}

/// A selected hosted provider without credentials stops the server at start, saying what to set.
#[tokio::test]
async fn a_selected_provider_without_credentials_is_refused_at_start_with_what_to_set() {
    for (provider, variable) in
        [("gemini", "GEMINI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")]
    {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot"));
        command.args(["serve", "--addr", "127.0.0.1:0"]);
        scrub_environment(&mut command);
        command
            .env("LLM_PROVIDER", provider)
            .env("COPILOT_MODELS_DIR", "/nonexistent")
            .env("OLLAMA_MODELS", "/nonexistent");
        let output = within(LIMIT, command.kill_on_drop(true).output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{provider}: started without credentials:\n{stderr}");
        assert!(stderr.contains(variable), "{provider}: the error should name {variable}:\n{stderr}");
    }
}
