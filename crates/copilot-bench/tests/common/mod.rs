//! What the end-to-end tests of `copilot-bench` share: the workspace's other binaries, and a run of
//! the tool that must succeed and write its JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A workspace binary next to this package's own (`cargo test --workspace` and nextest build every
/// binary of the workspace before running tests).
pub fn sibling(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_copilot-bench")).parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Runs `copilot-bench ARGS --quiet --json FILE`, asserts that it succeeded, and returns the report.
pub fn run_with_report(args: &[&str]) -> serde_json::Value {
    // Tests of one binary may run at once, on threads of one process.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let json = std::env::temp_dir().join(format!("copilot-bench-test-{}-{run}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_copilot-bench"))
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "copilot-bench {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    report
}
