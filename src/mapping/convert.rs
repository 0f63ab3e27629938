//! Value conversion: one Arrow cell → what mParticle receives.
//!
//! The rules (also in the README's "Conversion rules" table):
//!
//! | source | JSON sent |
//! |---|---|
//! | boolean | `true` / `false` |
//! | integer with \|v\| ≤ 2^53 | number |
//! | integer beyond ±2^53 | string of its decimal digits (a double would round it) |
//! | float, finite | number (shortest text that reads back as the same value) |
//! | float NaN / ±Infinity | attribute dropped, counted as `non_finite_number` |
//! | decimal that survives a round trip through a double | number |
//! | other decimal | string holding the exact decimal text |
//! | decimal NaN / ±Infinity | attribute dropped, counted as `non_finite_number` |
//! | text, uuid | string |
//! | json / jsonb | string holding compact JSON text (digits, key order and escapes as stored) |
//! | bytes | string, standard base64 |
//! | date | string `YYYY-MM-DD` |
//! | time | string `HH:MM:SS[.ffffff]` |
//! | timestamp with time zone | string, ISO-8601 in UTC: `2024-05-01T12:30:00Z`, fraction only when non-zero |
//! | timestamp without time zone | the same, the value read as UTC |
//! | array | list attribute: a JSON array of strings, each element converted as above and
//! |       | written as text; NULL and non-finite elements are left out (counted) |

use std::borrow::Cow;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array,
    Int64Array, ListArray, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    UInt64Array,
};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat};

use crate::source::ColumnKind;

/// Largest integer magnitude a double holds exactly (2^53).
pub const MAX_SAFE_INTEGER: i64 = 1 << 53;

/// A converted scalar or list, ready to be written as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// JSON boolean.
    Bool(bool),
    /// JSON number (always an integer within ±2^53).
    Int(i64),
    /// JSON number (finite).
    Float(f64),
    /// JSON string.
    Str(Cow<'a, str>),
    /// JSON array of strings.
    List(Vec<String>),
}

impl Value<'_> {
    /// Text form, used for identities, list elements and the rejected-rows file.
    pub fn to_text(&self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => format_f64(*f),
            Self::Str(s) => s.to_string(),
            Self::List(items) => items.join(","),
        }
    }
}

/// Why a cell produced no value although it was not NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrepresentable {
    /// NaN or ±Infinity: JSON has no such number.
    NonFinite,
}

/// The outcome of converting one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// A value to send.
    Value(Value<'a>),
    /// A value that cannot be sent (counted by the caller).
    Unrepresentable(Unrepresentable),
}

/// A typed view of one Arrow column, chosen once per record batch so the per-row
/// loop is a plain `match` rather than a downcast.
pub enum ColumnReader<'a> {
    /// Boolean column.
    Bool(&'a BooleanArray),
    /// Signed integers.
    Int(&'a Int64Array),
    /// Unsigned 64-bit integers.
    UInt(&'a UInt64Array),
    /// 32-bit floats.
    Float32(&'a Float32Array),
    /// 64-bit floats.
    Float64(&'a Float64Array),
    /// Exact decimals as text.
    Decimal(&'a StringArray),
    /// Text, uuid, json.
    Text(&'a StringArray),
    /// Bytes.
    Bytes(&'a BinaryArray),
    /// Days since epoch.
    Date(&'a Date32Array),
    /// Microseconds since midnight.
    Time(&'a Time64MicrosecondArray),
    /// Microseconds since epoch (UTC, or naive read as UTC).
    Timestamp(&'a TimestampMicrosecondArray),
    /// A list column and a reader over its flattened values.
    List(&'a ListArray, Box<ColumnReader<'a>>),
}

/// The Arrow array did not have the type its [`ColumnKind`] promises: a bug in
/// the source, not bad data.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: expected an Arrow array for {kind}, got {actual}")]
pub struct ReaderTypeError {
    /// Column name.
    pub column: String,
    /// Expected kind.
    pub kind: String,
    /// The Arrow type found.
    pub actual: String,
}

impl<'a> ColumnReader<'a> {
    /// Build the reader for `array`, which must have the Arrow type of `kind`.
    pub fn new(
        column: &str,
        kind: &ColumnKind,
        array: &'a ArrayRef,
    ) -> Result<Self, ReaderTypeError> {
        Self::from_dyn(column, kind, array.as_ref())
    }

    fn from_dyn(
        column: &str,
        kind: &ColumnKind,
        array: &'a dyn Array,
    ) -> Result<Self, ReaderTypeError> {
        let any = array.as_any();
        let mismatch = || ReaderTypeError {
            column: column.to_owned(),
            kind: kind.name(),
            actual: array.data_type().to_string(),
        };
        Ok(match kind {
            ColumnKind::Bool => Self::Bool(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Int => Self::Int(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::UInt => Self::UInt(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Float32 => Self::Float32(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Float64 => Self::Float64(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Decimal => Self::Decimal(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Text | ColumnKind::Uuid | ColumnKind::Json => {
                Self::Text(any.downcast_ref().ok_or_else(mismatch)?)
            }
            ColumnKind::Bytes => Self::Bytes(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Date => Self::Date(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Time => Self::Time(any.downcast_ref().ok_or_else(mismatch)?),
            ColumnKind::Timestamp | ColumnKind::TimestampTz => {
                Self::Timestamp(any.downcast_ref().ok_or_else(mismatch)?)
            }
            ColumnKind::List(inner) => {
                let list: &ListArray = any.downcast_ref().ok_or_else(mismatch)?;
                let values = Self::from_dyn(column, inner, list.values().as_ref())?;
                Self::List(list, Box::new(values))
            }
        })
    }

    /// Convert row `row`.
    pub fn cell(&self, row: usize) -> Cell<'a> {
        match self {
            Self::List(list, values) => {
                if list.is_null(row) {
                    return Cell::Null;
                }
                let offsets = list.value_offsets();
                let (start, end) = (offsets[row], offsets[row + 1]);
                let mut items = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
                for i in start..end {
                    // Offsets are non-negative by Arrow's invariants.
                    let index = usize::try_from(i).unwrap_or(usize::MAX);
                    if let Cell::Value(v) = values.scalar(index) {
                        items.push(v.to_text());
                    }
                }
                Cell::Value(Value::List(items))
            }
            _ => self.scalar(row),
        }
    }

    /// Number of NULL or non-finite elements left out of the list at `row` (0 for scalars).
    pub fn list_elements_left_out(&self, row: usize) -> usize {
        let Self::List(list, values) = self else {
            return 0;
        };
        if list.is_null(row) {
            return 0;
        }
        let offsets = list.value_offsets();
        (offsets[row]..offsets[row + 1])
            .filter(|i| {
                !matches!(
                    values.scalar(usize::try_from(*i).unwrap_or(usize::MAX)),
                    Cell::Value(_)
                )
            })
            .count()
    }

    fn scalar(&self, row: usize) -> Cell<'a> {
        macro_rules! get {
            ($array:expr) => {{
                if $array.is_null(row) {
                    return Cell::Null;
                }
                $array.value(row)
            }};
        }
        let value = match self {
            Self::Bool(a) => Value::Bool(get!(a)),
            Self::Int(a) => int_value(get!(a)),
            Self::UInt(a) => {
                let v = get!(a);
                match i64::try_from(v) {
                    Ok(i) if i <= MAX_SAFE_INTEGER => Value::Int(i),
                    _ => Value::Str(Cow::Owned(v.to_string())),
                }
            }
            Self::Float32(a) => {
                let v = get!(a);
                if !v.is_finite() {
                    return Cell::Unrepresentable(Unrepresentable::NonFinite);
                }
                // Widen through the shortest decimal text so 1.1f32 is sent as 1.1,
                // not 1.100000023841858.
                Value::Float(v.to_string().parse().unwrap_or(f64::from(v)))
            }
            Self::Float64(a) => {
                let v = get!(a);
                if !v.is_finite() {
                    return Cell::Unrepresentable(Unrepresentable::NonFinite);
                }
                Value::Float(v)
            }
            Self::Decimal(a) => match decimal_value(get!(a)) {
                Some(v) => v,
                None => return Cell::Unrepresentable(Unrepresentable::NonFinite),
            },
            Self::Text(a) => Value::Str(Cow::Borrowed(get!(a))),
            Self::Bytes(a) => Value::Str(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(get!(a)),
            )),
            Self::Date(a) => Value::Str(Cow::Owned(format_date(get!(a)))),
            Self::Time(a) => Value::Str(Cow::Owned(format_time(get!(a)))),
            Self::Timestamp(a) => Value::Str(Cow::Owned(format_timestamp_micros(get!(a)))),
            Self::List(..) => return self.cell(row),
        };
        Cell::Value(value)
    }
}

/// An integer as a number when a double holds it exactly, else as a string.
pub fn int_value(v: i64) -> Value<'static> {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
        Value::Int(v)
    } else {
        Value::Str(Cow::Owned(v.to_string()))
    }
}

/// An exact decimal text as a number when reading it into a double and writing
/// that double back gives the same decimal value; otherwise the exact text as a
/// string. `None` for NaN and ±Infinity.
pub fn decimal_value(text: &str) -> Option<Value<'_>> {
    let trimmed = text.trim();
    let has = |word: &[u8]| {
        trimmed
            .as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    if has(b"nan") || has(b"inf") {
        return None;
    }
    match trimmed.parse::<f64>() {
        Ok(f) if f.is_finite() && round_trips(f, trimmed) => Some(Value::Float(f)),
        _ => Some(Value::Str(Cow::Borrowed(trimmed))),
    }
}

/// Whether the shortest text of `f` ([`format_f64`]) is the same decimal as
/// `text`, formatted on the stack: it runs for every decimal cell.
fn round_trips(f: f64, text: &str) -> bool {
    use std::io::Write as _;
    // A finite double's plain text is at most 1 sign + 309 integer digits, or
    // "0." + 323 zeros + 17 digits: 400 bytes are enough; `false` if not.
    let mut buf = [0u8; 400];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{f}").is_err() {
        return false;
    }
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    let shortest = std::str::from_utf8(&buf[..len]).unwrap_or("");
    // `format_f64` writes -0 as 0; `same_decimal` already treats them alike.
    same_decimal(shortest, text)
}

/// Do two plain decimal texts denote the same number? (Sign, leading zeros of
/// the integer part and trailing zeros of the fraction do not matter.)
fn same_decimal(a: &str, b: &str) -> bool {
    fn normal(s: &str) -> Option<(bool, &str, &str)> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if digits.contains(['e', 'E']) {
            return None;
        }
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let zero = int.is_empty() && frac.is_empty();
        Some((negative && !zero, int, frac))
    }
    matches!((normal(a), normal(b)), (Some(x), Some(y)) if x == y)
}

/// Shortest round-trip text of a finite double, never in exponent form.
pub fn format_f64(f: f64) -> String {
    // Rust's Display for f64 is the shortest round-trip representation and never
    // uses an exponent, which is what `same_decimal` compares against.
    let s = f.to_string();
    if s == "-0" {
        "0".to_owned()
    } else {
        s
    }
}

/// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// `out` += `value` as exactly `width` ASCII digits (`value` < 10^width).
fn push_digits(out: &mut String, value: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(
            b'0' + u8::try_from(value / div % 10).unwrap_or(0),
        ));
        div /= 10;
    }
}

/// `YYYY-MM-DD` of a date in years 0–9999 (chrono's `%Y-%m-%d` there), written
/// digit by digit: chrono's formatter parses its format string on every call,
/// and dates and timestamps are in most rows. `None` outside those years.
fn push_ymd(out: &mut String, date: NaiveDate) -> Option<()> {
    use chrono::Datelike as _;
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    push_digits(out, year, 4);
    out.push('-');
    push_digits(out, date.month(), 2);
    out.push('-');
    push_digits(out, date.day(), 2);
    Some(())
}

/// `YYYY-MM-DD` for days since the Unix epoch.
pub fn format_date(days: i32) -> String {
    let date = days
        .checked_add(UNIX_EPOCH_DAYS_FROM_CE)
        .and_then(NaiveDate::from_num_days_from_ce_opt);
    if let Some(date) = date {
        let mut out = String::with_capacity(10);
        if push_ymd(&mut out, date).is_some() {
            return out;
        }
    }
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(i64::from(days))))
        .map_or_else(
            || format!("invalid date ({days} days)"),
            |d| d.format("%Y-%m-%d").to_string(),
        )
}

/// `HH:MM:SS[.ffffff]` for microseconds since midnight.
pub fn format_time(micros: i64) -> String {
    let secs = u32::try_from(micros.div_euclid(1_000_000)).unwrap_or(0);
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    match NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos) {
        Some(t) if nanos == 0 => t.format("%H:%M:%S").to_string(),
        Some(t) => t.format("%H:%M:%S%.6f").to_string(),
        None => format!("invalid time ({micros} µs)"),
    }
}

/// ISO-8601 UTC (`…Z`) for microseconds since the Unix epoch; the fraction is
/// written only when non-zero, with as many digits as needed (3 or 6).
pub fn format_timestamp_micros(micros: i64) -> String {
    // Years 0–9999 digit by digit; chrono for the rest (same text).
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, second_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let date = i32::try_from(days)
        .ok()
        .and_then(|d| d.checked_add(UNIX_EPOCH_DAYS_FROM_CE))
        .and_then(NaiveDate::from_num_days_from_ce_opt);
    if let Some(date) = date {
        let mut out = String::with_capacity(27);
        if push_ymd(&mut out, date).is_some() {
            let sod = u32::try_from(second_of_day).unwrap_or(0);
            let frac = u32::try_from(frac).unwrap_or(0);
            out.push('T');
            push_digits(&mut out, sod / 3600, 2);
            out.push(':');
            push_digits(&mut out, sod / 60 % 60, 2);
            out.push(':');
            push_digits(&mut out, sod % 60, 2);
            // `SecondsFormat::AutoSi`: no fraction, milliseconds or microseconds.
            if frac != 0 && frac % 1000 == 0 {
                out.push('.');
                push_digits(&mut out, frac / 1000, 3);
            } else if frac != 0 {
                out.push('.');
                push_digits(&mut out, frac, 6);
            }
            out.push('Z');
            return out;
        }
    }
    DateTime::from_timestamp_micros(micros).map_or_else(
        || format!("invalid timestamp ({micros} µs)"),
        |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ListBuilder, StringBuilder};

    use super::*;

    fn text(v: &Value<'_>) -> String {
        format!("{v:?}")
    }

    #[test]
    fn integers_beyond_2_pow_53_become_strings() {
        assert_eq!(
            int_value(9_007_199_254_740_992),
            Value::Int(9_007_199_254_740_992)
        );
        assert_eq!(
            int_value(-9_007_199_254_740_992),
            Value::Int(-9_007_199_254_740_992)
        );
        assert_eq!(
            int_value(9_007_199_254_740_993),
            Value::Str(Cow::Owned("9007199254740993".into()))
        );
        assert_eq!(
            int_value(i64::MIN),
            Value::Str(Cow::Owned(i64::MIN.to_string()))
        );
    }

    #[test]
    fn decimals_are_numbers_only_when_exact() {
        assert_eq!(decimal_value("12.50"), Some(Value::Float(12.5)));
        assert_eq!(decimal_value("-0.000"), Some(Value::Float(0.0)));
        assert_eq!(decimal_value("342.1"), Some(Value::Float(342.1)));
        assert_eq!(
            decimal_value("12345678901234567890.123456789"),
            Some(Value::Str(Cow::Borrowed("12345678901234567890.123456789")))
        );
        assert_eq!(
            decimal_value("0.10000000000000000001"),
            Some(Value::Str(Cow::Borrowed("0.10000000000000000001")))
        );
        assert_eq!(decimal_value("NaN"), None);
        assert_eq!(decimal_value("-Infinity"), None);
    }

    #[test]
    fn floats_drop_non_finite_and_widen_f32_cleanly() {
        let a: ArrayRef = Arc::new(Float32Array::from(vec![Some(1.1f32), Some(f32::NAN), None]));
        let r = ColumnReader::new("f", &ColumnKind::Float32, &a).unwrap();
        assert_eq!(r.cell(0), Cell::Value(Value::Float(1.1)));
        assert_eq!(r.cell(1), Cell::Unrepresentable(Unrepresentable::NonFinite));
        assert_eq!(r.cell(2), Cell::Null);
        let b: ArrayRef = Arc::new(Float64Array::from(vec![
            f64::INFINITY,
            f64::NEG_INFINITY,
            2.5,
        ]));
        let r = ColumnReader::new("g", &ColumnKind::Float64, &b).unwrap();
        assert_eq!(r.cell(0), Cell::Unrepresentable(Unrepresentable::NonFinite));
        assert_eq!(r.cell(1), Cell::Unrepresentable(Unrepresentable::NonFinite));
        assert_eq!(r.cell(2), Cell::Value(Value::Float(2.5)));
    }

    #[test]
    fn temporal_formats() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(19_844), "2024-05-01");
        assert_eq!(format_time(45_296_000_000), "12:34:56");
        assert_eq!(format_time(45_296_000_001), "12:34:56.000001");
        assert_eq!(
            format_timestamp_micros(1_714_566_600_000_000),
            "2024-05-01T12:30:00Z"
        );
        assert_eq!(
            format_timestamp_micros(1_714_566_600_123_000),
            "2024-05-01T12:30:00.123Z"
        );
        assert_eq!(
            format_timestamp_micros(1_714_566_600_123_456),
            "2024-05-01T12:30:00.123456Z"
        );
        assert_eq!(format_timestamp_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn fast_temporal_formats_match_chrono() {
        let chrono_ts = |m: i64| {
            DateTime::from_timestamp_micros(m)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .unwrap()
        };
        let chrono_date = |d: i32| {
            NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(d))))
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap()
        };
        let mut micros = vec![
            0,
            -1,
            1,
            999,
            1000,
            -1000,
            86_399_999_999,
            -86_400_000_000,
            253_402_300_799_999_999,  // 9999-12-31T23:59:59.999999
            253_402_300_800_000_000,  // 10000-01-01: chrono's own text
            -62_167_219_200_000_000,  // 0000-01-01
            -62_167_219_200_000_001,  // just before year 0
            -210_866_803_200_000_000, // 4713 BC
            i64::MAX / 2,
        ];
        // A spread of instants across the years 0–9999 and their fractions.
        let mut x: i64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            micros.push(x.rem_euclid(316_000_000_000_000_000) - 62_167_219_200_000_000);
        }
        for m in micros {
            assert_eq!(format_timestamp_micros(m), chrono_ts(m), "{m}");
            let days = i32::try_from(m.div_euclid(86_400_000_000)).unwrap();
            assert_eq!(format_date(days), chrono_date(days), "{days}");
        }
    }

    #[test]
    fn bytes_are_base64() {
        let a: ArrayRef = Arc::new(BinaryArray::from_vec(vec![b"\x00\xffhi"]));
        let r = ColumnReader::new("b", &ColumnKind::Bytes, &a).unwrap();
        assert_eq!(
            text(&match r.cell(0) {
                Cell::Value(v) => v,
                c => panic!("{c:?}"),
            }),
            "Str(\"AP9oaQ==\")"
        );
    }

    #[test]
    fn lists_become_string_lists_without_nulls() {
        let mut b = ListBuilder::new(StringBuilder::new());
        b.values().append_value("a");
        b.values().append_null();
        b.values().append_value("b");
        b.append(true);
        b.append(false);
        let a: ArrayRef = Arc::new(b.finish());
        let kind = ColumnKind::List(Box::new(ColumnKind::Text));
        let r = ColumnReader::new("l", &kind, &a).unwrap();
        assert_eq!(
            r.cell(0),
            Cell::Value(Value::List(vec!["a".into(), "b".into()]))
        );
        assert_eq!(r.list_elements_left_out(0), 1);
        assert_eq!(r.cell(1), Cell::Null);
    }

    #[test]
    fn wrong_array_type_is_reported() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let err = ColumnReader::new("c", &ColumnKind::Text, &a).err().unwrap();
        assert_eq!(
            err.to_string(),
            "column `c`: expected an Arrow array for text, got Int64"
        );
    }
}
