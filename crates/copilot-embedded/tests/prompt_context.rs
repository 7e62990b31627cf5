//! The engine reads prompts on a context of their own and moves each read prompt's KV cache into
//! the slot that generates its answer (engine.rs). Checked against llama.cpp driven directly on one
//! context — the prompt decoded in the same chunks, then one greedy step per token: the engine must
//! give the same answer, for prompts read in several chunks, one of them while the other stream is
//! generating, on the plain model (Qwen) and on the one with a sliding-window cache (Gemma 3).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot_embedded::engine::{EngineHandle, EngineSettings, Job, backend};
use copilot_provider::{ChatEvent, GenerationOptions};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

const LIMIT: Duration = Duration::from_secs(300);
/// Small, so that every prompt is read in several chunks.
const CHUNK: u32 = 16;
const ANSWER_TOKENS: u32 = 24;

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("COPILOT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/copilot/models"));
    let path = dir.join(file);
    assert!(path.exists(), "{} is missing: run `scripts/test` or `cargo run -- models fetch --all`", path.display());
    path
}

fn settings() -> EngineSettings {
    EngineSettings {
        threads: 1,
        batch_threads: 1,
        prompt_threads: 2,
        slots: 2,
        queue: 2,
        context_per_slot: 512,
        batch_size: CHUNK,
    }
}

/// What llama.cpp answers greedily on one context of its own, reading the prompt in `CHUNK`s.
fn reference(model: &LlamaModel, prompt: &[LlamaToken]) -> String {
    let settings = settings();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.context_per_slot))
        .with_n_batch(CHUNK)
        .with_n_ubatch(CHUNK)
        .with_n_threads(settings.threads as i32)
        .with_n_threads_batch(settings.prompt_threads as i32);
    let mut context = model.new_context(backend().unwrap(), params).unwrap();
    let mut batch = LlamaBatch::new(CHUNK as usize, 1);
    for (chunk_start, chunk) in prompt.chunks(CHUNK as usize).enumerate().map(|(i, c)| (i * CHUNK as usize, c)) {
        batch.clear();
        for (offset, token) in chunk.iter().enumerate() {
            let position = chunk_start + offset;
            batch.add(*token, position as i32, &[0], position + 1 == prompt.len()).unwrap();
        }
        context.decode(&mut batch).unwrap();
    }
    let mut sampler = LlamaSampler::greedy();
    let (mut text, mut position, mut at) = (Vec::new(), prompt.len() as i32, batch.n_tokens() - 1);
    for _ in 0..ANSWER_TOKENS {
        let token = sampler.sample(&context, at);
        if model.vocab().is_eog(token) {
            break;
        }
        text.extend(model.vocab().token_to_piece(token, false, None));
        batch.clear();
        batch.add(token, position, &[0], true).unwrap();
        context.decode(&mut batch).unwrap();
        position += 1;
        at = 0;
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Submits `prompt` to the engine; the answer's text, once it is done.
async fn answer(engine: &EngineHandle, prompt: Vec<LlamaToken>) -> String {
    let (out, mut events) = tokio::sync::mpsc::channel(64);
    let options =
        GenerationOptions { temperature: Some(0.0), max_tokens: Some(ANSWER_TOKENS), ..GenerationOptions::default() };
    let job = Job {
        prompt,
        options,
        end_markers: Vec::new(),
        out,
        model_name: "model".into(),
        load: None,
        grammar: None,
        tool_calls: None,
    };
    assert!(engine.submit(job).is_ok(), "the engine has room for two jobs");
    let mut text = String::new();
    while let Some(event) = tokio::time::timeout(LIMIT, events.recv()).await.expect("in time") {
        match event.expect("no error") {
            ChatEvent::Delta(delta) => text.push_str(&delta),
            ChatEvent::Done(_) => return text,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the stream ended without its final event: {text:?}")
}

async fn same_answers_as_one_context(file: &'static str) {
    let engine =
        tokio::task::spawn_blocking(move || EngineHandle::start(&model_path(file), settings()).unwrap()).await.unwrap();
    let tokenize = |text: &str| engine.model().vocab().tokenize(text.as_bytes(), true, false);
    let short = tokenize("The three primary colours of light, which mix together on every screen to make white, are");
    let long = tokenize(
        "Here is a list of the planets of the solar system in order from the Sun, with one fact about \
         each of them, written for a child who is learning astronomy for the first time: Mercury",
    );
    assert!(short.len() > CHUNK as usize && long.len() > 2 * CHUNK as usize, "each prompt takes several chunks");
    let expected = (reference(engine.model(), &short), reference(engine.model(), &long));
    assert!(!expected.0.is_empty() && !expected.1.is_empty(), "{expected:?}");

    // Both at once: the long prompt is read while the short one's answer is generated.
    let answers = tokio::join!(answer(&engine, short), answer(&engine, long));
    assert_eq!(answers, expected, "{file}: the engine answers as llama.cpp does on one context");
}

#[tokio::test]
async fn a_prompt_read_on_its_own_context_continues_as_on_one_context() {
    same_answers_as_one_context("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").await;
}

#[tokio::test]
async fn with_a_sliding_window_cache_too() {
    same_answers_as_one_context("gemma-3-270m-q4_k_m.gguf").await;
}
