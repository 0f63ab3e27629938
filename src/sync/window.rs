//! Incremental windows: `[lower, upper)` on the iterator column.
//!
//! `lower` is the stored watermark (the `upper` of the last successful run) or
//! the pipeline's `sync_mode.from`; `upper` is fixed when the run starts, so rows
//! written while the run is in progress wait for the next run instead of being
//! half-read. Watermarks are stored as text in the forms below and are never
//! rounded.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike, Utc};

use crate::config::model::IteratorDataType;
use crate::source::IteratorValue;

/// Text form of an iterator value (stored watermark, run record window).
pub fn to_text(value: &IteratorValue) -> String {
    match value {
        IteratorValue::TimestampTz(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        IteratorValue::Timestamp(t) => t.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        IteratorValue::Date(d) => d.format("%Y-%m-%d").to_string(),
        IteratorValue::Integer(i) => i.to_string(),
    }
}

/// Parse a stored or configured bound for `data_type`.
pub fn parse(data_type: IteratorDataType, text: &str) -> Option<IteratorValue> {
    let text = text.trim();
    match data_type {
        IteratorDataType::TimestampTz => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| IteratorValue::TimestampTz(t.with_timezone(&Utc))),
        IteratorDataType::TimestampNtz => ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .map(IteratorValue::Timestamp),
        IteratorDataType::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(IteratorValue::Date),
        IteratorDataType::UnixSeconds
        | IteratorDataType::UnixMillis
        | IteratorDataType::Integer => text.parse().ok().map(IteratorValue::Integer),
    }
}

/// The exclusive upper bound for a run starting at `now`, for time-like
/// iterators. Integer sequences have no clock; their bound comes from the data
/// (`MAX + 1` at run start), so this returns `None` for them.
pub fn upper_at(data_type: IteratorDataType, now: DateTime<Utc>) -> Option<IteratorValue> {
    // Databases keep microseconds; a bound finer than that would be stored as
    // text the next run cannot compare exactly. Truncating moves it down, never up.
    let now = now
        .with_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now);
    Some(match data_type {
        IteratorDataType::TimestampTz => IteratorValue::TimestampTz(now),
        IteratorDataType::TimestampNtz => IteratorValue::Timestamp(now.naive_utc()),
        // Today's rows may still change; they belong to tomorrow's window.
        IteratorDataType::Date => IteratorValue::Date(now.date_naive()),
        IteratorDataType::UnixSeconds => IteratorValue::Integer(now.timestamp()),
        IteratorDataType::UnixMillis => IteratorValue::Integer(now.timestamp_millis()),
        IteratorDataType::Integer => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_without_rounding() {
        let cases = [
            (IteratorDataType::TimestampTz, "2024-05-01T12:30:00.123456Z"),
            (IteratorDataType::TimestampTz, "2024-05-01T12:30:00Z"),
            (IteratorDataType::TimestampNtz, "2024-05-01T12:30:00.500"),
            (IteratorDataType::Date, "2024-05-01"),
            (IteratorDataType::UnixMillis, "1714566600123"),
            (IteratorDataType::Integer, "-5"),
        ];
        for (t, text) in cases {
            let v = parse(t, text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(to_text(&v), text);
        }
        assert_eq!(parse(IteratorDataType::Date, "yesterday"), None);
    }

    #[test]
    fn upper_bounds_follow_the_clock() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:30:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            upper_at(IteratorDataType::UnixSeconds, now),
            Some(IteratorValue::Integer(1_714_566_600))
        );
        assert_eq!(
            upper_at(IteratorDataType::UnixMillis, now),
            Some(IteratorValue::Integer(1_714_566_600_250))
        );
        assert_eq!(
            to_text(&upper_at(IteratorDataType::Date, now).unwrap()),
            "2024-05-01"
        );
        assert_eq!(upper_at(IteratorDataType::Integer, now), None);
        let fine = DateTime::parse_from_rfc3339("2024-05-01T12:30:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            to_text(&upper_at(IteratorDataType::TimestampTz, fine).unwrap()),
            "2024-05-01T12:30:00.123456Z"
        );
    }
}
