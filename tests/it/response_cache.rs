//! The response cache through the real binary (issue 18, stage 3): a miss then a hit that never
//! reaches the upstream (the fakes count its calls), byte for byte; `Chat` replayed with the
//! original usage and `cached` on every message, thinking and tool calls keeping their bounds;
//! what changes the key (an option, the API key unless entries are shared); ttls; the per-call
//! modes and the cache off; what is never stored (errors, cancelled streams, filtered answers,
//! answers over `max_entry_bytes`); `Embed`; the budgets a hit spends; the span attribute and the
//! metrics.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{
    CacheControl, CacheMode, ChatRequest, ChatResponse, EmbedRequest, FinishReason, GenerateRequest, GenerateResponse,
    GenerationOptions,
};
use copilot_fakes::{Behaviour, FakeGemini, FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::{Copilot, OLLAMA_ONLY, sample, within};
use crate::requests::{reason, user, with_key};

const LIMIT: Duration = Duration::from_secs(20);

/// The reply of the fake's model `m`, in these chunks.
const TOKENS: [&str; 5] = ["Paris", " is", " the", " capital", " of France."];

fn model(tokens: &[&str]) -> FakeModel {
    FakeModel::new("m").with_reply(Reply::Tokens(tokens.iter().map(|t| t.to_string()).collect()))
}

/// A fake Ollama serving `m`, and a copilot in front of it with `[cache]` holding `cache`
/// (no `[cache]` section at all when `None`) and `extra` configuration.
async fn start(cache: Option<&str>, extra: &str, env: &[(&str, String)]) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(model(&TOKENS));
    let section = cache.map(|c| format!("[cache]\nenabled = true\n{c}\n")).unwrap_or_default();
    let config = format!("{OLLAMA_ONLY}{section}{extra}");
    let mut all = vec![("OLLAMA_HOST", fake.base_url())];
    all.extend(env.iter().cloned());
    let copilot = Copilot::start_with(&config, &all).await;
    (fake, copilot)
}

pub fn greedy() -> Option<GenerationOptions> {
    Some(GenerationOptions { temperature: Some(0.0), ..Default::default() })
}

fn generate_request(prompt: &str, options: Option<GenerationOptions>, mode: Option<CacheMode>) -> GenerateRequest {
    GenerateRequest {
        model: "ollama/m".into(),
        prompt: prompt.into(),
        options,
        cache: mode.map(|mode| CacheControl { mode: mode as i32, ttl: None }),
        ..Default::default()
    }
}

fn chat_request(content: &str, options: Option<GenerationOptions>) -> ChatRequest {
    ChatRequest { model: "ollama/m".into(), messages: vec![user(content)], options, ..Default::default() }
}

pub async fn generate(
    client: &mut CopilotClient<Channel>,
    request: impl tonic::IntoRequest<GenerateRequest>,
) -> Result<GenerateResponse, Status> {
    within(LIMIT, client.generate(request)).await.map(tonic::Response::into_inner)
}

pub async fn chat(client: &mut CopilotClient<Channel>, request: ChatRequest) -> Result<Vec<ChatResponse>, Status> {
    let mut stream = within(LIMIT, client.chat(request)).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(message) = within(LIMIT, stream.next()).await {
        messages.push(message?);
    }
    Ok(messages)
}

/// The upstream calls the fake received.
fn calls(fake: &FakeOllama) -> usize {
    fake.chat_requests().len()
}

/// The stored answer and the replayed one are the same answer; only `cached` and `timing` differ.
fn assert_same_answer(replayed: &GenerateResponse, original: &GenerateResponse) {
    assert!(replayed.cached && !original.cached);
    let strip = |r: &GenerateResponse| GenerateResponse { cached: false, timing: None, ..r.clone() };
    assert_eq!(strip(replayed), strip(original));
    assert_eq!(replayed.text.as_bytes(), original.text.as_bytes(), "byte-identical text");
}

#[tokio::test]
async fn a_generate_miss_then_a_hit_is_byte_identical_and_the_upstream_sees_one_call() {
    let collector = copilot_fakes::otlp::FakeCollector::start().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY", "100".into())];
    let (fake, copilot) = start(Some(""), "", &env).await;
    let mut client = copilot.client().await;

    let first = generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap();
    assert_eq!(first.text, TOKENS.concat());
    assert_eq!(first.finish_reason, FinishReason::Stop as i32);
    assert!(first.usage.unwrap().output_tokens > 0);
    let second = generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap();
    assert_same_answer(&second, &first);
    assert_eq!(calls(&fake), 1, "the hit did not reach the upstream");
    // The replay's own timing: a total duration, and nothing about generation.
    let timing = second.timing.unwrap();
    assert!(timing.total_duration.is_some() && timing.time_to_first_token.is_none());
    assert_eq!(timing.output_tokens_per_second, 0.0);

    // The call spans say what the cache did; the hit has no upstream attempt under it.
    let spans = |result: &'static str| {
        let collector = &collector;
        async move {
            collector
                .wait_for_span(LIMIT, |s| {
                    s.name == "copilot.v1.Copilot/Generate" && s.str_attr("copilot.cache") == Some(result)
                })
                .await
                .unwrap_or_else(|| panic!("no Generate span with copilot.cache = {result}: {:?}", collector.spans()))
        }
    };
    let (miss, hit) = (spans("miss").await, spans("hit").await);
    let attempts_under = |parent: &copilot_fakes::otlp::RecordedSpan| {
        collector.spans().iter().filter(|s| s.trace_id == parent.trace_id && s.name.starts_with("chat ")).count()
    };
    assert_eq!((attempts_under(&miss), attempts_under(&hit)), (1, 0));
}

#[tokio::test]
async fn a_chat_hit_replays_the_stream_with_its_usage_and_cached_on_every_message() {
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let mut client = copilot.client().await;

    let original = chat(&mut client, chat_request("capital?", greedy())).await.unwrap();
    let replay = chat(&mut client, chat_request("capital?", greedy())).await.unwrap();
    assert_eq!(calls(&fake), 1, "the replay did not reach the upstream");

    let text = |messages: &[ChatResponse]| messages.iter().map(|m| m.content.as_str()).collect::<String>();
    assert_eq!(text(&replay), TOKENS.concat());
    assert_eq!(text(&replay).as_bytes(), text(&original).as_bytes());
    assert!(original.iter().all(|m| !m.cached), "{original:?}");
    assert!(replay.iter().all(|m| m.cached), "cached on every message: {replay:?}");
    // The text chunks come back merged into one message, then the last one.
    assert!(original.len() > TOKENS.len(), "{original:?}");
    assert_eq!(replay.len(), 2, "{replay:?}");
    let (first, last) = (original.last().unwrap(), replay.last().unwrap());
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!((&last.usage, &last.model), (&first.usage, &first.model), "the original usage and model");
    assert!(last.usage.unwrap().output_tokens > 0);
    let timing = last.timing.unwrap();
    assert!(timing.total_duration.is_some() && timing.time_to_first_token.is_none(), "{timing:?}");
    assert!(replay[..1].iter().all(|m| m.usage.is_none() && m.finish_reason == 0));

    // Generate's entries are not Chat's.
    let generated = generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap();
    assert!(!generated.cached);
    assert_eq!(calls(&fake), 2);
}

#[tokio::test]
async fn a_changed_option_is_a_miss() {
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let mut client = copilot.client().await;
    let with_max_tokens =
        Some(GenerationOptions { temperature: Some(0.0), max_tokens: Some(64), ..Default::default() });
    let seeded = Some(GenerationOptions { seed: Some(7), ..Default::default() });

    assert!(!generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital?", with_max_tokens.clone(), None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital?", seeded.clone(), None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital!", greedy(), None)).await.unwrap().cached);
    assert_eq!(calls(&fake), 4);
    for options in [greedy(), with_max_tokens, seeded] {
        assert!(generate(&mut client, generate_request("capital?", options, None)).await.unwrap().cached);
    }
    assert_eq!(calls(&fake), 4);
}

const ALPHA: &str = "cpk_alpha_test_key";
const ALPHA_HASH: &str = "sha256:4d63903d956a1bdd30396662a5d2e3ef5b6b3244b1f41395b23e718b725b3838";
const BETA: &str = "cpk_beta_test_key";
const BETA_HASH: &str = "sha256:48ffb00b7b7429d9ed66661fcfdd9a607b9e14dff6d5122cb042f6be047d9f16";

fn keys(alpha_extra: &str) -> String {
    format!(
        "[auth]\nenabled = true\n\
         [[auth.keys]]\nname = \"alpha\"\nhash = \"{ALPHA_HASH}\"\n{alpha_extra}\n\
         [[auth.keys]]\nname = \"beta\"\nhash = \"{BETA_HASH}\"\n"
    )
}

#[tokio::test]
async fn another_key_is_a_miss_when_scoped_by_key_and_a_hit_when_shared() {
    let (fake, copilot) = start(Some("scope = \"key\""), &keys(""), &[]).await;
    let mut client = copilot.client().await;
    let call = |key| with_key(generate_request("capital?", greedy(), None), key);
    assert!(!generate(&mut client, call(ALPHA)).await.unwrap().cached);
    assert!(generate(&mut client, call(ALPHA)).await.unwrap().cached);
    assert!(!generate(&mut client, call(BETA)).await.unwrap().cached, "beta does not see alpha's answer");
    assert!(generate(&mut client, call(BETA)).await.unwrap().cached);
    assert_eq!(calls(&fake), 2);

    let (fake, copilot) = start(Some("scope = \"shared\""), &keys(""), &[]).await;
    let mut client = copilot.client().await;
    let original = generate(&mut client, call(ALPHA)).await.unwrap();
    let shared = generate(&mut client, call(BETA)).await.unwrap();
    assert_same_answer(&shared, &original);
    assert_eq!(calls(&fake), 1);
}

#[tokio::test]
async fn a_hit_spends_one_of_the_keys_requests_but_none_of_its_tokens() {
    // 80 tokens of output: the miss settles at more than 80 of the key's 100 tokens a minute, so
    // another real call (reserving 40 + the prompt) no longer fits, while hits need none.
    let long: Vec<String> = (0..80).map(|i| format!(" w{i}")).collect();
    let (fake, copilot) = start(Some(""), &keys("requests_per_minute = 4\ntokens_per_minute = 60"), &[]).await;
    fake.add_model(model(&long.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut client = copilot.client().await;
    let options = Some(GenerationOptions { temperature: Some(0.0), max_tokens: Some(40), ..Default::default() });
    let call = |mode| with_key(generate_request("capital?", options.clone(), mode), ALPHA);

    assert!(!generate(&mut client, call(None)).await.unwrap().cached);
    let refused = generate(&mut client, call(Some(CacheMode::Skip))).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::ResourceExhausted, "KEY_TOKEN_LIMIT"));
    assert!(generate(&mut client, call(None)).await.unwrap().cached, "a hit reserves no tokens");
    assert!(generate(&mut client, call(None)).await.unwrap().cached);
    // Four requests spent (the refused one too): the fifth is over the request budget, hit or not.
    let refused = generate(&mut client, call(None)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::ResourceExhausted, "KEY_REQUEST_LIMIT"));
    assert_eq!(calls(&fake), 1);
}

#[tokio::test]
async fn entries_expire_after_the_configured_ttl_or_the_calls_shorter_one() {
    let (fake, copilot) = start(Some("ttl = \"1s\""), "", &[]).await;
    let mut client = copilot.client().await;
    assert!(!generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap().cached);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(!generate(&mut client, generate_request("capital?", greedy(), None)).await.unwrap().cached, "expired");
    assert_eq!(calls(&fake), 2);

    let (fake, copilot) = start(Some("ttl = \"1h\""), "", &[]).await;
    let mut client = copilot.client().await;
    let short = |prompt: &str| GenerateRequest {
        cache: Some(CacheControl {
            mode: CacheMode::Unspecified as i32,
            ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        }),
        ..generate_request(prompt, greedy(), None)
    };
    assert!(!generate(&mut client, short("short-lived")).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("long-lived", greedy(), None)).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("short-lived", greedy(), None)).await.unwrap().cached);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(!generate(&mut client, generate_request("short-lived", greedy(), None)).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("long-lived", greedy(), None)).await.unwrap().cached);
    assert_eq!(calls(&fake), 3);
}

#[tokio::test]
async fn skip_refresh_and_only_if_cached_do_what_they_say() {
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let mut client = copilot.client().await;
    let call = |mode| generate_request("capital?", greedy(), mode);

    let missing = generate(&mut client, call(Some(CacheMode::OnlyIfCached))).await.unwrap_err();
    assert_eq!((missing.code(), reason(&missing).as_str()), (Code::NotFound, "CACHE_MISS"));
    assert_eq!(calls(&fake), 0, "ONLY_IF_CACHED never calls the upstream");

    assert_eq!(generate(&mut client, call(None)).await.unwrap().text, TOKENS.concat());
    fake.add_model(model(&["Lyon?"]));
    // SKIP: the upstream answers, and nothing is looked up or stored.
    let skipped = generate(&mut client, call(Some(CacheMode::Skip))).await.unwrap();
    assert_eq!((skipped.text.as_str(), skipped.cached), ("Lyon?", false));
    let cached = generate(&mut client, call(Some(CacheMode::OnlyIfCached))).await.unwrap();
    assert_eq!((cached.text, cached.cached), (TOKENS.concat(), true));
    assert_eq!(calls(&fake), 2);
    // REFRESH: the upstream answers, and its answer replaces the entry.
    fake.add_model(model(&["Lyon!"]));
    let refreshed = generate(&mut client, call(Some(CacheMode::Refresh))).await.unwrap();
    assert_eq!((refreshed.text.as_str(), refreshed.cached), ("Lyon!", false));
    let cached = generate(&mut client, call(Some(CacheMode::OnlyIfCached))).await.unwrap();
    assert_eq!((cached.text.as_str(), cached.cached), ("Lyon!", true));
    assert!(generate(&mut client, call(Some(CacheMode::Use))).await.unwrap().cached);
    assert_eq!(calls(&fake), 3);

    let bad = GenerateRequest { cache: Some(CacheControl { mode: 42, ttl: None }), ..call(None) };
    let refused = generate(&mut client, bad).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::InvalidArgument, "INVALID_ARGUMENT"));
}

#[tokio::test]
async fn a_cache_mode_with_the_cache_off_is_refused_without_calling_the_upstream() {
    let (fake, copilot) = start(None, "", &[]).await;
    let mut client = copilot.client().await;
    for mode in [CacheMode::Use, CacheMode::Skip, CacheMode::Refresh, CacheMode::OnlyIfCached] {
        let refused = generate(&mut client, generate_request("capital?", greedy(), Some(mode))).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (Code::FailedPrecondition, "CACHE_DISABLED"),
            "{mode:?}"
        );
        let refused = chat(
            &mut client,
            ChatRequest {
                cache: Some(CacheControl { mode: mode as i32, ttl: None }),
                ..chat_request("capital?", greedy())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(reason(&refused), "CACHE_DISABLED");
    }
    assert_eq!(calls(&fake), 0);
    // Unset, the call is served, and never from a cache.
    for _ in 0..2 {
        let answer = generate(&mut client, generate_request("capital?", greedy(), Some(CacheMode::Unspecified))).await;
        assert!(!answer.unwrap().cached);
    }
    assert_eq!(calls(&fake), 2);
}

#[tokio::test]
async fn a_call_that_is_not_deterministic_is_cached_only_when_it_asks_or_the_config_says() {
    let warm = || Some(GenerationOptions { temperature: Some(0.7), ..Default::default() });
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let mut client = copilot.client().await;
    assert!(!generate(&mut client, generate_request("capital?", warm(), None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital?", warm(), None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital?", None, None)).await.unwrap().cached);
    assert!(!generate(&mut client, generate_request("capital?", None, None)).await.unwrap().cached);
    assert_eq!(calls(&fake), 4);
    assert!(!generate(&mut client, generate_request("capital?", warm(), Some(CacheMode::Use))).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("capital?", warm(), Some(CacheMode::Use))).await.unwrap().cached);
    assert_eq!(calls(&fake), 5);

    let (fake, copilot) = start(Some("deterministic_only = false"), "", &[]).await;
    let mut client = copilot.client().await;
    assert!(!generate(&mut client, generate_request("capital?", warm(), None)).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("capital?", warm(), None)).await.unwrap().cached);
    assert_eq!(calls(&fake), 1);
}

#[tokio::test]
async fn errors_cancelled_streams_and_filtered_answers_are_not_stored() {
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let mut client = copilot.client().await;
    let only_cached = |prompt: &str| generate_request(prompt, greedy(), Some(CacheMode::OnlyIfCached));

    // An upstream that fails mid-answer.
    fake.add_model(model(&TOKENS).with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "boom".into() }));
    generate(&mut client, generate_request("fails", greedy(), None)).await.unwrap_err();
    chat(&mut client, chat_request("fails", greedy())).await.unwrap_err();
    assert_eq!(reason(&generate(&mut client, only_cached("fails")).await.unwrap_err()), "CACHE_MISS");
    let chat_only_cached = ChatRequest {
        cache: Some(CacheControl { mode: CacheMode::OnlyIfCached as i32, ttl: None }),
        ..chat_request("fails", greedy())
    };
    assert_eq!(reason(&chat(&mut client, chat_only_cached.clone()).await.unwrap_err()), "CACHE_MISS");

    // A stream the client abandons after two messages.
    fake.add_model(FakeModel::new("m").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(20)));
    let mut stream = within(LIMIT, client.chat(chat_request("fails", greedy()))).await.unwrap().into_inner();
    for _ in 0..2 {
        within(LIMIT, stream.next()).await.unwrap().unwrap();
    }
    drop(stream);
    assert!(fake.wait_for_disconnects(1, LIMIT).await);
    assert_eq!(reason(&chat(&mut client, chat_only_cached).await.unwrap_err()), "CACHE_MISS");

    // A prompt the provider blocks: an answer that finished with CONTENT_FILTER.
    let gemini = FakeGemini::start().await;
    gemini.add_model(FakeModel::new("gemini-2.5-flash"));
    gemini.set_block_prompt(true);
    let config = format!(
        "[providers.gemini]\nbase_url = \"{}\"\napi_key_env = \"GEMINI_KEY\"\nretries = 0\nbreaker_failures = 0\n\
         [cache]\nenabled = true\n",
        gemini.base_url()
    );
    let copilot = Copilot::start_with(&config, &[("GEMINI_KEY", "k".into())]).await;
    let mut client = copilot.client().await;
    let blocked =
        || GenerateRequest { model: "gemini/gemini-2.5-flash".into(), ..generate_request("bad", greedy(), None) };
    for _ in 0..2 {
        let answer = generate(&mut client, blocked()).await.unwrap();
        assert_eq!((answer.finish_reason, answer.cached), (FinishReason::ContentFilter as i32, false));
    }
    assert_eq!(gemini.chat_requests().len(), 2, "a filtered answer is not stored");
}

#[tokio::test]
async fn an_answer_over_max_entry_bytes_is_not_stored_and_the_metrics_count_it_all() {
    let env = [("COPILOT_SERVER__METRICS_ADDR", "127.0.0.1:0".to_string())];
    let (fake, copilot) = start(Some("max_entry_bytes = 200"), "", &env).await;
    let mut client = copilot.client().await;

    // Within 200 bytes: stored.
    assert!(!generate(&mut client, generate_request("short", greedy(), None)).await.unwrap().cached);
    assert!(generate(&mut client, generate_request("short", greedy(), None)).await.unwrap().cached);
    // 300 bytes of text: answered, and not stored.
    let long = "x".repeat(300);
    fake.add_model(model(&[&long]));
    for _ in 0..2 {
        let answer = generate(&mut client, generate_request("long", greedy(), None)).await.unwrap();
        assert_eq!((answer.text.len(), answer.cached), (300, false));
    }
    // And a stream that outgrows it, chunk by chunk.
    fake.add_model(model(&vec!["0123456789"; 30]));
    for _ in 0..2 {
        assert!(chat(&mut client, chat_request("long", greedy())).await.unwrap().iter().all(|m| !m.cached));
    }
    assert_eq!(calls(&fake), 5);
    // Not cacheable: a bypass.
    generate(&mut client, generate_request("short", None, None)).await.unwrap();

    let page = copilot.metrics_page().await;
    let requests = |result: &str| sample(&page, "copilot_cache_requests", &[&format!("result=\"{result}\"")]);
    assert_eq!((requests("hit"), requests("miss"), requests("bypass")), (1.0, 5.0, 1.0), "{page}");
    assert_eq!(sample(&page, "copilot_cache_stores", &[]), 1.0, "{page}");
    assert_eq!(sample(&page, "copilot_cache_oversize", &[]), 4.0, "{page}");
    // The one entry held: its key and its encoded answer.
    assert!(sample(&page, "copilot_cache_bytes{", &[]) > 32.0, "{page}");
    // (Evictions need a full store: `cache::store`'s tests count them.)
}

#[tokio::test]
async fn an_embed_hit_returns_the_same_vectors_without_an_upstream_call() {
    let (fake, copilot) = start(Some(""), "", &[]).await;
    fake.add_model(FakeModel::embedding("e", 8));
    let mut client = copilot.client().await;
    let request = || EmbedRequest {
        model: "ollama/e".into(),
        inputs: vec!["one text".into(), "another".into()],
        ..Default::default()
    };
    let first = within(LIMIT, client.embed(request())).await.unwrap().into_inner();
    let second = within(LIMIT, client.embed(request())).await.unwrap().into_inner();
    assert!(!first.cached && second.cached);
    assert_eq!(second.embeddings, first.embeddings);
    assert_eq!((&second.model, second.dimensions, &second.usage), (&first.model, first.dimensions, &first.usage));
    assert_eq!(fake.embed_requests().len(), 1);
    let other = EmbedRequest { dimensions: Some(4), ..request() };
    assert!(!within(LIMIT, client.embed(other)).await.unwrap().into_inner().cached);
    assert_eq!(fake.embed_requests().len(), 2);
    // SKIP applies to Embed too.
    let skipped = EmbedRequest { cache: Some(CacheControl { mode: CacheMode::Skip as i32, ttl: None }), ..request() };
    assert!(!within(LIMIT, client.embed(Request::new(skipped))).await.unwrap().into_inner().cached);
    assert_eq!(fake.embed_requests().len(), 3);
}

/// A `Chat` answer beyond text: thinking, text and a tool call. The replay keeps the thinking and
/// tool-call messages as they were, merges the text, and ends with `TOOL_CALLS`.
#[tokio::test]
async fn a_chat_hit_replays_thinking_and_tool_calls_with_their_bounds() {
    use copilot::proto::v1::{Reasoning, Tool};
    use copilot_fakes::{FakeToolCall, Piece};
    let (fake, copilot) = start(Some(""), "", &[]).await;
    let call = FakeToolCall::new("call_1", "get_weather", r#"{"city":"Paris"}"#);
    let pieces = vec![
        Piece::Thinking("The user".into()),
        Piece::Thinking(" wants weather.".into()),
        Piece::Text("Let me ".into()),
        Piece::Text("check.".into()),
        Piece::ToolCalls(vec![call]),
    ];
    let mut model = FakeModel::new("m").with_reply(Reply::Turn(pieces));
    model.capabilities.extend(["tools".into(), "thinking".into()]);
    fake.add_model(model);
    let mut client = copilot.client().await;
    let request = || ChatRequest {
        tools: vec![Tool {
            name: "get_weather".into(),
            parameters_json_schema: r#"{"type":"object"}"#.into(),
            ..Default::default()
        }],
        reasoning: Some(Reasoning { enabled: true, include_thoughts: true, ..Default::default() }),
        ..chat_request("weather in Paris?", greedy())
    };

    let original = chat(&mut client, request()).await.unwrap();
    let replay = chat(&mut client, request()).await.unwrap();
    assert_eq!(calls(&fake), 1);
    assert_eq!(original.last().unwrap().finish_reason, FinishReason::ToolCalls as i32, "{original:?}");
    assert!(original.iter().any(|m| !m.thinking.is_empty()) && original.iter().any(|m| !m.tool_calls.is_empty()));

    // What the replay must be: the original's messages, runs of text-only ones merged, each
    // marked cached, the last with the replay's timing.
    let text_only = |m: &ChatResponse| ChatResponse { content: m.content.clone(), ..Default::default() } == *m;
    let mut expected: Vec<ChatResponse> = Vec::new();
    for message in &original {
        match expected.last_mut() {
            Some(last) if text_only(last) && text_only(message) => last.content.push_str(&message.content),
            _ => expected.push(message.clone()),
        }
    }
    for message in &mut expected {
        message.cached = true;
    }
    let strip_timing = |messages: &[ChatResponse]| -> Vec<ChatResponse> {
        messages.iter().map(|m| ChatResponse { timing: None, ..m.clone() }).collect()
    };
    assert_eq!(strip_timing(&replay), strip_timing(&expected));
    assert!(replay.len() < original.len(), "{replay:?}");
}
