//! `copilot-bench`: measures a running Copilot through its gRPC API, one subcommand per mode.
//!
//! - `tokens`: generation and prompt tokens/s of one stream and of concurrent streams, and the
//!   server's memory (see `tokens.rs`).
//!
//! Each mode builds on `chat.rs` (one measured `Chat` call), `report.rs` (statistics, tables, JSON)
//! and `memory.rs` (the server's RSS).

mod chat;
mod memory;
mod report;
mod tokens;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use copilot::proto::v1::copilot_client::CopilotClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

pub type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "copilot-bench", version, about = "Benchmarks a running Copilot through its gRPC API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generation tokens/s at several concurrency levels, prompt tokens/s, and the server's memory.
    Tokens(tokens::TokensArgs),
}

/// The server to measure and the model to ask for; shared by every mode.
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct Target {
    /// The Copilot gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// The model, as `provider/model`; empty means the server's default model.
    #[arg(long, default_value = "")]
    pub model: String,
}

impl Target {
    /// Connects once, up front, so an unreachable server is one clear error rather than a failure
    /// per request. Clones of the client share the connection (one HTTP/2 stream per call).
    pub async fn connect(&self) -> Result<CopilotClient<Channel>, BoxError> {
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| format!("invalid --addr {:?}: {}", self.addr, chain(&e)))?
            .connect_timeout(Duration::from_secs(5));
        let channel =
            endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {}", self.addr, chain(&e)))?;
        Ok(CopilotClient::new(channel))
    }
}

/// An error and its sources, `: `-separated (tonic's transport errors say little on their own).
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the benchmark usually shares the machine with the server it measures, and a
    // client that reads streams needs little CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("copilot-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Tokens(args) => tokens::run(args).await,
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("copilot-bench: {e}");
        ExitCode::FAILURE
    })
}
