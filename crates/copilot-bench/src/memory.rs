//! The server's resident memory, read from `/proc/PID/status` (Linux): a single reading, or a
//! sampler that tracks the peak while a phase runs.

use std::io;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often a [`Sampler`] reads the RSS.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// The `VmRSS` line of a `/proc/PID/status` text, in bytes. `None` if it is missing or malformed
/// (kernel threads have none).
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next()? {
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    value.checked_mul(multiplier)
}

/// The current RSS of process `pid`, in bytes.
pub fn read_rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS in /proc/{pid}/status")))
}

/// What a [`Sampler`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssStats {
    /// The highest reading, in bytes; `None` if no reading succeeded.
    pub peak: Option<u64>,
    /// Readings taken.
    pub samples: u64,
}

impl RssStats {
    fn record(&mut self, rss: u64) {
        self.peak = Some(self.peak.map_or(rss, |peak| peak.max(rss)));
        self.samples += 1;
    }
}

/// Reads the RSS of a process every [`SAMPLE_INTERVAL`] on a background task until stopped. It
/// reads once at start and once more at stop, so even a short phase gets a reading.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<RssStats>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut stats = RssStats::default();
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        if let Ok(rss) = read_rss(pid) {
                            stats.record(rss);
                        }
                    }
                }
            }
            if let Ok(rss) = read_rss(pid) {
                stats.record(rss);
            }
            stats
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> RssStats {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcopilot\n\
Umask:\t0022\n\
State:\tS (sleeping)\n\
Pid:\t4242\n\
VmPeak:\t 1234567 kB\n\
VmSize:\t 1200000 kB\n\
VmHWM:\t   98765 kB\n\
VmRSS:\t   81234 kB\n\
RssAnon:\t   60000 kB\n\
Threads:\t9\n";

    #[test]
    fn parses_vm_rss_in_bytes() {
        assert_eq!(parse_vm_rss(STATUS), Some(81_234 * 1024));
    }

    #[test]
    fn ignores_similar_lines_and_rejects_garbage() {
        // VmHWM and RssAnon come before or after VmRSS but must not be taken for it.
        assert_eq!(parse_vm_rss("VmHWM:\t 5 kB\nRssAnon:\t 3 kB\n"), None);
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nState:\tS (sleeping)\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t lots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12 pages\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let rss = read_rss(std::process::id()).unwrap();
        assert!(rss > 0);
    }

    #[tokio::test]
    async fn sampler_reads_at_least_once() {
        let sampler = Sampler::start(std::process::id());
        let stats = sampler.stop().await;
        assert!(stats.samples >= 1);
        assert!(stats.peak.unwrap() > 0);
    }

    #[test]
    fn stats_keep_the_peak() {
        let mut stats = RssStats::default();
        for rss in [5, 9, 7] {
            stats.record(rss);
        }
        assert_eq!(stats, RssStats { peak: Some(9), samples: 3 });
    }
}
