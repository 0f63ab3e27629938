//! Stage 3, transform: chunks from the spool (or, for runs that send nothing,
//! straight from the extract) mapped to batches, with input protection
//! applied, numbered by run row so that mapping the same spool again yields
//! the same batches in the same places.

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::mapping::{MapStats, Mapper};
use crate::resolve::Protection;

use super::output::Transformed;
use super::spool::SpoolReader;
use super::SyncError;

/// Where a run's chunks come from.
#[derive(Debug)]
pub enum ChunkSource {
    /// The spool, following the extract as it writes (or complete, on resume).
    Spool(Box<SpoolReader>),
    /// Straight from the extract: runs that send nothing (dry runs, export-only
    /// pipelines) have no pace to decouple from and nothing to resume.
    Stream(mpsc::Receiver<RecordBatch>),
}

impl ChunkSource {
    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, SyncError> {
        match self {
            Self::Spool(reader) => Ok(reader.next().await?),
            Self::Stream(rx) => Ok(rx.recv().await),
        }
    }
}

/// What input protection reports at the end: its summary and the file of
/// skipped rows.
pub type ProtectionEnd = (
    crate::resolve::ProtectionSummary,
    Result<Option<std::path::PathBuf>, crate::resolve::ResolveError>,
);

/// Maps chunks in order and applies input protection.
#[derive(Debug)]
pub struct Transform {
    mapper: Mapper,
    protection: Option<Protection>,
    /// Snapshot diff: which rows go out, under which ids.
    pub diff: Option<super::diff::Diff>,
    next_row: u64,
    /// Mapping counters by reason.
    pub stats: MapStats,
}

impl Transform {
    /// A transform starting at run row 1.
    pub fn new(mapper: Mapper, protection: Option<Protection>) -> Self {
        Self {
            mapper,
            protection,
            diff: None,
            next_row: 1,
            stats: MapStats::default(),
        }
    }

    /// Map one chunk. Rows of no existing profile (only_update) leave here,
    /// before any output sees them.
    pub async fn chunk(&mut self, chunk: RecordBatch) -> Result<Transformed, SyncError> {
        let first_row = self.next_row;
        self.next_row += chunk.num_rows() as u64;
        let mut mapped = if let Some(diff) = self.diff.as_mut() {
            // Unchanged rows leave before input protection looks profiles
            // up; a chunk of nothing but unchanged rows is not even mapped.
            // The pre-pass counted every row, so this mapping counts nothing.
            if !diff.next_chunk(first_row, chunk.num_rows())? {
                return Ok(Transformed {
                    first_row,
                    chunk,
                    batches: Vec::new(),
                    rejected: Vec::new(),
                });
            }
            let mut scratch = MapStats::default();
            let mut mapped = self.mapper.map_chunk(&chunk, first_row, &mut scratch)?;
            diff.select(
                &self.mapper,
                &chunk,
                first_row,
                &mut mapped.batches,
                &mut mapped.rejected,
                &mut self.stats,
            )?;
            mapped
        } else {
            self.mapper.map_chunk(&chunk, first_row, &mut self.stats)?
        };
        if let Some(protection) = self.protection.as_mut() {
            protection.apply(&mut mapped.batches).await?;
        }
        if let Some(diff) = self.diff.as_mut() {
            diff.mark_sent(&mapped.batches).await?;
        }
        Ok(Transformed {
            first_row,
            chunk,
            batches: mapped.batches,
            rejected: mapped.rejected,
        })
    }

    /// Diff the chunks: `diff`'s pre-pass counted every row, so its counters
    /// are the run's.
    pub fn with_diff(mut self, mut diff: super::diff::Diff) -> Self {
        self.stats = std::mem::take(&mut diff.stats);
        self.diff = Some(diff);
        self
    }

    /// The protection's summary and skipped-rows file, when it has one.
    pub fn finish(self) -> (MapStats, Option<ProtectionEnd>) {
        (self.stats, self.protection.map(Protection::finish))
    }
}
