//! API keys and other credentials: kept out of `Debug` output, logs and error messages by type.

use std::fmt;
use std::sync::Arc;

/// A credential. It has no `Display`, and its `Debug` prints `Secret(***)`, so it cannot end up in
/// a log line or an error message by accident; [`Secret::expose`] is the one way to read it, used
/// only to put it in an outgoing request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the secret in `text` (an upstream error body or header may
    /// echo it): as it is, JSON-escaped (as in a raw JSON body) and percent-encoded (as in a URL
    /// an upstream quotes back). Upstream text must go through this before it is shortened, or a
    /// key that straddles the cut survives in part (`copilot_http::quote` does both, in order).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        let mut text = text.replace(&*self.0, "***");
        for form in self.encoded_forms() {
            if text.contains(&form) {
                text = text.replace(&form, "***");
            }
        }
        text
    }

    /// The other spellings of the secret that `redact` masks, where they differ from the raw one.
    fn encoded_forms(&self) -> Vec<String> {
        let raw: &str = &self.0;
        let mut forms: Vec<String> = Vec::new();
        let mut json = String::with_capacity(raw.len());
        for c in raw.chars() {
            match c {
                '"' => json.push_str("\\\""),
                '\\' => json.push_str("\\\\"),
                c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
                c => json.push(c),
            }
        }
        forms.push(json.replace('/', "\\/"));
        forms.push(json);
        for upper in [true, false] {
            let encoded = raw
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                    b if upper => format!("%{b:02X}"),
                    b => format!("%{b:02x}"),
                })
                .collect::<String>();
            forms.push(encoded);
        }
        forms.retain(|form| form != raw);
        forms.sort();
        forms.dedup();
        forms
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let key = Secret::new("sk-live-123456");
        assert_eq!(format!("{key:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(key.clone())), "Some(Secret(***))");
        assert_eq!(key.expose(), "sk-live-123456");
        assert_eq!(key.redact("bad key sk-live-123456 given"), "bad key *** given");
    }

    #[test]
    fn escaped_spellings_of_the_key_are_masked_too() {
        let key = Secret::new("sk-a/b+\"c\\d");
        let json = r#"{"error":"bad key sk-a/b+\"c\\d or sk-a\/b+\"c\\d"}"#;
        assert_eq!(key.redact(json), r#"{"error":"bad key *** or ***"}"#);
        assert_eq!(key.redact("GET /v1?key=sk-a%2Fb%2B%22c%5Cd&k=sk-a%2fb%2b%22c%5cd"), "GET /v1?key=***&k=***");
        assert_eq!(key.redact("raw sk-a/b+\"c\\d"), "raw ***");
        assert_eq!(Secret::new("abc").redact("abc"), "abc", "too short to mask without masking everything");
    }
}
