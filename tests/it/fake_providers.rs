//! The training load of the profile-guided build (`scripts/build-pgo`): every call it makes,
//! through the real binary, against `copilot_fakes::providers::AllProviders` and the config it
//! writes, the setup the `fake-providers` binary serves. A training call that failed would profile
//! the error path, and the script stops on one.

use std::time::Duration;

use copilot::proto::v1::{EmbedRequest, FinishReason, GenerateRequest, GenerationOptions};
use copilot_fakes::providers::{AllProviders, KEY_ENV, NAMES};
use tonic::Code;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(20);

fn generate(model: String, max_tokens: Option<u32>) -> GenerateRequest {
    GenerateRequest {
        model,
        prompt: "why is the sky blue?".into(),
        options: Some(GenerationOptions { max_tokens, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_training_call_answers_on_every_provider() {
    let providers = AllProviders::start().await.unwrap();
    let copilot = Copilot::start_with(&providers.copilot_config(), &[(KEY_ENV, "unchecked".into())]).await;
    let mut client = copilot.client().await;

    for provider in NAMES {
        let demo = within(LIMIT, client.generate(generate(format!("{provider}/demo"), None))).await;
        let demo = demo.unwrap_or_else(|e| panic!("{provider}/demo: {e}")).into_inner();
        assert!(demo.text.contains("why is the sky blue?"), "{provider}/demo echoes the prompt: {:?}", demo.text);

        let endless = within(LIMIT, client.generate(generate(format!("{provider}/endless"), Some(5)))).await;
        let endless = endless.unwrap_or_else(|e| panic!("{provider}/endless: {e}")).into_inner();
        assert_eq!(endless.finish_reason(), FinishReason::Length, "{provider}/endless");
        assert_eq!(endless.text.matches("tok").count(), 5, "{provider}/endless: {:?}", endless.text);

        let tools = within(LIMIT, client.generate(generate(format!("{provider}/tool-calls"), None))).await;
        let tools = tools.unwrap_or_else(|e| panic!("{provider}/tool-calls: {e}")).into_inner();
        assert!(!tools.tool_calls.is_empty(), "{provider}/tool-calls: {tools:?}");

        let thinking = within(LIMIT, client.generate(generate(format!("{provider}/thinking"), None))).await;
        let thinking = thinking.unwrap_or_else(|e| panic!("{provider}/thinking: {e}")).into_inner();
        assert_eq!(thinking.text, "done", "{provider}/thinking");

        let embed = within(
            LIMIT,
            client.embed(EmbedRequest {
                model: format!("{provider}/embedder"),
                inputs: vec!["the sky".into(), "the sea".into()],
                ..Default::default()
            }),
        )
        .await;
        match provider {
            // Anthropic has no embeddings API; the training leaves it out.
            "anthropic" => assert_eq!(embed.unwrap_err().code(), Code::FailedPrecondition, "{provider}/embedder"),
            _ => {
                let embed = embed.unwrap_or_else(|e| panic!("{provider}/embedder: {e}")).into_inner();
                assert_eq!(embed.embeddings.len(), 2, "{provider}/embedder");
            }
        }
    }
}
