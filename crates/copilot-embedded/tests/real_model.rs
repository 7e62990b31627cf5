//! Grammar-constrained JSON and tool calls on the real default chat model, Qwen2.5-Coder 0.5B
//! Instruct (fetched by `scripts/test` with `copilot models fetch --all`), driven through the
//! provider. Greedy sampling, so each answer is the same on every run; the tests check structure
//! (parses, validates, names the tool), never answer quality.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot_embedded::engine::EngineSettings;
use copilot_embedded::store::ModelSources;
use copilot_embedded::{EmbeddedConfig, EmbeddedProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, Completion, Feature, FinishReason, GenerationOptions, Message, Part, Provider,
    ProviderError, ResponseFormat, Role, Tool, ToolCall, ToolCallDelta, ToolChoice,
};
use futures::StreamExt;

const QWEN: &str = "qwen";
const GEMMA: &str = "gemma";
const LIMIT: Duration = Duration::from_secs(300);

fn models_dir() -> PathBuf {
    std::env::var_os("COPILOT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/copilot/models"))
}

fn provider() -> EmbeddedProvider {
    let dir = models_dir();
    let mut files = BTreeMap::new();
    for (name, file) in [(QWEN, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), (GEMMA, "gemma-3-270m-q4_k_m.gguf")] {
        let path = dir.join(file);
        assert!(
            path.exists(),
            "{} is missing: run `scripts/test` or `cargo run -- models fetch --all`",
            path.display()
        );
        files.insert(name.to_string(), path);
    }
    EmbeddedProvider::new(EmbeddedConfig {
        sources: ModelSources { models_dir: None, files, ollama_store: None },
        engine: EngineSettings {
            threads: 2,
            batch_threads: 2,
            prompt_threads: 2,
            slots: 1,
            queue: 4,
            context_per_slot: 2048,
            batch_size: 512,
        },
        embedder: copilot_embedded::embedder::EmbedderSettings::default(),
        keep_alive: None,
        truncate_prompt: false,
    })
}

fn greedy(max_tokens: u32) -> GenerationOptions {
    GenerationOptions { temperature: Some(0.0), max_tokens: Some(max_tokens), ..GenerationOptions::default() }
}

fn request(messages: Vec<Message>, max_tokens: u32) -> ChatRequest {
    ChatRequest { model: QWEN.into(), messages, options: greedy(max_tokens), ..ChatRequest::default() }
}

/// The answer: its text, its tool-call pieces, and how it ended.
struct Answer {
    text: String,
    calls: Vec<ToolCallDelta>,
    done: Completion,
}

async fn run(provider: &EmbeddedProvider, request: ChatRequest) -> Result<Answer, ProviderError> {
    let mut stream = tokio::time::timeout(LIMIT, provider.chat(request)).await.expect("in time")?;
    let mut answer = Answer { text: String::new(), calls: Vec::new(), done: Completion::default() };
    while let Some(event) = tokio::time::timeout(LIMIT, stream.next()).await.expect("in time") {
        match event? {
            ChatEvent::Delta(text) => answer.text.push_str(&text),
            ChatEvent::ToolCall(call) => answer.calls.push(*call),
            ChatEvent::Thinking(thinking) => panic!("no thinking expected: {thinking:?}"),
            ChatEvent::Done(done) => answer.done = *done,
        }
    }
    Ok(answer)
}

fn validate(schema: &str, instance: &str) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
    let value: serde_json::Value =
        serde_json::from_str(instance).unwrap_or_else(|e| panic!("not JSON ({e}): {instance:?}"));
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{instance} does not validate: {errors:?}");
    value
}

const PERSON: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "languages": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    "role": {"enum": ["backend", "frontend", "data"]}
  },
  "required": ["name", "age", "languages", "role"],
  "additionalProperties": false
}"#;

const WEATHER: &str = r#"{
  "type": "object",
  "properties": {
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
  },
  "required": ["city", "unit"]
}"#;

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "Get the current weather in a city.".into(),
        parameters: Some(WEATHER.into()),
        strict: false,
    }
}

fn time_tool() -> Tool {
    Tool {
        name: "get_time".into(),
        description: "Get the current local time in a time zone.".into(),
        parameters: Some(
            r#"{"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}"#.into(),
        ),
        strict: false,
    }
}

#[tokio::test]
async fn a_json_schema_answer_validates_against_the_schema() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "Invent a software developer. Answer in JSON.")], 200);
    req.response_format = ResponseFormat::JsonSchema { name: "person".into(), schema: PERSON.into(), strict: true };
    let answer = run(&provider, req).await.unwrap();
    assert_eq!(answer.done.finish_reason, FinishReason::Stop, "{:?}", answer.text);
    assert!(answer.calls.is_empty());
    validate(PERSON, &answer.text);
}

#[tokio::test]
async fn sampled_at_a_temperature_the_answer_still_validates() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "Invent a software developer. Answer in JSON.")], 200);
    req.options = GenerationOptions { temperature: Some(1.2), seed: Some(7), ..greedy(200) };
    req.response_format = ResponseFormat::JsonSchema { name: "person".into(), schema: PERSON.into(), strict: true };
    let answer = run(&provider, req).await.unwrap();
    assert_eq!(answer.done.finish_reason, FinishReason::Stop, "{:?}", answer.text);
    validate(PERSON, &answer.text);
}

#[tokio::test]
async fn a_json_object_answer_parses_as_an_object() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "List three colors and their hex codes.")], 200);
    req.response_format = ResponseFormat::JsonObject;
    let answer = run(&provider, req).await.unwrap();
    assert_eq!(answer.done.finish_reason, FinishReason::Stop, "{:?}", answer.text);
    let value: serde_json::Value =
        serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", answer.text));
    assert!(value.is_object(), "{value}");
}

#[tokio::test]
async fn a_schema_llama_cpp_cannot_convert_is_refused_before_generation() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "Hi")], 10);
    req.response_format = ResponseFormat::JsonSchema {
        name: "remote".into(),
        schema: r#"{"$ref": "https://example.com/schemas/person.json"}"#.into(),
        strict: false,
    };
    let err = run(&provider, req).await.err().expect("refused");
    assert!(
        matches!(&err, ProviderError::InvalidRequest(m) if m.contains("https://example.com/schemas/person.json")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_named_tool_choice_forces_a_call_whose_arguments_validate() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "I am going to Lyon tomorrow. Should I pack a coat?")], 120);
    req.tools = vec![time_tool(), weather_tool()];
    req.tool_choice = Some(ToolChoice::Named("get_weather".into()));
    let answer = run(&provider, req).await.unwrap();
    assert_eq!(answer.done.finish_reason, FinishReason::ToolCalls, "{:?} {:?}", answer.text, answer.calls);
    assert_eq!(answer.text, "", "a forced call is all the answer holds");
    let [call] = answer.calls.as_slice() else { panic!("one call: {:?}", answer.calls) };
    assert_eq!((call.index, call.name.as_deref(), call.id.as_deref()), (0, Some("get_weather"), None));
    validate(WEATHER, &call.arguments);
}

#[tokio::test]
async fn a_required_tool_choice_calls_one_of_the_tools() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "What time is it in Tokyo?")], 120);
    req.tools = vec![weather_tool(), time_tool()];
    req.tool_choice = Some(ToolChoice::Required);
    let answer = run(&provider, req).await.unwrap();
    let [call] = answer.calls.as_slice() else { panic!("one call: {:?} {:?}", answer.calls, answer.text) };
    let schema = match call.name.as_deref() {
        Some("get_weather") => WEATHER.to_string(),
        Some("get_time") => time_tool().parameters.unwrap(),
        other => panic!("not a tool of the request: {other:?}"),
    };
    validate(&schema, &call.arguments);
}

#[tokio::test]
async fn a_tool_result_round_trip_ends_in_a_text_answer() {
    let provider = provider();
    let question = Message::text(Role::User, "What is the weather in Paris right now, in celsius?");
    let mut first = request(vec![question.clone()], 120);
    first.tools = vec![weather_tool()];
    // Forced, so the arguments follow the schema (left to itself, this small model leaves out
    // the optional-looking `unit`).
    first.tool_choice = Some(ToolChoice::Named("get_weather".into()));
    let answer = run(&provider, first).await.unwrap();
    let [call] = answer.calls.as_slice() else { panic!("the model calls the tool: {:?}", answer.text) };
    assert_eq!(call.name.as_deref(), Some("get_weather"));
    let arguments = validate(WEATHER, &call.arguments);
    assert_eq!(answer.done.finish_reason, FinishReason::ToolCalls);

    // The server makes up the id; the template shows the call and its result to the model.
    let id = "call_0123456789abcdefghijklmn";
    let assistant = Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall(ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: call.arguments.clone(),
            signature: Vec::new(),
        })],
        tool_call_id: None,
    };
    let result = Message::tool_result(id, r#"{"temperature": 31, "unit": "celsius", "sky": "sunny"}"#);
    // Auto now: the lazy grammar stays dormant while the model answers in text.
    let mut second = request(vec![question, assistant, result], 80);
    second.tools = vec![weather_tool()];
    let answer = run(&provider, second).await.unwrap();
    assert!(answer.calls.is_empty(), "answers from the result: {:?} {:?}", answer.calls, answer.text);
    assert_eq!(answer.done.finish_reason, FinishReason::Stop);
    assert!(answer.text.contains("31"), "the answer uses the tool's result: {:?} (call {arguments})", answer.text);
}

#[tokio::test]
async fn with_a_free_choice_a_call_written_without_tags_is_still_a_call() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "What's the weather in Paris?")], 120);
    req.tools = vec![Tool {
        parameters: Some(
            r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#.into(),
        ),
        ..weather_tool()
    }];
    let answer = run(&provider, req).await.unwrap();
    // This model answers with the call object in a ```json fence rather than in <tool_call> tags.
    let [call] = answer.calls.as_slice() else { panic!("one call: {:?} {:?}", answer.calls, answer.text) };
    assert_eq!(call.name.as_deref(), Some("get_weather"));
    let arguments: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(arguments["city"], "Paris", "{}", call.arguments);
    assert_eq!(answer.text, "", "nothing but the call");
    assert_eq!(answer.done.finish_reason, FinishReason::ToolCalls);
}

#[tokio::test]
async fn tool_choice_none_answers_in_text() {
    let provider = provider();
    let mut req = request(vec![Message::text(Role::User, "What is the weather in Paris?")], 40);
    req.tools = vec![weather_tool()];
    req.tool_choice = Some(ToolChoice::None);
    let answer = run(&provider, req).await.unwrap();
    assert!(answer.calls.is_empty());
    assert!(!answer.text.contains("<tool_call>"), "{:?}", answer.text);
}

#[tokio::test]
async fn capabilities_follow_the_chat_template_and_tools_need_one_that_lists_them() {
    let provider = provider();
    let features = provider.features();
    for feature in [Feature::Tools, Feature::JsonObject, Feature::JsonSchema] {
        assert!(features.contains(feature), "{feature:?}");
    }
    assert!(!features.contains(Feature::Images), "no vision projector is configured");
    let qwen = provider.describe_model(QWEN).await.unwrap();
    for capability in ["chat", "tools", "json_object", "json_schema"] {
        assert!(qwen.capabilities.iter().any(|c| c == capability), "{capability}: {:?}", qwen.capabilities);
    }
    let gemma = provider.describe_model(GEMMA).await.unwrap();
    assert!(!gemma.capabilities.iter().any(|c| c == "tools"), "{:?}", gemma.capabilities);

    let mut req = request(vec![Message::text(Role::User, "Weather in Paris?")], 10);
    req.model = GEMMA.into();
    req.tools = vec![weather_tool()];
    let err = run(&provider, req).await.err().expect("refused");
    assert!(
        matches!(&err, ProviderError::Unsupported { feature: Feature::Tools, message } if message.contains(GEMMA)),
        "{err:?}"
    );
}
