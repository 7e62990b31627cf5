//! Provider instances: the `[providers.<name>]` table as written ([`ProviderTable`]), and what
//! it becomes at load ([`ProviderConfig`]): the policy every kind shares, plus the settings of its
//! kind, parsed into types.
//!
//! A table is one flat set of keys, as users write it, checked by serde (an unknown key is
//! refused with the key and where it came from). The keys of one kind are `Option`s there, so
//! that [`ProviderTable::resolve`] can tell a key that was set from one that was not, and refuse a
//! key of another kind (`send_top_k` on Ollama) with the key named. (Serde cannot check both at
//! once: `deny_unknown_fields` does not work with a flattened, tagged enum of kinds.)

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, DefaultOptions, duration, invalid, optional_duration};

/// Ollama's own port, for `OLLAMA_HOST` values that name none.
const OLLAMA_DEFAULT_PORT: u16 = 11434;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// An Ollama server, over its native API.
    Ollama,
    /// GGUF models run in-process with llama.cpp.
    Embedded,
    /// Any OpenAI-compatible server: OpenAI, vLLM, llama.cpp's server, LM Studio, Ollama's `/v1`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Google Gemini (the Generative Language API, or Vertex AI).
    Gemini,
    /// Anthropic's Messages API.
    Anthropic,
}

impl ProviderKind {
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        match name {
            "ollama" => Some(ProviderKind::Ollama),
            "embedded" => Some(ProviderKind::Embedded),
            "openai" => Some(ProviderKind::OpenAi),
            "gemini" => Some(ProviderKind::Gemini),
            "anthropic" => Some(ProviderKind::Anthropic),
            _ => None,
        }
    }

    /// Where the upstream is when the config does not say.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "http://localhost:11434",
            ProviderKind::Embedded => "",
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }

    /// The variable the API key is read from when neither `api_key_env` nor `api_key_file` is set.
    pub fn default_key_variable(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Ollama | ProviderKind::Embedded => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Embedded => "embedded",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Anthropic => "anthropic",
        })
    }
}

/// A provider instance as the server uses it.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The upstream's base URL, normalized (empty for the embedded engine).
    pub base_url: String,
    /// The model this instance serves when a request leaves `model` empty and this is the default
    /// provider; `copilot doctor` checks that it exists.
    pub default_model: Option<String>,
    pub api_key: ApiKeySource,
    pub policy: ProviderPolicy,
    /// Options applied when a request leaves them unset.
    pub defaults: DefaultOptions,
    /// What only this instance's kind has.
    pub settings: KindSettings,
}

impl ProviderConfig {
    /// An instance of `kind` with every default: the kind's usual base URL, no key source of its
    /// own, the default policy and settings.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            base_url: kind.default_base_url().to_string(),
            default_model: None,
            api_key: ApiKeySource::KindDefault,
            policy: ProviderPolicy::default(),
            defaults: DefaultOptions::default(),
            settings: KindSettings::defaults(kind),
        }
    }

    pub fn kind(&self) -> ProviderKind {
        match self.settings {
            KindSettings::Ollama(_) => ProviderKind::Ollama,
            KindSettings::Embedded(_) => ProviderKind::Embedded,
            KindSettings::OpenAi(_) => ProviderKind::OpenAi,
            KindSettings::Gemini(_) => ProviderKind::Gemini,
            KindSettings::Anthropic(_) => ProviderKind::Anthropic,
        }
    }
}

/// Where an instance's API key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// The kind's usual variable (`OPENAI_API_KEY`, …), when it is set.
    KindDefault,
    /// This environment variable (`api_key_env`).
    Env(String),
    /// This file (`api_key_file`), e.g. a mounted Kubernetes Secret.
    File(PathBuf),
}

/// How calls to an instance are timed, retried, broken off and limited.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderPolicy {
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub list_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_concurrency: Option<usize>,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub health_interval: Duration,
}

impl Default for ProviderPolicy {
    fn default() -> Self {
        let table = ProviderTable::default();
        Self {
            first_token_timeout: table.timeout,
            idle_timeout: table.timeout,
            connect_timeout: table.connect_timeout,
            list_timeout: table.list_timeout,
            retries: table.retries,
            retry_backoff: table.retry_backoff,
            retry_backoff_max: table.retry_backoff_max,
            breaker_failures: table.breaker_failures,
            breaker_cooldown: table.breaker_cooldown,
            max_concurrency: table.max_concurrency,
            max_queue: table.max_queue,
            queue_timeout: table.queue_timeout,
            health_interval: table.health_interval,
        }
    }
}

/// The settings only one kind has.
#[derive(Debug, Clone, PartialEq)]
pub enum KindSettings {
    Ollama(OllamaSettings),
    Embedded(EmbeddedSettings),
    OpenAi(OpenAiSettings),
    Gemini(GeminiSettings),
    Anthropic(AnthropicSettings),
}

impl KindSettings {
    pub fn defaults(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Ollama => KindSettings::Ollama(OllamaSettings::default()),
            ProviderKind::Embedded => KindSettings::Embedded(EmbeddedSettings::default()),
            ProviderKind::OpenAi => KindSettings::OpenAi(OpenAiSettings::default()),
            ProviderKind::Gemini => KindSettings::Gemini(GeminiSettings::default()),
            ProviderKind::Anthropic => KindSettings::Anthropic(AnthropicSettings::default()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OllamaSettings {
    /// How long Ollama keeps the model loaded after a request (unset: the server's own default).
    pub keep_alive: Option<KeepAlive>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedSettings {
    /// Idle time before a model is unloaded.
    pub keep_alive: KeepAlive,
    /// A directory whose `*.gguf` files are served (unset: the model cache `copilot models fetch`
    /// fills).
    pub models_dir: Option<PathBuf>,
    /// Explicit `name = "/path/to/model.gguf"` entries.
    pub models: BTreeMap<String, PathBuf>,
    pub ollama_store: OllamaStore,
    /// Inference threads per model (unset: all cores but one).
    pub threads: Option<usize>,
    /// Threads for decodes of several streams' next tokens at once, and for embeddings (unset:
    /// `threads`).
    pub batch_threads: Option<usize>,
    /// Threads for reading prompts, on a llama.cpp context of their own (unset: all cores).
    pub prompt_threads: Option<usize>,
    /// Streams decoded together per model.
    pub parallel: usize,
    /// Requests that may wait for a free slot.
    pub queue: usize,
    /// Context window per stream, in tokens.
    pub context_length: u32,
    /// Most tokens decoded in one step.
    pub batch_size: u32,
    /// Most tokens an embedding model takes in one decode (the inputs of several calls share
    /// it); also the longest input it embeds, with the model's own limit.
    pub embedding_batch_tokens: u32,
    /// Models loaded at start.
    pub preload: Vec<String>,
    /// Drop the oldest turns of a conversation that does not fit, instead of refusing it.
    pub truncate_prompt: bool,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            // Ollama's default, which the embedded engine follows.
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            models_dir: None,
            models: BTreeMap::new(),
            ollama_store: OllamaStore::Auto,
            threads: None,
            batch_threads: None,
            prompt_threads: None,
            parallel: 4,
            queue: 16,
            context_length: 4096,
            batch_size: 512,
            embedding_batch_tokens: 2048,
            preload: Vec::new(),
            truncate_prompt: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSettings {
    pub max_tokens_field: MaxTokensField,
    /// Ask for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Send `top_k` (vLLM and llama.cpp accept it; OpenAI rejects it).
    pub send_top_k: bool,
    /// How the server is told not to think, if it can be.
    pub thinking_off: ThinkingOff,
    /// Whether the server fetches images given as URLs (Ollama's `/v1` does not).
    pub image_urls: bool,
    /// How `CountTokens` counts on this server, if it can.
    pub count_tokens: TokenCounting,
}

/// An OpenAI-compatible server's way to count tokens: the API has none of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCounting {
    /// It cannot: `CountTokens` is refused (FEATURE_UNSUPPORTED).
    #[default]
    None,
    /// vLLM's `POST /tokenize` with the conversation (exact: the model's chat template and tokenizer).
    Vllm,
    /// llama.cpp's `POST /apply-template`, then `POST /tokenize` of the rendered prompt (exact: the
    /// model's chat template and tokenizer, as the server's chat calls use them).
    LlamaCpp,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            max_tokens_field: MaxTokensField::MaxTokens,
            include_usage: true,
            send_top_k: false,
            thinking_off: ThinkingOff::Unsupported,
            image_urls: true,
            count_tokens: TokenCounting::None,
        }
    }
}

/// How an OpenAI-compatible server is told not to think: no one field works everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingOff {
    /// It cannot be: a request turning thinking off is refused (FEATURE_UNSUPPORTED).
    Unsupported,
    /// `reasoning_effort: "none"` (OpenAI's newer models).
    ReasoningEffortNone,
    /// `chat_template_kwargs: {enable_thinking: false}` (vLLM and llama.cpp serving Qwen3 and
    /// similar templates).
    EnableThinkingFalse,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeminiSettings {
    /// With no API key: Vertex AI in this Google Cloud project, with Application Default
    /// Credentials.
    pub project_id: Option<String>,
    /// The Vertex AI location (unset: `global`).
    pub location: Option<String>,
    pub safety_settings: Vec<SafetySetting>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnthropicSettings {
    /// The `anthropic-version` header (unset: the adapter's).
    pub version: Option<String>,
    /// `max_tokens` for requests that set none (unset: the adapter's).
    pub default_max_tokens: Option<u32>,
}

/// Ollama's `keep_alive`: a duration (`5m`, `0` to unload at once) or forever (a negative number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    pub fn parse(value: &str) -> Result<KeepAlive, String> {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<i64>() {
            return Ok(u64::try_from(seconds).map_or(KeepAlive::Forever, |s| KeepAlive::For(Duration::from_secs(s))));
        }
        if value.starts_with('-') {
            return Ok(KeepAlive::Forever);
        }
        humantime::parse_duration(value)
            .map(KeepAlive::For)
            .map_err(|e| format!("'{value}' is not a duration like 5m or 1h, nor -1 (forever): {e}"))
    }
}

impl Serialize for KeepAlive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeepAlive::For(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            KeepAlive::Forever => s.serialize_i64(-1),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => {
                Ok(u64::try_from(s).map_or(KeepAlive::Forever, |s| KeepAlive::For(Duration::from_secs(s))))
            }
            Raw::Text(text) => KeepAlive::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Ollama's local model store, served by the embedded engine without an Ollama server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OllamaStore {
    /// `$OLLAMA_MODELS`, else `~/.ollama/models`, when it exists.
    Auto,
    Off,
    Dir(PathBuf),
}

impl Serialize for OllamaStore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OllamaStore::Auto => s.serialize_str("auto"),
            OllamaStore::Off => s.serialize_str("off"),
            OllamaStore::Dir(path) => path.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OllamaStore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "auto" => Ok(OllamaStore::Auto),
            "off" => Ok(OllamaStore::Off),
            "" => Err(serde::de::Error::custom("must be \"auto\", \"off\" or a directory")),
            path => Ok(OllamaStore::Dir(path.into())),
        }
    }
}

/// The OpenAI request field for the output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`: most servers.
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's newer models.
    MaxCompletionTokens,
}

/// One of Gemini's `safetySettings`, passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetySetting {
    pub category: String,
    pub threshold: String,
}

/// A `[providers.<name>]` table as written in the file and the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderTable {
    /// Which adapter serves this instance. May be left out when the instance's name is a kind.
    pub kind: Option<ProviderKind>,
    /// The upstream's base URL (default: the kind's usual one). For Ollama, `OLLAMA_HOST`-style
    /// values (`host`, `host:port`) are accepted.
    pub base_url: String,
    /// How long the upstream may stay silent: the default of the next two.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long to wait for the first token (covers a model load on the upstream).
    #[serde(with = "optional_duration")]
    pub first_token_timeout: Option<Duration>,
    /// How long the upstream may pause between two chunks of a stream.
    #[serde(with = "optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// Retries of a retryable failure before the first token, before falling back.
    pub retries: u32,
    /// First retry delay; doubled each retry up to `retry_backoff_max`, with jitter.
    #[serde(with = "duration")]
    pub retry_backoff: Duration,
    #[serde(with = "duration")]
    pub retry_backoff_max: Duration,
    /// Consecutive failures that open the circuit breaker (0 disables it).
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one probe call.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// Calls this instance runs at once (unset: no limit).
    pub max_concurrency: Option<usize>,
    /// Calls that may wait for a place when `max_concurrency` is reached.
    pub max_queue: usize,
    /// The longest a call waits in that queue.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// How often the instance is probed in the background.
    #[serde(with = "duration")]
    pub health_interval: Duration,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// How long to wait for a TCP connection to the upstream.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How long ListModels waits for this instance.
    #[serde(with = "duration")]
    pub list_timeout: Duration,
    pub defaults: DefaultOptions,
    pub default_model: Option<String>,

    // The keys of one or two kinds; see `KIND_KEYS`.
    pub keep_alive: Option<KeepAlive>,
    pub models_dir: Option<PathBuf>,
    pub models: Option<BTreeMap<String, PathBuf>>,
    pub ollama_store: Option<OllamaStore>,
    pub threads: Option<usize>,
    pub batch_threads: Option<usize>,
    pub prompt_threads: Option<usize>,
    pub parallel: Option<usize>,
    pub queue: Option<usize>,
    pub context_length: Option<u32>,
    pub batch_size: Option<u32>,
    pub embedding_batch_tokens: Option<u32>,
    pub preload: Option<Vec<String>>,
    pub truncate_prompt: Option<bool>,
    pub max_tokens_field: Option<MaxTokensField>,
    pub include_usage: Option<bool>,
    pub send_top_k: Option<bool>,
    pub thinking_off: Option<ThinkingOff>,
    pub image_urls: Option<bool>,
    pub count_tokens: Option<TokenCounting>,
    pub project_id: Option<String>,
    pub location: Option<String>,
    pub safety_settings: Option<Vec<SafetySetting>>,
    pub anthropic_version: Option<String>,
    pub default_max_tokens: Option<u32>,
}

impl Default for ProviderTable {
    fn default() -> Self {
        Self {
            kind: None,
            base_url: String::new(),
            timeout: Duration::from_secs(120),
            first_token_timeout: None,
            idle_timeout: None,
            retries: 2,
            retry_backoff: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(2),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            max_concurrency: None,
            max_queue: 0,
            queue_timeout: Duration::from_secs(5),
            health_interval: Duration::from_secs(10),
            api_key_env: None,
            api_key_file: None,
            connect_timeout: Duration::from_secs(5),
            list_timeout: Duration::from_secs(5),
            defaults: DefaultOptions::default(),
            default_model: None,
            keep_alive: None,
            models_dir: None,
            models: None,
            ollama_store: None,
            threads: None,
            batch_threads: None,
            prompt_threads: None,
            parallel: None,
            queue: None,
            context_length: None,
            batch_size: None,
            embedding_batch_tokens: None,
            preload: None,
            truncate_prompt: None,
            max_tokens_field: None,
            include_usage: None,
            send_top_k: None,
            thinking_off: None,
            image_urls: None,
            count_tokens: None,
            project_id: None,
            location: None,
            safety_settings: None,
            anthropic_version: None,
            default_max_tokens: None,
        }
    }
}

use ProviderKind::{Anthropic, Embedded, Gemini, Ollama, OpenAi};

/// The keys only some kinds have, and those kinds.
pub const KIND_KEYS: &[(&str, &[ProviderKind])] = &[
    ("keep_alive", &[Ollama, Embedded]),
    ("models_dir", &[Embedded]),
    ("models", &[Embedded]),
    ("ollama_store", &[Embedded]),
    ("threads", &[Embedded]),
    ("batch_threads", &[Embedded]),
    ("prompt_threads", &[Embedded]),
    ("parallel", &[Embedded]),
    ("queue", &[Embedded]),
    ("context_length", &[Embedded]),
    ("batch_size", &[Embedded]),
    ("embedding_batch_tokens", &[Embedded]),
    ("preload", &[Embedded]),
    ("truncate_prompt", &[Embedded]),
    ("max_tokens_field", &[OpenAi]),
    ("include_usage", &[OpenAi]),
    ("send_top_k", &[OpenAi]),
    ("thinking_off", &[OpenAi]),
    ("image_urls", &[OpenAi]),
    ("count_tokens", &[OpenAi]),
    ("project_id", &[Gemini]),
    ("location", &[Gemini]),
    ("safety_settings", &[Gemini]),
    ("anthropic_version", &[Anthropic]),
    ("default_max_tokens", &[Anthropic]),
];

impl ProviderTable {
    /// Whether the kind key `key` (one of [`KIND_KEYS`]) is set.
    fn is_set(&self, key: &str) -> bool {
        match key {
            "keep_alive" => self.keep_alive.is_some(),
            "models_dir" => self.models_dir.is_some(),
            "models" => self.models.is_some(),
            "ollama_store" => self.ollama_store.is_some(),
            "threads" => self.threads.is_some(),
            "batch_threads" => self.batch_threads.is_some(),
            "prompt_threads" => self.prompt_threads.is_some(),
            "parallel" => self.parallel.is_some(),
            "queue" => self.queue.is_some(),
            "context_length" => self.context_length.is_some(),
            "batch_size" => self.batch_size.is_some(),
            "embedding_batch_tokens" => self.embedding_batch_tokens.is_some(),
            "preload" => self.preload.is_some(),
            "truncate_prompt" => self.truncate_prompt.is_some(),
            "max_tokens_field" => self.max_tokens_field.is_some(),
            "include_usage" => self.include_usage.is_some(),
            "send_top_k" => self.send_top_k.is_some(),
            "thinking_off" => self.thinking_off.is_some(),
            "image_urls" => self.image_urls.is_some(),
            "count_tokens" => self.count_tokens.is_some(),
            "project_id" => self.project_id.is_some(),
            "location" => self.location.is_some(),
            "safety_settings" => self.safety_settings.is_some(),
            "anthropic_version" => self.anthropic_version.is_some(),
            "default_max_tokens" => self.default_max_tokens.is_some(),
            _ => false,
        }
    }

    /// The instance named `name` that this table describes, with every value checked.
    pub fn resolve(&self, name: &str) -> Result<ProviderConfig, ConfigError> {
        let key = |field: &str| format!("providers.{name}.{field}");
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            return Err(invalid(format!("providers.{name}"), "must be a name without '/' or spaces"));
        }
        let Some(kind) = self.kind.or_else(|| ProviderKind::from_name(name)) else {
            return Err(invalid(
                key("kind"),
                "is missing: set it to \"ollama\", \"embedded\", \"openai\", \"gemini\" or \"anthropic\"",
            ));
        };
        if let Some((field, kinds)) =
            KIND_KEYS.iter().find(|(field, kinds)| self.is_set(field) && !kinds.contains(&kind))
        {
            let kinds: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
            return Err(invalid(
                key(field),
                format!("is a setting of kind {} only, and this provider's kind is \"{kind}\"", kinds.join(" and ")),
            ));
        }
        let base_url = self.base_url(kind).map_err(|problem| invalid(key("base_url"), problem))?;
        let policy = self.policy(&key)?;
        let default_model = identifier(self.default_model.as_deref()).map_err(|p| invalid(key("default_model"), p))?;
        super::check_defaults(&self.defaults, &key("defaults"))?;
        let api_key = match (&self.api_key_env, &self.api_key_file) {
            (Some(_), Some(_)) => return Err(invalid(key("api_key_file"), "and api_key_env are both set; keep one")),
            (Some(var), None) => ApiKeySource::Env(var.clone()),
            (None, Some(path)) => ApiKeySource::File(path.clone()),
            (None, None) => ApiKeySource::KindDefault,
        };
        let settings = match kind {
            Ollama => KindSettings::Ollama(OllamaSettings { keep_alive: self.keep_alive }),
            Embedded => KindSettings::Embedded(embedded(self, &key)?),
            OpenAi => {
                let defaults = OpenAiSettings::default();
                KindSettings::OpenAi(OpenAiSettings {
                    max_tokens_field: self.max_tokens_field.unwrap_or(defaults.max_tokens_field),
                    include_usage: self.include_usage.unwrap_or(defaults.include_usage),
                    send_top_k: self.send_top_k.unwrap_or(defaults.send_top_k),
                    thinking_off: self.thinking_off.unwrap_or(defaults.thinking_off),
                    image_urls: self.image_urls.unwrap_or(defaults.image_urls),
                    count_tokens: self.count_tokens.unwrap_or(defaults.count_tokens),
                })
            }
            Gemini => {
                let project_id = identifier(self.project_id.as_deref()).map_err(|p| invalid(key("project_id"), p))?;
                let location = identifier(self.location.as_deref()).map_err(|p| invalid(key("location"), p))?;
                if location.is_some() && project_id.is_none() {
                    return Err(invalid(
                        key("location"),
                        "needs a project: set providers.<name>.project_id (or GEMINI_PROJECT_ID) for Vertex AI",
                    ));
                }
                KindSettings::Gemini(GeminiSettings {
                    project_id,
                    location,
                    safety_settings: self.safety_settings.clone().unwrap_or_default(),
                })
            }
            Anthropic => {
                if self.default_max_tokens == Some(0) {
                    return Err(invalid(key("default_max_tokens"), "must be at least 1"));
                }
                KindSettings::Anthropic(AnthropicSettings {
                    version: self.anthropic_version.clone(),
                    default_max_tokens: self.default_max_tokens,
                })
            }
        };
        Ok(ProviderConfig { base_url, default_model, api_key, policy, defaults: self.defaults.clone(), settings })
    }

    fn base_url(&self, kind: ProviderKind) -> Result<String, String> {
        let url = match self.base_url.trim() {
            "" => kind.default_base_url(),
            url => url,
        };
        match kind {
            Ollama => normalize_ollama_host(url),
            Embedded => Ok(url.to_string()),
            OpenAi | Gemini | Anthropic => {
                let url = url.trim_end_matches('/');
                if !(url.starts_with("http://") || url.starts_with("https://")) || http::Uri::try_from(url).is_err() {
                    return Err(format!("'{url}' is not an http(s) URL"));
                }
                Ok(url.to_string())
            }
        }
    }

    fn policy(&self, key: &dyn Fn(&str) -> String) -> Result<ProviderPolicy, ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid(key("timeout"), "must be greater than zero"));
        }
        for (field, value) in [("first_token_timeout", self.first_token_timeout), ("idle_timeout", self.idle_timeout)] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(key(field), "must be greater than zero"));
            }
        }
        if self.max_concurrency == Some(0) {
            return Err(invalid(key("max_concurrency"), "must be at least 1 (leave it unset for no limit)"));
        }
        Ok(ProviderPolicy {
            first_token_timeout: self.first_token_timeout.unwrap_or(self.timeout),
            idle_timeout: self.idle_timeout.unwrap_or(self.timeout),
            connect_timeout: self.connect_timeout,
            list_timeout: self.list_timeout,
            retries: self.retries,
            retry_backoff: self.retry_backoff,
            retry_backoff_max: self.retry_backoff_max,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown,
            max_concurrency: self.max_concurrency,
            max_queue: self.max_queue,
            queue_timeout: self.queue_timeout,
            health_interval: self.health_interval,
        })
    }
}

fn embedded(keys: &ProviderTable, key: &dyn Fn(&str) -> String) -> Result<EmbeddedSettings, ConfigError> {
    if !cfg!(feature = "embedded") {
        return Err(invalid(
            key("kind"),
            "is \"embedded\", but this build has no embedded engine (it was built without the `embedded` feature)",
        ));
    }
    let defaults = EmbeddedSettings::default();
    let settings = EmbeddedSettings {
        keep_alive: keys.keep_alive.unwrap_or(defaults.keep_alive),
        models_dir: keys.models_dir.clone(),
        models: keys.models.clone().unwrap_or_default(),
        ollama_store: keys.ollama_store.clone().unwrap_or(defaults.ollama_store),
        threads: keys.threads,
        batch_threads: keys.batch_threads,
        prompt_threads: keys.prompt_threads,
        parallel: keys.parallel.unwrap_or(defaults.parallel),
        queue: keys.queue.unwrap_or(defaults.queue),
        context_length: keys.context_length.unwrap_or(defaults.context_length),
        batch_size: keys.batch_size.unwrap_or(defaults.batch_size),
        embedding_batch_tokens: keys.embedding_batch_tokens.unwrap_or(defaults.embedding_batch_tokens),
        preload: keys.preload.clone().unwrap_or_default(),
        truncate_prompt: keys.truncate_prompt.unwrap_or(defaults.truncate_prompt),
    };
    if settings.parallel == 0 {
        return Err(invalid(key("parallel"), "must be at least 1"));
    }
    if settings.context_length < 16 {
        return Err(invalid(key("context_length"), "must be at least 16 tokens"));
    }
    if settings.batch_size == 0 {
        return Err(invalid(key("batch_size"), "must be at least 1"));
    }
    if settings.threads == Some(0) {
        return Err(invalid(key("threads"), "must be at least 1"));
    }
    if settings.batch_threads == Some(0) {
        return Err(invalid(key("batch_threads"), "must be at least 1"));
    }
    if settings.prompt_threads == Some(0) {
        return Err(invalid(key("prompt_threads"), "must be at least 1"));
    }
    if settings.embedding_batch_tokens < 16 {
        return Err(invalid(key("embedding_batch_tokens"), "must be at least 16 tokens"));
    }
    Ok(settings)
}

/// A model name or cloud identifier: trimmed, empty taken as unset, no spaces inside.
fn identifier(value: Option<&str>) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) if text.contains(char::is_whitespace) => Err(format!("'{text}' must not contain spaces")),
        Some(text) => Ok(Some(text.to_string())),
    }
}

/// Accepts what `OLLAMA_HOST` accepts: `host`, `host:port`, `scheme://host[:port]`. A value
/// without a scheme gets `http://` and Ollama's port 11434, as Ollama's own client does.
pub fn normalize_ollama_host(value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    if value.is_empty() {
        return Err("is empty; set it to a URL such as http://localhost:11434".into());
    }
    let url = match value.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => value.to_string(),
        Some((scheme, _)) => return Err(format!("has scheme '{scheme}'; use http:// or https://")),
        None => {
            let has_port = match value.rsplit_once(':') {
                Some((_, port)) => port.parse::<u16>().is_ok() && !value.ends_with(']'),
                None => false,
            };
            if has_port { format!("http://{value}") } else { format!("http://{value}:{OLLAMA_DEFAULT_PORT}") }
        }
    };
    http::Uri::try_from(url.as_str()).map_err(|e| format!("'{value}' is not a valid URL: {e}"))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_from(Some(file.path()), &Overrides::default(), env).map_err(|e| e.to_string())
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(normalize_ollama_host("0.0.0.0").unwrap(), "http://0.0.0.0:11434");
        assert_eq!(normalize_ollama_host("box:8080").unwrap(), "http://box:8080");
        assert_eq!(normalize_ollama_host("https://ollama.example.com/").unwrap(), "https://ollama.example.com");
        assert!(normalize_ollama_host("ftp://x").is_err());
        assert!(normalize_ollama_host("").is_err());
    }

    #[test]
    fn keep_alive_forms() {
        assert_eq!(KeepAlive::parse("5m").unwrap(), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(KeepAlive::parse("0").unwrap(), KeepAlive::For(Duration::ZERO));
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("-1m").unwrap(), KeepAlive::Forever);
        assert!(KeepAlive::parse("later").is_err());
        // From the environment a number arrives as a number.
        let config = load("[providers.ollama]\n", &[("COPILOT_PROVIDERS__OLLAMA__KEEP_ALIVE", "-1")]).unwrap();
        let forever = KindSettings::Ollama(OllamaSettings { keep_alive: Some(KeepAlive::Forever) });
        assert_eq!(config.providers["ollama"].settings, forever);
        let err = load("[providers.ollama]\nkeep_alive = \"later\"\n", &[]).unwrap_err();
        assert!(err.contains("providers.ollama.keep_alive") && err.contains("not a duration"), "{err}");
    }

    /// Each kind's keys load for that kind and are refused, with the key named, for every other.
    #[test]
    fn a_key_of_another_kind_is_refused_with_the_key_named() {
        let value = |key: &str, kind: ProviderKind| match key {
            "keep_alive" => "\"1m\"",
            "models_dir" | "ollama_store" => "\"/tmp\"",
            "models" => "{ m = \"/tmp/m.gguf\" }",
            "preload" => "[\"m\"]",
            "truncate_prompt" | "include_usage" | "send_top_k" | "image_urls" => "true",
            "thinking_off" => "\"reasoning_effort_none\"",
            "count_tokens" => "\"vllm\"",
            "max_tokens_field" => "\"max_completion_tokens\"",
            "safety_settings" => "[{ category = \"c\", threshold = \"t\" }]",
            // A location needs a project, on Gemini.
            "location" if kind == Gemini => "\"x\"\nproject_id = \"p\"",
            "project_id" | "anthropic_version" | "location" => "\"x\"",
            _ => "64",
        };
        let kinds =
            [Ollama, OpenAi, Gemini, Anthropic].into_iter().chain(cfg!(feature = "embedded").then_some(Embedded));
        for kind in kinds {
            for (key, owners) in KIND_KEYS {
                let toml = format!(
                    "[providers.p]\nkind = \"{kind}\"\nbase_url = \"http://h:1\"\napi_key_env = \"HOME\"\n{key} = {}\n",
                    value(key, kind)
                );
                let loaded = load(&toml, &[]);
                if owners.contains(&kind) {
                    assert!(loaded.is_ok(), "{kind} {key}: {loaded:?}");
                } else {
                    let err = loaded.unwrap_err();
                    assert!(
                        err.contains(&format!("providers.p.{key}")) && err.contains(&format!("kind is \"{kind}\"")),
                        "{kind} {key}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn kind_settings_are_parsed_into_types_at_load() {
        let config = load(
            "[providers.vllm]\nkind = \"openai\"\nbase_url = \"http://h:1/v1\"\n\
             max_tokens_field = \"max_completion_tokens\"\nsend_top_k = true\n\
             thinking_off = \"enable_thinking_false\"\nimage_urls = false\ncount_tokens = \"vllm\"\n\
             [providers.gemini]\napi_key_env = \"HOME\"\nsafety_settings = [{ category = \"c\", threshold = \"t\" }]\n",
            &[],
        )
        .unwrap();
        let vllm = &config.providers["vllm"];
        let expected = OpenAiSettings {
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            include_usage: true,
            send_top_k: true,
            thinking_off: ThinkingOff::EnableThinkingFalse,
            image_urls: false,
            count_tokens: TokenCounting::Vllm,
        };
        assert_eq!(vllm.settings, KindSettings::OpenAi(expected));
        assert_eq!(vllm.api_key, ApiKeySource::KindDefault);
        let llama = load(
            "[providers.llama]\nkind = \"openai\"\nbase_url = \"http://h:8080/v1\"\ncount_tokens = \"llama_cpp\"\n",
            &[],
        )
        .unwrap();
        let KindSettings::OpenAi(settings) = &llama.providers["llama"].settings else { panic!("not openai") };
        assert_eq!(settings.count_tokens, TokenCounting::LlamaCpp);
        let gemini = &config.providers["gemini"];
        assert_eq!(gemini.api_key, ApiKeySource::Env("HOME".into()));
        let safety = vec![SafetySetting { category: "c".into(), threshold: "t".into() }];
        assert_eq!(
            gemini.settings,
            KindSettings::Gemini(GeminiSettings { safety_settings: safety, ..Default::default() })
        );

        for (toml, key, problem) in [
            ("kind = \"openai\"\nmax_tokens_field = \"max\"", "max_tokens_field", "max_completion_tokens"),
            ("kind = \"gemini\"\nsafety_settings = [{ category = \"c\" }]", "safety_settings", "threshold"),
            ("kind = \"ollama\"\nsend_top_k = true", "send_top_k", "kind \"openai\" only"),
            ("kind = \"ollama\"\nsend_topk = true", "send_topk", "unknown field"),
        ] {
            let err = load(&format!("[providers.p]\n{toml}\n"), &[]).unwrap_err();
            assert!(err.contains(key) && err.contains(problem), "{toml}: {err}");
        }
    }

    #[cfg(feature = "embedded")]
    #[test]
    fn the_embedded_engines_settings_have_their_defaults_and_checks() {
        let config = load("[providers.embedded]\nparallel = 2\nollama_store = \"off\"\n", &[]).unwrap();
        let KindSettings::Embedded(settings) = &config.providers["embedded"].settings else { panic!("not embedded") };
        assert_eq!(settings.parallel, 2);
        assert_eq!(settings.ollama_store, OllamaStore::Off);
        assert_eq!(settings.keep_alive, KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(settings.context_length, 4096);
        for (toml, key) in [
            ("parallel = 0", "parallel"),
            ("context_length = 8", "context_length"),
            ("threads = 0", "threads"),
            ("batch_threads = 0", "batch_threads"),
            ("prompt_threads = 0", "prompt_threads"),
            ("ollama_store = \" \"", "ollama_store"),
        ] {
            let err = load(&format!("[providers.embedded]\n{toml}\n"), &[]).unwrap_err();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
