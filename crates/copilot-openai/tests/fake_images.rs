//! Images through `OpenAiProvider` against the fake OpenAI-compatible server: bytes reach the
//! server as `data:` URLs in `image_url` parts, URLs as given where the server fetches them, and
//! the servers' refusals come out as such.

use std::time::Duration;

use copilot_fakes::openai::FakeImage;
use copilot_fakes::{FakeModel, FakeOpenAi, Flavour, Reply};
use copilot_openai::{OpenAiConfig, OpenAiProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, Feature, Image, ImageSource, Message, Part, Provider, ProviderError, Role,
};
use futures::StreamExt;
use serde_json::json;

/// A 1×1 PNG, with every byte value base64 can trip on nearby.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\xff\xff?\0\x05\xfe\x02\xfe\xa7\x35\x81\x84\0\0\0\0IEND\xaeB`\x82";

async fn start(flavour: Flavour) -> (FakeOpenAi, OpenAiProvider) {
    let fake = FakeOpenAi::start().await;
    fake.set_flavour(flavour);
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(vec!["A red dot.".into()])));
    let config =
        OpenAiConfig { base_url: fake.base_url(), connect_timeout: Duration::from_secs(2), ..Default::default() };
    (fake, OpenAiProvider::new(config).expect("valid config"))
}

fn with_image(source: ImageSource, mime_type: &str) -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::text(Role::System, "Describe images."),
            Message {
                role: Role::User,
                parts: vec![
                    Part::Text("What is this?".into()),
                    Part::Image(Image { source, mime_type: mime_type.into() }),
                ],
                tool_call_id: None,
            },
        ],
        ..Default::default()
    }
}

async fn answer(provider: &OpenAiProvider, request: ChatRequest) -> Result<String, ProviderError> {
    let mut stream = provider.chat(request).await?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            ChatEvent::Delta(delta) => text.push_str(&delta),
            ChatEvent::Done(_) => return Ok(text),
            other => panic!("{other:?}"),
        }
    }
    panic!("no Done");
}

#[tokio::test]
async fn image_bytes_reach_every_server_as_a_data_url() {
    for flavour in [Flavour::OpenAi, Flavour::LlamaCpp, Flavour::Vllm, Flavour::Ollama, Flavour::DeepSeek] {
        let (fake, provider) = start(flavour).await;
        let text = answer(&provider, with_image(ImageSource::Data(PNG.to_vec()), "image/png")).await;
        assert_eq!(text.unwrap_or_else(|e| panic!("{flavour:?}: {e}")), "A red dot.");
        assert_eq!(
            fake.received_images(),
            [FakeImage::Data { mime_type: "image/png".into(), bytes: PNG.to_vec() }],
            "{flavour:?}"
        );
        let sent = &fake.chat_requests()[0]["messages"];
        // Text alone stays a string; a message with an image becomes parts, in order.
        assert_eq!(sent[0], json!({"role": "system", "content": "Describe images."}));
        assert_eq!(sent[1]["content"][0], json!({"type": "text", "text": "What is this?"}));
        assert_eq!(sent[1]["content"][1]["type"], "image_url");
        assert!(
            sent[1]["content"][1]["image_url"]["url"]
                .as_str()
                .unwrap()
                .starts_with("data:image/png;base64,iVBORw0KGgo")
        );
    }
}

#[tokio::test]
async fn image_urls_go_as_given_where_the_server_fetches_them() {
    let url = "https://example.com/dot.png?size=1";
    let (fake, provider) = start(Flavour::Vllm).await;
    answer(&provider, with_image(ImageSource::Url(url.into()), "")).await.unwrap();
    assert_eq!(fake.received_images(), [FakeImage::Url(url.into())]);

    // Ollama's /v1 fetches nothing: a server to configure without image URLs, so that such
    // requests are refused before they are sent.
    let (_fake, provider) = start(Flavour::Ollama).await;
    let result = answer(&provider, with_image(ImageSource::Url(url.into()), "")).await;
    assert!(
        matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("invalid image input")),
        "{result:?}"
    );
    assert!(!provider.with_image_urls(false).features().contains(Feature::ImageUrls));
}

#[tokio::test]
async fn a_server_refuses_what_it_cannot_decode() {
    // llama.cpp decodes images with stb_image, which reads no WebP.
    let (fake, provider) = start(Flavour::LlamaCpp).await;
    let result = answer(&provider, with_image(ImageSource::Data(b"RIFF\0\0\0\0WEBPVP8 ".to_vec()), "image/webp")).await;
    assert!(matches!(&result, Err(ProviderError::InvalidRequest(m)) if m.contains("image/webp")), "{result:?}");
    assert!(fake.received_images().is_empty());
}

#[tokio::test]
async fn a_model_without_vision_is_reported_as_unsupported() {
    for flavour in [Flavour::OpenAi, Flavour::LlamaCpp, Flavour::Vllm, Flavour::Ollama] {
        let (fake, provider) = start(flavour).await;
        fake.set_unsupported(&["vision"]);
        let result = answer(&provider, with_image(ImageSource::Data(PNG.to_vec()), "image/png")).await;
        assert!(
            matches!(result, Err(ProviderError::Unsupported { feature: Feature::Images, .. })),
            "{flavour:?}: {result:?}"
        );
    }
}
