//! `copilot-bench floor-gateway` end to end: in front of the workspace's `fake-openai`, driven by
//! `copilot-bench load` through Copilot's gRPC API, as `scripts/bench-gateways` (modes `floor` and
//! `floor-decode`) runs it. Counts and answers are asserted, never timings.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_with_report, sibling};

/// A child process on a free loopback port, killed when dropped.
struct Server(Child, u16);

impl Server {
    fn start(program: &std::path::Path, args: impl FnOnce(&str) -> Vec<String>) -> Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(program)
            .args(args(&format!("127.0.0.1:{port}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "{} did not start", program.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(child, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(floor: &Server) -> serde_json::Value {
    let addr = format!("http://127.0.0.1:{}", floor.1);
    let args = [
        "load",
        "--addr",
        &addr,
        "--model",
        "openai/gpt-4o-mini",
        "--rpc",
        "generate",
        "--concurrency",
        "2",
        "--warmup",
        "0",
    ];
    let report = run_with_report(&[&args[..], &["--requests", "20"]].concat());
    report["run"]["summary"].clone()
}

#[test]
fn the_floor_gateway_serves_generate_and_decodes_the_answer_only_when_asked() {
    let fake = Server::start(&sibling("fake-openai"), |addr| vec!["--addr".into(), addr.into()]);
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_copilot-bench"));
    let floor = |path: &str, decode: bool| {
        let upstream = format!("http://127.0.0.1:{}{path}", fake.1);
        Server::start(bench, |addr| {
            let mut args = vec!["floor-gateway".into(), "--listen".into(), addr.into(), "--upstream".into(), upstream];
            args.extend(decode.then(|| "--decode".into()));
            args
        })
    };
    for decode in [false, true] {
        let summary = load(&floor("/v1/chat/completions", decode));
        assert_eq!(
            (summary["ok"].as_u64(), summary["failed"].as_u64()),
            (Some(20), Some(0)),
            "decode {decode}: {summary}"
        );
    }
    // An answer that is no chat stream (the model list) is read and dropped as it is, but fails
    // every call once decoded: the decoder does read it.
    let summary = load(&floor("/v1/models", false));
    assert_eq!((summary["ok"].as_u64(), summary["failed"].as_u64()), (Some(20), Some(0)), "{summary}");
    let decoding = floor("/v1/models", true);
    let output = Command::new(bench)
        .args(["load", "--addr", &format!("http://127.0.0.1:{}", decoding.1), "--model", "openai/gpt-4o-mini"])
        .args(["--rpc", "generate", "--concurrency", "2", "--warmup", "0", "--requests", "20"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(printed.contains("20 sent, 0 ok, 20 failed") && printed.contains("UNAVAILABLE"), "{printed}");
}
