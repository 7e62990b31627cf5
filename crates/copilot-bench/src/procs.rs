//! Child processes a benchmark starts itself (a fake upstream, a Copilot): finding their binaries,
//! starting them and waiting for the line that says where they listen, keeping their output
//! drained (and counted: lines, warnings, panics), and stopping them.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BoxError;

/// How long a started process may take to say where it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of a child's output kept for the error message when it fails.
const LOG_TAIL: usize = 30;

/// Warning, error and panic lines kept as examples in [`LogCounts`], each cut to
/// [`EXAMPLE_CHARS`]: enough to say what happened without keeping a flood.
const EXAMPLES: usize = 10;
const EXAMPLE_CHARS: usize = 300;

/// What a child process wrote on stdout and stderr, counted line by line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogCounts {
    pub lines: u64,
    /// Lines with ` WARN ` (the text log format's level column).
    pub warnings: u64,
    /// Lines with ` ERROR `.
    pub errors: u64,
    /// Lines with `panicked` (Rust's panic message: "thread '…' panicked at …").
    pub panics: u64,
    /// The first few distinct warning, error and panic lines.
    pub examples: Vec<String>,
}

impl LogCounts {
    fn record(&mut self, line: &str) {
        self.lines += 1;
        let notable = if line.contains("panicked") {
            self.panics += 1;
            true
        } else if line.contains(" ERROR ") {
            self.errors += 1;
            true
        } else if line.contains(" WARN ") {
            self.warnings += 1;
            true
        } else {
            false
        };
        if notable && self.examples.len() < EXAMPLES {
            // Without the timestamp, so the same warning logged twice is one example.
            let text = line.split_once("Z ").map_or(line, |(_, rest)| rest).trim();
            let text: String = text.chars().take(EXAMPLE_CHARS).collect();
            if !self.examples.contains(&text) {
                self.examples.push(text);
            }
        }
    }
}

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
    counts: Arc<Mutex<LogCounts>>,
    drains: Vec<JoinHandle<()>>,
}

/// Where a child's output goes besides the drain: the kept tail, the counts, a log file.
#[derive(Clone)]
struct Sinks {
    tail: Arc<Mutex<VecDeque<String>>>,
    counts: Arc<Mutex<LogCounts>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Process {
    /// Starts `command` (its stdin closed, stdout and stderr read here and kept drained) and waits
    /// up to `wait` for a line of its output containing `marker`; returns the process and the
    /// address after the marker. A process that exits first or does not say it in time is stopped
    /// and reported with the end of its output.
    pub async fn start(name: &str, command: Command, marker: &str, wait: Duration) -> Result<(Self, String), BoxError> {
        Self::start_logged(name, command, marker, wait, None).await
    }

    /// [`start`](Self::start), also writing every line of the child's output to `log_file`.
    pub async fn start_logged(
        name: &str,
        mut command: Command,
        marker: &str,
        wait: Duration,
        log_file: Option<&Path>,
    ) -> Result<(Self, String), BoxError> {
        let file = match log_file {
            Some(path) => Some(Arc::new(Mutex::new(
                std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            ))),
            None => None,
        };
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let sinks = Sinks { tail: Arc::default(), counts: Arc::default(), file };
        let (lines, mut seen) = mpsc::unbounded_channel();
        let mut drains = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            drains.push(drain(stdout, sinks.clone(), lines.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            drains.push(drain(stderr, sinks.clone(), lines));
        }
        let mut process = Process { name: name.to_owned(), child, pid, tail: sinks.tail, counts: sinks.counts, drains };
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

    /// Whether the process is still running (`false` once it has exited, e.g. crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process and waits for it to exit; returns the counts of its whole output (read
    /// to its end, for up to five seconds after the exit).
    pub async fn stop(mut self) -> LogCounts {
        let _ = self.child.start_kill();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            eprintln!("copilot-bench: {} (pid {}) did not exit after SIGKILL within 10 s", self.name, self.pid);
        }
        let drains = futures::future::join_all(std::mem::take(&mut self.drains));
        if tokio::time::timeout(Duration::from_secs(5), drains).await.is_err() {
            eprintln!("copilot-bench: the output of {} was still open 5 s after it exited", self.name);
        }
        self.counts.lock().map(|counts| counts.clone()).unwrap_or_default()
    }
}

/// Reads `output` line by line until it closes: each line goes to `lines` (while anyone listens),
/// into the kept tail, the counts and the log file, so the child never blocks on a full pipe.
fn drain(
    output: impl AsyncRead + Unpin + Send + 'static,
    sinks: Sinks,
    lines: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(output).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(mut tail) = sinks.tail.lock() {
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            if let Ok(mut counts) = sinks.counts.lock() {
                counts.record(&line);
            }
            if let Some(file) = &sinks.file
                && let Ok(mut file) = file.lock()
            {
                // A log file that fails (a full disk) must not stop the drain: the child would block.
                let _ = writeln!(file, "{line}");
            }
            let _ = lines.send(line);
        }
    })
}

/// Starts a fake upstream (`fake-ollama`, `fake-openai`) on a free loopback port, with each of
/// `flags` that is non-zero (checked in its `--help` first): (process, base URL).
pub async fn start_fake(binary: &Path, name: &str, flags: &[(&str, u64)]) -> Result<(Process, String), BoxError> {
    let mut command = Command::new(binary);
    command.args(["--addr", "127.0.0.1:0"]);
    for &(flag, value) in flags {
        if value > 0 {
            if !has_flag(binary, flag).await? {
                return Err(format!("{} has no {flag} option (see its --help)", binary.display()).into());
            }
            command.args([flag, &value.to_string()]);
        }
    }
    let (process, url) = Process::start(name, command, "listening on ", START_TIMEOUT).await?;
    Ok((process, url.trim_end_matches('/').to_owned()))
}

/// Starts Copilot with `config` on a free loopback port, its output also written to `log_file`:
/// (process, `host:port`).
pub async fn start_copilot(
    binary: &Path,
    config: &Path,
    log_file: Option<&Path>,
) -> Result<(Process, String), BoxError> {
    let mut command = Command::new(binary);
    command.arg("serve").arg("--config").arg(config).args(["--addr", "127.0.0.1:0", "--log-format", "text"]);
    // Quiet, but keep the line that says where it listens; and let nothing in this environment
    // add providers, change the default model or send a real API key to the fake.
    command.env("RUST_LOG", "warn,copilot::server=info");
    for variable in ["COPILOT_CONFIG", "OLLAMA_HOST", "OLLAMA_MODEL", "LLM_PROVIDER", "OPENAI_API_KEY"] {
        command.env_remove(variable);
    }
    Process::start_logged("copilot", command, "copilot listening on ", START_TIMEOUT, log_file).await
}

/// `http://` in front of a bare `host:port`.
pub fn with_scheme(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

/// A file that is removed when this is dropped (a config written for a child process).
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `text` to `name` in the system's temporary directory, the process id in the name.
    pub fn write(name: &str, text: &str) -> Result<Self, BoxError> {
        let path = std::env::temp_dir().join(format!("copilot-bench-{}-{name}", std::process::id()));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(TempFile(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
        let counts = process.stop().await;
        assert_eq!(counts.lines, 2);

        let mut command = Command::new("sh");
        command.args(["-c", "echo 'bad config' >&2; exit 2"]);
        let error =
            Process::start("thing", command, "listening on ", Duration::from_secs(10)).await.err().unwrap().to_string();
        assert!(error.contains("exited") && error.contains("bad config"), "{error}");
    }

    #[tokio::test]
    async fn counts_the_whole_output_and_writes_the_log_file() {
        let log = TempFile(std::env::temp_dir().join(format!("copilot-bench-test-{}.log", std::process::id())));
        let mut command = Command::new("sh");
        command.args([
            "-c",
            // Everything before the marker, so all of it is in the pipes when stop() kills it.
            "echo '2026-12-02T05:00:00.1Z  WARN copilot::server: too many connections'; \
             echo '2026-12-02T05:00:01.1Z  WARN copilot::server: too many connections'; \
             echo \"thread 'w' panicked at src/a.rs:1:2:\" >&2; \
             echo '2026-12-02T05:00:02.1Z ERROR copilot: boom'; \
             echo 'thing listening on x'; sleep 30",
        ]);
        let (process, _) =
            Process::start_logged("thing", command, "listening on ", Duration::from_secs(10), Some(&log.0))
                .await
                .unwrap();
        let counts = process.stop().await;
        assert_eq!((counts.lines, counts.warnings, counts.errors, counts.panics), (5, 2, 1, 1));
        // The same warning at two times is one example.
        assert_eq!(counts.examples.len(), 3, "{:?}", counts.examples);
        assert!(counts.examples.contains(&"WARN copilot::server: too many connections".to_owned()));
        assert_eq!(std::fs::read_to_string(&log.0).unwrap().lines().count(), 5);
    }

    #[tokio::test]
    async fn has_flag_reads_the_help() {
        let sh = Path::new("/bin/sh");
        // `sh --help` is not a clap help, but the check only needs stdout words; `--no-such` is in none.
        assert!(!has_flag(sh, "--no-such-flag").await.unwrap());
    }
}
