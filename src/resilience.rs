//! Per-instance protection: a circuit breaker, a concurrency limit with a bounded wait queue, and
//! the backoff between retries. The gateway consults these around every upstream attempt.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::deadline::later;

/// Opens after `threshold` consecutive failures; after `cooldown` lets one probe call through
/// (half-open); closes again when a call succeeds.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Permission to call, from [`Breaker::allow`]. Report the outcome with `success` or `failure`;
/// dropping it without either (the caller went away) frees the half-open probe for another call.
pub struct BreakerPass<'a> {
    breaker: &'a Breaker,
    decided: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold, cooldown, state: Mutex::new(BreakerState::Closed { failures: 0 }) }
    }

    /// `None` while the breaker is open (or a half-open probe is already in flight).
    pub fn allow(&self) -> Option<BreakerPass<'_>> {
        if self.threshold == 0 {
            return Some(BreakerPass { breaker: self, decided: false });
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            BreakerState::Closed { .. } => {}
            BreakerState::Open { until } if Instant::now() >= until => {
                *state = BreakerState::HalfOpen { probing: true };
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true } => return None,
            BreakerState::HalfOpen { probing: false } => *state = BreakerState::HalfOpen { probing: true },
        }
        Some(BreakerPass { breaker: self, decided: false })
    }

    pub fn is_open(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        matches!(*state, BreakerState::Open { until } if Instant::now() < until)
    }

    fn record(&self, success: bool) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match (*state, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < self.threshold => {
                BreakerState::Closed { failures: failures + 1 }
            }
            (_, false) => {
                tracing::warn!(cooldown = ?self.cooldown, "circuit breaker opened");
                BreakerState::Open { until: later(Instant::now(), self.cooldown) }
            }
        };
    }

    fn abandon(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == (BreakerState::HalfOpen { probing: true }) {
            *state = BreakerState::HalfOpen { probing: false };
        }
    }
}

impl BreakerPass<'_> {
    pub fn success(mut self) {
        self.decided = true;
        self.breaker.record(true);
    }

    pub fn failure(mut self) {
        self.decided = true;
        self.breaker.record(false);
    }
}

impl Drop for BreakerPass<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.breaker.abandon();
        }
    }
}

/// At most `max` calls at once, and at most `queue` more waiting (each for at most `wait`).
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    max: usize,
    queue: usize,
    wait: Duration,
    waiting: AtomicUsize,
}

/// Why a call could not get a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReached {
    pub running: usize,
    pub waiting: usize,
}

impl ConcurrencyLimit {
    pub fn new(max: usize, queue: usize, wait: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)), max, queue, wait, waiting: AtomicUsize::new(0) }
    }

    /// A place to run, waiting in the queue if there is room in it (until `deadline` at most).
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<OwnedSemaphorePermit, LimitReached> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let reached = || LimitReached { running: self.max, waiting: self.waiting.load(Ordering::Acquire) };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(reached());
        }
        let until = match deadline {
            Some(deadline) => deadline.min(later(Instant::now(), self.wait)),
            None => later(Instant::now(), self.wait),
        };
        let result = tokio::time::timeout_at(until, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(reached()),
        }
    }
}

/// The pause before retry number `retry` (1-based): exponential from `base`, capped at `max`,
/// with "equal jitter" (half fixed, half random) so retries of many clients spread out; a longer
/// `Retry-After` from the upstream wins (at most [`copilot_provider::MAX_RETRY_AFTER`]).
pub fn backoff(retry: u32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exponential = base.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(max);
    let half = exponential / 2;
    let jitter = half.mul_f64(random_unit());
    let pause = half + jitter;
    match retry_after {
        Some(after) => copilot_provider::clamp_retry_after(after).max(pause),
        None => pause,
    }
}

/// A number in [0, 1) that differs between calls; quality does not matter for jitter.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        breaker.allow().unwrap().failure();
        breaker.allow().unwrap().success(); // a success resets the count
        for _ in 0..3 {
            breaker.allow().unwrap().failure();
        }
        assert!(breaker.is_open());
        assert!(breaker.allow().is_none());

        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = breaker.allow().expect("half-open lets one probe through");
        assert!(breaker.allow().is_none(), "only one probe at a time");
        probe.failure();
        assert!(breaker.is_open(), "a failed probe opens it again");

        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = breaker.allow().unwrap();
        drop(probe); // the caller went away: another call may probe
        breaker.allow().unwrap().success();
        assert!(!breaker.is_open());
        assert!(breaker.allow().is_some() && breaker.allow().is_some(), "closed again");
    }

    #[test]
    fn a_zero_threshold_disables_the_breaker() {
        let breaker = Breaker::new(0, Duration::from_secs(10));
        for _ in 0..100 {
            breaker.allow().unwrap().failure();
        }
        assert!(breaker.allow().is_some());
    }

    #[tokio::test]
    async fn the_limit_queues_then_refuses() {
        let limit = ConcurrencyLimit::new(1, 1, Duration::from_secs(5));
        let first = limit.acquire(None).await.unwrap();
        let limit = Arc::new(limit);
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire(None).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(limit.acquire(None).await.unwrap_err(), LimitReached { running: 1, waiting: 1 });
        drop(first);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_gives_up_at_its_deadline() {
        let limit = ConcurrencyLimit::new(1, 4, Duration::from_secs(60));
        let _held = limit.acquire(None).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(limit.acquire(Some(deadline)).await.is_err());
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(800);
        for retry in 1..=6 {
            let pause = backoff(retry, base, max, None);
            let full = base.saturating_mul(1 << (retry - 1)).min(max);
            assert!(pause >= full / 2 && pause <= full, "retry {retry}: {pause:?}");
        }
        assert_eq!(backoff(1, base, max, Some(Duration::from_secs(3))), Duration::from_secs(3));
        let cap = copilot_provider::MAX_RETRY_AFTER;
        assert_eq!(backoff(1, base, max, Some(Duration::MAX)), cap, "an absurd Retry-After is capped");
        assert!(backoff(40, Duration::MAX, Duration::MAX, None) <= Duration::MAX);
    }

    #[tokio::test]
    async fn endless_cooldowns_and_waits_do_not_panic() {
        let breaker = Breaker::new(1, Duration::MAX);
        breaker.allow().unwrap().failure();
        assert!(breaker.is_open());
        let limit = ConcurrencyLimit::new(1, 1, Duration::MAX);
        let _held = limit.acquire(None).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(limit.acquire(Some(deadline)).await.is_err());
    }
}
