//! Builds the configured provider instances.

use std::sync::Arc;

use copilot_ollama::{KeepAlive, OllamaConfig, OllamaProvider};

use crate::config::{Config, ProviderKind, parse_keep_alive};
use crate::router::ProviderEntry;

pub fn build(config: &Config) -> Result<Vec<ProviderEntry>, String> {
    let mut entries = Vec::new();
    for (name, settings) in &config.providers {
        let provider = match settings.kind {
            Some(ProviderKind::Ollama) | None => {
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
                .map_err(|e| format!("provider '{name}': {e}"))?
            }
        };
        entries.push(ProviderEntry {
            name: name.clone(),
            provider: Arc::new(provider),
            endpoint: settings.base_url.clone(),
            timeout: settings.timeout,
            list_timeout: settings.list_timeout,
            defaults: settings.defaults.clone(),
        });
    }
    Ok(entries)
}
