//! Builds the configured provider instances, with their routing policy and credentials: a
//! mapping from the configuration's types to the adapters' and the router's.

use std::sync::Arc;

use copilot_ollama::{OllamaConfig, OllamaProvider};
use copilot_provider::{Provider, Secret};

#[cfg(feature = "embedded")]
use crate::config::OllamaStore;
use crate::config::{
    AnthropicSettings, ApiKeySource, Config, EmbeddedSettings, GeminiSettings, KeepAlive, KindSettings, MaxTokensField,
    OllamaSettings, OpenAiSettings, ProviderConfig, ProviderKind, ThinkingOff, TokenCounting,
};
use crate::router::{Instance, InstanceState, Labels};

/// The endpoint shown for the embedded engine, which has none.
pub const IN_PROCESS: &str = "in-process";

pub fn build(config: &Config) -> Result<Vec<Instance>, String> {
    let mut instances = Vec::new();
    for (name, provider_config) in &config.providers {
        let base_url = provider_config.base_url.clone();
        let (provider, endpoint): (Arc<dyn Provider>, String) = match &provider_config.settings {
            KindSettings::Ollama(settings) => (Arc::new(ollama(name, provider_config, settings)?), base_url),
            KindSettings::Embedded(settings) => embedded(name, settings)?,
            KindSettings::Anthropic(settings) => (Arc::new(anthropic(name, provider_config, settings)?), base_url),
            KindSettings::OpenAi(settings) => (Arc::new(openai(name, provider_config, settings)?), base_url),
            KindSettings::Gemini(settings) => {
                // On Vertex the host follows the location, unless base_url names one.
                let provider = gemini(name, provider_config, settings)?;
                let endpoint = provider.base_url().to_owned();
                (Arc::new(provider), endpoint)
            }
        };
        let (server_address, server_port) = match http::Uri::try_from(endpoint.as_str()) {
            Ok(uri) => (uri.host().map(String::from), uri.port_u16().or_else(|| default_port(&uri))),
            Err(_) => (None, None),
        };
        let policy = provider_config.policy.clone();
        instances.push(Instance {
            name: name.clone(),
            provider,
            endpoint,
            labels: Labels {
                gen_ai_provider: match provider_config.kind() {
                    ProviderKind::Ollama => "ollama",
                    ProviderKind::Embedded => "llama.cpp",
                    ProviderKind::OpenAi => "openai",
                    ProviderKind::Gemini => "gcp.gemini",
                    ProviderKind::Anthropic => "anthropic",
                },
                in_process: provider_config.kind() == ProviderKind::Embedded,
                server_address,
                server_port,
            },
            state: InstanceState::new(&policy),
            policy,
            defaults: provider_config.defaults.clone(),
        });
    }
    Ok(instances)
}

fn default_port(uri: &http::Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// The instance's API key: from the variable or file the config names, else from the kind's
/// usual variable (`OPENAI_API_KEY`, …) when it is set. The value is never logged; errors name the
/// variable or file, not the content.
fn api_key(name: &str, config: &ProviderConfig) -> Result<Option<Secret>, String> {
    match &config.api_key {
        ApiKeySource::Env(var) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(Secret::new(value.trim()))),
            _ => Err(format!("provider '{name}': providers.{name}.api_key_env names {var}, which is not set or empty")),
        },
        ApiKeySource::File(path) => {
            let value = std::fs::read_to_string(path).map_err(|e| {
                format!("provider '{name}': cannot read providers.{name}.api_key_file {}: {e}", path.display())
            })?;
            if value.trim().is_empty() {
                return Err(format!("provider '{name}': providers.{name}.api_key_file {} is empty", path.display()));
            }
            Ok(Some(Secret::new(value.trim())))
        }
        ApiKeySource::KindDefault => {
            let usual = config.kind().default_key_variable();
            Ok(usual
                .and_then(|var| std::env::var(var).ok())
                .filter(|v| !v.trim().is_empty())
                .map(|v| Secret::new(v.trim())))
        }
    }
}

/// Like [`api_key`], for APIs that cannot be called without one.
fn required_api_key(name: &str, config: &ProviderConfig) -> Result<Secret, String> {
    api_key(name, config)?.ok_or_else(|| {
        let usual = config.kind().default_key_variable().unwrap_or("an environment variable");
        format!(
            "provider '{name}' needs an API key: set {usual}, or providers.{name}.api_key_env / providers.{name}.api_key_file"
        )
    })
}

fn anthropic(
    name: &str,
    config: &ProviderConfig,
    settings: &AnthropicSettings,
) -> Result<copilot_anthropic::AnthropicProvider, String> {
    let mut adapter = copilot_anthropic::AnthropicConfig {
        base_url: config.base_url.clone(),
        api_key: Some(required_api_key(name, config)?),
        connect_timeout: config.policy.connect_timeout,
        ..Default::default()
    };
    if let Some(version) = &settings.version {
        adapter.version = version.clone();
    }
    if let Some(max) = settings.default_max_tokens {
        adapter.default_max_tokens = max;
    }
    copilot_anthropic::AnthropicProvider::new(adapter).map_err(|e| format!("provider '{name}': {e}"))
}

fn openai(
    name: &str,
    config: &ProviderConfig,
    settings: &OpenAiSettings,
) -> Result<copilot_openai::OpenAiProvider, String> {
    // Local OpenAI-compatible servers (vLLM, llama.cpp, LM Studio) usually need no key; OpenAI's
    // own API always does.
    let hosted = http::Uri::try_from(config.base_url.as_str()).is_ok_and(|uri| uri.host() == Some("api.openai.com"));
    let adapter = copilot_openai::OpenAiConfig {
        base_url: config.base_url.clone(),
        api_key: if hosted { Some(required_api_key(name, config)?) } else { api_key(name, config)? },
        organization: None,
        connect_timeout: config.policy.connect_timeout,
        max_tokens_field: match settings.max_tokens_field {
            MaxTokensField::MaxTokens => copilot_openai::MaxTokensField::MaxTokens,
            MaxTokensField::MaxCompletionTokens => copilot_openai::MaxTokensField::MaxCompletionTokens,
        },
        include_usage: settings.include_usage,
        send_top_k: settings.send_top_k,
    };
    let thinking_off = match settings.thinking_off {
        ThinkingOff::Unsupported => copilot_openai::ThinkingOff::Unsupported,
        ThinkingOff::ReasoningEffortNone => copilot_openai::ThinkingOff::ReasoningEffortNone,
        ThinkingOff::EnableThinkingFalse => copilot_openai::ThinkingOff::EnableThinkingFalse,
    };
    let provider = copilot_openai::OpenAiProvider::new(adapter).map_err(|e| format!("provider '{name}': {e}"))?;
    let provider = provider.with_thinking_off(thinking_off).with_image_urls(settings.image_urls);
    match settings.count_tokens {
        TokenCounting::None => Ok(provider),
        TokenCounting::Vllm => provider.with_vllm_tokenize().map_err(|e| format!("provider '{name}': {e}")),
        TokenCounting::LlamaCpp => provider.with_llama_cpp_tokenize().map_err(|e| format!("provider '{name}': {e}")),
    }
}

fn gemini(
    name: &str,
    config: &ProviderConfig,
    settings: &GeminiSettings,
) -> Result<copilot_gemini::GeminiProvider, String> {
    let safety_settings = settings
        .safety_settings
        .iter()
        .map(|s| copilot_gemini::SafetySetting { category: s.category.clone(), threshold: s.threshold.clone() })
        .collect();
    // An API key wins; else a project means Vertex AI with Application Default Credentials.
    let auth = match (api_key(name, config)?, &settings.project_id) {
        (Some(key), _) => copilot_gemini::GeminiAuth::ApiKey(key),
        (None, Some(project)) => copilot_gemini::GeminiAuth::Vertex(copilot_gemini::VertexConfig {
            project: project.clone(),
            location: settings.location.clone().unwrap_or_else(|| "global".to_owned()),
            credentials: copilot_gemini::GoogleCredentials::ApplicationDefault,
            models: config.default_model.iter().cloned().collect(),
        }),
        (None, None) => {
            return Err(format!(
                "provider '{name}' needs an API key or a Google Cloud project: set GEMINI_API_KEY (or providers.{name}.api_key_env / providers.{name}.api_key_file) for the Gemini API, or GEMINI_PROJECT_ID (providers.{name}.project_id) for Vertex AI with Application Default Credentials"
            ));
        }
    };
    let adapter = copilot_gemini::GeminiConfig {
        base_url: config.base_url.clone(),
        auth,
        connect_timeout: config.policy.connect_timeout,
        safety_settings,
    };
    let provider = copilot_gemini::GeminiProvider::new(adapter).map_err(|e| format!("provider '{name}': {e}"))?;
    if let Some(credentials) = provider.vertex_credentials() {
        tracing::info!(provider = %name, base_url = %provider.base_url(), %credentials, "Gemini on Vertex AI");
    }
    Ok(provider)
}

fn ollama(name: &str, config: &ProviderConfig, settings: &OllamaSettings) -> Result<OllamaProvider, String> {
    OllamaProvider::new(OllamaConfig {
        base_url: config.base_url.clone(),
        keep_alive: settings.keep_alive.map(|keep_alive| match keep_alive {
            KeepAlive::For(d) => copilot_ollama::KeepAlive::For(d),
            KeepAlive::Forever => copilot_ollama::KeepAlive::Forever,
        }),
        connect_timeout: config.policy.connect_timeout,
    })
    .map_err(|e| format!("provider '{name}': {e}"))
}

/// The chat engine's settings on a machine with `cores` cores: what is unset gets its default.
#[cfg(feature = "embedded")]
fn engine_settings(settings: &EmbeddedSettings, cores: usize) -> copilot_embedded::engine::EngineSettings {
    copilot_embedded::engine::EngineSettings {
        // Leave a core for the gRPC side: llama.cpp's threads wait for each other at every
        // operation, so a decode of one or a few tokens on every core stalls whenever the
        // gateway's own work takes one (a 6-stream test: 69 s against 5.8 s).
        threads: settings.threads.unwrap_or((cores - 1).max(1)),
        batch_threads: settings.batch_threads.or(settings.threads).unwrap_or((cores - 1).max(1)),
        // A prompt is hundreds of tokens per decode: each operation is long enough that a
        // preempted thread costs little, so prompts take every core (twice as fast on 2).
        prompt_threads: settings.prompt_threads.unwrap_or(cores),
        slots: settings.parallel,
        queue: settings.queue,
        context_per_slot: settings.context_length,
        batch_size: settings.batch_size,
    }
}

#[cfg(feature = "embedded")]
fn embedded(name: &str, settings: &EmbeddedSettings) -> Result<(Arc<dyn Provider>, String), String> {
    use copilot_embedded::embedder::EmbedderSettings;
    // Enough to fill a decode with short inputs; llama.cpp allows 256 sequences.
    const EMBEDDING_BATCH_INPUTS: usize = 64;
    use copilot_embedded::store::{ModelSources, default_ollama_store};
    use copilot_embedded::{EmbeddedConfig, EmbeddedProvider, download};

    let ollama_store = match &settings.ollama_store {
        OllamaStore::Auto => default_ollama_store(),
        OllamaStore::Off => None,
        OllamaStore::Dir(path) => Some(path.clone()),
    };
    let models_dir = settings.models_dir.clone().unwrap_or_else(download::default_models_dir);
    // Models fetched by `copilot models fetch` go by their catalog names.
    let mut files = settings.models.clone();
    for model in download::CATALOG {
        let path = models_dir.join(model.file_name);
        if path.exists() {
            files.entry(model.name.to_string()).or_insert(path);
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let config = EmbeddedConfig {
        sources: ModelSources { models_dir: Some(models_dir.clone()), files, ollama_store },
        engine: engine_settings(settings, cores),
        embedder: EmbedderSettings {
            threads: settings.batch_threads.or(settings.threads).unwrap_or((cores - 1).max(1)),
            batch_tokens: settings.embedding_batch_tokens,
            batch_inputs: EMBEDDING_BATCH_INPUTS,
            queue: settings.queue,
        },
        // Ollama's semantics: a keep_alive of -1 keeps models loaded.
        keep_alive: match settings.keep_alive {
            KeepAlive::For(d) => Some(d),
            KeepAlive::Forever => None,
        },
        truncate_prompt: settings.truncate_prompt,
    };
    let provider = Arc::new(EmbeddedProvider::new(config));
    let found = provider.model_names();
    tracing::info!(provider = %name, models_dir = %models_dir.display(), models = ?found, "embedded models found");
    for model in &settings.preload {
        let provider = provider.clone();
        let model = model.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Err(e) = provider.preload(&model).await {
                tracing::error!(provider = %name, model = %model, "cannot preload: {e}");
            }
        });
    }
    Ok((provider, IN_PROCESS.to_string()))
}

#[cfg(not(feature = "embedded"))]
fn embedded(name: &str, _: &EmbeddedSettings) -> Result<(Arc<dyn Provider>, String), String> {
    Err(format!("provider '{name}' is embedded, but this build has no embedded engine"))
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use super::*;

    #[test]
    fn steps_leave_a_core_to_the_gateway_and_prompts_take_every_core() {
        let defaults = engine_settings(&EmbeddedSettings::default(), 8);
        assert_eq!((defaults.threads, defaults.batch_threads, defaults.prompt_threads), (7, 7, 8));
        let one_core = engine_settings(&EmbeddedSettings::default(), 1);
        assert_eq!((one_core.threads, one_core.batch_threads, one_core.prompt_threads), (1, 1, 1));

        let set = EmbeddedSettings { threads: Some(2), prompt_threads: Some(3), ..EmbeddedSettings::default() };
        let chosen = engine_settings(&set, 8);
        assert_eq!((chosen.threads, chosen.batch_threads, chosen.prompt_threads), (2, 2, 3));
    }
}
