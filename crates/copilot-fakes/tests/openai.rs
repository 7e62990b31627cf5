//! Checks the fake OpenAI-compatible server over plain HTTP: the exact SSE framing and chunk
//! shapes, each flavour's deviations, error bodies, and model listings.

use std::time::Duration;

use copilot_fakes::openai::REASONING_TEXT;
use copilot_fakes::{Behaviour, FakeModel, FakeOpenAi, FakeToolCall, Flavour, Piece, Reply};
use serde_json::{Value, json};

fn tokens(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("build an HTTP client")
}

async fn fake_with(model: FakeModel) -> FakeOpenAi {
    let fake = FakeOpenAi::start().await;
    fake.add_model(model);
    fake
}

async fn post_chat(fake: &FakeOpenAi, body: &Value) -> reqwest::Response {
    client().post(format!("{}/chat/completions", fake.base_url())).json(body).send().await.expect("send")
}

fn stream_body(model: &str, include_usage: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
        "stream": true,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// An SSE body, raw: each event's lines as sent, split at blank lines.
async fn read_events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.expect("read the body");
    assert!(text.is_empty() || text.ends_with("\n\n"), "body does not end with a blank line: {text:?}");
    text.split("\n\n").filter(|e| !e.is_empty()).map(str::to_owned).collect()
}

/// The JSON of a `data: {json}` event.
fn data(event: &str) -> Value {
    let json = event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {event:?}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn openai_stream_is_chunks_then_usage_then_done() {
    let fake = fake_with(FakeModel::new("gpt-4o-mini-2024-07-18").with_reply(tokens(&["Hel", "lo!"]))).await;
    fake.add_alias("gpt-4o-mini", "gpt-4o-mini-2024-07-18");
    let response = post_chat(&fake, &stream_body("gpt-4o-mini", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(content_type(&response), "text/event-stream; charset=utf-8");
    assert!(response.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
    let events = read_events(response).await;
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(events[5], "data: [DONE]");

    let chunks: Vec<Value> = events[..5].iter().map(|e| data(e)).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert_eq!(chunk["model"], "gpt-4o-mini-2024-07-18", "the snapshot answers for the alias");
        assert_eq!(chunk["system_fingerprint"], "fp_560af6e559");
        assert_eq!(chunk["service_tier"], "default");
        assert!(chunk["obfuscation"].is_string());
    }
    for chunk in &chunks[..4] {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some(), "with include_usage every chunk has usage: null");
        assert_eq!(chunk["choices"][0]["index"], 0);
        assert_eq!(chunk["choices"][0]["logprobs"], Value::Null);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": "", "refusal": null}));
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "lo!"}));
    for chunk in &chunks[..3] {
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    let usage = &chunks[4]["usage"];
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(4), Some(2)));
    assert_eq!(usage["total_tokens"], 6);

    assert_eq!(fake.completed_streams(), 1);
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.chat_requests(), [stream_body("gpt-4o-mini", true)]);
}

#[tokio::test]
async fn without_include_usage_there_is_no_usage_at_all() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["a"]))).await;
    let events = read_events(post_chat(&fake, &stream_body("m", false)).await).await;
    assert_eq!(events.len(), 4, "role, content, finish, [DONE]: {events:#?}");
    for event in &events[..3] {
        assert!(data(event).get("usage").is_none(), "{event}");
    }

    // NoUsage never sends it, even when asked.
    fake.set_flavour(Flavour::NoUsage);
    let events = read_events(post_chat(&fake, &stream_body("m", true)).await).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    assert!(events[..3].iter().all(|e| data(e)["usage"].is_null()));
    assert_eq!(events[3], "data: [DONE]");
}

#[tokio::test]
async fn llama_cpp_puts_usage_and_timings_on_the_finish_chunk() {
    let fake = fake_with(FakeModel::new("qwen.gguf").with_reply(tokens(&["a", "b"]))).await;
    fake.set_flavour(Flavour::LlamaCpp);
    let events = read_events(post_chat(&fake, &stream_body("whatever", true)).await).await;
    // role, reasoning, a, b, finish (+usage), [DONE]
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(data(&events[0])["choices"][0]["delta"], json!({"role": "assistant", "content": null}));
    assert_eq!(data(&events[1])["choices"][0]["delta"]["reasoning_content"], REASONING_TEXT);
    assert_eq!(data(&events[2])["model"], "qwen.gguf", "one model, whatever the request named");
    let finish = data(&events[4]);
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"]["completion_tokens"], 2);
    assert_eq!(finish["timings"]["predicted_n"], 2);
    assert!(finish["timings"]["predicted_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(events[5], "data: [DONE]");

    // Older builds: no [DONE], and a bare error line mid-stream.
    fake.set_flavour(Flavour::LlamaCppOldErrors);
    let events = read_events(post_chat(&fake, &stream_body("x", true)).await).await;
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(data(&events[4])["choices"][0]["finish_reason"], "stop");
    fake.add_model(
        FakeModel::new("qwen.gguf").with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "slot died".into() }),
    );
    let events = read_events(post_chat(&fake, &stream_body("x", true)).await).await;
    let last = events.last().unwrap();
    let error: Value = serde_json::from_str(last.strip_prefix("error: ").expect(last)).unwrap();
    assert_eq!(error, json!({"code": 500, "message": "slot died", "type": "server_error"}));
}

#[tokio::test]
async fn mid_stream_errors_per_flavour() {
    let fake = fake_with(
        FakeModel::new("m")
            .with_reply(tokens(&["a", "b"]))
            .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: "boom".into() }),
    )
    .await;
    let events = read_events(post_chat(&fake, &stream_body("m", true)).await).await;
    assert_eq!(
        data(events.last().unwrap()),
        json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})
    );

    // vLLM follows the error with [DONE].
    fake.set_flavour(Flavour::Vllm);
    let events = read_events(post_chat(&fake, &stream_body("m", true)).await).await;
    let n = events.len();
    assert_eq!(data(&events[n - 2])["error"]["message"], "boom");
    assert_eq!(data(&events[n - 2])["error"]["code"], 500);
    assert_eq!(events[n - 1], "data: [DONE]");
    assert_eq!(fake.completed_streams(), 2);
}

#[tokio::test]
async fn ollama_flavour() {
    let fake = fake_with(FakeModel::new("llama3.2:latest").with_reply(tokens(&["a"]))).await;
    fake.set_flavour(Flavour::Ollama);
    fake.set_api_key(Some("ignored"));
    let mut body = stream_body("llama3.2:latest", true);
    body["max_completion_tokens"] = json!(1); // ignored by Ollama
    let events = read_events(post_chat(&fake, &body).await).await;
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| data(e)).collect();
    assert!(chunks.iter().all(|c| c["system_fingerprint"] == "fp_ollama"));
    assert_eq!(chunks[1]["choices"][0]["delta"]["reasoning"], REASONING_TEXT);
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"role": "assistant", "content": "a"}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));

    let response = post_chat(&fake, &stream_body("nope", true)).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error,
        json!({"error": {"message": "model \"nope\" not found, try pulling it first", "type": "not_found_error", "param": null, "code": null}})
    );
}

#[tokio::test]
async fn the_token_limit_ends_with_length() {
    let fake = fake_with(FakeModel::new("m").with_reply(Reply::Endless)).await;
    let mut body = stream_body("m", true);
    body["max_completion_tokens"] = json!(2);
    let events = read_events(post_chat(&fake, &body).await).await;
    let finish = data(&events[events.len() - 3]);
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(data(&events[events.len() - 2])["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn a_non_streamed_request_gets_one_completion() {
    let fake = fake_with(FakeModel::new("m")).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]});
    let response = post_chat(&fake, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(content_type(&response), "application/json");
    let object: Value = response.json().await.unwrap();
    assert_eq!(object["object"], "chat.completion");
    assert_eq!(object["choices"][0]["message"]["content"], "You said: hello there");
    assert_eq!(object["choices"][0]["finish_reason"], "stop");
    assert_eq!(object["usage"]["prompt_tokens"], 2);
    assert_eq!(object["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn api_keys_are_checked_with_openais_bodies() {
    let fake = fake_with(FakeModel::new("m")).await;
    fake.set_api_key(Some("sk-abcdefghijklmnopqrstuvwxyz"));
    let url = format!("{}/chat/completions", fake.base_url());
    let body = stream_body("m", true);

    let response = client().post(&url).bearer_auth("sk-abcdefXXXXXXXXXXXX1234").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error,
        json!({"error": {
            "message": "Incorrect API key provided: sk-ab****1234. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key",
        }})
    );

    let response = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().starts_with("You didn't provide an API key."));
    assert_eq!(error["error"]["code"], Value::Null);

    let response = client().post(&url).bearer_auth("sk-abcdefghijklmnopqrstuvwxyz").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let models = client().get(format!("{}/models", fake.base_url())).send().await.unwrap();
    assert_eq!(models.status(), 401);
}

#[tokio::test]
async fn a_proxy_that_echoes_the_key_quotes_it_at_the_offset_asked() {
    let fake = fake_with(FakeModel::new("m")).await;
    fake.set_echo_key(Some(480));
    let url = format!("{}/chat/completions", fake.base_url());
    let response = client().post(&url).bearer_auth("sk-echoed-0123456789").json(&stream_body("m", true)).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "req_sk-echoed-0123456789");
    assert_eq!(content_type(&response), "text/plain; charset=utf-8");
    let text = response.text().await.unwrap();
    assert_eq!(text.find("sk-echoed-0123456789"), Some(480), "{text}");

    fake.set_echo_key(None);
    let response = client().post(&url).json(&stream_body("m", true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn requests_are_validated_like_openai() {
    let fake = fake_with(FakeModel::new("m")).await;
    let refused = |body: Value| {
        let fake = &fake;
        async move {
            let response = post_chat(fake, &body).await;
            let status = response.status().as_u16();
            let error: Value = response.json().await.unwrap();
            (status, error["error"].clone())
        }
    };

    let mut body = stream_body("m", true);
    body["top_k"] = json!(40);
    let (status, error) = refused(body).await;
    assert_eq!((status, error["message"].as_str()), (400, Some("Unrecognized request argument supplied: top_k")));

    let mut body = stream_body("m", true);
    body["stream"] = json!(false);
    let (status, error) = refused(body).await;
    assert_eq!(status, 400);
    assert_eq!(error["param"], "stream_options");

    let (status, error) = refused(json!({"model": "m", "messages": []})).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("empty_array")));

    let (status, error) = refused(stream_body("gpt-5", true)).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["message"], "The model `gpt-5` does not exist or you do not have access to it.");

    fake.set_require_max_completion_tokens(true);
    let mut body = stream_body("m", true);
    body["max_tokens"] = json!(5);
    let (status, error) = refused(body).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("unsupported_parameter")));

    fake.set_quota_exhausted(true);
    let (status, error) = refused(stream_body("m", true)).await;
    assert_eq!(
        (status, error["code"].as_str(), error["type"].as_str()),
        (429, Some("insufficient_quota"), Some("insufficient_quota"))
    );
}

#[tokio::test]
async fn scripted_rate_limits_carry_openais_headers() {
    let fake = fake_with(FakeModel::new("m")).await;
    fake.fail_next(1, 429, Some(3));
    let response = post_chat(&fake, &stream_body("m", true)).await;
    assert_eq!(response.status(), 429);
    let headers = response.headers();
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-reset-requests"], "3s");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(post_chat(&fake, &stream_body("m", true)).await.status(), 200);
}

#[tokio::test]
async fn models_are_listed_in_each_flavours_shape() {
    let fake = fake_with(FakeModel::new("llama-3.2-3b")).await;
    fake.add_alias("llama", "llama-3.2-3b");
    let url = format!("{}/models", fake.base_url());
    let list: Value = client().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "llama-3.2-3b");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "system");
    assert!(data[0]["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(data[1]["id"], "llama");

    let one: Value = client().get(format!("{url}/llama-3.2-3b")).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], "llama-3.2-3b");
    let missing = client().get(format!("{url}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    fake.set_flavour(Flavour::Vllm);
    let list: Value = client().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"][0]["owned_by"], "vllm");
    assert_eq!(list["data"][0]["max_model_len"], 131_072);

    fake.set_flavour(Flavour::LlamaCpp);
    let list: Value = client().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"][0]["meta"]["n_ctx_train"], 131_072);
    assert_eq!(list["data"][0]["meta"]["n_params"], 3_200_000_000u64);
}

#[tokio::test]
async fn unknown_routes_answer_as_each_server_does() {
    let fake = FakeOpenAi::start().await;
    let root = fake.base_url().trim_end_matches("/v1").to_owned();
    let get = |path: &str| client().get(format!("{root}{path}")).send();

    let response = get("/models").await.unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "Invalid URL (GET /models)");

    fake.set_flavour(Flavour::Vllm);
    assert_eq!(get("/models").await.unwrap().json::<Value>().await.unwrap(), json!({"detail": "Not Found"}));
    fake.set_flavour(Flavour::Ollama);
    assert_eq!(get("/models").await.unwrap().text().await.unwrap(), "404 page not found");
    // llama.cpp serves the API with and without /v1.
    fake.set_flavour(Flavour::LlamaCpp);
    assert_eq!(get("/models").await.unwrap().status(), 200);
    let error: Value = get("/nothing").await.unwrap().json().await.unwrap();
    assert_eq!(error["error"]["message"], "File Not Found");
}

#[tokio::test]
async fn a_client_that_goes_away_is_counted() {
    let fake =
        fake_with(FakeModel::new("m").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(2))).await;
    let mut response = post_chat(&fake, &stream_body("m", true)).await;
    response.chunk().await.unwrap();
    assert_eq!(fake.active_streams(), 1);
    drop(response);
    assert!(fake.wait_for_disconnects(1, Duration::from_secs(5)).await);
    assert_eq!(fake.active_streams(), 0);
    assert_eq!(fake.completed_streams(), 0);
}

fn tool_body(stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "stream": stream,
    })
}

fn two_calls() -> Reply {
    Reply::Turn(vec![Piece::ToolCalls(vec![
        FakeToolCall::new("call_a", "weather", r#"{"city":"Paris"}"#).split_at(&[4]),
        FakeToolCall::new("call_b", "weather", r#"{"city":"Oslo"}"#).split_at(&[4]),
    ])])
}

/// The `delta`s of a stream's chunks that have choices, and its last `finish_reason`.
async fn deltas(fake: &FakeOpenAi, body: &Value) -> (Vec<Value>, Value) {
    let events = read_events(post_chat(fake, body).await).await;
    let chunks: Vec<Value> = events.iter().filter(|e| *e != "data: [DONE]").map(|e| data(e)).collect();
    let with_choice: Vec<&Value> = chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).collect();
    let finish = with_choice.last().unwrap()["choices"][0]["finish_reason"].clone();
    (with_choice.iter().map(|c| c["choices"][0]["delta"].clone()).collect(), finish)
}

#[tokio::test]
async fn tool_calls_stream_as_each_server_streams_them() {
    let fake = fake_with(FakeModel::new("m").with_reply(two_calls())).await;
    let (openai, finish) = deltas(&fake, &tool_body(true)).await;
    assert_eq!(finish, "tool_calls");
    let call = |index: u32, id: &str| json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": "weather", "arguments": ""}}]});
    let args = |index: u32, text: &str| json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]});
    assert_eq!(
        openai[1..6],
        [call(0, "call_a"), args(0, "{\"ci"), args(0, "ty\":\"Paris\"}"), call(1, "call_b"), args(1, "{\"ci")]
    );

    // vLLM: no arguments on a first piece, and a call's last fragment in one chunk with the next
    // call's first piece.
    fake.set_flavour(Flavour::Vllm);
    let (vllm, finish) = deltas(&fake, &tool_body(true)).await;
    assert_eq!(finish, "tool_calls");
    let first =
        |index: u32, id: &str| json!({"index": index, "id": id, "type": "function", "function": {"name": "weather"}});
    assert_eq!(vllm[1], json!({"tool_calls": [first(0, "call_a")]}));
    assert_eq!(vllm[2], args(0, "{\"ci"));
    assert_eq!(
        vllm[3],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}, first(1, "call_b")]})
    );

    // Ollama: each call whole.
    fake.set_flavour(Flavour::Ollama);
    let (ollama, _) = deltas(&fake, &tool_body(true)).await;
    assert_eq!(ollama[1]["tool_calls"][0]["function"], json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"}));
    assert_eq!(ollama[2]["tool_calls"][0]["index"], 1);

    // Not streamed: one message, content null.
    fake.set_flavour(Flavour::OpenAi);
    let whole: Value = post_chat(&fake, &tool_body(false)).await.json().await.unwrap();
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["tool_calls"][1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(choice["message"]["tool_calls"][1]["id"], "call_b");
}

#[tokio::test]
async fn requests_are_checked_as_openai_checks_them() {
    let fake = fake_with(FakeModel::new("m").with_reply(tokens(&["ok"]))).await;
    let refused = async |body: Value| {
        let response = post_chat(&fake, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        error["error"]["message"].as_str().unwrap().to_owned()
    };
    let mut unanswered = tool_body(true);
    unanswered["messages"] = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "user", "content": "and?"},
    ]);
    assert!(refused(unanswered).await.contains("did not have response messages: c2"));
    let mut stray = tool_body(true);
    stray["messages"] =
        json!([{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "x", "content": "r"}]);
    assert!(refused(stray).await.contains("must be a response to a preceeding message with 'tool_calls'"));
    let mut object_arguments = tool_body(true);
    object_arguments["messages"] = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ]);
    assert!(refused(object_arguments).await.contains("expected a string"));
    let mut unknown_choice = tool_body(true);
    unknown_choice["tool_choice"] = json!({"type": "function", "function": {"name": "nope"}});
    assert!(refused(unknown_choice).await.contains("'nope'"));
    let mut bad_name = tool_body(true);
    bad_name["tools"][0]["function"]["name"] = json!("get weather");
    assert!(refused(bad_name).await.contains("does not match pattern"));
    let mut no_json = stream_body("m", false);
    no_json["response_format"] = json!({"type": "json_object"});
    assert!(refused(no_json).await.contains("'json'"));
    let mut assistant_image = stream_body("m", false);
    assistant_image["messages"] = json!([{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]);
    assert!(refused(assistant_image).await.contains("only allowed for messages with role 'user'"));
    let mut bad_effort = stream_body("m", false);
    bad_effort["reasoning_effort"] = json!("extreme");
    assert!(refused(bad_effort).await.contains("reasoning_effort"));
    assert!(fake.received_images().is_empty());
}
