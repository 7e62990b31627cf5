//! What the soak counts: each actor's outcomes by label (with the first detail of each, as the
//! load report keeps the first message of each error) and how long its streams or connections
//! lived; and the stop signal every actor watches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::stats::{Percentiles, Recorder};

/// Details are cut to this many characters: enough to read a status message or an I/O error.
const DETAIL_CHARS: usize = 200;

/// How many times one outcome happened, and what the first one said.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OutcomeCount {
    pub count: u64,
    pub first_detail: String,
}

/// An actor's outcomes by label, shared by its tasks.
#[derive(Clone, Default)]
pub struct Tally {
    inner: Arc<Mutex<TallyInner>>,
}

#[derive(Default)]
struct TallyInner {
    outcomes: BTreeMap<String, OutcomeCount>,
    /// Made on first use: a histogram is a few MB, and most tallies time nothing.
    lifetimes: Option<Recorder>,
}

/// A [`Tally`] as reported: outcomes, and the lifetimes of what was timed (streams, sockets).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TallyReport {
    pub outcomes: BTreeMap<String, OutcomeCount>,
    pub lifetime_ms: Option<Percentiles>,
}

impl TallyReport {
    pub fn total(&self) -> u64 {
        self.outcomes.values().map(|o| o.count).sum()
    }
}

impl Tally {
    /// Counts one `label`; the first `detail` of each label is kept.
    pub fn add(&self, label: impl Into<String>, detail: impl AsRef<str>) {
        if let Ok(mut inner) = self.inner.lock() {
            let entry = inner.outcomes.entry(label.into()).or_default();
            if entry.count == 0 {
                entry.first_detail = detail.as_ref().chars().take(DETAIL_CHARS).collect();
            }
            entry.count += 1;
        }
    }

    /// [`add`](Self::add), and records how long the thing it counts lived.
    pub fn add_timed(&self, label: impl Into<String>, detail: impl AsRef<str>, lived: Duration) {
        self.add(label, detail);
        if let Ok(mut inner) = self.inner.lock() {
            inner.lifetimes.get_or_insert_with(Recorder::default).record(lived);
        }
    }

    pub fn report(&self) -> TallyReport {
        match self.inner.lock() {
            Ok(inner) => TallyReport {
                outcomes: inner.outcomes.clone(),
                lifetime_ms: inner.lifetimes.as_ref().and_then(Recorder::summary),
            },
            Err(_) => TallyReport::default(),
        }
    }
}

/// The end of the hostile phase, which every actor watches; cloned into each task.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// The signal, and the sender that gives it.
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (sender, receiver) = watch::channel(false);
        (sender, Stop(receiver))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal is given (or its sender is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Sleeps for `duration`; `false` if the signal came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label_and_keeps_the_first_detail() {
        let tally = Tally::default();
        tally.add("OK", "");
        tally.add("RST_STREAM CANCEL", "first");
        tally.add_timed("RST_STREAM CANCEL", "second", Duration::from_millis(20));
        let report = tally.report();
        assert_eq!(report.total(), 3);
        assert_eq!(report.outcomes["RST_STREAM CANCEL"].count, 2);
        assert_eq!(report.outcomes["RST_STREAM CANCEL"].first_detail, "first");
        let lifetimes = report.lifetime_ms.unwrap();
        assert_eq!(lifetimes.count, 1);
        assert!((lifetimes.max_ms - 20.0).abs() < 0.01);
    }

    #[tokio::test]
    async fn stop_wakes_sleepers() {
        let (sender, mut stop) = Stop::new();
        assert!(!stop.is_set());
        assert!(stop.sleep(Duration::from_millis(1)).await);
        sender.send(true).unwrap();
        assert!(stop.is_set());
        assert!(!stop.sleep(Duration::from_secs(60)).await);
    }
}
