//! The provider-independent core: route a validated request, apply per-provider defaults, start
//! the upstream call, and relay its stream under the call's deadline, the provider's silence
//! timeout and the server's shutdown. `Chat` streams what this yields; `Generate` collects it.

use std::time::Duration;

use copilot_provider::{ChatEvent, ChatRequest, Completion, ModelInfo, ProviderError};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::DefaultOptions;
use crate::deadline::CallContext;
use crate::error::{GatewayError, Phase, Target};
use crate::router::{Route, Router};
use crate::validate::ValidRequest;

/// What a client sees of a completion, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayEvent {
    Delta(String),
    Done(Summary),
}

/// The end of a successful completion: what the upstream reported, plus what the gateway measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The model that answered, in routable `provider/model` form.
    pub model: String,
    pub completion: Completion,
    pub time_to_first_token: Option<Duration>,
    pub total_duration: Duration,
    pub output_tokens_per_second: f64,
}

/// A model as ListModels reports it.
pub struct ListedModel {
    pub provider: String,
    pub info: ModelInfo,
}

pub struct Gateway {
    router: Router,
    /// Cancelled when the shutdown grace period is over: calls still running end with UNAVAILABLE.
    hard_stop: CancellationToken,
}

impl Gateway {
    pub fn new(router: Router, hard_stop: CancellationToken) -> Self {
        Self { router, hard_stop }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts a completion. Returns once the upstream accepted the request, so that refusals
    /// (unknown model, overload, unreachable) come back as the call's status, before any output.
    pub async fn chat(
        &self,
        request: ValidRequest,
        call: CallContext,
    ) -> Result<impl Stream<Item = Result<GatewayEvent, GatewayError>> + Send + 'static, GatewayError> {
        let route = self.router.resolve(&request.model)?;
        let upstream_request = ChatRequest {
            model: route.model.clone(),
            messages: request.messages,
            options: with_defaults(request.options, &route.entry.defaults),
        };
        let target = route.target();
        let start = route.entry.provider.chat(upstream_request);
        let upstream = tokio::select! {
            biased;
            _ = self.hard_stop.cancelled() => return Err(GatewayError::ShuttingDown),
            started = tokio::time::timeout_at(wake_at(&call, Instant::now(), route.entry.timeout), start) => match started {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(GatewayError::Provider { target, error, chunks_sent: 0 }),
                Err(_) => return Err(timed_out(&call, &route, target, Phase::Response)),
            },
        };
        Ok(relay(upstream, route, call, self.hard_stop.clone()))
    }

    /// Asks every provider for its models at once, each bounded by its list timeout. One provider
    /// failing does not fail the call unless every provider failed.
    pub async fn list_models(&self) -> Result<Vec<ListedModel>, GatewayError> {
        let calls = self.router.providers().map(|entry| async move {
            let result = match tokio::time::timeout(entry.list_timeout, entry.provider.list_models()).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Unreachable(format!(
                    "no answer within {}",
                    humantime::format_duration(entry.list_timeout)
                ))),
            };
            (entry.name.clone(), result)
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
        Ok(models)
    }
}

/// Options the request left unset take the provider's configured defaults.
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

/// The next moment to give up: the call's deadline or the provider's silence timeout.
fn wake_at(call: &CallContext, last_progress: Instant, silence: Duration) -> Instant {
    let silence_ends = last_progress + silence;
    match call.deadline() {
        Some(deadline) => deadline.min(silence_ends),
        None => silence_ends,
    }
}

fn timed_out(call: &CallContext, route: &Route, target: Box<Target>, phase: Phase) -> GatewayError {
    match (call.budget, call.deadline()) {
        (Some(budget), Some(deadline)) if Instant::now() >= deadline => {
            GatewayError::DeadlineExceeded { target, budget, phase }
        }
        _ => GatewayError::UpstreamTimeout { target, timeout: route.entry.timeout, phase },
    }
}

/// Relays the upstream stream. Dropping the returned stream drops the upstream one, which closes
/// the upstream connection: that is how a client's cancel reaches the provider.
fn relay(
    mut upstream: copilot_provider::ChatStream,
    route: Route,
    call: CallContext,
    hard_stop: CancellationToken,
) -> impl Stream<Item = Result<GatewayEvent, GatewayError>> + Send + 'static {
    async_stream::stream! {
        let silence = route.entry.timeout;
        let mut chunks_sent = 0usize;
        let mut first_token_at: Option<Instant> = None;
        let mut last_progress = Instant::now();
        // One timer for the whole stream, re-armed lazily when it fires, rather than reset per
        // token: the per-token path stays free of timer bookkeeping.
        let timer = tokio::time::sleep_until(wake_at(&call, last_progress, silence));
        tokio::pin!(timer);
        let stop = hard_stop.cancelled_owned();
        tokio::pin!(stop);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stop => Err(GatewayError::ShuttingDown),
                item = upstream.next() => Ok(item),
                _ = &mut timer => {
                    let wake = wake_at(&call, last_progress, silence);
                    if Instant::now() < wake {
                        timer.as_mut().reset(wake);
                        continue;
                    }
                    Err(timed_out(&call, &route, route.target(), Phase::Output { chunks_sent }))
                }
            };
            match next {
                Ok(Some(Ok(ChatEvent::Delta(text)))) => {
                    last_progress = Instant::now();
                    first_token_at.get_or_insert(last_progress);
                    chunks_sent += 1;
                    yield Ok(GatewayEvent::Delta(text));
                }
                Ok(Some(Ok(ChatEvent::Done(completion)))) => {
                    yield Ok(GatewayEvent::Done(summarize(&route, &call, first_token_at, completion)));
                    break;
                }
                Ok(Some(Err(error))) => {
                    yield Err(GatewayError::Provider { target: route.target(), error, chunks_sent });
                    break;
                }
                Ok(None) => {
                    let error = ProviderError::Interrupted("the provider closed the stream without finishing".into());
                    yield Err(GatewayError::Provider { target: route.target(), error, chunks_sent });
                    break;
                }
                Err(error) => {
                    yield Err(error);
                    break;
                }
            }
        }
    }
}

fn summarize(route: &Route, call: &CallContext, first_token_at: Option<Instant>, completion: Completion) -> Summary {
    let now = Instant::now();
    let answered_by = if completion.model.is_empty() { &route.model } else { &completion.model };
    let output_tokens = f64::from(completion.usage.output_tokens);
    // Prefer the upstream's own generation time: it excludes network and queueing.
    let generation_secs = match completion.timings.generation {
        Some(d) if !d.is_zero() => d.as_secs_f64(),
        _ => first_token_at.map(|t| (now - t).as_secs_f64()).unwrap_or_default(),
    };
    let output_tokens_per_second = if generation_secs > 0.0 { output_tokens / generation_secs } else { 0.0 };
    Summary {
        model: format!("{}/{}", route.entry.name, answered_by),
        time_to_first_token: first_token_at.map(|t| t - call.received),
        total_duration: now - call.received,
        output_tokens_per_second,
        completion,
    }
}
