//! The few JSON writing primitives the batch encoder needs.
//!
//! Batches are written straight into a byte buffer instead of through
//! `serde_json::Value`, so a row costs no intermediate tree and the encoder knows
//! every batch's exact size while packing it.

use std::io::Write as _;

use crate::mapping::convert::Value;

/// Append `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Append a converted value (numbers are finite by construction).
pub fn write_value(out: &mut Vec<u8>, value: &Value<'_>) {
    match value {
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // `write!` into a Vec cannot fail, and formats without a temporary String.
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            // Unreachable for converted values; `null` keeps the JSON valid regardless.
            None => out.extend_from_slice(b"null"),
        },
        Value::Str(s) => write_str(out, s),
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, item);
            }
            out.push(b']');
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn strings_round_trip_through_serde_json() {
        for s in [
            "plain",
            "quote \" and \\ backslash",
            "new\nline\ttab\r",
            "\u{1}\u{1f}",
            "emoji 🎉 ünïcödé",
            "",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn values() {
        let mut out = Vec::new();
        write_value(&mut out, &Value::List(vec!["a".into(), "\"b\"".into()]));
        out.push(b' ');
        write_value(&mut out, &Value::Float(1e300));
        out.push(b' ');
        write_value(&mut out, &Value::Float(0.1));
        out.push(b' ');
        write_value(&mut out, &Value::Str(Cow::Borrowed("x")));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"["a","\"b\""] 1e+300 0.1 "x""#
        );
    }
}
