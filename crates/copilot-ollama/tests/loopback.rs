//! End-to-end checks of `OllamaProvider` against a scripted HTTP/1.1 server on loopback: what goes
//! on the wire, how streamed bodies (split, cut, failing) come out, and connection handling.

use std::time::Duration;

use copilot_fakes::scripted::{ScriptedServer, Step};
use copilot_ollama::{KeepAlive, OllamaConfig, OllamaProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, FinishReason, GenerationOptions, Message, Provider, ProviderError, Role, Usage,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The scripted server, with the Ollama provider a test points at it.
struct Server(ScriptedServer);

impl Server {
    /// Serves one script per request, in order, over however many connections the client opens.
    async fn start(scripts: Vec<Vec<Step>>) -> Server {
        Server(ScriptedServer::start(scripts).await)
    }

    fn base_url(&self) -> String {
        self.0.base_url()
    }

    fn connections(&self) -> usize {
        self.0.connections_accepted()
    }

    fn provider(&self) -> OllamaProvider {
        OllamaProvider::new(OllamaConfig {
            base_url: format!("{}/", self.base_url()),
            keep_alive: Some(KeepAlive::Forever),
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// Request `index`'s method, path and JSON body (`null` when it had none).
    fn request(&self, index: usize) -> (String, String, Value) {
        let request = self.0.requests()[index].clone();
        let body = if request.body.is_empty() { Value::Null } else { serde_json::from_slice(&request.body).unwrap() };
        (request.method, request.path, body)
    }
}

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";

fn write(text: &str) -> Step {
    Step::text(text)
}

fn chunk(data: &str) -> Step {
    Step::chunk(data)
}

fn end_of_body() -> Step {
    Step::end_of_body()
}

fn json_response(status: &str, extra_headers: &str, body: &str) -> Step {
    write(&format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn delta_line(text: &str) -> String {
    json!({"model": "llama3.2", "created_at": "2026-01-05T10:00:00Z",
           "message": {"role": "assistant", "content": text}, "done": false})
    .to_string()
        + "\n"
}

const DONE_LINE: &str = concat!(
    r#"{"model":"llama3.2:latest","created_at":"x","message":{"role":"assistant","content":""},"done":true,"#,
    r#""done_reason":"length","total_duration":2500000000,"prompt_eval_count":26,"eval_count":2,"eval_duration":2000}"#,
    "\n"
);

fn streamed_reply(deltas: &[&str]) -> Vec<Step> {
    let mut steps = vec![write(STREAM_HEAD)];
    steps.extend(deltas.iter().map(|d| chunk(&delta_line(d))));
    // Like Go's net/http, which ends the chunked body in a write of its own after the handler returns.
    steps.extend([chunk(DONE_LINE), Step::Pause(Duration::from_millis(5)), end_of_body()]);
    steps
}

fn chat_request() -> ChatRequest {
    ChatRequest {
        model: "llama3.2".into(),
        messages: vec![Message::text(Role::User, "Say hi")],
        options: GenerationOptions { temperature: Some(0.5), max_tokens: Some(2), ..Default::default() },
        trace_context: vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())],
        ..Default::default()
    }
}

async fn collect(provider: &OllamaProvider) -> Vec<Result<ChatEvent, ProviderError>> {
    provider.chat(chat_request()).await.unwrap().collect().await
}

#[tokio::test]
async fn chat_posts_the_request_and_streams_deltas_then_done() {
    // Lines cut mid-way and several lines in one write, as TCP is free to deliver them.
    let body = format!("{}{}{DONE_LINE}", delta_line("Hel"), delta_line("lo"));
    let (a, rest) = body.split_at(30);
    let (b, c) = rest.split_at(rest.len() - 40);
    let script = vec![
        write(STREAM_HEAD),
        chunk(a),
        Step::Pause(Duration::from_millis(20)),
        chunk(b),
        Step::Pause(Duration::from_millis(20)),
        chunk(c),
        end_of_body(),
    ];
    let server = Server::start(vec![script]).await;
    let events = collect(&server.provider()).await;

    let [Ok(ChatEvent::Delta(first)), Ok(ChatEvent::Delta(second)), Ok(ChatEvent::Done(done))] = &events[..] else {
        panic!("unexpected events: {events:?}")
    };
    assert_eq!((first.as_str(), second.as_str()), ("Hel", "lo"));
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.model, "llama3.2:latest");
    assert_eq!(done.usage, Usage { input_tokens: 26, output_tokens: 2, ..Default::default() });
    assert_eq!(done.timings.total, Some(Duration::from_millis(2500)));
    assert_eq!(done.timings.generation, Some(Duration::from_micros(2)));
    assert_eq!(done.timings.load, None);

    let (method, path, body) = server.request(0);
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/chat"));
    assert_eq!(
        body,
        json!({
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "Say hi"}],
            "stream": true,
            "options": {"temperature": 0.5, "num_predict": 2},
            "keep_alive": -1,
        })
    );
}

#[tokio::test]
async fn consecutive_chats_reuse_one_connection() {
    let server = Server::start(vec![streamed_reply(&["a"]), streamed_reply(&["b"])]).await;
    let provider = server.provider();
    for _ in 0..2 {
        let events = collect(&provider).await;
        assert!(matches!(events.last(), Some(Ok(ChatEvent::Done(_)))), "{events:?}");
        // The end of the body is read after `Done` has been handed out, off the caller's path.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_chat_sent_right_after_the_last_one_ended_reuses_its_connection() {
    // The end of the body in the same write as the final line: the connection is free at `Done`,
    // but hyper hands it back to the pool from a task of its own, which has not run yet when the
    // next request is sent without a pause (as a client's next call does under load).
    let reply = |delta: &str| {
        let last = format!("{:x}\r\n{DONE_LINE}\r\n0\r\n\r\n", DONE_LINE.len());
        vec![write(STREAM_HEAD), chunk(&delta_line(delta)), write(&last)]
    };
    let server = Server::start(vec![reply("a"), reply("b"), reply("c")]).await;
    let provider = server.provider();
    for _ in 0..3 {
        let events = collect(&provider).await;
        assert!(matches!(events.last(), Some(Ok(ChatEvent::Done(_)))), "{events:?}");
    }
    assert_eq!(server.connections(), 1, "each request waited for the connection to be back");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let (closed_tx, closed_rx) = oneshot::channel();
    let script = vec![write(STREAM_HEAD), chunk(&delta_line("one")), Step::AwaitClientClose(Some(closed_tx))];
    let server = Server::start(vec![script]).await;
    let provider = server.provider();

    let mut stream = provider.chat(chat_request()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ChatEvent::Delta("one".into()));
    drop(stream);

    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the upstream connection stayed open after the stream was dropped")
        .unwrap();
}

#[tokio::test]
async fn refusals_surface_from_chat_itself() {
    let server = Server::start(vec![
        vec![json_response("404 Not Found", "", r#"{"error":"model \"llama3.2\" not found, try pulling it first"}"#)],
        vec![json_response(
            "503 Service Unavailable",
            "Retry-After: 7\r\n",
            r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#,
        )],
        vec![write("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nbad options")],
        vec![json_response("500 Internal Server Error", "", r#"{"error":"model runner has unexpectedly stopped"}"#)],
    ])
    .await;
    let provider = server.provider();
    let refusal = async || provider.chat(chat_request()).await.err().expect("chat was accepted");

    assert_eq!(refusal().await, ProviderError::ModelNotFound { model: "llama3.2".into() });
    assert_eq!(
        refusal().await,
        ProviderError::Overloaded {
            message: "server busy, please try again.  maximum pending requests exceeded".into(),
            retry_after: Some(Duration::from_secs(7)),
        }
    );
    assert_eq!(refusal().await, ProviderError::InvalidRequest("bad options".into()));
    assert_eq!(
        refusal().await,
        ProviderError::Upstream { status: 500, message: "model runner has unexpectedly stopped".into() }
    );
}

#[tokio::test]
async fn an_error_line_ends_the_stream_with_a_mid_stream_error() {
    let script = vec![
        write(STREAM_HEAD),
        chunk(&delta_line("partial")),
        chunk("{\"error\":\"out of memory\"}\n"),
        end_of_body(),
    ];
    let server = Server::start(vec![script]).await;
    let events = collect(&server.provider()).await;
    assert_eq!(events, [Ok(ChatEvent::Delta("partial".into())), Err(ProviderError::MidStream("out of memory".into()))]);
}

#[tokio::test]
async fn a_body_that_ends_without_done_is_interrupted() {
    let script = vec![write(STREAM_HEAD), chunk(&delta_line("partial")), end_of_body()];
    let server = Server::start(vec![script]).await;
    let events = collect(&server.provider()).await;
    let [Ok(ChatEvent::Delta(_)), Err(ProviderError::Interrupted(message))] = &events[..] else {
        panic!("unexpected events: {events:?}")
    };
    assert!(message.contains("final chunk"), "{message}");
}

#[tokio::test]
async fn a_dropped_connection_is_interrupted() {
    // Half a line, then the server goes away without ending the chunked body.
    let script = vec![write(STREAM_HEAD), chunk(&delta_line("partial")), chunk("{\"model\":\"ll"), Step::Close];
    let server = Server::start(vec![script]).await;
    let events = collect(&server.provider()).await;
    let [Ok(ChatEvent::Delta(_)), Err(ProviderError::Interrupted(message))] = &events[..] else {
        panic!("unexpected events: {events:?}")
    };
    assert!(message.contains("connection lost") && message.contains(&server.base_url()), "{message}");
}

#[tokio::test]
async fn a_final_line_without_newline_still_completes() {
    let script = vec![write(STREAM_HEAD), chunk(&delta_line("hi")), chunk(DONE_LINE.trim_end()), end_of_body()];
    let server = Server::start(vec![script]).await;
    let events = collect(&server.provider()).await;
    assert!(matches!(&events[..], [Ok(ChatEvent::Delta(_)), Ok(ChatEvent::Done(_))]), "{events:?}");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_and_names_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let provider = OllamaProvider::new(OllamaConfig {
        base_url: base_url.clone(),
        keep_alive: None,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();

    let Err(ProviderError::Unreachable(message)) = provider.chat(chat_request()).await else {
        panic!("expected Unreachable")
    };
    assert!(message.contains(&base_url), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(matches!(provider.health().await, Err(ProviderError::Unreachable(_))));
}

#[tokio::test]
async fn models_and_health() {
    let tags = json!({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189,
        "details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}]});
    let show = json!({"details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
        "capabilities": ["completion", "tools"]});
    let server = Server::start(vec![
        vec![json_response("200 OK", "", &tags.to_string())],
        vec![json_response("200 OK", "", &show.to_string())],
        vec![json_response("404 Not Found", "", r#"{"error":"model 'nope' not found"}"#)],
        vec![json_response("200 OK", "", r#"{"version":"0.12.3"}"#)],
        vec![json_response("200 OK", "", "Ollama is running")],
    ])
    .await;
    let provider = server.provider();

    let models = provider.list_models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!((models[0].name.as_str(), models[0].size_bytes), ("llama3.2:latest", Some(2019393189)));
    assert_eq!(server.request(0).1, "/api/tags");

    let info = provider.describe_model("llama3.2").await.unwrap();
    assert_eq!(info.context_length, Some(131072));
    assert_eq!(info.capabilities, ["completion", "tools", "json_object", "json_schema"]);
    let (method, path, body) = server.request(1);
    assert_eq!((method.as_str(), path.as_str(), body), ("POST", "/api/show", json!({"model": "llama3.2"})));

    assert_eq!(provider.describe_model("nope").await, Err(ProviderError::ModelNotFound { model: "nope".into() }));
    assert_eq!(provider.health().await.unwrap().version.as_deref(), Some("0.12.3"));
    assert_eq!(server.request(3).1, "/api/version");
    // Something that answers 200 but is not Ollama's API.
    let Err(ProviderError::Protocol(message)) = provider.health().await else { panic!("expected Protocol") };
    assert!(message.contains("Ollama is running"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Embeddings: what Ollama's answer may be, and what it must not do to the adapter

fn embed_request(inputs: &[&str]) -> copilot_provider::EmbedRequest {
    copilot_provider::EmbedRequest {
        model: "nomic-embed-text".into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        truncate: false,
        trace_context: vec![("traceparent".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into())],
        ..Default::default()
    }
}

#[tokio::test]
async fn embed_posts_one_request_and_passes_the_vectors_on_as_they_are() {
    // Not one vector per input, and of different lengths: that is the server's to check.
    let answer = json!({"model": "nomic-embed-text", "embeddings": [[3.0, 4.0], [1.0]], "prompt_eval_count": 5});
    let server = Server::start(vec![vec![json_response("200 OK", "", &answer.to_string())]]).await;
    let embeddings = server.provider().embed(embed_request(&["a", "b", "c"])).await.unwrap();
    assert_eq!(embeddings.vectors, vec![vec![3.0, 4.0], vec![1.0]]);
    assert_eq!(embeddings.input_tokens, Some(5));
    let (method, path, body) = server.request(0);
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/embed"));
    assert_eq!(
        body,
        json!({"model": "nomic-embed-text", "input": ["a", "b", "c"], "truncate": false, "keep_alive": -1})
    );
}

#[tokio::test]
async fn malformed_embed_answers_are_protocol_errors() {
    let server = Server::start(vec![
        vec![json_response("200 OK", "", r#"{"embeddings":[[1.0,"x"]]}"#)],
        vec![json_response("200 OK", "", "<html>proxy</html>")],
        vec![json_response("200 OK", "", r#"{"embeddings":[[1e999]]}"#)],
        vec![json_response("200 OK", "", r#"{"embeddings":[[1e39]]}"#)],
    ])
    .await;
    let provider = server.provider();
    for _ in 0..2 {
        let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
        let ProviderError::Protocol(message) = &err else { panic!("{err:?}") };
        assert!(message.contains("unexpected embeddings from Ollama"), "{message}");
    }
    // A number too large for any float is malformed; one too large for an f32 only is infinite
    // (which the server's check refuses) or, where serde_json parses floats exactly (its
    // float_roundtrip feature, which a test dependency turns on in workspace builds), malformed:
    // never a panic.
    assert!(matches!(provider.embed(embed_request(&["a"])).await, Err(ProviderError::Protocol(_))));
    match provider.embed(embed_request(&["a"])).await {
        Ok(embeddings) => assert!(embeddings.vectors[0][0].is_infinite(), "{embeddings:?}"),
        Err(err) => assert!(matches!(err, ProviderError::Protocol(_)), "{err:?}"),
    }
}

#[tokio::test]
async fn an_embed_answer_past_its_bound_is_refused() {
    // One input's bound is 1 MiB plus 384 KiB: a declared length past it is not read at all.
    let declared = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1500000\r\n\r\n";
    let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let padding = " ".repeat(1_500_000);
    let server = Server::start(vec![
        vec![write(declared), Step::Close],
        vec![write(chunked), chunk("{\"embeddings\":[[1.0]]"), chunk(&padding), chunk("}"), end_of_body()],
    ])
    .await;
    let provider = server.provider();
    for _ in 0..2 {
        let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
        let ProviderError::Protocol(message) = &err else { panic!("{err:?}") };
        assert!(message.contains("larger than 1441792 bytes"), "{message}");
    }
}

#[tokio::test]
async fn an_embed_answer_cut_short_is_interrupted() {
    let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let server = Server::start(vec![vec![write(chunked), chunk("{\"embeddings\":[[1.0,"), Step::Close]]).await;
    let err = server.provider().embed(embed_request(&["a"])).await.unwrap_err();
    let ProviderError::Interrupted(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("connection lost") && message.contains(&server.base_url()), "{message}");
}

#[tokio::test]
async fn embed_refusals_use_the_chat_rules() {
    let server = Server::start(vec![
        vec![json_response("400 Bad Request", "", r#"{"error":"\"llama3.2\" does not support embeddings"}"#)],
        vec![json_response("400 Bad Request", "", r#"{"error":"the input length exceeds the context length"}"#)],
        vec![json_response(
            "404 Not Found",
            "",
            r#"{"error":"model \"nomic-embed-text\" not found, try pulling it first"}"#,
        )],
        vec![json_response("503 Service Unavailable", "Retry-After: 2\r\n", r#"{"error":"busy"}"#)],
    ])
    .await;
    let provider = server.provider();
    let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Unsupported { feature: copilot_provider::Feature::Embeddings, .. }),
        "{err:?}"
    );
    let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
    assert_eq!(err, ProviderError::InvalidRequest("the input length exceeds the context length".into()));
    let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
    assert_eq!(err, ProviderError::ModelNotFound { model: "nomic-embed-text".into() });
    let err = provider.embed(embed_request(&["a"])).await.unwrap_err();
    assert_eq!(err, ProviderError::Overloaded { message: "busy".into(), retry_after: Some(Duration::from_secs(2)) });
}
