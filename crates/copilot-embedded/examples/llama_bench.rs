//! llama.cpp's own speed on a GGUF file, measured the way llama.cpp's `llama-bench` does — driving
//! the same llama.cpp build Copilot links, with no gateway around it — so the embedded provider's
//! end-to-end numbers have a baseline on the same file, threads and machine.
//!
//! `cargo run --release -p copilot-embedded --example llama_bench -- MODEL.gguf [threads] [prompt] [generate] [reps] [--batched [B,...]]`
//!
//! pp: one batched decode of `prompt` tokens (logits for the last only); tg: `generate` decodes of one
//! token each, as during generation. Tokens are arbitrary vocabulary ids, as in llama-bench.
//!
//! `--batched` (after the positional arguments; list defaults to 1,2,4,8) measures instead the way
//! llama.cpp's `batched-bench` does, with unshared prompts: B sequences in one context, all B prompts in
//! one decode, then `generate` decodes of B tokens each — the aggregate ceiling that Copilot's
//! continuous batching of B streams can approach. A memory read/copy probe and the weight bytes streamed
//! per step at B = 1 follow, to tell whether that ceiling is bandwidth- or compute-bound.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    let batched = match args.iter().position(|a| a == "--batched") {
        Some(i) => {
            let list = args.drain(i..).nth(1).unwrap_or_else(|| "1,2,4,8".into());
            let list = list.split(',').map(str::parse).collect::<Result<Vec<usize>, _>>();
            Some(list.map_err(|_| "--batched takes a list of batch sizes such as 1,2,4,8")?)
        }
        None => None,
    };
    let path =
        args.get(1).ok_or("usage: llama_bench MODEL.gguf [threads] [prompt] [generate] [reps] [--batched [B,...]]")?;
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (threads, prompt, generate, reps) = (arg(2, 1), arg(3, 512), arg(4, 128), arg(5, 3));

    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())?;
    if let Some(list) = batched {
        return batched_bench(&backend, &model, path, threads, prompt, generate, reps, &list);
    }
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((prompt + generate + 16) as u32))
        .with_n_batch(prompt as u32)
        .with_n_ubatch(prompt.min(512) as u32)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = model.new_context(&backend, params)?;
    let mut next_token = token_source(&model);

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

/// A fixed pseudo-random sequence (xorshift), so runs are comparable.
fn token_source(model: &LlamaModel) -> impl FnMut() -> LlamaToken {
    let n_vocab = model.n_vocab() as u32;
    let mut state = 0x2545_f491_u32;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        LlamaToken((state % n_vocab) as i32)
    }
}

#[allow(clippy::too_many_arguments)]
fn batched_bench(
    backend: &LlamaBackend,
    model: &LlamaModel,
    path: &str,
    threads: usize,
    pp: usize,
    tg: usize,
    reps: usize,
    list: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    if pp == 0 || tg == 0 || list.contains(&0) {
        return Err("--batched needs prompt, generate and every B above 0".into());
    }
    let reps = reps.max(1);
    let mut next_token = token_source(model);
    println!("model: {path}");
    println!("threads: {threads}, repetitions: {reps} (times are their mean)");
    println!("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |");
    println!("|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|");
    let mut tg_step_b1 = None;
    for &b in list {
        let n_kv = b * (pp + tg);
        // Default (per-sequence) KV cache, as both batched-bench and Copilot's engine use; all B
        // prompts must fit one `decode`, so n_batch covers them and llama.cpp splits the ubatches.
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_kv as u32))
            .with_n_batch((b * pp) as u32)
            .with_n_ubatch((b * pp).min(512) as u32)
            .with_n_seq_max(b as u32)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let mut ctx = model.new_context(backend, params)?;
        let mut prompts = LlamaBatch::new(b * pp, 1);
        let mut step = LlamaBatch::new(b, 1);
        let (mut t_pp, mut t_tg) = (0.0, 0.0);
        for rep in 0..=reps {
            ctx.clear_kv_cache();
            prompts.clear();
            for seq in 0..b as i32 {
                for i in 0..pp {
                    prompts.add(next_token(), i as i32, &[seq], i + 1 == pp)?;
                }
            }
            let started = Instant::now();
            ctx.decode(&mut prompts)?;
            ctx.synchronize();
            let pp_time = started.elapsed().as_secs_f64();

            let started = Instant::now();
            for i in pp..pp + tg {
                step.clear();
                for seq in 0..b as i32 {
                    step.add(next_token(), i as i32, &[seq], true)?;
                }
                ctx.decode(&mut step)?;
                ctx.synchronize();
            }
            // Round 0 warms caches and the freshly allocated KV cache; it is not counted.
            if rep > 0 {
                t_pp += pp_time / reps as f64;
                t_tg += started.elapsed().as_secs_f64() / reps as f64;
            }
        }
        if b == 1 {
            tg_step_b1 = Some(t_tg / tg as f64);
        }
        let (s_pp, s_tg) = ((b * pp) as f64 / t_pp, (b * tg) as f64 / t_tg);
        let t = t_pp + t_tg;
        println!(
            "| {pp:5} | {tg:6} | {b:4} | {n_kv:6} | {t_pp:8.3} | {s_pp:8.2} | {t_tg:8.3} | {s_tg:8.2} | {t:8.3} | {:8.2} |",
            n_kv as f64 / t
        );
    }

    let (read, copy) = memory_bandwidth(threads);
    print!("memory, {threads} thread(s): read {read:.1} GB/s, copy {copy:.1} GB/s");
    if let Some(step) = tg_step_b1 {
        // Each decode step reads every weight once, so at B = 1 the file size per step bounds the
        // bandwidth used; near the read figure means generation is memory-bound, and S_TG then grows
        // almost in proportion to B.
        let weights = std::fs::metadata(path)?.len() as f64;
        print!("; B=1 generation reads {:.0} MB of weights per step = {:.1} GB/s", weights / 1e6, weights / step / 1e9);
    }
    println!();
    Ok(())
}

/// Best of five passes over 256 MiB, split over `threads` threads as llama.cpp splits its work:
/// (reading it, copying it) in GB/s, a copy counting its reads and writes as STREAM does.
fn memory_bandwidth(threads: usize) -> (f64, f64) {
    const WORDS: usize = 32 << 20;
    // Filled, not zeroed, so every page is really mapped before timing.
    let src = std::hint::black_box(vec![1u64; WORDS]);
    let mut dst = vec![2u64; WORDS];
    let chunk = WORDS.div_ceil(threads.max(1));
    let best = |pass: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                pass();
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let read = best(&mut || {
        std::thread::scope(|s| {
            for part in src.chunks(chunk) {
                s.spawn(move || std::hint::black_box(part.iter().sum::<u64>()));
            }
        })
    });
    let copy = best(&mut || {
        std::thread::scope(|s| {
            for (to, from) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || to.copy_from_slice(from));
            }
        });
        std::hint::black_box(&mut dst);
    });
    let bytes = (WORDS * 8) as f64;
    (bytes / read / 1e9, 2.0 * bytes / copy / 1e9)
}
