//! Checks the fake Ollama server over plain HTTP, the way an adapter would see it.

use std::time::Duration;

use copilot_fakes::{Behaviour, FakeModel, FakeOllama, FakeToolCall, Piece, Reply};
use serde_json::{Value, json};

fn tokens(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

/// reqwest is built without a TLS crypto provider (the workspace picks one at the top level) and
/// will not build even a plain-HTTP client until one is installed.
fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

fn client() -> reqwest::Client {
    client_builder().build().expect("build an HTTP client")
}

async fn fake_with(model: FakeModel) -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.add_model(model);
    fake
}

async fn post_chat(fake: &FakeOllama, body: Value) -> reqwest::Response {
    client().post(format!("{}/api/chat", fake.base_url())).json(&body).send().await.expect("send chat request")
}

fn chat_body(model: &str, user: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": user }] })
}

/// Reads an NDJSON body to its end: every complete line parsed, and whether the body ended
/// cleanly (false when the connection broke).
async fn read_ndjson(mut response: reqwest::Response) -> (Vec<Value>, bool) {
    let mut buffer = Vec::new();
    let mut lines = Vec::new();
    let clean = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).expect("every line is JSON"));
        }
    };
    assert!(buffer.is_empty(), "body ended mid-line: {:?}", String::from_utf8_lossy(&buffer));
    (lines, clean)
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned()
}

fn contents(lines: &[Value]) -> Vec<&str> {
    lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect()
}

#[tokio::test]
async fn streamed_chat_ends_with_done_and_statistics() {
    let fake = fake_with(FakeModel::new("llama3.2:3b").with_reply(tokens(&["Hel", "lo", " world"]))).await;
    let body = json!({
        "model": "llama3.2:3b",
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": "hi there  you" },
        ],
    });
    let response = post_chat(&fake, body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(content_type(&response), "application/x-ndjson");
    let (lines, clean) = read_ndjson(response).await;
    assert!(clean);
    assert_eq!(lines.len(), 4);

    for chunk in &lines[..3] {
        assert_eq!(chunk["model"], "llama3.2:3b");
        assert_eq!(chunk["done"], false);
        assert_eq!(chunk["message"]["role"], "assistant");
        assert!(chunk["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(chunk.get("done_reason").is_none());
    }
    assert_eq!(contents(&lines[..3]), ["Hel", "lo", " world"]);

    let last = &lines[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"]["content"], "");
    assert_eq!(last["prompt_eval_count"], 5);
    assert_eq!(last["eval_count"], 3);
    for field in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(last[field].as_u64().unwrap() >= 1, "{field} in {last}");
    }
    let parts = ["load_duration", "prompt_eval_duration", "eval_duration"];
    let sum: u64 = parts.iter().map(|f| last[*f].as_u64().unwrap()).sum();
    assert!(last["total_duration"].as_u64().unwrap() >= sum);

    assert_eq!(fake.completed_streams(), 1);
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.disconnects(), 0);
    assert_eq!(fake.chat_requests(), vec![body]);
}

#[tokio::test]
async fn echo_splits_words_with_their_leading_space() {
    let fake = fake_with(FakeModel::new("echo")).await;
    let body = json!({
        "model": "echo:latest",
        "messages": [
            { "role": "user", "content": "first" },
            { "role": "assistant", "content": "ok" },
            { "role": "user", "content": "héllo wörld" },
        ],
    });
    let (lines, _) = read_ndjson(post_chat(&fake, body).await).await;
    assert_eq!(contents(&lines), ["You", " said:", " héllo", " wörld", ""]);
    assert_eq!(lines[0]["model"], "echo:latest", "the model is named as requested");
}

#[tokio::test]
async fn num_predict_stops_with_length() {
    let fake = fake_with(FakeModel::new("endless:1b").with_reply(Reply::Endless)).await;
    let mut body = chat_body("endless:1b", "go on");
    body["options"] = json!({ "num_predict": 4, "temperature": 0.1 });
    let (lines, clean) = read_ndjson(post_chat(&fake, body.clone()).await).await;
    assert!(clean);
    assert_eq!(contents(&lines), ["tok", " tok", " tok", " tok", ""]);
    assert_eq!(lines[4]["done_reason"], "length");
    assert_eq!(lines[4]["eval_count"], 4);

    // A reply shorter than the limit stops naturally.
    fake.add_model(FakeModel::new("endless:1b").with_reply(tokens(&["a", "b"])));
    let (lines, _) = read_ndjson(post_chat(&fake, body).await).await;
    assert_eq!(lines.last().unwrap()["done_reason"], "stop");
}

#[tokio::test]
async fn stream_false_returns_one_object() {
    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let mut body = chat_body("llama3.2:3b", "hello there");
    body["stream"] = json!(false);
    let response = post_chat(&fake, body).await;
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("application/json"));
    let object: Value = response.json().await.unwrap();
    assert_eq!(object["message"]["content"], "You said: hello there");
    assert_eq!(object["done"], true);
    assert_eq!(object["done_reason"], "stop");
    assert_eq!(object["eval_count"], 4);
    assert_eq!(object["prompt_eval_count"], 2);
    assert_eq!(fake.completed_streams(), 1);

    // Endless without streaming stops at num_predict (or the context length).
    fake.add_model(FakeModel::new("endless").with_reply(Reply::Endless));
    let body = json!({ "model": "endless", "stream": false, "options": { "num_predict": 3 } });
    let object: Value = post_chat(&fake, body).await.json().await.unwrap();
    assert_eq!(object["message"]["content"], "tok tok tok");
    assert_eq!(object["done_reason"], "length");
}

#[tokio::test]
async fn error_after_sends_200_then_an_error_line() {
    let behaviour = Behaviour::ErrorAfter { tokens: 2, message: "model runner has unexpectedly stopped".into() };
    let fake = fake_with(FakeModel::new("flaky").with_reply(Reply::Endless).with_behaviour(behaviour)).await;
    let response = post_chat(&fake, chat_body("flaky", "hi")).await;
    assert_eq!(response.status(), 200);
    let (lines, clean) = read_ndjson(response).await;
    assert!(clean, "the body ends normally after the error line");
    assert_eq!(lines.len(), 3);
    assert_eq!(contents(&lines), ["tok", " tok"]);
    assert_eq!(lines[2], json!({ "error": "model runner has unexpectedly stopped" }));

    let body = json!({ "model": "flaky", "stream": false });
    let response = post_chat(&fake, body).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "model runner has unexpectedly stopped");
}

#[tokio::test]
async fn end_without_done_and_dropped_connection() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("truncated").with_behaviour(Behaviour::EndWithoutDone { tokens: 2 }));
    fake.add_model(FakeModel::new("broken").with_behaviour(Behaviour::DropConnectionAfter { tokens: 3 }));

    let (lines, clean) = read_ndjson(post_chat(&fake, chat_body("truncated", "a b c")).await).await;
    assert!(clean);
    assert_eq!(contents(&lines), ["You", " said:"]);
    assert!(lines.iter().all(|l| l["done"] == false));

    let response = post_chat(&fake, chat_body("broken", "a b c")).await;
    assert_eq!(response.status(), 200);
    let (lines, clean) = read_ndjson(response).await;
    assert!(!clean, "the body must end in an error");
    assert_eq!(contents(&lines), ["You", " said:", " a"]);

    assert_eq!(fake.completed_streams(), 1, "only the clean end counts as completed");
    assert_eq!(fake.disconnects(), 0, "the server broke the connection, not the client");
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn http_errors_and_refusals() {
    let behaviour = Behaviour::HttpError { status: 500, message: "llama runner process has terminated".into() };
    let fake = fake_with(FakeModel::new("crashy").with_behaviour(behaviour)).await;

    let response = post_chat(&fake, chat_body("crashy", "hi")).await;
    assert_eq!(response.status(), 500);
    assert!(content_type(&response).starts_with("application/json"));
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "error": "llama runner process has terminated" }));

    let response = post_chat(&fake, chat_body("nope:7b", "hi")).await;
    assert_eq!(response.status(), 404);
    let error = response.json::<Value>().await.unwrap();
    assert_eq!(error, json!({ "error": "model \"nope:7b\" not found, try pulling it first" }));

    let url = format!("{}/api/chat", fake.base_url());
    let client = client();
    let response = client.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "error": "missing request body" }));
    let response = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    let response = post_chat(&fake, json!({ "messages": [] })).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "error": "model is required" }));

    fake.add_model(FakeModel::new("fine"));
    fake.set_busy(true);
    let response = post_chat(&fake, chat_body("fine", "hi")).await;
    assert_eq!(response.status(), 503);
    let error = response.json::<Value>().await.unwrap();
    assert_eq!(error["error"], "server busy, please try again.  maximum pending requests exceeded");
    fake.set_busy(false);
    assert_eq!(post_chat(&fake, chat_body("fine", "hi")).await.status(), 200);

    // Every parseable body is recorded, refused or not; the missing and broken ones are not.
    assert_eq!(fake.chat_requests().len(), 5);
}

#[tokio::test]
async fn tags_show_version_and_root() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let mut qwen = FakeModel::new("qwen2.5");
    qwen.family = "qwen2".into();
    qwen.context_length = 32_768;
    qwen.capabilities = vec!["completion".into(), "tools".into()];
    fake.add_model(qwen);
    let client = client();
    let base = fake.base_url();

    let tags: Value = client.get(format!("{base}/api/tags")).send().await.unwrap().json().await.unwrap();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[1]["name"], "qwen2.5:latest");
    assert_eq!(models[1]["model"], "qwen2.5:latest");
    assert_eq!(models[1]["digest"].as_str().unwrap().len(), 64);
    assert!(models[1]["size"].as_u64().unwrap() > 0);
    assert!(models[1]["modified_at"].is_string());
    let details = &models[1]["details"];
    assert_eq!(details["format"], "gguf");
    assert_eq!(details["family"], "qwen2");
    assert_eq!(details["families"], json!(["qwen2"]));
    assert_eq!(details["parameter_size"], "3.2B");
    assert_eq!(details["quantization_level"], "Q4_K_M");
    assert_eq!(details["parent_model"], "");

    let show = client.post(format!("{base}/api/show")).json(&json!({ "model": "qwen2.5" })).send().await.unwrap();
    assert_eq!(show.status(), 200);
    let show: Value = show.json().await.unwrap();
    assert_eq!(show["model_info"]["general.architecture"], "qwen2");
    assert_eq!(show["model_info"]["qwen2.context_length"], 32_768);
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    assert_eq!(show["details"]["family"], "qwen2");
    for field in ["modelfile", "parameters", "template", "modified_at"] {
        assert!(show[field].is_string(), "{field}");
    }
    let legacy = client.post(format!("{base}/api/show")).json(&json!({ "name": "llama3.2:3b" })).send().await.unwrap();
    let legacy: Value = legacy.json().await.unwrap();
    assert_eq!(legacy["model_info"]["llama.context_length"], 131_072);
    let missing = client.post(format!("{base}/api/show")).json(&json!({ "model": "ghost" })).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap(), json!({ "error": "model 'ghost' not found" }));

    let version: Value = client.get(format!("{base}/api/version")).send().await.unwrap().json().await.unwrap();
    assert_eq!(version, json!({ "version": "0.12.3" }));
    let root = client.get(&base).send().await.unwrap();
    assert!(content_type(&root).starts_with("text/plain"));
    assert_eq!(root.text().await.unwrap(), "Ollama is running");
    let unknown = client.get(format!("{base}/api/nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn dropping_an_endless_stream_counts_a_disconnect() {
    let fake = fake_with(FakeModel::new("endless").with_reply(Reply::Endless)).await;
    let mut response = post_chat(&fake, chat_body("endless", "go")).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"{\"model\":\"endless\""));
    assert_eq!(fake.active_streams(), 1);
    drop(response);

    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await);
    assert_eq!(fake.disconnects(), 1);
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.completed_streams(), 0);
}

#[tokio::test]
async fn disconnects_are_noticed_between_slow_tokens_and_during_header_delay() {
    let fake = FakeOllama::start().await;
    let slow = FakeModel::new("slow").with_reply(Reply::Endless).with_token_delay(Duration::from_secs(30));
    fake.add_model(slow.with_header_delay(Duration::ZERO));
    fake.add_model(FakeModel::new("loading").with_header_delay(Duration::from_secs(30)));

    // Headers arrive at once, the first token only after 30 s: the client gives up waiting.
    let response = post_chat(&fake, chat_body("slow", "go")).await;
    assert_eq!(response.status(), 200);
    drop(response);
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await);

    let client = client_builder().timeout(Duration::from_millis(200)).build().unwrap();
    let result = client.post(format!("{}/api/chat", fake.base_url())).json(&chat_body("loading", "go")).send().await;
    assert!(result.unwrap_err().is_timeout());
    assert!(fake.wait_for_disconnects(2, Duration::from_secs(5)).await);
    assert_eq!(fake.active_streams(), 0);
}

#[tokio::test]
async fn wait_for_disconnects_times_out() {
    let fake = FakeOllama::start().await;
    assert!(!fake.wait_for_disconnects(1, Duration::from_millis(50)).await);
    assert!(fake.wait_for_disconnects(0, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn dropping_the_fake_stops_the_server_and_its_streams() {
    let fake = fake_with(FakeModel::new("endless").with_reply(Reply::Endless)).await;
    let base_url = fake.base_url();
    let mut response = post_chat(&fake, chat_body("endless", "go")).await;
    response.chunk().await.unwrap().expect("a first chunk");
    drop(fake);

    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match response.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    });
    assert!(!drained.await.expect("the stream ends"), "an endless stream breaks rather than completing");
    assert!(client().get(format!("{base_url}/api/version")).send().await.is_err());
}

fn turn() -> FakeModel {
    FakeModel::new("qwen3").with_reply(Reply::Turn(vec![
        Piece::Thinking("Hmm.".into()),
        Piece::ThinkingSignature(b"sig".to_vec()),
        Piece::Text("Checking.".into()),
        Piece::ToolCalls(vec![
            FakeToolCall::new("call_a1", "get_weather", r#"{"city":"Zürich","id":9007199254740993,"x":1.0}"#),
            FakeToolCall::new("x", "now", "").without_id(),
        ]),
        Piece::ToolCalls(vec![FakeToolCall::new("call_b2", "get_weather", r#"{"city":"Bern"}"#)]),
    ]))
}

#[tokio::test]
async fn a_turn_streams_thinking_text_and_whole_calls_as_ollama_does() {
    let fake = fake_with(turn()).await;
    let response = post_chat(&fake, chat_body("qwen3", "q")).await;
    assert_eq!(response.status(), 200);
    let mut raw = response.text().await.unwrap();
    // The arguments are written as the script has them, not re-encoded.
    assert!(raw.contains(r#""arguments":{"city":"Zürich","id":9007199254740993,"x":1.0}"#), "{raw}");
    raw.pop();
    let lines: Vec<Value> = raw.split('\n').map(|l| serde_json::from_str(l).unwrap()).collect();
    // No line for the signature: Ollama has none.
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["message"], json!({"role": "assistant", "content": "", "thinking": "Hmm."}));
    assert_eq!(lines[1]["message"], json!({"role": "assistant", "content": "Checking."}));
    assert_eq!(
        lines[2]["message"]["tool_calls"],
        json!([
            {"id": "call_a1", "function": {"index": 0, "name": "get_weather",
             "arguments": {"city": "Zürich", "id": 9007199254740993u64, "x": 1.0}}},
            {"function": {"index": 1, "name": "now", "arguments": {}}},
        ])
    );
    assert_eq!(lines[3]["message"]["tool_calls"][0]["function"]["index"], 2, "numbered across the response");
    assert_eq!((lines[4]["done"].clone(), lines[4]["done_reason"].clone()), (json!(true), json!("stop")));
}

#[tokio::test]
async fn a_turn_not_streamed_gathers_thinking_text_and_calls() {
    let fake = fake_with(turn()).await;
    let mut body = chat_body("qwen3", "q");
    body["stream"] = json!(false);
    let answer: Value = post_chat(&fake, body).await.json().await.unwrap();
    assert_eq!(answer["message"]["content"], "Checking.");
    assert_eq!(answer["message"]["thinking"], "Hmm.");
    let names: Vec<&str> = answer["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather", "now", "get_weather"]);
    assert_eq!(answer["done_reason"], "stop");
}

#[tokio::test]
async fn think_false_turns_thinking_off() {
    let fake = fake_with(turn()).await;
    let mut body = chat_body("qwen3", "q");
    body["think"] = json!(false);
    let (lines, _) = read_ndjson(post_chat(&fake, body).await).await;
    assert!(lines.iter().all(|l| l["message"].get("thinking").is_none()), "{lines:?}");
}

async fn refusal(fake: &FakeOllama, body: Value) -> String {
    let response = post_chat(fake, body).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn capability_checks_refuse_in_ollamas_words() {
    let fake = fake_with(FakeModel::new("gemma3:1b")).await;
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let with = |key: &str, value: Value| {
        let mut body = chat_body("gemma3:1b", "hi");
        body[key] = value;
        body
    };
    // Off by default: a plain FakeModel plays any script.
    assert_eq!(post_chat(&fake, with("tools", tools.clone())).await.status(), 200);

    fake.set_capability_checks(true);
    assert_eq!(
        refusal(&fake, with("tools", tools.clone())).await,
        "registry.ollama.ai/library/gemma3:1b does not support tools"
    );
    assert_eq!(refusal(&fake, with("think", json!("low"))).await, r#""gemma3:1b" does not support thinking"#);
    let mut body = chat_body("gemma3:1b", "hi");
    body["messages"][0]["images"] = json!(["R0lGODlh"]);
    assert_eq!(refusal(&fake, body).await, "this model is missing data required for image input");
    // Thinking is checked first, as Ollama does.
    let mut body = with("tools", tools.clone());
    body["think"] = json!(true);
    assert!(refusal(&fake, body).await.contains("does not support thinking"));
    // Turning thinking off, or an empty tool list, asks nothing of the model.
    assert_eq!(post_chat(&fake, with("think", json!(false))).await.status(), 200);
    assert_eq!(post_chat(&fake, with("tools", json!([]))).await.status(), 200);

    let mut model = FakeModel::new("gemma3:1b");
    model.capabilities = ["completion", "tools", "thinking", "vision"].map(String::from).to_vec();
    fake.add_model(model);
    let mut body = with("tools", tools);
    body["think"] = json!("high");
    body["messages"][0]["images"] = json!(["R0lGODlh"]);
    assert_eq!(post_chat(&fake, body).await.status(), 200);
}

#[tokio::test]
async fn malformed_tool_messages_are_refused() {
    let fake = fake_with(FakeModel::new("qwen3")).await;
    let with_messages = |messages: Value| json!({"model": "qwen3", "messages": messages});
    let refused = [
        // A result must name its tool.
        json!([{"role": "tool", "content": "18C", "tool_call_id": "c1"}]),
        // Arguments are an object on Ollama's wire, not OpenAI's string.
        json!([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]),
        json!([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}]),
        json!([{"role": "user", "content": "hi", "images": ["not base64!"]}]),
    ];
    for messages in refused {
        let status = post_chat(&fake, with_messages(messages.clone())).await.status();
        assert_eq!(status, 400, "{messages}");
    }
    let mut body = chat_body("qwen3", "hi");
    body["think"] = json!("extreme");
    assert_eq!(refusal(&fake, body).await, r#"invalid think value: "extreme""#);
    let mut body = chat_body("qwen3", "hi");
    body["format"] = json!("yaml");
    assert!(refusal(&fake, body).await.contains("format"));

    let accepted = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "18C", "tool_name": "f", "tool_call_id": "c1"},
    ]);
    assert_eq!(post_chat(&fake, with_messages(accepted)).await.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Embeddings

async fn post_embed(fake: &FakeOllama, body: Value) -> (u16, Value) {
    let response =
        client().post(format!("{}/api/embed", fake.base_url())).json(&body).send().await.expect("send embed request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("embed answers are JSON"))
}

async fn embedding_fake() -> FakeOllama {
    let fake = fake_with(FakeModel::embedding("nomic-embed-text", 8)).await;
    let mut short = FakeModel::embedding("short-embed", 4);
    short.context_length = 3;
    fake.add_model(short);
    fake.add_model(FakeModel::new("llama3.2"));
    fake
}

#[tokio::test]
async fn embed_answers_fake_embeddings_in_order_unnormalised() {
    let fake = embedding_fake().await;
    let body = json!({"model": "nomic-embed-text", "input": ["first text", "a second, longer text"]});
    let (status, answer) = post_embed(&fake, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "nomic-embed-text");
    let vectors: Vec<Vec<f32>> = serde_json::from_value(answer["embeddings"].clone()).unwrap();
    let expected =
        vec![copilot_fakes::fake_embedding("first text", 8), copilot_fakes::fake_embedding("a second, longer text", 8)];
    assert_eq!(vectors, expected);
    let norm: f32 = vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "the fake does not normalise, unlike Ollama: {norm}");
    assert_eq!(answer["prompt_eval_count"], 6);
    assert!(answer["total_duration"].as_u64().unwrap() > 0);
    assert!(answer.get("load_duration").is_some());
    assert_eq!(fake.embed_requests(), vec![body]);
    assert!(fake.chat_requests().is_empty());

    // One string is one input; an empty string or none embeds nothing.
    let (_, answer) = post_embed(&fake, json!({"model": "nomic-embed-text", "input": "solo"})).await;
    assert_eq!(answer["embeddings"], json!([copilot_fakes::fake_embedding("solo", 8)]));
    for input in [json!([]), json!(""), Value::Null] {
        let (status, answer) = post_embed(&fake, json!({"model": "nomic-embed-text", "input": input})).await;
        assert_eq!((status, &answer["embeddings"]), (200, &json!([])), "{input}");
    }
}

#[tokio::test]
async fn embed_dimensions_cut_vectors_and_larger_ones_are_ignored() {
    let fake = embedding_fake().await;
    let (_, answer) = post_embed(&fake, json!({"model": "nomic-embed-text", "input": ["x"], "dimensions": 3})).await;
    assert_eq!(answer["embeddings"], json!([copilot_fakes::fake_embedding("x", 3)]));
    for ignored in [json!(100), json!(0), json!(-2)] {
        let body = json!({"model": "nomic-embed-text", "input": ["x"], "dimensions": ignored});
        let (_, answer) = post_embed(&fake, body).await;
        assert_eq!(answer["embeddings"][0].as_array().unwrap().len(), 8, "{ignored}");
    }
}

#[tokio::test]
async fn embed_truncates_over_long_inputs_unless_told_not_to() {
    let fake = embedding_fake().await;
    let body = json!({"model": "short-embed", "input": ["one two three four five"]});
    let (status, answer) = post_embed(&fake, body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["embeddings"], json!([copilot_fakes::fake_embedding("one two three", 4)]));
    assert_eq!(answer["prompt_eval_count"], 3);
    let body = json!({"model": "short-embed", "input": ["fits here", "one two three four"], "truncate": false});
    assert_eq!(post_embed(&fake, body).await, (400, json!({"error": "the input length exceeds the context length"})));
    let body = json!({"model": "short-embed", "input": ["one two three"], "truncate": false});
    assert_eq!(post_embed(&fake, body).await.0, 200);
}

#[tokio::test]
async fn embed_refusals_are_ollamas() {
    let fake = embedding_fake().await;
    let refused = |message: &str| (400, json!({"error": message}));
    let cases = [
        (json!({"input": ["x"]}), refused("model is required")),
        (json!({"model": "nomic-embed-text", "input": ["x", 3]}), refused("invalid input type")),
        (json!({"model": "nomic-embed-text", "input": 3}), refused("invalid input type")),
        (
            json!({"model": "nomic-embed-text", "input": ["x"], "truncate": "no"}),
            refused("json: cannot unmarshal string into Go struct field EmbedRequest.truncate of type bool"),
        ),
        (
            json!({"model": "nomic-embed-text", "input": ["x"], "dimensions": "4"}),
            refused("json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int"),
        ),
        (json!({"model": "llama3.2", "input": ["x"]}), refused(r#""llama3.2" does not support embeddings"#)),
        (
            json!({"model": "missing", "input": ["x"]}),
            (404, json!({"error": r#"model "missing" not found, try pulling it first"#})),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(post_embed(&fake, body.clone()).await, expected, "{body}");
    }
    assert_eq!(fake.embed_requests().len(), 7, "refused requests are recorded too");

    fake.fail_next(1, 500, None);
    let body = json!({"model": "nomic-embed-text", "input": ["x"]});
    assert_eq!(post_embed(&fake, body.clone()).await.0, 500);
    fake.set_busy(true);
    assert_eq!(post_embed(&fake, body).await.0, 503);
}

#[tokio::test]
async fn an_embedding_model_cannot_chat_and_shows_its_length() {
    let fake = embedding_fake().await;
    let response = post_chat(&fake, chat_body("nomic-embed-text", "hi")).await;
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer, json!({"error": r#""nomic-embed-text" does not support chat"#}));

    let show = |model: &str| {
        let request = client().post(format!("{}/api/show", fake.base_url())).json(&json!({"model": model}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let shown = show("nomic-embed-text").await;
    assert_eq!(shown["capabilities"], json!(["embedding"]));
    assert_eq!(shown["model_info"]["nomic-bert.embedding_length"], 8);
    // A chat model lists its hidden size there, as in Ollama.
    assert_eq!(show("llama3.2").await["model_info"]["llama.embedding_length"], 3072);
}
