//! `copilot-bench http` end to end against the workspace's `fake-openai`: over HTTP/1.1, and over
//! HTTP/2 with `--http2` (prior knowledge), the direct hop `scripts/bench-gateways` measures.
//! Counts and the protocol are asserted, never timings.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_with_report, sibling};

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
    let mut args = vec!["http", "--base-url", base_url, "--model", "gpt-4o-mini", "--rpc", "generate"];
    args.extend(["--concurrency", "4", "--requests", "40"]);
    args.extend_from_slice(extra);
    run_with_report(&args)
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
