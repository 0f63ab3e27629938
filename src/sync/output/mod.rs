//! Stage 4, deliver: where a run's transformed chunks go.
//!
//! Every destination of a run implements [`RunOutput`]: the Events API
//! ([`events_api`]), the JSONL run files ([`files`]), the row dead letters
//! ([`dead_letters`]) and the Parquet exports ([`parquet`]). The run builds the
//! list once (`Attempt::prepare`, in `sync/prepare.rs`), hands each transformed chunk to every
//! output in turn, and asks each to finish: a new sink or file is one new
//! output here and one line in that list.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use futures::future::BoxFuture;

use crate::mapping::{EncodedBatch, RejectedRow};
use crate::state::RunCounts;

use super::SyncError;

pub mod dead_letters;
pub mod events_api;
pub mod files;
pub mod parquet;

/// One chunk after transform: the rows as read, the batches to send (after
/// input protection) and the rows rejected.
#[derive(Debug)]
pub struct Transformed {
    /// Run row number of the chunk's first row.
    pub first_row: u64,
    /// The rows as extracted.
    pub chunk: RecordBatch,
    /// Batches to send, in row order.
    pub batches: Vec<EncodedBatch>,
    /// Rows that cannot be sent, with their reasons.
    pub rejected: Vec<RejectedRow>,
}

/// What the outputs add to a run's record and report.
#[derive(Debug, Default)]
pub struct Tally {
    /// Counters (the outputs fill the delivery ones).
    pub counts: RunCounts,
    /// Requests sent (or, in a dry run, that would be).
    pub requests: u64,
    /// Of which to `/v2/bulkevents/historical` (event pipelines).
    pub historical_requests: u64,
    /// Their body bytes.
    pub request_bytes: u64,
    /// Files written, by name (`rejected`, `batches`, `export_rows`, …).
    pub files: BTreeMap<&'static str, PathBuf>,
    /// Exported Parquet files: (dataset, file).
    pub exports: Vec<(&'static str, crate::export::ExportedFile)>,
    /// The first few rejected rows of each reason.
    pub samples: BTreeMap<&'static str, Vec<RejectedRow>>,
    /// Problems met while finishing (a file that could not be closed): the run
    /// is then not a success.
    pub errors: Vec<String>,
    /// Batches skipped because an earlier run of the same spool delivered them.
    pub batches_already_done: u64,
    /// Incremental checkpoint: iterator value below which every row is done.
    pub checkpoint: Option<String>,
    /// Run rows with a dead-lettered batch (the diff does not record them as
    /// synced).
    pub dead_lettered_rows: Vec<u64>,
}

/// How a run ended, as its outputs need to know when finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every chunk was handed over; make the results final.
    Complete,
    /// Stopped early (failure or shutdown): keep what is durable, publish
    /// nothing that claims to be the whole window.
    Cut,
}

/// A destination of a run's transformed chunks.
pub trait RunOutput: Send {
    /// Take one transformed chunk. An `Err` stops the run.
    fn write<'a>(&'a mut self, chunk: &'a Transformed) -> BoxFuture<'a, Result<(), SyncError>>;

    /// Flush and close; record files and figures in `tally`. Called once,
    /// whatever happened before.
    fn finish<'a>(
        &'a mut self,
        end: RunEnd,
        tally: &'a mut Tally,
    ) -> BoxFuture<'a, Result<(), SyncError>>;
}
