//! The conformance suite of tool calling, structured output, reasoning and images (issue 16): one
//! set of scenarios, run through the real binary against every provider's fake. What a client sees
//! is asserted identically for every provider; what reached the upstream is read from the fake's
//! recorded request by a small per-provider reader of its wire format ([`Native`]).
//!
//! Scenarios: a single call; parallel calls interleaved; arguments reassembled byte-exact wherever
//! the upstream cuts them; a tool result round trip over two turns; a forced tool choice; JSON
//! Schema output; thinking streamed before the text; a thinking signature returned unchanged; an
//! image reaching the upstream in its own format; an upstream failing in the middle of a tool
//! call; the refusals of what a provider cannot do; and `Generate` and `Chat` each reusing pooled
//! upstream connections of their own.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{
    self as pb, ChatRequest, ChatResponse, FinishReason, GenerateRequest, Message, Part, Role, ToolCall, part,
};
use copilot_fakes::{Behaviour, FakeModel, FakeToolCall, Piece, Reply};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};

const LIMIT: Duration = Duration::from_secs(20);

/// Arguments no lossy representation survives: a 64-bit integer above 2^53, `1.0` (not `1`),
/// escapes and a non-ASCII character.
const ARGS: &str = r#"{"city":"Zürich","id":9007199254740993,"scale":1.0,"note":"a \"b\"\n"}"#;
const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"},"id":{"type":"integer"}},"required":["city"]}"#;
const ANSWER_SCHEMA: &str =
    r#"{"type":"object","properties":{"intent":{"type":"string","enum":["tariff","outage"]}},"required":["intent"]}"#;
/// The 8-byte PNG signature, then a little more: enough for the edge's type check.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR tiny";

// ---------------------------------------------------------------------------------------------
// What each provider's wire format says

/// Reads what the upstream received, in one provider's wire format.
trait Native: Sync {
    /// The tools offered: each name and its parameters' schema.
    fn tools(&self, body: &Value) -> Vec<(String, Value)>;
    /// The tool the request forces the model to call.
    fn forced_tool(&self, body: &Value) -> Option<String>;
    /// The JSON Schema the answer must follow.
    fn response_schema(&self, body: &Value) -> Option<Value>;
    /// Each tool result sent back: the call id where the wire carries one, and the result text.
    fn tool_results(&self, body: &Value) -> Vec<(Option<String>, String)>;
    /// Whether the request asks the model to think.
    fn thinking_on(&self, body: &Value) -> bool;
    /// Thinking signatures sent back in the history, as the stream gave them.
    fn signatures(&self, body: &Value) -> Vec<Vec<u8>>;
    /// Images sent: their MIME type (where the wire says it) and bytes.
    fn images(&self, body: &Value) -> Vec<(Option<String>, Vec<u8>)>;
    /// Whether the provider signs its thinking.
    fn signs_thinking(&self) -> bool;
}

fn array<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        // Anthropic's content blocks, or any other structure: its text pieces.
        Value::Array(blocks) => blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect(),
        other => other.to_string(),
    }
}

fn schema_of(value: Option<&Value>) -> Value {
    match value {
        // Some wires carry the schema as a JSON string.
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
        Some(value) => value.clone(),
        None => Value::Null,
    }
}

struct OpenAiWire;

impl Native for OpenAiWire {
    fn tools(&self, body: &Value) -> Vec<(String, Value)> {
        array(body, "/tools")
            .iter()
            .map(|t| (text(&t["function"]["name"]), schema_of(t["function"].get("parameters"))))
            .collect()
    }
    fn forced_tool(&self, body: &Value) -> Option<String> {
        body.pointer("/tool_choice/function/name").map(text)
    }
    fn response_schema(&self, body: &Value) -> Option<Value> {
        body.pointer("/response_format/json_schema/schema").map(|s| schema_of(Some(s)))
    }
    fn tool_results(&self, body: &Value) -> Vec<(Option<String>, String)> {
        array(body, "/messages")
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| (m.get("tool_call_id").map(text), text(&m["content"])))
            .collect()
    }
    fn thinking_on(&self, body: &Value) -> bool {
        body.get("reasoning_effort").is_some_and(|e| e != "none")
    }
    fn signatures(&self, _: &Value) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn images(&self, body: &Value) -> Vec<(Option<String>, Vec<u8>)> {
        let mut images = Vec::new();
        for message in array(body, "/messages") {
            for part in message["content"].as_array().into_iter().flatten() {
                if let Some(url) = part.pointer("/image_url/url").and_then(Value::as_str)
                    && let Some((head, data)) = url.strip_prefix("data:").and_then(|u| u.split_once(";base64,"))
                {
                    images.push((Some(head.to_string()), BASE64.decode(data).unwrap_or_default()));
                }
            }
        }
        images
    }
    fn signs_thinking(&self) -> bool {
        false
    }
}

struct AnthropicWire;

impl AnthropicWire {
    fn blocks<'a>(body: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        array(body, "/messages")
            .iter()
            .flat_map(|m| m["content"].as_array().into_iter().flatten())
            .filter(move |b| b["type"] == kind)
    }
}

impl Native for AnthropicWire {
    fn tools(&self, body: &Value) -> Vec<(String, Value)> {
        array(body, "/tools").iter().map(|t| (text(&t["name"]), schema_of(t.get("input_schema")))).collect()
    }
    fn forced_tool(&self, body: &Value) -> Option<String> {
        (body.pointer("/tool_choice/type") == Some(&json!("tool"))).then(|| text(&body["tool_choice"]["name"]))
    }
    fn response_schema(&self, body: &Value) -> Option<Value> {
        body.pointer("/output_config/format/schema").map(|s| schema_of(Some(s)))
    }
    fn tool_results(&self, body: &Value) -> Vec<(Option<String>, String)> {
        Self::blocks(body, "tool_result").map(|b| (b.get("tool_use_id").map(text), text(&b["content"]))).collect()
    }
    fn thinking_on(&self, body: &Value) -> bool {
        body.pointer("/thinking/type").is_some_and(|t| t == "enabled" || t == "adaptive")
    }
    fn signatures(&self, body: &Value) -> Vec<Vec<u8>> {
        Self::blocks(body, "thinking").map(|b| text(&b["signature"]).into_bytes()).collect()
    }
    fn images(&self, body: &Value) -> Vec<(Option<String>, Vec<u8>)> {
        Self::blocks(body, "image")
            .filter(|b| b.pointer("/source/type") == Some(&json!("base64")))
            .map(|b| {
                let data = BASE64.decode(text(&b["source"]["data"])).unwrap_or_default();
                (b.pointer("/source/media_type").map(text), data)
            })
            .collect()
    }
    fn signs_thinking(&self) -> bool {
        true
    }
}

struct GeminiWire;

impl GeminiWire {
    fn parts(body: &Value) -> impl Iterator<Item = &Value> {
        array(body, "/contents").iter().flat_map(|c| c["parts"].as_array().into_iter().flatten())
    }
}

impl Native for GeminiWire {
    fn tools(&self, body: &Value) -> Vec<(String, Value)> {
        array(body, "/tools")
            .iter()
            .flat_map(|t| t["functionDeclarations"].as_array().into_iter().flatten())
            .map(|f| {
                let schema = f.get("parametersJsonSchema").or_else(|| f.get("parameters"));
                (text(&f["name"]), schema_of(schema))
            })
            .collect()
    }
    fn forced_tool(&self, body: &Value) -> Option<String> {
        let config = body.pointer("/toolConfig/functionCallingConfig")?;
        let names = config["allowedFunctionNames"].as_array()?;
        (config["mode"] == "ANY" && names.len() == 1).then(|| text(&names[0]))
    }
    fn response_schema(&self, body: &Value) -> Option<Value> {
        body.pointer("/generationConfig/responseJsonSchema").map(|s| schema_of(Some(s)))
    }
    fn tool_results(&self, body: &Value) -> Vec<(Option<String>, String)> {
        Self::parts(body)
            .filter_map(|p| p.get("functionResponse"))
            .map(|r| {
                let response = &r["response"];
                let content = response.get("result").map(text).unwrap_or_else(|| response.to_string());
                (r.get("id").map(text), content)
            })
            .collect()
    }
    fn thinking_on(&self, body: &Value) -> bool {
        body.pointer("/generationConfig/thinkingConfig").is_some_and(|c| {
            c.get("includeThoughts") == Some(&json!(true))
                || c.get("thinkingBudget").and_then(Value::as_i64).is_some_and(|b| b != 0)
                || c.get("thinkingLevel").is_some()
        })
    }
    fn signatures(&self, body: &Value) -> Vec<Vec<u8>> {
        Self::parts(body)
            .filter(|p| p.get("functionCall").is_none())
            .filter_map(|p| p.get("thoughtSignature"))
            .map(|s| BASE64.decode(text(s)).unwrap_or_default())
            .collect()
    }
    fn images(&self, body: &Value) -> Vec<(Option<String>, Vec<u8>)> {
        Self::parts(body)
            .filter_map(|p| p.get("inlineData"))
            .map(|d| (d.get("mimeType").map(text), BASE64.decode(text(&d["data"])).unwrap_or_default()))
            .collect()
    }
    fn signs_thinking(&self) -> bool {
        true
    }
}

struct OllamaWire;

impl Native for OllamaWire {
    fn tools(&self, body: &Value) -> Vec<(String, Value)> {
        OpenAiWire.tools(body)
    }
    /// Ollama cannot force a call: a forced choice offers that one tool alone.
    fn forced_tool(&self, body: &Value) -> Option<String> {
        match self.tools(body).as_slice() {
            [(name, _)] => Some(name.clone()),
            _ => None,
        }
    }
    fn response_schema(&self, body: &Value) -> Option<Value> {
        body.get("format").filter(|f| f.is_object()).cloned()
    }
    fn tool_results(&self, body: &Value) -> Vec<(Option<String>, String)> {
        OpenAiWire.tool_results(body)
    }
    fn thinking_on(&self, body: &Value) -> bool {
        body.get("think").is_some_and(|t| t != &json!(false))
    }
    fn signatures(&self, _: &Value) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn images(&self, body: &Value) -> Vec<(Option<String>, Vec<u8>)> {
        array(body, "/messages")
            .iter()
            .flat_map(|m| m["images"].as_array().into_iter().flatten())
            .map(|i| (None, BASE64.decode(text(i)).unwrap_or_default()))
            .collect()
    }
    fn signs_thinking(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The client's side, as any client assembles a stream

/// A `Chat` stream put together as the proto tells clients to: text, thinking, signatures, and
/// calls assembled by index from their pieces.
#[derive(Debug, Default)]
struct Assembled {
    text: String,
    thinking: String,
    signatures: Vec<Vec<u8>>,
    calls: Vec<ToolCall>,
    /// Each piece's index, id and name as it came (to check the first piece names the call).
    pieces: Vec<(u32, String, String)>,
    /// Where the first text and the first thinking came, by message number.
    first_text_at: Option<usize>,
    first_thinking_at: Option<usize>,
    last: Option<ChatResponse>,
    status: Option<tonic::Status>,
}

async fn stream(client: &mut CopilotClient<Channel>, request: ChatRequest) -> Result<Assembled, tonic::Status> {
    let mut stream = within(LIMIT, client.chat(request)).await?.into_inner();
    let mut out = Assembled::default();
    let mut number = 0;
    loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(message)) => {
                number += 1;
                if !message.content.is_empty() {
                    out.first_text_at.get_or_insert(number);
                    out.text.push_str(&message.content);
                }
                if !message.thinking.is_empty() {
                    out.first_thinking_at.get_or_insert(number);
                    out.thinking.push_str(&message.thinking);
                }
                if !message.thinking_signature.is_empty() {
                    out.signatures.push(message.thinking_signature.clone());
                }
                for piece in &message.tool_calls {
                    out.pieces.push((piece.index, piece.id.clone(), piece.name.clone()));
                    let index = piece.index as usize;
                    if index == out.calls.len() {
                        out.calls.push(ToolCall {
                            id: piece.id.clone(),
                            name: piece.name.clone(),
                            ..Default::default()
                        });
                    }
                    let call = &mut out.calls[index];
                    call.arguments_json.push_str(&piece.arguments_json);
                    if !piece.signature.is_empty() {
                        call.signature = piece.signature.clone();
                    }
                }
                if message.finish_reason != 0 {
                    out.last = Some(message);
                }
            }
            Some(Err(status)) => {
                out.status = Some(status);
                return Ok(out);
            }
            None => return Ok(out),
        }
    }
}

impl Assembled {
    fn finish(&self) -> FinishReason {
        self.last.as_ref().map_or(FinishReason::Unspecified, ChatResponse::finish_reason)
    }

    /// Every index's first piece carries the call's id and name; no later piece does.
    fn check_pieces(&self) {
        let mut seen = std::collections::HashSet::new();
        for (index, id, name) in &self.pieces {
            if seen.insert(*index) {
                assert!(
                    !id.is_empty() && !name.is_empty(),
                    "first piece of {index} without id or name: {:?}",
                    self.pieces
                );
            } else {
                assert!(
                    id.is_empty() && name.is_empty(),
                    "a later piece of {index} repeats id or name: {:?}",
                    self.pieces
                );
            }
        }
    }
}

fn user(content: &str) -> Message {
    Message { role: Role::User as i32, content: content.into(), ..Default::default() }
}

fn tool(name: &str, schema: &str) -> pb::Tool {
    pb::Tool {
        name: name.into(),
        description: format!("The {name} tool."),
        parameters_json_schema: schema.into(),
        strict: false,
    }
}

fn with_tools(model: &str, messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages,
        tools: vec![tool("get_weather", WEATHER_SCHEMA), tool("get_time", "")],
        ..Default::default()
    }
}

fn call(id: &str, name: &str, arguments: &str) -> FakeToolCall {
    FakeToolCall::new(id, name, arguments)
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// A fake upstream of any provider, as the scenarios use it.
trait Upstream {
    fn add(&self, model: FakeModel);
    fn bodies(&self) -> Vec<Value>;
    /// TCP connections the fake has accepted so far.
    fn connections(&self) -> usize;
}

struct Case<'a> {
    upstream: &'a dyn Upstream,
    native: &'a dyn Native,
    client: CopilotClient<Channel>,
}

impl Case<'_> {
    fn last_body(&self) -> Value {
        self.upstream.bodies().pop().expect("the upstream received the request")
    }

    fn script(&self, name: &str, pieces: Vec<Piece>) -> String {
        self.upstream.add(FakeModel::new(name).with_reply(Reply::Turn(pieces)));
        format!("up/{name}")
    }
}

async fn single_call(mut case: Case<'_>) {
    let model = case.script(
        "single",
        vec![
            Piece::Text("Let me check.".into()),
            Piece::ToolCalls(vec![call("c1", "get_weather", ARGS).split_at(&[5, 17])]),
        ],
    );
    let out = stream(&mut case.client, with_tools(&model, vec![user("Weather in Zürich?")])).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.text, "Let me check.");
    assert_eq!(out.calls.len(), 1, "{out:?}");
    assert_eq!((out.calls[0].name.as_str(), out.calls[0].arguments_json.as_str()), ("get_weather", ARGS));
    assert_eq!(out.calls[0].id, "c1", "the upstream's id is kept");
    out.check_pieces();
    assert_eq!(out.finish(), FinishReason::ToolCalls);

    // The tools reached the upstream in its format, schemas as written.
    let body = case.last_body();
    let tools = case.native.tools(&body);
    let names: Vec<&str> = tools.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["get_weather", "get_time"], "{body}");
    assert_eq!(tools[0].1, serde_json::from_str::<Value>(WEATHER_SCHEMA).unwrap(), "{body}");

    // Generate returns the same call, and the whole turn ready to send back.
    let generated = within(
        LIMIT,
        case.client.generate(GenerateRequest {
            model,
            prompt: "Weather in Zürich?".into(),
            tools: vec![tool("get_weather", WEATHER_SCHEMA)],
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(generated.text, "Let me check.");
    assert_eq!(generated.finish_reason(), FinishReason::ToolCalls);
    assert_eq!(generated.tool_calls.len(), 1);
    assert_eq!(generated.tool_calls[0].arguments_json, ARGS);
    let parts = generated.message.unwrap().parts;
    assert!(
        matches!(&parts[..], [Part { kind: Some(part::Kind::Text(_)) }, Part { kind: Some(part::Kind::ToolCall(_)) }]),
        "{parts:?}"
    );
}

async fn parallel_calls(mut case: Case<'_>) {
    let second = r#"{"tz":"Europe/Zurich","precise":true}"#;
    let model = case.script(
        "parallel",
        vec![Piece::ToolCalls(vec![
            call("c1", "get_weather", ARGS).split_at(&[1, 2, 30, 31]),
            call("c2", "get_time", second).split_at(&[3, 9]),
        ])],
    );
    let out = stream(&mut case.client, with_tools(&model, vec![user("Weather and time?")])).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    let calls: Vec<(&str, &str, &str)> =
        out.calls.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.arguments_json.as_str())).collect();
    assert_eq!(calls, [("c1", "get_weather", ARGS), ("c2", "get_time", second)]);
    out.check_pieces();
    assert_eq!(out.finish(), FinishReason::ToolCalls);
}

/// Wherever the upstream cuts the arguments, they come back byte for byte.
async fn arguments_survive_every_cut(mut case: Case<'_>) {
    for at in (1..ARGS.len()).step_by(7) {
        let model = case.script(
            &format!("cut-{at}"),
            vec![Piece::ToolCalls(vec![call("c1", "get_weather", ARGS).split_at(&[at, at + 3])])],
        );
        let out = stream(&mut case.client, with_tools(&model, vec![user("q")])).await.unwrap();
        assert!(out.status.is_none(), "cut at {at}: {:?}", out.status);
        assert_eq!(out.calls.len(), 1, "cut at {at}");
        assert_eq!(out.calls[0].arguments_json, ARGS, "cut at {at}");
    }
}

async fn tool_result_round_trip(mut case: Case<'_>) {
    let model = case.script("round-trip", vec![Piece::Text("It is 18C in Zürich.".into())]);
    let assistant = Message {
        role: Role::Assistant as i32,
        parts: vec![
            Part { kind: Some(part::Kind::Text("Let me check.".into())) },
            Part {
                kind: Some(part::Kind::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "get_weather".into(),
                    arguments_json: ARGS.into(),
                    ..Default::default()
                })),
            },
            Part {
                kind: Some(part::Kind::ToolCall(ToolCall {
                    id: "c2".into(),
                    name: "get_time".into(),
                    arguments_json: "{}".into(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let result = |id: &str, content: &str| Message {
        role: Role::Tool as i32,
        content: content.into(),
        tool_call_id: id.into(),
        ..Default::default()
    };
    let messages = vec![user("Weather in Zürich?"), assistant, result("c1", "18C"), result("c2", "09:41")];
    let out = stream(&mut case.client, with_tools(&model, messages)).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.text, "It is 18C in Zürich.");
    assert_eq!(out.finish(), FinishReason::Stop);

    let body = case.last_body();
    let results = case.native.tool_results(&body);
    let contents: Vec<&str> = results.iter().map(|(_, content)| content.as_str()).collect();
    assert_eq!(contents, ["18C", "09:41"], "{body}");
    for ((id, _), expected) in results.iter().zip(["c1", "c2"]) {
        if let Some(id) = id {
            assert_eq!(id, expected, "{body}");
        }
    }
    // The earlier call went back with its arguments' numbers as the model wrote them.
    let raw = body.to_string();
    assert!(raw.contains("9007199254740993") && raw.contains("1.0"), "{raw}");
}

async fn forced_tool_choice(mut case: Case<'_>) {
    let model = case.script("forced", vec![Piece::ToolCalls(vec![call("c1", "get_time", "{}")])]);
    let request = ChatRequest {
        tool_choice: Some(pb::ToolChoice { name: "get_time".into(), ..Default::default() }),
        ..with_tools(&model, vec![user("What time is it?")])
    };
    let out = stream(&mut case.client, request).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.calls.len(), 1);
    assert_eq!((out.calls[0].name.as_str(), out.calls[0].arguments_json.as_str()), ("get_time", "{}"));
    assert_eq!(out.finish(), FinishReason::ToolCalls, "a forced call is still a tool call, whatever the upstream said");
    let body = case.last_body();
    assert_eq!(case.native.forced_tool(&body).as_deref(), Some("get_time"), "{body}");
}

async fn a_call_without_arguments_gets_an_empty_object(mut case: Case<'_>) {
    let model = case.script("no-args", vec![Piece::ToolCalls(vec![call("c1", "get_time", "")])]);
    let out = stream(&mut case.client, with_tools(&model, vec![user("time?")])).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.calls[0].arguments_json, "{}");
}

async fn json_schema_output(mut case: Case<'_>) {
    let answer = r#"{"intent":"tariff"}"#;
    let model = case.script("schema", vec![Piece::Text(answer[..9].into()), Piece::Text(answer[9..].into())]);
    let request = ChatRequest {
        model,
        messages: vec![user("How much is a kWh at night?")],
        response_format: Some(pb::ResponseFormat {
            format: Some(pb::response_format::Format::JsonSchema(pb::JsonSchemaFormat {
                name: "intent".into(),
                schema_json: ANSWER_SCHEMA.into(),
                strict: true,
            })),
        }),
        ..Default::default()
    };
    let out = stream(&mut case.client, request).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.text, answer);
    let body = case.last_body();
    assert_eq!(case.native.response_schema(&body), Some(serde_json::from_str(ANSWER_SCHEMA).unwrap()), "{body}");
}

fn thinking_request(model: &str, messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages,
        reasoning: Some(pb::Reasoning {
            enabled: true,
            amount: Some(pb::reasoning::Amount::BudgetTokens(2048)),
            include_thoughts: true,
        }),
        ..Default::default()
    }
}

async fn thinking_then_text(mut case: Case<'_>) {
    let model = case.script(
        "thinker",
        vec![
            Piece::Thinking("The user asks".into()),
            Piece::Thinking(" about tariffs.".into()),
            Piece::ThinkingSignature(b"sig-1".to_vec()),
            Piece::Text("Night".into()),
            Piece::Text(" is cheaper.".into()),
        ],
    );
    let out = stream(&mut case.client, thinking_request(&model, vec![user("Night or day?")])).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.thinking, "The user asks about tariffs.");
    assert_eq!(out.text, "Night is cheaper.");
    assert!(out.first_thinking_at < out.first_text_at, "thinking came first: {out:?}");
    if case.native.signs_thinking() {
        assert_eq!(out.signatures, [b"sig-1".to_vec()]);
    }
    assert!(case.native.thinking_on(&case.last_body()), "{}", case.last_body());

    let generated = within(
        LIMIT,
        case.client.generate(GenerateRequest {
            model,
            prompt: "Night or day?".into(),
            reasoning: thinking_request("", vec![]).reasoning,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (generated.thinking.as_str(), generated.text.as_str()),
        ("The user asks about tariffs.", "Night is cheaper.")
    );
    let parts = generated.message.unwrap().parts;
    let Some(part::Kind::Thinking(thinking)) = &parts[0].kind else { panic!("{parts:?}") };
    if case.native.signs_thinking() {
        assert_eq!(thinking.signature, b"sig-1");
    }
}

/// The next turn carries the signature back exactly as the stream gave it.
async fn thinking_signature_round_trip(mut case: Case<'_>) {
    if !case.native.signs_thinking() {
        return;
    }
    let model = case.script("signed", vec![Piece::Text("Done.".into())]);
    // Opaque, but text: Anthropic's signatures are JSON strings (Gemini's are base64 of any bytes).
    let signature = b"opaque-sig+/==".to_vec();
    let assistant = Message {
        role: Role::Assistant as i32,
        parts: vec![
            Part {
                kind: Some(part::Kind::Thinking(pb::Thinking {
                    text: "Thought.".into(),
                    signature: signature.clone(),
                    redacted: false,
                })),
            },
            Part { kind: Some(part::Kind::Text("Night.".into())) },
        ],
        ..Default::default()
    };
    let messages = vec![user("Night or day?"), assistant, user("Why?")];
    let out = stream(&mut case.client, thinking_request(&model, messages)).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(case.native.signatures(&case.last_body()), [signature], "{}", case.last_body());
}

async fn image_reaches_the_upstream(mut case: Case<'_>) {
    let model = case.script("vision", vec![Piece::Text("A tiny image.".into())]);
    let message = Message {
        role: Role::User as i32,
        parts: vec![
            Part { kind: Some(part::Kind::Text("What is this?".into())) },
            Part {
                kind: Some(part::Kind::Image(pb::Image {
                    source: Some(pb::image::Source::Data(PNG.to_vec())),
                    mime_type: "image/png".into(),
                })),
            },
        ],
        ..Default::default()
    };
    let out =
        stream(&mut case.client, ChatRequest { model, messages: vec![message], ..Default::default() }).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    let images = case.native.images(&case.last_body());
    assert_eq!(images.len(), 1, "{}", case.last_body());
    assert_eq!(images[0].1, PNG);
    if let Some(mime) = &images[0].0 {
        assert_eq!(mime, "image/png");
    }
}

/// An upstream that fails inside a tool call: the client gets what came and a status, never a
/// finished answer with half a call.
async fn failure_in_the_middle_of_a_call(case: Case<'_>) {
    let Case { upstream, mut client, .. } = case;
    upstream.add(
        FakeModel::new("broken")
            .with_reply(Reply::Turn(vec![
                Piece::Text("Checking".into()),
                Piece::ToolCalls(vec![call("c1", "get_weather", ARGS).split_at(&[10])]),
                Piece::Text("never".into()),
            ]))
            .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "backend exploded".into() }),
    );
    let out = stream(&mut client, with_tools("up/broken", vec![user("q")])).await.unwrap();
    assert_eq!(out.text, "Checking");
    assert!(out.last.is_none(), "no finished answer: {out:?}");
    let status = out.status.expect("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// What the provider cannot do is refused before the upstream sees it, naming the feature.
/// `Generate` reads its answer whole and `Chat` streams it, through read buffers of different
/// sizes, so each kind of call has pooled upstream connections of its own: a `Chat` after a
/// `Generate` opens one more connection, and from then on each kind reuses its own. Fails for an
/// adapter that does not pass on `ChatRequest::collected`: its calls would all share one
/// connection.
async fn each_kind_of_call_reuses_its_own_connection(mut case: Case<'_>) {
    let model = case.script("pooled", vec![Piece::Text("Pooled.".into())]);
    let generate = |model: &str| GenerateRequest { model: model.into(), prompt: "Hi".into(), ..Default::default() };
    let settle = || tokio::time::sleep(Duration::from_millis(100));
    let answer = within(LIMIT, case.client.generate(generate(&model))).await.unwrap().into_inner();
    assert_eq!(answer.text, "Pooled.");
    settle().await;
    let after_generate = case.upstream.connections();
    let chat = ChatRequest { model: model.clone(), messages: vec![user("Hi")], ..Default::default() };
    let out = stream(&mut case.client, chat.clone()).await.unwrap();
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(out.text, "Pooled.");
    settle().await;
    assert_eq!(case.upstream.connections(), after_generate + 1, "a Chat stream does not take a Generate's connection");
    for _ in 0..3 {
        within(LIMIT, case.client.generate(generate(&model))).await.unwrap();
        stream(&mut case.client, chat.clone()).await.unwrap();
    }
    settle().await;
    assert_eq!(case.upstream.connections(), after_generate + 1, "each kind of call reuses its own connection");
}

async fn refusals(mut case: Case<'_>, unsupported: &[(&str, ChatRequest)]) {
    for (feature, request) in unsupported {
        let before = case.upstream.bodies().len();
        let status = within(LIMIT, case.client.chat(request.clone())).await.map(|_| ()).unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{feature}: {status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!((info.reason.as_str(), info.metadata["feature"].as_str()), ("FEATURE_UNSUPPORTED", *feature));
        assert_eq!(case.upstream.bodies().len(), before, "{feature}: the upstream was not asked");
    }
}

/// Reasoning turned off: OpenAI-compatible servers have no one way to say it, so it is refused
/// unless `thinking_off` is configured.
fn thinking_off_request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![user("No thinking, please")],
        reasoning: Some(pb::Reasoning { enabled: false, ..Default::default() }),
        ..Default::default()
    }
}

fn json_object_request(model: &str) -> ChatRequest {
    let format = pb::response_format::Format::JsonObject(pb::JsonObjectFormat {});
    ChatRequest {
        model: model.into(),
        messages: vec![user("JSON please")],
        response_format: Some(pb::ResponseFormat { format: Some(format) }),
        ..Default::default()
    }
}

fn image_url_request(model: &str) -> ChatRequest {
    let image =
        pb::Image { source: Some(pb::image::Source::Url("https://example.com/cat.png".into())), ..Default::default() };
    ChatRequest {
        model: model.into(),
        messages: vec![Message {
            role: Role::User as i32,
            parts: vec![Part { kind: Some(part::Kind::Image(image)) }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Every provider

macro_rules! upstream {
    ($($fake:ty),*) => {$(
        impl Upstream for $fake {
            fn add(&self, model: FakeModel) {
                self.add_model(model);
            }
            fn bodies(&self) -> Vec<Value> {
                self.chat_requests()
            }
            fn connections(&self) -> usize {
                self.connections_accepted()
            }
        }
    )*};
}

upstream!(
    copilot_fakes::FakeOllama,
    copilot_fakes::FakeOpenAi,
    copilot_fakes::FakeGemini,
    copilot_fakes::FakeAnthropic
);

macro_rules! conformance {
    ($module:ident, $fake:ty, $kind:literal, $native:expr, unsupported: $unsupported:expr) => {
        conformance!($module, $fake, $kind, $native, unsupported: $unsupported, prepare: |_| {});
    };
    ($module:ident, $fake:ty, $kind:literal, $native:expr, unsupported: $unsupported:expr, prepare: $prepare:expr) => {
        mod $module {
            use super::*;

            /// The fake, and Copilot with one provider `up` of this kind in front of it.
            async fn run(scenario: impl AsyncFnOnce(Case<'_>)) {
                let fake = <$fake>::start().await;
                let prepare: fn(&$fake) = $prepare;
                prepare(&fake);
                let key = if $kind == "ollama" { "" } else { "api_key_env = \"CONFORMANCE_KEY\"\n" };
                let config = format!(
                    "[providers.up]\nkind = \"{}\"\nbase_url = \"{}\"\n{key}retries = 0\nbreaker_failures = 0\n",
                    $kind,
                    fake.base_url()
                );
                let copilot = Copilot::start_with(&config, &[("CONFORMANCE_KEY", "k".into())]).await;
                let client = copilot.client().await;
                scenario(Case { upstream: &fake, native: &$native, client }).await;
            }

            #[tokio::test]
            async fn single_call() {
                run(super::single_call).await;
            }

            #[tokio::test]
            async fn parallel_calls() {
                run(super::parallel_calls).await;
            }

            #[tokio::test]
            async fn arguments_survive_every_cut() {
                run(super::arguments_survive_every_cut).await;
            }

            #[tokio::test]
            async fn tool_result_round_trip() {
                run(super::tool_result_round_trip).await;
            }

            #[tokio::test]
            async fn forced_tool_choice() {
                run(super::forced_tool_choice).await;
            }

            #[tokio::test]
            async fn a_call_without_arguments_gets_an_empty_object() {
                run(super::a_call_without_arguments_gets_an_empty_object).await;
            }

            #[tokio::test]
            async fn json_schema_output() {
                run(super::json_schema_output).await;
            }

            #[tokio::test]
            async fn thinking_then_text() {
                run(super::thinking_then_text).await;
            }

            #[tokio::test]
            async fn thinking_signature_round_trip() {
                run(super::thinking_signature_round_trip).await;
            }

            #[tokio::test]
            async fn image_reaches_the_upstream() {
                run(super::image_reaches_the_upstream).await;
            }

            #[tokio::test]
            async fn failure_in_the_middle_of_a_call() {
                run(super::failure_in_the_middle_of_a_call).await;
            }

            #[tokio::test]
            async fn each_kind_of_call_reuses_its_own_connection() {
                run(super::each_kind_of_call_reuses_its_own_connection).await;
            }

            #[tokio::test]
            async fn refusals() {
                let unsupported: Vec<(&str, ChatRequest)> = $unsupported;
                run(async |case| super::refusals(case, &unsupported).await).await;
            }
        }
    };
}

conformance!(ollama, copilot_fakes::FakeOllama, "ollama", OllamaWire, unsupported: vec![("image_urls", image_url_request("up/m"))]);
conformance!(openai, copilot_fakes::FakeOpenAi, "openai", OpenAiWire, unsupported: vec![("thinking_off", thinking_off_request("up/m"))]);
// The same adapter against the compatible servers' own ways of streaming calls and thinking.
conformance!(vllm, copilot_fakes::FakeOpenAi, "openai", OpenAiWire, unsupported: vec![],
    prepare: |fake| fake.set_flavour(copilot_fakes::Flavour::Vllm));
conformance!(llama_cpp, copilot_fakes::FakeOpenAi, "openai", OpenAiWire, unsupported: vec![],
    prepare: |fake| fake.set_flavour(copilot_fakes::Flavour::LlamaCpp));
conformance!(ollama_v1, copilot_fakes::FakeOpenAi, "openai", OpenAiWire, unsupported: vec![],
    prepare: |fake| fake.set_flavour(copilot_fakes::Flavour::Ollama));
conformance!(gemini, copilot_fakes::FakeGemini, "gemini", GeminiWire, unsupported: vec![("image_urls", image_url_request("up/m"))]);
conformance!(anthropic, copilot_fakes::FakeAnthropic, "anthropic", AnthropicWire, unsupported: vec![("json_object", json_object_request("up/m"))]);
