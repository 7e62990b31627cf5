//! llama.cpp's own embedding throughput on a GGUF embedding model, the way llama.cpp's
//! `llama-embedding` example embeds — every input its own sequence in one batch, one decode, the
//! model's pooling — driving the same llama.cpp build Copilot links, with no gateway around it. It
//! is the baseline for `copilot-bench load --rpc embed` against the embedded engine.
//!
//! `cargo run --release -p copilot-embedded --example embed_bench -- MODEL.gguf [threads] [batch] [seconds] [context] [text]`
//!
//! `batch` copies of `text` per decode, decoded back to back for `seconds` after one warm-up
//! decode; prints embeddings/s and the time per decode. `context` (default: just what the batch
//! needs) sizes the context and its micro-batch in tokens, and its sequences to at least 64, as
//! Copilot's embedding engine does (`embedding_batch_tokens`, 2048 by default).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

/// The words `copilot-bench`'s short scenario sends (its first ten).
const DEFAULT_TEXT: &str = "Write a long, detailed story about the scene described here.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: embed_bench MODEL.gguf [threads] [batch] [seconds] [context] [text]")?;
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (threads, batch_size, seconds, context) = (arg(2, 1), arg(3, 8).max(1), arg(4, 5), arg(5, 0));
    let text = args.get(6).map(String::as_str).unwrap_or(DEFAULT_TEXT);

    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())?;
    let tokens = model.vocab().tokenize(text.as_bytes(), true, false);
    let total = tokens.len() * batch_size;
    let (context, sequences) =
        if context == 0 { (total.max(16), batch_size) } else { (context.max(total), batch_size.max(64)) };
    let params = LlamaContextParams::default()
        .with_embeddings(true)
        .with_n_ctx(NonZeroU32::new(context as u32))
        .with_n_batch(context as u32)
        .with_n_ubatch(context as u32)
        .with_n_seq_max(sequences as u32)
        .with_kv_unified(true)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = model.new_context(&backend, params)?;
    let mut batch = LlamaBatch::new(total, batch_size as i32);

    let mut decode = || -> Result<Duration, Box<dyn std::error::Error>> {
        batch.clear();
        for seq in 0..batch_size {
            batch.add_sequence(&tokens, seq as i32, true)?;
        }
        let started = Instant::now();
        ctx.decode(&mut batch)?;
        for seq in 0..batch_size {
            // Read every vector, as a client of the embeddings would.
            std::hint::black_box(ctx.embeddings_seq_ith(seq as i32)?.first().copied());
        }
        let took = started.elapsed();
        ctx.clear_kv_cache();
        Ok(took)
    };
    decode()?;
    let mut decodes = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds as u64);
    while Instant::now() < until {
        decodes.push(decode()?);
    }
    let busy: Duration = decodes.iter().sum();
    let embeddings = decodes.len() * batch_size;
    println!("model: {path}");
    println!("threads: {threads}, batch: {batch_size} inputs of {} tokens", tokens.len());
    println!(
        "{embeddings} embeddings in {:.2} s: {:.1} embeddings/s, {:.2} ms per decode",
        busy.as_secs_f64(),
        embeddings as f64 / busy.as_secs_f64(),
        busy.as_secs_f64() * 1000.0 / decodes.len() as f64
    );
    Ok(())
}
