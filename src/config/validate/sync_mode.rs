//! `[sync_mode]`: full or incremental, the iterator column and its type, `from`
//! and `lag`.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

pub(super) const ITERATOR_TYPES: &[(&str, IteratorDataType)] = &[
    ("timestamp_tz", IteratorDataType::TimestampTz),
    ("timestamp_ltz", IteratorDataType::TimestampTz),
    ("timestamp", IteratorDataType::TimestampTz),
    ("timestamp_ntz", IteratorDataType::TimestampNtz),
    ("datetime", IteratorDataType::TimestampNtz),
    ("date", IteratorDataType::Date),
    ("timestamp_unixtime_s", IteratorDataType::UnixSeconds),
    ("timestamp_unixtime_ms", IteratorDataType::UnixMillis),
    ("integer", IteratorDataType::Integer),
];

/// `[sync_mode] type`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncKind {
    Full,
    Incremental,
}
pub(super) const SYNC_KINDS: &[(&str, SyncKind)] = &[
    ("full", SyncKind::Full),
    ("incremental", SyncKind::Incremental),
];

pub(super) fn validate_sync_mode(ctx: &mut Ctx<'_>, raw: &RawSyncMode) -> SyncMode {
    let kind = if let Some(k) = &raw.kind {
        ctx.choice("sync_mode.type", k, "sync mode", SYNC_KINDS)
    } else {
        ctx.missing(
            "sync_mode.type",
            "add type = \"full\" or type = \"incremental\"",
        );
        None
    };
    match kind {
        None => SyncMode::Full,
        Some(SyncKind::Full) => {
            let valid = "full sync takes no other keys; incremental sync uses them";
            if raw.iterator_field.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_field",
                    "iterator_field",
                    "full sync",
                    valid,
                );
            }
            if raw.iterator_data_type.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_data_type",
                    "iterator_data_type",
                    "full sync",
                    valid,
                );
            }
            if raw.from.is_some() {
                not_for(ctx, "sync_mode.from", "from", "full sync", valid);
            }
            if raw.lag.is_some() {
                not_for(ctx, "sync_mode.lag", "lag", "full sync", valid);
            }
            if raw.iterator_time_zone.is_some() {
                not_for(
                    ctx,
                    "sync_mode.iterator_time_zone",
                    "iterator_time_zone",
                    "full sync",
                    valid,
                );
            }
            SyncMode::Full
        }
        Some(SyncKind::Incremental) => {
            let iterator_field = match raw.iterator_field.as_deref().map(str::trim) {
                Some(f) if !f.is_empty() => f.to_owned(),
                Some(_) => {
                    ctx.push(
                        "sync_mode.iterator_field",
                        "is empty",
                        "name the column that grows with each change, e.g. \"updated_at\"",
                    );
                    String::new()
                }
                None => {
                    ctx.missing("sync_mode.iterator_field", "add iterator_field = \"updated_at\" (the column that grows with each change)");
                    String::new()
                }
            };
            let data_type = if let Some(t) = &raw.iterator_data_type {
                ctx.choice(
                    "sync_mode.iterator_data_type",
                    t,
                    "iterator data type",
                    ITERATOR_TYPES,
                )
            } else {
                ctx.missing("sync_mode.iterator_data_type", "add iterator_data_type = \"timestamp_tz\" (or timestamp_ntz, date, timestamp_unixtime_s, timestamp_unixtime_ms, integer)");
                None
            };
            let from = raw
                .from
                .as_ref()
                .and_then(|v| scalar_text(ctx, "sync_mode.from", v));
            if let (Some(from), Some(t)) = (&from, data_type) {
                if let Err(hint) = check_from(from, t) {
                    ctx.push(
                        "sync_mode.from",
                        format!("`{from}` is not a valid {} value", t.as_str()),
                        hint,
                    );
                }
            }
            let lag = match raw.lag {
                None => 0,
                Some(n) if (0..=MAX_LAG).contains(&n) => n,
                Some(n) => {
                    ctx.push(
                        "sync_mode.lag",
                        format!("must be between 0 and {MAX_LAG}, not {n}"),
                        "lag is how much to re-read below the watermark: seconds for time \
                         iterators, values for an integer sequence",
                    );
                    0
                }
            };
            let time_zone = match &raw.iterator_time_zone {
                None => chrono_tz::UTC,
                Some(name) => {
                    if !matches!(
                        data_type,
                        Some(IteratorDataType::TimestampNtz | IteratorDataType::Date) | None
                    ) {
                        ctx.push(
                            "sync_mode.iterator_time_zone",
                            "only applies to timestamp_ntz and date iterators",
                            "remove it: the other iterator types carry their own zone or none",
                        );
                    }
                    time_zone(ctx, "sync_mode.iterator_time_zone", name)
                }
            };
            SyncMode::Incremental {
                iterator_field,
                iterator_data_type: data_type.unwrap_or(IteratorDataType::Integer),
                from,
                lag,
                time_zone,
            }
        }
    }
}

/// Whether `from` parses for the iterator type; the error is the hint.
pub(super) fn check_from(from: &str, t: IteratorDataType) -> Result<(), String> {
    let ok = match t {
        IteratorDataType::TimestampTz => DateTime::parse_from_rfc3339(from).is_ok(),
        IteratorDataType::TimestampNtz => ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .any(|f| NaiveDateTime::parse_from_str(from, f).is_ok()),
        IteratorDataType::Date => NaiveDate::parse_from_str(from, "%Y-%m-%d").is_ok(),
        IteratorDataType::UnixSeconds
        | IteratorDataType::UnixMillis
        | IteratorDataType::Integer => from.trim().parse::<i64>().is_ok(),
    };
    if ok {
        return Ok(());
    }
    Err(match t {
        IteratorDataType::TimestampTz => {
            "write an RFC 3339 timestamp with offset, e.g. \"2024-01-01T00:00:00Z\""
        }
        IteratorDataType::TimestampNtz => {
            "write a timestamp without offset, e.g. \"2024-01-01 00:00:00\""
        }
        IteratorDataType::Date => "write a date, e.g. \"2024-01-01\"",
        IteratorDataType::UnixSeconds => "write whole seconds since 1970, e.g. 1704067200",
        IteratorDataType::UnixMillis => "write whole milliseconds since 1970, e.g. 1704067200000",
        IteratorDataType::Integer => "write an integer, e.g. 0",
    }
    .to_owned())
}
