//! `floor-gateway`: the least a gRPC-to-HTTP gateway built on Copilot's own crates can do, served
//! so it can be measured like a gateway (issue 19, "say what the floor is").
//!
//! It answers Copilot's `Generate` with what no gateway can skip and nothing else: hyper's HTTP/2
//! server and tonic's codec take the call, hyper's HTTP/1.1 client posts one fixed chat request
//! upstream on a pooled connection, reads the whole answer, and the call gets a reply, on one
//! current-thread runtime as Copilot's connection threads run. What it leaves out is what Copilot
//! adds: validation, routing, limits, telemetry, building the request from the call, and
//! decoding the answer (`--decode` puts the last back: the OpenAI adapter's own stream decoder).
//! The latency it adds over the two direct hops is the stack's floor; what Copilot adds above it
//! is Copilot's own. Only for benchmarks: every other method is UNIMPLEMENTED.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use copilot::proto::v1::copilot_server::{Copilot, CopilotServer};
use copilot::proto::v1::{
    ChatRequest, ChatResponse, CountTokensRequest, CountTokensResponse, EmbedRequest, EmbedResponse, GenerateRequest,
    GenerateResponse, GetModelRequest, GetModelResponse, ListModelsRequest, ListModelsResponse,
};
use copilot_http::ChatStreamDecoder;
use copilot_provider::ChatEvent;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::BoxError;

#[derive(clap::Args, Debug)]
pub struct FloorCmd {
    /// Where to serve Copilot's gRPC API.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The upstream's chat completions URL, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    #[arg(long)]
    upstream: String,
    /// Decode the upstream's SSE answer with the OpenAI adapter's stream decoder and reply with its
    /// text, as Copilot does; without it the answer is read and dropped.
    #[arg(long)]
    decode: bool,
}

/// The one request sent upstream for every call: what Copilot sends for the benchmark's prompt.
const UPSTREAM_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Why is the sky blue? Answer in one short sentence."}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":128,"temperature":0.0}"#;

struct Floor {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: hyper::Uri,
    decode: bool,
}

pub async fn run(cmd: FloorCmd) -> Result<std::process::ExitCode, BoxError> {
    let upstream: hyper::Uri = cmd.upstream.parse().map_err(|e| format!("--upstream {}: {e}", cmd.upstream))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let service = CopilotServer::new(Floor { client, upstream, decode: cmd.decode });
    let listener = TcpListener::bind(cmd.listen).await.map_err(|e| format!("cannot listen on {}: {e}", cmd.listen))?;
    eprintln!("floor-gateway listening on {}", listener.local_addr()?);
    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (http2, service) = (http2.clone(), TowerToHyperService::new(service.clone()));
        tokio::spawn(async move {
            let _ = http2.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

impl Floor {
    async fn forward(&self) -> Result<String, Status> {
        let request = hyper::Request::post(self.upstream.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(UPSTREAM_BODY.as_bytes())))
            .map_err(|e| Status::internal(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let mut body = response.into_body();
        if !self.decode {
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| Status::unavailable(e.to_string()))?;
            }
            return Ok(String::new());
        }
        let mut decoder = copilot_openai::StreamDecoder::new(Arc::from(self.upstream.to_string()), None);
        let mut text = String::new();
        loop {
            while let Some(event) = decoder.next_event() {
                match event.map_err(|e| Status::unavailable(e.to_string()))? {
                    ChatEvent::Delta(delta) => text.push_str(&delta),
                    ChatEvent::Done(_) => return Ok(text),
                    _ => {}
                }
            }
            match body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.map_err(|e| Status::unavailable(e.to_string()))?.into_data() {
                        decoder.push(&data);
                    }
                }
                None => decoder.end(),
            }
        }
    }
}

#[tonic::async_trait]
impl Copilot for Floor {
    async fn generate(&self, _: Request<GenerateRequest>) -> Result<Response<GenerateResponse>, Status> {
        let text = self.forward().await?;
        Ok(Response::new(GenerateResponse { text, model: "openai/gpt-4o-mini".into(), ..Default::default() }))
    }

    type ChatStream = futures::stream::Empty<Result<ChatResponse, Status>>;

    async fn chat(&self, _: Request<ChatRequest>) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("the floor gateway serves Generate only"))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        Err(Status::unimplemented("the floor gateway serves Generate only"))
    }

    async fn get_model(&self, _: Request<GetModelRequest>) -> Result<Response<GetModelResponse>, Status> {
        Err(Status::unimplemented("the floor gateway serves Generate only"))
    }

    async fn embed(&self, _: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        Err(Status::unimplemented("the floor gateway serves Generate only"))
    }

    async fn count_tokens(&self, _: Request<CountTokensRequest>) -> Result<Response<CountTokensResponse>, Status> {
        Err(Status::unimplemented("the floor gateway serves Generate only"))
    }
}
