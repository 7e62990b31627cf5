//! The inference engine for one loaded model: a dedicated OS thread (never a tokio worker) that owns
//! a llama.cpp context with several sequence slots and serves them all with one batched decode per
//! step — as llama.cpp's own server and Ollama's parallel mode do — so aggregate tokens/s grows with
//! the number of concurrent streams.
//!
//! When prompts get more threads than steps (`prompt_threads` > `batch_threads`, the default),
//! prompts are read on a second context, one at a time, and each read prompt's KV cache moves into
//! its slot's sequence. llama.cpp sets a context's thread counts once, and its threads wait for
//! each other after every operation: a prompt's long operations can use every core, while
//! generation steps (one token per stream) would stall on every core as soon as anything else took
//! one. Otherwise prompt chunks share the steps' decodes, which reads the weights once for both.
//!
//! Jobs arrive on a bounded queue; beyond the slots and the queue, submission fails at once (the
//! provider maps that to RESOURCE_EXHAUSTED). Each job's output goes through its own bounded
//! channel: a stream whose client reads slowly is paused (its text waits in an outbox) instead of
//! stalling the others, and a stream whose client went away is dropped before the next token.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use copilot_provider::{ChatEvent, Completion, FinishReason, GenerationOptions, ProviderError, UpstreamTimings, Usage};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use tokio::sync::mpsc as tokio_mpsc;

use crate::stop::StopMatcher;
use crate::tool_calls::{Parsed, ToolCallParser};

/// llama.cpp's "pick a random seed" value.
const RANDOM_SEED: u32 = u32::MAX;

/// How long the engine naps when every active stream is waiting for its client to read.
const PAUSED_NAP: Duration = Duration::from_millis(1);

/// What one engine (one loaded model) is allowed to use.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Threads for decodes of one token (one stream generating).
    pub threads: usize,
    /// Threads for decodes of several streams' next tokens: llama.cpp's `n_threads_batch` of the
    /// generation context.
    pub batch_threads: usize,
    /// Threads for reading prompts, on the prompt context.
    pub prompt_threads: usize,
    /// Sequences decoded together (parallel streams).
    pub slots: usize,
    /// Requests that may wait for a free slot before new ones are refused.
    pub queue: usize,
    /// Context window of each slot, in tokens (prompt + output).
    pub context_per_slot: u32,
    /// Most tokens decoded in one step (prompt chunks are split to fit).
    pub batch_size: u32,
}

impl EngineSettings {
    /// Whether prompts are read on a context of their own: only when they get more threads than
    /// steps. Otherwise they share the steps' decodes, which reads the weights once for both.
    pub fn reads_prompts_apart(&self) -> bool {
        self.prompt_threads > self.batch_threads
    }
}

/// One request for the engine: a tokenized prompt and how to sample the answer.
pub struct Job {
    pub prompt: Vec<LlamaToken>,
    pub options: GenerationOptions,
    /// Extra text that ends the answer (the template's end-of-turn markers, for models that emit
    /// them as plain text), on top of the request's own stop sequences.
    pub end_markers: Vec<String>,
    pub out: tokio_mpsc::Sender<Result<ChatEvent, ProviderError>>,
    /// The model name reported in the final event.
    pub model_name: String,
    pub load: Option<Duration>,
    /// A grammar the answer must follow (JSON, a tool call), applied before the final pick.
    pub grammar: Option<LlamaSampler>,
    /// Reads `<tool_call>` blocks out of the answer, when the request offered tools.
    pub tool_calls: Option<ToolCallParser>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start llama.cpp: {0}")]
    Backend(String),
    #[error("llama.cpp could not load {path}: {detail}")]
    Load { path: String, detail: String },
    #[error("llama.cpp could not create a context for {path}: {detail}")]
    Context { path: String, detail: String },
    #[error("cannot start the inference thread: {0}")]
    Thread(String),
}

/// Submission refused: every slot is busy and the queue is full.
#[derive(Debug)]
pub struct QueueFull;

/// The tokio side's handle on a running engine. Dropping every handle stops the engine once its
/// in-flight streams have finished.
pub struct EngineHandle {
    model: Arc<LlamaModel>,
    jobs: mpsc::SyncSender<Job>,
    /// Jobs submitted and not yet finished (queued or in a slot).
    in_flight: InFlight,
    settings: EngineSettings,
}

/// The process's llama.cpp backend, started on first use.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs through our tracing subscriber (at its own levels) rather than to stderr.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// Loads the GGUF file at `path` (blocking).
pub(crate) fn load_model(path: &Path) -> Result<Arc<LlamaModel>, EngineError> {
    let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
        .map_err(|e| EngineError::Load { path: path.display().to_string(), detail: e.to_string() })?;
    Ok(Arc::new(model))
}

/// Work that owns llama.cpp contexts of a model, on a thread of its own: a chat engine's
/// scheduler, an embedding engine's batcher.
pub(crate) trait ContextThread: Send + 'static {
    /// The contexts it works with.
    type Contexts<'m>;
    /// Makes the contexts, on the thread that will use them.
    fn contexts<'m>(&self, model: &'m LlamaModel) -> Result<Self::Contexts<'m>, String>;
    /// Serves jobs until their channel closes.
    fn run<'m>(self, model: &'m LlamaModel, contexts: Self::Contexts<'m>);
}

/// Starts `work` on a thread called `name`; returns once its context exists, or why it could not
/// be made (`path` names the model in that error).
pub(crate) fn spawn_context_thread(
    model: &Arc<LlamaModel>,
    path: &Path,
    name: &str,
    work: impl ContextThread,
) -> Result<(), EngineError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let model = model.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let contexts = match work.contexts(&model) {
                Ok(contexts) => {
                    let _ = ready_tx.send(Ok(()));
                    contexts
                }
                Err(detail) => {
                    let _ = ready_tx.send(Err(detail));
                    return;
                }
            };
            work.run(&model, contexts);
        })
        .map_err(|e| EngineError::Thread(e.to_string()))?;
    let path = path.display().to_string();
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(EngineError::Context { path, detail }),
        Err(_) => Err(EngineError::Context { path, detail: format!("the {name} thread died") }),
    }
}

/// Jobs handed to an engine thread and not yet finished (queued or running), bounded when they
/// are submitted: beyond the bound a job is refused at once rather than queued without end.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Sends `job` unless `limit` jobs are already in flight or the channel is full.
    pub(crate) fn submit<T>(&self, limit: usize, jobs: &mpsc::SyncSender<T>, job: T) -> bool {
        // The channel takes jobs as the thread frees up, so its own bound alone would let more
        // wait than `limit`; counting keeps the promise.
        if self.0.fetch_add(1, Ordering::AcqRel) >= limit {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if jobs.try_send(job).is_err() {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// `count` jobs finished, or were dropped.
    pub(crate) fn done(&self, count: usize) {
        self.0.fetch_sub(count, Ordering::AcqRel);
    }
}

impl EngineHandle {
    /// Loads the model and starts its thread. Blocking: call it from a blocking-friendly thread.
    pub fn start(path: &Path, settings: EngineSettings) -> Result<EngineHandle, EngineError> {
        let model = load_model(path)?;
        // The in-flight count enforces "slots + queue"; the channel must hold that many, because
        // jobs can arrive faster than the engine thread moves them into slots.
        let (jobs, queue) = mpsc::sync_channel(settings.slots.max(1) + settings.queue);
        let in_flight = InFlight::default();
        let work = ChatThread { settings: settings.clone(), in_flight: in_flight.clone(), queue };
        spawn_context_thread(&model, path, "copilot-llama", work)?;
        Ok(EngineHandle { model, jobs, in_flight, settings })
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Hands a job to the engine, or refuses it at once when the slots and the queue are full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let limit = self.settings.slots + self.settings.queue;
        if self.in_flight.submit(limit, &self.jobs, job) { Ok(()) } else { Err(QueueFull) }
    }
}

/// The chat engine's thread: its context, and the scheduler that serves its slots.
struct ChatThread {
    settings: EngineSettings,
    in_flight: InFlight,
    queue: mpsc::Receiver<Job>,
}

/// The chat engine's contexts: one whose sequences are the slots, and one that reads prompts
/// when prompts get more threads than steps (otherwise prompts share the steps' decodes, which
/// reads the weights once for both).
struct ChatContexts<'m> {
    generation: LlamaContext<'m>,
    prompts: Option<LlamaContext<'m>>,
}

impl ContextThread for ChatThread {
    type Contexts<'m> = ChatContexts<'m>;

    fn contexts<'m>(&self, model: &'m LlamaModel) -> Result<ChatContexts<'m>, String> {
        let settings = &self.settings;
        let slots = settings.slots.max(1) as u32;
        // Both contexts decode up to `batch_size` tokens at once (a model with a sliding window
        // sizes that part of its cache by it, and a read prompt must fit where it moves). With a
        // prompt context, the generation context keeps one unified cache: llama.cpp moves a
        // sequence only between caches of as many streams (the prompt context's one). The slots'
        // own limit (`context_per_slot`) is kept by the scheduler.
        let separate_prompts = settings.reads_prompts_apart();
        let generation = new_context(
            model,
            settings.context_per_slot.saturating_mul(slots),
            (slots, separate_prompts),
            (settings.threads, settings.batch_threads),
            settings.batch_size,
        )?;
        let prompts = if separate_prompts {
            let threads = (settings.prompt_threads, settings.prompt_threads);
            Some(new_context(model, settings.context_per_slot, (1, true), threads, settings.batch_size)?)
        } else {
            None
        };
        Ok(ChatContexts { generation, prompts })
    }

    fn run<'m>(self, model: &'m LlamaModel, contexts: ChatContexts<'m>) {
        Scheduler::new(model, contexts, self.settings, self.in_flight).run(self.queue);
    }
}

/// A context of `cells` KV cells for `sequences`, in one cache they share when `unified` (CPU
/// flash attention skips the other sequences' cells, so that costs a step little), and with
/// llama.cpp's two thread counts: for decodes of one token and of more.
fn new_context(
    model: &LlamaModel,
    cells: u32,
    (sequences, unified): (u32, bool),
    (threads, batch_threads): (usize, usize),
    batch_size: u32,
) -> Result<LlamaContext<'_>, String> {
    let backend = backend().map_err(|e| e.to_string())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(batch_size)
        .with_n_ubatch(batch_size)
        .with_n_seq_max(sequences)
        .with_kv_unified(unified)
        .with_n_threads(threads.max(1) as i32)
        .with_n_threads_batch(batch_threads.max(1) as i32);
    model.new_context(backend, params).map_err(|e| e.to_string())
}

/// Where a slot's sequence is.
enum Phase {
    /// Prompt tokens `[done..]` still have to be decoded.
    Prompt { done: usize },
    /// `next` was sampled and goes into the next decode.
    Generating { next: LlamaToken },
    /// Finished; waiting for its outbox to reach the client.
    Draining,
}

struct Slot {
    seq: i32,
    job: Job,
    phase: Phase,
    sampler: Sampling,
    /// Position of the next token in this sequence.
    position: i32,
    generated: u32,
    /// Bytes of a UTF-8 character split across tokens.
    partial_utf8: Vec<u8>,
    stop: StopMatcher,
    /// Events not yet accepted by the client's channel.
    outbox: VecDeque<Result<ChatEvent, ProviderError>>,
    admitted: Instant,
    first_token: Option<Instant>,
    /// Index of this slot's logits in the current batch.
    logits_at: Option<i32>,
}

impl Slot {
    fn push_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        // Coalesce while the client is behind: fewer, larger messages.
        if let Some(Ok(ChatEvent::Delta(pending))) = self.outbox.back_mut() {
            pending.push_str(&text);
        } else {
            self.outbox.push_back(Ok(ChatEvent::Delta(text)));
        }
    }

    /// The answer's next text, through the tool-call parser when there is one.
    fn push_answer(&mut self, text: &str) -> Result<(), ProviderError> {
        let Some(parser) = self.job.tool_calls.as_mut() else {
            self.push_text(text.to_owned());
            return Ok(());
        };
        let mut parsed = Vec::new();
        parser.push(text, &mut parsed)?;
        self.push_parsed(parsed);
        Ok(())
    }

    fn push_parsed(&mut self, parsed: Vec<Parsed>) {
        for item in parsed {
            match item {
                Parsed::Text(text) => self.push_text(text),
                Parsed::Call(call) => self.outbox.push_back(Ok(ChatEvent::tool_call(call))),
            }
        }
    }

    /// Ends the stream with an error after what it has already said.
    fn fail(&mut self, message: String) {
        self.outbox.push_back(Err(ProviderError::MidStream(message)));
        self.phase = Phase::Draining;
    }

    /// Hands queued events to the client's channel; returns false if the client is gone.
    fn flush(&mut self) -> bool {
        if self.job.out.is_closed() {
            return false;
        }
        while let Some(event) = self.outbox.pop_front() {
            match self.job.out.try_send(event) {
                Ok(()) => {}
                Err(tokio_mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return true;
                }
                Err(tokio_mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    /// The generation context: slot `i` is its sequence `i`.
    context: LlamaContext<'m>,
    /// Reads prompts on a context of their own; without it, prompts share the steps' decodes.
    prompts: Option<PromptReader<'m>>,
    settings: EngineSettings,
    slots: Vec<Option<Slot>>,
    batch: LlamaBatch<'static>,
    in_flight: InFlight,
    piece: Vec<u8>,
}

/// The prompt context, whose one sequence holds the prompt being read.
struct PromptReader<'m> {
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// The slot whose prompt is being read, from the choice of it to its move.
    reading: Option<usize>,
}

impl PromptReader<'_> {
    /// Forgets the prompt being read, if any.
    fn reset(&mut self) {
        if self.reading.take().is_some() {
            let _ = self.context.clear_kv_cache_seq(Some(0), None, None);
        }
    }
}

impl<'m> Scheduler<'m> {
    fn new(model: &'m LlamaModel, contexts: ChatContexts<'m>, settings: EngineSettings, in_flight: InFlight) -> Self {
        let slots = (0..settings.slots.max(1)).map(|_| None).collect();
        let batch = LlamaBatch::new((settings.batch_size as usize).max(settings.slots), settings.slots.max(1) as i32);
        let prompts = contexts.prompts.map(|context| PromptReader {
            context,
            batch: LlamaBatch::new(settings.batch_size as usize, 1),
            reading: None,
        });
        let context = contexts.generation;
        Self { model, context, prompts, settings, slots, batch, in_flight, piece: Vec::with_capacity(32) }
    }

    fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut accepting = true;
        loop {
            // Admit: block only when there is nothing else to do.
            if self.slots.iter().all(Option::is_none) {
                if !accepting {
                    return;
                }
                match queue.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while accepting && self.slots.iter().any(Option::is_none) {
                match queue.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => accepting = false,
                }
            }
            self.deliver();
            let stepped = self.step();
            // One chunk of a prompt between steps: generating streams keep moving while it is read.
            let read = self.read_prompt();
            if !stepped && !read {
                std::thread::sleep(PAUSED_NAP);
            }
        }
    }

    fn admit(&mut self, mut job: Job) {
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            // Unreachable: admit is only called with a free slot.
            self.in_flight.done(1);
            return;
        };
        if job.out.is_closed() {
            self.in_flight.done(1);
            return;
        }
        let mut stops = job.options.stop.clone();
        stops.extend(job.end_markers.iter().cloned());
        let slot = Slot {
            seq: index as i32,
            sampler: Sampling {
                chain: sampler(&job.options),
                greedy: is_greedy(&job.options),
                grammar: job.grammar.take(),
            },
            phase: Phase::Prompt { done: 0 },
            position: 0,
            generated: 0,
            partial_utf8: Vec::new(),
            stop: StopMatcher::new(stops),
            outbox: VecDeque::new(),
            admitted: Instant::now(),
            first_token: None,
            logits_at: None,
            job,
        };
        let _ = self.context.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        self.slots[index] = Some(slot);
    }

    /// Delivers outboxes, and frees the slots whose client went away or whose answer was delivered.
    fn deliver(&mut self) {
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_mut() else { continue };
            let client_here = slot.flush();
            let delivered = matches!(slot.phase, Phase::Draining) && slot.outbox.is_empty();
            if !client_here || delivered {
                self.release(index);
            }
        }
    }

    fn release(&mut self, index: usize) {
        if let Some(prompts) = self.prompts.as_mut()
            && prompts.reading == Some(index)
        {
            prompts.reset();
        }
        if let Some(slot) = self.slots[index].take() {
            let _ = self.context.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            self.in_flight.done(1);
        }
    }

    /// One batched decode of every generating slot's next token, and of prompt chunks when they
    /// have no context of their own. Returns false if there was nothing to decode.
    fn step(&mut self) -> bool {
        self.batch.clear();
        let budget = self.settings.batch_size as usize;
        let mut used = 0usize;
        // Generating sequences first: one token each keeps every stream moving while a long
        // prompt is read in chunks alongside.
        for slot in self.slots.iter_mut().flatten() {
            slot.logits_at = None;
            if let Phase::Generating { next } = slot.phase
                && slot.outbox.is_empty()
                && used < budget
            {
                if self.batch.add(next, slot.position, &[slot.seq], true).is_err() {
                    continue;
                }
                slot.logits_at = Some(used as i32);
                slot.position += 1;
                used += 1;
            }
        }
        if self.prompts.is_none() {
            for slot in self.slots.iter_mut().flatten() {
                let Phase::Prompt { done } = slot.phase else { continue };
                let take = budget.saturating_sub(used);
                if take == 0 {
                    break;
                }
                let added = add_prompt_chunk(&mut self.batch, &slot.job.prompt, done, take, slot.seq);
                if done + added == slot.job.prompt.len() {
                    slot.logits_at = Some((used + added) as i32 - 1);
                }
                slot.position += added as i32;
                slot.phase = Phase::Prompt { done: done + added };
                used += added;
            }
        }
        if used == 0 {
            return false;
        }
        if let Err(e) = self.context.decode(&mut self.batch) {
            self.fail_batch(&format!("llama.cpp failed to decode: {e}"));
            return true;
        }
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_mut() else { continue };
            let Some(at) = slot.logits_at else { continue };
            match slot.sampler.sample(&self.context, at) {
                Ok(token) => self.advance(index, token),
                Err(message) => slot.fail(message),
            }
        }
        true
    }

    /// Decodes the next chunk of one prompt (the earliest admitted) on the prompt context. A
    /// prompt read to its end gives its first token, and its KV cache moves to the slot's
    /// sequence. Returns false if no prompt was waiting.
    fn read_prompt(&mut self) -> bool {
        let Some(prompts) = self.prompts.as_mut() else { return false };
        let index = match prompts.reading {
            Some(index) => index,
            None => {
                let waiting = self.slots.iter().enumerate().filter_map(|(index, slot)| match slot {
                    Some(slot) if matches!(slot.phase, Phase::Prompt { .. }) => Some((slot.admitted, index)),
                    _ => None,
                });
                let Some((_, index)) = waiting.min() else { return false };
                prompts.reading = Some(index);
                index
            }
        };
        let Some(slot) = self.slots[index].as_mut() else {
            prompts.reset();
            return false;
        };
        let Phase::Prompt { done } = slot.phase else {
            prompts.reset();
            return false;
        };
        let total = slot.job.prompt.len();
        prompts.batch.clear();
        let added = add_prompt_chunk(&mut prompts.batch, &slot.job.prompt, done, self.settings.batch_size as usize, 0);
        if let Err(e) = prompts.context.decode(&mut prompts.batch) {
            slot.fail(format!("llama.cpp failed to decode the prompt: {e}"));
            prompts.reset();
            return true;
        }
        slot.position += added as i32;
        slot.phase = Phase::Prompt { done: done + added };
        if done + added < total {
            return true;
        }
        let token = slot.sampler.sample(&prompts.context, added as i32 - 1);
        let moved = prompts
            .context
            .state_seq_get(0, LlamaStateSeqFlags::empty())
            .and_then(|state| self.context.state_seq_set(&state, slot.seq));
        prompts.reset();
        match (token, moved) {
            (Ok(token), Ok(())) => self.advance(index, token),
            (Err(message), _) => slot.fail(message),
            (_, Err(e)) => slot.fail(format!("llama.cpp could not move the read prompt to its stream: {e}")),
        }
        true
    }

    /// Takes a freshly sampled token into its slot's answer.
    fn advance(&mut self, index: usize, token: LlamaToken) {
        let vocab = self.model.vocab();
        let context_limit = self.settings.context_per_slot as i32;
        let Some(slot) = self.slots[index].as_mut() else { return };
        let now = Instant::now();
        slot.first_token.get_or_insert(now);
        if vocab.is_eog(token) {
            return finish(slot, FinishReason::Stop);
        }
        slot.generated += 1;
        self.piece.clear();
        // `<tool_call>` may be a special token, whose text is hidden unless asked for.
        let special = slot.job.tool_calls.is_some();
        vocab.token_to_piece_into(token, &mut self.piece, special, None);
        slot.partial_utf8.extend_from_slice(&self.piece);
        let text = take_complete_utf8(&mut slot.partial_utf8);
        let (text, stopped) = slot.stop.push(&text);
        if let Err(e) = slot.push_answer(&text) {
            slot.outbox.push_back(Err(e));
            slot.phase = Phase::Draining;
            return;
        }
        if stopped {
            return finish(slot, FinishReason::Stop);
        }
        let max_tokens = slot.job.options.max_tokens.unwrap_or(u32::MAX);
        if slot.generated >= max_tokens || slot.position + 1 >= context_limit {
            return finish(slot, FinishReason::Length);
        }
        slot.phase = Phase::Generating { next: token };
    }

    fn fail_batch(&mut self, message: &str) {
        let prompts_shared = self.prompts.is_none();
        for slot in self.slots.iter_mut().flatten() {
            if slot.logits_at.is_some() || (prompts_shared && matches!(slot.phase, Phase::Prompt { .. })) {
                slot.fail(message.to_string());
            }
        }
        tracing::error!("{message}");
    }
}

/// Adds up to `most` of `prompt`'s tokens from `done` on to `batch`, as sequence `seq` at their
/// own positions, with logits for the prompt's last token; returns how many it added.
fn add_prompt_chunk(batch: &mut LlamaBatch, prompt: &[LlamaToken], done: usize, most: usize, seq: i32) -> usize {
    let end = prompt.len().min(done + most);
    let mut added = 0;
    for (position, token) in prompt.iter().enumerate().take(end).skip(done) {
        if batch.add(*token, position as i32, &[seq], position + 1 == prompt.len()).is_err() {
            break;
        }
        added += 1;
    }
    added
}

fn finish(slot: &mut Slot, mut reason: FinishReason) {
    let rest = slot.stop.finish();
    if let Err(e) = slot.push_answer(&rest) {
        slot.outbox.push_back(Err(e));
        slot.phase = Phase::Draining;
        return;
    }
    if let Some(parser) = slot.job.tool_calls.as_mut() {
        let mut parsed = Vec::new();
        parser.finish(&mut parsed);
        let called = parser.called();
        slot.push_parsed(parsed);
        if called && reason == FinishReason::Stop {
            reason = FinishReason::ToolCalls;
        }
    }
    let now = Instant::now();
    let first = slot.first_token.unwrap_or(now);
    let completion = Completion {
        finish_reason: reason,
        model: slot.job.model_name.clone(),
        usage: Usage { input_tokens: slot.job.prompt.len() as u32, output_tokens: slot.generated, ..Usage::default() },
        timings: UpstreamTimings {
            load: slot.job.load,
            prompt_eval: Some(first - slot.admitted),
            generation: Some(now - first),
            total: Some(now - slot.admitted),
        },
        response_id: None,
    };
    slot.outbox.push_back(Ok(ChatEvent::done(completion)));
    slot.phase = Phase::Draining;
}

/// A slot's sampler: the usual chain, and the grammar the answer must follow, if any.
struct Sampling {
    chain: LlamaSampler,
    /// The chain is llama.cpp's greedy sampler alone.
    greedy: bool,
    grammar: Option<LlamaSampler>,
}

impl Sampling {
    /// Picks the next token from the logits at `at`, and lets the samplers see it.
    ///
    /// With a grammar, as llama.cpp's own `common_sampler` does: pick without it first and keep
    /// the pick if the grammar allows it (checking one token is cheap), and only otherwise mask
    /// the whole vocabulary with the grammar and pick again. Masking every step would check
    /// each of ~150k token texts against the grammar for every token generated.
    fn sample(&mut self, context: &LlamaContext<'_>, at: i32) -> Result<LlamaToken, String> {
        let Some(grammar) = self.grammar.as_mut() else {
            if self.greedy {
                return Ok(first_largest(context.get_logits_ith(at)));
            }
            return Ok(self.chain.sample(context, at));
        };
        let mut candidates = context.token_data_array_ith(at);
        candidates.apply_sampler(&mut self.chain);
        let picked = candidates.selected_token();
        let allowed = picked.is_some_and(|token| {
            let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
            one.apply_sampler(grammar);
            one.data.first().is_some_and(|d| d.logit().is_finite())
        });
        let token = match picked {
            Some(token) if allowed => token,
            _ => {
                let mut candidates = context.token_data_array_ith(at);
                candidates.apply_sampler(grammar);
                if !candidates.data.iter().any(|d| d.logit().is_finite()) {
                    return Err("the grammar constraining the answer allows no next token".into());
                }
                candidates.apply_sampler(&mut self.chain);
                candidates.selected_token().ok_or("the sampler picked no token under the grammar")?
            }
        };
        grammar
            .try_accept(token)
            .map_err(|e| format!("the grammar constraining the answer rejected the sampled token: {e}"))?;
        self.chain.accept(token);
        Ok(token)
    }
}

/// The token with the largest logit, the first of equals: what llama.cpp's greedy sampler picks,
/// without copying the ~150k logits into candidates first as its `llama_sampler_sample` does
/// (about a quarter of a millisecond per stream per step under perf, and each step waits for it).
fn first_largest(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (index, logit) in logits.iter().enumerate().skip(1) {
        if *logit > logits[best] {
            best = index;
        }
    }
    LlamaToken::new(best as i32)
}

fn is_greedy(options: &GenerationOptions) -> bool {
    options.temperature.is_some_and(|t| t <= 0.0)
}

/// Greedy at temperature 0; otherwise llama.cpp's usual chain with its usual defaults.
fn sampler(options: &GenerationOptions) -> LlamaSampler {
    if is_greedy(options) {
        return LlamaSampler::greedy();
    }
    let temperature = options.temperature.unwrap_or(0.8);
    // A u64 seed from the API folds into llama.cpp's u32; avoid the value that means "random".
    let seed = options.seed.map(|s| ((s ^ (s >> 32)) as u32).min(RANDOM_SEED - 1)).unwrap_or(RANDOM_SEED);
    LlamaSampler::chain_simple([
        LlamaSampler::top_k(options.top_k.map(|k| k as i32).unwrap_or(40)),
        LlamaSampler::top_p(options.top_p.unwrap_or(0.95), 1),
        LlamaSampler::min_p(0.05, 1),
        LlamaSampler::temp(temperature),
        LlamaSampler::dist(seed),
    ])
}

/// Removes and returns the longest valid UTF-8 prefix, keeping the bytes of a character that is
/// split across tokens for the next call. Invalid bytes become U+FFFD rather than an error.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let text = text.to_string();
            bytes.clear();
            text
        }
        Err(e) if e.error_len().is_none() => {
            let valid = e.valid_up_to();
            let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
            bytes.drain(..valid);
            text
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_read_apart_only_with_more_threads_than_steps() {
        let settings = |batch_threads, prompt_threads| EngineSettings {
            threads: 1,
            batch_threads,
            prompt_threads,
            slots: 2,
            queue: 0,
            context_per_slot: 64,
            batch_size: 16,
        };
        assert!(settings(1, 2).reads_prompts_apart());
        assert!(!settings(2, 2).reads_prompts_apart());
        assert!(!settings(3, 2).reads_prompts_apart());
    }

    #[test]
    fn greedy_picks_the_first_of_the_largest_logits() {
        assert_eq!(first_largest(&[0.5, 2.0, -1.0, 2.0, 1.9]), LlamaToken::new(1));
        assert_eq!(first_largest(&[3.0, 2.0, 1.0]), LlamaToken::new(0));
        assert_eq!(first_largest(&[f32::NEG_INFINITY, -7.0, f32::NAN, -6.5]), LlamaToken::new(3));
    }

    #[test]
    fn utf8_split_across_tokens_is_held_back() {
        let mut bytes = "héllo".as_bytes()[..2].to_vec(); // "h" + first byte of "é"
        assert_eq!(take_complete_utf8(&mut bytes), "h");
        assert_eq!(bytes.len(), 1);
        bytes.extend_from_slice(&"héllo".as_bytes()[2..]);
        assert_eq!(take_complete_utf8(&mut bytes), "éllo");
        assert!(bytes.is_empty());
    }

    #[test]
    fn invalid_utf8_becomes_a_replacement_character() {
        let mut bytes = vec![b'a', 0xff, b'b'];
        assert_eq!(take_complete_utf8(&mut bytes), "a\u{fffd}b");
        assert!(bytes.is_empty());
    }
}
