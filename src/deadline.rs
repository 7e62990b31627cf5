//! The caller's deadline, read from the `grpc-timeout` request header.
//!
//! tonic does not expose the deadline, and its own server-side timeout answers CANCELLED, so the
//! gateway reads the header itself and answers DEADLINE_EXCEEDED when it expires.

use std::time::Duration;

use tokio::time::Instant;

use crate::request_body::ReceivedAt;

/// When a call arrived, and by when it must be done.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    pub received: Instant,
    /// The time budget the caller gave, if any.
    pub budget: Option<Duration>,
}

impl CallContext {
    /// The call's deadline starts when its headers arrived (`ReceivedAt`, set by the request body
    /// guard), so the time its request took to arrive counts.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Self {
        let received = request.extensions().get::<ReceivedAt>().map_or_else(Instant::now, |at| at.0);
        let budget = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        Self { received, budget }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.budget.map(|b| later(self.received, b))
    }
}

/// The farthest ahead [`later`] reaches: 30 years, as tokio's own timers (further can overflow
/// the clock on some platforms).
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + by`, without the panic of `+` when `by` is huge: durations from outside (a client's
/// `grpc-timeout`, an upstream's `Retry-After`, the config) reach at most [`FAR_FUTURE`] ahead.
pub fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by.min(FAR_FUTURE)).unwrap_or(at)
}

/// Parses `<1-8 digits><unit>` where the unit is one of `H M S m u n` (gRPC over HTTP/2 spec).
/// Returns `None` for a malformed value, which then counts as "no deadline" as in other servers.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn the_largest_timeout_makes_a_deadline() {
        // 99999999H is eleven thousand years: still a deadline, 30 years ahead at most.
        let budget = parse_grpc_timeout("99999999H").unwrap();
        assert_eq!(budget, Duration::from_secs(99_999_999 * 3600));
        let call = CallContext { received: Instant::now(), budget: Some(budget) };
        assert_eq!(call.deadline(), Some(call.received + FAR_FUTURE));
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert_eq!(later(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(later(now, Duration::from_secs(u64::MAX)), now + FAR_FUTURE);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "10", "1x", "-1S", "123456789S", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
