//! Entry points for the fuzz targets in `fuzz/` (issue 16): the decoders of
//! untrusted warehouse bytes, reached without a database. Not part of the
//! supported API; each function only wraps what a read does.

use tokio::sync::mpsc;

use super::chunker::Chunker;
use super::decode::{self, ColBuilder};
use super::{pg_copy, ColumnInfo, ColumnKind};

/// Feed `data` to the binary COPY parser in pieces of `step` bytes, as the
/// socket would, decoding into `columns`. Returns the rows decoded, or the
/// error a read would end with. Never panics, whatever the bytes.
pub fn copy_binary(columns: &[ColumnInfo], data: &[u8], step: usize) -> Result<u64, String> {
    let step = step.max(1);
    // Enough room that the decoder never waits for a reader: at most one
    // chunk of 1,000 rows per 2 bytes of input.
    let (tx, mut rx) = mpsc::channel(data.len() / 2000 + 4);
    let (blocks_tx, blocks) = mpsc::channel(data.len() / step + 2);
    for piece in data.chunks(step) {
        blocks_tx
            .try_send(piece.to_vec())
            .map_err(|e| e.to_string())?;
    }
    drop(blocks_tx);
    let (rows, result) = pg_copy::decode_blocks(blocks, Chunker::new("fuzz", columns, 1000, tx));
    while rx.try_recv().is_ok() {}
    result.map(|_| rows).map_err(|e| e.to_string())
}

/// Decode one PostgreSQL binary value of `kind` (arrays included) and build
/// its Arrow array.
pub fn pg_value(kind: &ColumnKind, value: Option<&[u8]>) -> Result<(), String> {
    let mut builder = ColBuilder::new(kind, 1);
    decode::pg_append(&mut builder, value)?;
    builder.finish().map(|_| ())
}

/// The exact text of a binary `NUMERIC`.
pub fn pg_numeric(buf: &[u8]) -> Result<String, String> {
    decode::pg_numeric_text(buf)
}

/// JSON text without the whitespace outside strings, digits kept.
pub fn compact_json(text: &str) -> Result<String, String> {
    decode::compact_json(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_column() -> Vec<ColumnInfo> {
        vec![ColumnInfo {
            name: "t".into(),
            sql_type: "TEXT".into(),
            kind: ColumnKind::Text,
            decimal: None,
        }]
    }

    fn stream(values: &[&[u8]]) -> Vec<u8> {
        let mut v = b"PGCOPY\n\xff\r\n\0".to_vec();
        v.extend(0i32.to_be_bytes());
        v.extend(0i32.to_be_bytes());
        for value in values {
            v.extend(1i16.to_be_bytes());
            v.extend(i32::try_from(value.len()).unwrap().to_be_bytes());
            v.extend_from_slice(value);
        }
        v.extend((-1i16).to_be_bytes());
        v
    }

    #[test]
    fn the_entry_points_decode_good_bytes_and_refuse_bad_ones() {
        let data = stream(&[b"a", b"Zo\xc3\xab", b"\xff\xfe"]);
        for step in [1, 3, 1000] {
            assert_eq!(copy_binary(&text_column(), &data, step), Ok(3));
        }
        assert!(copy_binary(&text_column(), b"not a copy stream", 4).is_err());
        assert!(copy_binary(&text_column(), &data[..data.len() - 1], 7).is_err());
        // NUMERIC 12.50: 2 digit groups (12, 5000), weight 0, positive, dscale 2.
        let mut n = Vec::new();
        for part in [2i16, 0, 0, 2, 12, 5000] {
            n.extend(part.to_be_bytes());
        }
        assert_eq!(pg_numeric(&n).as_deref(), Ok("12.50"));
        assert!(pg_numeric(&[1]).is_err());
        assert!(pg_value(&ColumnKind::Int, Some(&[0, 0, 0, 0, 0, 0, 0, 7])).is_ok());
        assert!(pg_value(&ColumnKind::Int, Some(&[1, 2, 3])).is_err());
        assert_eq!(
            compact_json("{ \"a\" : [1 , 2] }").as_deref(),
            Ok("{\"a\":[1,2]}")
        );
        assert!(compact_json("{").is_err());
    }
}
