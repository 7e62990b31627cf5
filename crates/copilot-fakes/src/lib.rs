//! Faithful, scriptable fakes of upstream LLM providers, for tests and benchmarks.
//!
//! A fake is a real HTTP server on a loopback port that speaks the provider's wire format —
//! status codes, error bodies, streaming framing, final statistics — so an adapter under test
//! exercises exactly the code paths it would against the real thing. Each fake can be scripted
//! per model to misbehave the way real servers do (errors before or during a stream, streams
//! that end early or break, slow model loads, overload) and it records what it was sent and how
//! each stream ended, so tests can assert on cancellation and retries.
//!
//! Four providers are faked, each on its own wire protocol:
//! - [`FakeOllama`]: Ollama's native API (`/api/chat`, NDJSON streams);
//! - [`FakeOpenAi`]: OpenAI's chat completions API (`/v1/chat/completions`, SSE), with a
//!   [`Flavour`] for each compatible server's deviations (vLLM, llama.cpp, Ollama's `/v1`, …);
//! - [`FakeGemini`]: the Google Gemini API (`streamGenerateContent?alt=sse`);
//! - [`FakeAnthropic`]: Anthropic's Messages API (`/v1/messages`, named SSE events).
//!
//! All of them serve models scripted with the same [`FakeModel`], [`Reply`] and [`Behaviour`]
//! (see [`script`]), and share one handle, [`Fake`], over their wire format: a loopback server
//! that stops when dropped, `fail_next`, recorded requests, and counters of completed, active and
//! abandoned streams.
//!
//! Besides the providers, [`FakeGoogleAuth`] plays Google's OAuth token endpoint and metadata
//! server (the credentials of Gemini on Vertex AI), and [`FakeCollector`] plays an OpenTelemetry
//! collector (OTLP/gRPC) for telemetry tests. For the wire cases no fake produces (events split
//! at awkward bytes, a body reset mid-stream), [`ScriptedServer`](scripted::ScriptedServer)
//! answers each request with scripted bytes and pauses.
//!
//! ```no_run
//! # async fn demo() {
//! use copilot_fakes::{Behaviour, FakeModel, FakeOllama, Reply};
//!
//! let fake = FakeOllama::start().await;
//! fake.add_model(FakeModel::new("llama3.2:3b").with_reply(Reply::Tokens(vec!["Hi".into(), "!".into()])));
//! fake.add_model(
//!     FakeModel::new("broken:1b").with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "boom".into() }),
//! );
//! let base_url = fake.base_url(); // point the adapter here
//! # let _ = base_url;
//! # }
//! ```

pub mod anthropic;
pub mod fake;
mod format;
pub mod gemini;
pub mod google;
mod harness;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod otlp;
pub mod providers;
pub mod script;
pub mod scripted;

pub use anthropic::FakeAnthropic;
pub use fake::Fake;
pub use gemini::FakeGemini;
pub use google::FakeGoogleAuth;
pub use ollama::{Behaviour, FakeModel, FakeOllama, Reply};
pub use openai::{FakeOpenAi, Flavour, fake_llama_cpp_tokens};
pub use otlp::FakeCollector;
pub use script::{COUNT_PER_TOOL, COUNT_PER_TURN, FakeToolCall, Piece, fake_embedding, fake_token_count};
