//! The metric instruments, named, unitized and bucketed as the OpenTelemetry GenAI and RPC
//! conventions say (the `copilot.` ones have no convention yet). Created once, from the global
//! meter, on first use; without a meter provider they are no-ops.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

const DURATION_BUCKETS: [f64; 14] =
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const SERVER_TTFT_BUCKETS: [f64; 16] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
const SERVER_TPOT_BUCKETS: [f64; 13] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
const RPC_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

pub struct Metrics {
    /// `gen_ai.client.token.usage`: one point per call per `gen_ai.token.type` (input, output).
    pub token_usage: Histogram<u64>,
    /// `gen_ai.client.operation.duration`: each upstream attempt, start to end.
    pub operation_duration: Histogram<f64>,
    /// `gen_ai.client.operation.time_to_first_chunk`.
    pub time_to_first_chunk: Histogram<f64>,
    /// `gen_ai.client.operation.time_per_output_chunk`: one point per chunk after the first.
    pub time_per_output_chunk: Histogram<f64>,
    /// `gen_ai.server.request.duration`: calls served by the embedded engine.
    pub server_request_duration: Histogram<f64>,
    /// `gen_ai.server.time_to_first_token`: embedded engine, from receipt to the first token.
    pub server_time_to_first_token: Histogram<f64>,
    /// `gen_ai.server.time_per_output_token`: embedded engine, per token after the first.
    pub server_time_per_output_token: Histogram<f64>,
    /// `rpc.server.call.duration`: every gRPC call of the API, by method and status.
    pub rpc_duration: Histogram<f64>,
    /// `copilot.rpc.server.active_requests`: API calls in flight.
    pub active_requests: UpDownCounter<i64>,
    /// `copilot.rpc.server.errors`: API calls that ended with a non-OK status, by status code.
    pub rpc_errors: Counter<u64>,
    /// `copilot.cache.requests`: calls that could use the response cache, by `result` (`hit`,
    /// `miss`, `bypass`) and `rpc.method`.
    pub cache_requests: Counter<u64>,
    /// `copilot.cache.stores`: answers stored in the response cache.
    pub cache_stores: Counter<u64>,
    /// `copilot.cache.evictions`: entries the in-process store evicted for room.
    pub cache_evictions: Counter<u64>,
    /// `copilot.cache.bytes`: the size of the entries the in-process store holds.
    pub cache_bytes: UpDownCounter<i64>,
    /// `copilot.cache.oversize`: answers not stored, being over `cache.max_entry_bytes`.
    pub cache_oversize: Counter<u64>,
    /// `copilot.cache.coalesced`: calls answered with the answer of an identical call that was in
    /// flight when they missed (also counted as hits), by `rpc.method`.
    pub cache_coalesced: Counter<u64>,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter(crate::telemetry::SCOPE);
        let seconds = |name: &'static str, description: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        Metrics {
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            operation_duration: seconds(
                "gen_ai.client.operation.duration",
                "GenAI operation duration",
                &DURATION_BUCKETS,
            ),
            time_to_first_chunk: seconds(
                "gen_ai.client.operation.time_to_first_chunk",
                "Time to receive the first chunk of a streamed response",
                &DURATION_BUCKETS,
            ),
            time_per_output_chunk: seconds(
                "gen_ai.client.operation.time_per_output_chunk",
                "Time between consecutive chunks of a streamed response",
                &DURATION_BUCKETS,
            ),
            server_request_duration: seconds(
                "gen_ai.server.request.duration",
                "Generative AI server request duration",
                &DURATION_BUCKETS,
            ),
            server_time_to_first_token: seconds(
                "gen_ai.server.time_to_first_token",
                "Time to generate the first token",
                &SERVER_TTFT_BUCKETS,
            ),
            server_time_per_output_token: seconds(
                "gen_ai.server.time_per_output_token",
                "Time per output token generated after the first",
                &SERVER_TPOT_BUCKETS,
            ),
            rpc_duration: seconds("rpc.server.call.duration", "Duration of gRPC calls served", &RPC_BUCKETS),
            active_requests: meter
                .i64_up_down_counter("copilot.rpc.server.active_requests")
                .with_unit("{request}")
                .with_description("API calls in flight")
                .build(),
            rpc_errors: meter
                .u64_counter("copilot.rpc.server.errors")
                .with_unit("{error}")
                .with_description("API calls that ended with a non-OK gRPC status")
                .build(),
            cache_requests: meter
                .u64_counter("copilot.cache.requests")
                .with_unit("{request}")
                .with_description("Calls that could use the response cache, by result (hit, miss, bypass)")
                .build(),
            cache_stores: meter
                .u64_counter("copilot.cache.stores")
                .with_unit("{entry}")
                .with_description("Answers stored in the response cache")
                .build(),
            cache_evictions: meter
                .u64_counter("copilot.cache.evictions")
                .with_unit("{entry}")
                .with_description("Response cache entries evicted for room")
                .build(),
            cache_bytes: meter
                .i64_up_down_counter("copilot.cache.bytes")
                // No unit: Prometheus would name it `copilot_cache_bytes_bytes`.
                .with_description("Bytes of the entries the in-process response cache holds")
                .build(),
            cache_oversize: meter
                .u64_counter("copilot.cache.oversize")
                .with_unit("{answer}")
                .with_description("Answers not stored in the response cache, being over cache.max_entry_bytes")
                .build(),
            cache_coalesced: meter
                .u64_counter("copilot.cache.coalesced")
                .with_unit("{request}")
                .with_description("Calls answered by an identical call in flight when they missed (also hits)")
                .build(),
        }
    })
}
