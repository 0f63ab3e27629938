//! PostgreSQL fast path: `COPY (<query>) TO STDOUT (FORMAT binary)` decoded
//! straight into the chunk's Arrow builders.
//!
//! Why: the row protocol costs a `DataRow` message, a row object and a
//! per-column lookup for every row; COPY streams the same binary values
//! (PostgreSQL's `typsend` encoding, the one [`decode::pg_append`] already reads)
//! with a 2-byte field count and a 4-byte length per value, so decoding is a scan.
//!
//! How the work is split: the caller's task only moves bytes off the socket into
//! 64 KiB blocks; a blocking thread parses the blocks into chunks and sends them
//! into the extraction channel. Two bounded channels (blocks, then chunks) keep
//! memory flat and pass backpressure back to the socket, and decoding runs on the
//! second core while the run maps and sends the previous chunk.
//!
//! sqlx leaves the connection out of step with the server when a COPY is
//! refused before it starts (an unread `ReadyForQuery`) or when its stream is
//! dropped before the end (unread rows). The outcome says so
//! ([`CopyEnd::Refused`], `abandoned`) and the reader then replaces the
//! connection rather than use it again.

use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use tokio::sync::mpsc;

use std::time::Duration;

use super::chunker::Chunker;
use super::decode;
use super::{SourceError, MAX_VALUE_BYTES};

/// Bytes moved off the socket per block handed to the decoding thread.
const BLOCK_BYTES: usize = 64 * 1024;
/// Blocks queued for the decoding thread (with one being decoded and one being
/// filled, at most ~256 KiB of raw data is in flight).
const QUEUED_BLOCKS: usize = 2;
/// The 11-byte signature that opens a binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// How a COPY read ended.
#[derive(Debug)]
pub(crate) enum CopyEnd {
    /// The server refused the statement before sending any row. The connection
    /// must be replaced before it is used again.
    Refused(sqlx::Error),
    /// Reading stopped. `rows` were decoded and sent; `abandoned` means the COPY
    /// stream was left unread (the receiver went away, or `result` is a decode
    /// error), so the connection must be replaced.
    Ended {
        /// Rows decoded and handed to the channel.
        rows: u64,
        /// The stream was not read to its end.
        abandoned: bool,
        /// `Ok` when every row was read (or the receiver stopped reading), else
        /// the first failure: the server's error first, then a decode error.
        result: Result<(), CopyFailure>,
    },
}

/// Why a started COPY failed.
#[derive(Debug)]
pub(crate) enum CopyFailure {
    /// The server (or the socket) reported an error mid-stream; the connection
    /// is back in step (sqlx read up to `ReadyForQuery`).
    Server(sqlx::Error),
    /// A value could not be decoded, or the stream was malformed.
    Decode(SourceError),
}

/// Whether a refusal means this server cannot do `COPY … TO STDOUT (FORMAT
/// binary)` at all (a PostgreSQL-protocol database that is not PostgreSQL), as
/// opposed to a fault in the query that the row protocol would hit too.
pub(crate) fn is_unsupported(err: &sqlx::Error) -> bool {
    let Some(db) = err.as_database_error() else {
        return false;
    };
    // 0A000 feature_not_supported; 42601 syntax_error (a parser without COPY or
    // its options). Were it the model's own syntax error after all, the row
    // protocol it falls back to reports it with the same message.
    // The model itself was parsed by the probe, so a syntax error here is the
    // COPY around it.
    matches!(db.code().as_deref(), Some("0A000" | "42601"))
}

/// The COPY statement for an extraction query whose parameters are inlined.
pub(crate) fn statement(query_sql: &str) -> String {
    format!("COPY (\n{query_sql}\n) TO STDOUT (FORMAT binary)")
}

/// Run `statement` (from [`statement`]) on `conn`, which is inside the read's
/// transaction, and decode every row into `chunker` on a blocking thread. When
/// the server sends nothing for `read_timeout`, the read fails (a half-open
/// connection would otherwise hang it forever) and the stream is abandoned.
pub(crate) async fn copy_out(
    conn: &mut PgConnection,
    statement: &str,
    chunker: Chunker,
    read_timeout: Duration,
) -> CopyEnd {
    let model = chunker.model().to_owned();
    let started = tokio::time::timeout(read_timeout, conn.copy_out_raw(statement)).await;
    let mut stream = match started {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return CopyEnd::Refused(e),
        Err(_) => return CopyEnd::Refused(super::reader::read_timed_out(read_timeout)),
    };
    let (block_tx, block_rx) = mpsc::channel::<Vec<u8>>(QUEUED_BLOCKS);
    let decoder = tokio::task::spawn_blocking(move || decode_blocks(block_rx, chunker));

    let mut block = Vec::with_capacity(BLOCK_BYTES);
    let mut server_error = None;
    // Whether sqlx read the stream up to `ReadyForQuery` (its end, or an error).
    let mut read_to_end = false;
    loop {
        let Ok(next) = tokio::time::timeout(read_timeout, stream.try_next()).await else {
            // Not read to its end: the caller replaces the connection.
            server_error = Some(super::reader::read_timed_out(read_timeout));
            break;
        };
        match next {
            Ok(Some(data)) => {
                // PostgreSQL sends a row per message, so one message may be a
                // 100 MB value: it is handed on in blocks, never copied whole.
                let mut rest: &[u8] = &data;
                let mut stopped = false;
                while !rest.is_empty() {
                    let n = (BLOCK_BYTES - block.len().min(BLOCK_BYTES - 1)).min(rest.len());
                    block.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if block.len() >= BLOCK_BYTES {
                        let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK_BYTES));
                        if block_tx.send(full).await.is_err() {
                            // The decoder stopped: receiver gone or a decode error.
                            stopped = true;
                            break;
                        }
                    }
                }
                if stopped {
                    break;
                }
            }
            Ok(None) => {
                read_to_end = true;
                break;
            }
            Err(e) => {
                server_error = Some(e);
                read_to_end = true;
                break;
            }
        }
    }
    if server_error.is_none() && !block.is_empty() {
        // Ignored when the decoder has stopped: its outcome says why.
        let _ = block_tx.send(block).await;
    }
    drop(stream);
    drop(block_tx);
    let (rows, decoded) = match decoder.await {
        Ok(outcome) => outcome,
        Err(join) => (
            0,
            Err(SourceError::Decode {
                model,
                column: String::new(),
                row: 0,
                message: format!("the COPY decoding thread ended abnormally: {join}"),
            }),
        ),
    };
    let result = match (server_error, decoded) {
        (Some(e), _) => Err(CopyFailure::Server(e)),
        (None, Err(e)) => Err(CopyFailure::Decode(e)),
        (None, Ok(_)) => Ok(()),
    };
    CopyEnd::Ended {
        rows,
        abandoned: !read_to_end,
        result,
    }
}

/// What the decoding thread reports: rows sent, and `Ok(true)` when the stream
/// was complete, `Ok(false)` when the receiver went away first.
pub(crate) type Decoded = (u64, Result<bool, SourceError>);

/// The decoding thread: parse blocks until the channel closes.
pub(crate) fn decode_blocks(mut blocks: mpsc::Receiver<Vec<u8>>, mut chunker: Chunker) -> Decoded {
    let mut parser = Parser::default();
    while let Some(block) = blocks.blocking_recv() {
        match parser.feed(&block, &mut chunker) {
            Ok(true) => {}
            // Receiver gone: stop; the caller abandons the stream.
            Ok(false) => return (chunker.rows(), Ok(false)),
            Err(e) => return (chunker.rows(), Err(e)),
        }
    }
    if let Err(message) = parser.check_complete() {
        // A server error is what ends such a stream; the caller reports it first.
        return (chunker.rows(), Err(stream_error(&chunker, message)));
    }
    let rows = chunker.rows();
    match chunker.finish_blocking() {
        Ok(rows) => (rows, Ok(true)),
        Err(e) => (rows, Err(e)),
    }
}

/// Where the parser is in the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the signature, flags and header extension.
    #[default]
    Header,
    /// Reading tuples.
    Tuples,
    /// After the `-1` trailer.
    Done,
}

/// An incremental parser of the binary COPY format, one field at a time. A
/// field that is not all there yet stays in `pending` until the next block; a
/// field larger than [`MAX_VALUE_BYTES`] is never held: its row is rejected
/// ([`Chunker::reject_value`]) and its bytes are skipped as they arrive.
#[derive(Debug, Default)]
struct Parser {
    stage: Stage,
    /// Bytes of an incomplete field (or header) carried to the next block.
    pending: Vec<u8>,
    /// `(fields, next)` of the tuple being decoded: its field count and the
    /// index of the next field to read; `None` between tuples.
    tuple: Option<(usize, usize)>,
    /// Bytes of an oversized field still to skip.
    skip: usize,
    /// Wire bytes of the tuple being decoded so far.
    row_bytes: usize,
}

impl Parser {
    /// Decode what `pending ++ block` holds. `Ok(false)` = the receiver is gone.
    fn feed(&mut self, block: &[u8], chunker: &mut Chunker) -> Result<bool, SourceError> {
        if self.pending.is_empty() {
            let (used, more) = self.parse(block, chunker)?;
            self.pending.extend_from_slice(&block[used..]);
            Ok(more)
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(block);
            let (used, more) = self.parse(&buf, chunker)?;
            buf.drain(..used);
            self.pending = buf;
            Ok(more)
        }
    }

    /// Parse from `buf`; returns the bytes consumed and whether to go on.
    fn parse(&mut self, buf: &[u8], chunker: &mut Chunker) -> Result<(usize, bool), SourceError> {
        let mut pos = 0;
        if self.stage == Stage::Header {
            match header_len(buf).map_err(|m| stream_error(chunker, m))? {
                Some(n) => {
                    pos = n;
                    self.stage = Stage::Tuples;
                }
                None => return Ok((0, true)),
            }
        }
        while self.stage == Stage::Tuples {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            let Some((fields, next)) = self.tuple else {
                let Some(count) = read_i16(buf, pos) else {
                    break;
                };
                pos += 2;
                if count == -1 {
                    self.stage = Stage::Done;
                    break;
                }
                let fields = usize::try_from(count).map_err(|_| {
                    stream_error(chunker, format!("a COPY tuple has {count} fields"))
                })?;
                chunker.check_width(fields)?;
                self.tuple = Some((fields, 0));
                self.row_bytes = 2;
                continue;
            };
            if next == fields {
                self.tuple = None;
                if !chunker.row_done_blocking(self.row_bytes)? {
                    return Ok((pos, false));
                }
                continue;
            }
            let Some(len) = read_i32(buf, pos) else {
                break;
            };
            let Ok(len) = usize::try_from(len) else {
                // -1 is NULL (any negative length is read as NULL, as PostgreSQL does).
                pos += 4;
                self.row_bytes += 4;
                // Past the builders is only the server's size report: NULL, none.
                if let Some(b) = chunker.builders.get_mut(next) {
                    b.append_null();
                }
                self.tuple = Some((fields, next + 1));
                continue;
            };
            if len > MAX_VALUE_BYTES {
                pos += 4;
                self.row_bytes += 4 + len;
                chunker.reject_value(next, &decode::too_large(len));
                self.skip = len;
                self.tuple = Some((fields, next + 1));
                continue;
            }
            let end = pos + 4 + len;
            if end > buf.len() {
                break;
            }
            let value = &buf[pos + 4..end];
            match chunker.builders.get_mut(next) {
                Some(builder) => {
                    if let Err(m) = decode::pg_append(builder, Some(value)) {
                        chunker.reject_value(next, &m);
                    }
                }
                // `check_width` allows one field past the builders: the report.
                None => chunker.size_report(value),
            }
            self.row_bytes += 4 + len;
            pos = end;
            self.tuple = Some((fields, next + 1));
        }
        if self.stage == Stage::Done {
            // Anything after the trailer is ignored, as PostgreSQL's own reader does.
            return Ok((buf.len(), true));
        }
        Ok((pos, true))
    }

    /// At the end of the stream: the trailer was read and nothing is left over.
    fn check_complete(&self) -> Result<(), String> {
        match self.stage {
            Stage::Done => Ok(()),
            Stage::Header => Err("the COPY stream ended before its header".to_owned()),
            Stage::Tuples => Err(format!(
                "the COPY stream ended without its trailer ({} bytes of an incomplete row)",
                self.pending.len() + self.skip
            )),
        }
    }
}

/// A malformed COPY stream (not one bad value): fails the read.
fn stream_error(chunker: &Chunker, message: String) -> SourceError {
    SourceError::Decode {
        model: chunker.model().to_owned(),
        column: String::new(),
        row: chunker.rows() + 1,
        message,
    }
}

/// Length of the binary COPY header at the start of `buf`, `None` if it is not
/// all there yet.
fn header_len(buf: &[u8]) -> Result<Option<usize>, String> {
    // Signature, 4-byte flags, 4-byte extension length, extension.
    if buf.len() < SIGNATURE.len() + 8 {
        return Ok(None);
    }
    if &buf[..SIGNATURE.len()] != SIGNATURE {
        return Err("the COPY stream does not start with the binary signature".to_owned());
    }
    let flags = read_i32(buf, SIGNATURE.len()).unwrap_or(0);
    // Bit 16 set means OIDs are included, which `COPY (query)` never does.
    if flags & (1 << 16) != 0 {
        return Err("the COPY stream includes OIDs, which wsync does not read".to_owned());
    }
    let extension = read_i32(buf, SIGNATURE.len() + 4).unwrap_or(0);
    let extension = usize::try_from(extension).map_err(|_| "negative COPY header extension")?;
    let total = SIGNATURE.len() + 8 + extension;
    Ok((buf.len() >= total).then_some(total))
}

fn read_i16(buf: &[u8], at: usize) -> Option<i16> {
    let bytes = buf.get(at..at + 2)?;
    Some(i16::from_be_bytes([bytes[0], bytes[1]]))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at + 4)?;
    Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array as _, Int64Array, StringArray};

    use super::*;
    use crate::source::{ColumnInfo, ColumnKind};

    fn columns() -> Vec<ColumnInfo> {
        [("id", ColumnKind::Int), ("name", ColumnKind::Text)]
            .into_iter()
            .map(|(name, kind)| ColumnInfo {
                name: name.into(),
                sql_type: "X".into(),
                kind,
                decimal: None,
            })
            .collect()
    }

    /// A binary COPY stream of `(id int8, name text)` rows.
    fn stream(rows: &[(i64, Option<&str>)]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend(0i32.to_be_bytes());
        v.extend(0i32.to_be_bytes());
        for (id, name) in rows {
            v.extend(2i16.to_be_bytes());
            v.extend(8i32.to_be_bytes());
            v.extend(id.to_be_bytes());
            match name {
                Some(n) => {
                    v.extend(i32::try_from(n.len()).unwrap().to_be_bytes());
                    v.extend(n.as_bytes());
                }
                None => v.extend((-1i32).to_be_bytes()),
            }
        }
        v.extend((-1i16).to_be_bytes());
        v
    }

    /// Feed `data` in pieces of `step` bytes; collect what comes out.
    fn run(data: &[u8], step: usize) -> (Decoded, Vec<arrow::array::RecordBatch>) {
        let (tx, mut rx) = mpsc::channel(100);
        let (btx, brx) = mpsc::channel(data.len() / step + 2);
        for piece in data.chunks(step) {
            btx.try_send(piece.to_vec()).unwrap();
        }
        drop(btx);
        let cols = columns();
        let decoded = decode_blocks(brx, Chunker::new("m", &cols, 2, tx));
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(b);
        }
        (decoded, out)
    }

    #[test]
    fn tuples_split_anywhere_decode_the_same() {
        let data = stream(&[(1, Some("a")), (2, None), (-3, Some("Zoë"))]);
        for step in [1, 2, 3, 7, 19, data.len()] {
            let ((rows, done), batches) = run(&data, step);
            assert_eq!(rows, 3, "step {step}");
            assert!(done.unwrap(), "step {step}");
            assert_eq!(
                batches
                    .iter()
                    .map(arrow::array::RecordBatch::num_rows)
                    .collect::<Vec<_>>(),
                vec![2, 1]
            );
            let ids = batches[1].column(0).as_any().downcast_ref::<Int64Array>();
            assert_eq!(ids.unwrap().value(0), -3);
            let names = batches[0].column(1).as_any().downcast_ref::<StringArray>();
            assert!(names.unwrap().is_null(1));
        }
    }

    /// A binary COPY stream of `(id int8, name text)` rows with raw name bytes.
    fn raw_stream(rows: &[(i64, &[u8])]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend(0i32.to_be_bytes());
        v.extend(0i32.to_be_bytes());
        for (id, name) in rows {
            v.extend(2i16.to_be_bytes());
            v.extend(8i32.to_be_bytes());
            v.extend(id.to_be_bytes());
            v.extend(i32::try_from(name.len()).unwrap().to_be_bytes());
            v.extend(*name);
        }
        v.extend((-1i16).to_be_bytes());
        v
    }

    fn reasons(batches: &[arrow::array::RecordBatch]) -> Vec<Option<String>> {
        batches
            .iter()
            .flat_map(|b| {
                let r = crate::source::rejected_reasons(b, 2).expect("reasons column");
                r.iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn one_bad_value_rejects_its_row_not_the_run() {
        let data = raw_stream(&[(1, b"ok"), (2, &[0x66, 0xff]), (3, b"fine")]);
        for step in [1, 5, data.len()] {
            let ((rows, done), batches) = run(&data, step);
            assert_eq!(rows, 3, "step {step}");
            assert!(done.unwrap(), "step {step}");
            let reasons = reasons(&batches);
            assert_eq!(reasons[0], None);
            let bad = reasons[1].as_deref().expect("row 2 rejected");
            assert!(bad.starts_with("column `name`: invalid utf-8"), "{bad}");
            assert_eq!(reasons[2], None);
            let names = batches[0].column(1).as_any().downcast_ref::<StringArray>();
            assert!(names.unwrap().is_null(1), "the bad value is NULL");
            let names = batches[1].column(1).as_any().downcast_ref::<StringArray>();
            assert_eq!(names.unwrap().value(0), "fine");
        }
    }

    #[test]
    fn an_oversized_value_is_skipped_as_it_streams_and_its_row_rejected() {
        let big = vec![b'x'; MAX_VALUE_BYTES + 10];
        let data = raw_stream(&[(1, &big), (2, b"after")]);
        let (tx, mut rx) = mpsc::channel(100);
        let (btx, brx) = mpsc::channel(data.len() / BLOCK_BYTES + 2);
        for piece in data.chunks(BLOCK_BYTES) {
            btx.try_send(piece.to_vec()).unwrap();
        }
        drop(btx);
        let cols = columns();
        let mut parser = Parser::default();
        let mut chunker = Chunker::new("m", &cols, 2, tx);
        let mut blocks = brx;
        let mut most_pending = 0;
        while let Ok(block) = blocks.try_recv() {
            assert!(parser.feed(&block, &mut chunker).unwrap());
            most_pending = most_pending.max(parser.pending.capacity());
        }
        parser.check_complete().unwrap();
        assert_eq!(chunker.finish_blocking().unwrap(), 2);
        assert!(most_pending < 4 * BLOCK_BYTES, "held {most_pending} bytes");
        let mut batches = Vec::new();
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
        }
        let reasons = reasons(&batches);
        let bad = reasons[0].as_deref().expect("row 1 rejected");
        assert!(
            bad.contains("column `name`: a value of 8388618 bytes"),
            "{bad}"
        );
        assert_eq!(reasons[1], None);
        let names = batches[0].column(1).as_any().downcast_ref::<StringArray>();
        assert_eq!(names.unwrap().value(1), "after");
    }

    #[test]
    fn truncated_stream_is_an_error_not_a_short_read() {
        let data = stream(&[(1, Some("abc"))]);
        let ((_, done), _) = run(&data[..data.len() - 4], 5);
        let err = done.unwrap_err().to_string();
        assert!(err.contains("without its trailer"), "{err}");
        let ((_, done), _) = run(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", 64);
        assert!(done.unwrap_err().to_string().contains("signature"));
    }
}
