//! [`Chunker`]: the Arrow builders of the chunk being filled, and the sending of
//! full chunks into the extraction channel.
//!
//! Every read path (the row protocol of each driver and PostgreSQL's binary COPY)
//! decodes into the same builders, so a chunk is bounded by `chunk_rows` rows and
//! by [`CHUNK_BYTES`] bytes, and a full channel holds the reader back whichever
//! path produced it. The chunker owns its inputs so it can also live on the COPY
//! decoding thread; it sends with `send().await` on the runtime and with
//! `blocking_send` on that thread.
//!
//! A value that cannot be decoded does not stop the read: the reader calls
//! [`Chunker::reject_value`], the value becomes NULL, and the row's reason goes
//! into the reserved last column [`REJECTED_COLUMN`](super::REJECTED_COLUMN),
//! where the mapper finds it and rejects the row.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringBuilder};
use arrow::datatypes::SchemaRef;
use tokio::sync::mpsc::Sender;

use super::decode::ColBuilder;
use super::{chunk_schema, ColumnInfo, SourceError, CHUNK_BYTES};

/// Builders for the current chunk, and the sending of full chunks.
pub(crate) struct Chunker {
    /// Model name, for errors.
    model: String,
    /// The probed columns.
    columns: Arc<[ColumnInfo]>,
    /// Schema shared by every batch.
    schema: SchemaRef,
    /// One builder per column, recreated for every chunk.
    pub(crate) builders: Vec<ColBuilder>,
    /// Rows per batch.
    chunk_rows: usize,
    /// Rows in the current chunk.
    in_chunk: usize,
    /// Rows read in total (also the 1-based number of the row being decoded, minus one).
    rows: u64,
    /// Where batches go.
    tx: Sender<RecordBatch>,
    /// The reserved last column: why each row of the chunk was rejected, if it was.
    rejected: StringBuilder,
    /// Why the row being decoded is rejected, once one of its values failed.
    row_reason: Option<String>,
    /// Rows decoded since the chunk's size was last measured.
    since_measured: usize,
    /// Whether rows carry one more field, the server's size report (see
    /// [`sql::size_guard`](super::sql::size_guard)).
    size_report: bool,
}

/// Rows between two measurements of a chunk's bytes: measuring walks every
/// builder, so it is done every few rows, and after every large row.
const MEASURE_EVERY_ROWS: usize = 64;

impl Chunker {
    pub(crate) fn new(
        model: &str,
        columns: &[ColumnInfo],
        chunk_rows: usize,
        tx: Sender<RecordBatch>,
    ) -> Self {
        let chunk_rows = chunk_rows.max(1);
        Self {
            model: model.to_owned(),
            columns: columns.into(),
            schema: chunk_schema(columns),
            builders: Self::builders(columns, chunk_rows),
            chunk_rows,
            in_chunk: 0,
            rows: 0,
            tx,
            rejected: StringBuilder::new(),
            row_reason: None,
            since_measured: 0,
            size_report: false,
        }
    }

    /// Rows carry the server's size report as one more, last field.
    pub(crate) fn with_size_report(mut self) -> Self {
        self.size_report = true;
        self
    }

    /// Whether rows carry the server's size report.
    pub(crate) fn has_size_report(&self) -> bool {
        self.size_report
    }

    /// Read the server's size report of the row being decoded (`i:bytes`, comma
    /// separated): each column named was sent as NULL because its value is too
    /// large, and the row is rejected saying so.
    pub(crate) fn size_report(&mut self, report: &[u8]) {
        let report = String::from_utf8_lossy(report);
        for entry in report.split(',').filter(|e| !e.is_empty()) {
            let (index, bytes) = entry.split_once(':').unwrap_or((entry, "0"));
            let index = index.parse::<usize>().unwrap_or(usize::MAX);
            let bytes = bytes.parse::<usize>().unwrap_or(0);
            self.mark_rejected(index, &super::decode::too_large(bytes));
        }
    }

    /// The model being read.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// Value `index` of the row being decoded could not be decoded (`message`
    /// says why): it becomes NULL (closing whatever the decoder left unfinished
    /// in its builder), and the row is marked rejected with the column named.
    /// The read goes on.
    pub(crate) fn reject_value(&mut self, index: usize, message: &str) {
        if let Some(b) = self.builders.get_mut(index) {
            b.append_null();
        }
        self.mark_rejected(index, message);
    }

    /// Mark the row being decoded rejected because of column `index`, whose
    /// (NULL) value is already appended.
    fn mark_rejected(&mut self, index: usize, message: &str) {
        let column = self.columns.get(index).map_or("", |c| c.name.as_str());
        let reason = format!("column `{column}`: {message}");
        tracing::debug!(
            model = %self.model,
            row = self.rows + 1,
            reason = %reason,
            "A value cannot be decoded; its row is rejected."
        );
        match &mut self.row_reason {
            Some(first) => {
                first.push_str("; ");
                first.push_str(&reason);
            }
            None => self.row_reason = Some(reason),
        }
    }

    fn builders(columns: &[ColumnInfo], capacity: usize) -> Vec<ColBuilder> {
        columns
            .iter()
            .map(|c| ColBuilder::new(&c.kind, capacity))
            .collect()
    }

    /// Rows decoded so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Check the row has the probed number of columns (the model may have changed
    /// since the probe).
    pub(crate) fn check_width(&self, width: usize) -> Result<(), SourceError> {
        if width == self.columns.len() + usize::from(self.size_report) {
            Ok(())
        } else {
            Err(SourceError::Decode {
                model: self.model.clone(),
                column: String::new(),
                row: self.rows + 1,
                message: format!(
                    "the row has {width} columns but the probe found {}: the model changed, run again",
                    self.columns.len()
                ),
            })
        }
    }

    /// Count a decoded row; `true` when the chunk is full (rows or bytes) and
    /// must be sent. `row_bytes` is what the row took on the wire, if known.
    fn count_row(&mut self, row_bytes: usize) -> bool {
        self.rejected.append_option(self.row_reason.take());
        self.rows += 1;
        self.in_chunk += 1;
        self.since_measured += 1;
        if self.in_chunk >= self.chunk_rows {
            return true;
        }
        if self.since_measured >= MEASURE_EVERY_ROWS || row_bytes >= CHUNK_BYTES / 64 {
            self.since_measured = 0;
            return self.chunk_bytes() >= CHUNK_BYTES;
        }
        false
    }

    /// Bytes the current chunk's values take.
    pub(crate) fn chunk_bytes(&self) -> usize {
        self.builders.iter().map(ColBuilder::bytes).sum::<usize>()
            + self.rejected.values_slice().len()
    }

    /// Count a decoded row and send the chunk when full. `Ok(false)` = the receiver
    /// is gone, stop reading.
    pub(crate) async fn row_done(&mut self, row_bytes: usize) -> Result<bool, SourceError> {
        if self.count_row(row_bytes) {
            return self.flush().await;
        }
        Ok(true)
    }

    /// [`Self::row_done`] for a thread outside the runtime.
    pub(crate) fn row_done_blocking(&mut self, row_bytes: usize) -> Result<bool, SourceError> {
        if self.count_row(row_bytes) {
            return self.flush_blocking();
        }
        Ok(true)
    }

    /// The current chunk as a record batch (`None` if empty); builders start over.
    fn take_batch(&mut self) -> Result<Option<RecordBatch>, SourceError> {
        if self.in_chunk == 0 {
            return Ok(None);
        }
        let mut arrays = Vec::with_capacity(self.builders.len());
        for (i, b) in self.builders.iter_mut().enumerate() {
            let array = b.finish().map_err(|m| SourceError::Decode {
                model: self.model.clone(),
                column: self
                    .columns
                    .get(i)
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                row: self.rows,
                message: m,
            })?;
            arrays.push(array);
        }
        arrays.push(std::sync::Arc::new(self.rejected.finish()));
        self.builders = Self::builders(&self.columns, self.chunk_rows);
        self.in_chunk = 0;
        self.since_measured = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map(Some)
            .map_err(|e| SourceError::Decode {
                model: self.model.clone(),
                column: String::new(),
                row: self.rows,
                message: format!("cannot assemble the batch: {e}"),
            })
    }

    /// Send the current chunk, if any, and start a new one.
    async fn flush(&mut self) -> Result<bool, SourceError> {
        match self.take_batch()? {
            Some(batch) => Ok(self.tx.send(batch).await.is_ok()),
            None => Ok(true),
        }
    }

    /// [`Self::flush`] for a thread outside the runtime.
    fn flush_blocking(&mut self) -> Result<bool, SourceError> {
        match self.take_batch()? {
            Some(batch) => Ok(self.tx.blocking_send(batch).is_ok()),
            None => Ok(true),
        }
    }

    /// Send the last partial chunk and return the row count.
    pub(crate) async fn finish(mut self) -> Result<u64, SourceError> {
        self.flush().await?;
        Ok(self.rows)
    }

    /// [`Self::finish`] for a thread outside the runtime.
    pub(crate) fn finish_blocking(mut self) -> Result<u64, SourceError> {
        self.flush_blocking()?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::source::decode::pg_append;
    use crate::source::ColumnKind;

    #[test]
    fn chunks_are_bounded_by_bytes_too() {
        let columns = vec![ColumnInfo {
            name: "bio".into(),
            sql_type: "TEXT".into(),
            kind: ColumnKind::Text,
            decimal: None,
        }];
        let (tx, mut rx) = mpsc::channel(100);
        let mut chunker = Chunker::new("m", &columns, 10_000, tx);
        let value = vec![b'x'; 1024 * 1024];
        for _ in 0..20 {
            pg_append(&mut chunker.builders[0], Some(&value)).unwrap();
            assert!(chunker.row_done_blocking(value.len()).unwrap());
        }
        assert_eq!(chunker.finish_blocking().unwrap(), 20);
        let mut sizes = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            assert_eq!(batch.num_columns(), 2, "bio and the reasons column");
            sizes.push(batch.num_rows());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        let per_chunk = CHUNK_BYTES / value.len();
        assert!(
            sizes.iter().all(|&n| n <= per_chunk),
            "{sizes:?}: at most {per_chunk} rows of 1 MiB per chunk"
        );
    }
}
