//! Validation of what a request holds beyond text: message parts (images, tool calls, thinking),
//! tool results and the calls they answer, tools, tool choice, response format and reasoning.
//! JSON is checked for being well-formed and an object, then kept as the client wrote it.

use std::collections::HashSet;

use copilot_provider::{
    Effort, IMAGE_MIME_TYPES, Image, ImageSource, Message, Part, Reasoning, ReasoningAmount, ResponseFormat, Role,
    Thinking, Tool, ToolCall, ToolChoice,
};
use tonic_types::FieldViolation;

use crate::proto::v1 as pb;

/// Most tools one request may offer (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;

/// Most parts one message may have.
pub const MAX_PARTS: usize = 256;

/// Most images one request may carry.
pub const MAX_IMAGES: usize = 16;

/// Longest tool description, in bytes.
pub const MAX_TOOL_DESCRIPTION_BYTES: usize = 4096;

/// Longest tool-call id, in bytes (real ones are under 64).
pub const MAX_TOOL_CALL_ID_BYTES: usize = 256;

/// Longest image URL, in bytes.
pub const MAX_IMAGE_URL_BYTES: usize = 2048;

/// Collects field violations, prefixed by where they are.
pub(super) struct Violations<'a>(pub &'a mut Vec<FieldViolation>);

impl Violations<'_> {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }
}

/// Whether `name` is 1–64 of `[A-Za-z0-9_-]`: the strictest provider's rule (Gemini, Anthropic).
fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const TOOL_NAME_RULE: &str = "must be 1 to 64 letters, digits, '_' or '-'";

/// Checks that `text` is a JSON object, well-formed; `None` when it is, else what is wrong.
fn json_object_problem(text: &str) -> Option<String> {
    if !text.trim_start().starts_with('{') {
        return Some("must be a JSON object ({...})".into());
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => None,
        Err(err) => Some(format!("is not well-formed JSON: {err}")),
    }
}

/// The request's tools, checked.
pub(super) fn tools(tools: Vec<pb::Tool>, v: &mut Violations) -> Vec<Tool> {
    if tools.len() > MAX_TOOLS {
        v.add("tools", format!("has {} tools; at most {MAX_TOOLS} are allowed", tools.len()));
        return Vec::new();
    }
    let mut names = HashSet::new();
    let mut checked = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        if !is_tool_name(&tool.name) {
            v.add(format!("tools[{i}].name"), format!("{TOOL_NAME_RULE}, got {:?}", clip(&tool.name)));
        } else if !names.insert(tool.name.clone()) {
            v.add(format!("tools[{i}].name"), format!("'{}' is offered twice; tool names must be unique", tool.name));
        }
        if tool.description.len() > MAX_TOOL_DESCRIPTION_BYTES {
            v.add(
                format!("tools[{i}].description"),
                format!("is {} bytes long; at most {MAX_TOOL_DESCRIPTION_BYTES}", tool.description.len()),
            );
        }
        let parameters = if tool.parameters_json_schema.trim().is_empty() {
            None
        } else {
            if let Some(problem) = json_object_problem(&tool.parameters_json_schema) {
                v.add(format!("tools[{i}].parameters_json_schema"), format!("{problem} (a JSON Schema object)"));
            }
            Some(tool.parameters_json_schema)
        };
        checked.push(Tool { name: tool.name, description: tool.description, parameters, strict: tool.strict });
    }
    checked
}

pub(super) fn tool_choice(choice: Option<pb::ToolChoice>, tools: &[Tool], v: &mut Violations) -> Option<ToolChoice> {
    let choice = choice?;
    let mode = pb::ToolChoiceMode::try_from(choice.mode);
    let checked = match (mode, choice.name.is_empty()) {
        (Err(_), _) => {
            v.add("tool_choice.mode", format!("{} is not a known mode; use AUTO, NONE or REQUIRED", choice.mode));
            return None;
        }
        (Ok(pb::ToolChoiceMode::Unspecified | pb::ToolChoiceMode::Required), false) => {
            if !tools.iter().any(|tool| tool.name == choice.name) {
                v.add(
                    "tool_choice.name",
                    format!("names '{}', which is not one of the request's tools", clip(&choice.name)),
                );
            }
            ToolChoice::Named(choice.name)
        }
        (Ok(mode), false) => {
            v.add("tool_choice.name", format!("forces a tool, which contradicts mode {}", mode.as_str_name()));
            return None;
        }
        (Ok(pb::ToolChoiceMode::Unspecified | pb::ToolChoiceMode::Auto), true) => ToolChoice::Auto,
        (Ok(pb::ToolChoiceMode::None), true) => ToolChoice::None,
        (Ok(pb::ToolChoiceMode::Required), true) => ToolChoice::Required,
    };
    if tools.is_empty() {
        v.add("tool_choice", "is set but the request offers no tools; add `tools` or leave tool_choice unset");
    }
    Some(checked)
}

pub(super) fn response_format(format: Option<pb::ResponseFormat>, v: &mut Violations) -> ResponseFormat {
    use pb::response_format::Format;
    match format.and_then(|f| f.format) {
        None => ResponseFormat::Text,
        Some(Format::JsonObject(_)) => ResponseFormat::JsonObject,
        Some(Format::JsonSchema(schema)) => {
            let name = if schema.name.is_empty() { "response".to_string() } else { schema.name };
            if !is_tool_name(&name) {
                v.add("response_format.json_schema.name", format!("{TOOL_NAME_RULE}, got {:?}", clip(&name)));
            }
            if schema.schema_json.trim().is_empty() {
                v.add("response_format.json_schema.schema_json", "is required: the JSON Schema the answer must follow");
            } else if let Some(problem) = json_object_problem(&schema.schema_json) {
                v.add("response_format.json_schema.schema_json", format!("{problem} (a JSON Schema object)"));
            }
            ResponseFormat::JsonSchema { name, schema: schema.schema_json, strict: schema.strict }
        }
    }
}

pub(super) fn reasoning(reasoning: Option<pb::Reasoning>, v: &mut Violations) -> Option<Reasoning> {
    use pb::reasoning::Amount;
    let reasoning = reasoning?;
    if !reasoning.enabled {
        if reasoning.amount.is_some() || reasoning.include_thoughts {
            v.add("reasoning.enabled", "is false, but an amount or include_thoughts is set: set enabled to think");
        }
        return Some(Reasoning::Off);
    }
    let amount = match reasoning.amount {
        None => ReasoningAmount::Default,
        Some(Amount::Effort(effort)) => match pb::ReasoningEffort::try_from(effort) {
            Ok(pb::ReasoningEffort::Unspecified) => ReasoningAmount::Default,
            Ok(pb::ReasoningEffort::Low) => ReasoningAmount::Effort(Effort::Low),
            Ok(pb::ReasoningEffort::Medium) => ReasoningAmount::Effort(Effort::Medium),
            Ok(pb::ReasoningEffort::High) => ReasoningAmount::Effort(Effort::High),
            Err(_) => {
                v.add("reasoning.effort", format!("{effort} is not a known effort; use LOW, MEDIUM or HIGH"));
                ReasoningAmount::Default
            }
        },
        Some(Amount::BudgetTokens(0)) => {
            v.add("reasoning.budget_tokens", "must be at least 1; leave it unset for the model's default");
            ReasoningAmount::Default
        }
        Some(Amount::BudgetTokens(tokens)) => ReasoningAmount::BudgetTokens(tokens),
    };
    Some(Reasoning::On { amount, include_thoughts: reasoning.include_thoughts })
}

/// What the messages checked so far say about tool calls: every id seen (ids are unique in the
/// conversation), and the calls of the latest assistant message, which tool results answer.
#[derive(Default)]
pub(super) struct Conversation {
    call_ids: HashSet<String>,
    open_calls: HashSet<String>,
    images: usize,
}

/// One message's `content`/`parts`/`tool_call_id`, checked; `None` when something is wrong.
pub(super) fn message(
    i: usize,
    role: Role,
    message: pb::Message,
    conversation: &mut Conversation,
    v: &mut Violations,
) -> Option<Message> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let before = v.0.len();
    if role != Role::Tool && !conversation.open_calls.is_empty() {
        let mut ids: Vec<_> = conversation.open_calls.iter().map(|id| clip(id)).collect();
        ids.sort_unstable();
        v.add(
            format!("messages[{i}]"),
            format!(
                "comes before the results of calls {ids:?} of the previous assistant message: answer each call with a \
                 ROLE_TOOL message first (providers refuse unanswered calls)"
            ),
        );
    }
    if role == Role::Assistant {
        conversation.open_calls.clear();
    }
    let tool_call_id = match (role, message.tool_call_id.is_empty()) {
        (Role::Tool, true) => {
            v.add(field("tool_call_id"), "is required in a ROLE_TOOL message: the id of the call it answers");
            None
        }
        (Role::Tool, false) => {
            if !conversation.open_calls.remove(&message.tool_call_id) {
                let why = if conversation.call_ids.contains(&message.tool_call_id) {
                    "answers a call that is not in the latest assistant message, or was answered already"
                } else {
                    "answers no tool call of an earlier assistant message"
                };
                v.add(field("tool_call_id"), format!("'{}' {why}", clip(&message.tool_call_id)));
            }
            Some(message.tool_call_id)
        }
        (_, false) => {
            v.add(field("tool_call_id"), "is only for ROLE_TOOL messages");
            None
        }
        (_, true) => None,
    };
    if role == Role::Tool && !message.parts.is_empty() {
        v.add(field("parts"), "a ROLE_TOOL message holds its result as text in `content`");
    }
    let parts = match (message.content.is_empty(), message.parts.is_empty()) {
        (false, false) => {
            v.add(
                field("parts"),
                "is set together with `content`: put the text in a text part, or use `content` alone",
            );
            Vec::new()
        }
        (true, true) => {
            v.add(field("content"), "must not be empty");
            Vec::new()
        }
        (false, true) => {
            if message.content.trim().is_empty() {
                v.add(field("content"), "must not be empty");
            }
            vec![Part::Text(message.content)]
        }
        (true, false) if message.parts.len() > MAX_PARTS => {
            v.add(field("parts"), format!("has {} parts; at most {MAX_PARTS} are allowed", message.parts.len()));
            Vec::new()
        }
        (true, false) => {
            let mut parts = Vec::with_capacity(message.parts.len());
            for (j, part) in message.parts.into_iter().enumerate() {
                let field = format!("messages[{i}].parts[{j}]");
                if let Some(part) = self::part(&field, role, part, conversation, v) {
                    parts.push(part);
                }
            }
            parts
        }
    };
    (v.0.len() == before).then_some(Message { role, parts, tool_call_id })
}

fn part(field: &str, role: Role, part: pb::Part, conversation: &mut Conversation, v: &mut Violations) -> Option<Part> {
    use pb::part::Kind;
    let Some(kind) = part.kind else {
        v.add(field, "is empty: set text, image, tool_call or thinking");
        return None;
    };
    match kind {
        Kind::Text(text) => {
            if text.is_empty() {
                v.add(format!("{field}.text"), "must not be empty");
            }
            Some(Part::Text(text))
        }
        Kind::Image(image) => {
            if role != Role::User {
                v.add(format!("{field}.image"), "images go in ROLE_USER messages");
            }
            conversation.images += 1;
            if conversation.images == MAX_IMAGES + 1 {
                v.add(format!("{field}.image"), format!("is one image too many: at most {MAX_IMAGES} per request"));
            }
            self::image(&format!("{field}.image"), image, v).map(Part::Image)
        }
        Kind::ToolCall(call) => {
            if role != Role::Assistant {
                v.add(format!("{field}.tool_call"), "tool calls go in ROLE_ASSISTANT messages (the model made them)");
            }
            tool_call(&format!("{field}.tool_call"), call, conversation, v).map(Part::ToolCall)
        }
        Kind::Thinking(thinking) => {
            if role != Role::Assistant {
                v.add(format!("{field}.thinking"), "thinking goes in ROLE_ASSISTANT messages (the model did it)");
            }
            if thinking.text.is_empty() && thinking.signature.is_empty() {
                v.add(format!("{field}.thinking"), "has neither text nor signature");
            }
            if thinking.redacted && (thinking.signature.is_empty() || !thinking.text.is_empty()) {
                v.add(format!("{field}.thinking"), "is redacted: its data goes in `signature` and `text` stays empty");
            }
            Some(Part::Thinking(Thinking {
                text: thinking.text,
                signature: thinking.signature,
                redacted: thinking.redacted,
            }))
        }
    }
}

fn tool_call(field: &str, call: pb::ToolCall, conversation: &mut Conversation, v: &mut Violations) -> Option<ToolCall> {
    if call.id.is_empty() {
        v.add(format!("{field}.id"), "is required: the id the answer gave the call");
    } else if call.id.len() > MAX_TOOL_CALL_ID_BYTES {
        v.add(format!("{field}.id"), format!("is {} bytes long; at most {MAX_TOOL_CALL_ID_BYTES}", call.id.len()));
    } else if !conversation.call_ids.insert(call.id.clone()) {
        v.add(format!("{field}.id"), format!("'{}' is used by another call; call ids are unique", clip(&call.id)));
    } else {
        conversation.open_calls.insert(call.id.clone());
    }
    if !is_tool_name(&call.name) {
        v.add(format!("{field}.name"), format!("{TOOL_NAME_RULE}, got {:?}", clip(&call.name)));
    }
    let arguments = if call.arguments_json.trim().is_empty() { "{}".to_string() } else { call.arguments_json };
    if let Some(problem) = json_object_problem(&arguments) {
        v.add(format!("{field}.arguments_json"), problem);
    }
    Some(ToolCall { id: call.id, name: call.name, arguments, signature: call.signature })
}

fn image(field: &str, image: pb::Image, v: &mut Violations) -> Option<Image> {
    use pb::image::Source;
    let mime_type = image.mime_type.trim().to_ascii_lowercase();
    if !mime_type.is_empty() && !IMAGE_MIME_TYPES.contains(&mime_type.as_str()) {
        v.add(
            format!("{field}.mime_type"),
            format!(
                "'{}' is not an image type this server passes on; use one of {IMAGE_MIME_TYPES:?}",
                clip(&mime_type)
            ),
        );
        return None;
    }
    match image.source {
        None => {
            v.add(field, "has no source: set `data` (the file's bytes) or `url`");
            None
        }
        Some(Source::Data(data)) => {
            if data.is_empty() {
                v.add(format!("{field}.data"), "is empty");
                return None;
            }
            let sniffed = sniff_image(&data);
            match (mime_type.as_str(), sniffed) {
                ("", _) => v.add(format!("{field}.mime_type"), "is required with `data`"),
                (_, None) => v.add(format!("{field}.data"), "is not a PNG, JPEG, WebP or GIF file"),
                (declared, Some(actual)) if declared != actual => v.add(
                    format!("{field}.mime_type"),
                    format!("says {declared}, but the bytes are {actual}: fix the type or the data"),
                ),
                _ => {}
            }
            Some(Image { source: ImageSource::Data(data), mime_type })
        }
        Some(Source::Url(url)) => {
            let lower = url.to_ascii_lowercase();
            if url.len() > MAX_IMAGE_URL_BYTES {
                v.add(format!("{field}.url"), format!("is {} bytes long; at most {MAX_IMAGE_URL_BYTES}", url.len()));
            } else if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                v.add(
                    format!("{field}.url"),
                    "must be an http(s):// URL; send the image's bytes in `data` instead of a data: URL",
                );
            }
            Some(Image { source: ImageSource::Url(url), mime_type })
        }
    }
}

/// The image type the bytes' signature shows, if it is one of [`IMAGE_MIME_TYPES`].
pub fn sniff_image(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else {
        None
    }
}

/// A client's string, shortened for quoting in an error.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    crate::error::truncate_bytes(text, 64)
}

/// The characters of the prompt a message contributes (text, tool results, arguments), for
/// `limits.max_prompt_chars`.
pub(super) fn texts(message: &pb::Message) -> impl Iterator<Item = &str> + Clone {
    use pb::part::Kind;
    std::iter::once(message.content.as_str()).chain(message.parts.iter().filter_map(|part| match &part.kind {
        Some(Kind::Text(text)) => Some(text.as_str()),
        Some(Kind::ToolCall(call)) => Some(call.arguments_json.as_str()),
        Some(Kind::Thinking(thinking)) => Some(thinking.text.as_str()),
        _ => None,
    }))
}
