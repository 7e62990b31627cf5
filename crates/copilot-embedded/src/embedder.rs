//! The engine for one embedding model: a dedicated OS thread owning a llama.cpp context in
//! embedding mode, with the model's own pooling (mean for MiniLM), that packs the inputs of every
//! waiting call into one batch per decode — one sequence per input — and hands each call its
//! vectors in order once all of its inputs are done.
//!
//! It runs apart from the chat engines, so embedding work never holds a chat slot. Inputs are
//! taken round-robin from the waiting calls, so a call of 2,048 inputs shares each decode with a
//! call of one instead of making it wait for the whole batch. The caller checks every input
//! against [`EmbedderHandle::max_input_tokens`] first: llama.cpp aborts the process (it does not
//! return an error) on a sequence longer than the model's positions or a batch larger than the
//! context's micro-batch.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, mpsc};

use copilot_provider::ProviderError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::engine::{ContextThread, EngineError, InFlight, backend, load_model, spawn_context_thread};

/// llama.cpp's bound on sequence ids in one context.
const LLAMA_MAX_SEQ: usize = 256;

/// What an embedding engine may use.
#[derive(Debug, Clone)]
pub struct EmbedderSettings {
    /// Threads per decode (every decode is a batch of inputs: the server gives it `batch_threads`).
    pub threads: usize,
    /// Most tokens in one decode; also the longest input (with the model's own limit).
    pub batch_tokens: u32,
    /// Most inputs (sequences) in one decode.
    pub batch_inputs: usize,
    /// Calls that may wait (or be in progress) before new ones are refused.
    pub queue: usize,
}

impl Default for EmbedderSettings {
    /// The server's defaults with two threads.
    fn default() -> Self {
        Self { threads: 2, batch_tokens: 2048, batch_inputs: 64, queue: 16 }
    }
}

/// One `Embed` call's tokenized inputs, and where its vectors go.
pub struct EmbedJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, ProviderError>>,
}

/// Submission refused: the queue is full.
#[derive(Debug)]
pub struct QueueFull;

/// The tokio side's handle on a running embedding engine; dropping it stops the thread once the
/// calls in progress are answered.
pub struct EmbedderHandle {
    model: Arc<LlamaModel>,
    jobs: mpsc::SyncSender<EmbedJob>,
    in_flight: InFlight,
    settings: EmbedderSettings,
    max_input_tokens: usize,
}

impl EmbedderHandle {
    /// Loads the model and starts its thread. Blocking: call it from a blocking-friendly thread.
    pub fn start(path: &Path, mut settings: EmbedderSettings) -> Result<EmbedderHandle, EngineError> {
        let model = load_model(path)?;
        settings.batch_inputs = settings.batch_inputs.clamp(1, LLAMA_MAX_SEQ);
        settings.batch_tokens = settings.batch_tokens.max(1);
        // Positions beyond the trained ones do not exist in a BERT-like model (an abort, not an
        // error), and an input must fit one decode.
        let trained = match model.n_ctx_train() {
            0 => usize::MAX,
            n => n as usize,
        };
        let max_input_tokens = trained.min(settings.batch_tokens as usize);
        let (jobs, queue) = mpsc::sync_channel(settings.queue.max(1));
        let in_flight = InFlight::default();
        let work = EmbedThread { settings: settings.clone(), in_flight: in_flight.clone(), queue };
        spawn_context_thread(&model, path, "copilot-embed", work)?;
        Ok(EmbedderHandle { model, jobs, in_flight, settings, max_input_tokens })
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn settings(&self) -> &EmbedderSettings {
        &self.settings
    }

    /// The longest input, in tokens, this engine can embed.
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// Calls queued or in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Hands a call to the engine, or refuses it at once when the queue is full. Every input must
    /// be 1..=[`max_input_tokens`](Self::max_input_tokens) tokens long.
    pub fn submit(&self, job: EmbedJob) -> Result<(), QueueFull> {
        debug_assert!(job.inputs.iter().all(|i| !i.is_empty() && i.len() <= self.max_input_tokens));
        if self.in_flight.submit(self.settings.queue.max(1), &self.jobs, job) { Ok(()) } else { Err(QueueFull) }
    }
}

/// The embedding engine's thread: its context, and the batcher that serves the calls.
struct EmbedThread {
    settings: EmbedderSettings,
    in_flight: InFlight,
    queue: mpsc::Receiver<EmbedJob>,
}

impl ContextThread for EmbedThread {
    type Contexts<'m> = LlamaContext<'m>;

    fn contexts<'m>(&self, model: &'m LlamaModel) -> Result<LlamaContext<'m>, String> {
        new_context(model, &self.settings)
    }

    fn run<'m>(self, _model: &'m LlamaModel, context: LlamaContext<'m>) {
        Batcher::new(context, &self.settings, self.in_flight).run(self.queue);
    }
}

fn new_context<'m>(model: &'m LlamaModel, settings: &EmbedderSettings) -> Result<LlamaContext<'m>, String> {
    let backend = backend().map_err(|e| e.to_string())?;
    let threads = settings.threads.max(1) as i32;
    let params = LlamaContextParams::default()
        .with_embeddings(true)
        .with_n_ctx(NonZeroU32::new(settings.batch_tokens))
        .with_n_batch(settings.batch_tokens)
        // An encoder takes the whole batch in one micro-batch (llama.cpp asserts it).
        .with_n_ubatch(settings.batch_tokens)
        .with_n_seq_max(settings.batch_inputs as u32)
        // Any sequence may use the whole context (a decoder embedder keeps a KV cache).
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(backend, params).map_err(|e| e.to_string())
}

/// A call in progress.
struct Active {
    job: EmbedJob,
    /// The next input to put in a batch; inputs before it are done or in the current batch.
    next: usize,
    vectors: Vec<Vec<f32>>,
}

struct Batcher<'m> {
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_tokens: usize,
    batch_inputs: usize,
    active: VecDeque<Active>,
    in_flight: InFlight,
}

impl<'m> Batcher<'m> {
    fn new(context: LlamaContext<'m>, settings: &EmbedderSettings, in_flight: InFlight) -> Self {
        let batch_tokens = settings.batch_tokens as usize;
        Self {
            context,
            batch: LlamaBatch::new(batch_tokens, settings.batch_inputs as i32),
            batch_tokens,
            batch_inputs: settings.batch_inputs,
            active: VecDeque::new(),
            in_flight,
        }
    }

    fn run(mut self, queue: mpsc::Receiver<EmbedJob>) {
        let mut accepting = true;
        loop {
            if self.active.is_empty() {
                if !accepting {
                    return;
                }
                match queue.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while accepting {
                match queue.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => accepting = false,
                }
            }
            self.step();
        }
    }

    fn admit(&mut self, job: EmbedJob) {
        let vectors = Vec::with_capacity(job.inputs.len());
        self.active.push_back(Active { job, next: 0, vectors });
    }

    /// One decode over inputs taken round-robin from the calls in progress.
    fn step(&mut self) {
        // A caller that went away (deadline, cancellation) gets no more decodes.
        let before = self.active.len();
        self.active.retain(|a| !a.job.reply.is_closed());
        self.in_flight.done(before - self.active.len());
        if self.active.is_empty() {
            return;
        }
        self.batch.clear();
        let remaining: Vec<&[Vec<LlamaToken>]> = self.active.iter().map(|a| &a.job.inputs[a.next..]).collect();
        // The call of each sequence, by sequence id.
        let mut placed = pack(&remaining, Vec::len, self.batch_inputs, self.batch_tokens);
        for (seq, &index) in placed.iter().enumerate() {
            let active = &mut self.active[index];
            if self.batch.add_sequence(&active.job.inputs[active.next], seq as i32, true).is_err() {
                // Unreachable: the batch was sized for these limits. Decode what fits.
                placed.truncate(seq);
                break;
            }
            active.next += 1;
        }
        if placed.is_empty() {
            // Unreachable while every input fits a batch (the provider checks it): fail rather than spin.
            self.fail(&[0], "an input is longer than one embedding batch");
            return;
        }
        if let Err(e) = self.context.decode(&mut self.batch) {
            self.fail(&placed, &format!("llama.cpp failed to embed: {e}"));
            return;
        }
        for (seq, &index) in placed.iter().enumerate() {
            let vector = match self.context.embeddings_seq_ith(seq as i32) {
                Ok(values) => values.to_vec(),
                Err(e) => {
                    self.fail(&placed, &format!("llama.cpp gave no pooled embedding: {e}"));
                    return;
                }
            };
            self.active[index].vectors.push(vector);
        }
        // A decoder embedder keeps KV state; an encoder has none and this is free.
        self.context.clear_kv_cache();
        self.answer_finished();
    }

    /// Answers the calls whose every input has its vector.
    fn answer_finished(&mut self) {
        let mut index = 0;
        while index < self.active.len() {
            let active = &self.active[index];
            if active.vectors.len() < active.job.inputs.len() {
                index += 1;
                continue;
            }
            if let Some(done) = self.active.remove(index) {
                let _ = done.job.reply.send(Ok(done.vectors));
                self.in_flight.done(1);
            }
        }
    }

    /// Fails the calls that had inputs in the failed batch; the others go on.
    fn fail(&mut self, placed: &[usize], message: &str) {
        tracing::error!("{message}");
        let mut calls = placed.to_vec();
        calls.sort_unstable();
        calls.dedup();
        for index in calls.into_iter().rev() {
            if let Some(active) = self.active.remove(index) {
                let _ = active.job.reply.send(Err(ProviderError::Protocol(message.to_string())));
                self.in_flight.done(1);
            }
        }
    }
}

/// Which calls' next inputs make the next decode, by sequence id: one input from each call in
/// turn (round-robin, so a call of 2,048 inputs shares each decode with a call of one), while
/// there are sequences and tokens left. Packing stops at the first input that does not fit, so no
/// call is overtaken by smaller inputs behind it. `remaining[c]` are call `c`'s inputs not yet
/// embedded, in order.
fn pack<T>(remaining: &[&[T]], len: impl Fn(&T) -> usize, max_inputs: usize, max_tokens: usize) -> Vec<usize> {
    let mut taken = vec![0; remaining.len()];
    let mut placed = Vec::new();
    let mut tokens = 0;
    loop {
        let mut added = false;
        for (call, inputs) in remaining.iter().enumerate() {
            let Some(input) = inputs.get(taken[call]) else { continue };
            if placed.len() == max_inputs || tokens + len(input) > max_tokens {
                return placed;
            }
            tokens += len(input);
            taken[call] += 1;
            placed.push(call);
            added = true;
        }
        if !added {
            return placed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pack;

    fn packed(calls: &[&[usize]], max_inputs: usize, max_tokens: usize) -> Vec<usize> {
        pack(calls, |n| *n, max_inputs, max_tokens)
    }

    #[test]
    fn calls_share_a_decode_in_turn() {
        // A big call and two small ones: the small ones are in the first decode, not after the big one.
        let big = [5; 100];
        assert_eq!(packed(&[&big, &[5], &[5, 5]], 64, 2048), [vec![0, 1, 2, 0, 2], vec![0; 59],].concat());
        // Everything of the small calls, and the big one's first inputs, within 7 sequences.
        assert_eq!(packed(&[&big, &[5], &[5, 5]], 7, 2048), [0, 1, 2, 0, 2, 0, 0]);
    }

    #[test]
    fn the_token_budget_ends_the_decode_at_the_first_input_that_does_not_fit() {
        // 10 + 400 fit in 512; the next round's 10 would too, but the 400 of call 1 stops it first.
        assert_eq!(packed(&[&[10, 10, 10], &[400, 400]], 64, 512), [0, 1, 0]);
        assert_eq!(packed(&[&[300], &[300]], 64, 512), [0]);
        // An input as long as the budget goes alone.
        assert_eq!(packed(&[&[512], &[1]], 64, 512), [0]);
        assert!(packed(&[&[513]], 64, 512).is_empty());
        assert!(packed(&[], 64, 512).is_empty());
    }
}
