//! Grammars that constrain sampling: llama.cpp converts a JSON Schema into GBNF, and the grammar
//! sampler then lets through only tokens that keep the answer inside it, so the output parses and
//! validates by construction (up to `max_tokens`: a cut answer is cut JSON).
//!
//! - `response_format` json_object: the schema `{"type": "object"}`, any JSON object;
//! - json_schema: the client's schema, as written;
//! - a forced tool choice (`required`, or a named tool): one `<tool_call>` block holding
//!   `{"name": <a tool's name>, "arguments": <that tool's parameters>}`, the format Qwen-style
//!   templates teach the model; `auto`: the same grammar, lazy — dormant until the model writes
//!   `<tool_call>` itself.
//!
//! Converting a schema costs far more than parsing its GBNF, so conversions are cached by the
//! schema's hash (bounded, oldest out first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use copilot_provider::{ProviderError, Tool};
use sha2::{Digest, Sha256};

/// The root rule of the GBNF llama.cpp's converter writes.
pub const ROOT: &str = "root";

/// The root rule of a tool-call grammar: the converter's `root` wrapped in the block's tags.
pub const TOOL_CALL_ROOT: &str = "copilot-tool-call";

/// What opens a tool call in the Qwen/Hermes format, and triggers the lazy grammar.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// Any JSON object.
pub const JSON_OBJECT_SCHEMA: &str = r#"{"type": "object"}"#;

/// Schemas whose grammar is kept; a client cycling through more just converts again.
const CACHED_GRAMMARS: usize = 64;

/// The GBNF of a schema, or why llama.cpp could not convert it.
type Conversion = Result<Arc<str>, String>;

/// A bounded cache of schema conversions, keyed by the SHA-256 of the schema's text.
#[derive(Default)]
pub struct GrammarCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    by_hash: HashMap<[u8; 32], Conversion>,
    /// Insertion order, for eviction.
    order: VecDeque<[u8; 32]>,
}

impl GrammarCache {
    /// The GBNF for `schema` (JSON Schema text), whose root rule is [`ROOT`].
    pub fn schema(&self, schema: &str) -> Result<Arc<str>, ProviderError> {
        let key: [u8; 32] = Sha256::digest(schema.as_bytes()).into();
        if let Some(hit) = self.entries.lock().ok().and_then(|e| e.by_hash.get(&key).cloned()) {
            return hit.map_err(ProviderError::InvalidRequest);
        }
        let converted = convert(schema);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.by_hash.len() >= CACHED_GRAMMARS
                && let Some(oldest) = entries.order.pop_front()
            {
                entries.by_hash.remove(&oldest);
            }
            if entries.by_hash.insert(key, converted.clone()).is_none() {
                entries.order.push_back(key);
            }
        }
        converted.map_err(ProviderError::InvalidRequest)
    }

    /// The GBNF for one `<tool_call>` block calling one of `tools`; its root rule is
    /// [`TOOL_CALL_ROOT`].
    pub fn tool_call(&self, tools: &[&Tool]) -> Result<String, ProviderError> {
        let schema = tool_call_schema(tools);
        let inner = self.schema(&schema)?;
        // The tags are plain text to the grammar; Qwen's vocabulary has each as one token, whose
        // text llama.cpp's grammar matches like any other.
        Ok(format!(
            "{inner}\n{TOOL_CALL_ROOT} ::= {} {ROOT} {}\n",
            gbnf_literal(&format!("{TOOL_CALL_OPEN}\n")),
            gbnf_literal(&format!("\n{TOOL_CALL_CLOSE}")),
        ))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.by_hash.len()).unwrap_or(0)
    }
}

fn convert(schema: &str) -> Conversion {
    llama_cpp_2::json_schema_to_grammar(schema).map(Arc::from).map_err(|_| {
        // llama.cpp's exception text does not cross its C boundary; name what it rejects.
        let mut message = String::from(
            "llama.cpp cannot turn the JSON Schema into a grammar for constrained sampling (it supports the \
             types, properties, required, additionalProperties, items, enum, const, anyOf/oneOf/allOf, \
             string formats and patterns, and $ref within the schema)",
        );
        if let Some(reference) = remote_ref(schema) {
            message.push_str(&format!("; it cannot follow the $ref \"{reference}\" outside the schema"));
        }
        message
    })
}

/// A `$ref` that does not point inside the schema (`#...`), which llama.cpp cannot resolve.
fn remote_ref(schema: &str) -> Option<String> {
    fn walk(value: &serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(target)) = map.get("$ref")
                    && !target.starts_with('#')
                {
                    return Some(target.clone());
                }
                map.values().find_map(walk)
            }
            serde_json::Value::Array(items) => items.iter().find_map(walk),
            _ => None,
        }
    }
    walk(&serde_json::from_str(schema).ok()?)
}

/// `{"name": <one of the names>, "arguments": <its parameters>}`, written out by hand: the
/// converter follows `properties` in the order written, and `name` must come first as the
/// template's example shows it.
fn tool_call_schema(tools: &[&Tool]) -> String {
    let one = |tool: &Tool| {
        let name = serde_json::Value::String(tool.name.clone());
        let parameters = tool.parameters.as_deref().unwrap_or(r#"{"type": "object", "properties": {}}"#);
        format!(
            r#"{{"type": "object", "properties": {{"name": {{"const": {name}}}, "arguments": {parameters}}}, "required": ["name", "arguments"], "additionalProperties": false}}"#
        )
    };
    match tools {
        [only] => one(only),
        _ => format!(r#"{{"anyOf": [{}]}}"#, tools.iter().map(|t| one(t)).collect::<Vec<_>>().join(", ")),
    }
}

/// A GBNF string literal.
fn gbnf_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Option<&str>) -> Tool {
        Tool { name: name.into(), description: String::new(), parameters: parameters.map(str::to_owned), strict: false }
    }

    #[test]
    fn a_schema_converts_to_gbnf_with_a_root_rule() {
        let cache = GrammarCache::default();
        let gbnf = cache
            .schema(r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#)
            .unwrap();
        assert!(gbnf.contains("root ::="), "{gbnf}");
        assert!(gbnf.contains("city"), "{gbnf}");
    }

    #[test]
    fn conversions_are_cached_by_schema_and_bounded() {
        let cache = GrammarCache::default();
        let first = cache.schema(JSON_OBJECT_SCHEMA).unwrap();
        let again = cache.schema(JSON_OBJECT_SCHEMA).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second request reuses the conversion");
        for i in 0..CACHED_GRAMMARS + 10 {
            cache.schema(&format!(r#"{{"type": "object", "properties": {{"p{i}": {{"type": "integer"}}}}}}"#)).unwrap();
        }
        assert_eq!(cache.len(), CACHED_GRAMMARS);
    }

    #[test]
    fn an_unconvertible_schema_is_an_invalid_request_naming_the_problem() {
        let cache = GrammarCache::default();
        let err = cache.schema(r#"{"$ref": "https://example.com/person.json"}"#).unwrap_err();
        let ProviderError::InvalidRequest(message) = err else { panic!("{err:?}") };
        assert!(message.contains("JSON Schema") && message.contains("https://example.com/person.json"), "{message}");
        // Failures are cached too, and stay failures.
        assert!(cache.schema(r#"{"$ref": "https://example.com/person.json"}"#).is_err());
    }

    #[test]
    fn tool_call_grammar_wraps_the_call_object_in_its_tags() {
        let cache = GrammarCache::default();
        let weather = tool("get_weather", Some(r#"{"type": "object", "properties": {"city": {"type": "string"}}}"#));
        let time = tool("get_time", None);
        let gbnf = cache.tool_call(&[&weather, &time]).unwrap();
        assert!(gbnf.contains(&format!(r#"{TOOL_CALL_ROOT} ::= "<tool_call>\n" root "\n</tool_call>""#)), "{gbnf}");
        assert!(gbnf.contains("get_weather") && gbnf.contains("get_time"), "{gbnf}");
        let schema = tool_call_schema(&[&weather]);
        let parsed: serde_json::Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(parsed["properties"]["name"]["const"], "get_weather");
        assert!(schema.find("\"name\"").unwrap() < schema.find("\"arguments\"").unwrap());
    }

    #[test]
    fn gbnf_literals_escape_quotes_and_newlines() {
        assert_eq!(gbnf_literal("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }
}
