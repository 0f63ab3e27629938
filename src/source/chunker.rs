//! [`Chunker`]: the Arrow builders of the chunk being filled, and the sending of
//! full chunks into the extraction channel.
//!
//! Every read path (the row protocol of each driver and PostgreSQL's binary COPY)
//! decodes into the same builders, so a chunk is bounded by `chunk_rows` and a
//! full channel holds the reader back whichever path produced it. The chunker
//! owns its inputs so it can also live on the COPY decoding thread; it sends with
//! `send().await` on the runtime and with `blocking_send` on that thread.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use tokio::sync::mpsc::Sender;

use super::decode::ColBuilder;
use super::{arrow_schema, ColumnInfo, SourceError};

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
}

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
            schema: arrow_schema(columns),
            builders: Self::builders(columns, chunk_rows),
            chunk_rows,
            in_chunk: 0,
            rows: 0,
            tx,
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

    /// A decode error for column `index` of the row being decoded.
    pub(crate) fn error(&self, index: usize, message: String) -> SourceError {
        SourceError::Decode {
            model: self.model.clone(),
            column: self
                .columns
                .get(index)
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            row: self.rows + 1,
            message,
        }
    }

    /// Check the row has the probed number of columns (the model may have changed
    /// since the probe).
    pub(crate) fn check_width(&self, width: usize) -> Result<(), SourceError> {
        if width == self.columns.len() {
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

    /// Count a decoded row; `true` when the chunk is full and must be sent.
    fn count_row(&mut self) -> bool {
        self.rows += 1;
        self.in_chunk += 1;
        self.in_chunk >= self.chunk_rows
    }

    /// Count a decoded row and send the chunk when full. `Ok(false)` = the receiver
    /// is gone, stop reading.
    pub(crate) async fn row_done(&mut self) -> Result<bool, SourceError> {
        if self.count_row() {
            return self.flush().await;
        }
        Ok(true)
    }

    /// [`Self::row_done`] for a thread outside the runtime.
    pub(crate) fn row_done_blocking(&mut self) -> Result<bool, SourceError> {
        if self.count_row() {
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
        self.builders = Self::builders(&self.columns, self.chunk_rows);
        self.in_chunk = 0;
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
