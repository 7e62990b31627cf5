//! The embedded provider on real small models (fetched by `scripts/test` with `copilot models
//! fetch --all`): Qwen2.5-Coder 0.5B Instruct for chat, Gemma 3 270M (a base model) for
//! completions. These assert structure and determinism, never answer quality.

use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot::proto::v1::{
    ChatRequest, FinishReason, GenerateRequest, GenerationOptions, ListModelsRequest, Message, Role,
};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(120);
const QWEN: &str = "embedded/qwen2.5-coder-0.5b-instruct";
const GEMMA: &str = "embedded/gemma-3-270m";

/// Where `copilot models fetch` put the models.
fn models_dir() -> PathBuf {
    let dir = std::env::var_os("COPILOT_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        Path::new(&home).join(".cache/copilot/models")
    });
    for file in ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        assert!(
            dir.join(file).exists(),
            "{} is missing: run `scripts/test` or `cargo run -- models fetch --all` first",
            dir.join(file).display()
        );
    }
    dir
}

/// Copilot with only the embedded provider, one inference thread for generation and for prompts
/// (the suite runs tests side by side, and a debug-built gateway beside them preempts llama.cpp's
/// threads often), and small contexts; `settings` override those keys of `[providers.embedded]`,
/// and `tables` are appended as they are.
async fn embedded_with(settings: &[(&str, &str)], tables: &str) -> Copilot {
    let mut keys: Vec<(&str, String)> = vec![
        ("models_dir", format!("{:?}", models_dir().display().to_string())),
        ("ollama_store", "\"off\"".into()),
        ("threads", "1".into()),
        ("prompt_threads", "1".into()),
        ("parallel", "2".into()),
        ("queue", "4".into()),
        ("context_length", "1024".into()),
    ];
    for (key, value) in settings {
        keys.retain(|(k, _)| k != key);
        keys.push((key, value.to_string()));
    }
    let body: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    Copilot::start_with(&format!("[providers.embedded]\n{body}{tables}\n"), &[]).await
}

async fn embedded(settings: &[(&str, &str)]) -> Copilot {
    embedded_with(settings, "").await
}

fn ask(model: &str, content: &str, options: GenerationOptions) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message { role: Role::User as i32, content: content.into(), ..Default::default() }],
        options: Some(options),
        ..Default::default()
    }
}

fn greedy(max_tokens: u32) -> GenerationOptions {
    GenerationOptions { temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }
}

#[tokio::test]
async fn chat_streams_tokens_from_the_default_model() {
    let copilot = embedded(&[]).await;
    let mut client = copilot.client().await;

    // An empty model name means the default chat model.
    let request = ask("", "Write a Python function that adds two numbers.", greedy(24));
    let mut stream = within(LIMIT, client.chat(request)).await.unwrap().into_inner();
    let mut text = String::new();
    let mut chunks = 0;
    let mut last = None;
    while let Some(message) = within(LIMIT, stream.next()).await {
        let message = message.unwrap();
        text.push_str(&message.content);
        chunks += 1;
        last = Some(message);
    }
    let last = last.unwrap();
    assert!(chunks > 3, "tokens should stream one by one, got {chunks} messages");
    assert!(!text.trim().is_empty());
    assert_eq!(last.model, QWEN);
    let usage = last.usage.unwrap();
    assert!(usage.input_tokens > 10, "the chat template wraps the prompt: {usage:?}");
    assert!(usage.output_tokens > 0 && usage.output_tokens <= 24);
    let timing = last.timing.unwrap();
    assert!(timing.time_to_first_token.is_some() && timing.output_tokens_per_second > 0.0);
    assert!(timing.load_duration.is_some(), "the first call loads the model and says so");
}

#[tokio::test]
async fn greedy_and_seeded_sampling_are_deterministic() {
    let copilot = embedded(&[]).await;
    let mut client = copilot.client().await;
    let generate = |options: GenerationOptions| GenerateRequest {
        model: GEMMA.into(),
        prompt: "The capital of France is".into(),
        options: Some(options),
        ..Default::default()
    };

    let first = client.generate(generate(greedy(16))).await.unwrap().into_inner();
    let second = client.generate(generate(greedy(16))).await.unwrap().into_inner();
    assert!(!first.text.is_empty());
    assert_eq!(first.text, second.text, "temperature 0 is greedy");

    let seeded = |seed| GenerationOptions {
        temperature: Some(1.0),
        seed: Some(seed),
        max_tokens: Some(24),
        ..Default::default()
    };
    let a = client.generate(generate(seeded(42))).await.unwrap().into_inner().text;
    let b = client.generate(generate(seeded(42))).await.unwrap().into_inner().text;
    assert_eq!(a, b, "the same seed and prompt give the same output");
    let others: Vec<String> = futures::future::join_all((1..=3).map(|seed| {
        let mut client = client.clone();
        async move { client.generate(generate(seeded(seed))).await.unwrap().into_inner().text }
    }))
    .await;
    assert!(others.iter().any(|o| *o != a), "different seeds should sample differently: {a:?} vs {others:?}");
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_end_generation() {
    let copilot = embedded(&[]).await;
    let mut client = copilot.client().await;
    let prompt = "List the numbers from one to twenty, separated by commas:";

    let full = client
        .generate(GenerateRequest {
            model: GEMMA.into(),
            prompt: prompt.into(),
            options: Some(greedy(12)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.finish_reason(), FinishReason::Length);
    assert_eq!(full.usage.unwrap().output_tokens, 12);

    // Stop on a piece of what the model says greedily: the output ends right before it.
    let text = full.text.clone();
    let cut = text.char_indices().map(|(i, _)| i).filter(|&i| i > 0).nth(text.chars().count() / 2).unwrap();
    let stop: String = text[cut..].chars().take(3).collect();
    let expected_prefix = &text[..text.find(&stop).unwrap()];
    let stopped = client
        .generate(GenerateRequest {
            model: GEMMA.into(),
            prompt: prompt.into(),
            options: Some(GenerationOptions { stop: vec![stop.clone()], ..greedy(12) }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.finish_reason(), FinishReason::Stop, "stop {stop:?} in {text:?}");
    assert_eq!(stopped.text, expected_prefix);
    assert!(!stopped.text.contains(&stop));
}

#[tokio::test]
async fn concurrent_streams_all_complete_and_excess_is_refused() {
    let copilot = embedded(&[]).await;
    let client = copilot.client().await;

    // parallel = 2 slots + queue = 4: six streams are accepted and all finish.
    let streams = (0..6).map(|i| {
        let mut client = client.clone();
        async move {
            let request = ask(QWEN, &format!("Say the number {i}."), greedy(8));
            let mut stream = client.chat(request).await.unwrap().into_inner();
            let mut finish = FinishReason::Unspecified;
            while let Some(message) = stream.next().await {
                finish = message.unwrap().finish_reason();
            }
            finish
        }
    });
    let finishes = within(LIMIT, futures::future::join_all(streams)).await;
    assert!(finishes.iter().all(|f| *f != FinishReason::Unspecified), "{finishes:?}");
}

#[tokio::test]
async fn beyond_the_slots_and_the_queue_calls_get_resource_exhausted() {
    let copilot = embedded(&[("parallel", "1"), ("queue", "0")]).await;
    let mut client = copilot.client().await;

    let mut long =
        within(LIMIT, client.chat(ask(QWEN, "Count to one thousand.", greedy(900)))).await.unwrap().into_inner();
    within(LIMIT, long.next()).await.unwrap().unwrap();
    let status = client.chat(ask(QWEN, "Hi", greedy(4))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.get_details_retry_info().is_some());

    // Cancelling the long stream frees its slot at once (within a token), and the next call runs.
    drop(long);
    let mut accepted = None;
    for _ in 0..50 {
        match client.chat(ask(QWEN, "Hi", greedy(4))).await {
            Ok(stream) => {
                accepted = Some(stream.into_inner());
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let mut stream = accepted.expect("the cancelled stream never released its slot");
    while let Some(message) = within(LIMIT, stream.next()).await {
        message.unwrap();
    }
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_refused_or_truncated() {
    let copilot = embedded(&[("context_length", "64")]).await;
    let mut client = copilot.client().await;
    let long = "word ".repeat(200);

    let status = client.chat(ask(QWEN, &long, greedy(4))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("64"), "{}", status.message());
    assert!(status.message().contains("tokens"), "{}", status.message());
    drop(copilot);

    let copilot = embedded(&[("context_length", "64"), ("truncate_prompt", "true")]).await;
    let mut client = copilot.client().await;
    let conversation = ChatRequest {
        model: QWEN.into(),
        messages: vec![
            Message { role: Role::User as i32, content: long.clone(), ..Default::default() },
            Message { role: Role::Assistant as i32, content: "ok".into(), ..Default::default() },
            Message { role: Role::User as i32, content: "Hi".into(), ..Default::default() },
        ],
        options: Some(greedy(4)),
        ..Default::default()
    };
    let mut stream = within(LIMIT, client.chat(conversation)).await.unwrap().into_inner();
    let mut last = None;
    while let Some(message) = within(LIMIT, stream.next()).await {
        last = Some(message.unwrap());
    }
    assert!(last.unwrap().usage.unwrap().input_tokens < 64);
}

#[tokio::test]
async fn list_models_reads_gguf_metadata_and_ollama_store_models_run_in_process() {
    // An Ollama store built here: a manifest whose model layer is the Gemma file.
    let store = tempfile::tempdir().unwrap();
    let gemma = models_dir().join("gemma-3-270m-q4_k_m.gguf");
    let digest = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
    std::fs::create_dir_all(store.path().join("blobs")).unwrap();
    std::os::unix::fs::symlink(&gemma, store.path().join(format!("blobs/sha256-{digest}"))).unwrap();
    let manifest_dir = store.path().join("manifests/registry.ollama.ai/library/gemma3");
    std::fs::create_dir_all(&manifest_dir).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 2},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{digest}"), "size": 253113024}]
    });
    std::fs::write(manifest_dir.join("270m"), manifest.to_string()).unwrap();

    let store_path = format!("{:?}", store.path().display().to_string());
    let copilot = embedded(&[("ollama_store", &store_path)]).await;
    let mut client = copilot.client().await;

    let models = client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let qwen = models.iter().find(|m| m.name == QWEN).expect("qwen listed");
    assert_eq!(qwen.provider, "embedded");
    assert_eq!(qwen.family, "qwen2");
    assert_eq!(qwen.quantization, "Q4_K_M");
    assert_eq!(qwen.context_length, Some(32768));
    assert_eq!(qwen.size_bytes, Some(491_400_064));
    assert!(qwen.parameter_size.ends_with('M'), "{}", qwen.parameter_size);
    let from_store = models.iter().find(|m| m.name == "embedded/gemma3:270m").expect("Ollama store model listed");
    assert_eq!(from_store.family, "gemma3");

    let response = within(
        LIMIT,
        client.generate(GenerateRequest {
            model: from_store.name.clone(),
            prompt: "Once upon a time".into(),
            options: Some(greedy(5)),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(response.usage.unwrap().output_tokens, 5);
}

#[tokio::test]
async fn a_truncated_gguf_is_a_clear_error_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.gguf");
    let mut bytes = std::fs::read(models_dir().join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    bytes.truncate(4 * 1024 * 1024);
    std::fs::write(&broken, bytes).unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();

    let config = format!(
        "[providers.embedded.models]\nbroken = {:?}\ngarbage = {:?}",
        broken.display().to_string(),
        garbage.display().to_string()
    );
    let copilot = embedded_with(&[], &config).await;
    let mut client = copilot.client().await;

    for (name, words) in [("embedded/broken", "truncated"), ("embedded/garbage", "GGUF")] {
        let status = client
            .generate(GenerateRequest { model: name.into(), prompt: "hi".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{name}: {status:?}");
        assert!(status.message().contains(words), "{name}: {}", status.message());
    }
    // Still serving.
    client
        .generate(GenerateRequest {
            model: GEMMA.into(),
            prompt: "Hello".into(),
            options: Some(greedy(2)),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn models_preload_and_unload_after_keep_alive() {
    let copilot = embedded(&[("keep_alive", "\"400ms\""), ("preload", "[\"gemma-3-270m\"]")]).await;
    let mut client = copilot.client().await;
    let generate = |model: &str| GenerateRequest {
        model: model.into(),
        prompt: "Hello".into(),
        options: Some(greedy(2)),
        ..Default::default()
    };
    let loaded_by_call =
        |response: copilot::proto::v1::GenerateResponse| response.timing.unwrap().load_duration.is_some();

    // Qwen loads on first use; an immediate second call finds it loaded.
    assert!(loaded_by_call(client.generate(generate(QWEN)).await.unwrap().into_inner()));
    assert!(!loaded_by_call(client.generate(generate(QWEN)).await.unwrap().into_inner()));
    // Gemma was preloaded at start (wait until the preload is surely done).
    let mut preloaded = false;
    for _ in 0..50 {
        if copilot.logs().contains("embedded model loaded") && copilot.logs().contains("model=gemma-3-270m") {
            preloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(preloaded, "{}", copilot.logs());
    // Idle past keep_alive: unloaded, so the next call loads it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(copilot.logs().contains("unloaded after being idle"), "{}", copilot.logs());
    assert!(loaded_by_call(client.generate(generate(QWEN)).await.unwrap().into_inner()));
}
