//! Statistics: latency histograms (hdrhistogram, microseconds) and their percentile summaries, plain
//! means and minima, and the summary of one load run computed from its per-request records.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::loadgen::{Record, Run, timings};

/// Highest duration a histogram tracks: one hour, in microseconds. Longer values are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

/// Significant digits of the histograms: exact to the microsecond up to 32.767 ms, within 0.01%
/// above (about 2.5 MB of counters each).
const SIGNIFICANT_DIGITS: u8 = 4;

/// Records durations in microseconds (at least 1 µs, at most an hour) and keeps their exact sum
/// and maximum beside the histogram.
pub struct Recorder {
    histogram: Histogram<u64>,
    sum_micros: u128,
    max_micros: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS).expect("valid histogram bounds"),
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

impl Recorder {
    pub fn record_micros(&mut self, micros: u64) {
        // At least 1 µs: the histogram's lowest trackable value.
        let micros = micros.clamp(1, MAX_MICROS);
        self.histogram.saturating_record(micros);
        self.sum_micros += u128::from(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    pub fn record(&mut self, duration: Duration) {
        self.record_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_seconds(&mut self, seconds: f64) {
        self.record_micros((seconds * 1e6).round().clamp(0.0, MAX_MICROS as f64) as u64);
    }

    /// The summary of what was recorded; `None` for nothing.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.histogram.is_empty() {
            return None;
        }
        // A bucket's highest value can exceed the largest value recorded in it: cap at the maximum.
        let at = |quantile: f64| self.histogram.value_at_quantile(quantile).min(self.max_micros) as f64 / 1e3;
        let count = self.histogram.len();
        Some(Percentiles {
            count,
            mean_ms: self.sum_micros as f64 / count as f64 / 1e3,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: self.max_micros as f64 / 1e3,
        })
    }
}

/// A distribution of durations in milliseconds with microsecond precision, from a [`Recorder`]: a
/// percentile is the highest value of its histogram bucket (exact up to 32.767 ms, at most 0.01%
/// above the true value beyond, and never above the maximum); the mean and the maximum are exact.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// A column of a latency table: its header and how to read it from a summary.
pub type Column = (&'static str, fn(&Percentiles) -> f64);

/// The columns every latency table shows, in order.
pub const COLUMNS: [Column; 7] = [
    ("mean", |p| p.mean_ms),
    ("p50", |p| p.p50_ms),
    ("p90", |p| p.p90_ms),
    ("p95", |p| p.p95_ms),
    ("p99", |p| p.p99_ms),
    ("p99.9", |p| p.p999_ms),
    ("max", |p| p.max_ms),
];

impl Percentiles {
    /// The summary of durations given in seconds; `None` for no values.
    pub fn from_seconds(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut recorder = Recorder::default();
        values.into_iter().for_each(|seconds| recorder.record_seconds(seconds));
        recorder.summary()
    }

    /// Column by column, `self − other` (for "added latency": the difference of the percentiles,
    /// not the percentile of differences, which two separate runs cannot give).
    pub fn minus(&self, other: &Percentiles) -> Differences {
        // Rounded to the microsecond, the precision of both sides.
        let d = |read: fn(&Percentiles) -> f64| ((read(self) - read(other)) * 1e3).round() / 1e3;
        Differences {
            mean_ms: d(|p| p.mean_ms),
            p50_ms: d(|p| p.p50_ms),
            p90_ms: d(|p| p.p90_ms),
            p95_ms: d(|p| p.p95_ms),
            p99_ms: d(|p| p.p99_ms),
            p999_ms: d(|p| p.p999_ms),
            max_ms: d(|p| p.max_ms),
        }
    }
}

/// [`Percentiles::minus`]: the same columns, as signed differences in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Differences {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Differences {
    /// The values in [`COLUMNS`] order.
    pub fn columns(&self) -> [f64; 7] {
        [self.mean_ms, self.p50_ms, self.p90_ms, self.p95_ms, self.p99_ms, self.p999_ms, self.max_ms]
    }
}

/// The arithmetic mean; `None` for no values.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.into_iter().fold((0.0, 0u64), |(sum, count), v| (sum + v, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// The smallest value; `None` for no values.
pub fn min(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    values.into_iter().reduce(f64::min)
}

/// Mean, median and minimum of a set of rates (tokens/s of each stream).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub p50: f64,
    pub min: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        // The nearest-rank median: the lower middle value for an even count.
        let p50 = values[(values.len() - 1) / 2];
        Some(Spread { mean: mean(values.iter().copied())?, p50, min: values[0] })
    }
}

/// Everything one load run measured, from its records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Requests sent and measured (warm-up excluded), how many succeeded, and the failures by
    /// code (gRPC code name, `HTTP nnn`, `TIMEOUT`, …) with the first message seen for each.
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    /// From the start of the run to the end of its last request.
    pub wall_s: f64,
    /// Successful requests per second of wall time.
    pub throughput_rps: f64,
    /// The most requests that were in flight at once.
    pub max_in_flight: u64,
    /// Successful requests: from the *intended* send time to the end of the response. In a closed
    /// loop a request is sent when it is intended; in an open loop the intended time is its slot in
    /// the schedule, so time spent waiting to be sent counts (no coordinated omission).
    pub latency: Option<Percentiles>,
    /// Successful requests: from the actual send to the end of the response.
    pub service_time: Option<Percentiles>,
    /// Every request: actual send − intended send (0 in a closed loop).
    pub send_lag: Option<Percentiles>,
    /// Streaming requests: from the intended send time to the first non-empty content chunk.
    pub ttft: Option<Percentiles>,
    /// Streaming requests: time between consecutive non-empty content chunks.
    pub chunk_gap: Option<Percentiles>,
    /// Output tokens of the successful requests, as the server reported them (or content chunks,
    /// counted by the client, for a response that reported none).
    pub output_tokens: u64,
    /// Responses whose output tokens were counted as chunks because none were reported.
    pub output_tokens_estimated: u64,
    /// All output tokens over the wall time.
    pub output_tps_total: Option<f64>,
    /// Per request: output tokens / service time (actual send to end).
    pub output_tps_per_stream: Option<Spread>,
    /// Streaming requests: (output tokens − 1) / (last chunk − first chunk), the generation rate
    /// as `tokens` measures it (and Ollama's eval rate). Chunks that arrive together (a gateway or
    /// the network coalescing them) make it high.
    pub output_tps_after_first_token: Option<Spread>,
}

impl RunSummary {
    pub fn from_run(run: &Run) -> Self {
        Self::from_records(&run.records, run.wall, run.max_in_flight)
    }

    pub fn from_records(records: &[Record], wall: Duration, max_in_flight: u64) -> Self {
        let mut latency = Recorder::default();
        let mut service_time = Recorder::default();
        let mut send_lag = Recorder::default();
        let mut ttft = Recorder::default();
        let mut chunk_gap = Recorder::default();
        let mut errors = BTreeMap::new();
        let mut error_examples = BTreeMap::new();
        let mut per_stream = Vec::new();
        let mut after_first = Vec::new();
        let (mut ok, mut output_tokens, mut output_tokens_estimated) = (0, 0, 0);
        for record in records {
            let t = timings(record.intended, record.start, record.first_chunk, record.end);
            send_lag.record(t.send_lag);
            match &record.outcome {
                Ok(reported) => {
                    ok += 1;
                    latency.record(t.latency);
                    service_time.record(t.service);
                    if let Some(first) = t.ttft {
                        ttft.record(first);
                    }
                    record.gaps_us.iter().for_each(|&gap| chunk_gap.record_micros(u64::from(gap)));
                    let tokens = reported.unwrap_or_else(|| {
                        output_tokens_estimated += 1;
                        record.chunks
                    });
                    output_tokens += tokens;
                    let service = t.service.as_secs_f64();
                    if tokens >= 1 && service > 0.0 {
                        per_stream.push(tokens as f64 / service);
                    }
                    if let Some(rate) = generation_rate(record, tokens) {
                        after_first.push(rate);
                    }
                }
                Err(error) => {
                    *errors.entry(error.code.clone()).or_insert(0) += 1;
                    error_examples.entry(error.code.clone()).or_insert_with(|| error.message.clone());
                }
            }
        }
        let wall_s = wall.as_secs_f64();
        let per_second = |count: u64| if wall_s > 0.0 { count as f64 / wall_s } else { 0.0 };
        RunSummary {
            requests: records.len() as u64,
            ok,
            failed: records.len() as u64 - ok,
            errors,
            error_examples,
            wall_s,
            throughput_rps: per_second(ok),
            max_in_flight,
            latency: latency.summary(),
            service_time: service_time.summary(),
            send_lag: send_lag.summary(),
            ttft: ttft.summary(),
            chunk_gap: chunk_gap.summary(),
            output_tokens,
            output_tokens_estimated,
            output_tps_total: (ok > 0).then(|| per_second(output_tokens)),
            output_tps_per_stream: Spread::of(per_stream),
            output_tps_after_first_token: Spread::of(after_first),
        }
    }
}

/// One streamed request's rate after its first chunk (see
/// [`RunSummary::output_tps_after_first_token`]).
fn generation_rate(record: &Record, tokens: u64) -> Option<f64> {
    let generating = record.last_chunk?.saturating_duration_since(record.first_chunk?).as_secs_f64();
    (tokens >= 2 && generating > 0.0).then(|| (tokens - 1) as f64 / generating)
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::loadgen::CallError;

    /// `actual` is at or up to 0.01% above `expected`, as a percentile of a 4-digit histogram is.
    fn assert_close(actual: f64, expected: f64) {
        assert!(actual >= expected && actual <= expected * 1.0001, "{actual} is not within 0.01% above {expected}");
    }

    #[test]
    fn percentiles_of_one_to_thousand_ms() {
        let p = Percentiles::from_seconds((1..=1000).rev().map(|ms| f64::from(ms) / 1e3)).unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.mean_ms, 500.5);
        assert_close(p.p50_ms, 500.0);
        assert_close(p.p90_ms, 900.0);
        assert_close(p.p95_ms, 950.0);
        assert_close(p.p99_ms, 990.0);
        assert_close(p.p999_ms, 999.0);
        assert_eq!(p.max_ms, 1000.0);
    }

    #[test]
    fn percentiles_keep_microseconds() {
        // Up to 32767 µs the histogram is exact.
        let p = Percentiles::from_seconds([0.000_250, 0.000_750, 0.001_999, 0.005_000, 0.032_767]).unwrap();
        assert_eq!(p.p50_ms, 1.999);
        assert_eq!(p.p90_ms, 32.767);
        assert_eq!(p.max_ms, 32.767);
        let p = Percentiles::from_seconds([0.000_250, 0.000_750, 0.001_999]).unwrap();
        assert_eq!(p.p50_ms, 0.75);
        assert_eq!(p.p999_ms, 1.999);
        assert!((p.mean_ms - 0.999_667).abs() < 1e-6, "exact mean: {}", p.mean_ms);
    }

    #[test]
    fn percentiles_never_exceed_the_maximum() {
        // 100001 µs falls in a bucket 4 µs wide whose highest value is 100003 µs.
        let p = Percentiles::from_seconds([0.050_000, 0.100_001]).unwrap();
        assert_eq!(p.p90_ms, 100.001);
        assert_eq!(p.p999_ms, 100.001);
        assert_eq!(p.max_ms, 100.001);
    }

    #[test]
    fn large_values_keep_four_significant_digits() {
        let p = Percentiles::from_seconds([12.345_678]).unwrap();
        assert_close(p.p50_ms, 12_345.678);
        assert_eq!(p.max_ms, 12_345.678);
    }

    #[test]
    fn percentiles_clamp_out_of_range_values() {
        let p = Percentiles::from_seconds([0.0, 1e9]).unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.p50_ms, 0.001);
        assert_eq!(p.max_ms, 3_600_000.0);
    }

    #[test]
    fn a_single_tail_value_shows_only_in_the_top_percentiles() {
        // 999 requests of 1 ms and one of 100 ms: p99 stays at 1 ms, p99.9 and max see the outlier.
        let mut recorder = Recorder::default();
        (0..999).for_each(|_| recorder.record_micros(1_000));
        recorder.record(Duration::from_millis(100));
        let p = recorder.summary().unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (1.0, 1.0));
        assert_eq!(p.p999_ms, 1.0, "the 999th of 1000 values is still 1 ms");
        assert_eq!(p.max_ms, 100.0);
        assert_close(p.mean_ms, 1.099);
    }

    #[test]
    fn differences_are_taken_column_by_column() {
        let a = Percentiles::from_seconds([0.001, 0.002]).unwrap();
        let b = Percentiles::from_seconds([0.0015, 0.0030]).unwrap();
        let d = b.minus(&a);
        assert_eq!((d.mean_ms, d.max_ms), (0.75, 1.0));
        assert_eq!(d.columns().len(), COLUMNS.len());
        assert!(a.minus(&b).p50_ms < 0.0, "a faster (b) gives a negative difference");
    }

    #[test]
    fn no_values_no_summary() {
        assert_eq!(Percentiles::from_seconds([]), None);
        assert_eq!(mean([]), None);
        assert_eq!(min([]), None);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn mean_min_and_spread() {
        assert_eq!(mean([1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(min([4.0, 2.5, 3.0]), Some(2.5));
        assert_eq!(Spread::of([9.0, 1.0, 5.0, 3.0]), Some(Spread { mean: 4.5, p50: 3.0, min: 1.0 }));
        assert_eq!(Spread::of([f64::INFINITY, 2.0]), Some(Spread { mean: 2.0, p50: 2.0, min: 2.0 }));
    }

    fn ms(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// A streamed request: intended at `intended`, sent at `start`, chunks at `chunks`, ended at `end` (ms).
    fn streamed(base: Instant, intended: u64, start: u64, chunks: &[u64], end: u64, tokens: u64) -> Record {
        let at: Vec<Instant> = chunks.iter().map(|&c| ms(base, c)).collect();
        Record {
            seq: 0,
            intended: ms(base, intended),
            start: ms(base, start),
            end: ms(base, end),
            first_chunk: at.first().copied(),
            last_chunk: at.last().copied(),
            gaps_us: at.windows(2).map(|w| (w[1] - w[0]).as_micros() as u32).collect(),
            chunks: chunks.len() as u64,
            outcome: Ok(Some(tokens)),
        }
    }

    #[test]
    fn run_summary_of_streamed_records() {
        let base = Instant::now();
        let records = vec![
            // On time: TTFT 10 ms, chunks 10 ms apart, 3 tokens over 20 ms of generation.
            streamed(base, 0, 0, &[10, 20, 30], 31, 3),
            // Sent 40 ms late: latency and TTFT count the wait, service time does not.
            streamed(base, 100, 140, &[150, 170], 171, 2),
            Record { outcome: Err(CallError::new("UNAVAILABLE", "down")), ..streamed(base, 200, 200, &[], 201, 0) },
            Record { outcome: Err(CallError::new("UNAVAILABLE", "again")), ..streamed(base, 300, 300, &[], 301, 0) },
        ];
        let s = RunSummary::from_records(&records, Duration::from_secs(2), 2);
        assert_eq!((s.requests, s.ok, s.failed), (4, 2, 2));
        assert_eq!(s.errors, BTreeMap::from([("UNAVAILABLE".to_owned(), 2)]));
        assert_eq!(s.error_examples["UNAVAILABLE"], "down", "the first message is kept");
        assert_eq!(s.throughput_rps, 1.0);
        assert_eq!(s.output_tokens, 5);
        assert_eq!(s.output_tps_total, Some(2.5));
        let latency = s.latency.unwrap();
        assert_eq!((latency.count, latency.max_ms), (2, 71.0));
        assert_eq!(s.service_time.unwrap().max_ms, 31.0);
        assert_eq!(s.send_lag.unwrap().max_ms, 40.0);
        assert_eq!(s.send_lag.unwrap().count, 4, "every request, failed or not");
        let ttft = s.ttft.unwrap();
        assert_eq!((ttft.p50_ms, ttft.max_ms), (10.0, 50.0));
        let gaps = s.chunk_gap.unwrap();
        assert_eq!((gaps.count, gaps.p50_ms, gaps.max_ms), (3, 10.0, 20.0));
        // After the first chunk: (3 − 1) / 20 ms = 100 tok/s; (2 − 1) / 20 ms = 50 tok/s.
        assert_eq!(s.output_tps_after_first_token, Some(Spread { mean: 75.0, p50: 50.0, min: 50.0 }));
        // Over the service time: 3 / 31 ms and 2 / 31 ms.
        let per_stream = s.output_tps_per_stream.unwrap();
        assert!((per_stream.mean - 2.5 / 0.031).abs() < 1e-9 && (per_stream.min - 2.0 / 0.031).abs() < 1e-9);
    }

    #[test]
    fn unary_records_rate_over_the_service_time_and_unreported_tokens_fall_back_to_chunks() {
        let base = Instant::now();
        let unary = Record { outcome: Ok(Some(10)), ..streamed(base, 0, 0, &[], 100, 0) };
        let s = RunSummary::from_records(&[unary], Duration::from_secs(1), 1);
        assert_eq!(s.output_tps_per_stream.unwrap().mean, 100.0);
        assert_eq!(s.output_tps_after_first_token, None);
        assert_eq!((s.ttft, s.chunk_gap), (None, None));

        let unreported = Record { outcome: Ok(None), ..streamed(base, 0, 0, &[1, 2, 3, 4], 5, 0) };
        let s = RunSummary::from_records(&[unreported], Duration::from_secs(1), 1);
        assert_eq!((s.output_tokens, s.output_tokens_estimated), (4, 1));
    }

    #[test]
    fn an_empty_run_has_no_rates() {
        let s = RunSummary::from_records(&[], Duration::ZERO, 0);
        assert_eq!((s.requests, s.throughput_rps, s.output_tps_total), (0, 0.0, None));
        assert_eq!(s.latency, None);
    }
}
