//! Builds the configured provider instances.

use std::sync::Arc;

use copilot_ollama::{KeepAlive, OllamaConfig, OllamaProvider};
use copilot_provider::Provider;

use crate::config::{Config, ProviderConfig, ProviderKind, parse_keep_alive};
use crate::router::ProviderEntry;

pub fn build(config: &Config) -> Result<Vec<ProviderEntry>, String> {
    let mut entries = Vec::new();
    for (name, settings) in &config.providers {
        let (provider, endpoint): (Arc<dyn Provider>, String) = match settings.kind {
            Some(ProviderKind::Ollama) | None => (Arc::new(ollama(name, settings)?), settings.base_url.clone()),
            Some(ProviderKind::Embedded) => embedded(name, settings)?,
        };
        entries.push(ProviderEntry {
            name: name.clone(),
            provider,
            endpoint,
            timeout: settings.timeout,
            list_timeout: settings.list_timeout,
            defaults: settings.defaults.clone(),
        });
    }
    Ok(entries)
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
