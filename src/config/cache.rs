//! The response cache's section of the configuration (`[cache]`): whether whole answers of
//! `Generate`, `Chat` and `Embed` are kept and answered again, for how long, how large, and shared
//! between keys or not. See `src/cache.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The largest `max_entry_bytes`: the in-process store weighs entries in a `u32`.
pub const MAX_ENTRY_BYTES_LIMIT: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep answers and answer identical calls from them.
    pub enabled: bool,
    /// How long an answer is kept; a call may ask for less (`CacheControl.ttl`), never more.
    #[serde(with = "super::duration")]
    pub ttl: Duration,
    /// An answer larger than this, encoded, is not stored.
    pub max_entry_bytes: u64,
    /// The in-process store's size: past it, the least useful entries are evicted.
    pub max_bytes: u64,
    /// `key`: an entry is seen by the API key that stored it only; `shared`: by every key.
    pub scope: CacheScope,
    /// Only deterministic calls (`temperature` 0, or a `seed`) are cached unless the call asks
    /// (`CACHE_MODE_USE`); off, every call is.
    pub deterministic_only: bool,
    /// Identical calls that miss while the first is answering wait for its answer (per process)
    /// instead of each calling the upstream.
    pub coalesce: bool,
}

/// Whose calls see an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// The API key that stored it (with auth off there is one scope).
    #[default]
    Key,
    /// Every key.
    Shared,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(3600),
            max_entry_bytes: 1 << 20,
            max_bytes: 256 << 20,
            scope: CacheScope::Key,
            deterministic_only: true,
            coalesce: true,
        }
    }
}

impl CacheConfig {
    /// Checked at load, whether the cache is enabled or not, so that enabling it later never
    /// uncovers a mistake.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.ttl.is_zero() {
            return Err(invalid("cache.ttl", "must be more than 0s"));
        }
        if self.max_bytes == 0 {
            return Err(invalid("cache.max_bytes", "must be at least 1"));
        }
        if self.max_entry_bytes == 0 {
            return Err(invalid("cache.max_entry_bytes", "must be at least 1"));
        }
        if self.max_entry_bytes > MAX_ENTRY_BYTES_LIMIT {
            return Err(invalid(
                "cache.max_entry_bytes",
                format!("is over the limit of {MAX_ENTRY_BYTES_LIMIT} (1 GiB)"),
            ));
        }
        if self.max_entry_bytes > self.max_bytes {
            return Err(invalid(
                "cache.max_entry_bytes",
                format!(
                    "is {}, more than cache.max_bytes ({}): no such entry could be kept",
                    self.max_entry_bytes, self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_an_hour_a_mebibyte_and_256_mebibytes() {
        let config = CacheConfig::default();
        assert!(!config.enabled && config.deterministic_only);
        assert_eq!(
            (config.ttl, config.max_entry_bytes, config.max_bytes),
            (Duration::from_secs(3600), 1 << 20, 256 << 20)
        );
        assert_eq!(config.scope, CacheScope::Key);
        assert!(config.check().is_ok());
    }

    #[test]
    fn zero_sizes_and_ttl_are_refused_naming_the_key() {
        let cases = [
            (CacheConfig { ttl: Duration::ZERO, ..CacheConfig::default() }, "cache.ttl"),
            (CacheConfig { max_bytes: 0, ..CacheConfig::default() }, "cache.max_bytes"),
            (CacheConfig { max_entry_bytes: 0, ..CacheConfig::default() }, "cache.max_entry_bytes"),
            (CacheConfig { max_entry_bytes: 10, max_bytes: 5, ..CacheConfig::default() }, "cache.max_entry_bytes"),
            (
                CacheConfig {
                    max_entry_bytes: MAX_ENTRY_BYTES_LIMIT + 1,
                    max_bytes: u64::MAX,
                    ..CacheConfig::default()
                },
                "cache.max_entry_bytes",
            ),
        ];
        for (config, key) in cases {
            match config.check() {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{config:?}: {other:?}"),
            }
        }
    }

    fn load(toml: &str) -> Result<super::super::Config, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        super::super::Config::load_from(Some(file.path()), &super::super::Overrides::default(), [])
    }

    #[test]
    fn the_section_loads_and_is_checked_at_load() {
        let config = load(
            "[cache]\nenabled = true\nttl = \"1s\"\nscope = \"shared\"\ndeterministic_only = false\ncoalesce = false\n",
        )
        .unwrap();
        assert_eq!(
            config.cache,
            CacheConfig {
                enabled: true,
                ttl: Duration::from_secs(1),
                scope: CacheScope::Shared,
                deterministic_only: false,
                coalesce: false,
                ..CacheConfig::default()
            }
        );
        let error = load("[cache]\nmax_bytes = 0\n").unwrap_err().to_string();
        assert!(error.contains("`cache.max_bytes`"), "{error}");
        let error = load("[cache]\nscope = \"global\"\n").unwrap_err().to_string();
        assert!(error.contains("cache.scope"), "{error}");
    }
}
