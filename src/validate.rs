//! Turns proto requests into validated domain requests, once, at the edge. Nothing past this
//! module sees an unchecked request; every problem becomes a field violation a person can act on.

mod content;

use copilot_provider::{GenerationOptions, Message, Reasoning, ResponseFormat, Role, Tool, ToolChoice};
use tonic_types::FieldViolation;

use crate::cache::{CacheControl, CacheMode};
use crate::config::LimitsConfig;
use crate::error::{GatewayError, truncate_bytes};
use crate::proto::v1 as pb;

/// Most stop sequences one request may carry.
pub const MAX_STOP_SEQUENCES: usize = 16;

/// Longest stop sequence, in bytes. Real ones are a few characters (`"\n\n"`, `"</answer>"`).
pub const MAX_STOP_BYTES: usize = 256;

/// Longest model name (`GenerateRequest.model`, `ChatRequest.model`, `GetModelRequest.model`), in
/// bytes, after trimming. The longest real names fit with room to spare: a Hugging Face repository
/// through Ollama is `ollama/hf.co/<owner>/<repo>:<tag>`, and Hugging Face caps owner and repository
/// at 96 characters each (≈ 240 bytes in all with a quantization tag); OpenAI, Gemini and Anthropic
/// ids are under 80. A longer name can only be a mistake, and would be forwarded upstream and
/// echoed in errors.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

/// How much of an over-long name an error message quotes, in bytes.
const QUOTED_PREFIX_BYTES: usize = 40;

/// Checks a model name on its own, as GetModel takes it.
pub fn model_name(model: &str) -> Result<(), GatewayError> {
    let mut violations = Vec::new();
    check_model_name(model, &mut violations);
    finish(violations)
}

fn check_model_name(model: &str, violations: &mut Vec<FieldViolation>) {
    let name = model.trim();
    if name.len() > MAX_MODEL_NAME_BYTES {
        violations.push(FieldViolation::new(
            "model",
            format!(
                "is {} bytes long (it starts {:?}); model names are at most {MAX_MODEL_NAME_BYTES} bytes: use a name \
                 ListModels shows",
                name.len(),
                truncate_bytes(name, QUOTED_PREFIX_BYTES)
            ),
        ));
    }
}

pub use content::{MAX_IMAGES, MAX_TOOLS, sniff_image};

/// A checked chat request, before routing: `model` is still the client's name for it. Its
/// serialization is the response cache's key (`cache::key`): every field is in it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ValidRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub options: GenerationOptions,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub response_format: ResponseFormat,
    pub reasoning: Option<Reasoning>,
}

impl ValidRequest {
    /// What the request asks beyond text, which a target's adapter must be able to translate.
    pub fn needs(&self) -> copilot_provider::Features {
        copilot_provider::features_needed(
            &self.messages,
            &self.tools,
            self.tool_choice.as_ref(),
            &self.response_format,
            self.reasoning,
        )
    }
}

/// What both methods may ask beyond text, checked.
struct Asks {
    tools: Vec<Tool>,
    tool_choice: Option<ToolChoice>,
    response_format: ResponseFormat,
    reasoning: Option<Reasoning>,
}

impl Asks {
    fn request(self, model: &str, messages: Vec<Message>, options: GenerationOptions) -> ValidRequest {
        ValidRequest {
            model: model.trim().to_string(),
            messages,
            options,
            tools: self.tools,
            tool_choice: self.tool_choice,
            response_format: self.response_format,
            reasoning: self.reasoning,
        }
    }
}

fn asks(
    tools: Vec<pb::Tool>,
    tool_choice: Option<pb::ToolChoice>,
    response_format: Option<pb::ResponseFormat>,
    reasoning: Option<pb::Reasoning>,
    violations: &mut Vec<FieldViolation>,
) -> Asks {
    let v = &mut content::Violations(violations);
    let tools = content::tools(tools, v);
    let tool_choice = content::tool_choice(tool_choice, &tools, v);
    Asks {
        tool_choice,
        tools,
        response_format: content::response_format(response_format, v),
        reasoning: content::reasoning(reasoning, v),
    }
}

pub fn generate(request: pb::GenerateRequest, limits: &LimitsConfig) -> Result<ValidRequest, GatewayError> {
    let mut violations = Vec::new();
    check_model_name(&request.model, &mut violations);
    if request.prompt.trim().is_empty() {
        violations.push(FieldViolation::new("prompt", "must not be empty"));
    }
    check_prompt_size("prompt", [request.prompt.as_str(), request.system.as_str()], limits, &mut violations);
    let options = options(request.options, &mut violations);
    let asks = asks(request.tools, request.tool_choice, request.response_format, request.reasoning, &mut violations);
    finish(violations)?;
    let mut messages = Vec::with_capacity(2);
    if !request.system.trim().is_empty() {
        messages.push(Message::text(Role::System, request.system));
    }
    messages.push(Message::text(Role::User, request.prompt));
    Ok(asks.request(&request.model, messages, options))
}

pub fn chat(request: pb::ChatRequest, limits: &LimitsConfig) -> Result<ValidRequest, GatewayError> {
    let mut violations = Vec::new();
    check_model_name(&request.model, &mut violations);
    if request.messages.is_empty() {
        violations.push(FieldViolation::new("messages", "must contain at least one message"));
    }
    if request.messages.len() > limits.max_messages {
        // Checking each of a flood of messages would only lengthen the answer.
        return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
            "messages",
            format!(
                "has {} messages; this server accepts at most {} (its limits.max_messages)",
                request.messages.len(),
                limits.max_messages
            ),
        )]));
    }
    check_prompt_size("messages", request.messages.iter().flat_map(content::texts), limits, &mut violations);
    let mut messages = Vec::with_capacity(request.messages.len());
    let mut conversation = content::Conversation::default();
    for (i, message) in request.messages.into_iter().enumerate() {
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::System) => Some(Role::System),
            Ok(pb::Role::User) => Some(Role::User),
            Ok(pb::Role::Assistant) => Some(Role::Assistant),
            Ok(pb::Role::Tool) => Some(Role::Tool),
            Ok(pb::Role::Unspecified) => {
                violations.push(FieldViolation::new(
                    format!("messages[{i}].role"),
                    "must be set to ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
                ));
                None
            }
            Err(_) => {
                violations.push(FieldViolation::new(
                    format!("messages[{i}].role"),
                    format!(
                        "{} is not a known role; use ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
                        message.role
                    ),
                ));
                None
            }
        };
        match role {
            Some(role) => {
                let v = &mut content::Violations(&mut violations);
                if let Some(message) = content::message(i, role, message, &mut conversation, v) {
                    messages.push(message);
                }
            }
            None if message.content.trim().is_empty() && message.parts.is_empty() => {
                violations.push(FieldViolation::new(format!("messages[{i}].content"), "must not be empty"));
            }
            None => {}
        }
    }
    let options = options(request.options, &mut violations);
    let asks = asks(request.tools, request.tool_choice, request.response_format, request.reasoning, &mut violations);
    finish(violations)?;
    Ok(asks.request(&request.model, messages, options))
}

/// A `CountTokens` request, checked as the chat request it is without generation options: the
/// same rules for its messages and tools, the same field names in violations.
pub fn count_tokens(request: pb::CountTokensRequest, limits: &LimitsConfig) -> Result<ValidRequest, GatewayError> {
    let pb::CountTokensRequest { model, messages, tools } = request;
    chat(pb::ChatRequest { model, messages, tools, ..Default::default() }, limits)
}

/// A checked `Embed` request, before routing: `model` is still the client's name for it. Its
/// serialization is the response cache's key, like [`ValidRequest`]'s.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ValidEmbed {
    pub model: String,
    pub inputs: Vec<String>,
    pub dimensions: Option<u32>,
    pub task: copilot_provider::EmbeddingTask,
    pub truncate: bool,
}

pub fn embed(request: pb::EmbedRequest, limits: &LimitsConfig) -> Result<ValidEmbed, GatewayError> {
    use copilot_provider::EmbeddingTask;
    let mut violations = Vec::new();
    check_model_name(&request.model, &mut violations);
    if request.inputs.is_empty() {
        violations.push(FieldViolation::new("inputs", "must contain at least one text"));
    }
    if request.inputs.len() > limits.max_embed_inputs {
        // Checking each of a flood of inputs would only lengthen the answer.
        return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
            "inputs",
            format!(
                "has {} texts; this server accepts at most {} per call (its limits.max_embed_inputs): split them",
                request.inputs.len(),
                limits.max_embed_inputs
            ),
        )]));
    }
    check_prompt_size("inputs", request.inputs.iter().map(String::as_str), limits, &mut violations);
    for (i, input) in request.inputs.iter().enumerate() {
        if input.trim().is_empty() {
            violations.push(FieldViolation::new(format!("inputs[{i}]"), "must not be empty"));
        }
    }
    if request.dimensions == Some(0) {
        violations.push(FieldViolation::new("dimensions", "must be at least 1; leave it unset for the model's own"));
    }
    let task = match pb::EmbeddingTask::try_from(request.task) {
        Ok(pb::EmbeddingTask::Unspecified) => EmbeddingTask::Unspecified,
        Ok(pb::EmbeddingTask::Query) => EmbeddingTask::Query,
        Ok(pb::EmbeddingTask::Document) => EmbeddingTask::Document,
        Ok(pb::EmbeddingTask::SemanticSimilarity) => EmbeddingTask::SemanticSimilarity,
        Ok(pb::EmbeddingTask::Classification) => EmbeddingTask::Classification,
        Ok(pb::EmbeddingTask::Clustering) => EmbeddingTask::Clustering,
        Err(_) => {
            violations.push(FieldViolation::new("task", format!("{} is not a known task", request.task)));
            EmbeddingTask::Unspecified
        }
    };
    finish(violations)?;
    Ok(ValidEmbed {
        model: request.model.trim().to_string(),
        inputs: request.inputs,
        dimensions: request.dimensions,
        task,
        truncate: request.truncate,
    })
}

/// What a call asks of the response cache, checked. It is taken apart from the request: the
/// validated request is the cache's key, and the same call with another mode is the same entry.
pub fn cache_control(control: Option<&pb::CacheControl>) -> Result<CacheControl, GatewayError> {
    let Some(control) = control else { return Ok(CacheControl::default()) };
    let mut violations = Vec::new();
    let mode = match pb::CacheMode::try_from(control.mode) {
        Ok(pb::CacheMode::Unspecified) => CacheMode::Default,
        Ok(pb::CacheMode::Use) => CacheMode::Use,
        Ok(pb::CacheMode::Skip) => CacheMode::Skip,
        Ok(pb::CacheMode::Refresh) => CacheMode::Refresh,
        Ok(pb::CacheMode::OnlyIfCached) => CacheMode::OnlyIfCached,
        Err(_) => {
            violations.push(FieldViolation::new(
                "cache.mode",
                format!(
                    "{} is not a known mode; use CACHE_MODE_USE, CACHE_MODE_SKIP, CACHE_MODE_REFRESH or \
                     CACHE_MODE_ONLY_IF_CACHED, or leave it unset",
                    control.mode
                ),
            ));
            CacheMode::Default
        }
    };
    let ttl = match control.ttl {
        None => None,
        Some(prost_types::Duration { seconds, nanos })
            if seconds >= 0 && (0..1_000_000_000).contains(&nanos) && (seconds, nanos) != (0, 0) =>
        {
            Some(std::time::Duration::new(seconds as u64, nanos as u32))
        }
        Some(_) => {
            violations.push(FieldViolation::new("cache.ttl", "must be more than 0s; leave it unset for the server's"));
            None
        }
    };
    finish(violations)?;
    Ok(CacheControl { mode, ttl })
}

/// The prompt's total length in characters against `limits.max_prompt_chars`.
fn check_prompt_size<'a>(
    field: &str,
    texts: impl IntoIterator<Item = &'a str> + Clone,
    limits: &LimitsConfig,
    violations: &mut Vec<FieldViolation>,
) {
    let max = limits.max_prompt_chars;
    // A text has at least as many bytes as characters: count characters only when the bytes exceed the limit.
    if texts.clone().into_iter().map(str::len).sum::<usize>() <= max {
        return;
    }
    let chars: usize = texts.into_iter().map(|t| t.chars().count()).sum();
    if chars > max {
        violations.push(FieldViolation::new(
            field,
            format!(
                "is {chars} characters long in total; this server accepts at most {max} (its limits.max_prompt_chars)"
            ),
        ));
    }
}

fn options(options: Option<pb::GenerationOptions>, violations: &mut Vec<FieldViolation>) -> GenerationOptions {
    let Some(o) = options else { return GenerationOptions::default() };
    if let Some(t) = o.temperature
        && !(0.0..=2.0).contains(&t)
    {
        violations.push(FieldViolation::new("options.temperature", format!("must be between 0 and 2, got {t}")));
    }
    if let Some(p) = o.top_p
        && !(0.0..=1.0).contains(&p)
    {
        violations.push(FieldViolation::new("options.top_p", format!("must be between 0 and 1, got {p}")));
    }
    if o.top_k == Some(0) {
        violations
            .push(FieldViolation::new("options.top_k", "must be at least 1; leave it unset for the model's default"));
    }
    if o.max_tokens == Some(0) {
        violations.push(FieldViolation::new(
            "options.max_tokens",
            "must be at least 1; leave it unset for the model's default",
        ));
    }
    if o.stop.len() > MAX_STOP_SEQUENCES {
        violations.push(FieldViolation::new(
            "options.stop",
            format!("has {} sequences; at most {MAX_STOP_SEQUENCES} are allowed", o.stop.len()),
        ));
    }
    for (i, stop) in o.stop.iter().enumerate() {
        if stop.is_empty() {
            violations.push(FieldViolation::new(format!("options.stop[{i}]"), "must not be empty"));
        } else if stop.len() > MAX_STOP_BYTES {
            violations.push(FieldViolation::new(
                format!("options.stop[{i}]"),
                format!("is {} bytes long; a stop sequence is at most {MAX_STOP_BYTES} bytes", stop.len()),
            ));
        }
    }
    GenerationOptions {
        temperature: o.temperature,
        max_tokens: o.max_tokens,
        top_p: o.top_p,
        top_k: o.top_k,
        stop: o.stop,
        seed: o.seed,
    }
}

fn finish(violations: Vec<FieldViolation>) -> Result<(), GatewayError> {
    if violations.is_empty() { Ok(()) } else { Err(GatewayError::InvalidArgument(violations)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(request: pb::GenerateRequest) -> Result<ValidRequest, GatewayError> {
        super::generate(request, &LimitsConfig::default())
    }

    fn chat(request: pb::ChatRequest) -> Result<ValidRequest, GatewayError> {
        super::chat(request, &LimitsConfig::default())
    }

    fn fields(error: GatewayError) -> Vec<String> {
        match error {
            GatewayError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn generate_puts_the_system_prompt_first() {
        let valid = generate(pb::GenerateRequest {
            model: " ollama/llama3.2 ".into(),
            prompt: "Hi".into(),
            system: "Be brief".into(),
            options: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(valid.model, "ollama/llama3.2");
        assert_eq!(valid.messages[0], Message::text(Role::System, "Be brief"));
        assert_eq!(valid.messages[1], Message::text(Role::User, "Hi"));
    }

    #[test]
    fn empty_prompt_and_bad_options_are_all_reported() {
        let err = generate(pb::GenerateRequest {
            prompt: "  ".into(),
            options: Some(pb::GenerationOptions {
                temperature: Some(-0.5),
                top_p: Some(1.5),
                top_k: Some(0),
                max_tokens: Some(0),
                stop: vec!["".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "prompt",
                "options.temperature",
                "options.top_p",
                "options.top_k",
                "options.max_tokens",
                "options.stop[0]"
            ]
        );
    }

    #[test]
    fn nan_temperature_is_rejected() {
        let err = generate(pb::GenerateRequest {
            prompt: "x".into(),
            options: Some(pb::GenerationOptions { temperature: Some(f32::NAN), ..Default::default() }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(err), ["options.temperature"]);
    }

    #[test]
    fn chat_checks_every_message() {
        let err = chat(pb::ChatRequest {
            messages: vec![
                pb::Message { role: pb::Role::User as i32, content: "ok".into(), ..Default::default() },
                pb::Message { role: pb::Role::Unspecified as i32, content: "x".into(), ..Default::default() },
                pb::Message { role: 42, content: "".into(), ..Default::default() },
            ],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(err), ["messages[1].role", "messages[2].role", "messages[2].content"]);
        assert_eq!(fields(chat(pb::ChatRequest::default()).unwrap_err()), ["messages"]);
    }

    #[test]
    fn prompt_length_counts_characters_over_every_message() {
        let limits = LimitsConfig { max_prompt_chars: 5, max_messages: 2, ..LimitsConfig::default() };
        let message =
            |content: &str| pb::Message { role: pb::Role::User as i32, content: content.into(), ..Default::default() };
        let request = |contents: &[&str]| pb::ChatRequest {
            messages: contents.iter().map(|c| message(c)).collect(),
            ..Default::default()
        };
        // Five characters in ten bytes is within a limit of five characters.
        assert!(super::chat(request(&["ééé", "éé"]), &limits).is_ok());
        let err = super::chat(request(&["abc", "def"]), &limits).unwrap_err();
        assert!(err.to_string().contains("6 characters") && err.to_string().contains("max_prompt_chars"), "{err}");
        let err = super::chat(request(&["a", "b", "c"]), &limits).unwrap_err();
        assert!(err.to_string().contains("3 messages") && err.to_string().contains("max_messages"), "{err}");

        let prompt = |prompt: &str, system: &str| pb::GenerateRequest {
            prompt: prompt.into(),
            system: system.into(),
            ..Default::default()
        };
        assert!(super::generate(prompt("abc", "de"), &limits).is_ok());
        assert_eq!(fields(super::generate(prompt("abc", "def"), &limits).unwrap_err()), ["prompt"]);
    }

    #[test]
    fn options_pass_through() {
        let valid = chat(pb::ChatRequest {
            messages: vec![pb::Message { role: pb::Role::User as i32, content: "hi".into(), ..Default::default() }],
            options: Some(pb::GenerationOptions {
                temperature: Some(0.0),
                max_tokens: Some(5),
                top_p: Some(1.0),
                top_k: Some(40),
                stop: vec!["\n".into()],
                seed: Some(7),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            valid.options,
            GenerationOptions {
                temperature: Some(0.0),
                max_tokens: Some(5),
                top_p: Some(1.0),
                top_k: Some(40),
                stop: vec!["\n".into()],
                seed: Some(7)
            }
        );
    }

    #[test]
    fn model_names_are_bounded_without_being_echoed() {
        let at_limit = format!("ollama/hf.co/{}:Q4_K_M", "o".repeat(MAX_MODEL_NAME_BYTES - 20));
        assert_eq!(at_limit.len(), MAX_MODEL_NAME_BYTES);
        let request =
            |model: &str| pb::GenerateRequest { model: model.into(), prompt: "hi".into(), ..Default::default() };
        assert_eq!(generate(request(&format!("  {at_limit}  "))).unwrap().model, at_limit);
        assert!(super::model_name(&at_limit).is_ok());

        let long = format!("{at_limit}x");
        let err = generate(request(&long)).unwrap_err();
        let GatewayError::InvalidArgument(violations) = &err else { panic!("{err:?}") };
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "model");
        let description = &violations[0].description;
        assert!(description.contains("257 bytes") && description.contains("at most 256"), "{description}");
        assert!(description.len() < 200, "{description}");
        assert_eq!(fields(super::model_name(&long).unwrap_err()), ["model"]);
        let chat_request = pb::ChatRequest { model: "é".repeat(10_000), messages: vec![], ..Default::default() };
        assert_eq!(fields(chat(chat_request).unwrap_err()), ["model", "messages"]);
    }

    #[test]
    fn stop_sequences_are_bounded() {
        let request = |stop: String| pb::GenerateRequest {
            prompt: "hi".into(),
            options: Some(pb::GenerationOptions { stop: vec![stop], ..Default::default() }),
            ..Default::default()
        };
        assert!(generate(request("s".repeat(MAX_STOP_BYTES))).is_ok());
        assert_eq!(fields(generate(request("s".repeat(MAX_STOP_BYTES + 1))).unwrap_err()), ["options.stop[0]"]);
    }

    // -----------------------------------------------------------------------------------------
    // Parts, tools, tool results, response formats, reasoning (issue 16)

    fn user(text: &str) -> pb::Message {
        pb::Message { role: pb::Role::User as i32, content: text.into(), ..Default::default() }
    }

    fn assistant_calling(ids: &[&str]) -> pb::Message {
        let parts = ids
            .iter()
            .map(|id| pb::Part {
                kind: Some(pb::part::Kind::ToolCall(pb::ToolCall {
                    id: (*id).into(),
                    name: "get_weather".into(),
                    arguments_json: r#"{"id":9007199254740993,"x":1.0}"#.into(),
                    ..Default::default()
                })),
            })
            .collect();
        pb::Message { role: pb::Role::Assistant as i32, parts, ..Default::default() }
    }

    fn result(id: &str) -> pb::Message {
        pb::Message {
            role: pb::Role::Tool as i32,
            content: "18C".into(),
            tool_call_id: id.into(),
            ..Default::default()
        }
    }

    fn tool(name: &str, schema: &str) -> pb::Tool {
        pb::Tool { name: name.into(), parameters_json_schema: schema.into(), ..Default::default() }
    }

    fn conversation(messages: Vec<pb::Message>) -> pb::ChatRequest {
        pb::ChatRequest { messages, ..Default::default() }
    }

    #[test]
    fn a_tool_loop_passes_with_arguments_kept_as_written() {
        let valid = chat(pb::ChatRequest {
            tools: vec![tool("get_weather", r#"{"type":"object"}"#)],
            tool_choice: Some(pb::ToolChoice { name: "get_weather".into(), ..Default::default() }),
            ..conversation(vec![user("Weather?"), assistant_calling(&["a", "b"]), result("b"), result("a")])
        })
        .unwrap();
        assert_eq!(valid.tool_choice, Some(ToolChoice::Named("get_weather".into())));
        assert_eq!(valid.tools[0].parameters.as_deref(), Some(r#"{"type":"object"}"#));
        let call = valid.messages[1].tool_calls().next().unwrap();
        assert_eq!(call.arguments, r#"{"id":9007199254740993,"x":1.0}"#);
        assert_eq!(valid.messages[3], Message::tool_result("a", "18C"));
        assert!(valid.needs().contains(copilot_provider::Feature::Tools));
    }

    #[test]
    fn tool_results_must_answer_the_latest_calls_each_once_before_the_conversation_goes_on() {
        let err = chat(conversation(vec![
            user("q"),
            assistant_calling(&["a"]),
            result("zzz"),
            result("a"),
            result("a"),
            pb::Message { tool_call_id: "a".into(), ..user("stray") },
            pb::Message { role: pb::Role::Tool as i32, content: "x".into(), ..Default::default() },
        ]))
        .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "messages[2].tool_call_id",
                "messages[4].tool_call_id",
                "messages[5].tool_call_id",
                "messages[6].tool_call_id"
            ]
        );
        let err =
            chat(conversation(vec![user("q"), assistant_calling(&["a", "b"]), result("a"), user("and?")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("messages[3]") && text.contains("[\"b\"]"), "{text}");
        let err =
            chat(conversation(vec![user("q"), assistant_calling(&["a"]), result("a"), assistant_calling(&["a"])]))
                .unwrap_err();
        assert_eq!(fields(err), ["messages[3].parts[0].tool_call.id"]);
    }

    #[test]
    fn tools_are_checked_for_names_duplicates_and_schemas() {
        let err = chat(pb::ChatRequest {
            tools: vec![
                tool("ok_name-1", ""),
                tool("ok_name-1", ""),
                tool("has space", ""),
                tool(&"x".repeat(65), ""),
                tool("bad_schema", "{\"type\":"),
                tool("not_object", "[1]"),
            ],
            tool_choice: Some(pb::ToolChoice { name: "missing".into(), ..Default::default() }),
            ..conversation(vec![user("q")])
        })
        .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "tools[1].name",
                "tools[2].name",
                "tools[3].name",
                "tools[4].parameters_json_schema",
                "tools[5].parameters_json_schema",
                "tool_choice.name"
            ]
        );
        let too_many = (0..=MAX_TOOLS).map(|i| tool(&format!("t{i}"), "")).collect();
        assert_eq!(
            fields(chat(pb::ChatRequest { tools: too_many, ..conversation(vec![user("q")]) }).unwrap_err()),
            ["tools"]
        );
        let no_tools = pb::ChatRequest {
            tool_choice: Some(pb::ToolChoice { mode: pb::ToolChoiceMode::Required as i32, ..Default::default() }),
            ..conversation(vec![user("q")])
        };
        assert_eq!(fields(chat(no_tools).unwrap_err()), ["tool_choice"]);
        let contradiction = pb::ChatRequest {
            tools: vec![tool("f", "")],
            tool_choice: Some(pb::ToolChoice { mode: pb::ToolChoiceMode::None as i32, name: "f".into() }),
            ..conversation(vec![user("q")])
        };
        assert_eq!(fields(chat(contradiction).unwrap_err()), ["tool_choice.name"]);
    }

    #[test]
    fn parts_are_checked_by_kind_and_role() {
        let part = |kind| pb::Part { kind: Some(kind) };
        let png = b"\x89PNG\r\n\x1a\n rest".to_vec();
        let image = |data: Vec<u8>, mime: &str| {
            part(pb::part::Kind::Image(pb::Image {
                source: Some(pb::image::Source::Data(data)),
                mime_type: mime.into(),
            }))
        };
        let url = |url: &str| {
            part(pb::part::Kind::Image(pb::Image {
                source: Some(pb::image::Source::Url(url.into())),
                ..Default::default()
            }))
        };
        let ok = chat(conversation(vec![pb::Message {
            role: pb::Role::User as i32,
            parts: vec![
                part(pb::part::Kind::Text("What is this?".into())),
                image(png.clone(), "image/png"),
                url("https://x/y.jpg"),
            ],
            ..Default::default()
        }]))
        .unwrap();
        let needs = ok.needs();
        assert!(
            needs.contains(copilot_provider::Feature::Images) && needs.contains(copilot_provider::Feature::ImageUrls)
        );

        let err = chat(conversation(vec![
            pb::Message {
                role: pb::Role::User as i32,
                parts: vec![
                    image(png.clone(), "image/jpeg"),
                    image(b"GIF89a...".to_vec(), ""),
                    image(b"plain text".to_vec(), "image/png"),
                    image(png.clone(), "image/tiff"),
                    url("file:///etc/passwd"),
                    pb::Part { kind: None },
                    part(pb::part::Kind::Thinking(pb::Thinking { text: "hm".into(), ..Default::default() })),
                ],
                content: String::new(),
                ..Default::default()
            },
            pb::Message {
                role: pb::Role::Assistant as i32,
                content: "x".into(),
                parts: vec![image(png, "image/png")],
                ..Default::default()
            },
        ]))
        .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "messages[0].parts[0].image.mime_type",
                "messages[0].parts[1].image.mime_type",
                "messages[0].parts[2].image.data",
                "messages[0].parts[3].image.mime_type",
                "messages[0].parts[4].image.url",
                "messages[0].parts[5]",
                "messages[0].parts[6].thinking",
                "messages[1].parts"
            ]
        );
    }

    #[test]
    fn response_formats_and_reasoning_are_checked() {
        let schema = |name: &str, schema: &str| {
            Some(pb::ResponseFormat {
                format: Some(pb::response_format::Format::JsonSchema(pb::JsonSchemaFormat {
                    name: name.into(),
                    schema_json: schema.into(),
                    strict: true,
                })),
            })
        };
        let valid = chat(pb::ChatRequest {
            response_format: schema("", r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#),
            reasoning: Some(pb::Reasoning {
                enabled: true,
                amount: Some(pb::reasoning::Amount::BudgetTokens(2048)),
                include_thoughts: true,
            }),
            ..conversation(vec![user("q")])
        })
        .unwrap();
        assert!(
            matches!(&valid.response_format, ResponseFormat::JsonSchema { name, strict: true, .. } if name == "response")
        );
        assert_eq!(
            valid.reasoning,
            Some(Reasoning::On {
                amount: copilot_provider::ReasoningAmount::BudgetTokens(2048),
                include_thoughts: true
            })
        );
        let err = chat(pb::ChatRequest {
            response_format: schema("bad name", "not json"),
            reasoning: Some(pb::Reasoning { enabled: false, include_thoughts: true, ..Default::default() }),
            ..conversation(vec![user("q")])
        })
        .unwrap_err();
        assert_eq!(
            fields(err),
            ["response_format.json_schema.name", "response_format.json_schema.schema_json", "reasoning.enabled"]
        );
        let off = chat(pb::ChatRequest { reasoning: Some(pb::Reasoning::default()), ..conversation(vec![user("q")]) });
        assert_eq!(off.unwrap().reasoning, Some(Reasoning::Off));
        let zero = pb::GenerateRequest {
            prompt: "q".into(),
            reasoning: Some(pb::Reasoning {
                enabled: true,
                amount: Some(pb::reasoning::Amount::BudgetTokens(0)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(fields(generate(zero).unwrap_err()), ["reasoning.budget_tokens"]);
    }

    #[test]
    fn image_types_are_told_by_their_bytes() {
        assert_eq!(sniff_image(b"\xFF\xD8\xFF\xE0"), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"GIF87a"), Some("image/gif"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff_image(b""), None);
    }

    #[test]
    fn count_requests_are_checked_as_chats() {
        let user = pb::Message { role: pb::Role::User as i32, content: "hi".into(), ..Default::default() };
        let tool = |schema: &str| pb::Tool {
            name: "lookup".into(),
            parameters_json_schema: schema.into(),
            ..Default::default()
        };
        let request = pb::CountTokensRequest {
            model: " gemini/gemini-2.5-flash ".into(),
            messages: vec![user.clone()],
            tools: vec![tool(r#"{"type":"object"}"#)],
        };
        let valid = count_tokens(request, &LimitsConfig::default()).unwrap();
        assert_eq!((valid.model.as_str(), valid.messages.len(), valid.tools.len()), ("gemini/gemini-2.5-flash", 1, 1));
        assert_eq!((valid.tool_choice, valid.reasoning), (None, None));
        let empty = pb::CountTokensRequest { model: "m".into(), ..Default::default() };
        assert_eq!(fields(count_tokens(empty, &LimitsConfig::default()).unwrap_err()), ["messages"]);
        let bad_tool = pb::CountTokensRequest { model: "m".into(), messages: vec![user], tools: vec![tool("{nope")] };
        let violations = fields(count_tokens(bad_tool, &LimitsConfig::default()).unwrap_err());
        assert!(violations.iter().all(|f| f.starts_with("tools[0]")) && !violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn cache_controls_are_checked() {
        let control = |mode: i32, ttl: Option<(i64, i32)>| pb::CacheControl {
            mode,
            ttl: ttl.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        };
        assert_eq!(cache_control(None).unwrap(), CacheControl::default());
        assert_eq!(
            cache_control(Some(&control(pb::CacheMode::OnlyIfCached as i32, Some((1, 500_000_000))))).unwrap(),
            CacheControl { mode: CacheMode::OnlyIfCached, ttl: Some(std::time::Duration::from_millis(1500)) }
        );
        assert_eq!(cache_control(Some(&control(4, None))).unwrap().mode, CacheMode::OnlyIfCached);
        assert_eq!(fields(cache_control(Some(&control(9, Some((0, 0))))).unwrap_err()), ["cache.mode", "cache.ttl"]);
        for ttl in [(-1, 0), (0, -1), (1, 1_000_000_000)] {
            assert_eq!(fields(cache_control(Some(&control(1, Some(ttl)))).unwrap_err()), ["cache.ttl"], "{ttl:?}");
        }
    }

    #[test]
    fn embed_requests_are_checked() {
        let request = |inputs: &[&str]| pb::EmbedRequest {
            model: "ollama/nomic-embed-text".into(),
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            task: pb::EmbeddingTask::Query as i32,
            ..Default::default()
        };
        let valid = embed(request(&["a", "b"]), &LimitsConfig::default()).unwrap();
        assert_eq!((valid.inputs.len(), valid.task), (2, copilot_provider::EmbeddingTask::Query));
        let bad = pb::EmbedRequest { dimensions: Some(0), task: 99, ..request(&["a", " "]) };
        assert_eq!(fields(embed(bad, &LimitsConfig::default()).unwrap_err()), ["inputs[1]", "dimensions", "task"]);
        assert_eq!(fields(embed(request(&[]), &LimitsConfig::default()).unwrap_err()), ["inputs"]);
        let limits = LimitsConfig { max_embed_inputs: 2, max_prompt_chars: 4, ..LimitsConfig::default() };
        let err = embed(request(&["a", "b", "c"]), &limits).unwrap_err();
        assert!(err.to_string().contains("max_embed_inputs"), "{err}");
        assert_eq!(fields(embed(request(&["abc", "de"]), &limits).unwrap_err()), ["inputs"]);
    }
}
