//! The polyglot promise, checked: the example clients in `examples/` (Python with grpcio, Node.js
//! with @grpc/grpc-js), generated from `proto/`, call the real server; the proto passes `buf lint`.
//! Their tools and packages are installed by `scripts/test`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use copilot_fakes::{FakeModel, FakeOllama, Reply};

use crate::harness::{Copilot, tool};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MODEL: &str = "ollama/llama3.2:3b";
const SLOW_MODEL: &str = "ollama/endless";

/// Copilot in front of a fake Ollama with an echoing `MODEL` and an endless `SLOW_MODEL`.
async fn server() -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    fake.add_model(FakeModel::new("endless").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(10)));
    let copilot = Copilot::start(&fake, &[]).await;
    (fake, copilot)
}

/// Runs `program` with `args` in `examples/<dir>`; returns whether it succeeded, its standard output
/// and both outputs for failure messages.
async fn run_example(dir: &str, program: &str, args: &[&str]) -> (bool, String, String) {
    let cwd = Path::new(REPO).join("examples").join(dir);
    let mut command = Command::new(program);
    command.args(args).current_dir(cwd);
    let shown = format!("{program} {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("run {shown} (scripts/test installs the examples' packages): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let both = format!("{shown}:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), stdout, both)
}

/// The example's check script, then its command line: a reply, and an error with its reason.
async fn check_example(dir: &str, program: &str, check: &str, cli: &str) {
    let (_fake, copilot) = server().await;
    let addr = copilot.addr.to_string();
    let (ok, stdout, all) = run_example(dir, program, &[check, &addr, MODEL, SLOW_MODEL]).await;
    assert!(ok && stdout.contains("client: all checks passed"), "{all}");

    let (ok, stdout, all) = run_example(dir, program, &[cli, "--address", &addr, "--model", MODEL, "hi there"]).await;
    assert!(ok, "{all}");
    assert!(stdout.contains("Generate: You said: hi there"), "{all}");
    assert!(stdout.contains("Chat: You said: hi there\n[ollama/llama3.2:3b: 4 tokens"), "{all}");

    let (ok, _, all) = run_example(dir, program, &[cli, "--address", &addr, "--model", "ollama/nope", "hi"]).await;
    assert!(!ok && all.contains("NOT_FOUND (MODEL_NOT_FOUND): "), "{all}");
}

#[tokio::test]
async fn the_python_example_calls_generate_streams_chat_and_handles_errors_and_deadlines() {
    let python = tool("PYTHON", ".tools/venv/bin/python", "python3");
    check_example("python", &python, "check_client.py", "client.py").await;
}

#[tokio::test]
async fn the_node_example_calls_generate_streams_chat_and_handles_errors_and_deadlines() {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    check_example("node", &node, "check.js", "client.js").await;
}

/// The tool-loop and structured-output example (`tools.py` / `tools.js`) against a fake Ollama
/// whose `weather` model calls `get_weather`, then answers with what the tool returned, and whose
/// `intent` model answers JSON.
async fn check_tools_example(dir: &str, program: &str, script: &str) {
    let fake = FakeOllama::start().await;
    fake.add_model(copilot_fakes::models::weather());
    fake.add_model(copilot_fakes::models::intent());
    let copilot = Copilot::start(&fake, &[]).await;
    let addr = copilot.addr.to_string();
    let args = [
        script,
        "--address",
        &addr,
        "--model",
        "ollama/weather",
        "--structured-model",
        "ollama/intent",
        "What is the weather in Paris?",
    ];
    let (ok, stdout, all) = run_example(dir, program, &args).await;
    assert!(ok, "{all}");
    assert!(stdout.contains(r#"tool call: get_weather({"city":"Paris"}) [call_w1]"#), "{all}");
    // The model's second turn repeats the tool's result, so it went through.
    let answer = stdout.lines().find_map(|line| line.strip_prefix("answer: You said: ")).expect(&all);
    let result: serde_json::Value = serde_json::from_str(answer).expect(&all);
    assert_eq!(result, serde_json::json!({"city": "Paris", "temperature_c": 18, "sky": "clear"}), "{all}");
    let structured = stdout.lines().find_map(|line| line.strip_prefix("structured: ")).expect(&all);
    let structured: serde_json::Value = serde_json::from_str(structured).expect(&all);
    assert_eq!(structured, serde_json::json!({"intent": "weather", "city": "Paris"}), "{all}");
    // The upstream got the tools, then the result tied to the call, and the schema.
    let requests = fake.chat_requests();
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "get_weather", "{requests:?}");
    let last_message = requests[1]["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    assert_eq!(last_message["role"], "tool", "{requests:?}");
    assert_eq!(requests[2]["format"]["required"][0], "intent", "{requests:?}");
}

#[tokio::test]
async fn the_python_tools_example_runs_a_tool_loop_and_gets_structured_output() {
    let python = tool("PYTHON", ".tools/venv/bin/python", "python3");
    check_tools_example("python", &python, "tools.py").await;
}

#[tokio::test]
async fn the_node_tools_example_runs_a_tool_loop_and_gets_structured_output() {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    check_tools_example("node", &node, "tools.js").await;
}

/// `buf breaking` against the API as it last landed: the commit named in `proto/LANDED` (moved
/// forward when a change to the proto lands), so old clients keep working.
#[test]
fn the_proto_stays_compatible_with_the_last_landed_one() {
    let landed = std::fs::read_to_string(format!("{REPO}/proto/LANDED")).expect("read proto/LANDED");
    let commit = landed.lines().find(|line| !line.starts_with('#') && !line.trim().is_empty()).expect("a commit");
    let output = Command::new(tool("BUF", ".tools/node_modules/.bin/buf", "buf"))
        .args(["breaking", "--against", &format!(".git#ref={}", commit.trim())])
        .current_dir(REPO)
        .output()
        .expect("run buf (scripts/test installs it from npm: @bufbuild/buf)");
    assert!(
        output.status.success(),
        "buf breaking found incompatible changes:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
