//! Child processes a benchmark starts itself (a fake upstream, a Copilot): finding their binaries,
//! starting them and waiting for the line that says where they listen, keeping their output
//! drained, and stopping them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::BoxError;

/// Lines of a child's output kept for the error message when it fails.
const LOG_TAIL: usize = 30;

/// A binary given on the command line, or the first of `target/release/NAME` and
/// `target/debug/NAME` that exists (relative to the working directory, then to the target directory
/// this benchmark's own binary is in).
pub fn find_binary(explicit: Option<&Path>, name: &str) -> Result<PathBuf, BoxError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(format!("{} is not a file", path.display()).into())
        };
    }
    let mut candidates = vec![Path::new("target/release").join(name), Path::new("target/debug").join(name)];
    if let Some(target) = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.to_owned())) {
        candidates.push(target.join("release").join(name));
        candidates.push(target.join("debug").join(name));
    }
    candidates.iter().find(|path| path.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!("cannot find {name} (tried {}); build it or name it explicitly", tried.join(", ")).into()
    })
}

/// Whether `binary --help` lists `flag`.
pub async fn has_flag(binary: &Path, flag: &str) -> Result<bool, BoxError> {
    let output = Command::new(binary)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {} --help: {e}", binary.display()))?;
    let help = String::from_utf8_lossy(&output.stdout);
    Ok(help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[').any(|word| word == flag))
}

/// The address written right after `marker` in `line`: the text up to the next space or quote.
pub fn address_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let at = line.find(marker)? + marker.len();
    let address = line[at..].split(|c: char| c.is_whitespace() || c == '"').next()?;
    (!address.is_empty()).then_some(address)
}

/// A running child process.
pub struct Process {
    name: String,
    child: Child,
    pub pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts `command` (its stdin closed, stdout and stderr read here and kept drained) and waits
    /// up to `wait` for a line of its output containing `marker`; returns the process and the
    /// address after the marker. A process that exits first or does not say it in time is stopped
    /// and reported with the end of its output.
    pub async fn start(
        name: &str,
        mut command: Command,
        marker: &str,
        wait: Duration,
    ) -> Result<(Self, String), BoxError> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (lines, mut seen) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, tail.clone(), lines.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, tail.clone(), lines);
        }
        let mut process = Process { name: name.to_owned(), child, pid, tail };
        let found = tokio::time::timeout(wait, async {
            while let Some(line) = seen.recv().await {
                if let Some(address) = address_after(&line, marker) {
                    return Some(address.to_owned());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(address)) => Ok((process, address)),
            Ok(None) => {
                let status = process.child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(format!("{name} exited ({status}) before saying {marker:?}; its output:\n{}", process.tail())
                    .into())
            }
            Err(_) => {
                let tail = process.tail();
                process.stop().await;
                Err(format!("{name} did not say {marker:?} within {wait:?}; its output:\n{tail}").into())
            }
        }
    }

    fn tail(&self) -> String {
        self.tail.lock().map(|tail| tail.iter().map(|l| format!("  {l}\n")).collect()).unwrap_or_default()
    }

    /// Kills the process and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            eprintln!("copilot-bench: {} (pid {}) did not exit after SIGKILL within 10 s", self.name, self.pid);
        }
    }
}

/// Reads `output` line by line until it closes: each line goes to `lines` (while anyone listens)
/// and into the kept tail, so the child never blocks on a full pipe.
fn drain(
    output: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    lines: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(output).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(mut tail) = tail.lock() {
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            let _ = lines.send(line);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_listening_lines() {
        let copilot = "2026-11-21T21:00:00.123456Z  INFO copilot::server: copilot listening on 127.0.0.1:43567 addr=127.0.0.1:43567";
        assert_eq!(address_after(copilot, "copilot listening on "), Some("127.0.0.1:43567"));
        let json =
            r#"{"timestamp":"…","level":"INFO","message":"copilot listening on [::1]:50051","addr":"[::1]:50051"}"#;
        assert_eq!(address_after(json, "copilot listening on "), Some("[::1]:50051"));
        let fake = "fake-ollama listening on http://127.0.0.1:40001";
        assert_eq!(address_after(fake, "listening on "), Some("http://127.0.0.1:40001"));
        assert_eq!(
            address_after("fake-openai listening on http://127.0.0.1:40002/v1\n", "listening on "),
            Some("http://127.0.0.1:40002/v1")
        );
        assert_eq!(address_after("metrics listening on", "copilot listening on "), None);
        assert_eq!(address_after("copilot listening on ", "copilot listening on "), None);
    }

    #[test]
    fn an_explicit_binary_must_exist() {
        assert!(find_binary(Some(Path::new("/nonexistent/fake-ollama")), "fake-ollama").is_err());
        let this = std::env::current_exe().unwrap();
        assert_eq!(find_binary(Some(&this), "whatever").unwrap(), this);
        let error = find_binary(None, "no-such-binary-anywhere").unwrap_err().to_string();
        assert!(error.contains("target/release/no-such-binary-anywhere"), "{error}");
    }

    #[tokio::test]
    async fn start_reads_the_address_and_reports_early_exits() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo starting >&2; echo 'thing listening on http://127.0.0.1:1'; sleep 30"]);
        let (process, address) =
            Process::start("thing", command, "listening on ", Duration::from_secs(10)).await.unwrap();
        assert_eq!(address, "http://127.0.0.1:1");
        process.stop().await;

        let mut command = Command::new("sh");
        command.args(["-c", "echo 'bad config' >&2; exit 2"]);
        let error =
            Process::start("thing", command, "listening on ", Duration::from_secs(10)).await.err().unwrap().to_string();
        assert!(error.contains("exited") && error.contains("bad config"), "{error}");
    }

    #[tokio::test]
    async fn has_flag_reads_the_help() {
        let sh = Path::new("/bin/sh");
        // `sh --help` is not a clap help, but the check only needs stdout words; `--no-such` is in none.
        assert!(!has_flag(sh, "--no-such-flag").await.unwrap());
    }
}
