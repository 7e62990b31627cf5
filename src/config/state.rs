//! The `[state]` section: the Redis (or Valkey) every replica shares, which makes the API keys'
//! budgets hold across replicas. Unset, every budget lives in this process, as on one machine.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS) or `unix:///path`
    /// (env `COPILOT_REDIS_URL`). It holds the password: the logs show it masked.
    pub redis_url: Option<RedisUrl>,
    /// `single`: one server (or a primary behind a stable address); `cluster`: a Redis Cluster,
    /// `redis_url` naming any node (or the cluster's configuration endpoint); `sentinel`: the
    /// primary that Redis Sentinel names, `redis_url` naming it by its Sentinel service name.
    pub topology: RedisTopology,
    /// With `topology = "sentinel"`: the sentinels, `redis://[[user]:password@]host:port` or
    /// `rediss://…` (env `COPILOT_REDIS_SENTINELS`, comma-separated). They share one scheme and one
    /// user and password; the logs show them masked.
    pub sentinels: Vec<RedisUrl>,
    /// PEM CA certificates that sign the Redis server's certificate (`rediss://`), instead of the
    /// system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// The `<prefix>` of every key Copilot writes (`copilot:<prefix>:…`): deployments that share
    /// one Redis keep apart by it.
    pub key_prefix: String,
    /// The bound of one Redis operation, connecting included. A budget check that takes longer is
    /// decided by `on_error`.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
    /// What a failed or timed-out shared operation means.
    pub on_error: OnStateError,
    /// How often Redis is PINGed for the `state` health entry.
    #[serde(with = "super::duration")]
    pub health_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            topology: RedisTopology::Single,
            sentinels: Vec::new(),
            tls_ca_file: None,
            key_prefix: "default".into(),
            timeout: Duration::from_millis(50),
            on_error: OnStateError::Local,
            health_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisTopology {
    Single,
    Cluster,
    Sentinel,
}

/// The failure policy of the shared budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStateError {
    /// This replica's own buckets decide, as without Redis: a key gets at most N times its budget
    /// across N replicas while Redis is out, and the gateway keeps serving.
    Local,
    /// Admit the call (logged and counted).
    Open,
    /// Refuse the call: `UNAVAILABLE`, reason `STATE_UNAVAILABLE`.
    Closed,
}

impl OnStateError {
    pub fn name(self) -> &'static str {
        match self {
            OnStateError::Local => "local",
            OnStateError::Open => "open",
            OnStateError::Closed => "closed",
        }
    }
}

/// A Redis URL. It carries the password, so it prints (`Debug`, `Display`) with the password
/// replaced by `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> RedisUrl {
        RedisUrl(url.into().trim().to_string())
    }

    /// The URL itself, password included: for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***` (and nothing printed at all if it does not parse).
    pub fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "(a URL that does not parse)".into(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

const SCHEMES: [&str; 6] = ["redis", "rediss", "unix", "redis+unix", "valkey", "valkeys"];
/// The schemes of a server reached over TCP: a sentinel, and the primary it names.
const TCP_SCHEMES: [&str; 4] = ["redis", "rediss", "valkey", "valkeys"];

/// With Sentinel, `redis_url` names the primary by its service name and carries its password and
/// database: the address comes from the sentinels.
fn sentinel_primary_problem(url: &url::Url) -> Option<String> {
    if !TCP_SCHEMES.contains(&url.scheme()) {
        return Some(format!("with topology = \"sentinel\" the scheme must be one of {}", TCP_SCHEMES.join(", ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some(
            "with topology = \"sentinel\" its host is the Sentinel service name, as in redis://:password@mymaster/0"
                .into(),
        );
    }
    if url.port().is_some() {
        return Some(
            "with topology = \"sentinel\" it names the primary by its Sentinel service name, without a port \
             (the sentinels give the address)"
                .into(),
        );
    }
    redis::Client::open(url.as_str()).err().map(|e| e.to_string())
}

/// The sentinels: only with the `sentinel` topology (which needs at least one), each a usable
/// `host:port`, all with one scheme and one user and password (the client has one of each for them).
fn check_sentinels(state: &StateConfig) -> Result<(), ConfigError> {
    match (state.topology, state.sentinels.is_empty()) {
        (RedisTopology::Sentinel, true) if state.redis_url.is_some() => {
            return Err(invalid(
                "state.sentinels",
                "is empty: topology = \"sentinel\" needs the sentinels' addresses (redis://host:26379, …)",
            ));
        }
        (RedisTopology::Single | RedisTopology::Cluster, false) => {
            return Err(invalid("state.sentinels", "is only used with topology = \"sentinel\""));
        }
        _ => {}
    }
    let mut first: Option<url::Url> = None;
    for (index, sentinel) in state.sentinels.iter().enumerate() {
        let key = format!("state.sentinels[{index}]");
        let parsed = url::Url::parse(sentinel.expose())
            .map_err(|e| invalid(&key, format!("({}) does not parse ({e})", sentinel.masked())))?;
        let problem = if !TCP_SCHEMES.contains(&parsed.scheme()) {
            Some(format!("the scheme must be one of {}", TCP_SCHEMES.join(", ")))
        } else if parsed.port().is_none() {
            Some("needs a port (sentinels usually listen on 26379)".into())
        } else if first.as_ref().is_some_and(|first| {
            (first.scheme(), first.username(), first.password())
                != (parsed.scheme(), parsed.username(), parsed.password())
        }) {
            Some(
                "differs from state.sentinels[0] in its scheme, user or password; the sentinels share one of each"
                    .into(),
            )
        } else {
            redis::Client::open(sentinel.expose()).err().map(|e| e.to_string())
        };
        if let Some(problem) = problem {
            return Err(invalid(key, format!("({}) is not usable: {problem}", sentinel.masked())));
        }
        first.get_or_insert(parsed);
    }
    Ok(())
}

/// What the types cannot check: a URL the client accepts, bounds that make sense.
pub(super) fn check(state: &mut StateConfig) -> Result<(), ConfigError> {
    if state.redis_url.as_ref().is_some_and(|url| url.expose().is_empty()) {
        state.redis_url = None;
    }
    state.sentinels.retain(|url| !url.expose().is_empty());
    if let Some(url) = &state.redis_url {
        let problem = match url::Url::parse(url.expose()) {
            Err(e) => Some(format!("it does not parse ({e})")),
            Ok(parsed) if !SCHEMES.contains(&parsed.scheme()) => {
                Some(format!("the scheme must be one of {}", SCHEMES.join(", ")))
            }
            Ok(parsed) if state.topology == RedisTopology::Sentinel => sentinel_primary_problem(&parsed),
            // The client's own check (host, database number); its messages hold no password.
            Ok(_) => redis::Client::open(url.expose()).err().map(|e| e.to_string()),
        };
        if let Some(problem) = problem {
            return Err(invalid("state.redis_url", format!("({}) is not usable: {problem}", url.masked())));
        }
    }
    check_sentinels(state)?;
    if state.key_prefix.is_empty()
        || !state.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid("state.key_prefix", "must be letters, digits, '-', '_' or '.', and not empty"));
    }
    if state.timeout.is_zero() || state.timeout > Duration::from_secs(10) {
        return Err(invalid(
            "state.timeout",
            "must be more than 0s and at most 10s (a budget check is on every call's path)",
        ));
    }
    if state.health_interval < Duration::from_millis(100) {
        return Err(invalid("state.health_interval", "must be at least 100ms"));
    }
    let tls = |url: &RedisUrl| url.expose().starts_with("rediss://") || url.expose().starts_with("valkeys://");
    if let Some(path) = &state.tls_ca_file
        && !state.redis_url.iter().chain(&state.sentinels).any(tls)
    {
        return Err(invalid(
            "state.tls_ca_file",
            format!("({}) is for a rediss:// URL; neither state.redis_url nor state.sentinels is one", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_prints_without_its_password() {
        let url = RedisUrl::new("rediss://copilot:s3cr3t-p4ss@redis.internal:6380/2");
        for printed in [format!("{url:?}"), url.to_string(), url.masked()] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(printed.contains("redis.internal:6380"), "{printed}");
        }
        assert_eq!(url.masked(), "rediss://copilot:***@redis.internal:6380/2");
        assert_eq!(RedisUrl::new("redis://:pw@h/0").masked(), "redis://:***@h/0");
        assert!(!format!("{:?}", RedisUrl::new("redis:// :pw@bad host")).contains("pw"));
    }

    fn checked(url: &str) -> Result<StateConfig, ConfigError> {
        let mut state = StateConfig { redis_url: Some(RedisUrl::new(url)), ..StateConfig::default() };
        check(&mut state).map(|()| state)
    }

    #[test]
    fn urls_are_checked_at_load_and_named_masked() {
        assert!(checked("redis://127.0.0.1:6379/0").is_ok());
        assert!(checked("rediss://:pw@redis:6380").is_ok());
        assert!(checked("unix:///run/redis.sock").is_ok());
        assert!(checked("").unwrap().redis_url.is_none(), "an empty URL is no Redis");
        let message = checked("http://:hunter2@redis:6379").unwrap_err().to_string();
        assert!(message.contains("state.redis_url") && message.contains("scheme"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(checked("not a url").is_err());
    }

    fn sentinel(url: &str, sentinels: &[&str]) -> Result<StateConfig, ConfigError> {
        let mut state = StateConfig {
            redis_url: Some(RedisUrl::new(url)),
            topology: RedisTopology::Sentinel,
            sentinels: sentinels.iter().map(|url| RedisUrl::new(*url)).collect(),
            ..StateConfig::default()
        };
        check(&mut state).map(|()| state)
    }

    #[test]
    fn sentinel_settings_are_checked_at_load_without_showing_passwords() {
        let ok = sentinel("redis://:pw@mymaster/2", &["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]);
        assert_eq!(ok.unwrap().sentinels.len(), 2);
        assert!(sentinel("rediss://user:pw@mymaster", &["rediss://:spw@s1:26380"]).is_ok());
        let problem = |url: &str, sentinels: &[&str]| sentinel(url, sentinels).unwrap_err().to_string();

        let message = problem("redis://:hunter2@10.0.0.9:6379/0", &["redis://s1:26379"]);
        assert!(message.contains("state.redis_url") && message.contains("service name"), "{message}");
        assert!(!message.contains("hunter2") && message.contains("***"), "{message}");
        let message = problem("unix:///run/redis.sock", &["redis://s1:26379"]);
        assert!(message.contains("state.redis_url") && message.contains("scheme"), "{message}");

        let message = problem("redis://mymaster", &[]);
        assert!(message.contains("state.sentinels") && message.contains("empty"), "{message}");
        let message = problem("redis://mymaster", &["redis://s1"]);
        assert!(message.contains("state.sentinels[0]") && message.contains("port"), "{message}");
        let message = problem("redis://mymaster", &["redis://:one-pass@s1:26379", "redis://:two-pass@s2:26379"]);
        assert!(message.contains("state.sentinels[1]") && message.contains("password"), "{message}");
        assert!(!message.contains("one-pass") && !message.contains("two-pass"), "{message}");
        let message = problem("redis://mymaster", &["redis://s1:26379", "rediss://s2:26379"]);
        assert!(message.contains("state.sentinels[1]") && message.contains("scheme"), "{message}");

        let mut single = StateConfig {
            redis_url: Some(RedisUrl::new("redis://127.0.0.1:6379")),
            sentinels: vec![RedisUrl::new("redis://s1:26379")],
            ..StateConfig::default()
        };
        let message = check(&mut single).unwrap_err().to_string();
        assert!(message.contains("state.sentinels") && message.contains("topology"), "{message}");
        // A TLS sentinel makes the CA file meaningful even with a plain primary.
        let mut tls = sentinel("redis://mymaster", &["rediss://s1:26379"]).unwrap();
        tls.tls_ca_file = Some("/ca.pem".into());
        assert!(check(&mut tls).is_ok());
    }

    #[test]
    fn bounds_are_checked() {
        let bad = |state: StateConfig, key: &str| {
            let mut state = state;
            let message = check(&mut state).unwrap_err().to_string();
            assert!(message.contains(key), "{message}");
        };
        bad(StateConfig { timeout: Duration::ZERO, ..StateConfig::default() }, "state.timeout");
        bad(StateConfig { key_prefix: "a b".into(), ..StateConfig::default() }, "state.key_prefix");
        bad(
            StateConfig { health_interval: Duration::from_millis(10), ..StateConfig::default() },
            "state.health_interval",
        );
        bad(StateConfig { tls_ca_file: Some("/ca.pem".into()), ..StateConfig::default() }, "state.tls_ca_file");
    }
}
