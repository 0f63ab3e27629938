//! BigQuery's column types → [`ColumnKind`], and the decoding of the REST API's
//! row values (`{"f": [{"v": …}]}`, every scalar as a string) into the chunk's
//! builders.
//!
//! | schema type (mode)                 | kind                                   |
//! |------------------------------------|----------------------------------------|
//! | `INT64`/`INTEGER`                  | `Int`                                  |
//! | `FLOAT64`/`FLOAT`                  | `Float64`                              |
//! | `NUMERIC`/`DECIMAL`                | `Decimal` (exact text; `Decimal128(38,9)` or the declared `(P,S)` in exports) |
//! | `BIGNUMERIC`/`BIGDECIMAL`          | `Decimal` (exact text; text in exports, it can exceed 38 digits) |
//! | `BOOL`/`BOOLEAN`                   | `Bool`                                 |
//! | `STRING`                           | `Text`                                 |
//! | `BYTES`                            | `Bytes`                                |
//! | `DATE`                             | `Date`                                 |
//! | `DATETIME`                         | `Timestamp`                            |
//! | `TIME`                             | `Time`                                 |
//! | `TIMESTAMP`                        | `TimestampTz`                          |
//! | `JSON`                             | `Json` (compact, digits kept)          |
//! | `STRUCT`/`RECORD`, any `REPEATED`  | `Json` (see [`to_json`])               |
//!
//! Refused with a fix: `GEOGRAPHY` (`ST_ASTEXT(col)`), `INTERVAL` and `RANGE`
//! (`CAST(col AS STRING)`).
//!
//! Wire spellings accepted (BigQuery's and the emulator's): `NaN`/`nan`,
//! `Infinity`/`inf`; NUMERIC `12.5`, `12.500000000`, `0E-9` (all normalised to
//! the shortest exact text: `12.5`, `0`); TIMESTAMP as integer microseconds
//! (`formatOptions.useInt64Timestamp`) or float seconds (`1.7E9`).

use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde::Deserialize;
use serde_json::Value;

use crate::source::decode::{self, ColBuilder, TextKind};
use crate::source::snowflake::types::compact_json_keep_digits;
use crate::source::types::Unsupported;
use crate::source::ColumnKind;

/// One field of a result schema.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct Field {
    /// Column name.
    pub name: String,
    /// Type name (`INTEGER`, `STRING`, `RECORD`, …).
    #[serde(rename = "type")]
    pub type_name: String,
    /// `NULLABLE`, `REQUIRED` or `REPEATED`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Sub-fields of a `RECORD`.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// Declared precision of a parameterised `NUMERIC(P,S)`.
    #[serde(default)]
    pub precision: Option<String>,
    /// Declared scale of a parameterised `NUMERIC(P,S)`.
    #[serde(default)]
    pub scale: Option<String>,
}

impl Field {
    /// Whether the field is an array.
    fn repeated(&self) -> bool {
        self.mode.as_deref() == Some("REPEATED")
    }

    /// The type as a user writes it (`ARRAY<INT64>`, `STRUCT`, `NUMERIC`).
    pub(crate) fn sql_type(&self) -> String {
        let base = match self.type_name.to_ascii_uppercase().as_str() {
            "INTEGER" => "INT64".to_owned(),
            "FLOAT" => "FLOAT64".to_owned(),
            "BOOLEAN" => "BOOL".to_owned(),
            "RECORD" => "STRUCT".to_owned(),
            other => other.to_owned(),
        };
        if self.repeated() {
            format!("ARRAY<{base}>")
        } else {
            base
        }
    }
}

/// The kind of a BigQuery column and, for decimals, its `(precision, scale)`.
pub(crate) fn bigquery_kind(field: &Field) -> Result<(ColumnKind, Option<(u8, i8)>), Unsupported> {
    let unsupported = |fix: &'static str| Unsupported {
        sql_type: field.sql_type(),
        fix_template: fix,
    };
    let upper = field.type_name.to_ascii_uppercase();
    match upper.as_str() {
        "GEOGRAPHY" => return Err(unsupported("ST_ASTEXT({col}) AS {col}")),
        "INTERVAL" | "RANGE" => return Err(unsupported("CAST({col} AS STRING) AS {col}")),
        _ => {}
    }
    if field.repeated() {
        return Ok((ColumnKind::Json, None));
    }
    Ok(match upper.as_str() {
        "INTEGER" | "INT64" => (ColumnKind::Int, None),
        "FLOAT" | "FLOAT64" => (ColumnKind::Float64, None),
        "NUMERIC" | "DECIMAL" => {
            let declared = field
                .precision
                .as_deref()
                .and_then(|p| p.parse::<u8>().ok())
                .map(|p| {
                    (
                        p,
                        field
                            .scale
                            .as_deref()
                            .and_then(|s| s.parse::<i8>().ok())
                            .unwrap_or(0),
                    )
                });
            (ColumnKind::Decimal, Some(declared.unwrap_or((38, 9))))
        }
        "BIGNUMERIC" | "BIGDECIMAL" => {
            let declared = field
                .precision
                .as_deref()
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= 38)
                .map(|p| {
                    (
                        p,
                        field
                            .scale
                            .as_deref()
                            .and_then(|s| s.parse::<i8>().ok())
                            .unwrap_or(0),
                    )
                });
            (ColumnKind::Decimal, declared)
        }
        "BOOL" | "BOOLEAN" => (ColumnKind::Bool, None),
        "STRING" => (ColumnKind::Text, None),
        "BYTES" => (ColumnKind::Bytes, None),
        "DATE" => (ColumnKind::Date, None),
        "DATETIME" => (ColumnKind::Timestamp, None),
        "TIME" => (ColumnKind::Time, None),
        "TIMESTAMP" => (ColumnKind::TimestampTz, None),
        "JSON" => (ColumnKind::Json, None),
        "RECORD" | "STRUCT" => (ColumnKind::Json, None),
        _ => return Err(unsupported("CAST({col} AS STRING) AS {col}")),
    })
}

/// The shortest exact text of a decimal (`12.500000000` → `12.5`, `0E-9` → `0`).
pub(crate) fn normalise_decimal(text: &str) -> Result<String, String> {
    let d = BigDecimal::from_str(text.trim()).map_err(|_| format!("`{text}` is not a decimal"))?;
    let d = d.normalized();
    // `normalized` may leave a negative scale (1E+3): write it out plainly.
    let d = if d.fractional_digit_count() < 0 {
        d.with_scale(0)
    } else {
        d
    };
    Ok(d.to_plain_string())
}

/// A FLOAT64 value in either spelling.
fn parse_float(text: &str) -> Result<f64, String> {
    match text {
        "NaN" | "nan" => Ok(f64::NAN),
        "Infinity" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
        t => t
            .parse::<f64>()
            .map_err(|_| format!("`{t}` is not a FLOAT64")),
    }
}

/// Microseconds since the epoch of a TIMESTAMP value: integer microseconds, or
/// (float) seconds such as `1.704164645123456E9`, converted exactly.
pub(crate) fn timestamp_micros(text: &str) -> Result<i64, String> {
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    let seconds = BigDecimal::from_str(text).map_err(|_| format!("`{text}` is not a TIMESTAMP"))?;
    let micros = (seconds * BigDecimal::from(1_000_000))
        .with_scale_round(0, bigdecimal::RoundingMode::Floor);
    micros
        .to_plain_string()
        .parse::<i64>()
        .map_err(|_| format!("`{text}` is out of range"))
}

/// A DATETIME value (`2024-01-02T03:04:05.123456`, `T` or space).
pub(crate) fn parse_datetime(text: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .map_err(|_| format!("`{text}` is not a DATETIME"))
}

/// A DATE value.
pub(crate) fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| format!("`{text}` is not a DATE"))
}

/// The text of a scalar cell, `None` for NULL.
fn cell_text<'a>(cell: &'a Value, what: &str) -> Result<Option<&'a str>, String> {
    match cell {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_str())),
        other => Err(format!("expected a {what} as text, got {other}")),
    }
}

/// Append one cell (`v` of `{"v": …}`) of column `field` to `b`.
pub(crate) fn append(b: &mut ColBuilder, cell: &Value, field: &Field) -> Result<(), String> {
    if let ColBuilder::Str(sb, TextKind::Json) = b {
        // JSON, STRUCT and ARRAY columns.
        let upper = field.type_name.to_ascii_uppercase();
        if upper == "JSON" && !field.repeated() {
            match cell_text(cell, "JSON")? {
                None => sb.append_null(),
                Some(text) => sb.append_value(compact_json_keep_digits(text)?),
            }
        } else if cell.is_null() {
            sb.append_null();
        } else {
            sb.append_value(to_json(cell, field, field.repeated())?);
        }
        return Ok(());
    }
    let Some(text) = cell_text(cell, &field.type_name)? else {
        b.append_null();
        return Ok(());
    };
    match b {
        ColBuilder::Int(b) => b.append_value(
            text.parse::<i64>()
                .map_err(|_| format!("`{text}` is not an INT64"))?,
        ),
        ColBuilder::F64(b) => b.append_value(parse_float(text)?),
        ColBuilder::Bool(b) => b.append_value(match text {
            "true" | "TRUE" | "True" => true,
            "false" | "FALSE" | "False" => false,
            _ => return Err(format!("`{text}` is not a BOOL")),
        }),
        ColBuilder::Str(b, TextKind::Decimal) => b.append_value(normalise_decimal(text)?),
        ColBuilder::Str(b, _) => b.append_value(text),
        ColBuilder::Bytes(b) => {
            use base64::Engine as _;
            b.append_value(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| "BYTES value is not base64".to_owned())?,
            );
        }
        ColBuilder::Date(b) => b.append_value(decode::days(parse_date(text)?)?),
        ColBuilder::Time(b) => b.append_value(decode::time_micros(
            NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
                .map_err(|_| format!("`{text}` is not a TIME"))?,
        )),
        ColBuilder::Ts(b) => {
            if field.type_name.eq_ignore_ascii_case("DATETIME") {
                b.append_value(decode::micros(parse_datetime(text)?));
            } else {
                b.append_value(timestamp_micros(text)?);
            }
        }
        ColBuilder::UInt(_) | ColBuilder::F32(_) | ColBuilder::List { .. } => {
            return Err("bigquery has no column of this kind".to_owned());
        }
    }
    Ok(())
}

/// The JSON text of a STRUCT or ARRAY cell: an array for `REPEATED` (BigQuery
/// has no NULL array: a NULL array arrives, and is sent, as `[]`), an object of
/// field names for a STRUCT. Element values keep their digits: INT64, NUMERIC
/// and FLOAT64 become JSON numbers written as BigQuery sent them (NaN and
/// infinities, which JSON cannot hold, become `null`); BOOL a boolean; JSON
/// its value; everything else (text, dates, times, base64 bytes) a string, with
/// TIMESTAMP as ISO-8601 UTC.
pub(crate) fn to_json(cell: &Value, field: &Field, repeated: bool) -> Result<String, String> {
    let mut out = String::new();
    write_json(&mut out, cell, field, repeated)?;
    Ok(out)
}

/// [`to_json`] into `out`.
fn write_json(out: &mut String, cell: &Value, field: &Field, repeated: bool) -> Result<(), String> {
    if repeated {
        out.push('[');
        if let Value::Array(items) = cell {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item.get("v").unwrap_or(&Value::Null), field, false)?;
            }
        }
        out.push(']');
        return Ok(());
    }
    if cell.is_null() {
        out.push_str("null");
        return Ok(());
    }
    let upper = field.type_name.to_ascii_uppercase();
    if matches!(upper.as_str(), "RECORD" | "STRUCT") {
        let values = cell
            .get("f")
            .and_then(Value::as_array)
            .ok_or("STRUCT value without `f`")?;
        out.push('{');
        for (i, (sub, value)) in field.fields.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(sub.name.clone()).to_string());
            out.push(':');
            write_json(
                out,
                value.get("v").unwrap_or(&Value::Null),
                sub,
                sub.repeated(),
            )?;
        }
        out.push('}');
        return Ok(());
    }
    let text = cell_text(cell, &field.type_name)?.unwrap_or_default();
    match upper.as_str() {
        "INTEGER" | "INT64" => {
            text.parse::<i64>()
                .map_err(|_| format!("`{text}` is not an INT64"))?;
            out.push_str(text);
        }
        "NUMERIC" | "DECIMAL" | "BIGNUMERIC" | "BIGDECIMAL" => {
            out.push_str(&normalise_decimal(text)?);
        }
        "FLOAT" | "FLOAT64" => {
            let f = parse_float(text)?;
            if f.is_finite() {
                out.push_str(
                    &serde_json::Number::from_f64(f).map_or("null".to_owned(), |n| n.to_string()),
                );
            } else {
                out.push_str("null");
            }
        }
        "BOOL" | "BOOLEAN" => out.push_str(if text.eq_ignore_ascii_case("true") {
            "true"
        } else {
            "false"
        }),
        "JSON" => out.push_str(&compact_json_keep_digits(text)?),
        "TIMESTAMP" => {
            let micros = timestamp_micros(text)?;
            let t =
                chrono::DateTime::from_timestamp_micros(micros).ok_or("TIMESTAMP out of range")?;
            out.push_str(
                &Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()).to_string(),
            );
        }
        _ => out.push_str(&Value::String(text.to_owned()).to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array as _, AsArray as _};
    use serde_json::json;

    use super::*;

    fn field(t: &str, mode: Option<&str>) -> Field {
        Field {
            name: "c".into(),
            type_name: t.into(),
            mode: mode.map(Into::into),
            fields: Vec::new(),
            precision: None,
            scale: None,
        }
    }

    #[test]
    fn type_table() {
        let kind = |t: &str, m| bigquery_kind(&field(t, m)).map(|k| k.0);
        assert_eq!(kind("INTEGER", None), Ok(ColumnKind::Int));
        assert_eq!(kind("FLOAT", None), Ok(ColumnKind::Float64));
        assert_eq!(
            bigquery_kind(&field("NUMERIC", None)).unwrap(),
            (ColumnKind::Decimal, Some((38, 9)))
        );
        assert_eq!(
            bigquery_kind(&field("BIGNUMERIC", None)).unwrap(),
            (ColumnKind::Decimal, None)
        );
        assert_eq!(kind("BOOLEAN", None), Ok(ColumnKind::Bool));
        assert_eq!(kind("STRING", None), Ok(ColumnKind::Text));
        assert_eq!(kind("BYTES", None), Ok(ColumnKind::Bytes));
        assert_eq!(kind("DATE", None), Ok(ColumnKind::Date));
        assert_eq!(kind("DATETIME", None), Ok(ColumnKind::Timestamp));
        assert_eq!(kind("TIME", None), Ok(ColumnKind::Time));
        assert_eq!(kind("TIMESTAMP", None), Ok(ColumnKind::TimestampTz));
        assert_eq!(kind("JSON", None), Ok(ColumnKind::Json));
        assert_eq!(kind("RECORD", None), Ok(ColumnKind::Json));
        assert_eq!(kind("INTEGER", Some("REPEATED")), Ok(ColumnKind::Json));
        assert_eq!(
            field("INTEGER", Some("REPEATED")).sql_type(),
            "ARRAY<INT64>"
        );
        let geo = bigquery_kind(&field("GEOGRAPHY", None)).unwrap_err();
        assert_eq!(geo.fix_for("g"), "ST_ASTEXT(g) AS g");
        assert!(bigquery_kind(&field("INTERVAL", None)).is_err());
    }

    #[test]
    fn both_wire_spellings_decode_the_same() {
        assert_eq!(normalise_decimal("12.500000000").unwrap(), "12.5");
        assert_eq!(normalise_decimal("12.5").unwrap(), "12.5");
        assert_eq!(normalise_decimal("0E-9").unwrap(), "0");
        assert_eq!(normalise_decimal("1000").unwrap(), "1000");
        assert_eq!(normalise_decimal("-0.000000001").unwrap(), "-0.000000001");
        assert!(parse_float("nan").unwrap().is_nan());
        assert!(parse_float("NaN").unwrap().is_nan());
        assert_eq!(parse_float("inf").unwrap(), f64::INFINITY);
        assert_eq!(parse_float("-Infinity").unwrap(), f64::NEG_INFINITY);
        assert_eq!(
            timestamp_micros("1704164645123456").unwrap(),
            1_704_164_645_123_456
        );
        assert_eq!(
            timestamp_micros("1.704164645123456E9").unwrap(),
            1_704_164_645_123_456
        );
        assert_eq!(timestamp_micros("-1.5").unwrap(), -1_500_000);
    }

    #[test]
    fn arrays_and_structs_become_json() {
        let mut s = field("RECORD", None);
        s.fields = vec![
            Field {
                name: "n".into(),
                ..field("INTEGER", None)
            },
            Field {
                name: "tags".into(),
                ..field("STRING", Some("REPEATED"))
            },
            Field {
                name: "x".into(),
                ..field("FLOAT", None)
            },
        ];
        let cell = json!({"f": [{"v": "9007199254740993"}, {"v": [{"v": "a"}, {"v": "b\""}]}, {"v": "nan"}]});
        assert_eq!(
            to_json(&cell, &s, false).unwrap(),
            "{\"n\":9007199254740993,\"tags\":[\"a\",\"b\\\"\"],\"x\":null}"
        );
        let arr = field("NUMERIC", Some("REPEATED"));
        assert_eq!(
            to_json(&json!([{"v": "1.500000000"}, {"v": "0E-9"}]), &arr, true).unwrap(),
            "[1.5,0]"
        );
        assert_eq!(to_json(&json!([]), &arr, true).unwrap(), "[]");
        let mut b = ColBuilder::new(&ColumnKind::Json, 1);
        append(&mut b, &json!("{\"a\": 1.10}"), &field("JSON", None)).unwrap();
        append(&mut b, &Value::Null, &field("JSON", None)).unwrap();
        let out = b.finish().unwrap();
        assert_eq!(out.as_string::<i32>().value(0), "{\"a\":1.10}");
        assert!(out.is_null(1));
    }
}
