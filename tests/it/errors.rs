//! Every failure ends with a precise status and a message a person can act on.

use std::time::Duration;

use copilot::error::MAX_MESSAGE_BYTES;
use copilot::proto::v1::{self as pb, ChatRequest, GenerationOptions, GetModelRequest, ListModelsRequest, Role};
use copilot::validate::MAX_MODEL_NAME_BYTES;
use copilot_fakes::{Behaviour, FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Copilot, OLLAMA_ONLY, RawBody, raw_call, raw_call_to, raw_connection, within};
use crate::requests::{chat, prompt, reason};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn invalid_requests_are_rejected_with_the_fields_named() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let status = client.generate(prompt("ollama/m", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("prompt"), "{}", status.message());
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "prompt");

    let status = client.chat(ChatRequest { model: "ollama/m".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("messages"), "{}", status.message());

    for (options, field) in [
        (GenerationOptions { temperature: Some(-1.0), ..Default::default() }, "options.temperature"),
        (GenerationOptions { top_p: Some(1.5), ..Default::default() }, "options.top_p"),
        (GenerationOptions { max_tokens: Some(0), ..Default::default() }, "options.max_tokens"),
    ] {
        let mut request = prompt("ollama/m", "hi");
        request.options = Some(options);
        let status = client.generate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, field);
    }

    let mut request = chat("ollama/m", "hello");
    request.messages[0].role = Role::Unspecified as i32;
    let status = client.chat(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("messages[0].role"), "{}", status.message());

    // Nothing invalid reached the upstream.
    assert!(fake.chat_requests().is_empty());
}

#[tokio::test]
async fn no_model_and_no_default_is_invalid_argument() {
    let fake = FakeOllama::start().await;
    let copilot = Copilot::start(&fake, &[]).await;
    let status = copilot.client().await.generate(prompt("", "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("default model"), "{}", status.message());
}

#[tokio::test]
async fn unknown_model_is_not_found() {
    let fake = FakeOllama::start().await;
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let status = client.generate(prompt("ollama/nope:7b", "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope:7b") && status.message().contains("ListModels"), "{}", status.message());
    assert_eq!(reason(&status), "MODEL_NOT_FOUND");

    let status = client.chat(chat("nope:7b", "hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn upstream_down_is_unavailable() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let copilot = Copilot::start_with(OLLAMA_ONLY, &[("OLLAMA_HOST", format!("127.0.0.1:{port}"))]).await;
    let mut client = copilot.client().await;

    let status = within(LIMIT, client.generate(prompt("ollama/llama3.2", "hi"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&format!("127.0.0.1:{port}")), "{}", status.message());
    assert_eq!(reason(&status), "UPSTREAM_UNREACHABLE");

    let status = within(LIMIT, client.list_models(ListModelsRequest {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // The operator was told at start.
    assert!(copilot.logs().contains("does not answer"), "{}", copilot.logs());
}

#[tokio::test]
async fn upstream_refusals_map_to_retryable_codes() {
    let fake = FakeOllama::start().await;
    fake.add_model(
        FakeModel::new("limited")
            .with_behaviour(Behaviour::HttpError { status: 429, message: "too many requests".into() }),
    );
    fake.add_model(
        FakeModel::new("crashing").with_behaviour(Behaviour::HttpError {
            status: 500,
            message: "model runner has unexpectedly stopped".into(),
        }),
    );
    fake.add_model(FakeModel::new("fine"));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let status = client.generate(prompt("ollama/limited", "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "UPSTREAM_RATE_LIMITED");

    let status = client.generate(prompt("ollama/crashing", "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("model runner has unexpectedly stopped"), "{}", status.message());

    // Ollama's queue is full: 503 → UNAVAILABLE, which clients may retry.
    fake.set_busy(true);
    let status = client.generate(prompt("ollama/fine", "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "UPSTREAM_OVERLOADED");
    fake.set_busy(false);
    client.generate(prompt("ollama/fine", "hi")).await.unwrap();
}

/// Collects a Chat stream: the content received, then the status it ended with (OK = None).
async fn drain(
    client: &mut copilot::proto::v1::copilot_client::CopilotClient<tonic::transport::Channel>,
    model: &str,
) -> (String, Option<tonic::Status>) {
    let mut stream = within(LIMIT, client.chat(chat(model, "hello"))).await.unwrap().into_inner();
    let mut text = String::new();
    loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(chunk)) => text.push_str(&chunk.content),
            Some(Err(status)) => return (text, Some(status)),
            None => return (text, None),
        }
    }
}

#[tokio::test]
async fn a_broken_stream_never_ends_as_a_silent_success() {
    let fake = FakeOllama::start().await;
    let words = Reply::Tokens(["a", " b", " c", " d", " e"].map(String::from).to_vec());
    fake.add_model(FakeModel::new("midstream").with_reply(words.clone()).with_behaviour(Behaviour::ErrorAfter {
        tokens: 2,
        message: "an error was encountered while running the model: CUDA out of memory".into(),
    }));
    fake.add_model(
        FakeModel::new("nodone").with_reply(words.clone()).with_behaviour(Behaviour::EndWithoutDone { tokens: 3 }),
    );
    fake.add_model(
        FakeModel::new("dropped").with_reply(words).with_behaviour(Behaviour::DropConnectionAfter { tokens: 2 }),
    );
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let (text, status) = drain(&mut client, "ollama/midstream").await;
    assert_eq!(text, "a b");
    let status = status.expect("the stream must end with an error status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("CUDA out of memory"), "{}", status.message());
    assert_eq!(reason(&status), "UPSTREAM_FAILED_MID_STREAM");

    let (text, status) = drain(&mut client, "ollama/nodone").await;
    assert_eq!(text, "a b c");
    let status = status.expect("a stream without done must end with an error status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "UPSTREAM_STREAM_INTERRUPTED");

    let (text, status) = drain(&mut client, "ollama/dropped").await;
    assert_eq!(text, "a b");
    let status = status.expect("a dropped connection must end with an error status");
    assert_eq!(status.code(), Code::Unavailable);

    // Generate is the same stream collected: it fails too rather than returning partial text.
    let status = client.generate(prompt("ollama/midstream", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn an_over_long_model_name_is_refused_without_being_echoed() {
    let fake = FakeOllama::start().await;
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;
    // 10 KB: echoed whole (twice, in the message and ErrorInfo) it made trailers no client reads.
    let long = format!("ollama/{}", "x".repeat(10 * 1024));

    let statuses = [
        client.generate(prompt(&long, "hi")).await.unwrap_err(),
        client.chat(chat(&long, "hello")).await.unwrap_err(),
        client.get_model(GetModelRequest { model: long.clone() }).await.unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().len() < 300, "{} bytes: {}", status.message().len(), status.message());
        assert!(status.message().contains(&format!("at most {MAX_MODEL_NAME_BYTES} bytes")), "{}", status.message());
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "model");
        assert!(violations[0].description.len() < 300, "{}", violations[0].description);
    }
    // Nothing reached the upstream.
    assert!(fake.chat_requests().is_empty());

    // A name at the limit is routed: the fake does not have it.
    let at_limit = format!("ollama/{}", "y".repeat(MAX_MODEL_NAME_BYTES - "ollama/".len()));
    let status = client.generate(prompt(&at_limit, "hi")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert_eq!(reason(&status), "MODEL_NOT_FOUND");
    let status = client.get_model(GetModelRequest { model: at_limit }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
}

#[tokio::test]
async fn a_long_upstream_error_reaches_the_client_cut() {
    let long = format!("model runner failed: {}", "é".repeat(10 * 1024));
    let fake = FakeOllama::start().await;
    fake.add_model(
        FakeModel::new("verbose").with_behaviour(Behaviour::HttpError { status: 500, message: long.clone() }),
    );
    fake.add_model(
        FakeModel::new("verbose-midstream")
            .with_reply(Reply::Tokens(vec!["a".into(), " b".into()]))
            .with_behaviour(Behaviour::ErrorAfter { tokens: 1, message: long }),
    );
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    let status = within(LIMIT, client.generate(prompt("ollama/verbose", "hi"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(reason(&status), "UPSTREAM_ERROR");
    assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{} bytes", status.message().len());
    assert!(status.message().contains("model runner failed: éé") && status.message().ends_with('…'));

    let (text, status) = drain(&mut client, "ollama/verbose-midstream").await;
    assert_eq!(text, "a");
    let status = status.expect("the stream must end with an error status");
    assert_eq!(reason(&status), "UPSTREAM_FAILED_MID_STREAM");
    assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{} bytes", status.message().len());
    assert!(status.message().contains("model runner failed"), "{}", status.message());
}

/// Paths are routed by their service name (`grpc_routes.rs`): a service or method the server does
/// not have is UNIMPLEMENTED, on a connection that goes on serving the API and health.
#[tokio::test]
async fn a_path_naming_no_service_or_method_is_unimplemented() {
    use prost::Message as _;

    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let copilot = Copilot::start(&fake, &[]).await;
    let connection = raw_connection(&copilot).await;
    let hi = prompt("ollama/m", "hi").encode_to_vec();
    for path in ["/copilot.v9.Copilot/Generate", "/copilot.v1.Copilot/Summarize", "/copilot.v1.Copilot/", "/Generate"] {
        let (status, _) = raw_call_to(&connection, path, &[], RawBody::frame(0, &hi)).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {}", status.message());
    }
    assert!(fake.chat_requests().is_empty());

    let (status, answer) = raw_call(&connection, "Generate", &[], RawBody::frame(0, &hi)).await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    let answer = pb::GenerateResponse::decode(&answer[5..]).unwrap();
    assert!(!answer.text.is_empty());
    let check = tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec();
    let (status, answer) =
        raw_call_to(&connection, "/grpc.health.v1.Health/Check", &[], RawBody::frame(0, &check)).await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    let health = tonic_health::pb::HealthCheckResponse::decode(&answer[5..]).unwrap();
    assert_eq!(health.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

#[tokio::test]
async fn malformed_request_messages_are_the_callers_error_and_the_connection_lives_on() {
    use prost::Message as _;

    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let copilot = Copilot::start(&fake, &[]).await;
    let connection = raw_connection(&copilot).await;

    // Bytes that are not a message (field 0 and a truncated varint are never valid protobuf).
    let (status, _) =
        raw_call(&connection, "Generate", &[], RawBody::frame(0, &[0x00, 0xff, 0xff, 0xff, 0x9e, 0x31])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("MALFORMED_REQUEST", "copilot.v1"));
    assert!(status.message().contains("copilot.v1.GenerateRequest"), "{}", status.message());

    // A ChatRequest whose messages[0].content is not UTF-8.
    let mut bytes = chat("ollama/m", "hello").encode_to_vec();
    let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
    bytes[at] = 0xff;
    let (status, _) = raw_call(&connection, "Chat", &[], RawBody::frame(0, &bytes)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert_eq!(reason(&status), "MALFORMED_REQUEST");
    assert!(
        status.message().contains("copilot.v1.ChatRequest") && status.message().contains("UTF-8"),
        "{}",
        status.message()
    );
    assert!(fake.chat_requests().is_empty());

    // A body that ends inside its message or holds none, or two messages for a unary method (which
    // tonic answered INTERNAL, or read half of).
    let hi = prompt("ollama/m", "hi").encode_to_vec();
    let whole = RawBody::frame(0, &hi).into_bytes();
    for (body, problem) in [
        (whole[..whole.len() - 1].to_vec(), "ended inside a message"),
        (whole[..3].to_vec(), "frame header"),
        (Vec::new(), "held no message"),
        ([&whole[..], &whole[..]].concat(), "more than one message"),
    ] {
        let (status, _) = raw_call(&connection, "Generate", &[], RawBody::raw(body)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{problem}: {}", status.message());
        assert_eq!(reason(&status), "MALFORMED_REQUEST");
        assert!(status.message().contains(problem), "{}", status.message());
    }

    // The compressed flag without a grpc-encoding: INTERNAL, as the gRPC compression spec says.
    let (status, _) = raw_call(&connection, "Generate", &[], RawBody::frame(1, &hi)).await;
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert_eq!(reason(&status), "MALFORMED_REQUEST");
    assert!(status.message().contains("grpc-encoding"), "{}", status.message());
    // An encoding the server does not support: UNIMPLEMENTED, listing the ones it accepts.
    let (status, _) = raw_call(&connection, "Generate", &[("grpc-encoding", "br")], RawBody::frame(1, &hi)).await;
    assert_eq!(status.code(), Code::Unimplemented, "{}", status.message());
    assert_eq!(status.metadata().get("grpc-accept-encoding").unwrap(), "identity");
    assert_eq!(reason(&status), "ENCODING_UNSUPPORTED");
    assert!(status.message().contains("'br'") && status.message().contains("uncompressed"), "{}", status.message());
    assert!(fake.chat_requests().is_empty());

    // The same connection still serves a well-formed call.
    let (status, reply) = raw_call(&connection, "Generate", &[], RawBody::frame(0, &hi)).await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    assert!(reply.len() > 5, "a reply message");
    assert_eq!(fake.chat_requests().len(), 1);
}
