//! How long an upstream asks us to wait: the HTTP `Retry-After` header, which every HTTP upstream
//! may send with a 429 or 503, and the other forms adapters read (`retry-after-ms`, Google's
//! `RetryInfo.retryDelay`).
//!
//! The value comes from outside, so it is never trusted to fit: every wait an adapter reports goes
//! through [`clamp_retry_after`], capped at [`MAX_RETRY_AFTER`]. A wait of `u64::MAX` seconds or
//! `1e30` milliseconds would otherwise overflow the first `Instant + Duration` that meets it.

use std::time::{Duration, SystemTime};

/// The longest wait an upstream may ask for, and the longest `RetryInfo.retry_delay` the server
/// sends: one hour. Longer asks are taken as this (a real rate limit resets well within it).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `wait`, at most [`MAX_RETRY_AFTER`].
pub fn clamp_retry_after(wait: Duration) -> Duration {
    wait.min(MAX_RETRY_AFTER)
}

/// A wait given as a number of seconds, possibly fractional: `None` when it is NaN or negative,
/// [`MAX_RETRY_AFTER`] when it is longer (infinity included).
pub fn retry_after_from_secs_f64(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        None
    } else if seconds >= MAX_RETRY_AFTER.as_secs_f64() {
        Some(MAX_RETRY_AFTER)
    } else {
        // In [0, cap) (or -0.0): always a `Duration`, whatever the float; no `from_secs_f64` panic.
        Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO))
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past means "now"), at most
/// [`MAX_RETRY_AFTER`]. Delta-seconds too large for any integer type are the cap too.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(clamp_retry_after(Duration::from_secs(seconds)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(clamp_retry_after(at.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// `retry-after-ms` (milliseconds, possibly fractional), which OpenAI and Anthropic send and their
/// SDKs prefer to `Retry-After`; at most [`MAX_RETRY_AFTER`], `None` for a negative, NaN or
/// unreadable value.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    retry_after_from_secs_f64(ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 09:49:37 GMT", now), Some(Duration::from_secs(3600)));
        // In the past: retry now.
        assert_eq!(parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37 CET", "Sun, 06 Foo 1994 08:49:37 GMT", "1e30"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_capped_however_far_it_points() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for huge in
            ["3601", "18446744073709551615", "99999999999999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"]
        {
            assert_eq!(parse_retry_after(huge, now), Some(MAX_RETRY_AFTER), "{huge:?}");
        }
        assert_eq!(parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Thu, 01 Mar 2001 00:00:00 GMT", UNIX_EPOCH), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_ms_is_read_and_capped() {
        assert_eq!(parse_retry_after_ms(" 1500.5"), Some(Duration::from_micros(1_500_500)));
        assert_eq!(parse_retry_after_ms("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after_ms("3600000"), Some(MAX_RETRY_AFTER));
        for huge in ["3600001", "1e30", "1.8e308", "inf", "+Infinity", "18446744073709551615000"] {
            assert_eq!(parse_retry_after_ms(huge), Some(MAX_RETRY_AFTER), "{huge:?}");
        }
        for bad in ["", "soon", "-1", "-inf", "NaN", "-0.5", "1e30s"] {
            assert_eq!(parse_retry_after_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn seconds_as_floats_never_panic() {
        assert_eq!(retry_after_from_secs_f64(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after_from_secs_f64(-0.0), Some(Duration::ZERO));
        assert_eq!(retry_after_from_secs_f64(f64::MAX), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after_from_secs_f64(f64::INFINITY), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after_from_secs_f64(f64::NAN), None);
        assert_eq!(retry_after_from_secs_f64(f64::NEG_INFINITY), None);
        assert_eq!(retry_after_from_secs_f64(-1e-9), None);
        assert_eq!(clamp_retry_after(Duration::MAX), MAX_RETRY_AFTER);
        assert_eq!(clamp_retry_after(Duration::from_secs(7)), Duration::from_secs(7));
    }
}
