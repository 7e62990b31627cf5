//! A stand-alone fake Ollama server for manual runs and benchmarks.
//!
//! Serves two echoing demo models, `llama3.2:3b` and `qwen2.5:0.5b`, and `endless`, which streams
//! `" tok"` chunks until the request's token limit (so a benchmark chooses the answer's length),
//! plus the scripted models of `copilot_fakes::models` (`thinking`, `tool-calls`, and the README
//! tools session's `weather` and `intent`), on the given address until interrupted. Request bodies are not recorded, so memory stays flat over long benchmark runs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use copilot_fakes::{FakeModel, FakeOllama, Reply, models};

#[derive(Parser)]
#[command(name = "fake-ollama", about = "A fake Ollama server whose models echo the last user message")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11434")]
    addr: SocketAddr,
    /// Pause before each streamed content chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Pause before the response headers (a simulated model load), in milliseconds.
    #[arg(long, default_value_t = 0)]
    header_delay_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let token_delay = Duration::from_millis(args.token_delay_ms);
    let header_delay = Duration::from_millis(args.header_delay_ms);

    let fake = FakeOllama::start_on(args.addr).await?;
    fake.set_record_requests(false);
    fake.add_model(FakeModel::new("llama3.2:3b").with_token_delay(token_delay).with_header_delay(header_delay));
    let mut qwen = FakeModel::new("qwen2.5:0.5b").with_token_delay(token_delay).with_header_delay(header_delay);
    qwen.family = "qwen2".to_owned();
    qwen.parameter_size = "494.03M".to_owned();
    qwen.context_length = 32_768;
    qwen.size = 397_821_319;
    fake.add_model(qwen);
    fake.add_model(
        FakeModel::new("endless")
            .with_reply(Reply::Endless)
            .with_token_delay(token_delay)
            .with_header_delay(header_delay),
    );
    let scripted = [models::thinking(), models::tool_calls(), models::weather(), models::intent(), models::embedder()];
    for model in scripted {
        fake.add_model(model.with_token_delay(token_delay).with_header_delay(header_delay));
    }

    // One line on stdout, so scripts can wait for it before sending traffic.
    println!("fake-ollama listening on {}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
