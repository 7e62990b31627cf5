//! Key budgets shared by replicas through a real Redis (`state.redis_url`, issue 18): several
//! `copilot serve` processes against one `redis-server` and one fake admit together exactly what
//! one would, and when Redis stops or hangs each `state.on_error` policy does what it says, in
//! bounded time; the `state` health entry follows Redis, and the limits resume when it is back.

use std::time::{Duration, Instant};

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{GenerateRequest, GenerationOptions};
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::harness::{Copilot, sample, within};
use crate::redis_server::RedisServer;
use crate::requests::{HELLO, chat, prompt, reason, with_key};

const LIMIT: Duration = Duration::from_secs(20);
const KEY: &str = "cpk_shared_test_key";

/// A copilot in front of `fake` whose one key `team` has `limits`, its budgets in `redis`, once its
/// connection to Redis is up (its `state` health entry SERVING).
async fn replica(fake: &FakeOllama, redis: &RedisServer, limits: &str, state: &str) -> Copilot {
    let copilot = replica_starting(fake, redis, limits, state).await;
    wait_for_state(&copilot, ServingStatus::Serving).await;
    copilot
}

/// [`replica`] as soon as it listens.
async fn replica_starting(fake: &FakeOllama, redis: &RedisServer, limits: &str, state: &str) -> Copilot {
    let hash = copilot::auth::KeyHash::of(KEY);
    let config = format!(
        "[providers.ollama]\nretries = 0\nbreaker_failures = 0\n\
         [state]\nredis_url = \"{}\"\ntimeout = \"100ms\"\nhealth_interval = \"200ms\"\n{state}\n\
         [auth]\nenabled = true\n[[auth.keys]]\nname = \"team\"\nhash = \"{hash}\"\n{limits}\n",
        redis.url()
    );
    Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await
}

async fn fake_with(reply: Reply) -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m").with_reply(reply));
    fake
}

async fn generate(client: &mut CopilotClient<Channel>, request: GenerateRequest) -> Result<String, tonic::Status> {
    within(LIMIT, client.generate(with_key(request, KEY))).await.map(|r| r.into_inner().text)
}

async fn state_health(copilot: &Copilot) -> ServingStatus {
    let mut client = HealthClient::new(copilot.channel().await);
    let request = HealthCheckRequest { service: "state".into() };
    let status = within(LIMIT, client.check(request)).await.expect("the state entry exists").into_inner().status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

async fn wait_for_state(copilot: &Copilot, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_health(copilot).await != wanted {
        assert!(Instant::now() < deadline, "the state entry never became {wanted:?}; log:\n{}", copilot.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_replicas_admit_exactly_a_keys_request_budget() {
    let redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&fake, &redis, "requests_per_minute = 10", "").await);
    }
    let mut calls = Vec::new();
    for i in 0..30 {
        let mut client = replicas[i % 3].client().await;
        calls.push(async move { generate(&mut client, prompt("ollama/m", HELLO)).await });
    }
    let results = futures::future::join_all(calls).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 10, "{results:?}");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(status), "KEY_REQUEST_LIMIT");
        let delay = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("a delay");
        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(6), "{delay:?}");
    }
    assert_eq!(fake.chat_requests().len(), 10, "only admitted calls reach the upstream");
}

#[tokio::test]
async fn three_replicas_cannot_overdraw_a_keys_token_budget_together() {
    // Each call reserves "hello there" (3 tokens) + max_tokens 7 = 10 of 100; the fake holds every
    // reply 2 s, so all 30 are in flight before any settles: ten fit across the three replicas.
    let redis = RedisServer::start();
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("slow").with_reply(Reply::Endless).with_header_delay(Duration::from_secs(2)));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&fake, &redis, "tokens_per_minute = 100", "").await);
    }
    let mut calls = Vec::new();
    for i in 0..30 {
        let mut client = replicas[i % 3].client().await;
        let mut request = chat("ollama/slow", "hello there");
        request.options = Some(GenerationOptions { max_tokens: Some(7), ..Default::default() });
        calls.push(async move {
            let mut stream = within(LIMIT, client.chat(with_key(request, KEY))).await?.into_inner();
            while let Some(item) = within(LIMIT, stream.next()).await {
                item?;
            }
            Ok::<(), tonic::Status>(())
        });
    }
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10, "{results:?}");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(status), "KEY_TOKEN_LIMIT", "{status:?}");
    }
    assert_eq!(fake.completed_streams(), 10);
}

#[tokio::test]
async fn an_overrun_on_one_replica_refuses_the_next_completion_on_another() {
    // The fake counts a word as a token: 30 of them (+2 of prompt) overdraw 20 a minute by 12.
    let redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens((0..30).map(|i| format!("w{i} ")).collect())).await;
    let a = replica(&fake, &redis, "tokens_per_minute = 20", "").await;
    let b = replica(&fake, &redis, "tokens_per_minute = 20", "").await;
    let mut client_a = a.client().await;
    generate(&mut client_a, prompt("ollama/m", HELLO)).await.unwrap();

    // The charge reaches Redis in the background; B sees the debt within moments.
    let mut client_b = b.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = generate(&mut client_b, prompt("ollama/m", HELLO)).await.unwrap_err();
        assert_eq!(reason(&status), "KEY_TOKEN_LIMIT", "{status:?}");
        let delay = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("a delay");
        // A debt of 12: one token more is 13 of the 20 that refill per minute, about 39 s.
        if delay > Duration::from_secs(35) {
            assert!(delay <= Duration::from_secs(39), "{delay:?}");
            break;
        }
        assert!(Instant::now() < deadline, "B never saw A's overrun (last retry delay {delay:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.chat_requests().len(), 1);
}

/// Admits `n` calls in a row, returning how many were admitted and the slowest call.
async fn calls(client: &mut CopilotClient<Channel>, n: usize) -> (Vec<Result<String, tonic::Status>>, Duration) {
    let mut results = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        results.push(generate(client, prompt("ollama/m", HELLO)).await);
        slowest = slowest.max(started.elapsed());
    }
    (results, slowest)
}

fn admitted(results: &[Result<String, tonic::Status>]) -> usize {
    results.iter().filter(|r| r.is_ok()).count()
}

#[tokio::test]
async fn with_on_error_local_a_replica_falls_back_to_its_own_budget_and_resumes_the_shared_one() {
    let mut redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let copilot = replica(&fake, &redis, "requests_per_minute = 2", "on_error = \"local\"").await;
    let mut client = copilot.client().await;
    let (results, _) = calls(&mut client, 3).await;
    assert_eq!(admitted(&results), 2, "the shared budget: {results:?}");

    // Redis stops: this replica's own bucket (untouched so far: full) decides.
    redis.stop();
    let (results, slowest) = calls(&mut client, 3).await;
    assert_eq!(admitted(&results), 2, "the local budget: {results:?}");
    assert_eq!(reason(results[2].as_ref().unwrap_err()), "KEY_REQUEST_LIMIT");
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    wait_for_state(&copilot, ServingStatus::NotServing).await;
    // The API stays SERVING: a Redis outage must not pull the replica from its endpoints.
    let mut health = HealthClient::new(copilot.channel().await);
    let api = HealthCheckRequest { service: "copilot.v1.Copilot".into() };
    assert_eq!(within(LIMIT, health.check(api)).await.unwrap().into_inner().status, ServingStatus::Serving as i32);

    // Redis is back (empty: full buckets): the shared budget applies again.
    redis.restart();
    wait_for_state(&copilot, ServingStatus::Serving).await;
    let (results, _) = calls(&mut client, 3).await;
    assert_eq!(admitted(&results), 2, "the shared budget again: {results:?}");
    assert!(copilot.logs().contains("the shared Redis does not answer"), "{}", copilot.logs());
}

#[tokio::test]
async fn with_on_error_open_calls_are_admitted_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let config = "on_error = \"open\"\n[server]\nmetrics_addr = \"127.0.0.1:0\"";
    let copilot = replica(&fake, &redis, "requests_per_minute = 1", config).await;
    let mut client = copilot.client().await;
    let (results, _) = calls(&mut client, 2).await;
    assert_eq!(admitted(&results), 1, "{results:?}");
    let page = copilot.metrics_page().await;
    assert_eq!(sample(&page, "copilot_state_up", &[]), 1.0, "{page}");
    assert_eq!(sample(&page, "copilot_state_operations_total", &["operation=\"admit\"", "outcome=\"ok\""]), 2.0);

    redis.stop();
    let (results, slowest) = calls(&mut client, 4).await;
    assert_eq!(admitted(&results), 4, "{results:?}");
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    let page = copilot.metrics_page().await;
    assert_eq!(sample(&page, "copilot_state_up", &[]), 0.0, "{page}");
    assert_eq!(sample(&page, "copilot_state_fallbacks_total", &["policy=\"open\""]), 4.0, "{page}");

    redis.restart();
    wait_for_state(&copilot, ServingStatus::Serving).await;
    let (results, _) = calls(&mut client, 2).await;
    assert_eq!(admitted(&results), 1, "limits resume: {results:?}");
}

#[tokio::test]
async fn with_on_error_closed_calls_are_refused_fast_while_redis_is_stopped_or_hung() {
    let mut redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let copilot = replica(&fake, &redis, "requests_per_minute = 100", "on_error = \"closed\"").await;
    let mut client = copilot.client().await;
    generate(&mut client, prompt("ollama/m", HELLO)).await.unwrap();

    let refused_fast = |results: Vec<Result<String, tonic::Status>>, slowest: Duration| {
        for result in &results {
            let status = result.as_ref().unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(reason(status), "STATE_UNAVAILABLE");
            assert!(status.message().contains("state.on_error"), "{}", status.message());
            assert!(status.get_details_retry_info().is_some(), "RetryInfo");
        }
        // The timeout is 100 ms: each refusal comes within it and the call's own overhead.
        assert!(slowest < Duration::from_millis(1500), "a call took {slowest:?}");
    };
    // Hung: the connection stays open and nothing answers.
    redis.freeze();
    let (results, slowest) = calls(&mut client, 3).await;
    refused_fast(results, slowest);
    redis.thaw();
    generate(&mut client, prompt("ollama/m", HELLO)).await.unwrap();

    redis.stop();
    let (results, slowest) = calls(&mut client, 3).await;
    refused_fast(results, slowest);
    assert_eq!(fake.chat_requests().len(), 2, "refused calls never reach the upstream");

    redis.restart();
    wait_for_state(&copilot, ServingStatus::Serving).await;
    generate(&mut client, prompt("ollama/m", HELLO)).await.unwrap();
}

#[tokio::test]
async fn a_redis_down_at_startup_does_not_stop_the_server_and_is_used_once_up() {
    let mut redis = RedisServer::not_started();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let copilot = replica_starting(&fake, &redis, "requests_per_minute = 1", "").await;
    wait_for_state(&copilot, ServingStatus::NotServing).await;
    let mut client = copilot.client().await;
    // on_error = "local" (the default): this replica's own budget.
    let (results, _) = calls(&mut client, 2).await;
    assert_eq!(admitted(&results), 1, "{results:?}");

    redis.restart();
    wait_for_state(&copilot, ServingStatus::Serving).await;
    // Redis's bucket is full: one more call is admitted there, then none.
    let (results, _) = calls(&mut client, 2).await;
    assert_eq!(admitted(&results), 1, "{results:?}");
    assert_eq!(redis.keys().len(), 1, "the request bucket is in Redis: {:?}", redis.keys());
}

#[tokio::test]
async fn a_tls_redis_with_a_password_is_shared_and_the_password_is_never_shown() {
    const PASSWORD: &str = "s3cret-redis-pass";
    let ca = crate::tls::Ca::new("redis test CA");
    let (cert, key) = ca.issue("127.0.0.1");
    let redis = RedisServer::start_secured(PASSWORD, Some((&cert, &key)));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let hash = copilot::auth::KeyHash::of(KEY);
    let start = |password: &'static str| {
        let config = format!(
            "[providers.ollama]\nretries = 0\n\
             [state]\nredis_url = \"rediss://:{password}@127.0.0.1:{}/\"\ntls_ca_file = \"{}\"\n\
             health_interval = \"200ms\"\n\
             [auth]\nenabled = true\n[[auth.keys]]\nname = \"team\"\nhash = \"{hash}\"\nrequests_per_minute = 1\n",
            redis.port,
            ca_file.display()
        );
        let fake = fake.base_url();
        async move { Copilot::start_with(&config, &[("OLLAMA_HOST", fake)]).await }
    };
    let a = start(PASSWORD).await;
    let b = start(PASSWORD).await;
    wait_for_state(&a, ServingStatus::Serving).await;
    wait_for_state(&b, ServingStatus::Serving).await;
    generate(&mut a.client().await, prompt("ollama/m", HELLO)).await.unwrap();
    let status = generate(&mut b.client().await, prompt("ollama/m", HELLO)).await.unwrap_err();
    assert_eq!(reason(&status), "KEY_REQUEST_LIMIT", "the budget is shared over TLS: {status:?}");

    // A wrong password: Redis refuses, the replica says so (without either password) and falls back.
    let wrong = start("not-the-password").await;
    wait_for_state(&wrong, ServingStatus::NotServing).await;
    generate(&mut wrong.client().await, prompt("ollama/m", HELLO)).await.unwrap();
    for copilot in [&a, &b, &wrong] {
        let logs = copilot.logs();
        assert!(logs.contains(&format!("rediss://:***@127.0.0.1:{}/", redis.port)), "{logs}");
        assert!(!logs.contains(PASSWORD) && !logs.contains("not-the-password"), "{logs}");
    }
}

#[tokio::test]
async fn replicas_share_budgets_through_a_redis_cluster() {
    let cluster = crate::redis_server::RedisCluster::start(3);
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let mut replicas = Vec::new();
    for seed in [&cluster.nodes[0], &cluster.nodes[1]] {
        replicas.push(
            replica(&fake, seed, "requests_per_minute = 10\ntokens_per_minute = 100000", "topology = \"cluster\"")
                .await,
        );
    }
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = replicas[i % 2].client().await;
        calls.push(async move { generate(&mut client, prompt("ollama/m", HELLO)).await });
    }
    let results = futures::future::join_all(calls).await;
    assert_eq!(admitted(&results), 10, "{results:?}");
    // The key's buckets live in one slot (the hash tag), so on one node: the scripts run there.
    let keys = cluster.keys();
    assert!(!keys.is_empty() && keys.iter().all(|(node, _)| *node == keys[0].0), "{keys:?}");
}

#[tokio::test]
async fn a_call_refused_before_its_reservation_still_spends_a_request() {
    // With a token budget, admission is made with the reservation (one round trip); a call that
    // never gets there (an invalid request) spends its request in the background.
    let redis = RedisServer::start();
    let fake = fake_with(Reply::Tokens(vec!["ok".into()])).await;
    let copilot = replica(&fake, &redis, "requests_per_minute = 3\ntokens_per_minute = 100000", "").await;
    let mut client = copilot.client().await;
    for _ in 0..2 {
        let status = generate(&mut client, prompt("ollama/m", "")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    generate(&mut client, prompt("ollama/m", HELLO)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match generate(&mut client, prompt("ollama/m", HELLO)).await {
            Err(status) => {
                assert_eq!(reason(&status), "KEY_REQUEST_LIMIT", "{status:?}");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "the invalid calls never spent their requests"),
        }
    }
    assert_eq!(fake.chat_requests().len(), 1, "the fourth call must be refused");
}
