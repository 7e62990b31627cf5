//! API keys: who a call comes from (`authorization: Bearer <key>`), which models that key may
//! use, and its request and token budgets. The layer in `auth/layer.rs` identifies the caller and
//! admits or refuses the call; the handlers check the model once it is known and charge the
//! tokens a completion used.

mod bucket;
mod key_hash;
mod layer;

use std::sync::Arc;
use std::time::Instant;

use copilot_provider::Usage;

pub use bucket::Bucket;
pub use key_hash::{KeyHash, new_key};
pub use layer::AuthLayer;

use crate::config::{ApiKeyConfig, AuthConfig};
use crate::error::{AuthFailure, GatewayError, KeyLimit};
use crate::router::Router;

/// The configured keys, and which services need none.
pub struct Auth {
    keys: Vec<Arc<ApiKey>>,
    open_health: bool,
    open_reflection: bool,
}

impl Auth {
    /// `None` when authentication is off (the configuration was checked when loaded).
    pub fn from_config(config: &AuthConfig) -> Option<Arc<Auth>> {
        if !config.enabled {
            return None;
        }
        let now = Instant::now();
        let keys = config.keys.iter().filter_map(|key| ApiKey::from_config(key, now)).map(Arc::new).collect();
        Some(Arc::new(Auth { keys, open_health: config.open_health, open_reflection: config.open_reflection }))
    }

    /// The key the `authorization` metadata carries.
    fn identify(&self, authorization: Option<&http::HeaderValue>) -> Result<&Arc<ApiKey>, GatewayError> {
        let value = authorization.ok_or(GatewayError::Unauthenticated(AuthFailure::Missing))?;
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or(GatewayError::Unauthenticated(AuthFailure::Malformed))?;
        let presented = KeyHash::of(presented);
        // Every key is compared, so the time taken does not depend on which one matched.
        let mut found = None;
        for key in &self.keys {
            if key.hash.matches(&presented) {
                found = Some(key);
            }
        }
        found.ok_or(GatewayError::Unauthenticated(AuthFailure::Unknown))
    }
}

/// One accepted key: its name, what it may use, and its budgets.
pub struct ApiKey {
    pub name: String,
    hash: KeyHash,
    /// `None`: every model.
    models: Option<Vec<ModelPattern>>,
    requests: Option<(u32, Bucket)>,
    tokens: Option<(u64, Bucket)>,
}

impl ApiKey {
    fn from_config(config: &ApiKeyConfig, now: Instant) -> Option<ApiKey> {
        Some(ApiKey {
            name: config.name.clone(),
            hash: KeyHash::parse(&config.hash).ok()?,
            models: config.models.as_ref().map(|models| models.iter().map(|m| ModelPattern::new(m)).collect()),
            requests: config.requests_per_minute.map(|n| (n, Bucket::per_minute(u64::from(n), now))),
            tokens: config.tokens_per_minute.map(|n| (n, Bucket::per_minute(n, now))),
        })
    }

    /// Whether this key may use `model`, in the form [`Router::allow_list_name`] gives.
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(model)))
    }

    /// Admits one call: refused while the token budget is spent (completions only) or when the
    /// request budget is.
    fn admit(&self, uses_tokens: bool, now: Instant) -> Result<(), GatewayError> {
        if uses_tokens && let Some((per_minute, bucket)) = &self.tokens {
            bucket.ensure_available(now).map_err(|retry_after| GatewayError::KeyLimited {
                key: self.name.clone(),
                limit: KeyLimit::TokensPerMinute(*per_minute),
                retry_after,
            })?;
        }
        if let Some((per_minute, bucket)) = &self.requests {
            bucket.take(1.0, now).map_err(|retry_after| GatewayError::KeyLimited {
                key: self.name.clone(),
                limit: KeyLimit::RequestsPerMinute(*per_minute),
                retry_after,
            })?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).finish_non_exhaustive()
    }
}

const LATEST: &str = ":latest";

/// An allow-list entry: an exact name, or a prefix ending in `*` (`ollama/*`, `*`).
enum ModelPattern {
    Exact(String),
    Prefix(String),
}

impl ModelPattern {
    fn new(pattern: &str) -> ModelPattern {
        let pattern = pattern.trim();
        match pattern.strip_suffix('*') {
            Some(prefix) => ModelPattern::Prefix(prefix.to_string()),
            None => ModelPattern::Exact(pattern.to_string()),
        }
    }

    fn matches(&self, model: &str) -> bool {
        match self {
            // Ollama's untagged names mean `:latest`; either spelling matches the other.
            ModelPattern::Exact(name) => {
                name == model
                    || model.strip_suffix(LATEST) == Some(name.as_str())
                    || name.strip_suffix(LATEST) == Some(model)
            }
            ModelPattern::Prefix(prefix) => model.starts_with(prefix.as_str()),
        }
    }
}

/// The caller of a Copilot API call, as the auth layer identified it (absent when auth is off).
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<ApiKey>);

impl Caller {
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Caller> {
        request.extensions().get::<Caller>().cloned()
    }

    /// Refuses a model this key may not use: the name the client sent is resolved first, so
    /// that the allow-list speaks of aliases and `provider/model` names whatever the client typed.
    pub fn check_model(&self, router: &Router, requested: &str) -> Result<(), GatewayError> {
        if self.0.models.is_none() {
            return Ok(());
        }
        let model = router.allow_list_name(requested)?;
        if self.0.allows(&model) {
            Ok(())
        } else {
            Err(GatewayError::ModelNotAllowed { key: self.0.name.clone(), model })
        }
    }

    /// Charges what a completion used against the key's token budget.
    pub fn charge(&self, usage: &Usage) {
        if let Some((_, bucket)) = &self.0.tokens {
            let used = u64::from(usage.input_tokens) + u64::from(usage.output_tokens);
            bucket.charge(used as f64, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(models: Option<&[&str]>) -> ApiKey {
        ApiKey::from_config(
            &ApiKeyConfig {
                name: "team".into(),
                hash: KeyHash::of("k").to_string(),
                models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
                requests_per_minute: Some(1),
                tokens_per_minute: Some(10),
            },
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn allow_lists_match_exact_names_and_prefixes() {
        let k = key(Some(&["ollama/*", "fast", "openai/gpt-4o"]));
        assert!(k.allows("ollama/llama3.2") && k.allows("fast") && k.allows("openai/gpt-4o"));
        assert!(!k.allows("openai/gpt-4o-mini") && !k.allows("faster") && !k.allows("gemini/x"));
        assert!(k.allows("fast:latest") && !k.allows("fast:7b"));
        assert!(key(Some(&["ollama/m:latest"])).allows("ollama/m"));
        assert!(key(None).allows("anything/at-all"));
        assert!(key(Some(&["*"])).allows("anything/at-all"));
        assert!(!key(Some(&[])).allows("ollama/x"));
    }

    #[test]
    fn admission_spends_the_request_budget() {
        let k = key(None);
        let now = Instant::now();
        assert!(k.admit(true, now).is_ok());
        let err = k.admit(true, now).unwrap_err();
        assert!(matches!(err, GatewayError::KeyLimited { limit: KeyLimit::RequestsPerMinute(1), .. }), "{err:?}");
    }

    #[test]
    fn a_spent_token_budget_refuses_completions_but_not_listings() {
        let k = Arc::new(key(None));
        let now = Instant::now();
        Caller(k.clone()).charge(&Usage { input_tokens: 15, output_tokens: 10 });
        let err = k.admit(true, now).unwrap_err();
        assert!(matches!(err, GatewayError::KeyLimited { limit: KeyLimit::TokensPerMinute(10), .. }), "{err:?}");
        assert!(k.admit(false, now).is_ok());
    }

    #[test]
    fn identifies_keys_by_bearer_token_only() {
        let config = AuthConfig {
            enabled: true,
            keys: vec![ApiKeyConfig {
                name: "team".into(),
                hash: KeyHash::of("cpk_good").to_string(),
                models: None,
                requests_per_minute: None,
                tokens_per_minute: None,
            }],
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&config).unwrap();
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(auth.identify(Some(&header("Bearer cpk_good"))).unwrap().name, "team");
        assert_eq!(auth.identify(Some(&header("bearer  cpk_good "))).unwrap().name, "team");
        let failure = |v: Option<&str>| match auth.identify(v.map(header).as_ref()) {
            Err(GatewayError::Unauthenticated(failure)) => failure,
            other => panic!("{other:?}"),
        };
        assert_eq!(failure(None), AuthFailure::Missing);
        assert_eq!(failure(Some("cpk_good")), AuthFailure::Malformed);
        assert_eq!(failure(Some("Basic cpk_good")), AuthFailure::Malformed);
        assert_eq!(failure(Some("Bearer ")), AuthFailure::Malformed);
        assert_eq!(failure(Some("Bearer cpk_bad")), AuthFailure::Unknown);
        assert!(Auth::from_config(&AuthConfig::default()).is_none());
    }
}
