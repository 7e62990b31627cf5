//! A stand-alone fake OpenAI-compatible server for manual runs and benchmarks.
//!
//! Serves two echoing demo models, `gpt-4o-mini` and `qwen2.5-0.5b-instruct`, and `endless`, which
//! streams `" tok"` chunks until the request's token limit (so a benchmark chooses the answer's
//! length), under `/v1` on the given address until interrupted, in the chosen flavour. Request bodies are not recorded, so
//! memory stays flat over long benchmark runs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use copilot_fakes::{FakeModel, FakeOpenAi, Flavour, Reply};

#[derive(Parser)]
#[command(name = "fake-openai", about = "A fake OpenAI-compatible server whose models echo the last user message")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Which server to play: openai, no-usage, llama-cpp, llama-cpp-old, vllm, ollama, deepseek.
    #[arg(long, default_value = "openai", value_parser = parse_flavour)]
    flavour: Flavour,
    /// Require this API key (`Authorization: Bearer ...`).
    #[arg(long)]
    api_key: Option<String>,
    /// Pause before each streamed content chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Pause before the response headers (a simulated model load), in milliseconds.
    #[arg(long, default_value_t = 0)]
    header_delay_ms: u64,
}

fn parse_flavour(name: &str) -> Result<Flavour, String> {
    Ok(match name {
        "openai" => Flavour::OpenAi,
        "no-usage" => Flavour::NoUsage,
        "llama-cpp" => Flavour::LlamaCpp,
        "llama-cpp-old" => Flavour::LlamaCppOldErrors,
        "vllm" => Flavour::Vllm,
        "ollama" => Flavour::Ollama,
        "deepseek" => Flavour::DeepSeek,
        other => return Err(format!("unknown flavour {other:?}")),
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let token_delay = Duration::from_millis(args.token_delay_ms);
    let header_delay = Duration::from_millis(args.header_delay_ms);

    let fake = FakeOpenAi::start_on(args.addr).await?;
    fake.set_record_requests(false);
    fake.set_flavour(args.flavour);
    fake.set_api_key(args.api_key.as_deref());
    for name in ["gpt-4o-mini", "qwen2.5-0.5b-instruct"] {
        fake.add_model(FakeModel::new(name).with_token_delay(token_delay).with_header_delay(header_delay));
    }
    fake.add_model(
        FakeModel::new("endless")
            .with_reply(Reply::Endless)
            .with_token_delay(token_delay)
            .with_header_delay(header_delay),
    );
    for model in [copilot_fakes::models::thinking(), copilot_fakes::models::tool_calls()] {
        fake.add_model(model.with_token_delay(token_delay).with_header_delay(header_delay));
    }

    // One line on stdout, so scripts can wait for it before sending traffic.
    println!("fake-openai listening on {}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
