//! The response cache's key: SHA-256 over the canonical encoding of everything that changes the
//! answer. The encoding is `serde_json` of `#[derive(Serialize)]` types — the validated request
//! (`ValidRequest`, `ValidEmbed`) and the `copilot_provider` types it holds — so a field added to a
//! request is in the key without anyone remembering it (serde's derive includes every field that
//! is not skipped, and none is). The JSON is streamed into the hash, never held whole.
//!
//! In it: a version string (changing the encoding changes every key), the scope (the API key's
//! name, or shared), the method, the route as `Plan` resolved it with every target and the
//! defaults each target's instance applies to unset options, and the request. Not in it: the
//! call's `CacheControl` (validation keeps it out of the request), its deadline and metadata.
//!
//! The request holds no JSON values (`serde_json::Value`): tool schemas, arguments and response
//! schemas stay the text the client wrote, so the map order of `serde_json` (its
//! `preserve_order` feature) cannot move a key; two spellings of one schema are two keys, a miss
//! only. Floats encode with ryu's shortest form: `0.0` and `-0.0` differ, also a miss only.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::DefaultOptions;
use crate::router::Plan;
use crate::validate::{ValidEmbed, ValidRequest};

/// The first thing hashed: another encoding must be another version.
pub const KEY_VERSION: &str = "copilot-cache-v1";

/// An entry's key: a SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn from_bytes(bytes: [u8; 32]) -> CacheKey {
        CacheKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// Whose entries a call sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scope<'a> {
    /// Every caller's (`cache.scope = "shared"`, or auth off).
    Shared,
    /// One API key's, by its name (names are unique, checked at load; the name is never stored,
    /// only hashed into the key).
    Key(&'a str),
}

/// The method answered: `Generate` and `Chat` of one request are different entries (their
/// answers are stored in different forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Method {
    Generate,
    Chat,
    Embed,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Generate => "Generate",
            Method::Chat => "Chat",
            Method::Embed => "Embed",
        }
    }
}

/// What was asked, validated.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Asked<'a> {
    Completion(&'a ValidRequest),
    Embedding(&'a ValidEmbed),
}

/// One target of the route, as the key sees it.
#[derive(Serialize)]
struct RouteTarget<'a> {
    instance: &'a str,
    model: &'a str,
    /// What the instance fills in for options the request leaves unset.
    defaults: &'a DefaultOptions,
}

#[derive(Serialize)]
struct Route<'a> {
    alias: Option<&'a str>,
    tiers: Vec<Vec<RouteTarget<'a>>>,
}

impl<'a> Route<'a> {
    fn of(plan: &'a Plan) -> Route<'a> {
        let tiers = plan
            .tiers
            .iter()
            .map(|tier| {
                tier.iter()
                    .map(|target| RouteTarget {
                        instance: &target.instance.name,
                        model: &target.model,
                        defaults: &target.instance.defaults,
                    })
                    .collect()
            })
            .collect();
        Route { alias: plan.alias.as_deref(), tiers }
    }
}

#[derive(Serialize)]
struct Material<'a> {
    version: &'static str,
    scope: Scope<'a>,
    method: Method,
    route: Route<'a>,
    request: Asked<'a>,
}

/// The key of `request` sent to `method`, routed by `plan`, in `scope`. `None` only if the
/// request cannot be encoded, which the types allow no way for (the call then bypasses the cache).
pub fn key(scope: Scope<'_>, method: Method, plan: &Plan, request: Asked<'_>) -> Option<CacheKey> {
    let material = Material { version: KEY_VERSION, scope, method, route: Route::of(plan), request };
    let mut hasher = HashWriter(Sha256::new());
    material.serialize(&mut serde_json::Serializer::with_formatter(&mut hasher, KeyFormatter)).ok()?;
    Some(CacheKey(hasher.0.finalize().into()))
}

/// `serde_json`'s compact form, except for bytes (images, signatures, which `copilot_provider`
/// serializes as bytes): those go into the hash as they are, after their length, rather than as
/// a JSON array of numbers (four times the bytes, each written apart). `<` begins no JSON value
/// and the length says where the bytes end, so the encoding stays unambiguous.
struct KeyFormatter;

impl serde_json::ser::Formatter for KeyFormatter {
    fn write_byte_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
        write!(writer, "<{}:", bytes.len())?;
        writer.write_all(bytes)?;
        writer.write_all(b">")
    }
}

/// Feeds what is written into the hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use copilot_provider::{
        Effort, EmbeddingTask, GenerationOptions, Image, ImageSource, Message, Part, Reasoning, ReasoningAmount,
        ResponseFormat, Role, Thinking, Tool, ToolCall, ToolChoice,
    };

    use super::*;
    use crate::router::Target;
    use crate::router::tests::instance;

    fn plan() -> Plan {
        Plan { alias: None, tiers: vec![vec![Target { instance: Arc::new(instance("ollama")), model: "m".into() }]] }
    }

    /// A request with every field set, written out whole: a field added to `ValidRequest` (or to
    /// the options, messages, parts and tools it holds) fails to compile here until it is given a
    /// value, and a line below that changes it.
    fn full_request() -> ValidRequest {
        ValidRequest {
            model: "ollama/m".into(),
            messages: vec![
                Message { role: Role::System, parts: vec![Part::Text("be brief".into())], tool_call_id: None },
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Text("what is this?".into()),
                        Part::Image(Image { source: ImageSource::Data(vec![1, 2, 3]), mime_type: "image/png".into() }),
                    ],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Thinking(Thinking { text: "hm".into(), signature: vec![9], redacted: false }),
                        Part::ToolCall(ToolCall {
                            id: "c1".into(),
                            name: "look".into(),
                            arguments: "{}".into(),
                            signature: vec![],
                        }),
                    ],
                    tool_call_id: None,
                },
                Message { role: Role::Tool, parts: vec![Part::Text("a cat".into())], tool_call_id: Some("c1".into()) },
            ],
            options: GenerationOptions {
                temperature: Some(0.0),
                max_tokens: Some(64),
                top_p: Some(0.9),
                top_k: Some(40),
                stop: vec!["\n\n".into()],
                seed: Some(7),
            },
            tools: vec![Tool {
                name: "look".into(),
                description: "looks".into(),
                parameters: Some(r#"{"type":"object"}"#.into()),
                strict: false,
            }],
            tool_choice: Some(ToolChoice::Auto),
            response_format: ResponseFormat::JsonSchema { name: "r".into(), schema: "{}".into(), strict: true },
            reasoning: Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::Low), include_thoughts: false }),
        }
    }

    fn of(request: &ValidRequest) -> CacheKey {
        key(Scope::Shared, Method::Chat, &plan(), Asked::Completion(request)).unwrap()
    }

    type Change = fn(&mut ValidRequest);

    #[test]
    fn changing_any_field_of_the_request_changes_the_key() {
        let changes: &[(&str, Change)] = &[
            ("model", |r| r.model = "ollama/m2".into()),
            ("messages: one more", |r| r.messages.push(Message::text(Role::User, "and?"))),
            ("messages[].role", |r| r.messages[0].role = Role::User),
            ("messages[].parts: text", |r| r.messages[0].parts[0] = Part::Text("be long".into())),
            ("messages[].tool_call_id", |r| r.messages[3].tool_call_id = Some("c2".into())),
            ("image bytes", |r| {
                r.messages[1].parts[1] =
                    Part::Image(Image { source: ImageSource::Data(vec![1, 2, 4]), mime_type: "image/png".into() })
            }),
            ("image url", |r| {
                r.messages[1].parts[1] =
                    Part::Image(Image { source: ImageSource::Url("https://x/y.png".into()), mime_type: "".into() })
            }),
            ("image mime type", |r| {
                r.messages[1].parts[1] =
                    Part::Image(Image { source: ImageSource::Data(vec![1, 2, 3]), mime_type: "image/gif".into() })
            }),
            ("thinking text", |r| {
                r.messages[2].parts[0] =
                    Part::Thinking(Thinking { text: "hmm".into(), signature: vec![9], redacted: false })
            }),
            ("thinking signature", |r| {
                r.messages[2].parts[0] =
                    Part::Thinking(Thinking { text: "hm".into(), signature: vec![8], redacted: false })
            }),
            ("thinking redacted", |r| {
                r.messages[2].parts[0] =
                    Part::Thinking(Thinking { text: "hm".into(), signature: vec![9], redacted: true })
            }),
            ("tool call id", |r| {
                r.messages[2].parts[1] = Part::ToolCall(ToolCall {
                    id: "c2".into(),
                    name: "look".into(),
                    arguments: "{}".into(),
                    signature: vec![],
                })
            }),
            ("tool call name", |r| {
                r.messages[2].parts[1] = Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "see".into(),
                    arguments: "{}".into(),
                    signature: vec![],
                })
            }),
            ("tool call arguments", |r| {
                r.messages[2].parts[1] = Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "look".into(),
                    arguments: "{\"a\":1}".into(),
                    signature: vec![],
                })
            }),
            ("tool call signature", |r| {
                r.messages[2].parts[1] = Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "look".into(),
                    arguments: "{}".into(),
                    signature: vec![1],
                })
            }),
            ("options.temperature", |r| r.options.temperature = Some(0.5)),
            ("options.temperature unset", |r| r.options.temperature = None),
            ("options.max_tokens", |r| r.options.max_tokens = Some(65)),
            ("options.top_p", |r| r.options.top_p = Some(0.8)),
            ("options.top_k", |r| r.options.top_k = Some(41)),
            ("options.stop", |r| r.options.stop.push("END".into())),
            ("options.seed", |r| r.options.seed = Some(8)),
            ("tools[].name", |r| r.tools[0].name = "see".into()),
            ("tools[].description", |r| r.tools[0].description = "sees".into()),
            ("tools[].parameters", |r| r.tools[0].parameters = None),
            ("tools[].strict", |r| r.tools[0].strict = true),
            ("tool_choice", |r| r.tool_choice = Some(ToolChoice::Required)),
            ("tool_choice unset", |r| r.tool_choice = None),
            ("tool_choice named", |r| r.tool_choice = Some(ToolChoice::Named("look".into()))),
            ("response_format", |r| r.response_format = ResponseFormat::JsonObject),
            ("response_format schema", |r| {
                r.response_format = ResponseFormat::JsonSchema { name: "r".into(), schema: "{ }".into(), strict: true }
            }),
            ("response_format strict", |r| {
                r.response_format = ResponseFormat::JsonSchema { name: "r".into(), schema: "{}".into(), strict: false }
            }),
            ("reasoning off", |r| r.reasoning = Some(Reasoning::Off)),
            ("reasoning unset", |r| r.reasoning = None),
            ("reasoning effort", |r| {
                r.reasoning =
                    Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::High), include_thoughts: false })
            }),
            ("reasoning budget", |r| {
                r.reasoning = Some(Reasoning::On { amount: ReasoningAmount::BudgetTokens(64), include_thoughts: false })
            }),
            ("reasoning thoughts", |r| {
                r.reasoning =
                    Some(Reasoning::On { amount: ReasoningAmount::Effort(Effort::Low), include_thoughts: true })
            }),
        ];
        let base = full_request();
        let base_key = of(&base);
        assert_eq!(of(&full_request()), base_key, "the key is a function of the request");
        let mut seen = std::collections::HashMap::new();
        for (name, change) in changes {
            let mut changed = full_request();
            change(&mut changed);
            assert_ne!(changed, base, "{name} changed nothing");
            let changed_key = of(&changed);
            assert_ne!(changed_key, base_key, "{name} did not change the key");
            if let Some(other) = seen.insert(changed_key, *name) {
                panic!("{name} and {other} give the same key");
            }
        }
    }

    #[test]
    fn every_field_of_an_embed_request_is_in_the_key() {
        let base = ValidEmbed {
            model: "ollama/e".into(),
            inputs: vec!["a".into(), "b".into()],
            dimensions: Some(8),
            task: EmbeddingTask::Query,
            truncate: false,
        };
        let of = |request: &ValidEmbed| key(Scope::Shared, Method::Embed, &plan(), Asked::Embedding(request)).unwrap();
        type EmbedChange = fn(&mut ValidEmbed);
        let changes: &[(&str, EmbedChange)] = &[
            ("model", |r| r.model = "ollama/f".into()),
            ("inputs", |r| r.inputs.reverse()),
            ("inputs split differently", |r| r.inputs = vec!["ab".into()]),
            ("dimensions", |r| r.dimensions = None),
            ("task", |r| r.task = EmbeddingTask::Document),
            ("truncate", |r| r.truncate = true),
        ];
        for (name, change) in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(of(&changed), of(&base), "{name} did not change the key");
        }
    }

    #[test]
    fn scope_method_and_route_are_in_the_key() {
        let request = full_request();
        let base = key(Scope::Key("a"), Method::Chat, &plan(), Asked::Completion(&request)).unwrap();
        let other_key = key(Scope::Key("b"), Method::Chat, &plan(), Asked::Completion(&request)).unwrap();
        let shared = key(Scope::Shared, Method::Chat, &plan(), Asked::Completion(&request)).unwrap();
        let named_shared = key(Scope::Key("Shared"), Method::Chat, &plan(), Asked::Completion(&request)).unwrap();
        let generate = key(Scope::Key("a"), Method::Generate, &plan(), Asked::Completion(&request)).unwrap();
        let keys = [base, other_key, shared, named_shared, generate];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");

        // An alias whose targets change is another key; so is a target's instance defaults.
        let target = |name: &str, model: &str| Target { instance: Arc::new(instance(name)), model: model.into() };
        let alias = |tiers: Vec<Vec<Target>>| Plan { alias: Some("fast".into()), tiers };
        let route_key = |plan: &Plan| key(Scope::Key("a"), Method::Chat, plan, Asked::Completion(&request)).unwrap();
        let one = route_key(&alias(vec![vec![target("ollama", "m")]]));
        let two = route_key(&alias(vec![vec![target("ollama", "m")], vec![target("openai", "m")]]));
        let replicas = route_key(&alias(vec![vec![target("ollama", "m"), target("openai", "m")]]));
        let other_model = route_key(&alias(vec![vec![target("ollama", "n")]]));
        let mut warm = instance("ollama");
        warm.defaults.temperature = Some(0.9);
        let defaults = route_key(&alias(vec![vec![Target { instance: Arc::new(warm), model: "m".into() }]]));
        let keys = [one, two, replicas, other_model, defaults, base];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    }

    /// The call's `CacheControl` is not in the validated request, so not in the key.
    #[test]
    fn cache_control_is_not_in_the_key() {
        use crate::proto::v1 as pb;
        let limits = crate::config::LimitsConfig::default();
        let request =
            |cache: Option<pb::CacheControl>| pb::GenerateRequest { prompt: "hi".into(), cache, ..Default::default() };
        let plain = crate::validate::generate(request(None), &limits).unwrap();
        let controlled = crate::validate::generate(
            request(Some(pb::CacheControl {
                mode: pb::CacheMode::Refresh as i32,
                ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            })),
            &limits,
        )
        .unwrap();
        assert_eq!(of(&plain), of(&controlled));
    }

    /// Bytes (an image's, a signature) are encoded as themselves after their length, not as JSON
    /// numbers; the rest is compact JSON.
    #[test]
    fn bytes_are_encoded_as_they_are() {
        let image = Image { source: ImageSource::Data(vec![1, b'>', 3]), mime_type: "image/png".into() };
        let mut encoded = Vec::new();
        image.serialize(&mut serde_json::Serializer::with_formatter(&mut encoded, KeyFormatter)).unwrap();
        assert_eq!(encoded, b"{\"source\":{\"Data\":<3:\x01>\x03>},\"mime_type\":\"image/png\"}");
    }

    #[test]
    fn keys_print_as_64_hex_digits() {
        let printed = of(&full_request()).to_string();
        assert_eq!(printed.len(), 64);
        assert!(printed.chars().all(|c| c.is_ascii_hexdigit()), "{printed}");
    }
}
