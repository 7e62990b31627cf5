//! API keys: who a call comes from (`authorization: Bearer <key>`), which models that key may
//! use, and its request and token budgets. The layer in `auth/layer.rs` identifies the caller and
//! admits or refuses the call; the handlers check the model once it is known, reserve an
//! estimate of the completion's tokens, and settle the reservation with the tokens it used.
//! With `state.redis_url` the budgets are kept in Redis for every replica (`auth/shared.rs`);
//! otherwise, and as `state.on_error = "local"`'s fallback, in this process (`auth/bucket.rs`).

mod bucket;
mod layer;
mod shared;

use std::sync::Arc;
use std::time::Instant;

use copilot_provider::Usage;

pub use crate::key_hash::{KeyHash, new_key};
pub use bucket::Bucket;
pub use layer::AuthCheck;
pub use shared::SharedKeyBudgets;
use shared::{DeferredAdmission, Held};

use crate::config::{ApiKeyConfig, AuthConfig};
use crate::error::{AuthFailure, GatewayError, KeyLimit};
use crate::state::{Limits, Op, SharedBudgets};

/// The configured keys, and which services need none.
pub struct Auth {
    keys: Vec<Arc<ApiKey>>,
    open_health: bool,
    open_reflection: bool,
    /// The budgets in Redis, when `state.redis_url` is set.
    shared: Option<Arc<SharedKeyBudgets>>,
}

impl Auth {
    /// `None` when authentication is off (the configuration was checked when loaded). With
    /// `shared`, every key's budgets are those in Redis.
    pub fn from_config(config: &AuthConfig, shared: Option<Arc<SharedKeyBudgets>>) -> Option<Arc<Auth>> {
        if !config.enabled {
            return None;
        }
        let now = Instant::now();
        let keys = config
            .keys
            .iter()
            .map(|key| Arc::new(ApiKey::from_config(key, config.default_reserved_tokens, now)))
            .collect();
        Some(Arc::new(Auth { keys, open_health: config.open_health, open_reflection: config.open_reflection, shared }))
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
    /// What names this key in Redis ([`SharedBudgets::key_id`]): neither the key nor its hash.
    id: String,
    /// `None`: every model.
    models: Option<Vec<ModelPattern>>,
    requests: Option<(u32, Bucket)>,
    tokens: Option<(u64, Bucket)>,
    /// The completion tokens reserved for a call that sets no `max_tokens`.
    default_reserved: u32,
}

impl ApiKey {
    fn from_config(config: &ApiKeyConfig, default_reserved: u32, now: Instant) -> ApiKey {
        ApiKey {
            name: config.name.clone(),
            hash: config.hash.clone(),
            id: SharedBudgets::key_id(&config.hash),
            models: config.models.as_ref().map(|models| models.iter().map(|m| ModelPattern::new(m)).collect()),
            requests: config.requests_per_minute.map(|n| (n, Bucket::per_minute(u64::from(n), now))),
            tokens: config.tokens_per_minute.map(|n| (n, Bucket::per_minute(n, now))),
            default_reserved,
        }
    }

    /// Whether this key may use `model`, in the form `router::Plan::allow_list_name` gives.
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(model)))
    }

    fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests.as_ref().map(|(n, _)| *n),
            tokens_per_minute: self.tokens.as_ref().map(|(n, _)| *n),
        }
    }

    /// Whether a call of this key spends anything at admission.
    fn has_limits(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    fn has_token_budget(&self) -> bool {
        self.tokens.is_some()
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

impl ApiKey {
    /// Takes `tokens` from this replica's token bucket, or says when they would fit.
    fn take_tokens(&self, tokens: u64, now: Instant) -> Result<(), GatewayError> {
        let Some((per_minute, bucket)) = &self.tokens else { return Ok(()) };
        bucket.take(tokens as f64, now).map_err(|retry_after| GatewayError::KeyLimited {
            key: self.name.clone(),
            limit: KeyLimit::TokensPerMinute(*per_minute),
            retry_after,
        })
    }

    /// A settlement on this replica's own buckets (Redis could not take it): a charge or refund, or
    /// the request of a call refused before its deferred admission (which spends nothing more if the
    /// bucket is empty).
    fn settle_locally(&self, op: Op, now: Instant) {
        match (op, &self.tokens) {
            (Op::Charge(tokens), Some((_, bucket))) => bucket.charge(tokens as f64, now),
            (Op::Refund(tokens), Some((_, bucket))) => bucket.refund(tokens as f64, now),
            (Op::Admit { uses_tokens }, _) => {
                let _ = self.admit(uses_tokens, now);
            }
            _ => {}
        }
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
#[derive(Clone)]
pub struct Caller {
    pub key: Arc<ApiKey>,
    shared: Option<Arc<SharedKeyBudgets>>,
    /// The admission left to the reservation, when budgets are shared (one round trip for both).
    deferred: Option<Arc<DeferredAdmission>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Caller").field(&self.key).finish()
    }
}

impl Caller {
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Caller> {
        request.extensions().get::<Caller>().cloned()
    }

    /// Refuses a model this key may not use. `model` is the name the client sent as routing
    /// resolved it (`Plan::allow_list_name`), so that the allow-list speaks of aliases and
    /// `provider/model` names whatever the client typed.
    pub fn check_model(&self, model: &str) -> Result<(), GatewayError> {
        if self.key.allows(model) {
            Ok(())
        } else {
            Err(GatewayError::ModelNotAllowed { key: self.key.name.clone(), model: model.to_string() })
        }
    }

    /// Reserves the tokens a completion may use against the key's token budget, or refuses the
    /// call when they do not fit: see [`estimate_tokens`]. With shared budgets, in Redis.
    pub async fn reserve<'a>(
        &self,
        prompt: impl IntoIterator<Item = &'a str>,
        max_tokens: Option<u32>,
    ) -> Result<Reservation, GatewayError> {
        let Some(shared) = &self.shared else { return self.reserve_at(prompt, max_tokens, Instant::now()) };
        let Some(reserved) = self.estimate(prompt, max_tokens) else { return Ok(self.nothing_reserved()) };
        let op = match self.deferred.as_ref().and_then(|deferred| deferred.claim()) {
            Some(uses_tokens) => Op::AdmitAndTake { uses_tokens, tokens: reserved },
            None => Op::Take(reserved),
        };
        let (reserved, shared) = match shared.take(&self.key, op).await? {
            Held::Shared => (reserved, Some(shared.clone())),
            Held::Local => (reserved, None),
            Held::Nothing => (0, None),
        };
        Ok(Reservation { key: self.key.clone(), reserved, shared })
    }

    /// Makes the admission this call's reservation was to make, for a call answered without one
    /// (a cache hit): its request is spent, or the call refused.
    pub async fn admit_deferred(&self) -> Result<(), GatewayError> {
        match (&self.shared, self.deferred.as_ref().and_then(|deferred| deferred.claim())) {
            (Some(shared), Some(uses_tokens)) => shared.admit(&self.key, uses_tokens).await,
            _ => Ok(()),
        }
    }

    /// The tokens to reserve, `None` when the key has no token budget. A call estimated above the
    /// whole budget reserves all of it (it waits for a full bucket rather than never fitting);
    /// what it uses beyond is charged as debt.
    fn estimate<'a>(&self, prompt: impl IntoIterator<Item = &'a str>, max_tokens: Option<u32>) -> Option<u64> {
        let (per_minute, _) = self.key.tokens.as_ref()?;
        Some(estimate_tokens(prompt, max_tokens.unwrap_or(self.key.default_reserved)).min(*per_minute))
    }

    fn nothing_reserved(&self) -> Reservation {
        Reservation { key: self.key.clone(), reserved: 0, shared: None }
    }

    fn reserve_at<'a>(
        &self,
        prompt: impl IntoIterator<Item = &'a str>,
        max_tokens: Option<u32>,
        now: Instant,
    ) -> Result<Reservation, GatewayError> {
        let Some(reserved) = self.estimate(prompt, max_tokens) else { return Ok(self.nothing_reserved()) };
        self.key.take_tokens(reserved, now)?;
        Ok(Reservation { key: self.key.clone(), reserved, shared: None })
    }
}

/// A completion's tokens estimated before it runs: its prompt's characters divided by 4, rounded
/// up, plus the completion tokens it may produce.
pub fn estimate_tokens<'a>(prompt: impl IntoIterator<Item = &'a str>, completion_tokens: u32) -> u64 {
    let chars: u64 = prompt.into_iter().map(|part| part.chars().count() as u64).sum();
    chars.div_ceil(4) + u64::from(completion_tokens)
}

/// Tokens held against a key's budget while its completion runs. [`Reservation::settle`] replaces
/// them with the usage reported; dropped unsettled (the call failed or was cancelled before any
/// usage was known), they are given back.
pub struct Reservation {
    key: Arc<ApiKey>,
    reserved: u64,
    /// Set when the tokens were taken in Redis: the settlement goes there too.
    shared: Option<Arc<SharedKeyBudgets>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("key", &self.key.name).field("reserved", &self.reserved).finish()
    }
}

impl Reservation {
    /// Charges what the completion used: the difference from the reservation is refunded, or the
    /// overrun charged (as debt if the budget lacks it).
    pub fn settle(self, usage: &Usage) {
        self.settle_at(usage, Instant::now());
    }

    /// Charges the estimate as it stands: for a call whose upstream reported no usage.
    pub fn keep(mut self) {
        self.reserved = 0;
    }

    fn settle_at(mut self, usage: &Usage, now: Instant) {
        let reserved = std::mem::take(&mut self.reserved);
        let used = u64::from(usage.input_tokens) + u64::from(usage.output_tokens);
        let op = if used >= reserved { Op::Charge(used - reserved) } else { Op::Refund(reserved - used) };
        self.apply(op, now);
    }

    fn release_at(&mut self, now: Instant) {
        let reserved = std::mem::take(&mut self.reserved);
        if reserved > 0 {
            self.apply(Op::Refund(reserved), now);
        }
    }

    fn apply(&self, op: Op, now: Instant) {
        if matches!(op, Op::Charge(0) | Op::Refund(0)) || self.key.tokens.is_none() {
            return;
        }
        match &self.shared {
            Some(shared) => shared.settle(self.key.clone(), op),
            None => self.key.settle_locally(op, now),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release_at(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(models: Option<&[&str]>) -> ApiKey {
        ApiKey::from_config(
            &ApiKeyConfig {
                name: "team".into(),
                hash: KeyHash::of("k"),
                models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
                requests_per_minute: Some(1),
                tokens_per_minute: Some(10),
            },
            4,
            Instant::now(),
        )
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
        let reservation =
            Caller { key: k.clone(), shared: None, deferred: None }.reserve_at(["x"], Some(1), now).unwrap();
        reservation.settle_at(&Usage { input_tokens: 15, output_tokens: 10, ..Default::default() }, now);
        let err = k.admit(true, now).unwrap_err();
        assert!(matches!(err, GatewayError::KeyLimited { limit: KeyLimit::TokensPerMinute(10), .. }), "{err:?}");
        assert!(k.admit(false, now).is_ok());
    }

    #[test]
    fn estimates_a_quarter_token_per_prompt_character_rounded_up() {
        assert_eq!(estimate_tokens(["abcd"], 0), 1);
        assert_eq!(estimate_tokens(["abcd", "e"], 10), 12);
        assert_eq!(estimate_tokens(["ééé"], 0), 1, "characters, not bytes");
        assert_eq!(estimate_tokens([], 7), 7);
    }

    fn token_limited(result: Result<Reservation, GatewayError>) -> std::time::Duration {
        match result {
            Err(GatewayError::KeyLimited { limit: KeyLimit::TokensPerMinute(10), retry_after, .. }) => retry_after,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reservations_cannot_overdraw_the_token_budget() {
        let caller = Caller { key: Arc::new(key(None)), shared: None, deferred: None };
        let t0 = Instant::now();
        // 10 per minute; "abcdefgh" is 2 tokens, plus max_tokens 2: 4 each.
        let first = caller.reserve_at(["abcdefgh"], Some(2), t0).unwrap();
        let second = caller.reserve_at(["abcdefgh"], Some(2), t0).unwrap();
        // 2 left, 4 wanted: 2 more refill in 12 s.
        assert_eq!(token_limited(caller.reserve_at(["abcdefgh"], Some(2), t0)), std::time::Duration::from_secs(12));
        // No max_tokens: the key's default (4) plus the prompt's 1.
        assert_eq!(token_limited(caller.reserve_at(["a"], None, t0)), std::time::Duration::from_secs(18));
        // The first used 1 of its 4: 3 come back, so 5 are left.
        first.settle_at(&Usage { input_tokens: 1, output_tokens: 0, ..Default::default() }, t0);
        let third = caller.reserve_at(["a"], None, t0).unwrap();
        assert!(caller.reserve_at(["a"], Some(0), t0).is_err());
        // The second used 9 of its 4: the 5 over are a debt (-5).
        second.settle_at(&Usage { input_tokens: 4, output_tokens: 5, ..Default::default() }, t0);
        // A call cancelled before any usage gives its whole reservation back (0).
        drop(third);
        assert_eq!(token_limited(caller.reserve_at(["a"], Some(0), t0)), std::time::Duration::from_secs(6));
        assert!(caller.reserve_at(["a"], Some(0), t0 + std::time::Duration::from_secs(6)).is_ok());
    }

    #[test]
    fn a_call_estimated_above_the_budget_reserves_all_of_it() {
        let caller = Caller { key: Arc::new(key(None)), shared: None, deferred: None };
        let t0 = Instant::now();
        let big = caller.reserve_at(["a"], Some(1000), t0).unwrap();
        assert_eq!(token_limited(caller.reserve_at(["a"], Some(0), t0)), std::time::Duration::from_secs(6));
        drop(big);
        assert!(caller.reserve_at(["a"], Some(9), t0).is_ok());
    }

    #[test]
    fn identifies_keys_by_bearer_token_only() {
        let config = AuthConfig {
            enabled: true,
            keys: vec![ApiKeyConfig {
                name: "team".into(),
                hash: KeyHash::of("cpk_good"),
                models: None,
                requests_per_minute: None,
                tokens_per_minute: None,
            }],
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&config, None).unwrap();
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
        assert!(Auth::from_config(&AuthConfig::default(), None).is_none());
    }
}
