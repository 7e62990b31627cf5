//! How a fake model is scripted — what it says, how its response ends or fails, how slow it is —
//! shared by every provider fake so a test reads the same whichever wire protocol is under test.
//! Each fake maps these onto its own protocol (an Ollama error line, an SSE error event, …).

use std::time::Duration;

/// What a model says.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Exactly these content chunks, in order.
    Tokens(Vec<String>),
    /// `"You said: <content of the last user message>"`, one chunk per word; every word but the
    /// first carries its leading space, so the chunks concatenate back to the exact text.
    Echo,
    /// `"tok"`, `" tok"`, `" tok"`, … until `options.num_predict` is reached or the client goes
    /// away. For cancellation and deadline tests. With `stream:false` it stops at the model's
    /// `context_length`, as a real model would, with `done_reason:"length"`.
    Endless,
}

/// How a chat response ends. The variants with `tokens` send up to that many content chunks
/// (fewer if the reply or the request's token limit runs out first) before misbehaving. The
/// comments describe Ollama's form; every fake documents its own equivalent.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// A complete response ending with a `done:true` line.
    Normal,
    /// Status 200, `tokens` chunks, then a `{"error": message}` line (no `done` field) and a clean
    /// end of body — what Ollama does when the runner fails mid-generation. With `stream:false`
    /// nothing has been sent yet, so it is a 500 with that error instead.
    ErrorAfter { tokens: usize, message: String },
    /// Status 200, `tokens` chunks, then a clean end of body without any `done:true` line. With
    /// `stream:false`, a 200 object that has `done:false`.
    EndWithoutDone { tokens: usize },
    /// Status 200, `tokens` chunks, then the connection is aborted: the body ends in an error
    /// rather than the chunked-encoding terminator.
    DropConnectionAfter { tokens: usize },
    /// That status with `{"error": message}` before anything is streamed.
    HttpError { status: u16, message: String },
}

/// One model a fake serves: its metadata (for model listings) and its script.
#[derive(Clone, Debug)]
pub struct FakeModel {
    /// `name[:tag]`; a missing tag means `latest`, as in Ollama.
    pub name: String,
    pub reply: Reply,
    pub behaviour: Behaviour,
    /// Pause before each content chunk; zero streams as fast as the client reads.
    pub token_delay: Duration,
    /// Pause before the response status and headers (a model load, or a slow server).
    pub header_delay: Duration,
    pub family: String,
    pub parameter_size: String,
    pub quantization_level: String,
    pub context_length: u32,
    /// Size on disk in bytes, as `/api/tags` reports it.
    pub size: u64,
    pub capabilities: Vec<String>,
}

impl FakeModel {
    /// A llama-3.2-3B-like model that echoes, with no delays.
    pub fn new(name: &str) -> Self {
        FakeModel {
            name: name.to_owned(),
            reply: Reply::Echo,
            behaviour: Behaviour::Normal,
            token_delay: Duration::ZERO,
            header_delay: Duration::ZERO,
            family: "llama".to_owned(),
            parameter_size: "3.2B".to_owned(),
            quantization_level: "Q4_K_M".to_owned(),
            context_length: 131_072,
            size: 2_019_393_189,
            capabilities: vec!["completion".to_owned()],
        }
    }

    pub fn with_reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }

    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    pub fn with_token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    pub fn with_header_delay(mut self, delay: Duration) -> Self {
        self.header_delay = delay;
        self
    }
}
