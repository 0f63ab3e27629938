//! Snowflake's column types → [`ColumnKind`], and the decoding of Snowflake's
//! Arrow (and JSON) result encodings into the chunk's builders.
//!
//! | rowtype `type`                 | reported as      | kind                              |
//! |--------------------------------|------------------|-----------------------------------|
//! | `fixed`, scale 0, precision ≤ 18 | `NUMBER(p,0)`  | `Int` (`Int64`)                   |
//! | `fixed`, scale 0, precision > 18 | `NUMBER(p,0)`  | `Decimal` (exact text; `Decimal128(p,0)` in exports) |
//! | `fixed`, scale > 0             | `NUMBER(p,s)`    | `Decimal` (exact text; `Decimal128(p,s)` in exports) |
//! | `real`                         | `FLOAT`          | `Float64`                         |
//! | `text`                         | `VARCHAR`        | `Text`                            |
//! | `boolean`                      | `BOOLEAN`        | `Bool`                            |
//! | `date`                         | `DATE`           | `Date`                            |
//! | `time`                         | `TIME`           | `Time` (µs; finer digits cut)     |
//! | `timestamp_ntz`                | `TIMESTAMP_NTZ`  | `Timestamp`                       |
//! | `timestamp_ltz`                | `TIMESTAMP_LTZ`  | `TimestampTz` (the instant, UTC)  |
//! | `timestamp_tz`                 | `TIMESTAMP_TZ`   | `TimestampTz` (the instant, UTC; the offset is dropped) |
//! | `variant`, `object`, `array`   | same, uppercase  | `Json` (compact JSON text, digits kept as written) |
//! | `binary`                       | `BINARY`         | `Bytes`                           |
//!
//! Refused with a fix: `geography`/`geometry` (`ST_ASWKT(col)`), `vector`, `map`
//! and anything newer (`TO_VARCHAR(col)` / `TO_VARIANT(col)`).
//!
//! On the wire (Arrow): `fixed` arrives as `Int8`…`Int64` holding the value times
//! 10^scale (Snowflake picks the narrowest width per chunk) or as `Decimal128`;
//! `time` as an integer in units of 10^-scale seconds; `timestamp_ntz`/`ltz` as
//! an `Int64` in 10^-scale seconds or a struct `{epoch (s), fraction (ns)}`;
//! `timestamp_tz` as a struct `{epoch, timezone}` (epoch in 10^-scale s) or
//! `{epoch (s), fraction (ns), timezone}`, `timezone` being the offset in
//! minutes plus 1440. In JSON results every value is text in the same units.

use arrow::array::{
    Array, ArrayRef, AsArray as _, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, LargeBinaryArray, LargeStringArray, StringArray, StructArray,
};
use arrow::datatypes::DataType;

use crate::source::decode::{ColBuilder, TextKind};
use crate::source::types::Unsupported;
use crate::source::ColumnKind;

/// One column of a Snowflake result, as its `rowtype` entry describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct RowType {
    /// Column name as Snowflake returns it (unquoted aliases are uppercase).
    pub name: String,
    /// Lowercase type name (`fixed`, `text`, `timestamp_ntz`, …).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Digits of a `fixed`.
    #[serde(default)]
    pub precision: Option<i64>,
    /// Fractional digits of a `fixed`; for `time`/`timestamp_*`, the fractional
    /// seconds digits (the unit of integer encodings).
    #[serde(default)]
    pub scale: Option<i64>,
}

impl RowType {
    /// The type as a user writes it (`NUMBER(38,0)`, `TIMESTAMP_TZ`, …).
    pub(crate) fn sql_type(&self) -> String {
        match self.type_name.as_str() {
            "fixed" => format!(
                "NUMBER({},{})",
                self.precision.unwrap_or(38),
                self.scale.unwrap_or(0)
            ),
            "real" => "FLOAT".to_owned(),
            "text" => "VARCHAR".to_owned(),
            other => other.to_ascii_uppercase(),
        }
    }

    /// Fractional digits of the integer encodings (`time`, `timestamp_*`),
    /// Snowflake's default 9 when unreported.
    fn time_scale(&self) -> u32 {
        self.scale
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s <= 9)
            .unwrap_or(9)
    }

    /// Scale of a `fixed`.
    fn fixed_scale(&self) -> u32 {
        self.scale.and_then(|s| u32::try_from(s).ok()).unwrap_or(0)
    }
}

/// The kind of a Snowflake column and, for decimals, its `(precision, scale)`.
pub(crate) fn snowflake_kind(
    rowtype: &RowType,
) -> Result<(ColumnKind, Option<(u8, i8)>), Unsupported> {
    let unsupported = |fix: &'static str| Unsupported {
        sql_type: rowtype.sql_type(),
        fix_template: fix,
    };
    Ok(match rowtype.type_name.to_ascii_lowercase().as_str() {
        "fixed" => {
            let precision = rowtype.precision.unwrap_or(38);
            let scale = rowtype.scale.unwrap_or(0);
            if scale == 0 && precision <= 18 {
                (ColumnKind::Int, None)
            } else {
                let p = u8::try_from(precision).unwrap_or(38);
                let s = i8::try_from(scale).unwrap_or(0);
                (ColumnKind::Decimal, Some((p, s)))
            }
        }
        "real" | "float" | "double" => (ColumnKind::Float64, None),
        "text" | "varchar" | "string" => (ColumnKind::Text, None),
        "boolean" => (ColumnKind::Bool, None),
        "date" => (ColumnKind::Date, None),
        "time" => (ColumnKind::Time, None),
        "timestamp_ntz" => (ColumnKind::Timestamp, None),
        "timestamp_ltz" | "timestamp_tz" => (ColumnKind::TimestampTz, None),
        "variant" | "object" | "array" => (ColumnKind::Json, None),
        "binary" => (ColumnKind::Bytes, None),
        "geography" | "geometry" => return Err(unsupported("ST_ASWKT({col}) AS {col}")),
        "map" => return Err(unsupported("TO_VARIANT({col}) AS {col}")),
        _ => return Err(unsupported("TO_VARCHAR({col}) AS {col}")),
    })
}

/// `10^n` for `n ≤ 18`.
fn pow10(n: u32) -> i64 {
    10_i64.pow(n.min(18))
}

/// The exact text of `value / 10^scale` with exactly `scale` fractional digits.
pub(crate) fn scaled_text(value: i128, scale: u32) -> String {
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale - digits.len() + 1))
    } else {
        digits
    };
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// An integer-like value of a `fixed` column: `(unscaled value, scale)`.
fn fixed_value(array: &dyn Array, row: usize, rowtype: &RowType) -> Result<(i128, u32), String> {
    let scale = rowtype.fixed_scale();
    let any = array.as_any();
    let v = match array.data_type() {
        DataType::Int8 => i128::from(downcast::<Int8Array>(any)?.value(row)),
        DataType::Int16 => i128::from(downcast::<Int16Array>(any)?.value(row)),
        DataType::Int32 => i128::from(downcast::<Int32Array>(any)?.value(row)),
        DataType::Int64 => i128::from(downcast::<Int64Array>(any)?.value(row)),
        DataType::Decimal128(_, s) => {
            let s = u32::try_from(*s).map_err(|_| "negative decimal scale".to_owned())?;
            return Ok((downcast::<Decimal128Array>(any)?.value(row), s));
        }
        other => return Err(format!("unexpected Arrow type {other} for a NUMBER")),
    };
    Ok((v, scale))
}

/// Downcast an array, with a message instead of a panic.
fn downcast<T: 'static>(any: &dyn std::any::Any) -> Result<&T, String> {
    any.downcast_ref::<T>()
        .ok_or_else(|| "the Arrow array does not match its type".to_owned())
}

/// Microseconds from a value in units of 10^-scale seconds (rounded toward
/// negative infinity, so a time before the epoch keeps its second).
fn to_micros(value: i64, scale: u32) -> i64 {
    if scale >= 6 {
        value.div_euclid(pow10(scale - 6))
    } else {
        value.saturating_mul(pow10(6 - scale))
    }
}

/// Microseconds since the epoch of a `timestamp_*` value (any encoding).
fn timestamp_micros(array: &dyn Array, row: usize, rowtype: &RowType) -> Result<i64, String> {
    let any = array.as_any();
    let scale = rowtype.time_scale();
    match array.data_type() {
        DataType::Int64 => Ok(to_micros(downcast::<Int64Array>(any)?.value(row), scale)),
        DataType::Struct(fields) => {
            let s: &StructArray = downcast(any)?;
            let epoch = s
                .column_by_name("epoch")
                .ok_or("timestamp struct without `epoch`")?
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .ok_or("timestamp `epoch` is not Int64")?
                .value(row);
            match s.column_by_name("fraction") {
                Some(fraction) => {
                    let nanos = fraction
                        .as_primitive_opt::<arrow::datatypes::Int32Type>()
                        .ok_or("timestamp `fraction` is not Int32")?
                        .value(row);
                    epoch
                        .checked_mul(1_000_000)
                        .and_then(|m| m.checked_add(i64::from(nanos) / 1000))
                        .ok_or_else(|| "timestamp out of range".to_owned())
                }
                // Two fields {epoch, timezone}: epoch in units of the scale.
                None if fields.len() == 2 => Ok(to_micros(epoch, scale)),
                None => Err("timestamp struct without `fraction`".to_owned()),
            }
        }
        other => Err(format!("unexpected Arrow type {other} for a timestamp")),
    }
}

/// Append row `row` of a Snowflake Arrow result column to `b`.
pub(crate) fn append_arrow(
    b: &mut ColBuilder,
    array: &ArrayRef,
    row: usize,
    rowtype: &RowType,
) -> Result<(), String> {
    if array.is_null(row) {
        b.append_null();
        return Ok(());
    }
    let any = array.as_any();
    match b {
        ColBuilder::Int(b) => {
            let (v, scale) = fixed_value(array.as_ref(), row, rowtype)?;
            if scale != 0 && v % i128::from(pow10(scale)) != 0 {
                return Err(format!("{} is not an integer", scaled_text(v, scale)));
            }
            let v = v / i128::from(pow10(scale));
            b.append_value(i64::try_from(v).map_err(|_| format!("{v} does not fit in 64 bits"))?);
        }
        ColBuilder::F64(b) => b.append_value(match array.data_type() {
            DataType::Float64 => downcast::<Float64Array>(any)?.value(row),
            DataType::Float32 => f64::from(downcast::<Float32Array>(any)?.value(row)),
            other => return Err(format!("unexpected Arrow type {other} for a FLOAT")),
        }),
        ColBuilder::Bool(b) => b.append_value(downcast::<BooleanArray>(any)?.value(row)),
        ColBuilder::Str(b, TextKind::Decimal) => {
            let (v, scale) = fixed_value(array.as_ref(), row, rowtype)?;
            b.append_value(scaled_text(v, scale));
        }
        ColBuilder::Str(b, kind) => {
            let text = match array.data_type() {
                DataType::Utf8 => downcast::<StringArray>(any)?.value(row),
                DataType::LargeUtf8 => downcast::<LargeStringArray>(any)?.value(row),
                other => return Err(format!("unexpected Arrow type {other} for text")),
            };
            if *kind == TextKind::Json {
                b.append_value(compact_json_keep_digits(text)?);
            } else {
                b.append_value(text);
            }
        }
        ColBuilder::Bytes(b) => match array.data_type() {
            DataType::Binary => b.append_value(downcast::<BinaryArray>(any)?.value(row)),
            DataType::LargeBinary => b.append_value(downcast::<LargeBinaryArray>(any)?.value(row)),
            DataType::FixedSizeBinary(_) => {
                b.append_value(downcast::<FixedSizeBinaryArray>(any)?.value(row));
            }
            other => return Err(format!("unexpected Arrow type {other} for BINARY")),
        },
        ColBuilder::Date(b) => b.append_value(match array.data_type() {
            DataType::Date32 => downcast::<Date32Array>(any)?.value(row),
            DataType::Int32 => downcast::<Int32Array>(any)?.value(row),
            other => return Err(format!("unexpected Arrow type {other} for DATE")),
        }),
        ColBuilder::Time(b) => {
            let v = match array.data_type() {
                DataType::Int64 => downcast::<Int64Array>(any)?.value(row),
                DataType::Int32 => i64::from(downcast::<Int32Array>(any)?.value(row)),
                other => return Err(format!("unexpected Arrow type {other} for TIME")),
            };
            b.append_value(to_micros(v, rowtype.time_scale()));
        }
        ColBuilder::Ts(b) => b.append_value(timestamp_micros(array.as_ref(), row, rowtype)?),
        ColBuilder::UInt(_) | ColBuilder::F32(_) | ColBuilder::List { .. } => {
            return Err("snowflake has no column of this kind".to_owned());
        }
    }
    Ok(())
}

/// Append one value of a JSON-format result (`None` = NULL) to `b`. Values are
/// text in the units of the Arrow encodings: `fixed` as its decimal text,
/// `date` as days, `time` and `timestamp_*` as seconds with a fraction,
/// `timestamp_tz` followed by a space and the offset, `binary` as hex,
/// `boolean` as `1`/`0`.
pub(crate) fn append_text(
    b: &mut ColBuilder,
    value: Option<&str>,
    rowtype: &RowType,
) -> Result<(), String> {
    let Some(text) = value else {
        b.append_null();
        return Ok(());
    };
    let bad = |what: &str| format!("`{text}` is not a valid {what}");
    match b {
        ColBuilder::Int(b) => b.append_value(
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad("64-bit integer"))?,
        ),
        ColBuilder::F64(b) => b.append_value(match text.trim() {
            "NaN" => f64::NAN,
            "inf" | "Infinity" => f64::INFINITY,
            "-inf" | "-Infinity" => f64::NEG_INFINITY,
            t => t.parse::<f64>().map_err(|_| bad("float"))?,
        }),
        ColBuilder::Bool(b) => b.append_value(match text.trim() {
            "1" | "true" | "TRUE" => true,
            "0" | "false" | "FALSE" => false,
            _ => return Err(bad("boolean")),
        }),
        ColBuilder::Str(b, TextKind::Decimal) => {
            let (unscaled, scale) = parse_fixed(text).ok_or_else(|| bad("number"))?;
            let want = rowtype.fixed_scale();
            let v = if scale < want {
                unscaled * 10_i128.pow(want - scale)
            } else {
                unscaled
            };
            b.append_value(scaled_text(v, want.max(scale)));
        }
        ColBuilder::Str(b, TextKind::Json) => b.append_value(compact_json_keep_digits(text)?),
        ColBuilder::Str(b, _) => b.append_value(text),
        ColBuilder::Bytes(b) => {
            b.append_value(hex::decode(text.trim()).map_err(|_| bad("hex binary"))?);
        }
        ColBuilder::Date(b) => {
            b.append_value(text.trim().parse::<i32>().map_err(|_| bad("day number"))?);
        }
        ColBuilder::Time(b) => {
            b.append_value(seconds_text_to_micros(text.trim()).ok_or_else(|| bad("time"))?);
        }
        ColBuilder::Ts(b) => {
            let epoch = text.split_whitespace().next().unwrap_or_default();
            b.append_value(seconds_text_to_micros(epoch).ok_or_else(|| bad("timestamp"))?);
        }
        ColBuilder::UInt(_) | ColBuilder::F32(_) | ColBuilder::List { .. } => {
            return Err("snowflake has no column of this kind".to_owned());
        }
    }
    Ok(())
}

/// `-12.340` → `(-12340, 3)`.
fn parse_fixed(text: &str) -> Option<(i128, u32)> {
    let t = text.trim();
    let (whole, fraction) = t.split_once('.').unwrap_or((t, ""));
    let scale = u32::try_from(fraction.len()).ok()?;
    let digits = format!("{whole}{fraction}");
    Some((digits.parse::<i128>().ok()?, scale))
}

/// `1700000000.123456789` (seconds, optional fraction) → microseconds.
fn seconds_text_to_micros(text: &str) -> Option<i64> {
    let (unscaled, scale) = parse_fixed(text)?;
    let micros = if scale >= 6 {
        unscaled.div_euclid(10_i128.pow(scale - 6))
    } else {
        unscaled * 10_i128.pow(6 - scale)
    };
    i64::try_from(micros).ok()
}

/// JSON text with the whitespace between tokens removed and everything else
/// (number digits, string escapes, key order) exactly as written. Snowflake
/// pretty-prints VARIANT values; parsing them into numbers would lose digits.
pub(crate) fn compact_json_keep_digits(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| format!("invalid json: {e}"))?;
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Builder, Int64Builder};
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{Field, Fields};

    use super::*;

    fn rt(type_name: &str, precision: Option<i64>, scale: Option<i64>) -> RowType {
        RowType {
            name: "c".into(),
            type_name: type_name.into(),
            precision,
            scale,
        }
    }

    #[test]
    fn type_table() {
        let kind = |t: &str, p, s| snowflake_kind(&rt(t, p, s)).map(|k| k.0);
        assert_eq!(kind("fixed", Some(18), Some(0)), Ok(ColumnKind::Int));
        assert_eq!(kind("fixed", Some(38), Some(0)), Ok(ColumnKind::Decimal));
        assert_eq!(
            snowflake_kind(&rt("fixed", Some(10), Some(2))).unwrap().1,
            Some((10, 2))
        );
        assert_eq!(kind("real", None, None), Ok(ColumnKind::Float64));
        assert_eq!(kind("text", None, None), Ok(ColumnKind::Text));
        assert_eq!(
            kind("timestamp_ntz", None, Some(9)),
            Ok(ColumnKind::Timestamp)
        );
        assert_eq!(
            kind("timestamp_ltz", None, Some(9)),
            Ok(ColumnKind::TimestampTz)
        );
        assert_eq!(
            kind("timestamp_tz", None, Some(9)),
            Ok(ColumnKind::TimestampTz)
        );
        for t in ["variant", "object", "array"] {
            assert_eq!(kind(t, None, None), Ok(ColumnKind::Json));
        }
        assert_eq!(kind("binary", None, None), Ok(ColumnKind::Bytes));
        let geo = snowflake_kind(&rt("geography", None, None)).unwrap_err();
        assert_eq!(geo.fix_for("g"), "ST_ASWKT(g) AS g");
        assert_eq!(geo.sql_type, "GEOGRAPHY");
        assert!(snowflake_kind(&rt("vector", None, None)).is_err());
    }

    #[test]
    fn scaled_text_is_exact() {
        assert_eq!(scaled_text(1250, 2), "12.50");
        assert_eq!(scaled_text(-5, 3), "-0.005");
        assert_eq!(scaled_text(0, 2), "0.00");
        assert_eq!(
            scaled_text(i128::from(i64::MAX) * 1000, 0),
            "9223372036854775807000"
        );
        assert_eq!(parse_fixed("-12.340"), Some((-12340, 3)));
    }

    #[test]
    fn json_keeps_digits_and_strings() {
        let pretty = "{\n  \"a\": 12345678901234567890123,\n  \"b\": \"x  y\",\n  \"c\": [1.10, \"\\\" q\"]\n}";
        assert_eq!(
            compact_json_keep_digits(pretty).unwrap(),
            "{\"a\":12345678901234567890123,\"b\":\"x  y\",\"c\":[1.10,\"\\\" q\"]}"
        );
        assert!(compact_json_keep_digits("{").is_err());
    }

    #[test]
    fn timestamp_encodings() {
        let ntz = rt("timestamp_ntz", None, Some(9));
        // Int64 in nanoseconds, before the epoch.
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![-1_500_000_000]));
        assert_eq!(timestamp_micros(ints.as_ref(), 0, &ntz), Ok(-1_500_000));
        // {epoch, fraction}
        let mut epoch = Int64Builder::new();
        epoch.append_value(1_700_000_000);
        epoch.append_value(0);
        let mut fraction = Int32Builder::new();
        fraction.append_value(123_456_789);
        fraction.append_value(0);
        let fields = Fields::from(vec![
            Field::new("epoch", DataType::Int64, false),
            Field::new("fraction", DataType::Int32, false),
        ]);
        let s: ArrayRef = Arc::new(StructArray::new(
            fields,
            vec![Arc::new(epoch.finish()), Arc::new(fraction.finish())],
            Some(NullBuffer::from(vec![true, false])),
        ));
        let mut b = ColBuilder::new(&ColumnKind::Timestamp, 2);
        append_arrow(&mut b, &s, 0, &ntz).unwrap();
        append_arrow(&mut b, &s, 1, &ntz).unwrap();
        let out = b.finish().unwrap();
        assert_eq!(out.null_count(), 1, "the struct's NULL stays NULL");
        // {epoch (scale units), timezone}
        let tz = rt("timestamp_tz", None, Some(3));
        let fields = Fields::from(vec![
            Field::new("epoch", DataType::Int64, false),
            Field::new("timezone", DataType::Int32, false),
        ]);
        let s = StructArray::new(
            fields,
            vec![
                Arc::new(Int64Array::from(vec![1_700_000_000_123])),
                Arc::new(Int32Array::from(vec![1440 + 60])),
            ],
            None,
        );
        assert_eq!(timestamp_micros(&s, 0, &tz), Ok(1_700_000_000_123_000));
    }

    #[test]
    fn json_results_decode() {
        let mut b = ColBuilder::new(&ColumnKind::Decimal, 1);
        append_text(&mut b, Some("12.5"), &rt("fixed", Some(10), Some(2))).unwrap();
        let out = b.finish().unwrap();
        assert_eq!(out.as_string::<i32>().value(0), "12.50");
        let mut b = ColBuilder::new(&ColumnKind::TimestampTz, 1);
        append_text(
            &mut b,
            Some("1700000000.000001000 1500"),
            &rt("timestamp_tz", None, Some(9)),
        )
        .unwrap();
        let out = b.finish().unwrap();
        assert_eq!(
            out.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            1_700_000_000_000_001
        );
    }
}
