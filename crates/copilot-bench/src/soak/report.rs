//! The soak's report: everything it saw (also as JSON), the pass/fail checks, and the text for
//! people.

use std::fmt::Write;

use serde::Serialize;

use super::SoakCmd;
use super::calls::MetadataCaseReport;
use super::legit::LegitReport;
use super::tally::TallyReport;
use super::watch::{Peaks, Reading};
use crate::procs::LogCounts;
use crate::report::{Table, mib, num};
use crate::stats::Percentiles;

/// Readings shown in the text report's timeline (all of them are in the JSON).
const TIMELINE_ROWS: usize = 12;

#[derive(Serialize)]
pub struct SoakReport {
    pub mode: &'static str,
    pub started_unix_s: u64,
    pub config: SoakCmd,
    pub server: String,
    /// How long the hostile phase ran, in seconds.
    pub hostile_s: f64,
    pub legit: LegitReport,
    /// The two calls (Generate, Chat) made after the settle: "OK" or how they failed.
    pub served_after: Vec<String>,
    pub stalled_streams: TallyReport,
    pub stalled_connections: TallyReport,
    pub idle_sockets: TallyReport,
    pub metadata: Vec<MetadataCaseReport>,
    pub garbage_sockets: TallyReport,
    pub random_messages: TallyReport,
    pub cancels: TallyReport,
    pub process: ProcessFigures,
    /// Whether the started server was still running at the end (`None`: not started here).
    pub server_running: Option<bool>,
    /// The started server's output, counted (`None`: not started here).
    pub server_log: Option<LogCounts>,
    pub checks: Vec<Check>,
}

/// The server process's figures; all `None` without a process to read.
#[derive(Serialize)]
pub struct ProcessFigures {
    /// Before the hostile phase (after two warm-up calls).
    pub before: Option<Reading>,
    pub peaks: Option<Peaks>,
    /// The last reading of the hostile phase.
    pub at_stop: Option<Reading>,
    /// After the actors stopped and the fds settled (or the settle time ran out).
    pub after: Option<Reading>,
    /// Seconds the settle took.
    pub settled_s: f64,
    /// Every reading, one a second.
    pub readings: Vec<Reading>,
    /// Why reading the process failed, if it did (it exited).
    pub read_failure: Option<String>,
}

/// One pass/fail check of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check { name: name.to_owned(), passed, detail }
}

/// What the run must show: every legitimate call succeeded (and some were made), the server still
/// serves and runs, no panic in its log, RSS under the bound given, no fd growth.
pub fn checks(cmd: &SoakCmd, report: &SoakReport) -> Vec<Check> {
    let legit = &report.legit;
    let mut checks = vec![check(
        "legitimate calls all succeeded",
        legit.failed == 0 && legit.ok > 0,
        format!("{} ok, {} failed", legit.ok, legit.failed),
    )];
    checks.push(check(
        "the server serves after the soak",
        report.served_after.iter().all(|s| s == "OK"),
        format!("Generate, Chat: {}", report.served_after.join(", ")),
    ));
    if let Some(running) = report.server_running {
        checks.push(check("the server is still running", running, String::new()));
    }
    if let Some(log) = &report.server_log {
        checks.push(check("no panic in the server's log", log.panics == 0, format!("{} panicked lines", log.panics)));
    }
    let process = &report.process;
    if let (Some(max), Some(peaks)) = (cmd.max_rss_mib, process.peaks) {
        let peak = peaks.rss_bytes.max(process.after.map_or(0, |a| a.rss_bytes));
        checks.push(check(
            &format!("RSS stayed under {max} MiB"),
            peak <= max * 1024 * 1024,
            format!("peak {} MiB", mib(Some(peak))),
        ));
    }
    if let (Some(before), Some(after)) = (process.before, process.after) {
        let growth = after.fds.saturating_sub(before.fds);
        checks.push(check(
            &format!("no fd growth (at most {})", cmd.max_fd_growth),
            growth <= cmd.max_fd_growth,
            format!("{} before, {} after ({} s settle)", before.fds, after.fds, num(Some(process.settled_s), 0)),
        ));
    }
    checks
}

/// The report for people.
pub fn render(report: &SoakReport) -> String {
    let cmd = &report.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncopilot-bench soak: {:.0} s of hostile traffic beside a legitimate load\nserver: {}\n",
        report.hostile_s, report.server
    );

    let legit = &report.legit;
    let _ = writeln!(
        out,
        "Legitimate load: {} callers on their own connections, {} calls/s, answers checked: {} ok, {} failed",
        cmd.legit.legit_callers, cmd.legit.legit_rate, legit.ok, legit.failed
    );
    let mut table = Table::new(&["latency ms", "calls", "p50", "p90", "p99", "max"]);
    for (name, latency) in [("Generate", legit.generate_ms), ("Chat", legit.chat_ms)] {
        table.row(latency_row(name, latency));
    }
    out.push_str(&indent(&table.render()));
    outcomes(&mut out, "failures", &legit.failures);
    let _ = writeln!(out, "  after the soak, a new connection: Generate {}", report.served_after.join(", Chat "));

    let stalled = &cmd.stalled;
    let _ = writeln!(
        out,
        "\n1. Stalled bodies: {} connections × {} streams to Generate, each declaring {} bytes and sending {}, \
         ≤{} new streams/s",
        stalled.stalled_connections,
        stalled.stalled_streams,
        stalled.stalled_declared_bytes,
        stalled.stalled_sent_bytes.min(stalled.stalled_declared_bytes),
        stalled.stalled_rate
    );
    outcomes(&mut out, "streams", &report.stalled_streams);
    outcomes(&mut out, "connections", &report.stalled_connections);

    let _ = writeln!(
        out,
        "\n2. Idle pre-preface sockets: {} kept open (half send nothing, half half the preface)",
        cmd.sockets.idle_sockets
    );
    outcomes(&mut out, "sockets", &report.idle_sockets);

    let _ = writeln!(
        out,
        "\n3. Big metadata: a round every {}, each on a new connection beside a streaming Chat",
        humantime::format_duration(cmd.calls.metadata_every)
    );
    let mut table = Table::new(&["case", "big call", "the other call", "next call on the connection"]);
    for case in &report.metadata {
        table.row(vec![
            case.case.clone(),
            counts(&case.big_call),
            counts(&case.other_call_on_the_connection),
            counts(&case.next_call_on_the_connection),
        ]);
    }
    out.push_str(&indent(&table.render()));
    for case in &report.metadata {
        for (label, outcome) in &case.big_call.outcomes {
            if label != "OK" {
                let _ = writeln!(out, "  {}, {label}: {}", case.case, outcome.first_detail);
            }
        }
    }

    let _ = writeln!(
        out,
        "\n4. Random bytes: {} connections/s and {} messages/s",
        cmd.sockets.garbage_rate, cmd.sockets.garbage_rate
    );
    outcomes(&mut out, "connections", &report.garbage_sockets);
    outcomes(&mut out, "gRPC messages of random bytes", &report.random_messages);

    let _ = writeln!(
        out,
        "\n5. Cancels: {} Chat calls/s, each dropped after 1–{} ms",
        cmd.calls.cancel_rate, cmd.calls.cancel_max_ms
    );
    outcomes(&mut out, "calls", &report.cancels);

    render_process(&mut out, report);

    let _ = writeln!(out, "\nChecks");
    for check in &report.checks {
        let mark = if check.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "  {mark}  {}{}",
            check.name,
            if check.detail.is_empty() { String::new() } else { format!(": {}", check.detail) }
        );
    }
    out
}

fn render_process(out: &mut String, report: &SoakReport) {
    let process = &report.process;
    let _ = writeln!(out, "\nServer process");
    let Some(peaks) = process.peaks else {
        let _ = writeln!(out, "  not read (give --pid with --addr)");
        return;
    };
    let mut table = Table::new(&["", "at s", "RSS MiB", "open fds", "threads"]);
    let row = |name: &str, reading: Option<Reading>| match reading {
        Some(r) => {
            vec![name.to_owned(), r.at_s.to_string(), mib(Some(r.rss_bytes)), r.fds.to_string(), r.threads.to_string()]
        }
        None => vec![name.to_owned(), "-".into(), "-".into(), "-".into(), "-".into()],
    };
    table.row(row("before", process.before));
    table.row(vec![
        "peak".to_owned(),
        String::new(),
        mib(Some(peaks.rss_bytes)),
        peaks.fds.to_string(),
        peaks.threads.to_string(),
    ]);
    table.row(row("end of the hostile phase", process.at_stop));
    table.row(row(&format!("after {} s settle", num(Some(process.settled_s), 0)), process.after));
    out.push_str(&indent(&table.render()));
    if !process.readings.is_empty() {
        let step = process.readings.len().div_ceil(TIMELINE_ROWS).max(1);
        let line: Vec<String> = process
            .readings
            .iter()
            .step_by(step)
            .map(|r| format!("{}s {} MiB/{} fds", r.at_s, mib(Some(r.rss_bytes)), r.fds))
            .collect();
        let _ = writeln!(out, "  timeline: {}", line.join(", "));
    }
    if let Some(failure) = &process.read_failure {
        let _ = writeln!(out, "  a reading failed: {failure}");
    }
    match &report.server_log {
        Some(log) => {
            let _ = writeln!(
                out,
                "  log: {} lines, {} warnings, {} errors, {} panics",
                log.lines, log.warnings, log.errors, log.panics
            );
            for example in &log.examples {
                let _ = writeln!(out, "    {example}");
            }
        }
        None => {
            let _ = writeln!(out, "  log: not read (the server was not started here)");
        }
    }
}

fn latency_row(name: &str, latency: Option<Percentiles>) -> Vec<String> {
    match latency {
        Some(p) => vec![
            name.to_owned(),
            p.count.to_string(),
            num(Some(p.p50_ms), 1),
            num(Some(p.p90_ms), 1),
            num(Some(p.p99_ms), 1),
            num(Some(p.max_ms), 1),
        ],
        None => vec![name.to_owned(), "0".into()],
    }
}

/// `label ×n, label ×m`, or `none`.
fn counts(tally: &TallyReport) -> String {
    if tally.outcomes.is_empty() {
        return "none".to_owned();
    }
    tally.outcomes.iter().map(|(label, o)| format!("{label} ×{}", o.count)).collect::<Vec<_>>().join(", ")
}

/// A tally as indented lines: each outcome with its count and first detail, then the lifetimes.
fn outcomes(out: &mut String, what: &str, tally: &TallyReport) {
    let _ = writeln!(out, "  {what}:{}", if tally.outcomes.is_empty() { " none" } else { "" });
    for (label, outcome) in &tally.outcomes {
        let detail =
            if outcome.first_detail.is_empty() { String::new() } else { format!("  ({})", outcome.first_detail) };
        let _ = writeln!(out, "    {label} ×{}{detail}", outcome.count);
    }
    if let Some(lived) = tally.lifetime_ms {
        let _ = writeln!(
            out,
            "    lived: p50 {} s, p99 {} s, max {} s",
            num(Some(lived.p50_ms / 1e3), 1),
            num(Some(lived.p99_ms / 1e3), 1),
            num(Some(lived.max_ms / 1e3), 1)
        );
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
