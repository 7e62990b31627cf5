//! The `copilot.v1.Copilot` gRPC handlers: validate, hand to the gateway, translate back to proto.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use copilot_provider::{AssembledTurn, Completion, FinishReason, Part, ThinkingDelta};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Reservation};
use crate::cache::{CacheControl, Lookup, ResponseCache};
use crate::config::LimitsConfig;
use crate::deadline::CallContext;
use crate::error::GatewayError;
use crate::gateway::{Gateway, GatewayEvent, ListedModel, ResponseLimit};
use crate::proto::v1 as pb;
use crate::router::Plan;
use crate::summary::Summary;
use crate::validate;

pub struct CopilotApi {
    gateway: Arc<Gateway>,
    limits: LimitsConfig,
    cache: ResponseCache,
}

impl CopilotApi {
    pub fn new(gateway: Arc<Gateway>, limits: LimitsConfig) -> Self {
        Self { gateway, limits, cache: ResponseCache::disabled() }
    }

    /// Answers from `cache` where it can (see `cache.rs`).
    pub fn with_cache(mut self, cache: ResponseCache) -> Self {
        self.cache = cache;
        self
    }

    /// Where the call goes: resolved once, here, then checked against the caller's key (nothing
    /// to check when auth is off) and handed to the gateway.
    fn route(&self, caller: Option<&Caller>, model: &str) -> Result<Plan, Status> {
        let plan = self.gateway.router().resolve(model)?;
        if let Some(caller) = caller {
            caller.check_model(&plan.allow_list_name())?;
        }
        Ok(plan)
    }
}

/// Holds the completion's estimated tokens against the caller's budget until it is settled (a
/// reservation dropped unsettled, by an error or a cancelled call, is given back). Without a
/// `max_tokens` in the request, the instances' configured `defaults.max_tokens` bounds it.
async fn reserve(
    caller: Option<&Caller>,
    plan: &Plan,
    valid: &validate::ValidRequest,
) -> Result<Option<Reservation>, Status> {
    let Some(caller) = caller else { return Ok(None) };
    let prompt = valid.messages.iter().flat_map(|message| message.parts.iter()).filter_map(|part| match part {
        Part::Text(text) => Some(text.as_str()),
        Part::ToolCall(call) => Some(call.arguments.as_str()),
        _ => None,
    });
    let max_tokens = valid.options.max_tokens.or_else(|| plan.default_max_tokens());
    Ok(Some(caller.reserve(prompt, max_tokens).await?))
}

type ChatResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ChatResponse, Status>> + Send>>;

/// The future a handler returns: `answer`'s for a call that could be prepared, else the refusal.
fn answered<'a, T, F>(
    call: Result<CompletionCall, Status>,
    answer: impl FnOnce(CompletionCall) -> F,
) -> BoxFuture<'a, Result<T, Status>>
where
    F: Future<Output = Result<T, Status>> + Send + 'a,
    T: Send + 'a,
{
    match call {
        Ok(call) => Box::pin(answer(call)),
        Err(status) => Box::pin(futures::future::ready(Err(status))),
    }
}

/// A `Generate` or `Chat` call, validated and routed.
struct CompletionCall {
    call: CallContext,
    caller: Option<Caller>,
    cache: CacheControl,
    valid: validate::ValidRequest,
    plan: Plan,
}

impl CopilotApi {
    /// Everything about a completion call that needs no waiting: its deadline, its caller, its
    /// validated request and its route.
    fn completion_call<T>(
        &self,
        request: Request<T>,
        cache: impl FnOnce(&T) -> Option<&pb::CacheControl>,
        validate: impl FnOnce(T, &LimitsConfig) -> Result<validate::ValidRequest, GatewayError>,
    ) -> Result<CompletionCall, Status> {
        let call = CallContext::from_request(&request);
        let caller = Caller::of(&request);
        let cache = validate::cache_control(cache(request.get_ref()))?;
        let valid = validate(request.into_inner(), &self.limits)?;
        let plan = self.route(caller.as_ref(), &valid.model)?;
        Ok(CompletionCall { call, caller, cache, valid, plan })
    }

    /// The cache, the caller's budget, then the gateway, the answer collected whole.
    #[expect(clippy::manual_async_fn, reason = "an async fn would keep a second copy of `generate`, its argument")]
    fn generate_answer(
        &self,
        generate: CompletionCall,
    ) -> impl Future<Output = Result<Response<pb::GenerateResponse>, Status>> + Send {
        async move {
            let CompletionCall { call, caller, cache, valid, plan } = &generate;
            let storing = match self.cache.generate(caller.as_ref(), plan, valid, *cache, *call).await? {
                Lookup::Hit(response) => return Ok(Response::new(response)),
                Lookup::Miss(storing) => storing,
            };
            let mut reservation = reserve(caller.as_ref(), plan, valid).await?;
            // Collected whole, so bounded whole: past the limit the gateway cancels the upstream.
            let limit = ResponseLimit::Total(self.limits.max_response_bytes);
            let events = self.gateway.chat(plan, valid, *call, limit).await?;
            futures::pin_mut!(events);
            let mut turn = AssembledTurn::default();
            while let Some(event) = events.next().await {
                match event? {
                    GatewayEvent::Delta(delta) => turn.text(&delta),
                    GatewayEvent::ToolCall(delta) => turn.tool_call(&delta),
                    GatewayEvent::Thinking(delta) => turn.thinking(&delta),
                    GatewayEvent::Done(summary) => {
                        if let Some(reservation) = reservation.take() {
                            reservation.settle(&summary.completion.usage);
                        }
                        let (text, answer) = generated(turn);
                        let response = pb::GenerateResponse {
                            text,
                            model: summary.model.clone(),
                            finish_reason: finish_reason(&summary.completion) as i32,
                            usage: Some(usage(&summary.completion)),
                            timing: Some(timing(&summary)),
                            message: answer.message,
                            tool_calls: answer.tool_calls,
                            thinking: answer.thinking,
                            cached: false,
                        };
                        if let Some(storing) = storing {
                            storing.generate(&response);
                        }
                        return Ok(Response::new(response));
                    }
                }
            }
            // The gateway's stream always ends with Done or an error.
            Err(Status::internal("the completion ended without a result"))
        }
    }

    /// The cache, the caller's budget, then the gateway: the stream of the call's answer.
    #[expect(clippy::manual_async_fn, reason = "an async fn would keep a second copy of `chat`, its argument")]
    fn chat_stream(
        &self,
        chat: CompletionCall,
    ) -> impl Future<Output = Result<Response<ChatResponseStream>, Status>> + Send {
        async move {
            let CompletionCall { call, caller, cache, valid, plan } = &chat;
            let storing = match self.cache.chat(caller.as_ref(), plan, valid, *cache, *call).await? {
                Lookup::Hit(replay) => {
                    let replay: ChatResponseStream = Box::pin(futures::stream::iter(replay.into_iter().map(Ok)));
                    return Ok(Response::new(replay));
                }
                Lookup::Miss(storing) => storing,
            };
            let mut reservation = reserve(caller.as_ref(), plan, valid).await?;
            // Streamed with backpressure, so only each message is bounded, not the stream.
            let limit = ResponseLimit::Chunk(self.limits.max_response_bytes);
            let events = self.gateway.chat(plan, valid, *call, limit).await?;
            let responses = events.map(move |event| match event {
                Ok(GatewayEvent::Delta(content)) => Ok(pb::ChatResponse { content, ..Default::default() }),
                Ok(GatewayEvent::ToolCall(delta)) => {
                    Ok(pb::ChatResponse { tool_calls: vec![tool_call_delta(*delta)], ..Default::default() })
                }
                Ok(GatewayEvent::Thinking(ThinkingDelta::Text(thinking))) => {
                    Ok(pb::ChatResponse { thinking, ..Default::default() })
                }
                Ok(GatewayEvent::Thinking(ThinkingDelta::Signature(thinking_signature))) => {
                    Ok(pb::ChatResponse { thinking_signature, ..Default::default() })
                }
                Ok(GatewayEvent::Thinking(ThinkingDelta::Redacted(redacted_thinking))) => {
                    Ok(pb::ChatResponse { redacted_thinking, ..Default::default() })
                }
                Ok(GatewayEvent::Done(summary)) => {
                    if let Some(reservation) = reservation.take() {
                        reservation.settle(&summary.completion.usage);
                    }
                    Ok(pb::ChatResponse {
                        model: summary.model.clone(),
                        finish_reason: finish_reason(&summary.completion) as i32,
                        usage: Some(usage(&summary.completion)),
                        timing: Some(timing(&summary)),
                        ..Default::default()
                    })
                }
                Err(error) => Err(Status::from(error)),
            });
            let responses: ChatResponseStream = Box::pin(crate::cache::recording(responses, storing));
            Ok(Response::new(responses))
        }
    }
}

#[tonic::async_trait]
impl pb::copilot_server::Copilot for CopilotApi {
    // Written out, not as an `async fn`: the request is validated and routed before the future
    // exists, so the future holds the validated call once, where `async_trait` would keep the
    // proto request twice (as the future's argument and as the body's local) beside it. A
    // `Generate` future lives as long as its answer takes, and thousands of `Chat` futures wait
    // for their upstream's first token at once (BENCHMARKS.md, "Memory per stream").
    fn generate<'life0, 'async_trait>(
        &'life0 self,
        request: Request<pb::GenerateRequest>,
    ) -> BoxFuture<'async_trait, Result<Response<pb::GenerateResponse>, Status>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let call = self.completion_call(request, |request| request.cache.as_ref(), validate::generate);
        answered(call, |call| self.generate_answer(call))
    }

    type ChatStream = ChatResponseStream;

    // Written out, as `generate` is.
    fn chat<'life0, 'async_trait>(
        &'life0 self,
        request: Request<pb::ChatRequest>,
    ) -> BoxFuture<'async_trait, Result<Response<Self::ChatStream>, Status>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let call = self.completion_call(request, |request| request.cache.as_ref(), validate::chat);
        answered(call, |call| self.chat_stream(call))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let listing = self.gateway.list_models().await?;
        let mut models: Vec<pb::Model> = listing.models.into_iter().map(model).collect();
        models.extend(listing.aliases.into_iter().map(|alias| pb::Model {
            name: alias.name,
            alias_targets: alias.targets,
            ..Default::default()
        }));
        // A key sees only the models it may use.
        if let Some(caller) = Caller::of(&request) {
            models.retain(|model| caller.key.allows(&model.name));
        }
        let failed_providers =
            listing.failures.into_iter().map(|(provider, message)| pb::ProviderFailure { provider, message }).collect();
        Ok(Response::new(pb::ListModelsResponse { models, failed_providers }))
    }

    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let call = CallContext::from_request(&request);
        let caller = Caller::of(&request);
        let cache = validate::cache_control(request.get_ref().cache.as_ref())?;
        let valid = validate::embed(request.into_inner(), &self.limits)?;
        let plan = self.gateway.router().resolve_embedding(&valid.model)?;
        if let Some(caller) = &caller {
            caller.check_model(&plan.allow_list_name())?;
        }
        let storing = match self.cache.embed(caller.as_ref(), &plan, &valid, cache, call).await? {
            Lookup::Hit(response) => return Ok(Response::new(response)),
            Lookup::Miss(storing) => storing,
        };
        // The inputs' estimated tokens are held against the key's budget until the upstream's count
        // settles them (or, when it reports none, the estimate is charged).
        let reservation = match &caller {
            Some(caller) => Some(caller.reserve(valid.inputs.iter().map(String::as_str), Some(0)).await?),
            None => None,
        };
        let embedded = self.gateway.embed(&plan, valid, call).await?;
        match (reservation, embedded.input_tokens) {
            (Some(reservation), Some(input_tokens)) => {
                reservation.settle(&copilot_provider::Usage { input_tokens, ..Default::default() })
            }
            (Some(reservation), None) => reservation.keep(),
            (None, _) => {}
        }
        let response = pb::EmbedResponse {
            usage: Some(pb::Usage { input_tokens: embedded.input_tokens.unwrap_or(0), ..Default::default() }),
            dimensions: embedded.dimensions,
            model: embedded.model,
            embeddings: embedded.vectors.into_iter().map(|values| pb::Embedding { values }).collect(),
            cached: false,
        };
        if let Some(storing) = storing {
            storing.embed(&response);
        }
        Ok(Response::new(response))
    }

    /// Routed and checked against the key's models like a chat; no tokens are reserved or charged
    /// (nothing is generated), while the call still spent one of the key's requests at admission.
    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        let call = CallContext::from_request(&request);
        let caller = Caller::of(&request);
        let valid = validate::count_tokens(request.into_inner(), &self.limits)?;
        let plan = self.route(caller.as_ref(), &valid.model)?;
        let counted = self.gateway.count_tokens(&plan, valid, call).await?;
        Ok(Response::new(pb::CountTokensResponse {
            input_tokens: counted.input_tokens,
            exact: counted.exact,
            model: counted.model,
        }))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Result<Response<pb::GetModelResponse>, Status> {
        validate::model_name(&request.get_ref().model)?;
        let plan = self.route(Caller::of(&request).as_ref(), request.get_ref().model.trim())?;
        let (listed, alias) = self.gateway.describe(&plan).await?;
        let mut described = model(listed);
        if let Some(alias) = alias {
            described.name = alias.name;
            described.alias_targets = alias.targets;
        }
        Ok(Response::new(pb::GetModelResponse { model: Some(described) }))
    }
}

fn model(listed: ListedModel) -> pb::Model {
    pb::Model {
        name: format!("{}/{}", listed.provider, listed.info.name),
        provider: listed.provider,
        family: listed.info.family,
        parameter_size: listed.info.parameter_size,
        quantization: listed.info.quantization,
        context_length: listed.info.context_length,
        size_bytes: listed.info.size_bytes,
        capabilities: listed.info.capabilities,
        alias_targets: Vec::new(),
        embedding_length: listed.info.embedding_length,
    }
}

fn finish_reason(completion: &Completion) -> pb::FinishReason {
    match completion.finish_reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
    }
}

fn usage(completion: &Completion) -> pb::Usage {
    let usage = &completion.usage;
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cached_input_tokens: usage.cached_input_tokens,
    }
}

/// What a `Generate` answer holds beyond its text.
#[derive(Default)]
struct BeyondText {
    /// The whole turn, when it holds more than text.
    message: Option<pb::Message>,
    tool_calls: Vec<pb::ToolCall>,
    thinking: String,
}

/// A collected answer as `GenerateResponse` gives it: its text, and the rest. A text answer is
/// its text alone, moved rather than copied into a second field.
fn generated(turn: AssembledTurn) -> (String, BeyondText) {
    let parts = turn.into_parts();
    if parts.iter().all(|part| matches!(part, Part::Text(_))) {
        let text = parts.into_iter().filter_map(|part| if let Part::Text(text) = part { Some(text) } else { None });
        return (text.collect(), BeyondText::default());
    }
    let parts: Vec<pb::Part> = parts.into_iter().map(part).collect();
    let (mut text, mut rest) = (String::new(), BeyondText::default());
    for part in &parts {
        match &part.kind {
            Some(pb::part::Kind::Text(piece)) => text.push_str(piece),
            Some(pb::part::Kind::Thinking(piece)) => rest.thinking.push_str(&piece.text),
            Some(pb::part::Kind::ToolCall(call)) => rest.tool_calls.push(call.clone()),
            Some(pb::part::Kind::Image(_)) | None => {}
        }
    }
    rest.message = Some(pb::Message { role: pb::Role::Assistant as i32, parts, ..Default::default() });
    (text, rest)
}

fn tool_call_delta(delta: copilot_provider::ToolCallDelta) -> pb::ToolCallDelta {
    pb::ToolCallDelta {
        index: delta.index,
        id: delta.id.unwrap_or_default(),
        name: delta.name.unwrap_or_default(),
        arguments_json: delta.arguments,
        signature: delta.signature,
    }
}

/// A part of an answer, as `GenerateResponse.message` holds it.
fn part(part: Part) -> pb::Part {
    use pb::part::Kind;
    let kind = match part {
        Part::Text(text) => Kind::Text(text),
        Part::ToolCall(call) => Kind::ToolCall(pb::ToolCall {
            id: call.id,
            name: call.name,
            arguments_json: call.arguments,
            signature: call.signature,
        }),
        Part::Thinking(thinking) => Kind::Thinking(pb::Thinking {
            text: thinking.text,
            signature: thinking.signature,
            redacted: thinking.redacted,
        }),
        // Answers hold no images; were one to, it would go back as it came.
        Part::Image(image) => Kind::Image(pb::Image {
            source: Some(match image.source {
                copilot_provider::ImageSource::Data(data) => pb::image::Source::Data(data),
                copilot_provider::ImageSource::Url(url) => pb::image::Source::Url(url),
            }),
            mime_type: image.mime_type,
        }),
    };
    pb::Part { kind: Some(kind) }
}

fn timing(summary: &Summary) -> pb::Timing {
    let upstream = &summary.completion.timings;
    pb::Timing {
        time_to_first_token: summary.time_to_first_token.map(duration),
        total_duration: Some(duration(summary.total_duration)),
        output_tokens_per_second: summary.output_tokens_per_second,
        load_duration: upstream.load.map(duration),
        prompt_duration: upstream.prompt_eval.map(duration),
        generation_duration: upstream.generation.map(duration),
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}
