//! `copilot-bench`: measures Copilot, one subcommand per mode (one file each).
//!
//! - `tokens`: generation and prompt tokens/s of one stream and of concurrent streams, and the
//!   server's memory (`tokens.rs`).
//! - `load`: throughput and latency percentiles of the gRPC API under a closed- or open-loop load
//!   (`load.rs`).
//! - `overhead`: the same load straight to a fake upstream and through Copilot to it, and the
//!   difference (`overhead.rs`).
//! - `http`: the same load against an OpenAI-compatible endpoint, e.g. another gateway (`http.rs`).
//! - `soak`: a hostile mix (stalled bodies, idle sockets, big metadata, random bytes, cancels)
//!   beside a legitimate load, with the server's RSS, fds and panics checked (`soak.rs`).
//!
//! - `floor-gateway`: serves `Generate` with the least a gateway on Copilot's crates must do, to
//!   measure the floor Copilot's own work sits on (`floor.rs`).
//!
//! Shared: `chat.rs` (one measured `Chat` call, request building), `loadgen.rs` (load options and
//! the closed/open-loop drivers), `stats.rs` (histograms and summaries), `report.rs` (tables,
//! JSON), `memory.rs` (the server's RSS) and `procs.rs` (processes a mode starts itself).

mod chat;
mod floor;
mod h2_client;
mod http;
mod load;
mod loadgen;
mod memory;
mod overhead;
mod procs;
mod report;
mod soak;
mod stats;
mod tokens;

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

pub use h2_client::GrpcClient;

pub type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "copilot-bench",
    version,
    about = "Benchmarks Copilot: tokens/s, load, its overhead over a direct upstream, other gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generation tokens/s at several concurrency levels, prompt tokens/s, and the server's memory.
    Tokens(tokens::TokensArgs),
    /// Load on the gRPC API (Generate or Chat), closed or open loop: throughput, latency
    /// percentiles, time to first token, inter-chunk gaps, tokens/s, errors, memory.
    Load(load::LoadCmd),
    /// The same load straight to a fake upstream over HTTP, then through Copilot to it: the latency
    /// Copilot adds per percentile and its throughput ratio.
    Overhead(overhead::OverheadCmd),
    /// The same load and report against an OpenAI-compatible HTTP endpoint (another gateway, a
    /// model server), streamed with SSE.
    Http(http::HttpCmd),
    /// A hostile mix (stalled bodies, idle pre-preface sockets, big metadata, random bytes,
    /// cancels) beside a legitimate load: every legitimate call must succeed, the server's RSS
    /// stay bounded, its fds not grow, its log hold no panic.
    Soak(Box<soak::SoakCmd>),
    /// Serves Copilot's `Generate` with the least a gateway on Copilot's crates must do (HTTP/2
    /// server, gRPC codec, one pooled HTTP/1.1 upstream request): the floor Copilot is measured
    /// against (`scripts/bench-gateways`, mode `floor`).
    FloorGateway(floor::FloorCmd),
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
    /// An API key, sent as `authorization: Bearer <key>` (for a server with `auth.enabled`).
    #[arg(long, env = "COPILOT_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl Target {
    /// Connects once, up front, so an unreachable server is one clear error rather than a failure
    /// per request. Clones of the client share the connection (one HTTP/2 stream per call).
    pub async fn connect(&self) -> Result<GrpcClient, BoxError> {
        h2_client::connect_with_key(&self.addr, self.api_key.as_deref()).await
    }
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
            Command::Load(cmd) => load::run(cmd).await,
            Command::Overhead(cmd) => overhead::run(cmd).await,
            Command::Http(cmd) => http::run(cmd).await,
            Command::Soak(cmd) => soak::run(*cmd).await,
            Command::FloorGateway(cmd) => floor::run(cmd).await,
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("copilot-bench: {e}");
        ExitCode::FAILURE
    })
}
