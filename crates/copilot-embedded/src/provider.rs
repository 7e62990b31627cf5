//! `EmbeddedProvider`: the `Provider` trait over local GGUF models. Models load lazily on first use
//! (or at start, when preloaded), each on its own engine; loading one never holds up requests for
//! another. A model idle for longer than `keep_alive` is unloaded, as Ollama's keep_alive does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use copilot_provider::{
    ChatRequest, ChatStream, Feature, Features, HealthReport, Message, ModelInfo, Provider, ProviderError,
    ResponseFormat, Role, Tool, ToolChoice, async_trait,
};
use futures::StreamExt;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc as tokio_mpsc;

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
    engine: EngineHandle,
    template: ChatTemplate,
    info: GgufInfo,
    last_used: Mutex<Instant>,
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
        let template = ChatTemplate::for_model(
            info.chat_template.as_deref(),
            &info.architecture,
            info.bos_token.as_deref().unwrap_or(""),
            info.eos_token.as_deref().unwrap_or(""),
        )
        .map_err(|e| ProviderError::ModelUnusable(format!("model '{}': {e}", entry.name)))?;
        let path = entry.path.clone();
        let settings = self.engine_settings(&info);
        let name = entry.name.clone();
        // The load runs to completion even if the caller goes away, so the next caller benefits.
        let load = tokio::spawn(async move {
            let started = Instant::now();
            let engine = tokio::task::spawn_blocking(move || EngineHandle::start(&path, settings))
                .await
                .map_err(|e| ProviderError::ModelUnusable(format!("loading '{name}' panicked: {e}")))?
                .map_err(|e| ProviderError::ModelUnusable(e.to_string()))?;
            let took = started.elapsed();
            tracing::info!(model = %name, load_ms = took.as_millis() as u64, "embedded model loaded");
            let loaded = Arc::new(Loaded { engine, template, info, last_used: Mutex::new(Instant::now()) });
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
                loaded.engine.in_flight() == 0
                    && loaded.last_used.lock().map(|t| t.elapsed() >= keep_alive).unwrap_or(false)
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

fn prepare(
    loaded: &Loaded,
    mut messages: Vec<Message>,
    tools: &[Tool],
    truncate: bool,
) -> Result<Prepared, ProviderError> {
    let context = loaded.engine.settings().context_per_slot as usize;
    let mut dropped_turns = 0;
    loop {
        let tokens = tokenize(loaded, &messages, tools)?;
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

fn tokenize(loaded: &Loaded, messages: &[Message], tools: &[Tool]) -> Result<Vec<LlamaToken>, ProviderError> {
    let text =
        loaded.template.render_with_tools(messages, tools).map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
    let vocab = loaded.engine.model().vocab();
    // Templates usually write the BOS token themselves; adding another one degrades the output.
    let bos_in_text = loaded.info.bos_token.as_deref().is_some_and(|bos| !bos.is_empty() && text.starts_with(bos));
    let add_bos = vocab.should_add_bos() && !bos_in_text;
    Ok(vocab.tokenize(text.as_bytes(), add_bos, true))
}

#[async_trait]
impl Provider for EmbeddedProvider {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        let entry = self.inner.lookup(&request.model)?;
        let (loaded, load) = self.inner.ensure_loaded(&entry).await?;
        touch(&loaded);
        if request.needs().contains(Feature::Tools) && !loaded.template.supports_tools() {
            return Err(ProviderError::Unsupported {
                feature: Feature::Tools,
                message: format!("the chat template of embedded model '{}' has no place for tools", entry.name),
            });
        }
        let truncate = self.inner.config.truncate_prompt;
        let for_prepare = loaded.clone();
        let inner = self.inner.clone();
        let ChatRequest { messages, options, tools, tool_choice, response_format, .. } = request;
        // Converting a schema and tokenizing a long conversation are CPU work: off the runtime.
        let (prepared, grammar, plan) = tokio::task::spawn_blocking(move || {
            let plan = inner.plan(tools, tool_choice.as_ref(), &response_format)?;
            let prepared = prepare(&for_prepare, messages, &plan.tools, truncate)?;
            let grammar = plan.constraint.sampler(for_prepare.engine.model())?;
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
            end_markers: loaded.template.end_of_turn_markers().to_vec(),
            out,
            model_name: entry.name.clone(),
            load,
            grammar,
            tool_calls,
        };
        loaded.engine.submit(job).map_err(|_| {
            let settings = loaded.engine.settings();
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
    /// grammar for every model. No images: no vision projector is configured.
    fn features(&self) -> Features {
        Features::of(&[Feature::Tools, Feature::JsonObject, Feature::JsonSchema])
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

fn model_info(name: &str, info: &GgufInfo) -> ModelInfo {
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
