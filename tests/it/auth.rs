//! API keys: who may call, which models each key may use, its request and token budgets, which
//! services probes may reach without a key, and that keys never reach the logs.

use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{GenerateRequest, GetModelRequest, ListModelsRequest};
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::harness::{Copilot, within};
use crate::requests::{HELLO, chat, prompt, reason, with_key};

const LIMIT: Duration = Duration::from_secs(20);

/// Test keys and their SHA-256 (`printf %s KEY | sha256sum`), worked out independently of the server.
const ALPHA: &str = "cpk_alpha_test_key";
const ALPHA_HASH: &str = "sha256:4d63903d956a1bdd30396662a5d2e3ef5b6b3244b1f41395b23e718b725b3838";
const BETA: &str = "cpk_beta_test_key";
const BETA_HASH: &str = "sha256:48ffb00b7b7429d9ed66661fcfdd9a607b9e14dff6d5122cb042f6be047d9f16";
const WRONG: &str = "cpk_wrong_test_key";

/// A fake Ollama with `small` and `big`, and a copilot in front of it requiring keys: `alpha` may
/// use `ollama/small` and the alias `fast` (which routes to `ollama/big`), `beta` anything.
async fn start(auth_extra: &str, alpha_extra: &str, beta_extra: &str) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("small").with_reply(Reply::Tokens(vec!["ok".into()])));
    fake.add_model(FakeModel::new("big").with_reply(Reply::Tokens(vec!["big".into()])));
    let config = format!(
        "[providers.ollama]\nretries = 0\nbreaker_failures = 0\n\
         [routing.aliases]\nfast = [\"ollama/big\"]\n\
         [auth]\nenabled = true\n{auth_extra}\n\
         [[auth.keys]]\nname = \"alpha\"\nhash = \"{ALPHA_HASH}\"\nmodels = [\"ollama/small\", \"fast\"]\n{alpha_extra}\n\
         [[auth.keys]]\nname = \"beta\"\nhash = \"{BETA_HASH}\"\n{beta_extra}\n"
    );
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    (fake, copilot)
}

async fn generate(
    client: &mut CopilotClient<Channel>,
    request: Request<GenerateRequest>,
) -> Result<String, tonic::Status> {
    within(LIMIT, client.generate(request)).await.map(|r| r.into_inner().text)
}

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated() {
    let (fake, copilot) = start("", "", "").await;
    let mut client = copilot.client().await;

    let status = generate(&mut client, Request::new(prompt("ollama/small", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "API_KEY_MISSING");
    assert!(status.message().contains("Bearer"), "{}", status.message());

    let mut request = Request::new(prompt("ollama/small", HELLO));
    request.metadata_mut().insert("authorization", format!("Basic {ALPHA}").parse().unwrap());
    let status = generate(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "API_KEY_MALFORMED");

    let status = generate(&mut client, with_key(prompt("ollama/small", HELLO), WRONG)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "API_KEY_INVALID");
    assert!(!status.message().contains(WRONG), "the key must not be echoed: {}", status.message());

    let status = within(LIMIT, client.list_models(ListModelsRequest {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = within(LIMIT, client.chat(chat("ollama/small", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(fake.chat_requests().is_empty(), "a refused call must not reach the upstream");

    assert_eq!(generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap(), "ok");
    let mut request = Request::new(prompt("ollama/small", HELLO));
    request.metadata_mut().insert("authorization", format!("bearer {BETA}").parse().unwrap());
    assert_eq!(generate(&mut client, request).await.unwrap(), "ok", "the scheme is case-insensitive");
}

#[tokio::test]
async fn a_key_uses_only_the_models_it_is_allowed() {
    let (fake, copilot) = start("", "", "").await;
    let mut client = copilot.client().await;

    assert_eq!(generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap(), "ok");
    // A bare name is checked as what it routes to, and an allowed alias may route anywhere.
    assert_eq!(generate(&mut client, with_key(prompt("small", HELLO), ALPHA)).await.unwrap(), "ok");
    assert_eq!(generate(&mut client, with_key(prompt("ollama/small:latest", HELLO), ALPHA)).await.unwrap(), "ok");
    assert_eq!(generate(&mut client, with_key(prompt("fast", HELLO), ALPHA)).await.unwrap(), "big");
    let served = fake.chat_requests().len();

    let status = generate(&mut client, with_key(prompt("ollama/big", HELLO), ALPHA)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "MODEL_NOT_ALLOWED");
    assert!(status.message().contains("'ollama/big'") && status.message().contains("'alpha'"), "{}", status.message());
    assert!(!status.message().contains(ALPHA), "{}", status.message());
    let status = generate(&mut client, with_key(prompt("big", HELLO), ALPHA)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = within(LIMIT, client.chat(with_key(chat("ollama/big", HELLO), ALPHA))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = within(LIMIT, client.get_model(with_key(GetModelRequest { model: "ollama/big".into() }, ALPHA)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(fake.chat_requests().len(), served, "a refused model must not reach the upstream");

    // ListModels shows each key what it may use.
    let names = |response: copilot::proto::v1::ListModelsResponse| {
        let mut names: Vec<String> = response.models.into_iter().map(|m| m.name).collect();
        names.sort();
        names
    };
    let listed = within(LIMIT, client.list_models(with_key(ListModelsRequest {}, ALPHA))).await.unwrap();
    assert_eq!(names(listed.into_inner()), ["fast", "ollama/small:latest"]);
    let listed = within(LIMIT, client.list_models(with_key(ListModelsRequest {}, BETA))).await.unwrap();
    assert_eq!(names(listed.into_inner()), ["fast", "ollama/big:latest", "ollama/small:latest"]);
    assert_eq!(generate(&mut client, with_key(prompt("ollama/big", HELLO), BETA)).await.unwrap(), "big");
}

async fn health(channel: Channel, key: Option<&str>) -> Result<(), tonic::Status> {
    let request = HealthCheckRequest { service: String::new() };
    let request = match key {
        Some(key) => with_key(request, key),
        None => Request::new(request),
    };
    within(LIMIT, HealthClient::new(channel).check(request)).await.map(|_| ())
}

async fn reflection(channel: Channel) -> Result<(), tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let mut responses = within(LIMIT, client.server_reflection_info(tokio_stream::iter([request]))).await?.into_inner();
    within(LIMIT, responses.next()).await.expect("a reflection answer").map(|_| ())
}

#[tokio::test]
async fn health_and_reflection_are_open_unless_configured_closed() {
    let (_fake, copilot) = start("", "", "").await;
    health(copilot.channel().await, None).await.unwrap();
    reflection(copilot.channel().await).await.unwrap();

    let (_fake, copilot) = start("open_health = false\nopen_reflection = false", "", "").await;
    let status = health(copilot.channel().await, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = health(copilot.channel().await, Some(WRONG)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    health(copilot.channel().await, Some(ALPHA)).await.unwrap();
    let status = reflection(copilot.channel().await).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_key_over_its_request_rate_is_told_when_to_retry() {
    let (_fake, copilot) = start("", "requests_per_minute = 2", "").await;
    let mut client = copilot.client().await;
    generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap();
    within(LIMIT, client.list_models(with_key(ListModelsRequest {}, ALPHA))).await.unwrap();

    let status = generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "KEY_REQUEST_LIMIT");
    assert!(status.message().contains("2 requests per minute"), "{}", status.message());
    // Two per minute: the next one is about 30 seconds away.
    let delay = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    assert!(delay > Duration::from_secs(25) && delay <= Duration::from_secs(30), "{delay:?}");
    let quota = status.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "key:alpha");

    // Budgets are per key.
    generate(&mut client, with_key(prompt("ollama/small", HELLO), BETA)).await.unwrap();
}

#[tokio::test]
async fn a_key_over_its_token_budget_is_refused_until_it_refills() {
    // The fake counts a word of prompt as a token; a reply of 30 tokens overdraws 20 per minute.
    let (fake, copilot) = start("", "tokens_per_minute = 20", "tokens_per_minute = 20").await;
    let words: Vec<String> = (0..30).map(|i| format!("w{i} ")).collect();
    fake.add_model(FakeModel::new("small").with_reply(Reply::Tokens(words)));
    let mut client = copilot.client().await;

    // The streaming path charges what the completion used when it ends.
    let mut stream =
        within(LIMIT, client.chat(with_key(chat("ollama/small", HELLO), ALPHA))).await.unwrap().into_inner();
    let mut usage = None;
    while let Some(item) = within(LIMIT, stream.next()).await {
        usage = item.unwrap().usage.or(usage);
    }
    let usage = usage.expect("usage at the end of the stream");
    assert_eq!((usage.input_tokens, usage.output_tokens), (2, 30));

    let status = generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "KEY_TOKEN_LIMIT");
    assert!(status.message().contains("20 tokens per minute"), "{}", status.message());
    // 32 used of 20 leaves a debt of 12; one token more is 13 of the 20 that refill per minute.
    let delay = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    assert!(delay > Duration::from_secs(35) && delay <= Duration::from_secs(39), "{delay:?}");
    // Listing spends no tokens, so it is still allowed.
    within(LIMIT, client.list_models(with_key(ListModelsRequest {}, ALPHA))).await.unwrap();

    // Generate charges too.
    generate(&mut client, with_key(prompt("ollama/small", HELLO), BETA)).await.unwrap();
    let status = within(LIMIT, client.chat(with_key(chat("ollama/small", HELLO), BETA))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn concurrent_completions_cannot_overdraw_the_token_budget() {
    // Each call reserves "hello there" (11 characters: 3 tokens) + max_tokens 7 = 10 of beta's 100;
    // the fake holds every reply 2 s, so all 30 are in flight before any settles.
    let (fake, copilot) = start("", "", "tokens_per_minute = 100").await;
    fake.add_model(FakeModel::new("slow").with_reply(Reply::Endless).with_header_delay(Duration::from_secs(2)));
    let (admitted, served) = thirty_at_once(&copilot, Some(7)).await;
    // 100 / 10 per reservation: ten fit, and the budget was not overdrawn.
    assert_eq!(admitted, 10, "admitted");
    assert!(served <= 100, "{served} tokens served");
    assert_eq!(fake.completed_streams(), 10);
}

#[tokio::test]
async fn a_call_without_max_tokens_reserves_its_providers_default_max_tokens() {
    // No max_tokens in the requests: the instance's defaults.max_tokens (7) is reserved, so ten
    // fit in 100 as above, where auth.default_reserved_tokens (256) would let one through.
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("slow").with_reply(Reply::Endless).with_header_delay(Duration::from_secs(2)));
    let config = format!(
        "[providers.ollama]\nretries = 0\ndefaults = {{ max_tokens = 7 }}\n[auth]\nenabled = true\n\
         [[auth.keys]]\nname = \"beta\"\nhash = \"{BETA_HASH}\"\ntokens_per_minute = 100\n"
    );
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    let (admitted, served) = thirty_at_once(&copilot, None).await;
    assert_eq!(admitted, 10, "admitted");
    assert!(served <= 100, "{served} tokens served");
}

/// Thirty concurrent Generate calls to `ollama/slow` with beta's key: how many were admitted, and
/// the tokens they used; the others must have been refused for the token budget.
async fn thirty_at_once(copilot: &Copilot, max_tokens: Option<u32>) -> (usize, u32) {
    let client = copilot.client().await;
    let calls = (0..30).map(|_| {
        let mut client = client.clone();
        let mut request = prompt("ollama/slow", HELLO);
        request.options = Some(copilot::proto::v1::GenerationOptions { max_tokens, ..Default::default() });
        let request = with_key(request, BETA);
        async move { within(LIMIT, client.generate(request)).await.map(|r| r.into_inner()) }
    });
    let mut served = 0;
    let mut admitted = 0;
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(reply) => {
                let usage = reply.usage.expect("usage");
                assert_eq!((usage.input_tokens, usage.output_tokens), (2, 7));
                served += usage.input_tokens + usage.output_tokens;
                admitted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "KEY_TOKEN_LIMIT");
                assert!(status.get_details_retry_info().is_some(), "RetryInfo");
            }
        }
    }
    (admitted, served)
}

#[tokio::test]
async fn keys_never_reach_the_logs_but_their_names_may() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("small"));
    let config = format!(
        "[providers.ollama]\nretries = 0\nbreaker_failures = 0\n[log]\nformat = \"json\"\n\
         [auth]\nenabled = true\n[[auth.keys]]\nname = \"alpha\"\nhash = \"{ALPHA_HASH}\"\nmodels = [\"ollama/small\"]\n"
    );
    let copilot = Copilot::start_with(
        &config,
        &[("OLLAMA_HOST", fake.base_url()), ("RUST_LOG", "copilot=trace,tower=debug,info".into())],
    )
    .await;
    let mut client = copilot.client().await;
    generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap();
    generate(&mut client, with_key(prompt("ollama/big", HELLO), ALPHA)).await.unwrap_err();
    generate(&mut client, with_key(prompt("ollama/small", HELLO), WRONG)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = copilot.logs();
    assert!(logs.contains("copilot listening"), "the log was captured:\n{logs}");
    for secret in [ALPHA, WRONG, ALPHA_HASH.trim_start_matches("sha256:")] {
        assert!(!logs.contains(secret), "{secret} appears in the log:\n{logs}");
    }
}

#[tokio::test]
async fn a_key_made_by_copilot_keys_new_is_accepted() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_copilot"))
        .args(["keys", "new", "--name", "ci"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let key = text.split_whitespace().find(|w| w.starts_with("cpk_")).expect("a key").to_string();
    let entry = &text[text.find("[[auth.keys]]").expect("a configuration entry")..];
    assert!(entry.contains("name = \"ci\""), "{text}");

    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("small"));
    let config = format!("[providers.ollama]\nretries = 0\n[auth]\nenabled = true\n{entry}");
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    let mut client = copilot.client().await;
    generate(&mut client, with_key(prompt("ollama/small", HELLO), &key)).await.unwrap();
    let status = generate(&mut client, Request::new(prompt("ollama/small", HELLO))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_call_span_names_the_key_but_never_holds_it() {
    use copilot_fakes::otlp::FakeCollector;
    let collector = FakeCollector::start().await;
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("small"));
    let config = format!(
        "[providers.ollama]\nretries = 0\n[auth]\nenabled = true\n\
         [[auth.keys]]\nname = \"alpha\"\nhash = \"{ALPHA_HASH}\"\n"
    );
    let env = [
        ("OLLAMA_HOST", fake.base_url()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    let copilot = Copilot::start_with(&config, &env).await;
    let mut client = copilot.client().await;
    generate(&mut client, with_key(prompt("ollama/small", HELLO), ALPHA)).await.unwrap();
    within(LIMIT, client.list_models(with_key(ListModelsRequest {}, WRONG))).await.unwrap_err();

    let allowed =
        collector.wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/Generate").await.expect("a span for the call");
    assert_eq!(allowed.str_attr("copilot.api_key.name"), Some("alpha"));
    let refused = collector
        .wait_for_span(LIMIT, |s| s.name == "copilot.v1.Copilot/ListModels")
        .await
        .expect("a span for the refused call");
    assert_eq!(refused.int_attr("rpc.grpc.status_code"), Some(Code::Unauthenticated as i64));
    assert_eq!(refused.str_attr("copilot.api_key.name"), None);
    let everything = format!("{:?}", collector.spans());
    assert!(!everything.contains(ALPHA) && !everything.contains(WRONG), "a key reached a span");
}
