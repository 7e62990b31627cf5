//! Identical cache misses in flight, through the real binary: calls that miss while an identical
//! one is answering wait for its answer and replay it (the fake upstream sees one call); a leader
//! that fails releases them to call the upstream themselves; a waiting call keeps its own
//! deadline; `cache.coalesce = false` turns it off.

use std::time::Duration;

use copilot::proto::v1::{ChatRequest, GenerateRequest, GenerateResponse};
use copilot_fakes::{Behaviour, FakeModel, FakeOllama, Reply};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::harness::{Copilot, OLLAMA_ONLY, sample, within};
use crate::requests::user;
use crate::response_cache::{chat, generate, greedy};

const LIMIT: Duration = Duration::from_secs(20);
const TOKENS: [&str; 4] = ["Paris", " is", " the capital", "."];

fn slow_model(token_delay: Duration) -> FakeModel {
    FakeModel::new("m")
        .with_reply(Reply::Tokens(TOKENS.iter().map(|t| t.to_string()).collect()))
        .with_token_delay(token_delay)
}

/// A fake Ollama serving `model`, and a copilot in front of it with the cache on, `cache` in its
/// section, and a metrics listener.
async fn start(cache: &str, model: FakeModel) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(model);
    let config = format!("{OLLAMA_ONLY}[cache]\nenabled = true\n{cache}\n");
    let env = [("OLLAMA_HOST", fake.base_url()), ("COPILOT_SERVER__METRICS_ADDR", "127.0.0.1:0".to_string())];
    let copilot = Copilot::start_with(&config, &env).await;
    (fake, copilot)
}

fn request() -> GenerateRequest {
    GenerateRequest { model: "ollama/m".into(), prompt: "capital?".into(), options: greedy(), ..Default::default() }
}

/// A `Generate` of [`request`] on a connection of its own, running; its handle.
async fn spawn_generate(copilot: &Copilot) -> JoinHandle<Result<GenerateResponse, Status>> {
    let mut client = copilot.client().await;
    tokio::spawn(async move { generate(&mut client, request()).await })
}

/// Until the fake has received `n` chat calls.
async fn upstream_calls(fake: &FakeOllama, n: usize) {
    within(LIMIT, async {
        while fake.chat_requests().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn identical_generate_misses_in_flight_make_one_upstream_call() {
    let (fake, copilot) = start("", slow_model(Duration::from_millis(150))).await;
    let leader = spawn_generate(&copilot).await;
    upstream_calls(&fake, 1).await;
    let mut followers = Vec::new();
    for _ in 0..4 {
        followers.push(spawn_generate(&copilot).await);
    }

    let led = leader.await.unwrap().unwrap();
    assert!(!led.cached);
    assert_eq!(led.text, TOKENS.concat());
    for follower in followers {
        let followed = follower.await.unwrap().unwrap();
        assert!(followed.cached, "answered with the leader's answer: {followed:?}");
        assert_eq!((&followed.text, &followed.usage), (&led.text, &led.usage));
    }
    assert_eq!(fake.chat_requests().len(), 1, "one upstream call for five identical calls");

    let page = copilot.metrics_page().await;
    let requests = |result: &str| sample(&page, "copilot_cache_requests", &[&format!("result=\"{result}\"")]);
    assert_eq!((requests("miss"), requests("hit")), (1.0, 4.0), "{page}");
    assert_eq!(sample(&page, "copilot_cache_coalesced", &["rpc_method=\"Generate\""]), 4.0, "{page}");
}

#[tokio::test]
async fn identical_chat_misses_in_flight_replay_the_leaders_stream() {
    let (fake, copilot) = start("", slow_model(Duration::from_millis(150))).await;
    let chat_request = || ChatRequest {
        model: "ollama/m".into(),
        messages: vec![user("capital?")],
        options: greedy(),
        ..Default::default()
    };
    let mut client = copilot.client().await;
    let leader = tokio::spawn(async move { chat(&mut client, chat_request()).await });
    upstream_calls(&fake, 1).await;
    let mut client = copilot.client().await;
    let follower = tokio::spawn(async move { chat(&mut client, chat_request()).await });

    let led = leader.await.unwrap().unwrap();
    let followed = follower.await.unwrap().unwrap();
    let text =
        |messages: &[copilot::proto::v1::ChatResponse]| messages.iter().map(|m| m.content.clone()).collect::<String>();
    assert_eq!(text(&followed), text(&led));
    assert!(led.iter().all(|m| !m.cached) && followed.iter().all(|m| m.cached), "{followed:?}");
    assert_eq!(followed.last().unwrap().usage, led.last().unwrap().usage);
    assert_eq!(fake.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_failing_leader_releases_its_followers_to_call_the_upstream_themselves() {
    // The leader's call fails after a while; by the time it does, the upstream is healthy again.
    let failing = slow_model(Duration::ZERO)
        .with_header_delay(Duration::from_millis(400))
        .with_behaviour(Behaviour::HttpError { status: 500, message: "runner crashed".into() });
    let (fake, copilot) = start("", failing).await;
    let leader = spawn_generate(&copilot).await;
    upstream_calls(&fake, 1).await;
    let followers = [spawn_generate(&copilot).await, spawn_generate(&copilot).await];
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.chat_requests().len(), 1, "the followers wait for the leader");
    fake.add_model(slow_model(Duration::ZERO));

    let status = leader.await.unwrap().unwrap_err();
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    for follower in followers {
        let answer = follower.await.unwrap().unwrap();
        assert!(!answer.cached, "their own upstream answer, not a shared failure: {answer:?}");
        assert_eq!(answer.text, TOKENS.concat());
    }
    assert_eq!(fake.chat_requests().len(), 3);
}

#[tokio::test]
async fn a_waiting_call_keeps_its_own_deadline() {
    let (fake, copilot) = start("", slow_model(Duration::from_millis(500))).await;
    let leader = spawn_generate(&copilot).await;
    upstream_calls(&fake, 1).await;
    let mut waiting = tonic::Request::new(request());
    waiting.set_timeout(Duration::from_millis(300));
    let status = within(LIMIT, copilot.client_without_local_deadline().generate(waiting)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("identical call"), "{status:?}");
    assert!(!leader.is_finished(), "the waiting call ended at its deadline, before the leader's answer");
    assert_eq!(fake.chat_requests().len(), 1, "the call that ran out of time did not call the upstream");
    assert!(!leader.await.unwrap().unwrap().cached);
}

#[tokio::test]
async fn with_coalescing_off_every_identical_miss_calls_the_upstream() {
    let (fake, copilot) = start("coalesce = false", slow_model(Duration::from_millis(100))).await;
    let leader = spawn_generate(&copilot).await;
    upstream_calls(&fake, 1).await;
    let others = [spawn_generate(&copilot).await, spawn_generate(&copilot).await];
    upstream_calls(&fake, 3).await;
    assert!(!leader.await.unwrap().unwrap().cached);
    for other in others {
        assert!(!other.await.unwrap().unwrap().cached);
    }
}
