//! PostgreSQL's binary COPY stream, as the socket delivers it: any bytes, cut
//! anywhere, into columns of every kind. Never panics; a stream that decodes
//! decodes the same however it was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsync::source::fuzzing::copy_binary;
use wsync::source::{ColumnInfo, ColumnKind};

fn column(name: &str, kind: ColumnKind) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        sql_type: "T".into(),
        kind,
        decimal: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kinds = [
        ColumnKind::Bool,
        ColumnKind::Int,
        ColumnKind::Float64,
        ColumnKind::Decimal,
        ColumnKind::Text,
        ColumnKind::Uuid,
        ColumnKind::Json,
        ColumnKind::Bytes,
        ColumnKind::Date,
        ColumnKind::Time,
        ColumnKind::TimestampTz,
        ColumnKind::List(Box::new(ColumnKind::Int)),
        ColumnKind::List(Box::new(ColumnKind::Text)),
    ];
    // The first byte picks two column kinds, so tuples of two fields are
    // checked against every pair over time.
    let a = kinds[usize::from(selector) % kinds.len()].clone();
    let b = kinds[usize::from(selector / 16) % kinds.len()].clone();
    let columns = vec![column("a", a), column("b", b)];
    let whole = copy_binary(&columns, rest, rest.len().max(1));
    let bytewise = copy_binary(&columns, rest, 1);
    assert_eq!(whole.is_ok(), bytewise.is_ok(), "{whole:?} vs {bytewise:?}");
    if let (Ok(x), Ok(y)) = (&whole, &bytewise) {
        assert_eq!(x, y);
    }
});
