//! The one retry policy: how each answer of the Events API is classified, and
//! how long to back off before trying again.
//!
//! | answer | action |
//! |---|---|
//! | 2xx | [`Action::Success`] |
//! | 429 | [`Action::RateLimited`]: wait `Retry-After` (seconds or HTTP-date) when present; not a failed attempt |
//! | 5xx except 501, 408, timeout, connection refused/reset/closed | [`Action::Retry`]: exponential backoff with full jitter, bounded by attempts and by a total deadline |
//! | 401, 403 | [`Action::Fatal`]: the key or secret is wrong; the run stops |
//! | 404, 405, 501 | [`Action::Fatal`]: the endpoint is wrong; every request would fail alike |
//! | 3xx | [`Action::Fatal`]: redirects are not followed (a redirect to a page answering 200 is no acknowledgement); `base_url` is wrong |
//! | 413 | [`Action::Split`]: resend the request in halves |
//! | 400 | [`Action::Bisect`]: halve until the bad batches are isolated as dead letters |
//! | other 4xx | [`Action::Reject`]: not retried; the request's batches become dead letters |
//!
//! The classification is pure so it can be tested for every status class; the
//! loop that applies it lives in [`crate::sink::delivery`].

use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest `Retry-After` honoured: a server asking for more is treated as asking
/// for this much, so a bad header cannot park the daemon for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Retry limits and backoff shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests sent for one body before giving up, counting the first one;
    /// 429s do not count.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; it doubles per failure.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// Total time allowed for one body, from its first attempt, rate-limit
    /// waits included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 500 ms doubling to at most 30 s, within 10 minutes.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling after `attempt` failures (1-based):
    /// `min(max_backoff, initial_backoff · 2^(attempt − 1))`.
    #[must_use]
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// The wait after `attempt` failures: uniform in `[0, backoff_ceiling]`
    /// ("full jitter"), so senders that failed together do not retry together.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// What one attempt produced, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The server answered.
    Response {
        /// HTTP status.
        status: u16,
        /// The `Retry-After` header, as sent.
        retry_after: Option<&'a str>,
    },
    /// The request timeout elapsed before an answer.
    TimedOut,
    /// No answer: refused, reset, or closed before the response.
    ConnectionFailed,
}

/// Why a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// A 5xx other than 501.
    ServerError(u16),
    /// 408 Request Timeout.
    RequestTimeout,
    /// Our request timeout elapsed.
    TimedOut,
    /// The connection was refused, reset or closed before an answer.
    Connection,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerError(status) => write!(f, "HTTP {status}"),
            Self::RequestTimeout => f.write_str("HTTP 408"),
            Self::TimedOut => f.write_str("request timed out"),
            Self::Connection => f.write_str("connection failed"),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Accepted.
    Success,
    /// Try again after a backoff; counts as a failed attempt.
    Retry(RetryReason),
    /// 429: wait this long (the `Retry-After`) or, without it, a backoff; every
    /// sender to the host waits too. Not a failed attempt.
    RateLimited(Option<Duration>),
    /// 413: resend in halves.
    Split,
    /// 400: halve until the bad batches are isolated.
    Bisect,
    /// The run must stop: credentials (401/403) or endpoint (404/405/501) are wrong.
    Fatal,
    /// Another 4xx: the request's batches are dead letters; not retried.
    Reject,
}

/// Classifies one attempt (see the module table).
#[must_use]
pub fn classify(outcome: Outcome<'_>) -> Action {
    classify_at(outcome, SystemTime::now())
}

/// [`classify`] with the current time given, for an HTTP-date `Retry-After`.
#[must_use]
pub fn classify_at(outcome: Outcome<'_>, now: SystemTime) -> Action {
    let (status, retry_after) = match outcome {
        Outcome::TimedOut => return Action::Retry(RetryReason::TimedOut),
        Outcome::ConnectionFailed => return Action::Retry(RetryReason::Connection),
        Outcome::Response {
            status,
            retry_after,
        } => (status, retry_after),
    };
    match status {
        200..=299 => Action::Success,
        429 => Action::RateLimited(retry_after.and_then(|v| parse_retry_after(v, now))),
        408 => Action::Retry(RetryReason::RequestTimeout),
        401 | 403 | 404 | 405 | 501 => Action::Fatal,
        413 => Action::Split,
        400 => Action::Bisect,
        500..=599 => Action::Retry(RetryReason::ServerError(status)),
        // Redirects are not followed (a redirect to a page answering 200 must not
        // count as acknowledged): the URL is wrong for every request, so stop.
        300..=399 => Action::Fatal,
        // 1xx never reaches here in practice; treat it and other 4xx as a
        // refusal of this request's content.
        _ => Action::Reject,
    }
}

/// Parses `Retry-After`: delay-seconds (a non-negative integer, §3.4) or an
/// HTTP-date, relative to `now`. A date in the past is a zero wait; garbage is
/// `None` (the caller falls back to its backoff). Capped at [`MAX_RETRY_AFTER`].
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is simply "very long".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> Action {
        classify(Outcome::Response {
            status,
            retry_after: None,
        })
    }

    #[test]
    fn every_status_class_is_classified() {
        for s in [200, 201, 202, 204] {
            assert_eq!(status(s), Action::Success, "{s}");
        }
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(status(s), Action::Retry(RetryReason::ServerError(s)), "{s}");
        }
        assert_eq!(status(408), Action::Retry(RetryReason::RequestTimeout));
        assert_eq!(status(429), Action::RateLimited(None));
        for s in [401, 403, 404, 405, 501] {
            assert_eq!(status(s), Action::Fatal, "{s}");
        }
        assert_eq!(status(413), Action::Split);
        assert_eq!(status(400), Action::Bisect);
        for s in [402, 409, 410, 415, 422, 451] {
            assert_eq!(status(s), Action::Reject, "{s}");
        }
        for s in [301, 302, 303, 307, 308] {
            assert_eq!(status(s), Action::Fatal, "redirect {s}");
        }
        assert_eq!(
            classify(Outcome::TimedOut),
            Action::Retry(RetryReason::TimedOut)
        );
        assert_eq!(
            classify(Outcome::ConnectionFailed),
            Action::Retry(RetryReason::Connection)
        );
    }

    #[test]
    fn retry_after_is_honoured_on_429() {
        let action = classify(Outcome::Response {
            status: 429,
            retry_after: Some("7"),
        });
        assert_eq!(action, Action::RateLimited(Some(Duration::from_secs(7))));
        // Retry-After on a 503 does not make it a rate limit.
        let action = classify(Outcome::Response {
            status: 503,
            retry_after: Some("7"),
        });
        assert_eq!(action, Action::Retry(RetryReason::ServerError(503)));
    }

    #[test]
    fn retry_after_parsing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 12 ", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_stays_within_its_growing_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
        };
        let ceilings: Vec<u128> = (1..=7)
            .map(|a| policy.backoff_ceiling(a).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(2));
        for attempt in 1..=12 {
            let ceiling = policy.backoff_ceiling(attempt);
            let samples: Vec<Duration> = (0..200).map(|_| policy.backoff(attempt)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling));
            // Full jitter spreads over the whole range, not around the ceiling.
            assert!(samples.iter().any(|d| *d < ceiling / 2));
            assert!(samples.iter().any(|d| *d > ceiling / 2));
        }
        let mean = |attempt| {
            (0..2000)
                .map(|_| policy.backoff(attempt).as_secs_f64())
                .sum::<f64>()
                / 2000.0
        };
        assert!(mean(1) < mean(3) && mean(3) < mean(5));
    }
}
