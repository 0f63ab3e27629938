//! Incremental windows: `[lower, upper)` on the iterator column.
//!
//! `lower` is the checkpoint of an unfinished previous run, else the stored
//! watermark (the `upper` of the last successful run) less the pipeline's
//! `lag`, else `sync_mode.from`; `upper` is fixed when the run starts (the end
//! of its schedule interval, or now), so rows written while the run is in
//! progress wait for the next run instead of being half-read. Watermarks and
//! checkpoints are stored as text in the forms below and are never rounded up.

use arrow::array::{
    Array, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;

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

/// The iterator value of the instant `at`, as an exclusive upper bound, for
/// time-like iterators; `timestamp_ntz` and `date` values are wall-clock values
/// in `zone`. Integer sequences have no clock; their bound comes from the data
/// (`MAX + 1` at run start), so this returns `None` for them.
pub fn upper_at(data_type: IteratorDataType, zone: Tz, at: DateTime<Utc>) -> Option<IteratorValue> {
    // Databases keep microseconds; a bound finer than that would be stored as
    // text the next run cannot compare exactly. Truncating moves it down, never up.
    let at = at
        .with_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at);
    Some(match data_type {
        IteratorDataType::TimestampTz => IteratorValue::TimestampTz(at),
        IteratorDataType::TimestampNtz => {
            IteratorValue::Timestamp(at.with_timezone(&zone).naive_local())
        }
        // Today's rows may still change; they belong to tomorrow's window.
        IteratorDataType::Date => IteratorValue::Date(at.with_timezone(&zone).date_naive()),
        IteratorDataType::UnixSeconds => IteratorValue::Integer(at.timestamp()),
        IteratorDataType::UnixMillis => IteratorValue::Integer(at.timestamp_millis()),
        IteratorDataType::Integer => return None,
    })
}

/// Seconds from `from` to `to` for time-like iterators (how far a watermark
/// lags behind now); `None` for an integer sequence.
pub fn seconds_between(
    data_type: IteratorDataType,
    from: IteratorValue,
    to: IteratorValue,
) -> Option<i64> {
    Some(match (data_type, from, to) {
        (_, IteratorValue::TimestampTz(a), IteratorValue::TimestampTz(b)) => (b - a).num_seconds(),
        (_, IteratorValue::Timestamp(a), IteratorValue::Timestamp(b)) => (b - a).num_seconds(),
        (_, IteratorValue::Date(a), IteratorValue::Date(b)) => (b - a).num_seconds(),
        (IteratorDataType::UnixSeconds, IteratorValue::Integer(a), IteratorValue::Integer(b)) => {
            b - a
        }
        (IteratorDataType::UnixMillis, IteratorValue::Integer(a), IteratorValue::Integer(b)) => {
            (b - a) / 1_000
        }
        _ => return None,
    })
}

/// `value` moved down by `lag`: seconds for time-like iterators (whole days,
/// rounded up, for dates), values for an integer sequence.
pub fn minus_lag(data_type: IteratorDataType, value: IteratorValue, lag: i64) -> IteratorValue {
    if lag <= 0 {
        return value;
    }
    let secs = Duration::seconds(lag);
    match (data_type, value) {
        (_, IteratorValue::TimestampTz(t)) => IteratorValue::TimestampTz(t - secs),
        (_, IteratorValue::Timestamp(t)) => IteratorValue::Timestamp(t - secs),
        (_, IteratorValue::Date(d)) => {
            IteratorValue::Date(d - Duration::days((lag + 86_399) / 86_400))
        }
        (IteratorDataType::UnixMillis, IteratorValue::Integer(i)) => {
            IteratorValue::Integer(i.saturating_sub(lag.saturating_mul(1_000)))
        }
        (_, IteratorValue::Integer(i)) => IteratorValue::Integer(i.saturating_sub(lag)),
    }
}

/// A bound the user typed (`wsync backfill --from/--until`): the iterator type's
/// own form, or for time-like iterators also an RFC 3339 instant (converted as
/// [`upper_at`] does).
pub fn parse_bound(data_type: IteratorDataType, zone: Tz, text: &str) -> Option<IteratorValue> {
    parse(data_type, text).or_else(|| {
        let at = DateTime::parse_from_rfc3339(text.trim()).ok()?;
        upper_at(data_type, zone, at.with_timezone(&Utc))
    })
}

/// The iterator value of `row` in `chunk` (column `column`, matched without
/// regard to case as the mapping does). `None` for a NULL or a column type that
/// does not carry the iterator.
pub fn value_in(
    chunk: &RecordBatch,
    column: &str,
    row: usize,
    data_type: IteratorDataType,
) -> Option<IteratorValue> {
    let schema = chunk.schema();
    let index = schema
        .fields()
        .iter()
        .position(|f| f.name().eq_ignore_ascii_case(column))?;
    let array = chunk.column(index);
    if row >= array.len() || array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = any.downcast_ref::<TimestampMicrosecondArray>()?.value(row);
            let t = DateTime::from_timestamp_micros(micros)?;
            Some(match (data_type, zone) {
                (IteratorDataType::TimestampTz, _) | (_, Some(_)) => IteratorValue::TimestampTz(t),
                _ => IteratorValue::Timestamp(t.naive_utc()),
            })
        }
        DataType::Date32 => {
            let days = any.downcast_ref::<Date32Array>()?.value(row);
            NaiveDate::from_num_days_from_ce_opt(days + 719_163).map(IteratorValue::Date)
        }
        DataType::Int64 => Some(IteratorValue::Integer(
            any.downcast_ref::<Int64Array>()?.value(row),
        )),
        DataType::Int32 => Some(IteratorValue::Integer(i64::from(
            any.downcast_ref::<Int32Array>()?.value(row),
        ))),
        DataType::UInt64 => i64::try_from(any.downcast_ref::<UInt64Array>()?.value(row))
            .ok()
            .map(IteratorValue::Integer),
        // SQLite keeps dates and times as text.
        DataType::Utf8 => parse(data_type, any.downcast_ref::<StringArray>()?.value(row)),
        _ => None,
    }
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
            upper_at(IteratorDataType::UnixSeconds, chrono_tz::UTC, now),
            Some(IteratorValue::Integer(1_714_566_600))
        );
        assert_eq!(
            upper_at(IteratorDataType::UnixMillis, chrono_tz::UTC, now),
            Some(IteratorValue::Integer(1_714_566_600_250))
        );
        assert_eq!(
            to_text(&upper_at(IteratorDataType::Date, chrono_tz::UTC, now).unwrap()),
            "2024-05-01"
        );
        assert_eq!(
            upper_at(IteratorDataType::Integer, chrono_tz::UTC, now),
            None
        );
        let fine = DateTime::parse_from_rfc3339("2024-05-01T12:30:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            to_text(&upper_at(IteratorDataType::TimestampTz, chrono_tz::UTC, fine).unwrap()),
            "2024-05-01T12:30:00.123456Z"
        );
    }

    #[test]
    fn wall_clock_iterators_are_read_in_their_zone() {
        // 22:30 UTC on 31 Oct is 23:30 in Berlin (CET) and 18:30 in New York (EDT).
        let at = DateTime::parse_from_rfc3339("2026-10-31T22:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(
            to_text(&upper_at(IteratorDataType::TimestampNtz, berlin, at).unwrap()),
            "2026-10-31T23:30:00"
        );
        assert_eq!(
            to_text(&upper_at(IteratorDataType::Date, chrono_tz::Asia::Tokyo, at).unwrap()),
            "2026-11-01"
        );
        assert_eq!(
            to_text(
                &parse_bound(
                    IteratorDataType::TimestampNtz,
                    chrono_tz::America::New_York,
                    "2026-10-31T22:30:00Z"
                )
                .unwrap()
            ),
            "2026-10-31T18:30:00"
        );
        assert_eq!(
            to_text(
                &parse_bound(
                    IteratorDataType::TimestampNtz,
                    berlin,
                    "2026-10-31 08:00:00"
                )
                .unwrap()
            ),
            "2026-10-31T08:00:00",
            "the type's own form is taken as written"
        );
    }

    #[test]
    fn lag_moves_bounds_down_in_the_iterator_unit() {
        let v = |t, text| parse(t, text).unwrap();
        let lagged = |t, text, lag| to_text(&minus_lag(t, v(t, text), lag));
        assert_eq!(
            lagged(IteratorDataType::TimestampTz, "2024-05-01T12:00:00Z", 90),
            "2024-05-01T11:58:30Z"
        );
        assert_eq!(lagged(IteratorDataType::UnixMillis, "10000", 2), "8000");
        assert_eq!(lagged(IteratorDataType::UnixSeconds, "10000", 2), "9998");
        assert_eq!(lagged(IteratorDataType::Integer, "100", 5), "95");
        assert_eq!(
            lagged(IteratorDataType::Date, "2024-05-10", 3600),
            "2024-05-09"
        );
        assert_eq!(
            lagged(IteratorDataType::Date, "2024-05-10", 0),
            "2024-05-10"
        );
    }

    #[test]
    fn checkpoint_values_come_from_the_chunk() {
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "Updated_At",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("seq", DataType::Int64, true),
            Field::new("day", DataType::Utf8, true),
        ]));
        let chunk = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(1_714_566_600_000_001),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![Some(7), Some(9)])),
                Arc::new(StringArray::from(vec![Some("2024-05-01"), None])),
            ],
        )
        .unwrap();
        let ntz = value_in(&chunk, "updated_at", 0, IteratorDataType::TimestampNtz).unwrap();
        assert_eq!(to_text(&ntz), "2024-05-01T12:30:00.000001");
        assert_eq!(
            value_in(&chunk, "updated_at", 1, IteratorDataType::TimestampNtz),
            None
        );
        assert_eq!(
            value_in(&chunk, "seq", 1, IteratorDataType::Integer),
            Some(IteratorValue::Integer(9))
        );
        assert_eq!(
            value_in(&chunk, "day", 0, IteratorDataType::Date),
            Some(IteratorValue::Date(
                NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()
            ))
        );
        assert_eq!(value_in(&chunk, "missing", 0, IteratorDataType::Date), None);
    }
}
