//! A run's Parquet exports: one file per configured dataset, fed as the run
//! produces chunks, batches and rejected rows, finished (renamed into place)
//! only when the run succeeds. A failed run drops them, which removes the
//! temporary files, so no reader ever sees a partial export.

use std::path::Path;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use arrow::array::RecordBatch;
use chrono::NaiveDate;

use crate::config::model::{ExportCompression, ExportDataset, ExportSettings};
use crate::export::{
    render_path, BatchesDataset, Compression, Dataset, ExportError, ExportOptions, ExportedFile,
    ParquetFile, PathVars, RejectedDataset, RowsDataset,
};
use crate::mapping::{EncodedBatch, MappingPlan, RejectedRow};
use crate::source::ColumnInfo;
use crate::sync::SyncError;

use super::{RunEnd, RunOutput, Tally, Transformed};

/// Rows per record batch handed to the writer for the batches and rejected datasets.
const DATASET_BATCH_ROWS: usize = 4096;

/// The open export files of one run.
#[derive(Debug, Default)]
pub struct RunExports {
    rows: Option<(RowsDataset, ParquetFile)>,
    batches: Option<(BatchesDataset, ParquetFile)>,
    rejected: Option<(RejectedDataset, ParquetFile)>,
}

/// Where and what a run exports.
pub struct ExportTarget<'a> {
    /// The pipeline's `[export]` settings (or a one-off's).
    pub settings: &'a ExportSettings,
    /// Project root, for relative templates.
    pub root: &'a Path,
    /// Pipeline id.
    pub pipeline: &'a str,
    /// Run id (text).
    pub run_id: &'a str,
    /// Run start date.
    pub date: NaiveDate,
    /// Window bounds as text.
    pub window: (Option<&'a str>, Option<&'a str>),
}

impl RunExports {
    /// Create the files for the configured datasets.
    pub fn create(
        target: &ExportTarget<'_>,
        columns: &[ColumnInfo],
        plan: &MappingPlan,
    ) -> Result<Self, ExportError> {
        let options = ExportOptions {
            compression: match target.settings.compression {
                ExportCompression::Zstd => Compression::Zstd,
                ExportCompression::Snappy => Compression::Snappy,
                ExportCompression::None => Compression::None,
            },
            row_group_rows: target.settings.row_group_rows,
        };
        let path = |dataset| -> Result<std::path::PathBuf, ExportError> {
            let relative = render_path(
                &target.settings.path,
                &PathVars {
                    pipeline: target.pipeline,
                    run_id: target.run_id,
                    date: target.date,
                    window_start: target.window.0,
                    window_end: target.window.1,
                    dataset,
                },
            )?;
            Ok(target.root.join(relative))
        };
        let mut exports = Self::default();
        for dataset in &target.settings.datasets {
            match dataset {
                ExportDataset::Rows => {
                    let data = RowsDataset::new(columns);
                    let file = ParquetFile::create(path(Dataset::Rows)?, data.schema(), &options)?;
                    exports.rows = Some((data, file));
                }
                ExportDataset::Batches => {
                    let data = BatchesDataset::new(plan, DATASET_BATCH_ROWS);
                    let file =
                        ParquetFile::create(path(Dataset::Batches)?, data.schema(), &options)?;
                    exports.batches = Some((data, file));
                }
                ExportDataset::Rejected => {
                    let data = RejectedDataset::new(DATASET_BATCH_ROWS);
                    let file =
                        ParquetFile::create(path(Dataset::Rejected)?, data.schema(), &options)?;
                    exports.rejected = Some((data, file));
                }
            }
        }
        Ok(exports)
    }

    /// An extracted chunk.
    pub fn chunk(&mut self, chunk: &RecordBatch) -> Result<(), ExportError> {
        if let Some((data, file)) = self.rows.as_mut() {
            file.write(&data.convert(chunk)?)?;
        }
        Ok(())
    }

    /// A mapped batch.
    pub fn batch(&mut self, batch: &EncodedBatch) -> Result<(), ExportError> {
        if let Some((data, file)) = self.batches.as_mut() {
            if let Some(records) = data.push(batch)? {
                file.write(&records)?;
            }
        }
        Ok(())
    }

    /// A rejected row.
    pub fn rejected(&mut self, row: &RejectedRow) -> Result<(), ExportError> {
        if let Some((data, file)) = self.rejected.as_mut() {
            if let Some(records) = data.push(row)? {
                file.write(&records)?;
            }
        }
        Ok(())
    }

    /// Flush and rename every file into place.
    pub fn finish(self) -> Result<Vec<(&'static str, ExportedFile)>, ExportError> {
        let mut done = Vec::new();
        if let Some((_, file)) = self.rows {
            done.push(("rows", file.finish()?));
        }
        if let Some((mut data, mut file)) = self.batches {
            if let Some(records) = data.flush()? {
                file.write(&records)?;
            }
            done.push(("batches", file.finish()?));
        }
        if let Some((mut data, mut file)) = self.rejected {
            if let Some(records) = data.flush()? {
                file.write(&records)?;
            }
            done.push(("rejected", file.finish()?));
        }
        Ok(done)
    }
}

/// The exports as a run output: fed every chunk, renamed into place only when
/// the run completes its window (an export file is one whole window or nothing).
#[derive(Debug)]
pub struct ParquetExports {
    exports: Option<RunExports>,
}

impl ParquetExports {
    /// Feed these open exports.
    pub fn new(exports: RunExports) -> Self {
        Self {
            exports: Some(exports),
        }
    }
}

impl RunOutput for ParquetExports {
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>> {
        let result = (|| {
            let Some(exports) = self.exports.as_mut() else {
                return Ok(());
            };
            exports.chunk(&chunk.chunk)?;
            for batch in &chunk.batches {
                exports.batch(batch)?;
            }
            for rejected in &chunk.rejected {
                exports.rejected(rejected)?;
            }
            Ok(())
        })();
        async move { result }.boxed()
    }

    fn finish<'a>(
        &'a mut self,
        end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        // Dropping unfinished files removes their temporary names.
        let exports = self.exports.take();
        let result = match (end, exports) {
            (RunEnd::Complete, Some(exports)) => exports.finish().map(|done| {
                for (dataset, file) in done {
                    tally.files.insert(
                        match dataset {
                            "rows" => "export_rows",
                            "batches" => "export_batches",
                            _ => "export_rejected",
                        },
                        file.path.clone(),
                    );
                    tally.exports.push((dataset, file));
                }
            }),
            _ => Ok(()),
        };
        async move { result.map_err(SyncError::from) }.boxed()
    }
}
