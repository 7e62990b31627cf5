//! State shared by every replica, in Redis (or Valkey), when `state.redis_url` is set: the API keys'
//! budgets (`limiter`), so that N replicas admit together what one would. This module owns the
//! connection (`connection.rs`: one server or a Cluster, created lazily so that an unreachable
//! Redis never stops the server from starting), bounds every operation by `state.timeout`, and
//! keeps the `up` signal that gRPC health (`state`) and the metrics show.
//! What a failed operation means for a call (`state.on_error`) is decided by the caller
//! (`auth/shared.rs`).

mod connection;
pub mod limiter;
mod metrics;
mod sentinel;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{OnStateError, RedisUrl, StateConfig};
pub use connection::Connection;
pub use limiter::{Budget, Limits, Op, SharedBudgets, StateError, Verdict};
pub use metrics::state_metrics;

/// The shared store of one replica: its connection and what it knows of Redis's health.
pub struct SharedState {
    budgets: SharedBudgets,
    connection: Connection,
    url: RedisUrl,
    key_prefix: String,
    timeout: Duration,
    pub on_error: OnStateError,
    pub health_interval: Duration,
    up: AtomicBool,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState").field("url", &self.url).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl SharedState {
    /// `None` without `state.redis_url`. Connects lazily: the first operation (or the first health
    /// probe) opens the connection. Must run inside the Tokio runtime.
    pub fn from_config(config: &StateConfig) -> Result<Option<Arc<SharedState>>, StateError> {
        let Some(url) = &config.redis_url else { return Ok(None) };
        let connection = Connection::open(url, config)?;
        state_metrics().up.record(1, &[]);
        Ok(Some(Arc::new(SharedState {
            budgets: SharedBudgets::new(connection.clone(), &config.key_prefix, config.timeout),
            connection,
            url: url.clone(),
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            on_error: config.on_error,
            health_interval: config.health_interval,
            // Unknown until the first probe; assumed up so that the first calls try Redis.
            up: AtomicBool::new(true),
        })))
    }

    /// The URL, password masked.
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// With the Sentinel topology, the address of the primary the sentinels named (once known).
    pub fn sentinel_primary(&self) -> Option<String> {
        self.connection.sentinel_primary()
    }

    /// Whether the last operation or probe reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn observe(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            state_metrics().up.record(u64::from(up), &[]);
        }
    }

    /// Applies `op` to the budgets of the key `key_id` ([`SharedBudgets::key_id`]), timed and counted.
    pub async fn apply(&self, key_id: &str, limits: Limits, op: Op) -> Result<Verdict, StateError> {
        let started = Instant::now();
        let result = self.budgets.apply_to(key_id, limits, op, None).await;
        self.record(op.name(), started, &result);
        result
    }

    /// The name of a key of this deployment: `copilot:<key_prefix>:<what>`.
    pub fn key(&self, what: &str) -> String {
        format!("copilot:{}:{what}", self.key_prefix)
    }

    /// `GET key`, timed and counted as `cache_get`.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut command = redis::cmd("GET");
        command.arg(key);
        self.run("cache_get", command).await
    }

    /// `SET key value PX ttl`, timed and counted as `cache_set`.
    pub async fn set_bytes(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StateError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value).arg("PX").arg(ttl.as_millis().max(1) as u64);
        self.run("cache_set", command).await
    }

    /// `DEL key`, timed and counted as `cache_remove`.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        let mut command = redis::cmd("DEL");
        command.arg(key);
        self.run::<i64>("cache_remove", command).await.map(|_| ())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: redis::Cmd,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let mut connection = self.connection.clone();
        let result = tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection))
            .await
            .map_err(|_| StateError::Timeout(self.timeout))
            .and_then(|answer| answer.map_err(|e| StateError::Redis(e.to_string())));
        self.record(operation, started, &result);
        result
    }

    fn record<T>(&self, operation: &'static str, started: Instant, result: &Result<T, StateError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StateError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        let metrics = state_metrics();
        let operation = opentelemetry::KeyValue::new("operation", operation);
        metrics.duration.record(started.elapsed().as_secs_f64(), std::slice::from_ref(&operation));
        metrics.operations.add(1, &[operation, opentelemetry::KeyValue::new("outcome", outcome)]);
        self.observe(result.is_ok());
    }

    /// One PING, bounded by the timeout: how long it took.
    pub async fn ping(&self) -> Result<Duration, StateError> {
        self.ping_within(self.timeout).await
    }

    /// The first PING: it waits for the connection to be made (at most [`connection::CONNECT_TIMEOUT`]
    /// or the timeout), so that the connection is up before calls need it.
    pub async fn connect(&self) -> Result<Duration, StateError> {
        self.ping_within(self.timeout.max(connection::CONNECT_TIMEOUT)).await
    }

    async fn ping_within(&self, bound: Duration) -> Result<Duration, StateError> {
        let started = Instant::now();
        let mut connection = self.connection.clone();
        let result = tokio::time::timeout(bound, redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map_err(|_| StateError::Timeout(bound))
            .and_then(|answer| answer.map_err(|e| StateError::Redis(e.to_string())));
        self.observe(result.is_ok());
        if result.is_err() {
            self.connection.probe_failed();
        }
        result.map(|_| started.elapsed())
    }

    /// What `copilot doctor` shows: the server's version and eviction policy (`INFO server`,
    /// `CONFIG GET maxmemory-policy`, which a managed Redis may refuse: then `None`).
    pub async fn describe(&self) -> Result<(String, Option<String>), StateError> {
        let mut connection = self.connection.clone();
        let bound = self.timeout * 4;
        let info: String = tokio::time::timeout(bound, redis::cmd("INFO").arg("server").query_async(&mut connection))
            .await
            .map_err(|_| StateError::Timeout(bound))?
            .map_err(|e| StateError::Redis(e.to_string()))?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:").or_else(|| line.strip_prefix("valkey_version:")))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let mut config_get = redis::cmd("CONFIG");
        config_get.arg("GET").arg("maxmemory-policy");
        let policy = tokio::time::timeout(bound, config_get.query_async::<Vec<String>>(&mut connection))
            .await
            .ok()
            .and_then(Result::ok);
        Ok((version, policy.and_then(|pair| pair.into_iter().nth(1))))
    }
}
