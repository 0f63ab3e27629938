//! Rows → mParticle batches: profile batches (user data), or, for event
//! pipelines, each user's events grouped into that user's batches
//! ([`event`]), checked against a data plan ([`data_plan`]).
//!
//! [`plan::MappingPlan`] decides once per run where each column goes;
//! [`batch::Mapper`] walks each Arrow record batch row by row, converts the cells
//! ([`convert`]), enforces mParticle's limits ([`limits`]), splits rows with more
//! than 100 attributes, and writes each batch as JSON with a deterministic
//! `source_request_id`. Rows that cannot be sent come out as rejected rows with a
//! reason; nothing is dropped silently.

use std::path::PathBuf;

pub mod batch;
pub mod convert;
pub mod data_plan;
pub mod event;
pub mod identity;
pub mod json;
pub mod limits;
pub mod plan;

pub use batch::{EncodedBatch, EventCounts, MapStats, Mapper, RejectReason, RejectedRow};
pub use plan::MappingPlan;

/// A mapping failure that stops the run before any row is sent.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The pipeline's mapping does not fit the model's columns.
    #[error("{}: pipeline `{pipeline}`: {message}\n  hint: {hint}", file.display())]
    Plan {
        /// Pipeline id.
        pipeline: String,
        /// The pipeline's file.
        file: PathBuf,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
    /// A record batch did not match its schema (a wsync bug).
    #[error(transparent)]
    Reader(#[from] convert::ReaderTypeError),
}
