//! Routing under failure, through the gRPC API against fake Ollama instances: aliases and fallback
//! order, no fallback after the first token, retries honouring Retry-After, the circuit breaker,
//! concurrency limits, replicas sharing load, and the health and model listings that reflect it.

use std::time::{Duration, Instant};

use copilot::proto::v1::{GetModelRequest, ListModelsRequest};
use copilot_fakes::{Behaviour, FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};
use crate::requests::{HELLO, chat, prompt};

const LIMIT: Duration = Duration::from_secs(20);

/// A `[providers.NAME]` table for an Ollama instance at `url`, plus extra settings (no retries
/// unless `extra` sets them, so each test controls the attempts it counts).
fn ollama(name: &str, url: &str, extra: &str) -> String {
    let retries = if extra.contains("retries") { "" } else { "retries = 0\n" };
    format!("[providers.{name}]\nkind = \"ollama\"\nbase_url = \"{url}\"\n{retries}{extra}\n")
}

fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

async fn fake_with(model: FakeModel) -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.add_model(model);
    fake
}

#[tokio::test]
async fn an_alias_falls_back_in_order_before_the_first_token() {
    let busy = fake_with(FakeModel::new("m")).await;
    busy.set_busy(true);
    let slow = fake_with(FakeModel::new("m").with_header_delay(Duration::from_secs(10))).await;
    let good = fake_with(FakeModel::new("m")).await;
    let config = [
        ollama("down", &closed_port_url(), ""),
        ollama("busy", &busy.base_url(), ""),
        ollama("slow", &slow.base_url(), "first_token_timeout = \"300ms\""),
        ollama("good", &good.base_url(), ""),
        "[routing.aliases]\nsmart = [\"down/m\", \"busy/m\", \"slow/m\", \"good/m\"]\n".into(),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    let response = within(LIMIT, client.generate(prompt("smart", HELLO))).await.unwrap().into_inner();
    assert_eq!(response.model, "good/m");
    assert_eq!(response.text, "You said: hello there");
    assert_eq!(busy.chat_requests().len(), 1, "the busy target was tried once (retries = 0)");
    assert_eq!(slow.chat_requests().len(), 1, "the slow target was tried, then abandoned");
    assert!(slow.wait_for_disconnects(1, LIMIT).await, "abandoning the slow target closed its request");
    assert_eq!(good.chat_requests().len(), 1);

    // The plain names still go straight to their instance, without fallback.
    let status = client.generate(prompt("busy/m", HELLO)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn once_output_has_reached_the_client_there_is_no_fallback() {
    let words = Reply::Tokens(["one", " two", " three"].map(String::from).to_vec());
    let failing = fake_with(
        FakeModel::new("m")
            .with_reply(words)
            .with_behaviour(Behaviour::ErrorAfter { tokens: 2, message: "the runner crashed".into() }),
    )
    .await;
    let backup = fake_with(FakeModel::new("m")).await;
    let config = [
        ollama("first", &failing.base_url(), ""),
        ollama("backup", &backup.base_url(), ""),
        "[routing.aliases]\nsmart = [\"first/m\", \"backup/m\"]\n".into(),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    let mut stream = within(LIMIT, client.chat(chat("smart", HELLO))).await.unwrap().into_inner();
    let mut text = String::new();
    let status = loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(chunk)) => text.push_str(&chunk.content),
            Some(Err(status)) => break status,
            None => panic!("a failed stream must not end OK"),
        }
    };
    assert_eq!(text, "one two");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("the runner crashed"), "{}", status.message());
    assert_eq!(backup.chat_requests().len(), 0, "no fallback after the first token");
}

#[tokio::test]
async fn retries_back_off_and_honour_retry_after() {
    let fake = fake_with(FakeModel::new("m")).await;
    let config = ollama("flaky", &fake.base_url(), "retries = 2\nretry_backoff = \"10ms\"");
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    // One 429 asking for a one-second pause: the retry waits it out, then succeeds.
    fake.fail_next(1, 429, Some(1));
    let started = Instant::now();
    let response = within(LIMIT, client.generate(prompt("flaky/m", HELLO))).await.unwrap().into_inner();
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    assert_eq!(response.text, "You said: hello there");
    assert_eq!(fake.chat_requests().len(), 2);

    // More failures than retries: the last one is the call's status, with its retry hint.
    fake.fail_next(3, 503, Some(0));
    let status = within(LIMIT, client.generate(prompt("flaky/m", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(fake.chat_requests().len(), 5, "1 try + 2 retries");

    // A Retry-After beyond the call's deadline is not waited for.
    fake.fail_next(1, 429, Some(30));
    let mut request = tonic::Request::new(prompt("flaky/m", HELLO));
    request.set_timeout(Duration::from_secs(2));
    let status = within(LIMIT, copilot.client_without_local_deadline().generate(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(30)));
}

/// Waits no clock can hold: `Retry-After: 18446744073709551615` (Ollama-style) and OpenAI's
/// `retry-after-ms: 1e30` used to panic the call (CANCELLED, no status). They are capped at an
/// hour: too long to wait out within the deadline, so the status carries the capped hint.
#[tokio::test]
async fn absurd_retry_waits_are_capped_not_a_crash() {
    const KEY: &str = "sk-absurd-waits";
    let ollama_fake = fake_with(FakeModel::new("m")).await;
    let openai_fake = copilot_fakes::FakeOpenAi::start().await.with_api_key(KEY);
    openai_fake.add_model(FakeModel::new("m"));
    let config = [
        ollama("flaky", &ollama_fake.base_url(), "retries = 2\nretry_backoff = \"10ms\""),
        ollama("once", &ollama_fake.base_url(), ""),
        format!(
            "[providers.open]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"TEST_OPENAI_KEY\"\nretries = 2\n\
             retry_backoff = \"10ms\"\n",
            openai_fake.base_url()
        ),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[("TEST_OPENAI_KEY", KEY.into())]).await;
    let cap = Some(Duration::from_secs(3600));
    let with_deadline = |model: &str| {
        let mut request = tonic::Request::new(chat(model, HELLO));
        request.set_timeout(Duration::from_secs(5));
        request
    };

    // With retries left and a deadline: the retry is weighed against the deadline, not waited.
    ollama_fake.fail_next(1, 429, Some(u64::MAX));
    let status =
        within(LIMIT, copilot.client_without_local_deadline().chat(with_deadline("flaky/m"))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_retry_info().unwrap().retry_delay, cap);

    // No retries, no deadline: straight to the status, whose hint is capped too.
    ollama_fake.fail_next_with_headers(1, 503, &[("retry-after", "18446744073709551615")]);
    let status = within(LIMIT, copilot.client().await.chat(chat("once/m", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_retry_info().unwrap().retry_delay, cap);

    openai_fake.fail_next_with_headers(1, 429, &[("retry-after-ms", "1e30")]);
    let status =
        within(LIMIT, copilot.client_without_local_deadline().chat(with_deadline("open/m"))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_retry_info().unwrap().retry_delay, cap);
    assert_eq!(openai_fake.chat_requests().len(), 1, "no retry within the deadline");

    // The server is still there for the next call.
    let answer = within(LIMIT, copilot.client().await.chat(chat("open/m", HELLO))).await.unwrap().into_inner();
    assert!(within(LIMIT, answer.collect::<Vec<_>>()).await.iter().all(Result::is_ok));
}

/// A retry is never waited for longer than a short bound in place, even without a deadline: a
/// minute's `Retry-After` goes straight back to the caller with its RetryInfo.
#[tokio::test]
async fn a_long_retry_after_is_not_waited_for_in_place() {
    let fake = fake_with(FakeModel::new("m")).await;
    let config = ollama("flaky", &fake.base_url(), "retries = 2\nretry_backoff = \"10ms\"");
    let copilot = Copilot::start_with(&config, &[]).await;
    fake.fail_next(1, 429, Some(60));
    let started = std::time::Instant::now();
    let status =
        within(Duration::from_secs(15), copilot.client().await.chat(chat("flaky/m", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(60)));
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    assert_eq!(fake.chat_requests().len(), 1, "not retried in place");

    // A short one is still waited for and retried.
    fake.fail_next(1, 429, Some(1));
    let answer = within(LIMIT, copilot.client().await.chat(chat("flaky/m", HELLO))).await.unwrap().into_inner();
    assert!(within(LIMIT, answer.collect::<Vec<_>>()).await.iter().all(Result::is_ok));
    assert_eq!(fake.chat_requests().len(), 3, "the short wait was retried");
}

#[tokio::test]
async fn the_circuit_breaker_opens_and_recovers() {
    let fake = fake_with(FakeModel::new("m")).await;
    let config = ollama("flaky", &fake.base_url(), "breaker_failures = 2\nbreaker_cooldown = \"700ms\"");
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    fake.set_busy(true);
    for _ in 0..2 {
        assert_eq!(client.generate(prompt("flaky/m", HELLO)).await.unwrap_err().code(), Code::Unavailable);
    }
    let sent = fake.chat_requests().len();
    let status = client.generate(prompt("flaky/m", HELLO)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.get_details_error_info().unwrap().reason, "CIRCUIT_OPEN");
    assert_eq!(fake.chat_requests().len(), sent, "an open breaker sends nothing upstream");

    fake.set_busy(false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.generate(prompt("flaky/m", HELLO)).await.expect("the half-open probe succeeds and closes the breaker");
    client.generate(prompt("flaky/m", HELLO)).await.unwrap();
}

#[tokio::test]
async fn over_the_concurrency_limit_calls_get_resource_exhausted() {
    let fake =
        fake_with(FakeModel::new("m").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(20))).await;
    let config = ollama("small", &fake.base_url(), "max_concurrency = 1\nmax_queue = 0");
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    let mut running = within(LIMIT, client.chat(chat("small/m", HELLO))).await.unwrap().into_inner();
    within(LIMIT, running.next()).await.unwrap().unwrap();
    let status = client.chat(chat("small/m", HELLO)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.get_details_retry_info().is_some(), "the client is told when to retry");
    assert!(status.message().contains("max_concurrency"), "{}", status.message());

    drop(running);
    assert!(fake.wait_for_disconnects(1, LIMIT).await);
    // The place is free again.
    let mut next = within(LIMIT, client.chat(chat("small/m", HELLO))).await.unwrap().into_inner();
    within(LIMIT, next.next()).await.unwrap().unwrap();
}

#[tokio::test]
async fn replicas_share_the_load() {
    let model = || FakeModel::new("m").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(20));
    let one = fake_with(model()).await;
    let two = fake_with(model()).await;
    let config = [
        ollama("gpu1", &one.base_url(), ""),
        ollama("gpu2", &two.base_url(), ""),
        "[routing.aliases]\nlocal = [{ replicas = [\"gpu1/m\", \"gpu2/m\"] }]\n".into(),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    // Ten streams held open at once: least-outstanding balancing splits them evenly.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = within(LIMIT, client.chat(chat("local", HELLO))).await.unwrap().into_inner();
        within(LIMIT, stream.next()).await.unwrap().unwrap();
        streams.push(stream);
    }
    assert_eq!((one.active_streams(), two.active_streams()), (5, 5));
}

#[tokio::test]
async fn list_and_get_models_survive_a_provider_that_is_down() {
    let fake = FakeOllama::start().await;
    let mut model = FakeModel::new("llama3.2:3b");
    model.context_length = 8192;
    model.capabilities = vec!["completion".into(), "tools".into()];
    fake.add_model(model);
    let config = [
        ollama("up", &fake.base_url(), ""),
        ollama("down", &closed_port_url(), "list_timeout = \"500ms\""),
        "[routing.aliases]\nfast = [\"down/llama3.2:3b\", \"up/llama3.2:3b\"]\n".into(),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut client = copilot.client().await;

    let listing = within(LIMIT, client.list_models(ListModelsRequest {})).await.unwrap().into_inner();
    let names: Vec<_> = listing.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["up/llama3.2:3b", "fast"]);
    let alias = &listing.models[1];
    assert_eq!(alias.alias_targets, ["down/llama3.2:3b", "up/llama3.2:3b"]);
    assert_eq!(listing.failed_providers.len(), 1);
    assert_eq!(listing.failed_providers[0].provider, "down");

    let model = client.get_model(GetModelRequest { model: "up/llama3.2:3b".into() }).await.unwrap().into_inner();
    let model = model.model.unwrap();
    assert_eq!(model.context_length, Some(8192));
    assert_eq!(model.family, "llama");
    assert!(model.capabilities.contains(&"tools".to_string()));

    let status = client.get_model(GetModelRequest { model: "up/nope".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let alias = client.get_model(GetModelRequest { model: "fast".into() }).await.unwrap().into_inner().model.unwrap();
    assert_eq!(alias.name, "fast");
    assert_eq!(alias.context_length, Some(8192), "described by the first target that answers");
}

#[tokio::test]
async fn health_follows_the_providers() {
    let fake = fake_with(FakeModel::new("m")).await;
    let config = [
        ollama("up", &fake.base_url(), "health_interval = \"100ms\""),
        ollama("down", &closed_port_url(), "health_interval = \"100ms\""),
    ]
    .concat();
    let copilot = Copilot::start_with(&config, &[]).await;
    let mut health = HealthClient::new(copilot.channel().await);
    let status_of = |service: &str| HealthCheckRequest { service: service.into() };

    let mut down_reported = false;
    for _ in 0..50 {
        let down = health.check(status_of("provider/down")).await.unwrap().into_inner().status();
        if down == ServingStatus::NotServing {
            down_reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down_reported, "the down provider's health entry never turned NOT_SERVING");
    assert_eq!(health.check(status_of("provider/up")).await.unwrap().into_inner().status(), ServingStatus::Serving);
    assert_eq!(
        health.check(status_of("copilot.v1.Copilot")).await.unwrap().into_inner().status(),
        ServingStatus::Serving,
        "one provider up is enough to serve"
    );

    // When the last provider goes, the API is NOT_SERVING; the process itself is still live.
    drop(fake);
    let mut api_down = false;
    for _ in 0..50 {
        let api = health.check(status_of("copilot.v1.Copilot")).await.unwrap().into_inner().status();
        if api == ServingStatus::NotServing {
            api_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(api_down, "copilot.v1.Copilot stayed SERVING with no provider up");
    assert_eq!(health.check(status_of("")).await.unwrap().into_inner().status(), ServingStatus::Serving);
}
