//! The provider-independent core: resolve a request to a plan, then try its targets in order —
//! retrying retryable failures with backoff, falling back to the next target — until one produces
//! its first event; from then on the call is committed to that target and its stream is relayed
//! under the call's deadline, the instance's silence timeout and the server's shutdown. A failure
//! after the first token is never retried elsewhere: the stream ends with a precise status.
//! `Chat` streams what this yields; `Generate` collects it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod embed;
mod turn;

use copilot_provider::{
    ChatEvent, ChatRequest, ChatStream, Completion, EmbedRequest, Embeddings, Feature, Features, ModelInfo,
    ProviderError, ThinkingDelta, TokenCount, ToolCallDelta,
};
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{AliasTarget, DefaultOptions};
use crate::deadline::{CallContext, later};
use crate::error::{GatewayError, Phase};
use crate::resilience::{ConcurrencyLimit, LimitReached, backoff};
use crate::router::{Instance, Plan, Router, Target};
use crate::summary::Summary;
use crate::telemetry::observe::{self, error_type};
use crate::validate::{ValidEmbed, ValidRequest};

pub use embed::Embedded;

/// The longest a call waits on one instance for a retry. An upstream that asks for a longer
/// pause (`Retry-After`) is not waited for in place: the next target is tried, or the client gets
/// the status with that `RetryInfo` at once and decides itself, instead of a call that seems to hang.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// What a client sees of a completion, as it happens. The rare large variants are boxed: every
/// text piece moves through several streams, and a 200-byte event was copied with `memcpy` at each
/// step (BENCHMARKS.md, "The floor of the stack").
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayEvent {
    Delta(String),
    /// A piece of a tool call: the first of an index with its id and name, later ones without.
    ToolCall(Box<ToolCallDelta>),
    Thinking(ThinkingDelta),
    Done(Box<Summary>),
}

/// How much reply text a call may carry (`limits.max_response_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseLimit {
    /// A streamed reply: no chunk may be larger.
    Chunk(usize),
    /// A reply collected whole: all chunks together may not be larger.
    Total(usize),
}

impl ResponseLimit {
    pub fn bytes(self) -> usize {
        match self {
            ResponseLimit::Chunk(max) | ResponseLimit::Total(max) => max,
        }
    }
}

/// A model as ListModels reports it.
pub struct ListedModel {
    pub provider: String,
    pub info: ModelInfo,
}

/// A name clients may use that routes to other models.
pub struct ListedAlias {
    pub name: String,
    pub targets: Vec<String>,
}

pub struct Listing {
    pub models: Vec<ListedModel>,
    pub aliases: Vec<ListedAlias>,
    /// Providers that did not answer, with why.
    pub failures: Vec<(String, String)>,
}

pub struct Gateway {
    router: Router,
    /// Cancelled when the shutdown grace period is over: calls still running end with UNAVAILABLE.
    hard_stop: CancellationToken,
}

/// How one target's attempts ended, when none succeeded.
enum Outcome {
    /// Worth trying the next target.
    FallBack(GatewayError),
    /// Not worth it (the request itself is wrong, the deadline passed, the server is stopping).
    Stop(GatewayError),
}

impl Gateway {
    pub fn new(router: Router, hard_stop: CancellationToken) -> Self {
        Self { router, hard_stop }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts a completion. Returns once a target produced its first event, so that everything
    /// that can go wrong before output — refusals, overload, timeouts, fallbacks — comes back as
    /// the call's status.
    pub async fn chat(
        &self,
        plan: &Plan,
        request: &ValidRequest,
        call: CallContext,
        limit: ResponseLimit,
    ) -> Result<impl Stream<Item = Result<GatewayEvent, GatewayError>> + Send + use<>, GatewayError> {
        // Collected whole, the answer may be read in larger pieces (`Reading::Whole`).
        let collected = matches!(limit, ResponseLimit::Total(_));
        let started = self.run(plan, &ChatOperation { request, collected }, &call).await?;
        let Started { output: (first, upstream), target, attempt, permit, in_flight } = started;
        let hard_stop = self.hard_stop.clone();
        Ok(relay(Relay { target, call, limit, hard_stop, attempt, permit, in_flight }, first, upstream))
    }

    /// Embeds a request's inputs: the first target that answers does, with the same retries,
    /// fallback, limits and deadlines as a completion. The vectors come back as the upstream gave
    /// them, checked for count and shape; the handler normalises them.
    pub async fn embed(&self, plan: &Plan, request: ValidEmbed, call: CallContext) -> Result<Embedded, GatewayError> {
        let started = self.run(plan, &EmbedOperation { request: &request }, &call).await?;
        let Started { output: embeddings, target, attempt, .. } = started;
        let embedded = embed::checked(&target, request.inputs.len(), embeddings)?;
        attempt.embedded(&embedded, &call);
        Ok(embedded)
    }

    /// Counts a conversation's input tokens: the first target whose provider counts does, with the
    /// same retries, fallback (skipping targets that cannot count), limits and deadlines as a
    /// completion.
    pub async fn count_tokens(
        &self,
        plan: &Plan,
        request: ValidRequest,
        call: CallContext,
    ) -> Result<Counted, GatewayError> {
        let started = self.run(plan, &CountOperation { request: &request }, &call).await?;
        let Started { output: count, target, attempt, .. } = started;
        let answered_by = if count.model.is_empty() { &target.model } else { &count.model };
        let counted = Counted {
            model: format!("{}/{}", target.instance.name, answered_by),
            input_tokens: count.input_tokens,
            exact: count.exact,
        };
        attempt.counted(&counted, &call);
        Ok(counted)
    }

    /// Tries the plan's targets in order until one starts `operation`; when every one failed, the
    /// last failure decides the status.
    async fn run<O: Operation>(
        &self,
        plan: &Plan,
        operation: &O,
        call: &CallContext,
    ) -> Result<Started<O::Output>, GatewayError> {
        let order = plan.attempt_order();
        let mut failures: Vec<GatewayError> = Vec::new();
        for (index, target) in order.iter().enumerate() {
            let fallback_reason = failures.last().map(error_type);
            match self.try_target(target, operation, call, fallback_reason).await {
                Ok(started) => return Ok(started),
                Err(Outcome::Stop(error)) => return Err(error),
                Err(Outcome::FallBack(error)) => {
                    if index + 1 < order.len() {
                        tracing::warn!(
                            target = %format!("{}/{}", target.instance.name, target.model),
                            error = %error,
                            "falling back to the next target"
                        );
                    }
                    failures.push(error);
                }
            }
        }
        let last = failures.pop().unwrap_or(GatewayError::NoDefaultModel);
        Err(match &plan.alias {
            Some(alias) if !failures.is_empty() => {
                GatewayError::AllTargetsFailed { alias: alias.clone(), earlier: failures, last: Box::new(last) }
            }
            _ => last,
        })
    }

    /// Attempts one target, retrying what is worth retrying, until `operation` starts on it.
    async fn try_target<O: Operation>(
        &self,
        target: &Target,
        operation: &O,
        call: &CallContext,
        fallback_reason: Option<String>,
    ) -> Result<Started<O::Output>, Outcome> {
        let instance = &target.instance;
        if let Some(feature) = operation.needs().first_missing(instance.provider.features()) {
            // Refused here rather than sent: the adapter would have to drop what it cannot say.
            let message = match instance.provider.lacking(feature) {
                Some(why) => format!("provider '{}': {why}", instance.name),
                None if feature == Feature::CountTokens => format!(
                    "provider '{}' ({}) has no token-counting endpoint, and Copilot does not guess",
                    instance.name, instance.labels.gen_ai_provider
                ),
                None => {
                    format!("provider '{}' ({}) cannot translate it", instance.name, instance.labels.gen_ai_provider)
                }
            };
            let error = ProviderError::Unsupported { feature, message };
            return Err(Outcome::FallBack(GatewayError::Provider { target: target.name(), error, chunks_sent: 0 }));
        }
        let mut last_error: Option<GatewayError> = None;
        for attempt in 0..=instance.policy.retries {
            let (kind, reason) = match (&last_error, &fallback_reason) {
                (Some(error), _) => ("retry", Some(error_type(error))),
                (None, Some(reason)) => ("fallback", Some(reason.clone())),
                (None, None) => ("first", None),
            };
            if attempt > 0 {
                let retry_after = match &last_error {
                    Some(GatewayError::Provider { error, .. }) => error.retry_after(),
                    _ => None,
                };
                let pause =
                    backoff(attempt, instance.policy.retry_backoff, instance.policy.retry_backoff_max, retry_after);
                if pause > MAX_RETRY_PAUSE
                    || call.deadline().is_some_and(|deadline| later(Instant::now(), pause) >= deadline)
                {
                    // No time left (or too long) to wait for a retry here: let the next target
                    // have a go, or give the caller the upstream's own hint.
                    break;
                }
                tracing::info!(
                    target = %format!("{}/{}", instance.name, target.model),
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    "retrying"
                );
                tokio::select! {
                    _ = self.hard_stop.cancelled() => return Err(Outcome::Stop(GatewayError::ShuttingDown)),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            let Some(pass) = instance.state.breaker.allow() else {
                // Opened by this call's own failures: its last error says more than "circuit open".
                let error = last_error.unwrap_or(GatewayError::CircuitOpen { target: target.name() });
                return Err(Outcome::FallBack(error));
            };
            let permit = match &instance.state.limit {
                Some(limit) => match self.queue(limit, call).await? {
                    Ok(permit) => Some(permit),
                    Err(_) if call.deadline().is_some_and(|deadline| Instant::now() >= deadline) => {
                        // The caller's own deadline ended the wait: its status, not the instance's.
                        let budget = call.budget.unwrap_or_default();
                        let phase = Phase::Queue;
                        return Err(Outcome::Stop(GatewayError::DeadlineExceeded {
                            target: target.name(),
                            budget,
                            phase,
                        }));
                    }
                    Err(reached) => {
                        let error = ProviderError::CapacityExhausted {
                            message: format!(
                                "{} calls are running on '{}' and {} are waiting (its max_concurrency and max_queue)",
                                reached.running, instance.name, reached.waiting
                            ),
                            retry_after: Some(Duration::from_secs(1)),
                        };
                        return Err(Outcome::FallBack(GatewayError::Provider {
                            target: target.name(),
                            error,
                            chunks_sent: 0,
                        }));
                    }
                },
                None => None,
            };
            let in_flight = InFlight::new(instance.clone());
            let attempt_span = operation.span(target, attempt + 1, kind, reason.as_deref());
            let started = Instant::now();
            let outcome = operation.attempt(self, target, call, &attempt_span).instrument(attempt_span.clone()).await;
            match outcome {
                Ok(output) => {
                    pass.success();
                    let attempt = observe::Attempt::new(attempt_span, target, started, O::NAME);
                    return Ok(Started { output, target: target.clone(), attempt, permit, in_flight });
                }
                Err(error) => {
                    observe::Attempt::new(attempt_span, target, started, O::NAME).failed(&error);
                    let verdict = classify(&error);
                    if verdict.counts_against_instance {
                        pass.failure();
                    }
                    if !verdict.fall_back {
                        return Err(Outcome::Stop(error));
                    }
                    let retry = verdict.retry;
                    last_error = Some(error);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(Outcome::FallBack(last_error.unwrap_or(GatewayError::CircuitOpen { target: target.name() })))
    }

    /// A place on the instance, waiting in its queue until its `queue_timeout` or the caller's
    /// deadline; the hard stop ends the wait (a queued call must not outlive the grace period
    /// because the call it waits for is slow to end).
    async fn queue(
        &self,
        limit: &ConcurrencyLimit,
        call: &CallContext,
    ) -> Result<Result<OwnedSemaphorePermit, LimitReached>, Outcome> {
        tokio::select! {
            _ = self.hard_stop.cancelled() => Err(Outcome::Stop(GatewayError::ShuttingDown)),
            acquired = limit.acquire(call.deadline()) => Ok(acquired),
        }
    }

    /// Sends a chat request and waits for the first event, under the first-token timeout.
    async fn first_event(
        &self,
        target: &Target,
        request: &ValidRequest,
        collected: bool,
        call: &CallContext,
        attempt_span: &tracing::Span,
    ) -> Result<(ChatEvent, ChatStream), GatewayError> {
        let instance = &target.instance;
        let upstream_request = ChatRequest {
            model: target.model.clone(),
            messages: request.messages.clone(),
            options: with_defaults(request.options.clone(), &instance.defaults),
            tools: request.tools.clone(),
            tool_choice: request.tool_choice.clone(),
            response_format: request.response_format.clone(),
            reasoning: request.reasoning,
            trace_context: observe::trace_context(attempt_span),
            collected,
        };
        let give_up = wake_at(call, Instant::now(), instance.policy.first_token_timeout);
        let mut phase = Phase::Response;
        let first = async {
            let mut upstream = instance.provider.chat(upstream_request).await?;
            phase = Phase::Output { chunks_sent: 0 };
            match upstream.next().await {
                Some(Ok(event)) => Ok((event, upstream)),
                Some(Err(error)) => Err(error),
                None => Err(ProviderError::Interrupted("the provider closed the stream before any output".into())),
            }
        };
        tokio::select! {
            biased;
            _ = self.hard_stop.cancelled() => Err(GatewayError::ShuttingDown),
            result = tokio::time::timeout_at(give_up, first) => match result {
                Ok(Ok(started)) => Ok(started),
                Ok(Err(error)) => Err(GatewayError::Provider { target: target.name(), error, chunks_sent: 0 }),
                Err(_) => Err(timed_out(call, target, instance.policy.first_token_timeout, phase)),
            },
        }
    }

    /// Asks every instance for its models at once, each bounded by its list timeout. Instances that
    /// fail are reported beside the others' models; the call fails only if every one failed.
    pub async fn list_models(&self) -> Result<Listing, GatewayError> {
        let calls = self.router.instances().map(|instance| async move {
            let result = match tokio::time::timeout(instance.policy.list_timeout, instance.provider.list_models()).await
            {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Unreachable(format!(
                    "no answer within {}",
                    humantime::format_duration(instance.policy.list_timeout)
                ))),
            };
            (instance.name.clone(), result)
        });
        let mut models = Vec::new();
        let mut failures = Vec::new();
        for (provider, result) in futures::future::join_all(calls).await {
            match result {
                Ok(list) => {
                    models.extend(list.into_iter().map(|info| ListedModel { provider: provider.clone(), info }))
                }
                Err(error) => {
                    tracing::warn!(provider = %provider, error = %error, "provider did not list its models");
                    failures.push((provider, error.to_string()));
                }
            }
        }
        if models.is_empty() && !failures.is_empty() {
            return Err(GatewayError::NoProviderAnswered(failures));
        }
        let aliases = self
            .router
            .aliases()
            .iter()
            .map(|(name, targets)| ListedAlias {
                name: name.clone(),
                targets: targets.iter().flat_map(AliasTarget::models).map(String::from).collect(),
            })
            .collect();
        Ok(Listing { models, aliases, failures })
    }

    /// Everything known about one model (for an alias: about the first target that answers).
    pub async fn describe(&self, plan: &Plan) -> Result<(ListedModel, Option<ListedAlias>), GatewayError> {
        let alias = plan.alias.clone().map(|alias| ListedAlias {
            name: alias,
            targets: plan.tiers.iter().flatten().map(|t| format!("{}/{}", t.instance.name, t.model)).collect(),
        });
        let mut last = None;
        for target in plan.attempt_order() {
            let instance = &target.instance;
            let result =
                tokio::time::timeout(instance.policy.list_timeout, instance.provider.describe_model(&target.model))
                    .await
                    .unwrap_or_else(|_| Err(ProviderError::Unreachable("no answer in time".into())));
            match result {
                Ok(info) => return Ok((ListedModel { provider: instance.name.clone(), info }, alias)),
                Err(error) => last = Some(GatewayError::Provider { target: target.name(), error, chunks_sent: 0 }),
            }
        }
        Err(last.unwrap_or(GatewayError::NoDefaultModel))
    }
}

/// What to do after an attempt failed.
struct Verdict {
    /// Try this target again (after a backoff).
    retry: bool,
    /// Try the next target if this one gives up.
    fall_back: bool,
    /// Count towards this instance's circuit breaker.
    counts_against_instance: bool,
}

fn classify(error: &GatewayError) -> Verdict {
    let verdict = |retry, fall_back, counts_against_instance| Verdict { retry, fall_back, counts_against_instance };
    match error {
        GatewayError::Provider { error, .. } => match error {
            // The request itself is the problem: another target would say the same.
            ProviderError::InvalidRequest(_) | ProviderError::ModelNotFound { .. } => verdict(false, false, false),
            ProviderError::Unreachable(_)
            | ProviderError::Overloaded { .. }
            | ProviderError::Upstream { .. }
            | ProviderError::Interrupted(_)
            | ProviderError::MidStream(_) => verdict(true, true, true),
            // Being rate limited or full is not ill health: no breaker, but retry and fall back.
            ProviderError::RateLimited { .. } | ProviderError::CapacityExhausted { .. } => verdict(true, true, false),
            ProviderError::Unauthorized(_) | ProviderError::Protocol(_) | ProviderError::ModelUnusable(_) => {
                verdict(false, true, true)
            }
            // This model cannot; another may. Not ill health.
            ProviderError::Unsupported { .. } => verdict(false, true, false),
        },
        // Too slow to start: another attempt here would likely be as slow.
        GatewayError::UpstreamTimeout { .. } => verdict(false, true, true),
        _ => verdict(false, false, false),
    }
}

/// One kind of upstream call the core drives through a plan: a completion (up to its first event),
/// an embedding call or a token count (their whole answer). Retries, fallback, the breaker,
/// concurrency limits and refusals by feature are the same for all.
trait Operation: Sync {
    /// The GenAI operation name: `chat`, `embeddings` or `count_tokens`.
    const NAME: &'static str;
    type Output: Send;
    /// What the call needs of a target's adapter.
    fn needs(&self) -> Features;
    /// The attempt's span.
    fn span(&self, target: &Target, number: u32, kind: &'static str, reason: Option<&str>) -> tracing::Span;
    /// One attempt on `target`.
    fn attempt(
        &self,
        gateway: &Gateway,
        target: &Target,
        call: &CallContext,
        span: &tracing::Span,
    ) -> impl std::future::Future<Output = Result<Self::Output, GatewayError>> + Send;
}

/// A target's attempt that started, and what the call holds until it ends.
struct Started<T> {
    output: T,
    target: Target,
    attempt: observe::Attempt,
    /// The instance's concurrency place, when it has a limit.
    permit: Option<OwnedSemaphorePermit>,
    in_flight: InFlight,
}

struct ChatOperation<'a> {
    request: &'a ValidRequest,
    /// `ChatRequest::collected`.
    collected: bool,
}

impl Operation for ChatOperation<'_> {
    const NAME: &'static str = "chat";
    type Output = (ChatEvent, ChatStream);

    fn needs(&self) -> Features {
        self.request.needs()
    }

    fn span(&self, target: &Target, number: u32, kind: &'static str, reason: Option<&str>) -> tracing::Span {
        observe::attempt_span(target, self.request, number, kind, reason)
    }

    async fn attempt(
        &self,
        gateway: &Gateway,
        target: &Target,
        call: &CallContext,
        span: &tracing::Span,
    ) -> Result<Self::Output, GatewayError> {
        gateway.first_event(target, self.request, self.collected, call, span).await
    }
}

struct EmbedOperation<'a> {
    request: &'a ValidEmbed,
}

impl Operation for EmbedOperation<'_> {
    const NAME: &'static str = "embeddings";
    type Output = Embeddings;

    fn needs(&self) -> Features {
        let needs = Features::of(&[Feature::Embeddings]);
        if self.request.dimensions.is_some() { needs.with(Feature::EmbeddingDimensions) } else { needs }
    }

    fn span(&self, target: &Target, number: u32, kind: &'static str, reason: Option<&str>) -> tracing::Span {
        observe::embed_span(target, self.request, number, kind, reason)
    }

    /// The whole answer, under the first-token timeout (an embedding answer comes all at once).
    async fn attempt(
        &self,
        gateway: &Gateway,
        target: &Target,
        call: &CallContext,
        span: &tracing::Span,
    ) -> Result<Embeddings, GatewayError> {
        let instance = &target.instance;
        let request = EmbedRequest {
            model: target.model.clone(),
            inputs: self.request.inputs.clone(),
            dimensions: self.request.dimensions,
            task: self.request.task,
            truncate: self.request.truncate,
            trace_context: observe::trace_context(span),
        };
        whole_answer(gateway, target, call, instance.provider.embed(request)).await
    }
}

/// A unary upstream answer (embeddings, a count), which comes all at once: bounded by the
/// first-token timeout and the call's deadline, and ended by a hard stop.
async fn whole_answer<T>(
    gateway: &Gateway,
    target: &Target,
    call: &CallContext,
    answer: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, GatewayError> {
    let timeout = target.instance.policy.first_token_timeout;
    let give_up = wake_at(call, Instant::now(), timeout);
    tokio::select! {
        biased;
        _ = gateway.hard_stop.cancelled() => Err(GatewayError::ShuttingDown),
        result = tokio::time::timeout_at(give_up, answer) => match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(GatewayError::Provider { target: target.name(), error, chunks_sent: 0 }),
            Err(_) => Err(timed_out(call, target, timeout, Phase::Response)),
        },
    }
}

/// A `CountTokens` call's answer, as clients get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The model that counted, in routable `provider/model` form.
    pub model: String,
    pub input_tokens: u32,
    /// The provider says the count is exact (false: its own estimate).
    pub exact: bool,
}

/// Counting a conversation's tokens: the chat request without generation options, whose target's
/// adapter must count (and translate what the conversation holds: tools, images).
struct CountOperation<'a> {
    request: &'a ValidRequest,
}

impl Operation for CountOperation<'_> {
    /// The GenAI conventions name no operation for counting; this is Copilot's own name for it.
    const NAME: &'static str = "count_tokens";
    type Output = TokenCount;

    fn needs(&self) -> Features {
        self.request.needs().with(Feature::CountTokens)
    }

    fn span(&self, target: &Target, number: u32, kind: &'static str, reason: Option<&str>) -> tracing::Span {
        observe::count_span(target, self.request, number, kind, reason)
    }

    /// The whole answer, under the first-token timeout (a count comes all at once).
    async fn attempt(
        &self,
        gateway: &Gateway,
        target: &Target,
        call: &CallContext,
        span: &tracing::Span,
    ) -> Result<TokenCount, GatewayError> {
        let instance = &target.instance;
        let request = ChatRequest {
            model: target.model.clone(),
            messages: self.request.messages.clone(),
            tools: self.request.tools.clone(),
            trace_context: observe::trace_context(span),
            ..Default::default()
        };
        whole_answer(gateway, target, call, instance.provider.count_tokens(request)).await
    }
}

/// Options the request left unset take the instance's configured defaults.
fn with_defaults(
    mut options: copilot_provider::GenerationOptions,
    defaults: &DefaultOptions,
) -> copilot_provider::GenerationOptions {
    options.temperature = options.temperature.or(defaults.temperature);
    options.max_tokens = options.max_tokens.or(defaults.max_tokens);
    options.top_p = options.top_p.or(defaults.top_p);
    options.top_k = options.top_k.or(defaults.top_k);
    options
}

/// The next moment to give up: the call's deadline or the end of the allowed silence.
fn wake_at(call: &CallContext, last_progress: Instant, silence: Duration) -> Instant {
    let silence_ends = later(last_progress, silence);
    match call.deadline() {
        Some(deadline) => deadline.min(silence_ends),
        None => silence_ends,
    }
}

fn timed_out(call: &CallContext, target: &Target, timeout: Duration, phase: Phase) -> GatewayError {
    match (call.budget, call.deadline()) {
        (Some(budget), Some(deadline)) if Instant::now() >= deadline => {
            GatewayError::DeadlineExceeded { target: target.name(), budget, phase }
        }
        _ => GatewayError::UpstreamTimeout { target: target.name(), timeout, phase },
    }
}

/// Counts a call against its instance for as long as it runs.
struct InFlight(Arc<Instance>);

impl InFlight {
    fn new(instance: Arc<Instance>) -> Self {
        instance.state.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(instance)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays the upstream stream, starting with the event already received. Dropping the returned
/// stream drops the upstream one, which closes the upstream connection: that is how a client's
/// cancel reaches the provider. It also holds the instance's concurrency permit until the end.
#[allow(clippy::too_many_arguments)]
/// What a relayed stream carries besides the upstream: where it goes, the call's clock and
/// limit, the shutdown signal, its attempt's telemetry, and what it holds until it ends.
struct Relay {
    target: Target,
    call: CallContext,
    limit: ResponseLimit,
    hard_stop: CancellationToken,
    attempt: observe::Attempt,
    /// The instance's concurrency place, when it has a limit.
    permit: Option<OwnedSemaphorePermit>,
    in_flight: InFlight,
}

fn relay(
    relay: Relay,
    first: ChatEvent,
    mut upstream: ChatStream,
) -> impl Stream<Item = Result<GatewayEvent, GatewayError>> + Send + 'static {
    let Relay { target, call, limit, hard_stop, mut attempt, permit, in_flight } = relay;
    async_stream::stream! {
        let _permit = permit;
        let _in_flight = in_flight;
        let silence = target.instance.policy.idle_timeout;
        let mut chunks_sent = 0usize;
        let mut bytes_sent = 0usize;
        let mut first_token_at: Option<Instant> = None;
        let mut last_progress = Instant::now();
        // One timer for the whole stream, re-armed lazily when it fires, rather than reset per
        // token: the per-token path stays free of timer bookkeeping.
        let timer = tokio::time::sleep_until(wake_at(&call, last_progress, silence));
        tokio::pin!(timer);
        let stop = hard_stop.clone().cancelled_owned();
        tokio::pin!(stop);
        let mut pending = Some(first);
        let mut turn = turn::Turn::default();
        loop {
            let next = match pending.take() {
                Some(event) => Ok(Some(Ok(event))),
                // Checked first on every turn, so a stream whose upstream is always ready stops
                // too; the upstream is polled before the signal, which is then only waited on
                // when the upstream has nothing (polling it costs more than the check).
                None if hard_stop.is_cancelled() => Err(GatewayError::ShuttingDown),
                None => tokio::select! {
                    biased;
                    item = upstream.next() => Ok(item),
                    _ = &mut stop => Err(GatewayError::ShuttingDown),
                    _ = &mut timer => {
                        let wake = wake_at(&call, last_progress, silence);
                        if Instant::now() < wake {
                            timer.as_mut().reset(wake);
                            continue;
                        }
                        Err(timed_out(&call, &target, silence, Phase::Output { chunks_sent }))
                    }
                },
            };
            let event = match next {
                Ok(Some(Ok(ChatEvent::ToolCall(delta)))) => match turn.tool_call(delta) {
                    Ok(delta) => Ok(Some(Ok(ChatEvent::ToolCall(delta)))),
                    Err(error) => Ok(Some(Err(error))),
                },
                other => other,
            };
            match event {
                Ok(Some(Ok(event))) => match output(event) {
                    Upstream::End(mut completion) => {
                        let (owed, reason) = turn.finish(completion.finish_reason);
                        completion.finish_reason = reason;
                        for delta in owed {
                            attempt.tool_call(Instant::now(), &delta);
                            yield Ok(GatewayEvent::ToolCall(Box::new(delta)));
                        }
                        let summary = summarize(&target, &call, first_token_at, *completion);
                        attempt.completed(&summary, &call);
                        yield Ok(GatewayEvent::Done(Box::new(summary)));
                        break;
                    }
                    Upstream::Output(output) => {
                        // Checked before the output is passed on, so a Generate never holds more
                        // than the limit; breaking out drops the upstream stream, which cancels
                        // its request.
                        let size = output_bytes(&output);
                        bytes_sent = bytes_sent.saturating_add(size);
                        let chunk_bytes = match limit {
                            ResponseLimit::Chunk(max) => (size > max).then_some(Some(size)),
                            ResponseLimit::Total(max) => (bytes_sent > max).then_some(None),
                        };
                        if let Some(chunk_bytes) = chunk_bytes {
                            let limit = limit.bytes();
                            let error = GatewayError::ResponseTooLarge { target: target.name(), limit, chunk_bytes };
                            attempt.failed(&error);
                            yield Err(error);
                            break;
                        }
                        last_progress = Instant::now();
                        first_token_at.get_or_insert(last_progress);
                        chunks_sent += 1;
                        match &output {
                            GatewayEvent::Delta(text) => attempt.chunk(last_progress, text),
                            GatewayEvent::ToolCall(delta) => attempt.tool_call(last_progress, delta),
                            GatewayEvent::Thinking(delta) => attempt.thinking(last_progress, delta),
                            GatewayEvent::Done(_) => {}
                        }
                        yield Ok(output);
                    }
                },
                Ok(Some(Err(error))) => {
                    let error = GatewayError::Provider { target: target.name(), error, chunks_sent };
                    attempt.failed(&error);
                    yield Err(error);
                    break;
                }
                Ok(None) => {
                    let error = ProviderError::Interrupted("the provider closed the stream without finishing".into());
                    let error = GatewayError::Provider { target: target.name(), error, chunks_sent };
                    attempt.failed(&error);
                    yield Err(error);
                    break;
                }
                Err(error) => {
                    attempt.failed(&error);
                    yield Err(error);
                    break;
                }
            }
        }
    }
}

/// An upstream event: output as clients get it, or the completion that ends the stream.
enum Upstream {
    Output(GatewayEvent),
    End(Box<Completion>),
}

fn output(event: ChatEvent) -> Upstream {
    match event {
        ChatEvent::Delta(text) => Upstream::Output(GatewayEvent::Delta(text)),
        ChatEvent::ToolCall(delta) => Upstream::Output(GatewayEvent::ToolCall(delta)),
        ChatEvent::Thinking(delta) => Upstream::Output(GatewayEvent::Thinking(delta)),
        ChatEvent::Done(completion) => Upstream::End(completion),
    }
}

/// The bytes an output event adds to the reply, for `limits.max_response_bytes`.
fn output_bytes(event: &GatewayEvent) -> usize {
    match event {
        GatewayEvent::Delta(text) => text.len(),
        GatewayEvent::ToolCall(delta) => {
            delta.arguments.len()
                + delta.signature.len()
                + delta.id.as_ref().map_or(0, String::len)
                + delta.name.as_ref().map_or(0, String::len)
        }
        GatewayEvent::Thinking(ThinkingDelta::Text(text)) => text.len(),
        GatewayEvent::Thinking(ThinkingDelta::Signature(bytes) | ThinkingDelta::Redacted(bytes)) => bytes.len(),
        GatewayEvent::Done(_) => 0,
    }
}

fn summarize(target: &Target, call: &CallContext, first_token_at: Option<Instant>, completion: Completion) -> Summary {
    let now = Instant::now();
    let answered_by = if completion.model.is_empty() { &target.model } else { &completion.model };
    let output_tokens = f64::from(completion.usage.output_tokens);
    // Prefer the upstream's own generation time: it excludes network and queueing.
    let generation_secs = match completion.timings.generation {
        Some(d) if !d.is_zero() => d.as_secs_f64(),
        _ => first_token_at.map(|t| (now - t).as_secs_f64()).unwrap_or_default(),
    };
    let output_tokens_per_second = if generation_secs > 0.0 { output_tokens / generation_secs } else { 0.0 };
    Summary {
        model: format!("{}/{}", target.instance.name, answered_by),
        time_to_first_token: first_token_at.map(|t| t - call.received),
        total_duration: now - call.received,
        output_tokens_per_second,
        completion,
    }
}

#[cfg(test)]
mod tests;
