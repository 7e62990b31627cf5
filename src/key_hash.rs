//! API keys and their hashes. Keys are long random strings, so a fast hash is enough to keep them
//! out of the configuration (a slow password hash would cost milliseconds per call and protect
//! nothing more); presented keys are compared to the configured hashes in constant time.
//!
//! Its own module, beside both: the configuration reads hashes (`auth.keys[].hash`) and the auth
//! layer compares them, and neither depends on the other for it.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sha256:";
/// Marks Copilot keys, so that secret scanners and people can recognise one.
const KEY_PREFIX: &str = "cpk_";
const KEY_BYTES: usize = 32;

/// The SHA-256 of an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`, as `copilot keys new` prints it.
    pub fn parse(text: &str) -> Result<KeyHash, String> {
        let Some(hex) = text.trim().strip_prefix(PREFIX) else {
            return Err("must be `sha256:` followed by 64 hex digits (`copilot keys new` prints one)".into());
        };
        let mut bytes = [0u8; 32];
        if hex.len() != 64 {
            return Err(format!("has {} hex digits after `sha256:`; a SHA-256 has 64", hex.len()));
        }
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok());
            *byte = pair.ok_or("has a character that is not a hex digit after `sha256:`")?;
        }
        Ok(KeyHash(bytes))
    }

    /// Compares in constant time, so response timing says nothing about how close a guess was.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parsed where the configuration is read, so a bad hash is refused with its key named.
impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        KeyHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// A fresh key: 256 bits from the operating system's random source.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes)?;
    let mut key = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_BYTES);
    key.push_str(KEY_PREFIX);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_prints_and_parses_back() {
        let hash = KeyHash::of("cpk_secret");
        let text = hash.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64, "{text}");
        assert_eq!(KeyHash::parse(&text).unwrap(), hash);
        assert_eq!(KeyHash::parse(&text.to_uppercase().replace("SHA256:", "sha256:")).unwrap(), hash);
    }

    #[test]
    fn the_known_sha256_of_a_string() {
        // `printf abc | sha256sum`
        let expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(KeyHash::of("abc").to_string(), expected);
    }

    #[test]
    fn only_the_right_key_matches() {
        let hash = KeyHash::of("cpk_right");
        assert!(hash.matches(&KeyHash::of("cpk_right")));
        assert!(!hash.matches(&KeyHash::of("cpk_wrong")));
        assert!(!hash.matches(&KeyHash::of("")));
    }

    #[test]
    fn malformed_hashes_are_explained() {
        assert!(KeyHash::parse("ba7816bf").unwrap_err().contains("sha256:"));
        assert!(KeyHash::parse("sha256:abc").unwrap_err().contains("3 hex digits"));
        let not_hex = format!("sha256:{}", "g".repeat(64));
        assert!(KeyHash::parse(&not_hex).unwrap_err().contains("not a hex digit"));
        let multibyte = format!("sha256:{}é", "a".repeat(62));
        assert!(KeyHash::parse(&multibyte).is_err());
    }

    #[test]
    fn new_keys_are_long_and_different() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("cpk_") && a.len() == 4 + 64, "{a}");
    }

    #[test]
    fn debug_hides_the_hash() {
        assert_eq!(format!("{:?}", KeyHash::of("x")), "KeyHash(..)");
    }
}
