//! A token bucket that refills continuously and may go into debt: requests are taken before a
//! call, but tokens are only known after it, so a call may use more than was left; the debt is
//! paid off by the refill before the key can call again. (`governor` cannot charge after the fact.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Float noise to forgive when comparing levels, so a retry at the advised time succeeds.
const EPSILON: f64 = 1e-9;

pub struct Bucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<State>,
}

struct State {
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket of `amount` that refills `amount` per minute, starting full.
    pub fn per_minute(amount: u64, now: Instant) -> Bucket {
        let capacity = amount as f64;
        Bucket { capacity, per_second: capacity / 60.0, state: Mutex::new(State { level: capacity, at: now }) }
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.level = (state.level + elapsed * self.per_second).min(self.capacity);
        state.at = state.at.max(now);
        state
    }

    fn wait_for(&self, level: f64, amount: f64) -> Duration {
        // Rounded up to the millisecond, so that retrying after it succeeds (the small allowance
        // keeps float noise from adding a millisecond to an exact answer).
        let millis = (amount - level) * 60_000.0 / self.capacity;
        Duration::from_millis((millis - 1e-6).ceil().max(0.0) as u64)
    }

    /// Takes `amount` now, or says how long until it could be taken.
    pub fn take(&self, amount: f64, now: Instant) -> Result<(), Duration> {
        let mut state = self.refilled(now);
        if state.level + EPSILON >= amount {
            state.level -= amount;
            Ok(())
        } else {
            Err(self.wait_for(state.level, amount))
        }
    }

    /// Whether at least one unit is left, or how long until one is.
    pub fn ensure_available(&self, now: Instant) -> Result<(), Duration> {
        let state = self.refilled(now);
        if state.level + EPSILON >= 1.0 { Ok(()) } else { Err(self.wait_for(state.level, 1.0)) }
    }

    /// Charges `amount` after the fact; what is not there becomes debt.
    pub fn charge(&self, amount: f64, now: Instant) {
        self.refilled(now).level -= amount;
    }

    /// Gives back `amount` taken earlier, never past the capacity.
    pub fn refund(&self, amount: f64, now: Instant) {
        let mut state = self.refilled(now);
        state.level = (state.level + amount).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn takes_until_empty_then_says_when_it_refills() {
        let t0 = Instant::now();
        let bucket = Bucket::per_minute(2, t0);
        assert!(bucket.take(1.0, t0).is_ok());
        assert!(bucket.take(1.0, t0).is_ok());
        // 2 per minute: one every 30 seconds.
        assert_eq!(bucket.take(1.0, t0), Err(30 * SECOND));
        assert_eq!(bucket.take(1.0, t0 + 10 * SECOND), Err(20 * SECOND));
        assert!(bucket.take(1.0, t0 + 30 * SECOND).is_ok());
        assert!(bucket.take(1.0, t0 + 30 * SECOND).is_err());
    }

    #[test]
    fn refills_no_further_than_its_capacity() {
        let t0 = Instant::now();
        let bucket = Bucket::per_minute(3, t0);
        let later = t0 + 3600 * SECOND;
        for _ in 0..3 {
            assert!(bucket.take(1.0, later).is_ok());
        }
        assert!(bucket.take(1.0, later).is_err());
    }

    #[test]
    fn a_charge_beyond_the_level_is_a_debt_paid_off_first() {
        let t0 = Instant::now();
        let bucket = Bucket::per_minute(60, t0);
        assert!(bucket.ensure_available(t0).is_ok());
        // 60 per minute is 1 per second; 120 charged from 60 leaves a debt of 60.
        bucket.charge(120.0, t0);
        assert_eq!(bucket.ensure_available(t0), Err(61 * SECOND));
        assert_eq!(bucket.ensure_available(t0 + 60 * SECOND), Err(SECOND));
        assert!(bucket.ensure_available(t0 + 61 * SECOND).is_ok());
    }

    #[test]
    fn a_refund_gives_back_what_was_taken_up_to_the_capacity() {
        let t0 = Instant::now();
        let bucket = Bucket::per_minute(60, t0);
        assert!(bucket.take(50.0, t0).is_ok());
        bucket.refund(30.0, t0);
        assert!(bucket.take(40.0, t0).is_ok());
        assert!(bucket.take(1.0, t0).is_err());
        // 30 s refilled 30 of 60; a refund of 40 fills it, and no further.
        bucket.refund(40.0, t0 + 30 * SECOND);
        assert!(bucket.take(60.0, t0 + 30 * SECOND).is_ok());
        assert!(bucket.take(1.0, t0 + 30 * SECOND).is_err());
    }

    #[test]
    fn an_earlier_instant_does_not_move_time_backwards() {
        let t0 = Instant::now();
        let bucket = Bucket::per_minute(1, t0 + 10 * SECOND);
        assert!(bucket.take(1.0, t0 + 10 * SECOND).is_ok());
        assert!(bucket.take(1.0, t0).is_err());
        assert!(bucket.take(1.0, t0 + 70 * SECOND).is_ok());
    }
}
