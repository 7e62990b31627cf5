//! Logs, traces and metrics.
//!
//! - Logs: text or JSON lines on stderr, filtered by `RUST_LOG` or the configured filter. When
//!   traces are exported, lines written inside a call carry its `trace_id` (the RPC span's field).
//!
//! Nothing is measured that nobody reads: without trace export the call and attempt spans are
//! disabled where they are declared (see `layers`), and without a metrics reader (OTLP push or
//! the Prometheus listener) the instruments are no-ops. That keeps the per-call and per-chunk path
//! of a plain deployment free of span bookkeeping and attribute hashing.
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
//!
//! This module sets them up; `rpc_trace` traces and measures each gRPC call, `observe` each call's
//! attempts at a provider (the GenAI conventions), and `metrics` holds the instruments.

pub mod metrics;
pub mod observe;
pub mod rpc_trace;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter};

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

    // `RUST_LOG` wins over the configured filter when it is set and parses.
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|directives| !directives.trim().is_empty() && EnvFilter::try_new(directives).is_ok())
        .unwrap_or_else(|| config.filter.clone());
    if let Err(e) =
        tracing_subscriber::registry().with(layers(&filter, config.format, tracer_provider.as_ref())).try_init()
    {
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

/// What receives spans and events: the log lines, and with trace export the OpenTelemetry layer.
/// Each has a filter of its own (the log filter, and for the log lines no spans unless traces are
/// exported) and there is no layer without one: a span no layer wants is then disabled at its
/// `info_span!`, which is what keeps a plain deployment's calls free of span bookkeeping. (A
/// layer without a filter, an `EnvFilter` applied to all, or an absent `Option` layer would each
/// count as wanting every span.)
fn layers(
    filter: &str,
    format: LogFormat,
    tracer_provider: Option<&SdkTracerProvider>,
) -> Vec<Box<dyn Layer<Registry> + Send + Sync>> {
    let log_filter = || EnvFilter::new(filter);
    let exporting_traces = tracer_provider.is_some();
    let fmt = match format {
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
    // every field of every call: the log layer then sees events only.
    let log_lines =
        fmt.with_filter(log_filter().and(filter::filter_fn(move |meta| exporting_traces || !meta.is_span())));
    let mut layers = vec![log_lines.boxed()];
    if let Some(provider) = tracer_provider {
        // The exporter's own HTTP/2 and gRPC traffic must not become spans of its own.
        let not_noisy = filter::filter_fn(|meta| {
            let target = meta.target();
            !["h2", "hyper", "tonic", "tower", "reqwest", "opentelemetry", "rustls", "llama"]
                .iter()
                .any(|noisy| target.starts_with(noisy))
        });
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE));
        layers.push(otel.with_filter(log_filter().and(not_noisy)).boxed());
    }
    layers
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a span and events at each level would be under the layers, without installing them
    /// globally.
    fn under_layers(tracer_provider: Option<&SdkTracerProvider>) -> (bool, bool, bool, bool) {
        let subscriber = tracing_subscriber::registry().with(layers("info", LogFormat::Text, tracer_provider));
        tracing::subscriber::with_default(subscriber, || {
            (
                !tracing::info_span!("rpc").is_disabled(),
                !tracing::debug_span!("detail").is_disabled(),
                tracing::enabled!(tracing::Level::INFO),
                tracing::enabled!(tracing::Level::DEBUG),
            )
        })
    }

    #[test]
    fn without_trace_export_spans_are_disabled_and_log_lines_still_filtered() {
        let (info_span, debug_span, info_event, debug_event) = under_layers(None);
        assert!(!info_span, "no layer wants spans, so info_span! must be disabled");
        assert!(!debug_span);
        assert!(info_event, "info log lines are still written");
        assert!(!debug_event, "the filter still drops debug lines");
    }

    #[test]
    fn with_trace_export_spans_at_the_filter_level_are_recorded() {
        let provider = SdkTracerProvider::builder().build();
        let (info_span, debug_span, info_event, debug_event) = under_layers(Some(&provider));
        assert!(info_span, "the OpenTelemetry layer wants info spans");
        assert!(!debug_span, "the filter applies to spans too");
        assert!(info_event);
        assert!(!debug_event);
    }
}
