//! Tool calls, structured output, reasoning and images through `GeminiProvider` against
//! `FakeGemini`, which writes them in Gemini's own stream format and checks requests as Gemini
//! does (function responses matching the calls, Gemini 3's signatures, Gemma's refusals).

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeGemini, FakeModel, FakeToolCall, Piece, Reply};
use copilot_gemini::{GeminiAuth, GeminiConfig, GeminiProvider, StreamDecoder};
use copilot_http::ChatStreamDecoder;
use copilot_provider::{
    AssembledTurn, ChatEvent, ChatRequest, Completion, Effort, Feature, FinishReason, Image, ImageSource, Message,
    Part, Provider, ProviderError, Reasoning, ReasoningAmount, ResponseFormat, Role, Secret, ThinkingDelta, Tool,
    ToolCallDelta, ToolChoice,
};
use futures::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "AIzaSyFake-test-key-0123456789";
/// Byte-exact arguments: a 64-bit id a double would round, and a `1.0` a re-serialiser would
/// write as `1`.
const EXACT: &str = r#"{"id":9007199254740993,"x":1.0}"#;

async fn fake_with(model: FakeModel) -> FakeGemini {
    let fake = FakeGemini::start().await.with_api_key(KEY);
    fake.set_record_requests(true);
    fake.add_model(model);
    fake
}

fn provider(fake: &FakeGemini) -> GeminiProvider {
    GeminiProvider::new(GeminiConfig {
        base_url: fake.base_url(),
        auth: GeminiAuth::ApiKey(Secret::new(KEY)),
        connect_timeout: Duration::from_secs(2),
        safety_settings: Vec::new(),
    })
    .unwrap()
}

fn turn(model: &str, pieces: Vec<Piece>) -> FakeModel {
    let mut model = FakeModel::new(model).with_reply(Reply::Turn(pieces));
    model.capabilities = vec!["completion".into(), "thinking".into()];
    model
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "The weather in a city.".into(),
        parameters: Some(r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into()),
        strict: false,
    }
}

fn ask(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message::text(Role::User, text)],
        tools: vec![weather_tool()],
        ..Default::default()
    }
}

/// Every event of a stream up to its end, which is checked to be the last.
async fn run(provider: &GeminiProvider, request: ChatRequest) -> (Vec<ChatEvent>, Result<Completion, ProviderError>) {
    let mut stream = provider.chat(request).await.expect("chat accepted");
    let mut events = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("stream stalled") {
            Some(Ok(ChatEvent::Done(completion))) => break Ok(*completion),
            Some(Ok(event)) => events.push(event),
            Some(Err(err)) => break Err(err),
            None => panic!("stream ended without Done or an error"),
        }
    };
    assert!(stream.next().await.is_none(), "items after the end of the stream");
    (events, outcome)
}

fn call_delta(index: u32, id: Option<&str>, name: &str, arguments: &str, signature: &[u8]) -> ChatEvent {
    ChatEvent::tool_call(ToolCallDelta {
        index,
        id: id.map(String::from),
        name: Some(name.into()),
        arguments: arguments.into(),
        signature: signature.to_vec(),
    })
}

/// The assistant message a client keeps from a stream, with ids made up where Gemini gave none
/// (as the server does: `call_` and 24 letters and digits).
fn assistant_message(events: &[ChatEvent]) -> Message {
    let mut turn = AssembledTurn::default();
    for event in events {
        match event {
            ChatEvent::Delta(text) => turn.text(text),
            ChatEvent::ToolCall(delta) => {
                let mut delta = delta.clone();
                if delta.id.is_none() && delta.name.is_some() {
                    delta.id = Some(format!("call_{:0>24}", format!("made{}up", delta.index)));
                }
                turn.tool_call(&delta);
            }
            ChatEvent::Thinking(delta) => turn.thinking(delta),
            ChatEvent::Done(_) => {}
        }
    }
    Message { role: Role::Assistant, parts: turn.into_parts(), tool_call_id: None }
}

fn call_ids(message: &Message) -> Vec<String> {
    message.tool_calls().map(|c| c.id.clone()).collect()
}

fn last_body(fake: &FakeGemini) -> Value {
    fake.chat_requests().pop().expect("a request was recorded")
}

#[tokio::test]
async fn a_single_call_is_one_delta_with_its_name_and_arguments_and_gemini_stop() {
    let call = FakeToolCall::new("unused", "get_weather", r#"{"city":"Paris"}"#).without_id();
    let fake = fake_with(turn("gemini-2.5-flash", vec![Piece::ToolCalls(vec![call])])).await;
    let (events, outcome) = run(&provider(&fake), ask("gemini-2.5-flash", "Weather in Paris?")).await;
    assert_eq!(events, [call_delta(0, None, "get_weather", r#"{"city":"Paris"}"#, b"")]);
    // Gemini says STOP; the server settles it into TOOL_CALLS from the call.
    assert_eq!(outcome.unwrap().finish_reason, FinishReason::Stop);
    let body = last_body(&fake);
    assert_eq!(
        body["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "The weather in a city.",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}])
    );
    assert!(body.get("toolConfig").is_none());
}

#[tokio::test]
async fn parallel_calls_get_a_running_index_in_one_chunk_or_one_each() {
    let a = FakeToolCall::new("fc-a", "get_weather", r#"{"city":"Paris"}"#).with_signature(b"step-sig");
    let b = FakeToolCall::new("fc-b", "get_weather", r#"{"city":"Rome"}"#);
    let c = FakeToolCall::new("fc-c", "get_weather", r#"{"city":"Oslo"}"#);
    let pieces = vec![Piece::Text("Looking up three.".into()), Piece::ToolCalls(vec![a, b]), Piece::ToolCalls(vec![c])];
    let fake = fake_with(turn("gemini-3-flash", pieces)).await;
    let (events, outcome) = run(&provider(&fake), ask("gemini-3-flash", "Three cities")).await;
    assert_eq!(
        events,
        [
            ChatEvent::Delta("Looking up three.".into()),
            call_delta(0, Some("fc-a"), "get_weather", r#"{"city":"Paris"}"#, b"step-sig"),
            call_delta(1, Some("fc-b"), "get_weather", r#"{"city":"Rome"}"#, b""),
            call_delta(2, Some("fc-c"), "get_weather", r#"{"city":"Oslo"}"#, b""),
        ]
    );
    assert_eq!(outcome.unwrap().finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn a_call_without_arguments_gets_an_empty_object() {
    let call = FakeToolCall::new("x", "now", "").without_id();
    let fake = fake_with(turn("gemini-2.5-flash", vec![Piece::ToolCalls(vec![call])])).await;
    let mut request = ask("gemini-2.5-flash", "Time?");
    request.tools.push(Tool { name: "now".into(), ..Default::default() });
    let (events, _) = run(&provider(&fake), request).await;
    assert_eq!(events, [call_delta(0, None, "now", "{}", b"")]);
    assert_eq!(last_body(&fake)["tools"][0]["functionDeclarations"][1], json!({"name": "now"}));
}

/// The stream of one call, cut into two reads at every byte, through the decoder the adapter
/// uses: the arguments come out exactly as Gemini wrote them.
#[test]
fn arguments_survive_byte_exact_however_the_body_is_cut() {
    let body = format!(
        "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"functionCall\": {{\"name\": \"lookup\",\"args\": {EXACT}}},\"thoughtSignature\": \"c2ln\"}}],\"role\": \"model\"}},\"finishReason\": \"STOP\",\"index\": 0}}]}}\r\n\r\n"
    );
    let body = body.as_bytes();
    for cut in 0..=body.len() {
        let mut decoder = StreamDecoder::new("http://cut".into(), None);
        let mut events = Vec::new();
        for read in [&body[..cut], &body[cut..]] {
            decoder.push(read);
            while let Some(event) = decoder.next_event() {
                events.push(event.unwrap());
            }
        }
        decoder.end();
        while let Some(event) = decoder.next_event() {
            events.push(event.unwrap());
        }
        assert_eq!(events[0], call_delta(0, None, "lookup", EXACT, b"sig"), "cut at {cut}");
        assert!(matches!(events[1], ChatEvent::Done(_)), "cut at {cut}: {events:?}");
        assert_eq!(events.len(), 2);
    }
}

#[tokio::test]
async fn arguments_reach_the_client_and_go_back_byte_exact() {
    let call = FakeToolCall::new("fc-1", "get_weather", EXACT).with_signature(b"sig-1");
    let fake = fake_with(turn("gemini-3-flash", vec![Piece::ToolCalls(vec![call])])).await;
    let provider = provider(&fake);
    let (first, _) = run(&provider, ask("gemini-3-flash", "Go")).await;
    assert_eq!(first, [call_delta(0, Some("fc-1"), "get_weather", EXACT, b"sig-1")]);

    fake.add_model(turn("gemini-3-flash", vec![Piece::Text("Done.".into())]));
    let mut request = ask("gemini-3-flash", "Go");
    request.messages.push(assistant_message(&first));
    request.messages.push(Message::tool_result("fc-1", r#"{"temp":21.50,"big":18446744073709551615}"#));
    let (second, outcome) = run(&provider, request).await;
    assert_eq!(second, [ChatEvent::Delta("Done.".into())]);
    outcome.unwrap();
    let sent = fake.request_bodies().pop().unwrap();
    assert!(sent.contains(&format!(r#""args":{EXACT}"#)), "{sent}");
    assert!(sent.contains(r#""response":{"temp":21.50,"big":18446744073709551615}"#), "{sent}");
}

#[tokio::test]
async fn tool_results_round_trip_over_two_turns_paired_by_name_and_order() {
    // Gemini 2.5: no ids, a signature on the first call of the step.
    let paris = FakeToolCall::new("-", "get_weather", r#"{"city":"Paris"}"#).without_id().with_signature(b"s1");
    let rome = FakeToolCall::new("-", "get_weather", r#"{"city":"Rome"}"#).without_id();
    // After the results, the model echoes the last one it was given.
    let model = turn("gemini-2.5-flash", vec![Piece::Text("Checking.".into()), Piece::ToolCalls(vec![paris, rome])])
        .with_reply_after_tool_result(Reply::Echo);
    let fake = fake_with(model).await;
    let provider = provider(&fake);
    let (first, _) = run(&provider, ask("gemini-2.5-flash", "Paris and Rome?")).await;
    let assistant = assistant_message(&first);
    let ids = call_ids(&assistant);

    let mut request = ask("gemini-2.5-flash", "Paris and Rome?");
    request.messages.push(assistant);
    // Results in the other order: they go back in the calls' order, so Rome's is last.
    request.messages.push(Message::tool_result(&ids[1], "18 C"));
    request.messages.push(Message::tool_result(&ids[0], r#"{"temp": 21}"#));
    let (second, outcome) = run(&provider, request.clone()).await;
    let text: String = second.iter().map(|e| if let ChatEvent::Delta(t) = e { t.as_str() } else { "" }).collect();
    assert_eq!(text, "You said: 18 C");
    outcome.unwrap();

    let body = last_body(&fake);
    assert_eq!(
        body["contents"][1],
        json!({"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "czE="},
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
        ]})
    );
    assert_eq!(
        body["contents"][2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "get_weather", "response": {"result": "18 C"}}},
        ]})
    );

    // One result short: Gemini's 400, as the upstream's own words.
    request.messages.pop();
    let err = provider.chat(request).await.err().expect("refused");
    assert!(
        matches!(&err, ProviderError::InvalidRequest(m) if m.contains("number of function response parts is equal")),
        "{err:?}"
    );
}

#[tokio::test]
async fn gemini_3_ids_go_back_with_the_results_and_a_lost_signature_is_refused() {
    let call = FakeToolCall::new("fc-9", "get_weather", r#"{"city":"Oslo"}"#).with_signature(b"g3");
    let fake = fake_with(turn("gemini-3-pro", vec![Piece::ToolCalls(vec![call])])).await;
    let provider = provider(&fake);
    let (first, _) = run(&provider, ask("gemini-3-pro", "Oslo?")).await;

    fake.add_model(turn("gemini-3-pro", vec![Piece::Text("Cold.".into())]));
    let mut request = ask("gemini-3-pro", "Oslo?");
    request.messages.push(assistant_message(&first));
    request.messages.push(Message::tool_result("fc-9", "-3 C"));
    let (second, _) = run(&provider, request.clone()).await;
    assert_eq!(second, [ChatEvent::Delta("Cold.".into())]);
    let body = last_body(&fake);
    assert_eq!(body["contents"][1]["parts"][0]["functionCall"]["id"], "fc-9");
    assert_eq!(body["contents"][1]["parts"][0]["thoughtSignature"], "ZzM=");
    assert_eq!(
        body["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"result": "-3 C"}, "id": "fc-9"}})
    );

    // History that lost the signature: Gemini 3 refuses it.
    let Part::ToolCall(call) = &mut request.messages[1].parts[0] else { panic!("a call") };
    call.signature.clear();
    let err = provider.chat(request).await.err().expect("refused");
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("missing a thought_signature")), "{err:?}");
}

#[tokio::test]
async fn tool_choice_forced_and_none_reach_the_function_calling_config() {
    let call = FakeToolCall::new("-", "get_weather", r#"{"city":"Lima"}"#).without_id();
    let fake = fake_with(turn("gemini-2.5-flash", vec![Piece::ToolCalls(vec![call])])).await;
    let provider = provider(&fake);
    for (choice, expected) in [
        (ToolChoice::Named("get_weather".into()), json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})),
        (ToolChoice::Required, json!({"mode": "ANY"})),
        (ToolChoice::None, json!({"mode": "NONE"})),
        (ToolChoice::Auto, json!({"mode": "AUTO"})),
    ] {
        let mut request = ask("gemini-2.5-flash", "Lima");
        request.tool_choice = Some(choice);
        let (events, _) = run(&provider, request).await;
        assert_eq!(events.len(), 1);
        assert_eq!(last_body(&fake)["toolConfig"], json!({"functionCallingConfig": expected}));
    }
}

#[tokio::test]
async fn json_schema_and_json_object_output_are_requested_natively() {
    let fake = fake_with(turn("gemini-2.5-flash", vec![Piece::Text(r#"{"n": 1}"#.into())])).await;
    let provider = provider(&fake);
    let schema =
        r#"{"type":"object","properties":{"n":{"type":"integer","maximum":9007199254740993}},"required":["n"]}"#;
    let mut request = ask("gemini-2.5-flash", "A number");
    request.tools.clear();
    request.response_format = ResponseFormat::JsonSchema { name: "number".into(), schema: schema.into(), strict: true };
    let (events, _) = run(&provider, request.clone()).await;
    assert_eq!(events, [ChatEvent::Delta(r#"{"n": 1}"#.into())]);
    assert_eq!(last_body(&fake)["generationConfig"]["responseMimeType"], "application/json");
    let sent = fake.request_bodies().pop().unwrap();
    assert!(sent.contains(&format!(r#""responseJsonSchema":{schema}"#)), "{sent}");

    request.response_format = ResponseFormat::JsonObject;
    events_ok(&provider, request).await;
    assert_eq!(last_body(&fake)["generationConfig"], json!({"responseMimeType": "application/json"}));
}

async fn events_ok(provider: &GeminiProvider, request: ChatRequest) -> Vec<ChatEvent> {
    let (events, outcome) = run(provider, request).await;
    outcome.unwrap();
    events
}

#[tokio::test]
async fn an_error_in_the_middle_of_a_tool_call_step_fails_the_stream() {
    let call = FakeToolCall::new("-", "get_weather", r#"{"city":"Kyiv"}"#).without_id();
    let model = turn("gemini-2.5-flash", vec![Piece::ToolCalls(vec![call.clone()]), Piece::ToolCalls(vec![call])])
        .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "backend crashed".into() });
    let fake = fake_with(model).await;
    let (events, outcome) = run(&provider(&fake), ask("gemini-2.5-flash", "Kyiv twice")).await;
    assert_eq!(events, [call_delta(0, None, "get_weather", r#"{"city":"Kyiv"}"#, b"")]);
    assert!(matches!(&outcome, Err(ProviderError::MidStream(m)) if m.contains("backend crashed")), "{outcome:?}");
}

#[tokio::test]
async fn gemma_cannot_call_tools_or_answer_in_json() {
    let fake = fake_with(FakeModel::new("gemma-3-27b-it")).await;
    let provider = provider(&fake);
    let err = provider.chat(ask("gemma-3-27b-it", "Hi")).await.err().expect("refused");
    assert!(
        matches!(&err, ProviderError::Unsupported { feature: Feature::Tools, message } if message.contains("Function calling is not enabled")),
        "{err:?}"
    );
    let mut request = ask("gemma-3-27b-it", "Hi");
    request.tools.clear();
    request.response_format = ResponseFormat::JsonSchema { name: "x".into(), schema: "{}".into(), strict: false };
    let err = provider.chat(request).await.err().expect("refused");
    assert!(matches!(err, ProviderError::Unsupported { feature: Feature::JsonSchema, .. }), "{err:?}");
}

// ---- reasoning ----

fn thinking(include_thoughts: bool) -> Option<Reasoning> {
    Some(Reasoning::On { amount: ReasoningAmount::Default, include_thoughts })
}

#[tokio::test]
async fn thinking_streams_before_the_text_with_its_signature_and_usage() {
    let pieces = vec![
        Piece::Thinking("First, ".into()),
        Piece::Thinking("the sky.".into()),
        Piece::Text("It is blue.".into()),
        Piece::ThinkingSignature(b"final-sig".to_vec()),
    ];
    let fake = fake_with(turn("gemini-2.5-flash", pieces)).await;
    let provider = provider(&fake);
    let mut request = ask("gemini-2.5-flash", "Sky colour?");
    request.tools.clear();
    request.reasoning = thinking(true);
    let (events, outcome) = run(&provider, request.clone()).await;
    assert_eq!(
        events,
        [
            ChatEvent::Thinking(ThinkingDelta::Text("First, ".into())),
            ChatEvent::Thinking(ThinkingDelta::Text("the sky.".into())),
            ChatEvent::Delta("It is blue.".into()),
            ChatEvent::Thinking(ThinkingDelta::Signature(b"final-sig".to_vec())),
        ]
    );
    let usage = outcome.unwrap().usage;
    assert_eq!((usage.output_tokens, usage.reasoning_tokens), (4, Some(2)), "{usage:?}");
    assert_eq!(
        last_body(&fake)["generationConfig"]["thinkingConfig"],
        json!({"includeThoughts": true, "thinkingBudget": -1})
    );

    // Without includeThoughts Gemini keeps the thoughts (but still counts them).
    request.reasoning = thinking(false);
    let (hidden, outcome) = run(&provider, request).await;
    assert_eq!(
        hidden,
        [ChatEvent::Delta("It is blue.".into()), ChatEvent::Thinking(ThinkingDelta::Signature(b"final-sig".to_vec()))]
    );
    assert_eq!(outcome.unwrap().usage.reasoning_tokens, Some(2));
}

#[tokio::test]
async fn thinking_and_its_signatures_go_back_unchanged() {
    let call = FakeToolCall::new("-", "get_weather", r#"{"city":"Nice"}"#).without_id().with_signature(b"call-sig");
    let pieces = vec![
        Piece::Thinking("I need the weather.".into()),
        Piece::ThinkingSignature(b"t-sig".to_vec()),
        Piece::ToolCalls(vec![call]),
    ];
    let fake = fake_with(turn("gemini-2.5-flash", pieces)).await;
    let provider = provider(&fake);
    let mut request = ask("gemini-2.5-flash", "Nice?");
    request.reasoning = thinking(true);
    let (first, _) = run(&provider, request.clone()).await;
    let assistant = assistant_message(&first);
    let id = call_ids(&assistant).remove(0);

    fake.add_model(turn("gemini-2.5-flash", vec![Piece::Text("Warm.".into())]));
    request.messages.push(assistant);
    request.messages.push(Message::tool_result(&id, "25 C"));
    events_ok(&provider, request).await;
    assert_eq!(
        last_body(&fake)["contents"][1]["parts"],
        json!([
            {"text": "I need the weather.", "thought": true, "thoughtSignature": "dC1zaWc="},
            {"functionCall": {"name": "get_weather", "args": {"city": "Nice"}}, "thoughtSignature": "Y2FsbC1zaWc="},
        ])
    );
}

#[tokio::test]
async fn reasoning_settings_reach_thinking_config_and_model_refusals_name_the_feature() {
    let fake = fake_with(turn("gemini-3-flash", vec![Piece::Text("ok".into())])).await;
    fake.add_model(turn("gemini-2.5-pro", vec![Piece::Text("ok".into())]));
    fake.add_model(FakeModel::new("gemini-2.0-flash"));
    let provider = provider(&fake);
    let request = |model: &str, reasoning| ChatRequest {
        model: model.into(),
        messages: vec![Message::text(Role::User, "Q")],
        reasoning: Some(reasoning),
        ..Default::default()
    };
    let effort = |effort| Reasoning::On { amount: ReasoningAmount::Effort(effort), include_thoughts: false };
    events_ok(&provider, request("gemini-3-flash", effort(Effort::High))).await;
    assert_eq!(last_body(&fake)["generationConfig"]["thinkingConfig"], json!({"thinkingLevel": "HIGH"}));
    events_ok(&provider, request("gemini-2.5-pro", effort(Effort::Low))).await;
    assert_eq!(last_body(&fake)["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 1024}));
    let budget = Reasoning::On { amount: ReasoningAmount::BudgetTokens(300), include_thoughts: false };
    events_ok(&provider, request("gemini-3-flash", budget)).await;
    assert_eq!(last_body(&fake)["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 300}));
    events_ok(&provider, request("gemini-3-flash", Reasoning::Off)).await;
    assert_eq!(last_body(&fake)["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 0}));

    let err = provider.chat(request("gemini-2.5-pro", Reasoning::Off)).await.err().expect("refused");
    assert!(matches!(err, ProviderError::Unsupported { feature: Feature::ThinkingOff, .. }), "{err:?}");
    let err = provider.chat(request("gemini-2.0-flash", effort(Effort::Low))).await.err().expect("refused");
    assert!(matches!(err, ProviderError::Unsupported { feature: Feature::Thinking, .. }), "{err:?}");
}

// ---- images ----

#[tokio::test]
async fn an_image_reaches_gemini_as_inline_data() {
    let fake = fake_with(turn("gemini-2.5-flash", vec![Piece::Text("A dot.".into())])).await;
    let png = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13];
    let request = ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![Message {
            role: Role::User,
            parts: vec![
                Part::Text("What is this?".into()),
                Part::Image(Image { source: ImageSource::Data(png), mime_type: "image/png".into() }),
            ],
            tool_call_id: None,
        }],
        ..Default::default()
    };
    assert_eq!(events_ok(&provider(&fake), request).await, [ChatEvent::Delta("A dot.".into())]);
    assert_eq!(
        last_body(&fake)["contents"][0]["parts"],
        json!([{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgoAAAAN"}}])
    );
}

#[test]
fn features_are_what_the_adapter_translates() {
    let provider = GeminiProvider::new(GeminiConfig::default()).unwrap();
    let features = provider.features();
    for feature in [
        Feature::Tools,
        Feature::JsonObject,
        Feature::JsonSchema,
        Feature::Thinking,
        Feature::ThinkingOff,
        Feature::Images,
    ] {
        assert!(features.contains(feature), "{feature:?}");
    }
    assert!(!features.contains(Feature::ImageUrls), "Gemini fetches no http(s) image URLs");
}
