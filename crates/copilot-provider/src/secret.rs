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

    /// Replaces every occurrence of the secret in `text` (an upstream error body may echo it).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 { text.to_string() } else { text.replace(&*self.0, "***") }
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
}
