//! Every provider's fake at once, for a run of Copilot over all its adapters without keys or
//! models: the profile-guided build's training load (`scripts/build-pgo`) and manual tries.
//!
//! Starts fake OpenAI, Ollama, Anthropic and Gemini servers on loopback with the models of
//! `copilot_fakes::providers::AllProviders` (`demo`, `endless`, `thinking`, `tool-calls`,
//! `embedder`), prints a Copilot config naming them as providers `openai`, `ollama`, `anthropic`
//! and `gemini` (whose keys it reads from `FAKE_PROVIDERS_KEY`, unchecked), then serves until
//! interrupted.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use copilot_fakes::providers::AllProviders;

#[derive(Parser)]
#[command(
    name = "fake-providers",
    about = "Fake OpenAI, Ollama, Anthropic and Gemini servers, and a Copilot config for them"
)]
struct Args {
    /// Write the Copilot config here instead of standard output.
    #[arg(long)]
    config_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let providers = AllProviders::start().await?;
    let config = providers.copilot_config();
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
