//! Logs, traces and metrics.
//!
//! - Logs: text or JSON lines on stderr, filtered by `RUST_LOG` or the configured filter. When
//!   traces are exported, lines written inside a call carry its `trace_id` (the RPC span's field).
//!
//! Nothing is measured that nobody reads: without trace export the call and attempt spans are
//! never created, and without a metrics reader (OTLP push or the Prometheus listener) the
//! instruments are no-ops. That keeps the per-call and per-chunk path of a plain deployment free
//! of span formatting and attribute hashing.
//! - Traces: OpenTelemetry, exported over OTLP (gRPC, or HTTP/protobuf with
//!   `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The exporter and SDK read the standard variables
//!   themselves (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//!   `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, …); `OTEL_SDK_DISABLED=true` turns it all off.
//!   Spans are batched and exported from the SDK's own thread with a bounded queue (spans beyond
//!   it are dropped), so a collector that is down or slow never slows or fails a call.
//! - Metrics: the same OTLP endpoint (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` too), pushed
//!   periodically (`OTEL_METRIC_EXPORT_INTERVAL`), and a Prometheus registry that the admin
//!   listener serves at `/metrics` when `server.metrics_addr` is set.
//! - Prompts and completions are recorded on spans only when the operator opts in with
//!   `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

use crate::config::{LogConfig, LogFormat};

/// The instrumentation scope name of everything Copilot emits.
pub const SCOPE: &str = "copilot";

/// Whether prompts and completions may be recorded on spans (opt-in).
pub fn capture_message_content() -> bool {
    static CAPTURE: OnceLock<bool> = OnceLock::new();
    *CAPTURE.get_or_init(|| env_true("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"))
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Owns the exporters; flushes and shuts them down when the server stops.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    /// Where the Prometheus exporter registers; served by the admin listener.
    pub prometheus: prometheus::Registry,
}

/// Whether metric instruments record anything (a reader is set up), for callers that would
/// otherwise build attribute lists for nothing.
pub fn metrics_enabled() -> bool {
    METRICS_ENABLED.load(Ordering::Relaxed)
}

static METRICS_ENABLED: AtomicBool = AtomicBool::new(false);

/// Sets up logging, and OpenTelemetry unless disabled; `prometheus_served` says whether the admin
/// listener will serve `/metrics`. Problems with the exporters are reported and leave the server
/// running without them.
pub fn init(config: &LogConfig, prometheus_served: bool) -> Telemetry {
    let disabled = env_true("OTEL_SDK_DISABLED");
    let prometheus = prometheus::Registry::new();
    let traces_wanted =
        !disabled && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let metrics_pushed =
        !disabled && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"));
    let mut problems = Vec::new();
    let http = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default().trim() {
        "" | "grpc" => false,
        "http/protobuf" => true,
        other => {
            problems.push(format!("OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; exporting over grpc"));
            false
        }
    };
    if http {
        // The HTTP exporter's client uses rustls without a built-in crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    let resource = resource();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

    let tracer_provider = if traces_wanted {
        let exporter = if http {
            opentelemetry_otlp::SpanExporter::builder().with_http().build()
        } else {
            opentelemetry_otlp::SpanExporter::builder().with_tonic().build()
        };
        match exporter {
            Ok(exporter) => {
                Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build())
            }
            Err(e) => {
                problems.push(format!("cannot set up trace export: {e}"));
                None
            }
        }
    } else {
        None
    };

    let meter_provider = if disabled || !(metrics_pushed || prometheus_served) {
        None
    } else {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if metrics_pushed {
            let exporter = if http {
                opentelemetry_otlp::MetricExporter::builder().with_http().build()
            } else {
                opentelemetry_otlp::MetricExporter::builder().with_tonic().build()
            };
            match exporter {
                Ok(exporter) => {
                    builder = builder.with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build())
                }
                Err(e) => problems.push(format!("cannot set up metric export: {e}")),
            }
        }
        match opentelemetry_prometheus::exporter().with_registry(prometheus.clone()).build() {
            Ok(exporter) => builder = builder.with_reader(exporter),
            Err(e) => problems.push(format!("cannot set up the Prometheus exporter: {e}")),
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        METRICS_ENABLED.store(true, Ordering::Relaxed);
        Some(provider)
    };

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let fmt = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Without trace export the spans would only decorate log lines, at the price of formatting
    // every field of every call: the log layer then sees events only, and since no layer wants
    // the spans, `info_span!` costs a cached check.
    let exporting_traces = tracer_provider.is_some();
    let fmt = fmt.with_filter(filter::filter_fn(move |meta| exporting_traces || !meta.is_span()));
    // The exporter's own HTTP/2 and gRPC traffic must not become spans of its own.
    let otel = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE)).with_filter(filter::filter_fn(|meta| {
            let target = meta.target();
            !["h2", "hyper", "tonic", "tower", "reqwest", "opentelemetry", "rustls", "llama"]
                .iter()
                .any(|noisy| target.starts_with(noisy))
        }))
    });
    if let Err(e) = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init() {
        eprintln!("copilot: logging was already set up: {e}");
    }
    for problem in problems {
        tracing::warn!("{problem}");
    }
    if traces_wanted && tracer_provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { tracer_provider, meter_provider, prometheus }
}

fn resource() -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder();
    let named_by_env = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| attrs.contains("service.name="));
    let builder = if named_by_env { builder } else { builder.with_service_name("copilot") };
    builder.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
}

impl Telemetry {
    /// Exports what is buffered and stops the exporters. Blocking: run it off the async workers.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}
