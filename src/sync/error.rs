//! Why a run could not be carried out: one error for the run layer, wrapping
//! each stage's own.

use std::path::PathBuf;

use crate::mapping::MappingError;
use crate::sink::DeliveryError;
use crate::source::SourceError;
use crate::state::StateError;

use super::spool;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No pipeline of that id.
    #[error("no pipeline `{id}` in schedules/ (pipelines: {available})")]
    UnknownPipeline {
        /// Requested id.
        id: String,
        /// Existing ids.
        available: String,
    },
    /// The pipeline asks for something this version cannot do safely.
    #[error("pipeline `{pipeline}`: {message}")]
    Unsupported {
        /// Pipeline id.
        pipeline: String,
        /// What and what to do instead.
        message: String,
    },
    /// Warehouse failure.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Mapping failure.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// Events API failure.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// State store failure.
    #[error(transparent)]
    State(#[from] StateError),
    /// A Parquet export failed.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// Input protection could not resolve profiles.
    #[error(transparent)]
    Resolve(#[from] crate::resolve::ResolveError),
    /// The pipeline's data plan document could not be read or parsed.
    #[error("pipeline `{pipeline}`: data_plan.document: {message}")]
    DataPlan {
        /// Pipeline id.
        pipeline: String,
        /// What is wrong with the document.
        message: String,
    },
    /// A wsync bug surfaced at run time (a task panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// A run file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The run stopped on shutdown; its checkpoint is where the next one starts.
    #[error(
        "stopped by shutdown before the window was finished; the next run delivers the rest \
         from the spool, or without it reads again from {}",
        checkpoint.as_deref().unwrap_or("the start of the window")
    )]
    Interrupted {
        /// The last committed checkpoint.
        checkpoint: Option<String>,
    },
    /// A backfill bound does not parse for the iterator's type.
    #[error("pipeline `{pipeline}`: {which} `{value}` is not a valid {data_type} value; {hint}")]
    BadBound {
        /// Pipeline id.
        pipeline: String,
        /// `--from` or `--until`.
        which: &'static str,
        /// What was given.
        value: String,
        /// The iterator type.
        data_type: &'static str,
        /// How to write one.
        hint: &'static str,
    },
    /// The spool could not be written or read.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// A stored watermark does not parse for the iterator's type (someone changed
    /// `iterator_data_type` after runs were recorded).
    #[error(
        "pipeline `{pipeline}`: stored watermark `{value}` is not a valid {data_type} value; \
         the iterator type changed since the last run. Reset it by backfilling, or restore the old type"
    )]
    BadWatermark {
        /// Pipeline id.
        pipeline: String,
        /// Stored text.
        value: String,
        /// Expected type.
        data_type: &'static str,
    },
}
