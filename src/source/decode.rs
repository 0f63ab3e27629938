//! Arrow column builders and the value decoders that fill them.
//!
//! A [`ColBuilder`] is chosen once per chunk from a column's [`ColumnKind`]; the
//! per-row work is an enum match on it, never a trait object. PostgreSQL values are
//! decoded here straight from the binary wire format (sqlx's typed decoders would
//! lose `NaN`/`±Infinity` numerics and numeric scale); MySQL and SQLite use sqlx's
//! decoders (see `reader.rs`).

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder,
    Int64Builder, ListArray, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
    UInt64Builder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::Field;

use super::{ColumnKind, MAX_LIST_ELEMENTS, MAX_LIST_ELEMENT_CHARS, MAX_VALUE_BYTES};

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// How a `Utf8` column's text is produced; decides the decoder, not the Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextKind {
    /// Plain text.
    Text,
    /// Exact decimal text.
    Decimal,
    /// Lowercase hyphenated UUID.
    Uuid,
    /// Compact JSON.
    Json,
}

/// One column's Arrow builder, typed by its kind.
#[derive(Debug)]
pub(crate) enum ColBuilder {
    /// `Bool`.
    Bool(BooleanBuilder),
    /// `Int`.
    Int(Int64Builder),
    /// `UInt`.
    UInt(UInt64Builder),
    /// `Float32`.
    F32(Float32Builder),
    /// `Float64`.
    F64(Float64Builder),
    /// `Decimal`, `Text`, `Uuid`, `Json`.
    Str(StringBuilder, TextKind),
    /// `Bytes`.
    Bytes(BinaryBuilder),
    /// `Date` (days since epoch).
    Date(Date32Builder),
    /// `Time` (microseconds since midnight).
    Time(Time64MicrosecondBuilder),
    /// `Timestamp` / `TimestampTz` (microseconds since epoch).
    Ts(TimestampMicrosecondBuilder),
    /// `List`: child values, offsets and list-level validity kept by hand so the
    /// child stays a [`ColBuilder`] (no `dyn ArrayBuilder`).
    List {
        /// The element kind, for the list field.
        element: ColumnKind,
        /// Builder of all elements of all lists.
        child: Box<ColBuilder>,
        /// Offsets into the child, one more than the number of lists.
        offsets: Vec<i32>,
        /// Validity of each list.
        valid: Vec<bool>,
    },
}

impl ColBuilder {
    /// A builder for `kind` with room for `capacity` rows.
    pub(crate) fn new(kind: &ColumnKind, capacity: usize) -> Self {
        match kind {
            ColumnKind::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Int => Self::Int(Int64Builder::with_capacity(capacity)),
            ColumnKind::UInt => Self::UInt(UInt64Builder::with_capacity(capacity)),
            ColumnKind::Float32 => Self::F32(Float32Builder::with_capacity(capacity)),
            ColumnKind::Float64 => Self::F64(Float64Builder::with_capacity(capacity)),
            ColumnKind::Decimal => Self::Str(StringBuilder::new(), TextKind::Decimal),
            ColumnKind::Text => Self::Str(StringBuilder::new(), TextKind::Text),
            ColumnKind::Uuid => Self::Str(StringBuilder::new(), TextKind::Uuid),
            ColumnKind::Json => Self::Str(StringBuilder::new(), TextKind::Json),
            ColumnKind::Bytes => Self::Bytes(BinaryBuilder::new()),
            ColumnKind::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            ColumnKind::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            ColumnKind::Timestamp => Self::Ts(TimestampMicrosecondBuilder::with_capacity(capacity)),
            ColumnKind::TimestampTz => {
                Self::Ts(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
            }
            ColumnKind::List(element) => Self::List {
                element: (**element).clone(),
                child: Box::new(Self::new(element, capacity)),
                offsets: vec![0],
                valid: Vec::with_capacity(capacity),
            },
        }
    }

    /// Append a NULL.
    pub(crate) fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::UInt(b) => b.append_null(),
            Self::F32(b) => b.append_null(),
            Self::F64(b) => b.append_null(),
            Self::Str(b, _) => b.append_null(),
            Self::Bytes(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Ts(b) => b.append_null(),
            Self::List {
                child,
                offsets,
                valid,
                ..
            } => {
                // Elements appended before a decode error belong to this (null)
                // list, never to the next one.
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(i32::try_from(child.len()).unwrap_or(last));
                valid.push(false);
            }
        }
    }

    /// Bytes the values appended so far take (an estimate for bounding chunks:
    /// the values and offsets buffers, not the builders' spare capacity).
    pub(crate) fn bytes(&self) -> usize {
        use arrow::array::ArrayBuilder as _;
        match self {
            Self::Bool(b) => b.len() / 8 + 1,
            Self::Int(b) => b.len() * 8,
            Self::UInt(b) => b.len() * 8,
            Self::F32(b) => b.len() * 4,
            Self::F64(b) => b.len() * 8,
            Self::Str(b, _) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Self::Bytes(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Self::Date(b) => b.len() * 4,
            Self::Time(b) => b.len() * 8,
            Self::Ts(b) => b.len() * 8,
            Self::List { child, offsets, .. } => child.bytes() + offsets.len() * 4,
        }
    }

    /// The finished Arrow array; the builder is left empty.
    pub(crate) fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::UInt(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Str(b, _) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            // The builder keeps its time zone (`UTC` for `TimestampTz`) in `finish`.
            Self::Ts(b) => Arc::new(b.finish()),
            Self::List {
                element,
                child,
                offsets,
                valid,
            } => {
                let values = child.finish()?;
                let field = Arc::new(Field::new("item", element.arrow_type(), true));
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let nulls = NullBuffer::from(std::mem::take(valid));
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                Arc::new(
                    ListArray::try_new(field, offsets, values, nulls).map_err(|e| e.to_string())?,
                )
            }
        })
    }

    /// Number of values appended so far.
    fn len(&self) -> usize {
        use arrow::array::ArrayBuilder as _;
        match self {
            Self::Bool(b) => b.len(),
            Self::Int(b) => b.len(),
            Self::UInt(b) => b.len(),
            Self::F32(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::Str(b, _) => b.len(),
            Self::Bytes(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::Time(b) => b.len(),
            Self::Ts(b) => b.len(),
            Self::List { valid, .. } => valid.len(),
        }
    }

    /// Close the current list after its elements were appended to the child.
    pub(crate) fn close_list(&mut self) -> Result<(), String> {
        if let Self::List {
            child,
            offsets,
            valid,
            ..
        } = self
        {
            let end = i32::try_from(child.len())
                .map_err(|_| "too many list elements in one chunk: lower chunk_rows".to_owned())?;
            offsets.push(end);
            valid.push(true);
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch, from a chrono timestamp.
pub(crate) fn micros(ts: chrono::NaiveDateTime) -> i64 {
    ts.and_utc().timestamp_micros()
}

/// Days since the Unix epoch.
pub(crate) fn days(d: chrono::NaiveDate) -> Result<i32, String> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("bad epoch")?;
    i32::try_from((d - epoch).num_days()).map_err(|_| "date out of range".to_owned())
}

/// Microseconds since midnight.
pub(crate) fn time_micros(t: chrono::NaiveTime) -> i64 {
    use chrono::Timelike as _;
    i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1_000)
}

/// Compact JSON text from JSON text: see [`write_compact_json`].
pub(crate) fn compact_json(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    write_compact_json(text, &mut out)?;
    Ok(out)
}

/// Check `text` is one JSON value and write it into `out` without the whitespace
/// outside strings. Nothing else changes: numbers keep every digit (a value such
/// as `123456789012345678901234567890` is never read into a double), keys keep
/// their order and string escapes stay as written. The text is validated without
/// building a tree (`RawValue` only scans it).
pub(crate) fn write_compact_json(text: &str, out: &mut impl Write) -> Result<(), String> {
    serde_json::from_str::<&serde_json::value::RawValue>(text)
        .map_err(|e| format!("invalid json: {e}"))?;
    let fmt_err = |e: std::fmt::Error| e.to_string();
    let bytes = text.as_bytes();
    let (mut in_string, mut escaped, mut start) = (false, false, 0);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b' ' | b'\n' | b'\r' | b'\t' => {
                // Whitespace is ASCII, so `start..i` always ends on a char boundary.
                out.write_str(&text[start..i]).map_err(fmt_err)?;
                start = i + 1;
            }
            _ => {}
        }
    }
    out.write_str(&text[start..]).map_err(fmt_err)
}

/// The error for a value larger than [`MAX_VALUE_BYTES`].
pub(crate) fn too_large(bytes: usize) -> String {
    format!(
        "a value of {bytes} bytes is larger than the {} MiB wsync reads (a user attribute holds at most 4096 characters): cut it in the model, e.g. LEFT(col, 4096)",
        MAX_VALUE_BYTES / (1024 * 1024)
    )
}

/// Read `N` bytes at the front of `buf`.
fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], String> {
    if buf.len() < N {
        return Err(format!(
            "truncated value: expected {N} more bytes, got {}",
            buf.len()
        ));
    }
    let (head, rest) = buf.split_at(N);
    *buf = rest;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

/// The exact text of a PostgreSQL binary `NUMERIC`: `NaN`, `Infinity`,
/// `-Infinity`, or digits with exactly `dscale` fractional digits (`12.50`).
pub(crate) fn pg_numeric_text(buf: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    pg_numeric_write(buf, &mut out)?;
    Ok(out)
}

/// [`pg_numeric_text`] written straight into `out` (a string builder's current
/// value), with no allocation: one runs for every decimal of every row.
pub(crate) fn pg_numeric_write(mut buf: &[u8], out: &mut impl Write) -> Result<(), String> {
    let ndigits = i16::from_be_bytes(take(&mut buf)?);
    let weight = i16::from_be_bytes(take(&mut buf)?);
    let sign = u16::from_be_bytes(take(&mut buf)?);
    let dscale = u16::from_be_bytes(take(&mut buf)?);
    // `write!` into a String or a string builder cannot fail.
    match sign {
        0xC000 => return out.write_str("NaN").map_err(|e| e.to_string()),
        0xD000 => return out.write_str("Infinity").map_err(|e| e.to_string()),
        0xF000 => return out.write_str("-Infinity").map_err(|e| e.to_string()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("invalid numeric sign 0x{other:04x}")),
    }
    let ndigits = usize::try_from(ndigits).map_err(|_| "negative numeric digit count")?;
    if buf.len() < ndigits * 2 {
        return Err(format!(
            "truncated numeric: {ndigits} digit groups, {} bytes",
            buf.len()
        ));
    }
    let digits = &buf[..ndigits * 2];
    if let Some(bad) = digits
        .chunks_exact(2)
        .map(|d| i16::from_be_bytes([d[0], d[1]]))
        .find(|d| !(0..10_000).contains(d))
    {
        return Err(format!("invalid numeric digit {bad}"));
    }
    // Group `i` (0-based) is worth 10000^(weight - i); missing groups are zeros.
    let group = |i: i32| -> i16 {
        usize::try_from(i)
            .ok()
            .filter(|i| *i < ndigits)
            .map_or(0, |i| {
                i16::from_be_bytes([digits[2 * i], digits[2 * i + 1]])
            })
    };
    let weight = i32::from(weight);
    let fmt_err = |e: std::fmt::Error| e.to_string();
    if sign == 0x4000 && ndigits > 0 {
        out.write_char('-').map_err(fmt_err)?;
    }
    if weight < 0 {
        out.write_char('0').map_err(fmt_err)?;
    } else {
        for i in 0..=weight {
            if i == 0 {
                write!(out, "{}", group(i)).map_err(fmt_err)?;
            } else {
                write!(out, "{:04}", group(i)).map_err(fmt_err)?;
            }
        }
    }
    if dscale > 0 {
        out.write_char('.').map_err(fmt_err)?;
        let mut left = usize::from(dscale);
        let mut i = weight + 1;
        while left > 0 {
            let g = format_group(group(i));
            let n = left.min(4);
            // The four ASCII digits of a group, cut to the scale still owed.
            out.write_str(std::str::from_utf8(&g[..n]).unwrap_or("0000"))
                .map_err(fmt_err)?;
            left -= n;
            i += 1;
        }
    }
    Ok(())
}

/// A base-10000 digit group as its four ASCII digits.
fn format_group(g: i16) -> [u8; 4] {
    let g = u16::try_from(g).unwrap_or(0);
    let digit = |d: u16| b'0' + u8::try_from(d % 10).unwrap_or(0);
    [digit(g / 1000), digit(g / 100), digit(g / 10), digit(g)]
}

/// Decode one PostgreSQL binary value (`None` = NULL) into `b`.
///
/// On error nothing was appended for this value, except unfinished text in a
/// string builder's current slot or finished elements in a list's child; the
/// caller's [`ColBuilder::append_null`] closes either into the NULL it appends.
pub(crate) fn pg_append(b: &mut ColBuilder, value: Option<&[u8]>) -> Result<(), String> {
    pg_append_in(b, value, false)
}

/// [`pg_append`]; `element` is true for the elements of an array, whose text is
/// cut to [`MAX_LIST_ELEMENT_CHARS`] (see there).
fn pg_append_in(b: &mut ColBuilder, value: Option<&[u8]>, element: bool) -> Result<(), String> {
    let Some(mut buf) = value else {
        b.append_null();
        return Ok(());
    };
    if buf.len() > MAX_VALUE_BYTES {
        return Err(too_large(buf.len()));
    }
    match b {
        ColBuilder::Bool(b) => b.append_value(take::<1>(&mut buf)?[0] != 0),
        ColBuilder::Int(b) => b.append_value(match buf.len() {
            2 => i64::from(i16::from_be_bytes(take(&mut buf)?)),
            4 => i64::from(i32::from_be_bytes(take(&mut buf)?)),
            8 => i64::from_be_bytes(take(&mut buf)?),
            n => return Err(format!("unexpected {n}-byte integer")),
        }),
        ColBuilder::UInt(b) => {
            let v = i64::from_be_bytes(take(&mut buf)?);
            b.append_value(u64::try_from(v).map_err(|_| format!("negative value {v}"))?);
        }
        ColBuilder::F32(b) => b.append_value(f32::from_be_bytes(take(&mut buf)?)),
        ColBuilder::F64(b) => b.append_value(match buf.len() {
            4 => f64::from(f32::from_be_bytes(take(&mut buf)?)),
            _ => f64::from_be_bytes(take(&mut buf)?),
        }),
        ColBuilder::Str(b, kind) => match kind {
            TextKind::Text if element => b.append_value(cut_chars(utf8(buf)?)),
            TextKind::Text => b.append_value(utf8(buf)?),
            TextKind::Decimal => {
                // Written into the builder's current value, then closed as a row.
                pg_numeric_write(buf, b)?;
                b.append_value("");
            }
            TextKind::Uuid => {
                let u = uuid::Uuid::from_slice(buf).map_err(|e| format!("invalid uuid: {e}"))?;
                write!(b, "{}", u.hyphenated()).map_err(|e| e.to_string())?;
                b.append_value("");
            }
            TextKind::Json => {
                // JSONB's binary form is a version byte (1) then the JSON text; JSON
                // text itself can never start with byte 0x01, so this tells them apart.
                let text = match buf.first() {
                    Some(1) => &buf[1..],
                    _ => buf,
                };
                if element {
                    b.append_value(cut_chars(&compact_json(utf8(text)?)?));
                } else {
                    // Written into the builder's current value, then closed as a row.
                    write_compact_json(utf8(text)?, b)?;
                    b.append_value("");
                }
            }
        },
        ColBuilder::Bytes(b) => b.append_value(buf),
        ColBuilder::Date(b) => {
            let d = i32::from_be_bytes(take(&mut buf)?);
            if d == i32::MAX || d == i32::MIN {
                return Err("infinite date cannot be sent: filter or cast it in the model".into());
            }
            b.append_value(d.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?);
        }
        ColBuilder::Time(b) => b.append_value(i64::from_be_bytes(take(&mut buf)?)),
        ColBuilder::Ts(b) => {
            let t = i64::from_be_bytes(take(&mut buf)?);
            if t == i64::MAX || t == i64::MIN {
                return Err(
                    "infinite timestamp cannot be sent: filter or cast it in the model".into(),
                );
            }
            b.append_value(
                t.checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of range")?,
            );
        }
        ColBuilder::List { child, .. } => {
            pg_array(child, buf)?;
            b.close_list()?;
        }
    }
    Ok(())
}

/// The first [`MAX_LIST_ELEMENT_CHARS`] characters of `text`.
fn cut_chars(text: &str) -> &str {
    match text.char_indices().nth(MAX_LIST_ELEMENT_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Append the elements of a PostgreSQL binary array to `child`. Multi-dimensional
/// arrays are flattened in storage order. Only the first [`MAX_LIST_ELEMENTS`]
/// are kept. An element that cannot be decoded is closed as NULL in the child
/// before the error is returned (see [`pg_append`]).
fn pg_array(child: &mut ColBuilder, mut buf: &[u8]) -> Result<(), String> {
    let ndim = i32::from_be_bytes(take(&mut buf)?);
    let _has_nulls = i32::from_be_bytes(take(&mut buf)?);
    let _element_oid = u32::from_be_bytes(take(&mut buf)?);
    let mut count: usize = usize::from(ndim != 0);
    for _ in 0..ndim {
        let len = i32::from_be_bytes(take(&mut buf)?);
        let _lower = i32::from_be_bytes(take(&mut buf)?);
        count = count.saturating_mul(usize::try_from(len).map_err(|_| "negative array length")?);
    }
    for _ in 0..count.min(MAX_LIST_ELEMENTS) {
        let len = i32::from_be_bytes(take(&mut buf)?);
        let element = if len < 0 {
            None
        } else {
            let len = usize::try_from(len).map_err(|_| "bad element length")?;
            if buf.len() < len {
                return Err("truncated array element".into());
            }
            let (element, rest) = buf.split_at(len);
            buf = rest;
            Some(element)
        };
        if let Err(e) = pg_append_in(child, element, true) {
            child.append_null();
            return Err(e);
        }
    }
    Ok(())
}

/// Bytes as UTF-8 text.
fn utf8(buf: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(buf).map_err(|e| format!("invalid utf-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array as _;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(ndigits.to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_to_exact_text() {
        // 12.50: digits [12, 5000], weight 0, dscale 2
        assert_eq!(
            pg_numeric_text(&numeric(2, 0, 0, 2, &[12, 5000])).unwrap(),
            "12.50"
        );
        // -0.0001: digits [1], weight -1, dscale 4
        assert_eq!(
            pg_numeric_text(&numeric(1, -1, 0x4000, 4, &[1])).unwrap(),
            "-0.0001"
        );
        // 0.00000001: weight -2
        assert_eq!(
            pg_numeric_text(&numeric(1, -2, 0, 8, &[1])).unwrap(),
            "0.00000001"
        );
        // 1000000 = [100, 0] weight 1 → trailing zero group omitted by PG
        assert_eq!(
            pg_numeric_text(&numeric(1, 1, 0, 0, &[100])).unwrap(),
            "1000000"
        );
        // 0
        assert_eq!(pg_numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(pg_numeric_text(&numeric(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(
            pg_numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(),
            "NaN"
        );
        assert_eq!(
            pg_numeric_text(&numeric(0, 0, 0xD000, 0, &[])).unwrap(),
            "Infinity"
        );
        assert_eq!(
            pg_numeric_text(&numeric(0, 0, 0xF000, 0, &[])).unwrap(),
            "-Infinity"
        );
        // 12345678901234567890.123456789
        assert_eq!(
            pg_numeric_text(&numeric(
                8,
                4,
                0,
                9,
                &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 9000]
            ))
            .unwrap(),
            "12345678901234567890.123456789"
        );
        assert!(pg_numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn jsonb_keeps_big_number_digits() {
        // What PostgreSQL's jsonb output looks like: spaces after `:` and `,`.
        let text = r#"{"big": 123456789012345678901234567890, "f": 0.1000000000000000055511151231257827, "e": 1E+400, "s": "a b\" c", "n": [1, -0.0, null]}"#;
        assert_eq!(
            compact_json(text).unwrap(),
            r#"{"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827,"e":1E+400,"s":"a b\" c","n":[1,-0.0,null]}"#
        );
        // The binary jsonb form (version byte 1) decodes the same way.
        let mut wire = vec![1u8];
        wire.extend(text.as_bytes());
        let mut b = ColBuilder::new(&ColumnKind::Json, 1);
        pg_append(&mut b, Some(&wire)).unwrap();
        let arr = b.finish().unwrap();
        let s = arr
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert!(s.value(0).contains(":123456789012345678901234567890,"));
        // Keys keep their order, escapes stay as written, whitespace inside strings stays.
        assert_eq!(
            compact_json("\n { \"z\" : \"\\u00e9 \\n\", \"a\" : { } } \t").unwrap(),
            "{\"z\":\"\\u00e9 \\n\",\"a\":{}}"
        );
        for bad in ["", "{", "{\"a\":1,}", "[1] [2]", "NaN", "{'a':1}"] {
            assert!(compact_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_value_leaves_nothing_behind_in_its_builder() {
        // Invalid UTF-8, invalid JSON, an infinite date: each is an error, and the
        // NULL the chunker then appends closes whatever was left unfinished.
        let mut text = ColBuilder::new(&ColumnKind::Json, 2);
        assert!(pg_append(&mut text, Some(b"{\"a\": ")).is_err());
        text.append_null();
        pg_append(&mut text, Some(b"[1]")).unwrap();
        let arr = text.finish().unwrap();
        let s = arr
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert!(s.is_null(0));
        assert_eq!(s.value(1), "[1]");

        let mut t = ColBuilder::new(&ColumnKind::Text, 2);
        let err = pg_append(&mut t, Some(&[0x66, 0xff, 0x6f])).unwrap_err();
        assert!(err.contains("invalid utf-8"), "{err}");

        let mut d = ColBuilder::new(&ColumnKind::Date, 1);
        let err = pg_append(&mut d, Some(&i32::MAX.to_be_bytes())).unwrap_err();
        assert!(err.contains("infinite date"), "{err}");

        // An array whose third element is bad: the list is NULL and the next list
        // does not inherit the two elements already appended.
        let array = |elements: &[&[u8]]| {
            let mut v = Vec::new();
            v.extend(1i32.to_be_bytes());
            v.extend(0i32.to_be_bytes());
            v.extend(25u32.to_be_bytes());
            v.extend(i32::try_from(elements.len()).unwrap().to_be_bytes());
            v.extend(1i32.to_be_bytes());
            for e in elements {
                v.extend(i32::try_from(e.len()).unwrap().to_be_bytes());
                v.extend(*e);
            }
            v
        };
        let mut l = ColBuilder::new(&ColumnKind::List(Box::new(ColumnKind::Text)), 2);
        assert!(pg_append(&mut l, Some(&array(&[b"a", b"b", &[0xff]]))).is_err());
        l.append_null();
        pg_append(&mut l, Some(&array(&[b"c"]))).unwrap();
        let arr = l.finish().unwrap();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        assert!(list.is_null(0));
        let second = list.value(1);
        let second = second
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second.value(0), "c");
    }

    #[test]
    fn huge_arrays_and_elements_are_cut_to_what_the_limits_need() {
        let long = "é".repeat(5000);
        let mut v = Vec::new();
        v.extend(1i32.to_be_bytes());
        v.extend(0i32.to_be_bytes());
        v.extend(25u32.to_be_bytes());
        v.extend(5000i32.to_be_bytes());
        v.extend(1i32.to_be_bytes());
        for i in 0..5000 {
            let e = if i == 0 { long.clone() } else { i.to_string() };
            v.extend(i32::try_from(e.len()).unwrap().to_be_bytes());
            v.extend(e.as_bytes());
        }
        let mut b = ColBuilder::new(&ColumnKind::List(Box::new(ColumnKind::Text)), 1);
        pg_append(&mut b, Some(&v)).unwrap();
        let arr = b.finish().unwrap();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        let first = list.value(0);
        let s = first
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(s.len(), MAX_LIST_ELEMENTS);
        assert_eq!(s.value(0).chars().count(), MAX_LIST_ELEMENT_CHARS);
        assert_eq!(s.value(1000), "1000");

        // A value beyond the reader's limit is refused before it is copied.
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        let mut t = ColBuilder::new(&ColumnKind::Text, 1);
        let err = pg_append(&mut t, Some(&big)).unwrap_err();
        assert!(err.contains("larger than the 8 MiB"), "{err}");
        assert_eq!(t.bytes(), 4, "nothing but the first offset");
    }

    #[test]
    fn array_with_nulls_becomes_list() {
        let mut v = Vec::new();
        v.extend(1i32.to_be_bytes()); // ndim
        v.extend(1i32.to_be_bytes()); // has nulls
        v.extend(25u32.to_be_bytes()); // text
        v.extend(3i32.to_be_bytes()); // len
        v.extend(1i32.to_be_bytes()); // lbound
        v.extend(1i32.to_be_bytes());
        v.extend(b"a");
        v.extend((-1i32).to_be_bytes());
        v.extend(0i32.to_be_bytes());
        let mut b = ColBuilder::new(&ColumnKind::List(Box::new(ColumnKind::Text)), 4);
        pg_append(&mut b, Some(&v)).unwrap();
        pg_append(&mut b, None).unwrap();
        let arr = b.finish().unwrap();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_null(1));
        let first = list.value(0);
        let s = first
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(s.value(0), "a");
        assert!(s.is_null(1));
        assert_eq!(s.value(2), "");
    }
}
