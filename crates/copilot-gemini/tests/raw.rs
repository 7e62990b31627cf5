//! Wire cases the fake does not produce, served byte for byte by a scripted loopback server:
//! `RetryInfo` without `Retry-After`, events split at awkward byte boundaries, a body left open
//! after the final chunk, an error inside a `data:` event, and a JSON (non-SSE) 200.

use std::time::{Duration, Instant};

use copilot_fakes::scripted::{ScriptedServer, Step};
use copilot_gemini::{GeminiAuth, GeminiConfig, GeminiProvider};
use copilot_provider::{
    ChatEvent, ChatRequest, FinishReason, GenerationOptions, Message, Provider, ProviderError, Role, Secret, Usage,
};
use futures::StreamExt;

const KEY: &str = "AIzaSyRaw-test-key-987654321";

/// Serves one scripted response to the first request, then closes the connection.
async fn serve(mut script: Vec<Step>) -> GeminiProvider {
    script.push(Step::Close);
    let base_url = ScriptedServer::once(script).await.base_url();
    GeminiProvider::new(GeminiConfig { base_url, auth: GeminiAuth::ApiKey(Secret::new(KEY)), ..Default::default() })
        .unwrap()
}

fn head(status: &str, content_type: &str, extra: &str) -> Step {
    Step::Write(
        format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{extra}connection: close\r\n\r\n").into_bytes(),
    )
}

fn json_error(status: &str, body: &str) -> Vec<Step> {
    vec![Step::Write(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )]
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![Message::text(Role::User, "hi")],
        options: GenerationOptions::default(),
        ..Default::default()
    }
}

#[tokio::test]
async fn retry_info_alone_gives_the_delay() {
    let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"15.5s"}]}}"#;
    let provider = serve(json_error("429 Too Many Requests", body)).await;
    let err = provider.chat(request()).await.err().unwrap();
    assert_eq!(
        err,
        ProviderError::RateLimited {
            message: "RESOURCE_EXHAUSTED: quota".into(),
            retry_after: Some(Duration::from_millis(15_500))
        }
    );
}

#[tokio::test]
async fn the_longer_of_retry_after_and_retry_info_wins() {
    let body = r#"{"error":{"code":503,"message":"busy","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}}"#;
    let mut script = json_error("503 Service Unavailable", body);
    let Step::Write(bytes) = &mut script[0] else { unreachable!() };
    *bytes = String::from_utf8(bytes.clone())
        .unwrap()
        .replacen("connection: close", "retry-after: 9\r\nconnection: close", 1)
        .into_bytes();
    let provider = serve(script).await;
    let err = provider.chat(request()).await.err().unwrap();
    assert!(matches!(err, ProviderError::Overloaded { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(9)));
}

#[tokio::test]
async fn googles_invalid_key_answer_is_unauthorized() {
    let body = r#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {
          "service": "generativelanguage.googleapis.com"
        }
      }
    ]
  }
}
"#;
    let provider = serve(json_error("400 Bad Request", body)).await;
    let err = provider.list_models().await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Unauthorized("INVALID_ARGUMENT: API key not valid. Please pass a valid API key.".into())
    );
}

#[tokio::test]
async fn events_split_anywhere_decode_the_same() {
    let events = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"thinking…\",\"thought\": true},{\"text\": \"Hé\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"totalTokenCount\": 4},\"modelVersion\": \"gemini-2.5-flash-001\"}\r\n\r\n",
        ": a comment line\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"llo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 2,\"thoughtsTokenCount\": 10,\"totalTokenCount\": 16},\"modelVersion\": \"gemini-2.5-flash-001\"}\r\n\r\n",
    )
    .as_bytes();
    // Cut inside "é" (two bytes), between \r and \n, and every 7 bytes elsewhere.
    let mut cuts: Vec<usize> = (7..events.len()).step_by(7).collect();
    cuts.push(events.windows(2).position(|w| w == "é".as_bytes()).unwrap() + 1);
    cuts.push(events.windows(2).position(|w| w == b"\r\n").unwrap() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut script = vec![head("200 OK", "text/event-stream", "")];
    let mut start = 0;
    for cut in cuts.into_iter().chain([events.len()]) {
        script.push(Step::Write(events[start..cut].to_vec()));
        script.push(Step::Pause(Duration::from_millis(1)));
        start = cut;
    }
    let provider = serve(script).await;
    let mut stream = provider.chat(request()).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.unwrap());
    }
    let text: String =
        items.iter().filter_map(|e| if let ChatEvent::Delta(t) = e { Some(t.as_str()) } else { None }).collect();
    assert_eq!(text, "Héllo");
    let Some(ChatEvent::Done(done)) = items.last() else { panic!("{items:?}") };
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.model, "gemini-2.5-flash-001");
    assert_eq!(
        done.usage,
        Usage { input_tokens: 4, output_tokens: 12, reasoning_tokens: Some(10), ..Default::default() }
    );
    // The thought part is thinking, apart from the text.
    assert_eq!(items[0], ChatEvent::Thinking(copilot_provider::ThinkingDelta::Text("thinking…".into())));
}

#[tokio::test]
async fn a_body_left_open_after_the_finish_still_ends_the_stream() {
    let provider = serve(vec![
        head("200 OK", "text/event-stream", ""),
        Step::Write(b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"done\"}]},\"finishReason\": \"MAX_TOKENS\"}]}\r\n\r\n".to_vec()),
        // The body stays open, never ending, for this long.
        Step::Pause(Duration::from_secs(30)),
    ])
    .await;
    let started = Instant::now();
    let mut stream = provider.chat(request()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ChatEvent::Delta("done".into()));
    let Some(Ok(ChatEvent::Done(done))) = stream.next().await else { panic!("no Done") };
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert!(stream.next().await.is_none());
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?} for the body to end", started.elapsed());
}

#[tokio::test]
async fn an_error_inside_a_data_event_is_mid_stream() {
    let provider = serve(vec![
        head("200 OK", "text/event-stream", ""),
        Step::Write(b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\r\n\r\n".to_vec()),
        Step::Write(
            format!("data: {{\"error\": {{\"code\": 500, \"message\": \"bad key {KEY} seen\", \"status\": \"INTERNAL\"}}}}\r\n\r\n")
                .into_bytes(),
        ),
    ])
    .await;
    let mut stream = provider.chat(request()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ChatEvent::Delta("a".into()));
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err, ProviderError::MidStream("INTERNAL: bad key *** seen".into()));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_json_array_instead_of_sse_is_a_protocol_error() {
    let provider = serve(vec![
        head("200 OK", "application/json; charset=UTF-8", ""),
        Step::Write(b"[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}]}}]}\n]".to_vec()),
    ])
    .await;
    let err = provider.chat(request()).await.err().unwrap();
    assert!(
        matches!(&err, ProviderError::Protocol(m) if m.contains("application/json") && m.contains("candidates")),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_in_a_data_event_is_a_protocol_error() {
    let provider =
        serve(vec![head("200 OK", "text/event-stream", ""), Step::Write(b"data: <html>oops</html>\n\n".to_vec())])
            .await;
    let mut stream = provider.chat(request()).await.unwrap();
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(&err, ProviderError::Protocol(m) if m.contains("<html>oops</html>")), "{err:?}");
}
