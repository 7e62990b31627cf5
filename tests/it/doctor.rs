//! `copilot doctor`: the real binary as a subprocess, in local mode against a fake Ollama (its
//! generation going through the in-process gateway), and in remote mode against a running server.

use std::path::Path;
use std::time::{Duration, Instant};

use copilot_fakes::{FakeModel, FakeOllama, Reply};
use tokio::process::Command;

use crate::harness::{Copilot, OLLAMA_ONLY, scrub_environment, within};

const LIMIT: Duration = Duration::from_secs(90);

/// A key and its SHA-256 (`printf %s KEY | sha256sum`), as in `auth.rs`.
const KEY: &str = "cpk_alpha_test_key";
const KEY_HASH: &str = "sha256:4d63903d956a1bdd30396662a5d2e3ef5b6b3244b1f41395b23e718b725b3838";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The RESULT and DETAIL of every row named `check`.
    fn rows(&self, check: &str) -> Vec<(&str, &str)> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix(check))
            .filter(|rest| rest.starts_with("  "))
            .map(|rest| {
                let rest = rest.trim_start();
                let (result, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                (result, detail.trim_start())
            })
            .collect()
    }

    /// The RESULT and DETAIL of the one row named `check`.
    fn row(&self, check: &str) -> (&str, &str) {
        let rows = self.rows(check);
        assert_eq!(rows.len(), 1, "expected one row {check:?}:\n{self}");
        rows[0]
    }

    fn assert_row(&self, check: &str, result: &str, detail_contains: &str) {
        let (got, detail) = self.row(check);
        assert_eq!(got, result, "row {check:?}:\n{self}");
        assert!(detail.contains(detail_contains), "row {check:?} should mention {detail_contains:?}:\n{self}");
    }

    /// The "what to do" line of a FAIL or WARN row.
    fn advice(&self, result: &str, check: &str) -> &str {
        let prefix = format!("  {result} {check}: ");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no advice for {result} {check:?}:\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `copilot doctor ARGS` with `config` as its file (none: the environment alone), a scrubbed
/// environment plus `env`, and no models for the embedded engine to find.
async fn doctor(args: &[&str], config: Option<&str>, env: &[(&str, String)]) -> Run {
    let models = tempfile::tempdir().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_copilot"));
    command.arg("doctor").args(args);
    if let Some(config) = config {
        std::fs::write(file.path(), config).unwrap();
        command.arg("--config").arg(file.path());
    }
    scrub_environment(&mut command);
    command.env_remove("COPILOT_API_KEY");
    command.env("COPILOT_MODELS_DIR", models.path()).env("OLLAMA_MODELS", "/nonexistent");
    for (k, v) in env {
        command.env(k, v);
    }
    command.kill_on_drop(true);
    let output = within(LIMIT, command.output()).await.expect("run copilot doctor");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn fake_with(model: FakeModel) -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.add_model(model);
    fake
}

fn reply(words: &[&str]) -> Reply {
    Reply::Tokens(words.iter().map(|w| w.to_string()).collect())
}

/// A loopback address nothing listens on (bound a moment ago, then released).
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn ollama_env(fake: &FakeOllama, model: &str) -> Vec<(&'static str, String)> {
    vec![("OLLAMA_HOST", fake.base_url()), ("OLLAMA_MODEL", model.to_string())]
}

#[tokio::test]
async fn local_mode_passes_against_a_working_ollama_and_generates_through_the_gateway() {
    let fake = fake_with(FakeModel::new("llama3.2:3b").with_reply(reply(&["The", " sky", " is", " blue."]))).await;
    let run = doctor(&[], Some(OLLAMA_ONLY), &ollama_env(&fake, "llama3.2:3b")).await;

    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("configuration", "PASS", "default model ollama/llama3.2:3b");
    run.assert_row("provider ollama: setup", "PASS", &fake.base_url());
    run.assert_row("provider ollama: reachable", "PASS", "version 0.12.3; 1 models");
    run.assert_row("provider ollama: model", "PASS", "llama3.2:3b: llama, 3.2B parameters, Q4_K_M, context 131072");
    run.assert_row("gateway: started", "PASS", "in-process on 127.0.0.1:");
    run.assert_row("health: liveness (\"\")", "PASS", "SERVING");
    run.assert_row("health: readiness", "PASS", "SERVING");
    run.assert_row("reflection", "PASS", "copilot.v1.Copilot");
    run.assert_row("ListModels", "PASS", "1 models");
    run.assert_row("GetModel", "PASS", "ollama/llama3.2:3b: llama");
    run.assert_row("Generate", "PASS", "ollama/llama3.2:3b answered \"The sky is blue.\" (4 tokens)");
    run.assert_row("Generate: latency", "PASS", "(limit 10s)");
    run.assert_row("Chat", "PASS", "streamed 4 chunks");
    run.assert_row("Chat: time to first token", "PASS", "to the first token");
    run.assert_row("resources: peak memory", "INFO", "MiB (VmHWM");
    assert!(run.stdout.contains("0 failed") && run.stdout.contains("every required check passed"), "{run}");
    // The generation and the chat reached the upstream, through the gateway.
    let sent = fake.chat_requests();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|body| body["model"] == "llama3.2:3b" && body["options"]["num_predict"] == 32), "{sent:?}");
}

#[tokio::test]
async fn a_missing_default_model_fails_with_the_pull_command() {
    let fake = fake_with(FakeModel::new("qwen2.5:0.5b")).await;
    let run = doctor(&[], Some(OLLAMA_ONLY), &ollama_env(&fake, "llama3.2:3b")).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("provider ollama: reachable", "PASS", "1 models");
    run.assert_row("provider ollama: model", "FAIL", "llama3.2:3b: not found at ollama");
    assert_eq!(
        run.advice("FAIL", "provider ollama: model"),
        "ollama pull llama3.2:3b; or use one it has: qwen2.5:0.5b"
    );
    // The gateway says the same, and no generation is attempted for a model that is not there.
    run.assert_row("GetModel", "FAIL", "NOT_FOUND");
    assert!(run.rows("Generate").is_empty(), "{run}");
    assert!(run.stdout.contains("some required checks failed"), "{run}");
}

#[tokio::test]
async fn an_unreachable_default_provider_fails_quickly_with_what_to_start() {
    let host = format!("http://{}", free_addr());
    let started = Instant::now();
    let run =
        doctor(&[], Some(OLLAMA_ONLY), &[("OLLAMA_HOST", host.clone()), ("OLLAMA_MODEL", "llama3.2:3b".into())]).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("provider ollama: reachable", "FAIL", "cannot reach the upstream");
    let advice = run.advice("FAIL", "provider ollama: reachable");
    assert!(advice.contains("start Ollama (`ollama serve`)") && advice.contains("OLLAMA_HOST"), "{advice}");
    run.assert_row("Generate", "FAIL", "UNAVAILABLE");
    assert!(run.advice("FAIL", "Generate").contains("OLLAMA_HOST"), "{run}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}:\n{run}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_provider_the_default_does_not_need_is_a_warning() {
    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let config = format!("{OLLAMA_ONLY}[providers.spare]\nkind = \"ollama\"\nbase_url = \"http://{}\"\n", free_addr());
    let run = doctor(&[], Some(&config), &ollama_env(&fake, "llama3.2:3b")).await;

    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("provider spare: reachable", "WARN", "cannot reach the upstream");
    let advice = run.advice("WARN", "provider spare: reachable");
    assert!(
        advice.contains("providers.spare.base_url") && advice.contains("needed only for calls routed to spare/"),
        "{run}"
    );
    run.assert_row("provider ollama: reachable", "PASS", "version 0.12.3");
    run.assert_row("Generate", "PASS", "ollama/llama3.2:3b answered");
    assert!(run.stdout.contains("1 warnings: every required check passed"), "{run}");
}

/// The built-in configuration (no file): the embedded engine is the default and needs its model;
/// the implicit local Ollama is only a warning when it is not running.
#[cfg(feature = "embedded")]
#[tokio::test]
async fn the_built_in_configuration_needs_the_embedded_model_and_not_ollama() {
    let host = format!("http://{}", free_addr());
    let run = doctor(&[], None, &[("OLLAMA_HOST", host)]).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("configuration", "PASS", "no file");
    run.assert_row("provider embedded: model", "FAIL", "qwen2.5-coder-0.5b-instruct: not found at embedded");
    assert_eq!(run.advice("FAIL", "provider embedded: model"), "run `copilot models fetch`");
    run.assert_row("provider ollama: reachable", "WARN", "cannot reach the upstream");
}

/// With Ollama the default (OLLAMA_MODEL), the empty embedded engine is only a warning.
#[cfg(feature = "embedded")]
#[tokio::test]
async fn with_ollama_the_default_an_empty_embedded_engine_is_a_warning() {
    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let run = doctor(&[], None, &ollama_env(&fake, "llama3.2:3b")).await;

    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("provider embedded: model", "WARN", "not found at embedded");
    let advice = run.advice("WARN", "provider embedded: model");
    assert!(advice.starts_with("run `copilot models fetch`") && advice.contains("needed only"), "{run}");
    run.assert_row("provider ollama: model", "PASS", "llama3.2:3b");
    run.assert_row("Generate", "PASS", "ollama/llama3.2:3b answered");
}

#[tokio::test]
async fn a_configuration_error_is_a_fail_row_not_a_crash() {
    let run = doctor(&[], Some("[server]\nadr = \"x\"\n"), &[]).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("configuration", "FAIL", "server.adr");
    assert!(run.advice("FAIL", "configuration").contains("fix the setting"), "{run}");
}

#[tokio::test]
async fn a_slow_model_fails_the_latency_row_not_the_generation() {
    let slow = FakeModel::new("llama3.2:3b")
        .with_reply(reply(&["one", " two", " three", " four", " five"]))
        .with_token_delay(Duration::from_millis(300));
    let fake = fake_with(slow).await;
    let run = doctor(&["--max-latency", "500ms"], Some(OLLAMA_ONLY), &ollama_env(&fake, "llama3.2:3b")).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("Generate", "PASS", "\"one two three four five\"");
    run.assert_row("Generate: latency", "FAIL", "over the limit of 500ms");
    assert!(run.advice("FAIL", "Generate: latency").contains("raise --max-latency"), "{run}");
}

#[tokio::test]
async fn remote_mode_passes_against_a_running_server() {
    let fake = fake_with(FakeModel::new("llama3.2:3b").with_reply(reply(&["Hello", " there"]))).await;
    let copilot = Copilot::start(&fake, &[("OLLAMA_MODEL", "llama3.2:3b")]).await;
    let addr = copilot.addr.to_string();
    let run = doctor(&["--addr", &addr], None, &[]).await;

    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("server: connect", "PASS", &format!("{addr} (plaintext)"));
    run.assert_row("health: liveness (\"\")", "PASS", "SERVING");
    run.assert_row("health: readiness", "PASS", "SERVING");
    run.assert_row("reflection", "PASS", "copilot.v1.Copilot");
    run.assert_row("ListModels", "PASS", "1 models, 0 aliases");
    run.assert_row("health: provider/ollama", "PASS", "SERVING");
    run.assert_row("GetModel", "PASS", "ollama/llama3.2:3b: llama, 3.2B parameters");
    run.assert_row("Generate", "PASS", "\"Hello there\"");
    run.assert_row("Chat", "PASS", "streamed 2 chunks");
    run.assert_row("Chat: time to first token", "PASS", "(limit 10s)");
    // Local rows have no place in a remote check.
    assert!(run.rows("configuration").is_empty() && run.rows("resources: peak memory").is_empty(), "{run}");
    assert_eq!(fake.chat_requests().len(), 2);

    // --model picks what to test; one that is not there fails with the server's NOT_FOUND.
    let run = doctor(&["--addr", &addr, "--model", "ollama/nope"], None, &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("GetModel", "FAIL", "ollama/nope: NOT_FOUND");
    assert!(run.advice("FAIL", "GetModel").contains("ollama pull nope"), "{run}");
}

#[tokio::test]
async fn remote_mode_fails_when_the_servers_upstream_is_down() {
    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let copilot = Copilot::start(&fake, &[("OLLAMA_MODEL", "llama3.2:3b")]).await;
    drop(fake);
    let run = doctor(&["--addr", &copilot.addr.to_string()], None, &[]).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("server: connect", "PASS", "");
    run.assert_row("Generate", "FAIL", "UNAVAILABLE");
    assert!(run.advice("FAIL", "Generate").contains("the server cannot reach its provider 'ollama'"), "{run}");
}

#[tokio::test]
async fn remote_mode_with_api_keys_needs_the_key_and_never_prints_it() {
    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let config =
        format!("{OLLAMA_ONLY}[auth]\nenabled = true\n[[auth.keys]]\nname = \"doctor\"\nhash = \"{KEY_HASH}\"\n");
    let copilot = Copilot::start_with(&config, &ollama_env(&fake, "llama3.2:3b")).await;
    let addr = copilot.addr.to_string();

    let run = doctor(&["--addr", &addr], None, &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("health: readiness", "PASS", "SERVING");
    run.assert_row("ListModels", "FAIL", "UNAUTHENTICATED");
    assert!(run.advice("FAIL", "ListModels").contains("UNAUTHENTICATED: pass --api-key"), "{run}");
    assert!(run.rows("Generate").is_empty(), "every other call would be refused the same way:\n{run}");

    let run = doctor(&["--addr", &addr, "--api-key", KEY], None, &[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("ListModels", "PASS", "1 models");
    run.assert_row("Generate", "PASS", "answered");
    assert!(!run.stdout.contains(KEY) && !run.stderr.contains(KEY), "the key was printed:\n{run}");

    // From the environment too, with JSON output.
    let run = doctor(&["--addr", &addr, "--json"], None, &[("COPILOT_API_KEY", KEY.to_string())]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(json["mode"], "remote");
    assert_eq!(json["ok"], true);
    let checks = json["checks"].as_array().unwrap();
    let generate = checks.iter().find(|c| c["check"] == "Generate").unwrap();
    assert_eq!(generate["result"], "PASS");
    assert!(!run.stdout.contains(KEY));

    let run = doctor(&["--addr", &addr, "--api-key", "cpk_wrong"], None, &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.advice("FAIL", "ListModels").contains("the server does not know that key"), "{run}");
}

#[tokio::test]
async fn nothing_listening_fails_the_connection_row_with_advice() {
    let run = doctor(&["--addr", &free_addr()], None, &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("server: connect", "FAIL", "");
    assert!(run.advice("FAIL", "server: connect").contains("is copilot running at"), "{run}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [&["--addr", "no-port"][..], &["--tls"], &["--max-latency", "0s"], &["--max-latency", "soon"]] {
        let run = doctor(args, None, &[]).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run}");
    }
}

/// Writes `contents` to `name` in `dir`; returns the path.
fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn remote_mode_speaks_tls_with_a_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "doctor test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        write(dir.path(), "tls.crt", &cert.pem()),
        write(dir.path(), "tls.key", &key.serialize_pem()),
        write(dir.path(), "ca.crt", &ca.pem()),
    );

    let fake = fake_with(FakeModel::new("llama3.2:3b")).await;
    let config = format!("{OLLAMA_ONLY}[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n");
    let copilot = Copilot::start_with(&config, &ollama_env(&fake, "llama3.2:3b")).await;
    let addr = format!("localhost:{}", copilot.addr.port());

    let run = doctor(&["--addr", &addr, "--tls", "--ca-file", &ca], None, &[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("server: connect", "PASS", "(TLS)");
    run.assert_row("Generate", "PASS", "answered");

    // Plaintext gets nowhere, and the advice says why.
    let run = doctor(&["--addr", &addr], None, &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("server: connect", "FAIL", "no gRPC answer");
    assert!(run.advice("FAIL", "server: connect").contains("pass --tls"), "{run}");
}

#[tokio::test]
async fn a_listener_that_never_answers_fails_the_connection_row_within_bounds() {
    // Connections complete in the kernel's backlog; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let run = doctor(&["--addr", &silent.local_addr().unwrap().to_string()], None, &[]).await;

    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("server: connect", "FAIL", "no gRPC answer");
    assert!(run.rows("ListModels").is_empty(), "nothing more is tried:\n{run}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_shared_redis_gets_a_row_with_its_password_masked() {
    let fake = fake_with(FakeModel::new("llama3.2:3b").with_reply(reply(&["ok"]))).await;
    let redis = crate::redis_server::RedisServer::start_secured("pw-never-printed", None);
    let url = format!("redis://:pw-never-printed@127.0.0.1:{}/", redis.port);
    let mut env = ollama_env(&fake, "llama3.2:3b");
    env.push(("COPILOT_REDIS_URL", url));
    let run = doctor(&[], Some(OLLAMA_ONLY), &env).await;
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("shared state (Redis)", "PASS", &format!("redis://:***@127.0.0.1:{}/: PING", redis.port));
    run.assert_row("shared state (Redis)", "PASS", "Redis 7");
    run.assert_row("shared state (Redis)", "PASS", "maxmemory-policy noeviction");
    assert!(!run.stdout.contains("pw-never-printed") && !run.stderr.contains("pw-never-printed"), "{run}");
    // The cache in a Redis that evicts nothing would fill it: a warning.
    env.push(("COPILOT_CACHE__ENABLED", "true".into()));
    let run = doctor(&[], Some(OLLAMA_ONLY), &env).await;
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("shared state (Redis)", "WARN", "key budgets and the response cache shared");
    assert!(run.stdout.contains("volatile-lru"), "{run}");

    // Down: a warning with the default policy, a failure with on_error = closed.
    let nothing = crate::redis_server::RedisServer::not_started();
    let mut env = ollama_env(&fake, "llama3.2:3b");
    env.push(("COPILOT_REDIS_URL", nothing.url()));
    let run = doctor(&[], Some(OLLAMA_ONLY), &env).await;
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_row("shared state (Redis)", "WARN", "does not answer");
    env.push(("COPILOT_STATE__ON_ERROR", "closed".into()));
    let run = doctor(&[], Some(OLLAMA_ONLY), &env).await;
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_row("shared state (Redis)", "FAIL", "refused (on_error = closed)");
}

#[tokio::test]
async fn with_sentinel_the_redis_row_names_the_primary_the_sentinel_found() {
    let fake = fake_with(FakeModel::new("llama3.2:3b").with_reply(reply(&["ok"]))).await;
    let group = crate::redis_server::SentinelGroup::start("pw-never-printed");
    let service = crate::redis_server::SENTINEL_SERVICE;
    let mut env = ollama_env(&fake, "llama3.2:3b");
    env.push(("COPILOT_STATE__TOPOLOGY", "sentinel".into()));
    env.push(("COPILOT_REDIS_URL", format!("redis://:pw-never-printed@{service}/0")));
    env.push(("COPILOT_REDIS_SENTINELS", format!("redis://127.0.0.1:{}", group.sentinel_port)));
    let run = doctor(&[], Some(OLLAMA_ONLY), &env).await;
    assert_eq!(run.code, Some(0), "{run}");
    let primary = format!("redis://:***@{service}/0 (Sentinel's primary: 127.0.0.1:{}): PING", group.primary.port);
    run.assert_row("shared state (Redis)", "PASS", &primary);
    assert!(!run.stdout.contains("pw-never-printed") && !run.stderr.contains("pw-never-printed"), "{run}");
}
