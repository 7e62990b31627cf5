//! The polyglot promise, checked: a Python client generated from `proto/` calls the server, and
//! the proto passes `buf lint`. Both tools are installed by `scripts/test`.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use copilot_fakes::{FakeModel, FakeOllama, Reply};

use crate::harness::{Copilot, tool};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test]
async fn a_generated_python_client_calls_generate_and_streams_chat() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    fake.add_model(FakeModel::new("endless").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(10)));
    let copilot = Copilot::start(&fake, &[]).await;
    let python = tool("PYTHON", ".tools/venv/bin/python", "python3");
    let script = Path::new(REPO).join("tests/python/copilot_client_check.py");
    let addr = copilot.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python).arg(&script).args([addr.as_str(), "ollama/llama3.2:3b", "ollama/endless"]).output()
    })
    .await
    .unwrap()
    .expect("run python3 (scripts/test installs grpcio and grpcio-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn the_proto_passes_buf_lint() {
    let output = Command::new(tool("BUF", ".tools/node_modules/.bin/buf", "buf"))
        .arg("lint")
        .current_dir(REPO)
        .output()
        .expect("run buf (scripts/test installs it from npm: @bufbuild/buf)");
    assert!(
        output.status.success(),
        "buf lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
