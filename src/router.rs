//! Routing: turns the model name a client sent into a plan — an ordered list of tiers, each a set
//! of (instance, model) targets serving the same model. A plain `provider/model` is one tier of
//! one target; an alias lists several tiers (fallback order), and a tier may hold replicas among
//! which load is spread. A name whose prefix is not a configured provider (Ollama names such as
//! `hf.co/org/model` contain slashes) goes whole to the default provider; an empty name means the
//! configured default model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use copilot_provider::Provider;
use tonic_types::FieldViolation;

use crate::config::{AliasTarget, DefaultOptions, ProviderPolicy};
use crate::error::{GatewayError, TargetName};
use crate::resilience::{Breaker, ConcurrencyLimit};

/// One configured provider instance and the server-side policy and state around it.
pub struct Instance {
    /// The name clients use as the `provider/` prefix.
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// Where it lives, for error messages and logs (never carries credentials).
    pub endpoint: String,
    pub labels: Labels,
    /// Timeouts, retries, breaker and limit settings, as configured.
    pub policy: ProviderPolicy,
    /// Options applied when a request leaves them unset.
    pub defaults: DefaultOptions,
    pub state: InstanceState,
}

/// What its spans and metrics say about an instance (the OpenTelemetry GenAI conventions).
#[derive(Debug, Clone)]
pub struct Labels {
    /// `gen_ai.provider.name` (`ollama`, `openai`, `gcp.gemini`, …).
    pub gen_ai_provider: &'static str,
    /// Runs inside this process (the embedded engine): INTERNAL spans and `gen_ai.server.*` metrics.
    pub in_process: bool,
    /// `server.address` / `server.port`, from the endpoint.
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
}

/// What changes while the server runs.
pub struct InstanceState {
    pub breaker: Breaker,
    /// Its concurrency limit and queue, when `max_concurrency` is set.
    pub limit: Option<ConcurrencyLimit>,
    /// Calls in flight here, for balancing among replicas.
    pub outstanding: AtomicUsize,
    /// What the last background probe said (optimistic until the first one).
    pub healthy: AtomicBool,
}

impl InstanceState {
    /// A closed breaker and an idle limit, built from `policy`.
    pub fn new(policy: &ProviderPolicy) -> Self {
        Self {
            breaker: Breaker::new(policy.breaker_failures, policy.breaker_cooldown),
            limit: policy.max_concurrency.map(|max| ConcurrencyLimit::new(max, policy.max_queue, policy.queue_timeout)),
            outstanding: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

impl Instance {
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Whether a call could be sent here now (healthy and not refused by its breaker).
    pub fn available(&self) -> bool {
        self.is_healthy() && !self.state.breaker.is_open()
    }
}

/// One place a call can go.
#[derive(Clone)]
pub struct Target {
    pub instance: Arc<Instance>,
    /// The provider's own name for the model.
    pub model: String,
}

impl Target {
    pub fn name(&self) -> Box<TargetName> {
        Box::new(TargetName {
            provider: self.instance.name.clone(),
            model: self.model.clone(),
            endpoint: self.instance.endpoint.clone(),
        })
    }
}

/// Where a call may go, in order.
pub struct Plan {
    /// The alias the client named, if it named one.
    pub alias: Option<String>,
    pub tiers: Vec<Vec<Target>>,
}

impl Plan {
    /// The name per-key allow-lists match: the alias the client named, else `provider/model` as
    /// routing resolved it (so a bare `llama3.2` is checked as `ollama/llama3.2`).
    pub fn allow_list_name(&self) -> String {
        match (&self.alias, self.tiers.first().and_then(|tier| tier.first())) {
            (Some(alias), _) => alias.clone(),
            (None, Some(target)) => format!("{}/{}", target.instance.name, target.model),
            (None, None) => String::new(),
        }
    }

    /// The most completion tokens a call that sets no `max_tokens` may be given by configuration:
    /// the largest `defaults.max_tokens` among the instances it may go to (`None` when one of them
    /// has none).
    pub fn default_max_tokens(&self) -> Option<u32> {
        let mut targets = self.tiers.iter().flatten().map(|target| target.instance.defaults.max_tokens);
        targets.try_fold(0, |most, max_tokens| max_tokens.map(|n| most.max(n))).filter(|&n| n > 0)
    }

    /// The targets in the order to try them: tier by tier; within a tier, available replicas with
    /// the fewest calls in flight first (ties keep the configured order).
    pub fn attempt_order(&self) -> Vec<Target> {
        let mut order = Vec::new();
        for tier in &self.tiers {
            let mut replicas: Vec<_> = tier.iter().enumerate().collect();
            replicas.sort_by_key(|(i, t)| {
                (!t.instance.available(), t.instance.state.outstanding.load(Ordering::Relaxed), *i)
            });
            order.extend(replicas.into_iter().map(|(_, t)| t.clone()));
        }
        order
    }
}

pub struct Router {
    instances: BTreeMap<String, Arc<Instance>>,
    default_provider: Option<String>,
    default_model: Option<String>,
    default_embedding_model: Option<String>,
    aliases: BTreeMap<String, Vec<AliasTarget>>,
}

impl Router {
    /// `default_provider` and every alias target name configured instances (the config loader
    /// checks it).
    pub fn new(
        instances: Vec<Instance>,
        default_provider: Option<String>,
        default_model: Option<String>,
        aliases: BTreeMap<String, Vec<AliasTarget>>,
    ) -> Self {
        let instances = instances.into_iter().map(|p| (p.name.clone(), Arc::new(p))).collect();
        Self { instances, default_provider, default_model, default_embedding_model: None, aliases }
    }

    /// The model an `Embed` call that names none goes to.
    pub fn with_default_embedding_model(mut self, model: Option<String>) -> Self {
        self.default_embedding_model = model.filter(|m| !m.trim().is_empty());
        self
    }

    /// Where an `Embed` call goes: as [`resolve`](Self::resolve), but an empty name means the
    /// default embedding model.
    pub fn resolve_embedding(&self, requested: &str) -> Result<Plan, GatewayError> {
        match requested {
            "" => self.resolve(self.default_embedding_model.as_deref().ok_or(GatewayError::NoDefaultEmbeddingModel)?),
            name => self.resolve(name),
        }
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    pub fn aliases(&self) -> &BTreeMap<String, Vec<AliasTarget>> {
        &self.aliases
    }

    pub fn resolve(&self, requested: &str) -> Result<Plan, GatewayError> {
        let name = match requested {
            "" => self.default_model.as_deref().ok_or(GatewayError::NoDefaultModel)?,
            name => name,
        };
        if let Some(targets) = self.aliases.get(name) {
            let tiers = targets
                .iter()
                .map(|tier| tier.models().into_iter().map(|model| self.target(model)).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Plan { alias: Some(name.to_string()), tiers });
        }
        Ok(Plan { alias: None, tiers: vec![vec![self.target(name)?]] })
    }

    fn target(&self, name: &str) -> Result<Target, GatewayError> {
        let (instance, model) = match name.split_once('/') {
            Some((prefix, model)) if self.instances.contains_key(prefix) => (&self.instances[prefix], model),
            _ => match self.default_provider.as_ref().and_then(|p| self.instances.get(p)) {
                Some(instance) => (instance, name),
                None => {
                    let known: Vec<_> = self.instances.keys().map(String::as_str).collect();
                    return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                        "model",
                        format!(
                            "'{name}' names no configured provider and this server has no default provider: use \
                             `provider/model` with one of: {} (or an alias; see ListModels)",
                            known.join(", ")
                        ),
                    )]));
                }
            },
        };
        if model.is_empty() {
            return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                "model",
                format!("'{name}' names a provider but no model; use '{name}<model>' (see ListModels)"),
            )]));
        }
        Ok(Target { instance: instance.clone(), model: model.to_string() })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use copilot_provider::*;

    /// A provider that answers nothing useful: for tests that never call it (or only expect a refusal).
    pub(crate) struct Nothing;
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

    /// The policy of the tests' instances: no retries, no breaker, no limit, one-second timeouts.
    pub(crate) fn test_policy() -> ProviderPolicy {
        ProviderPolicy {
            first_token_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            list_timeout: Duration::from_secs(1),
            retries: 0,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(1),
            breaker_failures: 0,
            breaker_cooldown: Duration::from_secs(1),
            max_concurrency: None,
            health_interval: Duration::from_secs(60),
            ..ProviderPolicy::default()
        }
    }

    pub(crate) fn instance(name: &str) -> Instance {
        let policy = test_policy();
        Instance {
            name: name.into(),
            provider: Arc::new(Nothing),
            endpoint: format!("http://{name}"),
            labels: Labels { gen_ai_provider: "test", in_process: false, server_address: None, server_port: None },
            state: InstanceState::new(&policy),
            policy,
            defaults: DefaultOptions::default(),
        }
    }

    fn router(default_model: Option<&str>) -> Router {
        let aliases = BTreeMap::from([(
            "fast".to_string(),
            vec![
                AliasTarget::Replicas { replicas: vec!["a/m".into(), "b/m".into()] },
                AliasTarget::Model("ollama/backup".into()),
            ],
        )]);
        Router::new(
            vec![instance("ollama"), instance("gpu"), instance("a"), instance("b")],
            Some("ollama".into()),
            default_model.map(String::from),
            aliases,
        )
    }

    fn resolve(router: &Router, name: &str) -> (String, String) {
        let plan = router.resolve(name).unwrap();
        let target = &plan.tiers[0][0];
        (target.instance.name.clone(), target.model.clone())
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
        assert_eq!(router(Some("fast")).resolve("").unwrap().alias.as_deref(), Some("fast"));
    }

    #[test]
    fn without_a_default_provider_bare_names_are_refused() {
        let r = Router::new(vec![instance("a"), instance("b")], None, None, BTreeMap::new());
        assert!(matches!(r.resolve("llama"), Err(GatewayError::InvalidArgument(_))));
        assert_eq!(resolve(&r, "b/llama"), ("b".into(), "llama".into()));
    }

    #[test]
    fn allow_lists_see_aliases_and_resolved_provider_model_names() {
        let r = router(Some("fast"));
        let name = |requested: &str| r.resolve(requested).unwrap().allow_list_name();
        assert_eq!(name("fast"), "fast");
        assert_eq!(name(""), "fast");
        assert_eq!(name("llama3.2"), "ollama/llama3.2");
        assert_eq!(name("gpu/qwen"), "gpu/qwen");
    }

    #[test]
    fn the_default_max_tokens_is_the_largest_of_the_instances_a_call_may_go_to() {
        let with_default = |name: &str, max_tokens: Option<u32>| {
            let mut instance = instance(name);
            instance.defaults.max_tokens = max_tokens;
            instance
        };
        let aliases = BTreeMap::from([
            ("both".to_string(), vec![AliasTarget::Model("a/m".into()), AliasTarget::Model("b/m".into())]),
            ("open".to_string(), vec![AliasTarget::Model("a/m".into()), AliasTarget::Model("c/m".into())]),
        ]);
        let instances = vec![with_default("a", Some(100)), with_default("b", Some(300)), with_default("c", None)];
        let r = Router::new(instances, Some("a".into()), None, aliases);
        let most = |requested: &str| r.resolve(requested).unwrap().default_max_tokens();
        assert_eq!(most("m"), Some(100));
        assert_eq!(most("both"), Some(300));
        assert_eq!(most("c/m"), None);
        assert_eq!(most("open"), None, "one target may answer without a limit");
        assert_eq!(most("nowhere/m"), Some(100), "an unknown prefix is a model of the default");
    }

    #[test]
    fn a_provider_without_a_model_is_invalid() {
        assert!(matches!(router(None).resolve("gpu/"), Err(GatewayError::InvalidArgument(_))));
    }

    #[test]
    fn aliases_expand_to_tiers_and_replicas_are_ordered_by_load_and_health() {
        let r = router(None);
        let plan = r.resolve("fast").unwrap();
        let names = |plan: &Plan| plan.attempt_order().iter().map(|t| t.instance.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan), ["a", "b", "ollama"]);
        plan.tiers[0][0].instance.state.outstanding.store(3, Ordering::Relaxed);
        assert_eq!(names(&plan), ["b", "a", "ollama"], "the least busy replica first");
        plan.tiers[0][1].instance.state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(names(&plan), ["a", "b", "ollama"], "an unhealthy replica last");
    }
}
