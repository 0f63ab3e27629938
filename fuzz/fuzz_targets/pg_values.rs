//! One PostgreSQL binary value (numeric, arrays, every scalar kind): never
//! panics; a NUMERIC that decodes is exact decimal text or NaN/±Infinity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsync::source::fuzzing::{pg_numeric, pg_value};
use wsync::source::ColumnKind;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = pg_numeric(data) {
        let digits = text.strip_prefix('-').unwrap_or(&text);
        let plain = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && digits.bytes().filter(|&b| b == b'.').count() <= 1;
        assert!(
            plain || matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity"),
            "{text:?}"
        );
    }
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let kinds = [
        ColumnKind::Bool,
        ColumnKind::Int,
        ColumnKind::Float32,
        ColumnKind::Float64,
        ColumnKind::Decimal,
        ColumnKind::Text,
        ColumnKind::Uuid,
        ColumnKind::Json,
        ColumnKind::Bytes,
        ColumnKind::Date,
        ColumnKind::Time,
        ColumnKind::Timestamp,
        ColumnKind::TimestampTz,
        ColumnKind::List(Box::new(ColumnKind::Decimal)),
        ColumnKind::List(Box::new(ColumnKind::TimestampTz)),
        ColumnKind::List(Box::new(ColumnKind::Text)),
    ];
    let kind = &kinds[usize::from(selector) % kinds.len()];
    let _ = pg_value(kind, Some(value));
});
