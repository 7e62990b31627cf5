//! Integration tests: the real `copilot` binary, a fake Ollama on loopback, and generated gRPC
//! clients (Rust here; Python in `polyglot.rs`).

mod api;
mod auth;
mod cache_coalescing;
mod conformance;
mod connections;
mod count_tokens;
mod deploy;
mod doctor;
#[cfg(feature = "embedded")]
mod embedded;
#[cfg(feature = "embedded")]
mod embedded_embeddings;
#[cfg(feature = "embedded")]
mod embedded_tools;
mod embeddings;
mod environment;
mod errors;
mod fake_providers;
mod grpcurl;
mod harness;
mod health_command;
mod lifecycle;
mod limits;
mod mesh;
mod pgo_toolchain;
mod polyglot;
mod prereqs;
mod providers;
#[cfg(feature = "embedded")]
mod rag;
mod redis_server;
mod request_bodies;
mod requests;
mod response_cache;
mod routing;
mod shared_budgets;
mod shared_cache;
mod shared_limits;
mod shared_sentinel;
mod telemetry;
mod tls;
mod vertex;
