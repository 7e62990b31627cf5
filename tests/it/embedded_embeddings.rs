//! `Embed` on the embedded engine with the real all-MiniLM-L6-v2 (fetched and converted by
//! `copilot models fetch --all`): the quality check the issue asks for, determinism, batching of
//! concurrent calls into shared decodes without mixing their vectors up, and the precise refusals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot::proto::v1::{ChatRequest, EmbedRequest, EmbedResponse, ListModelsRequest, Message, Role};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(120);
const MINILM: &str = "embedded/all-minilm-l6-v2";
const QWEN: &str = "embedded/qwen2.5-coder-0.5b-instruct";

/// Four pairs of paraphrases on unrelated topics.
const PAIRS: [(&str, &str); 4] = [
    ("A man is playing a guitar.", "Someone is strumming an acoustic guitar."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "I forgot my password and need to change it."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
];

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("COPILOT_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        Path::new(&home).join(".cache/copilot/models")
    });
    for file in ["all-minilm-l6-v2-f16.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"] {
        assert!(
            dir.join(file).exists(),
            "{} is missing: run `scripts/test` or `cargo run -- models fetch --all` first",
            dir.join(file).display()
        );
    }
    dir
}

/// Only the embedded provider, so the empty model is its default embedding model.
async fn embedded() -> Copilot {
    let config = format!(
        "[providers.embedded]\nmodels_dir = {:?}\nollama_store = \"off\"\nthreads = 1\nqueue = 16\n",
        models_dir().display().to_string()
    );
    Copilot::start_with(&config, &[]).await
}

fn request(model: &str, inputs: &[&str]) -> EmbedRequest {
    EmbedRequest { model: model.into(), inputs: inputs.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

async fn embed(copilot: &Copilot, request: EmbedRequest) -> Result<EmbedResponse, tonic::Status> {
    let mut client = copilot.client().await;
    within(LIMIT, client.embed(request)).await.map(tonic::Response::into_inner)
}

fn vectors(response: &EmbedResponse) -> Vec<Vec<f32>> {
    response.embeddings.iter().map(|e| e.values.clone()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    // The server sends unit vectors: the cosine is the dot product.
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[tokio::test]
async fn every_paraphrase_pair_is_closer_than_every_unrelated_pair() {
    let copilot = embedded().await;
    let sentences: Vec<&str> = PAIRS.iter().flat_map(|&(a, b)| [a, b]).collect();
    // No model: the embedded default embedding model.
    let response = embed(&copilot, request("", &sentences)).await.unwrap();
    assert_eq!(response.model, MINILM);
    assert_eq!(response.dimensions, 384);
    assert_eq!(response.embeddings.len(), sentences.len());
    let input_tokens = response.usage.as_ref().unwrap().input_tokens;
    // Each sentence is a handful of word pieces plus [CLS] and [SEP].
    assert!((8 * 6..8 * 20).contains(&input_tokens), "{input_tokens} input tokens");
    let v = vectors(&response);
    for vector in &v {
        assert_eq!(vector.len(), 384);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let paraphrase: Vec<f32> = (0..PAIRS.len()).map(|p| cosine(&v[2 * p], &v[2 * p + 1])).collect();
    let mut unrelated = Vec::new();
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            if i / 2 != j / 2 {
                unrelated.push((cosine(&v[i], &v[j]), sentences[i], sentences[j]));
            }
        }
    }
    let closest_unrelated = unrelated.iter().cloned().fold((f32::MIN, "", ""), |a, b| if b.0 > a.0 { b } else { a });
    let least_paraphrase = paraphrase.iter().cloned().fold(f32::MAX, f32::min);
    assert!(
        least_paraphrase > closest_unrelated.0,
        "paraphrase cosines {paraphrase:?}; the closest unrelated pair is {closest_unrelated:?}"
    );
}

#[tokio::test]
async fn the_same_text_gives_the_same_vector() {
    let copilot = embedded().await;
    let text = "Copilot routes every call to a provider.";
    let first = embed(&copilot, request(MINILM, &[text])).await.unwrap();
    let second = embed(&copilot, request(MINILM, &[text])).await.unwrap();
    assert_eq!(vectors(&first), vectors(&second), "one input alone, twice");
    // Inside a batch (other sequences in the same decode) it is the same up to float rounding.
    let mut batch = vec!["An unrelated sentence about the weather.", text, "Yet another one, a bit longer than that."];
    batch.extend(PAIRS.iter().map(|p| p.0));
    let batched = embed(&copilot, request(MINILM, &batch)).await.unwrap();
    let difference = max_difference(&vectors(&first)[0], &vectors(&batched)[1]);
    assert!(difference < 1e-3, "alone and in a batch differ by {difference}");
    assert_eq!(vectors(&batched)[3..], vectors(&embed(&copilot, request(MINILM, &batch)).await.unwrap())[3..]);
}

/// Calls that arrive together share decodes (the packing is unit-tested in `embedder.rs`); each
/// still gets its own vectors, in its order, whichever decodes they went through.
#[tokio::test]
async fn concurrent_calls_each_get_their_own_vectors_in_order() {
    let copilot = embedded().await;
    // 100 distinct inputs: more than one decode takes (64), so a call spans several.
    let texts: Vec<String> =
        (0..100).map(|i| format!("Note {i}: item {} of the list is about topic {}.", i * 7 % 13, i % 9)).collect();
    let calls: Vec<Vec<&str>> = vec![
        texts[..100].iter().map(String::as_str).collect(),
        texts[10..13].iter().map(String::as_str).collect(),
        texts[50..51].iter().map(String::as_str).collect(),
        texts[20..60].iter().rev().map(String::as_str).collect(),
        texts[90..100].iter().map(String::as_str).collect(),
    ];
    let answers = futures::future::join_all(calls.iter().map(|inputs| embed(&copilot, request(MINILM, inputs)))).await;
    // Each text alone, as the reference.
    let mut alone = std::collections::HashMap::new();
    for text in &texts {
        let response = embed(&copilot, request(MINILM, &[text])).await.unwrap();
        alone.insert(text.as_str(), vectors(&response).remove(0));
    }
    for (inputs, answer) in calls.iter().zip(answers) {
        let answer = answer.unwrap();
        assert_eq!(answer.embeddings.len(), inputs.len());
        for (text, vector) in inputs.iter().zip(vectors(&answer)) {
            let difference = max_difference(&alone[text], &vector);
            assert!(difference < 1e-3, "{text:?}: {difference} away from its vector alone");
        }
    }
}

#[tokio::test]
async fn an_input_over_the_models_512_tokens_is_refused_unless_truncation_is_asked_for() {
    let copilot = embedded().await;
    let long = "word ".repeat(600);
    let status = embed(&copilot, request(MINILM, &["short", &long])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("input 1 is 602 tokens"), "{}", status.message());
    assert!(status.message().contains("at most 512") && status.message().contains("truncate"), "{}", status.message());

    let cut = EmbedRequest { truncate: true, ..request(MINILM, &["short", &long]) };
    let response = embed(&copilot, cut).await.unwrap();
    // "short" is [CLS] short [SEP]; the long one is cut to 512 tokens, its [SEP] kept.
    assert_eq!(response.usage.unwrap().input_tokens, 3 + 512);
    // What is cut is the end: a text of exactly 510 words embeds the same.
    let exact = "word ".repeat(510);
    let reference = embed(&copilot, request(MINILM, &[&exact])).await.unwrap();
    let cut_again = embed(&copilot, EmbedRequest { truncate: true, ..request(MINILM, &[&long]) }).await.unwrap();
    assert!(max_difference(&vectors(&reference)[0], &vectors(&cut_again)[0]) < 1e-5);
}

#[tokio::test]
async fn the_model_is_listed_as_an_embedding_model_and_misuse_is_refused_precisely() {
    let copilot = embedded().await;
    let mut client = copilot.client().await;
    let listed = within(LIMIT, client.list_models(ListModelsRequest::default())).await.unwrap().into_inner();
    let minilm = listed.models.iter().find(|m| m.name == MINILM).expect("MiniLM is listed");
    assert_eq!(minilm.capabilities, ["embedding"]);
    assert_eq!(
        (minilm.embedding_length, minilm.context_length, minilm.family.as_str()),
        (Some(384), Some(512), "bert")
    );
    let qwen = listed.models.iter().find(|m| m.name == QWEN).expect("Qwen is listed");
    assert!(!qwen.capabilities.iter().any(|c| c == "embedding"), "{:?}", qwen.capabilities);

    let feature = |status: &tonic::Status| {
        let info = status.get_details_error_info().expect("ErrorInfo");
        (info.reason, info.metadata.get("feature").cloned().unwrap_or_default())
    };
    // Chat with the embedding model.
    let chat = ChatRequest {
        model: MINILM.into(),
        messages: vec![Message { role: Role::User as i32, content: "hi".into(), ..Default::default() }],
        ..Default::default()
    };
    let status = within(LIMIT, client.chat(chat)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(feature(&status), ("FEATURE_UNSUPPORTED".into(), "completion".into()));
    assert!(status.message().contains("is an embedding model"), "{}", status.message());

    // Embed with the chat model.
    let status = embed(&copilot, request(QWEN, &["hi"])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(feature(&status), ("FEATURE_UNSUPPORTED".into(), "embedding".into()));
    assert!(status.message().contains("all-minilm-l6-v2"), "{}", status.message());

    // Shortened vectors: MiniLM was not trained for them.
    let status = embed(&copilot, EmbedRequest { dimensions: Some(64), ..request(MINILM, &["hi"]) }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(feature(&status), ("FEATURE_UNSUPPORTED".into(), "embedding_dimensions".into()));
}

/// `CountTokens` on the embedded engine is exact: the very number of tokens `Chat` gives the model
/// for the same conversation (its template, its tokenizer), tools included.
#[tokio::test]
async fn count_tokens_on_the_embedded_engine_is_what_chat_consumes() {
    use copilot::proto::v1::{CountTokensRequest, GenerationOptions, Tool};

    let copilot = embedded().await;
    let mut client = copilot.client().await;
    let messages = vec![
        Message { role: Role::System as i32, content: "You answer in one word.".into(), ..Default::default() },
        Message {
            role: Role::User as i32,
            content: "What colour is the sky on a clear day?".into(),
            ..Default::default()
        },
    ];
    let weather = Tool {
        name: "get_weather".into(),
        description: "The current weather in a city.".into(),
        parameters_json_schema: r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
            .into(),
        strict: false,
    };
    let count =
        |tools: Vec<Tool>, model: &str| CountTokensRequest { model: model.into(), messages: messages.clone(), tools };
    let counted = within(LIMIT, client.count_tokens(count(vec![], QWEN))).await.unwrap().into_inner();
    assert!(counted.exact);
    assert_eq!(counted.model, QWEN);

    let chat = ChatRequest {
        model: QWEN.into(),
        messages: messages.clone(),
        options: Some(GenerationOptions { temperature: Some(0.0), max_tokens: Some(1), ..Default::default() }),
        ..Default::default()
    };
    let mut stream = within(LIMIT, client.chat(chat)).await.unwrap().into_inner();
    let mut used = None;
    while let Some(chunk) = within(LIMIT, stream.message()).await.unwrap() {
        used = chunk.usage.map(|u| u.input_tokens).or(used);
    }
    assert_eq!(Some(counted.input_tokens), used, "CountTokens against Chat's own usage");

    // The tools' listing in the template counts too.
    let with_tools = within(LIMIT, client.count_tokens(count(vec![weather], QWEN))).await.unwrap().into_inner();
    assert!(with_tools.input_tokens > counted.input_tokens + 20, "{with_tools:?} vs {counted:?}");

    // An embedding model has no chat prompt to count.
    let status = within(LIMIT, client.count_tokens(count(vec![], MINILM))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().metadata["feature"], "count_tokens");
}
