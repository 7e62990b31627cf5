//! `copilot-bench http` end to end against the workspace's `fake-openai`: over HTTP/1.1, and over
//! HTTP/2 with `--http2` (prior knowledge), the direct hop `scripts/bench-gateways` measures.
//! Counts and the protocol are asserted, never timings.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A workspace binary next to this package's own (nextest and `cargo test --workspace` build them).
fn sibling(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_copilot-bench")).parent().unwrap().join(name);
    assert!(path.is_file(), "{} is missing: build the workspace's binaries first", path.display());
    path
}

/// fake-openai on a free loopback port, killed when dropped.
struct Fake(Child, String);

impl Fake {
    fn start() -> Fake {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(sibling("fake-openai"))
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "fake-openai did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Fake(child, format!("http://127.0.0.1:{port}/v1"))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_run(base_url: &str, extra: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("copilot-bench-http-{}-{}.json", std::process::id(), extra.len()));
    let output = Command::new(env!("CARGO_BIN_EXE_copilot-bench"))
        .args(["http", "--base-url", base_url, "--model", "gpt-4o-mini", "--rpc", "generate"])
        .args(["--concurrency", "4", "--requests", "40", "--quiet", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "copilot-bench http failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    report
}

#[test]
fn unary_calls_over_http1_and_over_http2_prior_knowledge_all_complete() {
    let fake = Fake::start();
    for (extra, protocol) in [(&[][..], "HTTP/1.1 POST"), (&["--http2"][..], "HTTP/2 POST")] {
        let report = http_run(&fake.1, extra);
        let run = &report["run"];
        let summary = &run["summary"];
        assert_eq!((summary["ok"].as_u64(), summary["failed"].as_u64()), (Some(40), Some(0)), "{protocol}: {summary}");
        // The fake echoes the prompt, and reports its usage: every answer has output tokens.
        assert!(summary["output_tokens"].as_u64().unwrap() >= 40, "{protocol}: {summary}");
        let target = run["target"].as_str().unwrap();
        assert!(target.starts_with(protocol) && target.contains("stream: false"), "{target}");
    }
}
