//! `copilot-bench overhead` end to end: it starts the fake upstream and a Copilot (the workspace's
//! debug binaries), drives both paths with its own gRPC and HTTP clients, and writes its JSON report.
//! Timings are not asserted (they are measured, never tested); counts and the shape of the run are.

mod common;

use common::{run_with_report, sibling};

fn overhead(args: &[&str]) -> serde_json::Value {
    let (copilot, fake) = (sibling("copilot"), sibling("fake-ollama"));
    let mut all = vec!["overhead"];
    all.extend_from_slice(args);
    all.extend(["--copilot-bin", copilot.to_str().unwrap(), "--fake-bin", fake.to_str().unwrap()]);
    run_with_report(&all)
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
