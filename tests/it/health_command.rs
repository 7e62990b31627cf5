//! `copilot health`, the container health check: the real binary asking the real server over gRPC
//! health, at the address the configuration names.

use std::process::Output;
use std::time::{Duration, Instant};

use copilot_fakes::{FakeModel, FakeOllama};

use crate::harness::Copilot;

async fn health(args: Vec<String>) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot"))
        .arg("health")
        .args(args)
        .env_remove("COPILOT_CONFIG")
        .env_remove("COPILOT_ADDR")
        .output()
        .await
        .expect("run copilot health")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn started() -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let copilot = Copilot::start(&fake, &[("COPILOT_SERVER__DRAIN_DELAY", "3s")]).await;
    (fake, copilot)
}

#[tokio::test]
async fn a_serving_server_passes_for_the_process_and_the_api() {
    let (_fake, copilot) = started().await;
    let addr = copilot.addr.to_string();
    for service in ["", "copilot.v1.Copilot"] {
        let output = health(vec!["--addr".into(), addr.clone(), "--service".into(), service.into()]).await;
        assert!(output.status.success(), "service {service:?}: {}", text(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    }
}

#[tokio::test]
async fn the_address_comes_from_the_configuration_and_a_wildcard_means_loopback() {
    let (_fake, copilot) = started().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    let toml = format!("[server]\naddr = \"0.0.0.0:{}\"\n[providers.ollama]\n", copilot.addr.port());
    std::fs::write(config.path(), toml).unwrap();
    let output = health(vec!["--config".into(), config.path().display().to_string()]).await;
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test]
async fn an_unknown_service_fails_with_a_message_naming_it() {
    let (_fake, copilot) = started().await;
    let output =
        health(vec!["--addr".into(), copilot.addr.to_string(), "--service".into(), "nope.v1.Nope".into()]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let message = text(&output);
    assert!(message.contains("nope.v1.Nope") && message.contains("no such health service"), "{message}");
}

#[tokio::test]
async fn a_draining_server_fails_the_check() {
    let (_fake, copilot) = started().await;
    copilot.signal("TERM");
    // The drain turns health NOT_SERVING at once; the listener stays open for the drain delay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = health(vec!["--addr".into(), copilot.addr.to_string(), "--service".into(), "".into()]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("NOT_SERVING"), "{}", text(&output));
}

#[tokio::test]
async fn nothing_listening_fails_quickly_with_the_reason() {
    // A port that was free a moment ago: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let output = health(vec!["--addr".into(), format!("127.0.0.1:{port}"), "--timeout".into(), "2s".into()]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("cannot connect"), "{}", text(&output));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}
