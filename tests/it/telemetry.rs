//! Traces, metrics and logs, checked against an in-process OTLP collector: the span tree of a call
//! (server span → attempt spans), its GenAI attributes and usage, parenting on the caller's
//! `traceparent`, the `traceparent` the upstream received, attempt spans for a retry and a
//! fallback, the metrics' names, units and values, and that a dead or slow collector changes nothing
//! for the caller.

use std::time::Duration;

use copilot::proto::v1::{ChatRequest, GenerationOptions, Message, Role};
use copilot_fakes::otlp::{AttrValue, FakeCollector, MetricData, SpanKind, SpanStatus};
use copilot_fakes::{FakeAnthropic, FakeModel, FakeOllama, FakeToolCall, Piece, Reply};
use futures::StreamExt;

use crate::harness::{Copilot, within};
use crate::requests::prompt;

const LIMIT: Duration = Duration::from_secs(20);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn otel_env(collector: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.to_string()),
        ("OTEL_SERVICE_NAME", "copilot-under-test".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
    ]
}

fn ollama_config(url: &str, extra: &str) -> String {
    format!("[providers.ollama]\nbase_url = \"{url}\"\nretries = 0\n{extra}\n")
}

fn chat_with_traceparent(model: &str) -> tonic::Request<ChatRequest> {
    let mut request = tonic::Request::new(ChatRequest {
        model: model.into(),
        messages: vec![Message {
            role: Role::User as i32,
            content: "tell me a secret recipe".into(),
            ..Default::default()
        }],
        options: Some(GenerationOptions { temperature: Some(0.5), max_tokens: Some(50), ..Default::default() }),
        ..Default::default()
    });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    request
}

async fn drain(stream: tonic::Streaming<copilot::proto::v1::ChatResponse>) {
    let messages: Vec<_> = within(LIMIT, stream.collect::<Vec<_>>()).await;
    for message in messages {
        message.unwrap();
    }
}

#[tokio::test]
async fn a_chat_call_is_a_server_span_with_an_attempt_span_joined_to_the_callers_trace() {
    let collector = FakeCollector::start().await;
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(vec!["Salt".into(), " and".into(), " love".into()])));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &otel_env(&collector.endpoint())).await;
    let mut client = copilot.client().await;

    let response = within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap();
    let returned_trace =
        response.metadata().get("x-trace-id").expect("x-trace-id metadata").to_str().unwrap().to_string();
    assert_eq!(returned_trace, TRACE_ID, "the response names the caller's trace");
    drain(response.into_inner()).await;

    let server = collector
        .wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/Chat")
        .await
        .expect("a server span for the call");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.trace_id, TRACE_ID);
    assert_eq!(server.parent_span_id, CALLER_SPAN, "parented on the caller's span");
    assert_eq!(server.str_attr("rpc.system"), Some("grpc"));
    assert_eq!(server.str_attr("rpc.service"), Some("copilot.v1.Copilot"));
    assert_eq!(server.str_attr("rpc.method"), Some("Chat"));
    assert_eq!(server.int_attr("rpc.grpc.status_code"), Some(0));
    assert_eq!(server.resource.get("service.name"), Some(&AttrValue::Str("copilot-under-test".into())));

    let attempt = collector.wait_for_span(LIMIT, |s| s.name == "chat m").await.expect("an attempt span");
    assert_eq!(attempt.kind, SpanKind::Client);
    assert_eq!(attempt.trace_id, TRACE_ID);
    assert_eq!(attempt.parent_span_id, server.span_id, "the attempt is a child of the server span");
    assert_eq!(attempt.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(attempt.str_attr("gen_ai.provider.name"), Some("ollama"));
    assert_eq!(attempt.str_attr("gen_ai.request.model"), Some("m"));
    assert_eq!(attempt.str_attr("gen_ai.response.model"), Some("m"));
    assert_eq!(attempt.float_attr("gen_ai.request.temperature"), Some(0.5));
    assert_eq!(attempt.int_attr("gen_ai.request.max_tokens"), Some(50));
    assert_eq!(attempt.int_attr("gen_ai.usage.output_tokens"), Some(3));
    assert!(attempt.int_attr("gen_ai.usage.input_tokens").unwrap() > 0);
    assert_eq!(
        attempt.attr("gen_ai.response.finish_reasons"),
        Some(&AttrValue::Array(vec![AttrValue::Str("stop".into())]))
    );
    assert_eq!(attempt.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(attempt.int_attr("server.port"), Some(i64::from(fake.addr().port())));
    assert!(attempt.float_attr("copilot.time_to_first_token").unwrap() > 0.0);
    assert!(attempt.float_attr("copilot.output_tokens_per_second").unwrap() > 0.0);
    assert_eq!(attempt.str_attr("copilot.attempt.kind"), Some("first"));
    assert_eq!(attempt.status, SpanStatus::Unset);
    // Prompts and completions are not recorded unless the operator opts in.
    for span in collector.spans() {
        assert!(span.attr("gen_ai.input.messages").is_none() && span.attr("gen_ai.output.messages").is_none());
        assert!(!format!("{:?}", span.attributes).contains("secret recipe"));
    }
}

#[tokio::test]
async fn the_upstream_receives_the_attempts_traceparent() {
    let collector = FakeCollector::start().await;
    let fake = FakeAnthropic::start().await.with_api_key("k-123456789");
    fake.add_model(FakeModel::new("claude-x"));
    let config = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"TEST_KEY\"\n",
        fake.base_url()
    );
    let mut env = otel_env(&collector.endpoint());
    env.push(("TEST_KEY", "k-123456789".into()));
    let copilot = Copilot::start_with(&config, &env).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("claude/claude-x"))).await.unwrap().into_inner()).await;

    let attempt = collector.wait_for_span(LIMIT, |s| s.name == "chat claude-x").await.unwrap();
    let headers = fake.request_headers().pop().expect("a request reached the fake");
    let traceparent = headers.get("traceparent").expect("traceparent sent upstream").to_str().unwrap().to_string();
    assert_eq!(traceparent, format!("00-{TRACE_ID}-{}-01", attempt.span_id), "the upstream continues the attempt");
    assert_eq!(attempt.str_attr("gen_ai.provider.name"), Some("anthropic"));
    assert!(attempt.str_attr("gen_ai.response.id").is_some_and(|id| id.starts_with("msg_")), "{attempt:?}");
}

#[tokio::test]
async fn retries_and_fallbacks_are_separate_attempt_spans_with_their_reason() {
    let collector = FakeCollector::start().await;
    let flaky = FakeOllama::start().await;
    flaky.add_model(FakeModel::new("m"));
    flaky.fail_next(2, 503, None);
    let good = FakeOllama::start().await;
    good.add_model(FakeModel::new("m"));
    let config = format!(
        "[providers.flaky]\nkind = \"ollama\"\nbase_url = \"{}\"\nretries = 1\nretry_backoff = \"10ms\"\n\
         [providers.good]\nkind = \"ollama\"\nbase_url = \"{}\"\n[routing.aliases]\nsmart = [\"flaky/m\", \"good/m\"]\n",
        flaky.base_url(),
        good.base_url()
    );
    let copilot = Copilot::start_with(&config, &otel_env(&collector.endpoint())).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("smart"))).await.unwrap().into_inner()).await;

    let server = collector.wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/Chat").await.unwrap();
    collector.wait_for_span(LIMIT, |s| s.str_attr("copilot.attempt.kind") == Some("fallback")).await.unwrap();
    let mut attempts: Vec<_> = collector.spans().into_iter().filter(|s| s.name == "chat m").collect();
    attempts.sort_by_key(|s| s.start_unix_nanos);
    let summary: Vec<_> = attempts
        .iter()
        .map(|s| {
            (
                s.str_attr("copilot.provider.instance").unwrap().to_string(),
                s.str_attr("copilot.attempt.kind").unwrap().to_string(),
                s.str_attr("copilot.attempt.reason").map(String::from),
                s.str_attr("error.type").map(String::from),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("flaky".into(), "first".into(), None, Some("overloaded".into())),
            ("flaky".into(), "retry".into(), Some("overloaded".into()), Some("overloaded".into())),
            ("good".into(), "fallback".into(), Some("overloaded".into()), None),
        ]
    );
    assert!(attempts.iter().all(|a| a.parent_span_id == server.span_id));
    assert!(matches!(attempts[0].status, SpanStatus::Error(_)));
}

#[tokio::test]
async fn metrics_follow_the_conventions() {
    let collector = FakeCollector::start().await;
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(vec!["a".into(), " b".into(), " c".into()])));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &otel_env(&collector.endpoint())).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;
    let status = client.generate(prompt("ollama/missing", "x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let usage = collector.wait_for_metric("gen_ai.client.token.usage", LIMIT).await.expect("token usage");
    assert_eq!(usage.unit, "{token}");
    let MetricData::Histogram(points) = &usage.data else { panic!("token usage is a histogram") };
    let output = points
        .iter()
        .find(|p| p.attributes.get("gen_ai.token.type") == Some(&AttrValue::Str("output".into())))
        .expect("an output point");
    assert_eq!((output.count, output.sum), (1, 3.0));
    assert_eq!(output.bounds[..4], [1.0, 4.0, 16.0, 64.0]);
    assert_eq!(output.attributes.get("gen_ai.provider.name"), Some(&AttrValue::Str("ollama".into())));
    assert!(points.iter().any(|p| p.attributes.get("gen_ai.token.type") == Some(&AttrValue::Str("input".into()))));

    for (name, first_bound) in [
        ("gen_ai.client.operation.duration", 0.01),
        ("gen_ai.client.operation.time_to_first_chunk", 0.01),
        ("gen_ai.client.operation.time_per_output_chunk", 0.01),
        ("rpc.server.call.duration", 0.005),
    ] {
        let metric = collector.wait_for_metric(name, LIMIT).await.unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(metric.unit, "s", "{name}");
        let MetricData::Histogram(points) = &metric.data else { panic!("{name} is a histogram") };
        assert_eq!(points[0].bounds[0], first_bound, "{name}");
        assert!(points.iter().map(|p| p.count).sum::<u64>() >= 1, "{name}");
    }
    let per_chunk = collector.wait_for_metric("gen_ai.client.operation.time_per_output_chunk", LIMIT).await.unwrap();
    let MetricData::Histogram(points) = &per_chunk.data else { unreachable!() };
    assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 2, "one point per chunk after the first");

    let errors = collector.wait_for_metric("copilot.rpc.server.errors", LIMIT).await.expect("errors by status code");
    let MetricData::Sum { points, monotonic } = &errors.data else { panic!("errors is a counter") };
    assert!(monotonic);
    let not_found = points.iter().find(|p| p.attributes.get("rpc.grpc.status_code") == Some(&AttrValue::Int(5)));
    assert_eq!(not_found.map(|p| p.value), Some(1.0));
    assert!(collector.wait_for_metric("copilot.rpc.server.active_requests", LIMIT).await.is_some());
}

#[tokio::test]
async fn a_dead_or_slow_collector_does_not_affect_calls() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let copilot =
        Copilot::start_with(&ollama_config(&fake.base_url(), ""), &otel_env(&format!("http://127.0.0.1:{port}"))).await;
    let mut client = copilot.client().await;
    for _ in 0..20 {
        drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;
    }

    let collector = FakeCollector::start().await;
    collector.set_delay(Duration::from_secs(60));
    // An export timeout beyond LIMIT: if exporting ever ran on a call's path, that call would hang
    // past LIMIT and fail the test, rather than merely be slow.
    let mut env = otel_env(&collector.endpoint());
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "120000".into()));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
    let mut client = copilot.client().await;
    for _ in 0..20 {
        drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.export_calls() >= 1, "exports were attempted while calls went on");
}

#[tokio::test]
async fn prometheus_metrics_and_trace_ids_in_logs() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let collector = FakeCollector::start().await;
    let mut env = otel_env(&collector.endpoint());
    env.push(("COPILOT_SERVER__METRICS_ADDR", "127.0.0.1:0".into()));
    env.push(("COPILOT_LOG_FORMAT", "json".into()));
    env.push(("RUST_LOG", "debug".into()));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;

    let logs = copilot.logs();
    let page = copilot.metrics_page().await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for family in
        ["gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage", "rpc_server_call_duration_seconds"]
    {
        assert!(page.contains(family), "{family} missing from /metrics:\n{page}");
    }

    let traced: Vec<_> = logs.lines().filter(|line| line.contains(&format!("\"trace_id\":\"{TRACE_ID}\""))).collect();
    assert!(!traced.is_empty(), "no log line carries the call's trace id:\n{logs}");
}

#[tokio::test]
async fn otlp_over_http_protobuf_is_honoured() {
    // A bare HTTP endpoint that records the paths OTLP/HTTP posts to.
    let (paths_tx, mut paths) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    let app = axum::Router::new().fallback(move |uri: http::Uri, body: axum::body::Bytes| {
        let paths_tx = paths_tx.clone();
        async move {
            let _ = paths_tx.send((uri.path().to_string(), body.len()));
            (http::StatusCode::OK, [(http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let mut env = otel_env(&endpoint);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;

    let mut seen = Vec::new();
    while !seen.iter().any(|(path, size): &(String, usize)| path == "/v1/traces" && *size > 0) {
        seen.push(within(LIMIT, paths.recv()).await.expect("the exporter posted nothing"));
    }
}

#[tokio::test]
async fn prompts_and_completions_are_recorded_only_when_the_operator_opts_in() {
    let collector = FakeCollector::start().await;
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(vec!["Flour".into(), " first".into()])));
    let mut env = otel_env(&collector.endpoint());
    env.push(("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true".into()));
    let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;

    let attempt = collector.wait_for_span(LIMIT, |s| s.name == "chat m").await.unwrap();
    let input: serde_json::Value = serde_json::from_str(attempt.str_attr("gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["content"], "tell me a secret recipe");
    let output: serde_json::Value = serde_json::from_str(attempt.str_attr("gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "Flour first");
    assert_eq!(output[0]["finish_reason"], "stop");
}

/// A tool loop's turn on the attempt span: `tool_calls` as the finish reason always; the tool
/// definitions, the calls with their arguments and the results only when content capture is on.
#[tokio::test]
async fn tool_calls_follow_the_conventions_and_their_content_is_opt_in() {
    for capture in [false, true] {
        let collector = FakeCollector::start().await;
        let fake = FakeOllama::start().await;
        let call = FakeToolCall::new("call_1", "get_weather", r#"{"city":"Paris","id":9007199254740993}"#);
        let mut model = FakeModel::new("m").with_reply(Reply::Turn(vec![Piece::ToolCalls(vec![call])]));
        model.capabilities.push("tools".into());
        fake.add_model(model);
        let mut env = otel_env(&collector.endpoint());
        if capture {
            env.push(("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true".into()));
        }
        let copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
        let mut client = copilot.client().await;
        let mut request = chat_with_traceparent("ollama/m");
        let schema = r#"{"type":"object","properties":{"city":{"type":"string"}}}"#;
        request.get_mut().tools = vec![copilot::proto::v1::Tool {
            name: "get_weather".into(),
            parameters_json_schema: schema.into(),
            ..Default::default()
        }];
        drain(within(LIMIT, client.chat(request)).await.unwrap().into_inner()).await;

        let attempt = collector.wait_for_span(LIMIT, |s| s.name == "chat m").await.unwrap();
        assert_eq!(
            attempt.attr("gen_ai.response.finish_reasons"),
            Some(&AttrValue::Array(vec![AttrValue::Str("tool_calls".into())]))
        );
        let attributes = format!("{:?}", attempt.attributes);
        if !capture {
            assert!(attempt.attr("gen_ai.tool.definitions").is_none(), "{attributes}");
            assert!(!attributes.contains("Paris") && !attributes.contains("city"), "content leaked: {attributes}");
            continue;
        }
        let tools: serde_json::Value =
            serde_json::from_str(attempt.str_attr("gen_ai.tool.definitions").unwrap()).unwrap();
        assert_eq!(tools[0]["name"], "get_weather");
        assert_eq!(tools[0]["parameters"]["properties"]["city"]["type"], "string");
        let output: serde_json::Value =
            serde_json::from_str(attempt.str_attr("gen_ai.output.messages").unwrap()).unwrap();
        let part = &output[0]["parts"][0];
        assert_eq!(
            (part["type"].as_str(), part["id"].as_str(), part["name"].as_str()),
            (Some("tool_call"), Some("call_1"), Some("get_weather"))
        );
        assert_eq!(part["arguments"]["city"], "Paris");
        assert_eq!(output[0]["finish_reason"], "tool_calls");
    }
}

#[tokio::test]
async fn buffered_spans_are_flushed_on_graceful_shutdown() {
    let collector = FakeCollector::start().await;
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let mut env = otel_env(&collector.endpoint());
    // Far longer than the test: only the shutdown flush can deliver the spans.
    env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".into()));
    let mut copilot = Copilot::start_with(&ollama_config(&fake.base_url(), ""), &env).await;
    let mut client = copilot.client().await;
    drain(within(LIMIT, client.chat(chat_with_traceparent("ollama/m"))).await.unwrap().into_inner()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(collector.spans().is_empty(), "spans were exported before the shutdown");

    copilot.signal("TERM");
    assert!(copilot.wait_for_exit(LIMIT).await.success());
    let server = collector.wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/Chat").await;
    assert!(server.is_some(), "the shutdown did not flush the buffered spans");
}
