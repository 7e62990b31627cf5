//! What each upstream attempt tells OpenTelemetry: a span following the GenAI conventions —
//! `chat {model}`, CLIENT (INTERNAL for the embedded engine), the request parameters, then the
//! response model, finish reasons, usage, time to first token and tokens/s — and the GenAI client
//! metrics (plus the `gen_ai.server.*` ones for the in-process engine). Retries and fallbacks are
//! attempts of their own, with `copilot.attempt.kind` and `copilot.attempt.reason` saying why.
//!
//! Integers are recorded as `i64`: tracing-opentelemetry turns `u64` fields into strings.
//!
//! Attributes the conventions do not name use a `copilot.` prefix:
//! `copilot.time_to_first_token` (s, from the call's arrival), `copilot.output_tokens_per_second`,
//! `copilot.provider.instance`, `copilot.attempt.{number,kind,reason,outcome}`,
//! `copilot.embeddings.inputs`, `copilot.count_tokens.{input_tokens,exact}`. `Embed` attempts are
//! `embeddings {model}` spans; `CountTokens` attempts `count_tokens {model}`, an operation name of
//! Copilot's own (the conventions name none for counting).

use copilot_provider::{AssembledTurn, FinishReason, Message, Part, ProviderError, Role, ThinkingDelta, ToolCallDelta};
use opentelemetry::propagation::Injector;
use opentelemetry::{KeyValue, StringValue, Value};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::deadline::CallContext;
use crate::error::GatewayError;
use crate::gateway::{Counted, Embedded};
use crate::router::Target;
use crate::summary::Summary;
use crate::telemetry::metrics::metrics;
use crate::telemetry::{capture_message_content, metrics_enabled};
use crate::validate::{ValidEmbed, ValidRequest};

pub fn attempt_span(
    target: &Target,
    request: &ValidRequest,
    number: u32,
    kind: &'static str,
    reason: Option<&str>,
) -> tracing::Span {
    let instance = &target.instance;
    let options = &request.options;
    let span = tracing::info_span!(
        "gen_ai.attempt",
        otel.name = %format!("chat {}", target.model),
        otel.kind = if instance.labels.in_process { "internal" } else { "client" },
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = instance.labels.gen_ai_provider,
        gen_ai.request.model = %target.model,
        gen_ai.request.stream = true,
        gen_ai.request.temperature = options.temperature.map(f64::from),
        gen_ai.request.top_p = options.top_p.map(f64::from),
        gen_ai.request.top_k = options.top_k.map(i64::from),
        gen_ai.request.max_tokens = options.max_tokens.map(i64::from),
        gen_ai.request.seed = options.seed.map(|seed| seed as i64),
        server.address = instance.labels.server_address.as_deref(),
        server.port = instance.labels.server_port.map(i64::from),
        copilot.provider.instance = %instance.name,
        copilot.attempt.number = i64::from(number),
        copilot.attempt.kind = kind,
        copilot.attempt.reason = reason,
        copilot.attempt.outcome = Empty,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        copilot.time_to_first_token = Empty,
        copilot.output_tokens_per_second = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if !options.stop.is_empty() {
        let stops: Vec<StringValue> = options.stop.iter().map(|s| s.clone().into()).collect();
        span.set_attribute("gen_ai.request.stop_sequences", Value::Array(stops.into()));
    }
    capture_input(&span, request);
    span
}

/// The request's system instructions, messages and tool definitions on `span`, when message
/// content capture is on (never otherwise: prompts stay out of telemetry by default).
fn capture_input(span: &tracing::Span, request: &ValidRequest) {
    if !capture_message_content() {
        return;
    }
    let system: Vec<_> = request.messages.iter().filter(|m| m.role == Role::System).collect();
    if !system.is_empty() {
        let parts: Vec<_> =
            system.iter().map(|m| serde_json::json!({"type": "text", "content": m.content()})).collect();
        span.set_attribute("gen_ai.system_instructions", serde_json::Value::from(parts).to_string());
    }
    let input: Vec<_> = request.messages.iter().filter(|m| m.role != Role::System).map(message_json).collect();
    span.set_attribute("gen_ai.input.messages", serde_json::Value::from(input).to_string());
    if !request.tools.is_empty() {
        let tools: Vec<_> = request
            .tools
            .iter()
            .map(|tool| {
                serde_json::json!({
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters.as_deref().map(json_or_text),
                })
            })
            .collect();
        span.set_attribute("gen_ai.tool.definitions", serde_json::Value::from(tools).to_string());
    }
}

/// The W3C trace context of an attempt, as headers for the upstream request, so an instrumented
/// upstream (or a proxy in front of it) joins the same trace.
pub fn trace_context(span: &tracing::Span) -> Vec<(String, String)> {
    if span.is_disabled() {
        return Vec::new();
    }
    struct Headers(Vec<(String, String)>);
    impl Injector for Headers {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_string(), value));
        }
    }
    let context = span.context();
    let mut headers = Headers(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut headers));
    headers.0
}

/// An `Embed` attempt's span: `embeddings {model}`, with the conventions' embedding attributes.
pub fn embed_span(
    target: &Target,
    request: &ValidEmbed,
    number: u32,
    kind: &'static str,
    reason: Option<&str>,
) -> tracing::Span {
    let instance = &target.instance;
    let span = tracing::info_span!(
        "gen_ai.attempt",
        otel.name = %format!("embeddings {}", target.model),
        otel.kind = if instance.labels.in_process { "internal" } else { "client" },
        otel.status_code = Empty,
        gen_ai.operation.name = "embeddings",
        gen_ai.provider.name = instance.labels.gen_ai_provider,
        gen_ai.request.model = %target.model,
        gen_ai.embeddings.dimension.count = request.dimensions.map(i64::from),
        server.address = instance.labels.server_address.as_deref(),
        server.port = instance.labels.server_port.map(i64::from),
        copilot.provider.instance = %instance.name,
        copilot.embeddings.inputs = request.inputs.len() as i64,
        copilot.attempt.number = i64::from(number),
        copilot.attempt.kind = kind,
        copilot.attempt.reason = reason,
        copilot.attempt.outcome = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.set_attribute("gen_ai.request.encoding_formats", Value::Array(vec![StringValue::from("float")].into()));
    }
    span
}

/// A `CountTokens` attempt's span: `count_tokens {model}`. The GenAI conventions name no operation
/// for counting, so `gen_ai.operation.name` is Copilot's own `count_tokens`; the count itself is
/// `copilot.count_tokens.input_tokens` (not `gen_ai.usage.input_tokens`: nothing was consumed) and
/// `copilot.count_tokens.exact`. The messages and tools are recorded only with content capture on.
pub fn count_span(
    target: &Target,
    request: &ValidRequest,
    number: u32,
    kind: &'static str,
    reason: Option<&str>,
) -> tracing::Span {
    let instance = &target.instance;
    let span = tracing::info_span!(
        "gen_ai.attempt",
        otel.name = %format!("count_tokens {}", target.model),
        otel.kind = if instance.labels.in_process { "internal" } else { "client" },
        otel.status_code = Empty,
        gen_ai.operation.name = "count_tokens",
        gen_ai.provider.name = instance.labels.gen_ai_provider,
        gen_ai.request.model = %target.model,
        server.address = instance.labels.server_address.as_deref(),
        server.port = instance.labels.server_port.map(i64::from),
        copilot.provider.instance = %instance.name,
        copilot.attempt.number = i64::from(number),
        copilot.attempt.kind = kind,
        copilot.attempt.reason = reason,
        copilot.attempt.outcome = Empty,
        copilot.count_tokens.input_tokens = Empty,
        copilot.count_tokens.exact = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        capture_input(&span, request);
    }
    span
}

/// A message as the GenAI conventions' `gen_ai.input.messages` write it.
fn message_json(message: &Message) -> serde_json::Value {
    if message.role == Role::Tool {
        let id = message.tool_call_id.as_deref().unwrap_or_default();
        let part = serde_json::json!({"type": "tool_call_response", "id": id, "result": message.content()});
        return serde_json::json!({"role": "tool", "parts": [part]});
    }
    serde_json::json!({"role": message.role.as_str(), "parts": parts_json(&message.parts)})
}

/// Parts as the conventions write them. Images are described, not copied: a trace is no place
/// for megabytes of pixels.
fn parts_json(parts: &[Part]) -> Vec<serde_json::Value> {
    use copilot_provider::ImageSource;
    parts
        .iter()
        .map(|part| match part {
            Part::Text(text) => serde_json::json!({"type": "text", "content": text}),
            Part::ToolCall(call) => serde_json::json!({
                "type": "tool_call", "id": call.id, "name": call.name, "arguments": json_or_text(&call.arguments),
            }),
            Part::Thinking(thinking) => serde_json::json!({"type": "reasoning", "content": thinking.text}),
            Part::Image(image) => match &image.source {
                ImageSource::Url(url) => serde_json::json!({"type": "uri", "modality": "image", "uri": url}),
                ImageSource::Data(data) => serde_json::json!({
                    "type": "blob", "modality": "image", "mime_type": image.mime_type, "size": data.len(),
                }),
            },
        })
        .collect()
}

/// JSON text as a value where it parses, else as the text itself.
fn json_or_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// A low-cardinality name for what went wrong, for `error.type`.
pub fn error_type(error: &GatewayError) -> String {
    match error {
        GatewayError::Provider { error, .. } => match error {
            ProviderError::InvalidRequest(_) => "invalid_request".into(),
            ProviderError::ModelNotFound { .. } => "model_not_found".into(),
            ProviderError::Unauthorized(_) => "unauthorized".into(),
            ProviderError::RateLimited { .. } => "rate_limited".into(),
            ProviderError::Overloaded { .. } => "overloaded".into(),
            ProviderError::CapacityExhausted { .. } => "capacity_exhausted".into(),
            ProviderError::ModelUnusable(_) => "model_unusable".into(),
            ProviderError::Unreachable(_) => "unreachable".into(),
            ProviderError::Upstream { status, .. } => status.to_string(),
            ProviderError::MidStream(_) => "mid_stream_error".into(),
            ProviderError::Interrupted(_) => "interrupted".into(),
            ProviderError::Protocol(_) => "protocol_error".into(),
            ProviderError::Unsupported { .. } => "feature_unsupported".into(),
        },
        GatewayError::DeadlineExceeded { .. } => "deadline_exceeded".into(),
        GatewayError::UpstreamTimeout { .. } => "timeout".into(),
        GatewayError::CircuitOpen { .. } => "circuit_open".into(),
        GatewayError::ShuttingDown => "shutting_down".into(),
        GatewayError::ResponseTooLarge { .. } => "response_too_large".into(),
        _ => "_OTHER".into(),
    }
}

/// The attributes every metric point of an attempt carries.
fn metric_attributes(target: &Target, operation: &'static str) -> Vec<KeyValue> {
    let instance = &target.instance;
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.provider.name", instance.labels.gen_ai_provider),
        KeyValue::new("gen_ai.request.model", target.model.clone()),
    ];
    if let Some(address) = &instance.labels.server_address {
        attributes.push(KeyValue::new("server.address", address.clone()));
    }
    if let Some(port) = instance.labels.server_port {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    attributes
}

/// Records one attempt as it goes: its span and its metrics.
pub struct Attempt {
    span: tracing::Span,
    started: Instant,
    /// The metric attributes; `None` when no metrics are read.
    attributes: Option<Vec<KeyValue>>,
    in_process: bool,
    last_chunk: Option<Instant>,
    /// The answer, kept only when content capture is on.
    output: Option<AssembledTurn>,
}

impl Attempt {
    /// `operation` is the GenAI operation name: `chat`, `embeddings` or `count_tokens`.
    pub fn new(span: tracing::Span, target: &Target, started: Instant, operation: &'static str) -> Self {
        let instance = &target.instance;
        let attributes = metrics_enabled().then(|| metric_attributes(target, operation));
        let output = capture_message_content().then(AssembledTurn::default);
        Self { span, started, attributes, in_process: instance.labels.in_process, last_chunk: None, output }
    }

    /// Output arrived: a chunk for the metrics.
    fn progress(&mut self, at: Instant) {
        if let Some(attributes) = &self.attributes {
            let m = metrics();
            match self.last_chunk {
                None => m.time_to_first_chunk.record((at - self.started).as_secs_f64(), attributes),
                Some(previous) => m.time_per_output_chunk.record((at - previous).as_secs_f64(), attributes),
            }
            self.last_chunk = Some(at);
        }
    }

    /// A piece of text arrived.
    pub fn chunk(&mut self, at: Instant, text: &str) {
        self.progress(at);
        if let Some(output) = &mut self.output {
            output.text(text);
        }
    }

    /// A piece of a tool call arrived.
    pub fn tool_call(&mut self, at: Instant, delta: &ToolCallDelta) {
        self.progress(at);
        if let Some(output) = &mut self.output {
            output.tool_call(delta);
        }
    }

    /// A piece of thinking arrived.
    pub fn thinking(&mut self, at: Instant, delta: &ThinkingDelta) {
        self.progress(at);
        if let Some(output) = &mut self.output {
            output.thinking(delta);
        }
    }

    pub fn completed(self, summary: &Summary, call: &CallContext) {
        let completion = &summary.completion;
        let finish = match completion.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
        };
        let span = &self.span;
        span.record("copilot.attempt.outcome", "completed");
        span.record("gen_ai.response.model", completion.model.as_str());
        if let Some(id) = &completion.response_id {
            span.record("gen_ai.response.id", id.as_str());
        }
        span.record("gen_ai.usage.input_tokens", i64::from(completion.usage.input_tokens));
        span.record("gen_ai.usage.output_tokens", i64::from(completion.usage.output_tokens));
        if let Some(tokens) = completion.usage.reasoning_tokens {
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", i64::from(tokens));
        }
        if let Some(tokens) = completion.usage.cached_input_tokens {
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", i64::from(tokens));
        }
        span.set_attribute("gen_ai.response.finish_reasons", Value::Array(vec![StringValue::from(finish)].into()));
        if let Some(ttft) = summary.time_to_first_token {
            span.record("copilot.time_to_first_token", ttft.as_secs_f64());
        }
        span.record("copilot.output_tokens_per_second", summary.output_tokens_per_second);
        if let Some(output) = &self.output {
            let message = serde_json::json!([{
                "role": "assistant",
                "parts": parts_json(output.parts()),
                "finish_reason": finish,
            }]);
            span.set_attribute("gen_ai.output.messages", message.to_string());
        }

        let Some(mut attributes) = self.attributes else { return };
        let m = metrics();
        if !completion.model.is_empty() {
            attributes.push(KeyValue::new("gen_ai.response.model", completion.model.clone()));
        }
        m.operation_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        // Only what the provider reported: no counts, no usage points.
        if completion.usage.input_tokens > 0 || completion.usage.output_tokens > 0 {
            let with_type = |kind: &'static str| {
                let mut a = attributes.clone();
                a.push(KeyValue::new("gen_ai.token.type", kind));
                a
            };
            m.token_usage.record(u64::from(completion.usage.input_tokens), &with_type("input"));
            m.token_usage.record(u64::from(completion.usage.output_tokens), &with_type("output"));
        }
        if self.in_process {
            m.server_request_duration.record((Instant::now() - call.received).as_secs_f64(), &attributes);
            if let Some(ttft) = summary.time_to_first_token {
                m.server_time_to_first_token.record(ttft.as_secs_f64(), &attributes);
            }
            let tokens_after_first = completion.usage.output_tokens.saturating_sub(1);
            if let Some(generation) = completion.timings.generation.filter(|_| tokens_after_first > 0) {
                let per_token = generation.as_secs_f64() / f64::from(tokens_after_first);
                m.server_time_per_output_token.record(per_token, &attributes);
            }
        }
    }

    /// An `Embed` attempt's answer.
    pub fn embedded(self, embedded: &Embedded, call: &CallContext) {
        let span = &self.span;
        span.record("copilot.attempt.outcome", "completed");
        span.record("gen_ai.response.model", embedded.model.as_str());
        span.record("gen_ai.embeddings.dimension.count", i64::from(embedded.dimensions));
        if let Some(tokens) = embedded.input_tokens {
            span.record("gen_ai.usage.input_tokens", i64::from(tokens));
        }
        let Some(attributes) = self.attributes else { return };
        let m = metrics();
        m.operation_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        if let Some(tokens) = embedded.input_tokens {
            let mut with_type = attributes.clone();
            with_type.push(KeyValue::new("gen_ai.token.type", "input"));
            m.token_usage.record(u64::from(tokens), &with_type);
        }
        if self.in_process {
            m.server_request_duration.record((Instant::now() - call.received).as_secs_f64(), &attributes);
        }
    }

    /// A `CountTokens` attempt's answer: the count on the span, the duration metric (no token
    /// usage: counting consumes none).
    pub fn counted(self, counted: &Counted, call: &CallContext) {
        let span = &self.span;
        span.record("copilot.attempt.outcome", "completed");
        span.record("copilot.count_tokens.input_tokens", i64::from(counted.input_tokens));
        span.record("copilot.count_tokens.exact", counted.exact);
        let Some(attributes) = self.attributes else { return };
        let m = metrics();
        m.operation_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        if self.in_process {
            m.server_request_duration.record((Instant::now() - call.received).as_secs_f64(), &attributes);
        }
    }

    pub fn failed(self, error: &GatewayError) {
        let kind = error_type(error);
        self.span.record("error.type", kind.as_str());
        self.span.record("otel.status_code", "ERROR");
        self.span.record("copilot.attempt.outcome", "failed");
        let Some(mut attributes) = self.attributes else { return };
        attributes.push(KeyValue::new("error.type", kind));
        let m = metrics();
        m.operation_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        if self.in_process {
            m.server_request_duration.record(self.started.elapsed().as_secs_f64(), &attributes);
        }
    }
}
