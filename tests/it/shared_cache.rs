//! The response cache in a shared Redis (issue 18, stage 4): with `state.redis_url`, what one
//! replica stored another answers from, byte for byte and without calling the upstream; entries
//! expire on Redis's clock; a Redis that stops or hangs is a miss, never a failed or slow call; and
//! a hit still spends its key's request when the budgets are shared too.

use std::time::{Duration, Instant};

use copilot::proto::v1::{ChatRequest, ChatResponse, GenerateRequest};
use copilot_fakes::{FakeModel, FakeOllama, Reply};

use crate::harness::{Copilot, OLLAMA_ONLY};
use crate::redis_server::RedisServer;
use crate::requests::{reason, user, with_key};
use crate::response_cache::{chat, generate, greedy};

const KEY: &str = "cpk_shared_cache_test_key";

async fn fake() -> FakeOllama {
    let fake = FakeOllama::start().await;
    let tokens = ["Paris", " is", " the", " capital", " of France."];
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(tokens.iter().map(|t| t.to_string()).collect())));
    fake
}

/// A copilot in front of `fake` whose cache (`[cache]` plus `cache`) lives in `redis`, once its
/// connection to Redis is up.
async fn replica(fake: &FakeOllama, redis: &RedisServer, cache: &str, extra: &str) -> Copilot {
    let config = format!(
        "{OLLAMA_ONLY}[cache]\nenabled = true\n{cache}\n\
         [state]\nredis_url = \"{}\"\ntimeout = \"100ms\"\nhealth_interval = \"200ms\"\n{extra}",
        redis.url()
    );
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !copilot.logs().contains("the shared Redis answers") {
        assert!(Instant::now() < deadline, "never connected to Redis:\n{}", copilot.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    copilot
}

/// Waits until Redis holds `n` cache entries (stores are sent in the background).
async fn wait_for_entries(redis: &RedisServer, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = redis.keys().into_iter().filter(|k| k.starts_with("copilot:default:cache:")).collect();
        if keys.len() >= n {
            return keys;
        }
        assert!(Instant::now() < deadline, "{} cache entries in Redis, not {n}", keys.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn generate_request(prompt: &str) -> GenerateRequest {
    GenerateRequest { model: "ollama/m".into(), prompt: prompt.into(), options: greedy(), ..Default::default() }
}

fn text(messages: &[ChatResponse]) -> String {
    messages.iter().map(|m| m.content.as_str()).collect()
}

#[tokio::test]
async fn what_one_replica_stored_another_answers_from() {
    let redis = RedisServer::start();
    let fake = fake().await;
    let a = replica(&fake, &redis, "", "").await;
    let b = replica(&fake, &redis, "", "").await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);

    let missed = generate(&mut client_a, generate_request("Capital of France?")).await.unwrap();
    assert!(!missed.cached);
    wait_for_entries(&redis, 1).await;
    let hit = generate(&mut client_b, generate_request("Capital of France?")).await.unwrap();
    assert!(hit.cached, "B answers from A's entry");
    assert_eq!(hit.text, missed.text);
    assert_eq!(hit.text, "Paris is the capital of France.");
    assert_eq!(hit.usage, missed.usage);
    assert_eq!(fake.chat_requests().len(), 1, "the upstream saw one call");

    // A stream: recorded on A, replayed on B with the original usage, `cached` on every message.
    let request = ChatRequest {
        model: "ollama/m".into(),
        messages: vec![user("Again?")],
        options: greedy(),
        ..Default::default()
    };
    let live = chat(&mut client_a, request.clone()).await.unwrap();
    assert!(live.iter().all(|m| !m.cached));
    let keys = wait_for_entries(&redis, 2).await;
    let replay = chat(&mut client_b, request.clone()).await.unwrap();
    assert!(replay.iter().all(|m| m.cached), "{replay:?}");
    assert_eq!(text(&replay), text(&live));
    assert_eq!(replay.last().unwrap().usage, live.last().unwrap().usage);
    assert_eq!(replay.last().unwrap().finish_reason, live.last().unwrap().finish_reason);
    // A hits too, from Redis.
    generate(&mut client_a, generate_request("Capital of France?")).await.unwrap();
    assert_eq!(fake.chat_requests().len(), 2, "one upstream call per answer");

    // The entries are Redis strings under the deployment's prefix, expiring with cache.ttl (1 h).
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let ttl = redis.pttl(key);
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let redis = RedisServer::start();
    let fake = fake().await;
    let copilot = replica(&fake, &redis, "ttl = \"1s\"", "").await;
    let mut client = copilot.client().await;
    generate(&mut client, generate_request("Short-lived?")).await.unwrap();
    wait_for_entries(&redis, 1).await;
    assert!(generate(&mut client, generate_request("Short-lived?")).await.unwrap().cached);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!generate(&mut client, generate_request("Short-lived?")).await.unwrap().cached, "expired");
}

#[tokio::test]
async fn a_redis_that_stops_or_hangs_is_a_miss_never_an_error() {
    let mut redis = RedisServer::start();
    let fake = fake().await;
    let copilot = replica(&fake, &redis, "", "").await;
    let mut client = copilot.client().await;
    generate(&mut client, generate_request("Still there?")).await.unwrap();

    for hung in [true, false] {
        if hung {
            redis.freeze();
        } else {
            redis.thaw();
            redis.stop();
        }
        let before = fake.chat_requests().len();
        for _ in 0..3 {
            let started = Instant::now();
            let answer = generate(&mut client, generate_request("Still there?")).await.unwrap();
            assert!(!answer.cached, "Redis is out: a miss");
            assert_eq!(answer.text, "Paris is the capital of France.");
            // The lookup is bounded by state.timeout (100 ms).
            assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
        }
        assert_eq!(fake.chat_requests().len(), before + 3, "each call went to the upstream");
    }

    // Back (empty): stored again, then hits.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !generate(&mut client, generate_request("Still there?")).await.unwrap().cached {
        assert!(Instant::now() < deadline, "the cache never came back:\n{}", copilot.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hit_still_spends_its_keys_request_with_shared_budgets() {
    let redis = RedisServer::start();
    let fake = fake().await;
    let hash = copilot::auth::KeyHash::of(KEY);
    let auth = format!(
        "[auth]\nenabled = true\n[[auth.keys]]\nname = \"team\"\nhash = \"{hash}\"\n\
         requests_per_minute = 2\ntokens_per_minute = 100000\n"
    );
    let copilot = replica(&fake, &redis, "", &auth).await;
    let mut client = copilot.client().await;
    generate(&mut client, with_key(generate_request("Budget?"), KEY)).await.unwrap();
    wait_for_entries(&redis, 1).await;
    assert!(generate(&mut client, with_key(generate_request("Budget?"), KEY)).await.unwrap().cached);
    // Two requests a minute, both spent (a miss, then a hit): the next hit is refused.
    let status = generate(&mut client, with_key(generate_request("Budget?"), KEY)).await.unwrap_err();
    assert_eq!(reason(&status), "KEY_REQUEST_LIMIT", "{status:?}");
}
