//! Cron expressions: parsing never panics, and an accepted expression's next
//! fire, in any zone and from any instant, is strictly later.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;

const ZONES: [chrono_tz::Tz; 4] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, rest) = data.split_at(5);
    let Ok(expression) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(schedule) = wsync::config::cron_expr::parse(expression) else {
        return;
    };
    // 2000-01-01 plus up to ~136 years, from the first bytes.
    let secs = i64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
    let after = DateTime::<Utc>::from_timestamp(946_684_800 + secs, 0).unwrap();
    let tz = ZONES[usize::from(head[4]) % ZONES.len()];
    if let Some(next) = wsync::scheduler::plan::cron_next(&schedule, tz, after) {
        assert!(next > after, "{expression:?} in {tz}: {next} is not after {after}");
    }
});
