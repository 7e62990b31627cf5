//! Every provider's fake at once, for a run of Copilot over all its adapters without keys or
//! models: the profile-guided build's training load (`scripts/build-pgo`) and manual tries.
//!
//! Starts fake OpenAI, Ollama, Anthropic and Gemini servers on loopback (ports the system picks),
//! each with the echoing demo model `demo`, `endless` (streams `" tok"` chunks until the request's
//! token limit) and the scripted models of `copilot_fakes::models` (`thinking`, `tool-calls`,
//! `embedder`). Prints a Copilot config naming them as providers `openai`, `ollama`, `anthropic`
//! and `gemini`, then serves until interrupted. The Anthropic and Gemini providers read their key
//! from `FAKE_PROVIDERS_KEY`, which the fakes do not check. Request bodies are not recorded, so
//! memory stays flat over long runs.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use copilot_fakes::{FakeAnthropic, FakeGemini, FakeModel, FakeOllama, FakeOpenAi, Reply, models};

#[derive(Parser)]
#[command(name = "fake-providers", about = "Fake OpenAI, Ollama, Anthropic and Gemini servers, and a Copilot config for them")]
struct Args {
    /// Write the Copilot config here instead of standard output.
    #[arg(long)]
    config_out: Option<PathBuf>,
}

fn models() -> Vec<FakeModel> {
    vec![
        FakeModel::new("demo"),
        FakeModel::new("endless").with_reply(Reply::Endless),
        models::thinking(),
        models::tool_calls(),
        models::embedder(),
    ]
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let loopback = "127.0.0.1:0".parse().expect("a socket address");
    let openai = FakeOpenAi::start_on(loopback).await?;
    let ollama = FakeOllama::start_on(loopback).await?;
    let anthropic = FakeAnthropic::start_on(loopback).await?;
    let gemini = FakeGemini::start_on(loopback).await?;
    openai.set_record_requests(false);
    ollama.set_record_requests(false);
    anthropic.set_record_requests(false);
    gemini.set_record_requests(false);
    for model in models() {
        openai.add_model(model.clone());
        ollama.add_model(model.clone());
        anthropic.add_model(model.clone());
        gemini.add_model(model);
    }

    let config = format!(
        "[providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\nretries = 0\n\n\
         [providers.ollama]\nkind = \"ollama\"\nbase_url = \"{}\"\nretries = 0\n\n\
         [providers.anthropic]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"FAKE_PROVIDERS_KEY\"\nretries = 0\n\n\
         [providers.gemini]\nkind = \"gemini\"\nbase_url = \"{}\"\napi_key_env = \"FAKE_PROVIDERS_KEY\"\nretries = 0\n",
        openai.base_url(),
        ollama.base_url(),
        anthropic.base_url(),
        gemini.base_url()
    );
    match &args.config_out {
        Some(path) => {
            std::fs::write(path, &config)?;
            // One line on stdout, so scripts can wait for it before starting Copilot.
            println!("fake-providers ready; config in {}", path.display());
        }
        None => print!("{config}"),
    }
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
