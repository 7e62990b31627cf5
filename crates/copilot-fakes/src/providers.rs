//! Every provider's fake at once, and a Copilot config naming them: what the `fake-providers`
//! binary serves (the profile-guided build's training load, `scripts/build-pgo`), and what the
//! test of that training starts in-process.

use std::io;

use crate::{FakeAnthropic, FakeGemini, FakeModel, FakeOllama, FakeOpenAi, Reply, models};

/// The environment variable the config's Anthropic and Gemini providers read their key from; the
/// fakes check no key.
pub const KEY_ENV: &str = "FAKE_PROVIDERS_KEY";

/// The providers of [`AllProviders::copilot_config`], as Copilot names them.
pub const NAMES: [&str; 4] = ["openai", "ollama", "anthropic", "gemini"];

/// Fake OpenAI, Ollama, Anthropic and Gemini servers on loopback (ports the system picks), each
/// with the echoing `demo`, `endless` (streams `" tok"` chunks until the request's token limit)
/// and the scripted `thinking`, `tool-calls` and `embedder`. Request bodies are not recorded, so
/// memory stays flat over long runs.
pub struct AllProviders {
    pub openai: FakeOpenAi,
    pub ollama: FakeOllama,
    pub anthropic: FakeAnthropic,
    pub gemini: FakeGemini,
}

impl AllProviders {
    pub async fn start() -> io::Result<Self> {
        let loopback = "127.0.0.1:0".parse().expect("a socket address");
        let all = AllProviders {
            openai: FakeOpenAi::start_on(loopback).await?,
            ollama: FakeOllama::start_on(loopback).await?,
            anthropic: FakeAnthropic::start_on(loopback).await?,
            gemini: FakeGemini::start_on(loopback).await?,
        };
        all.openai.set_record_requests(false);
        all.ollama.set_record_requests(false);
        all.anthropic.set_record_requests(false);
        all.gemini.set_record_requests(false);
        for model in [
            FakeModel::new("demo"),
            FakeModel::new("endless").with_reply(Reply::Endless),
            models::thinking(),
            models::tool_calls(),
            models::embedder(),
        ] {
            all.openai.add_model(model.clone());
            all.ollama.add_model(model.clone());
            all.anthropic.add_model(model.clone());
            all.gemini.add_model(model);
        }
        Ok(all)
    }

    /// A Copilot config with the four as providers `openai`, `ollama`, `anthropic` and `gemini`.
    pub fn copilot_config(&self) -> String {
        format!(
            "[providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\nretries = 0\n\n\
             [providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nretries = 0\n\n\
             [providers.anthropic]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nretries = 0\n\n\
             [providers.gemini]\nkind = \"gemini\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nretries = 0\n",
            self.openai.base_url(),
            self.ollama.base_url(),
            self.anthropic.base_url(),
            self.gemini.base_url()
        )
    }
}
