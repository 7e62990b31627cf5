//! Builds the configured provider instances, with their routing policy and credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use copilot_ollama::{KeepAlive, OllamaConfig, OllamaProvider};
use copilot_provider::{Provider, Secret};

use crate::config::{Config, ProviderConfig, ProviderKind, parse_keep_alive};
use crate::resilience::{Breaker, ConcurrencyLimit};
use crate::router::Instance;

pub fn build(config: &Config) -> Result<Vec<Instance>, String> {
    let mut instances = Vec::new();
    for (name, settings) in &config.providers {
        let (provider, endpoint): (Arc<dyn Provider>, String) = match settings.kind {
            Some(ProviderKind::Ollama) | None => (Arc::new(ollama(name, settings)?), settings.base_url.clone()),
            Some(ProviderKind::Embedded) => embedded(name, settings)?,
            Some(ProviderKind::Anthropic) => (Arc::new(anthropic(name, settings)?), settings.base_url.clone()),
            Some(ProviderKind::OpenAi) => (Arc::new(openai(name, settings)?), settings.base_url.clone()),
            Some(ProviderKind::Gemini) => {
                // On Vertex the host follows the location, unless base_url names one.
                let provider = gemini(name, settings)?;
                let endpoint = provider.base_url().to_owned();
                (Arc::new(provider), endpoint)
            }
        };
        let (server_address, server_port) = match http::Uri::try_from(endpoint.as_str()) {
            Ok(uri) => (uri.host().map(String::from), uri.port_u16().or_else(|| default_port(&uri))),
            Err(_) => (None, None),
        };
        instances.push(Instance {
            name: name.clone(),
            provider,
            endpoint,
            gen_ai_provider: match settings.kind {
                Some(ProviderKind::Ollama) | None => "ollama",
                Some(ProviderKind::Embedded) => "llama.cpp",
                Some(ProviderKind::OpenAi) => "openai",
                Some(ProviderKind::Gemini) => "gcp.gemini",
                Some(ProviderKind::Anthropic) => "anthropic",
            },
            in_process: settings.kind == Some(ProviderKind::Embedded),
            server_address,
            server_port,
            first_token_timeout: settings.first_token_timeout.unwrap_or(settings.timeout),
            idle_timeout: settings.idle_timeout.unwrap_or(settings.timeout),
            list_timeout: settings.list_timeout,
            defaults: settings.defaults.clone(),
            retries: settings.retries,
            retry_backoff: settings.retry_backoff,
            retry_backoff_max: settings.retry_backoff_max,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            limit: settings
                .max_concurrency
                .map(|max| ConcurrencyLimit::new(max, settings.max_queue, settings.queue_timeout)),
            health_interval: settings.health_interval,
            outstanding: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
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
fn api_key(name: &str, settings: &ProviderConfig) -> Result<Option<Secret>, String> {
    if let Some(var) = &settings.api_key_env {
        return match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(Secret::new(value.trim()))),
            _ => Err(format!("provider '{name}': providers.{name}.api_key_env names {var}, which is not set or empty")),
        };
    }
    if let Some(path) = &settings.api_key_file {
        let value = std::fs::read_to_string(path).map_err(|e| {
            format!("provider '{name}': cannot read providers.{name}.api_key_file {}: {e}", path.display())
        })?;
        if value.trim().is_empty() {
            return Err(format!("provider '{name}': providers.{name}.api_key_file {} is empty", path.display()));
        }
        return Ok(Some(Secret::new(value.trim())));
    }
    let usual = settings.kind.and_then(ProviderKind::default_key_variable);
    Ok(usual.and_then(|var| std::env::var(var).ok()).filter(|v| !v.trim().is_empty()).map(|v| Secret::new(v.trim())))
}

/// Like [`api_key`], for APIs that cannot be called without one.
fn required_api_key(name: &str, settings: &ProviderConfig) -> Result<Secret, String> {
    api_key(name, settings)?.ok_or_else(|| {
        let usual = settings.kind.and_then(ProviderKind::default_key_variable).unwrap_or("an environment variable");
        format!(
            "provider '{name}' needs an API key: set {usual}, or providers.{name}.api_key_env / providers.{name}.api_key_file"
        )
    })
}

fn anthropic(name: &str, settings: &ProviderConfig) -> Result<copilot_anthropic::AnthropicProvider, String> {
    let mut config = copilot_anthropic::AnthropicConfig {
        base_url: settings.base_url.clone(),
        api_key: Some(required_api_key(name, settings)?),
        connect_timeout: settings.connect_timeout,
        ..Default::default()
    };
    if let Some(version) = &settings.anthropic_version {
        config.version = version.clone();
    }
    if let Some(max) = settings.default_max_tokens {
        config.default_max_tokens = max;
    }
    copilot_anthropic::AnthropicProvider::new(config).map_err(|e| format!("provider '{name}': {e}"))
}

fn openai(name: &str, settings: &ProviderConfig) -> Result<copilot_openai::OpenAiProvider, String> {
    let max_tokens_field = match settings.max_tokens_field.as_deref() {
        Some("max_completion_tokens") => copilot_openai::MaxTokensField::MaxCompletionTokens,
        _ => copilot_openai::MaxTokensField::MaxTokens,
    };
    // Local OpenAI-compatible servers (vLLM, llama.cpp, LM Studio) usually need no key; OpenAI's
    // own API always does.
    let hosted = http::Uri::try_from(settings.base_url.as_str()).is_ok_and(|uri| uri.host() == Some("api.openai.com"));
    let config = copilot_openai::OpenAiConfig {
        base_url: settings.base_url.clone(),
        api_key: if hosted { Some(required_api_key(name, settings)?) } else { api_key(name, settings)? },
        organization: None,
        connect_timeout: settings.connect_timeout,
        max_tokens_field,
        include_usage: settings.include_usage,
        send_top_k: settings.send_top_k,
    };
    copilot_openai::OpenAiProvider::new(config).map_err(|e| format!("provider '{name}': {e}"))
}

fn gemini(name: &str, settings: &ProviderConfig) -> Result<copilot_gemini::GeminiProvider, String> {
    let mut safety_settings = Vec::new();
    for (i, setting) in settings.safety_settings.iter().enumerate() {
        match (setting.get("category"), setting.get("threshold")) {
            (Some(category), Some(threshold)) => safety_settings
                .push(copilot_gemini::SafetySetting { category: category.clone(), threshold: threshold.clone() }),
            _ => {
                return Err(format!(
                    "provider '{name}': providers.{name}.safety_settings[{i}] needs a category and a threshold"
                ));
            }
        }
    }
    // An API key wins; else a project means Vertex AI with Application Default Credentials.
    let auth = match (api_key(name, settings)?, &settings.project_id) {
        (Some(key), _) => copilot_gemini::GeminiAuth::ApiKey(key),
        (None, Some(project)) => copilot_gemini::GeminiAuth::Vertex(copilot_gemini::VertexConfig {
            project: project.clone(),
            location: settings.location.clone().unwrap_or_else(|| "global".to_owned()),
            credentials: copilot_gemini::GoogleCredentials::ApplicationDefault,
            models: settings.default_model.iter().cloned().collect(),
        }),
        (None, None) => {
            return Err(format!(
                "provider '{name}' needs an API key or a Google Cloud project: set GEMINI_API_KEY (or providers.{name}.api_key_env / providers.{name}.api_key_file) for the Gemini API, or GEMINI_PROJECT_ID (providers.{name}.project_id) for Vertex AI with Application Default Credentials"
            ));
        }
    };
    let config = copilot_gemini::GeminiConfig {
        base_url: settings.base_url.clone(),
        auth,
        connect_timeout: settings.connect_timeout,
        safety_settings,
    };
    let provider = copilot_gemini::GeminiProvider::new(config).map_err(|e| format!("provider '{name}': {e}"))?;
    if let Some(credentials) = provider.vertex_credentials() {
        tracing::info!(provider = %name, base_url = %provider.base_url(), %credentials, "Gemini on Vertex AI");
    }
    Ok(provider)
}

fn ollama(name: &str, settings: &ProviderConfig) -> Result<OllamaProvider, String> {
    let keep_alive = match &settings.keep_alive {
        Some(text) => Some(match parse_keep_alive(text)? {
            Some(d) => KeepAlive::For(d),
            None => KeepAlive::Forever,
        }),
        None => None,
    };
    OllamaProvider::new(OllamaConfig {
        base_url: settings.base_url.clone(),
        keep_alive,
        connect_timeout: settings.connect_timeout,
    })
    .map_err(|e| format!("provider '{name}': {e}"))
}

#[cfg(feature = "embedded")]
fn embedded(name: &str, settings: &ProviderConfig) -> Result<(Arc<dyn Provider>, String), String> {
    use std::time::Duration;

    use copilot_embedded::engine::EngineSettings;
    use copilot_embedded::store::{ModelSources, default_ollama_store};
    use copilot_embedded::{EmbeddedConfig, EmbeddedProvider, download};

    // Ollama's semantics: a keep_alive of -1 keeps models loaded; unset means five minutes.
    let keep_alive = match &settings.keep_alive {
        Some(text) => parse_keep_alive(text)?,
        None => Some(Duration::from_secs(300)),
    };
    let ollama_store = match settings.ollama_store.trim() {
        "auto" => default_ollama_store(),
        "off" => None,
        path => Some(path.into()),
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
        engine: EngineSettings {
            // Leave a core for the gRPC side: llama.cpp's throughput collapses when its threads
            // compete with other busy threads for the same cores.
            threads: settings.threads.unwrap_or((cores - 1).max(1)),
            slots: settings.parallel,
            queue: settings.queue,
            context_per_slot: settings.context_length,
            batch_size: settings.batch_size,
        },
        keep_alive,
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
    Ok((provider, "in-process".to_string()))
}

#[cfg(not(feature = "embedded"))]
fn embedded(name: &str, _: &ProviderConfig) -> Result<(Arc<dyn Provider>, String), String> {
    Err(format!("provider '{name}' is embedded, but this build has no embedded engine"))
}
