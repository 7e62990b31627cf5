//! Tools and structured output on the embedded engine's real default model (issue 16), through the
//! binary: Qwen2.5-Coder 0.5B Instruct (fetched by `scripts/test`), greedy, so each answer is the
//! same on every run. JSON answers come from grammar-constrained sampling, tool calls from the
//! model's own chat template and its `<tool_call>` blocks; the server adds the calls' ids.
//! These assert structure, never answer quality.

use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot::proto::v1::response_format::Format;
use copilot::proto::v1::{
    ChatRequest, FinishReason, GenerationOptions, GetModelRequest, Image, JsonObjectFormat, JsonSchemaFormat, Message,
    Part, ResponseFormat, Role, Tool, ToolCall, ToolChoice, ToolChoiceMode, image, part,
};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(180);
const QWEN: &str = "embedded/qwen2.5-coder-0.5b-instruct";

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("COPILOT_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        Path::new(&home).join(".cache/copilot/models")
    });
    let qwen = dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        qwen.exists(),
        "{} is missing: run `scripts/test` or `cargo run -- models fetch --all` first",
        qwen.display()
    );
    dir
}

/// Copilot with only the embedded provider, one inference thread and a context roomy enough for
/// Qwen's tool section.
async fn embedded() -> Copilot {
    let config = format!(
        "[providers.embedded]\nmodels_dir = {:?}\nollama_store = \"off\"\nthreads = 1\nparallel = 1\nqueue = 4\n\
         context_length = 2048\n",
        models_dir().display().to_string()
    );
    Copilot::start_with(&config, &[]).await
}

fn user(content: &str) -> Message {
    Message { role: Role::User as i32, content: content.into(), ..Default::default() }
}

fn chat(messages: Vec<Message>, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: QWEN.into(),
        messages,
        options: Some(GenerationOptions { temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }),
        ..Default::default()
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "Get the current weather in a city.".into(),
        parameters_json_schema: r#"{"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}"#
            .into(),
        strict: false,
    }
}

/// A streamed answer: its text, its calls (whole, by index) and how it ended.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
}

async fn run(copilot: &Copilot, request: ChatRequest) -> Result<Answer, tonic::Status> {
    let mut client = copilot.client().await;
    let mut stream = within(LIMIT, client.chat(request)).await?.into_inner();
    let mut answer = Answer::default();
    while let Some(message) = within(LIMIT, stream.next()).await {
        let message = message?;
        answer.text.push_str(&message.content);
        if message.finish_reason != FinishReason::Unspecified as i32 {
            answer.finish = Some(message.finish_reason());
        }
        for delta in message.tool_calls {
            let index = delta.index as usize;
            if index == answer.calls.len() {
                answer.calls.push(ToolCall { id: delta.id, name: delta.name, ..Default::default() });
            }
            answer.calls[index].arguments_json.push_str(&delta.arguments_json);
        }
    }
    Ok(answer)
}

fn object(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("not a JSON object: {text:?} ({other:?})"),
    }
}

#[tokio::test]
async fn a_json_schema_answer_has_the_schemas_shape() {
    let copilot = embedded().await;
    let schema = r#"{"type": "object", "properties": {"language": {"type": "string"},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "paradigms": {"type": "array", "items": {"enum": ["functional", "imperative", "object-oriented"]},
                      "minItems": 1, "maxItems": 3}},
        "required": ["language", "year", "paradigms"], "additionalProperties": false}"#;
    let mut request = chat(vec![user("Describe the Rust programming language.")], 150);
    request.response_format = Some(ResponseFormat {
        format: Some(Format::JsonSchema(JsonSchemaFormat {
            name: "language".into(),
            schema_json: schema.into(),
            strict: true,
        })),
    });
    let answer = run(&copilot, request).await.unwrap();
    assert_eq!(answer.finish, Some(FinishReason::Stop), "{answer:?}");
    let map = object(&answer.text);
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["language", "paradigms", "year"], "{}", answer.text);
    assert!(map["language"].is_string());
    let year = map["year"].as_i64().expect("an integer year");
    assert!((1900..=2100).contains(&year), "{year}");
    let paradigms = map["paradigms"].as_array().unwrap();
    assert!((1..=3).contains(&paradigms.len()));
    for p in paradigms {
        assert!(["functional", "imperative", "object-oriented"].contains(&p.as_str().unwrap()), "{p}");
    }
}

#[tokio::test]
async fn a_json_object_answer_is_an_object() {
    let copilot = embedded().await;
    let mut request = chat(vec![user("Give the boiling points of water and ethanol in celsius.")], 120);
    request.response_format = Some(ResponseFormat { format: Some(Format::JsonObject(JsonObjectFormat {})) });
    let answer = run(&copilot, request).await.unwrap();
    assert_eq!(answer.finish, Some(FinishReason::Stop), "{answer:?}");
    object(&answer.text);
}

#[tokio::test]
async fn a_forced_tool_call_then_its_result_ends_in_a_text_answer() {
    let copilot = embedded().await;
    let question = user("What's the weather like in Paris right now? Use celsius.");
    let mut first = chat(vec![question.clone()], 120);
    first.tools = vec![weather_tool()];
    first.tool_choice = Some(ToolChoice { mode: ToolChoiceMode::Unspecified as i32, name: "get_weather".into() });
    let answer = run(&copilot, first).await.unwrap();
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls), "{answer:?}");
    let [call] = answer.calls.as_slice() else { panic!("one call: {answer:?}") };
    assert_eq!(call.name, "get_weather");
    assert!(call.id.starts_with("call_"), "the server makes up the id: {:?}", call.id);
    let arguments = object(&call.arguments_json);
    assert!(arguments["city"].is_string(), "{arguments:?}");
    assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap()), "{arguments:?}");

    let assistant = Message {
        role: Role::Assistant as i32,
        parts: vec![Part { kind: Some(part::Kind::ToolCall(call.clone())) }],
        ..Default::default()
    };
    let result = Message {
        role: Role::Tool as i32,
        content: r#"{"temperature": 31, "unit": "celsius", "sky": "sunny"}"#.into(),
        tool_call_id: call.id.clone(),
        ..Default::default()
    };
    let mut second = chat(vec![question, assistant, result], 80);
    second.tools = vec![weather_tool()];
    let answer = run(&copilot, second).await.unwrap();
    assert!(answer.calls.is_empty(), "{answer:?}");
    assert_eq!(answer.finish, Some(FinishReason::Stop), "{answer:?}");
    assert!(answer.text.contains("31"), "the answer uses the tool's result: {:?}", answer.text);
}

#[tokio::test]
async fn with_a_free_choice_the_models_call_reaches_the_client_as_a_call() {
    let copilot = embedded().await;
    let mut request = chat(vec![user("What's the weather in Paris?")], 120);
    request.tools = vec![Tool {
        parameters_json_schema:
            r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#.into(),
        ..weather_tool()
    }];
    let answer = run(&copilot, request).await.unwrap();
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls), "{answer:?}");
    let [call] = answer.calls.as_slice() else { panic!("one call: {answer:?}") };
    assert_eq!(call.name, "get_weather");
    assert!(call.id.starts_with("call_"), "{:?}", call.id);
    assert_eq!(object(&call.arguments_json)["city"], "Paris", "{}", call.arguments_json);
    assert_eq!(answer.text, "");
}

#[tokio::test]
async fn the_model_lists_its_capabilities_and_images_are_refused_precisely() {
    let copilot = embedded().await;
    let mut client = copilot.client().await;
    let model = client.get_model(GetModelRequest { model: QWEN.into() }).await.unwrap().into_inner().model.unwrap();
    for capability in ["tools", "json_object", "json_schema"] {
        assert!(model.capabilities.iter().any(|c| c == capability), "{capability}: {:?}", model.capabilities);
    }
    assert!(!model.capabilities.iter().any(|c| c == "vision"), "{:?}", model.capabilities);

    // A 1x1 PNG.
    let png: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00,
        0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d,
        0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    let with_image = Message {
        role: Role::User as i32,
        parts: vec![
            Part { kind: Some(part::Kind::Text("What is in this picture?".into())) },
            Part {
                kind: Some(part::Kind::Image(Image {
                    source: Some(image::Source::Data(png.to_vec())),
                    mime_type: "image/png".into(),
                })),
            },
        ],
        ..Default::default()
    };
    let status = run(&copilot, chat(vec![with_image], 10)).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "FEATURE_UNSUPPORTED");
    assert_eq!(info.metadata.get("feature").map(String::as_str), Some("vision"), "{info:?}");
}
