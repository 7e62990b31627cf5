//! `copilot-bench overhead` end to end: it starts the fake upstream and a Copilot (the workspace's
//! debug binaries), drives both paths with its own gRPC and HTTP clients, and writes its JSON report.
//! Timings are not asserted (they are measured, never tested); counts and the shape of the run are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A workspace binary next to this package's own (`cargo test --workspace` and nextest build every
/// binary of the workspace before running tests).
fn sibling(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_copilot-bench")).parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace)",
        path.display()
    );
    path
}

fn overhead(args: &[&str]) -> serde_json::Value {
    let json =
        std::env::temp_dir().join(format!("copilot-bench-test-{}-{}.json", std::process::id(), args.join("_").len()));
    let output = Command::new(env!("CARGO_BIN_EXE_copilot-bench"))
        .arg("overhead")
        .args(args)
        .arg("--copilot-bin")
        .arg(sibling("copilot"))
        .arg("--fake-bin")
        .arg(sibling("fake-ollama"))
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "copilot-bench overhead failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    report
}

#[test]
fn generate_through_copilot_and_direct_complete_every_request() {
    let report = overhead(&["--rpc", "generate", "--rate", "200", "--requests", "60", "--model", "llama3.2:3b"]);
    for run in ["direct", "through_copilot"] {
        let summary = &report[run]["summary"];
        assert_eq!((summary["ok"].as_u64(), summary["failed"].as_u64()), (Some(60), Some(0)), "{run}: {summary}");
        // The fake echoes the prompt: every answer has output tokens, counted on both paths.
        assert!(summary["output_tokens"].as_u64().unwrap() >= 60, "{run}: {summary}");
    }
    let direct = report["direct"]["target"].as_str().unwrap();
    assert!(direct.contains("stream: false"), "{direct}");
    assert!(report["comparison"]["latency_added_ms"].is_object(), "{}", report["comparison"]);
}

#[test]
fn direct_stream_makes_the_direct_generate_a_collected_stream() {
    let report = overhead(&[
        "--rpc",
        "generate",
        "--rate",
        "200",
        "--requests",
        "40",
        "--model",
        "llama3.2:3b",
        "--direct-stream",
    ]);
    let direct = report["direct"]["target"].as_str().unwrap();
    assert!(direct.contains("stream: true, NDJSON collected"), "{direct}");
    let summary = &report["direct"]["summary"];
    assert_eq!(summary["ok"].as_u64(), Some(40), "{summary}");
    // A collected stream is still one answer per request: no chunk gaps are reported for Generate.
    assert!(summary["chunk_gap"].is_null(), "{summary}");
}

#[test]
fn streamed_chat_counts_chunks_on_both_paths() {
    let report = overhead(&[
        "--rpc",
        "chat",
        "--concurrency",
        "4",
        "--requests",
        "40",
        "--max-tokens",
        "16",
        "--connections",
        "2",
    ]);
    let through = report["through_copilot"]["target"].as_str().unwrap();
    assert!(through.contains("over 2 HTTP/2 connection(s)"), "{through}");
    for run in ["direct", "through_copilot"] {
        let summary = &report[run]["summary"];
        assert_eq!(summary["ok"].as_u64(), Some(40), "{run}: {summary}");
        // The `endless` model answers exactly --max-tokens chunks.
        assert_eq!(summary["output_tokens"].as_u64(), Some(40 * 16), "{run}: {summary}");
        assert!(summary["chunk_gap"].is_object() && summary["ttft"].is_object(), "{run}: {summary}");
    }
    assert!(report["comparison"]["throughput_ratio"].as_f64().unwrap() > 0.0);
}
