//! Configuration: one TOML file, overridden by environment variables, then by command-line flags.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config` / `COPILOT_CONFIG`),
//! the variables the first users already set and each vendor's SDK reads (`LLM_PROVIDER`,
//! `OLLAMA_HOST`, `GEMINI_API_KEY`, `OPENAI_BASE_URL`, …: [`VENDOR_VARIABLES`]), `COPILOT_*`
//! variables (`COPILOT_SERVER__ADDR` sets `server.addr`; `COPILOT_ADDR` is a shorthand), then
//! flags. Every problem is reported at start with the key it concerns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod cache;
mod provider;
mod security;
mod state;
pub use cache::{CacheConfig, CacheScope};
pub use provider::{
    AnthropicSettings, ApiKeySource, EmbeddedSettings, GeminiSettings, KIND_KEYS, KeepAlive, KindSettings,
    MaxTokensField, OllamaSettings, OllamaStore, OpenAiSettings, ProviderConfig, ProviderKind, ProviderPolicy,
    ProviderTable, SafetySetting, ThinkingOff, TokenCounting, normalize_ollama_host,
};
pub use security::{ApiKeyConfig, AuthConfig, LimitsConfig, TlsConfig};
pub use state::{OnStateError, RedisTopology, RedisUrl, StateConfig};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub routing: RoutingConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// The Redis every replica shares (`[state]`); unset, budgets are this process's own.
    pub state: StateConfig,
    pub cache: CacheConfig,
    /// Named provider instances, as the server uses them (resolved at load from their tables);
    /// the name is the `provider/` prefix clients use.
    #[serde(skip)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// The `[providers.<name>]` tables as written, taken into `providers` at load.
    #[serde(rename = "providers")]
    provider_tables: BTreeMap<String, ProviderTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gRPC listener binds.
    pub addr: SocketAddr,
    /// How long in-flight calls may run after SIGTERM/SIGINT before they are ended with UNAVAILABLE.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How long to keep accepting calls after health turns NOT_SERVING on SIGTERM, so that load
    /// balancers and meshes see the change before the listener closes.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// HTTP/2 streams (concurrent calls) allowed on one client connection.
    pub max_concurrent_streams: u32,
    /// How long a new client connection may take to complete the TLS handshake (with TLS) and
    /// to send the HTTP/2 preface; one that has not is closed, so idle sockets cannot pile up.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Client connections open at once (unset: half the open-file limit, at most 10,000). At the
    /// cap the listener stops accepting until one closes; new clients wait in the backlog.
    pub max_connections: Option<usize>,
    /// Where the admin listener serves Prometheus metrics at `/metrics` (off when unset).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the gRPC listener (plaintext when unset).
    pub tls: Option<TlsConfig>,
    /// A second, plaintext listener serving only `grpc.health.v1`, for probes that cannot speak
    /// TLS (Kubernetes' gRPC probes) when the API listener does (off when unset).
    pub health_addr: Option<SocketAddr>,
    /// Threads that serve calls (unset: one per available core). One thread suits a core shared
    /// with other processes.
    pub worker_threads: Option<usize>,
    /// How connections share those threads: `per-connection` (each connection served by one
    /// thread, start to finish: fewest wake-ups, lowest latency) or `work-stealing` (one runtime
    /// whose threads share every connection's work: one busy connection can use every core).
    pub threading: Threading,
    /// Whether each connection thread is pinned to a CPU of its own (per-connection threading
    /// only): `auto` pins when there is one thread per CPU the process may use (a dedicated
    /// machine or VM, a container with a cpuset), `always` pins round-robin over those CPUs,
    /// `never` leaves placement to the kernel. A pinned thread keeps its caches warm between
    /// calls instead of being moved between cores; it cannot escape a busy neighbour, hence not
    /// under a CPU quota on a shared node (fewer threads than CPUs), where `auto` does not pin.
    pub pin_threads: PinThreads,
}

/// How accepted connections are spread over the serving threads (see `connection_threads.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threading {
    #[default]
    PerConnection,
    WorkStealing,
}

/// Whether connection threads are pinned to CPUs (see `connection_threads.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinThreads {
    #[default]
    Auto,
    Always,
    Never,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            max_concurrent_streams: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_connections: None,
            metrics_addr: None,
            health_addr: None,
            worker_threads: None,
            threading: Threading::default(),
            pin_threads: PinThreads::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The provider a model name without a known `provider/` prefix goes to. Defaults to the
    /// provider of `default_model`, else the only provider, else `embedded`, else `ollama`, else
    /// none (then such names are refused).
    pub default_provider: Option<String>,
    /// The model used when a request leaves `model` empty, in the form clients use. Defaults to
    /// the embedded default chat model when the default provider is the embedded engine.
    pub default_model: Option<String>,
    /// The model an `Embed` call that leaves `model` empty uses, in the form clients use. Defaults to
    /// the embedded default embedding model when the default provider is the embedded engine;
    /// otherwise none (such calls are refused with MODEL_REQUIRED).
    pub default_embedding_model: Option<String>,
    /// Names clients may use for an ordered list of targets: the first that can serve does; a
    /// target is a `provider/model` name or `{ replicas = [...] }`, several instances serving the
    /// same model among which load is spread.
    pub aliases: BTreeMap<String, Vec<AliasTarget>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AliasTarget {
    Model(String),
    Replicas { replicas: Vec<String> },
}

impl AliasTarget {
    pub fn models(&self) -> Vec<&str> {
        match self {
            AliasTarget::Model(model) => vec![model.as_str()],
            AliasTarget::Replicas { replicas } => replicas.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `copilot=debug,info`. `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultOptions {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
}

/// Values given on the command line; they override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

impl Config {
    /// Loads the configuration from the file (if any), the process environment and the flags.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(path, overrides, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        path: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = match path {
            // Read it ourselves: figment silently treats a missing file as empty.
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        // A file that names its providers gets exactly those; otherwise the built-in set, plus
        // each hosted provider the environment asks for.
        let file_providers: Option<Vec<String>> =
            file.as_deref().and_then(|text| match Figment::from(Toml::string(text)).find_value("providers") {
                Ok(figment::value::Value::Dict(_, dict)) => Some(dict.keys().cloned().collect()),
                _ => None,
            });
        let providers = match &file_providers {
            Some(names) => names.clone(),
            None => {
                let providers = builtin_providers(&env);
                let names = providers.keys().cloned().collect();
                figment = figment.merge(Serialized::default("providers", providers));
                names
            }
        };
        if let Some(text) = &file {
            figment = figment.merge(Toml::string(text));
        }
        figment = figment.merge(vendor_env(&env, &providers));
        figment = figment.merge(copilot_env(&env));
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe_figment_error(e, path)))?;
        if let Some(addr) = overrides.addr {
            config.server.addr = addr;
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        config.finish()?;
        Ok(config)
    }

    /// Fills derived defaults and checks everything that types alone cannot.
    fn finish(&mut self) -> Result<(), ConfigError> {
        self.resolve_providers()?;
        self.resolve_default_route()?;
        self.check_aliases()?;
        self.check_server()?;
        state::check(&mut self.state)?;
        self.cache.check()?;
        security::check(self.server.tls.as_ref(), &self.auth, &self.limits)
    }

    /// The provider tables become the instances the server builds.
    fn resolve_providers(&mut self) -> Result<(), ConfigError> {
        if self.provider_tables.is_empty() {
            return Err(invalid("providers", "is empty: configure at least one provider"));
        }
        for (name, table) in std::mem::take(&mut self.provider_tables) {
            let provider = table.resolve(&name)?;
            self.providers.insert(name, provider);
        }
        Ok(())
    }

    /// The default provider and model. An explicit default provider wins; then the provider of
    /// the default model; then the only provider that names a default model of its own; then the
    /// only provider; then the embedded engine; then Ollama. With several providers and none of
    /// them the obvious default, there is none: bare model names are refused at call time,
    /// prefixed names work.
    fn resolve_default_route(&mut self) -> Result<(), ConfigError> {
        let with_default_model: Vec<&String> =
            self.providers.iter().filter(|(_, p)| p.default_model.is_some()).map(|(name, _)| name).collect();
        let model_provider = self
            .routing
            .default_model
            .as_deref()
            .and_then(|m| m.split_once('/'))
            .map(|(provider, _)| provider.to_string())
            .filter(|provider| self.providers.contains_key(provider))
            .or_else(|| match with_default_model.as_slice() {
                [only] if self.routing.default_model.is_none() => Some(only.to_string()),
                _ => None,
            });
        let default_provider = match (&self.routing.default_provider, model_provider) {
            (Some(name), _) => {
                if !self.providers.contains_key(name) {
                    let known: Vec<_> = self.providers.keys().map(String::as_str).collect();
                    return Err(invalid(
                        "routing.default_provider",
                        format!(
                            "(or LLM_PROVIDER) names '{name}', which is not configured; configured providers: {}",
                            known.join(", ")
                        ),
                    ));
                }
                Some(name.clone())
            }
            (None, Some(provider)) => Some(provider),
            (None, None) if self.providers.len() == 1 => self.providers.keys().next().cloned(),
            (None, None) => {
                ["embedded", "ollama"].into_iter().find(|name| self.providers.contains_key(*name)).map(String::from)
            }
        };
        if self.routing.default_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            self.routing.default_model = None;
        }
        if self.routing.default_model.is_none()
            && let Some(provider) = &default_provider
            && let Some(model) = &self.providers[provider].default_model
        {
            self.routing.default_model = Some(format!("{provider}/{model}"));
        }
        #[cfg(feature = "embedded")]
        if let Some(provider) = &default_provider
            && self.routing.default_model.is_none()
            && self.providers[provider].kind() == ProviderKind::Embedded
        {
            self.routing.default_model = Some(format!("{provider}/{}", copilot_embedded::download::DEFAULT_CHAT_MODEL));
        }
        if self.routing.default_embedding_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            self.routing.default_embedding_model = None;
        }
        #[cfg(feature = "embedded")]
        if let Some(provider) = &default_provider
            && self.routing.default_embedding_model.is_none()
            && self.providers[provider].kind() == ProviderKind::Embedded
        {
            self.routing.default_embedding_model =
                Some(format!("{provider}/{}", copilot_embedded::download::DEFAULT_EMBEDDING_MODEL));
        }
        self.routing.default_provider = default_provider;
        Ok(())
    }

    fn check_aliases(&self) -> Result<(), ConfigError> {
        for (alias, targets) in &self.routing.aliases {
            let key = format!("routing.aliases.{alias}");
            if alias.contains('/') || alias.is_empty() {
                return Err(invalid(key, "must be a name without '/'"));
            }
            if targets.is_empty() {
                return Err(invalid(key, "lists no targets"));
            }
            for model in targets.iter().flat_map(AliasTarget::models) {
                match model.split_once('/') {
                    Some((provider, name)) if self.providers.contains_key(provider) && !name.is_empty() => {}
                    _ => {
                        return Err(invalid(
                            key,
                            format!("names '{model}', which is not `provider/model` with a configured provider"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_server(&self) -> Result<(), ConfigError> {
        if self.server.worker_threads == Some(0) {
            return Err(invalid("server.worker_threads", "must be at least 1 (or unset: one per core)"));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(invalid("server.max_concurrent_streams", "must be at least 1"));
        }
        if self.server.max_connections == Some(0) {
            return Err(invalid("server.max_connections", "must be at least 1 (or unset: half the open-file limit)"));
        }
        if self.server.handshake_timeout.is_zero() {
            return Err(invalid("server.handshake_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    /// The provider a bare model name goes to (always set after loading).
    pub fn default_provider(&self) -> Option<&str> {
        self.routing.default_provider.as_deref()
    }
}

/// The providers of a configuration that names none: the embedded engine (when built in) and the
/// Ollama at localhost, so a reachable Ollama's models appear next to the embedded ones; plus each
/// hosted provider the environment selects (`LLM_PROVIDER`) or gives credentials or an endpoint
/// for (`GEMINI_API_KEY`, `GEMINI_PROJECT_ID`, `OPENAI_API_KEY`, `OPENAI_BASE_URL`,
/// `ANTHROPIC_API_KEY`), named after its kind.
fn builtin_providers(env: &BTreeMap<String, String>) -> BTreeMap<String, ProviderTable> {
    let set = |var: &str| env.get(var).is_some_and(|v| !v.trim().is_empty());
    let selected = env.get("LLM_PROVIDER").map(|v| v.trim().to_ascii_lowercase()).unwrap_or_default();
    let mut providers = BTreeMap::new();
    providers.insert("ollama".to_string(), ProviderTable::default());
    if cfg!(feature = "embedded") {
        providers.insert("embedded".to_string(), ProviderTable::default());
    }
    for (name, triggers) in [
        ("gemini", &["GEMINI_API_KEY", "GEMINI_PROJECT_ID"][..]),
        ("openai", &["OPENAI_API_KEY", "OPENAI_BASE_URL"][..]),
        ("anthropic", &["ANTHROPIC_API_KEY"][..]),
    ] {
        if selected == name || triggers.iter().any(|var| set(var)) {
            providers.insert(name.to_string(), ProviderTable::default());
        }
    }
    providers
}

/// Environment variables as a figment layer whose errors name the variable, not just the key.
struct EnvLayer {
    values: BTreeMap<String, figment::value::Value>,
    var_for_key: BTreeMap<String, String>,
}

impl EnvLayer {
    fn new() -> Self {
        Self { values: BTreeMap::new(), var_for_key: BTreeMap::new() }
    }

    fn set(&mut self, key: &str, var: &str, value: figment::value::Value) {
        insert_path(&mut self.values, key, value);
        self.var_for_key.insert(key.to_string(), var.to_string());
    }
}

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        let vars = self.var_for_key.clone();
        figment::Metadata::named("environment").interpolater(move |_, keys| {
            let key = keys.join(".");
            vars.get(&key).cloned().unwrap_or(key)
        })
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.values.clone().into_iter().collect()))
    }
}

/// The variables the first users set and each vendor's SDK reads, with the key each sets. A
/// `providers.<kind>` key applies to the provider named after the kind, when the configuration has
/// it (a file that names other providers is not given new ones); the first variable listed for a
/// key wins over later ones.
pub const VENDOR_VARIABLES: &[(&str, &str)] = &[
    ("LLM_PROVIDER", "routing.default_provider"),
    ("OLLAMA_HOST", "providers.ollama.base_url"),
    ("OLLAMA_MODEL", "providers.ollama.default_model"),
    ("OLLAMA_TIMEOUT", "providers.ollama.timeout"),
    ("OLLAMA_TEMPERATURE", "providers.ollama.defaults.temperature"),
    ("OLLAMA_MAX_TOKENS", "providers.ollama.defaults.max_tokens"),
    ("GEMINI_MODEL", "providers.gemini.default_model"),
    ("GEMINI_BASE_URL", "providers.gemini.base_url"),
    ("GOOGLE_GEMINI_BASE_URL", "providers.gemini.base_url"),
    ("GEMINI_PROJECT_ID", "providers.gemini.project_id"),
    ("GOOGLE_CLOUD_PROJECT", "providers.gemini.project_id"),
    ("GOOGLE_CLOUD_LOCATION", "providers.gemini.location"),
    ("GEMINI_TIMEOUT", "providers.gemini.timeout"),
    ("GEMINI_TEMPERATURE", "providers.gemini.defaults.temperature"),
    ("GEMINI_MAX_TOKENS", "providers.gemini.defaults.max_tokens"),
    ("OPENAI_MODEL", "providers.openai.default_model"),
    ("OPENAI_BASE_URL", "providers.openai.base_url"),
    ("OPENAI_TIMEOUT", "providers.openai.timeout"),
    ("OPENAI_TEMPERATURE", "providers.openai.defaults.temperature"),
    ("OPENAI_MAX_TOKENS", "providers.openai.defaults.max_tokens"),
    ("ANTHROPIC_MODEL", "providers.anthropic.default_model"),
    ("ANTHROPIC_BASE_URL", "providers.anthropic.base_url"),
    ("ANTHROPIC_TIMEOUT", "providers.anthropic.timeout"),
    ("ANTHROPIC_TEMPERATURE", "providers.anthropic.defaults.temperature"),
    ("ANTHROPIC_MAX_TOKENS", "providers.anthropic.defaults.max_tokens"),
];

fn vendor_env(env: &BTreeMap<String, String>, providers: &[String]) -> EnvLayer {
    let mut layer = EnvLayer::new();
    for (var, key) in VENDOR_VARIABLES {
        let Some(value) = env.get(*var).filter(|v| !v.trim().is_empty()) else { continue };
        if layer.var_for_key.contains_key(*key) {
            continue;
        }
        if let Some(provider) = key.strip_prefix("providers.").and_then(|rest| rest.split('.').next())
            && !providers.iter().any(|p| p == provider)
        {
            continue;
        }
        let value = match *key {
            "routing.default_provider" => figment::value::Value::from(value.trim().to_ascii_lowercase()),
            // Model names and identifiers stay strings even when they look like numbers.
            k if k.ends_with("default_model") || k.ends_with("project_id") || k.ends_with("location") => {
                figment::value::Value::from(value.trim().to_string())
            }
            _ => parse_env_scalar(value),
        };
        layer.set(key, var, value);
    }
    layer
}

/// `COPILOT_SECTION__KEY=value` sets `section.key`; `COPILOT_ADDR` sets `server.addr`.
fn copilot_env(env: &BTreeMap<String, String>) -> EnvLayer {
    let mut layer = EnvLayer::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("COPILOT_") else { continue };
        let key = match rest {
            "ADDR" => "server.addr".to_string(),
            "REDIS_URL" => "state.redis_url".to_string(),
            "REDIS_SENTINELS" => {
                let sentinels = value.split(',').map(str::trim).filter(|url| !url.is_empty());
                layer.set("state.sentinels", var, figment::value::Value::from(sentinels.collect::<Vec<_>>()));
                continue;
            }
            other if other.contains("__") => other.to_ascii_lowercase().replace("__", "."),
            _ => continue,
        };
        layer.set(&key, var, parse_env_scalar(value));
    }
    layer
}

fn insert_path(map: &mut BTreeMap<String, figment::value::Value>, path: &str, value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((first, rest)) => {
            let entry = map.entry(first.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, dict) = entry {
                let mut inner: BTreeMap<String, Value> = std::mem::take(dict).into_iter().collect();
                insert_path(&mut inner, rest, value);
                *dict = inner.into_iter().collect();
            }
        }
    }
}

/// Environment values are strings; numbers and booleans are given their natural type so that
/// `OLLAMA_MAX_TOKENS=512` fills a number field.
fn parse_env_scalar(value: &str) -> figment::value::Value {
    use figment::value::Value;
    let value = value.trim();
    if let Ok(n) = value.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = value.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(f) = value.parse::<f64>() {
        return Value::from(f);
    }
    match value {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(value.to_string()),
    }
}

fn describe_figment_error(error: figment::Error, file: Option<&Path>) -> String {
    error
        .into_iter()
        .map(|e| {
            // `auth.keys[0].hash`, as the README and the other messages write array entries.
            let key = e.path.iter().fold(String::new(), |mut key, part| {
                match part.parse::<usize>() {
                    Ok(index) => key.push_str(&format!("[{index}]")),
                    Err(_) if key.is_empty() => key.push_str(part),
                    Err(_) => key.push_str(&format!(".{part}")),
                }
                key
            });
            let origin = e.metadata.as_ref().and_then(|m| match &m.source {
                Some(source) => Some(source.to_string()),
                None if m.name == "environment" => Some(m.interpolate(&e.profile.clone().unwrap_or_default(), &e.path)),
                None if m.name.contains("TOML") => file.map(|f| f.display().to_string()),
                None => None,
            });
            match (key.is_empty(), origin) {
                (true, _) => e.kind.to_string(),
                (false, Some(origin)) => format!("`{key}` (from {origin}): {}", e.kind),
                (false, None) => format!("`{key}`: {}", e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn check_defaults(d: &DefaultOptions, key: &str) -> Result<(), ConfigError> {
    if let Some(t) = d.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid(format!("{key}.temperature"), format!("is {t}; it must be between 0 and 2")));
    }
    if let Some(p) = d.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(invalid(format!("{key}.top_p"), format!("is {p}; it must be between 0 and 1")));
    }
    if d.max_tokens == Some(0) {
        return Err(invalid(format!("{key}.max_tokens"), "must be at least 1"));
    }
    if d.top_k == Some(0) {
        return Err(invalid(format!("{key}.top_k"), "must be at least 1"));
    }
    Ok(())
}

/// An optional duration, in the same forms as [`duration`].
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::duration")] Duration);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

/// Durations in the config are humantime strings (`30s`, `2m`) or plain numbers of seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Fractional(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            // Too large for a `Duration` (1e30) is refused like a negative number, not a panic.
            Raw::Fractional(f) => Duration::try_from_secs_f64(f)
                .map_err(|_| D::Error::custom(format!("{f} is not a valid number of seconds"))),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| D::Error::custom(format!("'{t}' is not a duration like 30s or 2m: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Gemini instance's Vertex AI project and location.
    fn vertex(provider: &ProviderConfig) -> (Option<&str>, Option<&str>) {
        match &provider.settings {
            KindSettings::Gemini(gemini) => (gemini.project_id.as_deref(), gemini.location.as_deref()),
            other => panic!("not Gemini: {other:?}"),
        }
    }

    fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = toml.map(|text| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            file
        });
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_from(file.as_ref().map(|f| f.path()), &Overrides::default(), env)
    }

    #[test]
    fn defaults_to_the_embedded_engine_with_a_local_ollama_beside_it() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.server.addr.to_string(), "0.0.0.0:50051");
        assert_eq!(config.providers["ollama"].base_url, "http://localhost:11434");
        assert_eq!(config.providers["ollama"].kind(), ProviderKind::Ollama);
        if cfg!(feature = "embedded") {
            assert_eq!(config.default_provider(), Some("embedded"));
            assert_eq!(config.providers["embedded"].kind(), ProviderKind::Embedded);
            assert_eq!(config.routing.default_model.as_deref(), Some("embedded/qwen2.5-coder-0.5b-instruct"));
        } else {
            assert_eq!(config.default_provider(), Some("ollama"));
            assert_eq!(config.routing.default_model, None);
        }
    }

    #[test]
    fn ollama_becomes_the_default_when_the_first_users_variables_say_so() {
        let config = load(None, &[("OLLAMA_MODEL", "llama3.2")]).unwrap();
        assert_eq!(config.default_provider(), Some("ollama"));
        let config = load(None, &[("LLM_PROVIDER", "ollama")]).unwrap();
        assert_eq!(config.default_provider(), Some("ollama"));
        assert_eq!(config.routing.default_model, None);
    }

    #[test]
    fn worker_threads_are_optional_and_never_zero() {
        assert_eq!(load(None, &[]).unwrap().server.worker_threads, None);
        let config = load(None, &[("COPILOT_SERVER__WORKER_THREADS", "1")]).unwrap();
        assert_eq!(config.server.worker_threads, Some(1));
        let error = load(Some("[server]\nworker_threads = 0"), &[]).unwrap_err().to_string();
        assert!(error.contains("server.worker_threads"), "{error}");
    }

    #[test]
    fn threading_is_per_connection_unless_work_stealing_is_asked_for() {
        assert_eq!(load(None, &[]).unwrap().server.threading, Threading::PerConnection);
        let config = load(Some("[server]\nthreading = \"work-stealing\""), &[]).unwrap();
        assert_eq!(config.server.threading, Threading::WorkStealing);
        let config = load(None, &[("COPILOT_SERVER__THREADING", "per-connection")]).unwrap();
        assert_eq!(config.server.threading, Threading::PerConnection);
        let error = load(Some("[server]\nthreading = \"shared\""), &[]).unwrap_err().to_string();
        assert!(error.contains("threading") && error.contains("work-stealing"), "{error}");
    }

    #[test]
    fn pin_threads_is_auto_unless_set() {
        assert_eq!(load(None, &[]).unwrap().server.pin_threads, PinThreads::Auto);
        let config = load(Some("[server]\npin_threads = \"never\""), &[]).unwrap();
        assert_eq!(config.server.pin_threads, PinThreads::Never);
        let config = load(None, &[("COPILOT_SERVER__PIN_THREADS", "always")]).unwrap();
        assert_eq!(config.server.pin_threads, PinThreads::Always);
        let error = load(Some("[server]\npin_threads = true"), &[]).unwrap_err().to_string();
        assert!(error.contains("pin_threads"), "{error}");
    }

    #[test]
    fn a_file_that_names_providers_gets_only_those() {
        let config = load(Some("[providers.ollama]\nbase_url = \"http://x:1\""), &[]).unwrap();
        assert_eq!(config.providers.keys().collect::<Vec<_>>(), ["ollama"]);
        assert_eq!(config.default_provider(), Some("ollama"));
    }

    #[test]
    fn first_users_variables_are_honoured() {
        let config = load(
            None,
            &[
                ("LLM_PROVIDER", "ollama"),
                ("OLLAMA_HOST", "gpu-box"),
                ("OLLAMA_MODEL", "llama3.2:3b"),
                ("OLLAMA_TIMEOUT", "45"),
                ("OLLAMA_TEMPERATURE", "0.2"),
                ("OLLAMA_MAX_TOKENS", "256"),
            ],
        )
        .unwrap();
        let ollama = &config.providers["ollama"];
        assert_eq!(ollama.base_url, "http://gpu-box:11434");
        assert_eq!(ollama.policy.first_token_timeout, Duration::from_secs(45));
        assert_eq!(ollama.policy.idle_timeout, Duration::from_secs(45));
        assert_eq!(ollama.defaults.temperature, Some(0.2));
        assert_eq!(ollama.defaults.max_tokens, Some(256));
        assert_eq!(config.routing.default_model.as_deref(), Some("ollama/llama3.2:3b"));
    }

    #[test]
    fn durations_too_large_for_a_duration_are_refused_not_a_panic() {
        let config = load(Some("[providers.ollama]\ntimeout = 1.5\n"), &[]).unwrap();
        assert_eq!(config.providers["ollama"].policy.idle_timeout, Duration::from_millis(1500));
        for bad in ["1e30", "-1.5", "inf", "nan"] {
            let err = load(Some(&format!("[providers.ollama]\ntimeout = {bad}\n")), &[]).unwrap_err().to_string();
            assert!(err.contains("is not a valid number of seconds"), "{bad}: {err}");
        }
        let err = load(None, &[("OLLAMA_TIMEOUT", "1e30")]).unwrap_err().to_string();
        assert!(err.contains("not a valid number of seconds"), "{err}");
    }

    #[test]
    fn file_then_env_then_copilot_env() {
        let toml = r#"
            [server]
            addr = "127.0.0.1:6000"
            shutdown_grace = "5s"
            [providers.ollama]
            base_url = "http://file-host:1234"
            keep_alive = "10m"
        "#;
        let config =
            load(Some(toml), &[("OLLAMA_HOST", "http://env-host:80"), ("COPILOT_ADDR", "127.0.0.1:7000")]).unwrap();
        assert_eq!(config.server.addr.to_string(), "127.0.0.1:7000");
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(5));
        assert_eq!(config.providers["ollama"].base_url, "http://env-host:80");
        assert_eq!(
            config.providers["ollama"].settings,
            KindSettings::Ollama(OllamaSettings { keep_alive: Some(KeepAlive::For(Duration::from_secs(600))) })
        );

        let config = load(Some(toml), &[("COPILOT_SERVER__SHUTDOWN_GRACE", "2s")]).unwrap();
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let err = load(None, &[("OLLAMA_MAX_TOKENS", "lots")]).unwrap_err().to_string();
        assert!(err.contains("providers.ollama.defaults.max_tokens") && err.contains("OLLAMA_MAX_TOKENS"), "{err}");

        let err = load(None, &[("OLLAMA_TEMPERATURE", "3.5")]).unwrap_err().to_string();
        assert!(err.contains("providers.ollama.defaults.temperature") && err.contains("between 0 and 2"), "{err}");

        let err = load(Some("[server]\nadr = \"x\""), &[]).unwrap_err().to_string();
        assert!(err.contains("server.adr") && err.contains(".tmp"), "{err}");

        let err = load(None, &[("LLM_PROVIDER", "gemeni")]).unwrap_err().to_string();
        assert!(
            err.contains("routing.default_provider") && err.contains("gemeni") && err.contains("configured providers"),
            "{err}"
        );
        let err = load(Some("[providers.embedded]\nparallel = 0"), &[]).unwrap_err().to_string();
        if cfg!(feature = "embedded") {
            assert!(err.contains("providers.embedded.parallel"), "{err}");
        }
        // A file that names its providers is not given more by the environment.
        let err = load(Some("[providers.ollama]\n"), &[("LLM_PROVIDER", "openai"), ("OPENAI_API_KEY", "sk")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("routing.default_provider") && err.contains("openai"), "{err}");

        let err = load(Some("[providers.ollama]\nkeep_alive = \"soon\""), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.ollama.keep_alive"), "{err}");

        let err = load(Some("[providers.ollama]\ntimeout = \"fast\""), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.ollama.timeout"), "{err}");

        let err = load(Some("[providers.gpu]\nbase_url = \"http://x\""), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.gpu.kind"), "{err}");
        let err = load(Some("[providers.ollama]\nbase_url = \"x\"\n[routing]\ndefault_provider = \"embedded\""), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("routing.default_provider"), "{err}");
    }

    /// The production `.env` of the first users: Gemini selected, Ollama's variables still there.
    #[test]
    fn gemini_by_environment_alone() {
        let env = [
            ("LLM_PROVIDER", "gemini"),
            ("GEMINI_API_KEY", "test-key"),
            ("GEMINI_MODEL", "gemini-2.0-flash-exp"),
            ("GEMINI_PROJECT_ID", "energy-prod"),
            ("GEMINI_TEMPERATURE", "0.3"),
            ("GEMINI_MAX_TOKENS", "1024"),
            ("OLLAMA_HOST", "http://localhost:11434"),
            ("OLLAMA_MODEL", "llama3.2:3b"),
        ];
        let config = load(None, &env).unwrap();
        assert_eq!(config.default_provider(), Some("gemini"));
        assert_eq!(config.routing.default_model.as_deref(), Some("gemini/gemini-2.0-flash-exp"));
        let gemini = &config.providers["gemini"];
        assert_eq!(gemini.kind(), ProviderKind::Gemini);
        assert_eq!(gemini.base_url, "https://generativelanguage.googleapis.com");
        assert_eq!(gemini.defaults.temperature, Some(0.3));
        assert_eq!(gemini.defaults.max_tokens, Some(1024));
        assert_eq!(vertex(gemini), (Some("energy-prod"), None));
        assert_eq!(config.providers["ollama"].default_model.as_deref(), Some("llama3.2:3b"));
        // Selecting it by name is enough to have it; the key is checked when providers are built.
        let config = load(None, &[("LLM_PROVIDER", "Gemini")]).unwrap();
        assert_eq!(config.default_provider(), Some("gemini"));
        assert_eq!(config.routing.default_model, None);
    }

    #[test]
    fn gemini_endpoint_and_vertex_variables() {
        let config = load(
            None,
            &[
                ("GEMINI_PROJECT_ID", "p1"),
                ("GOOGLE_CLOUD_PROJECT", "p2"),
                ("GOOGLE_CLOUD_LOCATION", "europe-west4"),
                ("GOOGLE_GEMINI_BASE_URL", "http://second:1"),
                ("GEMINI_BASE_URL", "http://first:1/"),
            ],
        )
        .unwrap();
        let gemini = &config.providers["gemini"];
        // GEMINI_PROJECT_ID wins over GOOGLE_CLOUD_PROJECT.
        assert_eq!(vertex(gemini), (Some("p1"), Some("europe-west4")));
        assert_eq!(gemini.base_url, "http://first:1", "GEMINI_BASE_URL wins over GOOGLE_GEMINI_BASE_URL");
        // GOOGLE_CLOUD_PROJECT alone (set on many Google Cloud machines) adds no provider.
        let config = load(None, &[("GOOGLE_CLOUD_PROJECT", "p2")]).unwrap();
        assert!(!config.providers.contains_key("gemini"));
        let err = load(Some("[providers.gemini]\nlocation = \"us-central1\""), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.gemini.location") && err.contains("project"), "{err}");
        let err = load(Some("[providers.ollama]\nproject_id = \"p\""), &[]).unwrap_err().to_string();
        assert!(err.contains("providers.ollama.project_id") && err.contains("kind \"gemini\" only"), "{err}");
    }

    #[test]
    fn openai_and_anthropic_by_environment_alone() {
        let config = load(
            None,
            &[
                ("LLM_PROVIDER", "openai"),
                ("OPENAI_BASE_URL", "http://vllm.internal:8000/v1"),
                ("OPENAI_MODEL", "Qwen/Qwen2.5-7B-Instruct"),
                ("OPENAI_MAX_TOKENS", "300"),
                ("ANTHROPIC_API_KEY", "test-key"),
                ("ANTHROPIC_MODEL", "claude-sonnet-4-5"),
                ("ANTHROPIC_BASE_URL", "http://proxy:9000"),
            ],
        )
        .unwrap();
        assert_eq!(config.default_provider(), Some("openai"));
        assert_eq!(config.routing.default_model.as_deref(), Some("openai/Qwen/Qwen2.5-7B-Instruct"));
        assert_eq!(config.providers["openai"].base_url, "http://vllm.internal:8000/v1");
        assert_eq!(config.providers["openai"].defaults.max_tokens, Some(300));
        assert_eq!(config.providers["anthropic"].base_url, "http://proxy:9000");
        assert_eq!(config.providers["anthropic"].default_model.as_deref(), Some("claude-sonnet-4-5"));

        let config = load(None, &[("LLM_PROVIDER", "anthropic"), ("ANTHROPIC_MODEL", "claude-haiku-4-5")]).unwrap();
        assert_eq!(config.routing.default_model.as_deref(), Some("anthropic/claude-haiku-4-5"));
        // A model name that looks like a number stays a string.
        let config = load(None, &[("OPENAI_API_KEY", "k"), ("OPENAI_MODEL", "4")]).unwrap();
        assert_eq!(config.providers["openai"].default_model.as_deref(), Some("4"));
    }

    #[test]
    fn a_file_names_providers_and_the_environment_tunes_them() {
        let toml = "[providers.gemini]\napi_key_env = \"MY_KEY\"\n";
        let config =
            load(Some(toml), &[("GEMINI_MODEL", "gemini-2.5-flash"), ("OPENAI_API_KEY", "k"), ("OLLAMA_HOST", "x")])
                .unwrap();
        assert_eq!(config.providers.keys().collect::<Vec<_>>(), ["gemini"]);
        assert_eq!(config.routing.default_model.as_deref(), Some("gemini/gemini-2.5-flash"));
    }

    /// The README's table of variables says what the code does, variable for variable.
    #[test]
    fn the_readme_lists_every_vendor_variable_with_its_key() {
        let readme = include_str!("../README.md");
        let rows: BTreeMap<&str, &str> = readme
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let var = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                let key = cells.next()?;
                var.chars().all(|c| c.is_ascii_uppercase() || c == '_').then_some((var, key))
            })
            .collect();
        for (var, key) in VENDOR_VARIABLES {
            let row = rows.get(var).unwrap_or_else(|| panic!("README's variable table has no row for {var}"));
            assert_eq!(*row, format!("`{key}`"), "README says {var} sets {row}, the code sets {key}");
        }
    }

    /// The keys of the README's configuration table, with `<name>` for a provider's name (and
    /// which provider kind a row is about), expanded from `a.b`, `.c` to `a.b`, `a.c`.
    fn readme_configuration_keys() -> Vec<(String, &'static str)> {
        let readme = include_str!("../README.md");
        let table = readme.split("| key | environment | default | meaning |").nth(1).expect("the table");
        let mut found = Vec::new();
        for row in table.lines().skip(2).take_while(|line| line.starts_with('|')) {
            let first = row.split('|').nth(1).unwrap_or_default();
            let keys: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
            let Some(full) = keys.first() else { continue };
            let kind = ["embedded", "openai", "gemini", "anthropic"]
                .into_iter()
                .find(|kind| first.contains(&format!("({kind})")))
                .unwrap_or("ollama");
            let parent = full.rsplit_once('.').map(|(parent, _)| parent).unwrap_or_default();
            for key in keys {
                let key = if key.starts_with('.') { format!("{parent}{key}") } else { key.to_string() };
                found.push((key, kind));
            }
        }
        assert!(found.len() > 50, "only {} keys found: has the table moved?", found.len());
        found
    }

    /// Every key in the README's configuration table is one the configuration knows: a file
    /// setting it is never refused as an unknown field.
    #[test]
    fn the_readme_configuration_table_names_real_keys() {
        for (key, kind) in readme_configuration_keys() {
            let key = key.replace("<name>", kind).replace("<alias>", "a");
            let toml = match key.split_once("[].") {
                Some((array, field)) => format!("{array} = [{{ {field} = \"x\" }}]\n"),
                None => format!("{key} = \"x\"\n"),
            };
            let error = load(Some(&toml), &[]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!error.contains("unknown field"), "README's `{key}` is not a configuration key: {error}");
        }
    }

    /// And every key the configuration has (those with a default value to show) is in the table.
    #[test]
    fn the_readme_configuration_table_lists_every_key() {
        use figment::value::Value;
        fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Dict(_, dict) if !dict.is_empty() => {
                    for (key, value) in dict {
                        // Provider instances are documented once, as `providers.<name>`.
                        let key = if prefix == "providers" { "<name>" } else { key.as_str() };
                        let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                        leaves(&path, value, out);
                    }
                }
                _ => out.push(prefix.to_string()),
            }
        }
        let config = load(None, &[]).unwrap();
        let value = Figment::from(Serialized::defaults(&config)).find_value("").expect("the configuration");
        let mut keys = Vec::new();
        leaves("", &value, &mut keys);
        let documented: Vec<String> = readme_configuration_keys().into_iter().map(|(key, _)| key).collect();
        let missing: Vec<String> = keys
            .into_iter()
            .filter(|key| {
                !documented
                    .iter()
                    .any(|d| d == key || d.starts_with(&format!("{key}.")) || d.starts_with(&format!("{key}[")))
            })
            .collect();
        assert!(missing.is_empty(), "not in the README's configuration table: {missing:?}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Config::load_from(Some(Path::new("/nonexistent/copilot.toml")), &Overrides::default(), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/copilot.toml"), "{err}");
    }
}
