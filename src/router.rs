//! Routing: turns the model name a client sent into a provider instance and that provider's own
//! model name. `provider/model` goes to that provider; a name whose prefix is not a configured
//! provider (Ollama names such as `hf.co/org/model` contain slashes) goes whole to the default
//! provider; an empty name means the configured default model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use copilot_provider::Provider;
use tonic_types::FieldViolation;

use crate::config::DefaultOptions;
use crate::error::{GatewayError, Target};

/// One configured provider instance and the server-side policy around it.
pub struct ProviderEntry {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// Where it lives, for error messages and logs (never carries credentials).
    pub endpoint: String,
    /// The longest the upstream may stay silent (before answering, and between chunks).
    pub timeout: Duration,
    pub list_timeout: Duration,
    pub defaults: DefaultOptions,
}

/// Where one call goes.
#[derive(Clone)]
pub struct Route {
    pub entry: Arc<ProviderEntry>,
    /// The provider's own name for the model.
    pub model: String,
}

impl Route {
    pub fn target(&self) -> Box<Target> {
        Box::new(Target {
            provider: self.entry.name.clone(),
            model: self.model.clone(),
            endpoint: self.entry.endpoint.clone(),
        })
    }
}

pub struct Router {
    providers: BTreeMap<String, Arc<ProviderEntry>>,
    default_provider: String,
    default_model: Option<String>,
}

impl Router {
    /// `default_provider` must name one of `providers` (the config loader checks it).
    pub fn new(providers: Vec<ProviderEntry>, default_provider: String, default_model: Option<String>) -> Self {
        let providers = providers.into_iter().map(|p| (p.name.clone(), Arc::new(p))).collect();
        Self { providers, default_provider, default_model }
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderEntry>> {
        self.providers.values()
    }

    pub fn resolve(&self, requested: &str) -> Result<Route, GatewayError> {
        let name = match requested {
            "" => self.default_model.as_deref().ok_or(GatewayError::NoDefaultModel)?,
            name => name,
        };
        let (entry, model) = match name.split_once('/') {
            Some((prefix, model)) if self.providers.contains_key(prefix) => (&self.providers[prefix], model),
            _ => (self.default_entry(), name),
        };
        if model.is_empty() {
            return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                "model",
                format!("'{name}' names a provider but no model; use '{name}<model>' (see ListModels)"),
            )]));
        }
        Ok(Route { entry: entry.clone(), model: model.to_string() })
    }

    fn default_entry(&self) -> &Arc<ProviderEntry> {
        // The config loader guarantees the default provider exists.
        &self.providers[&self.default_provider]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_provider::*;

    struct Nothing;
    #[copilot_provider::async_trait]
    impl Provider for Nothing {
        async fn chat(&self, _: ChatRequest) -> Result<ChatStream, ProviderError> {
            Err(ProviderError::Unreachable("test".into()))
        }
        async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
            Ok(vec![])
        }
        async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
            Err(ProviderError::ModelNotFound { model: model.into() })
        }
        async fn health(&self) -> Result<HealthReport, ProviderError> {
            Ok(HealthReport::default())
        }
    }

    fn entry(name: &str) -> ProviderEntry {
        ProviderEntry {
            name: name.into(),
            provider: Arc::new(Nothing),
            endpoint: format!("http://{name}"),
            timeout: Duration::from_secs(1),
            list_timeout: Duration::from_secs(1),
            defaults: DefaultOptions::default(),
        }
    }

    fn router(default_model: Option<&str>) -> Router {
        Router::new(vec![entry("ollama"), entry("gpu")], "ollama".into(), default_model.map(String::from))
    }

    fn resolve(router: &Router, name: &str) -> (String, String) {
        let route = router.resolve(name).unwrap();
        (route.entry.name.clone(), route.model)
    }

    #[test]
    fn prefixes_pick_the_provider() {
        let r = router(None);
        assert_eq!(resolve(&r, "gpu/llama3.2:3b"), ("gpu".into(), "llama3.2:3b".into()));
        assert_eq!(resolve(&r, "ollama/llama3.2"), ("ollama".into(), "llama3.2".into()));
    }

    #[test]
    fn bare_and_namespaced_names_go_to_the_default_provider() {
        let r = router(None);
        assert_eq!(resolve(&r, "llama3.2"), ("ollama".into(), "llama3.2".into()));
        assert_eq!(resolve(&r, "hf.co/org/model:Q4"), ("ollama".into(), "hf.co/org/model:Q4".into()));
    }

    #[test]
    fn empty_name_uses_the_default_model() {
        assert_eq!(resolve(&router(Some("gpu/qwen")), ""), ("gpu".into(), "qwen".into()));
        assert!(matches!(router(None).resolve(""), Err(GatewayError::NoDefaultModel)));
    }

    #[test]
    fn a_provider_without_a_model_is_invalid() {
        assert!(matches!(router(None).resolve("gpu/"), Err(GatewayError::InvalidArgument(_))));
    }
}
