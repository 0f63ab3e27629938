//! `Retry-After` parsing (delay-seconds or HTTP-date): never panics and never
//! asks for more than the cap, whatever the header says.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use wsync::sink::retry::{classify_at, parse_retry_after, Action, Outcome, MAX_RETRY_AFTER};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    if let Some(wait) = parse_retry_after(value, now) {
        assert!(wait <= MAX_RETRY_AFTER, "{value:?} → {wait:?}");
    }
    match classify_at(
        Outcome::Response {
            status: 429,
            retry_after: Some(value),
        },
        now,
    ) {
        Action::RateLimited(wait) => assert!(wait.is_none_or(|w| w <= MAX_RETRY_AFTER)),
        other => panic!("a 429 is a rate limit, not {other:?}"),
    }
});
