//! Tests of the fake OpenTelemetry collector: the real OpenTelemetry SDK and its OTLP/gRPC exporter
//! send spans and metrics to it, and what it recorded must match what was sent. A raw gRPC client
//! covers what the SDK cannot send (byte and key-value-list attributes) and the slow-collector delay.
//!
//! The SDK's batch span processor and periodic metric reader export from threads of their own
//! that drive tonic through the test's runtime, so these tests use a multi-threaded runtime, and
//! the blocking `force_flush`/`shutdown` calls run on a blocking thread.

use std::time::{Duration, Instant};

use copilot_fakes::FakeCollector;
use copilot_fakes::otlp::{AttrValue, MetricData, SpanKind, SpanStatus};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, Context, KeyValue, Value, metrics::MeterProvider as _, trace};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

const WAIT: Duration = Duration::from_secs(10);

fn resource() -> Resource {
    // `builder_empty` skips the detectors that read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    Resource::builder_empty()
        .with_service_name("copilot-test")
        .with_attribute(KeyValue::new("deployment", "ci"))
        .build()
}

fn tracer_provider(collector: &FakeCollector) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        // Set explicitly, like the endpoint: the default reads OTEL_EXPORTER_OTLP_TIMEOUT.
        .with_timeout(WAIT)
        .build()
        .expect("build the OTLP span exporter");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Set explicitly: the default reads OTEL_TRACES_SAMPLER.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource())
        .build()
}

fn meter_provider(collector: &FakeCollector) -> SdkMeterProvider {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .with_timeout(WAIT)
        .build()
        .expect("build the OTLP metric exporter");
    SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource()).build()
}

/// Runs one of the SDK's blocking calls (flush, shutdown) off the runtime's worker threads, which
/// the exporter needs to make progress.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(call).await.expect("blocking SDK call")
}

fn is_lower_hex(id: &str, len: usize) -> bool {
    id.len() == len && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spans_exported_by_the_sdk() {
    let collector = FakeCollector::start().await;
    let provider = tracer_provider(&collector);
    let tracer = provider.tracer("copilot-tests");

    let server = tracer
        .span_builder("copilot.Chat")
        .with_kind(trace::SpanKind::Server)
        .with_attributes([
            KeyValue::new("rpc.method", "Chat"),
            KeyValue::new("copilot.tokens", 42_i64),
            KeyValue::new("copilot.temperature", 0.25),
            KeyValue::new("copilot.stream", true),
            KeyValue::new("copilot.stops", Value::Array(Array::String(vec!["\n".into(), "END".into()]))),
            KeyValue::new("copilot.seeds", Value::Array(Array::I64(vec![1, 2, 3]))),
        ])
        .start(&tracer);
    let server_ids = server.span_context().clone();
    let cx = Context::new().with_span(server);

    let mut client =
        tracer.span_builder("POST /api/chat").with_kind(trace::SpanKind::Client).start_with_context(&tracer, &cx);
    client.set_attribute(KeyValue::new("http.response.status_code", 500_i64));
    client.add_event("retry", vec![KeyValue::new("attempt", 2_i64)]);
    client.set_status(trace::Status::error("upstream said 500"));
    let client_ids = client.span_context().clone();
    client.end();
    cx.span().set_status(trace::Status::Ok);
    cx.span().end();

    let flushed = provider.clone();
    blocking(move || flushed.force_flush()).await.expect("flush spans");

    let server = collector.wait_for_span(WAIT, |span| span.name == "copilot.Chat").await.expect("server span");
    let client = collector.wait_for_span(WAIT, |span| span.name == "POST /api/chat").await.expect("client span");
    assert_eq!(collector.spans().len(), 2);

    // Ids: lowercase hex, the same ones the SDK generated, and the client is the server's child.
    assert!(is_lower_hex(&server.trace_id, 32), "{}", server.trace_id);
    assert!(is_lower_hex(&server.span_id, 16), "{}", server.span_id);
    assert_eq!(server.trace_id, server_ids.trace_id().to_string());
    assert_eq!(server.span_id, server_ids.span_id().to_string());
    assert_eq!(server.parent_span_id, "");
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.span_id, client_ids.span_id().to_string());
    assert_eq!(client.parent_span_id, server.span_id);

    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(server.status, SpanStatus::Ok);
    assert_eq!(client.status, SpanStatus::Error("upstream said 500".into()));

    // Attributes of each type.
    assert_eq!(server.str_attr("rpc.method"), Some("Chat"));
    assert_eq!(server.int_attr("copilot.tokens"), Some(42));
    assert_eq!(server.float_attr("copilot.tokens"), Some(42.0));
    assert_eq!(server.float_attr("copilot.temperature"), Some(0.25));
    assert_eq!(server.bool_attr("copilot.stream"), Some(true));
    assert_eq!(
        server.attr("copilot.stops"),
        Some(&AttrValue::Array(vec![AttrValue::Str("\n".into()), AttrValue::Str("END".into())]))
    );
    assert_eq!(
        server.attr("copilot.seeds"),
        Some(&AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Int(2), AttrValue::Int(3)]))
    );
    assert_eq!(server.str_attr("copilot.tokens"), None, "a typed getter does not convert");
    assert_eq!(client.int_attr("http.response.status_code"), Some(500));
    assert_eq!(client.events, vec![("retry".to_owned(), [("attempt".to_owned(), AttrValue::Int(2))].into())]);

    // Where the spans came from, and when.
    assert_eq!(server.resource.get("service.name"), Some(&AttrValue::Str("copilot-test".into())));
    assert_eq!(server.resource.get("deployment"), Some(&AttrValue::Str("ci".into())));
    assert_eq!(server.scope, "copilot-tests");
    assert!(server.start_unix_nanos > 0 && server.start_unix_nanos <= client.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos);

    assert!(collector.export_calls() >= 1);
    blocking(move || provider.shutdown()).await.expect("shut the tracer provider down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_metrics_exported_by_the_sdk() {
    let collector = FakeCollector::start().await;
    let provider = meter_provider(&collector);
    let meter = provider.meter("copilot-tests");

    let duration = meter
        .f64_histogram("copilot.request.duration")
        .with_unit("s")
        .with_description("Time to answer a request.")
        .with_boundaries(vec![0.1, 1.0, 10.0])
        .build();
    let model = [KeyValue::new("model", "llama3.2:3b")];
    for seconds in [0.05, 0.5, 0.7, 20.0] {
        duration.record(seconds, &model);
    }
    let requests = meter.u64_counter("copilot.requests").build();
    requests.add(1, &[KeyValue::new("outcome", "ok")]);
    requests.add(1, &[KeyValue::new("outcome", "ok")]);
    requests.add(3, &[KeyValue::new("outcome", "error")]);

    let flushed = provider.clone();
    blocking(move || flushed.force_flush()).await.expect("flush metrics");

    let histogram = collector.wait_for_metric("copilot.request.duration", WAIT).await.expect("histogram");
    assert_eq!(histogram.unit, "s");
    assert_eq!(histogram.description, "Time to answer a request.");
    assert_eq!(histogram.scope, "copilot-tests");
    assert_eq!(histogram.resource.get("service.name"), Some(&AttrValue::Str("copilot-test".into())));
    let MetricData::Histogram(points) = &histogram.data else { panic!("not a histogram: {histogram:?}") };
    assert_eq!(points.len(), 1);
    let point = &points[0];
    assert_eq!(point.attributes.get("model"), Some(&AttrValue::Str("llama3.2:3b".into())));
    assert_eq!(point.bounds, vec![0.1, 1.0, 10.0]);
    assert_eq!(point.bucket_counts, vec![1, 2, 0, 1]);
    assert_eq!(point.count, 4);
    assert!((point.sum - 21.25).abs() < 1e-9, "sum {}", point.sum);

    let counter = collector.wait_for_metric("copilot.requests", WAIT).await.expect("counter");
    let MetricData::Sum { points, monotonic } = &counter.data else { panic!("not a sum: {counter:?}") };
    assert!(monotonic);
    let value_for = |outcome: &str| {
        points
            .iter()
            .find(|point| point.attributes.get("outcome") == Some(&AttrValue::Str(outcome.into())))
            .map(|point| point.value)
    };
    assert_eq!(value_for("ok"), Some(2.0));
    assert_eq!(value_for("error"), Some(3.0));

    // A later export of the same metric is what `wait_for_metric` returns (cumulative, so 6 now).
    requests.add(1, &[KeyValue::new("outcome", "ok")]);
    let flushed = provider.clone();
    blocking(move || flushed.force_flush()).await.expect("flush metrics again");
    let counter = collector.wait_for_metric("copilot.requests", WAIT).await.expect("counter");
    let MetricData::Sum { points, .. } = &counter.data else { panic!("not a sum: {counter:?}") };
    let ok = points.iter().find(|point| point.attributes.get("outcome") == Some(&AttrValue::Str("ok".into())));
    assert_eq!(ok.map(|point| point.value), Some(3.0));
    assert!(collector.metrics().iter().filter(|metric| metric.name == "copilot.requests").count() >= 2);

    blocking(move || provider.shutdown()).await.expect("shut the meter provider down");
}

fn any(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn raw_kv(key: &str, value: Option<AnyValue>) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    opentelemetry_proto::tonic::common::v1::KeyValue { key: key.into(), value, ..Default::default() }
}

/// One span, named `name`, with the given attributes, in an export request.
fn raw_request(
    name: &str,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
        name: name.into(),
        attributes,
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: vec![span], ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

#[tokio::test]
async fn unpacks_values_the_sdk_never_sends() {
    let collector = FakeCollector::start().await;
    let mut client = TraceServiceClient::connect(collector.endpoint()).await.expect("connect");
    let attributes = vec![
        raw_kv("bytes", any(any_value::Value::BytesValue(vec![0, 255]))),
        raw_kv(
            "map",
            any(any_value::Value::KvlistValue(KeyValueList {
                values: vec![raw_kv("inner", any(any_value::Value::BoolValue(false)))],
            })),
        ),
        raw_kv("empty", None),
    ];
    client.export(raw_request("raw", attributes)).await.expect("export");

    let [span] = collector.spans().try_into().expect("one span");
    assert_eq!(span.trace_id, "ab".repeat(16));
    assert_eq!(span.span_id, "0102030405060708");
    assert_eq!(span.parent_span_id, "");
    assert_eq!(span.kind, SpanKind::Unspecified);
    assert_eq!(span.status, SpanStatus::Unset);
    assert_eq!(span.scope, "");
    assert_eq!(span.attr("bytes"), Some(&AttrValue::Bytes(vec![0, 255])));
    assert_eq!(span.attr("map"), Some(&AttrValue::Map([("inner".to_owned(), AttrValue::Bool(false))].into())));
    assert_eq!(span.attr("empty"), Some(&AttrValue::Empty));
    assert_eq!(collector.export_calls(), 1);
}

#[tokio::test]
async fn set_delay_holds_the_answer_but_records_at_once() {
    let collector = FakeCollector::start().await;
    let mut client = TraceServiceClient::connect(collector.endpoint()).await.expect("connect");
    let delay = Duration::from_millis(400);
    collector.set_delay(delay);

    let started = Instant::now();
    let export = tokio::spawn(async move { client.export(raw_request("slow", vec![])).await });
    let recorded = collector.wait_for_span(WAIT, |span| span.name == "slow").await;
    assert!(recorded.is_some());
    assert!(started.elapsed() < delay, "recorded only after {:?}", started.elapsed());
    assert!(!export.is_finished(), "answered before the delay");
    export.await.expect("join").expect("export");
    assert!(started.elapsed() >= delay, "answered after {:?}", started.elapsed());
    assert_eq!(collector.export_calls(), 1);

    // Back to answering at once.
    collector.set_delay(Duration::ZERO);
    let mut client = TraceServiceClient::connect(collector.endpoint()).await.expect("connect");
    let started = Instant::now();
    client.export(raw_request("fast", vec![])).await.expect("export");
    assert!(started.elapsed() < delay, "answered after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_slower_than_the_exporter_timeout_fails_the_flush() {
    let collector = FakeCollector::start().await;
    collector.set_delay(Duration::from_secs(30));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .with_timeout(Duration::from_millis(300))
        .build()
        .expect("build the OTLP span exporter");
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_sampler(Sampler::AlwaysOn).build();
    provider.tracer("copilot-tests").start("late").end();

    let started = Instant::now();
    let flushed = provider.clone();
    let result = blocking(move || flushed.force_flush()).await;
    assert!(result.is_err(), "flush succeeded against a collector that never answered");
    assert!(started.elapsed() < Duration::from_secs(10), "flush took {:?}", started.elapsed());
    // Received (and recorded) though never answered; the exporter's time budget allows no retry.
    assert!(collector.wait_for_span(WAIT, |span| span.name == "late").await.is_some());
    assert_eq!(collector.export_calls(), 1);

    drop(collector); // answers anything still held, so shutdown does not wait out the delay
    let _ = blocking(move || provider.shutdown()).await;
}
