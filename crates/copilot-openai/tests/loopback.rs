//! `OpenAiProvider` against hand-written HTTP/1.1 responses on loopback, for the byte-level
//! cases a fake server does not produce: events split anywhere, CRLF framing, a non-streamed
//! answer to a streamed request, resets, and the rarer deviations of compatible servers.

use std::time::Duration;

use copilot_fakes::scripted::{ScriptedServer, Step};
use copilot_openai::{OpenAiConfig, OpenAiProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, Completion, FinishReason, GenerationOptions, Message, Provider, ProviderError, Role, Usage,
};
use futures::StreamExt;

/// Serves one scripted response to the first request on the first connection.
async fn serve(script: Vec<Step>) -> String {
    format!("{}/v1", ScriptedServer::once(script).await.base_url())
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn delta(content: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
        serde_json::to_string(content).unwrap()
    )
}

fn finish(reason: &str) -> String {
    format!(
        "data: {{\"model\":\"m-1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
    )
}

fn provider(base_url: &str) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        base_url: base_url.to_owned(),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![Message::text(Role::User, "hi")],
        options: GenerationOptions::default(),
        ..Default::default()
    }
}

async fn run(script: Vec<Step>) -> (Vec<String>, Result<Completion, ProviderError>) {
    let base_url = serve(script).await;
    let provider = provider(&base_url);
    let mut stream = match provider.chat(request()).await {
        Ok(stream) => stream,
        Err(err) => return (Vec::new(), Err(err)),
    };
    let mut deltas = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(ChatEvent::Delta(text)) => deltas.push(text),
                Ok(ChatEvent::Done(completion)) => return Ok(*completion),
                Ok(other) => panic!("a text stream produced {other:?}"),
                Err(err) => return Err(err),
            }
        }
        panic!("stream ended without Done or an error");
    })
    .await
    .expect("the stream never ended");
    assert!(stream.next().await.is_none(), "items after the last one");
    (deltas, outcome)
}

#[tokio::test]
async fn events_split_across_http_chunks_and_crlf_framing() {
    let events = format!("{}{}{}data: [DONE]\n\n", delta("Hé"), delta("llo"), finish("stop")).replace('\n', "\r\n");
    let bytes = events.as_bytes();
    // Cut into 7-byte HTTP chunks: through the JSON, the multi-byte 'é', and between \r and \n.
    let mut script = vec![Step::text(SSE_HEAD)];
    for piece in bytes.chunks(7) {
        script.push(Step::Write(format!("{:x}\r\n", piece.len()).into_bytes()));
        script.push(Step::Write(piece.to_vec()));
        script.push(Step::text("\r\n"));
        script.push(Step::Pause(Duration::from_millis(1)));
    }
    script.push(Step::end_of_body());
    let (deltas, completion) = run(script).await;
    assert_eq!(deltas.concat(), "Héllo");
    let completion = completion.unwrap();
    assert_eq!(completion.model, "m-1");
    assert_eq!(completion.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn a_connection_reset_after_the_finish_reason_still_completes() {
    let (deltas, completion) = run(vec![
        Step::text(SSE_HEAD),
        Step::chunk(&delta("ok")),
        Step::chunk(&finish("length")),
        Step::Pause(Duration::from_millis(20)),
        Step::Reset,
    ])
    .await;
    assert_eq!(deltas, ["ok"]);
    assert_eq!(completion.unwrap().finish_reason, FinishReason::Length);
}

#[tokio::test]
async fn a_connection_reset_before_the_finish_reason_is_interrupted() {
    let (deltas, result) =
        run(vec![Step::text(SSE_HEAD), Step::chunk(&delta("ok")), Step::Pause(Duration::from_millis(20)), Step::Reset])
            .await;
    assert_eq!(deltas, ["ok"]);
    let Err(ProviderError::Interrupted(message)) = result else { panic!("{result:?}") };
    assert!(message.contains("mid-stream"), "{message}");
}

#[tokio::test]
async fn done_alone_completes_and_the_last_usage_wins() {
    // vLLM's continuous usage: on every chunk, growing; and [DONE] without a finish_reason.
    let with_usage = |content: &str, n: u32| {
        format!(
            "data: {{\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            4 + n
        )
    };
    let (deltas, completion) = run(vec![
        Step::text(SSE_HEAD),
        Step::chunk(&with_usage("a", 1)),
        Step::chunk(&with_usage("b", 2)),
        Step::chunk("data: [DONE]\n\n"),
        Step::end_of_body(),
    ])
    .await;
    assert_eq!(deltas, ["a", "b"]);
    let completion = completion.unwrap();
    assert_eq!(completion.usage, Usage { input_tokens: 4, output_tokens: 2, ..Default::default() });
    assert_eq!(completion.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn text_on_the_finish_chunk_is_kept() {
    let last = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" end\"},\"finish_reason\":\"stop\"}]}\n\n";
    let (deltas, completion) =
        run(vec![Step::text(SSE_HEAD), Step::chunk(&delta("the")), Step::chunk(last), Step::end_of_body()]).await;
    assert_eq!(deltas, ["the", " end"]);
    completion.unwrap();
}

#[tokio::test]
async fn an_aborted_generation_is_a_mid_stream_failure() {
    let (deltas, result) =
        run(vec![Step::text(SSE_HEAD), Step::chunk(&delta("par")), Step::chunk(&finish("abort")), Step::end_of_body()])
            .await;
    assert_eq!(deltas, ["par"]);
    let Err(ProviderError::MidStream(message)) = result else { panic!("{result:?}") };
    assert!(message.contains("abort"), "{message}");
}

#[tokio::test]
async fn a_named_error_event_fails_the_stream() {
    let error = "event: error\ndata: {\"message\":\"overloaded\",\"type\":\"overloaded_error\"}\n\n";
    let (_, result) =
        run(vec![Step::text(SSE_HEAD), Step::chunk(&delta("a")), Step::chunk(error), Step::end_of_body()]).await;
    assert_eq!(result, Err(ProviderError::MidStream("overloaded".into())));
}

#[tokio::test]
async fn a_non_json_event_is_a_protocol_error() {
    let (_, result) =
        run(vec![Step::text(SSE_HEAD), Step::chunk("data: <html>oops</html>\n\n"), Step::end_of_body()]).await;
    assert!(matches!(result, Err(ProviderError::Protocol(_))), "{result:?}");
}

#[tokio::test]
async fn a_non_streamed_answer_is_accepted() {
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m-2024","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let (deltas, completion) = run(vec![Step::text(&head), Step::text(body)]).await;
    assert_eq!(deltas, ["Hello!"]);
    let completion = completion.unwrap();
    assert_eq!(completion.model, "m-2024");
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.usage, Usage { input_tokens: 3, output_tokens: 2, ..Default::default() });
}

#[tokio::test]
async fn lm_studio_string_errors_and_retry_after_ms() {
    let body =
        r#"{"error":"No models loaded. Please load a model in the developer page or use the `lms load` command."}"#;
    let head =
        format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let (_, result) = run(vec![Step::text(&head), Step::text(body)]).await;
    assert_eq!(result, Err(ProviderError::ModelNotFound { model: "m".into() }));

    let body =
        r#"{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nretry-after-ms: 1250\r\nretry-after: 2\r\nx-request-id: req_1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (_, result) = run(vec![Step::text(&head), Step::text(body)]).await;
    assert_eq!(
        result,
        Err(ProviderError::RateLimited {
            message: "Rate limit reached".into(),
            retry_after: Some(Duration::from_millis(1250))
        })
    );
}
