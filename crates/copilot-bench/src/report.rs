//! What every mode reports with: aligned plain-text tables, JSON files, and the report of a load run
//! (and of two runs compared) for people.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::BoxError;
use crate::loadgen::{Rpc, Scenario};
use crate::stats::{COLUMNS, Differences, Percentiles, RunSummary, Spread};

/// Adds `other`'s counts to `into` (errors by gRPC code).
pub fn merge_counts(into: &mut BTreeMap<String, u64>, other: &BTreeMap<String, u64>) {
    for (key, count) in other {
        *into.entry(key.clone()).or_default() += count;
    }
}

/// `CODE ×n, CODE ×m`, or `none`.
pub fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts.iter().map(|(key, count)| format!("{key} ×{count}")).collect::<Vec<_>>().join(", ")
}

/// A number with `decimals` decimals, or `-` when there is none.
pub fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Bytes as MiB with one decimal, or `-`.
pub fn mib(bytes: Option<u64>) -> String {
    num(bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1)
}

/// A plain-text table: the first column left-aligned (labels), the others right-aligned (numbers),
/// two spaces between columns, a dashed rule under the header.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                std::iter::once(&self.header[i]).chain(self.rows.iter().map(|r| &r[i])).map(|c| c.chars().count()).max()
            })
            .map(Option::unwrap_or_default)
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| if i == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        let mut out = String::new();
        for cells in std::iter::once(&self.header).chain(std::iter::once(&rule)).chain(&self.rows) {
            out.push_str(&line(cells));
            out.push('\n');
        }
        out
    }
}

/// Writes `value` as pretty-printed JSON, with a final newline.
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

/// The server's memory during a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryUse {
    pub pid: u32,
    /// RSS before this run sent anything (before the warm-up): what the streams are charged from.
    pub idle_bytes: u64,
    /// RSS after the warm-up, before the measured run (the allocator keeps what the warm-up used).
    pub warmed_bytes: Option<u64>,
    /// The highest RSS sampled during the run.
    pub peak_bytes: Option<u64>,
    /// The most requests in flight at once.
    pub streams: u64,
    /// Chat runs: (peak − idle) / streams.
    pub per_stream_bytes: Option<f64>,
}

impl MemoryUse {
    pub fn new(pid: u32, idle_bytes: u64, peak_bytes: Option<u64>, streams: u64, streaming: bool) -> Self {
        let per_stream_bytes = peak_bytes
            .filter(|_| streaming && streams > 0)
            .map(|peak| peak.saturating_sub(idle_bytes) as f64 / streams as f64);
        MemoryUse { pid, idle_bytes, warmed_bytes: None, peak_bytes, streams, per_stream_bytes }
    }
}

/// One measured run, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Which run, e.g. `(b) through Copilot`.
    pub label: String,
    /// What was driven: protocol, URL, model.
    pub target: String,
    pub rpc: Rpc,
    /// The load, e.g. `closed loop, 50 callers back to back, 500 requests`.
    pub plan: String,
    pub scenario: Scenario,
    pub prompt_words: usize,
    pub max_tokens: u32,
    pub summary: RunSummary,
    pub memory: Option<MemoryUse>,
}

/// Bytes as KiB with one decimal, or `-`.
pub fn kib(bytes: Option<f64>) -> String {
    num(bytes.map(|b| b / 1024.0), 1)
}

/// A row of a latency table: the label, then the [`COLUMNS`] in milliseconds with microsecond
/// precision (`-` throughout when there is no distribution).
fn latency_row(label: &str, p: Option<&Percentiles>) -> Vec<String> {
    let mut row = vec![label.to_owned()];
    row.extend(COLUMNS.iter().map(|(_, read)| num(p.map(read), 3)));
    row
}

fn latency_table() -> Table {
    let header: Vec<&str> = std::iter::once("ms").chain(COLUMNS.iter().map(|(name, _)| *name)).collect();
    Table::new(&header)
}

/// A run as text: what was driven, the load, counts and rates, then a table of latency
/// distributions (all in ms, microsecond precision).
pub fn render_run(run: &RunReport) -> String {
    let s = &run.summary;
    let mut out = format!("{}: {}\n", run.label, run.target);
    out.push_str(&format!(
        "  load: {}; rpc {}; scenario {} ({} words); max_tokens {}\n",
        run.plan,
        match run.rpc {
            Rpc::Generate => "generate (unary)",
            Rpc::Chat => "chat (streaming)",
            Rpc::Embed => "embed (unary, vectors counted as tokens)",
        },
        run.scenario.name(),
        run.prompt_words,
        run.max_tokens
    ));
    out.push_str(&format!(
        "  requests: {} sent, {} ok, {} failed in {:.3} s = {:.1} req/s; at most {} in flight\n",
        s.requests, s.ok, s.failed, s.wall_s, s.throughput_rps, s.max_in_flight
    ));
    let estimated = if s.output_tokens_estimated > 0 {
        format!(" ({} responses reported no usage: their chunks counted as tokens)", s.output_tokens_estimated)
    } else {
        String::new()
    };
    out.push_str(&format!(
        "  output: {} tokens = {} tok/s total{estimated}\n",
        s.output_tokens,
        num(s.output_tps_total, 1),
    ));
    let spread = |p: Option<Spread>| {
        p.map_or_else(|| "-".to_owned(), |p| format!("mean {:.1}, p50 {:.1}, min {:.1}", p.mean, p.p50, p.min))
    };
    out.push_str(&format!("  tok/s per stream over the request: {}\n", spread(s.output_tps_per_stream)));
    if run.rpc.streaming() {
        out.push_str(&format!(
            "  tok/s per stream after the first token: {}\n",
            spread(s.output_tps_after_first_token)
        ));
    }
    if s.errors.is_empty() {
        out.push_str("  errors: none\n");
    } else {
        out.push_str(&format!("  errors: {}\n", format_counts(&s.errors)));
        for (code, message) in &s.error_examples {
            out.push_str(&format!("    {code}, first: {message}\n"));
        }
    }
    if let Some(m) = &run.memory {
        let per_stream = m.per_stream_bytes.map_or_else(String::new, |b| {
            format!(", per stream {} KiB ((peak − idle) / {} streams)", kib(Some(b)), m.streams)
        });
        let warmed = m.warmed_bytes.map_or_else(String::new, |b| format!(", after warm-up {} MiB", mib(Some(b))));
        out.push_str(&format!(
            "  server RSS (pid {}): idle {} MiB (before any request){warmed}, peak {} MiB{per_stream}\n",
            m.pid,
            mib(Some(m.idle_bytes)),
            mib(m.peak_bytes)
        ));
    }

    let mut table = latency_table();
    table.row(latency_row("latency (from intended send)", s.latency.as_ref()));
    let open_loop = run.plan.starts_with("open");
    if open_loop {
        table.row(latency_row("service time (from actual send)", s.service_time.as_ref()));
        table.row(latency_row("send lag (actual − intended)", s.send_lag.as_ref()));
    }
    if run.rpc.streaming() {
        table.row(latency_row("time to first token", s.ttft.as_ref()));
        table.row(latency_row("inter-chunk gap", s.chunk_gap.as_ref()));
    }
    out.push('\n');
    out.push_str(&indent(&table.render()));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// Run (b) against run (a): what (b) adds to each latency column, and its throughput as a ratio.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Latency percentile of (b) minus the same percentile of (a), in ms.
    pub latency_added_ms: Option<Differences>,
    /// Time to first token, likewise (streaming runs).
    pub ttft_added_ms: Option<Differences>,
    /// Inter-chunk gap, likewise (streaming runs).
    pub chunk_gap_added_ms: Option<Differences>,
    /// Successful requests/s of (b) over those of (a).
    pub throughput_ratio: Option<f64>,
    /// Total output tokens/s of (b) over those of (a).
    pub output_tps_ratio: Option<f64>,
}

fn ratio(b: f64, a: f64) -> Option<f64> {
    (a > 0.0).then(|| b / a)
}

impl Comparison {
    pub fn of(a: &RunSummary, b: &RunSummary) -> Self {
        let added = |a: Option<Percentiles>, b: Option<Percentiles>| Some(b?.minus(&a?));
        Comparison {
            latency_added_ms: added(a.latency, b.latency),
            ttft_added_ms: added(a.ttft, b.ttft),
            chunk_gap_added_ms: added(a.chunk_gap, b.chunk_gap),
            throughput_ratio: ratio(b.throughput_rps, a.throughput_rps),
            output_tps_ratio: ratio(b.output_tps_total.unwrap_or(0.0), a.output_tps_total.unwrap_or(0.0)),
        }
    }
}

fn added_row(label: &str, d: Option<&Differences>) -> Vec<String> {
    let mut row = vec![label.to_owned()];
    match d {
        Some(d) => row.extend(d.columns().iter().map(|v| format!("{v:+.3}"))),
        None => row.extend(COLUMNS.iter().map(|_| "-".to_owned())),
    }
    row
}

/// Two runs of the same load side by side, (a) the baseline and (b) the same load through the
/// component being measured: latency rows of each and the difference, then throughput.
pub fn render_comparison(a: &RunReport, b: &RunReport, comparison: &Comparison) -> String {
    let (sa, sb) = (&a.summary, &b.summary);
    let mut out = format!(
        "Added by Copilot: {b} minus {a}, column by column (each percentile of (b) minus the same percentile of (a); ms)\n",
        a = a.label,
        b = b.label
    );
    let mut table = latency_table();
    let mut block = |name: &str, pa: Option<&Percentiles>, pb: Option<&Percentiles>, d: Option<&Differences>| {
        table.row(latency_row(&format!("{name} (a)"), pa));
        table.row(latency_row(&format!("{name} (b)"), pb));
        table.row(added_row(&format!("{name} added (b − a)"), d));
    };
    block("latency", sa.latency.as_ref(), sb.latency.as_ref(), comparison.latency_added_ms.as_ref());
    if a.rpc.streaming() {
        block("TTFT", sa.ttft.as_ref(), sb.ttft.as_ref(), comparison.ttft_added_ms.as_ref());
        block("chunk gap", sa.chunk_gap.as_ref(), sb.chunk_gap.as_ref(), comparison.chunk_gap_added_ms.as_ref());
    }
    out.push_str(&table.render());

    let mut table = Table::new(&["", "(a)", "(b)", "b/a"]);
    table.row(vec![
        "requests/s".into(),
        format!("{:.1}", sa.throughput_rps),
        format!("{:.1}", sb.throughput_rps),
        num(comparison.throughput_ratio, 3),
    ]);
    table.row(vec![
        "output tok/s total".into(),
        num(sa.output_tps_total, 1),
        num(sb.output_tps_total, 1),
        num(comparison.output_tps_ratio, 3),
    ]);
    let mut spread_row = |label: &str, read: fn(&RunSummary) -> Option<Spread>| {
        let (pa, pb) = (read(sa).map(|p| p.mean), read(sb).map(|p| p.mean));
        table.row(vec![label.into(), num(pa, 1), num(pb, 1), num(pa.zip(pb).and_then(|(pa, pb)| ratio(pb, pa)), 3)]);
    };
    spread_row("tok/s per stream, over the request (mean)", |s| s.output_tps_per_stream);
    if a.rpc.streaming() {
        spread_row("tok/s per stream, after the first token (mean)", |s| s.output_tps_after_first_token);
    }
    table.row(vec!["failed requests".into(), sa.failed.to_string(), sb.failed.to_string(), String::new()]);
    out.push('\n');
    out.push_str(&table.render());
    out
}

/// Seconds since the Unix epoch, for the `started_unix_s` of JSON reports.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The JSON of a mode that measures one run.
#[derive(Serialize)]
struct SingleRun<'a, C: Serialize> {
    mode: &'static str,
    started_unix_s: u64,
    config: &'a C,
    run: &'a RunReport,
}

/// Prints one run for people, writes it to `json` if asked, and fails when no request succeeded.
pub fn emit_single(
    mode: &'static str,
    started_unix_s: u64,
    config: &impl Serialize,
    run: &RunReport,
    json: Option<&Path>,
) -> Result<ExitCode, BoxError> {
    print!("{}", render_run(run));
    if let Some(path) = json {
        write_json(path, &SingleRun { mode, started_unix_s, config, run })
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if run.summary.ok == 0 {
        eprintln!("copilot-bench: every request failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_format() {
        let mut total = BTreeMap::new();
        assert_eq!(format_counts(&total), "none");
        merge_counts(&mut total, &BTreeMap::from([("UNAVAILABLE".to_owned(), 2)]));
        merge_counts(&mut total, &BTreeMap::from([("UNAVAILABLE".to_owned(), 1), ("INTERNAL".to_owned(), 1)]));
        assert_eq!(format_counts(&total), "INTERNAL ×1, UNAVAILABLE ×3");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(num(Some(1.234_56), 2), "1.23");
        assert_eq!(num(None, 2), "-");
        assert_eq!(mib(Some(3 * 1024 * 1024 / 2)), "1.5");
        assert_eq!(mib(None), "-");
    }

    use std::time::Duration;

    use crate::stats::Spread;

    fn summary(latency_ms: &[f64], streaming: bool) -> RunSummary {
        let seconds = || latency_ms.iter().map(|ms| ms / 1e3);
        RunSummary {
            requests: latency_ms.len() as u64 + 1,
            ok: latency_ms.len() as u64,
            failed: 1,
            errors: BTreeMap::from([("UNAVAILABLE".to_owned(), 1)]),
            error_examples: BTreeMap::from([("UNAVAILABLE".to_owned(), "upstream down".to_owned())]),
            wall_s: 2.0,
            throughput_rps: latency_ms.len() as f64 / 2.0,
            max_in_flight: 4,
            latency: Percentiles::from_seconds(seconds()),
            service_time: Percentiles::from_seconds(seconds()),
            send_lag: Percentiles::from_seconds([0.0]),
            ttft: streaming.then(|| Percentiles::from_seconds(seconds().map(|s| s / 2.0))).flatten(),
            chunk_gap: streaming.then(|| Percentiles::from_seconds([0.000_1, 0.000_2])).flatten(),
            output_tokens: 40,
            output_tokens_estimated: 0,
            output_tps_total: Some(20.0),
            output_tps_per_stream: Spread::of([100.0, 50.0]),
            output_tps_after_first_token: streaming.then(|| Spread::of([200.0, 100.0])).flatten(),
        }
    }

    fn run(label: &str, plan: &str, rpc: Rpc, latency_ms: &[f64]) -> RunReport {
        RunReport {
            label: label.to_owned(),
            target: "gRPC copilot.v1.Copilot/Chat (server streaming) at http://127.0.0.1:1, model m".to_owned(),
            rpc,
            plan: plan.to_owned(),
            scenario: Scenario::Short,
            prompt_words: 10,
            max_tokens: 128,
            summary: summary(latency_ms, rpc.streaming()),
            memory: None,
        }
    }

    #[test]
    fn a_closed_loop_chat_run_as_text() {
        let mut report =
            run("load", "closed loop, 4 callers back to back, 4 requests", Rpc::Chat, &[1.0, 2.0, 3.0, 4.0]);
        report.memory = Some(MemoryUse {
            warmed_bytes: Some(21 << 20),
            ..MemoryUse::new(42, 20 << 20, Some((20 << 20) + 4 * 1536), 4, true)
        });
        let expected = "\
load: gRPC copilot.v1.Copilot/Chat (server streaming) at http://127.0.0.1:1, model m
  load: closed loop, 4 callers back to back, 4 requests; rpc chat (streaming); scenario short (10 words); max_tokens 128
  requests: 5 sent, 4 ok, 1 failed in 2.000 s = 2.0 req/s; at most 4 in flight
  output: 40 tokens = 20.0 tok/s total
  tok/s per stream over the request: mean 75.0, p50 50.0, min 50.0
  tok/s per stream after the first token: mean 150.0, p50 100.0, min 100.0
  errors: UNAVAILABLE ×1
    UNAVAILABLE, first: upstream down
  server RSS (pid 42): idle 20.0 MiB (before any request), after warm-up 21.0 MiB, peak 20.0 MiB, per stream 1.5 KiB ((peak − idle) / 4 streams)

  ms                             mean    p50    p90    p95    p99  p99.9    max
  ----------------------------  -----  -----  -----  -----  -----  -----  -----
  latency (from intended send)  2.500  2.000  4.000  4.000  4.000  4.000  4.000
  time to first token           1.250  1.000  2.000  2.000  2.000  2.000  2.000
  inter-chunk gap               0.150  0.100  0.200  0.200  0.200  0.200  0.200
";
        assert_eq!(render_run(&report), expected);
    }

    #[test]
    fn an_open_loop_unary_run_shows_service_time_and_send_lag_but_no_chunks() {
        let text = render_run(&run("http", "open loop at 2 req/s (…)", Rpc::Generate, &[1.0]));
        assert!(text.contains("service time (from actual send)"), "{text}");
        assert!(text.contains("send lag (actual − intended)"), "{text}");
        assert!(!text.contains("time to first token") && !text.contains("inter-chunk gap"), "{text}");
        assert!(text.contains("rpc generate (unary)"), "{text}");
    }

    #[test]
    fn memory_per_stream_only_for_streams() {
        let m = MemoryUse::new(1, 1000, Some(3000), 4, true);
        assert_eq!(m.per_stream_bytes, Some(500.0));
        assert_eq!(MemoryUse::new(1, 1000, Some(3000), 4, false).per_stream_bytes, None);
        assert_eq!(MemoryUse::new(1, 3000, Some(1000), 4, true).per_stream_bytes, Some(0.0), "never negative");
        assert_eq!(MemoryUse::new(1, 1000, None, 4, true).per_stream_bytes, None);
        assert_eq!(MemoryUse::new(1, 1000, Some(3000), 0, true).per_stream_bytes, None);
    }

    #[test]
    fn comparison_subtracts_percentiles_and_divides_throughput() {
        let a = run("(a) direct", "closed loop", Rpc::Chat, &[1.0, 2.0, 3.0, 4.0]);
        let b = run("(b) through Copilot", "closed loop", Rpc::Chat, &[1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]);
        let comparison = Comparison::of(&a.summary, &b.summary);
        let added = comparison.latency_added_ms.unwrap();
        assert!((added.p50_ms - 2.5).abs() < 1e-9, "{added:?}");
        assert!((added.max_ms - 4.5).abs() < 1e-9, "{added:?}");
        assert_eq!(comparison.throughput_ratio, Some(2.0));
        assert_eq!(comparison.output_tps_ratio, Some(1.0));
        let text = render_comparison(&a, &b, &comparison);
        assert!(text.starts_with("Added by Copilot: (b) through Copilot minus (a) direct"), "{text}");
        let row = text.lines().find(|l| l.starts_with("latency added (b − a)")).unwrap();
        assert!(row.contains("+2.500") && row.contains("+4.500"), "{row}");
        assert!(text.lines().any(|l| l.starts_with("TTFT added (b − a)")), "{text}");
        let row = text.lines().find(|l| l.starts_with("requests/s")).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["requests/s", "2.0", "4.0", "2.000"]);
        assert!(text.lines().any(|l| l.starts_with("failed requests")), "{text}");
    }

    #[test]
    fn comparison_without_data_has_no_numbers() {
        let empty = RunSummary::from_records(&[], Duration::ZERO, 0);
        let comparison = Comparison::of(&empty, &empty);
        assert_eq!(
            (comparison.latency_added_ms, comparison.throughput_ratio, comparison.output_tps_ratio),
            (None, None, None)
        );
        assert_eq!(added_row("x", None), ["x", "-", "-", "-", "-", "-", "-", "-"]);
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["level", "tok/s", "note"]);
        table.row(vec!["1".into(), "12.5".into(), "x".into()]);
        table.row(vec!["mean".into(), "1234.0".into()]);
        let expected = "\
level   tok/s  note
-----  ------  ----
1        12.5     x
mean   1234.0
";
        assert_eq!(table.render(), expected);
    }
}
