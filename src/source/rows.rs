//! Row decoding of the row protocols: a PostgreSQL (binary), MySQL/MariaDB or
//! SQLite row into the chunk's Arrow builders, MySQL's text-typed columns, and
//! a row's iterator value (for a window's upper bound). The connection and the read loops are in
//! `reader.rs`; the binary COPY path in `pg_copy.rs`.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::mysql::{MySql, MySqlConnection, MySqlRow};
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, TypeInfo, ValueRef};

use super::chunker::Chunker;
use super::decode::{self, ColBuilder, TextKind};
use super::reader::{bounded, Described};
use super::sql::{self, Dialect};
use super::{ColumnKind, IteratorValue, SourceError, MAX_VALUE_BYTES};
use crate::config::model::IteratorDataType;

/// Decode one PostgreSQL row (binary format) into the chunk's builders; returns
/// the bytes its values took. A value that cannot be decoded rejects the row
/// ([`Chunker::reject_value`]); only a row of the wrong width fails the read.
pub(super) fn decode_pg_row(row: &PgRow, chunker: &mut Chunker) -> Result<usize, SourceError> {
    chunker.check_width(row.len())?;
    let mut row_bytes = 0;
    for i in 0..chunker.builders.len() {
        let result = row
            .try_get_raw(i)
            .map_err(|e| e.to_string())
            .and_then(|raw| {
                if raw.is_null() {
                    return Ok(None);
                }
                if raw.format() != PgValueFormat::Binary {
                    return Err("value arrived in text format".to_owned());
                }
                raw.as_bytes().map(Some).map_err(|e| e.to_string())
            })
            .and_then(|bytes| {
                row_bytes += bytes.map_or(0, <[u8]>::len);
                decode::pg_append(&mut chunker.builders[i], bytes)
            });
        if let Err(m) = result {
            chunker.reject_value(i, &m);
        }
    }
    if chunker.has_size_report() {
        let index = chunker.builders.len();
        if let Some(report) = row
            .try_get_raw(index)
            .ok()
            .filter(|raw| !raw.is_null())
            .and_then(|raw| raw.as_bytes().ok())
        {
            chunker.size_report(report);
        }
    }
    Ok(row_bytes)
}

/// Columns the MySQL protocol reports as binary (`VARBINARY`, `BLOB`, …) are
/// binary strings only when their character set is `binary`: text with a binary
/// collation (`utf8mb4_bin`, `latin1_bin`) carries the same flag, and sqlx does
/// not pass the character set on. One query that reads no row asks the server
/// (`CHARSET()` of each such column over an empty derived table): those that
/// are text become `Text`, and MariaDB's `JSON` (an alias of `LONGTEXT COLLATE
/// utf8mb4_bin`, reported as `LONGBLOB`) becomes `Json`. If the question cannot
/// be asked (a model with two columns of one name), they stay `Bytes`.
pub(super) async fn mysql_text_columns(
    conn: &mut MySqlConnection,
    model_sql: &str,
    described: &mut [Described],
    limit: Duration,
) {
    let binary: Vec<usize> = described
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.2, Ok(ColumnKind::Bytes)))
        .map(|(i, _)| i)
        .collect();
    if binary.is_empty() {
        return;
    }
    let select = binary
        .iter()
        .map(|&i| {
            let col = format!("m.{}", sql::quote_ident(Dialect::MySql, &described[i].0));
            format!("CHARSET({col}), COLLATION({col})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let probe = format!(
        "SELECT {select} FROM (SELECT 1) AS one LEFT JOIN (SELECT * FROM (\n{}\n) AS m0 LIMIT 0) AS m ON TRUE",
        super::guard::strip_trailing_semicolon(model_sql)
    );
    let row = match bounded(limit, sqlx::query(&probe).fetch_one(&mut *conn)).await {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot ask MySQL for the character sets of binary-typed columns; they are read as bytes.");
            return;
        }
    };
    for (n, &i) in binary.iter().enumerate() {
        let charset: Option<String> = row.try_get(2 * n).ok();
        let collation: Option<String> = row.try_get(2 * n + 1).ok();
        let (Some(charset), Some(collation)) = (charset, collation) else {
            continue;
        };
        if charset.eq_ignore_ascii_case("binary") {
            continue;
        }
        let reported = described[i].1.to_ascii_uppercase();
        let (kind, sql_type) = if reported == "LONGBLOB" && collation == "utf8mb4_bin" {
            (ColumnKind::Json, "JSON".to_owned())
        } else {
            let text = match reported.as_str() {
                "BINARY" => "CHAR",
                "VARBINARY" => "VARCHAR",
                "TINYBLOB" => "TINYTEXT",
                "MEDIUMBLOB" => "MEDIUMTEXT",
                "LONGBLOB" => "LONGTEXT",
                _ => "TEXT",
            };
            (ColumnKind::Text, format!("{text} COLLATE {collation}"))
        };
        described[i].1 = sql_type;
        described[i].2 = Ok(kind);
    }
}

/// Why a MySQL zero date rejects its row.
const MYSQL_ZERO_DATE: &str = "a zero date (0000-00-00) cannot be sent: filter it or turn it into NULL in the model, e.g. NULLIF(col, '0000-00-00')";

/// A MySQL binary-protocol `DATE`/`DATETIME`/`TIMESTAMP` (length byte, then
/// year, month, day, and for the last two hour, minute, second, microsecond).
/// Zero dates (`0000-00-00`, and dates with a zero month or day) and invalid
/// dates (`2023-02-30`, which `ALLOW_INVALID_DATES` lets in) are errors naming
/// the value: no timestamp or date can stand for them.
pub(super) fn mysql_datetime(buf: &[u8]) -> Result<NaiveDateTime, String> {
    let len = usize::from(*buf.first().ok_or("empty date value")?);
    let body = buf.get(1..=len).ok_or("truncated date value")?;
    let zero = MYSQL_ZERO_DATE;
    if len == 0 {
        return Err(zero.to_owned());
    }
    if len < 4 {
        return Err(format!("a {len}-byte date value"));
    }
    let year = u16::from_le_bytes([body[0], body[1]]);
    let (month, day) = (body[2], body[3]);
    let (hour, minute, second) = if len >= 7 {
        (body[4], body[5], body[6])
    } else {
        (0, 0, 0)
    };
    let micros = if len >= 11 {
        u32::from_le_bytes([body[7], body[8], body[9], body[10]])
    } else {
        0
    };
    if year == 0 && month == 0 && day == 0 {
        return Err(zero.to_owned());
    }
    let text = format!("{year:04}-{month:02}-{day:02}");
    let date = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .ok_or_else(|| format!("{text} is not a calendar date and cannot be sent: filter it or turn it into NULL in the model"))?;
    let time = NaiveTime::from_hms_micro_opt(
        u32::from(hour),
        u32::from(minute),
        u32::from(second),
        micros,
    )
    .ok_or_else(|| format!("{text} {hour:02}:{minute:02}:{second:02} is not a valid time"))?;
    Ok(date.and_time(time))
}

/// A MySQL `TIME` as microseconds since midnight. `TIME` is also a signed
/// duration up to ±838:59:59, which no time of day can hold: such a value is an
/// error naming it, sign included (never sent with its sign lost).
pub(super) fn mysql_time_of_day(t: &sqlx::mysql::types::MySqlTime) -> Result<i64, String> {
    if !t.is_valid_time_of_day() {
        return Err(format!(
            "TIME {t} is not a time of day (00:00:00 to 23:59:59.999999) and cannot be sent as one: convert it in the model, e.g. TIME_TO_SEC(col) AS col for seconds"
        ));
    }
    Ok(i64::from(t.hours()) * 3_600_000_000
        + i64::from(t.minutes()) * 60_000_000
        + i64::from(t.seconds()) * 1_000_000
        + i64::from(t.microseconds()))
}

/// Decode `T` from a MySQL value without sqlx's type-compatibility check (the
/// probe already decided the kind).
pub(super) fn my<'r, T: Decode<'r, MySql>>(v: sqlx::mysql::MySqlValueRef<'r>) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

/// Decode one MySQL row into the chunk's builders.
pub(super) fn decode_mysql_row(
    row: &MySqlRow,
    unsigned: &[bool],
    chunker: &mut Chunker,
) -> Result<(), SourceError> {
    chunker.check_width(row.len())?;
    for i in 0..chunker.builders.len() {
        let b = &mut chunker.builders[i];
        let result = row.try_get_raw(i).map_err(|e| e.to_string()).and_then(|v| {
            if v.is_null() {
                // sqlx reports MySQL's zero dates as NULL: they are not, and
                // dropping them silently is what this refuses.
                if matches!(b, ColBuilder::Date(_) | ColBuilder::Ts(_)) && my::<&[u8]>(v).is_ok() {
                    return Err(MYSQL_ZERO_DATE.to_owned());
                }
                b.append_null();
                return Ok(());
            }
            match b {
                ColBuilder::Bool(b) => b.append_value(my::<bool>(v)?),
                ColBuilder::Int(b) if unsigned.get(i).copied().unwrap_or(false) => {
                    let u = my::<u64>(v)?;
                    b.append_value(
                        i64::try_from(u)
                            .map_err(|_| format!("{u} does not fit in 64-bit signed"))?,
                    );
                }
                ColBuilder::Int(b) => b.append_value(my::<i64>(v)?),
                ColBuilder::UInt(b) => b.append_value(my::<u64>(v)?),
                ColBuilder::F32(b) => b.append_value(my::<f32>(v)?),
                ColBuilder::F64(b) => b.append_value(my::<f64>(v)?),
                ColBuilder::Str(b, TextKind::Json) => {
                    let text = my::<&str>(v)?;
                    if text.len() > MAX_VALUE_BYTES {
                        return Err(decode::too_large(text.len()));
                    }
                    decode::write_compact_json(text, b)?;
                    b.append_value("");
                }
                // DECIMAL arrives as its exact text in the binary protocol.
                ColBuilder::Str(b, _) => {
                    let text = my::<&str>(v)?;
                    if text.len() > MAX_VALUE_BYTES {
                        return Err(decode::too_large(text.len()));
                    }
                    b.append_value(text);
                }
                ColBuilder::Bytes(b) => {
                    let bytes = my::<&[u8]>(v)?;
                    if bytes.len() > MAX_VALUE_BYTES {
                        return Err(decode::too_large(bytes.len()));
                    }
                    b.append_value(bytes);
                }
                ColBuilder::Date(b) => {
                    b.append_value(decode::days(mysql_datetime(my::<&[u8]>(v)?)?.date())?);
                }
                ColBuilder::Time(b) => {
                    b.append_value(mysql_time_of_day(&my::<sqlx::mysql::types::MySqlTime>(v)?)?);
                }
                // DATETIME and TIMESTAMP (session time zone +00:00) are both UTC wall time.
                ColBuilder::Ts(b) => {
                    b.append_value(decode::micros(mysql_datetime(my::<&[u8]>(v)?)?));
                }
                ColBuilder::List { .. } => return Err("mysql has no array columns".to_owned()),
            }
            Ok(())
        });
        if let Err(m) = result {
            chunker.reject_value(i, &m);
        }
    }
    if chunker.has_size_report() {
        let index = chunker.builders.len();
        if let Some(report) = row
            .try_get_raw(index)
            .ok()
            .filter(|v| !v.is_null())
            .and_then(|v| my::<&[u8]>(v).ok())
        {
            chunker.size_report(report);
        }
    }
    Ok(())
}

/// A SQLite value's storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    Integer,
    Real,
    Text,
    Blob,
}

/// Decode `T` from a SQLite value whose storage class was checked.
pub(super) fn lite<'r, T: Decode<'r, Sqlite>>(
    v: sqlx::sqlite::SqliteValueRef<'r>,
) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

/// Decode one SQLite row, converting each value's storage class to its column's
/// kind (SQLite columns are dynamically typed; SQLite's own conversions would
/// silently turn `'abc'` into `0`, so they are not used).
pub(super) fn decode_sqlite_row(row: &SqliteRow, chunker: &mut Chunker) -> Result<(), SourceError> {
    chunker.check_width(row.len())?;
    for i in 0..chunker.builders.len() {
        let b = &mut chunker.builders[i];
        let result = row.try_get_raw(i).map_err(|e| e.to_string()).and_then(|v| {
            // Checked first: a NULL value reports its column's type, not `NULL`.
            if v.is_null() {
                b.append_null();
                return Ok(());
            }
            let storage = match v.type_info().name() {
                "INTEGER" => Storage::Integer,
                "REAL" => Storage::Real,
                "TEXT" => Storage::Text,
                "BLOB" => Storage::Blob,
                _ => {
                    b.append_null();
                    return Ok(());
                }
            };
            sqlite_append(b, row, i, storage)
        });
        if let Err(m) = result {
            chunker.reject_value(i, &m);
        }
    }
    Ok(())
}

/// Append one non-NULL SQLite value.
pub(super) fn sqlite_append(
    b: &mut ColBuilder,
    row: &SqliteRow,
    i: usize,
    storage: Storage,
) -> Result<(), String> {
    // `SqliteValueRef` is not `Clone`; a fresh one is cheap (no copy of the value).
    let v = || row.try_get_raw(i).map_err(|e| e.to_string());
    let as_int = || -> Result<i64, String> {
        match storage {
            Storage::Integer => lite::<i64>(v()?),
            Storage::Real => {
                let f = lite::<f64>(v()?)?;
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    // Checked integral and in range just above.
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(f as i64)
                } else {
                    Err(format!("{f} is not an integer"))
                }
            }
            Storage::Text => {
                let s = lite::<&str>(v()?)?;
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("text {s:?} is not an integer"))
            }
            Storage::Blob => Err("a blob is not an integer".to_owned()),
        }
    };
    let as_text = || -> Result<String, String> {
        match storage {
            Storage::Integer => Ok(lite::<i64>(v()?)?.to_string()),
            Storage::Real => Ok(lite::<f64>(v()?)?.to_string()),
            Storage::Text => Ok(lite::<&str>(v()?)?.to_owned()),
            Storage::Blob => String::from_utf8(lite::<Vec<u8>>(v()?)?)
                .map_err(|_| "blob is not utf-8 text".to_owned()),
        }
    };
    let as_f64 = || -> Result<f64, String> {
        match storage {
            #[allow(clippy::cast_precision_loss)] // an integer read as a float column
            Storage::Integer => Ok(lite::<i64>(v()?)? as f64),
            Storage::Real => lite::<f64>(v()?),
            Storage::Text => {
                let s = lite::<&str>(v()?)?;
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("text {s:?} is not a number"))
            }
            Storage::Blob => Err("a blob is not a number".to_owned()),
        }
    };
    let as_datetime = || -> Result<NaiveDateTime, String> {
        if storage == Storage::Blob {
            return Err("a blob is not a timestamp".to_owned());
        }
        lite::<DateTime<FixedOffset>>(v()?).map(|t| t.naive_utc())
    };
    match b {
        ColBuilder::Bool(b) => b.append_value(match storage {
            Storage::Text => match as_text()?.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "t" | "yes" => true,
                "0" | "false" | "f" | "no" => false,
                other => return Err(format!("text {other:?} is not a boolean")),
            },
            _ => as_int()? != 0,
        }),
        ColBuilder::Int(b) => b.append_value(as_int()?),
        ColBuilder::UInt(b) => {
            let i = as_int()?;
            b.append_value(u64::try_from(i).map_err(|_| format!("negative value {i}"))?);
        }
        // Float32 is not produced by the SQLite table; kept for completeness.
        #[allow(clippy::cast_possible_truncation)]
        ColBuilder::F32(b) => b.append_value(as_f64()? as f32),
        ColBuilder::F64(b) => b.append_value(as_f64()?),
        ColBuilder::Str(b, TextKind::Json) => {
            let text = as_text()?;
            b.append_value(decode::compact_json(&text)?);
        }
        ColBuilder::Str(b, _) => b.append_value(as_text()?),
        ColBuilder::Bytes(b) => match storage {
            Storage::Blob => b.append_value(lite::<&[u8]>(v()?)?),
            _ => b.append_value(as_text()?.as_bytes()),
        },
        ColBuilder::Date(b) => {
            let date = match storage {
                Storage::Text => {
                    match NaiveDate::parse_from_str(lite::<&str>(v()?)?.trim(), "%Y-%m-%d") {
                        Ok(d) => d,
                        Err(_) => as_datetime()?.date(),
                    }
                }
                _ => as_datetime()?.date(),
            };
            b.append_value(decode::days(date)?);
        }
        ColBuilder::Time(b) => b.append_value(decode::time_micros(lite::<NaiveTime>(v()?)?)),
        ColBuilder::Ts(b) => b.append_value(decode::micros(as_datetime()?)),
        ColBuilder::List { .. } => return Err("sqlite has no array columns".to_owned()),
    }
    Ok(())
}

/// Read the `MAX` row of [`Warehouse::max_iterator`] on PostgreSQL.
pub(super) fn pg_iterator(
    row: &PgRow,
    data_type: IteratorDataType,
) -> Result<Option<IteratorValue>, String> {
    let r = match data_type {
        IteratorDataType::TimestampTz => row
            .try_get_unchecked::<Option<DateTime<Utc>>, _>(0)
            .map(|v| v.map(IteratorValue::TimestampTz)),
        IteratorDataType::TimestampNtz => row
            .try_get_unchecked::<Option<NaiveDateTime>, _>(0)
            .map(|v| v.map(IteratorValue::Timestamp)),
        IteratorDataType::Date => row
            .try_get_unchecked::<Option<NaiveDate>, _>(0)
            .map(|v| v.map(IteratorValue::Date)),
        _ => row
            .try_get_unchecked::<Option<i64>, _>(0)
            .map(|v| v.map(IteratorValue::Integer)),
    };
    r.map_err(|e| e.to_string())
}

/// Read the `MAX` row of [`Warehouse::max_iterator`] on MySQL.
pub(super) fn mysql_iterator(
    row: &MySqlRow,
    data_type: IteratorDataType,
) -> Result<Option<IteratorValue>, String> {
    let r = match data_type {
        IteratorDataType::TimestampTz => row
            .try_get_unchecked::<Option<NaiveDateTime>, _>(0)
            .map(|v| v.map(|t| IteratorValue::TimestampTz(t.and_utc()))),
        IteratorDataType::TimestampNtz => row
            .try_get_unchecked::<Option<NaiveDateTime>, _>(0)
            .map(|v| v.map(IteratorValue::Timestamp)),
        IteratorDataType::Date => row
            .try_get_unchecked::<Option<NaiveDate>, _>(0)
            .map(|v| v.map(IteratorValue::Date)),
        _ => row
            .try_get_unchecked::<Option<i64>, _>(0)
            .map(|v| v.map(IteratorValue::Integer)),
    };
    r.map_err(|e| e.to_string())
}

/// Read the `MAX` row of [`Warehouse::max_iterator`] on SQLite (timestamps and
/// dates come back in the normalised text form).
pub(super) fn sqlite_iterator(
    row: &SqliteRow,
    data_type: IteratorDataType,
) -> Result<Option<IteratorValue>, String> {
    let text = || {
        row.try_get::<Option<String>, _>(0)
            .map_err(|e| e.to_string())
    };
    Ok(match data_type {
        IteratorDataType::TimestampTz | IteratorDataType::TimestampNtz => match text()? {
            None => None,
            Some(s) => {
                let t = NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
                    .map_err(|e| format!("{s:?}: {e}"))?;
                Some(if data_type == IteratorDataType::TimestampTz {
                    IteratorValue::TimestampTz(t.and_utc())
                } else {
                    IteratorValue::Timestamp(t)
                })
            }
        },
        IteratorDataType::Date => match text()? {
            None => None,
            Some(s) => Some(IteratorValue::Date(
                NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| format!("{s:?}: {e}"))?,
            )),
        },
        _ => row
            .try_get_unchecked::<Option<i64>, _>(0)
            .map_err(|e| e.to_string())?
            .map(IteratorValue::Integer),
    })
}
