//! What every mode reports with: summary statistics, aligned plain-text tables, JSON files.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds, from a histogram of microseconds with 3 significant digits
/// (a percentile is the highest value of its bucket, at most 0.1% above the true value, capped at the
/// maximum); the maximum is exact.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
}

/// Highest latency the histogram tracks: one hour, in microseconds. Longer values are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

impl Percentiles {
    /// Percentiles of durations given in seconds; `None` for no values.
    pub fn from_seconds(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds");
        let mut max_micros = 0;
        for seconds in values {
            // At least 1 µs: the histogram's lowest trackable value.
            let micros = (seconds * 1e6).round().clamp(1.0, MAX_MICROS as f64) as u64;
            histogram.saturating_record(micros);
            max_micros = max_micros.max(micros);
        }
        if histogram.is_empty() {
            return None;
        }
        // A bucket's highest value can exceed the largest value recorded in it: cap at the maximum.
        let ms = |micros: u64| micros.min(max_micros) as f64 / 1e3;
        Some(Percentiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            max_ms: ms(max_micros),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `actual` is at or up to 0.1% above `expected`, as a percentile of a 3-digit histogram is.
    fn assert_close(actual: f64, expected: f64) {
        assert!(actual >= expected && actual <= expected * 1.001, "{actual} is not within 0.1% above {expected}");
    }

    #[test]
    fn percentiles_of_one_to_hundred_ms() {
        let p = Percentiles::from_seconds((1..=100).rev().map(|ms| f64::from(ms) / 1e3)).unwrap();
        assert_eq!(p.count, 100);
        assert_close(p.p50_ms, 50.0);
        assert_close(p.p90_ms, 90.0);
        assert_eq!(p.max_ms, 100.0);
    }

    #[test]
    fn percentiles_keep_microseconds() {
        // Below 2048 µs the histogram is exact.
        let p = Percentiles::from_seconds([0.000_250, 0.000_750, 0.001_999]).unwrap();
        assert_eq!(p.p50_ms, 0.75);
        assert_eq!(p.p90_ms, 1.999);
        assert_eq!(p.max_ms, 1.999);
    }

    #[test]
    fn percentiles_never_exceed_the_maximum() {
        // 10969 µs falls in a bucket 8 µs wide whose highest value is 10975 µs.
        let p = Percentiles::from_seconds([0.008_187, 0.010_969]).unwrap();
        assert_eq!(p.p90_ms, 10.969);
        assert_eq!(p.max_ms, 10.969);
    }

    #[test]
    fn large_values_keep_three_significant_digits() {
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
    fn no_values_no_summary() {
        assert_eq!(Percentiles::from_seconds([]), None);
        assert_eq!(mean([]), None);
        assert_eq!(min([]), None);
    }

    #[test]
    fn mean_and_min() {
        assert_eq!(mean([1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(min([4.0, 2.5, 3.0]), Some(2.5));
    }

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
