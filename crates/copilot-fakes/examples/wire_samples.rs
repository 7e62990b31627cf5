//! Writes the bodies the fakes stream for a few scripted replies, one file each, as seed corpora
//! for the stream-decoder fuzz targets (`fuzz/seeds/<target>/`):
//! `cargo run -p copilot-fakes --example wire_samples -- fuzz/seeds`. Each file starts with the
//! fuzz input's header (read sizes 17 and 129, see `copilot_http::stream_check::split_input`).

use std::path::{Path, PathBuf};

use copilot_fakes::anthropic::FakeAnthropic;
use copilot_fakes::gemini::FakeGemini;
use copilot_fakes::ollama::FakeOllama;
use copilot_fakes::openai::{FakeOpenAi, Flavour};
use copilot_fakes::script::{Behaviour, FakeModel, Reply};
use serde_json::json;

/// `copilot_http::stream_check::SEED_PROMPT`, which the seed tests expect echoed.
const PROMPT: &str = "héllo \"quoted\" ✓ 🦀\nsecond line\twith a tab";

fn scripts() -> Vec<(&'static str, FakeModel)> {
    let model = |behaviour| FakeModel::new("m").with_reply(Reply::Echo).with_behaviour(behaviour);
    vec![
        ("normal", model(Behaviour::Normal)),
        ("error-after-2", model(Behaviour::ErrorAfter { tokens: 2, message: "runner crashed".into() })),
        ("end-without-done", model(Behaviour::EndWithoutDone { tokens: 2 })),
    ]
}

async fn save(dir: &Path, name: String, response: reqwest::Response) {
    let body = response.bytes().await.unwrap_or_default();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), [&b"\x02\x10\x80"[..], &body].concat()).unwrap();
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into()));
    let http = reqwest::Client::new();
    let user = json!([{"role": "user", "content": PROMPT}]);

    for (name, model) in scripts() {
        let fake = FakeOllama::start().await;
        fake.add_model(model.clone());
        let body = json!({"model": "m", "messages": user, "stream": true});
        let response = http.post(format!("{}/api/chat", fake.base_url())).json(&body).send().await.unwrap();
        save(&out.join("ollama_ndjson"), format!("fake-{name}.ndjson"), response).await;

        for flavour in [
            Flavour::OpenAi,
            Flavour::NoUsage,
            Flavour::LlamaCpp,
            Flavour::LlamaCppOldErrors,
            Flavour::Vllm,
            Flavour::Ollama,
        ] {
            let fake = FakeOpenAi::start().await;
            fake.set_flavour(flavour);
            fake.add_model(model.clone());
            let body =
                json!({"model": "m", "messages": user, "stream": true, "stream_options": {"include_usage": true}});
            let url = format!("{}/chat/completions", fake.base_url());
            let response = http.post(url).json(&body).send().await.unwrap();
            save(&out.join("openai_sse"), format!("fake-{flavour:?}-{name}.sse").to_lowercase(), response).await;
        }

        let fake = FakeAnthropic::start().await;
        fake.add_model(model.clone());
        let body = json!({"model": "m", "max_tokens": 64, "messages": user, "stream": true});
        let response = http
            .post(format!("{}/v1/messages", fake.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        save(&out.join("anthropic_sse"), format!("fake-{name}.sse"), response).await;

        let fake = FakeGemini::start().await;
        fake.add_model(model.clone());
        let body = json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]});
        let url = format!("{}/v1beta/models/m:streamGenerateContent?alt=sse", fake.base_url());
        let response = http.post(url).json(&body).send().await.unwrap();
        save(&out.join("gemini_sse"), format!("fake-{name}.sse"), response).await;
    }
}
