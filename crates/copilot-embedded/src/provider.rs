//! `EmbeddedProvider`: the `Provider` trait over local GGUF models. Models load lazily on first use
//! (or at start, when preloaded), each on its own engine; loading one never holds up requests for
//! another. A model idle for longer than `keep_alive` is unloaded, as Ollama's keep_alive does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use copilot_provider::{
    ChatRequest, ChatStream, EmbedRequest, Embeddings, Feature, Features, HealthReport, Message, ModelInfo, Provider,
    ProviderError, ResponseFormat, Role, TokenCount, Tool, ToolChoice, async_trait,
};
use futures::StreamExt;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc as tokio_mpsc;

use crate::embedder::{EmbedJob, EmbedderHandle, EmbedderSettings};
use crate::engine::{EngineHandle, EngineSettings, Job};
use crate::gguf::GgufInfo;
use crate::grammar::{GrammarCache, JSON_OBJECT_SCHEMA, ROOT, TOOL_CALL_OPEN, TOOL_CALL_ROOT};
use crate::store::{LocalModel, ModelSources, Origin, discover};
use crate::template::{ChatTemplate, mentions_tools};
use crate::tool_calls::ToolCallParser;

/// Messages buffered per stream between the engine and the gRPC side.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub sources: ModelSources,
    pub engine: EngineSettings,
    /// For embedding models (those whose GGUF declares a pooling type).
    pub embedder: EmbedderSettings,
    /// How long an idle model stays loaded; `None` keeps it loaded for good.
    pub keep_alive: Option<Duration>,
    /// Drop the oldest turns of a conversation that does not fit the context, instead of refusing it.
    pub truncate_prompt: bool,
}

pub struct EmbeddedProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: EmbeddedConfig,
    catalog: RwLock<BTreeMap<String, LocalModel>>,
    /// One async lock per model: a load in progress makes only that model's callers wait.
    loaded: Mutex<HashMap<String, ModelCell>>,
    /// JSON Schema conversions, shared by every model (a grammar is text, not tied to a vocabulary).
    grammars: GrammarCache,
}

/// A model's loaded state, behind the lock that serializes its loading and unloading.
type ModelCell = Arc<tokio::sync::Mutex<Option<Arc<Loaded>>>>;

struct Loaded {
    runner: Runner,
    info: GgufInfo,
    last_used: Mutex<Instant>,
}

/// What runs a loaded model: a chat engine with its template, or an embedding engine.
enum Runner {
    // Boxed: a template is several hundred bytes, an embedding engine's handle a few words.
    Chat { engine: EngineHandle, template: Box<ChatTemplate> },
    Embed(EmbedderHandle),
}

impl Loaded {
    fn in_flight(&self) -> usize {
        match &self.runner {
            Runner::Chat { engine, .. } => engine.in_flight(),
            Runner::Embed(embedder) => embedder.in_flight(),
        }
    }
}

impl EmbeddedProvider {
    /// Finds the configured models. Must be called inside a tokio runtime when `keep_alive` is set
    /// (it starts the task that unloads idle models).
    pub fn new(config: EmbeddedConfig) -> Self {
        let inner = Arc::new(Inner {
            catalog: RwLock::new(BTreeMap::new()),
            loaded: Mutex::new(HashMap::new()),
            grammars: GrammarCache::default(),
            config,
        });
        inner.rediscover();
        if let Some(keep_alive) = inner.config.keep_alive
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(unload_idle(Arc::downgrade(&inner), keep_alive));
        }
        Self { inner }
    }

    /// Names of the models found, in routable form without the provider prefix.
    pub fn model_names(&self) -> Vec<String> {
        self.inner.catalog.read().map(|c| c.keys().cloned().collect()).unwrap_or_default()
    }

    /// Loads a model now rather than on its first request.
    pub async fn preload(&self, name: &str) -> Result<Duration, ProviderError> {
        let entry = self.inner.lookup(name)?;
        let (_, load) = self.inner.ensure_loaded(&entry).await?;
        Ok(load.unwrap_or_default())
    }
}

impl Inner {
    fn rediscover(&self) {
        let found = discover(&self.config.sources);
        // A file named explicitly is listed once, under its explicit name.
        let explicit: std::collections::HashSet<_> =
            found.iter().filter(|m| m.origin == Origin::Explicit).map(|m| m.path.clone()).collect();
        let catalog = found
            .into_iter()
            .filter(|m| m.origin == Origin::Explicit || !explicit.contains(&m.path))
            .map(|m| (m.name.clone(), m))
            .collect();
        if let Ok(mut current) = self.catalog.write() {
            *current = catalog;
        }
    }

    fn lookup(&self, name: &str) -> Result<LocalModel, ProviderError> {
        let find = || self.catalog.read().ok().and_then(|c| c.get(name).cloned());
        if let Some(model) = find() {
            return Ok(model);
        }
        // A file dropped into the models directory after start is found on first use.
        self.rediscover();
        find().ok_or_else(|| ProviderError::ModelNotFound { model: name.to_string() })
    }

    /// The loaded model, loading it first if needed. Returns how long loading took, if it did.
    async fn ensure_loaded(
        self: &Arc<Self>,
        entry: &LocalModel,
    ) -> Result<(Arc<Loaded>, Option<Duration>), ProviderError> {
        let cell = {
            let mut loaded = self.loaded.lock().map_err(|_| poisoned())?;
            loaded.entry(entry.name.clone()).or_default().clone()
        };
        let mut guard = cell.clone().lock_owned().await;
        if let Some(loaded) = guard.as_ref() {
            touch(loaded);
            return Ok((loaded.clone(), None));
        }
        let info = entry.info.as_ref().map_err(|e| ProviderError::ModelUnusable(e.to_string()))?.clone();
        let path = entry.path.clone();
        let name = entry.name.clone();
        let start: Box<dyn FnOnce() -> Result<Runner, ProviderError> + Send> = if info.is_embedding_model() {
            let settings = self.config.embedder.clone();
            Box::new(move || {
                let embedder = EmbedderHandle::start(&path, settings);
                embedder.map(Runner::Embed).map_err(|e| ProviderError::ModelUnusable(e.to_string()))
            })
        } else {
            let template = ChatTemplate::for_model(
                info.chat_template.as_deref(),
                &info.architecture,
                info.bos_token.as_deref().unwrap_or(""),
                info.eos_token.as_deref().unwrap_or(""),
            )
            .map_err(|e| ProviderError::ModelUnusable(format!("model '{}': {e}", entry.name)))?;
            let settings = self.engine_settings(&info);
            Box::new(move || {
                let engine = EngineHandle::start(&path, settings);
                engine
                    .map(|engine| Runner::Chat { engine, template: Box::new(template) })
                    .map_err(|e| ProviderError::ModelUnusable(e.to_string()))
            })
        };
        // The load runs to completion even if the caller goes away, so the next caller benefits.
        let load = tokio::spawn(async move {
            let started = Instant::now();
            let runner = tokio::task::spawn_blocking(start)
                .await
                .map_err(|e| ProviderError::ModelUnusable(format!("loading '{name}' panicked: {e}")))??;
            let took = started.elapsed();
            tracing::info!(model = %name, load_ms = took.as_millis() as u64, "embedded model loaded");
            let loaded = Arc::new(Loaded { runner, info, last_used: Mutex::new(Instant::now()) });
            *guard = Some(loaded.clone());
            Ok((loaded, Some(took)))
        });
        load.await.map_err(|e| ProviderError::ModelUnusable(format!("loading '{}' failed: {e}", entry.name)))?
    }

    /// The configured engine settings, with the context per slot capped at what the model supports.
    fn engine_settings(&self, info: &GgufInfo) -> EngineSettings {
        let mut settings = self.config.engine.clone();
        if let Some(trained) = info.context_length {
            settings.context_per_slot = settings.context_per_slot.min(trained.max(1));
        }
        settings
    }
}

fn touch(loaded: &Loaded) {
    if let Ok(mut last) = loaded.last_used.lock() {
        *last = Instant::now();
    }
}

fn poisoned() -> ProviderError {
    ProviderError::ModelUnusable("the embedded provider's state is corrupted after a panic".into())
}

/// Unloads models nobody used for `keep_alive` (and nobody is using now).
async fn unload_idle(inner: Weak<Inner>, keep_alive: Duration) {
    let period = keep_alive.clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let cells: Vec<_> = match inner.loaded.lock() {
            Ok(loaded) => loaded.iter().map(|(name, cell)| (name.clone(), cell.clone())).collect(),
            Err(_) => return,
        };
        for (name, cell) in cells {
            let Ok(mut guard) = cell.try_lock() else { continue };
            let idle = guard.as_ref().is_some_and(|loaded| {
                loaded.in_flight() == 0 && loaded.last_used.lock().map(|t| t.elapsed() >= keep_alive).unwrap_or(false)
            });
            if idle {
                *guard = None;
                tracing::info!(model = %name, "embedded model unloaded after being idle");
            }
        }
    }
}

/// The prompt as tokens, after templating and fitting it into the context.
struct Prepared {
    tokens: Vec<LlamaToken>,
    /// Turns dropped to fit, when truncation is on.
    dropped_turns: usize,
}

/// A loaded chat model's parts, as prompting needs them.
#[derive(Clone, Copy)]
struct ChatModel<'a> {
    engine: &'a EngineHandle,
    template: &'a ChatTemplate,
    info: &'a GgufInfo,
}

impl Loaded {
    /// The chat engine, or a refusal naming the model when it only embeds.
    fn chat_model(&self, name: &str) -> Result<ChatModel<'_>, ProviderError> {
        match &self.runner {
            Runner::Chat { engine, template } => Ok(ChatModel { engine, template, info: &self.info }),
            Runner::Embed(_) => Err(embedding_only(name)),
        }
    }
}

fn embedding_only(name: &str) -> ProviderError {
    ProviderError::Unsupported {
        feature: Feature::Completion,
        message: format!(
            "embedded model '{name}' is an embedding model: call Embed with it, or chat with a chat model"
        ),
    }
}

fn prepare(
    model: ChatModel<'_>,
    mut messages: Vec<Message>,
    tools: &[Tool],
    truncate: bool,
) -> Result<Prepared, ProviderError> {
    let context = model.engine.settings().context_per_slot as usize;
    let mut dropped_turns = 0;
    loop {
        let tokens = tokenize(model, &messages, tools)?;
        if tokens.is_empty() {
            return Err(ProviderError::InvalidRequest("the prompt is empty after templating".into()));
        }
        // At least one token of room must remain for the answer.
        if tokens.len() < context {
            return Ok(Prepared { tokens, dropped_turns });
        }
        let oldest_turn = messages.iter().position(|m| m.role != Role::System);
        let droppable = oldest_turn.filter(|&i| messages[i + 1..].iter().any(|m| m.role != Role::System));
        match droppable {
            Some(i) if truncate => {
                messages.remove(i);
                dropped_turns += 1;
            }
            _ => {
                return Err(ProviderError::InvalidRequest(format!(
                    "the prompt is {} tokens but the model's context window here is {} tokens; shorten the \
                     conversation{}",
                    tokens.len(),
                    context,
                    if truncate { " (its last turn alone is too long)" } else { ", or enable truncate_prompt" }
                )));
            }
        }
    }
}

fn tokenize(model: ChatModel<'_>, messages: &[Message], tools: &[Tool]) -> Result<Vec<LlamaToken>, ProviderError> {
    let text =
        model.template.render_with_tools(messages, tools).map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
    let vocab = model.engine.model().vocab();
    // Templates usually write the BOS token themselves; adding another one degrades the output.
    let bos_in_text = model.info.bos_token.as_deref().is_some_and(|bos| !bos.is_empty() && text.starts_with(bos));
    let add_bos = vocab.should_add_bos() && !bos_in_text;
    Ok(vocab.tokenize(text.as_bytes(), add_bos, true))
}

#[async_trait]
impl Provider for EmbeddedProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let entry = self.inner.lookup(&request.model)?;
        // Refused before loading: an embedding model has no chat template to answer with.
        if entry.info.as_ref().is_ok_and(GgufInfo::is_embedding_model) {
            return Err(embedding_only(&entry.name));
        }
        let (loaded, load) = self.inner.ensure_loaded(&entry).await?;
        touch(&loaded);
        let model = loaded.chat_model(&entry.name)?;
        if request.needs().contains(Feature::Tools) && !model.template.supports_tools() {
            return Err(ProviderError::Unsupported {
                feature: Feature::Tools,
                message: format!("the chat template of embedded model '{}' has no place for tools", entry.name),
            });
        }
        let truncate = self.inner.config.truncate_prompt;
        let for_prepare = loaded.clone();
        let inner = self.inner.clone();
        let name = entry.name.clone();
        let ChatRequest { messages, options, tools, tool_choice, response_format, .. } = request;
        // Converting a schema and tokenizing a long conversation are CPU work: off the runtime.
        let (prepared, grammar, plan) = tokio::task::spawn_blocking(move || {
            let model = for_prepare.chat_model(&name)?;
            let plan = inner.plan(tools, tool_choice.as_ref(), &response_format)?;
            let prepared = prepare(model, messages, &plan.tools, truncate)?;
            let grammar = plan.constraint.sampler(model.engine.model())?;
            Ok::<_, ProviderError>((prepared, grammar, plan))
        })
        .await
        .map_err(|e| ProviderError::Protocol(format!("tokenizing failed: {e}")))??;
        if prepared.dropped_turns > 0 {
            tracing::debug!(model = %entry.name, dropped = prepared.dropped_turns, "dropped the oldest turns to fit");
        }
        let tool_calls =
            (!plan.tools.is_empty()).then(|| ToolCallParser::new(plan.tools.iter().map(|t| t.name.clone()).collect()));
        let (out, events) = tokio_mpsc::channel(STREAM_BUFFER);
        let job = Job {
            prompt: prepared.tokens,
            options,
            end_markers: model.template.end_of_turn_markers().to_vec(),
            out,
            model_name: entry.name.clone(),
            load,
            grammar,
            tool_calls,
        };
        model.engine.submit(job).map_err(|_| {
            let settings = model.engine.settings();
            ProviderError::CapacityExhausted {
                message: format!(
                    "all {} slots of embedded model '{}' are busy and {} requests are already waiting",
                    settings.slots, entry.name, settings.queue
                ),
                retry_after: Some(Duration::from_secs(1)),
            }
        })?;
        Ok(tokio_stream_from(events))
    }

    /// One call's inputs go to the model's embedding engine together; it packs them with other
    /// calls' into shared decodes. Vectors come back as llama.cpp pools them (the server scales
    /// them to unit length).
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, ProviderError> {
        let entry = self.inner.lookup(&request.model)?;
        if entry.info.as_ref().is_ok_and(|info| !info.is_embedding_model()) {
            return Err(chat_only(&entry.name));
        }
        let (loaded, _) = self.inner.ensure_loaded(&entry).await?;
        touch(&loaded);
        let Runner::Embed(embedder) = &loaded.runner else { return Err(chat_only(&entry.name)) };
        let for_tokens = loaded.clone();
        let name = entry.name.clone();
        let EmbedRequest { inputs, truncate, .. } = request;
        // Tokenizing thousands of inputs is CPU work: off the runtime.
        let inputs = tokio::task::spawn_blocking(move || {
            let Runner::Embed(embedder) = &for_tokens.runner else { return Err(chat_only(&name)) };
            tokenize_inputs(embedder, &name, &inputs, truncate)
        })
        .await
        .map_err(|e| ProviderError::Protocol(format!("tokenizing failed: {e}")))??;
        let input_tokens = inputs.iter().map(Vec::len).sum::<usize>();
        let (reply, answer) = tokio::sync::oneshot::channel();
        embedder.submit(EmbedJob { inputs, reply }).map_err(|_| ProviderError::CapacityExhausted {
            message: format!(
                "embedded model '{}' already has {} embedding calls queued or running",
                entry.name,
                embedder.settings().queue
            ),
            retry_after: Some(Duration::from_secs(1)),
        })?;
        let vectors = answer
            .await
            .map_err(|_| ProviderError::Protocol("the embedding thread stopped before answering".into()))??;
        Ok(Embeddings {
            vectors,
            model: entry.name.clone(),
            input_tokens: Some(u32::try_from(input_tokens).unwrap_or(u32::MAX)),
        })
    }

    /// Exact: the tokens the model would be given for this conversation — its chat template
    /// rendered with the tools the request offers (as `chat` renders them for a free tool choice),
    /// then its own tokenizer, as `chat` does before generating.
    async fn count_tokens(&self, request: ChatRequest) -> Result<TokenCount, ProviderError> {
        let entry = self.inner.lookup(&request.model)?;
        if entry.info.as_ref().is_ok_and(GgufInfo::is_embedding_model) {
            return Err(ProviderError::Unsupported {
                feature: Feature::CountTokens,
                message: format!(
                    "embedded model '{}' is an embedding model: CountTokens counts a chat prompt; Embed reports the \
                     tokens it embedded in its usage",
                    entry.name
                ),
            });
        }
        let (loaded, _) = self.inner.ensure_loaded(&entry).await?;
        touch(&loaded);
        let name = entry.name.clone();
        let ChatRequest { messages, tools, .. } = request;
        let tokens = tokio::task::spawn_blocking(move || {
            let model = loaded.chat_model(&name)?;
            // As chat would refuse them: a count is of a prompt the model can be given.
            if !tools.is_empty() && !model.template.supports_tools() {
                return Err(ProviderError::Unsupported {
                    feature: Feature::Tools,
                    message: format!("the chat template of embedded model '{name}' has no place for tools"),
                });
            }
            tokenize(model, &messages, &tools)
        })
        .await
        .map_err(|e| ProviderError::Protocol(format!("tokenizing failed: {e}")))??;
        Ok(TokenCount {
            input_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            exact: true,
            model: entry.name.clone(),
        })
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        self.inner.rediscover();
        let catalog = self.inner.catalog.read().map_err(|_| poisoned())?;
        Ok(catalog
            .values()
            .filter_map(|model| match &model.info {
                Ok(info) => Some(model_info(&model.name, info)),
                Err(e) => {
                    tracing::warn!(model = %model.name, error = %e, "embedded model file is not usable");
                    None
                }
            })
            .collect())
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        let entry = self.inner.lookup(model)?;
        let info = entry.info.map_err(|e| ProviderError::ModelUnusable(e.to_string()))?;
        Ok(model_info(&entry.name, &info))
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        Ok(HealthReport { version: Some(format!("llama.cpp via llama-cpp-2, {} models", self.model_names().len())) })
    }

    /// Tools for models whose chat template lists them (others answer `Unsupported`); JSON by
    /// grammar for every chat model; embeddings for embedding models; exact token counts for chat
    /// models. No images: no vision
    /// projector is configured. No shortened embeddings: the catalog's model is not Matryoshka.
    fn features(&self) -> Features {
        Features::of(&[
            Feature::Tools,
            Feature::JsonObject,
            Feature::JsonSchema,
            Feature::Embeddings,
            Feature::CountTokens,
        ])
    }

    fn lacking(&self, feature: Feature) -> Option<&'static str> {
        (feature == Feature::EmbeddingDimensions).then_some(
            "the embedded engine's embedding models give their full vectors only (all-MiniLM-L6-v2 was not trained \
             to be shortened); leave dimensions unset",
        )
    }
}

/// What a request asks of the template and the sampler.
struct Plan {
    /// Tools the template lists for the model.
    tools: Vec<Tool>,
    constraint: Constraint,
}

/// The grammar the answer must follow.
enum Constraint {
    Free,
    /// From the first token.
    Grammar {
        gbnf: String,
        root: &'static str,
    },
    /// Dormant until the model writes `<tool_call>`, then this grammar to the end.
    Lazy {
        gbnf: String,
        root: &'static str,
    },
}

impl Inner {
    /// A forced tool choice (required, or a named tool) is a grammar for one call; else a JSON
    /// response format is one for the answer; else offered tools get the lazy tool-call grammar.
    fn plan(
        &self,
        tools: Vec<Tool>,
        tool_choice: Option<&ToolChoice>,
        response_format: &ResponseFormat,
    ) -> Result<Plan, ProviderError> {
        let tools = match tool_choice {
            Some(ToolChoice::None) => Vec::new(),
            _ => tools,
        };
        let forced: Vec<&Tool> = match tool_choice {
            Some(ToolChoice::Required) => tools.iter().collect(),
            Some(ToolChoice::Named(name)) => tools.iter().filter(|t| &t.name == name).collect(),
            _ => Vec::new(),
        };
        let constraint = if !forced.is_empty() {
            Constraint::Grammar { gbnf: self.grammars.tool_call(&forced)?, root: TOOL_CALL_ROOT }
        } else {
            match response_format {
                ResponseFormat::JsonObject => {
                    Constraint::Grammar { gbnf: self.grammars.schema(JSON_OBJECT_SCHEMA)?.to_string(), root: ROOT }
                }
                ResponseFormat::JsonSchema { schema, .. } => {
                    Constraint::Grammar { gbnf: self.grammars.schema(schema)?.to_string(), root: ROOT }
                }
                ResponseFormat::Text if !tools.is_empty() => {
                    let all: Vec<&Tool> = tools.iter().collect();
                    Constraint::Lazy { gbnf: self.grammars.tool_call(&all)?, root: TOOL_CALL_ROOT }
                }
                ResponseFormat::Text => Constraint::Free,
            }
        };
        Ok(Plan { tools, constraint })
    }
}

impl Constraint {
    fn sampler(&self, model: &llama_cpp_2::model::LlamaModel) -> Result<Option<LlamaSampler>, ProviderError> {
        let sampler = match self {
            Constraint::Free => return Ok(None),
            Constraint::Grammar { gbnf, root } => LlamaSampler::grammar(model, gbnf, root),
            Constraint::Lazy { gbnf, root } => LlamaSampler::grammar_lazy(model, gbnf, root, [TOOL_CALL_OPEN], &[]),
        };
        sampler
            .map(Some)
            .map_err(|e| ProviderError::InvalidRequest(format!("llama.cpp could not load the answer's grammar: {e}")))
    }
}

fn chat_only(name: &str) -> ProviderError {
    ProviderError::Unsupported {
        feature: Feature::Embeddings,
        message: format!(
            "embedded model '{name}' is a chat model: its GGUF declares no pooling, so it has no sentence \
             embedding; embed with an embedding model such as {}",
            crate::download::DEFAULT_EMBEDDING_MODEL
        ),
    }
}

/// Each input as the model's tokens (with its own special tokens, such as BERT's `[CLS]` and
/// `[SEP]`; text that looks like a special token is text), checked against the longest input the
/// engine takes: refused, or cut keeping the final special token, when `truncate` says so.
fn tokenize_inputs(
    embedder: &EmbedderHandle,
    name: &str,
    inputs: &[String],
    truncate: bool,
) -> Result<Vec<Vec<LlamaToken>>, ProviderError> {
    let vocab = embedder.model().vocab();
    let limit = embedder.max_input_tokens().max(2);
    inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut tokens = vocab.tokenize(text.as_bytes(), true, false);
            if tokens.is_empty() {
                return Err(ProviderError::InvalidRequest(format!("input {index} has no tokens")));
            }
            if tokens.len() > limit {
                if !truncate {
                    return Err(ProviderError::InvalidRequest(format!(
                        "input {index} is {} tokens, and embedded model '{name}' embeds at most {limit}: shorten or \
                         split it, or set truncate to embed its first {limit} tokens",
                        tokens.len()
                    )));
                }
                let last = tokens[tokens.len() - 1];
                tokens.truncate(limit - 1);
                tokens.push(last);
            }
            Ok(tokens)
        })
        .collect()
}

fn model_info(name: &str, info: &GgufInfo) -> ModelInfo {
    if info.is_embedding_model() {
        return ModelInfo {
            name: name.to_string(),
            family: info.architecture.clone(),
            parameter_size: info.parameter_size(),
            quantization: info.quantization(),
            context_length: info.context_length,
            size_bytes: Some(info.file_size),
            capabilities: vec!["embedding".to_string()],
            embedding_length: info.embedding_length,
        };
    }
    let mut capabilities = vec!["completion".to_string()];
    if let Some(template) = &info.chat_template {
        capabilities.push("chat".to_string());
        if mentions_tools(template) {
            capabilities.push(Feature::Tools.as_str().to_string());
        }
        capabilities.push(Feature::JsonObject.as_str().to_string());
        capabilities.push(Feature::JsonSchema.as_str().to_string());
    }
    ModelInfo {
        name: name.to_string(),
        family: info.architecture.clone(),
        parameter_size: info.parameter_size(),
        quantization: info.quantization(),
        context_length: info.context_length,
        size_bytes: Some(info.file_size),
        capabilities,
        ..Default::default()
    }
}

fn tokio_stream_from(
    mut events: tokio_mpsc::Receiver<Result<copilot_provider::ChatEvent, ProviderError>>,
) -> ChatStream {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx)).boxed()
}
