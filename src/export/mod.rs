//! Parquet exports: what a run read (`rows`), what it sent (`batches`) and what it
//! rejected (`rejected`), written as Parquet files for audit trails, snapshots and
//! feeding rejected rows back to whoever owns the data.
//!
//! The pieces, each usable on its own:
//!
//! - [`ParquetFile`] (`writer.rs`): one file written through a temporary name in
//!   the same folder and renamed into place only when complete, so a reader never
//!   picks up a half-written file. Row groups are flushed as they fill, so memory
//!   is bounded by one row group whatever the table size.
//! - [`RowsDataset`], [`BatchesDataset`], [`RejectedDataset`] (`datasets.rs`): the
//!   Arrow schema of each dataset and the conversion of a run's chunks, encoded
//!   batches and rejected rows into record batches for that schema.
//! - [`render_path`] (`path.rs`): the file path from a template such as
//!   [`DEFAULT_PATH_TEMPLATE`].
//!
//! A run that exports creates one [`ParquetFile`] per dataset at its start (the
//! schemas are known once the model is probed and planned), feeds each chunk,
//! batch and rejected row as they are produced, and finishes the files at the end;
//! a failed run drops them, which removes the temporary files.

mod datasets;
mod path;
mod writer;

pub use datasets::{
    parse_decimal, rows_batch, rows_schema, BatchesDataset, RejectedDataset, RowsDataset,
};
pub use path::{render_path, Dataset, PathVars, DEFAULT_PATH_TEMPLATE};
pub use writer::{Compression, ExportError, ExportOptions, ExportedFile, ParquetFile};
