//! `copilot-bench load`: drives Copilot's gRPC API (`Generate` or streaming `Chat`) in a closed or
//! open loop and reports throughput, latency percentiles, time to first token, inter-chunk gaps,
//! output tokens/s and errors by status code (see `loadgen.rs` for the drivers).

use std::process::ExitCode;
use std::sync::Arc;

use clap::value_parser;
use copilot::proto::v1::{ChatRequest, GenerateRequest};
use serde::Serialize;

use crate::chat::{ChatParams, code_name};
use crate::loadgen::{self, Backend, CallError, ChunkClock, LoadArgs, Rpc, RunInfo};
use crate::report;
use crate::{BoxError, GrpcClient, Target};

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct LoadCmd {
    #[command(flatten)]
    #[serde(flatten)]
    pub target: Target,
    /// HTTP/2 connections to spread the requests over, round robin (each carries many calls).
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u32).range(1..))]
    pub connections: u32,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadArgs,
}

/// Sends every request to Copilot's gRPC API.
pub struct GrpcBackend {
    clients: Vec<GrpcClient>,
    rpc: Rpc,
    chat: ChatRequest,
    embed: copilot::proto::v1::EmbedRequest,
    generate: GenerateRequest,
}

impl GrpcBackend {
    /// Opens `connections` connections to `target` (an unreachable server fails here, once).
    pub async fn connect(target: &Target, connections: u32, load: &LoadArgs) -> Result<Self, BoxError> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(target.connect().await?);
        }
        let params = ChatParams {
            model: target.model.clone(),
            prompt: load.scenario.prompt(),
            temperature: load.temperature,
            max_tokens: load.max_tokens,
        };
        let (mut chat, mut generate) = (params.request(), params.generate_request());
        if load.thinking {
            let reasoning =
                copilot::proto::v1::Reasoning { enabled: true, include_thoughts: true, ..Default::default() };
            chat.reasoning = Some(reasoning);
            generate.reasoning = Some(reasoning);
        }
        let mut embed = copilot::proto::v1::EmbedRequest {
            model: target.model.clone(),
            inputs: vec![load.scenario.prompt(); load.embed_batch as usize],
            ..Default::default()
        };
        if let Some(mode) = load.cache_mode {
            chat.cache = Some(mode.control());
            generate.cache = Some(mode.control());
            embed.cache = Some(mode.control());
        }
        Ok(GrpcBackend { clients, rpc: load.rpc, chat, generate, embed })
    }

    /// What it drives, for reports.
    pub fn describe(target: &Target, rpc: Rpc) -> String {
        let method = match rpc {
            Rpc::Generate => "Generate (unary)",
            Rpc::Chat => "Chat (server streaming)",
            Rpc::Embed => "Embed (unary)",
        };
        let model = if target.model.is_empty() { "(server default)" } else { &target.model };
        format!("gRPC copilot.v1.Copilot/{method} at {}, model {model}", target.addr)
    }
}

fn status_error(status: tonic::Status) -> CallError {
    CallError::new(code_name(status.code()), status.message().to_owned())
}

impl Backend for GrpcBackend {
    async fn call(&self, seq: u64, clock: &mut ChunkClock) -> Result<Option<u64>, CallError> {
        let mut client = self.clients[(seq % self.clients.len() as u64) as usize].clone();
        match self.rpc {
            Rpc::Generate => {
                let response = client.generate(self.generate.clone()).await.map_err(status_error)?.into_inner();
                Ok(response.usage.map(|usage| u64::from(usage.output_tokens)))
            }
            Rpc::Embed => {
                let response = client.embed(self.embed.clone()).await.map_err(status_error)?.into_inner();
                Ok(Some(response.embeddings.len() as u64))
            }
            Rpc::Chat => {
                let mut stream = client.chat(self.chat.clone()).await.map_err(status_error)?.into_inner();
                let mut output_tokens = None;
                while let Some(message) = stream.message().await.map_err(status_error)? {
                    // Text, thinking and tool-call pieces are all output chunks.
                    if !message.content.is_empty() || !message.thinking.is_empty() || !message.tool_calls.is_empty() {
                        clock.chunk();
                    }
                    if let Some(usage) = message.usage {
                        output_tokens = Some(u64::from(usage.output_tokens));
                    }
                }
                match output_tokens {
                    Some(tokens) => Ok(Some(tokens)),
                    None => Err(CallError::new("UNKNOWN", "the stream ended without its final message (no usage)")),
                }
            }
        }
    }
}

pub async fn run(cmd: LoadCmd) -> Result<ExitCode, BoxError> {
    let started_unix_s = report::unix_now();
    let backend = Arc::new(GrpcBackend::connect(&cmd.target, cmd.connections, &cmd.load).await?);
    let info = RunInfo {
        label: "load".to_owned(),
        target: GrpcBackend::describe(&cmd.target, cmd.load.rpc),
        pid: cmd.load.pid,
    };
    let run = loadgen::measure(backend, &cmd.load, info).await?;
    report::emit_single("load", started_unix_s, &cmd, &run, cmd.load.json.as_deref())
}
