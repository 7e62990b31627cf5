//! llama.cpp's own speed on a GGUF file, measured the way llama.cpp's `llama-bench` does — driving
//! the same llama.cpp build Copilot links, with no gateway around it — so the embedded provider's
//! end-to-end numbers have a baseline on the same file, threads and machine.
//!
//! `cargo run --release -p copilot-embedded --example llama_bench -- MODEL.gguf [threads] [prompt] [generate] [reps]`
//!
//! pp: one batched decode of `prompt` tokens (logits for the last only); tg: `generate` decodes of one
//! token each, as during generation. Tokens are arbitrary vocabulary ids, as in llama-bench.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: llama_bench MODEL.gguf [threads] [prompt] [generate] [reps]")?;
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (threads, prompt, generate, reps) = (arg(2, 1), arg(3, 512), arg(4, 128), arg(5, 3));

    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((prompt + generate + 16) as u32))
        .with_n_batch(prompt as u32)
        .with_n_ubatch(prompt.min(512) as u32)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = model.new_context(&backend, params)?;
    let n_vocab = model.n_vocab() as u32;
    // A fixed pseudo-random sequence (xorshift), so runs are comparable.
    let mut state = 0x2545_f491_u32;
    let mut next_token = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        LlamaToken((state % n_vocab) as i32)
    };

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..=reps {
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(prompt, 1);
        for i in 0..prompt {
            batch.add(next_token(), i as i32, &[0], i + 1 == prompt)?;
        }
        let started = Instant::now();
        ctx.decode(&mut batch)?;
        ctx.synchronize();
        let pp_rate = prompt as f64 / started.elapsed().as_secs_f64();

        ctx.clear_kv_cache();
        let mut one = LlamaBatch::new(1, 1);
        let started = Instant::now();
        for i in 0..generate {
            one.clear();
            one.add(next_token(), i as i32, &[0], true)?;
            ctx.decode(&mut one)?;
            ctx.synchronize();
        }
        let tg_rate = generate as f64 / started.elapsed().as_secs_f64();
        // The first round warms caches and is not counted, as in llama-bench.
        if rep > 0 {
            pp.push(pp_rate);
            tg.push(tg_rate);
        }
    }
    let stats = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len().max(2).saturating_sub(1) as f64).sqrt();
        (mean, sd)
    };
    let (pp_mean, pp_sd) = stats(&pp);
    let (tg_mean, tg_sd) = stats(&tg);
    println!("model: {path}");
    println!("threads: {threads}, repetitions: {reps}");
    println!("pp{prompt}: {pp_mean:.1} ± {pp_sd:.1} tokens/s");
    println!("tg{generate}: {tg_mean:.1} ± {tg_sd:.1} tokens/s");
    Ok(())
}
