//! A key's request and token budgets kept in Redis, so that N replicas together admit what one
//! would. Each operation is one round trip: a Lua script (`limiter.lua`) that applies the rule of
//! `auth/bucket.rs` — continuous refill, capacity = the per-minute amount, debt for tokens charged
//! after the fact, refunds capped at the capacity — atomically, with Redis's own clock, so replicas'
//! clocks cannot disagree. `redis::Script` sends EVALSHA and loads the script again when a
//! restarted or flushed Redis has forgotten it.
//!
//! Keys are `copilot:<prefix>:rl:{<key id>}:requests|tokens`: the id is derived from the key's
//! configured hash (never the secret, nor the hash itself), and the braces keep both buckets of one
//! key in one Cluster slot. A full bucket is no key; any other expires once it would have refilled.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::Connection;
use sha2::{Digest, Sha256};

use crate::key_hash::KeyHash;

/// What one call does to a key's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Admission: a completion needs a token left; every call takes one request.
    Admit { uses_tokens: bool },
    /// Reserve a completion's estimated tokens, or refuse.
    Take(u64),
    /// `Admit` then `Take`, in one round trip (the request is spent even when the tokens do not fit,
    /// as with the two apart).
    AdmitAndTake { uses_tokens: bool, tokens: u64 },
    /// Charge tokens used beyond the reservation (may go into debt).
    Charge(u64),
    /// Give back tokens reserved and not used.
    Refund(u64),
}

impl Op {
    /// Its name in metrics and in the script.
    pub fn name(self) -> &'static str {
        match self {
            Op::Admit { .. } => "admit",
            Op::Take(_) => "take",
            Op::AdmitAndTake { .. } => "admit_take",
            Op::Charge(_) => "charge",
            Op::Refund(_) => "refund",
        }
    }
}

/// A key's per-minute budgets; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

/// Which budget refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Requests,
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Done,
    Limited { budget: Budget, retry_after: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Redis(String),
    #[error("the Redis URL is not usable: {0}")]
    Url(String),
}

/// The shared budgets of every key, in one Redis.
#[derive(Clone)]
pub struct SharedBudgets {
    connection: Connection,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for SharedBudgets {
    // The connection holds the URL, whose password must not be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudgets").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

impl SharedBudgets {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`); every operation is bounded by
    /// `timeout`. The connection reconnects by itself after an error.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<SharedBudgets, StateError> {
        let client = redis::Client::open(url).map_err(|e| StateError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection = tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| StateError::Timeout(timeout))?
            .map_err(|e| StateError::Redis(e.to_string()))?;
        Ok(SharedBudgets::new(Connection::Single(connection), prefix, timeout))
    }

    /// The budgets on an existing connection.
    pub fn new(connection: Connection, prefix: &str, timeout: Duration) -> SharedBudgets {
        SharedBudgets {
            connection,
            script: redis::Script::new(include_str!("limiter.lua")),
            prefix: prefix.to_string(),
            timeout,
        }
    }

    /// The part of a key's Redis names that identifies it: 16 bytes of a hash of its configured
    /// hash, in hex.
    pub fn key_id(key: &KeyHash) -> String {
        let digest = Sha256::new().chain_update(b"copilot rate limit\0").chain_update(key.to_string()).finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Applies `op` to `key`'s budgets, on Redis's clock.
    pub async fn apply(&self, key: &KeyHash, limits: Limits, op: Op) -> Result<Verdict, StateError> {
        self.apply_at(key, limits, op, None).await
    }

    /// [`apply`](Self::apply) at `now` (microseconds) instead of Redis's clock: for tests that
    /// replay a timeline.
    pub async fn apply_at(
        &self,
        key: &KeyHash,
        limits: Limits,
        op: Op,
        now_micros: Option<u64>,
    ) -> Result<Verdict, StateError> {
        self.apply_to(&Self::key_id(key), limits, op, now_micros).await
    }

    /// [`apply_at`](Self::apply_at) on the key whose [`key_id`](Self::key_id) is `id`.
    pub async fn apply_to(
        &self,
        id: &str,
        limits: Limits,
        op: Op,
        now_micros: Option<u64>,
    ) -> Result<Verdict, StateError> {
        let (amount, uses_tokens) = match op {
            Op::Admit { uses_tokens } => (u64::from(uses_tokens), false),
            Op::AdmitAndTake { uses_tokens, tokens } => (tokens, uses_tokens),
            Op::Take(n) | Op::Charge(n) | Op::Refund(n) => (n, false),
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("copilot:{}:rl:{{{id}}}:requests", self.prefix))
            .key(format!("copilot:{}:rl:{{{id}}}:tokens", self.prefix))
            .arg(op.name())
            .arg(limits.requests_per_minute.unwrap_or(0))
            .arg(limits.tokens_per_minute.unwrap_or(0))
            .arg(amount)
            .arg(now_micros.map(|n| n.to_string()).unwrap_or_default())
            .arg(u8::from(uses_tokens));
        let mut connection = self.connection.clone();
        let answer: Vec<i64> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| StateError::Timeout(self.timeout))?
            .map_err(|e| StateError::Redis(e.to_string()))?;
        let retry_after = || Duration::from_millis(answer.get(1).copied().unwrap_or(0).max(0) as u64);
        match answer.first() {
            Some(0) => Ok(Verdict::Done),
            Some(1) => Ok(Verdict::Limited { budget: Budget::Requests, retry_after: retry_after() }),
            Some(2) => Ok(Verdict::Limited { budget: Budget::Tokens, retry_after: retry_after() }),
            _ => Err(StateError::Redis(format!("the limiter script answered {answer:?}"))),
        }
    }
}
