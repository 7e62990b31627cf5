//! A fake OpenTelemetry collector: an OTLP/gRPC server on a loopback port that records every span
//! and metric it is sent, so integration tests can assert on the telemetry a process exports.
//!
//! It implements the collector's `TraceService/Export` and `MetricsService/Export` RPCs with the
//! generated services of `opentelemetry-proto`, and flattens what arrives into plain structs:
//! ids as lowercase hex, attributes as a sorted map of [`AttrValue`]s, enums as Rust enums. Point
//! an OTLP exporter at [`FakeCollector::endpoint`] (it is what `OTEL_EXPORTER_OTLP_ENDPOINT` takes)
//! and wait for what you expect with [`FakeCollector::wait_for_span`] or
//! [`FakeCollector::wait_for_metric`]: exporters batch and send in the background.
//!
//! [`FakeCollector::set_delay`] makes it a slow collector, to test that exporting never holds up
//! the code being traced. What a request carries is recorded as soon as it arrives; only the
//! answer waits.
//!
//! Requests must be uncompressed: tonic is built without gzip here. The workspace's exporter has no
//! `gzip-tonic` feature either, so it ignores `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` (with a warning).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use opentelemetry_proto::tonic::{metrics::v1 as proto_metrics, trace::v1 as proto_trace};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A running fake collector on `127.0.0.1` and a free port. It stops when dropped: it closes its
/// port, and exports it is still delaying are answered at once.
pub struct FakeCollector {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeCollector {
    /// Starts a collector that has received nothing and answers at once.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> FakeCollector {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind a loopback port for the fake collector");
        let addr = listener.local_addr().expect("the fake collector's bound address");
        let shared = Arc::new(Shared::new());
        let mut stopped = shared.shutdown.subscribe();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(shared.clone())))
            .add_service(MetricsServiceServer::new(Collector(shared.clone())))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            });
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "fake OTLP collector stopped with an error");
            }
        });
        FakeCollector { addr, shared }
    }

    /// The URL to export to, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every export (including ones already waiting) only `delay` after it arrived;
    /// `Duration::ZERO` answers at once again. What an export carries is recorded on arrival.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay.send_replace(delay);
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.shared.recorded().spans.clone()
    }

    /// The first span received that matches `pred`, waiting up to `timeout` for it to arrive.
    pub async fn wait_for_span(&self, timeout: Duration, pred: impl Fn(&RecordedSpan) -> bool) -> Option<RecordedSpan> {
        self.wait_for(timeout, |recorded| recorded.spans.iter().find(|span| pred(span)).cloned()).await
    }

    /// Every metric received so far, in arrival order: one entry per metric per export, so a
    /// periodic exporter produces a new entry for the same name on every export.
    pub fn metrics(&self) -> Vec<RecordedMetric> {
        self.shared.recorded().metrics.clone()
    }

    /// The latest batch of the metric `name`, waiting up to `timeout` for a first one to arrive.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> Option<RecordedMetric> {
        self.wait_for(timeout, |recorded| recorded.metrics.iter().rev().find(|metric| metric.name == name).cloned())
            .await
    }

    /// How many export RPCs (traces and metrics) have arrived, answered or not.
    pub fn export_calls(&self) -> usize {
        self.shared.recorded().export_calls
    }

    /// Runs `find` on what has been recorded, again after every export, until it finds something
    /// or `timeout` runs out.
    async fn wait_for<T>(&self, timeout: Duration, find: impl Fn(&Recorded) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        loop {
            // Marking the current version seen before looking means no export can slip in between.
            changes.borrow_and_update();
            if let Some(found) = find(&self.shared.recorded()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// A span as the collector received it.
#[derive(Clone, Debug)]
pub struct RecordedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: BTreeMap<String, AttrValue>,
    pub status: SpanStatus,
    /// The attributes of the resource that sent the span (`service.name`, ...).
    pub resource: BTreeMap<String, AttrValue>,
    /// The name of the instrumentation scope (the tracer's name).
    pub scope: String,
    /// Each event's name and attributes, in order.
    pub events: Vec<(String, BTreeMap<String, AttrValue>)>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl RecordedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    /// The attribute `key` if it is a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            AttrValue::Str(value) => Some(value),
            _ => None,
        }
    }

    /// The attribute `key` if it is an integer.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            AttrValue::Int(value) => Some(*value),
            _ => None,
        }
    }

    /// The attribute `key` if it is a number, float or integer.
    pub fn float_attr(&self, key: &str) -> Option<f64> {
        match self.attr(key)? {
            AttrValue::Float(value) => Some(*value),
            AttrValue::Int(value) => Some(*value as f64),
            _ => None,
        }
    }

    /// The attribute `key` if it is a boolean.
    pub fn bool_attr(&self, key: &str) -> Option<bool> {
        match self.attr(key)? {
            AttrValue::Bool(value) => Some(*value),
            _ => None,
        }
    }
}

/// OTLP's span kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span's status: `Error` carries the status message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error(String),
}

/// An attribute value, as OTLP's `AnyValue` has it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<AttrValue>),
    Bytes(Vec<u8>),
    /// A key-value list (`kvlist_value`); the SDKs send these in log records, not on spans.
    Map(BTreeMap<String, AttrValue>),
    /// An `AnyValue` with no value set (OTLP allows it, meaning "empty").
    Empty,
}

/// One metric from one export: the data points it carried then.
#[derive(Clone, Debug)]
pub struct RecordedMetric {
    pub name: String,
    pub unit: String,
    pub description: String,
    /// The attributes of the resource that sent the metric.
    pub resource: BTreeMap<String, AttrValue>,
    /// The name of the instrumentation scope (the meter's name).
    pub scope: String,
    pub data: MetricData,
}

/// A metric's data points, by kind of metric.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricData {
    Histogram(Vec<HistogramPoint>),
    Sum {
        points: Vec<NumberPoint>,
        monotonic: bool,
    },
    Gauge(Vec<NumberPoint>),
    /// A kind this fake does not unpack: `"exponential_histogram"`, `"summary"`, or `"none"`.
    Other(&'static str),
}

/// One histogram data point: `bucket_counts` has one more entry than `bounds` (the last bucket is
/// everything above the last bound).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramPoint {
    pub attributes: BTreeMap<String, AttrValue>,
    pub count: u64,
    /// 0 when the exporter left the (optional) sum out.
    pub sum: f64,
    pub bounds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
}

/// One sum or gauge data point; integer values are converted to `f64` (0 when none was sent).
#[derive(Clone, Debug, PartialEq)]
pub struct NumberPoint {
    pub attributes: BTreeMap<String, AttrValue>,
    pub value: f64,
}

/// State shared between the handle and the gRPC services.
struct Shared {
    recorded: Mutex<Recorded>,
    /// Bumped after every export is recorded, to wake `wait_for`.
    changes: watch::Sender<u64>,
    /// How long to hold each export's answer.
    delay: watch::Sender<Duration>,
    /// Set when the handle is dropped: stops the server and cuts delays short.
    shutdown: watch::Sender<bool>,
}

#[derive(Default)]
struct Recorded {
    spans: Vec<RecordedSpan>,
    metrics: Vec<RecordedMetric>,
    export_calls: usize,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            recorded: Mutex::default(),
            changes: watch::Sender::new(0),
            delay: watch::Sender::new(Duration::ZERO),
            shutdown: watch::Sender::new(false),
        }
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        // Nothing panics while holding the lock, so a poisoned lock still holds consistent data.
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an export, lets `record` store what it carried, and wakes the waiters.
    fn record_export(&self, record: impl FnOnce(&mut Recorded)) {
        let mut recorded = self.recorded();
        recorded.export_calls += 1;
        record(&mut recorded);
        drop(recorded);
        self.changes.send_modify(|version| *version += 1);
    }

    /// Waits until the export that arrived at `arrived` may be answered: `delay` after its arrival,
    /// following changes to the delay, or at once when the collector stops.
    async fn hold_answer(&self, arrived: tokio::time::Instant) {
        let mut delay = self.delay.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let until = arrived + *delay.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                changed = delay.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    }
}

/// The gRPC services, both backed by the same state.
struct Collector(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let arrived = tokio::time::Instant::now();
        let spans = flatten_spans(request.into_inner());
        self.0.record_export(|recorded| recorded.spans.extend(spans));
        self.0.hold_answer(arrived).await;
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let arrived = tokio::time::Instant::now();
        let metrics = flatten_metrics(request.into_inner());
        self.0.record_export(|recorded| recorded.metrics.extend(metrics));
        self.0.hold_answer(arrived).await;
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn flatten_spans(request: ExportTraceServiceRequest) -> Vec<RecordedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_attributes(resource_spans.resource);
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|scope| scope.name).unwrap_or_default();
            for span in scope_spans.spans {
                spans.push(recorded_span(span, &resource, &scope));
            }
        }
    }
    spans
}

fn recorded_span(span: proto_trace::Span, resource: &BTreeMap<String, AttrValue>, scope: &str) -> RecordedSpan {
    let kind = match span::SpanKind::try_from(span.kind) {
        Ok(span::SpanKind::Internal) => SpanKind::Internal,
        Ok(span::SpanKind::Server) => SpanKind::Server,
        Ok(span::SpanKind::Client) => SpanKind::Client,
        Ok(span::SpanKind::Producer) => SpanKind::Producer,
        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
        Ok(span::SpanKind::Unspecified) | Err(_) => SpanKind::Unspecified,
    };
    let status = match span.status {
        Some(proto_trace::Status { code, message }) => match status::StatusCode::try_from(code) {
            Ok(status::StatusCode::Ok) => SpanStatus::Ok,
            Ok(status::StatusCode::Error) => SpanStatus::Error(message),
            Ok(status::StatusCode::Unset) | Err(_) => SpanStatus::Unset,
        },
        None => SpanStatus::Unset,
    };
    RecordedSpan {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        name: span.name,
        kind,
        attributes: attributes(span.attributes),
        status,
        resource: resource.clone(),
        scope: scope.to_owned(),
        events: span.events.into_iter().map(|event| (event.name, attributes(event.attributes))).collect(),
        start_unix_nanos: span.start_time_unix_nano,
        end_unix_nanos: span.end_time_unix_nano,
    }
}

fn flatten_metrics(request: ExportMetricsServiceRequest) -> Vec<RecordedMetric> {
    let mut metrics = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = resource_attributes(resource_metrics.resource);
        for scope_metrics in resource_metrics.scope_metrics {
            let scope = scope_metrics.scope.map(|scope| scope.name).unwrap_or_default();
            for metric in scope_metrics.metrics {
                metrics.push(RecordedMetric {
                    name: metric.name,
                    unit: metric.unit,
                    description: metric.description,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    data: metric_data(metric.data),
                });
            }
        }
    }
    metrics
}

fn metric_data(data: Option<metric::Data>) -> MetricData {
    match data {
        Some(metric::Data::Histogram(histogram)) => MetricData::Histogram(
            histogram
                .data_points
                .into_iter()
                .map(|point| HistogramPoint {
                    attributes: attributes(point.attributes),
                    count: point.count,
                    sum: point.sum.unwrap_or(0.0),
                    bounds: point.explicit_bounds,
                    bucket_counts: point.bucket_counts,
                })
                .collect(),
        ),
        Some(metric::Data::Sum(sum)) => {
            MetricData::Sum { points: number_points(sum.data_points), monotonic: sum.is_monotonic }
        }
        Some(metric::Data::Gauge(gauge)) => MetricData::Gauge(number_points(gauge.data_points)),
        Some(metric::Data::ExponentialHistogram(_)) => MetricData::Other("exponential_histogram"),
        Some(metric::Data::Summary(_)) => MetricData::Other("summary"),
        None => MetricData::Other("none"),
    }
}

fn number_points(points: Vec<proto_metrics::NumberDataPoint>) -> Vec<NumberPoint> {
    points
        .into_iter()
        .map(|point| NumberPoint {
            attributes: attributes(point.attributes),
            value: match point.value {
                Some(number_data_point::Value::AsDouble(value)) => value,
                Some(number_data_point::Value::AsInt(value)) => value as f64,
                None => 0.0,
            },
        })
        .collect()
}

fn resource_attributes(resource: Option<Resource>) -> BTreeMap<String, AttrValue> {
    resource.map(|resource| attributes(resource.attributes)).unwrap_or_default()
}

fn attributes(key_values: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    key_values.into_iter().map(|key_value| (key_value.key, attr_value(key_value.value))).collect()
}

fn attr_value(value: Option<AnyValue>) -> AttrValue {
    use any_value::Value;
    match value.and_then(|value| value.value) {
        Some(Value::StringValue(value)) => AttrValue::Str(value),
        Some(Value::IntValue(value)) => AttrValue::Int(value),
        Some(Value::DoubleValue(value)) => AttrValue::Float(value),
        Some(Value::BoolValue(value)) => AttrValue::Bool(value),
        Some(Value::ArrayValue(array)) => {
            AttrValue::Array(array.values.into_iter().map(|value| attr_value(Some(value))).collect())
        }
        Some(Value::BytesValue(bytes)) => AttrValue::Bytes(bytes),
        Some(Value::KvlistValue(list)) => AttrValue::Map(attributes(list.values)),
        // A string-table reference is only meaningful in profiles; OTLP says to treat it as absent.
        Some(Value::StringValueStrindex(_)) | None => AttrValue::Empty,
    }
}

/// Lowercase hex, as trace and span ids are written everywhere outside the protobuf encoding.
fn hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
