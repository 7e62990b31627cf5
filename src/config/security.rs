//! The security sections of the configuration: TLS on the listener (`[server.tls]`), API keys
//! with per-key models and rate limits (`[auth]`), and request size limits (`[limits]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::key_hash::KeyHash;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The PEM certificate chain the listener presents, leaf first.
    pub cert_file: PathBuf,
    /// The PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate one of them
    /// issued (mutual TLS), and connections without one are refused during the handshake.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are re-read; changed files apply to new connections, and files that
    /// do not load leave the previous certificate in use (with an error in the log).
    #[serde(default = "default_reload_interval", with = "super::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require an API key (`authorization: Bearer <key>` metadata) on every call.
    pub enabled: bool,
    /// The keys that are accepted, by their hashes (`copilot keys new` makes a key and its hash).
    pub keys: Vec<ApiKeyConfig>,
    /// Leave `grpc.health.v1.Health` open, so probes need no key.
    pub open_health: bool,
    /// Leave server reflection open, so tools such as grpcurl can list the API without a key.
    pub open_reflection: bool,
    /// The completion tokens reserved against a key's `tokens_per_minute` for a `Generate` or
    /// `Chat` that sets no `max_tokens` (settled with the actual usage when the call ends).
    pub default_reserved_tokens: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            keys: Vec::new(),
            open_health: true,
            open_reflection: true,
            default_reserved_tokens: 256,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key; logs and traces show this, never the key.
    pub name: String,
    /// `sha256:<64 hex digits>`: the SHA-256 of the key.
    pub hash: KeyHash,
    /// The models this key may use: `provider/model` names, alias names, `provider/*`, or `*`.
    /// Unset: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Calls of the Copilot API this key may make per minute (unset: no limit).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus completion tokens this key may use per minute (unset: no limit). An estimate
    /// is reserved when a completion is admitted and settled with its usage when it ends; a call
    /// whose reservation does not fit is refused until the budget refills.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

impl std::fmt::Debug for ApiKeyConfig {
    /// The hash is not the key, but it has no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish_non_exhaustive()
    }
}

/// The bounds of `limits.max_metadata_bytes`: room for the headers every call carries, and at
/// most what the HTTP/2 layer can hold for one header block without becoming a memory lever.
pub const MIN_METADATA_BYTES: usize = 1024;
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest request message accepted, in bytes (encoded protobuf).
    pub max_message_bytes: usize,
    /// The most messages one Chat request may carry.
    pub max_messages: usize,
    /// The most inputs one Embed request may carry.
    pub max_embed_inputs: usize,
    /// The most characters of prompt one request may carry: the sum over all its messages
    /// (Generate: the prompt plus the system prompt).
    pub max_prompt_chars: usize,
    /// The most bytes of reply text one call may carry: the whole text `Generate` collects, and
    /// any single chunk a `Chat` stream relays. Past it the upstream request is cancelled.
    pub max_response_bytes: usize,
    /// How long a call's request may take to arrive whole, from its headers to the end of its body
    /// (or the call's own deadline, when that is sooner); for a request stream (reflection), each
    /// message from its first byte to its last. Ends clients that stall while sending.
    #[serde(with = "super::duration")]
    pub request_read_timeout: Duration,
    /// Bytes of partly received request messages one client connection may hold at once (unset:
    /// 4 × `max_message_bytes`). A stream that would go over is refused.
    pub max_buffered_request_bytes_per_connection: Option<usize>,
    /// Bytes of partly received request messages all connections together may hold at once
    /// (unset: 16 × `max_message_bytes`). A stream that would go over is refused; above half of it,
    /// streams whose partial message has stalled are ended.
    pub max_buffered_request_bytes: Option<usize>,
    /// The largest request header block (metadata, as HTTP/2 counts it: each name and value plus
    /// 32 bytes); a call over it gets RESOURCE_EXHAUSTED, and its connection lives on.
    pub max_metadata_bytes: usize,
}

impl LimitsConfig {
    /// `max_buffered_request_bytes_per_connection`, or its default.
    pub fn connection_buffer_bytes(&self) -> usize {
        self.max_buffered_request_bytes_per_connection.unwrap_or(self.max_message_bytes.saturating_mul(4))
    }

    /// `max_buffered_request_bytes`, or its default.
    pub fn server_buffer_bytes(&self) -> usize {
        self.max_buffered_request_bytes.unwrap_or(self.max_message_bytes.saturating_mul(16))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_messages: 1000,
            max_embed_inputs: 2048,
            max_prompt_chars: 1_000_000,
            // 64 KiB under gRPC clients' default 4 MiB receive limit, which the reply's envelope
            // would otherwise push a reply of exactly 4 MiB of text over.
            max_response_bytes: 4 * 1024 * 1024 - 64 * 1024,
            request_read_timeout: Duration::from_secs(30),
            max_buffered_request_bytes_per_connection: None,
            max_buffered_request_bytes: None,
            // What hyper allowed before it was configurable, and gRPC C++'s hard limit.
            max_metadata_bytes: 16 * 1024,
        }
    }
}

pub(super) fn check(tls: Option<&TlsConfig>, auth: &AuthConfig, limits: &LimitsConfig) -> Result<(), ConfigError> {
    if let Some(tls) = tls
        && tls.reload_interval.is_zero()
    {
        return Err(invalid("server.tls.reload_interval", "must be greater than zero"));
    }
    if auth.enabled && auth.keys.is_empty() {
        return Err(invalid("auth.keys", "is empty while auth.enabled is true: every call would be refused"));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    for (i, key) in auth.keys.iter().enumerate() {
        let at = |field: &str| format!("auth.keys[{i}].{field}");
        if key.name.trim().is_empty() {
            return Err(invalid(at("name"), "must not be empty"));
        }
        if !names.insert(key.name.as_str()) {
            return Err(invalid(at("name"), format!("'{}' names two keys; names must be unique", key.name)));
        }
        if !hashes.insert(key.hash.to_string()) {
            return Err(invalid(at("hash"), format!("is also the hash of another key than '{}'", key.name)));
        }
        if key.models.as_ref().is_some_and(|models| models.iter().any(|m| m.trim().is_empty())) {
            return Err(invalid(at("models"), "has an empty entry"));
        }
        if key.requests_per_minute == Some(0) {
            return Err(invalid(at("requests_per_minute"), "must be at least 1 (leave it unset for no limit)"));
        }
        if key.tokens_per_minute == Some(0) {
            return Err(invalid(at("tokens_per_minute"), "must be at least 1 (leave it unset for no limit)"));
        }
    }
    for (field, value) in [
        ("max_message_bytes", limits.max_message_bytes),
        ("max_messages", limits.max_messages),
        ("max_embed_inputs", limits.max_embed_inputs),
        ("max_prompt_chars", limits.max_prompt_chars),
        ("max_response_bytes", limits.max_response_bytes),
    ] {
        if value == 0 {
            return Err(invalid(format!("limits.{field}"), "must be at least 1"));
        }
    }
    if limits.request_read_timeout.is_zero() {
        return Err(invalid("limits.request_read_timeout", "must be more than 0s"));
    }
    // A full-size message (and its 5-byte frame header) must fit the budgets, or it could never
    // be received.
    let message = limits.max_message_bytes.saturating_add(5);
    if limits.connection_buffer_bytes() < message {
        return Err(invalid(
            "limits.max_buffered_request_bytes_per_connection",
            format!("must be at least limits.max_message_bytes + 5 ({message}), or a full-size message is refused"),
        ));
    }
    if limits.server_buffer_bytes() < limits.connection_buffer_bytes() {
        return Err(invalid(
            "limits.max_buffered_request_bytes",
            format!(
                "must be at least limits.max_buffered_request_bytes_per_connection ({})",
                limits.connection_buffer_bytes()
            ),
        ));
    }
    if !(MIN_METADATA_BYTES..=MAX_METADATA_BYTES).contains(&limits.max_metadata_bytes) {
        return Err(invalid(
            "limits.max_metadata_bytes",
            format!("must be between {MIN_METADATA_BYTES} and {MAX_METADATA_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    const HASH: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn load(toml: &str) -> Result<Config, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("[providers.ollama]\n{toml}")).unwrap();
        Config::load_from(Some(file.path()), &Overrides::default(), []).map_err(|e| e.to_string())
    }

    #[test]
    fn the_security_sections_load_with_their_defaults() {
        let config = load(&format!(
            "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
             [auth]\nenabled = true\n[[auth.keys]]\nname = \"a\"\nhash = \"{HASH}\"\nmodels = [\"ollama/*\"]\n"
        ))
        .unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(10));
        assert!(tls.client_ca_file.is_none());
        assert!(config.auth.open_health && config.auth.open_reflection);
        assert_eq!(config.auth.keys[0].requests_per_minute, None);
        assert_eq!(config.limits.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(config.limits.max_response_bytes, 4 * 1024 * 1024 - 64 * 1024);
        assert_eq!(config.limits.request_read_timeout, std::time::Duration::from_secs(30));
        assert_eq!(config.limits.max_metadata_bytes, 16 * 1024);
        // The buffer budgets follow the message limit unless set.
        assert_eq!(config.limits.connection_buffer_bytes(), 16 * 1024 * 1024);
        assert_eq!(config.limits.server_buffer_bytes(), 64 * 1024 * 1024);
        let raised = load("[limits]\nmax_message_bytes = 1000").unwrap().limits;
        assert_eq!((raised.connection_buffer_bytes(), raised.server_buffer_bytes()), (4000, 16000));
        assert!(!format!("{:?}", config.auth).contains("ba7816bf"), "Debug shows no hash");
        assert!(load("").unwrap().server.tls.is_none());
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let key =
            |extra: &str| format!("[auth]\nenabled = true\n[[auth.keys]]\nname = \"a\"\nhash = \"{HASH}\"\n{extra}");
        let cases = [
            ("[auth]\nenabled = true".to_string(), "auth.keys"),
            ("[auth]\nenabled = true\n[[auth.keys]]\nname = \"a\"\nhash = \"abc\"".into(), "auth.keys[0].hash"),
            (key("requests_per_minute = 0"), "auth.keys[0].requests_per_minute"),
            (key("tokens_per_minute = 0"), "auth.keys[0].tokens_per_minute"),
            (key("models = [\"\"]"), "auth.keys[0].models"),
            (key(&format!("[[auth.keys]]\nname = \"a\"\nhash = \"{HASH}\"")), "auth.keys[1].name"),
            (key(&format!("[[auth.keys]]\nname = \"b\"\nhash = \"{HASH}\"")), "auth.keys[1].hash"),
            ("[limits]\nmax_messages = 0".into(), "limits.max_messages"),
            ("[limits]\nrequest_read_timeout = \"0s\"".into(), "limits.request_read_timeout"),
            ("[limits]\nmax_metadata_bytes = 100".into(), "limits.max_metadata_bytes"),
            ("[limits]\nmax_metadata_bytes = 2000000".into(), "limits.max_metadata_bytes"),
            // A full-size message must fit each budget.
            (
                "[limits]\nmax_message_bytes = 1000\nmax_buffered_request_bytes_per_connection = 1004".into(),
                "limits.max_buffered_request_bytes_per_connection",
            ),
            (
                "[limits]\nmax_message_bytes = 1000\nmax_buffered_request_bytes_per_connection = 5000\n\
                 max_buffered_request_bytes = 4000"
                    .into(),
                "limits.max_buffered_request_bytes",
            ),
            (
                "[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nreload_interval = \"0s\"".into(),
                "server.tls.reload_interval",
            ),
            ("[server.tls]\ncert_file = \"c\"".into(), "key_file"),
        ];
        for (toml, expected) in cases {
            let err = load(&toml).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
