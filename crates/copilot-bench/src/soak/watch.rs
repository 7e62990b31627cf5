//! The server process as the soak watches it (Linux `/proc`): resident memory, open file
//! descriptors and threads, read once a second while the soak runs, and once more before and after.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::memory::parse_vm_rss;

/// How often the process is read.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Readings kept for the report (a day at one a second); past it only the peaks move.
const MAX_READINGS: usize = 86_400;

/// One reading of the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reading {
    /// Seconds since the soak's hostile phase started (negative: before it).
    pub at_s: i64,
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
}

/// Reads process `pid` now; `at_s` is stamped by the caller.
pub fn read(pid: u32) -> io::Result<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_bytes = parse_vm_rss(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS in /proc/{pid}/status")))?;
    let threads = parse_threads(&status).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Reading { at_s: 0, rss_bytes, fds, threads })
}

/// The `Threads:` line of a `/proc/PID/status` text.
fn parse_threads(status: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix("Threads:"))?.trim().parse().ok()
}

/// The highest of each figure over the readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Peaks {
    fn take(&mut self, reading: &Reading) {
        self.rss_bytes = self.rss_bytes.max(reading.rss_bytes);
        self.fds = self.fds.max(reading.fds);
        self.threads = self.threads.max(reading.threads);
    }
}

#[derive(Default)]
struct Seen {
    readings: Vec<Reading>,
    peaks: Peaks,
    /// Why the last reading failed (the process has exited), if it did.
    failure: Option<String>,
}

/// Reads the process every [`INTERVAL`] on a task of its own until stopped.
pub struct Watcher {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts reading `pid`, stamping readings with seconds since `zero`.
    pub fn start(pid: u32, zero: Instant) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let reading = read(pid).map(|reading| Reading { at_s: seconds_since(zero), ..reading });
                let Ok(mut seen) = shared.lock() else { return };
                match reading {
                    Ok(reading) => {
                        seen.peaks.take(&reading);
                        if seen.readings.len() < MAX_READINGS {
                            seen.readings.push(reading);
                        }
                    }
                    Err(error) => seen.failure = Some(error.to_string()),
                }
            }
        });
        Watcher { seen, task }
    }

    /// The peaks so far and the last reading.
    pub fn now(&self) -> (Peaks, Option<Reading>) {
        self.seen.lock().map(|seen| (seen.peaks, seen.readings.last().copied())).unwrap_or_default()
    }

    /// Stops reading: every reading, the peaks, and the last failure to read.
    pub fn stop(self) -> (Vec<Reading>, Peaks, Option<String>) {
        self.task.abort();
        match self.seen.lock() {
            Ok(mut seen) => (std::mem::take(&mut seen.readings), seen.peaks, seen.failure.take()),
            Err(_) => (Vec::new(), Peaks::default(), None),
        }
    }
}

/// Whole seconds from `zero` to now, negative before it.
pub fn seconds_since(zero: Instant) -> i64 {
    let now = Instant::now();
    match now.checked_duration_since(zero) {
        Some(after) => after.as_secs() as i64,
        None => -(zero.duration_since(now).as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let reading = read(std::process::id()).unwrap();
        assert!(reading.rss_bytes > 0 && reading.fds > 0 && reading.threads > 0, "{reading:?}");
    }

    #[test]
    fn parses_the_thread_count() {
        assert_eq!(parse_threads("Name:\tcopilot\nThreads:\t9\nVmRSS:\t 1 kB\n"), Some(9));
        assert_eq!(parse_threads("Name:\tcopilot\n"), None);
    }

    #[tokio::test]
    async fn keeps_readings_and_peaks() {
        let watcher = Watcher::start(std::process::id(), Instant::now());
        // The first tick is immediate.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (peaks, last) = watcher.now();
        assert!(peaks.rss_bytes > 0 && last.is_some());
        let (readings, _, failure) = watcher.stop();
        assert_eq!(readings.len(), 1);
        assert!(failure.is_none());
    }
}
