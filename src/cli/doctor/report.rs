//! The doctor's results: rows of check, result and detail, shown as an aligned table as they come
//! (or as one JSON object at the end), then what to do about each failure.

use std::io::Write as _;

use serde::Serialize;

/// Width of the CHECK column; longer names push their row's other columns right.
const CHECK_WIDTH: usize = 34;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// A required check failed: the setup does not work as configured (exit 1).
    Fail,
    /// Something is off that does not stop the configured default from working.
    Warn,
    /// For information only.
    Info,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Warn => "WARN",
            Outcome::Info => "INFO",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub check: String,
    pub result: Outcome,
    pub detail: String,
    /// What to do about it (FAIL and WARN rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

pub struct Report {
    rows: Vec<Row>,
    /// Print each row as it is added (table output), instead of everything at the end.
    live: bool,
}

impl Report {
    pub fn new(live: bool) -> Report {
        Report { rows: Vec::new(), live }
    }

    /// Whether every required check passed.
    pub fn ok(&self) -> bool {
        !self.rows.iter().any(|row| row.result == Outcome::Fail)
    }

    pub fn add(
        &mut self,
        check: impl Into<String>,
        result: Outcome,
        detail: impl Into<String>,
        advice: Option<String>,
    ) {
        let row = Row { check: check.into(), result, detail: one_line(&detail.into()), advice };
        if self.live {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", table_line(&row));
            let _ = out.flush();
        }
        self.rows.push(row);
    }

    pub fn pass(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.add(check, Outcome::Pass, detail, None);
    }

    pub fn info(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.add(check, Outcome::Info, detail, None);
    }

    /// A FAIL when the check is required, else a WARN.
    pub fn problem(
        &mut self,
        required: bool,
        check: impl Into<String>,
        detail: impl Into<String>,
        advice: impl Into<Option<String>>,
    ) {
        let result = if required { Outcome::Fail } else { Outcome::Warn };
        self.add(check, result, detail, advice.into());
    }

    pub fn fail(&mut self, check: impl Into<String>, detail: impl Into<String>, advice: impl Into<Option<String>>) {
        self.problem(true, check, detail, advice);
    }

    /// The table's header (printed before the first row when live).
    pub fn header(&self) -> String {
        format!("{:<CHECK_WIDTH$}  RESULT  DETAIL", "CHECK")
    }

    /// The whole table with its header.
    #[cfg(test)]
    pub fn table(&self) -> String {
        let mut text = self.header();
        text.push('\n');
        for row in &self.rows {
            text.push_str(&table_line(row));
            text.push('\n');
        }
        text
    }

    /// What to do about each FAIL (and WARN) row, then a one-line verdict.
    pub fn footer(&self) -> String {
        let mut text = String::new();
        let advised: Vec<&Row> = self
            .rows
            .iter()
            .filter(|row| matches!(row.result, Outcome::Fail | Outcome::Warn) && row.advice.is_some())
            .collect();
        if !advised.is_empty() {
            text.push_str("\nwhat to do:\n");
            for row in advised {
                let advice = row.advice.as_deref().unwrap_or_default();
                text.push_str(&format!("  {} {}: {}\n", row.result.label(), row.check, one_line(advice)));
            }
        }
        let count = |outcome| self.rows.iter().filter(|row| row.result == outcome).count();
        let (passed, failed, warned) = (count(Outcome::Pass), count(Outcome::Fail), count(Outcome::Warn));
        let verdict = if failed == 0 { "every required check passed" } else { "some required checks failed" };
        text.push_str(&format!("\n{passed} passed, {failed} failed, {warned} warnings: {verdict}\n"));
        text
    }

    pub fn json(&self, mode: &str, target: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            mode: &'a str,
            target: &'a str,
            ok: bool,
            checks: &'a [Row],
        }
        let out = Out { mode, target, ok: self.ok(), checks: &self.rows };
        serde_json::to_string_pretty(&out)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the report: {e}\"}}"))
    }
}

fn table_line(row: &Row) -> String {
    format!("{:<CHECK_WIDTH$}  {:<6}  {}", row.check, row.result.label(), row.detail).trim_end().to_string()
}

/// Keeps a row on one line: upstream messages sometimes carry newlines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_aligned_and_failures_come_with_what_to_do() {
        let mut report = Report::new(false);
        report.pass("configuration", "no file");
        report.problem(false, "provider ollama: reachable", "connection\nrefused", Some("start Ollama".to_string()));
        report.fail("Generate", "UNAVAILABLE: down", Some("start it".to_string()));
        report.info("peak memory", "12 MiB");
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        let column = lines[0].find("RESULT").unwrap();
        for (line, result) in lines[1..].iter().zip(["PASS", "WARN", "FAIL", "INFO"]) {
            assert_eq!(line.find(result), Some(column), "{table}");
        }
        assert!(lines[2].ends_with("connection refused"), "newlines are flattened: {table}");
        let footer = report.footer();
        assert!(footer.contains("FAIL Generate: start it"), "{footer}");
        assert!(footer.contains("WARN provider ollama: reachable: start Ollama"), "{footer}");
        assert!(footer.contains("1 passed, 1 failed, 1 warnings"), "{footer}");
        assert!(!report.ok());
    }

    #[test]
    fn warnings_and_information_do_not_fail_the_run() {
        let mut report = Report::new(false);
        report.pass("configuration", "");
        report.problem(false, "provider ollama: reachable", "down", None);
        report.info("peak memory", "1 MiB");
        assert!(report.ok());
        assert!(report.footer().contains("every required check passed"));
        let json: serde_json::Value = serde_json::from_str(&report.json("local", "in-process")).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["checks"][1]["result"], "WARN");
        assert_eq!(json["checks"][1]["check"], "provider ollama: reachable");
    }
}
