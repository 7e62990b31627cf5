//! How a fake model is scripted — what it says, how its response ends or fails, how slow it is —
//! shared by every provider fake so a test reads the same whichever wire protocol is under test.
//! Each fake maps these onto its own protocol (an Ollama error line, an SSE error event, …).
//!
//! Every fake plays a script for one request with the same (crate-private) `Generation`, so all
//! tell the same story: which chunks, how fast, and where the behaviour cuts in.

use std::sync::Arc;
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
    /// An answer beyond text: thinking, text and tool calls, in this order. Each piece is one
    /// chunk (for the token limit and the behaviours' counts), and each fake writes it the way its
    /// provider does — see [`Piece`].
    Turn(Vec<Piece>),
}

/// One piece of a [`Reply::Turn`].
#[derive(Clone, Debug)]
pub enum Piece {
    /// A chunk of answer text.
    Text(String),
    /// A chunk of thinking, in the provider's own field for it.
    Thinking(String),
    /// The signature that closes the thinking so far (Anthropic's `signature_delta`, Gemini's
    /// `thoughtSignature`); providers without signatures leave it out.
    ThinkingSignature(Vec<u8>),
    /// Tool calls made together. Providers that stream arguments (OpenAI-compatible, Anthropic)
    /// send each call's arguments in fragments cut at [`FakeToolCall::splits`]; the others send
    /// whole calls. Each fake orders and interleaves the calls as its provider does.
    ToolCalls(Vec<FakeToolCall>),
}

/// A tool call a fake model makes.
#[derive(Clone, Debug)]
pub struct FakeToolCall {
    /// The provider's id for the call; `None` for providers that may omit one (Gemini before 3,
    /// Ollama before 0.12.10), which then send none.
    pub id: Option<String>,
    pub name: String,
    /// The arguments' JSON text, as the model writes it.
    pub arguments: String,
    /// Byte offsets in `arguments` where a streaming provider cuts it into fragments (any byte,
    /// even inside a number or an escape: real servers do).
    pub splits: Vec<usize>,
    /// Gemini's `thoughtSignature` beside the call.
    pub signature: Option<Vec<u8>>,
}

impl FakeToolCall {
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        FakeToolCall {
            id: Some(id.to_owned()),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
            splits: Vec::new(),
            signature: None,
        }
    }

    /// The call without a provider id.
    pub fn without_id(mut self) -> Self {
        self.id = None;
        self
    }

    pub fn split_at(mut self, splits: &[usize]) -> Self {
        self.splits = splits.to_vec();
        self
    }

    pub fn with_signature(mut self, signature: &[u8]) -> Self {
        self.signature = Some(signature.to_vec());
        self
    }

    /// The arguments in fragments, cut at `splits` (offsets out of range are ignored; a cut
    /// inside a UTF-8 character moves to its start).
    pub fn fragments(&self) -> Vec<&str> {
        let mut cuts: Vec<usize> =
            self.splits.iter().copied().filter(|&at| at > 0 && at < self.arguments.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut fragments = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for mut cut in cuts {
            while !self.arguments.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut > start {
                fragments.push(&self.arguments[start..cut]);
                start = cut;
            }
        }
        fragments.push(&self.arguments[start..]);
        fragments
    }
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
    /// For an embedding model: the length of its vectors ([`fake_embedding`] makes them). A model
    /// with none cannot embed, and one with some cannot chat, as the providers answer.
    pub embedding_length: Option<u32>,
    /// What the model says instead of `reply` when the conversation ends with tool results (the
    /// second turn of a tool loop); `None` says `reply` again. An [`Reply::Echo`] here repeats the
    /// last tool result.
    pub after_tool_result: Option<Reply>,
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
            after_tool_result: None,
            embedding_length: None,
        }
    }

    /// An embedding model whose vectors have `dimensions` components.
    pub fn embedding(name: &str, dimensions: u32) -> Self {
        let mut model = FakeModel::new(name);
        model.embedding_length = Some(dimensions);
        model.capabilities = vec!["embedding".to_owned()];
        model.family = "nomic-bert".to_owned();
        model.context_length = 2048;
        model
    }

    /// Says `reply` when the conversation ends with tool results (see [`Self::after_tool_result`]).
    pub fn with_reply_after_tool_result(mut self, reply: Reply) -> Self {
        self.after_tool_result = Some(reply);
        self
    }

    /// The model as it answers a conversation that ends with tool results or not.
    pub(crate) fn answering(self: &Arc<Self>, tool_result_last: bool) -> Arc<FakeModel> {
        match (&self.after_tool_result, tool_result_last) {
            (Some(reply), true) => {
                Arc::new(FakeModel { reply: reply.clone(), after_tool_result: None, ..(**self).clone() })
            }
            _ => self.clone(),
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

/// What a fake counting endpoint adds for each turn (content, message) of a conversation.
pub const COUNT_PER_TURN: usize = 2;

/// What a fake counting endpoint adds for each tool, besides the words of its description.
pub const COUNT_PER_TOOL: usize = 10;

/// The input tokens a fake counting endpoint (Gemini's `countTokens`, Anthropic's
/// `count_tokens`) reports: every whitespace-separated word of the conversation's texts (the
/// system prompt included), plus [`COUNT_PER_TURN`] per turn of the conversation as sent, plus
/// [`COUNT_PER_TOOL`] and the words of its description per tool. Deterministic, and moved by each
/// of those, so a test can tell that the system prompt and the tools reached the upstream.
pub fn fake_token_count<'a>(words: usize, turns: usize, tool_descriptions: impl IntoIterator<Item = &'a str>) -> usize {
    let tools: usize =
        tool_descriptions.into_iter().map(|description| COUNT_PER_TOOL + description.split_whitespace().count()).sum();
    words + COUNT_PER_TURN * turns + tools
}

/// The vector a fake embedding model gives `text`: deterministic, different for different texts,
/// and deliberately not of unit length (as llama.cpp's and Gemini's shortened vectors are not), so
/// a test can tell whether the gateway normalised it. Component `i` is built from the text's bytes
/// and `i`; the first is the text's length in bytes, so order mix-ups show.
pub fn fake_embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        state = (state ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..dimensions)
        .map(|i| {
            if i == 0 {
                return text.len() as f32;
            }
            state = (state ^ i as u64).wrapping_mul(0x0100_0000_01b3);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Why a reply that behaves ended. Each protocol has its own words for these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The reply ran out.
    Stop,
    /// The request's token limit was reached.
    Length,
}

impl Finish {
    /// As Ollama's `done_reason` and OpenAI's `finish_reason` say it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// The next piece of a reply. `D` is what a reply that behaves ends with: a [`Finish`], or more
/// where the protocol says more (Anthropic's stop sequence).
pub(crate) enum Step<'a, D = Finish> {
    Content(&'a str),
    /// A piece of a [`Reply::Turn`] other than text.
    Piece(&'a Piece),
    /// The reply is over.
    Done(D),
    /// [`Behaviour::ErrorAfter`]'s message.
    Error(&'a str),
    /// [`Behaviour::EndWithoutDone`]: end the body cleanly, without the protocol's final piece.
    EndWithoutDone,
    /// [`Behaviour::DropConnectionAfter`]: break the connection.
    Abort,
}

/// A content chunk by position, so the source can advance before the pause and be read after it.
#[derive(Clone, Copy)]
pub(crate) enum Chunk {
    Token(usize),
    /// A piece of a [`Reply::Turn`], by index.
    Piece(usize),
    Span(usize, usize),
    Tok {
        first: bool,
    },
}

/// Plays a model's script for one request: which chunks, how fast, and how it ends. Shared by
/// the streaming and the whole-response paths of every fake so all tell the same story.
pub(crate) struct Generation {
    model: Arc<FakeModel>,
    /// The echo text; empty for other replies.
    text: String,
    /// Position in the tokens or the echo text.
    cursor: usize,
    sent: usize,
    limit: usize,
    /// Chunks before the behaviour's misbehaviour; `usize::MAX` when it behaves.
    cut: usize,
}

impl Generation {
    /// `last_user` is the text [`Reply::Echo`] repeats; `limit` the chunks the request allows
    /// (`usize::MAX` for no limit).
    pub(crate) fn new(model: Arc<FakeModel>, last_user: &str, limit: usize) -> Self {
        let text = match model.reply {
            Reply::Echo => format!("You said: {last_user}"),
            Reply::Tokens(_) | Reply::Endless | Reply::Turn(_) => String::new(),
        };
        let cut = match &model.behaviour {
            Behaviour::ErrorAfter { tokens, .. }
            | Behaviour::EndWithoutDone { tokens }
            | Behaviour::DropConnectionAfter { tokens } => *tokens,
            Behaviour::Normal | Behaviour::HttpError { .. } => usize::MAX,
        };
        Generation { model, text, cursor: 0, sent: 0, limit, cut }
    }

    /// For a response that is not streamed: an endless reply would never return, so it stops
    /// where a real model would, when its context window is full.
    pub(crate) fn stop_at_context_length(&mut self) {
        if matches!(self.model.reply, Reply::Endless) {
            self.limit = self.limit.min(self.model.context_length as usize);
        }
    }

    /// Content chunks produced so far.
    pub(crate) fn sent(&self) -> usize {
        self.sent
    }

    /// Whether the model is scripted to misbehave at some point.
    pub(crate) fn misbehaves(&self) -> bool {
        self.cut != usize::MAX
    }

    /// Whether the request's token limit has been reached.
    pub(crate) fn at_limit(&self) -> bool {
        self.sent >= self.limit
    }

    /// Whether the reply has nothing left after the chunks already taken.
    pub(crate) fn exhausted(&self) -> bool {
        match &self.model.reply {
            Reply::Tokens(tokens) => self.cursor >= tokens.len(),
            Reply::Turn(pieces) => self.cursor >= pieces.len(),
            Reply::Echo => self.cursor >= self.text.len(),
            Reply::Endless => false,
        }
    }

    /// Produces the next step; must not be called again after a step other than `Content`.
    pub(crate) async fn next(&mut self) -> Step<'_> {
        match self.next_chunk().await {
            Ok(chunk) => self.take_step(chunk),
            Err(finish) => self.ending(finish),
        }
    }

    /// Counts a chunk as sent and gives it as a step: text as [`Step::Content`], another piece
    /// of a turn as [`Step::Piece`].
    pub(crate) fn take_step<D>(&mut self, chunk: Chunk) -> Step<'_, D> {
        self.sent += 1;
        match (chunk, &self.model.reply) {
            (Chunk::Piece(index), Reply::Turn(pieces)) => match &pieces[index] {
                Piece::Text(text) => Step::Content(text),
                piece => Step::Piece(piece),
            },
            _ => Step::Content(self.text(chunk)),
        }
    }

    /// Whether the reply makes tool calls (its finish then says so, in the provider's words,
    /// where the provider does).
    pub(crate) fn calls_tools(&self) -> bool {
        matches!(&self.model.reply, Reply::Turn(pieces) if pieces.iter().any(|p| matches!(p, Piece::ToolCalls(_))))
    }

    /// The next chunk, after the model's pause before it; `Err` says why the reply ends instead
    /// (for a model that misbehaves, [`ending`](Self::ending) turns that into its misbehaviour).
    /// The chunk is not counted until it is [taken](Self::take).
    pub(crate) async fn next_chunk(&mut self) -> Result<Chunk, Finish> {
        let finish = if self.sent >= self.cut {
            Some(Finish::Stop)
        } else if self.sent >= self.limit {
            Some(Finish::Length)
        } else {
            None
        };
        let chunk = match finish {
            Some(finish) => Err(finish),
            None => self.advance().ok_or(Finish::Stop),
        };
        if chunk.is_err() {
            flush_point().await;
            return chunk;
        }
        let delay = self.model.token_delay;
        if delay.is_zero() {
            flush_point().await;
        } else {
            tokio::time::sleep(delay).await;
        }
        chunk
    }

    /// A chunk's text, without counting it.
    pub(crate) fn text(&self, chunk: Chunk) -> &str {
        match (chunk, &self.model.reply) {
            (Chunk::Token(index), Reply::Tokens(tokens)) => &tokens[index],
            (Chunk::Piece(index), Reply::Turn(pieces)) => match &pieces[index] {
                Piece::Text(text) | Piece::Thinking(text) => text,
                Piece::ThinkingSignature(_) | Piece::ToolCalls(_) => "",
            },
            (Chunk::Span(start, end), _) => &self.text[start..end],
            (Chunk::Tok { first: true }, _) => "tok",
            _ => " tok",
        }
    }

    /// Counts a chunk as sent and gives its text.
    pub(crate) fn take(&mut self, chunk: Chunk) -> &str {
        self.sent += 1;
        self.text(chunk)
    }

    /// How the reply ends: `done` when the model behaves, its misbehaviour otherwise.
    pub(crate) fn ending<D>(&self, done: D) -> Step<'_, D> {
        match &self.model.behaviour {
            Behaviour::Normal | Behaviour::HttpError { .. } => Step::Done(done),
            Behaviour::ErrorAfter { message, .. } => Step::Error(message),
            Behaviour::EndWithoutDone { .. } => Step::EndWithoutDone,
            Behaviour::DropConnectionAfter { .. } => Step::Abort,
        }
    }

    fn advance(&mut self) -> Option<Chunk> {
        match &self.model.reply {
            Reply::Tokens(tokens) => {
                let index = self.cursor;
                (index < tokens.len()).then(|| {
                    self.cursor += 1;
                    Chunk::Token(index)
                })
            }
            Reply::Echo => {
                let start = self.cursor;
                let rest = self.text.get(start..).filter(|rest| !rest.is_empty())?;
                // Each chunk is one word with the space before it: cut at the next space that
                // is not the chunk's first character.
                let first_len = rest.chars().next().map_or(0, char::len_utf8);
                let end = rest[first_len..].find(' ').map_or(self.text.len(), |at| start + first_len + at);
                self.cursor = end;
                Some(Chunk::Span(start, end))
            }
            Reply::Endless => Some(Chunk::Tok { first: self.sent == 0 }),
            Reply::Turn(pieces) => {
                let index = self.cursor;
                (index < pieces.len()).then(|| {
                    self.cursor += 1;
                    Chunk::Piece(index)
                })
            }
        }
    }
}

/// Hands control back to the runtime between pieces. hyper flushes what it has buffered whenever
/// the body is not ready, so this both sends each piece on its own and lets a zero-delay endless
/// stream notice that its client has gone.
pub(crate) async fn flush_point() {
    tokio::task::yield_now().await;
}
