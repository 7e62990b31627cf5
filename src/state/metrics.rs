//! The shared state's instruments (no OpenTelemetry convention covers them): whether Redis
//! answers, every operation by outcome and duration, the calls the failure policy decided, and
//! the background budget updates lost.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram};

const BUCKETS: [f64; 12] = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];

pub struct StateMetrics {
    /// `copilot.state.up`: 1 while Redis answers, 0 when it does not.
    pub up: Gauge<u64>,
    /// `copilot.state.operations{operation, outcome = ok|error|timeout}`.
    pub operations: Counter<u64>,
    /// `copilot.state.duration{operation}`: one round trip, in seconds.
    pub duration: Histogram<f64>,
    /// `copilot.state.fallbacks{policy}`: calls whose budget `state.on_error` decided.
    pub fallbacks: Counter<u64>,
    /// `copilot.state.dropped{operation}`: settlements (charges, refunds) that never reached Redis.
    pub dropped: Counter<u64>,
}

pub fn state_metrics() -> &'static StateMetrics {
    static METRICS: OnceLock<StateMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter(crate::telemetry::SCOPE);
        StateMetrics {
            up: meter
                .u64_gauge("copilot.state.up")
                .with_description("Whether the shared Redis answers (1) or not (0)")
                .build(),
            operations: meter
                .u64_counter("copilot.state.operations")
                .with_unit("{operation}")
                .with_description("Operations on the shared Redis, by outcome")
                .build(),
            duration: meter
                .f64_histogram("copilot.state.duration")
                .with_unit("s")
                .with_description("Duration of one operation on the shared Redis")
                .with_boundaries(BUCKETS.to_vec())
                .build(),
            fallbacks: meter
                .u64_counter("copilot.state.fallbacks")
                .with_unit("{call}")
                .with_description("Calls whose key budget state.on_error decided because Redis failed")
                .build(),
            dropped: meter
                .u64_counter("copilot.state.dropped")
                .with_unit("{operation}")
                .with_description("Budget settlements that never reached the shared Redis")
                .build(),
        }
    })
}
